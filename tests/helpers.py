"""Test utilities: differentiable rollouts of tphys envs from explicit actions."""

from __future__ import annotations

from torchrl.envs.utils import step_mdp


def summed_reward(env, td0, actions):
    """Sum of rewards of a rollout of ``actions`` [T, N, A] from the state in ``td0``."""
    td = td0
    total = 0.0
    for action in actions:
        td = td.clone(False).set("action", action)
        td = env.step(td)
        total = total + td["next", "reward"].sum()
        td = step_mdp(td)
    return total


def no_damping(name: str) -> dict:
    """Overrides that switch off every dissipative force of env ``name`` except drag."""
    if name == "cloth":
        return dict(spring_damping=0.0, contact_damping=0.0, friction=0.0)
    return dict(damping=0.0)
