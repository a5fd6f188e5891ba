"""Autograd vs central finite differences, float64, random small configurations of every env.

The loss is the summed reward of a short rollout through the TorchRL env (``env.step``);
derivatives are checked along random directions in action space and in initial-state space
(positions and velocities of every particle), for both integrators.
"""

import pytest
import torch
from helpers import check_directional_derivative, summed_reward
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.envs import payload_tasks

# Physical parameters drawn per example (scaled from their defaults) to vary the configuration.
VARIED = {
    "pendulum2d": (payload_tasks.PENDULUM_DEFAULTS, ("stiffness", "mass", "length")),
    "pendulum3d": (payload_tasks.PENDULUM_DEFAULTS, ("stiffness", "mass", "length")),
    "double_pendulum3d": (payload_tasks.DOUBLE_DEFAULTS, ("stiffness", "link_stiffness", "mass")),
    "cable_payload2d": (payload_tasks.PAYLOAD_DEFAULTS, ("stiffness", "frame_stiffness", "mass")),
    "rope3d": (payload_tasks.ROPE_DEFAULTS, ("stiffness", "bending_stiffness", "mass")),
    "cloth": (payload_tasks.CLOTH_DEFAULTS, ("mu", "grip_stiffness", "mass")),
}


@st.composite
def configurations(draw, name, integrator):
    defaults, keys = VARIED[name]
    overrides = {k: defaults[k] * draw(st.floats(0.5, 2.0)) for k in keys}
    goal = draw(st.sampled_from(E.GOALS))
    return dict(
        num_envs=draw(st.integers(1, 2)),
        steps=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
        action_scale=draw(st.floats(0.1, 1.0)),
        goal=goal,
        overrides=overrides,
    )


# Stiff links (k/m up to ~1e5 s⁻²) make internal forces far larger than the rewards: at a step of 1e-6
# the rounding noise of the rollouts reached 2e-5 of the derivative (double pendulum), while at 1e-5 a
# cable near its smoothed slack kink erred by 3e-4 (3-D pendulum). A BDF2 step of a buckling cloth has several
# roots, and which one the restarted solve finds can switch within 1e-6 of the state (cloth, 1 env, 1 step, seed
# 44196, mu 347, grip_stiffness 353, mass 0.0043, direction in state space: the summed reward jumps by 1.0 at
# +1e-6 and at -1e-5, so both estimates came out 1e3x autograd's 490.94, which central differences at 1e-7 and
# 1e-8 give to 9 digits): 1e-7 is tried last, after the other two.
EPS = (1e-6, 1e-5, 1e-7)
CASES = [(n, i) for n in sorted(VARIED) for i in ("semi_implicit", "bdf2")]


@pytest.mark.parametrize("name, integrator", CASES)
def test_rollout_gradient_matches_finite_differences(name, integrator):
    @settings(max_examples=4)
    @given(config=configurations(name, integrator))
    def check(config):
        n = config["num_envs"]
        env = E.make(
            name, num_envs=n, dtype=torch.float64, seed=config["seed"], goal=config["goal"],
            integrator=integrator, newton_tol=1e-13, **config["overrides"],
        )  # fmt: skip
        td0 = env.reset()
        gen = torch.Generator().manual_seed(config["seed"])
        shape = (config["steps"], n, env.action_dim)
        actions = config["action_scale"] * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
        actions = actions.clamp(-0.95, 0.95)  # stay off the clamp's kink at +-1

        def loss_of_actions(a):
            return summed_reward(env, td0, a)

        def loss_of_state(x, v):
            return summed_reward(env, td0.clone().update({"x": x, "v": v}), actions)

        check_directional_derivative(loss_of_actions, [actions], [torch.randn(shape, generator=gen, dtype=torch.float64)], eps=EPS)
        state = [td0["x"], td0["v"]]
        directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in state]
        check_directional_derivative(loss_of_state, state, directions, eps=EPS)

    check()
