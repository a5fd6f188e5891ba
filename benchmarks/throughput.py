"""Throughput of the tphys envs: env-steps/s forward and forward+backward, and peak memory.

What one cell (env, N) measures, each in a fresh subprocess:

    fwd       H = 32 steps through the TorchRL API, as users run it: ``td = env.step(td)``
              then ``td = step_mdp(td)``, a fixed random action per step, under no_grad.
    fwd+bwd   the same H steps with the actions one leaf tensor [H, N, A] that requires
              grad, then ``sum of all rewards``.backward(); the action gradient is checked
              to be finite.
    core fwd  the pure physics loop under no_grad (no TorchRL), to show the TorchRL overhead, the same
              for every env (the protocol of ``tphys.envs.base.TphysEnv``):
              ``state = env.physics_step(state, action)``, ``env.reward(state, action, env.observe(state, action))``.

Throughput is env-steps/s = N * steps / seconds. Every mode is warmed up with a couple of
steps (``--warmup-steps``; a whole horizon under ``--compile``, so that every recompilation
happens before the clock starts), then whole horizons are repeated from the same reset
tensordict until at least ``--min-seconds`` have been measured (at least one horizon).
``ratio`` is fwd+bwd / fwd throughput.
Peak memory is the peak resident set size during the measured horizons of a mode minus the
resident set size once torch, torchrl and the env are loaded and the env is reset, in MiB
(the kernel's peak counter is reset after each warm-up through /proc/self/clear_refs; where
that is impossible the number includes everything before and is marked "upper bound").
Sizes run in increasing order; a mode whose peak, extrapolated linearly from the previous
size of the same env, would exceed 80% of the available memory is skipped and marked so
(the fwd+bwd of cloth at N = 4096 needs ~30 GiB).

``--compile`` (opt-in) replaces ``env.physics_step`` with ``torch.compile(env.physics_step,
dynamic=False)`` (particle and MPM envs) or builds the env with ``compile_substep=True`` (rigid and soft
envs: one substep compiled, not their 16-80 substeps unrolled); the H-step loop stays in Python.
The Inductor cache lives in ``TORCHINDUCTOR_CACHE_DIR`` (default ~/.cache/tphys-inductor),
so only the first run compiles from scratch; "compile s" is the extra time of the first
(compiling) steps of each mode, summed. A cell whose compile fails reports the reason.

The table is printed and written into ``--out`` (default benchmarks/RESULTS.md) as a section
between ``<!-- throughput:MODE:INTEGRATOR -->`` and ``<!-- /throughput:MODE:INTEGRATOR -->``
(MODE eager or compiled; INTEGRATOR is "rigid", "soft" or "mpm" for those families, followed by
", backend B" under ``--backend B``), which replaces
the previous run of the same MODE and INTEGRATOR
and leaves the others in place. The section records date, machine, versions, threads, load
average, git commit and the command line.

Run it on an otherwise idle machine, from the repository root:

    python benchmarks/throughput.py                     # the particle envs, N = 1 64 1024 4096, eager
    python benchmarks/throughput.py --envs rigid --sizes 1 64 256   # the DFlex rigid-body envs
    python benchmarks/throughput.py --envs soft --sizes 1 16 64 --horizon 8   # SoftJumper
    python benchmarks/throughput.py --envs mpm --sizes 1 4 --horizon 4   # the MPM tasks
    python benchmarks/throughput.py --compile           # the same with torch.compile
    python benchmarks/throughput.py --integrator bdf2   # the implicit integrator
    python benchmarks/throughput.py --envs rope3d --sizes 4096 --backend torch   # torch ops, not the fused C step
    python benchmarks/throughput.py --quick --out /tmp/r.md   # smoke test, N = 1 64
    python benchmarks/throughput.py --envs rope3d --sizes 1024 --min-seconds 3
"""

from __future__ import annotations

import os

# Before torch is imported (here and in the cell subprocesses, which inherit it).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command_line, fmt_load, git_commit, machine, meminfo_mib, versions, write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (1, 64, 1024, 4096)
QUICK_SIZES = (1, 64)
MODES = ("fwd", "fwd_bwd", "core_fwd")


