"""What drives an avatar: ARKit's 52 blendshape weights, the head's pose and the eyes' gaze.

    values = face.avatar                      # AvatarValues of a tracked face (FaceResult.avatar)
    values.weights[ARKIT_INDEX["jawOpen"]]    # (52,) in ARKIT_NAMES order, each in [0, 1]
    values.head_angles                        # (3,) yaw, pitch, roll, radians

ARKit weights from ICT-FaceKit's 53 expression weights (``ict_to_arkit_matrix``; back:
``arkit_to_ict``): ICT's shapes carry ARKit's names, with ``_L`` / ``_R`` for ``Left`` / ``Right``
where these are sides (``jawLeft``, ``mouthLeft`` are directions and keep their names); sides are
the face's own, as in ARKit: ICT's ``eyeball_left`` lies on the face's left, +x of the head frame). Two ARKit shapes are
split in two in ICT: ``browInnerUp`` and ``cheekPuff`` are the mean of their ``_L`` and ``_R``
halves (both halves at 1 give 1; one half alone gives 0.5). ICT has no tongue: ``tongueOut`` is 0.

Gaze (``eye_gaze``): ICT's eyeLook shapes move the lids, not the eyeballs, so the eyes' direction
comes from MediaPipe's iris centres. The camera ray through each iris centre meets the eyeball
sphere of the fitted head (its centre and radius from the head model's eyeball vertices); the
direction from the eyeball's centre to that point, in the head frame, gives the eye's yaw and
pitch. ARKit's eight eyeLook weights are then set from the gaze: 1 at ``EYE_LOOK_FULL`` (30 deg)
in that direction (ARKit gives no angle; 30 deg is about the comfortable range of eye rotation).

Steady weights (``WeightFilter``): live, each track's weights pass through One-Euro filters whose
cutoff rises with the weight's speed, one for the six lid shapes (eyeBlink, eyeSquint, eyeWide;
``LID_SMOOTHING``) and one for the shapes away from the eyes (jaw, mouth, brows, cheeks, nose;
``NON_EYE_SMOOTHING``). The eyeLook shapes come from the irises (``gaze_weights``) and are left
alone. Open eyes and a resting mouth hold still; a blink moves the lids at 10-20 weight units per
second, which raises the cutoff above 200 Hz, so the blink keeps its timing. On the real videos
(docs/arkit-accuracy.md, "Steady weights") eyeBlink's and jawOpen's relative jitter fall by a
quarter to a half, and their cross-correlation with the face's openings still peaks at 0 frames.

Frames and angles. The avatar frame is right-handed with +x to the viewer's right (the face's
own left), +y up and +z towards the camera, the camera at the origin (ARKit's face-anchor
convention, and the head frame's: a head facing the camera has the identity rotation).
``head_angles`` (yaw, pitch, roll) compose the head's rotation as Ry(yaw) Rx(pitch) Rz(roll)
(``tracker.geometry.camera.head_pose``, ``tracker.geometry.rotations.matrix_to_yaw_pitch_roll``):
yaw > 0 turns the face to its own left (the viewer's right), pitch > 0 tips it down, roll > 0
tilts it towards its own right shoulder (its +x axis turns towards +y). Eye angles
(yaw, pitch) are in the head frame with the same signs (yaw > 0: the eye looks to the face's
own left; pitch > 0: down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Apple's ARFaceAnchor.BlendShapeLocation order (also Unreal's EARFaceBlendShape and Live Link Face's)
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip
ARKIT_INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}
EYE_LOOK_FULL = math.radians(30.0)  # the gaze angle at which an eyeLook weight reaches 1
IRIS_CENTRES = (468, 473)  # MediaPipe Face Mesh's two iris centres (478 points, iris refinement on)
_SPLIT = ("browInnerUp", "cheekPuff")  # one ARKit shape, two ICT halves
LID_SHAPES = tuple(i for i, name in enumerate(ARKIT_NAMES) if name.startswith(("eyeBlink", "eyeSquint", "eyeWide")))
NON_EYE_SHAPES = tuple(i for i, name in enumerate(ARKIT_NAMES) if not name.startswith("eye"))
# One-Euro filters (min cutoff Hz, beta 1 / (weight / s), derivative cutoff Hz), chosen on the real
# videos (docs/arkit-accuracy.md, "Steady weights"); plain numbers, so that these names load without torch
LID_SMOOTHING = (4.0, 20.0, 2.0)
NON_EYE_SMOOTHING = (2.0, 10.0, 3.0)


def ict_name(arkit_name: str, ict_names: tuple[str, ...] | list[str]) -> str:
    """ARKit name -> ICT-FaceKit's: 'eyeBlinkLeft' -> 'eyeBlink_L', but 'jawLeft' and 'mouthLeft'
    (directions, not sides) as they are."""
    if arkit_name in ict_names:
        return arkit_name
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if arkit_name.endswith(side):
            return arkit_name[: -len(side)] + suffix
    raise KeyError(f"ICT-FaceKit has no shape for ARKit's {arkit_name!r}")


def ict_to_arkit_matrix(ict_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(52, 53) float32 M with arkit = M @ ict for ICT's expression names (module docstring)."""
    index = {name: i for i, name in enumerate(ict_names)}
    matrix = np.zeros((len(ARKIT_NAMES), len(ict_names)), np.float32)
    for row, name in enumerate(ARKIT_NAMES):
        if name in _SPLIT:
            matrix[row, [index[name + "_L"], index[name + "_R"]]] = 0.5
        elif name != "tongueOut":
            matrix[row, index[ict_name(name, ict_names)]] = 1.0
    return matrix


