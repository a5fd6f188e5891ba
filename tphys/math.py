"""Small differentiable helpers shared by the engines."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_norm(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Euclidean norm along ``dim`` whose gradient stays finite at zero.

    Below ``eps`` the squared norm is clamped, so the norm (and its gradient) of a
    zero vector is finite instead of NaN.
    """
    return torch.sqrt(torch.clamp_min((x * x).sum(dim), eps * eps))
