"""Roofline per engine family: how close one env step comes to what this CPU can do.

For one env of each family (rope3d: particles and cables; soft_jumper: FEM tetrahedra with muscles; ant: articulated
rigid bodies; rolling_flat: MLS-MPM) the script

1. counts, from the model's sizes, the useful floating-point operations and bytes of one env step (``counts``);
2. measures this machine's memory bandwidth (a STREAM-like triad ``a = b + s·c`` over float32 arrays of 64 MB, 3
   arrays counted, no write-allocate, timed chunk by chunk, the best time of each chunk kept) and its flop rate: a
   GEMM ``C = A·B`` (512², float32, 2n³ flops, the best run) and the core's peak, independent chains of vector
   multiply-adds in registers (``benchmarks/fma_peak.c``, float32, the widest vectors the compiler targets, one chain
   set per thread); each with one thread and with every core (``torch.set_num_threads``; the peak probe on that many
   threads at once);
3. times the env's forward (``physics_step`` under no_grad, the core loop of ``benchmarks/throughput.py``, no TorchRL)
   at N envs, and reports the fraction of the bound it reaches.

Clocks: with one thread every time (probes and env steps) is the CPU time of the measuring thread
(``time.thread_time``), so that other processes on a loaded machine change the figures little (they still share the
caches and the memory bus); with more threads, wall time.

The bound. Per env step, t* = max(flops / F, bytes / B) with F the higher of the GEMM rate and the multiply-add peak
and B the DRAM triad bandwidth of the same thread count (torch's GEMM is not the ceiling everywhere: on an AMD Zen 5
host it ran at 104 GFLOP/s, the peak probe at 236-242, and soft_jumper's C frame kernels at 145, so a GEMM-only F
was no bound; without a C compiler F is the GEMM rate and the table says so); bound env-steps/s = 1 / t*; achieved
fraction = measured env-steps/s / bound env-steps/s.
"bytes" are the useful bytes: each env's state read once and written once per env step, its action read, its reward
and observation written (what a step fused over all its substeps must move; the model's constants are shared by the
N envs and not counted; a semi-implicit particle step's ``x_prev``, ``v_prev`` are its input ``x``, ``v``, not new
data, and are not counted). A second column, "bytes per substep", counts the state read and written once per substep
(and, for MPM, the grid), what an implementation that keeps each substep's state in memory moves; it is shown, not
used in the bound. Intermediate values (spring forces, stresses, grid nodes in a fused step) are not useful bytes.

The flop counts (per env; an add, multiply, divide, sqrt or exp is one flop, a fused multiply-add two; gathers,
scatters-as-copies, clamps and comparisons none). Constants are the module's ``*_FLOPS`` names:

    particles (rope3d), per substep, each term only where the model has it (rope3d: 5 damped cables, 4 undamped
    bending springs, no drag):
        each spring                                                         SPRING_FLOPS = 23
            d = x_j - x_i (3), length: dot + sqrt (6), unit vector (3), stretch (1), magnitude k·s (1), f·u (3),
            the ± scatter (6)
        + each damped spring (damping > 0)                                  DAMPING_FLOPS = 10
            relative velocity (3), rate = u·Δv (5), + c·rate (2)
        + each cable (tension only)                                         SLACK_FLOPS = 6
            the smooth slack ramp
        each free particle                                                  PARTICLE_BASE_FLOPS = 15
            gravity m·g (3), v += h·f/m (6), x += h·v (6)
        + drag, when the model's drag is not 0                              DRAG_FLOPS = 6
    (Until 2026-12-02 every spring was charged 40 and every particle 21 whatever the model had: 18 % more flops than
    rope3d needs, which inflated the fraction.)
    FEM (soft_jumper), per substep:
        each tetrahedron                                                    TET_FLOPS = 320
            edge matrix Ds (9), F = Ds·Dm⁻¹ (45), det F (14), F⁻ᵀ by cofactors (30), neo-Hookean
            P = μ(F - F⁻ᵀ) + λ·log J·F⁻ᵀ (40), damping Ḟ = Dv·Dm⁻¹ and η·Ḟ (72), the muscle fibre term
            a·σ·(F f)⊗f with its stretch (41), corner forces -V·P·Dm⁻ᵀ (54), the fourth corner (6), scatter (12)
        each particle                                                        PARTICLE_FLOPS + GROUND_FLOPS (21 + 25)
            the integrator as above with drag (PARTICLE_FLOPS = 15 + 6), penalty ground contact with friction (25)
    rigid (ant), per substep, L links, nv dofs, nq coordinates, C contact spheres:
        forward kinematics, per link                                        FK_FLOPS = 90
            joint rotation (30), R_parent·R (45), R·p + t (15)
        contact, per sphere                                                 CONTACT_FLOPS = 110
            world position (15), penetration (3), penalty normal force (10), point velocity (15), friction (20),
            Jᵀf onto its ancestor dofs (~3 dofs x 14 = 42, rounded)
        bias forces (RNEA), per link                                        RNEA_FLOPS = 250
            spatial velocity and acceleration propagation (100), I·a + v ×* I·v (100), force transform back (50)
        mass matrix (CRBA)                                                  CRBA_LINK_FLOPS·L + 12·nv²  (150 per link)
        Cholesky factor and two triangular solves                           nv³/3 + 2·nv²
        integration                                                         2·nv + 2·nq + 30 (quaternion normalisation)
    MPM (rolling_flat), per substep, P particles, W grid nodes (the window of one env's particles):
        each particle                                                       MPM_PARTICLE_FLOPS = 2340
            stress: signed 3x3 SVD (500), plastic return mapping (50), stress products (100);
            P2G: quadratic B-spline weights (30), 27 nodes x (weight 2, mass 2, affine·Δx 15, momentum 9) = 756;
            G2P: weights (30), 27 nodes x (weight 2, velocity 6, affine outer product 22) = 810;
            F_trial = (I + dt·C)·F (54), x += dt·v (6)
        each grid node                                                      GRID_NODE_FLOPS = 100
            v = mv/m (4), gravity (3), the collider SDF and its influence exp (50), normal removal and friction
            (33), walls and floor (10)
        the tool's joint interpolation and pose: negligible (< 1 %)

Bytes (float32 = 4 B a number) per env step, fused: 2·(state numbers) + action + observation + 1 (reward).
Per substep: substeps · 2·(state numbers) (+ MPM: 14 numbers a grid node: m and mv written by P2G and read by the
grid update, v written and read by G2P) + action + observation + 1.

These are estimates of the arithmetic a straightforward implementation needs (within perhaps ±30 % per stage); the
point is the order of magnitude of the gap. Run on an otherwise idle machine:

    python benchmarks/roofline.py                               # the four engines at their default N, threads 1 and all
    python benchmarks/roofline.py --envs rope3d:4096 --threads 1 --seconds 3 --out /tmp/r.md
    python benchmarks/roofline.py --no-write                    # print the table only

The table goes into ``--out`` (default benchmarks/RESULTS.md), section ``roofline``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import run_header, usable_cores, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SPRING_FLOPS, DAMPING_FLOPS, SLACK_FLOPS = 23, 10, 6
PARTICLE_BASE_FLOPS, DRAG_FLOPS, GROUND_FLOPS = 15, 6, 25
PARTICLE_FLOPS = PARTICLE_BASE_FLOPS + DRAG_FLOPS
TET_FLOPS = 320
FK_FLOPS, CONTACT_FLOPS, RNEA_FLOPS, CRBA_LINK_FLOPS = 90, 110, 250, 150
MPM_PARTICLE_FLOPS, GRID_NODE_FLOPS, GRID_NODE_NUMBERS = 2340, 100, 14

DEFAULT_ENVS = ("rope3d:4096", "soft_jumper:64", "ant:64", "rolling_flat:1")
FAMILY = {"rope3d": "particles", "rope": "particles", "soft_jumper": "FEM", "ant": "rigid", "rolling_flat": "MPM"}


@dataclass(frozen=True)
class Counts:
    """Useful work of one env step of one env: flops, bytes (fused: state once a step) and bytes per substep."""

    flops: float
    bytes_step: float
    bytes_substep: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_step


def counts(family: str, sizes: dict, itemsize: int = 4) -> Counts:
    """Flops and bytes of one env step (see the module docstring) from ``sizes``: ``substeps``, ``state`` (numbers of
    one env's state), ``action``, ``observation`` and per family: particles ``particles``, ``free``, ``springs``,
    ``damped`` and ``cables`` (how many of the springs), ``drag`` (1 or 0); FEM
    ``particles``, ``tets``; rigid ``links``, ``nv``, ``nq``, ``contacts``; MPM ``particles``, ``nodes``."""
    s = sizes["substeps"]
    if family == "particles":
        per_substep = (SPRING_FLOPS * sizes["springs"] + DAMPING_FLOPS * sizes["damped"] + SLACK_FLOPS * sizes["cables"]
                       + (PARTICLE_BASE_FLOPS + DRAG_FLOPS * sizes["drag"]) * sizes["free"])
        grid_numbers = 0
    elif family == "FEM":
        per_substep = TET_FLOPS * sizes["tets"] + (PARTICLE_FLOPS + GROUND_FLOPS) * sizes["particles"]
        grid_numbers = 0
    elif family == "rigid":
        links, nv, nq = sizes["links"], sizes["nv"], sizes["nq"]
        per_substep = ((FK_FLOPS + RNEA_FLOPS + CRBA_LINK_FLOPS) * links + CONTACT_FLOPS * sizes["contacts"] + 12 * nv**2
                       + nv**3 / 3 + 2 * nv**2 + 2 * nv + 2 * nq + 30)
        grid_numbers = 0
    elif family == "MPM":
        per_substep = MPM_PARTICLE_FLOPS * sizes["particles"] + GRID_NODE_FLOPS * sizes["nodes"]
        grid_numbers = GRID_NODE_NUMBERS * sizes["nodes"]
    else:
        raise ValueError(f"unknown family {family!r}; valid: particles, FEM, rigid, MPM")
    io = sizes["action"] + sizes["observation"] + 1
    return Counts(flops=float(s * per_substep), bytes_step=float(itemsize * (2 * sizes["state"] + io)),
                  bytes_substep=float(itemsize * (s * (2 * sizes["state"] + grid_numbers) + io)))


def model_sizes(env) -> dict:
    """``counts``'s sizes of a built tphys env (any N; sizes are per env)."""
    import math

    td = env.reset()
    keys = env.state_keys
    if getattr(env, "integrator", None) == "semi_implicit":
        keys = [k for k in keys if k not in ("x_prev", "v_prev")]  # the step's input x, v: no new data (BDF2's history)
    state = sum(math.prod(td.get(k).shape[1:]) for k in keys)
    observation = math.prod(td.get("observation").shape[1:])
    sizes = dict(substeps=int(env.substeps), state=int(state), action=int(env.action_dim), observation=int(observation))
    m = env.model
    family = family_of(env)
    if family == "particles":
        springs = m.springs
        sizes.update(particles=int(m.mass.shape[0]), free=int(m.free_mask.sum()), springs=int(springs.rest_length.shape[0]),
                     damped=int((springs.damping > 0).sum()), cables=int((springs.tension_only > 0).sum()),
                     drag=int(bool((m.drag != 0).any())))
    elif family == "FEM":
        sizes.update(particles=int(m.mass.shape[0]), tets=int(m.tetrahedra.corners.shape[0]))
    elif family == "rigid":
        sizes.update(links=int(m.links.parent.shape[0]), nv=int(td.get("qd").shape[-1]), nq=int(td.get("q").shape[-1]),
                     contacts=int(m.contacts.link.shape[0]))
    else:
        from tphys.mpm.grid import window

        x = td.get("x")[:1]
        _, shape = window(m, x)
        sizes.update(particles=int(x.shape[1]), nodes=int(math.prod(shape)))
    return sizes


def family_of(env) -> str:
    name = type(env.model).__name__
    if name == "RigidModel":
        return "rigid"
    if name == "MPMModel":
        return "MPM"
    return "FEM" if getattr(env.model, "tetrahedra", None) is not None else "particles"


# ---------------------------------------------------------------------------- machine probes
def clock(threads: int):
    """The clock of a measurement: with one thread the CPU time of this thread (``time.thread_time``: a loaded machine
    changes it little, time spent descheduled does not count), else wall time."""
    return time.thread_time if threads == 1 else time.perf_counter


def triad_bandwidth(numbers: int, threads: int, seconds: float = 0.5, chunk: int = 2**18, repeat: int = 1) -> float:
    """Bytes/s of ``a = b + 3·c`` over float32 arrays of ``numbers`` elements (3 arrays counted, STREAM's convention),
    swept in chunks of ``chunk`` elements, each chunk timed on its own and its best time over the sweeps kept (the
    arrays are far larger than the caches, so each chunk streams from memory); ``repeat`` triads a chunk per timing
    (for arrays that fit in cache: amortizes the clock's own cost)."""
    import torch

    torch.set_num_threads(threads)
    now = clock(threads)
    b, c = torch.rand(numbers), torch.rand(numbers)
    a = torch.empty(numbers)
    starts = range(0, numbers, chunk)
    best = [float("inf")] * len(starts)
    t_end = time.perf_counter() + seconds
    sweeps = 0
    while sweeps < 2 or time.perf_counter() < t_end:
        for i, k in enumerate(starts):
            t0 = now()
            for _ in range(repeat):
                torch.add(b[k:k + chunk], c[k:k + chunk], alpha=3.0, out=a[k:k + chunk])
            best[i] = min(best[i], (now() - t0) / repeat)
        sweeps += 1
    return 3 * 4 * numbers / sum(best)


def gemm_rate(n: int, threads: int, seconds: float = 0.5) -> float:
    """Flop/s of a float32 n x n matrix product (2n³ flops; the best of repeated runs)."""
    import torch

    torch.set_num_threads(threads)
    now = clock(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t0 = now()
        torch.mm(a, b, out=c)
        best = min(best, now() - t0)
    return 2 * n**3 / best


def peak_rate(threads: int, seconds: float = 0.5, iterations: int = 2_000_000) -> float | None:
    """Flop/s of ``benchmarks/fma_peak.c`` (vector multiply-adds in registers, float32) on ``threads`` threads at once
    (each runs ``iterations`` rounds a timing; the best of repeated timings), or None where it cannot be built."""
    import ctypes

    from tphys.kernels import c_kernels

    try:
        library = c_kernels.build(Path(__file__).resolve().parent / "fma_peak.c", "float", (*c_kernels.FLAGS, "-ffp-contract=fast"))
    except (RuntimeError, OSError) as error:
        print(f"roofline: no multiply-add peak probe ({error}); the flop rate is the GEMM's", file=sys.stderr)
        return None
    function = library.fma_peak
    function.restype, function.argtypes = ctypes.c_double, [ctypes.c_long, ctypes.POINTER(ctypes.c_float)]
    sinks = [ctypes.c_float() for _ in range(threads)]
    calls = [lambda sink=sink: function(iterations, ctypes.byref(sink)) for sink in sinks]
    now = clock(threads)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t0 = now()
        flops = sum(c_kernels.parallel(calls))  # ctypes releases the GIL: the threads run at once
        best = min(best, now() - t0)
    return flops / best


def flop_rate(probe: dict) -> float:
    """The bound's F: the higher of the GEMM rate and the multiply-add peak (the GEMM's alone without the peak probe)."""
    return max(probe["gemm"], probe["peak"] or 0.0)


def bound_rate(c: Counts, flops_per_s: float, bytes_per_s: float) -> tuple[float, str]:
    """(env-steps/s of the bound 1 / max(flops / F, bytes / B), which limits: "flops" or "bytes")."""
    t_flops, t_bytes = c.flops / flops_per_s, c.bytes_step / bytes_per_s
    return 1.0 / max(t_flops, t_bytes), ("flops" if t_flops >= t_bytes else "bytes")


def probes(threads: int, dram_numbers: int, gemm_n: int, seconds: float) -> dict:
    import torch

    cache = 64 * 1024  # 3 x 256 KB
    return dict(threads=threads, dram=triad_bandwidth(dram_numbers, threads, seconds),
                cache=triad_bandwidth(cache, threads, seconds, chunk=cache, repeat=20), gemm=gemm_rate(gemm_n, threads, seconds),
                peak=peak_rate(threads, seconds), torch_threads=torch.get_num_threads())


# ---------------------------------------------------------------------------- the env's forward
def measure_fwd(name: str, n: int, threads: int, seconds: float) -> tuple[float, dict]:
    """(env-steps/s of ``physics_step`` under no_grad at N = n with ``threads`` threads, the env's sizes)."""
    import torch

    import tphys.envs as E

    torch.set_num_threads(threads)
    env = E.make(name, num_envs=n, seed=0, dtype=torch.float32, validate=False)
    sizes = model_sizes(env)
    generator = torch.Generator().manual_seed(0)
    # random actions drawn before the clock starts (8 batches, used in turn): drawing them is not the env step's work
    # (torch.rand of [4096, A] took ~15 ns per env step, 10 % of the rope's step)
    actions = torch.rand(8, n, env.action_dim, generator=generator) * 2 - 1
    with torch.no_grad():
        state = env.reset()
        for k in range(2):  # warm-up
            state = env.physics_step(state, actions[k])
        now = clock(threads)
        steps, t0, wall = 0, now(), time.perf_counter()
        while steps == 0 or time.perf_counter() - wall < seconds:
            state = env.physics_step(state, actions[steps % len(actions)])
            steps += 1
        elapsed = now() - t0
    return n * steps / elapsed, sizes


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2g} %"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="NAME:N entries (default: %(default)s)")
    parser.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts ('all' = every usable core)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per env and thread count")
    parser.add_argument("--probe-seconds", type=float, default=1.0, help="seconds per probe")
    parser.add_argument("--dram-mb", type=float, default=64.0, help="MB per triad array for the DRAM bandwidth")
    parser.add_argument("--gemm-n", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    cores = usable_cores()
    thread_counts = sorted({cores if t == "all" else int(t) for t in args.threads})
    load_before, started = os.getloadavg(), time.perf_counter()
    machine_rows, rows = [], []
    for threads in thread_counts:
        p = probes(threads, int(args.dram_mb * 2**20 / 4), args.gemm_n, args.probe_seconds)
        peak = "no C compiler" if p["peak"] is None else f"{p['peak'] / 1e9:.1f}"
        machine_rows.append(f"| {threads} | {p['dram'] / 1e9:.1f} | {p['cache'] / 1e9:.1f} | {p['gemm'] / 1e9:.1f} | {peak} | "
                            f"{flop_rate(p) / p['dram']:.1f} |")
        print(machine_rows[-1], flush=True)
        for entry in args.envs:
            name, n = entry.split(":") if ":" in entry else (entry, "64")
            rate, sizes = measure_fwd(name, int(n), threads, args.seconds)
            family = FAMILY.get(name) or "?"
            c = counts(family, sizes)
            (bound, limit), (cached, _) = bound_rate(c, flop_rate(p), p["dram"]), bound_rate(c, flop_rate(p), p["cache"])
            rows.append(f"| {family} | {name} | {n} | {threads} | {c.flops / 1e3:,.1f} | {c.bytes_step:,.0f} | "
                        f"{c.bytes_substep:,.0f} | {c.intensity:.1f} | {bound:,.0f} ({limit}) | {rate:,.0f} | "
                        f"{percent(rate / bound)} | {percent(rate / cached)} | {c.flops * rate / 1e9:.3g} |")
            print(rows[-1], f"sizes {sizes}", flush=True)
    lines = run_header("Roofline: one env step against this machine's bandwidth and flop rate", __file__, load_before, started,
                       threads=", ".join(map(str, thread_counts)) + f" (torch.set_num_threads; {cores} usable cores)")
    lines += [
        "Counting and probes: `benchmarks/roofline.py` docstring. Bound = 1 / max(flops / F, bytes / DRAM triad "
        "bandwidth) of the same thread count, F = the higher of the GEMM rate and the multiply-add peak (the in-cache "
        "bound: the triad over 3 x 256 KB arrays instead); bytes = "
        "each env's state read and written once per env step plus action, "
        "observation and reward (fused); 'bytes/substep' = the state (and MPM grid) read and written every substep, for "
        "comparison. Measured = `physics_step` under no_grad, float32, eager (the envs' defaults, validate off).", "",
        "| threads | triad DRAM GB/s | triad in cache GB/s | GEMM GFLOP/s | multiply-add peak GFLOP/s | balance flop/B |",
        "|---:|---:|---:|---:|---:|---:|",
        *machine_rows, "",
        "| family | env | N | threads | kflop/env-step | bytes/env-step | bytes/env-step per substep | flop/B | bound env-steps/s "
        "| measured env-steps/s | fraction | fraction of the in-cache bound | achieved GFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(args.out, "roofline", section)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
