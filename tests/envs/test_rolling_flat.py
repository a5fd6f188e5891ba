"""RollingFlat on a small grid: TorchRL conformance, the reward by hand, joint limits, resets, gradients, input errors."""

import math

import pytest
import torch
from helpers import check_directional_derivative
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.envs.rolling_flat import HEIGHT

SMALL = dict(grid_size=16, lattice=(6, 3, 6), samples=20, substeps=8)


def test_specs_sizes_and_full_size_defaults():
    env = E.make("rolling_flat", num_envs=2, seed=0, **SMALL)
    check_env_specs(env)
    td = env.reset()
    assert td["observation"].shape == (2, 3 * 20 + 6) and td["particle_q"].shape == (2, 20, 3) and td["x"].shape == (2, 108, 3)
    full = E.make("rolling_flat", num_envs=1, seed=0)
    assert full.model.grid_size == 48 and full.model.particle_mass.shape == (2592,) and full.horizon == 300
    assert full.observation_dim == 756 and full.action_spec.shape == (1, 3)


def test_reward_is_rewarpeds_flattening_score():
    env = E.make("rolling_flat", num_envs=2, seed=1, **SMALL)
    td = env.reset()
    td["action"] = torch.zeros(2, 3)
    out = env.step(td)["next"]
    h = out["particle_q"][..., 1]
    d = h.mean(-1) / HEIGHT
    expected = torch.where(d <= 0.33, 2.0, 1.0) / (1 + d) ** 2 - h.var(-1)
    torch.testing.assert_close(out["reward"][:, 0], expected)


def test_roller_moves_by_the_scaled_action_and_stops_at_its_limits():
    env = E.make("rolling_flat", num_envs=1, seed=0, **SMALL)
    td = env.reset()
    start = td["joint_q"].clone()
    td["action"] = torch.tensor([[1.0, 0.5, -1.0]])
    out = env.step(td)["next"]
    torch.testing.assert_close(out["joint_q"] - start, torch.tensor([[0.01, 0.005, -math.pi / 60]]))
    td = out
    for _ in range(30):
        td["action"] = torch.tensor([[0.0, 1.0, 0.0]])
        td = env.step(td)["next"]
    assert td["joint_q"][0, 1].item() == pytest.approx(env.joint_upper[1].item(), abs=1e-6)


def test_resets_randomise_the_dough_and_keep_the_others_on_partial_reset():
    env = E.make("rolling_flat", num_envs=3, seed=0, **SMALL)
    td = env.reset()
    assert not torch.allclose(td["com_q"][0], td["com_q"][1])
    assert (td["x"][..., 1].min(-1).values > env.floor).all(), "the dough starts above the floor"
    td["action"] = torch.zeros(3, 3)
    td = env.step(td)["next"]
    td["_reset"] = torch.tensor([[True], [False], [False]])
    again = env.reset(td)
    torch.testing.assert_close(again["x"][1:], td["x"][1:])
    assert again["step_count"][0].item() == 0 and again["step_count"][1].item() == 1


def test_rollout_gradient_matches_central_finite_differences():
    """Two steps with the roller pressed into the dough, float64, d(rewards)/d(actions). The grid is fine
    enough (dx 3.1 cm) for the 3 cm roller to cover nodes off its axis (on the axis the normal is undefined)."""
    env = E.make("rolling_flat", num_envs=1, seed=2, dtype=torch.float64, **{**SMALL, "grid_size": 32, "dt": 2e-4})
    td0 = env.reset()
    lowered = td0.clone()
    lowered["joint_q"] = td0["joint_q"] - torch.tensor([[0.0, 0.09, 0.0]], dtype=torch.float64)  # roller pressed into the dough

    def loss(actions):
        td, total = lowered, 0.0
        for a in actions:
            td = td.clone(False).set("action", a[None])
            td = env.step(td)["next"]
            total = total + td["reward"].sum()
        return total

    actions = torch.tensor([[0.3, -0.5, 0.2], [-0.2, -0.4, 0.1]], dtype=torch.float64)
    direction = torch.randn(actions.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    check_directional_derivative(loss, [actions], [direction], eps=(1e-6, 1e-5), rtol=1e-4)


@pytest.mark.parametrize("recompute", [True, "substep"])
def test_recompute_modes_give_the_same_gradient_as_keeping_everything(recompute):
    """d(rewards)/d(actions, initial positions) over two steps: recomputation changes memory, not the result."""
    grads = []
    for mode in (False, recompute):
        env = E.make("rolling_flat", num_envs=2, seed=2, dtype=torch.float64, recompute=mode, **{**SMALL, "grid_size": 32})
        td = env.reset()
        td["joint_q"] = td["joint_q"] - torch.tensor([0.0, 0.09, 0.0], dtype=torch.float64)
        x0 = td["x"].clone().requires_grad_()
        actions = torch.tensor([[0.3, -0.5, 0.2], [-0.2, -0.4, 0.1]], dtype=torch.float64).requires_grad_()
        td["x"], total = x0, 0.0
        for k in range(2):
            td["action"] = actions[k].expand(2, 3)
            td = env.step(td)["next"]
            total = total + td["reward"].sum()
        grads.append(torch.autograd.grad(total, (actions, x0)))
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="recompute must be one of"):
        E.make("rolling_flat", num_envs=1, recompute="always")


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown option"):
        E.make("rolling_flat", num_envs=1, stiffness=3.0)
    with pytest.raises(ValueError, match="unknown goal"):
        E.make("rolling_flat", num_envs=1, goal="stop")
    env = E.make("rolling_flat", num_envs=2, **SMALL)
    td = env.reset()
    td["action"] = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        env.step(td)
    td["action"] = torch.full((2, 3), float("nan"))
    with pytest.raises(ValueError, match="non-finite action"):
        env.step(td)
