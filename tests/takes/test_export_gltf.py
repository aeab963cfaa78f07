"""glb export of takes (``tracker.takes.gltf``), checked in a real client: headless Blender imports
the file, and its evaluated vertices at sampled keyframes match ``decode`` of the take's parameters
(ICT and the generated FLAME model), posed into the avatar frame, within 0.1 mm.

The Blender tests run Debian's ``blender`` (3.4; ``.ci/run`` installs it) and are skipped where it
is not on PATH. This file is also the picture helper for a real take:

    python tests/takes/test_export_gltf.py --render take.npz --glb take.glb --frame 10 \\
        --video clip.mp4 --out blender_render.png

renders frame 10 of the exported take with Workbench through the take's camera and writes it
beside the video's frame 10 (video | render | both blended).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch

PROJECT = Path(__file__).resolve().parents[2]
if str(PROJECT) not in sys.path:  # run as a script (the render helper)
    sys.path.insert(0, str(PROJECT))

from tests.flame_factory import make_flame_dir  # noqa: E402
from tests.takes.readers import read_glb_header  # noqa: E402
from tracker.errors import TrackerError  # noqa: E402
from tracker.export import main as export_main  # noqa: E402
from tracker.geometry.camera import head_to_camera  # noqa: E402
from tracker.geometry.rotations import euler_to_rotation_6d, rotation_6d_to_matrix  # noqa: E402
from tracker.head_models import load_head_model  # noqa: E402
from tracker.head_models.base import RotationPrior  # noqa: E402
from tracker.takes.checks import select_track  # noqa: E402
from tracker.takes.gltf import (  # noqa: E402
    CHECK_TOLERANCE,
    _float64,
    evaluate,
    export_glb,
    track_frames,
)
from tracker.takes.meshes import load_take_model  # noqa: E402
from tracker.takes.recording import Recorder, read_take  # noqa: E402

TOLERANCE = 1e-4  # m: 0.1 mm
BLENDER = shutil.which("blender")
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not on PATH (Debian: apt-get install blender python3-numpy; .ci/run does)")

# Runs inside Blender: for each job, import the glb into an empty scene, then at each time (s) set
# the scene there and save the evaluated mesh's world-space vertices and its shape-key values.
BLENDER_EVALUATE = r"""
import numpy; numpy.bool = bool  # Debian's Blender 3.4 glTF importer still uses numpy.bool (numpy >= 1.24 removed it)
import json, sys, bpy
import numpy as np
for job in json.loads(sys.argv[sys.argv.index("--") + 1]):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    fps = scene.render.fps / scene.render.fps_base
    bpy.ops.import_scene.gltf(filepath=job["glb"])
    meshes = [o for o in scene.objects if o.type == "MESH"]
    obj = meshes[0]
    keys = list(obj.data.shape_keys.key_blocks)[1:] if obj.data.shape_keys else []
    armature = obj.parent if obj.parent is not None and obj.parent.type == "ARMATURE" else None
    info = {"fps": fps, "meshes": len(meshes), "objects": sorted(o.type for o in scene.objects), "vertices": len(obj.data.vertices),
            "shape_keys": [k.name for k in keys], "sliders": [[k.slider_min, k.slider_max] for k in keys],
            "bones": [b.name for b in armature.data.bones] if armature else []}
    arrays = {}
    for i, seconds in enumerate(job["times"]):
        frame = seconds * fps
        scene.frame_set(int(np.floor(frame)), subframe=float(frame - np.floor(frame)))
        evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.to_mesh()
        co = np.empty(3 * len(mesh.vertices), np.float32)
        mesh.vertices.foreach_get("co", co)
        matrix = np.array(evaluated.matrix_world, np.float64)
        arrays[f"vertices_{i}"] = co.reshape(-1, 3).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
        arrays[f"values_{i}"] = np.array([k.value for k in keys], np.float64)
        evaluated.to_mesh_clear()
    np.savez(job["out"], info=json.dumps(info), **arrays)
