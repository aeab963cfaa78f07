"""glTF 2.0 binary (.glb) of a recorded take: one tracked person's head, animated, for Blender,
Unity and Unreal (written with pygltflib).

    export_glb(take, model, "take.glb", track=None, gaps="hold") -> GlbExport
    track_frames(take, track) -> TrackFrames     # K keyframes: one per frame of the take

The head of one track with its identity baked in, one morph target per expression shape (FLAME:
also its pose correctives, joints and eyelid carriers), the head pose, a camera; every keyframe
at the take's own time. Before writing, the encoding is evaluated at a few keyframes against
``decode`` (``evaluate``, ``CHECK_TOLERANCE``). Format: docs/gltf-export.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pygltflib as gl
import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write
from tracker.geometry.camera import FLIP_MATRIX
from tracker.geometry.rotations import (
    matrix_to_quaternion_xyzw,
    quaternion_xyzw_to_matrix,
    rotation_6d_to_matrix,
)
from tracker.head_models import HeadModel
from tracker.head_models.base import default_identity_group
from tracker.render.maps import NumpyVertexNormals
from tracker.takes.checks import check_clock, check_output, check_records, select_track
from tracker.takes.recording import Take

GAPS = ("hold", "hide")
FLAME_JOINTS = ("global", "neck", "jaw", "eye_left", "eye_right")
AXES = "xyz"
CHECK_TOLERANCE = 1e-5  # m: the exporter's own check of its encoding against decode (float32 data)
_CHECK_KEYS = 4  # keyframes checked (first, last, spread between)
_MIN_WEIGHT = 1e-9  # skin weights below this are dropped (and the rest renormalised)


@dataclass
class TrackFrames:
    """The keyframes of one track: one per frame of the take (K frames, increasing frame index).

    frame_index (K,) int64; time (K,) float64 seconds from ``start``, the take's first timestamp; row (K,)
    int64 the track's record in the frame (-1: no face of this track); source (K,) int64 the
    record whose values the keyframe holds (``row``, else the previous face record, else the first).
    """

    track: int
    frame_index: np.ndarray
    time: np.ndarray
    row: np.ndarray
    source: np.ndarray
    start: float = 0.0  # the take's first timestamp (of its first frame), seconds

    @property
    def found(self) -> np.ndarray:
        return self.row >= 0

    def __len__(self) -> int:
        return len(self.frame_index)


@dataclass
class GlbExport:
    """What ``export_glb`` wrote: the file, the track, keyframes (K) and frames without this
    track's face (their frame indices), morph target names, joint names, the largest distance (m)
    between the encoding and ``decode`` at the checked keyframes, notes for the user."""

    path: Path
    track: int
    keyframes: int
    gaps: list[int]
    morph_targets: list[str]
    joints: list[str]
    max_check_error: float
    notes: list[str] = field(default_factory=list)


def track_frames(take: Take, track: int) -> TrackFrames:
    """The keyframes of ``track`` (see ``TrackFrames``); TrackerError when the take's times are
    missing or do not increase with the frame index (``check_clock``; glTF needs increasing key times)."""
    clock = check_clock(take)
    frames, first = np.unique(take.frame_index, return_index=True)
    time = clock[first] - clock[first[0]]
    seconds = time.astype(np.float32)
    bad = np.flatnonzero(np.diff(seconds) <= 0)
    if len(bad):
        shown = ", ".join(f"{int(frames[i])} -> {int(frames[i + 1])}" for i in bad[:5])
        raise TrackerError(f"the take's timestamps do not increase from frame to frame (frames {shown}): "
                           "glTF needs increasing key times; the take's clock is broken there")
    mine = np.flatnonzero(take.face_found & (take.track_id == track))
    row = np.full(len(frames), -1, np.int64)
    row[np.searchsorted(frames, take.frame_index[mine])] = mine
    position = np.maximum.accumulate(np.where(row >= 0, np.arange(len(frames)), -1))
    source = np.where(position >= 0, row[np.maximum(position, 0)], row[row >= 0][0])
    return TrackFrames(track, frames.astype(np.int64), time, row, source.astype(np.int64), float(clock[first[0]]))


# -- the rig: what the file encodes, in float64 ------------------------------------------------
@dataclass
class Morph:
    """One morph target: ``delta`` (V, 3) metres and its coefficient per keyframe (K,)."""

    name: str
    delta: np.ndarray
    weight: np.ndarray


@dataclass
class Joint:
    """A node of the skeleton: ``parent`` index (-1: the root), rest translation (3,) in the
    parent's frame, inverse bind matrix (4, 4), and per keyframe (K rows) local rotation (x, y,
    z, w) and translation (None: the rest value, not animated)."""

    name: str
    parent: int
    rest: np.ndarray
    inverse_bind: np.ndarray
    rotation: np.ndarray | None = None
    translation: np.ndarray | None = None


@dataclass
class Rig:
    """The head as glTF will hold it. positions / normals (V, 3); primitives: (faces (F, 3),
    translucent); skin (V, J) dense weights over ``joints`` (rows sum to 1)."""

    positions: np.ndarray
    normals: np.ndarray
    primitives: list[tuple[np.ndarray, bool]]
    morphs: list[Morph]
    joints: list[Joint]
    skin: np.ndarray
    identity: tuple[str, np.ndarray] | None = None  # (group, values) baked into ``positions``
    notes: list[str] = field(default_factory=list)


def export_glb(take: Take, model: HeadModel, out: str | Path, track: int | None = None, gaps: str = "hold",
               camera: bool = True) -> GlbExport:
    """Write ``take``'s ``track`` (None: ``select_track``'s default) as a glb at ``out`` (atomically);
    ``model`` is the take's head model (``tracker.takes.meshes.load_take_model``). Layout: docs/gltf-export.md."""
    if gaps not in GAPS:
        raise ValueError(f"gaps must be one of {GAPS}, got {gaps!r}")
    out = Path(out)
    if out.is_dir():
        raise TrackerError(f"{out} is a folder: give the glb's file name, e.g. {out / 'take.glb'}")
    check_output(take, out, ".glb")
    track = select_track(take, track)
    frames = track_frames(take, track)
    check_records(take, frames.row[frames.found])
    pose = _head_pose(take, frames)
    if model.name not in ("flame", "ict"):
        raise TrackerError(f"glb export supports the ICT and FLAME head models, not {model.name!r}")
    model64 = _float64(model)
    rig = (_flame_rig if model.name == "flame" else _linear_rig)(model64, take, frames)
    rig.joints[0].rotation, rig.joints[0].translation = pose
    targets = _split_morphs(rig.morphs)
    error = _check_encoding(rig, targets, model64, take, frames)
    scale = None if gaps == "hold" else frames.found.astype(np.float64)
    gltf = _build_gltf(rig, targets, frames, scale, _camera(take, frames) if camera else None, take, model)
    data = b"".join(gltf.save_to_bytes())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, data)
    except OSError as err:
        raise TrackerError(f"cannot write {out}: {err.strerror or err}") from err
    gap_frames = frames.frame_index[~frames.found].tolist()
    return GlbExport(out, track, len(frames), gap_frames, [t[0] for t in targets], [j.name for j in rig.joints], error, rig.notes)


