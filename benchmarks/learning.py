"""Learning benchmark: algorithms x envs x seeds at an equal env-step budget (the SAPO paper's table 1).

The runs go through Hydra's multirun with a launcher plugin (``launch_all``: one ``recipes/<algo>.py -m`` sweep
per recipe; ``--launcher local``: joblib on this machine, ``--jobs`` runs at a time, 1 torch thread each;
``--launcher slurm``: submitit on a SLURM cluster). From every run's ``eval.json`` (final policy, deterministic,
64 episodes) and ``metrics.jsonl`` (periodic evaluations) it writes:

    - a table of final returns, mean ± 95 % CI over seeds (Student t), one row per
      algorithm and one column per env, with the random policy as a reference row;
    - wall-clock seconds per run (mean over seeds);
    - a figure of evaluation return against env steps, mean ± 95 % CI band over seeds;

into ``--out`` (default benchmarks/RESULTS.md) between ``<!-- learning -->`` markers, with
machine, commit and command. Runs live under ``--runs`` (default runs/learning/<env>-<goal>/<algo>/seed<N>);
a run whose eval.json already exists with the same budget is reused and an interrupted one continues
from its last checkpoint, so an interrupted benchmark continues where it stopped (``--fresh`` reruns
everything).

    python benchmarks/learning.py                                    # rope + pendulum2d, 6 algos, 5 seeds
    python benchmarks/learning.py --algos sapo ppo --envs rope --seeds 2 --steps rope=100000
    python benchmarks/learning.py --quick --out /tmp/learning.md     # smoke test
    python benchmarks/learning.py --launcher slurm --launcher-override hydra.launcher.partition=cpu   # on SLURM
    python benchmarks/learning.py --algos sapo shac ppo --envs soft_jumper --goal jump --seeds 2 \
        --steps soft_jumper=200000 --section learning-soft-jumper    # issue 7's SoftJumper comparison
    python benchmarks/learning.py --algos shac shac_lr5e-4 --variant shac_lr5e-4=shac:algo.actor_lr=5e-4 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

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


def job_overrides(args, algo: str, env: str, seed: int, goal: str, extra=()) -> tuple[str, list[str]]:
    """``(recipe, Hydra overrides)`` of one run of the benchmark."""
    steps = args.steps[env]
    windows = max(steps // iteration_steps(args, algo, env), 1)
    recipe, variant = recipe_of(args, algo)
    return recipe, [
        f"env={env}", f"env.goal={goal}", f"seed={seed}", f"total_steps={steps}", "progress=false", "video.enabled=false",
        f"eval.every={max(windows // args.curve_points, 1)}", f"eval.episodes={args.eval_episodes}", "threads=1", *extra, *variant,
    ]


def finished(args, algo: str, env: str, out: Path, fresh: bool | None = None) -> dict | None:
    """The run's eval.json where it trained the budget (up to one iteration short), else None (always with --fresh)."""
    done = out / "eval.json"
    if (args.fresh if fresh is None else fresh) or not done.exists():
        return None
    try:
        summary = json.loads(done.read_text())
    except ValueError:
        return None
    return summary if summary.get("env_steps", -1) >= args.steps[env] - iteration_steps(args, algo, env) else None


def resumable(args, env: str, out: Path) -> bool:
    """An interrupted run of the same budget: a checkpoint and the run's config.yaml with ``total_steps`` = the budget."""
    config = out / "config.yaml"
    if args.fresh or not config.is_file() or not any((out / "checkpoints" / f).is_file() for f in ("last.pt", "previous.pt")):
        return False
    try:
        saved = yaml.safe_load(config.read_text())
        return float(saved["total_steps"]) == float(args.steps[env])
    except (ValueError, KeyError, TypeError, yaml.YAMLError):
        return False


