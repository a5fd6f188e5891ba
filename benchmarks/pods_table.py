"""The PODS paper's table 1 for our envs: reward and compute time of PODS-1st, PODS-2nd, GPS, APG (BPTT),
SHAC, SAPO, PPO and SAC on every PODS env and both goals, plus the paper's metrics.

The runs go through Hydra's multirun with a launcher plugin (``benchmarks/learning.launch_all``: one
``recipes/<algo>.py -m`` sweep per recipe; ``--launcher local``: joblib, ``--jobs`` runs at a time, 1 torch
thread each; ``--launcher slurm``: submitit). Every finished run leaves a small summary (evaluation means,
training time, paper metrics, budget, commit, integrator and algo settings) in ``benchmarks/pods_table/
<algo>-<env>-<goal>-seed<k>.json`` (committed; ``--store``), written as soon as its sweep ends (``--jobs`` runs per
sweep with the local launcher): a cell whose summary holds the requested budget is filled from it without a run
(``--fresh``: rerun), so a table is rebuilt, or an interrupted one continued, in a later session without the run
directories. Runs in ``--runs`` are reused too and interrupted ones continue from their last checkpoint. Budgets
are env steps per run (PODS: k = 64 episodes per epoch; ``--steps [ALGO:]ENV=N``). ``--no-launch`` builds the
table from the summaries alone: a cell without one reads "not run", and the section then appends the previous full
table (``benchmarks/pods_table/previous-f23d640.md``, verbatim). Writes into --out between ``<!-- pods-table -->``
markers:

    - reward: deterministic final policy, 64 evaluation episodes, mean ± 95 % CI over seeds;
    - compute time: training wall-clock seconds per run (1 thread, this machine);
    - metrics (figures 8-10 of the paper): final payload kinetic energy (J, last 10 steps),
      final distance to the target (m), mean handle speed (m/s).

    python benchmarks/pods_table.py                                   # 6 envs x 2 goals x 8 algos, 1 seed
    python benchmarks/pods_table.py --envs pendulum2d --goals stop --algos pods2 apg --steps pendulum2d=50000
    python benchmarks/pods_table.py --algos gps --jobs 1 --steps gps:rope3d=48000   # one column, GPS budget on rope3d
    python benchmarks/pods_table.py --no-launch --steps gps:rope3d=48000  # every column from the stored summaries
    python benchmarks/pods_table.py --quick --out /tmp/pods_table.md  # smoke test
    python benchmarks/pods_table.py --launcher slurm --launcher-override hydra.launcher.partition=cpu   # on SLURM
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import add_launcher_arguments, launch_all, mean_ci, parallelism, recipe_of, run_dir  # noqa: E402
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "benchmarks" / "pods_table"  # committed per-run summaries
PREVIOUS = STORE / "previous-f23d640.md"  # the last full table (verbatim), shown where a column is not rerun
ALGOS = ("pods1", "pods2", "gps", "apg", "shac", "sapo", "ppo", "sac")
ENVS = ("pendulum2d", "pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth")
GOALS = ("stop", "stop_at_origin")
DEFAULT_STEPS = {"pendulum2d": 96_000, "pendulum3d": 96_000, "double_pendulum3d": 96_000, "cable_payload2d": 96_000,
                 "rope3d": 96_000, "cloth": 38_400}
METRICS = (("final_kinetic_energy", "KE [J]", "{:.2e}"), ("final_distance", "dist [m]", "{:.3f}"),
           ("mean_handle_speed", "|u| [m/s]", "{:.2f}"))


def summary_path(store: Path, algo: str, env: str, goal: str, seed: int) -> Path:
    """The committed summary of one run: ``<store>/<algo>-<env>-<goal>-seed<k>.json``."""
    return Path(store) / f"{algo}-{env}-{goal}-seed{seed}.json"


def budget(args, algo: str, env: str) -> dict:
    """What a stored summary must match to fill a cell: env steps (``--steps [ALGO:]ENV=N``), eval episodes, envs."""
    steps = args.algo_steps.get((algo, env), args.steps[env])
    return {"env_steps": int(steps), "eval_episodes": int(args.eval_episodes), "num_envs": int(args.num_envs)}


def args_for(args, algo: str) -> argparse.Namespace:
    """``args`` with the per-env budgets of ``algo`` (its ``--steps ALGO:ENV=N`` over the shared ones), for launch_all."""
    return argparse.Namespace(**{**vars(args), "steps": {env: budget(args, algo, env)["env_steps"] for env in args.steps}})


def stored(args, algo: str, env: str, goal: str, seed: int) -> dict | None:
    """The stored summary of the run where it has the requested budget (None with --fresh, or where missing or other)."""
    path = summary_path(args.store, algo, env, goal, seed)
    if args.fresh or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None
    return summary if summary.get("budget") == budget(args, algo, env) else None


def brief(result: dict | None) -> dict | None:
    """An eval.json result without its per-episode returns."""
    return None if result is None else {k: result[k] for k in ("mean", "std", "ci95", "episodes") if k in result}


def store(args, algo: str, env: str, goal: str, seed: int, summary: dict) -> dict:
    """Write the small summary of a finished run (from its eval.json and config.yaml) to the store; returns it."""
    out = run_dir(args, algo, env, seed, goal)
    config = {}
    if (out / "config.yaml").is_file():
        config = yaml.safe_load((out / "config.yaml").read_text()) or {}
    options = (config.get("env") or {}).get("options") or {}
    recipe, variant = recipe_of(args, algo)
    small = {
        "algo": algo, "env": env, "goal": goal, "seed": seed, "budget": budget(args, algo, env),
        "env_steps": summary.get("env_steps"), "train_wall_time_s": summary["train_wall_time_s"],
        **{k: summary[k] for k in ("process_wall_time_s", "eval_wall_time_s") if k in summary},
        "deterministic": brief(summary["deterministic"]), "stochastic": brief(summary.get("stochastic")),
        "random_policy": brief(summary["random_policy"]),
        **({"metrics": summary["metrics"]} if "metrics" in summary else {}),
        "commit": summary.get("commit"), "machine": summary.get("machine"), "torch": summary.get("torch"),
        "settings": {"recipe": recipe, "variant": variant,
                     "integrator": options.get("integrator", "semi_implicit") if config else None,
                     "num_envs": config.get("num_envs"), "env_options": options, "algo": config.get("algo"),
                     "parallelism": parallelism(args)},
        "load_when_stored": [round(x, 2) for x in os.getloadavg()],  # 1/5/15-min load of the machine as the run ended
        "stored": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = summary_path(args.store, algo, env, goal, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(small, indent=2) + "\n")
    return small


def gather(args, jobs: list[tuple]) -> dict:
    """``{(algo, env, goal): [summary, ...]}`` of ``jobs`` ``(algo, env, seed, goal)``: a stored summary with the budget
    where there is one, else the run through ``launch_all`` (none with --no-launch: the cell reads "not run"),
    each launched run's summary stored as soon as its sweep ends (``--jobs`` runs per sweep with the local launcher)."""
    results: dict = {(a, e, g): [] for a, e, _, g in jobs}
    pending: dict[str, list[tuple]] = {}
    for algo, env, seed, goal in jobs:
        summary = stored(args, algo, env, goal, seed)
        if summary is not None:
            print(f"{algo:8s} {env:17s} {goal:15s} seed {seed}: stored {summary_path(args.store, algo, env, goal, seed)}", flush=True)
            results[(algo, env, goal)].append(summary)
        elif args.no_launch:
            print(f"{algo:8s} {env:17s} {goal:15s} seed {seed}: not run (no stored summary with the budget)", flush=True)
        else:
            pending.setdefault(algo, []).append((algo, env, seed, goal))
    size = max(args.jobs, 1) if args.launcher in ("local", "joblib") else None
    for algo, batch in pending.items():
        algo_args = args_for(args, algo)
        for start in range(0, len(batch), size or len(batch)):
            chunk = batch[start:start + (size or len(batch))]
            for (a, e, s, g), summary in zip(chunk, launch_all(algo_args, chunk)):
                if "error" not in summary:
                    summary = store(algo_args, a, e, g, s, summary)
                results[(a, e, g)].append(summary)
    return results


