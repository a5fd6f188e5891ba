"""PODS vs BPTT (figure 3 of the PODS paper): evaluation return against iterations on pendulum2d.

Three methods from the same initial policy (``rl.modules.DeterministicActor``, 2 x 256 ReLU,
tanh; same weights per seed), each iteration on k fresh initial states:

    PODS-1st  improve the k episodes' actions along dV/dā (line search), 50 Adam steps on Eq. 7;
              two first trial steps: "scaled" moves the largest action by 0.5 (our default),
              "α from 1" tries α = 1 on the raw gradient (the paper's Eq. 6 and standard line search)
    PODS-2nd  the same with the Gauss-Newton step Ĥ⁻¹dV/dā (truncated CG)
    BPTT      one Adam step on -mean V(π_θ) through the full episodes (``APGLoss``, γ = 1,
              window = episode)

"Equal iterations" is the paper's axis: one PODS epoch against one BPTT gradient step on the
same k episodes. The return is evaluated on the same 64 initial states after every iteration.
Writes a figure and a section between ``<!-- pods-figure -->`` markers of --out.

    python benchmarks/pods_figure.py                          # goal stop, 50-step episodes, 30 iterations, 2 seeds
    python benchmarks/pods_figure.py --iterations 20 --seeds 1  # the run in RESULTS.md
    python benchmarks/pods_figure.py --iterations 5 --seeds 1 --out /tmp/pods.md    # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import mean_ci  # noqa: E402
from report import publish, run_header  # noqa: E402

import tphys.envs  # noqa: E402
from rl.modules import DeterministicActor, ObservationNormalizer  # noqa: E402
from rl.objectives import APGLoss, PODSLoss  # noqa: E402
from rl.trainers import FirstOrderTrainer, PODSConfig, PODSTrainer, TrainerConfig, evaluate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("pods2", "pods1", "pods1raw", "bptt")
LABELS = {"pods2": "PODS 2nd order", "pods1": "PODS 1st order, scaled start", "pods1raw": "PODS 1st order, α from 1 (paper)",
          "bptt": "BPTT"}


def make_env(args, num_envs: int, seed: int):
    return tphys.envs.make(args.env, num_envs=num_envs, dtype=torch.float64, goal=args.goal, seed=seed, horizon=args.horizon)


def build(args, method: str, seed: int):
    env = make_env(args, args.num_envs, seed)
    torch.manual_seed(seed)  # the same initial weights for every method
    normalizer = ObservationNormalizer(env.observation_dim)
    actor = DeterministicActor(env.observation_dim, env.action_dim, normalizer=normalizer).double()
    settings = dict(total_steps=10**12, actor_lr=args.lr, optimizer="adam", betas=(0.9, 0.999), lr_schedule="constant",
                    grad_clip=None if method != "bptt" else 1.0, eval_every=0, checkpoint_every=0, seed=seed, progress=False)
    if method == "bptt":
        loss = APGLoss(env, actor, horizon=args.horizon, gamma=1.0)
        return FirstOrderTrainer(loss, TrainerConfig(**settings), normalizer=normalizer, logger="none"), actor
    loss = PODSLoss(env, actor, order=2 if method == "pods2" else 1, cg_iterations=args.cg_iterations,
                    max_action_change=None if method == "pods1raw" else 0.5,
                    newton_step_cap=args.newton_step_cap, damping=args.damping,
                    gradient_fallback=args.gradient_fallback)
    config = PODSConfig(**settings, regression_steps=args.regression_steps)
    return PODSTrainer(loss, config, normalizer=normalizer, logger="none"), actor


def run(args, method: str, seed: int) -> dict:
    trainer, actor = build(args, method, seed)
    eval_env = make_env(args, 64, seed + 10_000)

    def score() -> float:
        eval_env.set_seed(seed + 10_000)  # the same 64 initial states every time
        return evaluate(eval_env, actor, 64).mean

    returns, seconds, accepted = [score()], [], []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        scalars = trainer.step()
        seconds.append(time.perf_counter() - t0)
        returns.append(score())
        accepted.append(scalars.get("pods/accepted", float("nan")))
    print(f"{method:6s} seed {seed}: {returns[0]:9.3f} -> {returns[-1]:9.3f}  ({sum(seconds) / len(seconds):.2f} s / iteration)",
          flush=True)
    return {"method": method, "seed": seed, "returns": returns, "accepted": accepted,
            "seconds_per_iteration": sum(seconds) / len(seconds)}


def plot(args, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method in args.methods:
        runs = [r["returns"] for r in results if r["method"] == method]
        its = list(range(len(runs[0])))
        stats = [mean_ci([r[i] for r in runs]) for i in its]
        mean = [m for m, _ in stats]
        ax.plot(its, mean, label=LABELS[method])
        if len(runs) > 1:
            ax.fill_between(its, [m - c for m, c in stats], [m + c for m, c in stats], alpha=0.2)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"iteration (PODS epoch / BPTT gradient step), k = {args.num_envs} episodes each")
    ax.set_ylabel("eval return, 64 fixed initial states")
    ax.set_title(f"{args.env} ({args.goal}), {args.horizon}-step episodes, {args.seeds} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired(args, results: list[dict]) -> list[str]:
    """PODS-2nd against each other method, paired by seed (same initial weights, training and evaluation states)."""
    if "pods2" not in args.methods:
        return []
    curve = {(r["method"], r["seed"]): r["returns"] for r in results}
    lines = ["PODS 2nd order minus each method, paired by seed (same initial weights, same training and evaluation states): "
             "the mean over iterations 1-N of the difference in return, and the iterations at which PODS-2nd is ahead.", "",
             "| PODS 2nd order minus | mean difference ± 95 % CI over seeds | iterations ahead |", "|---|---:|---:|"]
    for method in args.methods:
        if method == "pods2":
            continue
        gaps = [[a - b for a, b in zip(curve[("pods2", s)][1:], curve[(method, s)][1:])] for s in range(args.seeds)]
        mean, ci = mean_ci([sum(g) / len(g) for g in gaps])
        ahead = sum(x > 0 for g in gaps for x in g)
        lines.append(f"| {LABELS[method]} | {mean:+.2f}" + ("" if math.isnan(ci) else f" ± {ci:.2f}")
                     + f" | {ahead} / {sum(len(g) for g in gaps)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="pendulum2d")
    parser.add_argument("--goal", default="stop")
    parser.add_argument("--horizon", type=int, default=50, help="steps per episode (the paper's figure 3: 50)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=64, help="k: initial states per iteration")
    parser.add_argument("--cg-iterations", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--newton-step-cap", type=float, default=None, help="PODS-2nd: cap on the first trial step")
    parser.add_argument("--damping", type=float, default=1e-6, help="PODS-2nd: Levenberg term added to the Gauss-Newton matrix")
    parser.add_argument("--no-gradient-fallback", dest="gradient_fallback", action="store_false",
                        help="PODS-2nd: keep the policy's actions where the Gauss-Newton step fails (default: try the gradient step)")
    parser.add_argument("--regression-steps", type=int, default=50, help="PODS: Adam steps on Eq. 7 per epoch")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--figure", type=Path, default=None, help="default: pods_vs_bptt.png beside --out")
    parser.add_argument("--reuse", action="store_true",
                        help="take the per-iteration returns from the figure's .json (a previous run) instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.figure = args.figure or args.out.parent / "pods_vs_bptt.png"
    load_before, t0 = os.getloadavg(), time.perf_counter()
    stored = args.figure.with_suffix(".json")
    if args.reuse:
        results = [r for r in json.loads(stored.read_text()) if r["method"] in args.methods and r["seed"] < args.seeds]
        if len(results) != len(args.methods) * args.seeds or any(len(r["returns"]) != args.iterations + 1 for r in results):
            raise SystemExit(f"{stored} does not hold {args.seeds} seeds x {args.methods} x {args.iterations} iterations")
    else:
        results = [run(args, method, seed) for seed in range(args.seeds) for method in args.methods]
        stored.write_text(json.dumps(results))
    plot(args, results, args.figure)
    marks = sorted({1, 3, 10, args.iterations} & set(range(1, args.iterations + 1)))
    header = " | ".join(f"iteration {i}" for i in marks)
    rows = [f"| method | iteration 0 | {header} | mean over 1-{args.iterations} | s / iteration |",
            "|---|" + "---:|" * (len(marks) + 3)]
    for method in args.methods:
        runs = [r for r in results if r["method"] == method]
        cells = [mean_ci([r["returns"][0] for r in runs])] + [mean_ci([r["returns"][i] for r in runs]) for i in marks]
        cells.append(mean_ci([sum(r["returns"][1:]) / args.iterations for r in runs]))
        secs = sum(r["seconds_per_iteration"] for r in runs) / len(runs)
        text = [f"{m:.2f}" + ("" if math.isnan(c) else f" ± {c:.2f}") for m, c in cells]
        rows.append(f"| {LABELS[method]} | " + " | ".join(text) + f" | {secs:.2f} |")
    lines_paired = paired(args, results)
    lines = [
        *run_header("PODS vs BPTT (PODS paper, figure 3)", __file__, load_before, t0, threads=str(args.threads)),
        f"`{args.env}`, goal `{args.goal}`, {args.horizon}-step episodes, float64, k = {args.num_envs} initial states per iteration, "
        f"{args.seeds} seeds (mean ± 95 % CI over seeds). Same initial policy weights for every method; "
        f"Adam lr {args.lr}; PODS: {args.regression_steps} regression steps per epoch; per-env line search (halving) from a 0.5 "
        "action-unit step (1st order, scaled start) or α = 1 on the raw dV/dā (1st order, the paper's Eq. 6) "
        f"or the full Gauss-Newton step ({args.cg_iterations} CG iterations, 2nd order"
        f"{', falling back to the gradient step where it fails' if args.gradient_fallback else ''}); BPTT: one step "
        "per iteration, gradient-norm clip 1. Evaluation: deterministic policy, 64 fixed initial states.",
        *([f"Per-iteration returns reused from `{stored.name}`, written by this command without `--reuse` "
           "(the date, load, commit and duration above are the rewrite's; s / iteration below are the training's)."] if args.reuse else []),
        "", *rows, "", *lines_paired, "", f"![PODS vs BPTT]({os.path.relpath(args.figure, args.out.parent)})",
    ]
    publish(args.out, "pods-figure", lines, wrote_also=f" and {args.figure}")


if __name__ == "__main__":
    main()
