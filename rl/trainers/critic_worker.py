"""The critic's mini-epochs of window k on a second thread, beside window k's backward and window k+1's rollout.

A first-order window (SAPO, SHAC) ends with K mini-epochs of the critic over the window's (s_t, target_t) rows. Nothing
else in the loop reads the critic until window k+1's values, which come after window k+1's whole differentiable
rollout: so the mini-epochs can run on another core while the main thread does window k's backward and optimizer step
and window k+1's rollout, and be joined just before window k+1's values (``values_net``). The numbers are those of the
serial loop, bit for bit:

* the window's values and their backward read a frozen copy of the critic (``CriticShadow``), refreshed after each join,
  never the parameters the worker steps in place;
* the critic's inputs are normalized with the statistics the serial loop would use (this window's normalizer update,
  applied to a copy before the live statistics move after the backward);
* the worker sets the critic's learning rate itself (the window's), uses only the trainer's critic generator, and the
  critic's own non-finite check runs at its end;
* everything that reads the critic's state (checkpoints, the end of ``train``) joins first.

Torch ops release the GIL, so the two threads compute at once. The rule for ``overlap_critic: auto`` is
``overlap_allowed``; under data parallelism, ``on_nonfinite=skip``, on CUDA or without a spare core it stays serial.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

MODES = ("auto", "on", "off")


def overlap_mode(value: object) -> str:
    """``overlap_critic`` as one of ``MODES`` (a config may say true / false)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).lower()
    text = {"true": "on", "false": "off", "yes": "on", "no": "off"}.get(text, text)
    if text not in MODES:
        raise ValueError(f"overlap_critic must be one of {', '.join(MODES)} (or true / false), got {value!r}")
    return text


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def overlap_allowed(*, has_critic: bool, distributed: bool, on_nonfinite: str, device: torch.device,
                    threads: int, cores: int) -> str | None:
    """None when the critic may run beside the next window, else why not (the reason ``on`` raises with, and why
    ``auto`` stays serial)."""
    if not has_critic:
        return "the loss has no critic mini-epochs"
    if distributed:
        return "data parallelism: the critic's gradient all-reduces would interleave with the main thread's collectives"
    if on_nonfinite != "stop":
        return f"on_nonfinite={on_nonfinite}: a dropped window restores the critic, which the worker would be stepping"
    if device.type != "cpu":
        return f"device {device.type}: the GPU already runs the critic beside the host"
    if cores < threads + 1:
        return f"{cores} usable core(s) for {threads} torch thread(s) and a critic thread"
    return None


class CriticShadow:
    """A frozen copy of a critic network (its normalizer shared with the live one), refreshed from it on demand: what
    the window's values and their backward read while the live critic is being stepped on another thread."""

    def __init__(self, net: nn.Module):
        self.source = net
        self.net = copy.deepcopy(net)
        self.net.requires_grad_(False)
        if getattr(net, "normalizer", None) is not None:
            self.net.normalizer = net.normalizer  # the live statistics, as the target critic shares them
        self.pairs = [(dst, src) for (name, dst), (_, src) in zip(_tensors(self.net), _tensors(net))
                      if not name.startswith("normalizer.")]

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """Copy the live tensors in; returns the shadow network."""
        torch._foreach_copy_([d for d, _ in self.pairs], [s for _, s in self.pairs])
        return self.net


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


class CriticWorker:
    """One background thread running at most one critic job at a time.

    ``submit(job, undo)``: start ``job()`` (returns ``(last loss, non-finite names)``); ``undo`` restores what the job
    changes. ``join()`` waits and returns the job's result (re-raising its exception); ``cancel()`` waits, discards the
    result and undoes the job.
    """

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="critic")
        self.future: Future | None = None
        self.undo: Callable[[], None] | None = None
        self.window: int | None = None  # the iteration whose rows the pending job fits

    @property
    def pending(self) -> bool:
        return self.future is not None

    def submit(self, job: Callable[[], tuple[float, list[str]]], undo: Callable[[], None], window: int) -> None:
        if self.future is not None:
            raise RuntimeError("a critic job is already running; join it first")
        self.future, self.undo, self.window = self.pool.submit(_with_grad(job)), undo, window

    def join(self) -> tuple[float, list[str]] | None:
        """The pending job's ``(loss, non-finite names)``, or None when none is pending."""
        if self.future is None:
            return None
        future, self.future, self.undo, self.window = self.future, None, None, None
        return future.result()

    def cancel(self) -> None:
        """Wait for the pending job, discard what it did (its exception too)."""
        if self.future is None:
            return
        future, undo = self.future, self.undo
        self.future, self.undo, self.window = None, None, None
        try:
            future.result()
        except Exception:  # noqa: BLE001 - the job is being discarded with everything it did
            pass
        undo()

    def close(self) -> None:
        self.cancel()
        self.pool.shutdown(wait=True)


def _with_grad(job: Callable):
    """``job`` with gradients enabled, whatever the submitting thread's grad mode (grad mode is per thread)."""
    def run():
        with torch.enable_grad():
            return job()
    return run
