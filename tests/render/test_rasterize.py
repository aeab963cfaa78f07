"""Analytic and reference tests of the pure-PyTorch rasteriser and the normal / depth / mask maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.meshes import icosphere
from tracker.errors import TrackerError
from tracker.geometry.camera import flip_matrix, head_to_camera
from tracker.geometry.rotations import euler_to_matrix
from tracker.render import (
    available_backends,
    get_rasterizer,
    interpolate,
    normals_to_rgb,
    rasterize,
    render_maps,
    render_normal_map,
    render_region_mask,
    rgb_to_normals,
    vertex_normals,
)
from tracker.render.backends import _INSTALL_HINTS
from tracker.render.maps import NumpyVertexNormals


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


EYE = torch.eye(3, dtype=torch.float64)[None]  # (1, 3, 3) frontal rotation
FRONT = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)  # (1, 3) one metre in front of the camera


def camera(batch: int, size: int, focal_ratio: float = 5.0, dtype=torch.float64):
    """Focal (B, 2) and principal point (B, 2) of a centred camera."""
    focal = torch.full((batch, 2), focal_ratio * size, dtype=dtype)
    return focal, torch.full((batch, 2), size / 2.0, dtype=dtype)


def pixel_rays(size: int, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) camera-frame ray directions (z = 1) through the pixel centres (float64)."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    fx, fy = focal[0].double()
    cx, cy = principal[0].double()
    return torch.stack(((u - cx) / fx, (v - cy) / fy, torch.ones_like(u)), -1)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def test_sphere_normals_match_ray_sphere_intersection():
    size, radius, distance = 128, 0.1, 1.0
    verts, faces = icosphere(4, torch.float32)
    focal, principal = camera(1, size, dtype=torch.float32)
    rotation, translation = torch.eye(3)[None], torch.tensor([[0.0, 0.0, distance]])
    args = (verts[None] * radius, faces, rotation, translation, focal, principal, (size, size))
    normals, mask = render_normal_map(*args)

    rays = pixel_rays(size, focal, principal)
    centre = torch.tensor([0.0, 0.0, distance], dtype=torch.float64)
    a, b = (rays * rays).sum(-1), rays @ centre
    disc = b * b - a * (centre @ centre - radius**2)
    hit = disc > 0
    s = (b - disc.clamp_min(0).sqrt()) / a
    analytic_cam = (s[..., None] * rays - centre) / radius
    analytic_view = analytic_cam * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)

    # silhouette: the polyhedron is inscribed in the sphere; away from the rim both must cover
    projected_radius = focal[0, 0].item() * radius / math.sqrt(distance**2 - radius**2)
    rays_xy = rays[..., :2] * focal[0, 0].item()
    inner = rays_xy.norm(dim=-1) < projected_radius - 1.5
    assert bool(mask[0][inner].all())
    assert not bool(mask[0][~hit].any())
    error = angle_deg(normals[0][inner].double(), analytic_view[inner])
    print(f"sphere normals: mean angular error {error.mean():.3f} deg, max {error.max():.3f} deg")
    assert error.mean() < 0.3 and error.max() < 1.5
    assert torch.allclose(normals[0][mask[0] > 0].norm(dim=-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tilted_plane_depth_matches_ray_plane_intersection(dtype):
    size = 96
    focal, principal = camera(1, size, 1.2, dtype)
    normal = torch.tensor([0.3, -0.4, -1.0], dtype=torch.float64)
    point = torch.tensor([0.02, -0.01, 1.5], dtype=torch.float64)
    # a quad on the plane, much larger than the view (two triangles)
    e1 = torch.linalg.cross(normal, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(normal / normal.norm(), e1)
    quad = torch.stack([point + 1.5 * (sx * e1 + sy * e2) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fragments = rasterize(quad[None].to(dtype), faces, focal, principal, (size, size))
    assert bool(fragments.mask.all())
    rays = pixel_rays(size, focal, principal)
    analytic = (normal @ point) / (rays @ normal)  # z of the ray point (rays have z = 1)
    relative = ((fragments.depth[0].double() - analytic) / analytic).abs().max().item()
    print(f"plane depth ({dtype}): max relative error {relative:.2e}")
    assert relative < (2e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("swap", [False, True])
def test_nearer_triangle_wins_in_either_order(swap):
    size = 32
    focal, principal = camera(1, size, 1.0)

    def quad(z: float, shift: float) -> torch.Tensor:
        return torch.tensor([[x + shift, y, z] for x, y in ((-0.3, -0.3), (0.3, -0.3), (0.3, 0.3), (-0.3, 0.3))])

    near, far = quad(1.0, 0.1).double(), quad(1.5, -0.2).double()
    points = torch.cat((far, near) if swap else (near, far))[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    fragments = rasterize(points, faces, focal, principal, (size, size))
    near_faces = (2, 3) if swap else (0, 1)
    both = interpolate(points[0, :, 2:], faces, fragments)[0, ..., 0]
    covered_near = torch.isin(fragments.triangle[0], torch.tensor(near_faces))
    assert torch.allclose(both[covered_near], torch.ones(()).double())
    # every pixel whose ray meets the near quad shows the near quad
    rays = pixel_rays(size, focal, principal)
    x = rays[..., 0] * 1.0
    y = rays[..., 1] * 1.0
    on_near = (x > -0.2) & (x < 0.4) & (y > -0.3) & (y < 0.3)
    assert bool(covered_near[on_near].all())
    assert bool((fragments.depth[0][~covered_near & fragments.mask[0]] > 1.4).all())


def reference_raster(points: np.ndarray, faces: np.ndarray, focal: np.ndarray, principal: np.ndarray, size: int):
    """Naive per-pixel reference: point-in-triangle at pixel centres, nearest ray-plane depth.

    Returns triangle ids (H, W) and a (H, W) bool 'ambiguous' map of pixels within 1e-4 px of an
    edge of a triangle or where two covering triangles are at (nearly) equal depth.
    """
    uv = points[:, :2] / points[:, 2:] * focal + principal
    centres = np.arange(size) + 0.5
    px, py = np.meshgrid(centres, centres)
    best = np.full((size, size), np.inf)
    second = np.full((size, size), np.inf)
    triangle = np.full((size, size), -1)
    ambiguous = np.zeros((size, size), bool)
    rays = np.stack(((px - principal[0]) / focal[0], (py - principal[1]) / focal[1], np.ones_like(px)), -1)
    for f, (i, j, k) in enumerate(faces):
        a, b, c = uv[i], uv[j], uv[k]
        distances = []
        signs = []
        for p, q in ((a, b), (b, c), (c, a)):
            cross = (q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0])
            signs.append(cross)
            distances.append(np.abs(cross) / np.hypot(*(q - p)))
        inside = (np.stack(signs) >= 0).all(0) | (np.stack(signs) <= 0).all(0)
        ambiguous |= np.min(distances, 0) < 1e-4
        n = np.cross(points[j] - points[i], points[k] - points[i])
        depth = (n @ points[i]) / (rays @ n)
        depth = np.where(inside, depth, np.inf)
        nearer = depth < best
        second = np.where(nearer, best, np.minimum(second, depth))
        triangle = np.where(nearer, f, triangle)
        best = np.where(nearer, depth, best)
    ambiguous |= np.isfinite(second) & (second < best * (1.0 + 1e-6))
    return triangle, ambiguous


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coverage_matches_naive_reference(dtype):
    size, count = 64, 24
    generator = np.random.default_rng(7)
    focal = np.array([70.0, 75.0])
    principal = np.array([31.3, 33.9])
    # random triangles spanning a few to ~40 pixels, random depths and windings
    centres = np.concatenate((generator.uniform(-0.3, 0.3, (count, 2)), generator.uniform(1.0, 2.0, (count, 1))), 1)
    points = (centres[:, None, :] + generator.normal(0.0, 0.25, (count, 3, 3)) * [1.0, 1.0, 0.2]).reshape(-1, 3)
    faces = np.arange(3 * count).reshape(count, 3)
    expected, ambiguous = reference_raster(points, faces, focal, principal, size)
    fragments = rasterize(
        torch.tensor(points, dtype=dtype)[None],
        torch.tensor(faces),
        torch.tensor(focal, dtype=dtype)[None],
        torch.tensor(principal, dtype=dtype)[None],
        (size, size),
        max_candidates=256,
    )
    got = fragments.triangle[0].numpy()
    compared = ~ambiguous
    print(f"coverage ({dtype}): {int((got == expected)[compared].sum())}/{int(compared.sum())} pixels agree, "
          f"{int(ambiguous.sum())} within 1e-4 px of an edge or depth-tied")
    assert compared.sum() > 0.9 * size * size and (expected >= 0).sum() > 0.4 * size * size
    np.testing.assert_array_equal(got[compared], expected[compared])


def test_no_holes_on_shared_edges_and_vertices_at_pixel_centres():
    """A grid whose vertices sit exactly on pixel centres and whose edges run through pixel centres
    (the worst case for ties), both diagonal directions, plus a jittered closed sphere."""
    size, cells = 40, 12
    focal = torch.full((1, 2), 32.0, dtype=torch.float64)  # a power of two: exact projections
    principal = torch.full((1, 2), 20.0, dtype=torch.float64)
    ij = torch.stack(torch.meshgrid(torch.arange(cells + 1), torch.arange(cells + 1), indexing="ij"), -1).double()
    uv = 2.5 + 3.0 * ij.flip(-1)  # (u, v) = (2.5 + 3 col, 2.5 + 3 row): pixel centres
    index = torch.arange((cells + 1) ** 2).view(cells + 1, cells + 1)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    flip = (torch.arange(cells)[:, None] + torch.arange(cells)[None]) % 2 == 0
    tri1 = torch.where(flip[..., None], torch.stack((a, b, d), -1), torch.stack((a, b, c), -1))
    tri2 = torch.where(flip[..., None], torch.stack((a, d, c), -1), torch.stack((b, d, c), -1))
    faces = torch.cat((tri1.view(-1, 3), tri2.view(-1, 3)))
    flat = torch.ones(cells + 1, cells + 1, dtype=torch.float64)
    for z in (flat, flat + 0.05 * torch.rand_like(flat)):
        points = torch.cat(((uv - principal[0]) / focal[0] * z[..., None], z[..., None]), -1).view(1, -1, 3)
        for dtype in (torch.float32, torch.float64):
            fragments = rasterize(points.to(dtype), faces, focal.to(dtype), principal.to(dtype), (size, size))
            interior = fragments.mask[0, 3 : 2 + 3 * cells, 3 : 2 + 3 * cells]  # strictly inside the grid
            assert bool(interior.all()), f"holes in the grid ({dtype}): {int((~interior).sum())}"
            assert bool((fragments.bary[0][fragments.mask[0]] >= -1e-6).all())

    # a fan of slivers from a vertex far off-screen: shared edges evaluated from a distant anchor
    apex = torch.tensor([[-20000.3, 30.7]], dtype=torch.float64)
    jitter = torch.rand(2, 200, dtype=torch.float64)
    rim = torch.stack((38.0 + jitter[0], torch.linspace(-100.0, 140.0, 200, dtype=torch.float64) + jitter[1]), -1)
    uv = torch.cat((apex, rim))
    z = 1.0 + torch.rand(len(uv), 1, dtype=torch.float64)
    points = torch.cat(((uv - principal) / focal * z, z), -1)[None]
    fan = torch.stack((torch.zeros(199, dtype=torch.long), torch.arange(1, 200), torch.arange(2, 201)), -1)
    for dtype in (torch.float32, torch.float64):
        fragments = rasterize(points.to(dtype), fan, focal.to(dtype), principal.to(dtype), (size, size))
        inner = fragments.mask[0, :, :37]
        assert bool(inner.all()), f"holes in the fan ({dtype}): {int((~inner).sum())}"

    verts, sphere_faces = icosphere(3)
    rotation = euler_to_matrix(torch.tensor([[0.3, -0.7, 0.2]], dtype=torch.float64))
    focal, principal = camera(1, 96, 4.0)
    for dtype in (torch.float32, torch.float64):
        points = head_to_camera((verts * 0.1)[None], rotation, FRONT)
        for cull in (False, True):
            fragments = rasterize(points.to(dtype), sphere_faces, focal.to(dtype), principal.to(dtype), (96, 96),
                                  cull_backfaces=cull)  # fmt: skip
            silhouette = _convex_silhouette(points[0], focal[0], principal[0], 96)
            assert bool(fragments.mask[0][silhouette].all()), f"holes in the sphere ({dtype}, cull={cull})"


def _convex_silhouette(points: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) bool: pixel centres at least 0.01 px inside the convex hull of the projected points."""
    uv = (points[:, :2] / points[:, 2:] * focal + principal).numpy()
    hull = _hull(uv)
    centres = np.arange(size) + 0.5
    px, py = np.meshgrid(centres, centres)
    inside = np.ones((size, size), bool)
    for p, q in zip(hull, np.roll(hull, -1, 0)):
        edge = q - p
        cross = edge[0] * (py - p[1]) - edge[1] * (px - p[0])
        inside &= cross / np.hypot(*edge) > 0.01
    return torch.tensor(inside)


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain), counter-clockwise in a y-down frame as the cross test expects."""
    pts = sorted(map(tuple, points))

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and _cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _cross(o, a, b) -> float:
    """z of (a - o) x (b - o) for 2D points."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def test_barycentrics_are_perspective_correct():
    size = 64
    focal, principal = camera(1, size, 1.5, torch.float32)
    points = torch.tensor([[[-0.4, -0.3, 0.6], [0.5, -0.2, 2.5], [0.0, 0.5, 1.2]]])
    faces = torch.tensor([[0, 1, 2]])
    fragments = rasterize(points, faces, focal, principal, (size, size))
    xyz = interpolate(points, faces, fragments)[0][fragments.mask[0]]
    u = xyz[:, 0] / xyz[:, 2] * focal[0, 0] + principal[0, 0]
    v = xyz[:, 1] / xyz[:, 2] * focal[0, 1] + principal[0, 1]
    rows, cols = fragments.mask[0].nonzero().unbind(1)
    assert fragments.mask.sum() > 300
    assert torch.allclose(u, cols + 0.5, atol=2e-4) and torch.allclose(v, rows + 0.5, atol=2e-4)
    assert torch.allclose(xyz[:, 2], fragments.depth[0][fragments.mask[0]], rtol=1e-6)
    bary = fragments.bary[0][fragments.mask[0]]
    assert torch.allclose(bary.sum(-1), torch.ones(()), atol=1e-6) and bool((bary > -1e-6).all())


