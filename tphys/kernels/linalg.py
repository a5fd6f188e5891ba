"""Batched small SPD solves x = H⁻¹ r (the rigid engine's joint-space H·qdd = τ - C) as one C loop with autograd.

On CPU, ``torch.linalg.cholesky_ex`` + ``torch.cholesky_solve`` call LAPACK once per matrix of the batch (two calls
forward and two more in backward for every substep), and at the rigid models' sizes (D = 2..40 dofs, N = 16..256
envs) that per-matrix call costs more than the arithmetic: about 3 ms of a 12.7 ms compiled Ant substep (N = 16,
fwd+bwd; RESULTS.md, issue 21's profile). ``cpu/linalg.c`` factors and solves the whole batch in one call.

``spd_solve(h, rhs, backend)``: h [..., D, D] symmetric positive definite (only its lower triangle is read), rhs
[..., D] -> x [..., D], same dtype. Backend as ``tphys.kernels``: "auto" takes the C loop for float32/float64 CPU
tensors when a C compiler works, else torch's Cholesky, and torch's also while torch.compile traces (a compiled Ant
substep, N = 16, fwd+bwd: 2.69 ms with LAPACK called from Inductor's C++ wrapper, 2.82 ms with the C loop called back
through Python; ``benchmarks/substep_ab.py``); "cpu" forces the C loop, "torch" the torch ops. The C path is
the custom op ``tphys::spd_solve`` (opaque to torch.compile: backend "cpu" puts it in a compiled graph as one extern
kernel) with its gradient: for x = H⁻¹ r and an upstream gradient g, ∂/∂r = H⁻¹ g =: u and ∂/∂H = -sym(u xᵀ) (the symmetric
part: H enters through its lower triangle but is symmetric by construction, so either form gives the same chain rule;
the symmetric one is torch's). The backward calls the same op, so second derivatives work too. A matrix that is not
positive definite gives NaN in its row, as the torch path does.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from tphys.kernels.c_kernels import REALS, build, builds

SOURCE = Path(__file__).with_name("cpu") / "linalg.c"
_REAL = REALS
BACKENDS = ("auto", "cpu", "torch")


def _library(real: str) -> ctypes.CDLL:
    """The compiled ``linalg.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    return build(SOURCE, real)


@torch.compiler.assume_constant_result
def c_available(dtype: torch.dtype) -> bool:
    """Whether the C loop runs for ``dtype`` here (float32/float64 and a working C compiler; builds on first call)."""
    return builds(_library, dtype)


@torch.library.custom_op("tphys::spd_solve", mutates_args=())
def spd_solve_c(h: Tensor, rhs: Tensor) -> Tensor:
    """x [..., D] = h⁻¹ rhs by the C loop (h [..., D, D], rhs [..., D]: contiguous CPU float32/float64)."""
    h, rhs = h.contiguous(), rhs.contiguous()
    x = torch.empty_like(rhs)
    d = rhs.shape[-1]
    batch = rhs.numel() // d if d else 0
    if batch:
        _library(_REAL[rhs.dtype]).spd_solve(ctypes.c_void_p(h.data_ptr()), ctypes.c_void_p(rhs.data_ptr()),
                                             ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(batch), ctypes.c_int64(d))
    return x


@spd_solve_c.register_fake
def _(h: Tensor, rhs: Tensor) -> Tensor:
    return torch.empty_like(rhs)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output)


def _backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
    h, x = ctx.saved_tensors
    u = spd_solve_c(h, grad)
    outer = u[..., :, None] * x[..., None, :]
    return -0.5 * (outer + outer.transpose(-1, -2)), u


spd_solve_c.register_autograd(_backward, setup_context=_setup_context)


def spd_solve_torch(h: Tensor, rhs: Tensor) -> Tensor:
    """The torch twin: LAPACK's Cholesky and solve (NaN where h is not positive definite)."""
    factor, _ = torch.linalg.cholesky_ex(h)
    return torch.cholesky_solve(rhs[..., None], factor)[..., 0]


def spd_solve(h: Tensor, rhs: Tensor, backend: str = "auto") -> Tensor:
    """x [..., D] = h⁻¹ rhs for h [..., D, D] symmetric positive definite, rhs [..., D]; see the module docstring."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if h.shape[:-1] != rhs.shape or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"spd_solve: h must be [..., D, D] and rhs [..., D]; got {tuple(h.shape)} and {tuple(rhs.shape)}")
    usable = h.device.type == "cpu" and rhs.device.type == "cpu" and h.dtype == rhs.dtype and c_available(h.dtype)
    if backend == "cpu" and not usable:
        raise RuntimeError(f"backend='cpu' needs float32/float64 CPU tensors of one dtype and a working C compiler; got "
                           f"{h.dtype} on {h.device} and {rhs.dtype} on {rhs.device}")
    if backend == "torch" or not usable or (backend == "auto" and torch.compiler.is_compiling()):
        return spd_solve_torch(h, rhs)  # in a compiled graph LAPACK is called from Inductor's C++ without a trip to Python
    return spd_solve_c(h, rhs)
