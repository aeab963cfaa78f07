"""The train command lines against a hostile user: damaged fine-tuning data, outputs that cannot be
written, a cache that cannot be written, --help without the heavy imports, and Ctrl-C.

Unwritable folders: a folder of mode 0o555, and where the tests run as root (whom modes do not
stop) a path under a regular file, which fails with NotADirectoryError for everyone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.test_training import SIZE, _write_real_dataset, tiny_config
from tracker.errors import TrackerError
from tracker.files.paths import PROJECT_ROOT
from tracker.head_models import load_head_model
from tracker.n2fnet.checkpoint import load_checkpoint
from train import finetune
from train.real_data import RealDataset
from train.trainer import Trainer

CLIS = (
    "train",
    "train.finetune",
    "train.head_tuning",
    "train.pseudo_gt",
    "train.evaluate",
    "train.evaluate_real",
    "train.landmark_calibration",
    "train.landmark_pictures",
    "train.offline_curves",
    "train.visualize",
)
HEAVY = ("torch", "timm", "cv2", "mediapipe")


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, ict_npz_path) -> Path:
    root = tmp_path_factory.mktemp("trained")
    Trainer(tiny_config(root, ict_npz_path, stage1_steps=1, stage2_steps=1)).run()
    return root / "run" / "best_stage2.pt"


@pytest.fixture
def data(tmp_path, ict) -> Path:
    folder = tmp_path / "real"
    _write_real_dataset(folder, ict, SIZE)  # face0, face1, face2 with params, landmarks, poses, camera.json
    return folder


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder path that cannot take files (see the module docstring)."""
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"
        blocker.write_text("in the way\n")
        yield blocker / "folder"
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def _python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False, **kwargs)


def _imported(stderr: str) -> set[str]:
    """The top-level modules ``-X importtime`` reports."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")}


def _messages(stderr: str) -> list[str]:
    """stderr without ``-X importtime``'s lines."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


# -- 1. fine-tuning data checked as it is read ------------------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{focal: 1", "not readable JSON"),
        ('{"focal": "wide", "principal": [24, 24]}', "focal must be \\[fx, fy\\]"),
        ('{"focal": [100, 100, 100], "principal": [24, 24]}', "focal must be \\[fx, fy\\]"),
        ('{"focal": [100, 100]}', "needs a 'principal' entry"),
        ("[100, 100]", "needs a 'focal' entry"),
        ('{"focal": [0, 100], "principal": [24, 24]}', "focal must be positive"),
        ('{"focal": [NaN, 100], "principal": [24, 24]}', "focal holds NaN or infinite"),
        ('{"focal": [100, 100], "principal": [Infinity, 24]}', "principal holds NaN or infinite"),
    ],
)
def test_a_bad_camera_json_stops_with_the_file_and_the_problem(data, text, problem):
    (data / "camera.json").write_text(text)
    for stage in (1, 2):
        with pytest.raises(TrackerError, match=f"camera.json: {problem}"):
            RealDataset(data, SIZE, default_focal=100.0, stage=stage)


