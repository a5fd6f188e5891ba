"""Paired A/B throughput of two checkouts on the same machine, in one command: is a change slower?

Two worker processes, one per checkout (``--base`` and ``--new``, each imported through PYTHONPATH), build the
same env and take turns, one H-step rollout each (the order alternates every pair), so both see the same
machine. A worker times ``env.step`` + ``step_mdp`` for ``H`` steps through the TorchRL API with random actions
(``fwd``: under no_grad; ``bwd``: actions one leaf tensor and the summed reward's backward). Reported per cell:
each side's best env-steps/s over the pairs and the median (and quartiles) of the per-pair speed ratio new/base,
which is robust to the machine's speed drifting between pairs. One thread per worker; only one computes at a time.

    python benchmarks/ab_throughput.py --base /tmp/base --cells rope3d:64:32 ant:16:32 soft_jumper:16:8 --pairs 12
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's tphys first (see report.py)

ROOT = Path(__file__).resolve().parents[1]


def worker(name: str, num_envs: int, horizon: int, mode: str) -> None:
    """Build the env, time one rollout per line read from stdin, print each time (s)."""
    import torch
    from torchrl.envs.utils import step_mdp

    import tphys.envs

    torch.set_num_threads(1)
    env = tphys.envs.make(name, num_envs=num_envs, seed=0)
    start = env.reset()
    actions = torch.rand(horizon, num_envs, env.action_spec.shape[-1], generator=torch.Generator().manual_seed(0)) * 2 - 1

    def forward():
        with torch.no_grad():
            td = start
            for action in actions:
                td = step_mdp(env.step(td.set("action", action)))

    def backward():
        leaf = actions.clone().requires_grad_()
        td, total = start, 0.0
        for action in leaf.unbind(0):
            out = env.step(td.clone(False).set("action", action))
            total = total + out["next", "reward"].sum()
            td = step_mdp(out)
        total.backward()

    rollout = forward if mode == "fwd" else backward
    rollout()  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        rollout()
        print(time.perf_counter() - t, flush=True)


def compare(base: Path, new: Path, name: str, num_envs: int, horizon: int, mode: str, pairs: int) -> str:
    def start(tree: Path) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, str(num_envs), str(horizon), mode],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker of {tree} did not start")
        return proc

    procs = {"base": start(base), "new": start(new)}
    times: dict[str, list[float]] = {"base": [], "new": []}
    for i in range(pairs):
        for side in (("base", "new") if i % 2 == 0 else ("new", "base")):
            procs[side].stdin.write("go\n")
            procs[side].stdin.flush()
            times[side].append(float(procs[side].stdout.readline()))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    ratios = [b / n for b, n in zip(times["base"], times["new"])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    steps = num_envs * horizon
    return (f"| {name} | {num_envs} | {horizon} | {mode} | {steps / min(times['base']):,.0f} | {steps / min(times['new']):,.0f} | "
            f"{statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f}) |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout to compare against (e.g. a git worktree)")
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout under test (default: this one)")
    parser.add_argument("--cells", nargs="+", default=["rope3d:64:32", "rope3d:1024:32", "ant:16:32", "ant:64:32",
                                                       "soft_jumper:16:8", "soft_jumper:64:8"], help="env:N:H")
    parser.add_argument("--modes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread per worker; base {args.base}, new {args.new}")
    print("| env | N | H | mode | base env-steps/s (best) | new env-steps/s (best) | new/base speed, median (quartiles) |")
    print("|---|---:|---:|---|---:|---:|---|")
    for cell in args.cells:
        name, num_envs, horizon = cell.split(":")
        for mode in args.modes:
            print(compare(args.base, args.new, name, int(num_envs), int(horizon), mode, args.pairs), flush=True)


if __name__ == "__main__":
    main()
