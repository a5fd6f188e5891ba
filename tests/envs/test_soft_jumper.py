"""SoftJumper: sizes, TorchRL conformance, reward by hand, gradients, recompute, input errors."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import check_env_specs

import tphys.envs as E


def test_sizes_are_about_rewarped_s():
    env = E.make("soft_jumper", num_envs=2, seed=0)
    assert env.num_tets == 432 and env.action_dim == 216 and env.rest.shape == (168, 3)
    assert env.observation_dim == 200 and env.horizon == 300 and env.substeps == 80
    assert (env.rest[:, 1] >= 0).all() and env.rest[:, 1].min() == 0, "standing on the ground"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_env_specs(dtype):
    env = E.make("soft_jumper", num_envs=2, dtype=dtype, seed=0, substeps=40)
    check_env_specs(env, seed=0)


def test_reward_by_hand_and_com():
    env = E.make("soft_jumper", num_envs=2, dtype=torch.float64, seed=0, substeps=40)
    td = env.reset()
    action = 0.5 * torch.ones(2, env.action_dim, dtype=torch.float64)
    out = env.step(td.set("action", action))["next"]
    mass = env.model.mass
    com = (mass[:, None] * out["x"]).sum(1) / mass.sum()
    com_v = (mass[:, None] * out["v"]).sum(1) / mass.sum()
    expected = 10 * com_v[:, 0] + 30 * (com[:, 1] - td["com_start"][:, 1]) - 0.001 * 0.25 * env.action_dim
    torch.testing.assert_close(out["reward"][:, 0], expected)
    torch.testing.assert_close(out["observation"][:, :3], com - td["com_start"])


def test_h8_rollout_gives_finite_policy_gradients_and_recompute_is_exact():
    torch.manual_seed(0)
    grads = []
    for recompute in (True, False):
        env = E.make("soft_jumper", num_envs=3, seed=1, substeps=40, recompute=recompute)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(env.observation_dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, env.action_dim),
                                  torch.nn.Tanh())
        td = env.rollout(8, TensorDictModule(net, ["observation"], ["action"]), break_when_any_done=False)
        td["next", "reward"].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_substeps_match_the_particle_integrator():
    from tphys.particles import ParticleControl, ParticleState, semi_implicit_euler

    env = E.make("soft_jumper", num_envs=2, dtype=torch.float64, seed=0, substeps=40)
    td = env.reset()
    action = torch.rand(2, env.action_dim, dtype=torch.float64) * 2 - 1
    frame = env.physics_step(td, action)
    x, v = frame["x"], frame["v"]
    none = torch.zeros(2, 0, 3, dtype=torch.float64)
    reference = semi_implicit_euler(env.model, ParticleState.without_history(td["x"], td["v"]),
                                    ParticleControl(none, action.repeat_interleave(2, -1)), env.dt, 40)
    torch.testing.assert_close(x, reference.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, reference.v, rtol=1e-12, atol=1e-12)


def test_muscles_move_the_body():
    env = E.make("soft_jumper", num_envs=2, dtype=torch.float64, seed=0, substeps=40)
    td = env.reset()
    still, pumped = td.clone(), td.clone()
    for step in range(30):
        still = env.step(still.set("action", torch.zeros(2, env.action_dim, dtype=torch.float64)))["next"]
        pulse = torch.full((2, env.action_dim), 1.0 if step % 10 < 5 else -1.0, dtype=torch.float64)
        pumped = env.step(pumped.set("action", pulse))["next"]
    assert still["v"].abs().max() < 0.1, "passive: settles"
    assert (pumped["x"] - still["x"]).abs().max() > 0.01, "activations deform it"


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="valid goals: jump"):
        E.make("soft_jumper", goal="stop")
    with pytest.raises(ValueError, match="physical parameters"):
        E.make("soft_jumper", stiffness=3.0)
    env = E.make("soft_jumper", num_envs=2, seed=0, substeps=2)
    td = env.reset()
    with pytest.raises(ValueError, match=r"expected \(2, 216\)"):
        env.step(td.clone().set("action", torch.zeros(2, 5)))
    with pytest.raises(TypeError, match="float64"):
        env.step(td.clone().set("action", torch.zeros(2, 216, dtype=torch.float64)))


def test_compile_substep_wraps_the_torch_substep_lazily():
    """TorchRL's EnvBase consumes a ``compile`` keyword, so the option is ``compile_substep``; building compiles nothing.
    It is a torch-backend option, as in the rigid envs: with backend "auto" it selects the compiled torch substeps, with
    "cpu" (the C frame, nothing to compile) it raises instead of going unused."""
    compiled = E.make("soft_jumper", num_envs=1, compile_substep=True, backend="torch")
    eager = E.make("soft_jumper", num_envs=1, backend="torch")
    assert compiled.compiled and not eager.compiled
    assert hasattr(compiled._substep.forward_fn, "__wrapped__") and hasattr(compiled._substep.backward_fn, "__wrapped__")
    assert not hasattr(eager._substep.forward_fn, "__wrapped__") and not hasattr(eager._substep.backward_fn, "__wrapped__")
    auto = E.make("soft_jumper", num_envs=1, compile_substep=True)
    assert auto.backend == "torch" and auto.compiled and hasattr(auto._substep.forward_fn, "__wrapped__")
    with pytest.raises(ValueError, match="compile_substep"):
        E.make("soft_jumper", num_envs=1, compile_substep=True, backend="cpu")
