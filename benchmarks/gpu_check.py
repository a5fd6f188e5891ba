"""The GPU check, one prepared script (under 8 minutes on one CUDA device): kernels, every env family, SAPO, one table.

1. Copy bandwidth: ``dst.copy_(src)`` of a large float32 tensor (bytes read + written), the device's practical peak.
2. Triton kernels (``tphys/kernels``: P2G and G2P) against their torch twins: the max abs error of the outputs and of the
   input gradients (a vector-Jacobian product with fixed random weights), and the kernels' useful GB/s (P2G: 16 numbers
   read a particle, 4 written a grid node; G2P: 3 read and 12 written a particle, 3 read a grid node) against the copy
   bandwidth.
3. Every env family (particles: rope3d, rigid: ant, soft: soft_jumper, MPM: rolling_flat; ``--envs`` for others),
   forward (H steps under no_grad) and forward+backward (H steps with a leaf action [H, N, A], then the gradient of the
   summed reward) through the env protocol (``physics_step`` + ``observe`` + ``reward``), at N = 64, 1024, 4096, in
   three modes:
       eager            the env as built (validate off);
       compiled         the rigid and soft envs with ``compile_substep=True`` (one substep under torch.compile), the
                        particle and MPM envs with ``torch.compile(env.physics_step, dynamic=False)``;
       compiled+graphs  the compiled step captured in two CUDA graphs, as Rewarped captures its step: the forward
                        (no grad) and forward+backward of one env step on static buffers; an autograd.Function
                        replays the forward graph in forward and, in backward, copies the step's saved inputs back and
                        replays the forward+backward graph (recompute, so only each step's inputs are kept). Where
                        capture fails (a host sync in the step, e.g. the MPM grid window's size) the cell says why and
                        nothing else is timed for it. Its action gradient is compared with the eager one (max abs
                        difference relative to the largest entry) on the same actions.
4. SAPO for 30 s (``rl.experiment.load_recipe('sapo').make_trainer`` on the composed recipe config, rope3d, N = 64) on
   the device: iterations, env-steps/s, the last actor loss.

A global time budget (``--budget``, 360 s for the env cells) skips the remaining env cells (marked so) rather than
overrun. Prints one markdown table (and writes it to ``--out`` if given).

    python benchmarks/gpu_check.py                       # on a CUDA machine
    python benchmarks/gpu_check.py --out gpu.md          # and write the table
    python benchmarks/gpu_check.py --smoke               # CPU smoke test: N = 2, 2 substeps (soft_jumper 16; MPM: a
                                                         # 4x2x4 lattice on a 16³ grid), Triton under TRITON_INTERPRET=1, the compiled
                                                         # modes not compiled (--smoke-compile: torch.compile's "eager"
                                                         # backend), graphs emulated (the same autograd.Function, each
                                                         # replay a plain call); its gradients must equal eager's
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

DEFAULT_ENVS = ("rope3d", "ant", "soft_jumper", "rolling_flat")
FAMILY = {"rope3d": "particles", "rope": "particles", "cloth": "particles", "pendulum2d": "particles", "ant": "rigid",
          "hopper": "rigid", "cartpole_swingup": "rigid", "humanoid": "rigid", "soft_jumper": "soft", "rolling_flat": "mpm",
          "hand_flip": "mpm", "fluid_move": "mpm"}
MODES = ("eager", "compiled", "compiled+graphs")
# --smoke: fewer substeps (soft_jumper 16 of 80: at 8 its FEM blows up), a small MPM lattice, grid and sample
SMOKE_OPTIONS = dict(rope3d=dict(substeps=2), ant=dict(substeps=2), soft_jumper=dict(substeps=16),
                     rolling_flat=dict(substeps=2, lattice=(4, 2, 4), grid_size=16, samples=8))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny sizes, a few seconds")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu under --smoke)")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="num_envs (default 64 1024 4096; smoke 2)")
    parser.add_argument("--horizon", type=int, default=None, help="fwd+bwd steps (default 4, MPM 2; smoke 2)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per cell and mode (default 1; smoke 0)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all env cells (default 360; smoke 300)")
    parser.add_argument("--sapo-seconds", type=float, default=None, help="default 30; smoke 2")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--smoke-compile", action="store_true",
                        help="under --smoke, trace the compiled modes with torch.compile(backend='eager') (slow: off by default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.sizes = args.sizes or ([2] if smoke else [64, 1024, 4096])
    args.seconds = args.seconds if args.seconds is not None else (0.0 if smoke else 1.0)
    args.budget = args.budget if args.budget is not None else (300.0 if smoke else 360.0)
    args.sapo_seconds = args.sapo_seconds if args.sapo_seconds is not None else (2.0 if smoke else 30.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton (tphys.kernels.transfer_triton) is imported
    if device == "cpu" and not args.smoke:
        print("no CUDA device: running the CPU smoke configuration's emulations at the requested sizes", flush=True)
    from report import fmt_load, git_commit, machine, versions

    torch.manual_seed(0)
    load_before, started = os.getloadavg(), time.perf_counter()
    lines = [f"### GPU check ({'smoke, ' if args.smoke else ''}{device})", "", f"- device: {device_name(device)}",
             f"- host: {machine()}", f"- versions: {versions()}{triton_version()}", f"- commit: {git_commit()}",
             f"- command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(), ""]
    copy_bw = copy_bandwidth(device, 2**22 if args.smoke else 2**28)
    lines += [f"Copy bandwidth (`dst.copy_(src)`, {'16 MB' if args.smoke else '1 GB'} float32): {copy_bw / 1e9:.1f} GB/s", ""]
    lines += kernel_table(device, args.smoke, copy_bw)
    lines += env_table(args, device)
    lines += sapo_lines(device, args.smoke, args.sapo_seconds)
    lines += ["", f"- load: {fmt_load(load_before)} before, {fmt_load(os.getloadavg())} after (1/5/15 min); threads: "
              f"{torch.get_num_threads()}; duration: {time.perf_counter() - started:.0f} s"]
    table = "\n".join(lines) + "\n"
    print(table, flush=True)
    if args.out:
        args.out.write_text(table)
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return "CPU (smoke test: no timing is meaningful)"


def triton_version() -> str:
    try:
        import triton

        return f", triton {triton.__version__}" + (" (interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else "")
    except ImportError:
        return ", triton not installed"


def timed(fn, device: str, seconds: float, repeats_min: int = 1) -> float:
    """Seconds per call of fn (after one warm-up call), repeated for at least ``seconds``."""
    fn()
    sync(device)
    count, t0 = 0, time.perf_counter()
    while count < repeats_min or time.perf_counter() - t0 < seconds:
        fn()
        count += 1
    sync(device)
    return (time.perf_counter() - t0) / count


def short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:160].replace("|", "/")


def copy_bandwidth(device: str, numbers: int) -> float:
    import torch

    src = torch.rand(numbers, device=device)
    dst = torch.empty_like(src)
    per_call = timed(lambda: dst.copy_(src), device, 0.2 if device == "cpu" else 1.0, repeats_min=3)
    return 2 * 4 * numbers / per_call


# ---------------------------------------------------------------------------- 2. kernels
def relative_error(twin, other) -> float:
    """max |twin - other| / max |twin| (the twin's largest entry sets the scale)."""
    return float((twin - other).abs().max()) / max(float(twin.abs().max()), 1e-30)


def kernel_table(device: str, smoke: bool, copy_bw: float) -> list[str]:
    import torch

    from tphys.kernels import g2p, p2g, triton_available

    n, p, g = (1, 32, 8) if smoke else (64, 2592, 48)
    lines = [f"Triton kernels against their torch twins (N = {n}, P = {p} particles, {g}³ grid, float32)", "",
             "| kernel | max err fwd (rel) | max err grad (rel) | triton ms | torch ms | triton GB/s | of copy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    if not triton_available():
        return lines + ["| p2g, g2p | triton not installed | | | | | |", ""]
    gen = torch.Generator().manual_seed(0)
    dx = 1.0 / g
    x = (1.5 * dx + (1 - 3 * dx) * torch.rand(n, p, 3, generator=gen)).to(device)
    mass = (0.5 + torch.rand(n, p, generator=gen)).to(device)
    momentum = torch.randn(n, p, 3, generator=gen).to(device)
    affine = torch.randn(n, p, 3, 3, generator=gen).to(device)
    grid_v = torch.randn(n, g, g, g, 3, generator=gen).to(device)
    cases = {
        "p2g": (lambda *a, b: p2g(*a, g, dx, backend=b), [x, mass, momentum, affine], 4 * n * (16 * p + 4 * g**3)),
        "g2p": (lambda *a, b: g2p(*a, dx, backend=b), [x, grid_v], 4 * n * (15 * p + 3 * g**3)),
    }
    for name, (fn, inputs, useful_bytes) in cases.items():
        try:
            outs, grads = {}, {}
            for backend in ("torch", "triton"):
                leaves = [t.clone().requires_grad_() for t in inputs]
                out = fn(*leaves, b=backend)
                weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(device) for o in out]
                grads[backend] = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), leaves)
                outs[backend] = [o.detach() for o in out]
            err_f = max(relative_error(a, b) for a, b in zip(outs["torch"], outs["triton"]))
            err_g = max(relative_error(a, b) for a, b in zip(grads["torch"], grads["triton"]))
            if smoke:  # the interpreter's speed means nothing
                lines.append(f"| {name} | {err_f:.2e} | {err_g:.2e} | - | - | - | - |")
                continue
            with torch.no_grad():
                t_triton = timed(lambda: fn(*inputs, b="triton"), device, 1.0)
                t_torch = timed(lambda: fn(*inputs, b="torch"), device, 1.0)
            rate = useful_bytes / t_triton
            lines.append(f"| {name} | {err_f:.2e} | {err_g:.2e} | {1e3 * t_triton:.3f} | {1e3 * t_torch:.3f} | {rate / 1e9:.1f} | "
                         f"{100 * rate / copy_bw:.0f} % |")
        except Exception as error:  # noqa: BLE001 - reported in the table
            lines.append(f"| {name} | failed: {short(error)} | | | | | |")
    return lines + [""]


