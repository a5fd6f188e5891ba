"""tphys side by side with Rewarped 1.3.3 (NVIDIA Warp, CPU backend) on the same task, one command.

--task ant (default): DFlex's Ant in both (16 substeps of a 1/60 s frame, penalty ground contact,
joint limits, DFlex's density / armature / damping / contact / strength), random actions in
[-1, 1], DFlex's 37-dim observation and reward every frame.
--task rollingpin: Rewarped's ``plasticinelab.RollingPin`` against our ``rolling_flat`` (MPM, H = 2).
--task jumper: SoftJumper: Rewarped's ``gradsim.Jumper`` (444 tetrahedra, 80 substeps) against our
``soft_jumper`` (432 tetrahedra, 80 substeps), random actions, observation and reward every frame.

    fwd       frames under no_grad;
    fwd+bwd   H frames with a leaf action tensor per frame, then (sum of rewards).backward()
              (Rewarped: ``shared/tools/rewarped/bench.py``, the same protocol).

Every cell (system, N, mode) runs in a fresh subprocess with 1 thread (``OMP_NUM_THREADS=1``)
for at least --seconds after a warm-up; env-steps/s = N · frames / s. Peak memory is the
process's peak resident set size (``ru_maxrss``, imports included, the same measure for
both). tphys runs eager float32; ``recompute`` keeps only frame inputs for backward
(``tphys.rigid.step(recompute=True)``, ``soft_jumper(recompute=True)``); compiled runs each
substep under ``torch.compile``. Rewarped needs its own venv (see ``../shared/tools/rewarped/README.md``),
by default ``.venv-rewarped`` in the repository root.

    python benchmarks/vs_rewarped.py                             # Ant, N = 1 16 64, H = 32, both systems
    python benchmarks/vs_rewarped.py --task jumper               # SoftJumper, N = 1 16 64, H = 8
    python benchmarks/vs_rewarped.py --task rollingpin --sizes 1 16 --seconds 20   # the MPM run in RESULTS.md
    python benchmarks/vs_rewarped.py --sizes 16 --seconds 5 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command_line, fmt_load, git_commit, machine, versions, write_section  # noqa: E402

REWARPED_BENCH = REPO.parent / "shared" / "tools" / "rewarped" / "bench.py"


def ant_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys cell, run inside the subprocess. variant: eager | compiled | compiled+recompute."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))
    import torch

    from tphys.math import quat_mul, quat_to_matrix
    from tphys.rigid import RigidControl, RigidState, step
    from tphys.rigid.integrator import compiled_substep
    from tphys.rigid.presets import DFLEX, dflex_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = dflex_model("ant")
    substeps = DFLEX["ant"]["substeps"]
    substep_fn = compiled_substep(model, 1 / 60, substeps) if variant.startswith("compiled") else None
    recompute = variant.endswith("recompute")
    q0 = model.q0.expand(n, -1).clone()
    q0[:, 2] = 0.75
    q0[:, 7:] = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0])
    start = RigidState(q0, torch.zeros(n, model.nv))
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0])

    def observe_reward(state: RigidState, action):
        """DFlex's ant observation (37) and reward (progress + 0.1 up + heading + height - 0.27), z up."""
        pos, rot = state.q[:, :3], state.q[:, 3:7]
        ang_vel, lin_vel = state.qd[:, 3:6], state.qd[:, :3]
        frame = quat_to_matrix(quat_mul(rot, identity.expand_as(rot)))
        up, heading = frame[..., 2, 2], frame[..., 0, 0]
        obs = torch.cat([pos[:, 2:3], rot, lin_vel, ang_vel, state.q[:, 7:], 0.1 * state.qd[:, 6:], up[:, None], heading[:, None],
                         action], -1)
        return obs, lin_vel[:, 0] + 0.1 * up + heading + (pos[:, 2] - 0.27)

    def frames(count: int, grad: bool) -> None:
        state = start
        total = 0.0
        actions = []
        for _ in range(count):
            action = (torch.rand(n, 8) * 2 - 1).requires_grad_(grad)
            actions.append(action)
            state = step(model, state, RigidControl(action), 1 / 60, substeps=substeps, recompute=recompute and grad, substep_fn=substep_fn)
            _, reward = observe_reward(state, action)
            total = total + reward.sum()
        if grad:
            total.backward()
            assert all(torch.isfinite(a.grad).all() for a in actions)

    return _timed(frames, n, mode, horizon, seconds, variant)


