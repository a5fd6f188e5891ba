"""Short-horizon returns and TD(lambda) targets over a window of H steps, with episode ends.

All functions take ``[N, H]`` tensors, time last-but-none (env batch first, as TorchRL
rollouts are laid out):

    rewards      r_t                    (already entropy-augmented for SAPO)
    next_values  V(s_{t+1}) to bootstrap from after step t: the critic of the *terminal*
                 observation when the episode was truncated at t, 0 when it terminated
                 (use ``bootstrap_values``), V(next state) otherwise
    done         episode ended at step t (terminated or truncated)

An episode end inside the window closes that segment with its bootstrap value; the next
segment starts with discount 1 (its state came from a reset, whose graph is already cut).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bootstrap_values(values: Tensor, terminated: Tensor) -> Tensor:
    """``values [N, H]`` of next observations, zeroed where the episode terminated."""
    return torch.where(terminated, torch.zeros_like(values), values)


def window_return(rewards: Tensor, next_values: Tensor, done: Tensor, gamma: float) -> Tensor:
    """``[N]``: sum over the window's episode segments of ``sum_l gamma^l r_l + gamma^k V(s_end)``.

    For a window without episode end this is Eq. 9 / Eq. 20: ``R_{0:H} + gamma^H V(s_H)``.
    Pass zeros as ``next_values`` for APG / TrajOpt (no critic).
    """
    _check(rewards, next_values, done)
    num_envs, horizon = rewards.shape
    discount = torch.ones(num_envs, dtype=rewards.dtype, device=rewards.device)
    total = torch.zeros_like(discount)
    for t in range(horizon):
        total = total + discount * rewards[:, t]
        ends = done[:, t] | (t == horizon - 1)
        total = total + torch.where(ends, discount * gamma * next_values[:, t], torch.zeros_like(total))
        discount = torch.where(done[:, t], torch.ones_like(discount), discount * gamma)
    return total


def td_lambda_targets(rewards: Tensor, next_values: Tensor, done: Tensor, gamma: float, lmbda: float) -> Tensor:
    """``[N, H]``: lambda-returns ``G^lambda_t`` of Eq. 19, truncated at the window and episode ends.

    Backward recursion ``G_t = r_t + gamma ((1 - lambda) V_{t+1} + lambda G_{t+1})`` with
    ``G_{t+1} := V_{t+1}`` after the last step of the window or of an episode; this equals
    Eq. 19's weighted average of the k-step returns (tested against it).
    """
    _check(rewards, next_values, done)
    horizon = rewards.shape[1]
    targets = torch.empty_like(rewards)
    following = next_values[:, -1]
    for t in reversed(range(horizon)):
        continuation = torch.where(done[:, t], next_values[:, t], following) if t < horizon - 1 else next_values[:, t]
        targets[:, t] = rewards[:, t] + gamma * ((1.0 - lmbda) * next_values[:, t] + lmbda * continuation)
        following = targets[:, t]
    return targets


def _check(rewards: Tensor, next_values: Tensor, done: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, H], got shape {tuple(rewards.shape)}")
    if next_values.shape != rewards.shape or done.shape != rewards.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, next_values {tuple(next_values.shape)} and done {tuple(done.shape)} must share [N, H]"
        )
    if done.dtype != torch.bool:
        raise TypeError(f"done must be a bool tensor, got {done.dtype}")