# ---------------------------------------------------------------------------- 3. envs
class CapturedStep:
    """One env step ``fn(action, *state) -> (reward, *next_state)`` on static buffers, captured as two CUDA graphs
    (forward under no_grad; forward + backward with static output gradients) or, on CPU, emulated (each replay calls
    ``fn``). ``apply(action, *state)`` is differentiable (``_Replay``)."""

    def __init__(self, fn, sample: list, device: str):
        import torch

        self.fn, self.cuda = fn, device.startswith("cuda")
        self.static_in = [t.detach().clone() for t in sample]
        self.grad_in = [t.detach().clone().requires_grad_() for t in sample]
        with torch.no_grad():
            outs = fn(*self.static_in)
        self.static_out = [o.detach().clone() for o in outs]
        self.grad_out = [torch.zeros_like(o) for o in outs]
        self.static_grads = [torch.zeros_like(t) for t in sample]
        if not self.cuda:
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.make_graphed_callables does
            for _ in range(3):
                self._forward()
                self._backward()
        torch.cuda.current_stream().wait_stream(stream)
        self.pool = torch.cuda.graph_pool_handle()
        self.graph_fwd, self.graph_bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph_fwd, pool=self.pool):
            self.static_out = self._forward(copy=False)
        with torch.cuda.graph(self.graph_bwd, pool=self.pool):
            self.static_grads = self._backward(copy=False)

    def _forward(self, copy: bool = True):
        import torch

        with torch.no_grad():
            outs = self.fn(*self.static_in)
            if copy:
                for s, o in zip(self.static_out, outs):
                    s.copy_(o)
        return list(outs)

    def _backward(self, copy: bool = True):
        import torch

        with torch.enable_grad():
            outs = self.fn(*self.grad_in)
            pairs = [(o, g) for o, g in zip(outs, self.grad_out) if o.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], self.grad_in, grad_outputs=[g for _, g in pairs], allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self.grad_in, grads)]
        if copy:
            for s, g in zip(self.static_grads, grads):
                s.copy_(g)
        return grads

    def replay_forward(self) -> None:
        self.graph_fwd.replay() if self.cuda else self._forward()

    def replay_backward(self) -> None:
        self.graph_bwd.replay() if self.cuda else self._backward()

    def apply(self, *inputs):
        return _replay().apply(self, *inputs)


