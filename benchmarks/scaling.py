"""Training throughput of one recipe at 1 and 2 ranks (``torchrun``, data parallel), on the same machine in one command.

For each env, the recipe trains ``--iterations`` iterations at the global ``num_envs`` N, once in one process and once
as K ranks of N/K envs each (``torchrun --standalone --nproc_per_node=K``), alternating 1 and K ranks ``--repeats``
times so that drifts of the machine's speed hit both alike. Throughput is env steps per second of training (the
``time/steps_per_s`` the trainer logs each iteration; the median over the iterations after the first, which pays for
warm-up), evaluation off. Every rank runs ``--threads`` torch threads. The per-run figures go to
``benchmarks/scaling.json`` (a later run of the same cells replaces them) and the table to ``benchmarks/RESULTS.md``.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --envs rope ant soft_jumper --num-envs 64
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --envs pendulum2d --num-envs 8 --iterations 3 --repeats 1 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "benchmarks" / "scaling.json"


def train_rate(recipe: str, env: str, num_envs: int, ranks: int, iterations: int, threads: int, horizon: int,
               extra: list[str]) -> dict:
    """One training run; returns its median steps/s over iterations 2.. and its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [f"env={env}", f"num_envs={num_envs}", f"algo.horizon={horizon}", f"total_steps={num_envs * horizon * iterations}",
                     f"threads={threads}", "eval.every=0", f"eval.num_envs={ranks}", f"eval.episodes={ranks}", "video.enabled=false",
                     "progress=false", "checkpoint_every=0", "logger=none", f"hydra.run.dir={run_dir}", *extra]
        script = str(REPO / "recipes" / f"{recipe}.py")
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc_per_node={ranks}"]
        env_vars = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
        started = time.perf_counter()
        out = subprocess.run([*launcher, script, *overrides], cwd=REPO, env=env_vars, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"{recipe} {env} at {ranks} ranks failed:\n{out.stderr[-3000:]}")
        rates = [json.loads(line)["time/steps_per_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if "time/steps_per_s" in json.loads(line)]
    return {"steps_per_s": statistics.median(rates[1:] or rates), "iterations": len(rates), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--envs", nargs="+", default=["rope", "ant", "soft_jumper"])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()
    load, started = os.getloadavg(), time.perf_counter()
    summary = json.loads(args.summary.read_text()) if args.summary.exists() else {}
    rows = []
    for env in args.envs:
        runs: dict[int, list[dict]] = {1: [], args.ranks: []}
        for _ in range(args.repeats):
            for ranks in (1, args.ranks):
                res = train_rate(args.recipe, env, args.num_envs, ranks, args.iterations, args.threads, args.horizon, args.extra)
                runs[ranks].append(res)
                print(f"{env} N={args.num_envs} ranks={ranks}: {res['steps_per_s']:.0f} steps/s ({res['wall_s']} s wall)",
                      flush=True)
        one = statistics.median(r["steps_per_s"] for r in runs[1])
        many = statistics.median(r["steps_per_s"] for r in runs[args.ranks])
        key = f"{args.recipe}/{env}/N{args.num_envs}/K{args.ranks}/T{args.threads}"
        summary[key] = {"recipe": args.recipe, "env": env, "num_envs": args.num_envs, "ranks": args.ranks, "threads": args.threads,
                        "horizon": args.horizon, "one_rank": runs[1], "k_ranks": runs[args.ranks], "speedup": many / one,
                        "load_before": [round(x, 2) for x in load]}
        rows.append(f"| {env} | {args.num_envs} | {one:.0f} | {many:.0f} | {many / one:.2f}x |")
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    lines = run_header(f"Data-parallel training throughput: {args.recipe}, 1 vs {args.ranks} ranks", __file__, load, started,
                       parallelism=f"torchrun --standalone --nproc_per_node={args.ranks}, gloo",
                       threads=f"{args.threads} torch thread(s) per rank")
    lines += [f"Training env-steps/s (median over iterations 2-{args.iterations} of each run, median of {args.repeats} runs "
              f"alternating 1 and {args.ranks} ranks; H = {args.horizon}, evaluation off; N global, split across ranks). "
              f"Per-run figures: `benchmarks/{args.summary.name}`.", "",
              f"| env | N | 1 rank | {args.ranks} ranks | speedup |", "|---|---:|---:|---:|---:|", *rows]
    publish(args.out, f"scaling:{args.recipe}", lines)


if __name__ == "__main__":
    main()
