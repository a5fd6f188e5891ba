"""Same-process A/B of the C frame kernels on 1 vs K threads through TorchRL's ``env.step`` (issue 21, "using every core").

    python benchmarks/threads_ab.py                              # ant N = 64 and soft_jumper N = 64, 1 vs 2 threads
    python benchmarks/threads_ab.py ant:16 --threads 4 --horizon 8

The rigid and FEM frame kernels (``tphys.kernels.rigid_kernels``, ``fem_kernels``) split their envs over
``torch.get_num_threads()`` threads; this toggles ``torch.set_num_threads`` between 1 and K (which also sets the threads of
the env's own torch ops, as a recipe's ``threads`` does). Per env: float32, ``backend="cpu"``, built by
``tphys.envs.make(env, num_envs=N, seed=0)``. A round is H frames of uniform random actions through ``env.step`` +
``step_mdp`` and the gradient of the summed reward to every action (``benchmarks/backend_ab.py``'s round). One unmeasured
round at each count, then ``--rounds`` rounds of each interleaved, timed on the wall clock (K threads: process CPU time
would add the threads' times up); prints the median env-steps/s at each count, their ratio, and the load average before
and after (the figures are only as quiet as the machine). It also prints each count's median process CPU time per round:
waiting for a core busy with another process costs wall time but no CPU time, so CPU time at K threads close to CPU
time at 1 says the split itself costs little (no lost work; the wall clock then shows how many cores were free).
Run it as the README asks threads > 1 to run, ``OMP_WAIT_POLICY=PASSIVE python benchmarks/threads_ab.py ...``: otherwise
torch's OpenMP threads spin between parallel ops and take the second core from the kernels' threads (the first line
says the policy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's tphys first (see report.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["ant:64", "soft_jumper:64"], help="env:N pairs (default ant:64 soft_jumper:64)")
    parser.add_argument("--threads", type=int, default=2, help="K, the thread count set against 1 (default 2)")
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch
    from backend_ab import env_round  # this folder is the script's: on sys.path

    import tphys.envs

    policy = os.environ.get("OMP_WAIT_POLICY", "unset")  # the README asks PASSIVE of threads > 1 (read when torch loads)
    print("load before " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f", OMP_WAIT_POLICY={policy}", flush=True)
    counts = (1, args.threads)
    for case in args.cases:
        name, _, size = case.partition(":")
        n, horizon = int(size or 64), args.horizon
        torch.set_num_threads(1)
        torch.manual_seed(0)
        env = tphys.envs.make(name, num_envs=n, seed=0, dtype=torch.float32, backend="cpu")
        state = {"td": env.reset()}

        def round_of(threads: int) -> float:
            torch.set_num_threads(threads)
            start, cpu = time.perf_counter(), time.process_time()
            state["td"] = env_round(env, state["td"], horizon)
            return time.perf_counter() - start, time.process_time() - cpu

        for threads in counts:
            round_of(threads)
        times = {threads: [] for threads in counts}
        for _ in range(args.rounds):
            for threads in counts:
                times[threads].append(round_of(threads))
        rates = {threads: n * horizon / statistics.median(wall for wall, _ in pairs) for threads, pairs in times.items()}
        cpu = {threads: statistics.median(c for _, c in pairs) for threads, pairs in times.items()}
        for threads, rate in rates.items():
            print(f"{name} N={n} threads={threads}: {rate:.0f} env-steps/s fwd+bwd H={horizon} (median of {args.rounds}, wall); "
                  f"process CPU {cpu[threads]:.3f} s per round")
        print(f"{name} N={n} threads={args.threads} / threads=1: {rates[args.threads] / rates[1]:.2f}x", flush=True)
    torch.set_num_threads(1)
    print("load after " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
