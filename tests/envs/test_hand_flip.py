"""HandFlip: TorchRL conformance, the hand placed where Rewarped places it, the reward by hand, joint limits, resets,
gradients against finite differences, input errors."""

import pytest
import torch
from helpers import check_directional_derivative
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.envs.hand_flip import ACTION_SCALE, START_POSE
from tphys.rigid.shadow_hand import body_poses

SMALL = dict(grid_size=16, particles=64, samples=16, substeps=4)

# Rewarped 1.3.3's Flip hand at its start pose: the 24 body origins (one per joint, JOINTS order), read from
# env.state.body_q after Flip(num_envs=1).reset() on CPU
REWARPED_BODIES = [
    [0.5, 0.275, 0.3], [0.514, 0.275, 0.3838], [0.4697, 0.2004, 0.6198], [0.4697, 0.2004, 0.6198], [0.4729, 0.2008, 0.7323],
    [0.4761, 0.2417, 0.7793], [0.5255, 0.1972, 0.6201], [0.5255, 0.1972, 0.6201], [0.5439, 0.1967, 0.7311], [0.5514, 0.2398, 0.7757],
    [0.5782, 0.2004, 0.6017], [0.5782, 0.2004, 0.6017], [0.5966, 0.2057, 0.7126], [0.604, 0.2488, 0.7573], [0.5731, 0.2404, 0.4799],
    [0.6323, 0.2107, 0.5774], [0.6323, 0.2107, 0.5774], [0.6625, 0.2238, 0.685], [0.6703, 0.2709, 0.7253], [0.4426, 0.2736, 0.4727],
    [0.4426, 0.2736, 0.4727], [0.3978, 0.3027, 0.5512], [0.3978, 0.3027, 0.5512], [0.3598, 0.3262, 0.6176]]


def test_specs_sizes_and_the_hand_where_rewarped_has_it():
    env = E.make("hand_flip", num_envs=2, seed=0, **SMALL)
    check_env_specs(env)
    td = env.reset()
    assert td["observation"].shape == (2, 3 * 16 + 3 + 24) and td["joint_q"].shape == (2, 24) and td["x"].shape == (2, 64, 3)
    full = E.make("hand_flip", num_envs=1, seed=0, dtype=torch.float64)
    assert full.model.grid_size == 48 and full.model.particle_mass.shape == (2500,) and full.observation_dim == 777
    position, _ = body_poses(full.hand, full.joint_start[None], full.base_position, full.base_rotation)
    torch.testing.assert_close(position[0], torch.tensor(REWARPED_BODIES, dtype=torch.float64), rtol=0, atol=2e-4)


def test_the_halves_mirror_and_the_reward_is_the_relative_drop_of_their_distance():
    env = E.make("hand_flip", num_envs=2, seed=1, **SMALL)
    td = env.reset()
    q = env.observed(td["x"])
    mirrored = q[:, 8:] * torch.tensor([1.0, 1.0, -1.0])
    torch.testing.assert_close(q[:, :8, [0, 1]], mirrored[..., [0, 1]])  # same x, y; z mirrored about the centre
    td["action"] = torch.zeros(2, 24)
    first = env.step(td)["next"]
    torch.testing.assert_close(first["reward"], torch.zeros(2, 1))
    torch.testing.assert_close(first["start_distance"], env.pair_distance(first["particle_q"]))
    first["action"] = torch.ones(2, 24)
    second = env.step(first)["next"]
    d0, d = first["start_distance"], env.pair_distance(second["particle_q"])
    torch.testing.assert_close(second["reward"], ((d0 - d) / d0).clamp(-1, 1))


def test_joints_move_by_the_scaled_action_and_stop_at_their_limits():
    env = E.make("hand_flip", num_envs=1, seed=0, **SMALL)
    td = env.reset()
    start = td["joint_q"].clone()
    action = torch.linspace(-1, 1, 24)[None]
    td["action"] = action
    moved = env.step(td)["next"]["joint_q"]
    expected = torch.minimum(torch.maximum(start + ACTION_SCALE * action, env.hand.lower), env.hand.upper)
    torch.testing.assert_close(moved, expected)
    torch.testing.assert_close(start[0], torch.tensor(START_POSE))
    td = env.reset()
    for _ in range(80):  # far beyond any limit
        td["action"] = torch.ones(1, 24)
        td = env.step_mdp(env.step(td))
    torch.testing.assert_close(td["joint_q"][0], env.hand.upper)


