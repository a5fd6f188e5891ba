"""What the input checks of ``env.step`` cost: forward steps with ``validate=True`` against ``validate=False``.

``validate=True`` (the default) checks the action (shape, dtype, NaN/inf), every float input of the step for
NaN/inf (``tphys.envs.base.check_finite_inputs``) and, where the family does, the state after the step.
For each env one instance steps the same reset tensordict (a fixed random action) under no_grad; one
repetition times ``--steps`` steps with the checks on and the same with them off, in alternating order
(on/off, then off/on), after a warm-up. Reported per env: the median step time of each (wall clock), the
median over repetitions of the ratio on/off by wall clock and by this process's CPU time (1.000 = no cost;
the CPU-time ratio is the steadier one on a shared machine, where other processes take the cores), and the
time of ``check_finite_inputs`` alone on the env's step inputs (best of 7 x 2000 calls) as a share of the
step time: the check's cost, which the step-time ratio cannot resolve below its noise.

Run from the repository root on an otherwise idle machine:

    python benchmarks/validate_cost.py                              # rope3d, ant, soft_jumper at N = 4
    python benchmarks/validate_cost.py --envs rope3d cloth --num-envs 64 --reps 41
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's tphys first (see report.py)
import tphys.envs as E  # noqa: E402
from tphys.envs.base import check_finite_inputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_header  # noqa: E402

SMALL_MPM = dict(grid_size=16, particles=64, samples=16, substeps=4)  # for MPM envs given in --envs


def timed_steps(env, td, steps: int, validate: bool) -> tuple[float, float]:
    """(wall s, CPU s) per step of ``steps`` steps from ``td``."""
    env.validate = validate
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        env.step(td)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def measure(name: str, num_envs: int, reps: int, steps: int | None, target_s: float) -> dict:
    options = {}
    if name in ("rolling_flat", "hand_flip", "fluid_move"):
        options = dict(SMALL_MPM)
        if name == "rolling_flat":
            options.pop("particles")
    env = E.make(name, num_envs=num_envs, seed=0, **options)
    gen = torch.Generator().manual_seed(0)
    action = 2 * torch.rand(env.action_spec.shape, generator=gen, dtype=env.dtype) - 1
    td = env.reset().set("action", action)
    with torch.no_grad():
        one = max(timed_steps(env, td, 2, True)[0], timed_steps(env, td, 2, False)[0])  # warm-up and calibration
        steps = steps or max(1, round(target_s / one))
        on, off, wall_ratio, cpu_ratio = [], [], [], []
        for r in range(reps):
            order = (True, False) if r % 2 == 0 else (False, True)
            t = {v: timed_steps(env, td, steps, v) for v in order}
            on.append(t[True][0])
            off.append(t[False][0])
            wall_ratio.append(t[True][0] / t[False][0])
            cpu_ratio.append(t[True][1] / t[False][1])
    keys = env.finite_input_keys  # the float inputs step checks besides the action
    calls, check = 2000, []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            check_finite_inputs(name, td, keys)
        check.append((time.perf_counter() - start) / calls)
    q = statistics.quantiles
    return dict(env=name, num_envs=num_envs, steps=steps, on=statistics.median(on), off=statistics.median(off),
                wall=statistics.median(wall_ratio), cpu=statistics.median(cpu_ratio), cpu_iqr=q(cpu_ratio, n=4)[::2],
                check=min(check), keys=keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["rope3d", "ant", "soft_jumper"])
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--reps", type=int, default=31, help="repetitions (each times validate on and off)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timing (default: about --target-s seconds)")
    parser.add_argument("--target-s", type=float, default=0.2, help="seconds per timing when --steps is not given")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--section", default="validate-cost", help="marker of the section of --out to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    rows = ["| env | N | steps/timing | step, validate=False | step, validate=True | ratio on/off, wall | ratio on/off, CPU "
            "(quartiles) | check_finite_inputs alone | share of the step | keys |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.envs:
        m = measure(name, args.num_envs, args.reps, args.steps, args.target_s)
        rows.append(f"| {m['env']} | {m['num_envs']} | {m['steps']} | {1e3 * m['off']:.3f} ms | {1e3 * m['on']:.3f} ms | "
                    f"{m['wall']:.4f} | {m['cpu']:.4f} ({m['cpu_iqr'][0]:.4f}-{m['cpu_iqr'][1]:.4f}) | {1e6 * m['check']:.1f} us | "
                    f"{100 * m['check'] / m['off']:.3f} % | {', '.join(m['keys'])} |")
        print(rows[-1], flush=True)
    lines = [*run_header("The cost of the step input checks (validate=True against validate=False)", __file__, load_before, t0,
                         threads=str(torch.get_num_threads())),
             "Forward steps under no_grad from one reset tensordict with a fixed random action; each repetition times the "
             "checks on and off in alternating order; medians over repetitions. `check_finite_inputs alone` is the NaN/inf "
             "check of the step's float inputs by itself (best of 7 x 2000 calls): the step-time ratio cannot resolve it "
             "below its noise on a shared machine.", "", *rows]
    publish(args.out, args.section, lines)


if __name__ == "__main__":
    main()
