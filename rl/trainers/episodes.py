"""Episode-return bookkeeping shared by the first-order and the TorchRL-baseline trainers."""

from __future__ import annotations

from torch import Tensor


def track_episode_returns(running: Tensor, recent: list[float], reward: Tensor, done: Tensor, keep: int = 1000) -> list[float]:
    """Fold ``reward [N, T]`` into ``running [N]`` (in place); returns of episodes that end (``done [N, T]``)
    are appended to ``recent`` and their running sums restart. Returns ``recent`` trimmed to ``keep``."""
    for t in range(reward.shape[1]):
        running += reward[:, t]
        ended = done[:, t]
        if ended.any():
            recent.extend(running[ended].tolist())
            running[ended] = 0.0
    return recent[-keep:]
