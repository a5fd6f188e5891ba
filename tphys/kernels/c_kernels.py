"""The C kernels for CPU tensors, with hand-written backwards: MLS-MPM particle-grid transfers, the signed 3x3 SVD,
batched 3x3 products and plasticine's return mapping + Kirchhoff stress (``cpu/kernels.c``), and their loader.

Same signatures and math as the torch twins (``stencil.p2g_torch`` / ``stencil.g2p_torch``) and the Triton
kernels: ``cpu/kernels.c`` ports the Triton kernels to plain loops over particles (scatters become
ordinary adds: one thread). On CPU the Triton kernels run only in the interpreter and the twins
materialise [N, P, 27, 3] stencils; these loops keep each particle's stencil in registers (timings against
the twins: ``benchmarks/transfer_kernels.py``, section ``transfer-kernels`` of ``benchmarks/RESULTS.md``).

The C file is compiled by the system C compiler (``$CC``, default ``cc``) on first use, once per float
type, into ``$TPHYS_KERNEL_CACHE`` (default ``~/.cache/tphys-kernels``), keyed by a hash of the source
and flags, and loaded with ctypes: no Python headers, no build step at install. ``available()`` says
whether that worked. Which kernel runs is dispatch's choice (``tphys.kernels``: ``backend``); nothing here
runs unless called.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels.transfer_function import G2P, P2G, Launchers

CPU_DIR = Path(__file__).with_name("cpu")  # the C sources; their local headers (#include "name") are found here too
SOURCE = CPU_DIR / "kernels.c"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=c99")
REALS = {torch.float32: "float", torch.float64: "double"}  # the C type each kernel source is built for, per dtype
_REAL = REALS
_I64 = ctypes.c_int64


def _cache_dir() -> Path:
    return Path(os.environ.get("TPHYS_KERNEL_CACHE", os.path.expanduser("~/.cache/tphys-kernels")))


def local_includes(text: bytes, directory: Path, seen: tuple[Path, ...] = ()) -> bytes:
    """The text of every local header ``text`` includes (``#include "name"``, looked up in ``directory``, then in
    ``CPU_DIR``: the compiler's order with ``-I CPU_DIR``), and of theirs, in order: what a build's hash must cover
    besides its source. RuntimeError for a header found in neither."""
    found = b""
    for name in re.findall(rb'^\s*#\s*include\s+"([^"]+)"', text, flags=re.MULTILINE):
        path = next((d / name.decode() for d in (directory, CPU_DIR) if (d / name.decode()).is_file()), None)
        if path is None:
            raise RuntimeError(f"{name.decode()!r}, included by a C source, is in neither {directory} nor {CPU_DIR}")
        if path in seen:
            continue
        header = path.read_bytes()
        found += header + local_includes(header, path.parent, (*seen, path))
    return found


@cache
def build(source: Path, real: str, flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL:
    """The library compiled from the C file ``source`` with ``-DREAL=real`` and ``flags`` (built on first use into the
    cache, keyed by a hash of the source, the local headers it includes (``local_includes``), compiler, flags and float
    type; raises RuntimeError without a compiler or when the build fails). Other C sources of tphys
    (``particle_kernels``, the per-model sources of ``particle_unrolled``) load through it."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (set $CC)")
    text = source.read_bytes()
    text += local_includes(text, source.parent)
    key = hashlib.sha256(text + " ".join((compiler, *flags, real)).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}_{real}_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build aside, then rename: safe across processes
            built = Path(tmp) / target.name
            command = [compiler, *flags, f"-DREAL={real}", f"-I{CPU_DIR}", str(source), "-o", str(built), "-lm"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"building {source.name} failed:\n{result.stderr[-2000:]}")
            os.replace(built, target)
    return ctypes.CDLL(str(target))


def threads(units: int) -> int:
    """How many threads a frame kernel (``rigid_kernels``, ``fem_kernels``) splits ``units`` independent units (envs, env
    blocks) over: ``torch.get_num_threads()`` at call time, capped by ``units`` (at least 1)."""
    return max(1, min(torch.get_num_threads(), units))


