"""One recipe run, published: its final evaluation against the random policy, and its training curve.

Runs ``recipes/<algo>.py`` with the given Hydra overrides in a subprocess (1 torch thread), then writes
a section of --out (between ``<!-- SECTION -->`` markers) with the command, the training time and the
final evaluation from the run's ``eval.json``: deterministic policy, stochastic policy and the uniform
random policy on the same evaluation envs, mean ± 95 % CI over episodes, and Welch's t for
"deterministic minus random". The training curve (``train/episode_return`` of ``metrics.jsonl``) goes
into ``<section>.png`` beside --out.

The run directory is the overrides' ``hydra.run.dir`` (required). Where it already holds an ``eval.json``
written by the same overrides (Hydra's ``.hydra/overrides.yaml``), the run is reused, so a run of hours can
be started on its own and published afterwards, and an interrupted one resumes from its last checkpoint
(``resume=<dir>`` is added when the directory has checkpoints but no ``eval.json``).

    python benchmarks/recipe_run.py --section hand-flip-sapo -- sapo env=hand_flip num_envs=4 ... hydra.run.dir=runs/hand_flip_sapo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("sapo", "shac", "apg", "trajopt", "ppo", "sac", "pods")


def run_dir_of(overrides: list[str]) -> Path:
    for item in overrides:
        if item.startswith("hydra.run.dir="):
            return REPO / item.partition("=")[2]
    raise SystemExit("pass hydra.run.dir=... among the overrides: the run directory is where eval.json is read")


def recorded_overrides(run: Path) -> list[str] | None:
    """The sorted overrides Hydra recorded for the run in ``run`` (None if it never started)."""
    path = run / ".hydra" / "overrides.yaml"
    return sorted(yaml.safe_load(path.read_text())) if path.exists() else None


def train(recipe: str, overrides: list[str], run: Path) -> None:
    """Run the recipe unless ``run`` holds an eval.json of the same overrides; resume from its checkpoints if it has some."""
    own = sorted(o for o in overrides if not o.startswith("hydra."))
    if (run / "eval.json").exists() and recorded_overrides(run) == own:
        print(f"reusing {run / 'eval.json'}", flush=True)
        return
    command = [sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *overrides]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()) and recorded_overrides(run) == own:
        command.append(f"resume={run}")
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})


def welch_t(a: list[float], b: list[float]) -> float:
    def mean_var(x):
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)

    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    return (ma - mb) / math.sqrt(va / len(a) + vb / len(b))


def plot_curve(run: Path, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    points = [(r["step"], r["train/episode_return"]) for r in rows if isinstance(r.get("train/episode_return"), float)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([s for s, _ in points], [v for _, v in points], label="training episodes (stochastic policy)")
    summary = json.loads((run / "eval.json").read_text())
    for key, style in (("deterministic", "-"), ("random_policy", ":")):
        ax.axhline(summary[key]["mean"], linestyle=style, color="k" if key == "deterministic" else "gray",
                   label=f"final eval, {'deterministic' if key == 'deterministic' else 'random policy'}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", required=True, help="marker of the section of --out to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--note", default="", help="a paragraph written under the table (e.g. why the overrides)")
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe, hydra.run.dir=... among them")
    args = parser.parse_args()
    run = run_dir_of(args.overrides)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    train(args.recipe, args.overrides, run)
    summary = json.loads((run / "eval.json").read_text())
    figure = args.out.parent / f"{args.section.replace('-', '_')}.png"
    title = args.title or f"{args.recipe} on {summary['env']} ({summary['goal']}), seed {summary['seed']}"
    plot_curve(run, figure, title)
    rows = ["| policy | return | episodes |", "|---|---:|---:|"]
    for key, label in (("deterministic", "trained, deterministic"), ("stochastic", "trained, stochastic"),
                       ("random_policy", "uniform random")):
        if key in summary:
            s = summary[key]
            rows.append(f"| {label} | {s['mean']:.3f} ± {s['ci95']:.3f} | {s['episodes']} |")
    t = welch_t(summary["deterministic"]["returns"], summary["random_policy"]["returns"])
    lines = [
        *run_header(title, __file__, load_before, t0, threads="1"),
        f"Recipe command: `python recipes/{args.recipe}.py {' '.join(args.overrides)}`. {summary['env_steps']:,} env steps, "
        f"{summary['train_wall_time_s']:.0f} s of training (1 thread, commit {summary.get('commit', '?')}). "
        "Final evaluation from the run's eval.json: "
        "mean ± 95 % CI over episodes; the random policy runs on the same evaluation envs.",
        "", *rows, "",
        f"Deterministic minus random: {summary['deterministic']['mean'] - summary['random_policy']['mean']:+.3f} "
        f"(Welch's t = {t:.1f}).",
        *(["", args.note] if args.note else []),
        "", f"![{title}]({os.path.relpath(figure, args.out.parent)})",
    ]
    publish(args.out, args.section, lines, wrote_also=f" and {figure}")


if __name__ == "__main__":
    main()