def _head_pose(take: Take, frames: TrackFrames) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) x, y, z, w quaternions and (K, 3) translations of the head in the avatar frame."""
    rows = frames.source
    r6d, t = take.rotation_6d[rows].astype(np.float64), take.translation[rows].astype(np.float64)
    missing = np.isnan(r6d).all(1) | np.isnan(t).all(1)  # recorded without a pose
    if missing.any():
        raise TrackerError(f"the take lacks the head pose (rotation, translation) for frames {frames.frame_index[missing][:10].tolist()}: "
                           "it cannot be placed in the camera's view")
    rotation = FLIP_MATRIX @ rotation_6d_to_matrix(torch.from_numpy(r6d)).numpy() @ FLIP_MATRIX
    return _quaternions(rotation), t @ FLIP_MATRIX


def _quaternions(matrices: np.ndarray) -> np.ndarray:
    """(K, 3, 3) rotations -> (K, 4) x, y, z, w, each on the side of the previous (shortest interpolation)."""
    quats = matrix_to_quaternion_xyzw(matrices)
    for k in range(1, len(quats)):
        if quats[k] @ quats[k - 1] < 0:
            quats[k] = -quats[k]
    return quats


def _params(take: Take, model: HeadModel, rows: np.ndarray, identity: tuple[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
    """{group: (len(rows), n) float64} of the take's records ``rows`` (groups the take lacks left
    out: neutral), the identity group set to the baked ``identity`` (group, values) for every row."""
    params = {g: torch.from_numpy(np.ascontiguousarray(take.params[g][rows], np.float64)) for g in model.param_groups if g in take.params}
    if identity is not None:
        params[identity[0]] = torch.from_numpy(np.tile(identity[1], (len(rows), 1)))
    return params


def _identity(model: HeadModel, take: Take, frames: TrackFrames, notes: list[str]) -> tuple[str, np.ndarray] | None:
    """(group, values) of the identity the glb bakes: the model's identity group ("identity",
    "shape") at the track's last record (in a finished take, the track table's identity); None
    when the model has none or the take lacks it (neutral). Notes when the track's records carry
    different identities (a take read from a journal while calibrating, or from before tracks)."""
    group = take.identity_group or default_identity_group(model.param_groups)
    if group is None or group not in take.params:
        return None
    values = take.params[group][frames.row[frames.found]].astype(np.float64)
    spread = float(np.abs(values - values[-1]).max())
    if spread > 1e-6:
        notes.append(f"the track's identity changes within the take (by up to {spread:.3g}); the glb bakes its last one")
    return group, values[-1]


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals (``NumpyVertexNormals``); (0, 0, 1) where a vertex
    has no face or only faces without area (glTF's normals are unit vectors)."""
    normals = NumpyVertexNormals(faces, len(vertices))(vertices)
    normals[np.einsum("ij,ij->i", normals, normals) < 0.25] = (0.0, 0.0, 1.0)
    return normals