def job_name(out: Path, runs: Path) -> str:
    """The run's job config name (``+experiment=NAME``): its directory under ``runs``, in Hydra-safe characters."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(out.relative_to(runs).parts))


def job_config(overrides: list[str], subdir: str, resume: Path | None) -> str:
    """One run as a config of Hydra's experiment pattern (``# @package _global_``): group choices in its defaults
    list, the other overrides as values, its run directory as the sweep's ``subdir``, ``resume`` where it continues."""
    from omegaconf import OmegaConf

    from rl.cli import GROUPS, parse

    groups, body = [], OmegaConf.create()
    for o in parse(overrides):
        if o.key_or_group in GROUPS:
            groups.append(f"  - override /{o.key_or_group}: {o.value()}")
        else:
            OmegaConf.update(body, o.key_or_group, o.value(), force_add=True)
    OmegaConf.update(body, "hydra.sweep.subdir", subdir, force_add=True)
    if resume is not None:
        body.resume = str(resume)
    head = ["# @package _global_", f"# written by benchmarks/learning.py: {' '.join(overrides)}", "defaults:", *groups]
    return "\n".join(head) + "\n" + OmegaConf.to_yaml(body)


def hydra_string(value) -> str:
    """``value`` quoted for a Hydra override."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def launch_all(args, jobs: list[tuple]) -> list[dict]:
    """Run the benchmark's ``jobs`` ``(algo, env, seed[, goal[, extra]])`` through Hydra's multirun and a launcher
    plugin; returns their eval.json summaries (or error dicts), in order.

    A run whose eval.json already holds the budget is reused; an interrupted one (a checkpoint, the same budget)
    continues from its checkpoint (``resume=``); any other is started afresh in an emptied directory. The rest
    run as one sweep per recipe: ``recipes/<recipe>.py -m +experiment=<job>,<job>,...`` where each job is a
    config written under ``<runs>/.jobs/experiment/`` (Hydra's experiment pattern: the jobs of a sweep need not be a
    cartesian product) with the launcher ``args.launcher`` (``local``: joblib, ``args.jobs`` runs at a time;
    ``slurm``: submitit) and ``args.launcher_overrides``.
    """
    runs = Path(args.runs).resolve()
    jobs = [(a, e, s, (rest[0] if rest else None) or args.goal, tuple(rest[1]) if len(rest) > 1 else ()) for a, e, s, *rest in jobs]
    summaries: list[dict | None] = [None] * len(jobs)
    pending: dict[str, list[tuple[int, str]]] = {}
    for i, (algo, env, seed, goal, extra) in enumerate(jobs):
        out = run_dir(args, algo, env, seed, goal).resolve()
        summary = finished(args, algo, env, out)
        if summary is not None:
            print(f"{algo:8s} {env:11s} {goal:15s} seed {seed}: reusing {out}", flush=True)
            summaries[i] = summary
            continue
        resume = out if resumable(args, env, out) else None
        if resume is None and out.exists():
            shutil.rmtree(out)  # a run of another budget, or one that never checkpointed: start afresh
        recipe, overrides = job_overrides(args, algo, env, seed, goal, extra)
        name = job_name(out, runs)
        path = runs / ".jobs" / "experiment" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(job_config(overrides, str(out.relative_to(runs)), resume))
        print(f"{algo:8s} {env:11s} {goal:15s} seed {seed}: {'resuming' if resume else 'queued'} {out}", flush=True)
        pending.setdefault(recipe, []).append((i, name))
    for recipe, batch in pending.items():
        sweep(args, recipe, [name for _, name in batch], runs)
        for i, _ in batch:
            summaries[i] = collect(args, *jobs[i][:4], runs)
    return summaries


def sweep(args, recipe: str, names: list[str], runs: Path) -> int:
    """``recipes/<recipe>.py -m`` over the job configs ``names``; its output goes to ``<runs>/.jobs/<recipe>-<time>.log``."""
    launcher = getattr(args, "launcher", "local")
    cmd = [sys.executable, str(REPO / "recipes" / f"{recipe}.py"), "-m", f"hydra/launcher={launcher}",
           f"hydra.searchpath=[{hydra_string('file://' + str(runs / '.jobs'))}]", f"hydra.sweep.dir={hydra_string(runs)}",
           f"+experiment={','.join(names)}"]
    if launcher in ("local", "joblib"):
        cmd.append(f"hydra.launcher.n_jobs={args.jobs}")
    cmd += list(getattr(args, "launcher_overrides", None) or [])
    log = runs / ".jobs" / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    print(f"{recipe}: {len(names)} run(s) through hydra/launcher={launcher}; log {log}", flush=True)
    with log.open("w") as f:
        f.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    return proc.returncode


def collect(args, algo: str, env: str, seed: int, goal: str, runs: Path) -> dict:
    """A launched run's eval.json, with ``process_wall_time_s`` (job start to eval.json); an error dict (with the
    tail of its run.log, or of the sweep's log where the job never started) when it did not finish."""
    out = run_dir(args, algo, env, seed, goal)
    done, summary = out / "eval.json", finished(args, algo, env, out, fresh=False)
    if summary is None or not done.exists():
        logs = [out / "run.log"] if (out / "run.log").exists() else sorted((runs / ".jobs").glob("*.log"), key=os.path.getmtime)[-1:]
        tail = logs[0].read_text()[-1500:] if logs else ""
        return {"error": "no eval.json with the budget", "log_tail": tail, "algo": algo, "env": env, "seed": seed, "goal": goal}
    record = json.loads((out / "recipe.json").read_text()) if (out / "recipe.json").exists() else {}
    started = (record.get("resumes") or [{}])[-1].get("job", record.get("job", {})).get("started")
    if started is not None:
        summary["process_wall_time_s"] = round(done.stat().st_mtime - started, 1)
        done.write_text(json.dumps(summary, indent=2))
    print(f"{algo:8s} {env:11s} {goal:15s} seed {seed}: {summary['deterministic']['mean']:9.2f}  "
          f"({summary['train_wall_time_s']:.0f} s train)", flush=True)
    return summary


