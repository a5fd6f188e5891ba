"""TorchRL conformance, differentiable rollouts, registry and input validation of the PODS (particle) envs.

The rigid-body envs have their own file, ``test_rigid_envs.py``.
"""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.envs import GOALS

TABLE2_OBSERVATION = {
    "pendulum2d": 5,
    "pendulum3d": 8,
    "double_pendulum3d": 14,
    "cable_payload2d": 18,
    "rope3d": 32,
    "cloth": 162,
}
ENV_NAMES = sorted(TABLE2_OBSERVATION)
ACTION_DIMS = {"pendulum2d": 1, "pendulum3d": 2, "double_pendulum3d": 2, "cable_payload2d": 2, "rope3d": 2, "cloth": 12}


def test_registry_lists_every_pods_env_with_a_description():
    envs = E.list_envs()
    assert set(TABLE2_OBSERVATION) <= set(envs)
    assert all(isinstance(d, str) and len(d) > 20 for d in envs.values())
    assert E.make("rope", num_envs=2).task.name == "rope3d"


@pytest.mark.parametrize("name", ENV_NAMES)
@pytest.mark.parametrize("goal", GOALS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_env_specs(name, goal, dtype):
    env = E.make(name, num_envs=3, dtype=dtype, goal=goal, seed=0)
    check_env_specs(env, seed=0)
    assert env.observation_spec["observation"].shape[-1] == TABLE2_OBSERVATION[name]
    assert env.action_spec.shape[-1] == ACTION_DIMS[name]
    td = env.rollout(3, break_when_any_done=False)
    assert td["next", "observation"].dtype == dtype and td["next", "reward"].dtype == dtype


@pytest.mark.parametrize("name", ENV_NAMES)
def test_full_episode_rollout_gives_finite_nonzero_policy_gradients(name):
    torch.manual_seed(0)
    env = E.make(name, num_envs=2, seed=0)
    net = torch.nn.Sequential(
        torch.nn.Linear(env.observation_dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, env.action_dim), torch.nn.Tanh()
    )
    policy = TensorDictModule(net, ["observation"], ["action"])
    td = env.rollout(env.horizon, policy, break_when_any_done=False)
    assert td.shape == (2, env.horizon)
    assert td["next", "truncated"][:, -1].all() and not td["next", "done"][:, :-1].any()
    td["next", "reward"].sum().backward()
    for parameter in net.parameters():
        assert torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


def test_seed_makes_resets_reproducible():
    a = E.make("rope3d", num_envs=4, seed=7).reset()
    b = E.make("rope3d", num_envs=4, seed=7).reset()
    c = E.make("rope3d", num_envs=4, seed=8).reset()
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    assert (a["v"][:, 1:].norm(dim=-1) > 0).all(), "payloads start with non-zero velocity"


def test_partial_reset_resets_flagged_envs_and_keeps_the_graph_of_the_others():
    env = E.make("pendulum2d", num_envs=3, seed=0)
    td = env.reset()
    action = torch.full((3, 1), 0.5, requires_grad=True)
    nxt = env.step(td.set("action", action))["next"]
    nxt.set("_reset", torch.tensor([[True], [False], [False]]))
    after = env.reset(nxt)
    assert after["step_count"].flatten().tolist() == [0, 1, 1]
    assert torch.equal(after["x"][1:], nxt["x"][1:])
    (grad,) = torch.autograd.grad(after["x"].sum(), action)
    assert grad[0].abs().sum() == 0 and (grad[1:].abs() > 0).all()


def test_actions_outside_the_bounds_are_clamped():
    env = E.make("pendulum2d", num_envs=2, seed=0)
    td = env.reset()
    big = env.step(td.clone().set("action", torch.full((2, 1), 5.0)))["next", "x"]
    unit = env.step(td.clone().set("action", torch.full((2, 1), 1.0)))["next", "x"]
    assert torch.equal(big, unit)


@pytest.mark.parametrize("integrator", ["semi_implicit", "bdf2"])
def test_cpu_device_and_both_integrators_step(integrator):
    env = E.make("cable_payload2d", num_envs=2, device="cpu", integrator=integrator, seed=0)
    td = env.rollout(5, break_when_any_done=False)
    assert torch.isfinite(td["next", "observation"]).all()


# ---------------------------------------------------------------------------- bad input
def test_unknown_env_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown env 'ropee'.*pendulum2d.*rope3d"):
        E.make("ropee")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_envs=0), "num_envs must be an int >= 1"),
        (dict(dtype=torch.int32), "dtype must be torch.float32 or torch.float64"),
        (dict(goal="fly"), "unknown goal 'fly'"),
        (dict(integrator="rk4"), "unknown integrator 'rk4'"),
        (dict(stiffnes=3.0), r"unknown option\(s\) \['stiffnes'\].*stiffness"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E.make("rope3d", **kwargs)


def test_wrong_action_shape_is_reported():
    env = E.make("rope3d", num_envs=4)
    td = env.reset().set("action", torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"action has shape \(4, 3\), expected \(4, 2\)"):
        env.step(td)


def test_wrong_action_dtype_is_reported():
    env = E.make("rope3d", num_envs=4)
    td = env.reset().set("action", torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="action dtype is torch.float64 but the env runs in torch.float32"):
        env.step(td)


def test_nan_action_names_the_env_indices():
    env = E.make("rope3d", num_envs=5)
    action = torch.zeros(5, 2)
    action[1, 0] = float("nan")
    action[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite action \(NaN/inf\) in env indices \[1, 3\]"):
        env.step(env.reset().set("action", action))


def test_nan_state_names_the_env_indices():
    env = E.make("cloth", num_envs=4)
    td = env.reset()
    td["v"][2, 5, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite input state \(NaN/inf\) in env indices \[2\]"):
        env.step(td.set("action", torch.zeros(4, 12)))


def test_blow_up_during_a_step_names_the_env_indices():
    env = E.make("pendulum2d", num_envs=3, substeps=1, stiffness=1e7)
    td = env.reset()
    with pytest.raises(FloatingPointError, match=r"non-finite .*after the step.* env indices \[0, 1, 2\]"):
        for _ in range(200):
            td = env.step(td.set("action", torch.zeros(3, 1)))["next"]
