"""Parameter priors: samples follow the declared distributions; ``mean`` is their expectation."""

import pytest
import torch
from scipy.spatial.transform import Rotation

from tracker.geometry.rotations import rotation_6d_to_matrix
from tracker.head_models import (
    GaussianPrior,
    ParamGroup,
    RotationPrior,
    SparseUniformPrior,
    UniformPrior,
)


@pytest.mark.parametrize(
    "prior",
    [GaussianPrior(std=0.8), GaussianPrior(std=0.3, mean=0.5), UniformPrior(0.0, 1.0), SparseUniformPrior(0.2), SparseUniformPrior(0.5, -1.0, 1.0)],
)
def test_sample_mean_matches_the_declared_mean(prior):
    group = ParamGroup(7, prior)
    samples = group.sample(40000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (40000, 7)
    assert torch.allclose(samples.mean(0), group.mean(1)[0], atol=0.015)


def test_rotation_prior_has_the_declared_euler_spread():
    group = ParamGroup(12, RotationPrior(std_deg=(15.0, 5.0, 5.0)))  # two joints, e.g. the eyes
    samples = group.sample(20000, generator=torch.Generator().manual_seed(1)).reshape(-1, 6)
    euler = torch.rad2deg(torch.from_numpy(Rotation.from_matrix(rotation_6d_to_matrix(samples).double().numpy()).as_euler("xyz")))  # R = Rz Ry Rx
    assert euler.std(0).tolist() == pytest.approx([15.0, 5.0, 5.0], rel=0.03)
    assert torch.equal(group.mean(2), group.neutral(2))
    assert torch.equal(group.neutral(1)[0], torch.tensor([1.0, 0, 0, 0, 1, 0] * 2))


def test_sparse_prior_activity_and_range():
    samples = ParamGroup(53, SparseUniformPrior(0.2)).sample(5000, generator=torch.Generator().manual_seed(2))
    assert samples.min() >= 0 and samples.max() <= 1
    assert (samples > 0).float().mean().item() == pytest.approx(0.2, abs=0.005)