def test_interpolate_gradcheck():
    size = 8
    focal, principal = camera(2, size, 1.0)
    points = torch.tensor([[-0.5, -0.4, 1.0], [0.6, -0.3, 1.5], [0.0, 0.6, 1.2], [0.5, 0.5, 1.1]], dtype=torch.float64)
    points = torch.stack((points, points.flip(0)))
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    fragments = rasterize(points, faces, focal, principal, (size, size))
    assert fragments.mask.any()
    batched = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    shared = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, faces, fragments), (batched,))
    assert torch.autograd.gradcheck(lambda a: interpolate(a, faces, fragments), (shared,))


def test_batched_equals_one_by_one_and_chunking_is_invisible():
    verts, faces = icosphere(3, torch.float32)
    rotation = euler_to_matrix(torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.6, 0.1], [-0.2, 1.2, 0.5]]))
    translation = torch.tensor([[0.0, 0.0, 1.0], [0.03, -0.02, 0.8], [-0.05, 0.04, 1.3]])
    head = (verts * 0.1 * torch.tensor([1.0, 1.3, 0.9]))[None].expand(3, -1, -1)
    points = head_to_camera(head, rotation, translation)
    focal, principal = camera(3, 64, 4.0, torch.float32)
    principal = principal + torch.tensor([[0.0, 0.0], [3.3, -2.1], [-5.0, 1.7]])
    batched = rasterize(points, faces, focal, principal, (64, 64))
    tiny_chunks = rasterize(points, faces, focal, principal, (64, 64), max_candidates=64)
    for b in range(3):
        single = rasterize(points[b : b + 1], faces, focal[b : b + 1], principal[b : b + 1], (64, 64))
        assert torch.equal(single.triangle[0], batched.triangle[b])
        assert torch.equal(single.bary[0], batched.bary[b]) and torch.equal(single.depth[0], batched.depth[b])
    assert torch.equal(tiny_chunks.triangle, batched.triangle) and torch.equal(tiny_chunks.bary, batched.bary)


