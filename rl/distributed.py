"""Data-parallel training on ``torch.distributed``: one run across K processes (``torchrun --nproc_per_node=K``).

The rule that makes a K-rank run compute what a 1-rank run computes (up to the order of floating-point sums):

* ``num_envs`` is the global count; rank r steps the contiguous slice ``EnvShard.start:stop`` of the global envs
  (``shard``), and every random draw that has one row per env is made at the global size on every rank and sliced:
  the envs' resets (``TphysEnv.set_shard``), the policy's exploration noise (``randn_like`` under ``sharded_noise``).
  Every rank therefore draws the same numbers, in the same order, from the same seeds, and its random generators
  stay equal to every other rank's (a checkpoint written by rank 0 holds them for all).
* a loss that is a mean over a rank's rows is weighted by the rank's share of the global rows before backward, and
  gradients are summed over ranks (``reduce_gradients``): the sum is the gradient of the global mean. Minibatches are
  drawn over the global rows (``local_rows``); a rank takes the rows it holds.
* clipping, the optimizer step and every decision (a skipped window, a stop) happen after the reductions, on the same
  numbers on every rank, so the parameters stay equal (``check_in_sync`` verifies it at every checkpoint).

Backend: ``gloo`` on CPU, ``nccl`` on CUDA with one device per local rank (``init``). Without ``torchrun`` (no
``WORLD_SIZE``) or with one rank every function here is the identity and nothing is imported from
``torch.distributed``'s process groups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

TIMEOUT_S = 120  # a collective that waits longer than this on a peer raises (a dead peer is found sooner: gloo sees its socket close)


@dataclass(frozen=True)
class EnvShard:
    """The global envs ``start:stop`` of ``total`` that one rank steps."""

    start: int
    stop: int
    total: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def fraction(self) -> float:
        """This rank's share of the global envs (the weight of its mean losses)."""
        return self.size / self.total

    def rows(self, per_env: int) -> tuple[int, int]:
        """``(first, end)`` of this rank's rows in a global env-major batch of ``per_env`` rows per env."""
        return self.start * per_env, self.stop * per_env


def env_shard(env) -> EnvShard:
    """The global envs ``env`` steps: its ``shard`` (``TphysEnv.set_shard``), or all of its envs."""
    n = int(env.batch_size.numel()) if len(env.batch_size) else 1
    s = getattr(env, "shard", None)
    return EnvShard(0, n, n) if s is None else EnvShard(s[0], s[0] + n, s[1])


def gather_envs(env, t: Tensor) -> Tensor:
    """``t [n, ...]`` of ``env``'s envs as ``[total, ...]`` of the global envs (an unsharded env: ``t``)."""
    return t if getattr(env, "shard", None) is None else all_gather(t)


# ---------------------------------------------------------------------- the process group
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the rank that writes logs, checkpoints, curves, videos and ``eval.json``."""
    return rank() == 0


def launched() -> bool:
    """Started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE``) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> str:
    """Join the process group ``torchrun`` describes (no-op without one); returns the device this rank uses.

    ``gloo`` for CPU runs; for ``cuda`` runs ``nccl`` with device ``cuda:<LOCAL_RANK>``.
    """
    if not launched() or dist.is_initialized():
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = timedelta(seconds=TIMEOUT_S)
    store = attempt_store(timeout)
    if store is None:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    else:
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return device


def attempt_store(timeout: timedelta) -> dist.Store | None:
    """Under ``torchrun`` (its agent's store, ``TORCHELASTIC_USE_AGENT_STORE``): that store under a prefix of this
    attempt (``TORCHELASTIC_RESTART_COUNT``); None otherwise (``init_process_group``'s own env:// rendezvous).

    The agent's store outlives a restart, and the process group's keys (each rank's gloo address) are the same in
    every attempt: after ``--max-restarts`` restarted a job, a rank could read the address its peer had in the failed
    attempt, a closed port, and wait on it until the timeout ("Gloo connectFullMesh failed ... Connection refused", or
    both ranks hung in ``Pair::waitUntilConnected``): ``tests/rl/distributed_worker.py once`` under ``torchrun
    --max-restarts=1`` failed so in 5 of 6 jobs on this machine without the prefix, 0 of 6 with it. One prefix per
    attempt keeps every attempt's keys its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]), is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"tphys/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def kill_job(pid: int) -> None:
    """SIGKILL a ``torchrun`` job: the launcher ``pid`` and every process below it (Linux ``/proc``). Killing the
    launcher's process group is not enough: ``torchrun`` starts its ranks in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        children.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(child))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signal.SIGKILL)


def shard(total: int, what: str = "num_envs") -> EnvShard:
    """This rank's slice of ``total`` envs; ``total`` must divide evenly (every rank the same share)."""
    k, r = world_size(), rank()
    if total % k:
        raise ValueError(f"{what}={total} does not split evenly across {k} ranks; use a multiple of {k}")
    per = total // k
    return EnvShard(r * per, (r + 1) * per, total)