"""

# Runs inside Blender: import the glb, go to the time, render through the take's camera with Workbench.
BLENDER_RENDER = r"""
import numpy; numpy.bool = bool
import json, math, sys, bpy
job = json.loads(sys.argv[sys.argv.index("--") + 1])
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
bpy.ops.import_scene.gltf(filepath=job["glb"])
fps = scene.render.fps / scene.render.fps_base
frame = job["time"] * fps
scene.frame_set(int(math.floor(frame)), subframe=frame - math.floor(frame))
camera = bpy.data.cameras.new("take_camera")
obj = bpy.data.objects.new("take_camera", camera)
scene.collection.objects.link(obj)
obj.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looks down Blender's +y = the avatar frame's -z
width, height = job["size"]
cx, cy = job["principal"]
camera.sensor_fit, camera.sensor_width = "HORIZONTAL", 36.0
camera.lens = job["focal"] * 36.0 / width
camera.shift_x, camera.shift_y = (width / 2 - cx) / max(width, height), (cy - height / 2) / max(width, height)
camera.clip_start, camera.clip_end = 0.01, 100.0
scene.camera = obj
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
scene.display.shading.light = "STUDIO"
scene.display.shading.color_type = "SINGLE"
scene.display.shading.single_color = (0.8, 0.62, 0.55)
scene.render.filepath = job["out"]
scene.render.image_settings.file_format = "PNG"
bpy.ops.render.render(write_still=True)
"""


def run_blender(script: str, payload) -> str:
    """Run ``script`` in headless Blender with ``payload`` (JSON) after ``--``; its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # Debian's Blender embeds the system Python and finds its home from PATH: keep a pyenv or
    # virtualenv python3 (this test's) from being taken for it
    env["PATH"] = os.path.dirname(BLENDER) + os.pathsep + env.get("PATH", "")
    command = [BLENDER, "-b", "--factory-startup", "--python-exit-code", "3", "--python-expr", script, "--", json.dumps(payload)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"blender failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def blender_evaluate(jobs: list[tuple[Path, list[float]]], folder: Path) -> list[tuple[dict, list[np.ndarray], list[np.ndarray]]]:
    """[(glb, times)] -> per job (info, [world vertices (V, 3)] and [shape-key values] per time), Blender's axes."""
    payload = [{"glb": str(glb), "times": [float(t) for t in times], "out": str(folder / f"blender_{i}.npz")} for i, (glb, times) in enumerate(jobs)]
    run_blender(BLENDER_EVALUATE, payload)
    results = []
    for job in payload:
        with np.load(job["out"]) as npz:
            count = len(job["times"])
            results.append((json.loads(str(npz["info"])), [npz[f"vertices_{i}"] for i in range(count)], [npz[f"values_{i}"] for i in range(count)]))
    return results


def blender_vertex_order(glb: Path) -> np.ndarray:
    """The glb vertex each Blender vertex is (its importer appends each primitive's used vertices,
    in increasing index, primitive after primitive)."""
    gltf = pygltflib.GLTF2().load(str(glb))
    blob = gltf.binary_blob()
    order = []
    for primitive in gltf.meshes[0].primitives:
        accessor = gltf.accessors[primitive.indices]
        view = gltf.bufferViews[accessor.bufferView]
        dtype = {pygltflib.UNSIGNED_SHORT: np.uint16, pygltflib.UNSIGNED_INT: np.uint32}[accessor.componentType]
        indices = np.frombuffer(blob, dtype, accessor.count, view.byteOffset + (accessor.byteOffset or 0))
        order.append(np.unique(indices))
    return np.concatenate(order).astype(np.int64)


def glb_accessor(glb: Path, index: int) -> np.ndarray:
    """A float accessor of the glb as an array (count, width)."""
    gltf = pygltflib.GLTF2().load(str(glb))
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[accessor.type]
    return np.frombuffer(gltf.binary_blob(), np.float32, accessor.count * width, view.byteOffset + (accessor.byteOffset or 0)).reshape(accessor.count, width)


@torch.no_grad()
def expected_blender_vertices(model, take, rows) -> np.ndarray:
    """(N, V, 3) ``decode`` of the take's records ``rows`` posed into the camera frame
    (``head_to_camera``), then the avatar frame (FLIP), then Blender's axes (x, -z, y), float64."""
    model = _float64(model)
    params = {g: torch.from_numpy(v[rows]).double() for g, v in take.params.items() if g in model.param_groups}
    vertices = model.decode(params)
    rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[rows]).double())
    camera = head_to_camera(vertices, rotation, torch.from_numpy(take.translation[rows]).double()).numpy()
    avatar = camera * np.array([1.0, -1.0, -1.0])
    return np.stack([avatar[..., 0], -avatar[..., 2], avatar[..., 1]], axis=-1)


