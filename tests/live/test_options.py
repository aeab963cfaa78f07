"""tracker.live.options: the settings object, the checkpoint default, the identity reused from a take, and
the command-line options of app.live and train.evaluate_real that map onto it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import live
from tracker.errors import TrackerError
from tracker.fitting.refinement import DEFAULT_ITERATIONS
from tracker.live import options as tracker_options
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import TrackerOptions, take_identity
from tracker.takes.recording import Recorder
from train import evaluate_real

ICT_GROUPS = {"identity": 100, "expression": 53}


def _take(path: Path, states: list[tuple[int, str]], head_model: str = "ict", groups: dict[str, int] = ICT_GROUPS) -> Path:
    """A take with one record per (track, state); track t's identity is t + 0.01 * its record number."""
    with Recorder(path, head_model, groups) as recorder:
        for index, (track, state) in enumerate(states):
            params = {g: np.full(n, track + 0.01 * index) for g, n in groups.items()}
            recorder.append(index / 30, index, params, track_id=track, identity_state=state)
    return path


def test_settings_are_checked() -> None:
    for settings, message in (
        ({"refine_iters": 0}, "positive whole number"),
        ({"refine_iters": 2.5}, "positive whole number"),
        ({"detector": "long-range"}, "short-range, full-range"),
        ({"identity_track": 2}, "--identity"),
        ({"max_faces": 0}, "max_faces"),
        ({"identity_take": "t.npz", "refine": False}, "leave out --no-refine"),
        ({"refine_start": "median"}, "network, camera, pnp, mean"),
        ({"refine_start": "pnp", "refine": False}, "the refinement is off"),
        ({"arkit_from": "eyes"}, "network, mesh"),
    ):
        with pytest.raises(TrackerError, match=message):
            TrackerOptions(**settings)


