"""The fused semi-implicit particle step in C (``cpu/particles.c``): its loader, its backend choice and its launcher.

``cpu/particles.c`` runs every substep of one ``tphys.particles.semi_implicit_euler`` step in one call, forward only,
for springs, cables, gravity, drag and kinematic handles; envs are vectorised LANES at a time (structure of arrays,
env index innermost, each block's state kept in L1 across the substeps). It is compiled by the system C compiler on
first use, once per float type, through ``c_kernels.build`` (same cache, same hash keying). Which models and calls it
serves is ``tphys.particles.fused_step``'s decision; nothing here runs unless called.

Flags: ``c_kernels.FLAGS`` plus ``-ffp-contract=fast`` (multiply-adds fused into FMA instructions: each changes a
result by at most one rounding, the order of operations stays the torch path's) and ``-mprefer-vector-width=512``
(one AVX-512 register holds a block of 16 float envs where the CPU has them; ignored elsewhere). No -ffast-math:
sqrt, division and comparisons keep their IEEE semantics.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from tphys.kernels import c_kernels

SOURCE = Path(__file__).with_name("cpu") / "particles.c"
FLAGS = (*c_kernels.FLAGS, "-ffp-contract=fast", "-mprefer-vector-width=512")
BACKENDS = ("auto", "triton", "cpu", "torch")
_REAL = {torch.float32: "float", torch.float64: "double"}


LANES = {"float": 32, "double": 16}  # envs per block: two 64-byte vectors


@cache
def _library(real: str):
    return c_kernels.build(SOURCE, real, (*FLAGS, f"-DLANES={LANES[real]}"))


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused step can run for ``dtype`` (float32/float64) on this machine (compiles on first call)."""
    if dtype not in _REAL:
        return False
    try:
        _library(_REAL[dtype])
    except (RuntimeError, OSError):
        return False
    return True


def resolve_backend(x: Tensor, backend: str) -> str:
    """"cpu" (the C step) or "torch" for state tensors like ``x`` under ``backend`` ("auto" | "triton" | "cpu" | "torch",
    ``tphys.kernels``' vocabulary): "auto" takes C for float32/float64 CPU tensors when the C file builds and
    torch.compile is not tracing; "triton" (no Triton particle kernel) and "torch" take torch; "cpu" raises
    RuntimeError where C cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend in ("torch", "triton"):
        return "torch"
    runs = x.device.type == "cpu" and not torch.compiler.is_compiling() and available(x.dtype)
    if backend == "cpu" and not runs:
        raise RuntimeError(f"backend='cpu' needs float32/float64 CPU tensors outside torch.compile and a working C compiler; got "
                           f"{x.dtype} on {x.device}")
    return "cpu" if runs else "torch"


def particle_step(x: Tensor, v: Tensor, u: Tensor, handle: Tensor, free: Tensor, impulse: Tensor, weight: Tensor, drag: float,
                  first: Tensor, second: Tensor, rest: Tensor, stiffness: Tensor, damping: Tensor, cable: Tensor, width: float,
                  substeps: int, h: float) -> tuple[Tensor, Tensor]:
    """(x, v) [N, P, d] after ``substeps`` substeps of ``h`` s (see ``cpu/particles.c``), no autograd.

    Args (contiguous CPU tensors of one float type; index tensors int64):
        x, v: [N, P, d] m, m/s; u: [N, H, d] handle velocities, m/s.
        handle: [P] int64, the handle index of each particle or -1; free: [P] 1 free / 0 handle.
        impulse: [P] h·free/m, s/kg; weight: [P, d] m·g, N; drag: N·s/m.
        first, second: [S] int64 particles i, j of each spring (force along x_j - x_i); rest [S] m, stiffness [S] N/m,
            damping [S] N·s/m, cable [S] 1 tension-only / 0 spring; width: m, the cables' slack width.
    """
    n, p, d = x.shape
    x1, v1 = torch.empty_like(x), torch.empty_like(x)
    c_kernels.call("particle_step", x, v, u, x1, v1, handle, free, impulse, weight, float(drag), first, second, rest, stiffness, damping,
                   cable, float(width), n, p, d, u.shape[1], first.shape[0], int(substeps), float(h), library=_library)
    return x1, v1

