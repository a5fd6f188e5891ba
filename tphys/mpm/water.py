"""Water's MLS-MPM substep on CPU as one autograd node: five C calls each way in place of a dozen tensor ops and six nodes.

``step.substep`` takes this path for water where every kernel runs in C (``serves``); it computes what the general path
computes (``step.substep`` with ``materials.elastic_stress``, ``c_kernels`` P2G/G2P, ``grid_kernels``, ``step.advect``):

    prologue (``cpu/water.c``)   c = cbrt(det F_trial), τ = K (J - 1) J·I (J = c³), local = x - origin·dx, q = m·v,
                                 A = m·C + s·τ (s = -dt·V·4/dx²): one pass over the particles
    P2G (``cpu/kernels.c``)      grid mass, momentum of (local, m, q, A) on the window at origin (``grid.window``)
    grid (``cpu/grid.c``)        node velocities: gravity, the colliders, the walls
    G2P (``cpu/kernels.c``)      v', C'
    epilogue (``cpu/water.c``)   x' = x + dt·v', F_trial' = (I + dt·C')·c

and the backward runs the five adjoints in reverse (``_WaterSubstep``). The particle passes compute in double and round
once, so float32 results differ from the general path's float32 ops in the last bits (float64: to round-off; tests in
``tests/mpm/test_water_substep.py``). At N = 1 the general path's per-op Python and autograd cost was about as large as
its kernels' (cProfile, fluid_move fwd+bwd). No gradient reaches the model's tensors (mass, volume, gravity, the shapes'
sizes): where one needs it, ``serves`` is False and the general path runs. Where no shape touched the material in a
substep the poses get no gradient (None), as ``grid_kernels``' ``_Link`` gives them.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import c_kernels, grid_kernels, runs_c_kernels
from tphys.mpm.grid import window
from tphys.mpm.model import MPMModel, MPMState

SOURCE = Path(c_kernels.__file__).with_name("cpu") / "water.c"


def _library(real: str) -> ctypes.CDLL:
    """The compiled ``cpu/water.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    return c_kernels.build(SOURCE, real)


def available(dtype: torch.dtype) -> bool:
    """Whether ``cpu/water.c`` and ``cpu/kernels.c`` run for ``dtype`` here (float32/float64 and a working C compiler)."""
    return c_kernels.builds(_library, dtype) and c_kernels.available(dtype)


def serves(model: MPMModel, x: Tensor, colliders: tuple | None, backend: str) -> bool:
    """Whether ``substep`` runs a substep of ``model`` from positions like x [N, P, 3]: water, every kernel in C under
    ``backend`` (``runs_c_kernels``, ``grid_kernels.serves``) and no gradient wanted for the particles' mass or volume."""
    if model.material.kind != "water" or not runs_c_kernels(x, backend) or not available(x.dtype):
        return False
    if torch.is_grad_enabled() and (model.particle_mass.requires_grad or model.particle_volume.requires_grad):
        return False
    tensors = (model.particle_mass, model.particle_volume)
    return all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors) and grid_kernels.serves(model, x, x, colliders, backend)


_SIGNATURES = {  # argument kinds of the C functions this node calls: P pointer, I int64, D double
    "water_prologue": "PPPPPPPPPPPIIDD", "water_epilogue": "PPPPPPID", "water_epilogue_backward": "PPPPPPPPPID",
    "water_prologue_backward": "PPPPPPPPPPPPPIID", "p2g_forward": "PPPPPPIIIIID", "g2p_forward": "PPPPIIIIID",
    "g2p_backward": "PPPPPPIIIIID", "p2g_backward": "PPPPPPPPPPIIIIID",
}


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


