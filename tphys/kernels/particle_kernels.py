"""The fused semi-implicit particle step in C (``cpu/particles.c``): its loader, its backend choice and its launcher.

``cpu/particles.c`` runs every substep of one ``tphys.particles.semi_implicit_euler`` step in one call, forward only,
for springs, cables, gravity, drag and kinematic handles; envs are vectorised in blocks of 32 (float) or 16 (double)
(structure of arrays, env index innermost, each block's state kept in L1 across the substeps). It is compiled by the
system C compiler on first use, once per float type, through ``c_kernels.build`` (same cache, same hash keying).
Which models and calls it serves is ``tphys.particles.fused_step``'s decision; nothing here runs unless called.
``prepare`` checks and keeps a model's constants once, with its ``path``; ``particle_step`` runs a step.

Three paths (``Model.path``, chosen by ``prepare``): "unrolled" for float32 models of at most
``particle_unrolled.MAX_PARTICLES`` particles and ``MAX_SPRINGS`` springs (every payload env: the substep written out
as straight-line C per model topology, ``particle_unrolled``; rope3d N = 4096: 357-372 µs a call against the band
path's 575-609 µs, same process), and the two of ``cpu/particles.c``: "band" for float32 and springs joining particles
at most ``BAND`` = 3 apart in index (chains), which sums each particle's spring forces in registers and updates it
as soon as its last spring is done, and "general" for any other springs and for float64 (a force array, then the particles; see
``BAND_DTYPES``). Kernel time per env step, rope3d, N = 4096, one thread, same-process A/B against the kernel before
the band path (commit cb5b922; thread CPU time, medians): float32 225 -> 145 ns at load 1.9, 260 -> 191 ns at load
4.2 (moving the block in and out: 38 -> 14 ns); float32 built for AVX2 only (-march=x86-64-v3) 968 -> 217 ns;
cable_payload2d float32 115 -> ~90 ns; float64 389 -> 249 ns with the band path forced (not its default, see
``BAND_DTYPES``).

Flags: ``c_kernels.FLAGS`` plus ``-ffp-contract=fast`` (multiply-adds fused into FMA instructions: each changes a
result by at most one rounding, the order of operations stays the torch path's) and ``-mprefer-vector-width=512``.
No -ffast-math: sqrt, division and comparisons keep their IEEE semantics. The one approximation is explicit: float
blocks with AVX-512 take 1/|d| of each spring from the hardware's 14-bit estimate refined by a Newton step (a few ulps;
see ``one_spring_avx512``, ``vrsqrt_refined``); float32 results then differ from the torch path's by less than float32
rounding already makes the torch path differ from float64 (``tests/particles/test_fused_step.py``). (A square root and
a division instead: as fast on the rope, but one float32 case, cable_payload2d seed 8531, came out 3.1x the torch
path's float32 error against float64, past the test's 3x; the refined estimate: 2.0x.)
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from tphys.kernels import c_kernels, particle_unrolled

SOURCE = Path(__file__).with_name("cpu") / "particles.c"
FLAGS = (*c_kernels.FLAGS, "-ffp-contract=fast", "-mprefer-vector-width=512")
BACKENDS = ("auto", "triton", "cpu", "torch")
_REAL = c_kernels.REALS


LANES = {"float": 32, "double": 16}  # envs per block: two 64-byte vectors
BAND = 3  # the band path's widest spring, |i - j|: the C file's MAX_BAND (a test reads it there)
# The dtypes that take the band path. Not float64: its per-particle order of the spring-force sum (and so its rounding)
# is not the torch path's, and the stiff cables amplify that ~1e3-fold an env step: pendulum2d float64 50-step
# trajectories came out up to 2e-9 from the torch path's (tests/particles/test_fused_step.py holds the default float64
# path to 1e-9; the general path, whose rounding follows the torch path's more closely: 1e-10).
BAND_DTYPES = (torch.float32,)
PATHS = ("band", "general")  # the paths of cpu/particles.c; ``prepare`` may take particle_unrolled's instead


@cache
def _library(real: str):
    return c_kernels.build(SOURCE, real, (*FLAGS, f"-DLANES={LANES[real]}"))


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused step can run for ``dtype`` (float32/float64) on this machine (compiles on first call)."""
    return c_kernels.builds(_library, dtype)


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


