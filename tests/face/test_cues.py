"""Geometry cues: the MediaPipe triangle list, the embedded mesh cue (analytic planes and a real face,
signs of the normals in the view frame; its NumPy renderer against the general PyTorch rasteriser,
on synthetic meshes and on real crops) and the optional Pixel3DMM / FaRL adapters."""

from __future__ import annotations

import collections
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.face.cues import (
    FARL_FACE_CLASSES,
    CueOutput,
    FaRLMaskCue,
    GeometryCue,
    MediaPipeMeshCue,
    Pixel3DMMCue,
    _MeshNormals,
    create_cue,
    mediapipe_boundary_loops,
    mediapipe_triangles,
)
from tracker.face.detection import FaceCropper, FaceMeshDetector
from tracker.render import rasterize, vertex_normals
from tracker.render.rasterize_numpy import NumpyRasterizer, fma32

OUT_DIR = Path("/tmp/cue_check")


# ----------------------------------------------------------------------------- triangles


def test_triangles_rebuilt_from_the_tessellation():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    open_mesh = mediapipe_triangles(fill_eyes=False)
    assert open_mesh.shape == (852, 3)
    assert mediapipe_triangles().shape == (880, 3)  # + 2 x 14 closing the eyes
    assert mediapipe_triangles(fill_eyes=True, fill_mouth=True).shape == (898, 3)  # the canonical model's count
    # every tessellation edge is a triangle edge and vice versa; each half-edge is used once
    half_edges = [edge for a, b, c in open_mesh.tolist() for edge in ((a, b), (b, c), (c, a))]
    assert len(set(half_edges)) == len(half_edges)
    assert set(half_edges) <= set(FACEMESH_TESSELATION)
    undirected = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    assert {tuple(sorted(e)) for e in half_edges} == undirected
    assert sorted(np.unique(open_mesh)) == list(range(468))
    # the disc with three holes: V - E + F = 2 - 4 boundary loops
    assert 468 - len(undirected) + 852 == -2
    loops = mediapipe_boundary_loops()
    assert {k: len(v) for k, v in loops.items()} == {"outline": 36, "mouth": 20, "right_eye": 16, "left_eye": 16}
    # closed eyes: the eye loops' edges are now used twice, and the whole filled mesh is consistently wound
    filled = mediapipe_triangles()
    uses = collections.Counter(tuple(sorted(e)) for a, b, c in filled.tolist() for e in ((a, b), (b, c), (c, a)))
    for name in ("right_eye", "left_eye"):
        loop = loops[name]
        assert all(uses[tuple(sorted(e))] == 2 for e in zip(loop, loop[1:] + loop[:1]))
    directed = [e for a, b, c in filled.tolist() for e in ((a, b), (b, c), (c, a))]
    assert len(set(directed)) == len(directed)


def _winding(points_xy, faces):
    a, b, c = (points_xy[faces[:, k]] for k in range(3))
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


# ----------------------------------------------------------------------------- analytic surfaces


@pytest.fixture(scope="module")
def frontal(shared_path):
    """(crop image, crop landmarks) of single_face.jpg through the detector and the cropper."""
    path = shared_path / "real-faces" / "images" / "single_face.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = cv2.imread(str(path))
    with FaceMeshDetector(static_images=True) as det:
        faces = det.detect(image)
    crop = FaceCropper(alpha=1.4, out_size=256)(image, faces, 0.0)[0]
    return crop.image, crop.landmarks


@pytest.fixture(scope="module")
def cue():
    with MediaPipeMeshCue() as mesh_cue:
        yield mesh_cue


@pytest.mark.shared
def test_mesh_is_wound_counter_clockwise_seen_from_the_camera(frontal):
    _, landmarks = frontal
    view_xy = landmarks[:, :2] * [1, -1]  # view frame: +y up
    area = _winding(view_xy, mediapipe_triangles())
    assert (area > 0).mean() > 0.95  # the rest: slivers folded over at the silhouette


