"""Evaluation metrics of the N2FNet paper (CD, MNE, CR, NME, FPS) as pure batched torch functions.

All geometric functions take batched tensors (float32 or float64, CPU or CUDA) and return
tensors on the same device; meshes in a batch share one face table ``faces`` (F, 3) (int64 or
int32 vertex indices). Lengths are in the input units (metres for the head models) unless a
name or docstring says millimetres.

Metrics (paper, "Evaluation"):
    CD   ``chamfer_vertex_distance`` / ``region_errors``: NoW-style, the reconstruction is
         aligned to the ground truth with the same topology by rotation, translation and one
         uniform scale, as the NoW benchmark aligns (its README: "rigidly aligned (rotation,
         translation, and scaling)"), then the mean vertex-to-vertex distance is taken. The scale
         is part of the alignment because a monocular normal map cannot show it: normals do not
         change when a head is scaled, and the crop removes its image size (ICT's first identity
         mode moves the face 2.6 mm RMS per unit after rigid alignment, 0.7 mm after scaling).
         ``scale=False`` gives the rotation + translation variant. Despite its name CD is not a
         nearest-neighbour chamfer distance: vertices are compared by index.
    MNE  ``mean_normal_error``: per GT vertex, the angle in radians between its vertex normal and
         the normal of the closest point on the reconstructed surface, averaged.
    CR   ``completeness_ratio``: fraction of GT vertices within 2 mm of the reconstructed surface.
    NME  ``nme``: mean 2D landmark error over the inter-ocular (outer eye corner) distance.
    FPS  ``measure_fps``: frames per second and latency percentiles of a callable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from tracker.render.maps import vertex_normals

MM_PER_METRE = 1000.0
"""Factor from metres (the head models' unit) to the millimetres the paper reports CD in."""

# 0-based iBUG-68 indices of the outer eye corners (the subject's right eye, image-left, and the
# subject's left eye, image-right); their distance is the 300W inter-ocular normalisation.
RIGHT_EYE_OUTER = 36
LEFT_EYE_OUTER = 45

DEFAULT_K = 8
"""Nearest vertices searched per query point by ``point_to_mesh_distance`` and the metrics on it."""

_CHUNK_ELEMENTS = 1 << 22
"""Target number of scalar elements per chunk in ``point_to_mesh_distance`` (bounds memory)."""


def rigid_align(
    source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted Kabsch/Procrustes without scale: the proper rotation and translation moving
    ``source`` onto ``target`` in the least-squares sense.

    Minimises ``sum_v w_v |R @ source_v + t - target_v|^2`` over R in SO(3) (det = +1: when the
    unconstrained orthogonal optimum is a reflection, the sign of the smallest singular direction
    is flipped, which gives the best proper rotation) and t in R^3. Solved in float64 internally.

    Args:
        source: (B, V, 3) points to move (e.g. the reconstruction).
        target: (B, V, 3) corresponding points (e.g. the ground truth).
        weights: (V,) non-negative per-vertex weights (bool masks allowed, e.g. the face region)
            or None for uniform weights. At least three non-collinear points need positive weight
            for the rotation to be unique.

    Returns:
        aligned: (B, V, 3) ``source @ R^T + t``, all vertices moved (not only the weighted ones).
        R: (B, 3, 3) rotation acting on column vectors.
        t: (B, 3) translation.
    """
    aligned, _, rotation, translation = _procrustes(source, target, weights, with_scale=False)
    return aligned, rotation, translation


def similarity_align(
    source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted Umeyama alignment: ``rigid_align`` plus one uniform scale, i.e. the s > 0, R in
    SO(3), t minimising ``sum_v w_v |s R @ source_v + t - target_v|^2`` (the NoW benchmark's
    alignment). Same arguments as ``rigid_align``.

    Returns:
        aligned: (B, V, 3) ``s * source @ R^T + t``.
        s: (B,) scale.
        R: (B, 3, 3) rotation acting on column vectors.
        t: (B, 3) translation.
    """
    return _procrustes(source, target, weights, with_scale=True)


def _procrustes(source, target, weights, with_scale: bool):
    """Shared solver of ``rigid_align`` and ``similarity_align`` -> (aligned, s, R, t)."""
    if source.shape != target.shape or source.ndim != 3 or source.shape[-1] != 3:
        raise ValueError(f"source and target must both be (B, V, 3), got {tuple(source.shape)} and {tuple(target.shape)}")
    src = source.double()
    tgt = target.double()
    if weights is None:
        w = torch.ones(source.shape[1], dtype=torch.float64, device=source.device)
    else:
        if weights.shape != (source.shape[1],):
            raise ValueError(f"weights must be (V,) = ({source.shape[1]},), got {tuple(weights.shape)}")
        w = weights.to(device=source.device, dtype=torch.float64)
    w = (w / w.sum())[None, :, None]  # (1, V, 1)
    src_centroid = (w * src).sum(1, keepdim=True)  # (B, 1, 3)
    tgt_centroid = (w * tgt).sum(1, keepdim=True)
    covariance = ((src - src_centroid) * w).transpose(1, 2) @ (tgt - tgt_centroid)  # (B, 3, 3)
    u, singular, vh = torch.linalg.svd(covariance)
    correction = torch.ones(source.shape[0], 3, dtype=torch.float64, device=source.device)
    correction[:, 2] = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))  # -1: reflection
    rotation = vh.transpose(1, 2) @ (correction[:, :, None] * u.transpose(1, 2))
    if with_scale:  # Umeyama (1991), eq. 42: trace(D S) / weighted variance of the source
        variance = (w * (src - src_centroid).square()).sum(dim=(1, 2))
        scale = (singular * correction).sum(1) / variance
    else:
        scale = torch.ones(source.shape[0], dtype=torch.float64, device=source.device)
    translation = tgt_centroid[:, 0] - scale[:, None] * (rotation @ src_centroid[:, 0, :, None])[..., 0]
    aligned = scale[:, None, None] * (src @ rotation.transpose(1, 2)) + translation[:, None, :]
    return aligned.to(source.dtype), scale.to(source.dtype), rotation.to(source.dtype), translation.to(source.dtype)


