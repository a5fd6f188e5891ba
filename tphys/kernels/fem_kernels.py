"""The FEM solid's substeps in C (``cpu/fem.c``) with their adjoint: loader, backend choice, launchers and the frame node.

``cpu/fem.c`` is the C twin of ``tphys.particles.solid_substep``'s ``substep_forward`` / ``substep_backward`` (the
torch functions stay the reference the tests hold it to): it runs any number of substeps of every env in one call,
forward, and their vector-Jacobian product, backward. Envs are vectorised in blocks of 16 (float) or 8 (double): one
64-byte vector, env index innermost. It is compiled by the system C compiler on first use, once per float type,
through ``c_kernels.build`` (same cache, same hash keying).

Flags: ``c_kernels.FLAGS`` plus ``-ffp-contract=fast`` (multiply-adds fused into FMA instructions: each changes a
result by at most one rounding; the order of operations stays the torch functions') and ``-mprefer-vector-width=512``.
No -ffast-math: sqrt, division and comparisons keep their IEEE semantics.

``FemKernel(model, h)`` checks and keeps a model's constants once; ``forward`` / ``backward`` run the substeps and their
adjoint without autograd; ``frame(kernel, x, v, activation, substeps)`` is the autograd node over a whole frame (one C
call forward, one backward). By default it saves every substep's input state, 2·N·P·3 numbers per substep, as one
tensor (so a checkpoint around it drops them and reruns the frame); ``keep_states=False`` saves only the frame's inputs
and its backward reruns the substeps itself, block by block (the recompute of a checkpoint without the checkpoint's
first copy of the states). Which calls it serves is ``SolidSubstep``'s decision (``tphys.particles.solid_substep``);
nothing here runs unless called.

Threads: each call splits its env blocks into ``torch.get_num_threads()`` contiguous spans of whole blocks (at most
one per block; ``c_kernels.threads`` / ``spans``) and runs one C call per span on offset pointers, concurrently
(``c_kernels.parallel``: ctypes releases the GIL), each with its own workspace and rerun buffer. Blocks are independent
and nothing is summed across envs (the activation's gradient is per env), so results are bitwise those of one
thread; one thread makes the single call of before, without the pool.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import c_kernels

SOURCE = Path(__file__).with_name("cpu") / "fem.c"
FLAGS = (*c_kernels.FLAGS, "-ffp-contract=fast", "-mprefer-vector-width=512")
BACKENDS = ("auto", "cpu", "torch")
LANES = {"float": 16, "double": 8}  # envs per block: one 64-byte vector
_REAL = c_kernels.REALS
_C_REAL = {"float": ctypes.c_float, "double": ctypes.c_double}


@cache
def _library(real: str) -> ctypes.CDLL:
    """The compiled ``fem.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    library = c_kernels.build(SOURCE, real, (*FLAGS, f"-DLANES={LANES[real]}"))
    address, integer = ctypes.c_void_p, ctypes.c_int64
    library.fem_forward.argtypes = [address] * 7 + [integer, integer, address]
    library.fem_backward.argtypes = [address] * 10 + [integer, integer, address, address]
    library.fem_forward.restype = library.fem_backward.restype = None
    library.fem_work_size.argtypes, library.fem_work_size.restype = [integer, integer], integer
    return library


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the C substeps can run for ``dtype`` (float32/float64) on this machine (compiles on first call)."""
    return c_kernels.builds(_library, dtype)


def resolve_backend(like: Tensor, backend: str) -> str:
    """"cpu" (the C substeps) or "torch" for a model whose tensors are like ``like`` under ``backend``: "auto" takes C for
    float32/float64 CPU tensors when ``fem.c`` builds, "torch" takes torch, "cpu" raises RuntimeError where C cannot
    run; ValueError on any other value."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    runs = like.device.type == "cpu" and available(like.dtype)
    if backend == "cpu" and not runs:
        raise RuntimeError(f"backend='cpu' needs a model of float32/float64 CPU tensors and a working C compiler; got {like.dtype} on "
                           f"{like.device}")
    return "cpu" if runs else "torch"


@cache
def _model_struct(real: str) -> type:
    """The ctypes mirror of ``fem.c``'s ``Model`` for one float type."""
    r = _C_REAL[real]
    pointers = ("corners", "rest_inverse", "volume", "mu", "lam", "alpha", "damping", "max_stress", "fiber", "weight", "impulse")
    reals = ("drag", "h", "height", "stiffness", "ground_damping", "friction", "slip", "smoothing")
    fields = [(n, ctypes.c_void_p) for n in pointers] + [(n, r) for n in reals]
    fields += [(n, ctypes.c_int64) for n in ("particles", "tets", "up", "has_ground")]
    return type(f"FemModel_{real}", (ctypes.Structure,), {"_fields_": fields})


