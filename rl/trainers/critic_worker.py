"""The critic's mini-epochs of window k in a second process, beside window k's backward and window k+1's rollout.

A first-order window (SAPO, SHAC) ends with K mini-epochs of the critic over the window's (s_t, target_t) rows. Nothing
else in the loop reads the critic until window k+1's values, which come after window k+1's whole differentiable
rollout: so the mini-epochs can run on another core while the main process does window k's backward and optimizer
step and window k+1's rollout, and be joined just before window k+1's values (``values_from``). The numbers are those
of the serial loop, bit for bit:

* the window's values and their backward read a frozen copy of the critic (``CriticShadow``), refreshed after each join,
  never the parameters the worker steps in place;
* the critic's inputs are normalized with the statistics the serial loop would use (this window's normalizer update,
  applied to a copy before the live statistics move after the backward);
* the job carries the window's critic learning rate and the trainer's critic generator state, and brings the
  generator's state back; the critic's own non-finite check runs at its end;
* the critic's parameters and optimizer state live in shared memory (moved there before the fork), so the worker's
  steps are the trainer's; everything that reads them (checkpoints, the end of ``train``) joins first.

The worker is forked once the critic's optimizer has its state (after the first window's critic, which runs in this
process). The rule for ``overlap_critic: auto`` is ``overlap_allowed``; under data parallelism, ``on_nonfinite=skip``,
on CUDA, without fork or without a spare core it stays serial.
"""

from __future__ import annotations

import copy
import ctypes
import multiprocessing
import os
import signal
import weakref
from collections.abc import Callable

import torch
from torch import nn

from rl.trainers.loop import NonFiniteError

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
                    threads: int, cores: int, fork: bool = True) -> str | None:
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
        return f"{cores} usable core(s) for {threads} torch thread(s) and a critic process"
    if not fork:
        return "this platform cannot fork the critic process"
    return None


class CriticShadow:
    """A frozen copy of a critic network (its normalizer shared with the live one), refreshed from it on demand: what
    the window's values and their backward read while the live critic is being stepped by the worker."""

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
    """A forked process that runs critic jobs, one at a time, on the trainer it was forked from.

    ``serve(message) -> reply`` runs in the child on its copy of the trainer; the tensors a job writes (the critic's
    parameters and optimizer state) must be in shared memory before the fork (``share``), so that the parent sees them.
    A process rather than a thread: a job's hundreds of small ops, each taking and releasing the GIL, slowed the main
    thread's rollout by a third when they ran on a thread. ``submit(message, undo, window)`` sends a job; ``join()``
    waits for its reply (re-raising a ``NonFiniteError`` or any other failure of the job in this process); ``cancel()``
    waits, discards the reply and calls ``undo``.
    """

    def __init__(self, serve: Callable[[object], object]):
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, self.conn, serve), daemon=True, name="tphys-critic")
        self.process.start()
        child.close()
        self.undo: Callable[[], None] | None = None
        self.window: int | None = None  # the iteration whose rows the pending job fits
        self.closer = weakref.finalize(self, _shutdown, self.conn, self.process)

    @property
    def pending(self) -> bool:
        return self.window is not None

    def submit(self, message: object, undo: Callable[[], None], window: int) -> None:
        if self.pending:
            raise RuntimeError("a critic job is already running; join it first")
        self.conn.send(message)
        self.undo, self.window = undo, window

    def join(self) -> object | None:
        """The pending job's reply, or None when none is pending."""
        if not self.pending:
            return None
        self.undo, self.window = None, None
        try:
            status, reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the critic worker process died (exit code {self.process.exitcode})") from None
        if status == "nonfinite":
            raise NonFiniteError(reply)
        if status == "error":
            raise RuntimeError(f"the critic worker failed: {reply}")
        return reply

    def cancel(self) -> None:
        """Wait for the pending job, discard what it did (its failure too)."""
        if not self.pending:
            return
        undo = self.undo
        try:
            self.join()
        except Exception:  # noqa: BLE001 - the job is being discarded with everything it did
            pass
        undo()

    def close(self) -> None:
        """Discard a pending job (without undoing it) and end the process."""
        if self.pending:
            self.undo, self.window = None, None
            try:
                self.conn.recv()
            except EOFError:
                pass
        self.closer()


def _serve(conn, parent_end, serve: Callable[[object], object]) -> None:
    """The child's loop: a message in, ``(status, reply)`` out, until None or the parent's end closes (also while a job
    runs: its reply then goes nowhere, and the child ends quietly). The child
    closes its inherited copy of the parent's end (else the pipe never reports the parent gone) and asks the kernel to
    kill it with the parent (a SIGKILLed run must not leave a worker holding its stdout open)."""
    parent_end.close()
    _die_with_parent()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            reply = ("ok", serve(message))
        except NonFiniteError as err:
            reply = ("nonfinite", str(err))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
            reply = ("error", f"{type(err).__name__}: {err}")
        try:
            conn.send(reply)
        except OSError:  # the parent closed its end mid-job (a script that ended without close()): nobody to tell
            return


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent exits (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the prctl
        os._exit(0)


def _shutdown(conn, process) -> None:
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    conn.close()
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()


def share_memory(tensors: list[torch.Tensor]) -> None:
    """Move ``tensors``' storages to shared memory in place (the tensor objects, and who holds them, stay)."""
    for tensor in tensors:
        tensor.share_memory_()


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()
