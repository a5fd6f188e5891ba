"""The payload envs' observation picks handle and payload particles by index (``PayloadEnv.pick``) where the model's
scatter rows are one-hot: the einsum's values and gradients to the bit, and the einsum itself where a row is not."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.envs import payload

NAMES = ["cable_payload2d", "cloth", "double_pendulum3d", "pendulum2d", "pendulum3d", "rope3d"]


def einsum_observation(env, x, v):
    """The observation as the env computed it before ``pick``: every particle through the scatter matrices."""
    handles = torch.einsum("hp,npd->nhd", env.model.handle_scatter, x) - env.handle_reference
    coordinates = torch.einsum("ahd,nhd->na", env.action_basis, handles)
    payload_x = torch.einsum("fp,npd->nfd", env.model.free_scatter, x) - env.free_reference
    payload_v = torch.einsum("fp,npd->nfd", env.model.free_scatter, v)
    return torch.cat([coordinates, payload_x.flatten(1), payload_v.flatten(1)], -1)


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_the_observation_equals_the_einsum_form_in_value_and_gradient(name, seed, dtype):
    env = E.make(name, num_envs=3, dtype=dtype, seed=seed)
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    x = (td["x"] + 0.05 * torch.randn(td["x"].shape, generator=gen, dtype=dtype)).requires_grad_()
    v = torch.randn(td["v"].shape, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(3, env.observation_dim, generator=gen, dtype=dtype)
    ours = env.observe(td.clone().set("x", x).set("v", v), None)["observation"]
    theirs = einsum_observation(env, x, v)
    assert torch.equal(ours, theirs)
    for a, b in zip(torch.autograd.grad((ours * weight).sum(), (x, v)), torch.autograd.grad((theirs * weight).sum(), (x, v))):
        assert torch.equal(a, b)


def test_a_scatter_that_is_not_one_hot_takes_the_einsum():
    env = E.make("rope3d", num_envs=2, dtype=torch.float64, seed=0)
    x = torch.randn(2, env.model.free_scatter.shape[1], 3, dtype=torch.float64)
    half = env.model.free_scatter * 0.5
    assert payload.one_hot_rows(half) is None and payload.one_hot_rows(env.model.free_scatter) is not None
    assert torch.equal(env.pick(half, x), torch.einsum("kp,npd->nkd", half, x))
    two = env.model.free_scatter.clone()
    two[0] = two[0] + two[1]  # a row that sums two particles: no single index
    assert payload.one_hot_rows(two) is None
    assert torch.equal(env.pick(two, x), torch.einsum("kp,npd->nkd", two, x))
    edited = env.model.free_scatter.clone()
    rows = payload.one_hot_rows(edited)
    edited[0] = edited[0].roll(1)  # in place: the cached rows must follow
    assert not torch.equal(payload.one_hot_rows(edited), rows)
    assert torch.equal(env.pick(edited, x), torch.einsum("kp,npd->nkd", edited, x))


def test_the_reward_follows_a_change_of_weights():
    """The residual's scale is cached per weights: new weights give the new reward."""
    env = E.make("pendulum2d", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset().set("action", torch.full((2, env.action_dim), 0.5, dtype=torch.float64))
    first = env.step(td)["next", "reward"]
    env.weights = payload.RewardWeights(handle_position=0.0, payload_position=0.0, payload_velocity=0.0, action=1.0)
    second = env.step(td)["next", "reward"]
    u = env.handle_velocity(td["action"])
    assert torch.allclose(second, -u.square().flatten(1).sum(-1, keepdim=True)) and not torch.allclose(first, second)
