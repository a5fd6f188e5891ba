"""What every tphys engine shares about gradients and tensor trees (public: ``rl`` may use it).

* ``twice_differentiable()``: inside, engines build graphs that support a second backward pass (fused
  nodes with hand-written backwards step aside for their autograd twins). Gauss-Newton products (PODS)
  differentiate a backward pass once more. ``twice_differentiable_requested()`` tells an engine whether
  it is inside.
* ``cast_tensor`` / ``map_tensors``: the tensor-tree helpers of the engines' NamedTuple models and states
  (``Model.to(device, dtype)``).
* ``recompute``: one option, one vocabulary, one check for every engine and env that trades backward
  time for memory. ``RECOMPUTE`` = ("none", "step", "substep"); ``check_recompute`` also takes the
  aliases True -> "step" and False -> "none" and rejects anything else with one message.
  ``run_substeps`` runs a frame's substeps in the chosen mode:

      "none"      a plain loop: autograd keeps every substep's intermediates;
      "step"      one checkpoint around the frame: backward keeps only the frame's inputs and reruns
                  its substeps once (holding one frame's intermediates while it differentiates them);
      "substep"   one checkpoint per substep: backward keeps each substep's inputs and reruns each
                  substep once.

  The results and gradients of the three modes agree to round-off (they run the same ops); without
  grad mode every mode is the plain loop. Checkpoints are torch's non-reentrant ones, so tensors a
  substep reads from its closure (model constants) get gradients in every mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

RECOMPUTE = ("none", "step", "substep")

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


def check_recompute(value) -> str:
    """``value`` as one of ``RECOMPUTE``: "none", "step" or "substep" as given, True -> "step", False -> "none".

    Raises ValueError (the same message for every engine and env) for anything else.
    """
    if value is True:
        return "step"
    if value is False:
        return "none"
    if isinstance(value, str) and value in RECOMPUTE:
        return value
    raise ValueError(f"recompute must be one of 'none', 'step', 'substep' (or True/False), got {value!r}")


def run_substeps(substep: Callable, carry: tuple, substeps: int, recompute="none") -> tuple:
    """``carry`` after ``substeps`` calls ``carry = substep(k, carry)``, k = 0, 1, ..., in the ``recompute`` mode
    (see the module docstring; checked by ``check_recompute``).

    Args:
        substep: ``(k, carry) -> carry``, a pure function of the substep index and a tuple of tensors (the same
            structure in and out).
        carry: tuple of tensors, the frame's state (and whatever a substep hands to the next).
    """
    mode = check_recompute(recompute)

    def frame(carry):
        for k in range(substeps):
            carry = substep(k, carry)
        return carry

    if mode == "none" or not torch.is_grad_enabled():
        return frame(carry)
    if mode == "step":
        return checkpoint(frame, carry, use_reentrant=False)
    for k in range(substeps):
        carry = checkpoint(substep, k, carry, use_reentrant=False)
    return carry
