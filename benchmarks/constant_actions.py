"""Returns of fixed open-loop policies on an env: all-zero, all +1, all -1 and uniform random actions.

A yardstick for short learning runs: what doing nothing, or pushing every actuator one way, scores over
the same episodes (same seed, so the same initial states for every policy). Episodes run under no_grad;
mean and 95 % CI over the envs. Writes a section ``constant-actions-<env>`` of --out.

    python benchmarks/constant_actions.py --env hand_flip --horizon 50 --num-envs 8
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

import tphys.envs  # noqa: E402

POLICIES = ("zero", "plus", "minus", "random")


def episode_returns(env_name: str, policy: str, num_envs: int, horizon: int, seed: int) -> torch.Tensor:
    env = tphys.envs.make(env_name, num_envs=num_envs, seed=seed, horizon=horizon, validate=False)
    gen = torch.Generator().manual_seed(seed)
    dim = env.action_spec.shape[-1]
    total = torch.zeros(num_envs, dtype=torch.float64)
    with torch.no_grad():
        td = env.reset()
        for _ in range(horizon):
            if policy == "random":
                action = torch.rand(num_envs, dim, generator=gen) * 2 - 1
            else:
                action = torch.full((num_envs, dim), {"zero": 0.0, "plus": 1.0, "minus": -1.0}[policy])
            out = env.step(td.set("action", action.to(env.dtype)))
            total += out["next", "reward"][:, 0].double()
            td = env.step_mdp(out)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="hand_flip")
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for policy in args.policies:
        returns = episode_returns(args.env, policy, args.num_envs, args.horizon, args.seed)
        ci = 1.96 * returns.std().item() / math.sqrt(len(returns))
        rows.append((policy, returns.mean().item(), ci))
        print(rows[-1], flush=True)
    lines = [*run_header(f"Open-loop yardsticks: {args.env}, {args.horizon}-step episodes", __file__, load_before, t0, threads="1"),
             f"{args.num_envs} episodes per policy from the same initial states (seed {args.seed}); return = sum of rewards; "
             "mean ± 95 % CI over the episodes.", "", "| policy | return |", "|---|---:|",
             *[f"| {p} | {m:.3f} ± {c:.3f} |" for p, m, c in rows]]
    publish(args.out, f"constant-actions-{args.env}", lines)


if __name__ == "__main__":
    main()