def cell(runs: list[dict], seeds: int, key: str = "deterministic") -> str:
    if not runs:
        return "not run"
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return "failed"
    mean, ci = mean_ci([r[key]["mean"] for r in ok])
    return f"{mean:.1f}" + ("" if ci != ci else f" ± {ci:.1f}") + ("" if len(ok) == seeds else f" ({len(ok)} seeds)")


def compact(values: dict[str, str]) -> str:
    """``{env: value}`` as the most common value, with the envs of the others: ``96,000 (cloth 38,400)``."""
    if not values:
        return "-"
    common = Counter(values.values()).most_common(1)[0][0]
    others = [f"{env} {v}" for env, v in values.items() if v != common]
    return common + (f" ({', '.join(others)})" if others else "")


def commit_span(commits: list[str]) -> str:
    """The commits of a column's runs, oldest first, and whether the code (rl/, tphys/, recipes/) differs between them."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO)

    known = [c for c in commits if git("cat-file", "-e", f"{c}^{{commit}}").returncode == 0]
    if len(known) < 2 or len(known) < len(commits):
        return ", ".join(commits)
    known.sort(key=lambda c: int(git("log", "-1", "--format=%ct", c).stdout.strip() or 0))
    same = git("diff", "--quiet", known[0], known[-1], "--", "rl", "tphys", "recipes").returncode == 0
    code = "rl/, tphys/, recipes/ the same at the first and the last" if same else "rl/, tphys/ or recipes/ changed in between"
    return ", ".join(known) + f" ({code})"


def columns(args, results: dict) -> tuple[list[str], list[str]]:
    """The table of columns (cells filled, budget, integrator, commits of the runs) and the columns with no run."""
    lines = ["| column | cells | budget (env steps per run) | integrator | runs launched with | commit(s) of the runs |",
             "|---|---:|---|---|---|---|"]
    empty = []
    for a in args.algos:
        runs = [(e, r) for e in args.envs for g in args.goals for r in results[(a, e, g)] if "error" not in r]
        filled = sum(1 for e in args.envs for g in args.goals if any("error" not in r for r in results[(a, e, g)]))
        if not runs:
            empty.append(a)
        budgets = {e: f"{r['budget']['env_steps']:,}" for e, r in runs}
        integrators = sorted({str((r.get("settings") or {}).get("integrator")) for _, r in runs})
        commits = commit_span(sorted({str(r.get("commit")) for _, r in runs}))
        launched = sorted({str((r.get("settings") or {}).get("parallelism")) for _, r in runs})
        lines.append(f"| {a} | {filled}/{len(args.envs) * len(args.goals)} | {compact(budgets)} | {', '.join(integrators) or '-'} "
                     f"| {'; '.join(launched) or '-'} | {commits or 'not run'} |")
    return lines, empty


def tables(args, results: dict) -> list[str]:
    head = "| env | goal | " + " | ".join(args.algos) + " | random |"
    rule = "|---|---|" + "---:|" * (len(args.algos) + 1)
    reward, timing, metrics = [head, rule], ["| env | goal | " + " | ".join(args.algos) + " |", "|---|---|" + "---:|" * len(args.algos)], []
    for env in args.envs:
        for goal in args.goals:
            runs = {a: results[(a, env, goal)] for a in args.algos}
            done = next((runs[a] for a in args.algos if any("error" not in r for r in runs[a])), [])
            reward.append(f"| {env} | {goal} | " + " | ".join(cell(runs[a], args.seeds) for a in args.algos)
                          + f" | {cell(done, args.seeds, 'random_policy')} |")
            times = []
            for a in args.algos:
                ok = [r["train_wall_time_s"] for r in runs[a] if "error" not in r]
                times.append(f"{sum(ok) / len(ok):.0f}" if ok else ("failed" if runs[a] else "not run"))
            timing.append(f"| {env} | {goal} | " + " | ".join(times) + " |")
            for a in args.algos:
                ok = [r for r in runs[a] if "error" not in r and "metrics" in r]
                if ok:
                    values = [fmt.format(sum(r["metrics"]["deterministic"][m]["mean"] for r in ok) / len(ok)) for m, _, fmt in METRICS]
                    metrics.append(f"| {env} | {goal} | {a} | " + " | ".join(values) + " |")
    metrics = ["| env | goal | algo | " + " | ".join(label for _, label, _ in METRICS) + " |", "|---|---|---|---:|---:|---:|", *metrics]
    return ["#### Reward (final policy)", "", *reward, "", "#### Compute time [s] (training, 1 thread)", "", *timing, "",
            "#### Paper metrics of the final policy (mean over evaluation episodes and seeds)", "", *metrics]


def section(args, results: dict, load_before, t0: float) -> list[str]:
    """The ``pods-table`` section: header, columns, the tables, and the previous full table where a column is not run."""
    cols, empty = columns(args, results)
    try:
        store_dir = os.path.relpath(args.store, REPO)
    except ValueError:
        store_dir = str(args.store)
    lines = [
        *run_header("PODS table 1: reward and compute time on the PODS envs", __file__, load_before, t0,
                    parallelism="none launched (--no-launch): every cell from a stored summary" if args.no_launch else parallelism(args)),
        f"64 envs; PODS: k = 64 episodes per epoch. {args.seeds} seed(s); {args.eval_episodes} deterministic evaluation "
        f"episodes per run; recipe defaults otherwise. A cell comes from the run's stored summary (`{store_dir}/"
        "<algo>-<env>-<goal>-seed<k>.json`) where it holds the budget, else from a run launched by this command; "
        "\"not run\": no summary with the budget. Budget, integrator and commit(s) per column:", "", *cols, "",
        *([args.note, ""] if getattr(args, "note", "") else []),
    ]
    if empty:
        lines += [f"Not rerun at this commit: {', '.join(empty)} (\"not run\" below); their numbers (commit f23d640) are in "
                  "\"previous full table\" at the end of this section.", ""]
    lines += tables(args, results)
    previous = Path(args.previous) if args.previous else None
    if empty and previous is not None and previous.is_file():
        lines += ["", "### previous full table (commit f23d640, every algorithm semi-implicit, no GPS)", "",
                  *previous.read_text().rstrip("\n").split("\n")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--goals", nargs="+", default=list(GOALS), choices=GOALS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", nargs="*", default=[], help="per-env budget, e.g. rope3d=200000, or per algo and env: gps:rope3d=48000")
    add_launcher_arguments(parser)
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=5)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "pods_table")
    parser.add_argument("--store", type=Path, default=None,
                        help=f"per-run summaries (default {STORE.relative_to(REPO)}; with --quick <runs>/summaries)")
    parser.add_argument("--previous", type=Path, default=PREVIOUS, help="the previous full table, shown where a column is not run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--fresh", action="store_true", help="rerun even where a stored summary or eval.json exists")
    parser.add_argument("--no-launch", action="store_true", help="launch nothing: the table from the stored summaries")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, 8 eval episodes")
    parser.add_argument("--note", default="", help="a paragraph for the section, e.g. why a column has another budget")
    args = parser.parse_args()
    args.num_envs, args.goal = 64, args.goals[0]
    args.store = args.store or (args.runs / "summaries" if args.quick else STORE)
    steps = dict(DEFAULT_STEPS)
    if args.quick:
        args.eval_episodes, args.curve_points = 8, 1
        steps = {env: 9600 if env != "cloth" else 3840 for env in ENVS}
    args.algo_steps = {}
    for item in args.steps:
        key, _, value = item.partition("=")
        algo, _, env = key.rpartition(":")
        if env not in ENVS or (algo and algo not in ALGOS):
            parser.error(f"--steps {item!r}: expected [ALGO:]ENV=N")
        if algo:
            args.algo_steps[(algo, env)] = int(float(value))
        else:
            steps[env] = int(float(value))
    args.steps = steps
    load_before, t0 = os.getloadavg(), time.perf_counter()
    jobs = [(a, e, s, g) for e in args.envs for g in args.goals for s in range(args.seeds) for a in args.algos]
    results = gather(args, jobs)
    failures = [s for runs in results.values() for s in runs if "error" in s]
    publish(args.out, "pods-table", section(args, results, load_before, t0), failures)


if __name__ == "__main__":
    main()
