"""Live monocular 3D face tracker built around N2FNet (normal map -> head-model parameters).

Subpackages:
    geometry     rotations, pinhole camera, DECA-style crops (pure batched tensor functions)
    head_models  the HeadModel interface and its FLAME and ICT-FaceKit implementations
    render       the pure-PyTorch rasteriser, attribute interpolation, normal/mask/depth maps
    bench        runnable benchmarks (``python -m tracker.bench ...``)
"""

from tracker.errors import TrackerError

__all__ = ["TrackerError"]