def jumper_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys SoftJumper cell, run inside the subprocess. variant: eager | compiled, optionally +recompute."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))
    import torch

    from tphys.envs.soft_jumper import SoftJumperEnv

    torch.set_num_threads(1)
    torch.manual_seed(0)
    env = SoftJumperEnv(num_envs=n, seed=0, recompute=variant.endswith("recompute"), compile_substep=variant.startswith("compiled"),
                        validate=False)
    start = env.reset()

    def frames(count: int, grad: bool) -> None:
        state, total, actions = start, 0.0, []
        for _ in range(count):
            action = (torch.rand(n, env.action_dim) * 2 - 1).requires_grad_(grad)
            actions.append(action)
            state = env.physics_step(state, action)
            total = total + env.reward(state, action, env.observe(state, action)).sum()
        if grad:
            total.backward()
            assert all(torch.isfinite(a.grad).all() for a in actions)

    return _timed(frames, n, mode, horizon, seconds, variant)


def rolling_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys RollingFlat cell (through the TorchRL env API), run inside the subprocess. variant: eager, or
    recompute=<mode> for ``rolling_flat(recompute=...)`` (fwd+bwd)."""
    import torch

    import tphys.envs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    recompute = variant.split("=")[1] if "=" in variant else "step"
    env = tphys.envs.make("rolling_flat", num_envs=n, seed=0, recompute=recompute, validate=False)
    start = env.reset()

    def frames(count: int, grad: bool) -> None:
        td, total, actions = start, 0.0, []
        for _ in range(count):
            action = (torch.rand(n, 3) * 2 - 1).requires_grad_(grad)
            actions.append(action)
            out = env.step(td.set("action", action))
            total = total + out["next", "reward"].sum()
            td = env.step_mdp(out)
        if grad:
            total.backward()
            assert all(torch.isfinite(a.grad).all() for a in actions)

    return _timed(frames, n, mode, horizon, seconds, variant)


def _timed(frames, n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    import torch

    grad = mode == "fwdbwd"
    with torch.set_grad_enabled(grad):
        t_warm = time.perf_counter()
        frames(horizon if grad else 2, grad)  # warm-up (and compilation)
        t_warm = time.perf_counter() - t_warm
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done == 0:
            frames(horizon if grad else 1, grad)
            done += horizon if grad else 1
        elapsed = time.perf_counter() - t0
    return dict(system="tphys", num_envs=n, mode=mode, H=horizon if grad else None, steps_per_s=done * n / elapsed,
                max_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, variant=variant, warmup_s=t_warm,
                torch_threads=torch.get_num_threads())


TASKS = {  # task: (tphys cell, Rewarped module, class, default horizon, tphys variants (fwd, fwd+bwd), section, title)
    "ant": (ant_cell, "rewarped.envs.dflex.ant", "Ant", 32, (["eager", "compiled"], ["eager", "compiled", "compiled+recompute"]),
            "rigid-vs-rewarped", "DFlex Ant: tphys.rigid vs Rewarped 1.3.3 (CPU)"),
    "jumper": (jumper_cell, "rewarped.envs.gradsim.jumper", "Jumper", 8,
               (["eager", "compiled"], ["eager", "compiled", "compiled+recompute"]),
               "soft-vs-rewarped", "SoftJumper: tphys FEM vs Rewarped 1.3.3 (CPU)"),
    "rollingpin": (rolling_cell, "rewarped.envs.plasticinelab.rolling_pin", "RollingPin", 2,
                   (["eager"], ["recompute=step", "recompute=substep"]), "mpm-vs-rewarped",
                   "RollingPin / RollingFlat: tphys MPM vs Rewarped 1.3.3 (CPU)"),
}


def run_cell(args, system: str, n: int, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if system != "rewarped":
        cmd = [sys.executable, __file__, "--task", args.task, "--cell", f"{n},{mode},{system}", "--horizon", str(args.horizon),
               "--seconds", str(args.seconds)]
    else:
        _, module, cls, *_ = TASKS[args.task]
        cmd = [str(args.rewarped_python), str(REWARPED_BENCH), module, cls, str(n), mode, str(args.horizon), str(args.seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return dict(system=system, num_envs=n, mode=mode, error=(proc.stderr.strip().splitlines() or ["no output"])[-1])
    result = json.loads(lines[-1][7:])
    result["system"] = system if system == "rewarped" else f"tphys {system}"
    return result


DESCRIPTIONS = {
    "ant": "Ant with DFlex's parameters, 16 substeps per 1/60 s frame, random actions, observation + reward per frame. "
           "tphys float32: eager; compiled = `step(substep_fn=compiled_substep(...))` (the substep under torch.compile, "
           "Inductor cache in TORCHINDUCTOR_CACHE_DIR; warm-up includes compilation unless cached); +recompute = "
           "`step(recompute=True)` (substeps recomputed in backward).",
    "jumper": "SoftJumper, 80 substeps per 1/60 s frame, random actions in [-1, 1], observation + reward per frame. Rewarped: "
              "444 tetrahedra, 204 particles; tphys `soft_jumper`: 432 tetrahedra, 168 particles, float32; compiled = "
              "`compile_substep=True` (each substep under torch.compile; warm-up includes compilation unless cached); +recompute = "
              "`recompute=True` (the frame's substeps recomputed in backward).",
    "rollingpin": "Rewarped's RollingPin against our `rolling_flat`: MLS-MPM plasticine, 2592 particles, 48³ domain, 40 substeps "
                  "of 5e-5 s per step, capsule roller, random actions in [-1, 1], observations and reward per step through each "
                  "env's own step API. tphys float32, eager, with the C transfer kernels and the grid window (the nodes the "
                  "particles reach); recompute=step: each env step keeps only its input and reruns its substeps in backward, each "
                  "recomputed again (memory grows with env steps); recompute=substep: keeps every substep's input.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="ant")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--horizon", type=int, default=None, help="fwd+bwd frames (default: ant 32, jumper 8, rollingpin 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum measured seconds per cell")
    parser.add_argument("--rewarped-python", type=Path, default=REPO / ".venv-rewarped" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cell_fn, _, _, default_horizon, tphys_variants, section_name, title = TASKS[args.task]
    args.horizon = args.horizon or default_horizon
    if args.cell:
        n, mode, variant = args.cell.split(",")
        print("RESULT " + json.dumps(cell_fn(int(n), mode, args.horizon, args.seconds, variant)), flush=True)
        return
    if not args.rewarped_python.exists():
        sys.exit(f"no Rewarped python at {args.rewarped_python}; set it up as ../shared/tools/rewarped/README.md says")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    table = ["| N | mode | system | env-steps/s | vs Rewarped | peak RSS GB | warm-up s |", "|---:|---|---|---:|---:|---:|---:|"]
    for n in args.sizes:
        for mode in ("fwd", "fwdbwd"):
            variants = ["rewarped", *tphys_variants[mode == "fwdbwd"]]
            cells = [run_cell(args, v, n, mode) for v in variants]
            label = f"fwd+bwd H={args.horizon}" if mode == "fwdbwd" else "fwd"
            for cell in cells:
                print(json.dumps(cell), flush=True)
                if "error" in cell:
                    table.append(f"| {n} | {label} | {cell['system']} | failed: {cell['error'][:80]} | | | |")
                    continue
                ref = cells[0]
                ratio = "-" if "error" in ref else f"{cell['steps_per_s'] / ref['steps_per_s']:.2f}x"
                warm = cell.get("warmup_s", "-")
                rate = f"{cell['steps_per_s']:.0f}" if cell["steps_per_s"] >= 100 else f"{cell['steps_per_s']:.2f}"
                table.append(f"| {n} | {label} | {cell['system']} | {rate} | {ratio} | "
                             f"{cell['max_rss_MB'] / 1024:.2f} | {warm if isinstance(warm, str) else f'{warm:.0f}'} |")
    lines = [
        f"### {title}", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- versions: {versions()}; Rewarped 1.3.3 / warp-lang 1.3.3 in {args.rewarped_python.parent.parent.name}",
        f"- threads: 1 per process (OMP_NUM_THREADS=1), cells one at a time; load: {fmt_load(load_before)} before, "
        f"{fmt_load(os.getloadavg())} after (1/5/15 min)",
        f"- commit: {git_commit()}", f"- command: `{command_line(__file__)}`",
        f"- duration: {time.perf_counter() - t0:.0f} s", "",
        DESCRIPTIONS[args.task] + f" At least {args.seconds:g} s measured per cell after a warm-up. Peak RSS includes the "
        "imports (same measure for both).", "",
        *table,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(args.out, section_name, section)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