# -- takes --------------------------------------------------------------------------------------
# frame i of the test takes: time TIMES[i]; frame 4 was dropped by the source (no record at all,
# its time skipped), frame 3 has no face; track 7 (fewer records, ignored) appears in frames 1-2
FRAMES = (0, 1, 2, 3, 5, 6, 7)
NO_FACE = (3,)


def _time(frame: int) -> float:
    return 12.5 + frame / 30.0


def _pose(frame: int) -> tuple[np.ndarray, np.ndarray]:
    """A head pose per frame: turning and nodding, 60 cm in front of the camera."""
    euler = torch.tensor([[0.15 * math.sin(frame), 0.35 - 0.12 * frame, 0.08 * frame - 0.2]], dtype=torch.float64)
    return euler_to_rotation_6d(euler)[0].numpy(), np.array([0.02 * frame - 0.05, 0.01 * frame, 0.6 + 0.02 * frame])


def record_take(path: Path, model, params: dict[str, torch.Tensor], head_model: str) -> Path:
    """A take of ``model``'s ``params`` (row r for frame FRAMES[r]), with the layout above."""
    groups = {g: spec.size for g, spec in model.param_groups.items()}
    with Recorder(path, head_model, groups, focal=(600.0, 600.0), principal=(320.0, 240.0)) as recorder:
        for r, frame in enumerate(FRAMES):
            if frame in NO_FACE:
                recorder.append(_time(frame), frame, None)
                continue
            r6d, t = _pose(frame)
            recorder.append(_time(frame), frame, {g: v[r].numpy() for g, v in params.items()}, rotation_6d=r6d, translation=t, track_id=0)
            if frame in (1, 2):
                other = {g: v[(r + 3) % len(FRAMES)].numpy() for g, v in params.items()}
                recorder.append(_time(frame), frame, other, rotation_6d=r6d, translation=t + 0.1, track_id=7)
    return path


