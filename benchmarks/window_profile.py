"""What a training window does beyond its simulator: ``torch.profiler`` of a training window against the env-only window.

Builds the recipe's trainer for --env as ``training_overhead.py`` does (1 torch thread, the recipe's critic worker),
runs --warmup windows, then profiles --windows training windows (``trainer.step()``, this process only) and as many
env-only windows (the last training window's start state and actions replayed through ``env.step_and_maybe_reset``,
then the gradient of the summed reward to the actions: ``training_overhead.py``'s reference). Prints each window's
unprofiled thread CPU time, the profiled self CPU time of all ops, and the ops whose self time a training window has
beyond the env-only window (the op groups of ``critic_profile.py`` first, then the top ops). The difference between
the unprofiled CPU gap and the profiled op gap is time outside torch ops (Python: TorchRL's modules, tensordict, the
trainer).

    python benchmarks/window_profile.py --env rope
    python benchmarks/window_profile.py --env soft_jumper --windows 4

Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--env", default="rope")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)

    import torch
    from critic_profile import grouped
    from torch.profiler import ProfilerActivity, profile
    from training_overhead import build, reference_window

    torch.set_num_threads(1)
    cfg, trainer = build(args.recipe, args.env, [])
    env, horizon = trainer.env, int(cfg.algo.horizon)
    env_window = reference_window(trainer, horizon)

    def settle():
        if getattr(trainer, "overlapping", False):
            trainer.join_critic()

    for _ in range(args.warmup):
        trainer.step()
    settle()
    env_window()

    def profiled(fn) -> dict[str, float]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.windows):
                fn()
        return {e.key: e.self_cpu_time_total / 1e3 / args.windows for e in prof.key_averages()}

    def cpu_ms(fn) -> float:
        start = time.thread_time()
        for _ in range(args.windows):
            fn()
        return 1e3 * (time.thread_time() - start) / args.windows

    train_ops = profiled(trainer.step)
    settle()
    env_ops = profiled(env_window)
    env_ms = cpu_ms(env_window)
    train_ms = cpu_ms(trainer.step)
    settle()
    gap = {k: train_ops.get(k, 0.0) - env_ops.get(k, 0.0) for k in set(train_ops) | set(env_ops)}
    op_gap = sum(gap.values())
    print(f"{args.recipe} on {args.env}: N = {env.batch_size[0]}, H = {horizon}, {args.windows} windows each, 1 thread\n")
    print("| | training window | env-only window | gap |\n|---|---:|---:|---:|")
    print(f"| thread CPU ms, unprofiled | {train_ms:.0f} | {env_ms:.0f} | {train_ms - env_ms:.0f} |")
    print(f"| self CPU ms of torch ops, profiled | {sum(train_ops.values()):.0f} | {sum(env_ops.values()):.0f} | {op_gap:.0f} |\n")
    print("| op group (training minus env-only) | ms a window |\n|---|---:|")
    for group, value in sorted(grouped(gap).items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {value:.1f} |")
    print("\n| op (training minus env-only) | ms a window |\n|---|---:|")
    for key, value in sorted(gap.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"| {key} | {value:.2f} |")


if __name__ == "__main__":
    main()
