"""PointNet (DP3 variant): sizes, order invariance, what passes through, gradients to the points, errors."""

import pytest
import torch

from rl.modules import PointCloudEncoder, PointNet, SquashedGaussianActor, ValueEnsemble


def test_pointnet_is_invariant_to_point_order_and_sensitive_to_points():
    torch.manual_seed(0)
    net = PointNet()
    points = torch.randn(5, 40, 3)
    out = net(points)
    assert out.shape == (5, 64)
    torch.testing.assert_close(net(points[:, torch.randperm(40)]), out)
    moved = points.clone()
    moved[:, 0] += 1.0
    assert not torch.allclose(net(moved), out)


def test_encoder_splits_the_observation_and_gradients_reach_every_part():
    torch.manual_seed(0)
    enc = PointCloudEncoder(obs_dim=20 * 3 + 6, num_points=20)
    obs = torch.randn(3, 66, requires_grad=True)
    out = enc(obs)
    assert out.shape == (3, 64 + 6) and enc.output_dim == 70
    torch.testing.assert_close(out[:, 64:], obs[:, 60:])
    (grad,) = torch.autograd.grad(out[:, :64].square().sum(), obs)
    assert grad[:, :60].abs().sum() > 0 and grad[:, 60:].abs().sum() == 0


def test_actor_and_critics_each_own_an_encoder():
    make = lambda: PointCloudEncoder(66, 20)  # noqa: E731
    actor = SquashedGaussianActor(66, 3, encoder=make())
    critic = ValueEnsemble(66, num_critics=2, encoder=make)
    obs = torch.randn(4, 66)
    assert actor.sample(obs)[0].shape == (4, 3) and critic(obs).shape == (4, 2)
    encoders = [m for m in (*actor.modules(), *critic.modules()) if isinstance(m, PointNet)]
    assert len({id(m) for m in encoders}) == 3


def test_a_cloud_larger_than_the_observation_is_rejected():
    with pytest.raises(ValueError, match="does not fit an observation of 50"):
        PointCloudEncoder(50, 20)
    with pytest.raises(ValueError, match=r"PointNet expects points \[..., M, 3\]"):
        PointNet()(torch.randn(2, 10, 2))
