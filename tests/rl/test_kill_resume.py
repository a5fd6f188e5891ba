"""Kill and resume through the recipes: a run killed with SIGKILL at a random moment after its first checkpoint and
resumed with ``resume=RUN_DIR`` alone ends bitwise equal (weights, eval.json returns) to the uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["env=pendulum2d", "num_envs=4", "eval.episodes=4", "eval.num_envs=4", "progress=false", "video.enabled=false"]
CONFIGS = {  # float32 (the default dtype): the casts a resume must not round happen there
    "sapo": [*COMMON, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=576"],
    "ppo": [*COMMON, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=1024"],
    "sac": [*COMMON, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=768", "algo.warmup_steps=64",
            "algo.batch_size=32", "algo.updates_per_batch=2"],
    "pods": [*COMMON, "+env.options.horizon=12", "eval.every=1", "checkpoint_every=1", "total_steps=288", "algo.cg_iterations=3",
             "algo.regression_steps=5"],
}


def start(recipe, overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def wait_for_checkpoint(proc, run_dir: Path) -> float:
    """Wait until the run's first checkpoint exists; returns that moment (time.monotonic)."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return time.monotonic()


def reference_run(recipe, overrides, run_dir: Path) -> float:
    """The uninterrupted run; returns how long it ran after its first checkpoint (s): the window a kill falls in."""
    proc = start(recipe, [*overrides, f"hydra.run.dir={run_dir}"])
    first = wait_for_checkpoint(proc, run_dir)
    finish(proc)
    return time.monotonic() - first


def kill_after_first_checkpoint(recipe, overrides, run_dir: Path, rng: random.Random, window: float) -> float:
    """Start the run, wait for its first checkpoint, SIGKILL it a random moment later, within the first 80 % of
    ``window`` (the reference run's time after its first checkpoint: a fixed range outlasted the run on a fast or idle
    machine, and the kill came after the end); returns the delay (s)."""
    proc = start(recipe, [*overrides, f"hydra.run.dir={run_dir}"])
    wait_for_checkpoint(proc, run_dir)
    delay = rng.uniform(0.0, 0.8 * window)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (rc {proc.returncode}); make it longer"
    return delay


def assert_same_run(a: Path, b: Path) -> None:
    wa = torch.load(a / "checkpoints" / "last.pt", weights_only=False)
    wb = torch.load(b / "checkpoints" / "last.pt", weights_only=False)
    assert wa["counters"]["env_steps"] == wb["counters"]["env_steps"]
    assert wa["loss"].keys() == wb["loss"].keys()
    for key, value in wa["loss"].items():
        assert value.dtype == wb["loss"][key].dtype and torch.equal(value, wb["loss"][key]), key
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    for mode in ("deterministic", "stochastic", "random_policy"):
        assert (ea[mode] is None) == (eb[mode] is None)
        if ea[mode] is not None:
            assert ea[mode]["returns"] == eb[mode]["returns"], mode
    steps_a = [json.loads(line)["step"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    steps_b = [json.loads(line)["step"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps_a == steps_b  # the killed run's records after its checkpoint were dropped and re-logged once


def kill_and_resume(recipe, tmp_path, seed=0):
    overrides = CONFIGS[recipe]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    window = reference_run(recipe, overrides, straight)
    delay = kill_after_first_checkpoint(recipe, overrides, killed, random.Random(seed), window)
    config_before = (killed / "config.yaml").read_text()
    out = finish(start(recipe, [f"resume={killed}"]))
    assert "resumed from" in out, out
    assert (killed / "config.yaml").read_text() == config_before
    assert_same_run(straight, killed)
    return delay


def test_sapo_killed_and_resumed_equals_the_uninterrupted_run(tmp_path):
    kill_and_resume("sapo", tmp_path, seed=int(time.time()))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pods", "ppo", "sac"])
def test_killed_and_resumed_equals_the_uninterrupted_run(recipe, tmp_path):
    kill_and_resume(recipe, tmp_path, seed=int(time.time()))
