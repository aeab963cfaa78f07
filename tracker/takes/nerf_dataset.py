"""Datasets that avatar trainers load: a take and its video in the layout VHAP exports for
GaussianAvatars (``FORMATS``: "gaussian-avatars").

    export_dataset(take, video, head, out)      # head: the take's head model (load_head_model)

Read from VHAP's exporter (ShenhanQian/VHAP, vhap/export_as_nerf_dataset.py at 4b64ab7) and
GaussianAvatars' reader (ShenhanQian/GaussianAvatars, scene/dataset_readers.py and
scene/flame_gaussian_model.py at 30cc4bd). ``OUT/``:
    images/{t:05d}_00.png        the video frame, RGB (the whole frame: no matting is done here)
    fg_masks/{t:05d}_00.png      the fitted head mesh's silhouette, 0 / 255 (GaussianAvatars does
                                 not read masks; VHAP's come from matting, with hair and shoulders)
    flame_param/{t:05d}.npz      the frame's parameters (below)
    canonical_flame_param.npz    the neutral face with the jaw open 0.3 rad, as VHAP writes it
                                 (GaussianAvatars only checks that it exists)
    transforms.json, transforms_{train,val,test}.json
        per frame: file_path, fg_mask_path, flame_param_path, transform_matrix (camera to world,
        OpenGL axes: the camera looks along -z), fl_x, fl_y, cx, cy, w, h, camera_angle_x / _y,
        timestep_index (0..T-1 over the frames with a face), timestep_index_original (the video
        frame), timestep_id, camera_index 0, camera_id "0"; train: the first ceil(0.7 T)
        timesteps, test: the rest, val: empty (one camera, as VHAP's monocular exports)

The world frame is the camera's (OpenGL axes), shifted so that the mean head translation is at
the origin, as VHAP shifts it; the camera keeps its rotation. Parameters per frame, float32:
    FLAME takes  translation (1, 3), rotation (1, 3) axis-angle (FLAME's root rotation, about its
                 root joint, with the head's pose folded in), neck_pose, jaw_pose (1, 3),
                 eyes_pose (1, 6), shape (300,), expr (1, 100) (a model with fewer coefficients is
                 padded with zeros; GaussianAvatars' FLAME has 300 and 100), static_offset
                 (1, 5023, 3) zeros (GaussianAvatars pads it to its teeth). FLAME's eyelid
                 blendshapes (Pixel3DMM's) have no place in this layout and are left out.
    ICT takes    the same structure with ICT-FaceKit's parameters: translation, rotation (about
                 ICT's origin), shape = ICT's identity (100,), expr = its expression (1, 53);
                 ``head_model`` "ict" in transforms.json says so. GaussianAvatars itself needs FLAME.

GaussianAvatars reads only ``camera_angle_x`` with ``w`` and ``h`` (a centred principal point,
square pixels): a take whose principal point is off the image centre, or whose focal lengths
differ, is refused.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write
from tracker.geometry import camera
from tracker.geometry.rotations import matrix_to_axis_angle, rotation_6d_to_matrix
from tracker.head_models.base import HeadModel

FORMATS = ("gaussian-avatars",)
TRAIN_RATIO = 0.7  # VHAP's split_json
FLAME_SHAPE, FLAME_EXPRESSION = 300, 100  # GaussianAvatars' FLAME
CANONICAL_JAW = 0.3  # rad, VHAP's canonical_flame_param.npz
_F = np.diag(np.float64(camera.FLIP))  # OpenCV camera axes <-> OpenGL camera / head axes

log = logging.getLogger(__name__)


def export_dataset(take, video: str | Path, head: HeadModel, out: str | Path, track: int | None = None) -> Path:
    """Write the dataset of ``take`` (``tracker.takes.recording.Take``) and its ``video`` to
    ``out`` (module docstring); ``track``: the tracked face to export (None: the first with a
    face). -> ``out``. TrackerError for a take it cannot express."""
    out, video = Path(out), Path(video)
    if head.name != take.head_model:
        raise TrackerError(f"the take was tracked with {take.head_model}, the head model given is {head.name}")
    rows = _rows(take, track)
    focal, principal = take.focal[rows[0]].astype(np.float64), take.principal[rows[0]].astype(np.float64)
    images = _frames(video, [int(take.frame_index[row]) for row in rows])
    first = next(images, None)
    if first is None:
        raise TrackerError(f"{video} cannot be read as a video")
    height, width = first[1].shape[:2]
    images = itertools.chain([first], images)
    if abs(focal[0] - focal[1]) > 1e-3 * focal[0] or np.abs(principal - [width / 2, height / 2]).max() > 0.5:
        raise TrackerError(f"GaussianAvatars needs square pixels and the principal point at the image centre; this take has focal {focal} "
                           f"and principal point {principal} for {width}x{height} frames")
    params = _world_params(take, rows, head)
    shift = -params["translation"].mean(0)
    params["translation"] = params["translation"] + shift
    for name in ("images", "fg_masks", "flame_param"):
        (out / name).mkdir(parents=True, exist_ok=True)
    c2w = np.eye(4)
    c2w[:3, 3] = shift  # the camera at the camera frame's origin, moved with the world
    frames = []
    masks = _silhouettes(take, rows, head, width, height)
    for t, row in enumerate(rows):
        index = int(take.frame_index[row])
        read, image = next(images, (None, None))
        if read != index:
            raise TrackerError(f"frame {index} of {video} cannot be read: the take does not belong to this video")
        _write_png(out / f"images/{t:05d}_00.png", image)
        _write_png(out / f"fg_masks/{t:05d}_00.png", next(masks))
        np.savez(out / f"flame_param/{t:05d}.npz", **{key: value[t][None] if key not in ("shape", "static_offset") else value
                                                      for key, value in params.items()})
        frames.append({
            "timestep_index": t, "timestep_index_original": index, "timestep_id": f"{index:05d}",
            "camera_index": 0, "camera_id": "0",
            "cx": float(principal[0]), "cy": float(principal[1]), "fl_x": float(focal[0]), "fl_y": float(focal[1]), "h": height, "w": width,
            "camera_angle_x": 2.0 * math.atan(width / (2.0 * focal[0])), "camera_angle_y": 2.0 * math.atan(height / (2.0 * focal[1])),
            "transform_matrix": c2w.tolist(),
            "file_path": f"images/{t:05d}_00.png", "fg_mask_path": f"fg_masks/{t:05d}_00.png", "flame_param_path": f"flame_param/{t:05d}.npz",
        })
    canonical = {key: np.zeros_like(value[:1]) if key not in ("shape", "static_offset") else value for key, value in params.items()}
    if "jaw_pose" in canonical:
        canonical["jaw_pose"][0, 0] = CANONICAL_JAW
    np.savez(out / "canonical_flame_param.npz", **canonical)
    _write_transforms(out, frames, head.name)
    return out


def _rows(take, track: int | None) -> list[int]:
    """Take records of ``track`` (None: the first track with a face), one per frame with a face, in
    frame order."""
    found = np.flatnonzero(take.face_found)
    if not len(found):
        raise TrackerError("the take has no face to export")
    track = int(take.track_id[found[0]]) if track is None else track
    rows, seen = [], set()
    for row in found:
        if take.track_id[row] == track and take.frame_index[row] not in seen:
            seen.add(int(take.frame_index[row]))
            rows.append(int(row))
    if not rows:
        raise TrackerError(f"the take has no face of track {track}")
    return sorted(rows, key=lambda row: int(take.frame_index[row]))


def _world_params(take, rows: list[int], head: HeadModel) -> dict[str, np.ndarray]:
    """{key: (T, ...) or (n,) for shape, (1, V, 3) static_offset} in the camera's OpenGL frame."""
    params = {g: torch.from_numpy(np.asarray(v[rows], np.float64)) for g, v in take.params.items()}
    cam_rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[rows].astype(np.float64))).numpy()  # (T, 3, 3)
    rotation_gl = _F @ cam_rotation @ _F  # head frame -> OpenGL camera frame, about the head's origin
    translation_gl = take.translation[rows].astype(np.float64) @ _F
    if head.name != "flame":
        identity = next((g for g in ("identity", "shape") if g in params), None)
        return {
            "translation": translation_gl.astype(np.float32),
            "rotation": matrix_to_axis_angle(torch.from_numpy(rotation_gl)).numpy().astype(np.float32),
            "shape": params[identity][0].numpy().astype(np.float32) if identity else np.zeros(0, np.float32),
            "expr": params["expression"].numpy().astype(np.float32),
        }
    full = head.complete_params({g: v.to(head.v_template.dtype) for g, v in params.items()})
    if "eyelids" in full and float(full["eyelids"].abs().max()) > 0:
        log.warning("the take's FLAME eyelid blendshapes (up to %.2f) have no place in GaussianAvatars' FLAME: left out",
                    float(full["eyelids"].abs().max()))
    coeffs = torch.cat([full["shape"], full["expression"]], dim=1)
    root = (head.joint_template[0] + torch.einsum("ck,bk->bc", head.joint_dirs[0], coeffs)).double().numpy()  # (T, 3) root joint
    rotations = head.joint_rotations(full).double().numpy()  # (T, J, 3, 3): root, neck, jaw, eyes
    own = full["translation"].double().numpy()
    # R (G (v - J0) + J0 + t_own) + t = (R G)(v - J0) + J0 + [R (J0 + t_own) + t - J0]
    world_root = rotation_gl @ rotations[:, 0]
    translation = np.einsum("bij,bj->bi", rotation_gl, root + own) + translation_gl - root
    axis = lambda m: matrix_to_axis_angle(torch.from_numpy(np.ascontiguousarray(m))).numpy()
    shape, expression = full["shape"].double().numpy(), full["expression"].double().numpy()
    if shape.shape[1] > FLAME_SHAPE or expression.shape[1] > FLAME_EXPRESSION:
        raise TrackerError(f"GaussianAvatars' FLAME has {FLAME_SHAPE} shape and {FLAME_EXPRESSION} expression coefficients; this take has "
                           f"{shape.shape[1]} and {expression.shape[1]}")
    return {
        "translation": translation.astype(np.float32),
        "rotation": axis(world_root).astype(np.float32),
        "neck_pose": axis(rotations[:, 1]).astype(np.float32),
        "jaw_pose": axis(rotations[:, 2]).astype(np.float32),
        "eyes_pose": np.concatenate([axis(rotations[:, 3]), axis(rotations[:, 4])], axis=1).astype(np.float32),
        "shape": np.pad(shape[0], (0, FLAME_SHAPE - shape.shape[1])).astype(np.float32),
        "expr": np.pad(expression, ((0, 0), (0, FLAME_EXPRESSION - expression.shape[1]))).astype(np.float32),
        "static_offset": np.zeros((1, head.v_template.shape[0], 3), np.float32),
    }