def arkit_to_ict(weights: np.ndarray, ict_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(..., 52) ARKit weights -> (..., 53) ICT expression weights with ``ict_to_arkit_matrix`` @ ict
    = the ARKit weights (a split shape's two halves both take its weight; tongueOut is dropped)."""
    weights = np.asarray(weights, np.float32)
    out = np.zeros(weights.shape[:-1] + (len(ict_names),), np.float32)
    index = {name: i for i, name in enumerate(ict_names)}
    for row, name in enumerate(ARKIT_NAMES):
        if name in _SPLIT:
            out[..., index[name + "_L"]] = out[..., index[name + "_R"]] = weights[..., row]
        elif name != "tongueOut":
            out[..., index[ict_name(name, ict_names)]] = weights[..., row]
    return out


@dataclass
class AvatarValues:
    """What drives an avatar for one tracked face (frames and signs: module docstring).

    weights        (52,) float32 ARKit weights in ARKIT_NAMES order, in [0, 1], after the user's
                   profile (``tracker.fitting.arkit_profile``; none: the raw weights)
    head_rotation  (3, 3) float32 head frame -> avatar frame (identity: facing the camera)
    head_angles    (3,) float32 yaw, pitch, roll in radians (``tracker.geometry.camera.head_pose``)
    head_position  (3,) float32 metres, the head frame's origin in the avatar frame
    eye_angles     (2, 2) float32 radians, (left eye, right eye) x (yaw, pitch) in the head frame;
                   NaN when the irises were not found
    raw_weights    (52,) float32 the weights before the profile (None: ``weights``)
    """

    weights: np.ndarray
    head_rotation: np.ndarray
    head_angles: np.ndarray
    head_position: np.ndarray
    eye_angles: np.ndarray
    raw_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.raw_weights is None:
            self.raw_weights = self.weights


@dataclass(frozen=True)
class Eyeballs:
    """The head model's eyeballs in its head frame: ``centres`` (2, 3) (left, right: the face's own)
    and ``radii`` (2,) metres, from the mean and mean distance of each eyeball's vertices."""

    centres: np.ndarray
    radii: np.ndarray

    @classmethod
    def from_vertices(cls, vertices: np.ndarray, masks: tuple[np.ndarray, np.ndarray]) -> Eyeballs:
        """(V, 3) head-frame vertices and the vertices of the two eyeballs ((V,) bool masks, index
        arrays or slices), in either order (the face's left eye is the one on +x)."""
        centres = np.stack([vertices[mask].mean(0) for mask in masks])
        radii = np.array([np.linalg.norm(vertices[mask] - c, axis=1).mean() for mask, c in zip(masks, centres)])
        order = np.argsort(-centres[:, 0])
        return cls(centres[order].astype(np.float32), radii[order].astype(np.float32))


class EyeballDecoder:
    """A head model's two eyeballs decoded alone (``decode_vertices``, no full mesh): ``decoder(params)``
    with {group: (n,)} -> Eyeballs. The head model needs "eyeball_left" / "eyeball_right" regions (ICT)."""

    def __init__(self, head) -> None:
        import torch

        left, right = (torch.nonzero(head.region_masks[name].cpu()).squeeze(1) for name in ("eyeball_left", "eyeball_right"))
        self.head, self.vertices, self.split = head, torch.cat([left, right]), len(left)

    def __call__(self, params: dict[str, torch.Tensor]) -> Eyeballs:
        eyes = self.head.decode_vertices({g: v[None] for g, v in params.items()}, self.vertices)[0].numpy()
        return Eyeballs.from_vertices(eyes, (slice(0, self.split), slice(self.split, None)))  # one eyeball's rows, then the other's


def eye_gaze(
    eyeballs: Eyeballs, rotation: np.ndarray, translation: np.ndarray, irises: np.ndarray, focal: np.ndarray, principal: np.ndarray
) -> np.ndarray:
    """(2, 2) float32 (left, right) x (yaw, pitch) radians in the head frame, from the (2, 2)
    pixel positions of the two iris centres (any order: each goes to the eyeball it is nearest
    to in the image); NaN where an iris is not finite. rotation (3, 3), translation (3,): the
    tracker's head pose (``X_cam = R FLIP X_head + t``); focal, principal (2,) px."""
    from tracker.geometry.camera import FLIP_MATRIX

    rotation = np.asarray(rotation, np.float64) @ FLIP_MATRIX  # head frame -> camera frame
    translation = np.asarray(translation, np.float64)
    centres = eyeballs.centres.astype(np.float64) @ rotation.T + translation  # (2, 3) camera frame
    projected = centres[:, :2] / centres[:, 2:] * focal + principal
    out = np.full((2, 2), np.nan, np.float32)
    irises = np.asarray(irises, np.float64)
    if not np.isfinite(irises).all():
        return out
    swap = np.linalg.norm(irises[0] - projected[1]) + np.linalg.norm(irises[1] - projected[0]) < (
        np.linalg.norm(irises[0] - projected[0]) + np.linalg.norm(irises[1] - projected[1])
    )
    ordered = irises[::-1] if swap else irises
    for eye in range(2):
        ray = np.append((ordered[eye] - principal) / focal, 1.0)
        ray /= np.linalg.norm(ray)
        centre, radius = centres[eye], float(eyeballs.radii[eye])
        along = ray @ centre
        closest = along * ray - centre
        gap = radius**2 - closest @ closest
        point = (along - math.sqrt(gap)) * ray if gap >= 0 else centre + closest / np.linalg.norm(closest) * radius
        direction = rotation.T @ (point - centre)  # head frame
        x, y, z = direction
        out[eye] = (math.atan2(x, z), math.atan2(-y, math.hypot(x, z)))
    return out


def gaze_weights(weights: np.ndarray, eye_angles: np.ndarray) -> np.ndarray:
    """(52,) ARKit weights with the eight eyeLook weights set from (2, 2) eye angles (kept where NaN)."""
    out = np.array(weights, np.float32, copy=True)
    for eye, side in enumerate(("Left", "Right")):
        yaw, pitch = eye_angles[eye]
        if not (np.isfinite(yaw) and np.isfinite(pitch)):
            continue
        outward = yaw if side == "Left" else -yaw  # the face's left is +x: the left eye looks out towards +x
        for name, amount in (("Out", outward), ("In", -outward), ("Down", pitch), ("Up", -pitch)):
            out[ARKIT_INDEX[f"eyeLook{name}{side}"]] = float(np.clip(amount / EYE_LOOK_FULL, 0.0, 1.0))
    return out


class WeightFilter:
    """One track's steady weights: ``filt(weights, seconds)`` -> (52,) ARKit weights with the
    ``LID_SHAPES`` through one One-Euro filter (``lids``) and the ``NON_EYE_SHAPES`` through
    another (``others``), the eyeLook shapes unchanged. Weights in [0, 1] stay in [0, 1] (each
    output is a blend of inputs). A time earlier than the last restarts the filters
    (``tracker.face.smoothing.OneEuroFilter``)."""

    def __init__(self, lids: tuple[float, float, float] = LID_SMOOTHING, others: tuple[float, float, float] = NON_EYE_SMOOTHING) -> None:
        from tracker.face.smoothing import OneEuroFilter

        self._filters = ((list(LID_SHAPES), OneEuroFilter(*lids)), (list(NON_EYE_SHAPES), OneEuroFilter(*others)))

    def __call__(self, weights: np.ndarray, seconds: float) -> np.ndarray:
        out = np.array(weights, copy=True)
        for shapes, filt in self._filters:
            out[shapes] = filt(out[shapes], seconds)
        return out
