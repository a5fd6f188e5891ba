"""The PODS paper's table 1 for our envs: reward and compute time of PODS-1st, PODS-2nd, GPS, APG (BPTT),
SHAC, SAPO, PPO and SAC on every PODS env and both goals, plus the paper's metrics.

The runs go through Hydra's multirun with a launcher plugin (``benchmarks/learning.launch_all``: one
``recipes/<algo>.py -m`` sweep per recipe; ``--launcher local``: joblib, ``--jobs`` runs at a time, 1 torch
thread each; ``--launcher slurm``: submitit). Finished runs are reused and interrupted ones continue from
their last checkpoint, so an interrupted table continues where it stopped. Budgets are env steps per run
(PODS: k = 64 episodes per epoch). Writes into --out between ``<!-- pods-table -->`` markers:

    - reward: deterministic final policy, 64 evaluation episodes, mean ± 95 % CI over seeds;
    - compute time: training wall-clock seconds per run (1 thread, this machine);
    - metrics (figures 8-10 of the paper): final payload kinetic energy (J, last 10 steps),
      final distance to the target (m), mean handle speed (m/s).

    python benchmarks/pods_table.py                                   # 6 envs x 2 goals x 8 algos, 1 seed
    python benchmarks/pods_table.py --envs pendulum2d --goals stop --algos pods2 apg --steps pendulum2d=50000
    python benchmarks/pods_table.py --quick --out /tmp/pods_table.md  # smoke test
    python benchmarks/pods_table.py --launcher slurm --launcher-override hydra.launcher.partition=cpu   # on SLURM
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import add_launcher_arguments, launch_all, mean_ci, parallelism  # noqa: E402
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALGOS = ("pods1", "pods2", "gps", "apg", "shac", "sapo", "ppo", "sac")
ENVS = ("pendulum2d", "pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth")
GOALS = ("stop", "stop_at_origin")
DEFAULT_STEPS = {"pendulum2d": 96_000, "pendulum3d": 96_000, "double_pendulum3d": 96_000, "cable_payload2d": 96_000,
                 "rope3d": 96_000, "cloth": 38_400}
METRICS = (("final_kinetic_energy", "KE [J]", "{:.2e}"), ("final_distance", "dist [m]", "{:.3f}"),
           ("mean_handle_speed", "|u| [m/s]", "{:.2f}"))


def cell(runs: list[dict], key: str = "deterministic") -> str:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return "failed"
    mean, ci = mean_ci([r[key]["mean"] for r in ok])
    return f"{mean:.1f}" + ("" if ci != ci else f" ± {ci:.1f}")


def tables(args, results: dict) -> list[str]:
    head = "| env | goal | " + " | ".join(args.algos) + " | random |"
    rule = "|---|---|" + "---:|" * (len(args.algos) + 1)
    reward, timing, metrics = [head, rule], ["| env | goal | " + " | ".join(args.algos) + " |", "|---|---|" + "---:|" * len(args.algos)], []
    for env in args.envs:
        for goal in args.goals:
            runs = {a: results[(a, env, goal)] for a in args.algos}
            reward.append(f"| {env} | {goal} | " + " | ".join(cell(runs[a]) for a in args.algos)
                          + f" | {cell(runs[args.algos[0]], 'random_policy')} |")
            times = []
            for a in args.algos:
                ok = [r["train_wall_time_s"] for r in runs[a] if "error" not in r]
                times.append(f"{sum(ok) / len(ok):.0f}" if ok else "failed")
            timing.append(f"| {env} | {goal} | " + " | ".join(times) + " |")
            for a in args.algos:
                ok = [r for r in runs[a] if "error" not in r and "metrics" in r]
                if ok:
                    values = [fmt.format(sum(r["metrics"]["deterministic"][m]["mean"] for r in ok) / len(ok)) for m, _, fmt in METRICS]
                    metrics.append(f"| {env} | {goal} | {a} | " + " | ".join(values) + " |")
    metrics = ["| env | goal | algo | " + " | ".join(label for _, label, _ in METRICS) + " |", "|---|---|---|---:|---:|---:|", *metrics]
    return ["#### Reward (final policy)", "", *reward, "", "#### Compute time [s] (training, 1 thread)", "", *timing, "",
            "#### Paper metrics of the final policy (mean over evaluation episodes and seeds)", "", *metrics]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--goals", nargs="+", default=list(GOALS), choices=GOALS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", nargs="*", default=[], help="per-env budget, e.g. rope3d=200000")
    add_launcher_arguments(parser)
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=5)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "pods_table")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--fresh", action="store_true", help="rerun even where eval.json exists")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, 8 eval episodes")
    args = parser.parse_args()
    args.num_envs, args.goal = 64, args.goals[0]
    steps = dict(DEFAULT_STEPS)
    if args.quick:
        args.eval_episodes, args.curve_points = 8, 1
        steps = {env: 9600 if env != "cloth" else 3840 for env in ENVS}
    for item in args.steps:
        env, _, value = item.partition("=")
        steps[env] = int(float(value))
    args.steps = steps
    load_before, t0 = os.getloadavg(), time.perf_counter()
    jobs = [(a, e, s, g) for e in args.envs for g in args.goals for s in range(args.seeds) for a in args.algos]
    summaries = launch_all(args, jobs)
    results = {(a, e, g): [] for a in args.algos for e in args.envs for g in args.goals}
    for (a, e, _, g), summary in zip(jobs, summaries):
        results[(a, e, g)].append(summary)
    failures = [s for s in summaries if "error" in s]
    budgets = ", ".join(f"{e} {args.steps[e]:,}" for e in args.envs)
    lines = [
        *run_header("PODS table 1: reward and compute time on the PODS envs", __file__, load_before, t0,
                    parallelism=parallelism(args)),
        f"Budgets (env steps per run): {budgets}. 64 envs; PODS: k = 64 episodes per epoch. {args.seeds} seed(s); "
        f"{args.eval_episodes} deterministic evaluation episodes per run; recipe defaults otherwise.", "",
        *tables(args, results),
    ]
    publish(args.out, "pods-table", lines, failures)


if __name__ == "__main__":
    main()
