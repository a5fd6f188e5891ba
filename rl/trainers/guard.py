"""What the trainers check after every update, shared by the first-order, PODS and baseline loops.

* ``nonfinite_state``: the names of parameters, buffers and optimizer-state tensors holding NaN/inf
  (an absurd learning rate makes weights or Adam's moments non-finite one step before anything fails).
* ``Snapshot``: a copy of modules and optimizers taken before an update, restored when the update is
  dropped (``on_nonfinite=skip``), so a skipped update leaves no trace.
* ``StallMonitor``: a policy that stops learning — actor gradient exactly zero, or a loss grown by
  orders of magnitude over its early level, for ``patience`` iterations in a row — gets one warning
  (logged and on the progress bar) until it recovers.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def nonfinite_state(modules: dict[str, nn.Module | torch.Tensor | None],
                    optimizers: dict[str, torch.optim.Optimizer | None]) -> list[str]:
    """Names (``actor.mlp.0.weight``, ``actor_opt.state[3].exp_avg``) of every non-finite tensor."""
    bad = []
    for prefix, module in modules.items():
        if module is None:
            continue
        if isinstance(module, torch.Tensor):
            if module.is_floating_point() and not torch.isfinite(module.detach()).all():
                bad.append(prefix)
            continue
        for name, t in (*module.named_parameters(), *module.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t.detach()).all():
                bad.append(f"{prefix}.{name}")
    for prefix, opt in optimizers.items():
        if opt is None:
            continue
        for i, state in enumerate(opt.state.values()):
            for key, t in state.items():
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
                    bad.append(f"{prefix}.state[{i}].{key}")
    return bad


def describe(names: list[str], limit: int = 8) -> str:
    return str(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class Snapshot:
    """Copies of ``objects``' state dicts (modules, optimizers, tensors), restorable in place."""

    def __init__(self, objects: dict[str, object]):
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.saved = {}
        for name, obj in self.objects.items():
            if isinstance(obj, torch.Tensor):
                self.saved[name] = obj.detach().clone()
            else:
                self.saved[name] = copy.deepcopy(obj.state_dict())

    def restore(self) -> None:
        for name, obj in self.objects.items():
            if isinstance(obj, torch.Tensor):
                with torch.no_grad():
                    obj.copy_(self.saved[name])
            else:
                obj.load_state_dict(self.saved[name])


class StallMonitor:
    """Watches (actor gradient norm, loss) per iteration; ``update`` returns a warning once a stall has lasted
    ``patience`` iterations (None otherwise), and again only after the policy has recovered in between.

    A stall: the gradient norm is exactly 0, or ``|loss|`` exceeds ``growth`` times its level at the first
    iteration (floored at ``floor``, so a loss that starts near 0 is not a reference).
    """

    def __init__(self, patience: int = 3, growth: float = 1e4, floor: float = 0.1):
        self.patience, self.growth, self.floor = patience, growth, floor
        self.reference: float | None = None
        self.run = 0
        self.warned = False
        self.reason = ""

    def update(self, grad_norm: float | None, loss: float | None) -> str | None:
        reasons = []
        if grad_norm is not None and grad_norm == 0.0:
            reasons.append("actor gradient exactly 0")
        if loss is not None and math.isfinite(loss):
            if self.reference is None:
                self.reference = max(abs(loss), self.floor)
            elif abs(loss) > self.growth * self.reference:
                reasons.append(f"|loss| {abs(loss):.3g} is over {self.growth:g}x its first level {self.reference:.3g}")
        if not reasons:
            self.run, self.warned, self.reason = 0, False, ""
            return None
        self.run += 1
        self.reason = "; ".join(reasons)
        if self.run >= self.patience and not self.warned:
            self.warned = True
            return (f"the policy has stopped learning: {self.reason} for {self.run} iterations in a row "
                    "(a learning rate too large for this task saturates the policy; check algo.actor_lr and grad_clip)")
        return None

    @property
    def stalled(self) -> bool:
        return self.warned

    def state_dict(self) -> dict:
        return {"reference": self.reference, "run": self.run, "warned": self.warned, "reason": self.reason}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.reference, self.run = state["reference"], int(state["run"])
            self.warned, self.reason = bool(state["warned"]), str(state["reason"])

