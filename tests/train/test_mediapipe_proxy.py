"""MediaPipe's landmarks placed on a head model, and training normals rendered like the live cue.

Independent references: ICT-FaceKit's own 68 landmark vertices (upstream annotations), MediaPipe
run afresh on renders from views and expressions the embedding never saw, and the live cue
(``MediaPipeMeshCue``) fed with those detections.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.flame_factory import make_flame_dir
from tracker.errors import TrackerError
from tracker.face.cues import MediaPipeMeshCue
from tracker.face.detection import MEDIAPIPE_68, FaceMeshDetector
from tracker.fitting.mediapipe_embedding import (
    MediaPipeEmbedding,
    compute_mediapipe_embedding,
    mediapipe_embedding,
)
from tracker.geometry import camera
from tracker.geometry.rotations import euler_to_matrix
from tracker.head_models import load_head_model
from tracker.render import render_maps
from train.mediapipe_proxy import MediaPipeProxy
from train.synthetic import SamplerConfig, SyntheticSampler


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


@pytest.fixture(scope="module")
def embedding(ict, tmp_path_factory):
    return mediapipe_embedding(ict, cache=tmp_path_factory.mktemp("embedding"), log=lambda _: None)


def _shaded(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    light = torch.tensor([0.3, 0.3, 0.9]) / math.sqrt(0.99)
    grey = ((normals @ light).clamp(0, 1) * 0.8 + 0.15) * mask
    return np.repeat((grey * 255).round().byte().numpy()[..., None], 3, -1)


def _scene(ict, expression: dict[str, float], pitch: float, yaw: float, size: int = 512):
    """An ICT head with ``expression`` seen from (pitch, yaw) deg: vertices, camera, shaded image."""
    params = ict.neutral_params(1)
    names = list(ict.expression_names)
    for name, value in expression.items():
        params["expression"][0, names.index(name)] = value
    vertices = ict.decode(params)
    vertices = vertices - vertices[0, ict.region_masks["face"]].mean(0)
    rotation = euler_to_matrix(torch.deg2rad(torch.tensor([[pitch, yaw, 0.0]])))
    translation = torch.tensor([[0.0, 0.0, 0.55]])
    focal = torch.full((1, 2), 1.4 * size)
    principal = torch.full((1, 2), size / 2)
    maps = render_maps(vertices, ict.render_faces, rotation, translation, focal, principal, (size, size))
    return vertices, rotation, translation, focal, principal, _shaded(maps.normals[0], maps.mask[0])


def test_embedding_places_every_landmark_consistently(embedding):
    assert embedding.vertex_ids.shape == (468, 3) and torch.allclose(embedding.bary.sum(-1), torch.ones(468), atol=1e-4)
    assert (embedding.bary > -1e-4).all()
    assert int(embedding.views.min()) >= 3
    # MediaPipe's placement from 15 views agrees to a couple of mm for most landmarks
    assert embedding.spread_mm.median() < 3.0


def test_embedding_agrees_with_ict_own_landmark_annotations(ict, embedding):
    vertices = ict.decode(ict.neutral_params(1))
    ours = embedding.points(vertices)[0, list(MEDIAPIPE_68)]
    upstream = ict.landmarks(vertices)[0]
    distance_mm = (ours - upstream).norm(dim=-1) * 1000
    # eyes, nose and mouth (36-67) are defined alike in both schemes; the jaw contour is not
    assert distance_mm[36:].mean() < 4.0, distance_mm[36:]
    assert distance_mm[17:].mean() < 5.0


@pytest.mark.parametrize("expression, pitch, yaw", [({"jawOpen": 0.6}, 4.0, 8.0), ({"mouthSmile_L": 0.8, "mouthSmile_R": 0.8}, -6.0, -20.0)])
def test_proxy_points_follow_mediapipe_on_unseen_views_and_expressions(ict, embedding, expression, pitch, yaw):
    vertices, rotation, translation, focal, principal, image = _scene(ict, expression, pitch, yaw)
    with FaceMeshDetector(max_faces=1, static_images=True) as detector:
        faces = detector.detect(image)
    assert faces, "MediaPipe should find the rendered ICT face"
    detected = torch.from_numpy(faces[0].points[:468, :2]).float()
    proxy = camera.project_head(embedding.points(vertices), rotation, translation, focal, principal)[0]
    error = (proxy - detected).norm(dim=-1)
    face_size = float(faces[0].size)
    assert error.median() / face_size < 0.02, (error.median(), face_size)
    # the lips follow the expression: inner-lip gap of the proxy matches MediaPipe's
    gap_proxy, gap_detected = (proxy[14] - proxy[13]).norm(), (detected[14] - detected[13]).norm()
    assert abs(gap_proxy - gap_detected) < 0.02 * face_size


def test_proxy_render_matches_the_live_cue(ict, embedding):
    """The same face through the live cue (MediaPipe's detection) and through the proxy (exact)."""
    size = 512
    vertices, rotation, translation, focal, principal, image = _scene(ict, {"jawOpen": 0.3}, 5.0, 12.0, size)
    with FaceMeshDetector(max_faces=1, static_images=True) as detector:
        faces = detector.detect(image)
    live_normals, live_mask = MediaPipeMeshCue().render(faces[0].points, size)
    normals, mask = MediaPipeProxy(ict, embedding).render(vertices, rotation, translation, focal, principal, size)
    normals, mask = normals[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy()
    both = (mask > 0) & (live_mask > 0)
    iou = both.sum() / ((mask > 0) | (live_mask > 0)).sum()
    angle = np.degrees(np.arccos(np.clip((normals[both] * live_normals[both]).sum(-1), -1, 1)))
    assert iou > 0.85, iou
    assert np.median(angle) < 12.0, np.median(angle)


def test_smooth_noise_has_the_set_deviation_and_moves_neighbours_together(ict, embedding):
    proxy = MediaPipeProxy(ict, embedding)
    generator = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.0015, 0.0015, 0.003])
    noise = proxy.smooth_noise(4000, sigma, 20.0, generator)
    std = noise.std(0)  # (468, 3)
    assert torch.allclose(std, sigma.expand_as(std), rtol=0.1)
    # landmarks 13 and 14 (inner lips, ~1 mm apart) move together; far points (forehead 10, chin 152) much less
    correlation = lambda a, b: torch.corrcoef(torch.stack((noise[:, a, 0], noise[:, b, 0])))[0, 1]
    assert correlation(13, 14) > 0.9
    assert correlation(10, 152) < 0.5
    white = proxy.smooth_noise(4000, sigma, 0.0, generator)
    assert abs(torch.corrcoef(torch.stack((white[:, 13, 0], white[:, 14, 0])))[0, 1]) < 0.1