class Model(NamedTuple):
    """A model's constants in the kernel's form (``prepare``): the tensors (kept alive here) and their addresses."""

    tensors: tuple
    pointers: tuple
    particles: int
    dim: int
    springs: int
    dtype: torch.dtype
    path: str  # "unrolled", "band" or "general" (``path``, ``prepare``)
    unrolled: tuple | None = None  # the unrolled path's (ctypes function, constants tensor, its address), else None


def path(first: Tensor, second: Tensor, band: int | None = None, dtype: torch.dtype = torch.float32) -> str:
    """The kernel's path for springs joining particles ``first``, ``second`` [S] in ``dtype``: "band" when ``dtype`` is
    in ``BAND_DTYPES`` (float32) and every spring joins particles at most ``band`` (default ``BAND``) apart in index,
    0 < |i - j| <= band (chains: the rope's cables i, i+1 and bending springs i, i+2; every payload env), else
    "general". The band path keeps each particle's spring-force sum
    in registers and updates the particle as soon as its last spring is done (``cpu/particles.c``, "the band path");
    the general one sums every spring into a force array first. Same results up to the order of a particle's
    spring-force sum."""
    gap = (first - second).abs()
    band = BAND if band is None else band
    return "band" if dtype in BAND_DTYPES and bool(((gap >= 1) & (gap <= band)).all()) else "general"


def prepare(handle: Tensor, free: Tensor, impulse: Tensor, weight: Tensor, drag: float, first: Tensor, second: Tensor, rest: Tensor,
            stiffness: Tensor, damping: Tensor, cable: Tensor, width: float) -> Model:
    """The constants of ``particle_step`` (CPU tensors of one float type, index tensors int64), checked once.

    Args:
        handle: [P] int64, the handle index of each particle or -1; free: [P] 1 free / 0 handle.
        impulse: [P] h·free/m, s/kg; weight: [P, d] m·g, N; drag: N·s/m.
        first, second: [S] int64 particles i, j of each spring (force along x_j - x_i), i != j; rest [S] m, stiffness [S]
            N/m, damping [S] N·s/m, cable [S] 1 tension-only / 0 spring; width: m, the cables' slack width.
    """
    reals = (free, impulse, weight, rest, stiffness, damping, cable)
    tensors = tuple(t.contiguous() for t in (handle, free, impulse, weight, first, second, rest, stiffness, damping, cable))
    if any(t.device.type != "cpu" for t in tensors) or any(t.dtype != free.dtype for t in reals) or free.dtype not in _REAL:
        raise TypeError(f"particle_step: constants must be CPU tensors of one float type, got {[t.dtype for t in reals]}")
    if any(t.dtype != torch.int64 for t in (handle, first, second)):
        raise TypeError("particle_step: handle, first and second must be int64")
    ptr = [t.data_ptr() for t in tensors]
    pointers = (*ptr[:4], float(drag), *ptr[4:], float(width))
    dim = int(weight.shape[-1])
    unrolled = _unrolled(dim, free, impulse, weight, drag, first, second, rest, stiffness, damping, cable, width)
    return Model(tensors, pointers, int(free.shape[0]), dim, int(first.shape[0]), free.dtype,
                 "unrolled" if unrolled is not None else path(first, second, dtype=free.dtype), unrolled)


def _unrolled_function(top: particle_unrolled.Topology, real: str):
    """The unrolled step for ``top`` built with this module's flags (tests route it to other builds)."""
    return particle_unrolled.function(top, real, (*FLAGS, f"-DLANES={LANES[real]}"))


def _unrolled(dim, free, impulse, weight, drag, first, second, rest, stiffness, damping, cable, width) -> tuple | None:
    """The unrolled path's (function, constants, their address) for a model it takes (``particle_unrolled``: small
    models of a dtype in its DTYPES, where the build works), else None."""
    if free.dtype not in particle_unrolled.DTYPES:
        return None
    top = particle_unrolled.topology(dim, free, impulse, drag, first, second, damping, cable)
    if top is None:
        return None
    try:
        function = _unrolled_function(top, _REAL[free.dtype])
    except (RuntimeError, OSError):  # no compiler, a failed build, an unwritable cache: the band or general path serves it
        return None
    values = particle_unrolled.constants(top, rest, stiffness, damping, cable, width, weight, impulse, free, drag)
    return function, values, values.data_ptr()