class FemKernel:
    """A solid model's constants in ``fem.c``'s form for substeps of ``h`` s, checked once (the tensors kept alive here).

    ``model``: a ``ParticleModel`` of tetrahedra only, free particles, float32/float64 CPU tensors (``SolidSubstep``
    checks the model's kind). The derived constants are computed by the torch functions' own expressions (m·g, h/m,
    alpha = 1 + 0.75·mu/lam), so that both paths start from the same numbers.
    """

    def __init__(self, model, h: float):
        tets = model.tetrahedra
        dtype = model.mass.dtype
        if dtype not in _REAL or model.mass.device.type != "cpu":
            raise TypeError(f"FemKernel: the model must be float32/float64 CPU tensors, got {dtype} on {model.mass.device}")
        self.dtype, self.real = dtype, _REAL[dtype]
        self.particles, self.tets, self.h = int(model.mass.shape[0]), int(tets.corners.shape[0]), float(h)
        alpha = 1.0 + 0.75 * tets.mu / tets.lam
        tensors = dict(corners=tets.corners.to(torch.int64), rest_inverse=tets.rest_inverse, volume=tets.rest_volume, mu=tets.mu,
                       lam=tets.lam, alpha=alpha, damping=tets.damping, max_stress=tets.max_stress, fiber=tets.fiber,
                       weight=model.mass[:, None] * model.gravity, impulse=h / model.mass)
        self._tensors = {k: t.detach().contiguous() for k, t in tensors.items()}
        for k, t in self._tensors.items():
            if k != "corners" and t.dtype != dtype:
                raise TypeError(f"FemKernel: {k} is {t.dtype}, the model's mass {dtype}")
        g = model.ground
        ground = dict(height=g.height, stiffness=g.stiffness, ground_damping=g.damping, friction=g.friction, slip=g.slip,
                      smoothing=g.smoothing) if g is not None else {}
        self.struct = _model_struct(self.real)(**{k: t.data_ptr() for k, t in self._tensors.items()},
                                               drag=float(model.drag), h=float(torch.tensor(h, dtype=dtype)),
                                               **{k: float(v) for k, v in ground.items()}, particles=self.particles, tets=self.tets,
                                               up=int(model.up_axis), has_ground=int(g is not None))
        self.lanes = LANES[self.real]
        self._rerun_buffers: list[Tensor] = []  # one per thread of backward's split (``_scratch``)
        self.work_size = int(_library(self.real).fem_work_size(self.particles, self.tets))

    def _scratch(self, substeps: int, part: int = 0) -> Tensor:
        """The buffer ``backward``'s thread ``part`` reruns one block's substeps into (substeps·2·P·3·LANES reals), kept for
        reuse: fresh pages cost more than the rerun's writes (a block of 16 float envs, 80 substeps: 5.2 MB)."""
        size = substeps * 2 * self.particles * 3 * self.lanes
        while len(self._rerun_buffers) <= part:
            self._rerun_buffers.append(torch.empty(0, dtype=self.dtype))
        if self._rerun_buffers[part].numel() < size:
            self._rerun_buffers[part] = torch.empty(size, dtype=self.dtype)
        return self._rerun_buffers[part]

    def _parts(self, n: int) -> list[tuple[int, int, int, int]]:
        """The threads' shares of n envs, whole blocks each: (first block, end block, first env, end env) per thread."""
        blocks = -(-n // self.lanes)
        return [(a, b, a * self.lanes, min(b * self.lanes, n)) for a, b in c_kernels.spans(blocks, c_kernels.threads(blocks))]

    def _check(self, x: Tensor, v: Tensor, activation: Tensor) -> int:
        n = x.shape[0]
        for t in (x, v, activation):
            if t.device.type != "cpu" or t.dtype != self.dtype:
                raise TypeError(f"FemKernel: x, v, activation must be CPU {self.dtype} like the model, got {t.dtype} on {t.device}")
        if tuple(x.shape) != (n, self.particles, 3) or v.shape != x.shape or tuple(activation.shape) != (n, self.tets):
            raise ValueError(f"FemKernel: x {tuple(x.shape)}, v {tuple(v.shape)}, activation {tuple(activation.shape)} do not fit a "
                             f"model of {self.particles} particles and {self.tets} tetrahedra")
        return n

    def trajectory_shape(self, n: int, substeps: int) -> tuple[int, ...]:
        """Shape of the saved input states of ``substeps`` substeps of n envs: [blocks, substeps, 2, P, 3, LANES]."""
        return (-(-n // self.lanes), substeps, 2, self.particles, 3, self.lanes)

    def forward(self, x: Tensor, v: Tensor, activation: Tensor, substeps: int, keep: bool = False):
        """(x', v', trajectory or None) after ``substeps`` substeps from x, v [N, P, 3] under activation [N, T] (held);
        ``keep``: also every substep's input state for ``backward``. No autograd."""
        n = self._check(x, v, activation)
        x, v, activation = (t.detach().contiguous() for t in (x, v, activation))
        x1, v1 = torch.empty_like(x), torch.empty_like(v)
        trajectory = x.new_empty(self.trajectory_shape(n, substeps)) if keep else None
        library, parts = _library(self.real), self._parts(n)

        def run(x, v, activation, x1, v1, trajectory):
            work = x.new_empty(self.work_size)
            library.fem_forward(ctypes.byref(self.struct), x.data_ptr(), v.data_ptr(), activation.data_ptr(), x1.data_ptr(),
                                v1.data_ptr(), None if trajectory is None else trajectory.data_ptr(), x.shape[0], int(substeps),
                                work.data_ptr())

        if len(parts) <= 1:  # one thread: one call over every block
            if n:
                run(x, v, activation, x1, v1, trajectory)
        else:  # whole blocks per thread, each with its own workspace
            c_kernels.parallel([lambda a=a, b=b, i=i, j=j: run(x[i:j], v[i:j], activation[i:j], x1[i:j], v1[i:j],
                                                               None if trajectory is None else trajectory[a:b])
                                for a, b, i, j in parts])
        return x1, v1, trajectory

    def backward(self, x: Tensor, v: Tensor, activation: Tensor, trajectory: Tensor | None, grad_x: Tensor, grad_v: Tensor,
                 substeps: int) -> tuple[Tensor, Tensor, Tensor]:
        """(dL/dx, dL/dv [N, P, 3], dL/d activation [N, T]) of ``forward`` from dL/dx', dL/dv' [N, P, 3]; ``trajectory``:
        ``forward``'s (None: the substeps are rerun from x, v, block by block). No autograd."""
        n = self._check(x, v, activation)
        x, v, activation, grad_x, grad_v = (t.detach().contiguous() for t in (x, v, activation, grad_x, grad_v))
        if grad_x.shape != x.shape or grad_v.shape != x.shape or grad_x.dtype != self.dtype or grad_v.dtype != self.dtype:
            raise TypeError(f"FemKernel.backward: gradients must be {tuple(x.shape)} {self.dtype}")
        if trajectory is not None and (tuple(trajectory.shape) != self.trajectory_shape(n, substeps) or not trajectory.is_contiguous()):
            raise ValueError(f"FemKernel.backward: trajectory {tuple(trajectory.shape)} is not forward's for {n} envs, {substeps} substeps")
        gx, gv, ga = torch.empty_like(x), torch.empty_like(v), torch.empty_like(activation)
        library, parts = _library(self.real), self._parts(n)

        def run(x, v, activation, trajectory, grad_x, grad_v, gx, gv, ga, part):
            work = x.new_empty(self.work_size)
            scratch = self._scratch(substeps, part) if trajectory is None else None
            library.fem_backward(ctypes.byref(self.struct), x.data_ptr(), v.data_ptr(), activation.data_ptr(),
                                 None if trajectory is None else trajectory.data_ptr(), grad_x.data_ptr(), grad_v.data_ptr(), gx.data_ptr(),
                                 gv.data_ptr(), ga.data_ptr(), x.shape[0], int(substeps), work.data_ptr(),
                                 None if scratch is None else scratch.data_ptr())

        if len(parts) <= 1:
            if n:
                run(x, v, activation, trajectory, grad_x, grad_v, gx, gv, ga, 0)
        else:
            if trajectory is None:  # each thread's rerun buffer, made here rather than in the threads
                for part in range(len(parts)):
                    self._scratch(substeps, part)
            c_kernels.parallel([lambda a=a, b=b, i=i, j=j, part=part: run(
                x[i:j], v[i:j], activation[i:j], None if trajectory is None else trajectory[a:b], grad_x[i:j], grad_v[i:j], gx[i:j],
                gv[i:j], ga[i:j], part) for part, (a, b, i, j) in enumerate(parts)])
        return gx, gv, ga


class _Frame(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, activation, kernel, substeps, keep):
        x1, v1, trajectory = kernel.forward(x, v, activation, substeps, keep=keep)
        ctx.save_for_backward(x, v, activation, *([trajectory] if keep else []))
        ctx.kernel, ctx.substeps = kernel, substeps
        return x1, v1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x, grad_v):
        x, v, activation, *trajectory = ctx.saved_tensors
        grad_x = torch.zeros_like(x) if grad_x is None else grad_x
        grad_v = torch.zeros_like(v) if grad_v is None else grad_v
        grads = ctx.kernel.backward(x, v, activation, trajectory[0] if trajectory else None, grad_x, grad_v, ctx.substeps)
        return (*grads, None, None, None)


def frame(kernel: FemKernel, x: Tensor, v: Tensor, activation: Tensor, substeps: int, keep_states: bool = True) -> tuple[Tensor, Tensor]:
    """(x', v') [N, P, 3] after ``substeps`` substeps from x, v [N, P, 3] under activation [N, T] as one autograd node (first
    derivatives w.r.t. x, v and the activation; the caller routes forward-mode, double backward and model gradients
    elsewhere). ``keep_states``: the node keeps every substep's input state (2·N·P·3 numbers per substep) for its
    backward; False: only the frame's inputs, and backward reruns the substeps block by block first (one more
    forward, in a reused buffer of one block's states)."""
    return _Frame.apply(x, v, activation, kernel, int(substeps), bool(keep_states))