def point_to_mesh_distance(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, k: int = DEFAULT_K
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance from points to a triangle mesh surface, with the closest surface point.

    For each point, the k nearest mesh vertices are found (chunked ``torch.cdist``; vertices not
    used by any face are skipped), every triangle incident to one of them is a candidate, and the
    exact closest point on each candidate triangle is computed (Ericson, *Real-Time Collision
    Detection*, 5.1.5, vectorised). The result is exact whenever the true closest triangle touches
    one of the k nearest vertices -- always true for points near a reasonably regular mesh, and
    for any point when k >= the number of vertices; otherwise it is an upper bound.

    Args:
        points: (B, P, 3) query points.
        vertices: (B, V, 3) mesh vertices.
        faces: (F, 3) vertex indices, shared by the batch.
        k: number of nearest vertices whose incident triangles are searched.

    Returns:
        distance: (B, P) Euclidean distance to the surface, in the input units.
        closest_point: (B, P, 3) the closest point on the surface.
        face_index: (B, P) int64 index of the triangle holding it (ties: the first candidate).
    """
    distance, closest_point, face_index, _ = _closest_on_mesh(points, vertices, faces, k)
    return distance, closest_point, face_index


def align(pred: torch.Tensor, gt: torch.Tensor, weights: torch.Tensor | None = None, scale: bool = True) -> torch.Tensor:
    """(B, V, 3) ``pred`` aligned onto ``gt`` as CD aligns it: ``similarity_align`` (NoW) or, with
    ``scale=False``, ``rigid_align``."""
    return similarity_align(pred, gt, weights)[0] if scale else rigid_align(pred, gt, weights)[0]


def chamfer_vertex_distance(
    pred: torch.Tensor, gt: torch.Tensor, region_mask: torch.Tensor | None = None, scale: bool = True
) -> torch.Tensor:
    """The paper's CD (NoW-style): align ``pred`` to ``gt`` (same topology; rotation, translation
    and, if ``scale``, a uniform scale), then the mean vertex-to-vertex distance.

    Both the alignment and the mean use the vertices of ``region_mask`` (all vertices if None);
    to align on one region and evaluate others, use ``region_errors``.

    Args:
        pred: (B, V, 3) reconstructed vertices.
        gt: (B, V, 3) ground-truth vertices, in the same vertex order.
        region_mask: (V,) bool, or None for the whole mesh.
        scale: align with a uniform scale too (NoW), or rotation + translation only.

    Returns:
        (B,) mean distance in the input units (metres in, metres out; see ``region_errors`` for mm).
    """
    aligned = align(pred, gt, region_mask, scale)
    distance = (aligned - gt).norm(dim=-1)  # (B, V)
    return distance.mean(1) if region_mask is None else distance[:, region_mask.to(pred.device)].mean(1)


def region_errors(
    pred: torch.Tensor, gt: torch.Tensor, regions: dict[str, torch.Tensor], align_region: str | None = "face", scale: bool = True
) -> dict[str, torch.Tensor]:
    """Per-region CD in MILLIMETRES for vertices in metres (the paper's face/eyes/nose/mouth/ears
    table): one NoW-style alignment (``scale``: see ``chamfer_vertex_distance``) on
    ``regions[align_region]``, then the mean vertex-to-vertex distance over each region, times
    ``MM_PER_METRE``.

    Args:
        pred: (B, V, 3) reconstructed vertices, metres.
        gt: (B, V, 3) ground-truth vertices, metres, same vertex order.
        regions: name -> (V,) bool vertex mask.
        align_region: the key of the mask to align on, or None to align on all vertices.
        scale: align with a uniform scale too (NoW), or rotation + translation only.

    Returns:
        name -> (B,) mean distance in millimetres, one entry per region.
    """
    if align_region is not None and align_region not in regions:
        raise KeyError(f"align_region {align_region!r} is not one of the regions {sorted(regions)}")
    aligned = align(pred, gt, None if align_region is None else regions[align_region], scale)
    distance = (aligned - gt).norm(dim=-1) * MM_PER_METRE  # (B, V)
    return {name: distance[:, mask.to(pred.device)].mean(1) for name, mask in regions.items()}


def mean_normal_error(
    gt_vertices: torch.Tensor,
    gt_faces: torch.Tensor,
    pred_vertices: torch.Tensor,
    pred_faces: torch.Tensor,
    gt_vertex_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's MNE: for each GT vertex, the angle in RADIANS between its vertex normal and the
    normal of the closest point on the reconstructed surface, averaged.

    Radians because the paper's values (0.23-0.29) are plausible mean angles in radians
    (13-17 deg) and not in degrees. Both meshes use smooth normals: area-weighted vertex normals,
    and on the reconstruction the closest point's normal is the barycentric interpolation of its
    triangle's vertex normals (Phong normal; closest point from ``point_to_mesh_distance``,
    default k). So identical meshes score 0 (up to rounding), whereas the face normal of the
    closest triangle would add a tessellation-dependent floor on curved meshes. Normals are oriented, so
    both meshes need the same winding (angles lie in [0, pi]). The meshes are compared where they
    are: align them first (e.g. with ``rigid_align`` when the topologies match). The topologies
    may differ.

    Args:
        gt_vertices: (B, Vg, 3) ground-truth mesh vertices.
        gt_faces: (Fg, 3) ground-truth triangles.
        pred_vertices: (B, Vp, 3) reconstructed mesh vertices.
        pred_faces: (Fp, 3) reconstructed triangles.
        gt_vertex_mask: (Vg,) bool, the GT vertices to evaluate (None: all). Normals are still
            computed on the full GT mesh.

    Returns:
        (B,) mean angle in radians.
    """
    gt_normals = vertex_normals(gt_vertices, gt_faces.to(device=gt_vertices.device, dtype=torch.long))
    points = gt_vertices
    if gt_vertex_mask is not None:
        mask = gt_vertex_mask.to(gt_vertices.device)
        points, gt_normals = points[:, mask], gt_normals[:, mask]
    _, _, face_index, barycentric = _closest_on_mesh(points, pred_vertices, pred_faces, DEFAULT_K)
    pred_faces = pred_faces.to(device=pred_vertices.device, dtype=torch.long)
    corner_normals = vertex_normals(pred_vertices, pred_faces.to(device=pred_vertices.device, dtype=torch.long))[
        torch.arange(points.shape[0], device=points.device)[:, None, None], pred_faces[face_index]
    ]  # (B, P, 3 corners, 3)
    pred_normals = torch.nn.functional.normalize((barycentric[..., None] * corner_normals).sum(-2), dim=-1)
    cross = torch.linalg.cross(gt_normals, pred_normals, dim=-1).norm(dim=-1)
    dot = (gt_normals * pred_normals).sum(-1)
    return torch.atan2(cross, dot).mean(1)


