"""Forward+backward memory and time of the MPM tasks over a long horizon (issue 6: H = 32 at N = 32 on hand_flip).

Each cell runs in a fresh subprocess with 1 thread: reset, H env steps with random actions in [-1, 1] (leaf
tensors that require grad), the sum of rewards and of the dough's height backward, then checks every action
gradient is finite and not all zero. Peak memory is the process's peak resident set size (``ru_maxrss``,
imports included). Rewarped keeps every substep on CPU (about 4.5 GB per env step at N = 16 on RollingPin,
``../shared/reference/rewarped-and-mineral.md``), so it is not run at these sizes.

    python benchmarks/mpm_memory.py                                   # hand_flip, N = 32, H = 32, recompute=step
    python benchmarks/mpm_memory.py --env rolling_flat --sizes 16 --horizon 8 --out /tmp/m.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

RECOMPUTE = ("none", "step", "substep")  # = tphys.autodiff.RECOMPUTE (the parent process does not import torch)


def cell(env_name: str, n: int, horizon: int, recompute: str) -> dict:
    import torch

    import tphys.envs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    env = tphys.envs.make(env_name, num_envs=n, seed=0, recompute=recompute, validate=False)
    td = env.reset()
    start = time.perf_counter()
    total, actions = 0.0, []
    for _ in range(horizon):
        action = (torch.rand(n, env.action_spec.shape[-1]) * 2 - 1).requires_grad_()
        actions.append(action)
        out = env.step(td.set("action", action))
        total = total + out["next", "reward"].sum() + out["next", "x"][..., 1].mean()
        td = env.step_mdp(out)
    forward = time.perf_counter() - start
    total.backward()
    elapsed = time.perf_counter() - start
    grads = torch.stack([a.grad.norm() for a in actions])
    return dict(env=env_name, num_envs=n, H=horizon, recompute=recompute, forward_s=forward, total_s=elapsed,
                steps_per_s=n * horizon / elapsed, max_rss_GB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                grads_finite=bool(torch.isfinite(grads).all()), grad_norm_mean=float(grads.mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="hand_flip")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--recompute", nargs="+", default=["step"], choices=RECOMPUTE)
    parser.add_argument("--limit-gb", type=float, default=8.0, help="the budget the issue sets (reported, not enforced)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        n, recompute = args.cell.split(",")
        print("RESULT " + json.dumps(cell(args.env, int(n), args.horizon, recompute)), flush=True)
        return
    load_before, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for n in args.sizes:
        for recompute in args.recompute:
            cmd = [sys.executable, __file__, "--env", args.env, "--horizon", str(args.horizon), "--cell", f"{n},{recompute}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=7200)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else dict(
                num_envs=n, recompute=recompute, error=(proc.stderr.strip().splitlines() or ["no output"])[-1])
            print(json.dumps(result), flush=True)
            rows.append(result)
    lines = [*run_header(f"MPM forward+backward memory: {args.env}, H = {args.horizon}", __file__, load_before, t0,
                         threads="1 per process (OMP_NUM_THREADS=1), cells one at a time"),
             f"Random actions, the sum of rewards and mean particle height backward, float32, the C kernels on CPU. The budget "
             f"the issue sets: {args.limit_gb:g} GB.", "",
             "| N | H | recompute | forward s | fwd+bwd s | env-steps/s | peak RSS GB | within budget | action grads finite |",
             "|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['num_envs']} | {args.horizon} | {r['recompute']} | failed: {r['error'][:80]} | | | | | |")
            continue
        within = "yes" if r["max_rss_GB"] <= args.limit_gb else "no"
        lines.append(f"| {r['num_envs']} | {r['H']} | {r['recompute']} | {r['forward_s']:.0f} | {r['total_s']:.0f} | "
                     f"{r['steps_per_s']:.2f} | {r['max_rss_GB']:.2f} | {within} | {r['grads_finite']} |")
    publish(args.out, f"mpm-memory-{args.env}", lines)


if __name__ == "__main__":
    main()