def spans(units: int, parts: int) -> list[tuple[int, int]]:
    """``units`` split into ``parts`` contiguous [start, stop) spans in order, sizes differing by at most one (the first
    ``units % parts`` one larger)."""
    size, extra = divmod(units, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:  # a forked child has the pool object but not its threads
    global _pool, _pool_workers
    _pool, _pool_workers = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def parallel(calls: list) -> list:
    """The results of the zero-argument ``calls``, run concurrently: the first on this thread, the others on a
    process-wide pool of threads (the C kernels' ctypes calls release the GIL). Every call finishes before the first
    exception, if any, is raised."""
    global _pool, _pool_workers
    if len(calls) == 1:
        return [calls[0]()]
    with _pool_lock:
        if _pool is None or _pool_workers < len(calls) - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool_workers = len(calls) - 1
            _pool = ThreadPoolExecutor(_pool_workers, thread_name_prefix="tphys-kernel")
        pool = _pool
    futures = [pool.submit(call) for call in calls[1:]]
    results, error = [], None
    try:
        results.append(calls[0]())
    except BaseException as e:  # noqa: BLE001  (re-raised below, once the pool's calls are done with the tensors)
        error = e
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as e:  # noqa: BLE001
            error = error or e
    if error is not None:
        raise error
    return results


def _library(real: str) -> ctypes.CDLL:
    """The compiled ``kernels.c`` for one float type (built on first use; raises RuntimeError without a compiler)."""
    return build(SOURCE, real)


def builds(library, dtype: torch.dtype) -> bool:
    """Whether ``library(real)`` (a C source's loader) builds and loads for ``dtype`` (float32/float64) here."""
    if dtype not in _REAL:
        return False
    try:
        library(_REAL[dtype])
    except (RuntimeError, OSError):
        return False
    return True


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the C kernels can run for ``dtype`` (float32/float64) on this machine (compiles on first call)."""
    return builds(_library, dtype)


def call(name: str, *args, library=_library) -> None:
    """Call ``name`` of ``library(real)`` (default: ``kernels.c``) with tensors (contiguous CPU, one float type, int64
    index tensors allowed) as pointers and ints/floats as int64/double."""
    real = next(_REAL[a.dtype] for a in args if isinstance(a, Tensor) and a.dtype in _REAL)
    converted = []
    for a in args:
        if isinstance(a, Tensor):
            kind = "int64_t" if a.dtype == torch.int64 else _REAL.get(a.dtype)
            if not a.is_contiguous() or a.device.type != "cpu" or kind not in (real, "int64_t"):
                raise TypeError(f"{name}: tensors must be contiguous CPU {real} (or int64), got {a.dtype} on {a.device}")
            converted.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, float):
            converted.append(ctypes.c_double(a))
        else:
            converted.append(_I64(a))
    getattr(library(real), name)(*converted)


LAUNCHERS = Launchers(
    p2g_forward=lambda x, m, q, a, gm, gq, n, p, shape, dx: call("p2g_forward", x, m, q, a, gm, gq, n, p, *shape, dx),
    p2g_backward=lambda x, m, q, a, dgm, dgq, dx_, dm, dq, da, n, p, shape, dx: call("p2g_backward", x, m, q, a, dgm, dgq, dx_, dm, dq,
                                                                                     da, n, p, *shape, dx),
    g2p_forward=lambda x, gv, v, c, n, p, shape, dx: call("g2p_forward", x, gv, v, c, n, p, *shape, dx),
    g2p_backward=lambda x, gv, dv, dc, dgv, dx_, n, p, shape, dx: call("g2p_backward", x, gv, dv, dc, dgv, dx_, n, p, *shape, dx),
)


def p2g_cpu(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_shape: tuple[int, int, int], dx: float):
    """``stencil.p2g_torch`` as C loops (inputs checked by the caller)."""
    return P2G.apply(LAUNCHERS, x, mass, momentum, affine, tuple(int(g) for g in grid_shape), float(dx))


def g2p_cpu(x: Tensor, grid_velocity: Tensor, dx: float):
    """``stencil.g2p_torch`` as C loops (inputs checked by the caller)."""
    return G2P.apply(LAUNCHERS, x, grid_velocity, float(dx))


def svd3_cpu(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed SVD (U, S, V) of [..., 3, 3] CPU matrices, no autograd: ``tphys.mpm.svd`` conventions (U, V
    rotations, |S| decreasing, a reflection in the sign of S[..., 2]); Jacobi on FᵀF in double precision."""
    f = f.detach().contiguous()
    u, v = torch.empty_like(f), torch.empty_like(f)
    s = f.new_empty(f.shape[:-1])
    call("svd3", f, u, s, v, f.numel() // 9)
    return u, s, v


def _matmul3(a: Tensor, b: Tensor, transpose_a: bool = False, transpose_b: bool = False) -> Tensor:
    out = torch.empty_like(a)
    call("matmul3", a, b, out, a.numel() // 9, int(transpose_a), int(transpose_b))
    return out


class _MatMul3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = a.detach().contiguous(), b.detach().contiguous()
        ctx.save_for_backward(a, b)
        return _matmul3(a, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        grad_a = _matmul3(grad, b, transpose_b=True) if ctx.needs_input_grad[0] else None
        grad_b = _matmul3(a, grad, transpose_a=True) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul3(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for [..., 3, 3] CPU matrices as C loops (torch's batched matmul has a large per-matrix overhead at 3x3);
    broadcasts like matmul. Operands the loops do not take (another device or dtype, not 3x3, a broadcast operand
    that needs a gradient) go to ``torch.matmul``."""
    if a.device.type != "cpu" or a.dtype != b.dtype or b.device.type != "cpu" or a.shape[-2:] != (3, 3) or b.shape[-2:] != (3, 3):
        return a @ b
    shape = torch.broadcast_shapes(a.shape, b.shape)
    if a.requires_grad and a.shape != shape or b.requires_grad and b.shape != shape:
        return a @ b  # a broadcast operand that needs a gradient: let autograd reduce it
    return _MatMul3.apply(a.expand(shape), b.expand(shape))
