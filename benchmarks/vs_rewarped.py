"""tphys side by side with Rewarped 1.3.3 (NVIDIA Warp, CPU backend) on every shared task, one command.

Tasks (``--task``; ``all`` runs every one of them in turn and writes one table):

    ant          DFlex's Ant in both (16 substeps of a 1/60 s frame, penalty ground contact, joint limits, DFlex's
                 density / armature / damping / contact / strength), DFlex's 37-dim observation and reward every frame.
    jumper       SoftJumper: Rewarped's ``gradsim.Jumper`` (444 tetrahedra, 80 substeps) against our ``soft_jumper``
                 (432 tetrahedra, 80 substeps).
    rollingpin   Rewarped's ``plasticinelab.RollingPin`` against our ``rolling_flat`` (MPM, H = 2).
    handflip     Rewarped's ``dexdeform.Flip`` against our ``hand_flip`` (MPM plasticine, kinematic Shadow hand, H = 2).
    fluidmove    Rewarped's ``softgym.Transport`` against our ``fluid_move`` (MPM water, kinematic container, H = 2).
    cartpole     Rewarped's ``dflex.Cartpole`` (DFlex port, 4 substeps) against our ``cartpole_swingup``.
    hopper       Rewarped's ``dflex.Hopper`` (DFlex port, 16 substeps) against our ``hopper``.

Random actions in [-1, 1] in both systems; observation and reward every frame.

    fwd       frames under no_grad (the state carried from frame to frame);
    fwd+bwd   H frames with a leaf action tensor per frame, then the gradient of (sum of rewards) with respect to every
              action (Rewarped: ``shared/tools/rewarped/bench.py``, the same protocol). Where the rewards of the H frames
              do not depend on the actions (e.g. RollingPin at N = 1: the roller starts above the dough), the gradient
              is zero, as Rewarped returns it, and nothing raises (``torch.autograd.grad(..., allow_unused=True)``).

tphys variants (each a column of rows):

    recipe    the env exactly as the recipes build it: ``tphys.envs.make(name, **options)`` with the ``options`` of
              ``recipes/config/env/<name>.yaml`` (``validate`` left at its default), stepped through TorchRL's
              ``env.step`` + ``step_mdp`` as the training losses do. This is the row the 5x target is about.
    recipe@threads=K   (--all-cores) the recipe's env with K = every usable core (torch threads and OMP_NUM_THREADS,
              OMP_WAIT_POLICY=PASSIVE as the README asks of threads > 1;
              the C frame kernels of the rigid and FEM envs split their envs over the K torch threads);
              Warp's CPU backend runs one thread, so Rewarped has no such row.
    eager, compiled, compiled+recompute, recompute=...
              the rows kept from the first runs of this script (ant: ``tphys.rigid.step`` directly; jumper:
              ``physics_step``; rollingpin: ``env.step``) and, for the other tasks, ``env.step`` with
              ``validate=False`` and the named option (compiled = ``compile_substep=True``).

Every cell (system, N, mode, variant) runs in a fresh subprocess with 1 thread (``OMP_NUM_THREADS=1``) for at
least --seconds after a warm-up; env-steps/s = N · frames / s, seconds of the process's CPU time by default (``--clock
cpu``, both systems: Rewarped's bench.py runs through ``benchmarks/cpu_clock.py``), so that a cell that ran while other
processes held the cores is not charged for the wait (they still share caches and the sibling hyperthread: record the
load). Peak memory is the process's peak resident set size
(``ru_maxrss``, imports included, the same measure for both). tphys runs float32. Rewarped needs its own venv (see
``../shared/tools/rewarped/README.md``), by default ``.venv-rewarped`` in the repository root.

    python benchmarks/vs_rewarped.py                             # Ant, N = 1 16 64, H = 32, both systems
    python benchmarks/vs_rewarped.py --task jumper               # SoftJumper, N = 1 16 64, H = 8
    python benchmarks/vs_rewarped.py --task rollingpin --sizes 1 16 --seconds 20   # the MPM run in RESULTS.md
    python benchmarks/vs_rewarped.py --task all                  # every task at its default sizes: one table
    python benchmarks/vs_rewarped.py --task all --sizes 1 --seconds 1 --variants recipe --out /tmp/r.md   # smoke
    python benchmarks/vs_rewarped.py --sizes 16 --seconds 5 --out /tmp/r.md

A single task writes its own section of --out (``rigid-vs-rewarped``, ``soft-vs-rewarped``, ``mpm-vs-rewarped``,
``handflip-vs-rewarped``, ...); ``--task all`` writes the section ``all-vs-rewarped``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command_line, fmt_load, git_commit, machine, usable_cores, versions, write_section  # noqa: E402

REWARPED_BENCH = REPO.parent / "shared" / "tools" / "rewarped" / "bench.py"
CPU_CLOCK = Path(__file__).resolve().with_name("cpu_clock.py")


def ant_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys cell, run inside the subprocess. variant: eager | compiled | compiled+recompute, all on the torch backend
    (``step(backend="torch")``; the C frame kernels are what the recipe row runs)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))
    import torch

    from tphys.math import quat_mul, quat_to_matrix
    from tphys.rigid import RigidControl, RigidState, step
    from tphys.rigid.integrator import compiled_substep
    from tphys.rigid.presets import DFLEX, dflex_model

    torch.set_num_threads(cell_threads())
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
            state = step(model, state, RigidControl(action), 1 / 60, substeps=substeps, recompute=recompute and grad, substep_fn=substep_fn,
                         backend="torch")
            _, reward = observe_reward(state, action)
            total = total + reward.sum()
        if grad:
            action_gradients(total, actions)

    return _timed(frames, n, mode, horizon, seconds, variant)


def jumper_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys SoftJumper cell, run inside the subprocess. variant: eager | compiled, optionally +recompute, on the torch
    backend (``backend="torch"``; the C frame kernels are what the recipe row runs)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))
    import torch

    from tphys.envs.soft_jumper import SoftJumperEnv

    torch.set_num_threads(cell_threads())
    torch.manual_seed(0)
    env = SoftJumperEnv(num_envs=n, seed=0, recompute=variant.endswith("recompute"), compile_substep=variant.startswith("compiled"),
                        validate=False, backend="torch")
    start = env.reset()

    def frames(count: int, grad: bool) -> None:
        state, total, actions = start, 0.0, []
        for _ in range(count):
            action = (torch.rand(n, env.action_dim) * 2 - 1).requires_grad_(grad)
            actions.append(action)
            state = env.physics_step(state, action)
            total = total + env.reward(state, action, env.observe(state, action)).sum()
        if grad:
            action_gradients(total, actions)

    return _timed(frames, n, mode, horizon, seconds, variant)


def rolling_cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """One tphys RollingFlat cell (through the TorchRL env API), run inside the subprocess. variant: eager, or
    recompute=<mode> for ``rolling_flat(recompute=...)`` (fwd+bwd)."""
    recompute = variant.split("=")[1] if "=" in variant else "step"
    return _env_cell("rolling_flat", dict(recompute=recompute, validate=False), n, mode, horizon, seconds, variant)


def env_cell(task: str):
    """The cell of a task's ``variant`` through the TorchRL env API: ``recipe`` (the recipe's env options), ``eager``
    (validate=False), ``compiled`` (+ compile_substep=True), ``KEY=VALUE`` (+ that option, a Python literal or a
    string)."""
    def cell(n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
        return _env_cell(TASKS[task].env, variant_options(TASKS[task].env, variant), n, mode, horizon, seconds, variant)

    return cell


def recipe_options(env: str) -> dict:
    """The ``options`` of ``recipes/config/env/<env>.yaml`` (what ``rl.experiment.make_env`` passes to ``make``)."""
    from omegaconf import OmegaConf

    path = REPO / "recipes" / "config" / "env" / f"{env}.yaml"
    options = OmegaConf.load(path).get("options") if path.exists() else None
    return {} if options is None else dict(OmegaConf.to_container(options, resolve=True))


def cell_threads() -> int:
    """The torch threads of this cell's process: 1 unless its variant ends in ``@threads=K`` (``run_cell`` sets it)."""
    return int(os.environ.get("VS_REWARPED_THREADS", "1"))


