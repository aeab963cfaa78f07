"""Evaluation metrics against analytic cases and independent brute-force references."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.meshes import icosphere
from train import metrics


def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: (V, 3) float64 vertices, (F, 3) int64 faces wound outwards."""
    v, f = icosphere(subdivisions)
    return v.numpy(), f.numpy()


def _grid(n: int, half: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """n x n vertex grid on z = 0 over [-half, half]^2, triangles wound so the normal is +z."""
    xs = np.linspace(-half, half, n)
    x, y = np.meshgrid(xs, xs, indexing="xy")
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [(i, i + 1, i + n + 1), (i, i + n + 1, i + n)]
    return v, np.array(faces, dtype=np.int64)


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array))


def _random_rigid(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return Rotation.random(batch, random_state=seed).as_matrix(), rng.normal(size=(batch, 3))


# --- rigid_align ---------------------------------------------------------------------------------

def test_rigid_align_recovers_a_random_rigid_motion():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(5, 60, 3))
    rot, trans = _random_rigid(5, seed=1)
    target = np.einsum("bij,bvj->bvi", rot, source) + trans[:, None]
    aligned, r, t = metrics.rigid_align(_t(source), _t(target))
    np.testing.assert_allclose(r.numpy(), rot, atol=1e-12)
    np.testing.assert_allclose(t.numpy(), trans, atol=1e-12)
    np.testing.assert_allclose(aligned.numpy(), target, atol=1e-12)


def test_rigid_align_returns_the_best_proper_rotation_for_a_mirrored_target():
    # A flat cloud (small z spread) and its mirror image through its own plane: the unconstrained
    # orthogonal optimum is that reflection; the best proper rotation is the identity.
    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(100, 3))
    cloud -= cloud.mean(0)
    cloud = cloud @ np.linalg.inv(np.linalg.cholesky(cloud.T @ cloud)).T  # exactly diagonal covariance
    flat = cloud * np.array([1.0, 0.7, 0.05])
    q = Rotation.random(random_state=3).as_matrix()
    mirror = q @ np.diag([1.0, 1.0, -1.0]) @ q.T
    source = flat @ q.T
    target = source @ mirror.T
    _, r, _ = metrics.rigid_align(_t(source[None]), _t(target[None]))
    assert torch.linalg.det(r[0]).item() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(r[0].numpy(), np.eye(3), atol=1e-9)
    reference, _ = Rotation.align_vectors(target, source)  # scipy: proper rotation, target ~ R source
    np.testing.assert_allclose(r[0].numpy(), reference.as_matrix(), atol=1e-9)


def test_rigid_align_with_weights_matches_scipy():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(3, 40, 3))
    rot, trans = _random_rigid(3, seed=5)
    target = np.einsum("bij,bvj->bvi", rot, source) + trans[:, None] + 0.3 * rng.normal(size=source.shape)
    weights = rng.uniform(0.0, 2.0, size=40)
    aligned, r, t = metrics.rigid_align(_t(source), _t(target), _t(weights))
    for b in range(3):
        w = weights / weights.sum()
        cs, ct = w @ source[b], w @ target[b]
        reference, _ = Rotation.align_vectors(target[b] - ct, source[b] - cs, weights=weights)
        np.testing.assert_allclose(r[b].numpy(), reference.as_matrix(), atol=1e-10)
        np.testing.assert_allclose(t[b].numpy(), ct - reference.as_matrix() @ cs, atol=1e-10)
    np.testing.assert_allclose(aligned.numpy(), np.einsum("bij,bvj->bvi", r.numpy(), source) + t.numpy()[:, None], atol=1e-12)


def test_rigid_align_ignores_vertices_outside_the_mask():
    rng = np.random.default_rng(6)
    source = rng.normal(size=(2, 50, 3))
    rot, trans = _random_rigid(2, seed=7)
    target = np.einsum("bij,bvj->bvi", rot, source) + trans[:, None]
    mask = np.ones(50, dtype=bool)
    mask[:10] = False
    target[:, :10] += 5.0 * rng.normal(size=(2, 10, 3))  # outliers outside the mask
    _, r, t = metrics.rigid_align(_t(source), _t(target), _t(mask))
    np.testing.assert_allclose(r.numpy(), rot, atol=1e-12)
    np.testing.assert_allclose(t.numpy(), trans, atol=1e-12)


