"""MLS-MPM kernels and their one dispatch: particle-grid transfers as Triton kernels with hand-written backward
kernels and their torch twins (``stencil``) with the same signatures; on CPU, C loops with hand-written
backwards (``c_kernels``, compiled by the system C compiler on first use) stand in for the Triton kernels,
which run there only in Triton's interpreter. The C file also holds kernels without a Triton version:
the signed 3x3 SVD (``tphys.mpm.svd``), batched 3x3 products (``matmul3``) and plasticine's stress
(``tphys.mpm.materials``); their torch twins are plain torch ops. ``particle_kernels`` (``cpu/particles.c``) holds the
fused forward of the particles' semi-implicit step, which ``tphys.particles.semi_implicit_euler`` dispatches to with
the same ``backend`` vocabulary.

``backend`` reaches every kernel: ``"auto"`` (default) runs Triton on CUDA tensors when Triton imports, the
C loops on float32/float64 CPU tensors when a C compiler works, the torch twin otherwise; ``"triton"``,
``"cpu"`` or ``"torch"`` forces one (``"torch"``: no compiled C or Triton code runs; ``"triton"``: the
kernels without a Triton version run as torch ops). ``runs_c_kernels(x, backend)`` is the choice for the
kernels beyond the transfers (also False while torch.compile traces: compiled graphs take the torch ops).
Forcing Triton on CPU tensors needs ``TRITON_INTERPRET=1`` in the environment before
``tphys.kernels.transfer_triton`` is first imported (the interpreter: exact but slow, for tests). Grids are
G³ (an int) or GX x GY x GZ (three ints).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from tphys.kernels import c_kernels
from tphys.kernels.stencil import check_grid_velocity, check_transfer_inputs, g2p_torch, p2g_torch, stencil

BACKENDS = ("auto", "triton", "cpu", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(x: Tensor, backend: str) -> str:
    """The backend that runs for tensors like x: "triton", "cpu" or "torch" (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        if x.is_cuda:
            return "triton" if triton_available() else "torch"
        return "cpu" if x.device.type == "cpu" and c_kernels.available(x.dtype) else "torch"
    if backend == "cpu":
        if x.device.type != "cpu" or not c_kernels.available(x.dtype):
            raise RuntimeError(f"backend='cpu' needs float32/float64 CPU tensors and a working C compiler; got {x.dtype} on {x.device}")
        return "cpu"
    if backend == "torch":
        return "torch"
    if not triton_available():
        raise RuntimeError("backend='triton' but triton is not installed (pip install triton)")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before tphys.kernels.transfer_triton is imported")
    return "triton"


def runs_c_kernels(x: Tensor, backend: str) -> bool:
    """Whether the C kernels serve tensors like x under ``backend`` (it resolves to "cpu" and torch.compile is not
    tracing); the SVD, ``matmul3`` and the stresses run torch ops where this is False."""
    return not torch.compiler.is_compiling() and resolve_backend(x, backend) == "cpu"


def matmul3(a: Tensor, b: Tensor, backend: str = "auto") -> Tensor:
    """a @ b for [..., 3, 3] matrices (broadcasting like matmul): the C loops where ``runs_c_kernels(a, backend)``
    (torch's batched matmul has a large per-matrix overhead at 3x3), ``torch.matmul`` otherwise."""
    return c_kernels.matmul3(a, b) if runs_c_kernels(a, backend) else a @ b


def p2g(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_size, dx: float, backend: str = "auto"):
    """Particles to grid (see ``stencil.p2g_torch``): (grid mass [N, GX, GY, GZ], grid momentum [N, GX, GY, GZ, 3])."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from tphys.kernels.transfer_triton import p2g_triton

        return p2g_triton(x, mass, momentum, affine, grid_size, dx)
    if chosen == "cpu":
        shape = check_transfer_inputs(x, grid_size, dx, mass=mass, momentum=momentum, affine=affine)
        return c_kernels.p2g_cpu(x, mass, momentum, affine, shape, dx)
    return p2g_torch(x, mass, momentum, affine, grid_size, dx)


def g2p(x: Tensor, grid_velocity: Tensor, dx: float, backend: str = "auto"):
    """Grid to particles (see ``stencil.g2p_torch``): (v [N, P, 3], C [N, P, 3, 3])."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from tphys.kernels.transfer_triton import g2p_triton

        return g2p_triton(x, grid_velocity, dx)
    if chosen == "cpu":
        check_grid_velocity(x, grid_velocity, dx)
        return c_kernels.g2p_cpu(x, grid_velocity, dx)
    return g2p_torch(x, grid_velocity, dx)


__all__ = ["BACKENDS", "c_kernels", "g2p", "g2p_torch", "matmul3", "p2g", "p2g_torch", "resolve_backend", "runs_c_kernels", "stencil",
           "triton_available"]
