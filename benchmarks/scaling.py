"""Training throughput of one recipe at 1 and 2 ranks (``torchrun``, data parallel), on the same machine in one command.

For each env, the recipe trains ``--iterations`` iterations at the global ``num_envs`` N, once in one process and once
as K ranks of N/K envs each (``torchrun --standalone --nproc_per_node=K``), alternating 1 and K ranks ``--repeats``
times so that drifts of the machine's speed hit both alike. Throughput is env steps per second of training (the
``time/steps_per_s`` the trainer logs each iteration; the median over the iterations after the first, which pays for
warm-up), evaluation off (the run is stopped once its last training iteration is logged). A third run, one process with
one rank's share N/K of the envs, gives the ceiling of the K-rank run: K times that. Every rank runs ``--threads``
torch threads. The per-run figures go to
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

from rl.distributed import kill_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "benchmarks" / "scaling.json"


def logged(metrics: Path) -> int:
    """Complete records in ``metrics.jsonl`` so far."""
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().split("\n")[:-1] if line.strip())


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
        metrics = run_dir / "metrics.jsonl"
        started = time.perf_counter()
        proc = subprocess.Popen([*launcher, script, *overrides], cwd=REPO, env=env_vars, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        while logged(metrics) < iterations:  # the final evaluation (whole episodes) is not what is measured: stop there
            if proc.poll() is not None:
                raise RuntimeError(f"{recipe} {env} at {ranks} ranks failed:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
        wall = time.perf_counter() - started
        kill_job(proc.pid)  # the launcher and every rank
        proc.communicate()
        rates = [json.loads(line)["time/steps_per_s"] for line in metrics.read_text().splitlines()
                 if "time/steps_per_s" in json.loads(line)][:iterations]
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
        part = args.num_envs // args.ranks
        cells = {"one": (args.num_envs, 1), "part": (part, 1), "many": (args.num_envs, args.ranks)}
        runs: dict[str, list[dict]] = {name: [] for name in cells}
        for _ in range(args.repeats):
            for name, (n, ranks) in cells.items():
                res = train_rate(args.recipe, env, n, ranks, args.iterations, args.threads, args.horizon, args.extra)
                runs[name].append(res)
                print(f"{env} N={n} ranks={ranks}: {res['steps_per_s']:.0f} steps/s ({res['wall_s']} s wall)", flush=True)
        one, alone, many = (statistics.median(r["steps_per_s"] for r in runs[name]) for name in cells)
        key = f"{args.recipe}/{env}/N{args.num_envs}/K{args.ranks}/T{args.threads}"
        summary[key] = {"recipe": args.recipe, "env": env, "num_envs": args.num_envs, "ranks": args.ranks, "threads": args.threads,
                        "horizon": args.horizon, "one_rank": runs["one"], "one_rank_of_share": runs["part"],
                        "k_ranks": runs["many"], "speedup": many / one,
                        "load_before": [round(x, 2) for x in load]}
        # ceiling: K ranks can at best do K times what one rank does with its share of the envs alone
        rows.append(f"| {env} | {args.num_envs} | {one:.0f} | {alone:.0f} | {many:.0f} | {many / one:.2f}x | "
                    f"{args.ranks * alone / one:.2f}x |")
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    lines = run_header(f"Data-parallel training throughput: {args.recipe}, 1 vs {args.ranks} ranks", __file__, load, started,
                       parallelism=f"torchrun --standalone --nproc_per_node={args.ranks}, gloo",
                       threads=f"{args.threads} torch thread(s) per rank")
    lines += [f"Training env-steps/s (median over iterations 2-{args.iterations} of each run, median of {args.repeats} runs "
              f"alternating 1 and {args.ranks} ranks; H = {args.horizon}, evaluation off; N global, split across ranks). "
              f"Per-run figures: `benchmarks/{args.summary.name}`.", "",
              f"'1 rank, N/{args.ranks}' is one process with one rank's share of the envs; {args.ranks} times it is the "
              f"ceiling of the {args.ranks}-rank run (no communication, no sharing of the machine).", "",
              f"| env | N | 1 rank | 1 rank, N/{args.ranks} | {args.ranks} ranks | speedup | ceiling |",
              "|---|---:|---:|---:|---:|---:|---:|", *rows]
    publish(args.out, f"scaling:{args.recipe}", lines)


if __name__ == "__main__":
    main()
