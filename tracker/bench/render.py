"""Rendering benchmark: milliseconds per normal map (rasterise + interpolate normals + mask).

Meshes:
    flame-size  a generated smooth head-like mesh with exactly FLAME's 5023 vertices and 9976
                triangles (a sphere-topology head with a neck opening), so the figure stands for
                FLAME without its licensed files.
    ict         the ICT-FaceKit neutral face + head-and-neck (regions 'face', 'head_and_neck'),
                read from the packed npz (skipped with a message when it is absent).

Camera: the mesh origin 1 m in front of the camera, frontal, focal = 5 * size pixels, principal
point at the image centre. That is a DECA-style crop: ICT's 68 landmarks span 0.147 m at about
0.9 m, times the usual padding 1.25, gives f / size = 4.9 (Pixel3DMM's renderer uses ~3.9, a
slightly looser crop).

Timed: ``render_normal_map`` under ``no_grad`` (head -> camera, vertex normals, rasterise,
interpolate + normalise the normals, coverage mask), median over ``--repeats`` runs after two
warm-up runs. Figures are milliseconds per normal map: for batch 16, the batch time / 16.
The last line printed is ``render_ms_b1=<x> render_ms_b16=<y>`` for the flame-size mesh on the
last device benchmarked (CUDA when it is available and requested, else CPU).

The embedded MediaPipe cue (``tracker.face.cues.MediaPipeMeshCue.render``: vertex normals, rasterise
880 triangles, interpolate, normalise, mask) is timed per call on real crops, old and new in the
same process and interleaved: the "torch" renderer (``render_mediapipe_mesh``, the general
rasteriser) and the "numpy" one (``tracker.render.rasterize_numpy``, the default). Crops: MediaPipe
on the shared real-face videos, ``--cue-size`` pixels (128 by default, the live crop); skipped
with a message without the shared material. Median and p95 over ``--cue-repeats`` calls (default
30 x ``--repeats``), printed before the summary line as ``cue_ms_torch=<x> cue_ms_numpy=<y>``
(medians). Use ``--threads 1`` for the live process's setting.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.head_models.ict_source import locate_ict_model
from tracker.n2fnet.runtime import check_device
from tracker.render.maps import render_normal_map

FLAME_VERTICES = 5023
FLAME_FACES = 9976
FOCAL_RATIO = 5.0  # focal / image size
BATCHES = (1, 16)


def head_like_mesh(num_vertices: int = FLAME_VERTICES, neck_ring: int = 68) -> tuple[np.ndarray, np.ndarray]:
    """A smooth head-shaped mesh: a pole at the crown, latitude rings down to an open neck ring.

    Disk topology, so ``faces = 2 * num_vertices - 2 - neck_ring`` (5023 vertices and a 68-vertex
    neck ring give FLAME's 9976). Head frame (+y up, +z out of the face), metres, centred near the
    origin, wound counter-clockwise seen from outside.

    Returns:
        vertices (num_vertices, 3) float32, faces (F, 3) int64.
    """
    theta_max = math.radians(150.0)
    num_rings = 56
    theta = np.arange(1, num_rings + 1) * theta_max / num_rings
    weight = np.sin(theta[:-1])
    ring = np.round(weight * (num_vertices - 1 - neck_ring) / weight.sum()).astype(int)
    ring[np.argmax(ring)] += num_vertices - 1 - neck_ring - ring.sum()
    ring = np.append(ring, neck_ring)

    thetas, phis = [np.zeros(1)], [np.zeros(1)]
    for r, n in enumerate(ring):
        thetas.append(np.full(n, theta[r]))
        phis.append((np.arange(n) + 0.5 * (r % 2)) * 2.0 * math.pi / n)
    th, ph = np.concatenate(thetas), np.concatenate(phis)
    direction = np.stack((np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)), 1)
    axes = np.array([0.078, 0.105, 0.095])
    radius = 1.0 / np.sqrt(((direction / axes) ** 2).sum(1))
    neck = np.clip((th - math.radians(110.0)) / math.radians(40.0), 0.0, 1.0)
    narrowing = 1.0 - 0.35 * neck * neck * (3.0 - 2.0 * neck)
    points = direction * radius[:, None] * np.stack((narrowing, np.ones_like(th), narrowing), 1)
    nose_dir = np.array([0.0, -0.15, 1.0]) / np.linalg.norm([0.0, -0.15, 1.0])
    nose = 0.02 * np.exp(-(1.0 - direction @ nose_dir) / 0.01)
    points = points + nose[:, None] * direction

    faces = [np.stack((np.arange(ring[0]) + 1, (np.arange(ring[0]) + 1) % ring[0] + 1, np.zeros(ring[0], int)), 1)]
    start = 1
    for r in range(num_rings - 1):
        faces.append(_zip_rings(start, ring[r], phis[r + 1], start + ring[r], ring[r + 1], phis[r + 2]))
        start += ring[r]
    faces = np.concatenate(faces).astype(np.int64)
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    if np.einsum("ij,ij->", a, np.cross(b - a, c - a)) < 0:
        faces = faces[:, [0, 2, 1]]
    return points.astype(np.float32), faces


def _zip_rings(start_a: int, n_a: int, phi_a: np.ndarray, start_b: int, n_b: int, phi_b: np.ndarray) -> np.ndarray:
    """Triangles of the strip between ring a (above) and ring b (below), merged by azimuth."""
    i = j = 0
    tris = []
    while i < n_a or j < n_b:
        next_a = phi_a[i + 1] if i + 1 < n_a else phi_a[0] + 2.0 * math.pi
        next_b = phi_b[j + 1] if j + 1 < n_b else phi_b[0] + 2.0 * math.pi
        a0, b0 = start_a + i % n_a, start_b + j % n_b
        if j >= n_b or (i < n_a and next_a <= next_b):
            tris.append((a0, b0, start_a + (i + 1) % n_a))
            i += 1
        else:
            tris.append((a0, b0, start_b + (j + 1) % n_b))
            j += 1
    return np.array(tris)


def ict_face_head_mesh(path: Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """ICT-FaceKit neutral 'face' + 'head_and_neck' in metres (head frame), or None if absent.

    Returns:
        vertices (V', 3) float32 (the vertices of the two regions), faces (F', 3) int64.
    """
    if path is None:
        try:
            path = locate_ict_model(allow_download=False, log=lambda message: None)
        except TrackerError:
            return None
    if not Path(path).is_file():
        return None
    with np.load(path) as data:
        names = [str(n) for n in data["region_names"]]
        ranges = data["region_ranges"]
        neutral = data["neutral"].astype(np.float32) / 100.0  # centimetres -> metres
        triangles = data["triangles"].astype(np.int64)
    keep = np.zeros(len(neutral), bool)
    for region in ("face", "head_and_neck"):
        start, stop = ranges[names.index(region)]
        keep[start:stop] = True
    new_index = np.cumsum(keep) - 1
    return neutral[keep], new_index[triangles[keep[triangles].all(1)]]


def time_normal_map(
    vertices: torch.Tensor, faces: torch.Tensor, batch: int, size: int, device: torch.device, repeats: int
) -> float:
    """Median milliseconds per normal map of ``batch`` frontal copies of the mesh (V, 3) at 1 m."""
    vertices = vertices.to(device)[None].expand(batch, -1, -1).contiguous()
    faces = faces.to(device)
    rotation = torch.eye(3, device=device).expand(batch, 3, 3)
    translation = torch.tensor([0.0, 0.0, 1.0], device=device).expand(batch, 3)
    focal = torch.full((batch, 2), FOCAL_RATIO * size, device=device)
    principal = torch.full((batch, 2), size / 2.0, device=device)

    def run() -> None:
        render_normal_map(vertices, faces, rotation, translation, focal, principal, (size, size))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    with torch.no_grad():
        for _ in range(2):
            run()
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3 / batch


def cue_landmarks(size: int, count: int = 40, stride: int = 3) -> list[np.ndarray]:
    """Crop landmarks (478, 3) of up to ``count`` real-face crops of ``size`` pixels: MediaPipe and
    the tracker's DECA-style cropper on the shared real-face videos (every ``stride``-th frame);
    empty without the shared material."""
    import cv2

    from tracker.face.detection import FaceCropper, FaceMeshDetector
    from tracker.files.paths import shared_dir

    shared = shared_dir()
    videos = sorted((shared / "real-faces" / "videos").glob("*.mp4")) if shared is not None else []
    found: list[np.ndarray] = []
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        with FaceMeshDetector(max_faces=1) as detector:
            cropper = FaceCropper(alpha=1.4, out_size=size)
            frame_index = 0
            while len(found) < count:
                ok, frame = capture.read()
                if not ok:
                    break
                frame_index += 1
                if frame_index % stride:
                    continue
                faces = detector.detect(frame)
                found += [crop.landmarks for crop in cropper(frame, faces, frame_index / 30.0)]
        capture.release()
        if len(found) >= count:
            break
    return found[:count]


def time_cue(landmarks: list[np.ndarray], size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{renderer: (median ms, p95 ms)} per ``MediaPipeMeshCue.render`` call, the renderers
    interleaved call by call (so a busy CPU slows both alike), after a warm-up."""
    from tracker.face.cues import MediaPipeMeshCue

    cues = {name: MediaPipeMeshCue(renderer=name) for name in ("torch", "numpy")}
    times: dict[str, list[float]] = {name: [] for name in cues}
    for index in range(repeats + 4):
        points = landmarks[index % len(landmarks)]
        for name, cue in cues.items():
            start = time.perf_counter()
            cue.render(points, size)
            if index >= 4:
                times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t)) * 1e3, float(np.percentile(t, 95)) * 1e3) for name, t in times.items()}