@functools.cache
def _replay():
    import torch

    class _Replay(torch.autograd.Function):
        @staticmethod
        def forward(ctx, captured, *inputs):
            with torch.no_grad():
                for s, t in zip(captured.static_in, inputs):
                    s.copy_(t)
            captured.replay_forward()
            ctx.captured = captured
            ctx.save_for_backward(*inputs)
            return tuple(o.clone() for o in captured.static_out)

        @staticmethod
        def backward(ctx, *grad_outputs):
            captured = ctx.captured
            with torch.no_grad():
                for s, t in zip(captured.grad_in, ctx.saved_tensors):
                    s.copy_(t)
                for s, g in zip(captured.grad_out, grad_outputs):
                    s.zero_() if g is None else s.copy_(g)
            captured.replay_backward()
            return (None, *[g.clone() for g in captured.static_grads])

    return _Replay


def build_env(name: str, n: int, device: str, mode: str, smoke: bool, smoke_compile: bool = False):
    """(env, step function (action, *state) -> (reward, *next state), state keys, initial state tensors). Under
    ``smoke`` the compiled modes compile only with ``smoke_compile`` (then with torch.compile's "eager" backend)."""
    import torch
    from tensordict import TensorDict

    import tphys.envs as E

    family = FAMILY.get(name, "particles")
    options = dict(validate=False, **(SMOKE_OPTIONS.get(name, {}) if smoke else {}))
    compiling = mode != "eager" and (not smoke or smoke_compile)
    if compiling and family in ("rigid", "soft") and not smoke:
        options["compile_substep"] = True
    env = E.make(name, num_envs=n, seed=0, device=device, dtype=torch.float32, **options)
    physics = env.physics_step
    if compiling and (family not in ("rigid", "soft") or smoke):
        physics = torch.compile(env.physics_step, dynamic=False, backend="eager" if smoke else "inductor")
    td0 = env.reset()
    keys = tuple(env.state_keys)
    step_count = td0.get("step_count").clone()

    def step(action, *state):
        td = TensorDict(dict(zip(keys, state)), batch_size=[n], device=env.device)
        td.set("step_count", step_count)
        nxt = physics(td, action)
        reward = env.reward(nxt, action, env.observe(nxt, action))
        return (reward, *[nxt.get(k) for k in keys])

    return env, step, keys, [td0.get(k) for k in keys]


