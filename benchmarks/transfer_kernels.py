"""P2G / G2P micro-benchmark: the Triton kernels (CUDA) and the C loops (CPU) against their torch twins (``tphys.kernels``).

For each backend available on the device, at RollingPin's sizes (48³ grid, 2592 particles per env)
and N envs, times p2g and g2p forward, and forward+backward (a weighted sum of the outputs, then
backward), and reports:

    - ms per call and particle-transfers per second;
    - on CUDA: the achieved memory traffic in GB/s against the device's copy bandwidth (a large
      ``clone``, read + write), counting per particle its inputs and outputs once and 27 stencil
      nodes of the grid each way (read-modify-write for atomics), a lower bound on real traffic.

On a CPU-only machine the twin and the C loops run (Triton on CPU is the interpreter, a correctness
tool); ``--interpret`` adds one tiny interpreter timing for the record. Writes between
``<!-- transfer-kernels[-cuda] -->`` markers of --out.

    python benchmarks/transfer_kernels.py                      # this machine: C loops vs twin on CPU
    python benchmarks/transfer_kernels.py --sizes 1 16 64     # on a CUDA machine: Triton vs twin
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--interpret" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

from tphys.kernels import c_kernels, g2p, p2g, triton_available  # noqa: E402

GRID, PARTICLES = 48, 2592


def inputs(n: int, p: int, g: int, device: str, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    dx = 1.0 / g
    x = 0.2 + 0.3 * torch.rand(n, p, 3, generator=gen)  # a dough block in the middle of the unit box
    tensors = dict(x=x, mass=torch.full((n, p), 1e-4), momentum=1e-4 * torch.randn(n, p, 3, generator=gen),
                   affine=1e-4 * torch.randn(n, p, 3, 3, generator=gen), grid_velocity=torch.randn(n, g, g, g, 3, generator=gen))
    return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}, dx


def timed(fn, device: str, seconds: float) -> float:
    """Seconds per call (after one warm-up call)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 3:
        fn()
        calls += 1
    sync()
    return (time.perf_counter() - t0) / calls


def cases(t: dict, g: int, dx: float, backend: str) -> dict:
    def p2g_fwd():
        return p2g(t["x"], t["mass"], t["momentum"], t["affine"], g, dx, backend=backend)

    def g2p_fwd():
        return g2p(t["x"], t["grid_velocity"], dx, backend=backend)

    def both(fn, names):
        leaves = [t[k].detach().requires_grad_() for k in names]

        def run():
            outs = fn(*leaves)
            sum(o.sum() for o in outs).backward()

        return run

    return {
        ("p2g", "fwd"): p2g_fwd,
        ("p2g", "fwd+bwd"): both(lambda *a: p2g(*a, g, dx, backend=backend), ["x", "mass", "momentum", "affine"]),
        ("g2p", "fwd"): g2p_fwd,
        ("g2p", "fwd+bwd"): both(lambda *a: g2p(*a, dx, backend=backend), ["x", "grid_velocity"]),
    }


def traffic_bytes(kernel: str, mode: str, n: int, p: int, itemsize: int) -> float:
    """Lower bound on bytes moved: particle inputs/outputs once, 27 nodes x channels per particle each way."""
    if kernel == "p2g":
        per_particle = (3 + 1 + 3 + 9) + 27 * 4 * 2  # x, m, mv, A in; 27 nodes x (m, mv) read-modify-write
        if mode == "fwd+bwd":
            per_particle += (3 + 1 + 3 + 9) * 2 + 27 * 4  # inputs again, their gradients out, grid gradients gathered
    else:
        per_particle = 3 + 27 * 3 + 3 + 9  # x, 27 nodes x v gathered, v and C out
        if mode == "fwd+bwd":
            per_particle += 3 + 3 + 9 + 27 * 3 * 3 + 3  # x, dv, dC in; 27 nodes x (v read, grad RMW); dx out
    return per_particle * itemsize * n * p


def copy_bandwidth(device: str) -> float:
    """GB/s of a 1 GiB clone (read + write) on ``device``."""
    t = torch.empty(2**28, dtype=torch.float32, device=device)
    seconds = timed(lambda: t.clone(), device, 1.0)
    return 2 * t.numel() * 4 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--interpret", action="store_true", help="also time the Triton interpreter once at N = 1, 256 particles")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = ["torch"] + (["triton"] if device == "cuda" and triton_available() else [])
    backends += ["cpu"] if device == "cpu" and c_kernels.available(torch.float32) else []
    load_before, t0 = os.getloadavg(), time.perf_counter()
    bandwidth = copy_bandwidth(device) if device == "cuda" else None
    rows = []
    for n in args.sizes:
        t, dx = inputs(n, PARTICLES, GRID, device)
        for backend in backends:
            for (kernel, mode), fn in cases(t, GRID, dx, backend).items():
                seconds = timed(fn, device, args.seconds)
                gbs = traffic_bytes(kernel, mode, n, PARTICLES, 4) / seconds / 1e9
                rows.append((n, kernel, mode, backend, seconds * 1e3, n * PARTICLES / seconds / 1e6, gbs))
                print(rows[-1], flush=True)
    if args.interpret:
        t, dx = inputs(1, 256, GRID, "cpu")
        for (kernel, mode), fn in cases(t, GRID, dx, "triton").items():
            seconds = timed(fn, "cpu", 0.0)
            rows.append((1, kernel, mode, "triton (interpreter, 256 particles)", seconds * 1e3, 256 / seconds / 1e6, float("nan")))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [*run_header(f"P2G / G2P kernels: {' vs '.join(backends)} ({name})", __file__, load_before, t0,
                         threads=f"{torch.get_num_threads()} torch threads"),
             f"Grid {GRID}³ per env, {PARTICLES} particles per env (RollingPin's sizes), float32; fwd+bwd = forward, sum of outputs, "
             "backward. GB/s = a lower bound on memory traffic (particle data once, 27 stencil nodes per particle each way) per second"
             + (f"; device copy bandwidth {bandwidth:.0f} GB/s (1 GiB clone, read + write)." if bandwidth else "."), "",
             "| N | kernel | mode | backend | ms / call | M particles/s | GB/s" + (" | % of copy |" if bandwidth else " |"),
             "|---:|---|---|---|---:|---:|---:|" + ("---:|" if bandwidth else "")]
    for n, kernel, mode, backend, ms, mps, gbs in rows:
        share = f" {100 * gbs / bandwidth:.0f} % |" if bandwidth else ""
        lines.append(f"| {n} | {kernel} | {mode} | {backend} | {ms:.2f} | {mps:.2f} | {gbs:.2f} |{share}")
    publish(args.out, "transfer-kernels" + ("-cuda" if device == "cuda" else ""), lines)


if __name__ == "__main__":
    main()