def test_background_is_empty():
    verts, faces = icosphere(2)
    focal, principal = camera(1, 48, 8.0)
    maps = render_maps(
        verts[None] * 0.05, faces, EYE, FRONT,
        focal, principal, (48, 48), region=torch.ones(len(verts), dtype=torch.bool),
    )  # fmt: skip
    background = maps.mask[0] == 0
    assert 0 < int(background.sum()) < 48 * 48
    frags = maps.fragments
    assert bool((frags.triangle[0][background] == -1).all())
    assert bool((frags.bary[0][background] == 0).all()) and bool((frags.depth[0][background] == 0).all())
    assert bool((maps.normals[0][background] == 0).all()) and bool((maps.depth[0][background] == 0).all())
    assert torch.equal(maps.region_mask, maps.mask)
    assert torch.allclose(maps.depth, frags.depth, atol=1e-12)
    behind = verts[None] * 0.05 - FRONT[:, None]
    empty = rasterize(behind, faces, focal, principal, (8, 8))
    assert bool((empty.triangle == -1).all()) and empty.covered()[0].numel() == 0
    assert interpolate(torch.ones(len(verts), 2, dtype=torch.float64), faces, empty).abs().sum() == 0


def test_near_plane_drops_whole_triangles():
    focal, principal = camera(1, 32, 1.0)
    points = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0],
                            [-0.5, -0.5, 1.0], [0.5, -0.5, 0.0005], [0.0, 0.5, 1.0]]], dtype=torch.float64)  # fmt: skip
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fragments = rasterize(points, faces, focal, principal, (32, 32), near=1e-3)
    assert fragments.mask.any() and not bool((fragments.triangle == 1).any())
    assert not rasterize(points, faces[1:], focal, principal, (32, 32), near=1e-3).mask.any()
    assert rasterize(points, faces[1:], focal, principal, (32, 32), near=1e-4).mask.any()
    behind = points * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    assert not rasterize(behind, faces, focal, principal, (32, 32)).mask.any()


