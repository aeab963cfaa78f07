"""Where MediaPipe's 468 face-mesh landmarks lie on a head model's surface.

At run time the embedded geometry cue renders normals from the MediaPipe face mesh (468
points, 852 triangles), far coarser than a head model's own mesh. To train on normals that look
like the runtime ones, each MediaPipe landmark gets a fixed place on the head model's surface (a
triangle and barycentric weights): the "MediaPipe-topology proxy" of any decoded mesh is then
``points(vertices)`` and follows identity and expression.

How the places are found (``compute_mediapipe_embedding``), with the project's own code and
MediaPipe itself, so it works for any head model MediaPipe recognises as a face (ICT, FLAME):
 1. render the model's neutral head, grey Lambertian shading, from VIEWS (yaw x pitch) at
    ``size`` pixels with the project's rasteriser;
 2. run MediaPipe Face Mesh (static images) on every render;
 3. back-project each landmark through the rasteriser's triangle index and barycentrics of a
    second rasterisation holding only the face-region triangles without the eyeballs (so a
    point on an eye opening or the mouth lands on the nearest face pixel, the lid or lip,
    within ``max_snap_px``),
    keeping views where that surface faces the camera (cos > ``min_facing``);
 4. per landmark the view whose 3D point is the medoid of all views' points wins; the median
    distance of the other views' points from it (``spread_mm``) measures how much MediaPipe's
    placement of that landmark depends on the view, i.e. MediaPipe's own landmark error.

The result is cached per head model (``tracker.files.paths.cache_dir()/mediapipe_embedding``) under a
fingerprint of the neutral mesh, its triangles and the mediapipe version. The cache only saves the
computation: a cached file that cannot be read is computed again, a cache folder that cannot be
written is warned about once (``tracker.files.paths.write_cached``) and the work goes on.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.paths import cache_dir, write_cached
from tracker.geometry.rotations import euler_to_matrix
from tracker.head_models.base import HeadModel
from tracker.render import render_maps

logger = logging.getLogger(__name__)

MEDIAPIPE_POINTS = 468
VIEWS_DEG: tuple[tuple[float, float], ...] = tuple((pitch, yaw) for pitch in (-10.0, 0.0, 10.0) for yaw in (-30.0, -15.0, 0.0, 15.0, 30.0))
_FORMAT = "n2f-mediapipe-embedding-v2"  # v2: eye-opening points on the lids, not the eyeballs


@dataclass
class MediaPipeEmbedding:
    """Fixed surface places of the 468 MediaPipe landmarks on one head model.

    vertex_ids (468, 3) long: the corners of each landmark's triangle
    bary       (468, 3) float32: barycentric weights of the corners (sum 1)
    spread_mm  (468,) float32: median distance (mm) of the other views' placements (see module)
    views      (468,) int32: how many views placed the landmark
    """

    vertex_ids: torch.Tensor
    bary: torch.Tensor
    spread_mm: torch.Tensor
    views: torch.Tensor

    def points(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) head-model vertices -> (B, 468, 3) MediaPipe-topology points (differentiable)."""
        corners = vertices[:, self.vertex_ids.to(vertices.device)]  # (B, 468, 3, 3)
        return (corners * self.bary.to(vertices)[None, :, :, None]).sum(2)

    def to(self, device: torch.device | str) -> MediaPipeEmbedding:
        return MediaPipeEmbedding(self.vertex_ids.to(device), self.bary.to(device), self.spread_mm.to(device), self.views.to(device))

    def save(self, path: str | Path) -> Path:
        """Write the embedding to ``path`` (an .npz; ``mediapipe_embedding`` caches it whole or not at all)."""
        path = Path(path)
        with path.open("wb") as stream:
            np.savez(
                stream,
                format=np.array(_FORMAT),
                vertex_ids=self.vertex_ids.cpu().numpy().astype(np.int64),
                bary=self.bary.cpu().numpy().astype(np.float32),
                spread_mm=self.spread_mm.cpu().numpy().astype(np.float32),
                views=self.views.cpu().numpy().astype(np.int32),
            )
        return path

    @classmethod
    def load(cls, path: str | Path, vertex_count: int | None = None) -> MediaPipeEmbedding:
        """Read a saved embedding; ``vertex_count`` checks it fits the head model. A TrackerError
        naming ``path`` when it cannot be read or is not an embedding."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data or str(data["format"]) != _FORMAT:
                    raise TrackerError(f"{path} is not a MediaPipe embedding ({_FORMAT})")
                arrays = [data[key] for key in ("vertex_ids", "bary", "spread_mm", "views")]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError) as error:  # TypeError: an .npy, no archive
            raise TrackerError(f"cannot read the MediaPipe embedding {path} ({error})") from None
        if arrays[0].dtype.kind not in "iu" or arrays[1].dtype.kind != "f":
            raise TrackerError(f"{path}: vertex_ids must be integers and bary floats, got {arrays[0].dtype}, {arrays[1].dtype}")
        embedding = cls(*(torch.from_numpy(array) for array in arrays))
        if embedding.vertex_ids.shape != (MEDIAPIPE_POINTS, 3) or embedding.bary.shape != (MEDIAPIPE_POINTS, 3):
            raise TrackerError(f"{path}: expected (468, 3) vertex_ids and bary, got {tuple(embedding.vertex_ids.shape)}, {tuple(embedding.bary.shape)}")
        low, high = int(embedding.vertex_ids.min()), int(embedding.vertex_ids.max())
        if low < 0 or (vertex_count is not None and high >= vertex_count):
            raise TrackerError(f"{path}: the embedding refers to vertex ids {low} to {high}, the head model has {vertex_count} vertices")
        return embedding


def head_fingerprint(head: HeadModel) -> str:
    """Hex digest of what the embedding depends on: neutral mesh, triangles, face region, mediapipe."""
    import mediapipe

    neutral = head.decode(head.neutral_params(1))[0]
    digest = hashlib.sha256()
    digest.update(head.name.encode())
    digest.update(np.round(neutral.detach().cpu().numpy().astype(np.float64), 6).tobytes())
    digest.update(head.render_faces.cpu().numpy().astype(np.int64).tobytes())
    digest.update(head.region_masks["face"].cpu().numpy().tobytes())
    digest.update(str(mediapipe.__version__).encode())
    digest.update(_FORMAT.encode())
    return digest.hexdigest()


def mediapipe_embedding(head: HeadModel, cache: str | Path | None = None, log=print) -> MediaPipeEmbedding:
    """The head model's embedding from the cache, computed (about 10 s on a CPU) and cached when
    absent or unreadable; a cache folder that cannot be written is warned about, not an error.

    ``cache``: a folder (default ``tracker.files.paths.cache_dir()/mediapipe_embedding``).
    """
    folder = Path(cache) if cache is not None else cache_dir() / "mediapipe_embedding"
    path = folder / f"{head.name}-{head_fingerprint(head)[:20]}.npz"
    cached = _cached(path, head.decode(head.neutral_params(1)).shape[1])
    if cached is not None:
        return cached
    log(f"placing MediaPipe's landmarks on the {head.name} surface (once; cached in {path})")
    embedding = compute_mediapipe_embedding(head)
    write_cached(path, embedding.save, f"the {head.name} MediaPipe embedding")
    return embedding


def _cached(path: Path, vertex_count: int) -> MediaPipeEmbedding | None:
    """The embedding cached at ``path``; None when there is none or it cannot be read (warned)."""
    try:
        if not path.is_file():
            return None
        return MediaPipeEmbedding.load(path, vertex_count)
    except (OSError, TrackerError) as error:
        logger.warning("cannot use the cached MediaPipe embedding (%s): placing the landmarks again", error)
        return None


def _face_triangles(head: HeadModel) -> torch.Tensor:
    """(F', 3) render triangles of the face region without the eyeballs: a landmark on an eye
    opening lands on the lid, which moves when the eye closes, not on the eyeball behind it."""
    skin = head.region_masks["face"].clone()
    for region, mask in head.region_masks.items():
        if "eyeball" in region:
            skin &= ~mask
    skin = skin.to(head.render_faces.device)
    return head.render_faces[skin[head.render_faces].all(-1)]


def _shade(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(H, W, 3) view-frame normals -> (H, W, 3) uint8 grey Lambertian image, light near the camera."""
    light = torch.tensor([0.3, 0.3, 0.9], dtype=normals.dtype) / math.sqrt(0.99)
    grey = ((normals @ light).clamp(0, 1) * 0.8 + 0.15) * mask
    image = (grey * 255).round().byte().numpy()
    return np.repeat(image[..., None], 3, -1)


@torch.no_grad()
def compute_mediapipe_embedding(
    head: HeadModel,
    size: int = 768,
    views_deg: tuple[tuple[float, float], ...] = VIEWS_DEG,
    min_facing: float = 0.2,
    max_snap_px: float = 8.0,
    min_views: int = 3,
) -> MediaPipeEmbedding:
    """Place the 468 landmarks on ``head``'s neutral surface (steps in the module docstring).

    Raises TrackerError when MediaPipe finds no face in the renders (a head model that does not
    look like a face) or a landmark is placed in fewer than ``min_views`` views.
    """
    from tracker.face.detection import FaceMeshDetector

    cpu_head = copy.deepcopy(head).to("cpu") if head.device.type != "cpu" else head
    vertices = cpu_head.decode(cpu_head.neutral_params(1))
    face_triangles = _face_triangles(cpu_head)
    face = cpu_head.region_masks["face"]
    centre = vertices[0, face].mean(0)
    height = (vertices[0, face, 1].max() - vertices[0, face, 1].min()).item()
    vertices = vertices - centre
    distance = 3.0 * height  # face about half the image height with the focal below
    focal = torch.full((1, 2), 1.5 * size)
    principal = torch.full((1, 2), size / 2)
    translation = torch.tensor([[0.0, 0.0, distance]])

    candidates: list[list[torch.Tensor]] = [[] for _ in range(MEDIAPIPE_POINTS)]  # (tri, b0, b1, b2) per view
    detected = 0
    with FaceMeshDetector(max_faces=1, static_images=True) as detector:
        for pitch, yaw in views_deg:
            rotation = euler_to_matrix(torch.deg2rad(torch.tensor([[pitch, yaw, 0.0]])))
            full = render_maps(vertices, cpu_head.render_faces, rotation, translation, focal, principal, (size, size))
            faces = detector.detect(_shade(full.normals[0], full.mask[0]))
            if not faces:
                continue
            detected += 1
            face_only = render_maps(vertices, face_triangles, rotation, translation, focal, principal, (size, size))
            _collect(faces[0].points[:MEDIAPIPE_POINTS, :2], face_only, min_facing, max_snap_px, candidates)
    if detected == 0:
        raise TrackerError(
            f"MediaPipe found no face in {len(views_deg)} renders of the {head.name} head model, so its landmarks "
            "cannot be placed on it: is this a face model in the usual frame (+y up, +z out of the face)?"
        )
    return _medoids(candidates, vertices[0], face_triangles, min_views, head.name)


def _collect(points_px: np.ndarray, maps, min_facing: float, max_snap_px: float, candidates: list[list[torch.Tensor]]) -> None:
    """Append each landmark's (triangle, barycentrics) in one view to ``candidates``."""
    fragments = maps.fragments
    size = fragments.triangle.shape[1]
    covered = torch.nonzero(fragments.triangle[0] >= 0)  # (N, 2) row, col
    centres = covered.flip(-1).float() + 0.5
    points = torch.as_tensor(points_px, dtype=torch.float32)
    nearest = torch.cdist(points, centres).min(1)
    for index, (distance, pixel) in enumerate(zip(nearest.values.tolist(), nearest.indices.tolist())):
        if distance > max_snap_px:
            continue
        row, col = covered[pixel].tolist()
        if not (0 <= row < size and 0 <= col < size) or maps.normals[0, row, col, 2] < min_facing:
            continue
        triangle = fragments.triangle[0, row, col]
        candidates[index].append(torch.cat((triangle.float()[None], fragments.bary[0, row, col])))


def _medoids(candidates: list[list[torch.Tensor]], vertices: torch.Tensor, triangles: torch.Tensor, min_views: int, name: str) -> MediaPipeEmbedding:
    vertex_ids, bary, spread, views = [], [], [], []
    for index, found in enumerate(candidates):
        if len(found) < min_views:
            raise TrackerError(f"MediaPipe landmark {index} was placed on the {name} surface in {len(found)} views (< {min_views})")
        found = torch.stack(found)
        corners = triangles[found[:, 0].long()]  # (n, 3)
        weights = found[:, 1:] / found[:, 1:].sum(-1, keepdim=True)
        points = (vertices[corners] * weights[..., None]).sum(1)  # (n, 3)
        distances = torch.cdist(points, points)
        best = int(distances.sum(1).argmin())
        others = torch.cat((distances[best, :best], distances[best, best + 1 :]))
        vertex_ids.append(corners[best])
        bary.append(weights[best])
        spread.append(others.median() * 1000.0)
        views.append(len(found))
    return MediaPipeEmbedding(
        torch.stack(vertex_ids).long(), torch.stack(bary).float(), torch.stack(spread).float(), torch.tensor(views, dtype=torch.int32)
    )