# --- similarity_align ----------------------------------------------------------------------------

def test_similarity_align_recovers_a_random_similarity():
    rng = np.random.default_rng(11)
    source = rng.normal(size=(4, 50, 3))
    rot, trans = _random_rigid(4, seed=12)
    scale = rng.uniform(0.5, 2.0, size=4)
    target = scale[:, None, None] * np.einsum("bij,bvj->bvi", rot, source) + trans[:, None]
    aligned, s, r, t = metrics.similarity_align(_t(source), _t(target))
    np.testing.assert_allclose(s.numpy(), scale, atol=1e-12)
    np.testing.assert_allclose(r.numpy(), rot, atol=1e-12)
    np.testing.assert_allclose(t.numpy(), trans, atol=1e-12)
    np.testing.assert_allclose(aligned.numpy(), target, atol=1e-12)


def test_similarity_align_minimises_the_weighted_error_like_a_generic_optimiser():
    """Against scipy's general-purpose minimiser over (rotation vector, log scale, translation)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(13)
    source = rng.normal(size=(30, 3))
    rot, trans = _random_rigid(1, seed=14)
    target = 1.3 * source @ rot[0].T + trans[0] + 0.2 * rng.normal(size=source.shape)
    weights = rng.uniform(0.0, 2.0, size=30)

    def cost(x):
        moved = np.exp(x[3]) * source @ Rotation.from_rotvec(x[:3]).as_matrix().T + x[4:]
        return float(weights @ np.square(moved - target).sum(1))

    best = min((minimize(cost, np.r_[Rotation.from_matrix(rot[0]).as_rotvec() * f, 0.0, np.zeros(3)], method="BFGS", options={"gtol": 1e-10}) for f in (0.9, 1.1)), key=lambda r: r.fun)
    aligned, s, r, t = metrics.similarity_align(_t(source[None]), _t(target[None]), _t(weights))
    assert cost(np.r_[Rotation.from_matrix(r[0].numpy()).as_rotvec(), np.log(s[0].item()), t[0].numpy()]) == pytest.approx(best.fun, rel=1e-9)
    assert s[0].item() == pytest.approx(np.exp(best.x[3]), rel=1e-5)
    np.testing.assert_allclose(t[0].numpy(), best.x[4:], atol=1e-5)


# --- CD -----------------------------------------------------------------------------------------

def test_cd_is_zero_for_a_rigidly_moved_copy():
    v, _ = _icosphere(2)
    gt = np.repeat(0.1 * v[None], 3, axis=0)
    rot, trans = _random_rigid(3, seed=8)
    pred = np.einsum("bij,bvj->bvi", rot, gt) + trans[:, None]
    cd = metrics.chamfer_vertex_distance(_t(pred), _t(gt))
    assert cd.shape == (3,)
    assert cd.abs().max().item() < 1e-12


def test_cd_of_an_inflated_sphere_is_the_radius_offset():
    # An icosphere has isotropic second moments, so the best rigid alignment of a uniformly
    # scaled copy is the identity about the centre: every vertex is exactly delta away.
    v, _ = _icosphere(2)
    radius, delta = 0.1, 0.0015
    gt = radius * v[None]
    rot, trans = _random_rigid(1, seed=9)
    pred = (radius + delta) * v[None] @ rot[0].T + trans[:, None]
    cd = metrics.chamfer_vertex_distance(_t(pred), _t(gt), scale=False)
    assert cd.item() == pytest.approx(delta, abs=1e-12)
    # NoW-style (the default) aligns the scale away too
    assert metrics.chamfer_vertex_distance(_t(pred), _t(gt)).item() == pytest.approx(0.0, abs=1e-12)


def test_region_errors_align_on_the_face_and_report_millimetres():
    v, _ = _icosphere(2)
    gt = 0.1 * v[None]
    face = v[:, 2] > 0.2
    ears = v[:, 2] < -0.5
    offset = 0.004  # 4 mm outwards along the normal, ears only
    pred = gt.copy()
    pred[0, ears] += offset * v[ears]
    rot, trans = _random_rigid(1, seed=10)
    pred = pred @ rot[0].T + trans[:, None]
    regions = {"face": _t(face), "ears": _t(ears), "all": torch.ones(len(v), dtype=torch.bool)}
    errors = metrics.region_errors(_t(pred), _t(gt), regions, align_region="face")
    assert set(errors) == set(regions)
    assert errors["face"].item() == pytest.approx(0.0, abs=1e-9)
    assert errors["ears"].item() == pytest.approx(4.0, abs=1e-9)
    assert errors["all"].item() == pytest.approx(4.0 * ears.sum() / len(v), abs=1e-9)
    face_cd = metrics.chamfer_vertex_distance(_t(pred), _t(gt), _t(face))
    assert face_cd.item() * metrics.MM_PER_METRE == pytest.approx(errors["face"].item(), abs=1e-9)
    with pytest.raises(KeyError):
        metrics.region_errors(_t(pred), _t(gt), regions, align_region="nose")


# --- point_to_mesh_distance ---------------------------------------------------------------------

def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    s = np.clip(np.dot(p - a, d) / np.dot(d, d), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + s * d)))


def _triangle_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Reference: the foot of the perpendicular on the plane if it lies inside (barycentric signs
    from sub-triangle areas), otherwise the nearest of the three edges."""
    n = np.cross(b - a, c - a)
    n = n / np.linalg.norm(n)
    foot = p - np.dot(p - a, n) * n
    signs = [np.dot(np.cross(y - x, foot - x), n) for x, y in ((a, b), (b, c), (c, a))]
    if min(signs) >= 0:
        return abs(float(np.dot(p - a, n)))
    return min(_segment_distance(p, a, b), _segment_distance(p, b, c), _segment_distance(p, c, a))


