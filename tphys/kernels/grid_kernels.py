"""The MLS-MPM grid update in C (``cpu/grid.c``): its loader, the rule of when it serves, and the custom op with autograd.

``cpu/grid.c`` runs ``tphys.mpm.grid.grid_velocity_torch`` (momentum -> velocity, gravity, the kinematic colliders of
``tphys.mpm.colliders.collide``, walls with Coulomb friction, the sticky floor) for every node of every env's window
in one call per substep, and its adjoint in one more: dL/d mass, dL/d momentum and dL/d the colliders' four poses.
The torch ops it replaces are hundreds of small kernels per substep (gathers, masks, SDFs per shape kind, index_put
per shape), which cost more than their arithmetic. Same math and order of operations as the twin, and the same
subgradients where the twin's clamps, norms and maxima have kinks; float32 and float64.

``serves(model, mass, colliders, backend)`` is the rule (``tphys.mpm.grid.grid_velocity`` follows it): C where
``tphys.kernels.runs_c_kernels(mass, backend)`` (CPU, float32/float64, the backend resolves to "cpu", torch.compile
not tracing), ``cpu/grid.c`` builds, the momentum and poses are CPU tensors of mass's dtype, at most ``MAX_SHAPES``
shapes, and no gradient is wanted for what the kernel does not differentiate (the shapes' sizes, gravity). Elsewhere
the twin runs; with ``backend="cpu"`` a missing compiler raises, the other cases fall back to the twin as documented
here.

Where no shape acts on any node (a hand above the material), the twin's velocities have no graph to the poses, so
backward skips whatever computed them (the hand's kinematics: in a hand_flip fwd+bwd window, N = 16, 4 s of 13 s
when the graph is kept with zero gradients). The C path keeps that: ``grid_velocity_cpu`` runs the kernel without
autograd (``grid_forward``) and, where a gradient may be wanted, puts one node (``_Link``, one adjoint call,
``grid_backward``) on mass, momentum and, only when the forward says a shape acted, the poses. It calls the C functions
directly: the custom ops ``grid_velocity_c`` / ``grid_velocity_backward_c`` (differentiable in mass, momentum and the
poses, always; traceable by torch.compile) wrap the same functions, but their dispatch cost more Python time per
substep than the kernel's run at N = 1.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import runs_c_kernels
from tphys.kernels.c_kernels import REALS, build, builds

SOURCE = Path(__file__).with_name("cpu") / "grid.c"
_REAL = REALS
MAX_SHAPES = 64  # cpu/grid.c's MAX_SHAPES: per-node tape on the stack
MIN_MASS = 1e-12  # kg, tphys.mpm.grid._MIN_MASS
_KIND_IDS = {"sphere": 0, "box": 1, "capsule": 2, "cylinder": 3}  # the order of colliders.SHAPES


def _library(real: str) -> ctypes.CDLL:
    """The compiled ``grid.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    return build(SOURCE, real)


def available(dtype: torch.dtype) -> bool:
    """Whether ``cpu/grid.c`` runs for ``dtype`` here (float32/float64 and a working C compiler; builds on first call)."""
    return builds(_library, dtype)


def serves(model, mass: Tensor, momentum: Tensor, colliders: tuple | None, backend: str) -> bool:
    """Whether the C kernel runs ``grid_velocity`` for these inputs under ``backend`` (the module docstring's rule).
    RuntimeError for ``backend="cpu"`` when the C file does not build."""
    if not runs_c_kernels(mass, backend):
        return False
    if not available(mass.dtype):
        if backend == "cpu":
            raise RuntimeError(f"backend='cpu': tphys/kernels/cpu/grid.c does not build for {mass.dtype}")
        return False
    tensors = [momentum, model.gravity]
    if colliders is not None:
        shapes, *poses = colliders
        if len(shapes.kinds) > MAX_SHAPES or not set(shapes.kinds) <= _KIND_IDS.keys():
            return False  # an unknown kind: the twin raises its ValueError
        tensors += [shapes.sizes, *poses]
        if torch.is_grad_enabled() and shapes.sizes.requires_grad:
            return False  # sizes get no gradient from C: the twin differentiates them
    if torch.is_grad_enabled() and model.gravity.requires_grad:
        return False
    return all(t.device.type == "cpu" and t.dtype == mass.dtype for t in tensors)


_ARGS = ("n", "wx", "wy", "wz", "origin", "gravity", "dt", "dx", "grid", "bound", "wall_friction", "sticky", "min_mass", "shapes",
         "kinds", "sizes", "friction", "softness", "band", "position", "rotation", "position_next", "rotation_next")


