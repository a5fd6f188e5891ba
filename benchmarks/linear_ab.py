"""The networks' Linear on oneDNN against torch's F.linear (MKL): the critic's products and one window's critic fit.

``rl.modules.linear.Linear`` runs float32 CPU products of at least ``MIN_MULTIPLY_ADDS`` on oneDNN. This script
measures what that buys, in one process, the two backends interleaved (``rl.modules.linear.set_backend``):

1. each product of the recipe's critic at its minibatch rows (forward and backward: ``y = x·Wᵀ + b``, then ∂x, ∂W,
   ∂b), best of --repeats timings of --calls calls each, µs per call;
2. ``trainer.fit_critic`` on the last of --windows training windows' critic batch (the recipe's trainer for --env,
   built as ``training_overhead.py`` builds it, the critic in this process): --pairs pairs of calls, the backends
   alternating, thread CPU time; the median of each backend and the median of the per-pair ratios.

One torch thread. Run on an otherwise idle machine:

    python benchmarks/linear_ab.py --env rope
    python benchmarks/linear_ab.py --env ant --pairs 5 --out /tmp/l.md

Writes the section ``linear-ab`` of --out (default benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def product_time(rows: int, width_in: int, width_out: int, backend: str, calls: int, repeats: int) -> float:
    """µs per forward + backward of one Linear(width_in, width_out) on [rows, width_in] under ``backend``."""
    import torch

    from rl.modules import linear as L

    previous = L.set_backend(backend)
    try:
        torch.manual_seed(0)
        layer = L.Linear(width_in, width_out)
        x = torch.randn(rows, width_in, requires_grad=True)
        upstream = torch.randn(rows, width_out)
        best = float("inf")
        for _ in range(repeats + 1):  # the first: warm-up
            start = time.thread_time()
            for _ in range(calls):
                torch.autograd.grad(layer(x), [x, layer.weight, layer.bias], upstream)
            best = min(best, (time.thread_time() - start) / calls)
        return best * 1e6
    finally:
        L.set_backend(previous)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--env", default="rope")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)
    load_before, started = os.getloadavg(), time.perf_counter()

    import torch
    from training_overhead import build

    from rl.modules import linear as L

    cfg, trainer = build(args.recipe, args.env, ["algo.overlap_critic=false"])
    kept = []
    train_critic = trainer.train_critic
    trainer.train_critic = lambda batch: (kept.append(batch), train_critic(batch))[1]
    for _ in range(args.windows):
        trainer.step()
    inputs, targets = trainer.loss.critic_data(kept[-1])
    rows = -(-inputs.shape[0] // int(cfg.algo.critic_minibatches))
    widths = [inputs.shape[-1], *map(int, cfg.algo.critic_hidden), 1]
    product_rows = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        times = {b: product_time(rows, width_in, width_out, b, args.calls, args.repeats) for b in ("torch", "auto")}
        onednn = L.uses_onednn(torch.empty(rows, width_in), torch.empty(width_out, width_in))
        product_rows.append(f"| [{rows}, {width_in}] x [{width_in}, {width_out}] | {rows * width_in * width_out / 1e6:.2f} | "
                            f"{'oneDNN' if onednn else 'F.linear'} | {times['torch']:.1f} | {times['auto']:.1f} | "
                            f"{times['torch'] / times['auto']:.2f} |")
    fits = {"torch": [], "auto": []}
    for pair in range(args.pairs + 1):  # the first pair: warm-up
        for backend in (("torch", "auto") if pair % 2 else ("auto", "torch")):
            previous = L.set_backend(backend)
            start = time.thread_time()
            trainer.fit_critic(inputs, targets)
            elapsed = time.thread_time() - start
            L.set_backend(previous)
            if pair:
                fits[backend].append(elapsed)
    ratios = [t / a for t, a in zip(fits["torch"], fits["auto"])]
    updates = int(cfg.algo.critic_iterations) * int(cfg.algo.critic_minibatches)
    lines = run_header("The networks' Linear: oneDNN against torch's F.linear", __file__, load_before, started,
                       threads=f"{torch.get_num_threads()} (torch)")
    lines += [
        f"{args.recipe} on {args.env}: the critic {widths} ({int(cfg.algo.num_critics)} of them), {updates} updates of {rows} rows "
        f"a window. 'torch' = `F.linear` (MKL's sgemm), 'auto' = `rl.modules.linear` (oneDNN for products of at least "
        f"{L.MIN_MULTIPLY_ADDS / 1e6:.1f} M multiply-adds). Products: forward + backward, µs a call, best of {args.repeats} x "
        f"{args.calls}; fit: thread CPU time of `trainer.fit_critic` on one window's batch, {args.pairs} pairs alternating.", "",
        "| product | M multiply-adds | auto runs | torch µs | auto µs | torch / auto |", "|---|---:|---|---:|---:|---:|",
        *product_rows, "",
        "| fit_critic | torch ms (median) | auto ms (median) | torch / auto (median of pairs) |", "|---|---:|---:|---:|",
        f"| {args.recipe} {args.env} | {1e3 * statistics.median(fits['torch']):.0f} | {1e3 * statistics.median(fits['auto']):.0f} | "
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
    ]
    publish(args.out, "linear-ab", lines)


if __name__ == "__main__":
    main()