def _primitives(model: HeadModel) -> list[tuple[np.ndarray, bool]]:
    """The model's render faces (opaque) and its other faces (translucent layers), when any."""
    faces = model.faces.cpu().numpy().astype(np.int64)
    solid = model.render_faces.cpu().numpy().astype(np.int64)
    if len(solid) == len(faces):
        return [(faces, False)]
    key = np.ascontiguousarray(solid).view([("", np.int64)] * 3).ravel()
    others = faces[~np.isin(np.ascontiguousarray(faces).view([("", np.int64)] * 3).ravel(), key)]
    return [(solid, False)] + ([(others, True)] if len(others) else [])


def _head_joint() -> Joint:
    return Joint("head", -1, np.zeros(3), np.eye(4))


@torch.no_grad()
def _linear_rig(model: HeadModel, take: Take, frames: TrackFrames) -> Rig:
    """A head model (float64) linear in its non-identity groups (ICT): base = decode(identity,
    neutral rest), one target per coefficient = decode of that coefficient at neutral + 1 minus
    the base (``_check_encoding`` then confirms the linearity on the take's frames)."""
    notes: list[str] = []
    identity = _identity(model, take, frames, notes)
    baked = identity[0] if identity is not None else default_identity_group(model.param_groups)
    neutral = {g: p.neutral(1).double() for g, p in model.param_groups.items()}
    if identity is not None:
        neutral[identity[0]] = torch.from_numpy(identity[1])[None]
    base = model.decode(neutral)[0].numpy()
    morphs = []
    names = getattr(model, "expression_names", ())
    for group, spec in model.param_groups.items():
        if group == baked:
            continue
        unit = {g: v.expand(spec.size, -1).clone() for g, v in neutral.items()}
        unit[group] = unit[group] + torch.eye(spec.size, dtype=torch.float64)
        deltas = model.decode(unit).numpy() - base
        recorded = take.params[group][frames.source].astype(np.float64) if group in take.params else neutral[group].numpy()
        values = recorded - neutral[group].numpy()
        for k in range(spec.size):
            name = str(names[k]) if group == "expression" and len(names) == spec.size else f"{group}_{k:03d}"
            morphs.append(Morph(name, deltas[k], values[:, k]))
    faces = model.faces.cpu().numpy().astype(np.int64)
    skin = np.ones((len(base), 1))
    return Rig(base, _vertex_normals(base, faces), _primitives(model), morphs, [_head_joint()], skin, identity, notes)


