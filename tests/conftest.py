"""Shared fixtures: the shared-material folder and the ICT model (skipped with a reason when absent).

No test may download anything: N2F_OFFLINE=1 for the whole session (tests of the download pass
``allow_download=True`` with a loopback URL). Derived data (the networks exported for the
OpenVINO / ONNX Runtime runtimes) goes to a cache folder of the session, not the user's
(N2F_CACHE_DIR; subprocesses inherit it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Triton's native library (torch.func loads it lazily, through torch._dynamo) segfaulted on its first
# load after tests/app had run (its Qt and OpenGL libraries loaded): load it before any test does.
try:
    import triton  # noqa: F401
except ImportError:  # a torch without Triton (CPU wheels)
    pass

from tracker.files.paths import default_ict_model_path, shared_dir
from tracker.head_models import load_head_model
from tracker.n2fnet import N2FNet
from tracker.n2fnet.checkpoint import save_checkpoint

os.environ["N2F_OFFLINE"] = "1"
os.environ["N2F_CACHE_DIR"] = tempfile.mkdtemp(prefix="n2f-test-cache-")


@pytest.fixture(scope="session")
def qt_gui(display: str) -> str:
    """``display`` (the viewer tests' X display, tests/app/test_viewer.py) once Qt's GUI is known to
    start on it with QT_QPA_PLATFORM=xcb (``app.qt_platform.gui_problem``: a QGuiApplication in a
    child process); every test that needs Qt's GUI asks for it, directly or through ``qapp``.
    Where Qt cannot start (e.g. Debian's libxcb-cursor0 missing) they skip with the reason: Qt
    would abort the whole test run, with no summary. cv2's Qt settings leave the environment first."""
    from app.qt_platform import drop_cv2_qt_settings, gui_problem

    drop_cv2_qt_settings()
    problem = gui_problem({**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})
    if problem is not None:
        pytest.skip(problem)
    return display


@pytest.fixture(scope="session")
def shared_path() -> Path:
    path = shared_dir()
    if path is None or not path.is_dir():
        pytest.skip("shared material not found: set N2F_SHARED_DIR or place it at ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def ict_npz_path() -> Path:
    path = default_ict_model_path()
    if path is None or not path.is_file():
        pytest.skip(f"ICT-FaceKit npz not found ({path}): set N2F_ICT_MODEL or N2F_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory, ict_npz_path: Path) -> Path:
    """An untrained ICT network (ResNet-18, 64 px input) in the checkpoint format: its outputs are
    the prior's mean face; for tests of the plumbing, not of accuracy."""
    torch.manual_seed(0)
    net = N2FNet.for_head_model(load_head_model("ict", ict_npz_path), backbone="resnet18", input_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    save_checkpoint(
        path,
        {
            "model": net.state_dict(),
            "n2fnet": net.config.to_dict(),
            "head_model": {"name": "ict", "path": None},
            "sampler": {"alpha": 1.4, "normal_frame": "camera", "focal_mean": 1.0},
        },
    )
    return path


@pytest.fixture(scope="session")
def ict_as_flame_dir(tmp_path_factory, ict_npz_path: Path) -> Path:
    """A FLAME-format folder with ICT-FaceKit's face and its own aux files (tests/flame_factory.py
    ``write_ict_as_flame``; about 25 s), built once per session."""
    from tests.flame_factory import shared_aux_dir, write_ict_as_flame

    if shared_aux_dir() is None:
        pytest.skip("shared flame-aux folder not found (its MediaPipe embedding gives the official landmark indices)")
    return write_ict_as_flame(tmp_path_factory.mktemp("ict_as_flame"), load_head_model("ict", ict_npz_path))