_FUNCTIONS: dict = {}  # (_library, dtype) -> _function(its REAL), for particle_step


def _function(real: str):
    function = _library(real).particle_step
    if function.argtypes is None:
        address, real_t, integer = ctypes.c_void_p, ctypes.c_double, ctypes.c_int64
        function.argtypes = [address] * 9 + [real_t] + [address] * 6 + [real_t] + [integer] * 6 + [real_t, integer]
        function.restype = ctypes.c_int
    return function


def particle_step(model: Model, x: Tensor, v: Tensor, u: Tensor | None, substeps: int, h: float,
                  handle_map: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(x, v) [N, P, d] after ``substeps`` substeps of ``h`` s (see ``cpu/particles.c``) from x, v [N, P, d] (m, m/s)
    under handle velocities u [N, H, d] (m/s), or (u None) ``handle_map`` = (action [N, A], basis [A, H, d] m/s) with
    u = action @ basis, which the unrolled path computes in the kernel (the others take torch.mm's u): contiguous CPU
    tensors of the model's dtype. No autograd."""
    n, dtype = x.shape[0], model.dtype
    if u is None and model.unrolled is None:
        action, basis = handle_map
        u = torch.mm(action, basis.flatten(1)).view(action.shape[0], *basis.shape[1:])
    inputs = (x, v, u) if u is not None else (x, v, *handle_map)
    if not all(t.dtype is dtype and t.is_cpu and t.is_contiguous() for t in inputs):
        t = next(t for t in inputs if not (t.dtype is dtype and t.is_cpu and t.is_contiguous()))
        raise TypeError(f"particle_step: x, v and the handle velocities must be contiguous CPU {dtype}, got {t.dtype} on {t.device}")
    if u is not None:
        handles, fits = (u.shape[1] if u.dim() == 3 else 0), u.dim() == 3 and u.shape[0] == n and u.shape[2] == model.dim
        given = f"u {tuple(u.shape)}"
    else:
        action, basis = handle_map
        handles = basis.shape[1] if basis.dim() == 3 else 0
        fits = (action.dim() == 2 and basis.dim() == 3 and action.shape[0] == n and action.shape[1] == basis.shape[0] > 0
                and basis.shape[2] == model.dim)
        given = f"action {tuple(action.shape)}, basis {tuple(basis.shape)}"
    if x.shape != (n, model.particles, model.dim) or v.shape != x.shape or not fits:
        raise ValueError(f"particle_step: x {tuple(x.shape)}, v {tuple(v.shape)}, {given} do not fit a model of "
                         f"{model.particles} particles in {model.dim}-D")
    x1, v1 = torch.empty_like(x), torch.empty_like(x)
    if model.unrolled is not None:
        function, _, constants = model.unrolled
        handle, free = model.pointers[0], model.pointers[1]
        if u is not None:
            commands = (u.data_ptr(), None, None, 0)
        else:
            commands = (None, handle_map[0].data_ptr(), handle_map[1].data_ptr(), handle_map[0].shape[1])
        particles = function(x.data_ptr(), v.data_ptr(), *commands, x1.data_ptr(), v1.data_ptr(), handle, free, constants, n, handles,
                             int(substeps), float(h))
        if particles != model.particles:  # the build is keyed on the topology; a disagreement is a bug here or there
            raise RuntimeError(f"particle_step: the unrolled step was built for {particles} particles, the model has {model.particles}")
        return x1, v1
    banded = model.path == "band"
    key = (_library, dtype)  # the loader too: tests route it to other builds
    function = _FUNCTIONS.get(key) or _FUNCTIONS.setdefault(key, _function(_REAL[dtype]))
    taken = function(x.data_ptr(), v.data_ptr(), u.data_ptr(), x1.data_ptr(), v1.data_ptr(), *model.pointers, n, model.particles,
                     model.dim, handles, model.springs, int(substeps), float(h), int(banded))
    if taken != banded:  # the C file checks the band itself; a disagreement is a bug here or there
        raise RuntimeError(f"particle_step: the C step took path {PATHS[1 - taken]!r}, the model's is {model.path!r}")
    return x1, v1
