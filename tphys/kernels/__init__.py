"""Particle-grid transfer kernels for MLS-MPM: Triton kernels with hand-written backward kernels, and
their torch twins (``stencil``) with the same signatures.

``p2g`` / ``g2p`` dispatch: ``backend="auto"`` (default) runs Triton on CUDA tensors when Triton
imports, the torch twin otherwise; ``"triton"`` or ``"torch"`` forces one. Forcing Triton on CPU
tensors needs ``TRITON_INTERPRET=1`` in the environment before ``tphys.kernels.transfer_triton`` is
first imported (the interpreter: exact but slow, for tests).
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

from tphys.kernels.stencil import g2p_torch, p2g_torch, stencil

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(x: Tensor, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    if backend == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend='triton' but triton is not installed (pip install triton)")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before tphys.kernels.transfer_triton is imported")
    return True


def p2g(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_size: int, dx: float, backend: str = "auto"):
    """Particles to grid (see ``stencil.p2g_torch``): (grid mass [N, G, G, G], grid momentum [N, G, G, G, 3])."""
    if _use_triton(x, backend):
        from tphys.kernels.transfer_triton import p2g_triton

        return p2g_triton(x, mass, momentum, affine, grid_size, dx)
    return p2g_torch(x, mass, momentum, affine, grid_size, dx)


def g2p(x: Tensor, grid_velocity: Tensor, dx: float, backend: str = "auto"):
    """Grid to particles (see ``stencil.g2p_torch``): (v [N, P, 3], C [N, P, 3, 3])."""
    if _use_triton(x, backend):
        from tphys.kernels.transfer_triton import g2p_triton

        return g2p_triton(x, grid_velocity, dx)
    return g2p_torch(x, grid_velocity, dx)


__all__ = ["BACKENDS", "g2p", "g2p_torch", "p2g", "p2g_torch", "stencil", "triton_available"]
