"""Where the fused particle step's time goes (issue 21.4: the rope row of the roofline), one env step of N envs.

The roofline (``roofline.py``) times ``physics_step`` of rope3d at N = 4096. This script splits that time, in one
process, with interleaved repeats (the best of --repeats each) on the measuring thread's CPU clock:

    physics_step      the env step as the roofline times it (Python, tensordict, the handle velocities, the C call)
    kernel            the C call alone on the same arrays every call (the C function of ``particle_kernels.particle_step``
                      for the model's path: "unrolled", the payload envs' default, or "band")
    fresh outputs     the C call with new output tensors every call, as ``particle_kernels.particle_step`` allocates them
                      (their first writes miss the caches)
    transposes        the C call with 0 substeps: the [N, P, d] <-> [P][d][LANES] block transposes and the handle
                      velocity set-up, which every call does once
    skeleton          the C call built with -DTPHYS_PROFILE_NO_SPRING_MATH (each spring's tension is a stand-in product,
                      everything else as built: the particles' state, d = x_j - x_i, the force sums, the particle
                      updates, the loop), minus the transposes
    spring math       kernel minus skeleton minus transposes: the tensions (length, 1/length, cable ramp, damping)

and gives each per call (µs), per env step (ns), and per 16-env vector per substep in cycles of --ghz (default:
this CPU's current MHz from /proc/cpuinfo). The profiling build changes results (it is never loaded by tphys).

    python benchmarks/particle_split.py                      # rope3d, N = 4096
    python benchmarks/particle_split.py --env rope --num-envs 64

Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine  # noqa: E402  (puts this tree first on sys.path)

PROFILE_FLAG = "-DTPHYS_PROFILE_NO_SPRING_MATH"


def cpu_ghz() -> float | None:
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz")]
    except OSError:
        return None
    return sum(mhz) / len(mhz) / 1e3 if mhz else None


def split(times: dict[str, float]) -> dict[str, float]:
    """The parts (seconds per call) from the timings: physics_step, kernel, fresh (outputs), transposes (0 substeps),
    no_math."""
    skeleton = times["no_math"] - times["transposes"]
    return {
        "physics_step": times["physics_step"],
        "Python and torch around the C call": times["physics_step"] - times["fresh"],
        "fresh output tensors (allocation, cold writes)": times["fresh"] - times["kernel"],
        "C call": times["kernel"],
        "transposes and set-up": times["transposes"],
        "skeleton (loads, force sums, updates, stores, loop)": skeleton,
        "spring math": times["kernel"] - times["no_math"],
    }


def kernel(model, flags: tuple[str, ...]):
    """The C step of ``model``'s path ("unrolled" or "band") built with ``flags``, as f(x, v, u, x1, v1, substeps, h)."""
    from tphys.kernels import c_kernels, particle_unrolled
    from tphys.kernels import particle_kernels as pk

    def n_of(x):
        return x.shape[0]

    if model.path == "unrolled":
        handle, free, impulse, _, first, second, _, _, damping, cable = model.tensors
        top = particle_unrolled.topology(model.dim, free, impulse, model.pointers[4], first, second, damping, cable)
        function = particle_unrolled.function(top, "float", flags)
        constants = model.unrolled[2]
        return lambda x, v, u, x1, v1, substeps, h: function(
            x.data_ptr(), v.data_ptr(), u.data_ptr(), None, None, 0, x1.data_ptr(), v1.data_ptr(), model.pointers[0], model.pointers[1],
            constants, n_of(x), u.shape[1], substeps, h)
    function = c_kernels.build(pk.SOURCE, "float", flags).particle_step
    address, real, integer = ctypes.c_void_p, ctypes.c_double, ctypes.c_int64
    function.argtypes = [address] * 9 + [real] + [address] * 6 + [real] + [integer] * 6 + [real, integer]
    function.restype = ctypes.c_int
    return lambda x, v, u, x1, v1, substeps, h: function(
        x.data_ptr(), v.data_ptr(), u.data_ptr(), x1.data_ptr(), v1.data_ptr(), *model.pointers, n_of(x), model.particles, model.dim,
        u.shape[1], model.springs, substeps, h, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="rope3d")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
    parser.add_argument("--ghz", type=float, default=None)
    args = parser.parse_args()

    import torch

    import tphys.envs as E
    from tphys.kernels import particle_kernels as pk
    from tphys.particles import fused_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = args.num_envs
    env = E.make(args.env, num_envs=n, seed=0, dtype=torch.float32, validate=False)
    state = env.reset()
    actions = torch.rand(n, env.action_dim) * 2 - 1
    x, v = state["x"].contiguous(), state["v"].contiguous()
    u = env.handle_velocity(actions).contiguous()
    h = env.dt / env.substeps
    model = fused_step._plan(env.model, h).model
    if model.path == "general":
        sys.exit(f"{args.env}: the model takes the general path; this split is for the unrolled and band paths")
    flags = (*pk.FLAGS, f"-DLANES={pk.LANES['float']}")
    functions = {name: kernel(model, (*flags, *extra)) for name, extra in (("kernel", ()), ("no_math", (PROFILE_FLAG,)))}
    x1, v1 = torch.empty_like(x), torch.empty_like(x)

    def c_call(function, substeps, fresh=False):
        def run():
            out = (torch.empty_like(x), torch.empty_like(x)) if fresh else (x1, v1)
            function(x, v, u, *out, substeps, h)
        return run

    def env_step():
        env.physics_step(state, actions)

    cases = {"physics_step": env_step, "kernel": c_call(functions["kernel"], env.substeps),
             "fresh": c_call(functions["kernel"], env.substeps, fresh=True),
             "transposes": c_call(functions["kernel"], 0), "no_math": c_call(functions["no_math"], env.substeps)}
    best = {name: float("inf") for name in cases}
    with torch.no_grad():
        for fn in cases.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                start = time.thread_time()
                for _ in range(args.calls):
                    fn()
                best[name] = min(best[name], (time.thread_time() - start) / args.calls)
    ghz = args.ghz or cpu_ghz()
    lanes = 16  # floats in a 64-byte vector: the unit of work of both paths
    vectors = -(-n // lanes)
    print(f"{args.env}, N = {n}, {env.substeps} substeps, {model.particles} particles, {model.springs} springs, {model.path} path; "
          f"{machine()}; "
          f"1 thread; best of {args.repeats} x {args.calls} calls" + (f"; {ghz:.2f} GHz" if ghz else ""))
    print(f"env-steps/s: physics_step {n / best['physics_step']:,.0f}, C call {n / best['kernel']:,.0f}\n")
    print("| part | µs per call | share of physics_step | ns per env step | cycles per 16-env vector per substep |")
    print("|---|---:|---:|---:|---:|")
    for part, seconds in split(best).items():
        cycles = f"{seconds * ghz * 1e9 / (vectors * env.substeps):.0f}" if ghz and part not in ("physics_step",) else ""
        print(f"| {part} | {seconds * 1e6:.0f} | {100 * seconds / best['physics_step']:.0f} % | {seconds / n * 1e9:.1f} | {cycles} |")


if __name__ == "__main__":
    main()