@pytest.mark.shared
@pytest.mark.parametrize("slope", [(0.5, 0.0), (0.0, 0.4), (-0.3, -0.2)])
def test_tilted_plane_gives_its_analytic_normal(frontal, cue, slope):
    """MediaPipe depth z = a x + b y (pixels; larger z is farther): the view-frame surface
    (x, -y, -z) has the outward normal (a, -b, 1) / |.|: a surface receding to the right faces
    right (+x), one receding downwards faces down (-y)."""
    _, landmarks = frontal
    a, b = slope
    plane = landmarks.copy()
    plane[:, 2] = a * (plane[:, 0] - 128) + b * (plane[:, 1] - 128)
    out = cue(np.zeros((256, 256, 3), np.uint8), plane)
    expected = np.array([a, -b, 1.0]) / np.linalg.norm([a, -b, 1.0])
    inside = out.mask > 0
    close = np.abs(out.normals[inside] - expected).max(-1) < 1e-3
    assert close.mean() > 0.98  # vertices of folded silhouette slivers may differ


@pytest.mark.shared
def test_embedded_cue_on_a_real_face(frontal, cue):
    image, landmarks = frontal
    out = cue(image, landmarks)
    assert isinstance(out, CueOutput) and out.frame == "camera"
    assert out.normals.shape == (256, 256, 3) and out.normals.dtype == np.float32
    assert out.mask.shape == (256, 256) and out.mask.dtype == np.float32
    assert set(np.unique(out.mask)) == {0.0, 1.0}
    inside = out.mask > 0
    assert np.allclose(np.linalg.norm(out.normals[inside], axis=-1), 1, atol=1e-5)
    assert not out.normals[~inside].any()

    # the mask is the face outline minus the inner mouth (eyes closed)
    loops = mediapipe_boundary_loops()
    outline = np.zeros((256, 256), np.uint8)
    shift = 4  # sub-pixel polygon vertices, centres at j + 0.5
    scaled = lambda loop: np.round((landmarks[list(loop), :2] - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(outline, [scaled(loops["outline"])], 1, shift=shift)
    mouth = np.zeros_like(outline)
    cv2.fillPoly(mouth, [scaled(loops["mouth"])], 1, shift=shift)
    expected = (outline > 0) & ~(mouth > 0)
    iou = (expected & inside).sum() / (expected | inside).sum()
    hull = np.zeros_like(outline)
    cv2.fillConvexPoly(hull, cv2.convexHull(scaled(range(468))), 1, shift=shift)
    assert iou > 0.97
    assert (inside & (hull > 0)).sum() > 0.99 * inside.sum()  # inside the landmarks' hull
    assert (inside | (mouth > 0)).sum() > 0.93 * hull.sum()  # and covering it, but for the mouth

    normals = out.normals[inside]
    assert normals[:, 2].mean() > 0.7 and (normals[:, 2] > 0.5).mean() > 0.75  # frontal: towards the camera

    def around(vertex, radius=6):
        x, y = landmarks[vertex, :2]
        rows, cols = np.mgrid[:256, :256] + 0.5
        disc = ((cols - x) ** 2 + (rows - y) ** 2 < radius**2) & inside
        return out.normals[disc].mean(0)

    nose = around(4)  # the nose tip (dlib 30)
    assert nose[2] > 0.8 and abs(nose[0]) < 0.3
    right_cheek, left_cheek = around(205, 10), around(425, 10)  # the subject's right = image left
    assert right_cheek[0] < -0.2 and left_cheek[0] > 0.2  # view frame: +x is the viewer's right
    forehead, chin = around(151, 10), around(152, 6)
    assert forehead[1] > chin[1] and chin[1] < -0.2  # the chin's underside faces down (-y)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rgb = ((out.normals + 1) * 127.5).round().clip(0, 255).astype(np.uint8) * inside[..., None]
    cv2.imwrite(str(OUT_DIR / "mediapipe_cue.png"), np.concatenate([image, rgb[..., ::-1]], axis=1))


@pytest.mark.shared
def test_cue_detects_landmarks_itself_when_none_are_given(frontal, cue):
    image, landmarks = frontal
    given = cue(image, landmarks).mask > 0
    own = cue(image).mask > 0
    assert (given & own).sum() / (given | own).sum() > 0.9
    empty = cue(np.full((256, 256, 3), 127, np.uint8))
    assert not empty.mask.any() and not empty.normals.any()


def test_cue_rejects_bad_input(cue):
    with pytest.raises(TrackerError):
        cue(np.zeros((256, 200, 3), np.uint8), np.zeros((478, 3), np.float32))
    with pytest.raises(TrackerError):
        cue(np.zeros((256, 256, 3), np.uint8), np.zeros((68, 2), np.float32))


# ----------------------------------------------------------------------------- the NumPy renderer
# tracker.render.rasterize_numpy reproduces tracker.render.rasterizer (the reference, used by the
# "torch" renderer and the training data) in its float32 arithmetic: the same visible triangle and
# the same barycentrics (bit for bit where torch's CPU kernels fuse multiply-adds, as here; to the
# last float32 bits otherwise, hence BARY_TOLERANCE). Only its coverage test rounds differently
# (float64 row spans from the same float32 edge coefficients), which can flip a pixel centre
# within ~1e-6 px of an outline: allowed for at most COVERAGE_SLACK pixels per image, never seen.

COVERAGE_SLACK = 2
BARY_TOLERANCE = 1e-5


def _fragments_both(points, faces, focal, principal, size, cull_backfaces=False):
    """(reference triangle image (H, W), barycentrics (H, W, 3); the same from NumpyRasterizer)."""
    ref = rasterize(
        torch.from_numpy(points)[None], torch.from_numpy(faces), torch.tensor([focal], dtype=torch.float32),
        torch.tensor([principal], dtype=torch.float32), size, cull_backfaces=cull_backfaces,
    )  # fmt: skip
    fast = NumpyRasterizer(faces, cull_backfaces=cull_backfaces)(points, focal, principal, size)
    triangle = np.full(size[0] * size[1], -1, np.int64)
    triangle[fast.pixels] = fast.triangle
    bary = np.zeros((size[0] * size[1], 3), np.float32)
    bary[fast.pixels] = fast.bary
    return (ref.triangle[0].numpy(), ref.bary[0].numpy()), (triangle.reshape(size), bary.reshape(*size, 3))


def _assert_same_fragments(points, faces, focal, principal, size, cull_backfaces=False, min_covered=1):
    (tri_ref, bary_ref), (tri, bary) = _fragments_both(points, faces, focal, principal, size, cull_backfaces)
    assert (tri_ref >= 0).sum() >= min_covered  # the case covers something
    assert ((tri_ref >= 0) != (tri >= 0)).sum() <= COVERAGE_SLACK
    both = (tri_ref >= 0) & (tri >= 0)
    assert (tri_ref[both] != tri[both]).sum() <= COVERAGE_SLACK  # a flip on a shared edge at most
    same = both & (tri_ref == tri)
    assert np.abs(bary[same] - bary_ref[same]).max(initial=0) <= BARY_TOLERANCE  # 0 on this machine
    return tri


def _grid(n, spacing, offset, size, depth=2.0, focal=100.0, tilt=0.0):
    """An n x n vertex grid at crop pixels (offset + spacing * (i, j)), two triangles per cell."""
    gx, gy = np.meshgrid(np.arange(n), np.arange(n))
    xs, ys = gx * spacing + offset, gy * spacing + offset
    z = depth + tilt * gx
    points = np.stack([(xs - size / 2) * z / focal, (ys - size / 2) * z / focal, z], -1).reshape(-1, 3)
    cells = [(i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1) for i in range(n - 1) for j in range(n - 1)]
    faces = np.array([t for a, b, c, d in cells for t in ((a, b, c), (b, d, c))])
    return points.astype(np.float32), faces


def test_numpy_rasterizer_matches_the_torch_rasterizer_on_overlapping_soups():
    """Random triangles of both windings through each other: z-tests everywhere, tiles split
    (boxes over 16 px), a non-square image and an off-centre principal point."""
    rng = np.random.default_rng(0)
    for _ in range(4):
        points = np.stack([rng.uniform(-0.3, 0.3, 300), rng.uniform(-0.3, 0.3, 300), rng.uniform(0.8, 1.5, 300)], 1)
        faces = rng.integers(0, 300, (200, 3))
        for cull in (False, True):
            _assert_same_fragments(points.astype(np.float32), faces, (120.0, 110.0), (33.0, 31.5), (64, 72), cull, 1000)


@pytest.mark.parametrize("spacing, offset", [(4.0, 2.0), (4.5, 0.5), (3.0, -7.0)])
def test_numpy_rasterizer_matches_on_grids_through_pixel_centres(spacing, offset):
    """Horizontal and vertical edges, vertices on pixel corners or centres, shared edges through
    pixel centres (the widened edge tests and ties), a mesh running off the image."""
    points, faces = _grid(10, spacing, offset, 40, tilt=0.01)
    _assert_same_fragments(points, faces, (100.0, 100.0), (20.0, 20.0), (40, 40), min_covered=300)


def test_numpy_rasterizer_drops_what_the_torch_rasterizer_drops():
    """Big overlapping triangles partly off the image, one through the near plane, a degenerate one;
    and meshes with nothing to draw."""
    points = np.array([[-1, -1, 2], [1.2, -0.8, 2.5], [0, 1.3, 3], [-1.5, 0.5, 1.8], [1, 1, 2.2], [0.2, -1.4, 2.8], [0, 0, -1]], np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5], [0, 4, 5], [0, 1, 6], [2, 2, 3]])
    for cull in (False, True):
        tri = _assert_same_fragments(points, faces, (50.0, 50.0), (48.0, 40.0), (80, 96), cull, 1000)
        assert not np.isin(tri, [3, 4]).any()
    behind = points * np.float32([1, 1, -1])
    assert NumpyRasterizer(faces)(behind, 50.0, (48.0, 40.0), (80, 96)).pixels.size == 0
    far = points + np.float32([100, 0, 0])
    assert NumpyRasterizer(faces)(far, 50.0, (48.0, 40.0), (80, 96)).pixels.size == 0
    with pytest.raises(TypeError, match="float32"):
        NumpyRasterizer(faces)(points.astype(np.float64), 50.0, (48.0, 40.0), (80, 96))