def run_cell(name: str, n: int, mode: str, horizon: int, seconds: float, device: str, smoke: bool, reference=None,
             smoke_compile: bool = False) -> dict:
    """fwd and fwd+bwd env-steps/s of one (env, N, mode); ``reference``: the eager action gradient to compare with."""
    import torch

    t0 = time.perf_counter()
    env, step, keys, state0 = build_env(name, n, device, mode, smoke, smoke_compile)
    gen = torch.Generator().manual_seed(0)
    actions = (torch.rand(horizon, n, env.action_dim, generator=gen) * 2 - 1).to(device)
    result = dict(env=name, n=n, mode=mode, horizon=horizon)
    if mode == "compiled+graphs":
        try:
            captured = CapturedStep(step, [actions[0], *state0], device)
            run = captured.apply
        except Exception as error:  # noqa: BLE001 - the table says why
            result["error"] = f"capture failed: {short(error)}"
            return result
    else:
        run = step

    def rollout(acts):
        state, total = state0, 0.0
        for t in range(horizon):
            reward, *state = run(acts[t], *state)
            total = total + reward.sum()
        return total

    def fwd():
        with torch.no_grad():
            rollout(actions)

    def fwd_bwd():
        leaf = actions.clone().requires_grad_()
        total = rollout(leaf)
        grad = torch.autograd.grad(total, leaf, allow_unused=True)[0] if total.requires_grad else None
        return torch.zeros_like(leaf) if grad is None else grad

    try:
        fwd()
        grad = fwd_bwd()
        sync(device)
        result["warmup_s"] = time.perf_counter() - t0
        result["fwd"] = n * horizon / timed(fwd, device, seconds)
        result["fwd_bwd"] = n * horizon / timed(fwd_bwd, device, seconds)
        result["finite"] = bool(torch.isfinite(grad).all())
        result["grad"] = grad.detach()
        if reference is not None:
            scale = max(float(reference.abs().max()), 1e-30)
            result["grad_rel_diff"] = float((grad - reference).abs().max()) / scale
    except Exception as error:  # noqa: BLE001
        result["error"] = short(error)
        if os.environ.get("GPU_CHECK_TRACEBACK"):
            traceback.print_exc()
    return result


