"""State-value critics: one MLP, or an ensemble of C of them (SAPO uses C = 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from rl.modules.mlp import MLP, check_observations
from rl.modules.normalizer import ObservationNormalizer


class ValueEnsemble(nn.Module):
    """``obs [..., D] -> values [..., C]``: C independent MLP critics V_i(s).

    ``num_critics=1`` is SHAC's single critic. The normalizer (shared with the actor) is
    applied first; it holds no parameters, so critic optimizers never touch it. ``encoder``: an
    optional factory of input encoders (e.g. ``PointCloudEncoder``); each critic gets its own.
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 128), act: str = "silu", layer_norm: bool = True,
                 num_critics: int = 2, normalizer: ObservationNormalizer | None = None, encoder: Callable[[], nn.Module] | None = None):
        super().__init__()
        if num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {num_critics}")
        self.obs_dim, self.num_critics = obs_dim, num_critics
        self.critics = nn.ModuleList(_critic(obs_dim, hidden, act, layer_norm, encoder) for _ in range(num_critics))
        self.normalizer = normalizer

    def forward(self, obs: Tensor) -> Tensor:
        return self.values(self.inputs(obs))

    def inputs(self, obs: Tensor, normalizer: ObservationNormalizer | None = None) -> Tensor:
        """``obs [..., D]`` -> the critics' inputs ``[..., D]`` (normalized). Row by row, so the inputs of a batch can be
        computed once and indexed: ``values(inputs(obs)[rows]) == forward(obs[rows])`` exactly. ``normalizer``: other
        statistics in place of the live ones (a copy already updated with a window the live ones have not seen yet)."""
        check_observations("critic", obs, self.obs_dim, self)
        if self.normalizer is None:
            return obs
        return (self.normalizer if normalizer is None else normalizer)(obs)

    def values(self, inputs: Tensor) -> Tensor:
        """``inputs [..., D]`` (from ``inputs``) -> values ``[..., C]``."""
        return torch.cat([critic(inputs) for critic in self.critics], dim=-1)


def _critic(obs_dim: int, hidden: Sequence[int], act: str, layer_norm: bool, encoder: Callable[[], nn.Module] | None) -> nn.Module:
    if encoder is None:
        return MLP(obs_dim, 1, hidden, act, layer_norm)
    front = encoder()
    return nn.Sequential(front, MLP(front.output_dim, 1, hidden, act, layer_norm))
