"""A rank of a small data-parallel SAPO run that fails on purpose (``torchrun ... distributed_worker.py SCENARIO RUN_DIR``).

Scenarios (rank 1 only, at its third env step; every other rank runs on):
    raise   rank 1's simulator raises ValueError("injected fault on rank 1") (a bad input, a bug)
    nan     rank 1's simulator returns NaN (with on_nonfinite=stop every rank stops, naming rank 1)
    die     rank 1 is killed with SIGKILL (an out-of-memory kill, a lost node)
    once    rank 1 raises at its 22nd env step (after the checkpoint of iteration 4), in the first attempt only: with
            ``torchrun --max-restarts=1`` the second attempt resumes from that checkpoint
    none    no fault (the reference run of ``once``)
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from rl import distributed
from rl.cli import compose
from rl.experiment import load_recipe, run_experiment

OVERRIDES = ["env=pendulum2d", "num_envs=4", "eval.num_envs=4", "eval.episodes=4", "progress=false", "video.enabled=false",
             "algo.horizon=4", "total_steps=4000", "eval.every=0", "checkpoint_every=1000", "logger=none"]
RESTART = [*OVERRIDES[:-4], "total_steps=128", "eval.every=0", "checkpoint_every=2", "logger=none"]  # 8 iterations


def sabotage(env, scenario: str, run_dir: str) -> None:
    """Make ``env.physics_step`` fail on rank 1 from its third call on (the moment written to ``run_dir/fault_time``)."""
    step, calls = env.physics_step, [0]

    def failing(state, action):
        calls[0] += 1
        if scenario == "none" or distributed.rank() != 1 or calls[0] < (22 if scenario == "once" else 3):
            return step(state, action)
        if scenario == "once":
            if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
                return step(state, action)
            raise ValueError("injected fault on rank 1, first attempt")
        (Path(run_dir) / "fault_time").write_text(repr(time.time()))
        if scenario == "raise":
            raise ValueError("injected fault on rank 1")
        if scenario == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        out = step(state, action)
        return out.set("x", torch.full_like(out.get("x"), float("nan")))

    env.physics_step = failing


def main(scenario: str, run_dir: str) -> None:
    recipe = load_recipe("sapo")

    def make_trainer(cfg, env, **outputs):
        sabotage(env, scenario, run_dir)
        return recipe.make_trainer(cfg, env, **outputs)

    run_experiment(compose("sapo", RESTART if scenario in ("once", "none") else OVERRIDES), run_dir, make_trainer)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
