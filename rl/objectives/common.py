"""Shared machinery of the losses: what a trainer asks of a loss (``Trainable``) and the first-order
losses' differentiable window rollout.

A window is H env steps rolled out *with* the autograd graph, from the policy parameters
through every simulator substep to every reward. TorchRL collectors run under no_grad,
so the rollout happens here, inside the loss, through ``EnvBase.step_and_maybe_reset``
(what ``env.rollout`` does, but also returning the state the next window starts from).
Episodes that end inside the window are reset by the env; the reset state carries no
graph, so the gradient never crosses an episode boundary. The next window's start state
is detached, so the graph is also cut between windows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators


def differentiable_rollout(env: EnvBase, policy: TensorDictModuleBase, start: TensorDictBase, steps: int,
                           stochastic: bool = True) -> tuple[TensorDictBase, TensorDictBase]:
    """Roll ``policy`` for ``steps`` steps from ``start``, keeping the graph.

    Returns ``(trajectory [*batch, steps], next_start [*batch])``: the trajectory is laid out as
    ``env.rollout`` lays it out (``("next", "reward")`` etc.); ``next_start`` is the state the
    following step would start from (reset where an episode ended), not detached.
    """
    steps_out = []
    td = start
    mode = ExplorationType.RANDOM if stochastic else ExplorationType.DETERMINISTIC
    with set_exploration_type(mode):
        for _ in range(steps):
            td = policy(td)
            td, td_next = env.step_and_maybe_reset(td)
            steps_out.append(td)
            td = td_next
    return torch.stack(steps_out, dim=len(env.batch_size)), td


@contextlib.contextmanager
def frozen(module: nn.Module | None):
    """Hold ``module``'s parameters out of autograd (gradients still flow through its inputs)."""
    if module is None:
        yield
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """``module``'s parameters that take gradients (frozen ones are left out of its optimizer)."""
    return [p for p in module.parameters() if p.requires_grad]


class Trainable:
    """What a trainer asks of a loss, for every algorithm (mixed into the ``LossModule``).

    * ``parameter_groups()``: ``{"actor": [...], "critic": [...], "alpha": [...]}``, the parameters each
      optimizer steps; the trainer builds one optimizer per group, with that group's learning rate
      (``<group>_lr`` of its config). A loss without a critic or a temperature has no such group.
    * ``after_update()``: what follows an update once every optimizer has stepped (a target network's
      Polyak update); nothing by default.
    """

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": trainable(self.actor)}

    def after_update(self) -> None:
        pass


class FirstOrderLoss(Trainable, LossModule):
    """Base of APG, SHAC, SAPO and TrajOpt: a loss that rolls the env out inside ``forward``.

    ``forward(start_td)`` takes the batch of env states a window starts from and returns a
    TensorDict with ``loss_actor`` (and ``loss_alpha`` for SAPO), diagnostics, and two
    detached sub-tensordicts: ``next_state`` (where the next window starts) and
    ``critic_batch`` (observations and value targets for ``critic_loss``, losses with a critic).
    A loss with a critic declares a ``"critic"`` parameter group; the trainer then fits ``critic_loss``.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads (remap with ``set_keys``)."""

        observation: str = "observation"
        action: str = "action"
        log_prob: str = "action_log_prob"
        reward: str = "reward"
        done: str = "done"
        terminated: str = "terminated"
        value_target: str = "value_target"

    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TDLambda
    has_critic = False

    def __init__(self, env: EnvBase, actor: TensorDictModuleBase, horizon: int, gamma: float = 0.99):
        super().__init__()
        max_steps = getattr(env, "horizon", None)
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if max_steps is not None and horizon > max_steps:
            raise ValueError(f"horizon {horizon} is longer than the env's episode of {max_steps} steps")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.env = env
        self.actor = actor
        self.horizon = horizon
        self.gamma = float(gamma)
        self.lmbda = 0.95

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> None:
        """Only TD(lambda) is supported (``gamma``, ``lmbda``), as SHAC and SAPO use."""
        value_type = self.default_value_estimator if value_type is None else value_type
        if value_type != ValueEstimators.TDLambda:
            raise NotImplementedError(f"{type(self).__name__} supports ValueEstimators.TDLambda only, got {value_type}")
        unknown = set(hyperparams) - {"gamma", "lmbda"}
        if unknown:
            raise ValueError(f"unknown value-estimator options {sorted(unknown)}; valid: gamma, lmbda")
        self.gamma = float(hyperparams.get("gamma", self.gamma))
        self.lmbda = float(hyperparams.get("lmbda", self.lmbda))
        self.value_type = value_type

    # -------------------------------------------------------------- window pieces
    def rollout(self, start: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """One differentiable window of ``self.horizon`` stochastic steps (see ``differentiable_rollout``)."""
        return differentiable_rollout(self.env, self.actor, start, self.horizon, stochastic=True)

    def window_tensors(self, traj: TensorDictBase) -> dict[str, Tensor]:
        """``[N, H]`` rewards / done / terminated, ``[N, H, D]`` next observations of a trajectory."""
        keys = self.tensor_keys
        return {
            "reward": traj.get(("next", keys.reward)).squeeze(-1),
            "done": traj.get(("next", keys.done)).squeeze(-1),
            "terminated": traj.get(("next", keys.terminated)).squeeze(-1),
            "next_observation": traj.get(("next", keys.observation)),
        }

    @staticmethod
    def detach_state(td: TensorDictBase) -> TensorDictBase:
        """The next window's start: detached, without the ``next`` entry."""
        return td.exclude("next").detach()

    def critic_loss(self, batch: TensorDictBase) -> TensorDict:
        """``loss_critic`` of a critic batch: ``critic_fit_error(*critic_data(batch))``."""
        return TensorDict(loss_critic=self.critic_fit_error(*self.critic_data(batch)), batch_size=[])

    def critic_data(self, batch: TensorDictBase, normalizer=None) -> tuple[Tensor, Tensor]:
        """``(inputs [B, ...], targets [B])`` of a critic batch, computed once per window; the trainer's minibatches
        index their rows. ``normalizer``: statistics to normalize with in place of the live ones."""
        raise NotImplementedError(f"{type(self).__name__} has no critic")

    def critic_fit_error(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """The critic's scalar loss on rows of ``critic_data``. (Not named ``*_loss``: TorchRL wraps a loss's public
        ``*loss`` methods in ``set_exploration_type``, whose setting is process-wide, and the critic's mini-epochs may
        run on another thread beside a stochastic rollout: ``rl.trainers.critic_worker``.)"""
        raise NotImplementedError(f"{type(self).__name__} has no critic")
