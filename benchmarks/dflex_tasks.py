"""The DFlex rigid-body tasks trained with our recipes, against the published returns.

Each run is one recipe in its own subprocess (``benchmarks/learning.launch``: 1 torch thread;
finished runs with the same budget are reused). Writes a section between ``<!-- dflex-tasks -->``
markers of --out with the deterministic return of the final policy (64 episodes), the env's
episode metrics (cart-pole: final |θ| and |x|; runners: forward speed, episode length), the
training time, and the published level for reference:

    cartpole_swingup, SHAC, 1,024,000 steps (DFlex's budget: 500 epochs x 32 steps x 64 envs).
        Published: SHAC ends at about -506 at 1M steps, read off the CartPole Swing Up panel of
        Xu et al. 2022 (SHAC), figure 4 / DiffRL ``figures/training_comparison.jpg`` (no table
        gives the number); PPO about -1090, SAC about -1730, BPTT about -810 there.
    hopper, SAPO, a short budget (--hopper-steps, default 200,000 env steps) with the SAPO paper's
        Hopper networks (table 3: actor 128-64-32, critic 64-64). Published (SAPO paper table 5,
        full training): SAPO 5060 ± 18, SHAC 4939 ± 3, PPO 3155 ± 30. Our short run shows the recipe
        runs and learns; it is not a like-for-like comparison.

    python benchmarks/dflex_tasks.py
    python benchmarks/dflex_tasks.py --only cartpole_swingup --jobs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import launch, mean_ci  # noqa: E402
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOPPER_NETS = ("algo.actor_hidden=[128,64,32]", "algo.critic_hidden=[64,64]")
RUNS = {  # env: (algo, goal, default budget, extra overrides, published level)
    "cartpole_swingup": ("shac", "swingup", 1_024_000, (), "SHAC ≈ -506 at 1M steps (Xu et al. 2022, fig. 4, read off the figure)"),
    "hopper": ("sapo", "run", 200_000, HOPPER_NETS, "SAPO 5060 ± 18, SHAC 4939 ± 3 after full training (SAPO paper, table 5)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--hopper-steps", type=float, default=RUNS["hopper"][2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses 1 thread)")
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "dflex_tasks")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--fresh", action="store_true", help="rerun even where eval.json exists")
    args = parser.parse_args()
    args.num_envs, args.goal = 64, None
    args.steps = {env: int(RUNS[env][2]) for env in RUNS}
    args.steps["hopper"] = int(args.hopper_steps)
    jobs = [(env, seed) for env in args.only for seed in range(args.seeds)]
    load_before, t0 = os.getloadavg(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        summaries = list(pool.map(lambda job: launch(args, RUNS[job[0]][0], job[0], job[1], RUNS[job[0]][1], RUNS[job[0]][3]), jobs))
    rows = ["| env | algo | env steps | return (deterministic) | episode metrics | train s | published |",
            "|---|---|---:|---:|---|---:|---|"]
    failures = []
    for env in args.only:
        runs = [s for (e, _), s in zip(jobs, summaries) if e == env]
        ok = [r for r in runs if "error" not in r]
        failures += [r for r in runs if "error" in r]
        if not ok:
            rows.append(f"| {env} | {RUNS[env][0]} | {args.steps[env]:,} | failed | | | {RUNS[env][4]} |")
            continue
        mean, ci = mean_ci([r["deterministic"]["mean"] for r in ok])
        within = ok[0]["deterministic"]["ci95"] if len(ok) == 1 else ci
        metrics = ok[0].get("metrics", {}).get("deterministic", {})
        shown = ", ".join(f"{name} {sum(r['metrics']['deterministic'][name]['mean'] for r in ok) / len(ok):.3g}" for name in metrics)
        seconds = sum(r["train_wall_time_s"] for r in ok) / len(ok)
        rows.append(f"| {env} | {RUNS[env][0]} | {args.steps[env]:,} | {mean:.1f} ± {within:.1f} | {shown} | {seconds:.0f} "
                    f"| {RUNS[env][4]} |")
    lines = [
        *run_header("DFlex rigid-body tasks: our recipes against the published returns", __file__, load_before, t0,
                    parallelism=f"{args.jobs} runs at a time, 1 thread each"),
        f"{args.seeds} seed(s), 64 envs, recipe defaults otherwise; return = mean over {args.eval_episodes} deterministic "
        "evaluation episodes of the final policy ± 95 % CI (over episodes for one seed, over seeds otherwise).", "",
        *rows,
    ]
    publish(args.out, "dflex-tasks", lines, failures)


if __name__ == "__main__":
    main()
