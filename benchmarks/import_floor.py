"""A process's memory floor: its resident set after each import on the way to a tphys env (issue 21, memory).

``vs_rewarped.py``'s memory column is each process's peak RSS, imports included. What the imports alone hold is the
floor under every cell. This script measures it in a fresh process of ``--python``: the resident set (``/proc/self/statm``,
MB = 10^6 bytes) after ``import torch``, then ``tensordict``, ``torchrl.envs``, ``tphys.envs``, and after building
one env (``--env``, N = ``--num-envs``), each as the step's increment. It also says whether the steps pulled in
torch._dynamo, sympy and Triton: tensordict's ``allow_in_graph`` decorators import torch._dynamo (and sympy with it),
which imports Triton when Triton is installed.

    python benchmarks/import_floor.py                                  # this python
    python benchmarks/import_floor.py --python .venv-user/bin/python   # a user's install (no dev extras)

Prints a markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEPS = ("torch", "tensordict", "torchrl.envs", "tphys.envs")
WATCHED = ("torch._dynamo", "sympy", "triton")

# Runs in the measured process: one JSON line of (step, RSS MB, watched modules loaded so far) per step.
PROBE = """
import importlib, json, sys
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6
rows = [("python", rss(), [])]
for name in {steps!r}:
    importlib.import_module(name)
    rows.append((name, rss(), [m for m in {watched!r} if m in sys.modules]))
import tphys.envs as E
E.make({env!r}, num_envs={n})
rows.append(("make({env!r}, num_envs={n})", rss(), [m for m in {watched!r} if m in sys.modules]))
print("ROWS " + json.dumps(rows))
"""


def measure(python: str, env: str, n: int) -> list[tuple[str, float, list[str]]]:
    """[(step, RSS MB after it, watched modules loaded after it)] from a fresh process of ``python`` (this repo's tphys
    first on its path)."""
    code = PROBE.format(steps=STEPS, watched=WATCHED, env=env, n=n)
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{python}: the probe failed:\n{proc.stderr[-2000:]}")
    return [tuple(row) for row in json.loads(lines[-1][5:])]


def table(rows: list[tuple[str, float, list[str]]]) -> list[str]:
    out = ["| step | RSS after, MB | increment, MB | torch._dynamo / sympy / Triton loaded |", "|---|---:|---:|---|"]
    previous = None
    for step, rss, loaded in rows:
        increment = "" if previous is None else f"{rss - previous:.0f}"
        out.append(f"| {step} | {rss:.0f} | {increment} | {', '.join(loaded) or '-'} |")
        previous = rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the interpreter (venv) to measure")
    parser.add_argument("--env", default="cartpole_swingup")
    parser.add_argument("--num-envs", type=int, default=16)
    args = parser.parse_args()
    print(f"python: {args.python}")
    print("\n".join(table(measure(args.python, args.env, args.num_envs))))


if __name__ == "__main__":
    main()