@pytest.mark.parametrize(
    "damage, file, problem",
    [
        (lambda d: np.savez(d / "params" / "face1.npz", identity=np.zeros(3), expression=np.full(53, np.nan)), "params/face1.npz", "expression holds NaN"),
        (lambda d: (d / "params" / "face1.npz").write_bytes(b"not a zip"), "params/face1.npz", "not a readable .npz"),
        (lambda d: (d / "poses" / "face1.json").write_text('{"rotation": [[1, 0], [0, 1]], "translation": [0, 0, 1]}'), "poses/face1.json", "rotation must be a 3x3"),
        (lambda d: (d / "poses" / "face1.json").write_text('{"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]], "translation": [0, 0, 1]}'), "poses/face1.json", "not a rotation"),
        (lambda d: (d / "landmarks" / "face1.txt").write_text("x y\n" * 68), "landmarks/face1.txt", "not 68 lines"),
        (lambda d: (d / "landmarks" / "face1.txt").write_text("1 2\n" * 60), "landmarks/face1.txt", "got 60 lines"),
        (lambda d: (d / "landmarks" / "face1.txt").write_text("inf 2\n" * 68), "landmarks/face1.txt", "infinite"),
        (lambda d: ((d / "cameras").mkdir(), (d / "cameras" / "face1.json").write_text('{"focal": [-5, 5], "principal": [1, 1]}')), "cameras/face1.json", "focal must be positive"),
        (lambda d: (d / "normals" / "face1.png").write_bytes(b"\x89PNG truncated"), "normals/face1.png", "cannot read"),
    ],
)
def test_a_sample_with_a_bad_file_is_left_out_with_one_counted_warning(data, caplog, damage, file, problem):
    damage(data)
    with caplog.at_level(logging.WARNING):
        dataset = RealDataset(data, SIZE, default_focal=100.0, stage=2)
    assert dataset.stems == ["face0", "face2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out 1 of 3 samples" in warnings[0] and file in warnings[0] and problem in warnings[0]
    batch = dataset.sample(8)  # the rest trains: finite, complete batches
    assert all(torch.isfinite(t).all() for t in (batch.normals, batch.focal, batch.landmarks_2d, batch.rotation, *batch.params.values()))


def test_parameters_of_another_head_model_are_named_and_none_left_is_an_error(data):
    sizes = {"identity": 100, "expression": 53}
    np.savez(data / "params" / "face2.npz", identity=np.zeros(100), expression=np.zeros(12))
    assert RealDataset(data, SIZE, 100.0, stage=1, param_sizes=sizes).stems == ["face0", "face1"]
    for i in range(3):
        np.savez(data / "params" / f"face{i}.npz", shape=np.zeros(300), expression=np.zeros(100))
    with pytest.raises(TrackerError, match=r"none of its 3 samples can be used; the first problem: .*params/face0.npz: expression has 100 values, the head model's expression has 53"):
        RealDataset(data, SIZE, 100.0, stage=1, param_sizes=sizes)


@pytest.mark.parametrize(
    "text, problem",
    [("name,fit\nface0,1\n", "no fit_nme51 column"), ("name,fit_nme51\nface0,1\nface1,lots\n", "line 3: fit_nme51 'lots' is not a number")],
)
def test_a_bad_quality_csv_stops_with_the_line(data, text, problem):
    (data / "quality.csv").write_text(text)
    with pytest.raises(TrackerError, match=f"quality.csv.*{problem}"):
        RealDataset(data, SIZE, 100.0, stage=1, max_fit_nme=5.0)


def test_finetune_reports_bad_data_in_one_line_and_trains_around_one_bad_sample(checkpoint, data, tmp_path, capsys):
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--stage", "1", "--steps", "1", "--batch-size", "2", "--val-every", "1", "--out-dir"]
    (data / "camera.json").write_text('{"focal": [0, 0], "principal": [24, 24]}')
    assert finetune.main([*args, str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == f"error: {data / 'camera.json'}: focal must be positive, in pixels of the stored maps; got [0.0, 0.0]\n"
    (data / "camera.json").unlink()
    params = dict(np.load(data / "params" / "face0.npz"))
    np.savez(data / "params" / "face0.npz", **{**params, "expression": params["expression"][:5]})  # another size than ICT's
    assert finetune.main([*args, str(tmp_path / "b")]) == 0
    assert "fine-tuning stage 1 on 2 samples" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    for i in (1, 2):
        np.savez(data / "params" / f"face{i}.npz", **{**params, "identity": np.full_like(params["identity"], np.nan)})
    assert finetune.main([*args, str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "none of its 3 samples can be used" in err


# -- 2. outputs checked before any work -----------------------------------------------------------


def _writing_commands(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    """Every train command that writes, its output at ``out`` and every other argument cheap to accept."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    ckpt = str(tmp_path / "model.pt")
    return {
        "train --out-dir": ["-m", "train", "--out-dir", str(out)],
        "finetune --out-dir": ["-m", "train.finetune", "--checkpoint", ckpt, "--data", str(tmp_path), "--stage", "1", "--out-dir", str(out)],
        "head_tuning --out-dir": ["-m", "train.head_tuning", "--checkpoint", ckpt, "--data", str(tmp_path), "--out-dir", str(out)],
        "pseudo_gt --out": ["-m", "train.pseudo_gt", str(clip), "--out", str(out)],
        "evaluate_real --csv": ["-m", "train.evaluate_real", "--checkpoint", ckpt, "--data", str(tmp_path), "--images-only", "--csv", str(out / "faces.csv")],
        "evaluate_real --json": ["-m", "train.evaluate_real", "--checkpoint", ckpt, "--data", str(tmp_path), "--images-only", "--json", str(out / "report.json")],
        "landmark_calibration --json": ["-m", "train.landmark_calibration", "--data", str(tmp_path), "--json", str(out / "points.json")],
        "landmark_pictures --out": ["-m", "train.landmark_pictures", "--checkpoint", ckpt, "--data", str(tmp_path), "--images-only", "--out", str(out)],
        "offline_curves --out": ["-m", "train.offline_curves", "--checkpoint", ckpt, "--videos", str(clip), "--out", str(out / "curves.png")],
        "visualize --out": ["-m", "train.visualize", "--checkpoint", ckpt, "--out", str(out / "preview.png")],
    }


@pytest.mark.parametrize("command", ["train --out-dir", "finetune --out-dir", "head_tuning --out-dir", "pseudo_gt --out", "evaluate_real --csv",
                                     "evaluate_real --json", "landmark_calibration --json", "landmark_pictures --out", "offline_curves --out",
                                     "visualize --out"])
def test_every_writing_command_refuses_an_unwritable_output_before_any_work(tmp_path, unwritable, command):
    result = _python(_writing_commands(tmp_path, unwritable)[command])
    option = command.split()[1]
    messages = _messages(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(messages) == 1 and messages[0].startswith(f"error: {option} {unwritable}") and "write" in messages[0], messages
    assert not _imported(result.stderr) & set(HEAVY)  # refused before the network, the tracker or the data were touched


def test_an_output_folder_that_is_a_file_and_an_output_file_that_is_a_folder_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    result = _python(["-m", "train", "--out-dir", str(tmp_path / "notes.txt")])
    assert result.returncode == 2 and _messages(result.stderr) == [f"error: --out-dir {tmp_path / 'notes.txt'}: {tmp_path / 'notes.txt'} is a file, not a folder; give a path in a folder you can write to"]
    result = _python(["-m", "train.visualize", "--checkpoint", "model.pt", "--out", str(tmp_path)])
    assert result.returncode == 2 and _messages(result.stderr) == [f"error: --out {tmp_path} is a folder; give the name of a file to write"]
    assert (tmp_path / "notes.txt").read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no probe left


# -- 3. a cache that cannot be written never stops the work ----------------------------------------


def test_an_unwritable_embedding_cache_warns_once_and_the_work_goes_on(ict, unwritable, tmp_path, monkeypatch, caplog):
    import tracker.fitting.mediapipe_embedding as module

    computed = module.MediaPipeEmbedding(torch.zeros(468, 3, dtype=torch.long), torch.full((468, 3), 1 / 3), torch.zeros(468), torch.ones(468, dtype=torch.int32))
    calls = []
    monkeypatch.setattr(module, "compute_mediapipe_embedding", lambda head: calls.append(1) or computed)
    monkeypatch.setenv("N2F_CACHE_DIR", str(unwritable))
    with caplog.at_level(logging.WARNING):
        first = module.mediapipe_embedding(ict, log=lambda _: None)
        second = module.mediapipe_embedding(ict, log=lambda _: None)
    assert first is computed and second is computed and calls == [1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(unwritable / "mediapipe_embedding") in warnings[0] and "N2F_CACHE_DIR" in warnings[0]
    # a damaged cached file is made again, and replaced
    caplog.clear()
    cache = tmp_path / "cache"
    module.mediapipe_embedding(ict, cache=cache, log=lambda _: None)
    (path,) = cache.glob("ict-*.npz")
    path.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        again = module.mediapipe_embedding(ict, cache=cache, log=lambda _: None)
    assert again is computed and len(calls) == 4 and "cannot use the cached MediaPipe embedding" in caplog.text
    assert torch.equal(module.MediaPipeEmbedding.load(path).vertex_ids, computed.vertex_ids) and sorted(cache.iterdir()) == [path]


def test_the_cache_folder_needs_no_home_folder(tmp_path, monkeypatch):
    from tracker.files import paths

    monkeypatch.delenv("N2F_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as XDG says
    assert paths.cache_dir() == Path.home() / ".cache" / "n2f-tracker"

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    monkeypatch.setattr(paths.tempfile, "tempdir", str(tmp_path))
    paths._run_cache.cache_clear()
    try:
        folder = paths.cache_dir()
        assert folder.parent == tmp_path and folder.is_dir() and paths.cache_dir() == folder
    finally:
        paths._run_cache.cache_clear()


# -- 4. --help and argument errors without the heavy imports ----------------------------------------


@pytest.mark.parametrize("module", CLIS)
def test_help_and_argument_errors_answer_without_heavy_imports(module):
    result = _python(["-m", module, "--help"])
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m {module}")
    assert not _imported(result.stderr) & set(HEAVY), _imported(result.stderr) & set(HEAVY)
    result = _python(["-m", module, "--no-such-option"])
    assert result.returncode == 2 and "error:" in result.stderr and not result.stdout
    assert not _imported(result.stderr) & set(HEAVY)


# -- 5. Ctrl-C -----------------------------------------------------------------------------------------


def _interrupt_when(command: list[str], ready: str | None) -> subprocess.CompletedProcess:
    """Run ``command`` (``-X importtime``), send it SIGINT once it printed a line containing
    ``ready`` (None: once torch is imported, i.e. during its set-up) -> its result."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", *command], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    errors: list[str] = []

    def watch(stream, into: list[str], is_ready) -> None:
        for line in stream:
            into.append(line)
            if is_ready is not None and is_ready(line) and process.poll() is None:
                process.send_signal(signal.SIGINT)
                is_ready = None

    def torch_imported(line: str) -> bool:
        return line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == "torch"

    readers = [
        threading.Thread(target=watch, args=(process.stdout, lines, (lambda line: ready in line) if ready else None)),
        threading.Thread(target=watch, args=(process.stderr, errors, torch_imported if ready is None else None)),
    ]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=600)
    finally:
        process.kill()
        for reader in readers:
            reader.join()
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "".join(errors))


def test_ctrl_c_during_training_start_up_and_run(tmp_path, ict_npz_path):
    command = ["-m", "train", "--head-model-path", str(ict_npz_path), "--input-size", "48", "--token-dim", "32", "--batch-size", "2",
               "--stage1-steps", "1000", "--val-every", "1", "--val-size", "2", "--log-every", "1", "--out-dir"]
    result = _interrupt_when([*command, str(tmp_path / "early")], None)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert _messages(result.stderr)[-1] == "error: interrupted during start-up, before training began"
    result = _interrupt_when([*command, str(tmp_path / "run")], "[train stage 1 step 2]")  # after the first checkpoint
    messages = [m for m in _messages(result.stderr) if "interrupt" in m]
    assert result.returncode == 130 and "Traceback" not in result.stderr
    last = tmp_path / "run" / "last.pt"
    assert messages == [f"interrupted: the checkpoints in {last.parent} are intact (last.pt: the weights of the last validation); continue with python -m train --resume {last}"]
    state = load_checkpoint(last)
    assert state["stage"] == 1 and state["step"] >= 1 and "optimizer" in state and state["train"]["out_dir"] == str(tmp_path / "run")