def _float64(model: HeadModel) -> HeadModel:
    """``model`` on the CPU in float64 (a copy unless it is already): the export computes in float64."""
    floats = [b for b in model.buffers() if b.is_floating_point()]
    if model.faces.device.type == "cpu" and all(b.dtype == torch.float64 for b in floats):
        return model
    return copy.deepcopy(model).to("cpu").double()


@torch.no_grad()
def _flame_rig(model: HeadModel, take: Take, frames: TrackFrames) -> Rig:
    """FLAME as morphs (expression, pose correctives) + a skin (FLAME's joints, eyelid carriers)."""
    notes: list[str] = []
    n_shape = model.param_groups["shape"].size
    shapedirs = model.shapedirs.double().cpu().numpy()  # (V, 3, n_shape + n_expression)
    shape_dirs, expr_dirs = shapedirs[..., :n_shape], shapedirs[..., n_shape:]
    identity = _identity(model, take, frames, notes)
    beta = np.zeros(n_shape) if identity is None else identity[1]
    template = model.v_template.double().cpu().numpy()
    regressor = model.J_regressor.double().cpu().numpy()
    weights = model.lbs_weights.double().cpu().numpy()
    parents = tuple(model.parents)
    v_shaped = template + shape_dirs @ beta
    rest_joints = regressor @ v_shaped  # (5, 3)

    params = model.complete_params(_params(take, model, frames.source, identity))
    psi = params["expression"].numpy()  # (K, E)
    rotations = model.joint_rotations(params).numpy()  # (K, 5, 3, 3) local
    joints_t = rest_joints + np.einsum("jv,vce,ke->kjc", regressor, expr_dirs, psi)  # (K, 5, 3)
    offset = params["translation"].numpy()  # (K, 3)

    morphs = [Morph(f"expression_{k:03d}", expr_dirs[:, :, k], psi[:, k]) for k in range(expr_dirs.shape[2])]
    posedirs = model.posedirs.double().cpu().numpy().reshape(-1, len(template), 3)  # (36, V, 3)
    features = (rotations[:, 1:] - np.eye(3)).reshape(len(frames), -1)  # (K, 36), FLAME's pose feature order
    for i in range(posedirs.shape[0]):
        joint, row, col = 1 + i // 9, (i % 9) // 3, i % 3
        morphs.append(Morph(f"pose_{FLAME_JOINTS[joint]}_{row}{col}", posedirs[i], features[:, i]))

    # world rotations W and skinning translations T of each joint per keyframe (head frame)
    world_rot = np.zeros_like(rotations)
    world_pos = np.zeros_like(joints_t)
    for j, p in enumerate(parents):
        if p < 0:
            world_rot[:, j], world_pos[:, j] = rotations[:, j], joints_t[:, j]
        else:
            world_rot[:, j] = world_rot[:, p] @ rotations[:, j]
            world_pos[:, j] = world_pos[:, p] + np.einsum("kab,kb->ka", world_rot[:, p], joints_t[:, j] - joints_t[:, p])
    skin_t = world_pos - np.einsum("kjab,kjb->kja", world_rot, joints_t - rest_joints) + offset[:, None]

    joints = [_head_joint()]
    for j, p in enumerate(parents):
        parent = 0 if p < 0 else 1 + p
        rest = rest_joints[j] - (rest_joints[p] if p >= 0 else 0.0)
        if p < 0:
            local_t = skin_t[:, j]
        else:
            local_t = np.einsum("kba,kb->ka", world_rot[:, p], skin_t[:, j] - skin_t[:, p])
        joints.append(Joint(FLAME_JOINTS[j] if len(parents) == len(FLAME_JOINTS) else f"joint_{j}", parent, rest,
                            _translation_matrix(-rest_joints[j]), _quaternions(rotations[:, j]), local_t))
    weights = weights / weights.sum(axis=1, keepdims=True)  # glTF's weights sum to 1 (FLAME's to 1 within float32)
    skin = np.concatenate([np.zeros((len(template), 1)), weights], axis=1)

    if "eyelids" in model.param_groups:
        eyelids = params["eyelids"].numpy()  # (K, 2)
        skin = _add_eyelid_carriers(model.eyelid_dirs.double().cpu().numpy(), eyelids, weights, world_rot, joints, skin, notes)

    faces = model.faces.cpu().numpy().astype(np.int64)
    return Rig(v_shaped, _vertex_normals(v_shaped, faces), _primitives(model), morphs, joints, skin, identity, notes)


