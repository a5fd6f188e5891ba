"""Where one window's critic mini-epochs spend their time (issue 21.5: the training overhead beside the simulator).

A first-order recipe's window ends with ``critic_iterations`` x ``critic_minibatches`` critic updates over the window's
N·H rows (SAPO: 16 x 4, two critics). With the critic worker on, they run in a second process beside the next window's
rollout; when they take as long as that window, the main process waits for them (the ``critic`` column of
``training_overhead.py``). This script builds the recipe's trainer for an env as ``training_overhead.py`` does (1
torch thread, the critic in this process), runs a few windows, keeps the last window's critic batch, then times
``trainer.fit_critic`` on it (thread CPU time, the best of --repeats) and profiles one call with ``torch.profiler``:
self CPU time per op, grouped into GEMMs (mm, addmm, bmm), LayerNorm, the activation, the optimizer step and the rest.

    python benchmarks/critic_profile.py --env rope
    python benchmarks/critic_profile.py --recipe shac --env ant --repeats 3

Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {  # op name prefixes (aten::...) -> group; the first match wins
    "GEMM": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise"),
    "LayerNorm": ("aten::native_layer_norm",),
    "activation": ("aten::silu", "aten::elu", "aten::relu", "aten::tanh", "aten::threshold"),
    "optimizer": ("aten::_fused_adam", "Optimizer.", "aten::_foreach"),
}


def group_of(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other"


def grouped(self_times: dict[str, float]) -> dict[str, float]:
    """Self CPU time per group (``GROUPS``) from self CPU time per op name (same unit)."""
    out = {group: 0.0 for group in (*GROUPS, "other")}
    for name, value in self_times.items():
        out[group_of(name)] += value
    return out


STAGES = {  # trainer methods fit_critic calls, by the name a stage is reported under
    "zero_grad": "zero_grad", "forward + loss (critic_fit_error)": "loss.critic_fit_error",
    "gradient all-reduce (one process: none)": "reduce_gradients", "gradient clip": "clip", "optimizer step": "optimizer_step",
}


def timed_stages(trainer, inputs, targets, repeats: int) -> dict[str, float]:
    """``trainer.fit_critic(inputs, targets)`` with the methods of ``STAGES`` timed (thread CPU time), unprofiled:
    ms a call per stage (the median over ``repeats`` calls), then ``rest`` (the fit's time outside them) and
    ``fit_critic`` (the whole call)."""
    import statistics

    spent: dict[str, float] = {}
    originals = []
    for name, path in STAGES.items():
        owner = trainer.loss if path.startswith("loss.") else trainer
        attr = path.removeprefix("loss.")
        original = getattr(owner, attr)
        originals.append((owner, attr, original, attr in vars(owner)))

        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.thread_time() - start

        setattr(owner, attr, timed)
    calls = []
    try:
        for _ in range(max(1, repeats)):
            spent.clear()
            start = time.thread_time()
            trainer.fit_critic(inputs, targets)
            calls.append({**spent, "fit_critic": time.thread_time() - start})
    finally:
        for owner, attr, original, own in originals:
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # the instance attribute set above: the class's method shows again
    out = {name: 1e3 * statistics.median(c.get(name, 0.0) for c in calls) for name in STAGES}
    whole = 1e3 * statistics.median(c["fit_critic"] for c in calls)
    return {**out, "rest (backward, indexing, loop)": whole - sum(out.values()), "fit_critic": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--env", default="rope")
    parser.add_argument("--windows", type=int, default=3, help="training windows before the critic batch is kept")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from training_overhead import build

    cfg, trainer = build(args.recipe, args.env, ["algo.overlap_critic=false", *args.override])
    kept = []
    train_critic = trainer.train_critic

    def keep(batch):
        kept.append(batch)
        return train_critic(batch)

    trainer.train_critic = keep
    for _ in range(args.windows):
        trainer.step()
    inputs, targets = trainer.loss.critic_data(kept[-1])
    trainer.fit_critic(inputs, targets)  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.thread_time()
        trainer.fit_critic(inputs, targets)
        best = min(best, time.thread_time() - start)
    stage_ms = timed_stages(trainer, inputs, targets, args.repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.fit_critic(inputs, targets)
    events = prof.key_averages()
    self_ms = {e.key: e.self_cpu_time_total / 1e3 for e in events}
    total = sum(self_ms.values())
    updates = int(cfg.algo.critic_iterations) * int(cfg.algo.critic_minibatches)
    print(f"{args.recipe} on {args.env}: N = {trainer.env.batch_size[0]}, H = {int(cfg.algo.horizon)}, {updates} critic updates "
          f"of {inputs.shape[0] // int(cfg.algo.critic_minibatches)} rows, threads {torch.get_num_threads()}")
    print(f"fit_critic: {best * 1e3:.0f} ms (thread CPU time, best of {args.repeats}); profiled call: {total:.0f} ms of self CPU time\n")
    print("| group | self CPU ms | share |\n|---|---:|---:|")
    for group, value in sorted(grouped(self_ms).items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {value:.0f} | {100 * value / total:.0f} % |")
    print("\nUnprofiled, the stages of fit_critic (thread CPU ms a call, the median of --repeats calls; the rest is the "
          "backward, the minibatch indexing and the loop):\n")
    print("| stage | ms | share |\n|---|---:|---:|")
    for name, value in stage_ms.items():
        print(f"| {name} | {value:.1f} | {100 * value / stage_ms['fit_critic'] if stage_ms['fit_critic'] else 0:.0f} % |")
    print("\n| op | calls | self CPU ms |\n|---|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} |")


if __name__ == "__main__":
    main()