def test_checkpoint_default_and_recorded_settings(monkeypatch, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.pt"
    shipped.write_bytes(b"")
    monkeypatch.setattr(tracker_options, "DEFAULT_CHECKPOINT", shipped)
    assert TrackerOptions().checkpoint_path() == shipped
    assert TrackerOptions(checkpoint="mine.pt").checkpoint_path() == Path("mine.pt")
    assert TrackerOptions().recording_metadata() == {"checkpoint": str(shipped), "refine": True, "refine_iters": DEFAULT_ITERATIONS, "detector": "short-range",
                                                     "arkit_from": "network"}
    metadata = TrackerOptions(refine=False, refine_iters=7, detector="full-range").recording_metadata()
    assert metadata["refine"] is False and metadata["refine_iters"] is None and metadata["detector"] == "full-range"
    metadata = TrackerOptions(identity_take="a.npz", identity_track=2).recording_metadata()
    assert metadata["identity_take"] == "a.npz" and metadata["identity_track"] == 2
    assert TrackerOptions(refine_iters=7).recording_metadata()["refine_iters"] == 7
    monkeypatch.setattr(tracker_options, "DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    with pytest.raises(TrackerError, match="No N2FNet checkpoint"):
        TrackerOptions().checkpoint_path()


def test_identity_of_a_take(tmp_path: Path) -> None:
    take = _take(tmp_path / "take.npz", [(2, "calibrating"), (3, "calibrating"), (2, "locked"), (3, "calibrating"), (5, "locked")])
    assert np.allclose(take_identity(take, "ict", 100), 2.02)  # the first locked track: 2, its last (locked) identity
    assert np.allclose(take_identity(take, "ict", 100, track=5), 5.04)
    assert np.allclose(take_identity(take, "ict", 100, track=3), 3.03)  # not locked: taken all the same (with a warning)
    assert take_identity(take, "ict", 100).dtype == np.float32
    with pytest.raises(TrackerError, match="no track 4; its tracks are \\[2, 3, 5\\]"):
        take_identity(take, "ict", 100, track=4)
    with pytest.raises(TrackerError, match="'ict' head model, this tracker fits 'flame'"):
        take_identity(take, "flame", 300)
    with pytest.raises(TrackerError, match="has 100 values, the head model's 'identity' group 50"):
        take_identity(take, "ict", 50)
    calibrating = _take(tmp_path / "short.npz", [(0, "calibrating"), (0, "calibrating")])
    with pytest.raises(TrackerError, match="no track .* has a locked identity \\(0: calibrating\\).*--identity-track"):
        take_identity(calibrating, "ict", 100)
    no_identity = _take(tmp_path / "none.npz", [(0, "locked")], groups={"expression": 53})
    with pytest.raises(TrackerError, match="holds no identity"):
        take_identity(no_identity, "ict", 100)
    with Recorder(tmp_path / "no_face.npz", "ict", ICT_GROUPS) as recorder:
        recorder.append(0.0, 0, None)
    with pytest.raises(TrackerError, match="holds no identity"):
        take_identity(tmp_path / "no_face.npz", "ict", 100)


def test_tracker_built_with_a_take_identity(untrained_checkpoint: Path, ict_npz_path: Path, tmp_path: Path, monkeypatch) -> None:
    """The identity's size comes from the checkpoint the tracker is built from: the file is read once."""
    from tracker.live import face_tracker as tracker_module

    reads = []
    load_checkpoint = tracker_module.load_checkpoint
    monkeypatch.setattr(tracker_module, "load_checkpoint", lambda path: reads.append(path) or load_checkpoint(path))
    take = _take(tmp_path / "take.npz", [(1, "locked")])
    options = TrackerOptions(checkpoint=untrained_checkpoint, ict_model=ict_npz_path, identity_take=take, refine_iters=2, detector="full-range")
    tracker = FaceTracker.from_options(options)
    try:
        assert tracker.refine and tracker.identity.shape == (100,) and np.allclose(tracker.identity, 1.0)
        assert tracker.fitter.refiner.settings.iterations == 2 and tracker.detector.full_range
    finally:
        tracker.close()
    assert reads == [untrained_checkpoint]
    with pytest.raises(TrackerError, match="the head model's 'identity' group 100"):
        FaceTracker.from_options(TrackerOptions(checkpoint=untrained_checkpoint, ict_model=ict_npz_path, identity_take=_take(tmp_path / "small.npz", [(0, "locked")], groups={"identity": 10})))


def test_refinement_settings_are_the_options(untrained_checkpoint: Path, ict_npz_path: Path) -> None:
    """``refine_settings`` tunes the refinement; ``refine_iters`` (the command line's) replaces its
    iterations; ``photos`` and ``refine_start`` reach the tracker, and so does ``crop_smoothing``."""
    from tracker.fitting.refinement import RefineSettings

    tuned = RefineSettings(huber=3.0, calibration_frames=10)
    assert TrackerOptions(refine_settings=tuned).refinement_settings() == tuned
    assert TrackerOptions(refine_settings=tuned, refine_iters=7).refinement_settings() == RefineSettings(iterations=7, huber=3.0, calibration_frames=10)
    assert TrackerOptions(refine_settings=tuned).resolved_refine_iters() == DEFAULT_ITERATIONS
    assert TrackerOptions().refinement_settings() == RefineSettings()
    options = TrackerOptions(checkpoint=untrained_checkpoint, ict_model=ict_npz_path, runtime="torch", refine_settings=tuned, refine_iters=5,
                             photos=True, refine_start="mean", smoothing=False, crop_smoothing=True)
    tracker = FaceTracker.from_options(options)
    try:
        assert tracker.fitter.refiner.settings == RefineSettings(iterations=5, huber=3.0, calibration_frames=10)
        assert tracker.photos and tracker.refine_start == "mean" and tracker.detector.full_range and not tracker.smoothing
        assert tracker.cropper.smoothing is not None  # the crop box smoothed all the same
    finally:
        tracker.close()


def test_live_command_line_maps_onto_the_options(capsys) -> None:
    parser = live.build_parser()
    options = live.tracker_options(parser.parse_args(["--camera", "0"]))
    assert options == TrackerOptions()  # the command line's defaults are the library's
    args = parser.parse_args(["--camera", "0", "--refine-iters", "3", "--detector", "full-range", "--identity", "t.npz",
                              "--identity-track", "4", "--max-faces", "2", "--no-smoothing", "--focal", "600"])
    assert live.tracker_options(args) == TrackerOptions(refine_iters=3, detector="full-range", identity_take="t.npz",
                                                        identity_track=4, max_faces=2, smoothing=False, focal=600.0)
    assert live.tracker_options(parser.parse_args(["--camera", "0", "--no-refine"])).refine is False
    assert live.tracker_options(parser.parse_args(["--camera", "0", "--arkit-from", "mesh"])).arkit_from == "mesh"
    for bad in (["--refine-iters", "0"], ["--refine-iters", "two"], ["--identity-track", "-1"], ["--detector", "long-range"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--camera", "0", *bad])
    err = capsys.readouterr().err
    assert "--refine-iters: must be a positive whole number, got '0'" in err and "got 'two'" in err
    assert "--identity-track: must be a whole number >= 0" in err


def test_evaluate_real_command_line_has_the_refinement_options() -> None:
    parser = evaluate_real.build_parser()
    args = parser.parse_args(["--checkpoint", "c.pt"])
    assert args.refine is True and args.refine_iters is None and args.detector == "short-range"
    assert evaluate_real.video_options(args) == TrackerOptions(checkpoint="c.pt")  # the app's tracker, one face
    assert evaluate_real.image_options(args, refine=False) == TrackerOptions(checkpoint="c.pt", max_faces=evaluate_real.IMAGE_MAX_FACES, smoothing=False,
                                                                             photos=True, detector="full-range", refine=False)
    assert evaluate_real.video_options(parser.parse_args(["--checkpoint", "c.pt", "--no-smoothing"])).smoothing is False
    args = parser.parse_args(["--checkpoint", "c.pt", "--no-refine", "--refine-iters", "6", "--detector", "full-range"])
    assert args.refine is False and args.refine_iters == 6 and args.detector == "full-range"
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "c.pt", "--refine-iters", "-2"])


def test_fitted_head_model_and_its_start() -> None:
    """FLAME files with an ICT checkpoint fit FLAME, from a PnP pose by default;
    the checkpoint's own head model starts from the network's prediction."""
    assert TrackerOptions().fitted_head_model("ict") == "ict" and TrackerOptions().resolved_refine_start("ict") == "network"
    flame = TrackerOptions(flame_dir="flame")
    assert flame.fitted_head_model("ict") == "flame" and flame.resolved_refine_start("ict") == tracker_options.OTHER_HEAD_START
    assert flame.resolved_refine_start("flame") == "network"  # a FLAME checkpoint
    assert TrackerOptions(head_model="flame", refine_start="pnp").resolved_refine_start("ict") == "pnp"
    assert TrackerOptions(head_model="ict", flame_dir="flame").fitted_head_model("flame") == "ict"


def test_arkit_weights_from_their_own_fit_leave_the_mesh_alone(untrained_checkpoint: Path, ict_npz_path: Path, shared_path: Path) -> None:
    """``arkit_from``: "network" gives the ICT tracker an ARKit fit of its own (ARKIT_SETTINGS, guided
    by the network); the mesh is the same as with "mesh", whose weights are the mesh's expression
    mapped to ARKit, through the track's steady-weights filter. reset() forgets the ARKit fit's
    tracks too (a new clip starts afresh)."""
    from tracker.fitting.arkit import ARKIT_NAMES, WeightFilter, ict_to_arkit_matrix
    from tracker.fitting.refinement import ARKIT_SETTINGS
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source

    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    runs, clocks = {}, []
    for source in ("mesh", "network"):
        tracker = FaceTracker.from_options(TrackerOptions(checkpoint=untrained_checkpoint, ict_model=ict_npz_path, runtime="torch", arkit_from=source))
        faces = []

        def keep(result, faces=faces, source=source) -> None:
            faces.extend(result.faces[:1])
            if source == "mesh":
                clocks.append(result.frame.timestamp if result.frame.source_time is None else result.frame.source_time)

        try:
            Pipeline(MediaClockSource(open_source(video, realtime=False)), tracker, [keep], mode="sequential", max_frames=12).run()
            if source == "network":
                assert tracker.arkit_fit is not None and tracker.arkit_fit.fitter.refiner.settings == ARKIT_SETTINGS
                assert tracker.arkit_fit.fitter._tracks
                tracker.reset()
                assert not tracker.arkit_fit.fitter._tracks
            else:
                assert tracker.arkit_fit is None
                matrix = ict_to_arkit_matrix(tracker.head.expression_names)
        finally:
            tracker.close()
        runs[source] = faces
    assert len(runs["mesh"]) == len(runs["network"]) == 12
    lids_and_mouth = [i for i, name in enumerate(ARKIT_NAMES) if not name.startswith("eyeLook")]  # eyeLook: from the irises
    steady = WeightFilter()
    for mesh_face, network_face, clock in zip(runs["mesh"], runs["network"], clocks, strict=True):
        np.testing.assert_array_equal(mesh_face.params["expression"], network_face.params["expression"])  # the mesh does not change
        expected = steady(np.clip(matrix @ mesh_face.params["expression"].numpy(), 0.0, 1.0), clock)
        np.testing.assert_allclose(mesh_face.avatar.raw_weights[lids_and_mouth], expected[lids_and_mouth], atol=1e-6)
    difference = np.abs(np.stack([f.avatar.raw_weights for f in runs["network"]]) - np.stack([f.avatar.raw_weights for f in runs["mesh"]]))
    assert difference[:, lids_and_mouth].max() > 0.01  # the ARKit fit is another solve


def test_a_file_gives_the_same_faces_however_fast_it_is_tracked(untrained_checkpoint: Path, ict_npz_path: Path, shared_path: Path) -> None:
    """The smoothing of a file's frames (crop box, parameters, ARKit weights) runs on the file's own
    media time (``face_tracker.smoothing_clock``), not on when each frame was read: a file tracked
    while a slow sink holds every frame gives the same numbers as one tracked at full speed."""
    import time

    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import open_source

    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=untrained_checkpoint, ict_model=ict_npz_path, runtime="torch"))
    runs = []
    try:
        for delay in (0.0, 0.04):
            faces = []

            def keep(result, faces=faces, delay=delay) -> None:
                faces.extend(result.faces[:1])
                time.sleep(delay)

            tracker.reset()
            Pipeline(open_source(video, realtime=False), tracker, [keep], mode="sequential", max_frames=15).run()
            runs.append(faces)
    finally:
        tracker.close()
    assert len(runs[0]) == len(runs[1]) == 15
    for fast, slow in zip(*runs, strict=True):
        for group in fast.params:
            np.testing.assert_array_equal(fast.params[group], slow.params[group])
        np.testing.assert_array_equal(fast.avatar.weights, slow.avatar.weights)
        np.testing.assert_array_equal(fast.crop_box, slow.crop_box)