def completeness_ratio(
    gt_vertices: torch.Tensor,
    pred_vertices: torch.Tensor,
    pred_faces: torch.Tensor,
    threshold: float = 0.002,
    gt_vertex_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's CR: the fraction of GT vertices within ``threshold`` (inclusive; default 2 mm
    for metres) of the reconstructed surface (``point_to_mesh_distance``, default k).

    Args:
        gt_vertices: (B, Vg, 3) ground-truth vertices.
        pred_vertices: (B, Vp, 3) reconstructed mesh vertices, already aligned to the GT.
        pred_faces: (Fp, 3) reconstructed triangles.
        threshold: distance in the input units.
        gt_vertex_mask: (Vg,) bool, the GT vertices to count (None: all).

    Returns:
        (B,) fraction in [0, 1] (multiply by 100 for a percentage).
    """
    points = gt_vertices if gt_vertex_mask is None else gt_vertices[:, gt_vertex_mask.to(gt_vertices.device)]
    distance, _, _ = point_to_mesh_distance(points, pred_vertices, pred_faces, DEFAULT_K)
    return (distance <= threshold).to(gt_vertices.dtype).mean(1)


def nme(pred_2d: torch.Tensor, gt_2d: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised mean error of 68 2D landmarks (300W convention).

    The mean Euclidean landmark error divided by the inter-ocular distance, i.e. the distance
    between the GT outer eye corners, iBUG-68 0-based indices 36 and 45 (not the inter-pupil
    distance).

    Args:
        pred_2d: (B, 68, 2) predicted landmarks (e.g. projected 3D landmarks), pixels.
        gt_2d: (B, 68, 2) ground-truth landmarks, same units.
        visible: (B, 68) bool, landmarks to average over (None: all); the normalisation always
            uses the GT eye corners.

    Returns:
        (B,) NME as a fraction (multiply by 100 for the usual percentage).
    """
    if pred_2d.shape != gt_2d.shape or pred_2d.shape[1:] != (68, 2):
        raise ValueError(f"pred_2d and gt_2d must both be (B, 68, 2), got {tuple(pred_2d.shape)} and {tuple(gt_2d.shape)}")
    error = (pred_2d - gt_2d).norm(dim=-1)  # (B, 68)
    if visible is None:
        mean_error = error.mean(1)
    else:
        weight = visible.to(device=error.device, dtype=error.dtype)
        mean_error = (error * weight).sum(1) / weight.sum(1)
    inter_ocular = (gt_2d[:, RIGHT_EYE_OUTER] - gt_2d[:, LEFT_EYE_OUTER]).norm(dim=-1)
    return mean_error / inter_ocular