def parallelism(args) -> str:
    """The results' parallelism line: the launcher and its runs at a time."""
    at_a_time = f", {args.jobs} runs at a time" if args.launcher in ("local", "joblib") else ""
    return f"Hydra multirun, hydra/launcher={args.launcher}{at_a_time}, 1 thread each"


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """--jobs, --launcher and --launcher-override (shared with pods_table.py)."""
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time with the joblib launcher (each uses 1 thread)")
    parser.add_argument("--launcher", default="local",
                        help="Hydra launcher of the runs: local (joblib, this machine; recipes/config/hydra/launcher/local.yaml), "
                             "slurm (submitit; slurm.yaml), or any hydra/launcher option")
    parser.add_argument("--launcher-override", dest="launcher_overrides", action="append", default=[], metavar="OVERRIDE",
                        help="a Hydra override of the launcher, e.g. hydra.launcher.partition=cpu (repeatable)")


def launch(args, algo: str, env: str, seed: int, goal: str | None = None, extra: tuple[str, ...] = ()) -> dict:
    """One run (``launch_all`` with one job): reused, resumed or run through the launcher; returns its eval.json.

    ``extra``: more Hydra overrides for this run (e.g. a task's network sizes).
    """
    return launch_all(args, [(algo, env, seed, goal, extra)])[0]


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
    add_launcher_arguments(parser)
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
    summaries = launch_all(args, jobs)
    results = {(a, e): [] for a in args.algos for e in args.envs}
    for (a, e, _), summary in zip(jobs, summaries):
        results[(a, e)].append(summary)
    failures = [s for s in summaries if "error" in s]
    plot(args, results, args.figure)
    lines = [
        *run_header("Learning: final evaluation return at an equal env-step budget", __file__, load_before, t0,
                    parallelism=parallelism(args)),
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
