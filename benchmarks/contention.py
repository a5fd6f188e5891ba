"""Does a busy second core slow the env's own windows? (The critic worker's premise, issue 21.5.)

The training-overhead ratios with the critic worker compare a training window, during which a second process computes
on the other core, with env-only windows during which it is idle. Where the two cores share something that a busy
neighbour takes (a hyperthread pair, a host's scheduler, memory bandwidth), the env's part of the training window would
be slower than its env-only window for that reason alone. This script builds the recipe's trainer for each --envs as
``training_overhead.py`` does (1 torch thread), forks one process that, when told, keeps the other core busy with
--load (``gemm``: the critic's [512, 256] x [256, 128] product; ``python``: pure Python; ``norm``: LayerNorm + SiLU on
[512, 256]) and otherwise sleeps, and times env-only windows (``training_overhead.reference_window``) in --blocks
alternating blocks with the neighbour idle and busy: medians of wall and thread CPU time, and busy / idle.

    python benchmarks/contention.py --envs rope
    python benchmarks/contention.py --envs rope soft_jumper --load gemm python --out /tmp/c.md

Writes the section ``contention`` of --out (default benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import positive_int, publish, run_header, usable_cores  # noqa: E402

LOADS = ("gemm", "python", "norm")


def neighbour(load: str, busy, stop) -> None:
    """The other core's process: ``load`` while ``busy`` is set, asleep otherwise, until ``stop``."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    a, b, x = torch.randn(512, 256), torch.randn(256, 128), torch.randn(512, 256)
    while not stop.is_set():
        if not busy.is_set():
            time.sleep(0.001)
        elif load == "gemm":
            a @ b
        elif load == "norm":
            F.silu(F.layer_norm(x, (256,)))
        else:
            sum(range(1000))


def measure(recipe: str, env_name: str, load: str, blocks: int, windows: int) -> dict:
    import torch
    from training_overhead import build, reference_window

    torch.set_num_threads(1)
    cfg, trainer = build(recipe, env_name, ["algo.overlap_critic=false"])
    env_window = reference_window(trainer, int(cfg.algo.horizon))
    for _ in range(2):
        trainer.step()
    env_window()
    context = multiprocessing.get_context("fork")  # as the critic worker is started
    busy, stop = context.Event(), context.Event()
    process = context.Process(target=neighbour, args=(load, busy, stop), daemon=True)
    process.start()
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for block in range(2 * blocks):
            state = block % 2 == 1
            (busy.set if state else busy.clear)()
            time.sleep(0.05)
            for _ in range(windows):
                wall, cpu = time.perf_counter(), time.thread_time()
                env_window()
                times[state].append((time.perf_counter() - wall, time.thread_time() - cpu))
    finally:
        stop.set()
        process.join(timeout=5)
    med = {state: (statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows)) for state, rows in times.items()}
    return {"env": env_name, "load": load, "N": int(trainer.env.batch_size[0]), "idle": med[False], "busy": med[True]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--envs", nargs="+", default=["rope"])
    parser.add_argument("--load", nargs="+", choices=LOADS, default=["gemm", "python"])
    parser.add_argument("--blocks", type=positive_int, default=8, help="blocks of each state (idle, busy), alternating")
    parser.add_argument("--windows", type=positive_int, default=2, help="env-only windows a block")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    cores = usable_cores()
    if cores < 2:
        raise SystemExit(f"contention.py: {cores} usable core: the neighbour would share the env's core, not a second one")
    load_before, started = os.getloadavg(), time.perf_counter()
    results = [measure(args.recipe, env, load, args.blocks, args.windows) for env in args.envs for load in args.load]
    lines = run_header("Contention: env-only windows with the other core idle and busy", __file__, load_before, started,
                       threads="1 torch thread a process")
    lines += [f"Per env and load: {args.blocks} blocks of {args.windows} env-only windows with the neighbour idle, as many "
              "with it busy, alternating; medians. busy / idle near 1: a computing neighbour costs the env nothing.", "",
              "| recipe | env | N | neighbour's load | idle: wall ms | idle: CPU ms | busy: wall ms | busy: CPU ms | busy / idle (wall) |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        (iw, ic), (bw, bc) = r["idle"], r["busy"]
        lines.append(f"| {args.recipe} | {r['env']} | {r['N']} | {r['load']} | {1e3 * iw:.0f} | {1e3 * ic:.0f} | {1e3 * bw:.0f} | "
                     f"{1e3 * bc:.0f} | {bw / iw:.2f} |")
    publish(args.out, "contention", lines)


if __name__ == "__main__":
    main()