def split_threads(variant: str) -> tuple[str, int]:
    """("recipe", 2) from "recipe@threads=2"; (variant, 1) without the suffix."""
    base, _, threads = variant.partition("@threads=")
    return base, int(threads) if threads else 1


def variant_options(env: str, variant: str) -> dict:
    import ast

    variant, _ = split_threads(variant)
    if variant == "recipe":
        return recipe_options(env)
    options = dict(validate=False)
    for part in variant.split("+"):
        if part == "compiled":
            options["compile_substep"] = True
        elif "=" in part:
            key, value = part.split("=", 1)
            try:
                options[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                options[key] = value
        elif part == "recompute":
            options["recompute"] = True
        elif part != "eager":
            raise ValueError(f"unknown variant part {part!r} in {variant!r}")
    return options


def _env_cell(env_name: str, options: dict, n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """tphys.envs.make(env_name, **options) stepped through ``env.step`` + ``step_mdp`` (as the training losses do):
    fwd carries the state from frame to frame (a fresh reset once any env is done); fwd+bwd runs ``horizon`` frames from
    the current state, takes the action gradients and carries the (detached) last state on."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/tphys-inductor"))
    import torch

    import tphys.envs

    torch.set_num_threads(cell_threads())
    torch.manual_seed(0)
    env = tphys.envs.make(env_name, num_envs=n, seed=0, dtype=torch.float32, **options)
    current = {"td": env.reset()}

    def frames(count: int, grad: bool) -> None:
        td, total, actions = current["td"], 0.0, []
        for _ in range(count):
            action = (torch.rand(n, env.action_dim) * 2 - 1).requires_grad_(grad)
            actions.append(action)
            out = env.step(td.set("action", action))
            total = total + out["next", "reward"].sum()
            td = env.step_mdp(out)
        if grad:
            action_gradients(total, actions)
        td = td.detach() if grad else td
        current["td"] = env.reset() if bool(td["done"].any()) else td

    result = _timed(frames, n, mode, horizon, seconds, variant)
    result["options"] = {k: repr(v) for k, v in options.items()}
    return result


def action_gradients(total, actions: list) -> list:
    """d total / d action for every action: zeros where total does not depend on an action (or on none of them), as
    Rewarped returns them; checked finite."""
    import torch

    if total is None or not isinstance(total, torch.Tensor) or not total.requires_grad:
        grads = [None] * len(actions)
    else:
        grads = torch.autograd.grad(total, actions, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(actions, grads)]
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise FloatingPointError("non-finite action gradient")
    return grads


def _timed(frames, n: int, mode: str, horizon: int, seconds: float, variant: str) -> dict:
    """Warm-up (wall time: compilation runs partly in worker processes), then frames for >= ``seconds`` on the clock
    ``$VS_REWARPED_CLOCK`` names: "cpu" (this process's CPU time, default) or "wall"."""
    import torch

    clock = time.process_time if os.environ.get("VS_REWARPED_CLOCK", "cpu") == "cpu" else time.perf_counter
    grad = mode == "fwdbwd"
    with torch.set_grad_enabled(grad):
        t_warm = time.perf_counter()
        frames(horizon if grad else 2, grad)  # warm-up (and compilation)
        t_warm = time.perf_counter() - t_warm
        done, t0 = 0, clock()
        while clock() - t0 < seconds or done == 0:
            frames(horizon if grad else 1, grad)
            done += horizon if grad else 1
        elapsed = clock() - t0
    return dict(system="tphys", num_envs=n, mode=mode, H=horizon if grad else None, steps_per_s=done * n / elapsed,
                max_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, variant=variant, warmup_s=t_warm,
                torch_threads=torch.get_num_threads())


@dataclasses.dataclass(frozen=True)
class Task:
    """One shared task: our env, Rewarped's class, the default horizon and sizes, the tphys variants per mode, the
    section of a single-task run, its title and the description printed above its table."""

    env: str
    module: str
    cls: str
    horizon: int
    sizes: tuple[int, ...]
    fwd: tuple[str, ...]
    fwdbwd: tuple[str, ...]
    section: str
    title: str
    description: str
    cell: Callable | None = None  # None: env_cell(task)


TASKS = {
    "ant": Task("ant", "rewarped.envs.dflex.ant", "Ant", 32, (1, 16, 64), ("recipe", "eager", "compiled"),
                ("recipe", "eager", "compiled", "compiled+recompute"), "rigid-vs-rewarped",
                "DFlex Ant: tphys.rigid vs Rewarped 1.3.3 (CPU)",
                "Ant with DFlex's parameters, 16 substeps per 1/60 s frame, random actions, observation + reward per frame. "
                "tphys float32: recipe = `tphys.envs.make('ant', ...)` through `env.step` (the yaml's options; backend auto: the "
                "C frame kernels on CPU); eager = `tphys.rigid.step(backend='torch')` directly; compiled = "
                "`step(substep_fn=compiled_substep(...))` (the substep under torch.compile, Inductor "
                "cache in TORCHINDUCTOR_CACHE_DIR; warm-up includes compilation unless cached); +recompute = "
                "`step(recompute=True)` (substeps recomputed in backward).", ant_cell),
    "jumper": Task("soft_jumper", "rewarped.envs.gradsim.jumper", "Jumper", 8, (1, 16, 64), ("recipe", "eager", "compiled"),
                   ("recipe", "eager", "compiled", "compiled+recompute"), "soft-vs-rewarped",
                   "SoftJumper: tphys FEM vs Rewarped 1.3.3 (CPU)",
                   "SoftJumper, 80 substeps per 1/60 s frame, random actions in [-1, 1], observation + reward per frame. "
                   "Rewarped: 444 tetrahedra, 204 particles; tphys `soft_jumper`: 432 tetrahedra, 168 particles, float32; "
                   "recipe = the recipe's env through `env.step` (backend auto: the C frame kernels on CPU); eager / compiled = "
                   "`physics_step` + observe + reward on the torch backend, "
                   "compiled = `compile_substep=True` (each substep under torch.compile; warm-up includes compilation unless "
                   "cached); +recompute = `recompute=True` (the frame's substeps recomputed in backward).", jumper_cell),
    "rollingpin": Task("rolling_flat", "rewarped.envs.plasticinelab.rolling_pin", "RollingPin", 2, (1, 16), ("recipe", "eager"),
                       ("recipe", "recompute=step", "recompute=substep"), "mpm-vs-rewarped",
                       "RollingPin / RollingFlat: tphys MPM vs Rewarped 1.3.3 (CPU)",
                       "Rewarped's RollingPin against our `rolling_flat`: MLS-MPM plasticine, 2592 particles, 48³ domain, 40 "
                       "substeps of 5e-5 s per step, capsule roller, random actions in [-1, 1], observations and reward per "
                       "step through each env's own step API. tphys float32, with the C transfer kernels and the grid window "
                       "(the nodes the particles reach); recipe = the recipe's env (validate on); recompute=step: each env "
                       "step keeps only its input and reruns its substeps in backward, each recomputed again (memory grows "
                       "with env steps); recompute=substep: keeps every substep's input. Where the H steps' rewards do not "
                       "depend on the actions (the roller above the dough) the gradient is zero in both systems.",
                       rolling_cell),
    "handflip": Task("hand_flip", "rewarped.envs.dexdeform.flip", "Flip", 2, (1, 16), ("recipe", "eager"),
                     ("recipe", "recompute=step", "recompute=substep"), "handflip-vs-rewarped",
                     "HandFlip: tphys MPM vs Rewarped 1.3.3 dexdeform.Flip (CPU)",
                     "Rewarped's `dexdeform.Flip` against our `hand_flip`: MLS-MPM plasticine (E 4e3, yield 130), 2500 "
                     "particles, 48³ domain, 40 substeps of 5e-5 s per step, a kinematic 24-DoF Shadow hand (fixed base, joint "
                     "deltas as actions), random actions in [-1, 1], observations and reward per step through each env's own "
                     "step API. tphys float32; recipe = the recipe's env (validate on); the others validate=False with the "
                     "named recompute."),
    "fluidmove": Task("fluid_move", "rewarped.envs.softgym.transport", "Transport", 2, (1, 16), ("recipe", "eager"),
                      ("recipe", "recompute=step", "recompute=substep"), "fluidmove-vs-rewarped",
                      "FluidMove: tphys MPM vs Rewarped 1.3.3 softgym.Transport (CPU)",
                      "Rewarped's `softgym.Transport` against our `fluid_move`: MLS-MPM water (E 1e5, ν 0.3, ρ 1e3), 48³ "
                      "domain, 40 substeps of 5e-4 s per step, a kinematic 5-box container on 3 prismatic DoF, random actions "
                      "in [-1, 1], observations and reward per step through each env's own step API. tphys float32 (2880 "
                      "particles); recipe = the recipe's env (validate on); the others validate=False with the named "
                      "recompute."),
    "cartpole": Task("cartpole_swingup", "rewarped.envs.dflex.cartpole", "Cartpole", 32, (16, 64), ("recipe", "eager", "compiled"),
                     ("recipe", "eager", "compiled"), "cartpole-vs-rewarped",
                     "CartPole: tphys.rigid vs Rewarped 1.3.3 dflex.Cartpole (CPU)",
                     "DFlex's cart-pole in both (Rewarped's `dflex.Cartpole`, our `cartpole_swingup`): 4 substeps per 1/60 s "
                     "frame, random actions in [-1, 1], observation + reward per frame through each env's step API. tphys "
                     "float32; recipe = the recipe's env (validate on); eager = validate=False; compiled = + "
                     "`compile_substep=True`."),
    "hopper": Task("hopper", "rewarped.envs.dflex.hopper", "Hopper", 32, (16, 64), ("recipe", "eager", "compiled"),
                   ("recipe", "eager", "compiled"), "hopper-vs-rewarped", "Hopper: tphys.rigid vs Rewarped 1.3.3 dflex.Hopper (CPU)",
                   "DFlex's hopper in both (Rewarped's `dflex.Hopper`, our `hopper`): 16 substeps per 1/60 s frame, penalty "
                   "ground contact, random actions in [-1, 1], observation + reward per frame through each env's step API "
                   "(episodes reset when any env is done). tphys float32; recipe = the recipe's env (validate on); eager = "
                   "validate=False; compiled = + `compile_substep=True`."),
}
ALL_SECTION = ("all-vs-rewarped", "Every shared task: tphys vs Rewarped 1.3.3 (CPU), forward and forward+backward")


def cell_function(task: str, variant: str) -> Callable:
    """The function that measures one tphys cell: the task's own cell, or the env cell for ``recipe`` (every task)."""
    return env_cell(task) if split_threads(variant)[0] == "recipe" or TASKS[task].cell is None else TASKS[task].cell


def cell_key(args, task: str, horizon: int, system: str, n: int, mode: str) -> dict:
    """What a stored cell must match to stand in for a new run of it: the task, system and variant, N, mode, horizon,
    clock and minimum seconds, and the CPU model (a cell measured on another machine never stands in); a tphys cell also
    the venv of --tphys-python (a dev venv's Triton changes its memory)."""
    key = {"task": task, "variant": system, "num_envs": n, "mode": mode, "horizon": horizon, "clock": args.clock,
           "seconds": args.seconds, "cpu": cpu_model()}
    if system != "rewarped":
        key["python"] = args.tphys_python.parent.parent.name
    return key


def cpu_model() -> str:
    return machine().split(",")[0]


def load_store(path: Path | None) -> list[dict]:
    """The cells stored in the JSON-lines file ``path`` (none if it is missing or None)."""
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CODE_PATHS = ("tphys", "recipes", "benchmarks/vs_rewarped.py", "pyproject.toml")  # what a tphys cell runs


def same_code(commit: str) -> bool:
    """True when ``CODE_PATHS`` at ``commit`` (a clean one) are what the working tree holds now: a tphys cell measured there
    ran the code a new one would run (commits of results, tests or other benchmarks in between do not matter)."""
    if not commit or commit.endswith("-dirty") or commit == "unknown":
        return False
    diff = subprocess.run(["git", "diff", "--quiet", commit, "--", *CODE_PATHS], cwd=REPO, capture_output=True)
    return diff.returncode == 0


def stored_cell(args, key: dict) -> dict | None:
    """The newest stored cell for ``key`` that ``--reuse`` allows: Rewarped's cells (``rewarped`` or ``all``: the reference
    does not change with our commits) or a tphys cell measured with the code of the working tree (``all``, see
    ``same_code``: resuming an interrupted run)."""
    if args.reuse == "none":
        return None
    for cell in reversed(args.stored):
        if cell.get("key") != key or "error" in cell:
            continue
        if key["variant"] == "rewarped" or (args.reuse == "all" and same_code(cell.get("commit", ""))):
            return cell
    return None


def store_cell(path: Path | None, key: dict, cell: dict) -> None:
    """Append ``cell`` with its key, commit and date to the JSON-lines file ``path`` (one ``write`` of one line)."""
    if path is None or "error" in cell:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = {**cell, "key": key, "commit": git_commit(), "date": now, "load": os.getloadavg()[0]}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_cell(args, task: str, horizon: int, system: str, n: int, mode: str) -> dict:
    """One cell: from the store when ``--reuse`` allows (marked ``reused``), else measured in a fresh subprocess and
    stored."""
    key = cell_key(args, task, horizon, system, n, mode)
    found = stored_cell(args, key)
    if found is not None:
        return {**{k: v for k, v in found.items() if k != "key"}, "reused": found.get("date", "?")}
    cell = measure_cell(args, task, horizon, system, n, mode)
    store_cell(args.store, key, cell)
    args.stored.append({**cell, "key": key, "commit": git_commit()})
    return cell


def measure_cell(args, task: str, horizon: int, system: str, n: int, mode: str) -> dict:
    threads = str(split_threads(system)[1])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, VS_REWARPED_THREADS=threads,
               VS_REWARPED_CLOCK=args.clock)
    if threads != "1":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # as the README asks of threads > 1: torch's OpenMP threads would spin
        if args.clock == "cpu":
            env["VS_REWARPED_CLOCK"] = "wall"  # K threads: CPU time would add the threads' times up
    if system != "rewarped":
        # this tree's tphys first: an editable install elsewhere (another worktree) would otherwise serve the import, and
        # the cell is stored under this tree's commit
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        cmd = [str(args.tphys_python), __file__, "--task", task, "--cell", f"{n},{mode},{system}", "--horizon", str(horizon),
               "--seconds", str(args.seconds)]
    else:
        clock = [str(CPU_CLOCK)] if args.clock == "cpu" else []  # bench.py times with time.time: give it the CPU clock
        cmd = [str(args.rewarped_python), *clock, str(REWARPED_BENCH), TASKS[task].module, TASKS[task].cls, str(n), mode,
               str(horizon), str(args.seconds)]
    failed = dict(task=task, system=system if system == "rewarped" else f"tphys {system}", num_envs=n, mode=mode)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {args.cell_timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**failed, "error": reason}
    result = json.loads(lines[-1][7:])
    result.update(task=task, system=failed["system"])
    return result


def tphys_python_description(python: Path) -> str:
    """Which venv runs tphys's cells and whether Triton is installed there (it adds ~80 MB to every cell's peak RSS:
    torch._dynamo, which tensordict imports, imports it when present)."""
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('triton') is not None)"],
                           capture_output=True, text=True)
    triton = {"True": "installed", "False": "not installed"}.get(probe.stdout.strip(), "unknown")
    return f"{python.parent.parent.name} (Triton {triton})"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.2f}"