def devices(requested: str) -> list[torch.device]:
    """``cpu``, ``cuda`` or ``auto`` (CPU, then CUDA when available) -> devices to benchmark."""
    if requested == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [check_device(requested)]


def run(args: argparse.Namespace) -> None:
    """The ``render`` subcommand: print ms per normal map, then the summary line."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    vertices, faces = head_like_mesh()
    meshes = {"flame-size": (torch.from_numpy(vertices), torch.from_numpy(faces))}
    ict = ict_face_head_mesh()
    if ict is None:
        print("ict: skipped, ICT-FaceKit npz not found (python -m tracker.head_models ict-source --download fetches it)")
    else:
        meshes["ict face+head"] = (torch.from_numpy(ict[0]), torch.from_numpy(ict[1]))
    print(f"normal map {args.size}x{args.size}, focal {FOCAL_RATIO:g} * size, torch threads {torch.get_num_threads()}")
    summary = {}
    for device in devices(args.device):
        for name, (verts, tris) in meshes.items():
            for batch in BATCHES:
                ms = time_normal_map(verts, tris, batch, args.size, device, args.repeats)
                print(f"{name:14s} ({verts.shape[0]} v, {tris.shape[0]} f) {device.type:4s} batch {batch:2d}: "
                      f"{ms:8.2f} ms per map ({ms * batch:.1f} ms per batch)")
                if name == "flame-size":
                    summary[batch] = ms
    cue_repeats = args.cue_repeats if args.cue_repeats is not None else 30 * args.repeats
    landmarks = cue_landmarks(args.cue_size) if cue_repeats > 0 else []
    if not landmarks:
        print("mediapipe cue: skipped (no real-face crops: the shared real-face videos are needed)")
    else:
        cue = time_cue(landmarks, args.cue_size, cue_repeats)
        (old, old_p95), (new, new_p95) = cue["torch"], cue["numpy"]
        print(f"mediapipe cue {args.cue_size}x{args.cue_size} (880 f, {len(landmarks)} real crops, {cue_repeats} calls, "
              f"torch threads {torch.get_num_threads()}): torch rasteriser {old:.2f} ms median ({old_p95:.2f} p95), "
              f"numpy {new:.2f} ms median ({new_p95:.2f} p95), {old / new:.1f}x")
        print(f"cue_ms_torch={old:.2f} cue_ms_numpy={new:.2f}")
    print(f"render_ms_b1={summary[1]:.2f} render_ms_b16={summary[16]:.2f}")
