"""Viewer drawing benchmark: milliseconds per displayed frame of the video overlay and of the 3D
view's mesh update, now and as they were before (the baselines below), on real tracked frames.

    python -m app.bench_viewer --video clip.mp4 [--checkpoint C] [--frames 40] [--repeats 5]

The first ``--frames`` frames of the video are tracked (the shipped checkpoint by default, one
torch thread, as the app), then every variant draws every frame ``--repeats`` times, the variants
interleaved frame by frame (so a busy CPU slows them alike), after a warm-up. ``--upscale 2``
draws on the frames upscaled twice (the face twice as many pixels across, as a camera of twice
the resolution gives it):

    overlay   ``tracker.outputs.overlay.draw_overlay`` (mesh only, no landmarks) shaded at the frame's
              full resolution and at SHADE_RESOLUTION, and as wireframe (the grid and contours,
              at SHADE_RESOLUTION); baselines: the shaded overlay before (every triangle
              rasterised at full resolution in the crop box grown by 25 %, vertex normals by
              torch index_add), the wireframe before (every edge of the front-facing triangles
              once, by cv2.polylines)
    3D view   ``GLMeshView.set_mesh`` with the head of ``app.viewer.head_centred_vertices``, then
              the GL item's parse of the mesh data (what its paint does on the CPU before the
              upload; the upload and GL drawing are left out, they are the same); baseline: a new
              MeshData every frame whose vertex normals sum the face normals with ``np.add.at``

Printed: median and p95 per call and the speed-up of each against its baseline; the last line is
``overlay_shaded_ms=<a> overlay_shaded_ms_before=<b> wireframe_ms=<c> wireframe_ms_before=<d>
mesh_update_ms=<e> mesh_update_ms_before=<f>`` (medians). The 3D part needs Qt (a display, or
QT_QPA_PLATFORM=offscreen, which it takes without a display) and pyqtgraph's OpenGL module.
torch and the tracker are imported when the benchmark runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import TYPE_CHECKING

import cv2
import numpy as np

from tracker.outputs.overlay import (
    MESH_COLOUR,
    SHADE_RESOLUTION,
    draw_overlay,
    face_window,
    front_facing,
    mesh_topology,
    mesh_window,
    project_vertices,
)

if TYPE_CHECKING:
    import torch

    from tracker.live.results import TrackingResult


def track(video: str, checkpoint: str | None, frames: int) -> tuple[list[TrackingResult], torch.Tensor]:
    """-> (the results of the first ``frames`` frames that have a face, meshes decoded; the
    head's render faces (F, 3))."""
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import TrackerOptions
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import open_source

    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=checkpoint, runtime="torch"))
    results: list[TrackingResult] = []

    def keep(result: TrackingResult) -> None:
        if result.faces:
            result.faces[0].vertices  # decoded now, not in a timing
            results.append(result)

    try:
        Pipeline(open_source(video), tracker, [keep], mode="sequential", max_frames=frames).run()
    finally:
        tracker.close()
    return results, tracker.head.render_faces


def upscaled(result: TrackingResult, factor: int) -> TrackingResult:
    """``result`` as a camera of ``factor`` times the resolution would give it (frame, intrinsics
    and crop box scaled; the same head)."""
    if factor == 1:
        return result
    height, width = result.frame.image.shape[:2]
    image = cv2.resize(result.frame.image, (width * factor, height * factor), interpolation=cv2.INTER_LINEAR)
    faces = [dataclasses.replace(face, crop_box=face.crop_box * factor) for face in result.faces]
    return dataclasses.replace(result, frame=dataclasses.replace(result.frame, image=image), faces=faces,
                               focal=result.focal * factor, principal=result.principal * factor)


