"""``backend`` reaches every kernel: with ``backend="torch"`` an MPM frame (plasticine, so the SVD, the 3x3 products
and the stress run, and a collider) runs forward and backward without loading or calling any compiled C or Triton
code, and gives the C kernels' result and gradients."""

import sys
import types

import pytest
import torch
from helpers import pressed_block

from tphys.kernels import c_kernels, grid_kernels
from tphys.mpm import MPMControl, MPMState, step

F64 = dict(dtype=torch.float64)


def frame(backend: str, kind: str):
    """Positions, velocities, F and the gradients to the initial velocities and the collider's motion after 4
    substeps of a block pressed by a moving sphere."""
    model, x, shapes, eye = pressed_block(kind)
    v = (0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), **F64)).requires_grad_()
    move = torch.tensor([[[0.01, -0.03, 0.0]]], **F64, requires_grad=True)
    start = torch.tensor([[[0.45, 0.68, 0.45]]], **F64)
    control = MPMControl(shapes, lambda t, m: (start + t * m, eye), (move,))
    state = step(model, MPMState.at_rest(x, v), control, 4 * model.dt, recompute="none", backend=backend)
    loss = state.x.sum() + state.v.sum() + state.f.sum() + state.c.sum()
    return [t.detach() for t in state] + list(torch.autograd.grad(loss, [v, move]))


@pytest.mark.parametrize("kind", ["plasticine", "sand", "corotated", "neo_hookean", "water"])
def test_backend_torch_runs_no_compiled_code(kind, monkeypatch):
    reference = frame("cpu", kind)  # the C kernels, before they are locked away

    def refuse(*args, **kwargs):
        raise AssertionError("compiled code reached with backend='torch'")

    monkeypatch.setattr(c_kernels, "_library", refuse)  # the loader: every C kernel goes through it
    monkeypatch.setattr(grid_kernels, "_library", refuse)  # and the grid update's (cpu/grid.c)
    monkeypatch.setattr(grid_kernels, "grid_velocity_c", refuse)
    monkeypatch.setattr(grid_kernels, "grid_forward", refuse)
    monkeypatch.setattr(c_kernels, "call", refuse)
    for name in ("p2g_cpu", "g2p_cpu", "svd3_cpu", "matmul3", "available"):
        monkeypatch.setattr(c_kernels, name, refuse)
    def triton_name(name):
        if name.startswith("__"):
            raise AttributeError(name)  # module introspection (inspect, pytest)
        refuse()

    triton = types.ModuleType("tphys.kernels.transfer_triton")
    triton.__getattr__ = triton_name  # any name imported from the Triton kernels
    monkeypatch.setitem(sys.modules, "tphys.kernels.transfer_triton", triton)

    with pytest.raises(AssertionError, match="compiled code reached"):  # the locks hold: the C path would hit them
        frame("cpu", kind)
    result = frame("torch", kind)
    for a, b in zip(result, reference):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