def _silhouettes(take, rows: list[int], head: HeadModel, width: int, height: int):
    """Yields each row's (H, W) uint8 mask: the fitted mesh's triangles, projected and filled."""
    import cv2

    faces = head.faces.numpy()
    for row in rows:
        params = {g: torch.from_numpy(np.asarray(v[row : row + 1], np.float32)) for g, v in take.params.items()}
        with torch.no_grad():
            rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[row : row + 1].astype(np.float32)))
            points = camera.project_head(head.decode(params), rotation, torch.from_numpy(take.translation[row : row + 1].astype(np.float32)),
                                         torch.from_numpy(take.focal[row : row + 1].astype(np.float32)),
                                         torch.from_numpy(take.principal[row : row + 1].astype(np.float32)))[0].numpy()
        mask = np.zeros((height, width), np.uint8)
        for triangle in np.round(points[faces] * 16).astype(np.int32):  # one by one: fillPoly's even-odd rule would cut overlaps out
            cv2.fillConvexPoly(mask, triangle, 255, lineType=cv2.LINE_8, shift=4)
        yield mask


def _frames(video: Path, wanted: list[int]):
    """Yields (index, (H, W, 3) BGR image) for the ``wanted`` frame indices (increasing) of
    ``video``, read in order, one frame held at a time; it stops early where the video ends."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        index = 0
        for target in wanted:
            while index <= target:
                ok, image = capture.read()
                if not ok:
                    return
                index += 1
            yield target, image
    finally:
        capture.release()


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise TrackerError(f"{path} could not be encoded")
    atomic_write(path, data.tobytes())


def _write_transforms(out: Path, frames: list[dict], head_model: str) -> None:
    """transforms.json and its train / val / test splits (VHAP's split_json for one camera)."""
    first = frames[0]
    top = {key: first[key] for key in ("cx", "cy", "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y")}
    top["head_model"] = head_model
    train = math.ceil(TRAIN_RATIO * len(frames))
    splits = {None: frames, "train": frames[:train], "val": [], "test": frames[train:]}
    for name, chosen in splits.items():
        content = {**top, "frames": chosen, "timestep_indices": [f["timestep_index"] for f in chosen],
                   "camera_indices": [0] if chosen else []}
        path = out / ("transforms.json" if name is None else f"transforms_{name}.json")
        atomic_write(path, json.dumps(content, indent=4).encode("utf-8"))
