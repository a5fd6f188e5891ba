"""Same-process A/B of an env's backends through TorchRL's ``env.step``: the C frame (``backend="cpu"``) against the torch
substeps (``backend="torch"``, compiled with ``--against compiled`` or eager with ``--against eager``).

    python benchmarks/backend_ab.py ant 16                       # ant N = 16, C vs compiled, fwd+bwd H = 32
    python benchmarks/backend_ab.py humanoid 16 --against eager --horizon 8
    python benchmarks/backend_ab.py soft_jumper 16 --horizon 8

One process, 1 thread, float32, the env built by ``tphys.envs.make(env, num_envs=N, seed=0, **backend options)``. A round
is H frames of uniform random actions (one leaf tensor per frame) through ``env.step`` + ``step_mdp``, then the gradient
of the summed reward to every action (the protocol of ``benchmarks/vs_rewarped.py``'s fwd+bwd cells; the state carries
over, reset when any env is done). After one unmeasured round of each (compilation), ``--rounds`` rounds of each
interleaved on the process CPU clock; prints the median env-steps/s of each and the load. The figures in the recipes'
env configs (``recipes/config/env/*.yaml``, issue 21) came from this measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's tphys first (see report.py)


def env_round(env, td, horizon: int):
    """One round: ``horizon`` frames of uniform random actions in [-1, 1] through ``env.step`` + ``step_mdp``, then the
    gradient of the summed reward to every action. Returns the state the next round starts from (detached; reset
    where an episode ended)."""
    import torch

    n = env.batch_size[0]
    actions, total = [], 0.0
    for _ in range(horizon):
        action = (torch.rand(n, env.action_dim) * 2 - 1).requires_grad_(True)
        actions.append(action)
        out = env.step(td.set("action", action))
        total = total + out["next", "reward"].sum()
        td = env.step_mdp(out)
    torch.autograd.grad(total, actions, allow_unused=True)
    td = td.detach()
    return env.reset() if bool(td["done"].any()) else td


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env")
    parser.add_argument("num_envs", type=int)
    parser.add_argument("--against", choices=("compiled", "eager"), default="compiled", help="the torch substeps' form")
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    import tphys.envs
    from tphys.compiling import use_cache_dir

    use_cache_dir()
    torch.set_num_threads(1)
    n, horizon = args.num_envs, args.horizon
    torch_options = dict(backend="torch", compile_substep=args.against == "compiled")
    variants = {"C (backend=cpu)": dict(backend="cpu"), f"torch {args.against}": torch_options}
    envs, states = {}, {}
    for label, options in variants.items():
        torch.manual_seed(0)
        envs[label] = tphys.envs.make(args.env, num_envs=n, seed=0, dtype=torch.float32, **options)
        states[label] = envs[label].reset()

    def round_of(label: str) -> None:
        states[label] = env_round(envs[label], states[label], horizon)

    t0 = time.perf_counter()
    for label in variants:
        round_of(label)
    print(f"warm-up {time.perf_counter() - t0:.1f} s (wall)", flush=True)
    times = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label in variants:
            start = time.process_time()
            round_of(label)
            times[label].append(time.process_time() - start)
    for label, seconds in times.items():
        print(f"{args.env} N={n} {label}: {n * horizon / statistics.median(seconds):.0f} env-steps/s fwd+bwd H={horizon} "
              f"(median of {args.rounds}, process CPU time)")
    print("load " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