def test_depth_ties_go_to_the_smaller_triangle_index():
    focal, principal = camera(1, 16, 1.0)
    points = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]], dtype=torch.float64)
    faces = torch.tensor([[1, 2, 0], [0, 1, 2], [0, 2, 1]])
    fragments = rasterize(points, faces, focal, principal, (16, 16))
    assert fragments.mask.any() and bool((fragments.triangle[fragments.mask] == 0).all())


def test_backface_culling_keeps_the_visible_side():
    verts, faces = icosphere(2)
    focal, principal = camera(1, 48, 5.0)
    points = head_to_camera(verts[None] * 0.1, EYE, FRONT)
    full = rasterize(points, faces, focal, principal, (48, 48))
    culled = rasterize(points, faces, focal, principal, (48, 48), cull_backfaces=True)
    assert torch.equal(full.triangle, culled.triangle)
    inside_out = rasterize(points, faces.flip(1), focal, principal, (48, 48), cull_backfaces=True)
    front = full.mask & (full.bary.abs().amin(-1) > 0.01)  # away from edges
    assert bool((inside_out.depth[front] > full.depth[front]).all())  # only the far side is left


def test_vertex_normals_point_outwards():
    verts, faces = icosphere(2)
    normals = vertex_normals(verts[None] * 0.1 + torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64), faces)
    assert angle_deg(normals[0], verts).max() < 1.5  # vs the sphere's exact normals
    assert torch.allclose(normals.norm(dim=-1), torch.ones(()).double())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_vertex_normals_are_the_torch_ones(dtype):
    verts, faces = icosphere(2)
    faces = torch.cat((faces, torch.tensor([[0, 1, 1]])))  # a degenerate triangle adds nothing
    points = (verts * torch.tensor([0.08, 0.11, 0.09], dtype=torch.float64)).numpy().astype(dtype)
    points = np.concatenate((points, np.ones((2, 3), dtype)))  # two vertices of no triangle
    normals = NumpyVertexNormals(faces.numpy(), len(points))(points)
    assert normals.dtype == dtype and normals.shape == points.shape
    reference = vertex_normals(torch.from_numpy(points)[None], faces)[0].numpy()
    np.testing.assert_allclose(normals, reference, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)
    assert not normals[-2:].any(), "vertices of no triangle get zero"


