"""What every tphys engine shares about gradients and tensor trees (public: ``rl`` may use it).

* ``twice_differentiable()``: inside, engines build graphs that support a second backward pass (fused
  nodes with hand-written backwards step aside for their autograd twins). Gauss-Newton products (PODS)
  differentiate a backward pass once more. ``twice_differentiable_requested()`` tells an engine whether
  it is inside.
* ``cast_tensor`` / ``map_tensors``: the tensor-tree helpers of the engines' NamedTuple models and states
  (``Model.to(device, dtype)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_TWICE_DIFFERENTIABLE: ContextVar[bool] = ContextVar("twice_differentiable", default=False)


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Inside, every engine builds graphs that support double backward (the fused nodes use their twins)."""
    token = _TWICE_DIFFERENTIABLE.set(True)
    try:
        yield
    finally:
        _TWICE_DIFFERENTIABLE.reset(token)


def twice_differentiable_requested() -> bool:
    """Whether the caller is inside ``twice_differentiable()`` (fused nodes must step aside)."""
    return _TWICE_DIFFERENTIABLE.get()


def cast_tensor(t, device, dtype: torch.dtype | None):
    """``t`` on ``device``; floating-point tensors also in ``dtype`` (None: keep); non-tensors unchanged."""
    if not isinstance(t, Tensor):
        return t
    if t.is_floating_point() and dtype is not None:
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def map_tensors(obj, fn: Callable):
    """``fn`` applied to every leaf of a tree of NamedTuples (a leaf: anything that is not a NamedTuple)."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*[map_tensors(getattr(obj, f), fn) for f in obj._fields])
    return fn(obj)
