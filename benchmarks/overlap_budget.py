"""Where a training window's time goes with the critic worker on, and what the machine allows (issue 21.5).

With ``overlap_critic`` on (the recipes' default where a core is spare), window k's critic mini-epochs run in a second
process beside window k's backward and window k+1's rollout, and the main process waits for them just before window
k+1's values. So a window takes at least as long as the longer of the two processes' work:

    window  >=  max(main busy, critic fit + hand-off)        and, both processes sharing the machine's 2 cores,
    window  >=  (main CPU + critic CPU) / cores

This script builds the recipe's trainer for each --envs as ``training_overhead.py`` does (its config, N, H, 1 torch
thread a process), and times, in alternating blocks of --windows windows each (after --warmup windows):

- training windows (``trainer.step()``): wall time, the main process's thread CPU time, its wait for the critic job
  (``join_critic``), and in the worker each job's ``fit_critic`` (thread CPU and wall time, written to a file);
- env-only windows (``training_overhead.reference_window``: the last training window's start state and actions
  replayed through the env, then the gradient of the summed reward to every action): wall time.

Reported (medians over windows): training / env (the issue's ratio: env-only window / training window), and the
ceilings the bounds above put on it: critic = env / (fit wall + hand-off), main = env / (window - wait), two cores =
cores · env / (main CPU + fit CPU). The critic's GEMM work a window (multiply-adds of its products, forward and
backward, from the layer sizes) over the fit's CPU time gives its effective GFLOP/s. Run on an otherwise idle
machine; the blocks alternate so that a slow spell of the host hits both kinds of window.

    python benchmarks/overlap_budget.py --envs rope
    python benchmarks/overlap_budget.py --envs rope ant soft_jumper --blocks 3 --out /tmp/o.md

Writes the section ``overlap-budget`` of --out (default benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import positive_int, publish, run_header, usable_cores  # noqa: E402

BAR = 0.75  # the training / env bar


def critic_multiply_adds(obs_dim: int, hidden: list[int], critics: int, rows: int, updates: int, minibatches: int) -> float:
    """Multiply-adds of the critic's products over one window's mini-epochs: per row forward ``D·H₀ + Σ H_l·H_{l+1} +
    H_last`` a critic, backward twice that less the first layer's input gradient (the inputs need none)."""
    sizes = [obs_dim, *hidden, 1]
    forward = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    per_row = forward + 2 * forward - obs_dim * hidden[0]
    return float(per_row * critics * (rows // minibatches) * updates)


def measure(recipe: str, env_name: str, windows: int, blocks: int, warmup: int) -> dict:
    import torch
    from training_overhead import build, reference_window

    torch.set_num_threads(1)
    cfg, trainer = build(recipe, env_name, [])
    if not getattr(trainer, "overlapping", False):
        raise SystemExit(f"overlap_budget.py: {recipe} on {env_name} runs without the critic worker here (no critic, "
                         "overlap_critic off, or no spare core for it), and this budget is the overlapped loop's: "
                         "training_overhead.py --serial-too measures the serial one")
    algo = cfg.algo
    horizon = int(algo.horizon)
    env_window = reference_window(trainer, horizon)
    log = Path(tempfile.mkstemp(prefix="overlap_budget_", suffix=".txt")[1])
    fit = trainer.fit_critic

    def timed_fit(*args):  # runs in the worker (forked with this wrapper in place); one line a job
        wall, cpu = time.perf_counter(), time.thread_time()
        result = fit(*args)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {time.thread_time() - cpu} {time.perf_counter() - wall}\n")
        return result

    trainer.fit_critic = timed_fit
    join = trainer.join_critic
    waited = []

    def timed_join():
        start = time.perf_counter()
        join()
        waited.append(time.perf_counter() - start)

    trainer.join_critic = timed_join
    for _ in range(warmup):
        trainer.step()
    trainer.join_critic()
    env_window()
    rows = {"window": [], "main_cpu": [], "wait": [], "env": [], "env_cpu": []}
    for _ in range(blocks):
        log.write_text("")
        for _ in range(windows):
            waited.clear()
            wall, cpu = time.perf_counter(), time.thread_time()
            trainer.step()
            rows["window"].append(time.perf_counter() - wall)
            rows["main_cpu"].append(time.thread_time() - cpu)
            rows["wait"].append(sum(waited))
        trainer.join_critic()
        for _ in range(windows):
            wall, cpu = time.perf_counter(), time.thread_time()
            env_window()
            rows["env"].append(time.perf_counter() - wall)
            rows["env_cpu"].append(time.thread_time() - cpu)
        jobs = [line.split() for line in log.read_text().splitlines()]
        rows.setdefault("fit_cpu", []).extend(float(j[1]) for j in jobs[-windows:])
        rows.setdefault("fit_wall", []).extend(float(j[2]) for j in jobs[-windows:])
        rows.setdefault("worker", []).extend(j[0] != str(os.getpid()) for j in jobs[-windows:])
    log.unlink(missing_ok=True)
    med = {k: statistics.median(v) for k, v in rows.items() if k != "worker"}
    obs_dim = int(trainer.env.observation_spec["observation"].shape[-1])
    macs = critic_multiply_adds(obs_dim, [int(h) for h in algo.critic_hidden], int(algo.num_critics),
                                int(trainer.env.batch_size[0]) * horizon,
                                int(algo.critic_iterations) * int(algo.critic_minibatches), int(algo.critic_minibatches))
    return {"env": env_name, "recipe": recipe, "N": int(trainer.env.batch_size[0]), "H": horizon,
            "worker": all(rows["worker"]), "med": med, "gflop": 2 * macs / 1e9,
            "per_block": [statistics.median(rows["env"][i * windows:(i + 1) * windows]) /
                          statistics.median(rows["window"][i * windows:(i + 1) * windows]) for i in range(blocks)]}


def row(r: dict, cores: int) -> str:
    m = r["med"]
    ms = {k: 1e3 * v for k, v in m.items()}
    handoff = max(0.0, m["window"] - max(m["fit_wall"], m["window"] - m["wait"]))
    critic_ceiling = m["env"] / m["fit_wall"]
    main_ceiling = m["env"] / (m["window"] - m["wait"])
    cores_ceiling = cores * m["env"] / (m["main_cpu"] + m["fit_cpu"])
    blocks = ", ".join(f"{b:.2f}" for b in r["per_block"])
    return (f"| {r['recipe']} | {r['env']} | {r['N']} | {r['H']} | {'yes' if r['worker'] else 'no'} | {ms['env']:.0f} | "
            f"{ms['window']:.0f} | **{m['env'] / m['window']:.2f}** ({blocks}) | {ms['main_cpu']:.0f} | {ms['wait']:.0f} | "
            f"{ms['fit_cpu']:.0f} / {ms['fit_wall']:.0f} | {1e3 * handoff:.0f} | {r['gflop']:.1f} ({r['gflop'] / m['fit_cpu']:.0f}) | "
            f"{critic_ceiling:.2f} | {main_ceiling:.2f} | {cores_ceiling:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--envs", nargs="+", default=["rope"])
    parser.add_argument("--windows", type=positive_int, default=6, help="windows of each kind a block")
    parser.add_argument("--blocks", type=positive_int, default=4)
    parser.add_argument("--warmup", type=positive_int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    load_before, started = os.getloadavg(), time.perf_counter()
    cores = usable_cores()
    results = [measure(args.recipe, env, args.windows, args.blocks, args.warmup) for env in args.envs]
    lines = run_header("Overlap budget: a training window with the critic worker, against what two processes allow",
                       __file__, load_before, started, threads="1 torch thread a process")
    lines += [
        f"Per env: {args.blocks} blocks of {args.windows} training windows then {args.windows} env-only windows (after "
        f"{args.warmup} warm-up windows); medians over windows. env / window: the issue's training / env ratio (wall "
        "time; per block in brackets). main CPU: the training process's thread CPU time a window; wait: its wait for the "
        "critic job; fit: the worker's ``fit_critic`` a window, thread CPU / wall; hand-off: the window's wall time "
        "beyond the longer of the fit and the main process's busy time (sending the job, the reply). Critic GEMM: "
        "GFLOP of the critic's products a window (forward and backward, from the layer sizes), and in brackets that over "
        "the fit's CPU time (GFLOP/s). Ceilings on env / window: critic = env / fit wall; main = env / (window - wait); "
        f"{cores} cores = {cores} · env / (main CPU + fit CPU). Bar: {BAR}.",
        "",
        "| recipe | env | N | H | critic worker | env-only ms | window ms | env / window | main CPU ms | wait ms | "
        "fit ms (CPU / wall) | hand-off ms | critic GEMM GFLOP (GFLOP/s) | critic ceiling | main ceiling | "
        f"{cores}-core ceiling |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[row(r, cores) for r in results],
    ]
    publish(args.out, "overlap-budget", lines)


if __name__ == "__main__":
    main()
