"""Autograd vs central finite differences, float64, random small configurations of every env.

The loss is the summed reward of a short rollout through the TorchRL env (``env.step``);
derivatives are checked along random directions in action space and in initial-state space
(positions and velocities of every particle), for both integrators.
"""

import pytest
import torch
from helpers import summed_reward
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.envs import pods

ENV_NAMES = sorted(E.list_envs())
# Physical parameters drawn per example (scaled from their defaults) to vary the configuration.
VARIED = {
    "pendulum2d": (pods.PENDULUM_DEFAULTS, ("stiffness", "mass", "length")),
    "pendulum3d": (pods.PENDULUM_DEFAULTS, ("stiffness", "mass", "length")),
    "double_pendulum3d": (pods.DOUBLE_DEFAULTS, ("stiffness", "link_stiffness", "mass")),
    "cable_payload2d": (pods.PAYLOAD_DEFAULTS, ("stiffness", "frame_stiffness", "mass")),
    "rope3d": (pods.ROPE_DEFAULTS, ("stiffness", "bending_stiffness", "mass")),
    "cloth": (pods.CLOTH_DEFAULTS, ("mu", "grip_stiffness", "mass")),
}
EPS = 1e-6
RTOL = 1e-5


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


def _central_difference(loss, leaves, directions, eps):
    with torch.no_grad():
        plus = loss(*[t + eps * d for t, d in zip(leaves, directions)]).item()
        minus = loss(*[t - eps * d for t, d in zip(leaves, directions)]).item()
    return (plus - minus) / (2 * eps)


def _richardson(loss, leaves, directions):
    """Central differences at EPS and EPS/2 combined to cancel the O(eps²) term."""
    coarse = _central_difference(loss, leaves, directions, EPS)
    fine = _central_difference(loss, leaves, directions, EPS / 2)
    return (4 * fine - coarse) / 3


def _check_direction(loss, leaves, directions):
    leaves = [t.clone().requires_grad_() for t in leaves]
    grads = torch.autograd.grad(loss(*leaves), leaves)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions)).item()
    numeric = _richardson(loss, leaves, directions)
    # A directional derivative near zero is measured against the Cauchy-Schwarz bound
    # |g|·|d| (times 1e-3), not against itself: there FD noise would dominate any ratio.
    bound = sum(g.norm() * d.norm() for g, d in zip(grads, directions)).item()
    scale = max(abs(analytic), abs(numeric), 1e-3 * bound, 1e-12)
    assert abs(analytic - numeric) / scale < RTOL, f"autograd {analytic:.12e} vs finite differences {numeric:.12e}"
    assert all(torch.isfinite(g).all() for g in grads)


CASES = [(n, i) for n in ENV_NAMES for i in ("semi_implicit", "bdf2")]


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

        _check_direction(loss_of_actions, [actions], [torch.randn(shape, generator=gen, dtype=torch.float64)])
        state = [td0["x"], td0["v"]]
        _check_direction(loss_of_state, state, [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in state])

    check()