def test_partial_reset_keeps_the_others():
    env = E.make("hand_flip", num_envs=2, seed=3, **SMALL)
    td = env.reset()
    td["action"] = torch.ones(2, 24)
    td = env.step_mdp(env.step(td))
    td["_reset"] = torch.tensor([[True], [False]])
    again = env.reset(td)
    torch.testing.assert_close(again["x"][1:], td["x"][1:])
    torch.testing.assert_close(again["joint_q"][0], torch.tensor(START_POSE))
    assert again["step_count"][0].item() == 0 and again["step_count"][1].item() == 1


def test_rollout_gradient_matches_central_finite_differences():
    """Two steps with the dough resting on the palm, float64, d(pair distances + particle heights)/d(actions). (Not the
    reward: its d₀ is a constant for gradients, as in Rewarped, while finite differences move it.)"""
    env = E.make("hand_flip", num_envs=1, seed=2, dtype=torch.float64, **{**SMALL, "grid_size": 32, "dt": 2e-4})
    td0 = env.reset()
    position, _ = env.shape_poses(td0["joint_q"])
    palm = position[0, 1]  # C_palm0
    td0["x"] = td0["x"] - td0["x"].mean(1, keepdim=True) + palm + torch.tensor([0.0, 0.03, 0.0], dtype=torch.float64)
    weights = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(actions):
        td, total = td0, 0.0
        for a in actions:
            td = td.clone(False).set("action", a[None])
            td = env.step(td)["next"]
            total = total + env.pair_distance(td["particle_q"]).sum() + (td["x"][0, :, 1] * weights).sum()
        return total

    actions = 0.5 * torch.randn(2, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    direction = torch.randn(actions.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    check_directional_derivative(loss, [actions.detach()], [direction], eps=(1e-6, 1e-5), rtol=1e-4)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown option"):
        E.make("hand_flip", num_envs=1, stiffness=3.0)
    with pytest.raises(ValueError, match="unknown goal"):
        E.make("hand_flip", num_envs=1, goal="lift")
    with pytest.raises(ValueError, match="particles must be a multiple of 4"):
        E.make("hand_flip", num_envs=1, particles=30)
    env = E.make("hand_flip", num_envs=2, **SMALL)
    td = env.reset()
    td["action"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="action"):
        env.step(td)


@pytest.mark.parametrize("task", ["hand_flip", "rolling_flat", "fluid_move"])
def test_swept_poses_are_the_shape_poses_at_each_fraction(task):
    """The batched kinematics of a step (``KinematicToolEnv.swept_poses``: every substep boundary in one call) equals
    ``shape_poses`` at joint_q + t·move for each t, per env (float64; the MPM tasks share it)."""
    small = {"hand_flip": SMALL, "rolling_flat": dict(grid_size=16, lattice=(4, 4, 4), samples=16, substeps=4),
             "fluid_move": dict(grid_size=16, particles=64, samples=16, substeps=4)}[task]
    env = E.make(task, num_envs=3, seed=0, dtype=torch.float64, **small)
    gen = torch.Generator().manual_seed(0)
    joint_q = env.joint_start + 0.05 * torch.randn(3, env.action_dim, generator=gen, dtype=torch.float64)
    move = 0.05 * torch.randn(3, env.action_dim, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    position, rotation = env.swept_poses(t, joint_q, move)
    for k, fraction in enumerate(t.tolist()):
        expected = env.shape_poses(joint_q + fraction * move)
        torch.testing.assert_close(position[k], expected[0], rtol=0, atol=1e-15)
        torch.testing.assert_close(rotation[k], expected[1], rtol=0, atol=1e-15)