def shaded_before(image: np.ndarray, result: TrackingResult, faces_tri: torch.Tensor) -> np.ndarray:
    """The shaded overlay before the windowed, capped shading (baseline): (H, W, 3) uint8 BGR."""
    import torch

    from tracker.render.maps import vertex_normals
    from tracker.render.rasterizer import (
        covered_to_image,
        interpolate_covered,
        rasterize,
    )

    image = image.copy()
    height, width = image.shape[:2]
    for face in result.faces:
        x0, y0, x1, y1 = face_window(face, width, height)
        points = face.vertices[None].float()
        principal = torch.tensor(np.asarray(result.principal, np.float32) - (x0, y0))[None]
        fragments = rasterize(points, faces_tri, torch.tensor(np.asarray(result.focal, np.float32))[None], principal, (y1 - y0, x1 - x0))
        values = interpolate_covered(torch.cat((vertex_normals(points, faces_tri), points), -1), faces_tri, fragments)
        unit = torch.nn.functional.normalize
        cosine = (unit(values[:, :3], dim=-1) * unit(values[:, 3:], dim=-1)).sum(-1)
        shade = covered_to_image(cosine.abs()[:, None], fragments)[0, ..., 0].clamp(0, 1).numpy()
        covered = fragments.mask[0].numpy()
        patch = image[y0:y1, x0:x1].astype(np.float32)
        colour = (0.25 + 0.75 * shade[..., None]) * MESH_COLOUR
        blended = np.where(covered[..., None], 0.4 * patch + 0.6 * colour, patch)
        image[y0:y1, x0:x1] = blended.clip(0, 255).astype(np.uint8)
    return image


def edge_tables(faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2) every undirected edge of the triangles once, and (3, F) the edge (row) opposite
    corner k of face f: the tables of the wireframe before the grid."""
    corners = np.ascontiguousarray(faces.T)
    start, end = corners[[1, 2, 0]], corners[[2, 0, 1]]  # edge k: corner k+1 -> corner k+2
    keys = np.minimum(start, end) * num_vertices + np.maximum(start, end)
    unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    return np.stack(np.divmod(unique, num_vertices), 1), inverse.reshape(corners.shape)


def wireframe_before(image: np.ndarray, result: TrackingResult, faces_tri: torch.Tensor, tables: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The wireframe before the grid (baseline): every edge of the front-facing triangles once,
    outlined by cv2.polylines and blended at 0.36; (H, W, 3) uint8 BGR."""
    edges, edge_index = tables
    image = image.copy()
    height, width = image.shape[:2]
    for face in result.faces:
        pixels = project_vertices(face, result.focal, result.principal)
        x0, y0, x1, y1 = mesh_window(pixels, width, height)
        region = image[y0:y1, x0:x1]
        front = np.zeros(len(edges), bool)
        front[edge_index[:, front_facing(*mesh_topology(faces_tri, len(pixels)).projected_corners(pixels))]] = True
        segments = np.round((pixels[edges[front]] - (x0, y0)) * 4).astype(np.int32)  # (E', 2 ends, 2), 2 fractional bits
        lines = region.copy()
        cv2.polylines(lines, segments, False, MESH_COLOUR, 1, cv2.LINE_AA, shift=2)
        cv2.addWeighted(lines, 0.36, region, 0.64, 0, dst=region)
    return image


def vertex_normals_before(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3), (F, 3) -> (V, 3) unit area-weighted vertex normals by ``np.add.at`` (baseline)."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def mesh_updates(faces: np.ndarray):
    """{name: update(vertices (V, 3) y-up)} of the 3D view now and before; each call ends with
    the GL item's parse of its mesh data."""
    from pyqtgraph.opengl import GLMeshItem
    from pyqtgraph.opengl.MeshData import MeshData

    from app.viewer import GLMeshView

    class MeshDataBefore(MeshData):
        def vertexNormals(self, indexed=None):
            if self._vertexNormals is None:
                self._vertexNormals = vertex_normals_before(self._vertexes, self._faces).astype(np.float32)
            return self._vertexNormals if indexed is None else self._vertexNormals[self._faces]

    item_before = GLMeshItem(smooth=True, shader="shaded", glOptions="opaque")
    view = GLMeshView()

    def before(vertices: np.ndarray) -> None:
        gl_vertices = np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1).astype(np.float32)
        item_before.setMeshData(meshdata=MeshDataBefore(vertexes=gl_vertices, faces=faces))
        item_before.parseMeshData()

    def now(vertices: np.ndarray) -> None:
        view.set_mesh(vertices, faces)
        view._item.parseMeshData()

    return {"before": before, "now": now}


