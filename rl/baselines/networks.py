"""The baselines' networks: ``NormalizedMLP``, ``BoundedNormalParams`` and the builders the PPO and SAC recipes call
(``tanh_normal_actor``, ``state_value``, ``q_values``), each reading the ``algo`` keys it needs.

See ``rl/baselines/__init__.py`` for the design notes (why the normalizer is held by reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torch.distributions.utils import _sum_rightmost
from torchrl.envs import EnvBase
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator

from rl import distributed
from rl.builders import DTYPES, sizes
from rl.modules import MLP, ObservationNormalizer


class NormalizedMLP(nn.Module):
    """``(obs [..., D], *extra [..., E]) -> [..., out]``: ``MLP(cat(normalizer(obs), *extra))``.

    The normalizer is shared by reference and deliberately not a submodule (see the module
    docstring); its statistics are checkpointed by the trainer.
    """

    def __init__(self, obs_dim: int, out_dim: int, hidden: Sequence[int], act: str = "silu", layer_norm: bool = True,
                 extra_dim: int = 0, out_gain: float = 1.0, normalizer: ObservationNormalizer | None = None):
        super().__init__()
        self.obs_dim = obs_dim
        self.mlp = MLP(obs_dim + extra_dim, out_dim, hidden, act, layer_norm, out_gain=out_gain)
        object.__setattr__(self, "normalizer", normalizer)  # bypass nn.Module registration on purpose

    def forward(self, obs: Tensor, *extra: Tensor) -> Tensor:
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        return self.mlp(torch.cat([obs, *extra], dim=-1) if extra else obs)


class BoundedNormalParams(nn.Module):
    """``[..., 2A] -> (loc [..., A], scale [..., A])`` with ``log scale`` smoothly bounded to ``[lo, hi]``.

    ``log_scale = lo + (hi - lo) * (tanh(raw) + 1) / 2`` (as ``rl.modules.SquashedGaussianActor``):
    a ``NormalParamExtractor`` whose scale is state dependent and bounded, never cutting the gradient.
    """

    def __init__(self, log_std_bounds: Sequence[float]):
        super().__init__()
        lo, hi = float(log_std_bounds[0]), float(log_std_bounds[1])
        if not lo < hi:
            raise ValueError(f"log_std_bounds must be (low, high) with low < high, got {tuple(log_std_bounds)}")
        self.lo, self.hi = lo, hi

    def forward(self, out: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        log_scale = self.lo + 0.5 * (self.hi - self.lo) * (torch.tanh(raw) + 1.0)
        return loc, log_scale.exp()


class ShardedTanhNormal(TanhNormal):
    """TorchRL's ``TanhNormal`` whose reparameterized samples take their noise from ``rl.distributed.randn_like``: inside a
    data-parallel rollout (``sharded_noise``) the noise of all the global envs, sliced to this rank's, so a K-rank run
    explores as one process does; elsewhere exactly ``TanhNormal``'s samples."""

    def preimage(self, sample_shape) -> Tensor:
        """The pre-tanh Gaussian sample ``loc + scale * eps`` (``eps`` through ``rl.distributed.randn_like``)."""
        if tuple(sample_shape) or distributed.noise_shard() is None:
            return self.base_dist.rsample(torch.Size(sample_shape))
        normal = self.base_dist.base_dist  # Independent(Normal(loc, scale))
        return normal.loc + distributed.randn_like(normal.loc) * normal.scale

    def rsample(self, sample_shape=()):
        x = self.preimage(sample_shape)
        for transform in self.transforms:
            x = transform(x)
        return x

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        """``TanhNormal.rsample_and_log_prob`` (the sample and the score of its exact pre-tanh value), noise as above."""
        preimage = self.preimage(sample_shape)
        transform = self.transforms[0]
        sample = transform(preimage)
        log_prob = self.base_dist.log_prob(preimage) - _sum_rightmost(transform.log_abs_det_jacobian(preimage, sample),
                                                                      len(self.event_shape))
        return sample, log_prob


def tanh_normal_actor(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> ProbabilisticActor:
    """``ProbabilisticActor`` writing ``loc``, ``scale``, ``action`` in (-1, 1) and ``action_log_prob``.

    Deterministic mode (``ExplorationType.DETERMINISTIC``) gives ``tanh(loc)``; random mode a sample.
    """
    algo = cfg.algo
    obs_dim, action_dim = sizes(env)
    net = nn.Sequential(
        NormalizedMLP(obs_dim, 2 * action_dim, tuple(algo.actor_hidden), algo.activation, bool(algo.layer_norm),
                      out_gain=0.01, normalizer=normalizer),
        BoundedNormalParams(tuple(algo.log_std_bounds)),
    ).to(DTYPES[cfg.dtype])
    params = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(params, in_keys=["loc", "scale"], distribution_class=ShardedTanhNormal,
                              distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True)


def state_value(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> ValueOperator:
    """``observation -> state_value``: PPO's critic."""
    algo = cfg.algo
    net = NormalizedMLP(sizes(env)[0], 1, tuple(algo.critic_hidden), algo.activation, bool(algo.layer_norm), normalizer=normalizer)
    return ValueOperator(net.to(DTYPES[cfg.dtype]), in_keys=["observation"])


def q_values(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> list[ValueOperator]:
    """``algo.num_critics`` independent ``(observation, action) -> state_action_value`` nets: SAC's Q ensemble.

    A list: a single module would be copied and re-initialised uniformly by TorchRL's ``SACLoss``.
    """
    algo = cfg.algo
    obs_dim, action_dim = sizes(env)
    return [
        ValueOperator(NormalizedMLP(obs_dim, 1, tuple(algo.critic_hidden), algo.activation, bool(algo.layer_norm),
                                    extra_dim=action_dim, normalizer=normalizer).to(DTYPES[cfg.dtype]),
                      in_keys=["observation", "action"])
        for _ in range(int(algo.num_critics))
    ]