def test_fma32_rounds_once_like_torch_addcmul():
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(20000).astype(np.float32) * scale for scale in (100, 3, 7))
    torch_result = torch.addcmul(torch.from_numpy(c), torch.from_numpy(a), torch.from_numpy(b)).numpy()
    if np.array_equal(torch_result, a * b + c) and not np.array_equal(torch_result, fma32(a, b, c)):
        pytest.skip("torch's CPU addcmul rounds twice on this CPU (no fused multiply-add)")
    assert np.array_equal(fma32(a, b, c), torch_result)


def test_cue_vertex_normals_are_torchs():
    rng = np.random.default_rng(2)
    faces = np.array(mediapipe_triangles())
    points = (rng.uniform(20, 100, (468, 3)) * [1, 1, 0.3]).astype(np.float32)
    reference = vertex_normals(torch.from_numpy(points * np.float32([1, -1, -1]))[None], torch.from_numpy(faces))[0]
    np.testing.assert_allclose(_MeshNormals(faces, 468)(points).T, reference.numpy(), rtol=0, atol=1e-6)  # bit for bit here


@pytest.fixture(scope="module")
def video_crops(shared_path):
    """{size: [(478, 3) crop landmarks]} of real faces at the live crop size 128 and at 256: the
    tracker's MediaPipe detector and cropper on frames of the shared videos."""
    videos = sorted((shared_path / "real-faces" / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip("no real-face videos in the shared material")
    crops = {128: [], 256: []}
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        with FaceMeshDetector(max_faces=2) as detector:
            croppers = {size: FaceCropper(alpha=1.4, out_size=size, max_faces=2) for size in crops}
            for index in range(75):
                ok, frame = capture.read()
                if not ok:
                    break
                if index % 5:
                    continue
                faces = detector.detect(frame)
                for size, cropper in croppers.items():
                    crops[size] += [crop.landmarks for crop in cropper(frame, faces, index / 30.0)]
        capture.release()
    if len(crops[128]) < 10:
        pytest.skip("too few faces found in the shared videos")
    return crops


@pytest.mark.shared
@pytest.mark.parametrize("size", [128, 256])
def test_embedded_cue_matches_the_torch_rasteriser_on_real_crops(video_crops, size):
    """The default (NumPy) renderer against the "torch" one (``render_mediapipe_mesh``: the
    general rasteriser, vertex normals and interpolation of tracker.render) on real crops: masks
    equal but for at most COVERAGE_SLACK outline pixels per crop, normals within 1e-5 where both
    cover the pixel (in fact both are bit for bit equal so far)."""
    fast, reference = MediaPipeMeshCue(), MediaPipeMeshCue(renderer="torch")
    assert fast.renderer == "numpy" and reference.renderer == "torch"
    mask_flips, worst, exact = [], 0.0, True
    for landmarks in video_crops[size]:
        normals, mask = fast.render(landmarks, size)
        normals_ref, mask_ref = reference.render(landmarks, size)
        assert normals.dtype == mask.dtype == np.float32 and normals.shape == (size, size, 3)
        assert mask_ref.sum() > 0.2 * size * size
        mask_flips.append(int((mask != mask_ref).sum()))
        both = (mask > 0) & (mask_ref > 0)
        worst = max(worst, float(np.abs(normals[both] - normals_ref[both]).max()))
        exact &= np.array_equal(normals, normals_ref) and np.array_equal(mask, mask_ref)
        assert not normals[mask == 0].any()
    assert max(mask_flips) <= COVERAGE_SLACK, mask_flips
    assert worst <= 1e-5
    print(f"{len(mask_flips)} crops of {size} px: mask pixels differing {sum(mask_flips)}, max normal difference {worst:g}, bit-exact {exact}")


def test_mesh_cue_renderer_choice():
    assert MediaPipeMeshCue().renderer == "numpy"
    with pytest.raises(TrackerError, match="renderer"):
        MediaPipeMeshCue(renderer="opengl")
    # landmarks that miss the crop: an empty mask from both renderers
    points = np.zeros((478, 3), np.float32) + [500.0, 500.0, 0.0]
    points[:, :2] += np.random.default_rng(3).uniform(0, 30, (478, 2))
    for renderer in ("numpy", "torch"):
        normals, mask = MediaPipeMeshCue(renderer=renderer).render(points, 64)
        assert not mask.any() and not normals.any()


# ----------------------------------------------------------------------------- adapters


def test_factory_names():
    assert isinstance(create_cue("mediapipe"), MediaPipeMeshCue)
    assert isinstance(create_cue("mediapipe"), GeometryCue)
    with pytest.raises(TrackerError, match="unknown geometry cue"):
        create_cue("nope")
    assert FARL_FACE_CLASSES == (2, 6, 7, 8, 9, 10, 12, 13)


@pytest.mark.parametrize("name, key", [("pixel3dmm", "pixel3dmm_weights"), ("pixel3dmm+farl", "pixel3dmm_weights"), ("mediapipe+farl", "farl_weights")])
def test_adapters_refuse_without_weights(name, key, tmp_path):
    with pytest.raises(TrackerError, match="nothing is downloaded"):
        create_cue(name)
    with pytest.raises(TrackerError, match="not found"):
        create_cue(name, **{key: tmp_path / "missing.pt"})


def test_pixel3dmm_with_farl_requires_both_weights(tmp_path):
    weights = tmp_path / "normals.ckpt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(TrackerError, match="FaRL"):
        create_cue("pixel3dmm+farl", pixel3dmm_weights=weights)


@pytest.mark.skipif(importlib.util.find_spec("pixel3dmm") is not None, reason="pixel3dmm is installed")
def test_pixel3dmm_missing_package_is_explained(tmp_path):
    weights = tmp_path / "normals.ckpt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(TrackerError, match="pip install -e"):
        Pixel3DMMCue(weights, device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("facer") is not None, reason="facer is installed")
def test_farl_missing_package_is_explained(tmp_path):
    weights = tmp_path / "farl.pt"
    weights.write_bytes(b"not a model")
    with pytest.raises(TrackerError, match="pyfacer"):
        FaRLMaskCue(weights)


def _optional(env: str, module: str) -> Path:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the optional `{module}` package is not installed")
    value = os.environ.get(env)
    if not value or not Path(value).is_file():
        pytest.skip(f"set {env} to a local weights file to run this adapter (nothing is downloaded)")
    return Path(value)


@pytest.mark.shared
def test_farl_mask_cue_runs_when_installed(frontal):
    weights = _optional("N2F_FARL_WEIGHTS", "facer")
    image, landmarks = frontal
    with FaRLMaskCue(weights) as farl:
        out = farl(image, landmarks)
    inside = out.mask > 0
    assert out.frame == "camera" and 0.2 < inside.mean() < 0.8
    assert np.allclose(np.linalg.norm(out.normals[inside], axis=-1), 1, atol=1e-4)


@pytest.mark.shared
def test_pixel3dmm_cue_runs_when_installed(frontal):
    weights = _optional("N2F_PIXEL3DMM_WEIGHTS", "pixel3dmm")
    farl = os.environ.get("N2F_FARL_WEIGHTS") if importlib.util.find_spec("facer") else None
    image, landmarks = frontal
    with Pixel3DMMCue(weights, farl_weights=farl) as pixel3dmm:
        out = pixel3dmm(image, landmarks)
    inside = out.mask > 0
    assert out.frame == "head" and inside.mean() > 0.2
    assert np.allclose(np.linalg.norm(out.normals[inside], axis=-1), 1, atol=1e-3)
    assert out.normals[inside][:, 2].mean() > 0.5  # a frontal face: FLAME's +z out of the face
