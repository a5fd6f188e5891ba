"""The fused particle step's "unrolled" path: one C function per model topology, every substep straight-line code.

``cpu/particles.c`` walks a model's springs and particles in loops over its plan (the band and general paths). For a
small model (at most ``MAX_PARTICLES`` particles and ``MAX_SPRINGS`` springs: every payload env) this module writes
the substep out instead, spring by spring and particle by particle, as C source (``source``), builds it once per
topology and float type through ``c_kernels.build`` (cached across processes, like every tphys kernel) and runs it on
the same block layout (``cpu/particle_block.h``: envs LANES at a time, a block's state transposed into
[P][D][LANES]). Each state vector of a block is then a local variable that the compiler keeps in a register or
spills next to the others across the substeps (no loads of the plan, no index arithmetic, no branches on the
spring kinds), and the springs of a substep, all independent, are in one basic block for the CPU to overlap.

What the code depends on is the topology (``Topology``): the dimension, which particles are free, handles or
partly free, whether there is drag, and for each spring its two particles, whether it is a cable (cable value 0, 1
or between) and whether it is damped: the exact 0s and 1s that drop terms, as the band path's kinds do. The numbers
(rest lengths, stiffness, damping, cable values, slack width, weights, impulses, drag) are read from one array of
constants (``constants``), so that a model with other numbers and the same springs takes the same build.

Arithmetic: the band path's, expression for expression (``spring_tension`` of ``particle_block.h``; each particle's
force is its weight, then its springs in the order of their higher particle, then (with drag) - drag·v; the updates
of ``band_update``). Built without FMA contraction the two paths agree bit for bit; with it (``particle_kernels.FLAGS``)
the compiler fuses a few multiply-adds differently in the two, a difference of one rounding (float64 pendulum2d, one
substep: 3e-17 m/s). ``tests/particles/test_fused_step.py`` holds it to the torch path like the other paths.

Springs of one kind go in pairs (``pairs``): ``spring_tensions`` writes each statement for both, so that their
independent dependency chains (|d|², the refined 1/|d|, the slack ramp, the damping) interleave. Each particle's force
sum starts just before its first spring and the particle is updated just after its last (no later spring reads it).
The handle velocities come as u [N, H, d] or as action [N, A] @ basis [A, H, d] computed in ``load_block``
(``ParticleControl.handle_map``: the payload envs' commands, no matmul call).

Time (rope3d, N = 4096, 16 substeps, one thread, same process): the C call 330-360 µs (177-191 cycles a 16-env vector
and substep, the block transposes 66-72 µs), against the band path's 575-609 µs; ``benchmarks/particle_split.py``
splits it.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

MAX_PARTICLES = 32  # the largest model written out (code size and build time grow with it; larger: the band path)
MAX_SPRINGS = 96
PAIR_LOOKAHEAD = 2  # a spring's tension is computed beside the next one of its kind at most this many places on (``pairs``):
# rope3d 186-189 -> 177-181 cycles a vector-substep; groups of 3 or 4 ran slower (188-190, 222-225: registers spilled)
DTYPES = (torch.float32,)  # float64 keeps the general path (particle_kernels.BAND_DTYPES: its rounding follows torch's)
HEADER = "particle_block.h"
FREE, STILL, ANY = 0, 1, 2  # particle kinds, particle_block.h's enum
SPRING, CABLE, BLEND = 0, 1, 2  # spring kinds, same


class Topology(NamedTuple):
    """What the generated code depends on (see the module docstring); springs in the order the code adds them (by
    higher particle, then their index in the model), each (lower, higher, kind, damped, index in the model)."""

    dim: int
    particles: tuple[int, ...]  # FREE, STILL or ANY per particle
    dragged: bool
    springs: tuple[tuple[int, int, int, bool, int], ...]


def particle_kind(free: float, impulse: float) -> int:
    return FREE if free == 1 else STILL if free == 0 and impulse == 0 else ANY


def topology(dim: int, free: Tensor, impulse: Tensor, drag: float, first: Tensor, second: Tensor, damping: Tensor,
             cable: Tensor) -> Topology | None:
    """The model's ``Topology``, or None where the unrolled path does not take it (more than ``MAX_PARTICLES``
    particles or ``MAX_SPRINGS`` springs; a spring from a particle to itself)."""
    count = int(free.shape[0])
    if count > MAX_PARTICLES or first.shape[0] > MAX_SPRINGS or bool((first == second).any()):
        return None
    kinds = tuple(particle_kind(f, i) for f, i in zip(free.tolist(), impulse.tolist()))
    springs = []
    for k, (i, j, c, d) in enumerate(zip(first.tolist(), second.tolist(), cable.tolist(), damping.tolist())):
        springs.append((min(i, j), max(i, j), SPRING if c == 0 else CABLE if c == 1 else BLEND, d != 0, k))
    springs.sort(key=lambda s: (s[1], s[4]))
    return Topology(dim, kinds, drag != 0, tuple(springs))


def constants(top: Topology, rest: Tensor, stiffness: Tensor, damping: Tensor, cable: Tensor, width: float, weight: Tensor,
              impulse: Tensor, free: Tensor, drag: float) -> Tensor:
    """The numbers the generated code reads, in its order: per spring (the code's order) rest m, stiffness N/m,
    damping N·s/m, cable value; then 1/w and w/2 of the slack width w (m); weight [P, D] N; impulse [P] s/kg; free [P];
    drag N·s/m. One contiguous CPU tensor of the model's float type."""
    order = torch.tensor([s[4] for s in top.springs], dtype=torch.int64)
    per_spring = torch.stack([t[order] for t in (rest, stiffness, damping, cable)], -1).flatten()
    dtype = free.dtype
    w = torch.tensor(width, dtype=dtype)  # the band path's (REAL)1 / w and (REAL)0.5 * w, in the float type
    scalars = torch.stack([torch.ones((), dtype=dtype) / w, torch.tensor(0.5, dtype=dtype) * w])
    return torch.cat([per_spring, scalars, weight.flatten(), impulse, free, torch.tensor([drag], dtype=dtype)]).contiguous()


def pairs(springs) -> list[list[int]]:
    """The springs (indices into ``springs``, in their order) in groups of one or two of the same kind and damping:
    each spring with the next unpaired one of its kind at most ``PAIR_LOOKAHEAD`` places on (``spring_tensions``
    computes a pair's tensions side by side)."""
    groups, taken = [], set()
    for k, spring in enumerate(springs):
        if k in taken:
            continue
        taken.add(k)
        mate = next((m for m in range(k + 1, min(k + 1 + PAIR_LOOKAHEAD, len(springs)))
                     if m not in taken and springs[m][2:4] == spring[2:4]), None)
        if mate is not None:
            taken.add(mate)
        groups.append([k] if mate is None else [k, mate])
    return groups



def source(top: Topology) -> str:
    """The C source of ``particle_unrolled_step`` for models of topology ``top`` (see the module docstring). One vector
    of envs at a time: two side by side (more independent work a substep, but twice the live state) ran 3-7 % slower
    on rope3d."""
    dim, count = top.dim, len(top.particles)
    springs = len(top.springs)
    inv_width, half_width = 4 * springs, 4 * springs + 1
    weight, impulse = 4 * springs + 2, 4 * springs + 2 + count * dim
    free, drag = impulse + count, impulse + 2 * count
    axes = range(dim)
    lines = [f"/* Written by tphys/kernels/particle_unrolled.py for {count} particles (kinds {list(top.particles)}: 0 free, 1 handle,",
             f" * 2 partly free), {springs} springs (lower, higher, kind, damped, index): {[s[:4] for s in top.springs]},",
             f" * {dim}-D, {'with' if top.dragged else 'no'} drag. */",
             f'#include "{HEADER}"', "", f"enum {{ D = {dim}, P = {count} }};", "",
             "/* The substeps of the vector of envs at lane e0 of the block arrays X, V. */",
             "static void substeps_of(REAL *X, REAL *V, int e0, int64_t substeps, REAL h, const REAL *restrict c) {"]
    emit = lines.append
    for p in range(count):
        for a in axes:
            emit(f"    vec x{p}_{a} = vload(X + AT({p}, {a}) + e0), v{p}_{a} = vload(V + AT({p}, {a}) + e0);")
    emit("    for (int64_t step = 0; step < substeps; step++) {")
    # Each particle's force sum starts (at its weight) just before its first spring, and the particle is updated just
    # after its last one: no later spring of the substep reads it (they come in order of their higher particle), and
    # the sums and old states live no longer than they must (fewer registers spilled).
    groups = pairs(top.springs)
    touching = [[g for g, group in enumerate(groups) if any(p in top.springs[k][:2] for k in group)] for p in range(count)]

    def start(p):
        if top.particles[p] != STILL:
            emit("        vec " + ", ".join(f"f{p}_{a} = vset(c[{weight + p * dim + a}])" for a in axes) + ";")

    def update(p):
        for a in axes:
            if top.particles[p] != STILL:
                force = f"f{p}_{a} - c[{drag}] * v{p}_{a}" if top.dragged else f"f{p}_{a}"
                scaled = f"({force})" if top.particles[p] == FREE else f"({force}) * c[{free + p}]"
                emit(f"        v{p}_{a} = v{p}_{a} + c[{impulse + p}] * {scaled};")
            emit(f"        x{p}_{a} = x{p}_{a} + h * v{p}_{a};")

    for p in range(count):
        if not touching[p]:
            start(p)
            update(p)
    for g, group in enumerate(groups):
        ends = sorted({q for k in group for q in top.springs[k][:2]})
        for p in ends:
            if touching[p][0] == g:
                start(p)
        kind, damped = top.springs[group[0]][2:4]
        emit(f"        {{ /* springs {group}: particles {[top.springs[k][:2] for k in group]} */")
        def rows(name):  # {name_hi - name_lo, per axis} of each spring of the group
            ends = [top.springs[k][:2] for k in group]
            return ", ".join("{" + ", ".join(f"{name}{hi}_{a} - {name}{lo}_{a}" for a in axes) + "}" for lo, hi in ends)

        emit(f"            const vec d[2][3] = {{{rows('x')}}};")
        if damped:
            emit(f"            const vec dv[2][3] = {{{rows('v')}}};")
        constant = ["(const REAL[]){" + ", ".join(f"c[{4 * k + i}]" for k in group) + "}" for i in range(4)]
        emit("            vec g[2];")
        velocities = "dv" if damped else "0"
        emit(f"            spring_tensions(D, {kind}, {int(damped)}, {len(group)}, d, {velocities}, 0, 0, {', '.join(constant)}, "
             f"c[{inv_width}], c[{half_width}], g);")
        for j, k in enumerate(group):
            lo, hi = top.springs[k][:2]
            for a in axes:
                if top.particles[hi] != STILL:  # the forces on a handle are never used
                    emit(f"            f{hi}_{a} = f{hi}_{a} - g[{j}] * d[{j}][{a}];")
                if top.particles[lo] != STILL:
                    emit(f"            f{lo}_{a} = f{lo}_{a} + g[{j}] * d[{j}][{a}];")
        emit("        }")
        for p in ends:
            if touching[p][-1] == g:
                update(p)
    emit("    }")
    for p in range(count):
        for a in axes:
            emit(f"    vstore(X + AT({p}, {a}) + e0, x{p}_{a});")
            emit(f"    vstore(V + AT({p}, {a}) + e0, v{p}_{a});")
    emit("}")
    emit("""
/* x1, v1 [N, P, D] after `substeps` substeps of length h from x0, v0 [N, P, D] under handle velocities u [N, handles, D]
 * or (u = 0) action [N, inputs] · basis [inputs, handles, D] (load_block); handle [P] (-1 or the handle index),
 * free [P], c: the constants (particle_unrolled.constants). Returns P. A block's vectors past its last env (a partial
 * last block) repeat that env and are not stored. */
int particle_unrolled_step(const REAL *x0, const REAL *v0, const REAL *u, const REAL *action, const REAL *basis, int64_t inputs, REAL *x1,
                           REAL *v1, const int64_t *handle, const REAL *free, const REAL *c, int64_t n, int64_t handles, int64_t substeps,
                           double h) {
    for (int64_t first = 0; first < n; first += LANES) {
        const int64_t lanes = n - first < LANES ? n - first : LANES;
        REAL X[P * D * LANES] __attribute__((aligned(64)));
        REAL V[P * D * LANES] __attribute__((aligned(64)));
        load_block(D, P, x0, v0, u, action, basis, inputs, handle, free, handles, X, V, first, n);
        for (int e0 = 0; e0 < lanes; e0 += VW) substeps_of(X, V, e0, substeps, (REAL)h, c); /* vectors with an env */
        scatter(D, X, x1, first, lanes, P);
        scatter(D, V, v1, first, lanes, P);
    }
    return P;
}""")
    return "\n".join(lines) + "\n"


def _source_file(top: Topology) -> Path:
    """``source(top)`` written once into the kernel cache (named by its hash; c_kernels.build then keys the build on
    it and on the header it includes)."""
    from tphys.kernels import c_kernels

    text = source(top)
    path = c_kernels._cache_dir() / "sources" / f"particles_unrolled_{hashlib.sha256(text.encode()).hexdigest()[:16]}.c"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(text)
        os.replace(scratch, path)  # whole or absent: safe across processes
    return path


@cache
def function(top: Topology, real: str, flags: tuple[str, ...]):
    """The ctypes function ``particle_unrolled_step`` built for ``top`` and the C type ``real`` with ``flags``."""
    import ctypes

    from tphys.kernels import c_kernels

    fn = c_kernels.build(_source_file(top), real, flags).particle_unrolled_step
    address, integer = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [address] * 5 + [integer] + [address] * 5 + [integer] * 3 + [ctypes.c_double]
    fn.restype = ctypes.c_int
    return fn