def _add_eyelid_carriers(dirs: np.ndarray, eyelids: np.ndarray, weights: np.ndarray, world_rot: np.ndarray,
                         joints: list[Joint], skin: np.ndarray, notes: list[str]) -> np.ndarray:
    """Append the eyelid carrier joints (docs/gltf-export.md) to ``joints``; returns ``skin`` (V, J)
    with the carriers' columns appended and their shares taken from the main joints.

    dirs (2, V, 3) eyelid offsets per unit weight (left, right); eyelids (K, 2) weights; weights
    (V, 5) FLAME's skinning weights; world_rot (K, 5, 3, 3) the FLAME joints' rotations."""
    skin = skin.copy()
    main = weights.argmax(axis=1)  # (V,) each vertex's main FLAME joint
    main_weight = weights[np.arange(len(weights)), main]
    total = np.abs(dirs).sum(axis=(0, 2))  # (V,) every eyelid offset component a vertex can get per unit weight
    moved = total > 0
    if not moved.any():
        return skin
    length = float(np.max(total[moved] / main_weight[moved]))
    length = float(np.ceil(length * 1000.0) / 1000.0)  # a round length (mm) with room to spare
    columns = []
    for side, name in enumerate(("left", "right")):
        for joint in np.unique(main[np.abs(dirs[side]).sum(1) > 0]):
            for axis in range(3):
                for sign in (1.0, -1.0):
                    share = np.where((main == joint) & (np.sign(dirs[side, :, axis]) == sign), np.abs(dirs[side, :, axis]) / length, 0.0)
                    if not share.any():
                        continue
                    direction = np.zeros(3)
                    direction[axis] = sign * length
                    offset = eyelids[:, side, None] * direction  # (K, 3) head frame
                    local = np.einsum("kba,kb->ka", world_rot[:, joint], offset)  # in the joint's frame
                    parent = 1 + int(joint)
                    joints.append(Joint(f"eyelid_{name}_{joints[parent].name}_{AXES[axis]}_{'pos' if sign > 0 else 'neg'}", parent,
                                        np.zeros(3), joints[parent].inverse_bind, None, local))
                    columns.append(share)
                    skin[:, parent] -= share
    notes.append(f"eyelids: {len(columns)} carrier joints ({length * 1000:.0f} mm per unit eyelid weight)")
    return np.concatenate([skin, np.stack(columns, axis=1)], axis=1)