@cache
def _functions(real: str) -> tuple[SimpleNamespace, SimpleNamespace]:
    """(water.c's functions, kernels.c's functions) for the float type ``real``, typed (``_SIGNATURES``) so that a call
    takes plain ints and floats: ctypes converts them in C, no ``c_void_p`` / ``c_int64`` objects per argument (29440
    calls per fluid_move fwd+bwd window at N = 1). Loaded through a handle of their own, so that the untyped functions
    other modules call on the same libraries keep their (absent) argtypes."""
    kinds = {"P": ctypes.c_void_p, "I": ctypes.c_int64, "D": ctypes.c_double}
    found = []
    for library in (_library(real), c_kernels.build(c_kernels.SOURCE, real)):
        handle = ctypes.CDLL(library._name)
        functions = SimpleNamespace()
        for name, signature in _SIGNATURES.items():
            if hasattr(handle, name):
                function = getattr(handle, name)
                function.argtypes, function.restype = [kinds[k] for k in signature], None
                setattr(functions, name, function)
        found.append(functions)
    return tuple(found)


def _forward(model: MPMModel, origin: Tensor, shape: tuple, kinds: Tensor, sizes: Tensor, scalars: tuple, x: Tensor, v: Tensor,
             c: Tensor, f: Tensor, poses: list[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], int]:
    """((x', v', C', F_trial'), the tensors the backward reads, how many times a shape acted on a node): the module
    docstring's forward on contiguous detached tensors."""
    n, p = x.shape[:2]
    water, kernels = _functions(c_kernels.REALS[x.dtype])
    mass = model.particle_mass.detach().contiguous()
    scale = ((-model.dt * 4 / model.dx**2) * model.particle_volume).detach().contiguous()
    bulk = model.material.lam + 2 * model.material.mu / 3
    local, q, affine, stretch = torch.empty_like(x), torch.empty_like(x), torch.empty_like(c), x.new_empty(n, p)
    water.water_prologue(_ptr(x), _ptr(v), _ptr(c), _ptr(f), _ptr(mass), _ptr(scale), _ptr(origin), _ptr(local), _ptr(q), _ptr(affine),
                         _ptr(stretch), n, p, model.dx, bulk)
    masses = mass.expand(n, p).contiguous()
    grid_mass, grid_momentum = x.new_zeros(n, *shape), x.new_zeros(n, *shape, 3)
    dims = (n, p, *shape, model.dx)
    kernels.p2g_forward(_ptr(local), _ptr(masses), _ptr(q), _ptr(affine), _ptr(grid_mass), _ptr(grid_momentum), *dims)
    gravity = model.gravity.detach().contiguous()
    velocity, acted = grid_kernels.grid_forward(grid_mass, grid_momentum, origin, gravity, kinds, sizes, *poses, *scalars)
    grid_kernels.log_contacts(acted)
    v_new, c_new = torch.empty_like(x), torch.empty_like(c)
    kernels.g2p_forward(_ptr(local), _ptr(velocity), _ptr(v_new), _ptr(c_new), *dims)
    x_new, f_new = torch.empty_like(x), torch.empty_like(c)
    water.water_epilogue(_ptr(x), _ptr(v_new), _ptr(c_new), _ptr(stretch), _ptr(x_new), _ptr(f_new), n * p, model.dt)
    saved = (f, local, masses, q, affine, stretch, c_new, grid_mass, grid_momentum, velocity, origin, gravity, kinds, sizes, *poses)
    return (x_new, v_new, c_new, f_new), saved, acted