def test_head_and_camera_frame_normals_are_related_by_the_view_rotation():
    verts, faces = icosphere(3)
    verts = verts * torch.tensor([0.08, 0.11, 0.09], dtype=torch.float64)  # an ellipsoid "head"
    rotation = euler_to_matrix(torch.tensor([[0.2, math.radians(30.0), -0.1]], dtype=torch.float64))
    translation = torch.tensor([[0.0, 0.01, 1.0]], dtype=torch.float64)
    focal, principal = camera(1, 64, 5.0)
    args = (verts[None], faces, rotation, translation, focal, principal, (64, 64))
    head, mask = render_normal_map(*args, frame="head")
    view, _ = render_normal_map(*args, frame="camera")
    flip = flip_matrix(dtype=torch.float64)
    expected = head @ (flip @ rotation[0] @ flip).T
    assert torch.allclose(view, expected, atol=1e-9)
    # view-frame normals face the camera (+z) on the visible side
    assert bool((view[0][mask[0] > 0][:, 2] > -1e-6).all())
    frontal = (verts[None], faces, EYE, translation, focal, principal, (64, 64))
    assert torch.allclose(render_normal_map(*frontal)[0], render_normal_map(*frontal, frame="head")[0])


def test_normal_maps_are_differentiable_in_the_vertices():
    verts, faces = icosphere(2)
    verts = (verts * 0.1)[None].clone().requires_grad_(True)
    focal, principal = camera(1, 32, 5.0)
    maps = render_maps(verts, faces, EYE, FRONT, focal, principal, (32, 32))
    (maps.normals[..., 0].sum() + maps.depth.sum()).backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0


