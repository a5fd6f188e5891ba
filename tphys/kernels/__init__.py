"""Particle-grid transfer kernels for MLS-MPM: Triton kernels with hand-written backward kernels, and
their torch twins (``stencil``) with the same signatures.

On CPU, C loops with hand-written backwards (``transfer_cpu``, compiled by the system C compiler on
first use) stand in for the Triton kernels, which run there only in Triton's interpreter.

``p2g`` / ``g2p`` dispatch: ``backend="auto"`` (default) runs Triton on CUDA tensors when Triton
imports, the C loops on float32/float64 CPU tensors when a C compiler works, the torch twin otherwise;
``"triton"``, ``"cpu"`` or ``"torch"`` forces one. Forcing Triton on CPU tensors needs
``TRITON_INTERPRET=1`` in the environment before ``tphys.kernels.transfer_triton`` is first imported
(the interpreter: exact but slow, for tests). Grids are G³ (an int) or GX x GY x GZ (three ints).
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

from tphys.kernels import transfer_cpu
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
        return "cpu" if x.device.type == "cpu" and transfer_cpu.available(x.dtype) else "torch"
    if backend == "cpu":
        if x.device.type != "cpu" or not transfer_cpu.available(x.dtype):
            raise RuntimeError(f"backend='cpu' needs float32/float64 CPU tensors and a working C compiler; got {x.dtype} on {x.device}")
        return "cpu"
    if backend == "torch":
        return "torch"
    if not triton_available():
        raise RuntimeError("backend='triton' but triton is not installed (pip install triton)")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before tphys.kernels.transfer_triton is imported")
    return "triton"


def p2g(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_size, dx: float, backend: str = "auto"):
    """Particles to grid (see ``stencil.p2g_torch``): (grid mass [N, GX, GY, GZ], grid momentum [N, GX, GY, GZ, 3])."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from tphys.kernels.transfer_triton import p2g_triton

        return p2g_triton(x, mass, momentum, affine, grid_size, dx)
    if chosen == "cpu":
        shape = check_transfer_inputs(x, grid_size, dx, mass=mass, momentum=momentum, affine=affine)
        return transfer_cpu.p2g_cpu(x, mass, momentum, affine, shape, dx)
    return p2g_torch(x, mass, momentum, affine, grid_size, dx)


def g2p(x: Tensor, grid_velocity: Tensor, dx: float, backend: str = "auto"):
    """Grid to particles (see ``stencil.g2p_torch``): (v [N, P, 3], C [N, P, 3, 3])."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from tphys.kernels.transfer_triton import g2p_triton

        return g2p_triton(x, grid_velocity, dx)
    if chosen == "cpu":
        check_grid_velocity(x, grid_velocity, dx)
        return transfer_cpu.g2p_cpu(x, grid_velocity, dx)
    return g2p_torch(x, grid_velocity, dx)


__all__ = ["BACKENDS", "g2p", "g2p_torch", "p2g", "p2g_torch", "resolve_backend", "stencil", "transfer_cpu", "triton_available"]