class _WaterSubstep(torch.autograd.Function):
    """The module docstring's substep: forward (model, origin, window shape, kinds, sizes, grid scalars, x, v, C, F_trial,
    *poses) -> (x', v', C', F_trial'); backward by the five adjoints."""

    @staticmethod
    def forward(ctx, model, origin, shape, kinds, sizes, scalars, x, v, c, f, *poses):
        tensors = [t.detach().contiguous() for t in (x, v, c, f, *poses)]
        out, saved, acted = _forward(model, origin, shape, kinds, sizes, scalars, *tensors[:4], tensors[4:])
        ctx.save_for_backward(*saved)
        ctx.model, ctx.scalars, ctx.acted = model, scalars, acted
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x, grad_v, grad_c, grad_f):
        f, local, masses, q, affine, stretch, c_new, grid_mass, grid_momentum, velocity, origin, gravity, kinds, sizes, *poses = (
            ctx.saved_tensors)
        model = ctx.model
        n, p = local.shape[:2]
        water, kernels = _functions(c_kernels.REALS[f.dtype])
        grad_x, grad_v = (torch.zeros_like(local) if g is None else g.contiguous() for g in (grad_x, grad_v))
        grad_c, grad_f = (torch.zeros_like(f) if g is None else g.contiguous() for g in (grad_c, grad_f))
        g_v, g_c, g_stretch = torch.empty_like(grad_v), torch.empty_like(grad_c), torch.empty_like(stretch)
        water.water_epilogue_backward(_ptr(c_new), _ptr(stretch), _ptr(grad_x), _ptr(grad_v), _ptr(grad_c), _ptr(grad_f), _ptr(g_v),
                                      _ptr(g_c), _ptr(g_stretch), n * p, model.dt)
        shape = tuple(velocity.shape[1:4])
        dims = (n, p, *shape, model.dx)
        g_velocity, g_local = torch.zeros_like(velocity), torch.empty_like(local)
        kernels.g2p_backward(_ptr(local), _ptr(velocity), _ptr(g_v), _ptr(g_c), _ptr(g_velocity), _ptr(g_local), *dims)
        g_mass, g_momentum, *g_poses = grid_kernels.grid_backward(g_velocity, grid_mass, grid_momentum, origin, gravity, kinds, sizes,
                                                                  *poses, *ctx.scalars)
        g_local2, g_masses, g_q, g_affine = (torch.empty_like(t) for t in (local, masses, q, affine))
        kernels.p2g_backward(_ptr(local), _ptr(masses), _ptr(q), _ptr(affine), _ptr(g_mass), _ptr(g_momentum), _ptr(g_local2),
                             _ptr(g_masses), _ptr(g_q), _ptr(g_affine), *dims)
        mass = model.particle_mass.detach().contiguous()
        scale = ((-model.dt * 4 / model.dx**2) * model.particle_volume).detach().contiguous()
        out_x, out_v, out_c, out_f = (torch.empty_like(t) for t in (local, local, f, f))
        water.water_prologue_backward(_ptr(f), _ptr(mass), _ptr(scale), _ptr(grad_x), _ptr(g_local), _ptr(g_local2), _ptr(g_q),
                                      _ptr(g_affine), _ptr(g_stretch), _ptr(out_x), _ptr(out_v), _ptr(out_c), _ptr(out_f), n, p,
                                      model.material.lam + 2 * model.material.mu / 3)
        need = ctx.needs_input_grad
        pose_grads = [g if ctx.acted and wanted else None for g, wanted in zip(g_poses, need[10:])]
        return (None,) * 6 + tuple(g if wanted else None for g, wanted in zip((out_x, out_v, out_c, out_f), need[6:10])) + tuple(pose_grads)


def substep(model: MPMModel, state: MPMState, colliders: tuple | None = None) -> MPMState:
    """One water substep (``step.substep``'s contract, ``serves`` true): one ``_WaterSubstep`` node where a gradient may be
    wanted, its forward alone otherwise."""
    x = state.x
    origin, shape = window(model, x)
    kinds, sizes, poses, scalars = grid_kernels.collider_args(model, x, colliders)
    tensors = (*state, *poses)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return MPMState(*_WaterSubstep.apply(model, origin, shape, kinds, sizes, scalars, *tensors))
    plain = [t.detach().contiguous() for t in tensors]
    return MPMState(*_forward(model, origin, shape, kinds, sizes, scalars, *plain[:4], plain[4:])[0])