def _pointer(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _params(mass, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, dt, dx, grid, bound, wall_friction,
            sticky, friction, softness, band) -> list:
    n, wx, wy, wz = mass.shape
    i64, f64 = ctypes.c_int64, ctypes.c_double
    return [i64(n), i64(wx), i64(wy), i64(wz), _pointer(origin), _pointer(gravity), f64(dt), f64(dx), i64(grid), i64(bound),
            f64(wall_friction), i64(int(sticky)), f64(MIN_MASS), i64(kinds.shape[0]), _pointer(kinds), _pointer(sizes), f64(friction),
            f64(softness), f64(band), _pointer(position), _pointer(rotation), _pointer(position_next), _pointer(rotation_next)]


@cache
def _function(name: str, real: str):
    """``grid.c``'s function ``name`` for the float type ``real``, returning int64 (looked up once)."""
    function = getattr(_library(real), name)
    function.restype = ctypes.c_int64
    return function


def _run(name: str, dtype: torch.dtype, *args) -> int:
    status = _function(name, _REAL[dtype])(*args)
    if status < 0:
        raise RuntimeError(f"grid.c {name} failed with status {status}")
    return status


def grid_forward(mass: Tensor, momentum: Tensor, origin: Tensor, gravity: Tensor, kinds: Tensor, sizes: Tensor, position: Tensor,
                 rotation: Tensor, position_next: Tensor, rotation_next: Tensor, dt: float, dx: float, grid: int, bound: int,
                 wall_friction: float, sticky: bool, friction: float, softness: float, band: float) -> tuple[Tensor, int]:
    """(node velocities [N, WX, WY, WZ, 3], how many times a shape acted on a node) by ``cpu/grid.c``, no autograd and
    no dispatcher (``grid_velocity_cpu`` calls it once per substep; the op ``grid_velocity_c`` wraps it): inputs as
    ``grid_velocity_c`` takes them."""
    mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next = (
        t.contiguous() for t in (mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next))
    velocity = torch.empty_like(momentum)
    acted = _run("grid_forward", mass.dtype, _pointer(mass), _pointer(momentum), _pointer(velocity),
                 *_params(mass, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, dt, dx, grid, bound,
                          wall_friction, sticky, friction, softness, band))
    return velocity, acted


def grid_backward(grad: Tensor, mass: Tensor, momentum: Tensor, origin: Tensor, gravity: Tensor, kinds: Tensor, sizes: Tensor,
                  position: Tensor, rotation: Tensor, position_next: Tensor, rotation_next: Tensor, dt: float, dx: float, grid: int,
                  bound: int, wall_friction: float, sticky: bool, friction: float, softness: float,
                  band: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dL/d mass, dL/d momentum, dL/d position, rotation, position_next, rotation_next) from dL/d velocity ``grad`` by
    ``cpu/grid.c``'s adjoint, no dispatcher (``_Link`` calls it; the op ``grid_velocity_backward_c`` wraps it)."""
    grad, mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next = (
        t.contiguous() for t in (grad, mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next))
    out = [torch.empty_like(t) for t in (mass, momentum, position, rotation, position_next, rotation_next)]
    _run("grid_backward", mass.dtype, _pointer(mass), _pointer(momentum), _pointer(grad), *(_pointer(t) for t in out),
         *_params(mass, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, dt, dx, grid, bound,
                  wall_friction, sticky, friction, softness, band))
    return tuple(out)


@torch.library.custom_op("tphys::grid_velocity", mutates_args=())
def grid_velocity_c(mass: Tensor, momentum: Tensor, origin: Tensor, gravity: Tensor, kinds: Tensor, sizes: Tensor, position: Tensor,
                    rotation: Tensor, position_next: Tensor, rotation_next: Tensor, dt: float, dx: float, grid: int, bound: int,
                    wall_friction: float, sticky: bool, friction: float, softness: float, band: float) -> tuple[Tensor, Tensor]:
    """(node velocities [N, WX, WY, WZ, 3], how many times a shape acted on a node [] int64) by ``cpu/grid.c``
    (contiguous CPU tensors of one float type; origin and kinds int64; poses [N, S, 3] / [N, S, 3, 3]; ``band``: the
    colliders' influence band in m, inf for every node)."""
    velocity, acted = grid_forward(mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, dt,
                                   dx, grid, bound, wall_friction, sticky, friction, softness, band)
    return velocity, torch.tensor(acted, dtype=torch.int64)


@grid_velocity_c.register_fake
def _(mass, momentum, *args) -> tuple[Tensor, Tensor]:
    return torch.empty_like(momentum), mass.new_empty((), dtype=torch.int64)


@torch.library.custom_op("tphys::grid_velocity_backward", mutates_args=())
def grid_velocity_backward_c(grad: Tensor, mass: Tensor, momentum: Tensor, origin: Tensor, gravity: Tensor, kinds: Tensor, sizes: Tensor,
                             position: Tensor, rotation: Tensor, position_next: Tensor, rotation_next: Tensor, dt: float, dx: float,
                             grid: int, bound: int, wall_friction: float, sticky: bool, friction: float, softness: float,
                             band: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dL/d mass, dL/d momentum, dL/d position, rotation, position_next, rotation_next) from dL/d velocity ``grad``."""
    return grid_backward(grad, mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, dt, dx,
                         grid, bound, wall_friction, sticky, friction, softness, band)


@grid_velocity_backward_c.register_fake
def _(grad, mass, momentum, origin, gravity, kinds, sizes, position, rotation, position_next, rotation_next, *args):
    return tuple(torch.empty_like(t) for t in (mass, momentum, position, rotation, position_next, rotation_next))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:10])
    ctx.scalars = inputs[10:]


def _backward(ctx, grad: Tensor, _):
    mass, momentum, origin, gravity, kinds, sizes, *poses = ctx.saved_tensors
    grads = grid_velocity_backward_c(grad, mass, momentum, origin, gravity, kinds, sizes, *poses, *ctx.scalars)
    return (grads[0], grads[1], None, None, None, None, *grads[2:], *(None,) * len(ctx.scalars))


grid_velocity_c.register_autograd(_backward, setup_context=_setup_context)

class _Link(torch.autograd.Function):
    """velocity (from ``grid_forward``, run without autograd) -> velocity (a copy) with the gradient of mass, momentum and
    the poses from one ``grid_backward`` call: ``grid_velocity_cpu``'s node whenever a gradient may be wanted (it passes
    the poses detached where the forward saw no shape act). Everything backward reads goes through
    save_for_backward, so a checkpoint's saved-tensor hooks drop and recompute it (a ctx attribute would stay alive
    for every substep of a checkpointed frame: +170 MB peak in a fluid_move fwd+bwd window, N = 16)."""

    @staticmethod
    def forward(ctx, velocity, scalars, mass, momentum, origin, gravity, kinds, sizes, *poses):
        ctx.save_for_backward(mass, momentum, origin, gravity, kinds, sizes, *poses)
        ctx.scalars = scalars
        return velocity.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grads = grid_backward(grad, *ctx.saved_tensors, *ctx.scalars)
        need = ctx.needs_input_grad
        return (None, None, grads[0] if need[2] else None, grads[1] if need[3] else None, None, None, None, None,
                *(g if n else None for g, n in zip(grads[2:], need[8:])))


_CONTACTS: ContextVar[list | None] = ContextVar("tphys_grid_contacts", default=None)


@contextmanager
def contacts() -> Iterator[list[int]]:
    """Inside, every ``grid_velocity_cpu`` call appends to the yielded list how many times a shape acted on a node (0: its
    velocities do not depend on the poses). Calls served by the torch twin append nothing."""
    log: list[int] = []
    token = _CONTACTS.set(log)
    try:
        yield log
    finally:
        _CONTACTS.reset(token)


def collider_args(model, like: Tensor, colliders: tuple | None) -> tuple[Tensor, Tensor, list[Tensor], tuple]:
    """(kinds [S] int64, sizes [S, 3], poses [position [N, S, 3], rotation [N, S, 3, 3], position_next, rotation_next]
    (contiguous, as given: not detached), scalars) of ``grid_forward`` / ``grid_backward`` for ``colliders`` (None or
    (shapes, *poses), see ``tphys.mpm.grid.grid_velocity``), N = like.shape[0], dtype and device of ``like``."""
    n = like.shape[0]
    if colliders is None:
        kinds = torch.zeros(0, dtype=torch.int64)
        sizes = like.new_zeros(0, 3)
        poses = [like.new_zeros(n, 0, 3), like.new_zeros(n, 0, 3, 3), like.new_zeros(n, 0, 3), like.new_zeros(n, 0, 3, 3)]
        friction, softness, band = 0.0, 0.0, math.inf
    else:
        shapes, *poses = colliders
        s = len(shapes.kinds)
        kinds = torch.tensor([_KIND_IDS[k] for k in shapes.kinds], dtype=torch.int64)
        sizes = shapes.sizes.detach().reshape(s, 3).contiguous()
        poses = [p.reshape(n, s, *((3,) if i % 2 == 0 else (3, 3))).contiguous() for i, p in enumerate(poses)]  # [N, S, 3], [N, S, 3, 3]
        friction, softness = float(shapes.friction), float(shapes.softness)
        band = math.log(1.0 / shapes.cutoff) / shapes.softness if shapes.cutoff > 0 else math.inf
    scalars = (float(model.dt), float(model.dx), int(model.grid_size), int(model.bound), float(model.wall_friction),
               bool(model.sticky_floor), friction, softness, band)
    return kinds, sizes, poses, scalars


def log_contacts(acted: int) -> None:
    """Append ``acted`` (how many times a shape acted on a node in one grid update) to the ``contacts`` log, if one is open."""
    log = _CONTACTS.get()
    if log is not None:
        log.append(acted)


def grid_velocity_cpu(model, mass: Tensor, momentum: Tensor, colliders: tuple | None, origin: Tensor) -> Tensor:
    """``tphys.mpm.grid.grid_velocity`` by ``cpu/grid.c`` (inputs as there; ``serves`` decides when)."""
    kinds, sizes, poses, scalars = collider_args(model, mass, colliders)
    mass, momentum, origin = mass.contiguous(), momentum.contiguous(), origin.to(torch.int64).contiguous()
    gravity = model.gravity.detach().contiguous()
    detached = [p.detach() for p in poses]
    velocity, acted = grid_forward(mass.detach(), momentum.detach(), origin, gravity, kinds, sizes, *detached, *scalars)
    log_contacts(acted)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (mass, momentum, *poses))):
        return velocity
    return _Link.apply(velocity, scalars, mass, momentum, origin, gravity, kinds, sizes, *(poses if acted else detached))