# ---------------------------------------------------------------------------- one cell (child)
def run_cell(spec: dict) -> dict:
    """Measure one (env, N) cell in this process; returns a JSON-able dict."""
    import torch

    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    from torchrl.envs.utils import step_mdp

    import tphys.envs as E

    n, horizon = spec["num_envs"], spec["horizon"]
    family = _family(spec["env"])
    kwargs = {} if spec["integrator"] is None else {"integrator": spec["integrator"]}
    if spec.get("backend") is not None:
        kwargs["backend"] = spec["backend"]
    substep_compiled = family in ("rigid", "soft")  # compile one substep (16-80 per step), not the whole step
    if spec["compile"] and substep_compiled:
        kwargs["compile_substep"] = True
    env = E.make(spec["env"], num_envs=n, seed=0, dtype=torch.float32, **kwargs)
    result = {"env": spec["env"], "num_envs": n, "integrator": getattr(env, "integrator", family), "threads": torch.get_num_threads()}
    if spec["compile"] and not substep_compiled:
        env.physics_step = torch.compile(env.physics_step, dynamic=False)
    td0 = env.reset()
    generator = torch.Generator().manual_seed(0)
    actions = (torch.rand(horizon, n, env.action_dim, generator=generator) - 0.5).to(env.dtype)  # in [-0.5, 0.5]

    def torchrl_rollout(acts, steps):
        td, total = td0.copy(), 0.0
        for t in range(steps):
            td.set("action", acts[t])
            td = env.step(td)
            total = total + td["next", "reward"].sum()
            td = step_mdp(td)
        return total

    def fwd(steps):
        with torch.no_grad():
            torchrl_rollout(actions, steps)

    leaf = actions.clone().requires_grad_(True)

    def fwd_bwd(steps):
        leaf.grad = None
        torchrl_rollout(leaf, steps).backward()

    def core_fwd(steps):
        with torch.no_grad():
            state, total = td0, 0.0
            for t in range(steps):
                state = env.physics_step(state, actions[t])
                total = total + env.reward(state, actions[t], env.observe(state, actions[t])).sum()

    baseline = _rss_mib()
    result["baseline_mib"] = baseline
    result["compile_s"] = 0.0
    warmup = min(spec["warmup_steps"], horizon)
    for mode, fn in {"fwd": fwd, "fwd_bwd": fwd_bwd, "core_fwd": core_fwd}.items():
        if mode in spec.get("skip", {}):
            result[mode] = {"error": spec["skip"][mode]}
            continue
        try:
            start = time.perf_counter()
            fn(warmup)  # compiles under --compile
            first = time.perf_counter() - start
            peak_was_reset = _reset_peak_rss()  # the peak of the measured horizons only
            repeats, elapsed = 0, 0.0
            while repeats == 0 or elapsed < spec["min_seconds"]:
                start = time.perf_counter()
                fn(horizon)
                elapsed += time.perf_counter() - start
                repeats += 1
        except Exception as error:  # noqa: BLE001 - reported in the table instead
            result[mode] = {"error": _short_error(error, spec["compile"])}
            continue
        entry = {"steps_per_s": n * horizon * repeats / elapsed, "repeats": repeats, "seconds": elapsed}
        if mode != "core_fwd":
            entry["peak_mib"] = _peak_rss_mib() - baseline
            entry["peak_exact"] = peak_was_reset
        if spec["compile"]:
            result["compile_s"] += max(first - warmup * elapsed / (repeats * horizon), 0.0)
        result[mode] = entry
        if mode == "fwd_bwd" and leaf.grad is not None and not bool(torch.isfinite(leaf.grad).all()):  # None: no path to the actions
            result[mode] = {"error": "non-finite action gradient"}
    return result


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _short_error(error: Exception, compiling: bool) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"[:120]
    return ("compile failed: " if compiling else "failed: ") + text.replace("|", "/")


