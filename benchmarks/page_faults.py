"""Minor page faults per training window, with and without ``keep_freed_memory`` (``rl/allocator.py``).

For each setting, a fresh subprocess builds the recipe's trainer for --env as ``training_overhead.py`` does (1 torch
thread; the critic worker as the recipe configures it), runs --warmup windows, then counts this process's minor page
faults (``getrusage``) and its thread CPU time over --windows windows. The critic worker's own faults are not counted
(a child's count reaches ``RUSAGE_CHILDREN`` only when it exits).

    python benchmarks/page_faults.py --env rope
    python benchmarks/page_faults.py --env ant --windows 5

Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(recipe: str, env: str, keep: bool, warmup: int, windows: int) -> dict:
    import resource
    import time

    import torch

    sys.path.insert(0, str(HERE))
    from training_overhead import build

    torch.set_num_threads(1)
    _, trainer = build(recipe, env, [f"keep_freed_memory={str(keep).lower()}"])
    for _ in range(warmup):
        trainer.step()
    faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
    for _ in range(windows):
        trainer.step()
    return {"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / windows,
            "cpu_ms": 1e3 * (time.thread_time() - cpu) / windows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="sapo")
    parser.add_argument("--env", default="rope")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell is not None:
        print(json.dumps(measure(args.recipe, args.env, args.cell == "keep", args.warmup, args.windows)))
        return
    print(f"{args.recipe} on {args.env}: {args.windows} windows after {args.warmup}, the training process\n")
    print("| keep_freed_memory | minor faults a window | thread CPU ms a window |\n|---|---:|---:|")
    for keep in (False, True):
        command = [sys.executable, __file__, "--recipe", args.recipe, "--env", args.env, "--warmup", str(args.warmup),
                   "--windows", str(args.windows), "--cell", "keep" if keep else "free"]
        row = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"| {str(keep).lower()} | {row['faults']:,.0f} | {row['cpu_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