def test_sampler_with_the_mediapipe_surface(ict, embedding):
    config = SamplerConfig(output_size=64, surface="mediapipe")
    proxy = MediaPipeProxy(ict, embedding)
    batch = SyntheticSampler(ict, config, seed=1, proxy=proxy).sample(4)
    assert batch.normals.shape == (4, 3, 64, 64) and batch.mask.shape == (4, 1, 64, 64)
    norms = batch.normals.norm(dim=1)
    on = batch.mask[:, 0] > 0
    assert torch.allclose(norms[on], torch.ones(int(on.sum())), atol=1e-3) and (norms[~on] == 0).all()
    assert (batch.mask.mean((1, 2, 3)) > 0.15).all()
    exact_config = SamplerConfig(output_size=64, surface="mediapipe", proxy_position_mm=0, proxy_depth_mm=0, proxy_depth_scale_std=0)
    exact = SyntheticSampler(ict, exact_config, seed=1, proxy=proxy).sample(4)
    assert torch.equal(exact.params["expression"], batch.params["expression"])  # same scenes ...
    assert not torch.equal(exact.normals, batch.normals)  # ... different maps: the noise is applied
    with pytest.raises(ValueError, match="camera frame"):
        SamplerConfig(surface="mediapipe", normal_frame="head")
    with pytest.raises(ValueError, match="surface"):
        SamplerConfig(surface="pixels")


def test_flame_works_with_an_embedding_and_reports_a_head_mediapipe_cannot_see(tmp_path):
    flame = load_head_model("flame", make_flame_dir(tmp_path))
    with pytest.raises(TrackerError, match="found no face"):
        compute_mediapipe_embedding(flame, size=256, views_deg=((0.0, 0.0),))
    # a FLAME embedding (computed on a real FLAME, here a stand-in on its face triangles) drives the sampler
    generator = torch.Generator().manual_seed(0)
    face = flame.region_masks["face"]
    triangles = flame.render_faces[face[flame.render_faces].all(-1)]
    chosen = triangles[torch.randint(len(triangles), (468,), generator=generator)]
    weights = torch.rand(468, 3, generator=generator)
    stand_in = MediaPipeEmbedding(chosen, weights / weights.sum(-1, keepdim=True), torch.zeros(468), torch.full((468,), 15, dtype=torch.int32))
    path = stand_in.save(tmp_path / "flame_embedding.npz")
    loaded = MediaPipeEmbedding.load(path, vertex_count=5023)
    assert torch.equal(loaded.vertex_ids, stand_in.vertex_ids)
    batch = SyntheticSampler(flame, SamplerConfig(output_size=48, surface="mediapipe"), seed=0, proxy=MediaPipeProxy(flame, loaded)).sample(2)
    assert batch.normals.shape == (2, 3, 48, 48) and torch.isfinite(batch.normals).all()
    with pytest.raises(TrackerError, match="refers to vertex"):
        MediaPipeEmbedding.load(path, vertex_count=100)


def test_embedding_cache_is_used(ict, embedding, tmp_path, monkeypatch):
    import tracker.fitting.mediapipe_embedding as module

    calls = []
    monkeypatch.setattr(module, "compute_mediapipe_embedding", lambda head: calls.append(1) or embedding)
    first = module.mediapipe_embedding(ict, cache=tmp_path, log=lambda _: None)
    second = module.mediapipe_embedding(ict, cache=tmp_path, log=lambda _: None)
    assert calls == [1] and torch.equal(first.vertex_ids, second.vertex_ids)
    assert len(list(tmp_path.glob("ict-*.npz"))) == 1
