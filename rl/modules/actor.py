"""Tanh-squashed Gaussian policy as a TensorDict module (SAPO, SHAC and APG actors).

``a = tanh(u)``, ``u ~ N(mu(s), sigma^2)``. SAPO (and SAC) use a state-dependent
``log sigma(s)`` bounded to ``[-5, 2]``; SHAC and APG a state-independent ``log sigma``
parameter (initialised at -1). The bound is smooth (``lo + (hi - lo) * (tanh(x) + 1) / 2``)
so that it never cuts the gradient, as SAC implementations do.

Exploration follows TorchRL: under ``set_exploration_type(ExplorationType.RANDOM)`` the
action is a reparameterised sample (gradients flow through ``u = mu + sigma * eps``);
otherwise it is the deterministic ``tanh(mu)``.

Writes ``action [..., A]`` and ``action_log_prob [...]``, the log density of the squashed
sample, ``log N(u; mu, sigma) - sum log(1 - tanh(u)^2)``; ``-action_log_prob`` is the
one-sample Monte-Carlo entropy estimate SAPO uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, exploration_type

from rl.distributed import randn_like  # torch.randn_like; the global envs' noise, sliced, in a data-parallel rollout
from rl.modules.mlp import MLP, check_observations
from rl.modules.normalizer import ObservationNormalizer

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def squashed_gaussian_log_prob(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """``[..., A] x3 -> [...]``: log density of ``tanh(u)`` for ``u ~ N(mu, exp(log_std)^2)``.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, exact and stable for large |u|.
    """
    z = (u - mu) * torch.exp(-log_std)
    gauss = -0.5 * z.square() - log_std - LOG_SQRT_2PI
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gauss - log_det).sum(-1)


class SquashedGaussianActor(TensorDictModuleBase):
    """Policy ``observation [..., D] -> action [..., A]`` in (-1, 1).

    Args:
        obs_dim, action_dim: sizes.
        hidden, act, layer_norm: the MLP trunk (see ``rl.modules.MLP``).
        state_dependent_std: SAPO's ``log sigma(s)`` head (True) or SHAC's parameter (False).
        log_std_bounds: smooth bounds of ``log sigma`` (state-dependent case).
        init_log_std: initial ``log sigma`` of the state-independent variant.
        normalizer: optional ``ObservationNormalizer`` applied to the observation first
            (shared with the critics; updated by the trainer, never in forward).
        encoder: optional module between the (normalized) observation and the MLP, e.g. a
            ``PointCloudEncoder``; it needs an ``output_dim`` attribute.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 128), act: str = "silu",
                 layer_norm: bool = True, state_dependent_std: bool = True, log_std_bounds: Sequence[float] = (-5.0, 2.0),
                 init_log_std: float = -1.0, normalizer: ObservationNormalizer | None = None,
                 observation_key: str = "observation", action_key: str = "action", encoder: nn.Module | None = None):
        super().__init__()
        self.in_keys = [observation_key]
        self.out_keys = [action_key, "action_log_prob"]
        self.observation_key, self.action_key = observation_key, action_key
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.state_dependent_std = state_dependent_std
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        if not self.log_std_bounds[0] < self.log_std_bounds[1]:
            raise ValueError(f"log_std_bounds must be (low, high) with low < high, got {tuple(log_std_bounds)}")
        out = 2 * action_dim if state_dependent_std else action_dim
        self.encoder = encoder
        self.net = MLP(obs_dim if encoder is None else encoder.output_dim, out, hidden, act, layer_norm, out_gain=0.01)
        if not state_dependent_std:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.normalizer = normalizer

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [..., D] -> (mu [..., A], log_std [..., A])`` of the pre-tanh Gaussian."""
        check_observations("actor", obs, self.obs_dim, self)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        out = self.net(obs if self.encoder is None else self.encoder(obs))
        if self.state_dependent_std:
            mu, raw = out.chunk(2, dim=-1)
            lo, hi = self.log_std_bounds
            log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1.0)
        else:
            mu = out
            log_std = self.log_std.to(out.dtype).expand_as(mu)
        return mu, log_std

    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """``obs [..., D] -> (action [..., A], log_prob [...])``; reparameterised unless deterministic."""
        mu, log_std = self.distribution(obs)
        u = mu if deterministic else mu + torch.exp(log_std) * randn_like(mu)
        return torch.tanh(u), squashed_gaussian_log_prob(u, mu, log_std)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        deterministic = exploration_type() != ExplorationType.RANDOM
        action, log_prob = self.sample(tensordict.get(self.observation_key), deterministic=deterministic)
        tensordict.set(self.action_key, action)
        tensordict.set("action_log_prob", log_prob)
        return tensordict