def _translation_matrix(t: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = t
    return matrix


# -- morph weights in [0, 1] ------------------------------------------------------------------
def _split_morphs(morphs: list[Morph]) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """[(name, target (V, 3), weights (K,) in [0, 1], info)]: each morph as one target, or as a
    "_pos" and a "_neg" target where its coefficient goes negative; a target is scaled by its
    coefficient's largest magnitude when that exceeds 1 (docs/gltf-export.md)."""
    out = []
    for morph in morphs:
        w = morph.weight
        scale = max(1.0, float(np.abs(w).max()) if len(w) else 1.0)
        if (w < 0).any():
            out.append((morph.name + "_pos", morph.delta * scale, np.maximum(w, 0.0) / scale, {"source": morph.name, "sign": 1, "scale": scale}))
            out.append((morph.name + "_neg", -morph.delta * scale, np.maximum(-w, 0.0) / scale, {"source": morph.name, "sign": -1, "scale": scale}))
        else:
            out.append((morph.name, morph.delta * scale, w / scale, {"source": morph.name, "sign": 1, "scale": scale}))
    return out


# -- checking the encoding ----------------------------------------------------------------------
def evaluate(rig: Rig, targets: list[tuple[str, np.ndarray, np.ndarray, dict]], key: int, head: bool = True) -> np.ndarray:
    """(V, 3) vertices the glTF encoding gives at keyframe ``key`` (morphs, then skinning through
    the node hierarchy, as the glTF specification defines them): the avatar frame, or with
    ``head`` False the head frame (the ``head`` joint's pose left out)."""
    positions = rig.positions + sum(weights[key] * target for _, target, weights, _ in targets)
    world = []
    for index, joint in enumerate(rig.joints):
        local = np.eye(4)
        if joint.rotation is not None and (head or index):
            local[:3, :3] = quaternion_xyzw_to_matrix(joint.rotation[key])
        if index == 0 and not head:
            local[:3, 3] = 0.0
        else:
            local[:3, 3] = joint.rest if joint.translation is None else joint.translation[key]
        world.append(local if joint.parent < 0 else world[joint.parent] @ local)
    matrices = np.stack([w @ j.inverse_bind for w, j in zip(world, rig.joints)])  # (J, 4, 4)
    blended = np.einsum("vj,jab->vab", rig.skin, matrices)
    return np.einsum("vab,vb->va", blended[:, :3, :3], positions) + blended[:, :3, 3]


@torch.no_grad()
def _check_encoding(rig: Rig, targets, model: HeadModel, take: Take, frames: TrackFrames) -> float:
    """The largest distance (m) between ``evaluate`` (head frame) and ``decode`` (``model`` in
    float64, the baked identity) at a few face
    keyframes; RuntimeError above CHECK_TOLERANCE (the encoding would be wrong: a bug, or a model
    that is not what this module expects)."""
    faces = np.flatnonzero(frames.found)
    keys = np.unique(faces[np.linspace(0, len(faces) - 1, min(_CHECK_KEYS, len(faces))).round().astype(int)])
    decoded = model.decode(model.complete_params(_params(take, model, frames.source[keys], rig.identity))).numpy()
    error = max(float(np.abs(evaluate(rig, targets, k, head=False) - d).max()) for k, d in zip(keys, decoded))
    if error > CHECK_TOLERANCE:
        raise RuntimeError(f"the glb encoding of this {model.name} take differs from the model's decode by {error * 1000:.3f} mm")
    return error


# -- writing ----------------------------------------------------------------------------------
class _Blob:
    """The binary chunk: arrays appended 4-byte aligned, each with its buffer view and accessor."""

    COMPONENTS = {np.dtype(np.float32): gl.FLOAT, np.dtype(np.uint8): gl.UNSIGNED_BYTE,
                  np.dtype(np.uint16): gl.UNSIGNED_SHORT, np.dtype(np.uint32): gl.UNSIGNED_INT}
    TYPES = {1: gl.SCALAR, 2: gl.VEC2, 3: gl.VEC3, 4: gl.VEC4, 16: gl.MAT4}

    def __init__(self, gltf: gl.GLTF2) -> None:
        self.gltf = gltf
        self.data = bytearray()

    def add(self, array: np.ndarray, target: int | None = None, bounds: bool = False, kind: str | None = None) -> int:
        array = np.ascontiguousarray(array)
        self.data.extend(b"\0" * (-len(self.data) % 4))
        view = gl.BufferView(buffer=0, byteOffset=len(self.data), byteLength=array.nbytes, target=target)
        self.data.extend(array.tobytes())
        self.gltf.bufferViews.append(view)
        width = 1 if array.ndim == 1 else int(np.prod(array.shape[1:]))
        accessor = gl.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=self.COMPONENTS[array.dtype],
                               count=len(array), type=kind or self.TYPES[width])
        if bounds:
            flat = array.reshape(len(array), -1)
            accessor.min, accessor.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1