@pytest.fixture(scope="module")
def ict_model(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


@pytest.fixture(scope="module")
def ict_take(tmp_path_factory, ict_model) -> Path:
    """An ICT take: one identity, prior expressions, one weight above 1 and one below 0 (split into targets)."""
    g = torch.Generator().manual_seed(3)
    params = ict_model.sample_params(len(FRAMES), generator=g, device="cpu")
    params["identity"] = params["identity"][:1].expand(len(FRAMES), -1).clone()
    params["expression"][1, 0], params["expression"][2, 5] = 1.4, -0.3
    return record_take(tmp_path_factory.mktemp("ict") / "take.npz", ict_model, params, "ict")


@pytest.fixture(scope="module")
def flame_setup(tmp_path_factory):
    """(FLAME folder, its model, a take): prior samples with wide global, neck, jaw and eye rotations,
    eyelids and a translation."""
    root = tmp_path_factory.mktemp("flame")
    folder = make_flame_dir(root, "2023")
    model = load_head_model("flame", folder)
    g = torch.Generator().manual_seed(5)
    params = model.sample_params(len(FRAMES), generator=g, device="cpu")
    wide = RotationPrior(std_deg=(20.0, 25.0, 10.0))
    for key in ("global", "neck", "eyes", "jaw"):
        params[key] = wide.sample(len(FRAMES), model.param_groups[key].size, generator=g)
    params["shape"] = params["shape"][:1].expand(len(FRAMES), -1).clone()
    params["translation"] = 0.02 * torch.randn(len(FRAMES), 3, generator=g)
    if "eyelids" in params:
        params["eyelids"] = torch.tensor([0.0, 0.8, -0.4, 0.0, 1.3, 0.2, -0.9])[:, None] * torch.tensor([1.0, -0.7])
    return folder, model, record_take(root / "take.npz", model, params, "flame")


def _face_keys(frames) -> list[int]:
    return [k for k in range(len(frames)) if frames.found[k]]


# -- glb structure (no Blender) ------------------------------------------------------------------
def test_ict_glb_layout(ict_take, ict_model, tmp_path):
    take = read_take(ict_take)
    result = export_glb(take, ict_model, tmp_path / "take.glb")
    gltf = read_glb_header(result.path)
    assert result.track == 0 and result.keyframes == len(FRAMES) and result.gaps == [3]
    assert result.max_check_error < CHECK_TOLERANCE
    mesh = gltf["meshes"][0]
    names = mesh["extras"]["targetNames"]
    # ICT's names, one target per shape; weight 1.4 scaled into [0, 1], -0.3 split into two
    assert names[0] == ict_model.expression_names[0] and f"{ict_model.expression_names[5]}_neg" in names
    assert len(names) == len(ict_model.expression_names) + 1
    assert [p["material"] for p in mesh["primitives"]] == [0, 1]  # solid layers, see-through layers
    assert [n["name"] for n in gltf["nodes"]] == ["camera", "head", "head_mesh"]
    assert gltf["skins"][0]["joints"] == [1] and gltf["nodes"][2] == {"mesh": 0, "skin": 0, "name": "head_mesh"}
    assert gltf["cameras"][0]["perspective"]["yfov"] == pytest.approx(2 * math.atan(240 / 600))
    animation = gltf["animations"][0]
    assert sorted((c["target"]["node"], c["target"]["path"]) for c in animation["channels"]) == [(1, "rotation"), (1, "translation"), (2, "weights")]
    assert {s["interpolation"] for s in animation["samplers"]} == {"LINEAR"}
    times = glb_accessor(result.path, animation["samplers"][0]["input"])[:, 0]
    np.testing.assert_allclose(times, [_time(f) - _time(0) for f in FRAMES], atol=1e-6)  # the dropped frame keeps its time
    weights = glb_accessor(result.path, animation["samplers"][2]["output"]).reshape(len(FRAMES), -1)
    assert weights.min() >= 0.0 and weights.max() <= 1.0
    np.testing.assert_array_equal(weights[3], weights[2])  # no face in frame 3: hold frame 2's weights


def test_ict_targets_are_the_identity_independent_expression_basis(ict_take, ict_model, tmp_path):
    take = read_take(ict_take)
    first = export_glb(take, ict_model, tmp_path / "a.glb")
    take.params["identity"][:] = 0.5 * take.params["identity"][:] - 1.0  # another person
    second = export_glb(take, ict_model, tmp_path / "b.glb")
    gltf = read_glb_header(first.path)
    targets = gltf["meshes"][0]["primitives"][0]["targets"]
    basis = ict_model.expression_basis.reshape(len(ict_model.expression_names), -1, 3).numpy()
    for k in (0, 7, 30):
        a, b = glb_accessor(first.path, targets[k]["POSITION"]), glb_accessor(second.path, targets[k]["POSITION"])
        info = gltf["meshes"][0]["extras"]["n2f"]["targets"][k]  # which shape, sign and scale
        np.testing.assert_allclose(a, b, atol=1e-9)
        shape = ict_model.expression_names.index(info["source"])
        np.testing.assert_allclose(a, basis[shape] * info["sign"] * info["scale"], atol=1e-7)
    base_a = glb_accessor(first.path, gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    base_b = glb_accessor(second.path, gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    assert np.abs(base_a - base_b).max() > 1e-3  # the identity is baked into the base mesh


def test_flame_glb_layout_and_own_evaluation(flame_setup, tmp_path):
    folder, model, path = flame_setup
    take = read_take(path)
    result = export_glb(take, model, tmp_path / "flame.glb")
    assert result.max_check_error < 1e-7
    assert result.joints[:6] == ["head", "global", "neck", "jaw", "eye_left", "eye_right"]
    gltf = read_glb_header(result.path)
    names = gltf["meshes"][0]["extras"]["targetNames"]
    assert "pose_jaw_00_pos" in names or "pose_jaw_00_neg" in names
    assert sum(n.startswith("pose_") for n in names) >= 36
    nodes = {n["name"]: i for i, n in enumerate(gltf["nodes"])}
    assert gltf["nodes"][nodes["head"]]["children"] == [nodes["global"]]
    assert sorted(gltf["nodes"][nodes["neck"]]["children"])[:3] == [nodes["jaw"], nodes["eye_left"], nodes["eye_right"]]
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    if "eyelids" in model.param_groups:
        assert any(j.startswith("eyelid_") for j in result.joints) and "JOINTS_1" in attributes
    # inverse bind matrices: the identity's rest joints (J_regressor @ shaped template)
    ibm = glb_accessor(result.path, gltf["skins"][0]["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    shaped = model.v_template.double() + torch.einsum("vck,k->vc", model.shapedirs[..., :model.param_groups["shape"].size].double(),
                                                      torch.from_numpy(take.params["shape"][0]).double())
    rest = (model.J_regressor.double() @ shaped).numpy()
    np.testing.assert_allclose(-ibm[1:6, :3, 3], rest, atol=1e-6)


@torch.no_grad()
def test_encoding_evaluates_to_decode_at_every_keyframe(flame_setup):
    """The exporter's own glTF evaluation (the specification's morph + skinning) at every keyframe."""
    from tracker.takes.gltf import _flame_rig, _head_pose, _split_morphs

    _, model, path = flame_setup
    take = read_take(path)
    frames = track_frames(take, 0)
    model64 = _float64(model)
    rig = _flame_rig(model64, take, frames)
    rig.joints[0].rotation, rig.joints[0].translation = _head_pose(take, frames)
    targets = _split_morphs(rig.morphs)
    expected = expected_blender_vertices(model, take, frames.source)
    for k in range(len(frames)):
        avatar = evaluate(rig, targets, k)
        blender = np.stack([avatar[:, 0], -avatar[:, 2], avatar[:, 1]], axis=-1)
        assert np.abs(blender - expected[k]).max() < 1e-7  # FLAME's weights sum to 1 within float32; glTF's exactly


def test_track_selection_and_errors(ict_take, ict_model, tmp_path, capsys):
    take = read_take(ict_take)
    assert select_track(take) == 0 and select_track(take, 7) == 7
    with pytest.raises(TrackerError, match="no track 5; its tracks: 0 .*, 7"):
        export_glb(take, ict_model, tmp_path / "x.glb", track=5)
    other = export_glb(take, ict_model, tmp_path / "seven.glb", track=7)
    assert other.track == 7 and other.gaps == [0, 3, 5, 6, 7]
    with pytest.raises(TrackerError, match="is a folder"):
        export_glb(take, ict_model, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrackerError, match="cannot write"):
        export_glb(take, ict_model, blocker / "take.glb")
    empty = tmp_path / "empty.npz"
    with Recorder(empty, "ict", {g: p.size for g, p in ict_model.param_groups.items()}) as recorder:
        recorder.append(0.0, 0, None)
        recorder.append(0.1, 1, None)
    with pytest.raises(TrackerError, match="no frame with a face"):
        export_glb(read_take(empty), ict_model, tmp_path / "empty.glb")
    assert export_main([str(empty), "--format", "glb", "--out", str(tmp_path / "e.glb")]) == 2
    assert "no frame with a face" in capsys.readouterr().err
    take.timestamp[take.frame_index == 5] = take.timestamp[take.frame_index == 3][0]  # two frames at one time
    with pytest.raises(TrackerError, match="do not increase"):
        export_glb(take, ict_model, tmp_path / "clock.glb")


def test_cli_writes_a_glb(ict_take, ict_npz_path, tmp_path, capsys):
    out = tmp_path / "sub" / "take.glb"
    assert export_main([str(ict_take), "--format", "glb", "--out", str(out), "--head-model-path", str(ict_npz_path), "--gaps", "hide"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: ict, track 0, {len(FRAMES)} keyframes" in printed and "1 frames without this track's face, hidden: 3" in printed
    gltf = read_glb_header(out)
    scale = [s for c, s in zip(gltf["animations"][0]["channels"], gltf["animations"][0]["samplers"]) if c["target"]["path"] == "scale"]
    assert len(scale) == 1 and scale[0]["interpolation"] == "STEP"
    np.testing.assert_array_equal(glb_accessor(out, scale[0]["output"])[:, 0], [0.0 if f in NO_FACE else 1.0 for f in FRAMES])
    assert not list(tmp_path.glob("**/*.tmp"))


# -- in Blender ----------------------------------------------------------------------------------
def _check_in_blender(glb: Path, take, model, folder: Path, keys: list[int] | None = None) -> float:
    """Import ``glb`` in Blender, evaluate it at keyframes ``keys`` (default: all) and compare with
    decode; returns the largest distance (m)."""
    frames = track_frames(take, select_track(take))
    keys = list(range(len(frames))) if keys is None else keys
    times = [float(np.float32(frames.time[k])) for k in keys]
    (info, vertices, values), = blender_evaluate([(glb, times)], folder)
    order = blender_vertex_order(glb)
    assert info["meshes"] == 1 and info["vertices"] == len(order)
    expected = expected_blender_vertices(model, take, frames.source[keys])
    gltf = read_glb_header(glb)
    assert info["shape_keys"] == gltf["meshes"][0]["extras"]["targetNames"]
    weights_sampler = next(s for c, s in zip(gltf["animations"][0]["channels"], gltf["animations"][0]["samplers"]) if c["target"]["path"] == "weights")
    weights = glb_accessor(glb, weights_sampler["output"]).reshape(len(frames), -1)
    error = 0.0
    for i, k in enumerate(keys):
        np.testing.assert_allclose(values[i], weights[k], atol=1e-6)  # Blender's shape-key values: the file's, unclamped
        error = max(error, float(np.abs(vertices[i] - expected[i][order]).max()))
    return error


@needs_blender
def test_ict_take_in_blender_matches_decode(ict_take, ict_model, tmp_path):
    take = read_take(ict_take)
    glb = export_glb(take, ict_model, tmp_path / "take.glb").path
    error = _check_in_blender(glb, take, ict_model, tmp_path)
    print(f"ICT: largest vertex distance Blender vs decode over {len(FRAMES)} keyframes: {error * 1000:.6f} mm")
    assert error < TOLERANCE


@needs_blender
def test_flame_take_in_blender_matches_decode(flame_setup, tmp_path):
    _, model, path = flame_setup
    take = read_take(path)
    result = export_glb(take, model, tmp_path / "flame.glb")
    error = _check_in_blender(result.path, take, model, tmp_path)
    print(f"FLAME: largest vertex distance Blender vs decode over {len(FRAMES)} keyframes: {error * 1000:.6f} mm")
    assert error < TOLERANCE


@needs_blender
def test_hidden_gap_in_blender(ict_take, ict_model, tmp_path):
    take = read_take(ict_take)
    glb = export_glb(take, ict_model, tmp_path / "hide.glb", gaps="hide").path
    frames = track_frames(take, 0)
    times = [float(np.float32(frames.time[k])) for k in (2, 3, 4)]
    (info, vertices, _), = blender_evaluate([(glb, times)], tmp_path)
    assert np.ptp(vertices[1], axis=0).max() < 1e-6  # frame 3: no face, the head scaled to a point
    assert np.ptp(vertices[0], axis=0).max() > 0.1 and np.ptp(vertices[2], axis=0).max() > 0.1


@pytest.fixture(scope="module")
def real_take(tmp_path_factory, shared_path, ict_npz_path) -> Path:
    """A take of the first frames of a real video, tracked with the shipped checkpoint."""
    checkpoint = PROJECT / "assets" / "n2fnet_ict_resnet18.pt"
    if not checkpoint.is_file():
        pytest.skip(f"the shipped checkpoint {checkpoint} is missing")
    from app import live

    path = tmp_path_factory.mktemp("real") / "take.npz"
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    assert live.main(["--video", str(video), "--headless", "--max-frames", "8", "--record", str(path),
                      "--checkpoint", str(checkpoint), "--ict-model", str(ict_npz_path), "--quiet"]) == 0
    return path


@needs_blender
def test_real_take_in_blender_matches_decode(real_take, ict_npz_path, tmp_path):
    take = read_take(real_take)
    model = load_take_model(take, ict_npz_path)
    glb = export_glb(take, model, tmp_path / "real.glb").path
    frames = track_frames(take, 0)
    error = _check_in_blender(glb, take, model, tmp_path, keys=[0, len(frames) // 2, len(frames) - 1])
    print(f"real ICT take: largest vertex distance Blender vs decode: {error * 1000:.6f} mm")
    assert error < TOLERANCE


@needs_blender
def test_workbench_render_puts_the_head_on_the_face(real_take, ict_npz_path, tmp_path, shared_path):
    """A Workbench render of an exported frame through the take's camera covers the tracked face."""
    take = read_take(real_take)
    glb = export_glb(take, load_take_model(take, ict_npz_path), tmp_path / "real.glb").path
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    frame = int(take.frame_index[len(take) // 2])
    out = render_take_frame(real_take, glb, frame, tmp_path / "side_by_side.png", video)
    import cv2

    picture = cv2.imread(str(out))
    width = picture.shape[1] // 3
    render = picture[:, width : 2 * width].astype(np.int32)
    covered = np.abs(render - render[0, 0]).sum(axis=2) > 30  # not the background
    ys, xs = np.nonzero(covered)
    row = int(np.flatnonzero(take.frame_index == frame)[0])
    x0, y0, side = take.crop_box[row]
    assert covered.mean() > 0.02
    assert x0 <= np.median(xs) <= x0 + side and y0 <= np.median(ys) <= y0 + side


# -- the picture helper ----------------------------------------------------------------------------
def render_take_frame(take_path: Path, glb: Path, frame: int, out: Path, video: Path | None = None) -> Path:
    """Render frame ``frame`` of the exported ``glb`` (of ``take_path``) with Workbench through the
    take's camera; with ``video``, write video frame | render | both blended side by side to ``out``."""
    import cv2

    take = read_take(take_path)
    frames = track_frames(take, select_track(take))
    key = int(np.searchsorted(frames.frame_index, frame))
    if key >= len(frames) or frames.frame_index[key] != frame:
        raise SystemExit(f"the take has no frame {frame} (frames {frames.frame_index[0]}..{frames.frame_index[-1]})")
    row = frames.source[key]
    focal, principal = take.focal[row].astype(float), take.principal[row].astype(float)
    picture = None
    if video is not None:
        capture = cv2.VideoCapture(str(video))
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, picture = capture.read()
        capture.release()
        if not ok:
            raise SystemExit(f"cannot read frame {frame} of {video}")
    size = (picture.shape[1], picture.shape[0]) if picture is not None else (int(round(2 * principal[0])), int(round(2 * principal[1])))
    with tempfile.TemporaryDirectory() as folder:
        rendered = Path(folder) / "render.png"
        run_blender(BLENDER_RENDER, {"glb": str(glb), "time": float(np.float32(frames.time[key])), "size": list(size),
                                     "focal": float(focal[0]), "principal": principal.tolist(), "out": str(rendered)})
        image = cv2.imread(str(rendered))
    if picture is not None:
        image = np.concatenate([picture, image, cv2.addWeighted(picture, 0.5, image, 0.5, 0.0)], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), image)
    return out


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render one frame of an exported take with Blender's Workbench.")
    parser.add_argument("--render", type=Path, required=True, metavar="TAKE", help="the take (.npz)")
    parser.add_argument("--glb", type=Path, required=True, help="its glb export (python -m tracker.export TAKE --format glb)")
    parser.add_argument("--frame", type=int, default=0, help="the frame index to render")
    parser.add_argument("--video", type=Path, default=None, help="the take's video, to put its frame beside the render")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if BLENDER is None:
        raise SystemExit("blender is not on PATH")
    print(render_take_frame(args.render, args.glb, args.frame, args.out, args.video))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
