"""snu_humanoid (DFlex's SNUHumanoid): sizes, TorchRL conformance, observation / reward / termination by hand,
the action -> muscle activation map, and finite policy gradients through the muscles."""

import pytest
import torch
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.envs.snu_humanoid import TERMINATION_HEIGHT, observe, reward
from tphys.rigid import RigidControl, RigidState, step


def test_sizes_are_dflex_s():
    env = E.make("snu_humanoid", num_envs=2, seed=0)
    assert (env.observation_dim, env.action_dim, env.horizon, env.substeps) == (53, 152, 1000, 48)
    assert (env.model.nq, env.model.nv, env.model.num_muscles, env.model.num_actuators) == (29, 24, 152, 0)
    assert "snu_humanoid" in E.list_envs() and E.make("snu", num_envs=1).name == "snu_humanoid"
    # DiffRL's muscle strengths: 0.6 x 0.6 x f0 (its str_scale applied twice); f0 of R_Adductor_Brevis is 151.85 N
    names = env.model.muscles.names
    assert abs(float(env.model.muscles.max_force[names.index("R_Adductor_Brevis")]) - 0.36 * 151.85) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_env_specs(dtype):
    env = E.make("snu_humanoid", num_envs=2, dtype=dtype, seed=0, horizon=3)
    check_env_specs(env, seed=0)


def test_observation_reward_and_termination_at_rest():
    env = E.make("snu_humanoid", num_envs=1, dtype=torch.float64)
    q, qd = env.model.q0[None], torch.zeros(1, env.model.nv, dtype=torch.float64)
    qd[0, 0] = 0.7  # running forward at 0.7 m/s
    obs = observe(env.model, q, qd, torch.zeros(1, 152, dtype=torch.float64))
    assert obs.shape == (1, 53)
    torch.testing.assert_close(obs[0, :5], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))  # 1 m up, start pose
    assert obs[0, 5] == 0.7 and abs(obs[0, 51] - 1.0) < 1e-12 and abs(obs[0, 52] - 1.0) < 1e-12  # upright, heading +x
    action = torch.full((1, 152), 0.5, dtype=torch.float64)  # activation 0.75 each
    torch.testing.assert_close(reward(obs, action), torch.tensor([0.7 + 0.1 + 1.0 - 0.001 * 0.75 * 152], dtype=torch.float64))
    low = obs.clone()
    low[0, 0] = TERMINATION_HEIGHT - 0.01
    assert env.task.terminated(low).tolist() == [True] and env.task.terminated(obs).tolist() == [False]


def test_action_minus_one_leaves_the_muscles_slack():
    env = E.make("snu_humanoid", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset()
    td["action"] = -torch.ones(2, 152, dtype=torch.float64)
    stepped = env.step(td)["next", "q"]
    slack = step(env.model, RigidState(td["q"], td["qd"]), RigidControl(torch.zeros(2, 0, dtype=torch.float64)), env.dt, env.substeps)
    torch.testing.assert_close(stepped, slack.q, rtol=0, atol=1e-12)
    td["action"] = torch.ones(2, 152, dtype=torch.float64)
    assert (env.step(td)["next", "q"] - slack.q).abs().max() > 1e-4  # full activation moves the body


def _reward_gradient(steps):
    env = E.make("snu_humanoid", num_envs=2, seed=1)
    td = env.reset()
    actions = (0.5 * torch.randn(steps, 2, 152, generator=torch.Generator().manual_seed(0))).requires_grad_()
    total = 0.0
    for t in range(steps):
        td["action"] = actions[t]
        td = env.step(td)
        total = total + td["next", "reward"].sum()
        td = td["next"]
    total.backward()
    grad = actions.grad
    assert torch.isfinite(grad).all()
    # minus the activation penalty's own gradient (-0.001 x 0.5 per in-range action), what is left came through the
    # muscles and the simulator, at every step
    inside = actions.detach().abs() < 1
    through_physics = (grad + 0.0005) * inside
    assert (through_physics.abs().sum(-1) > 0).all()


def test_reward_gradient_is_finite_over_two_steps():
    _reward_gradient(2)


@pytest.mark.slow
def test_reward_gradient_is_finite_over_64_steps():
    _reward_gradient(64)