def test_region_mask():
    verts, faces = icosphere(2)
    focal, principal = camera(1, 48, 5.0)
    points = head_to_camera(verts[None] * 0.1, EYE, FRONT)
    fragments = rasterize(points, faces, focal, principal, (48, 48))
    upper = verts[:, 1] > 0  # head frame +y up -> image top
    region = render_region_mask(fragments, faces, upper)[0]
    assert region[:20].sum() > 0 and region[28:].sum() == 0
    assert bool((region <= fragments.mask[0].double()).all())


def test_rgb_encoding_round_trip():
    normals = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    rgb = normals_to_rgb(normals)
    assert rgb.dtype == torch.uint8
    assert angle_deg(rgb_to_normals(rgb), normals).max() < 0.8
    blue = torch.tensor([[128, 128, 255]], dtype=torch.uint8)
    assert torch.equal(normals_to_rgb(torch.tensor([[0.0, 0.0, 1.0]])), blue)
    assert normals_to_rgb(normals, torch.zeros(100, dtype=torch.bool)).sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    verts, faces = icosphere(3, torch.float32)
    rotation = euler_to_matrix(torch.tensor([[0.3, -0.5, 0.1], [0.0, 0.2, 0.0]]))
    translation = torch.tensor([[0.0, 0.0, 1.0], [0.01, 0.0, 0.9]])
    points = head_to_camera((verts * 0.1)[None].expand(2, -1, -1), rotation, translation)
    focal, principal = camera(2, 96, 4.0, torch.float32)
    cpu = rasterize(points, faces, focal, principal, (96, 96))
    gpu = rasterize(points.cuda(), faces.cuda(), focal.cuda(), principal.cuda(), (96, 96))
    agree = (gpu.triangle.cpu() == cpu.triangle).float().mean()
    assert agree > 0.999 and torch.equal(gpu.mask.cpu(), cpu.mask)
    same = gpu.triangle.cpu() == cpu.triangle
    assert torch.allclose(gpu.bary.cpu()[same], cpu.bary[same], atol=1e-4)


def test_backends_report_missing_packages_clearly():
    assert available_backends()[0] == "torch" and get_rasterizer("torch") is rasterize
    for name in _INSTALL_HINTS:
        if name in available_backends():
            continue
        with pytest.raises(TrackerError, match=f"{name}.*pip install"):
            get_rasterizer(name)
    with pytest.raises(TrackerError, match="unknown rasteriser"):
        get_rasterizer("opengl")


def test_ict_head_normals_face_the_camera():
    """ICT-FaceKit is wound counter-clockwise seen from outside: a frontal face is blue-ish."""
    from tracker.bench.render import ict_face_head_mesh

    mesh = ict_face_head_mesh()
    if mesh is None:
        pytest.skip("ICT-FaceKit npz not available")
    verts = torch.from_numpy(mesh[0])[None]
    faces = torch.from_numpy(mesh[1])
    focal, principal = camera(1, 64, 3.0, torch.float32)
    normals, mask = render_normal_map(verts, faces, torch.eye(3)[None], FRONT.float(), focal, principal, (64, 64))
    visible = normals[0][mask[0] > 0]
    assert visible.shape[0] > 500 and visible[:, 2].mean() > 0.5
    right, left = normals[0, 20:40, 40:50], normals[0, 20:40, 14:24]  # the viewer's right / left cheek
    assert right[..., 0].mean() > 0.1 > -0.1 > left[..., 0].mean()


def test_bench_render_prints_the_summary_line(capsys):
    from tracker.bench.__main__ import main

    main(["render", "--device", "cpu", "--size", "32", "--repeats", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("render_ms_b1=") and " render_ms_b16=" in last
