"""Actor log-density, observation normalizer, MLP options."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensordict import TensorDict
from torch.distributions import Normal, TanhTransform, TransformedDistribution
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl.modules import (
    MLP,
    DeterministicActor,
    ObservationNormalizer,
    SquashedGaussianActor,
    ValueEnsemble,
    squashed_gaussian_log_prob,
)


@given(seed=st.integers(0, 2**16), scale=st.floats(0.05, 3.0))
def test_squashed_log_prob_matches_torch_tanh_transform(seed, scale):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64)
    log_std = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5 + torch.log(torch.tensor(scale, dtype=torch.float64))
    u = mu + log_std.exp() * torch.randn(4, 3, generator=g, dtype=torch.float64)
    u = u.clamp(-6, 6)  # TanhTransform's inverse (atanh) is inaccurate beyond
    ref = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()]).log_prob(torch.tanh(u)).sum(-1)
    assert torch.allclose(squashed_gaussian_log_prob(u, mu, log_std), ref, rtol=1e-7, atol=1e-7)


def test_actor_samples_under_random_and_is_deterministic_otherwise():
    actor = SquashedGaussianActor(3, 2, (8,))
    td = TensorDict(observation=torch.randn(5, 3), batch_size=[5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a1 = actor(td.clone())["action"]
        a2 = actor(td.clone())["action"]
    assert torch.equal(a1, a2)
    with set_exploration_type(ExplorationType.RANDOM):
        out = actor(td.clone())
    assert not torch.equal(out["action"], a1)
    assert out["action"].abs().max() < 1 and out["action_log_prob"].shape == (5,)
    mu, log_std = actor.distribution(td["observation"])
    assert log_std.min() >= -5 and log_std.max() <= 2
    with pytest.raises(ValueError, match=r"expects observations \[..., 3\]"):
        actor(TensorDict(observation=torch.randn(5, 4), batch_size=[5]))


def test_state_independent_std_is_a_parameter():
    actor = SquashedGaussianActor(3, 2, (8,), state_dependent_std=False, init_log_std=-1.0)
    _, log_std = actor.distribution(torch.randn(4, 3))
    assert torch.allclose(log_std, torch.full((4, 2), -1.0))
    assert actor.log_std.requires_grad


def test_normalizer_tracks_mean_and_variance_and_round_trips():
    norm = ObservationNormalizer(3)
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) + 4.0
    for chunk in data.split(137):
        norm.update(chunk)
    assert torch.allclose(norm.mean, data.mean(0), atol=1e-10)
    assert torch.allclose(norm.var, data.var(0, unbiased=False), atol=1e-10)
    z = norm(data.float())
    assert z.dtype == torch.float32 and abs(z.mean().item()) < 1e-3
    other = ObservationNormalizer(3)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.mean, norm.mean) and other.count.item() == 1000
    # update never writes in place: a graph built before the update still backpropagates
    x = torch.randn(4, 3, requires_grad=True)
    y = norm(x).sum()
    norm.update(torch.randn(10, 3))
    y.backward()
    assert torch.isfinite(x.grad).all()


def test_value_ensemble_and_mlp_options():
    critic = ValueEnsemble(3, (8, 8), "elu", num_critics=3)
    assert critic(torch.randn(2, 5, 3)).shape == (2, 5, 3)
    assert len([m for m in MLP(3, 1, (4, 4), layer_norm=True).modules() if isinstance(m, torch.nn.LayerNorm)]) == 2
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        MLP(3, 1, (4,), act="gelu2")
    with pytest.raises(ValueError, match="num_critics"):
        ValueEnsemble(3, num_critics=0)


@pytest.mark.parametrize("module, who", [
    (lambda: SquashedGaussianActor(3, 2, (8,)), "actor"),
    (lambda: ValueEnsemble(3, (8,), num_critics=2), "critic"),
    (lambda: DeterministicActor(3, 2, hidden=(8,)), "actor"),
])
def test_observations_of_another_dtype_than_the_module_are_refused_naming_both(module, who):
    """Where torch's matmul said 'mat1 and mat2 must have the same dtype' (a float64 module on a float32 env)."""
    net = module().double()
    obs = torch.randn(5, 3)
    message = (rf"^{who}'s parameters are torch.float64 on cpu, the observations torch.float32 on cpu: build it in the env's "
               r"dtype and device \(module.to\(torch.float32\)")
    with pytest.raises(TypeError, match=message):
        net(TensorDict(observation=obs, batch_size=[5])) if who == "actor" else net(obs)
    out = net(TensorDict(observation=obs.double(), batch_size=[5])) if who == "actor" else net(obs.double())
    assert out is not None