def time_interleaved(calls: dict, inputs: list, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms, p95 ms)} of ``calls[name](input)`` over every input ``repeats`` times,
    the calls interleaved input by input, after a warm-up on the first two inputs."""
    for item in inputs[:2]:
        for call in calls.values():
            call(item)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for item in inputs:
            for name, call in calls.items():
                start = time.perf_counter()
                call(item)
                times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t)) * 1e3, float(np.percentile(t, 95)) * 1e3) for name, t in times.items()}


def report(title: str, figures: dict[str, tuple[float, float]], baseline: str) -> None:
    print(title)
    for name, (median, p95) in figures.items():
        ratio = "" if name == baseline else f"   {figures[baseline][0] / median:4.1f}x faster"
        print(f"  {name:44s} {median:7.2f} ms median {p95:7.2f} ms p95{ratio}")


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    results, faces_tri = track(args.video, args.checkpoint, args.frames)
    if not results:
        raise SystemExit(f"no face tracked in the first {args.frames} frames of {args.video}")
    results = [upscaled(result, args.upscale) for result in results]
    height, width = results[0].frame.image.shape[:2]
    print(f"video {args.video}: {len(results)} tracked frames, drawn at {width}x{height}; mesh {results[0].faces[0].vertices.shape[0]} vertices, "
          f"{len(faces_tri)} triangles; {args.repeats} repeats; torch threads {torch.get_num_threads()}")

    def overlay(style: str, resolution: int | None = None):
        return lambda result: draw_overlay(result.frame.image, result, faces_tri, style, landmarks=False, resolution=resolution)

    shaded = time_interleaved({
        "before (full resolution, every triangle)": lambda result: shaded_before(result.frame.image, result, faces_tri),
        "full resolution (resolution=None)": overlay("shaded"),
        f"capped ({SHADE_RESOLUTION} px, the default)": overlay("shaded", SHADE_RESOLUTION),
    }, results, args.repeats)  # fmt: skip
    report("overlay, shaded:", shaded, "before (full resolution, every triangle)")
    tables = edge_tables(faces_tri.numpy(), results[0].faces[0].vertices.shape[0])
    wire = time_interleaved({
        "before (front-facing edges once)": lambda result: wireframe_before(result.frame.image, result, faces_tri, tables),
        f"now (grid and contours, {SHADE_RESOLUTION} px)": overlay("wireframe", SHADE_RESOLUTION),
    }, results, args.repeats)  # fmt: skip
    report("overlay, wireframe:", wire, "before (front-facing edges once)")

    from app.qt_platform import require_gui

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    require_gui()  # Qt aborts the process where it cannot start
    from PyQt6 import QtWidgets

    from app.viewer import head_centred_vertices

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["n2f-bench"])  # the widgets need one
    heads = [head_centred_vertices(result.faces[0]) for result in results]
    updates = time_interleaved(mesh_updates(faces_tri.numpy()), heads, args.repeats)
    app.processEvents()  # what the widgets posted, before they go
    report("3D view mesh update (set_mesh + the GL item's parse of the mesh data):", updates, "before")
    print(f"overlay_shaded_ms={shaded[f'capped ({SHADE_RESOLUTION} px, the default)'][0]:.2f} "
          f"overlay_shaded_ms_before={shaded['before (full resolution, every triangle)'][0]:.2f} "
          f"wireframe_ms={wire[f'now (grid and contours, {SHADE_RESOLUTION} px)'][0]:.2f} wireframe_ms_before={wire['before (front-facing edges once)'][0]:.2f} "
          f"mesh_update_ms={updates['now'][0]:.2f} mesh_update_ms_before={updates['before'][0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.bench_viewer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="video file (or image folder) with a face")
    parser.add_argument("--checkpoint", help="N2FNet checkpoint that tracks it (default: the shipped one)")
    parser.add_argument("--frames", type=int, default=40, help="frames tracked and drawn (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="times every frame is drawn per variant (default 5)")
    parser.add_argument("--upscale", type=int, default=1, help="draw on the frames upscaled this many times, as a camera of that resolution (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the app)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
