"""FluidMove: TorchRL conformance, Rewarped's reward by hand, the container's limits, water carried along, gradients
against finite differences, input errors."""

import pytest
import torch
from helpers import check_directional_derivative
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.envs.fluid_move import ACTION_SCALE, START

SMALL = dict(grid_size=24, particles=96, samples=24, substeps=4)


def test_specs_sizes_and_full_size_defaults():
    env = E.make("fluid_move", num_envs=2, seed=0, **SMALL)
    check_env_specs(env)
    td = env.reset()
    assert td["observation"].shape == (2, 3 * 24 + 9) and td["target_q"].shape == (2, 3) and td["x"].shape == (2, 96, 3)
    offset = td["target_q"] - torch.tensor(START)
    assert (offset.abs() <= torch.tensor([0.2, 0.3, 0.2]) + 1e-6).all() and (offset[:, 1] >= 0).all()
    full = E.make("fluid_move", num_envs=1, seed=0)
    assert full.model.particle_mass.shape == (2880,) and full.observation_dim == 759 and full.model.material.mu == 0.0


def test_reward_is_rewarpeds_transport_score():
    env = E.make("fluid_move", num_envs=2, seed=1, **SMALL)
    td = env.reset()
    td["action"] = torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    out = env.step(td)["next"]
    q, target, particles = out["joint_q"], td["target_q"], out["particle_q"]
    d = (q - target).norm(dim=-1)
    closeness = torch.where(d <= 0.02, 2.0, 1.0) / (1 + d**2) ** 2
    bounds = torch.tensor([0.09 + 0.05, 0.08 + 0.025, 0.11 + 0.05])
    outside = torch.sigmoid(((particles - q[:, None]).abs() - bounds) / 1e-5).amax(-1).mean(-1)
    torch.testing.assert_close(out["reward"][:, 0], 0.1 * closeness - outside)
    # particles far outside count fully
    spilled = env.reward(out, td["action"], {"particle_q": particles + torch.tensor([0.0, 1.0, 0.0])})[:, 0] - 0.1 * closeness
    torch.testing.assert_close(spilled, -torch.ones(2))


def test_the_container_moves_by_the_scaled_action_stays_in_its_limits_and_carries_the_water():
    env = E.make("fluid_move", num_envs=1, seed=0, **{**SMALL, "substeps": 40})  # 0.02 s per step: 0.5 m/s at full action
    td = env.reset()
    for _ in range(3):  # settle
        td["action"] = torch.zeros(1, 3)
        td = env.step_mdp(env.step(td))
    start_q, start_com = td["joint_q"].clone(), td["com_q"].clone()
    for _ in range(10):
        td["action"] = torch.tensor([[1.0, 0.0, 0.0]])
        td = env.step_mdp(env.step(td))
    torch.testing.assert_close(td["joint_q"] - start_q, torch.tensor([[10 * ACTION_SCALE, 0.0, 0.0]]), rtol=0, atol=1e-5)
    assert (td["com_q"] - start_com)[0, 0] > 5 * ACTION_SCALE  # the water went along
    for _ in range(60):
        td["action"] = torch.tensor([[1.0, -1.0, 1.0]])
        td = env.step_mdp(env.step(td))
    torch.testing.assert_close(td["joint_q"][0], torch.tensor([env.joint_upper[0], env.joint_lower[1], env.joint_upper[2]]))


def test_rollout_gradient_matches_central_finite_differences():
    """Two steps of a sideways push on a drop of water on the container's floor, float64, d(rewards + weighted particle
    positions)/d(actions). The shapes act on every node (cutoff 0: with Rewarped's cutoff a node entering a band jumps),
    and the drop stays clear of the walls (inside a box the SDF's normal flips where two faces are equally near)."""
    env = E.make("fluid_move", num_envs=1, seed=2, dtype=torch.float64, **{**SMALL, "dt": 2e-3})
    env.shapes = env.shapes._replace(cutoff=0.0)
    td0 = env.reset()
    drop = torch.rand(96, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.04 - 0.02
    td0["x"] = (td0["joint_q"] + torch.tensor([0.0, -0.08 + 0.03, 0.0], dtype=torch.float64) + drop)[None].expand(1, 96, 3).clone()
    weights = torch.randn(96, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(actions):
        td, total = td0, 0.0
        for a in actions:
            td = td.clone(False).set("action", a[None])
            td = env.step(td)["next"]
            total = total + td["reward"].sum() + (td["x"][0] * weights).sum()
        return total

    actions = torch.tensor([[0.6, 0.3, -0.4], [0.8, 0.5, 0.2]], dtype=torch.float64)
    direction = torch.randn(actions.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check_directional_derivative(loss, [actions], [direction], eps=(1e-6, 1e-5), rtol=1e-4)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown option"):
        E.make("fluid_move", num_envs=1, viscosity=3.0)
    with pytest.raises(ValueError, match="unknown goal"):
        E.make("fluid_move", num_envs=1, goal="pour")
    with pytest.raises(ValueError, match="particles must be"):
        E.make("fluid_move", num_envs=1, particles=10)
    env = E.make("fluid_move", num_envs=2, **SMALL)
    td = env.reset()
    td["action"] = torch.zeros(2, 24)
    with pytest.raises(ValueError, match="action"):
        env.step(td)