@dataclass(frozen=True)
class FpsResult:
    """Throughput and per-call latency of a benchmarked callable."""

    fps: float
    """Frames per second over the timed calls: ``n * frames_per_call / total seconds``."""
    latency_p50_ms: float
    """Median per-call latency, milliseconds."""
    latency_p95_ms: float
    """95th-percentile per-call latency, milliseconds."""
    calls: int
    """Number of timed calls."""


def measure_fps(
    fn: Callable[[], object], n: int = 100, warmup: int = 10, frames_per_call: int = 1, sync: bool | None = None
) -> FpsResult:
    """Time ``fn()``: ``warmup`` untimed calls, then ``n`` timed ones (for benchmarks only).

    Args:
        fn: the work of one call, e.g. ``lambda: model(batch)``.
        n: timed calls.
        warmup: untimed calls first (CUDA context, cuDNN autotuning, caches).
        frames_per_call: frames one call processes (the batch size), for the FPS.
        sync: wait for CUDA after each call so the time covers the GPU work; None: when CUDA is
            initialised.

    Returns:
        FpsResult with FPS and p50/p95 latencies.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if sync is None:
        sync = torch.cuda.is_available() and torch.cuda.is_initialized()

    def call() -> None:
        fn()
        if sync:
            torch.cuda.synchronize()

    for _ in range(warmup):
        call()
    latencies = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        start = time.perf_counter()
        call()
        latencies[i] = time.perf_counter() - start
    p50, p95 = torch.quantile(latencies, torch.tensor([0.5, 0.95], dtype=torch.float64)).tolist()
    return FpsResult(
        fps=n * frames_per_call / float(latencies.sum()),
        latency_p50_ms=p50 * 1000.0,
        latency_p95_ms=p95 * 1000.0,
        calls=n,
    )


def _closest_on_mesh(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``point_to_mesh_distance`` plus (B, P, 3) barycentric weights of the closest point on its
    face (corner order of ``faces``)."""
    if points.ndim != 3 or vertices.ndim != 3 or points.shape[0] != vertices.shape[0] or points.shape[-1] != 3:
        raise ValueError(
            f"points (B, P, 3) and vertices (B, V, 3) expected, got {tuple(points.shape)} and {tuple(vertices.shape)}"
        )
    if faces.ndim != 2 or faces.shape[0] == 0 or faces.shape[1] != 3:
        raise ValueError(f"faces must be a non-empty (F, 3) table, got {tuple(faces.shape)}")
    faces = faces.to(device=vertices.device, dtype=torch.long)
    batch, num_points, _ = points.shape
    incident = _incident_faces(faces, vertices.shape[1])  # (V, M)
    unused = incident[:, 0] < 0  # (V,) vertices without faces
    k = min(k, int((~unused).sum()))
    triangles = vertices[:, faces]  # (B, F, 3, 3)
    centre = vertices.mean(1, keepdim=True)  # centring keeps cdist's matmul path accurate
    centred_vertices = vertices - centre
    chunk = max(1, _CHUNK_ELEMENTS // (batch * max(vertices.shape[1], 8 * k * incident.shape[1])))
    batch_index = torch.arange(batch, device=vertices.device)[:, None, None]
    distances, closest_points, face_indices, barycentrics = [], [], [], []
    for start in range(0, num_points, chunk):
        query = points[:, start : start + chunk]  # (B, C, 3)
        vertex_distance = torch.cdist(query - centre, centred_vertices)  # (B, C, V)
        vertex_distance = vertex_distance.masked_fill(unused, float("inf"))
        nearest = vertex_distance.topk(k, dim=-1, largest=False).indices  # (B, C, k)
        candidates = incident[nearest].flatten(2)  # (B, C, K = k * M), -1 = padding
        valid = candidates >= 0
        candidates = candidates.clamp_min(0)
        corners = triangles[batch_index, candidates]  # (B, C, K, 3 corners, 3)
        weights = _closest_point_on_triangle(query[:, :, None, :], *corners.unbind(-2))  # (B, C, K, 3)
        closest = (weights[..., None] * corners).sum(-2)  # (B, C, K, 3)
        squared = (closest - query[:, :, None, :]).square().sum(-1).masked_fill(~valid, float("inf"))
        best = squared.argmin(-1, keepdim=True)[..., None].expand(-1, -1, -1, 3)  # (B, C, 1, 3)
        closest_points.append(closest.gather(2, best)[:, :, 0])
        barycentrics.append(weights.gather(2, best)[:, :, 0])
        face_indices.append(candidates.gather(2, best[..., 0])[..., 0])
        distances.append((closest_points[-1] - query).norm(dim=-1))
    return torch.cat(distances, 1), torch.cat(closest_points, 1), torch.cat(face_indices, 1), torch.cat(barycentrics, 1)


def _incident_faces(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """(F, 3) int64 faces -> (V, M) int64 table: row v lists the faces using vertex v, padded with
    -1 (M = the largest valence)."""
    vertex_ids = faces.reshape(-1)
    face_ids = torch.arange(faces.shape[0], device=faces.device).repeat_interleave(3)
    order = torch.argsort(vertex_ids, stable=True)
    vertex_ids, face_ids = vertex_ids[order], face_ids[order]
    counts = torch.bincount(vertex_ids, minlength=num_vertices)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(vertex_ids.shape[0], device=faces.device) - starts[vertex_ids]
    table = torch.full((num_vertices, max(int(counts.max()), 1)), -1, dtype=torch.long, device=faces.device)
    table[vertex_ids, rank] = face_ids
    return table


def _closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Barycentric weights (..., 3) of the point of triangle abc closest to p (Ericson 5.1.5),
    broadcast over (..., 3) inputs; the point is ``w0 * a + w1 * b + w2 * c``.

    Every Voronoi region's answer is computed and the first matching region is selected, in
    Ericson's order: vertex a, vertex b, edge ab, vertex c, edge ac, edge bc, interior.
    Degenerate (zero-area) triangles fall into a vertex or edge region.
    """

    def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(-1, keepdim=True)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return num / torch.where(den == 0, torch.ones_like(den), den)

    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    denominator = va + vb + vc
    v, w = ratio(vb, denominator), ratio(vc, denominator)
    result = torch.cat((1 - v - w, v, w), -1)
    w_bc = ratio(d4 - d3, (d4 - d3) + (d5 - d6))
    w_ac = ratio(d2, d2 - d6)
    v_ab = ratio(d1, d1 - d3)
    # Lower-priority regions first, so that the highest-priority match is written last.
    regions = (
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), (zero, 1 - w_bc, w_bc)),  # edge bc
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), (1 - w_ac, zero, w_ac)),  # edge ac
        ((d6 >= 0) & (d5 <= d6), (zero, zero, one)),  # vertex c
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), (1 - v_ab, v_ab, zero)),  # edge ab
        ((d3 >= 0) & (d4 <= d3), (zero, one, zero)),  # vertex b
        ((d1 <= 0) & (d2 <= 0), (one, zero, zero)),  # vertex a
    )
    for condition, weights in regions:
        result = torch.where(condition, torch.cat(weights, -1), result)
    return result