def _camera(take: Take, frames: TrackFrames) -> gl.Camera | None:
    """The take's camera (first face record's intrinsics), None when it has none."""
    row = frames.row[frames.found][0]
    focal, principal = take.focal[row].astype(np.float64), take.principal[row].astype(np.float64)
    if not (np.isfinite(focal).all() and np.isfinite(principal).all() and (focal > 0).all() and (principal > 0).all()):
        return None
    return gl.Camera(name="camera", type="perspective", perspective=gl.Perspective(
        yfov=float(2 * np.arctan(principal[1] / focal[1])), aspectRatio=float(principal[0] / principal[1]), znear=0.01, zfar=100.0))


def _skin_attributes(skin: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Dense (V, J) weights -> JOINTS_n (V, 4) and WEIGHTS_n (V, 4) sets, largest influences first."""
    skin = np.where(skin >= _MIN_WEIGHT, skin, 0.0)
    skin = skin / skin.sum(axis=1, keepdims=True)
    count = int((skin > 0).sum(axis=1).max())
    sets = -(-count // 4)
    skin = np.pad(skin, ((0, 0), (0, max(0, 4 * sets - skin.shape[1]))))  # at least 4 per set
    order = np.argsort(-skin, axis=1, kind="stable")[:, : 4 * sets]
    values = np.take_along_axis(skin, order, axis=1)
    joints = np.where(values > 0, order, 0)
    dtype = np.uint8 if skin.shape[1] <= 256 else np.uint16
    return ([joints[:, 4 * s : 4 * s + 4].astype(dtype) for s in range(sets)],
            [values[:, 4 * s : 4 * s + 4].astype(np.float32) for s in range(sets)])


def _build_gltf(rig: Rig, targets, frames: TrackFrames, scale: np.ndarray | None, camera: gl.Camera | None,
                take: Take, model: HeadModel) -> gl.GLTF2:
    gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="n2f-tracker tracker.takes.gltf (pygltflib)"))
    gltf.buffers.append(gl.Buffer())
    blob = _Blob(gltf)
    gltf.materials = [
        gl.Material(name="skin", pbrMetallicRoughness=gl.PbrMetallicRoughness(baseColorFactor=[0.8, 0.62, 0.55, 1.0], metallicFactor=0.0, roughnessFactor=0.6)),
    ]
    if any(translucent for _, translucent in rig.primitives):
        gltf.materials.append(gl.Material(name="see_through", alphaMode=gl.BLEND, doubleSided=True, pbrMetallicRoughness=gl.PbrMetallicRoughness(
            baseColorFactor=[0.1, 0.08, 0.07, 0.3], metallicFactor=0.0, roughnessFactor=0.8)))
    attributes = gl.Attributes(POSITION=blob.add(rig.positions.astype(np.float32), gl.ARRAY_BUFFER, bounds=True),
                               NORMAL=blob.add(rig.normals.astype(np.float32), gl.ARRAY_BUFFER))
    joint_sets, weight_sets = _skin_attributes(rig.skin)
    for s, (js, ws) in enumerate(zip(joint_sets, weight_sets)):
        setattr(attributes, f"JOINTS_{s}", blob.add(js, gl.ARRAY_BUFFER))
        setattr(attributes, f"WEIGHTS_{s}", blob.add(ws, gl.ARRAY_BUFFER))
    morph_targets = [{"POSITION": blob.add(target.astype(np.float32), gl.ARRAY_BUFFER, bounds=True)} for _, target, _, _ in targets]
    primitives = []
    for faces, translucent in rig.primitives:
        index_type = np.uint16 if len(rig.positions) < 65536 else np.uint32
        indices = blob.add(faces.reshape(-1).astype(index_type), gl.ELEMENT_ARRAY_BUFFER)
        primitives.append(gl.Primitive(attributes=attributes, indices=indices, material=int(translucent), mode=gl.TRIANGLES,
                                       targets=morph_targets or None))
    gltf.meshes.append(gl.Mesh(name=f"{model.name}_head", primitives=primitives, weights=[0.0] * len(targets) or None,
                               extras={"targetNames": [t[0] for t in targets], "n2f": {"targets": [t[3] for t in targets]}}))

    # nodes: camera, the joints (head first), the mesh node
    nodes = gltf.nodes
    if camera is not None:
        gltf.cameras.append(camera)
        nodes.append(gl.Node(name="camera", camera=0))
    first_joint = len(nodes)
    for joint in rig.joints:
        nodes.append(gl.Node(name=joint.name, translation=joint.rest.tolist() if np.any(joint.rest) else None, children=[]))
    for index, joint in enumerate(rig.joints):
        if joint.parent >= 0:
            nodes[first_joint + joint.parent].children.append(first_joint + index)
    for node in nodes[first_joint:]:
        node.children = node.children or None
    mesh_node = len(nodes)
    nodes.append(gl.Node(name="head_mesh", mesh=0, skin=0))
    ibm = np.stack([j.inverse_bind.T.reshape(16) for j in rig.joints]).astype(np.float32)  # column-major
    gltf.skins.append(gl.Skin(name="head", joints=list(range(first_joint, first_joint + len(rig.joints))),
                              inverseBindMatrices=blob.add(ibm, kind=gl.MAT4), skeleton=first_joint))
    roots = ([0] if camera is not None else []) + [first_joint, mesh_node]
    gltf.scenes.append(gl.Scene(name="take", nodes=roots))
    gltf.scene = 0

    # animation: every keyframe of the track
    animation = gl.Animation(name=f"track_{frames.track}")
    times = blob.add(frames.time.astype(np.float32), bounds=True)

    def channel(node: int, path: str, values: np.ndarray, interpolation: str = gl.ANIM_LINEAR) -> None:
        animation.samplers.append(gl.AnimationSampler(input=times, output=blob.add(values.astype(np.float32)), interpolation=interpolation))
        animation.channels.append(gl.AnimationChannel(sampler=len(animation.samplers) - 1,
                                                      target=gl.AnimationChannelTarget(node=node, path=path)))

    for index, joint in enumerate(rig.joints):
        if joint.rotation is not None:
            channel(first_joint + index, "rotation", joint.rotation)
        if joint.translation is not None:
            channel(first_joint + index, "translation", joint.translation)
    if scale is not None:
        channel(first_joint, "scale", np.repeat(scale[:, None], 3, axis=1), gl.ANIM_STEP)
    if targets:
        channel(mesh_node, "weights", np.stack([w for _, _, w, _ in targets], axis=1).reshape(-1))
    gltf.animations.append(animation)

    gltf.extras = {"n2f": {
        "head_model": model.name, "track": frames.track, "keyframes": len(frames), "first_timestamp": frames.start,
        "first_frame_index": int(frames.frame_index[0]), "source": str(take.metadata.get("source", "")),
        "frame": "avatar: camera at the origin looking down -z, +y up, metres",
    }}
    blob.data.extend(b"\0" * (-len(blob.data) % 4))
    gltf.buffers[0].byteLength = len(blob.data)
    gltf.set_binary_blob(bytes(blob.data))
    return gltf