def measure(args, task: str, rows: list, results: list, with_task: bool) -> None:
    """Run every cell of ``task`` and append its table rows (and raw results)."""
    spec = TASKS[task]
    horizon = args.horizon or spec.horizon
    for n in args.sizes or spec.sizes:
        for mode in ("fwd", "fwdbwd"):
            variants = [v for v in (spec.fwdbwd if mode == "fwdbwd" else spec.fwd) if not args.variants or v in args.variants]
            if args.all_cores:  # the recipe's env with every core (Warp's CPU backend runs one)
                variants.append(f"recipe@threads={usable_cores()}")
            systems = ["rewarped", *variants] if args.systems == "both" else ["rewarped"] if args.systems == "rewarped" else variants
            cells = [run_cell(args, task, horizon, v, n, mode) for v in systems]
            label = f"fwd+bwd H={horizon}" if mode == "fwdbwd" else "fwd"
            lead = f"| {task} " if with_task else ""
            for cell in cells:
                print(json.dumps(cell), flush=True)
                results.append(cell)
                if "error" in cell:
                    rows.append(f"{lead}| {n} | {label} | {cell['system']} | failed: {cell['error'][:80].replace('|', '/')} | | | |")
                    continue
                ref = cells[0] if systems[0] == "rewarped" else {"error": "not run"}
                ratio = "-" if "error" in ref else f"{cell['steps_per_s'] / ref['steps_per_s']:.2f}x"
                warm = cell.get("warmup_s", "-")
                system = cell["system"] + (f" (stored {cell['reused'][:10]})" if "reused" in cell else "")
                rows.append(f"{lead}| {n} | {label} | {system} | {_rate(cell['steps_per_s'])} | {ratio} | "
                            f"{cell['max_rss_MB'] / 1024:.2f} | {warm if isinstance(warm, str) else f'{warm:.0f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "all"], default="ant")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="num_envs (default per task: ant, jumper 1 16 64; MPM 1 16; cartpole, hopper 16 64)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="fwd+bwd frames (default per task: ant, cartpole, hopper 32, jumper 8, MPM 2)")
    parser.add_argument("--variants", nargs="+", default=None, help="only these tphys variants (e.g. recipe eager); Rewarped always")
    parser.add_argument("--all-cores", action="store_true", help="add a row per cell: the recipe variant with every usable core")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum measured seconds per cell")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu (default): each single-threaded cell's process CPU time, both systems (Rewarped's bench.py "
                             "through benchmarks/cpu_clock.py), so time waiting for a core held by other processes is not "
                             "counted; rows with K threads use wall time. wall: wall time (the runs before 2026-12-02)")
    parser.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds before a cell is abandoned")
    parser.add_argument("--rewarped-python", type=Path, default=REPO / ".venv-rewarped" / "bin" / "python")
    parser.add_argument("--tphys-python", type=Path, default=Path(sys.executable),
                        help="the python of tphys's cells (default: this one). A user's install (`pip install -e .`, no dev "
                             "extras) has no Triton on a CPU machine; a dev venv has it, and torch._dynamo, which tensordict "
                             "imports, then imports Triton too: ~80 MB more resident memory in every cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--store", type=Path, default=REPO / "benchmarks" / "vs_rewarped" / "cells.jsonl",
                        help="JSON-lines file every measured cell is appended to (with its key, commit, date and load)")
    parser.add_argument("--reuse", choices=("none", "rewarped", "all"), default="none",
                        help="take cells from --store instead of measuring them: rewarped = Rewarped's cells of the same "
                             "key (task, N, mode, H, clock, seconds, CPU model); all = also tphys cells measured with the "
                             "same tphys/, recipes/ and this script as the working tree's (resume an interrupted run)")
    parser.add_argument("--systems", choices=("both", "rewarped", "tphys"), default="both",
                        help="measure only Rewarped's cells (e.g. to store them first) or only ours")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.stored = load_store(args.store)
    if args.cell:
        n, mode, variant = args.cell.split(",")
        horizon = args.horizon or TASKS[args.task].horizon
        print("RESULT " + json.dumps(cell_function(args.task, variant)(int(n), mode, horizon, args.seconds, variant)), flush=True)
        return
    if not args.rewarped_python.exists():
        sys.exit(f"no Rewarped python at {args.rewarped_python}; set it up as ../shared/tools/rewarped/README.md says")
    if not args.tphys_python.exists():
        sys.exit(f"no python at --tphys-python {args.tphys_python}")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    tasks = list(TASKS) if args.task == "all" else [args.task]
    with_task = args.task == "all"
    rows, results = [], []
    for task in tasks:
        measure(args, task, rows, results, with_task)
    head = "| task " if with_task else ""
    table = [f"{head}| N | mode | system | env-steps/s | vs Rewarped | peak RSS GB | warm-up s |",
             ("|---" if with_task else "") + "|---:|---|---|---:|---:|---:|---:|", *rows]
    section_name, title = ALL_SECTION if with_task else (TASKS[args.task].section, TASKS[args.task].title)
    descriptions = [f"- {t}: {TASKS[t].description}" for t in tasks] if with_task else [TASKS[args.task].description]
    lines = [
        f"### {title}", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- versions: {versions()}; Rewarped 1.3.3 / warp-lang 1.3.3 in {args.rewarped_python.parent.parent.name}",
        f"- tphys cells' python: {tphys_python_description(args.tphys_python)}",
        "- threads: 1 per process (OMP_NUM_THREADS=1) except the rows `@threads=K`, cells one at a time; "
        f"load: {fmt_load(load_before)} before, "
        f"{fmt_load(os.getloadavg())} after (1/5/15 min)",
        f"- commit: {git_commit()}", f"- command: `{command_line(__file__)}`",
        f"- duration: {time.perf_counter() - t0:.0f} s"
        + (f"; cells reused from `{_relative(args.store)}` are marked 'stored' with their date" if args.reuse != "none" else ""), "",
        *descriptions, "",
        f"At least {args.seconds:g} s measured per cell after a warm-up (clock: "
        f"{'each process CPU time, both systems; wall time for rows with K threads' if args.clock == 'cpu' else 'wall time'}; "
        "warm-up: wall time); 'vs Rewarped' divides by the Rewarped row of the "
        "same task, N and mode. fwd+bwd: H frames then the gradient of the summed reward to every action (zero where the "
        "rewards do not depend on the actions, in both systems). Peak RSS includes the imports (same measure for both).", "",
        *table,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(args.out, section_name, section)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
