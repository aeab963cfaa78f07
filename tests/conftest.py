"""Shared fixtures: the shared-material folder and the ICT model (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.paths import default_ict_model_path, shared_dir


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