def env_table(args, device: str) -> list[str]:
    deadline = time.perf_counter() + args.budget
    results = {}
    for mode in args.modes:  # eager for every env and size first: what is skipped under the budget is the slow part
        for name in args.envs:
            family = FAMILY.get(name, "particles")
            horizon = args.horizon or (2 if args.smoke or family == "mpm" else 4)
            for n in args.sizes:
                if time.perf_counter() > deadline:
                    results[name, n, mode] = dict(env=name, n=n, mode=mode, horizon=horizon, error="skipped: time budget spent")
                    continue
                reference = results.get((name, n, "eager"), {}).get("grad")
                results[name, n, mode] = run_cell(name, n, mode, horizon, args.seconds, device, args.smoke,
                                                  reference if mode != "eager" else None, args.smoke_compile)
                print({k: v for k, v in results[name, n, mode].items() if k != "grad"}, flush=True)
    lines = ["Env families forward and forward+backward (env-steps/s = N · H / s; physics_step + observe + reward; float32)", "",
             "| env | family | N | mode | H | fwd | fwd+bwd | warm-up s | grad vs eager (rel) | note |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for name in args.envs:
        for n in args.sizes:
            for mode in args.modes:
                r = results[name, n, mode]
                head = f"| {name} | {FAMILY.get(name, 'particles')} | {n} | {mode} | {r['horizon']} |"
                if "error" in r:
                    lines.append(f"{head} | | | | {r['error']} |")
                    continue
                diff = f"{r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else "-"
                note = "" if r["finite"] else "non-finite action gradient"
                lines.append(f"{head} {r['fwd']:,.0f} | {r['fwd_bwd']:,.0f} | {r['warmup_s']:.1f} | {diff} | {note} |")
    return lines + [""]


# ---------------------------------------------------------------------------- 4. SAPO
def sapo_lines(device: str, smoke: bool, seconds: float) -> list[str]:
    import math

    from rl.cli import compose
    from rl.experiment import load_recipe, make_env

    n, horizon = (2, 4) if smoke else (64, 32)
    overrides = ["env=rope3d", f"device={device}", f"num_envs={n}", f"algo.horizon={horizon}", "progress=false",
                 "total_steps=1000000000"]
    try:
        cfg = compose("sapo", overrides)
        env = make_env(cfg)
        trainer = load_recipe("sapo").make_trainer(cfg, env)
        t0, iterations, scalars = time.perf_counter(), 0, {}
        trainer.step()  # warm-up
        warm, steps0 = time.perf_counter() - t0, trainer.env_steps
        t0 = time.perf_counter()
        while iterations == 0 or time.perf_counter() - t0 < seconds:
            scalars = trainer.step()
            iterations += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        loss = scalars.get("loss/actor", float("nan"))
        rate = (trainer.env_steps - steps0) / elapsed
        return ["SAPO (`recipes/sapo.py`'s make_trainer, " + " ".join(overrides[:4]) + f"): {iterations} iterations in "
                f"{elapsed:.1f} s after a {warm:.1f} s first iteration, {rate:,.0f} env-steps/s, last actor loss {loss:.4g}"
                + ("" if math.isfinite(loss) else " (NOT FINITE)")]
    except Exception as error:  # noqa: BLE001
        return [f"SAPO failed: {short(error)}"]


if __name__ == "__main__":
    sys.exit(main())
