"""Running observation normalization that lives inside the policy and critics.

TorchRL's ``VecNorm`` updates its statistics in place during the forward pass, which
breaks autograd through differentiable rollouts. ``ObservationNormalizer`` only reads its
statistics in ``forward``; ``update`` replaces the buffers out of place and is called by the
trainer between windows, after the backward pass. Its statistics are buffers, so they are
saved and restored with ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rl import distributed


class ObservationNormalizer(nn.Module):
    """``[..., D] -> [..., D]``: ``clamp((obs - mean) / sqrt(var + eps), -clip, clip)``.

    Statistics are kept in float64 (Chan's parallel update), cast to the input dtype on use. They stay
    float64 through ``module.to(dtype)`` / ``.float()`` (only a device move applies to them): a policy cast
    to float32 must not round the statistics a checkpoint restores.
    """

    STATISTICS = ("mean", "var", "count")

    def __init__(self, dim: int, eps: float = 1e-5, clip: float = 10.0):
        super().__init__()
        self.dim, self.eps, self.clip = dim, eps, clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        kept = {name: getattr(self, name) for name in self.STATISTICS}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            moved = getattr(self, name)
            setattr(self, name, old.to(device=moved.device) if moved.dtype != old.dtype else moved)
        return self

    def forward(self, obs: Tensor) -> Tensor:
        if obs.shape[-1] != self.dim:
            raise ValueError(f"ObservationNormalizer expects [..., {self.dim}] observations, got shape {tuple(obs.shape)}")
        mean = self.mean.to(obs.dtype)
        std = (self.var + self.eps).sqrt().to(obs.dtype)
        return ((obs - mean) / std).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        """Fold a batch ``[..., D]`` into the running statistics (out of place: safe for autograd)."""
        batch = obs.detach().reshape(-1, self.dim).to(torch.float64)
        finite = torch.isfinite(batch).all(dim=-1)
        batch = batch[finite]
        if distributed.is_distributed():  # every rank's batch: the statistics of the global batch, on every rank
            n, batch_mean, batch_var = global_moments(batch)
        else:
            n = batch.shape[0]
            batch_mean = batch.mean(0) if n else None
            batch_var = batch.var(0, unbiased=False) if n else None
        if n == 0:
            return
        total = self.count + n
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * (n / total)
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.mean = new_mean
        self.var = m2 / total
        self.count = total


def global_moments(batch: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(rows, mean [D], biased var [D])`` of every rank's ``batch [n_r, D]`` (float64) together: two all-reduces."""
    dim = batch.shape[1]
    first = distributed.all_reduce_sum(torch.cat([batch.sum(0), batch.new_tensor([batch.shape[0]])]))
    n = int(first[dim].item())
    if n == 0:
        return 0, batch.new_zeros(dim), batch.new_zeros(dim)
    mean = first[:dim] / n
    m2 = distributed.all_reduce_sum((batch - mean).square().sum(0))
    return n, mean, m2 / n
