"""Learning benchmark: algorithms x envs x seeds at an equal env-step budget (the SAPO paper's table 1).

Each run is one recipe in its own subprocess (``recipes/<algo>.py``, 1 torch thread), with
``--jobs`` runs at a time. From every run's ``eval.json`` (final policy, deterministic,
64 episodes) and ``metrics.jsonl`` (periodic evaluations) it writes:

    - a table of final returns, mean ± 95 % CI over seeds (Student t), one row per
      algorithm and one column per env, with the random policy as a reference row;
    - wall-clock seconds per run (mean over seeds);
    - a figure of evaluation return against env steps, mean ± 95 % CI band over seeds;

into ``--out`` (default benchmarks/RESULTS.md) between ``<!-- learning -->`` markers, with
machine, commit and command. Runs live under ``--runs`` (default runs/learning); a run
whose eval.json already exists with the same budget is reused, so an interrupted
benchmark continues where it stopped (``--fresh`` reruns everything).

    python benchmarks/learning.py                                    # rope + pendulum2d, 6 algos, 5 seeds
    python benchmarks/learning.py --algos sapo ppo --envs rope --seeds 2 --steps rope=100000
    python benchmarks/learning.py --quick --out /tmp/learning.md     # smoke test
    python benchmarks/learning.py --algos sapo shac ppo --envs soft_jumper --goal jump --seeds 2 \
        --steps soft_jumper=200000 --section learning-soft-jumper    # issue 7's SoftJumper comparison
    python benchmarks/learning.py --algos shac shac_lr5e-4 --variant shac_lr5e-4=shac:algo.actor_lr=5e-4 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import publish, run_header  # noqa: E402

from rl.trainers.evaluation import t_quantile_975  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALGOS = ("sapo", "shac", "apg", "trajopt", "ppo", "sac")
DEFAULT_STEPS = {"rope": 300_000, "pendulum2d": 150_000}
GOAL = "stop_at_origin"


def mean_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * std / math.sqrt(n)


# Algorithms that are one recipe with fixed overrides.
VARIANTS = {"pods1": ("pods", ["algo.order=1"]), "pods2": ("pods", ["algo.order=2"])}
EPISODE_STEPS = {"cloth": 60}  # episode length where it is not 150


def run_dir(args, algo: str, env: str, seed: int, goal: str | None = None) -> Path:
    return args.runs / f"{env}-{goal or args.goal}" / algo / f"seed{seed}"


def recipe_of(args, algo: str) -> tuple[str, list[str]]:
    """(recipe, extra overrides) of an algorithm name: a recipe, a built-in variant, or a --variant."""
    return {**VARIANTS, **getattr(args, "variants", {})}.get(algo, (algo, []))


def iteration_steps(args, algo: str, env: str) -> int:
    """Env steps per training iteration: a 32-step window (PPO/SAC: a 32-step batch) or a PODS / GPS episode."""
    per_env = EPISODE_STEPS.get(env, 150) if recipe_of(args, algo)[0] in ("pods", "gps") else 32
    return args.num_envs * per_env


def launch(args, algo: str, env: str, seed: int, goal: str | None = None, extra: tuple[str, ...] = ()) -> dict:
    """Run one recipe (or reuse a finished run with the same budget); returns its eval.json.

    ``extra``: more Hydra overrides for this run (e.g. a task's network sizes).
    """
    goal = goal or args.goal
    out = run_dir(args, algo, env, seed, goal)
    steps = args.steps[env]
    done = out / "eval.json"
    if done.exists() and not args.fresh:
        summary = json.loads(done.read_text())
        if summary.get("env_steps", -1) >= steps - iteration_steps(args, algo, env):
            return summary
    out.mkdir(parents=True, exist_ok=True)
    windows = max(steps // iteration_steps(args, algo, env), 1)
    recipe, variant = recipe_of(args, algo)
    overrides = [
        f"env={env}", f"env.goal={goal}", f"seed={seed}", f"total_steps={steps}", "progress=false", "video.enabled=false",
        f"eval.every={max(windows // args.curve_points, 1)}", f"eval.episodes={args.eval_episodes}", f"hydra.run.dir={out}",
        "threads=1", *extra, *variant,
    ]
    log = (out / "run.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *overrides], stdout=log, stderr=subprocess.STDOUT,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    log.close()
    if proc.returncode != 0:
        tail = (out / "run.log").read_text()[-1500:]
        return {"error": f"exit {proc.returncode}", "log_tail": tail, "algo": algo, "env": env, "seed": seed, "goal": goal}
    summary = json.loads(done.read_text())
    summary["process_wall_time_s"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(summary, indent=2))
    print(f"{algo:8s} {env:11s} {goal:15s} seed {seed}: {summary['deterministic']['mean']:9.2f}  "
          f"({summary['train_wall_time_s']:.0f} s train)", flush=True)
    return summary


def curves(args, algo: str, env: str) -> tuple[list[int], list[float], list[float]] | None:
    """Mean and 95 % CI over seeds of the periodic eval return, on the env-step grid they share."""
    per_seed = []
    for seed in range(args.seeds):
        path = run_dir(args, algo, env, seed) / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        per_seed.append({r["step"]: r["eval/return"] for r in rows if isinstance(r.get("eval/return"), float)})
    if not per_seed:
        return None
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    means, cis = zip(*(mean_ci([s[x] for s in per_seed]) for x in steps)) if steps else ((), ())
    return steps, list(means), list(cis)


def plot(args, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.envs), figsize=(6 * len(args.envs), 4), squeeze=False)
    for ax, env in zip(axes[0], args.envs):
        for algo in args.algos:
            c = curves(args, algo, env)
            if not c or not c[0]:
                continue
            steps, mean, ci = c
            ax.plot(steps, mean, label=algo)
            lo = [m - (e if math.isfinite(e) else 0) for m, e in zip(mean, ci)]
            hi = [m + (e if math.isfinite(e) else 0) for m, e in zip(mean, ci)]
            ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_title(f"{env} ({args.goal}), {args.seeds} seeds, mean ± 95% CI")
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return (deterministic)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(args, results: dict) -> list[str]:
    head = "| algorithm | " + " | ".join(f"{e} ({args.steps[e]:,} steps)" for e in args.envs) + " | wall s / run |"
    lines = [head, "|---|" + "---:|" * (len(args.envs) + 1)]
    rows = list(args.algos) + ["random"]
    for algo in rows:
        cells, walls = [], []
        for env in args.envs:
            runs = [r for r in results[(algo if algo != "random" else args.algos[0], env)] if "error" not in r]
            if not runs:
                cells.append("failed")
                continue
            key = "random_policy" if algo == "random" else "deterministic"
            mean, ci = mean_ci([r[key]["mean"] for r in runs])
            cells.append(f"{mean:.1f} ± {ci:.1f}" + ("" if len(runs) == args.seeds else f" ({len(runs)} seeds)"))
            walls += [r["train_wall_time_s"] for r in runs]
        wall = "" if algo == "random" or not walls else f"{sum(walls) / len(walls):.0f}"
        lines.append(f"| {algo} | " + " | ".join(cells) + f" | {wall} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), help=f"from {', '.join(ALGOS)} and the --variant names")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=RECIPE:OVERRIDE[,OVERRIDE]",
                        help="a recipe with Hydra overrides under its own name, e.g. shac_lr5e-4=shac:algo.actor_lr=5e-4")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--goal", default=GOAL)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", nargs="*", default=[], help="per-env budget, e.g. rope=300000 pendulum2d=150000")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses 1 thread)")
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "learning")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--figure", type=Path, default=None, help="default: <section>.png beside --out")
    parser.add_argument("--section", default="learning", help="marker of the section of --out to write (<!-- section -->)")
    parser.add_argument("--fresh", action="store_true", help="rerun even where eval.json exists")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, tiny budgets, 8 eval episodes")
    args = parser.parse_args()
    args.variants = {}
    for item in args.variant:
        name, _, spec = item.partition("=")
        recipe, _, overrides = spec.partition(":")
        if not name or recipe not in ALGOS or recipe in VARIANTS:
            parser.error(f"--variant {item!r}: expected NAME=RECIPE:OVERRIDE[,OVERRIDE] with RECIPE one of {', '.join(ALGOS)}")
        args.variants[name] = (recipe, [o for o in overrides.split(",") if o])
    unknown = [a for a in args.algos if a not in ALGOS and a not in args.variants]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; valid: {', '.join(ALGOS)} or a --variant name")
    args.num_envs = 64
    steps = dict(DEFAULT_STEPS)
    if args.quick:
        args.seeds, args.eval_episodes, args.curve_points = 2, 8, 2
        steps = {env: 4096 for env in args.envs}
    for item in args.steps:
        env, _, value = item.partition("=")
        steps[env] = int(float(value))
    missing = [e for e in args.envs if e not in steps]
    if missing:
        parser.error(f"no step budget for {missing}; pass --steps {missing[0]}=N")
    args.steps = steps
    args.figure = args.figure or args.out.parent / f"{args.section.replace('-', '_')}.png"
    load_before, t0 = os.getloadavg(), time.perf_counter()
    jobs = [(a, e, s) for e in args.envs for s in range(args.seeds) for a in args.algos]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        summaries = list(pool.map(lambda job: launch(args, *job), jobs))
    results = {(a, e): [] for a in args.algos for e in args.envs}
    for (a, e, _), summary in zip(jobs, summaries):
        results[(a, e)].append(summary)
    failures = [s for s in summaries if "error" in s]
    plot(args, results, args.figure)
    lines = [
        *run_header("Learning: final evaluation return at an equal env-step budget", __file__, load_before, t0,
                    parallelism=f"{args.jobs} runs at a time, 1 thread each"),
        f"Final policy, deterministic, {args.eval_episodes} evaluation episodes per run; mean ± 95 % CI (Student t) over "
        f"{args.seeds} seeds of the per-run mean return; goal `{args.goal}`; 64 envs (TrajOpt 16), recipe defaults otherwise. "
        "`random` is the uniform-random policy on the same evaluation envs. wall s / run = training time per run (mean)."
        + "".join(f" `{name}` = `{recipe}` with `{' '.join(o)}`." for name, (recipe, o) in args.variants.items()),
        "",
        *table(args, results),
        "",
        f"![learning curves]({os.path.relpath(args.figure, args.out.parent)})",
    ]
    publish(args.out, args.section, lines, failures, wrote_also=f" and {args.figure}")


if __name__ == "__main__":
    main()
