"""A/B of one rigid substep's forward+backward cost: Inductor options and the joint-space solve's backend.

    python benchmarks/substep_ab.py ant 16 --options '{"cpp_wrapper": true, "aggressive_fusion": true}'
    python benchmarks/substep_ab.py ant 16 --options '{"cpp_wrapper": true}' --solve torch
    python benchmarks/substep_ab.py humanoid 64 --eager --solve cpu      # eager, the C solve
    python benchmarks/substep_ab.py humanoid 64 --eager --solve torch    # eager, LAPACK

One process, 1 thread, float32: ``tphys.rigid.integrator.substep`` of ``tphys.envs.make(env)``'s model at N envs, 16
substeps from the env's reset state with fixed random actions, then the gradient of the final state's sum to the
initial q and the actions; after two unmeasured passes (compilation), the best of 5 pairs of passes on this process's
CPU clock, printed as ms per substep with the load. The figures in ``tphys/compiling.py`` and
``tphys/kernels/linalg.py`` (issue 21) came from this measurement, each pair run back to back in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's tphys first (see report.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env")
    parser.add_argument("num_envs", type=int)
    parser.add_argument("--options", default="{}", help="Inductor options (JSON) for torch.compile of the substep")
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--solve", default="auto", choices=("auto", "cpu", "torch"), help="spd_solve's backend")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    import tphys.envs as te
    import tphys.rigid.dynamics as dynamics
    from tphys.compiling import use_cache_dir
    from tphys.kernels import linalg
    from tphys.rigid.integrator import substep

    use_cache_dir()
    dynamics.spd_solve = lambda h, rhs: linalg.spd_solve(h, rhs, args.solve)
    env = te.make(args.env, num_envs=args.num_envs, validate=False)
    model, td = env.model, env.reset()
    q, qd = td["q"], td["qd"]
    actions = torch.rand(args.num_envs, model.num_actuators, generator=torch.Generator().manual_seed(0)) * 2 - 1
    h = env.dt / env.substeps
    one = lambda q, qd, u: substep(model, q, qd, u, h)  # noqa: E731
    fn = one if args.eager else torch.compile(one, dynamic=False, options=json.loads(args.options))

    def forward_backward() -> None:
        q0, u = q.clone().requires_grad_(), actions.clone().requires_grad_()
        a, b = q0, qd
        for _ in range(16):
            a, b = fn(a, b, u)
        torch.autograd.grad(a.sum() + b.sum(), (q0, u))

    t0 = time.perf_counter()
    forward_backward()
    warm = time.perf_counter() - t0
    forward_backward()
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        forward_backward()
        forward_backward()
        best = min(best, (time.process_time() - t0) / 32 * 1e3)
    mode = "eager" if args.eager else f"compiled {args.options}"
    print(f"{args.env} N={args.num_envs} {mode} solve={args.solve}: {best:.3f} ms per substep fwd+bwd (best of 5, process CPU), "
          f"warm-up {warm:.0f} s, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