def _brute_force(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) distance and (P, F) all point-triangle distances, looping over every triangle."""
    table = np.array([[_triangle_distance(p, *vertices[f]) for f in faces] for p in points])
    return table.min(1), table


def test_reference_triangle_distance_agrees_with_dense_barycentric_sampling():
    rng = np.random.default_rng(11)
    steps = 400
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    u, w = i[keep] / steps, j[keep] / steps
    for _ in range(20):
        a, b, c, p = rng.normal(size=(4, 3))
        samples = a + u[:, None] * (b - a) + w[:, None] * (c - a)
        sampled = np.linalg.norm(samples - p, axis=1).min()
        exact = _triangle_distance(p, a, b, c)
        assert exact <= sampled + 1e-12
        assert sampled - exact < 2e-2 * max(np.linalg.norm(b - a), np.linalg.norm(c - a))  # grid resolution


def _bumpy_sphere(seed: int) -> tuple[np.ndarray, np.ndarray]:
    v, f = _icosphere(1)
    rng = np.random.default_rng(seed)
    return v * rng.uniform(0.8, 1.2, size=(len(v), 1)), f


def test_point_to_mesh_distance_matches_brute_force_over_all_triangles():
    vertices, faces = _bumpy_sphere(12)
    rng = np.random.default_rng(13)
    far = rng.uniform(-1.6, 1.6, size=(150, 3))
    near = vertices[rng.integers(0, len(vertices), 150)] + 0.08 * rng.normal(size=(150, 3))
    points = np.concatenate([far, near])
    reference, table = _brute_force(points, vertices, faces)

    distance, closest, face = metrics.point_to_mesh_distance(
        _t(points[None]), _t(vertices[None]), _t(faces), k=len(vertices)
    )
    np.testing.assert_allclose(distance[0].numpy(), reference, atol=1e-12)
    # The reported face holds the reported point, which is at the reported distance.
    np.testing.assert_allclose(table[np.arange(len(points)), face[0].numpy()], reference, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(closest[0].numpy() - points, axis=1), reference, atol=1e-12)
    a, b, c = (vertices[faces[face[0].numpy()]][:, i] for i in range(3))
    normal = np.cross(b - a, c - a)
    assert np.abs(np.einsum("ij,ij->i", closest[0].numpy() - a, normal)).max() < 1e-12  # on the face's plane

    # The private barycentric weights reproduce the point on the reported face.
    _, _, _, weights = metrics._closest_on_mesh(_t(points[None]), _t(vertices[None]), _t(faces), len(vertices))
    assert weights.min().item() >= 0 and np.allclose(weights.sum(-1).numpy(), 1.0, atol=1e-12)
    on_face = np.einsum("pc,pcx->px", weights[0].numpy(), vertices[faces[face[0].numpy()]])
    np.testing.assert_allclose(on_face, closest[0].numpy(), atol=1e-12)

    # Default k = 8: never below the truth, and exact near the surface.
    distance_k, _, _ = metrics.point_to_mesh_distance(_t(points[None]), _t(vertices[None]), _t(faces))
    assert (distance_k[0].numpy() >= reference - 1e-12).all()
    np.testing.assert_allclose(distance_k[0, 150:].numpy(), reference[150:], atol=1e-12)


def test_point_to_mesh_distance_batches_chunks_and_skips_unused_vertices(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1000)  # many small chunks
    meshes = [_bumpy_sphere(seed) for seed in (14, 15)]
    faces = meshes[0][1]
    isolated = np.array([[2.0, 0.0, 0.0]])  # a vertex used by no face, right next to the queries
    vertices = np.stack([np.concatenate([v, isolated]) for v, _ in meshes])
    rng = np.random.default_rng(16)
    points = np.array([2.0, 0.0, 0.0]) + 0.05 * rng.normal(size=(2, 40, 3))
    distance, _, _ = metrics.point_to_mesh_distance(_t(points), _t(vertices), _t(faces))
    for b in range(2):
        reference, _ = _brute_force(points[b], vertices[b], faces)
        np.testing.assert_allclose(distance[b].numpy(), reference, atol=1e-12)


def test_point_to_mesh_distance_in_float32():
    vertices, faces = _bumpy_sphere(17)
    rng = np.random.default_rng(18)
    points = vertices[rng.integers(0, len(vertices), 100)] + 0.05 * rng.normal(size=(100, 3))
    d64, _, f64 = metrics.point_to_mesh_distance(_t(points[None]), _t(vertices[None]), _t(faces))
    d32, c32, f32 = metrics.point_to_mesh_distance(
        _t(points[None]).float(), _t(vertices[None]).float(), _t(faces).int()
    )
    assert d32.dtype == c32.dtype == torch.float32 and f32.dtype == torch.int64
    np.testing.assert_allclose(d32.numpy(), d64.numpy(), atol=1e-6)


# --- MNE ----------------------------------------------------------------------------------------

def test_mne_is_zero_for_identical_meshes():
    v, f = _bumpy_sphere(19)  # curved and irregular: smooth normals on both sides make this exact
    v = np.stack([v, 0.1 * v])
    mne = metrics.mean_normal_error(_t(v), _t(f), _t(v), _t(f))
    assert mne.shape == (2,)
    np.testing.assert_allclose(mne.numpy(), 0.0, atol=1e-7)


@pytest.mark.parametrize("pred_resolution", [21, 41])  # same topology, and a finer one
def test_mne_of_a_plane_tilted_by_ten_degrees(pred_resolution):
    gt, gt_faces = _grid(21)
    pred, pred_faces = _grid(pred_resolution)
    tilt = Rotation.from_euler("x", 10, degrees=True).as_matrix()  # about the plane's centre
    pred = pred @ tilt.T
    interior = (np.abs(gt[:, 0]) <= 0.5) & (np.abs(gt[:, 1]) <= 0.5)  # away from the borders
    mne = metrics.mean_normal_error(_t(gt[None]), _t(gt_faces), _t(pred[None]), _t(pred_faces), _t(interior))
    assert mne.item() == pytest.approx(math.radians(10), abs=1e-12)


# --- CR -----------------------------------------------------------------------------------------

def test_cr_of_spheres_one_and_three_millimetres_larger():
    # The reconstruction is a polytope inscribed in the 10 cm sphere; a GT vertex radially above
    # one of its vertices is exactly delta away from it (the radial direction is in the vertex's
    # normal cone), so all distances equal delta.
    v, f = _icosphere(3)
    pred = 0.1 * v[None].repeat(2, axis=0)
    gt = np.stack([(0.1 + 0.001) * v, (0.1 + 0.003) * v])
    distance, _, _ = metrics.point_to_mesh_distance(_t(gt), _t(pred), _t(f))
    np.testing.assert_allclose(distance[0].numpy(), 0.001, atol=1e-12)
    np.testing.assert_allclose(distance[1].numpy(), 0.003, atol=1e-12)
    cr = metrics.completeness_ratio(_t(gt), _t(pred), _t(f))
    np.testing.assert_array_equal(cr.numpy(), [1.0, 0.0])

    mixed = 0.1 * v.copy()
    upper = v[:, 2] > 0
    mixed[upper] = 0.103 * v[upper]
    mixed[~upper] = 0.101 * v[~upper]
    cr_mixed = metrics.completeness_ratio(_t(mixed[None]), _t(pred[:1]), _t(f))
    assert cr_mixed.item() == pytest.approx((~upper).mean(), abs=1e-12)
    cr_masked = metrics.completeness_ratio(_t(mixed[None]), _t(pred[:1]), _t(f), gt_vertex_mask=_t(~upper))
    assert cr_masked.item() == 1.0


# --- NME ----------------------------------------------------------------------------------------

def test_nme_analytic():
    rng = np.random.default_rng(20)
    gt = rng.uniform(0, 100, size=(2, 68, 2))
    gt[:, 36] = [10.0, 50.0]
    gt[:, 45] = [10.0 + 60.0, 50.0 + 80.0]  # inter-ocular distance 100
    pred = gt + np.array([3.0, 4.0])  # every landmark 5 px off
    np.testing.assert_allclose(metrics.nme(_t(pred), _t(gt)).numpy(), [0.05, 0.05], atol=1e-14)

    visible = np.ones((2, 68), dtype=bool)
    visible[1, :30] = False
    pred[1, :30] += 100.0  # hidden landmarks are ignored
    np.testing.assert_allclose(metrics.nme(_t(pred), _t(gt), _t(visible)).numpy(), [0.05, 0.05], atol=1e-14)
    assert metrics.nme(_t(pred), _t(gt))[1].item() > 0.05
    with pytest.raises(ValueError):
        metrics.nme(_t(pred[:, :67]), _t(gt[:, :67]))


# --- FPS ----------------------------------------------------------------------------------------

def test_measure_fps_runs_warmup_and_timed_calls():
    calls = []
    result = metrics.measure_fps(lambda: calls.append(1), n=7, warmup=3, frames_per_call=4, sync=False)
    assert len(calls) == 10 and result.calls == 7
    assert result.fps > 0 and 0 <= result.latency_p50_ms <= result.latency_p95_ms


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_metrics_on_cuda_match_cpu():
    v, f = _icosphere(3)
    rng = np.random.default_rng(21)
    gt = torch.as_tensor(0.1 * v[None] + 0.001 * rng.normal(size=(2, *v.shape)), dtype=torch.float32)
    pred = torch.as_tensor(0.1 * v[None] + 0.002 * rng.normal(size=(2, *v.shape)), dtype=torch.float32)
    faces = _t(f)
    mask = _t(v[:, 2] > 0)
    cpu = [
        metrics.chamfer_vertex_distance(pred, gt, mask),
        metrics.mean_normal_error(gt, faces, pred, faces),
        metrics.completeness_ratio(gt, pred, faces),
        metrics.point_to_mesh_distance(gt, pred, faces)[0],
    ]
    gt_c, pred_c, faces_c, mask_c = gt.cuda(), pred.cuda(), faces.cuda(), mask.cuda()
    cuda = [
        metrics.chamfer_vertex_distance(pred_c, gt_c, mask_c),
        metrics.mean_normal_error(gt_c, faces_c, pred_c, faces_c),
        metrics.completeness_ratio(gt_c, pred_c, faces_c),
        metrics.point_to_mesh_distance(gt_c, pred_c, faces_c)[0],
    ]
    for a, b in zip(cpu, cuda):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-4)
