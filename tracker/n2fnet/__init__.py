"""N2FNet: normal map -> head-model parameters and camera (backbone + FLAME module + camera module)."""

from tracker.n2fnet.model import REGRESSED_GROUPS, N2FNet, N2FNetConfig, N2FNetOutput

__all__ = ["N2FNet", "N2FNetConfig", "N2FNetOutput", "REGRESSED_GROUPS"]
