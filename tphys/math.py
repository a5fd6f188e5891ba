"""Small differentiable helpers shared by the engines."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_norm(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Euclidean norm along ``dim`` whose gradient stays finite at zero.

    ``torch.linalg.vector_norm`` returns a zero (not NaN) gradient at the zero vector; the
    clamp keeps divisions by the norm finite there too.
    """
    return torch.linalg.vector_norm(x, dim=dim).clamp_min(eps)