# ---------------------------------------------------------------------- collectives (identities on one rank)
def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over ranks, in place (returned)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(t: Tensor) -> Tensor:
    """Every rank's ``t [n, ...]`` (same shape on every rank) concatenated along dim 0 in rank order: ``[K n, ...]``."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def failures(message: str | None) -> list[tuple[int, str]]:
    """``(rank, message)`` of every rank that passes a message (this rank: ``message``, None when it did not fail).

    A collective: every rank calls it at the same point, so one rank's failure (a simulator NaN, a bad input) becomes
    every rank's decision. One small all-reduce when no rank failed.
    """
    if not is_distributed():
        return [] if message is None else [(0, message)]
    flag = torch.tensor([0.0 if message is None else 1.0], dtype=torch.float64)
    if all_reduce_sum(flag).item() == 0:
        return []
    messages = [None] * world_size()
    dist.all_gather_object(messages, message)
    return [(r, m) for r, m in enumerate(messages) if m is not None]


def reduce_gradients(params: list[Tensor], extra: Tensor | None = None) -> Tensor | None:
    """Sum the gradients of ``params`` over ranks, in place, in one flat all-reduce; returns ``extra`` (a few
    numbers to sum in the same message, e.g. the weighted losses) summed over ranks (one process: ``extra`` itself).

    A gradient that is None on this rank counts as zero; one that is None on every rank stays None (an optimizer skips
    such a parameter, as it would in a 1-rank run).
    """
    if not is_distributed():
        return extra
    # the message in the parameters' own dtype when they share one (float32: half the bytes of float64); a sum of
    # float32 values is then rounded once more per rank than a float64 sum would be
    dtypes = {p.dtype for p in params} | ({extra.dtype} if extra is not None else set())
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
    flat = [p.grad.detach().reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype)
    tail = torch.zeros(0, dtype=dtype) if extra is None else extra.detach().reshape(-1).to(dtype)
    buffer = all_reduce_sum(torch.cat([*flat, present, tail]))
    count = sum(p.numel() for p in params)
    summed, anywhere = buffer[:count], buffer[count:count + len(params)]
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if anywhere[i] > 0:
            p.grad = summed[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    return None if extra is None else buffer[count + len(params):].view_as(extra).to(extra.dtype)


def mean_scalars(scalars: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """``scalars`` with the entries ``keys`` (per-rank means over equal shares) averaged over ranks."""
    present = [k for k in keys if k in scalars]
    if not is_distributed() or not present:
        return scalars
    values = all_reduce_sum(torch.tensor([scalars[k] for k in present], dtype=torch.float64)) / world_size()
    return {**scalars, **dict(zip(present, values.tolist()))}


def check_in_sync(module: torch.nn.Module, what: str) -> None:
    """Raise if ``module``'s parameters and buffers differ across ranks (they must be equal after every update)."""
    if not is_distributed():
        return
    tensors = [t.detach().double().reshape(-1) for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    if not tensors:
        return
    flat = torch.cat(tensors)
    mine = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum()])
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"{what}: parameters differ across ranks (rank {rank()}); data-parallel training lost sync")


def gather_tree(env, tree):
    """A nested dict of ``[n, ...]`` tensors of ``env``'s envs as the global envs' ``[total, ...]`` (a checkpoint's)."""
    if isinstance(tree, dict):
        return {key: gather_tree(env, value) for key, value in tree.items()}
    return gather_envs(env, tree) if isinstance(tree, Tensor) else tree


def slice_tree(tree, env_shard: EnvShard):
    """The rows ``env_shard`` of a nested dict of the global envs' ``[total, ...]`` tensors (a checkpoint's)."""
    if isinstance(tree, dict):
        return {key: slice_tree(value, env_shard) for key, value in tree.items()}
    if isinstance(tree, Tensor) and tree.dim() and tree.shape[0] == env_shard.total:
        return tree[env_shard.start:env_shard.stop]
    return tree


# ---------------------------------------------------------------------- minibatches over global rows
def local_rows(global_rows: Tensor, first: int, end: int) -> Tensor:
    """The rows ``global_rows`` (indices into a global batch) this rank holds (``first <= i < end``), as local indices."""
    mine = (global_rows >= first) & (global_rows < end)
    return global_rows[mine] - first


# ---------------------------------------------------------------------- exploration noise drawn at the global size
_NOISE_SHARD: ContextVar[EnvShard | None] = ContextVar("tphys_noise_shard", default=None)


@contextlib.contextmanager
def sharded_noise(env_shard: EnvShard | None):
    """Within the block, ``randn_like`` of a tensor with one row per env of ``env_shard`` draws the global rows and
    returns this rank's slice (None or a whole shard: plain ``torch.randn_like``)."""
    token = _NOISE_SHARD.set(env_shard)
    try:
        yield
    finally:
        _NOISE_SHARD.reset(token)


def noise_shard() -> EnvShard | None:
    """The partial shard of the enclosing ``sharded_noise`` block (None outside one, or for a whole shard)."""
    s = _NOISE_SHARD.get()
    return None if s is None or s.size == s.total else s


def randn_like(x: Tensor) -> Tensor:
    """Standard normal noise shaped like ``x [n, ...]``: ``torch.randn_like(x)``, or under ``sharded_noise`` with
    ``n`` this rank's env count, this rank's rows of a draw for all envs."""
    s = _NOISE_SHARD.get()
    if s is None or s.size == s.total or x.dim() == 0 or x.shape[0] != s.size:
        return torch.randn_like(x)
    full = torch.randn((s.total, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return full[s.start:s.stop]