# ---------------------------------------------------------------------------- the run (parent)
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["particles"],
                        help="env names, or 'particles' / 'rigid' / 'soft' / 'mpm' for a whole family (default: particles)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help=f"num_envs values (default: {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: sizes {QUICK_SIZES} unless --sizes is given")
    parser.add_argument("--horizon", type=int, default=32, help="env steps per rollout (default 32)")
    parser.add_argument("--integrator", choices=("semi_implicit", "bdf2"), default=None, help="default: each env's own")
    parser.add_argument("--compile", action="store_true", help="torch.compile env.physics_step (opt-in)")
    parser.add_argument("--backend", default=None,
                        help="the envs' backend option (e.g. torch: the torch ops instead of the fused C step; default: each env's own)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--min-seconds", type=float, default=1.5, help="measured time per mode and cell (default 1.5)")
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="env steps before each mode's timing (default 2; --compile: horizon)"
    )
    parser.add_argument("--cell-timeout", type=float, default=600.0, help="seconds before a cell is abandoned")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md", help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print one JSON line
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cell is not None:
        print(json.dumps(run_cell(json.loads(args.cell))), flush=True)
        return
    from tqdm import tqdm

    envs, family = _expand_envs(args.envs)
    if family != "particles" and args.integrator:
        raise SystemExit("--integrator applies to the particle envs only")
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    mode = "compiled" if args.compile else "eager"
    integrator = family if family != "particles" else args.integrator or "semi_implicit"  # every particle env defaults to it
    if args.backend is not None:
        integrator += f", backend {args.backend}"  # its own section: the default backend's table stays
    load_before, started = os.getloadavg(), time.perf_counter()
    results = []
    cells = [(env, n) for env in envs for n in sorted(sizes)]
    for env, n in (bar := tqdm(cells, desc="throughput", unit="cell")):
        bar.set_postfix_str(f"{env} N={n}")
        spec = dict(
            env=env,
            num_envs=n,
            horizon=args.horizon,
            integrator=args.integrator,
            compile=args.compile,
            backend=args.backend,
            threads=args.threads,
            min_seconds=args.min_seconds,
            warmup_steps=args.warmup_steps or (args.horizon if args.compile else 2),
            skip=_memory_skips(env, n, results),
        )
        results.append(_run_subprocess(spec, args.cell_timeout))
    header = dict(
        title=f"Throughput, {mode}, {integrator}",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=machine(),
        versions=versions(),
        threads=_threads(results, args.threads),
        load=f"{fmt_load(load_before)} before, {fmt_load(os.getloadavg())} after (1/5/15 min)",
        commit=git_commit(),
        command=command_line(__file__),
        duration=f"{time.perf_counter() - started:.0f} s",
        settings=f"horizon {args.horizon}, min {args.min_seconds} s measured per mode and cell, float32, CPU",
    )
    section = _markdown(header, results, args.compile)
    print(section)
    if not args.no_write:
        write_section(args.out, f"throughput:{mode}:{integrator}", section)
        print(f"wrote {args.out}", file=sys.stderr)


def _run_subprocess(spec: dict, timeout: float) -> dict:
    """One cell in a fresh interpreter (clean peak memory, no state shared between cells)."""
    failed = dict(env=spec["env"], num_envs=spec["num_envs"])
    command = [sys.executable, os.path.abspath(__file__), "--cell", json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    if proc.returncode == -9:
        return {**failed, "error": "killed by SIGKILL (out of memory?)"}
    reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {**failed, "error": ("compile failed: " if spec["compile"] else "failed: ") + reason[:120].replace("|", "/")}


def _memory_skips(env: str, n: int, results: list[dict]) -> dict[str, str]:
    """Modes to skip because their peak, extrapolated linearly in N from a smaller cell of
    the same env, would not fit in 80% of the memory available now (rather than swap or be
    killed by the OOM killer, taking other processes with it)."""
    available = meminfo_mib("MemAvailable")
    skips = {}
    for mode in ("fwd", "fwd_bwd"):
        previous = [r for r in results if r.get("env") == env and "peak_mib" in r.get(mode, {}) and r["num_envs"] < n]
        if not previous or available is None:
            continue
        last = max(previous, key=lambda r: r["num_envs"])
        needed = max(last[mode]["peak_mib"], 0.0) * n / last["num_envs"]
        if needed > 0.8 * available:
            skips[mode] = f"skipped: needs ~{needed / 1024:.0f} GiB, {available / 1024:.0f} GiB available"
    return skips


MPM_ENVS = ("fluid_move", "hand_flip", "rolling_flat")


def _family(name: str) -> str:
    """The table an env goes in: "rigid" (DFlex tasks), "soft" (SoftJumper), "mpm" (the MPM tasks) or "particles"."""
    import tphys.envs as E

    canonical = E.registry.resolve(name)
    if canonical in E.locomotion.NAMES:
        return "rigid"
    return "soft" if canonical == "soft_jumper" else "mpm" if canonical in MPM_ENVS else "particles"


def _expand_envs(names: list[str]) -> tuple[list[str], str]:
    """(env names, family) from names and family words (particles, rigid, soft, mpm); one family per table."""
    import tphys.envs as E

    families = {"particles": [], "rigid": [], "soft": [], "mpm": []}
    for name in E.list_envs():
        families[_family(name)].append(name)
    envs = [e for name in names for e in families.get(name, [name])]
    kinds = {_family(e) for e in envs}
    if len(kinds) != 1:
        raise SystemExit(f"one family per table (particles, rigid, soft or mpm), got {sorted(kinds)} from {names}")
    return envs, kinds.pop()


# ---------------------------------------------------------------------------- report
def _markdown(header: dict, results: list[dict], compiled: bool) -> str:
    lines = [f"### {header['title']}", ""]
    for key in ("date", "machine", "versions", "threads", "load", "commit", "command", "settings", "duration"):
        value = f"`{header[key]}`" if key == "command" else header[key]
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "Env-steps/s (N envs x steps / s); fwd and fwd+bwd through TorchRL `env.step` + `step_mdp`, "
        "fwd+bwd = rollout + backward of the summed reward to every action; core fwd = `physics_step` + `reward` "
        "only; ratio = fwd+bwd / fwd; peak = peak RSS of the measured horizons above the RSS after imports and env reset.",
        "",
    ]
    columns = ["env", "N", "fwd steps/s", "fwd+bwd steps/s", "ratio", "core fwd steps/s", "fwd peak MiB", "fwd+bwd peak MiB"]
    if compiled:
        columns.append("compile s")
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) - 2)) + "|"]
    for r in results:
        lines.append("| " + " | ".join(_row(r, compiled)) + " |")
    notes = sorted({r[m]["error"] for r in results for m in MODES if isinstance(r.get(m), dict) and "error" in r[m]})
    notes += sorted({r["error"] for r in results if "error" in r})
    if notes:
        lines += ["", "Failed or skipped:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _row(r: dict, compiled: bool) -> list[str]:
    cells = [r["env"], str(r["num_envs"])]
    if "error" in r:
        return cells + [r["error"]] + [""] * (5 + compiled)
    fwd, bwd, core = (r.get(m, {}) for m in MODES)
    rate = lambda e: e["error"] if "error" in e else f"{e['steps_per_s']:,.0f}"
    peak = lambda e: "" if "error" in e else f"{e['peak_mib']:.1f}" + ("" if e.get("peak_exact", True) else " (upper bound)")
    ratio = "" if "error" in fwd or "error" in bwd else f"{bwd['steps_per_s'] / fwd['steps_per_s']:.2f}"
    cells += [rate(fwd), rate(bwd), ratio, rate(core), peak(fwd), peak(bwd)]
    if compiled:
        cells.append(f"{r['compile_s']:.1f}")
    return cells


# ---------------------------------------------------------------------------- provenance
def _threads(results: list[dict], requested: int | None) -> str:
    counts = sorted({r["threads"] for r in results if "threads" in r})
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    how = f"--threads {requested}" if requested else f"torch default, OMP_NUM_THREADS={omp}"
    return f"{', '.join(map(str, counts)) or '?'} ({how})"


if __name__ == "__main__":
    main()
