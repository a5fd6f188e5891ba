"""Data-parallel training (``rl.distributed``, ``torchrun``): a 2-rank run computes what a 1-rank run computes, a rank's
failure stops the job with its message, and a killed 2-rank run resumes exactly.

Ranks run on ``gloo`` with one thread each (2-core machine)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rl import distributed
from rl.modules.normalizer import ObservationNormalizer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT / "tests")}
SMALL = ["env=pendulum2d", "dtype=float64", "num_envs=4", "eval.episodes=4", "eval.num_envs=4", "progress=false",
         "video.enabled=false"]
CONFIGS = {
    "sapo": [*SMALL, "algo.horizon=8", "eval.every=2", "checkpoint_every=2", "total_steps=96"],
    "pods": [*SMALL, "+env.options.horizon=12", "eval.every=1", "checkpoint_every=1", "total_steps=144",
             "algo.cg_iterations=3", "algo.regression_steps=5"],
    "ppo": [*SMALL, "algo.horizon=8", "eval.every=2", "checkpoint_every=2", "total_steps=256", "algo.minibatches=4"],
    "shac": [*SMALL, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=160"],
    "apg": [*SMALL, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=160"],
    "trajopt": [*SMALL, "algo.horizon=8", "eval.every=3", "checkpoint_every=2", "total_steps=160"],
}


def command(recipe: str, ranks: int, overrides: list[str], run_dir: Path) -> list[str]:
    script = str(ROOT / "recipes" / f"{recipe}.py")
    args = [*overrides, f"hydra.run.dir={run_dir}"]
    if ranks == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", script, *args]


def run(recipe: str, ranks: int, overrides: list[str], run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(command(recipe, ranks, overrides, run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    return {k: v for k, v in state["loss"].items() if v.is_floating_point()}


def assert_close_runs(one: Path, two: Path, rtol: float = 1e-9) -> None:
    a, b = parameters(one), parameters(two)
    assert a.keys() == b.keys() and a
    for key in a:
        scale = a[key].abs().max().clamp_min(1e-300)
        assert ((a[key] - b[key]).abs().max() / scale).item() <= rtol, key
    ea, eb = json.loads((one / "eval.json").read_text()), json.loads((two / "eval.json").read_text())
    assert ea["env_steps"] == eb["env_steps"]
    # the same initial states and actions, split across ranks; equal to rounding (an implicit integrator's Newton
    # iterations stop on the largest residual of the envs a process holds: bdf2 in the PODS recipe)
    torch.testing.assert_close(torch.tensor(ea["random_policy"]["returns"]), torch.tensor(eb["random_policy"]["returns"]),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(ea["deterministic"]["returns"]), torch.tensor(eb["deterministic"]["returns"]),
                               rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------------- the collectives, in two gloo processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out = {}
        # gradients summed; None on one rank counts as zero; None on both stays None
        a, b, c = (torch.nn.Parameter(torch.zeros(3, dtype=torch.float32)) for _ in range(3))
        a.grad = torch.full((3,), float(rank + 1))
        if rank == 0:
            b.grad = torch.ones(3)
        distributed.reduce_gradients([a, b, c])
        out["grads"] = (a.grad.tolist(), b.grad.tolist(), c.grad, a.grad.dtype)
        # normalizer statistics of the global batch
        batch = torch.arange(12, dtype=torch.float64).reshape(6, 2) ** 1.5
        norm = ObservationNormalizer(2)
        norm.update(batch[3 * rank:3 * rank + 3])
        out["normalizer"] = (norm.mean.clone(), norm.var.clone(), norm.count.item())
        # exploration noise: this rank's rows of a draw for all envs
        torch.manual_seed(5)
        shard = distributed.shard(4)
        with distributed.sharded_noise(shard):
            out["noise"] = distributed.randn_like(torch.zeros(2, 3, dtype=torch.float64))
        out["shard"] = (shard.start, shard.stop)
        # one rank's failure is every rank's, with its message
        out["failures"] = distributed.failures("boom" if rank == 1 else None)
        out["no_failures"] = distributed.failures(None)
        out["gather"] = distributed.all_gather(torch.tensor([rank, 10 + rank]).reshape(1, 2)).tolist()
        # parameters that differ across ranks are found
        module = torch.nn.Linear(2, 2).double()
        torch.nn.init.constant_(module.weight, 1.0 + rank * 1e-12)
        try:
            distributed.check_in_sync(module, "test")
            out["sync"] = "passed"
        except RuntimeError as err:
            out["sync"] = str(err)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_collectives_of_two_gloo_ranks():
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(_free_port(), results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    for r in (r0, r1):
        a, b, c, dtype = r["grads"]
        assert a == [3.0, 3.0, 3.0] and b == [1.0, 1.0, 1.0] and c is None and dtype == torch.float32
        assert r["failures"] == [(1, "boom")] and r["no_failures"] == []
        assert r["gather"] == [[0, 10], [1, 11]]
        assert "parameters differ across ranks" in r["sync"]
    batch = torch.arange(12, dtype=torch.float64).reshape(6, 2) ** 1.5
    for r in (r0, r1):
        mean, var, count = r["normalizer"]
        torch.testing.assert_close(mean, batch.mean(0), rtol=1e-14, atol=0)
        torch.testing.assert_close(var, batch.var(0, unbiased=False), rtol=1e-12, atol=0)
        assert count == 6
    torch.manual_seed(5)
    full = torch.randn(4, 3, dtype=torch.float64)
    assert r0["shard"] == (0, 2) and r1["shard"] == (2, 4)
    assert torch.equal(r0["noise"], full[:2]) and torch.equal(r1["noise"], full[2:])


def test_one_process_is_the_identity():
    assert distributed.world_size() == 1 and distributed.is_main() and not distributed.is_distributed()
    assert distributed.shard(6) == distributed.EnvShard(0, 6, 6)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 2.0])
    distributed.reduce_gradients([p])
    assert p.grad.tolist() == [1.0, 2.0]
    assert distributed.failures("x") == [(0, "x")] and distributed.failures(None) == []
    torch.manual_seed(0)
    expected = torch.randn(2, 3)
    torch.manual_seed(0)
    with distributed.sharded_noise(distributed.EnvShard(0, 2, 2)):
        assert torch.equal(distributed.randn_like(torch.zeros(2, 3)), expected)


def test_rows_of_a_global_minibatch_this_rank_holds():
    rows = torch.tensor([7, 0, 3, 12, 4, 5])
    assert distributed.local_rows(rows, 4, 8).tolist() == [3, 0, 1]
    assert distributed.EnvShard(2, 4, 8).rows(3) == (6, 12)


# ---------------------------------------------------------------------- recipes at 1 and 2 ranks
def test_two_rank_sapo_computes_what_one_rank_computes(tmp_path):
    run("sapo", 1, CONFIGS["sapo"], tmp_path / "one")
    run("sapo", 2, CONFIGS["sapo"], tmp_path / "two")
    assert_close_runs(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / "checkpoints").with_name("rank1").exists()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pods", "ppo", "shac", "apg", "trajopt"])
def test_two_rank_run_computes_what_one_rank_computes(recipe, tmp_path):
    run(recipe, 1, CONFIGS[recipe], tmp_path / "one")
    run(recipe, 2, CONFIGS[recipe], tmp_path / "two")
    assert_close_runs(tmp_path / "one", tmp_path / "two")


def test_a_count_that_does_not_split_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard(6) == distributed.EnvShard(3, 6, 6)
    with pytest.raises(ValueError, match="eval.num_envs=3 does not split evenly across 2 ranks; use a multiple of 2"):
        distributed.shard(3, "eval.num_envs")


@pytest.mark.slow
def test_num_envs_that_does_not_split_is_refused_naming_the_key(tmp_path):
    out = subprocess.run(command("sapo", 2, [*CONFIGS["sapo"], "num_envs=3", "eval.num_envs=3"], tmp_path / "x"), cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "num_envs=3 does not split evenly across 2 ranks" in out.stderr


# ---------------------------------------------------------------------- failures stop the whole job
@pytest.mark.slow
@pytest.mark.parametrize("scenario, message", [
    ("raise", "ValueError: injected fault on rank 1"),
    ("nan", "rank 1: simulator: pendulum2d: non-finite state after the step (NaN/inf) in env indices [2, 3]"),
    ("die", "Signal 9 (SIGKILL) received by PID"),
])
def test_a_failing_rank_stops_the_two_rank_job_with_its_message(scenario, message, tmp_path):
    worker = ROOT / "tests" / "rl" / "distributed_worker.py"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
                             scenario, str(tmp_path / "run")], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert message in out, out[-4000:]
    fault = float((tmp_path / "run" / "fault_time").read_text())
    assert time.time() - fault < 30, f"the job took {time.time() - fault:.1f} s to stop after the fault"


# ---------------------------------------------------------------------- kill and resume at 2 ranks
def started(overrides: list[str], run_dir: Path) -> tuple[subprocess.Popen, float]:
    """A 2-rank SAPO run started and waited on until its first checkpoint; (the launcher, that moment)."""
    proc = subprocess.Popen(command("sapo", 2, overrides, run_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, time.monotonic()


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL of the launcher and both ranks at a random moment within 80 % of the reference run's time after its
    first checkpoint (a fixed range could outlast the run on a fast machine)."""
    overrides = [*CONFIGS["sapo"], "total_steps=480", "dtype=float32"]
    reference, first = started(overrides, tmp_path / "straight")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-4000:]
    window = time.monotonic() - first
    killed = tmp_path / "killed"
    proc, _ = started(overrides, killed)
    time.sleep(random.Random(int(time.time())).uniform(0.0, 0.8 * window))
    distributed.kill_job(proc.pid)  # the launcher and both ranks at once
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill; make it longer"
    resumed = subprocess.run(command("sapo", 2, [f"resume={killed}"], killed), cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = parameters(tmp_path / "straight"), parameters(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (tmp_path / "straight", killed))
    assert ea["deterministic"]["returns"] == eb["deterministic"]["returns"]


@pytest.mark.slow
def test_an_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    """``torchrun --max-restarts=1``: rank 1 raises after the checkpoint of iteration 4 in the first attempt; the second
    attempt continues the same run directory from that checkpoint and ends where the run without a fault ends."""
    worker = ROOT / "tests" / "rl" / "distributed_worker.py"
    for scenario, restarts in (("once", 1), ("none", 0)):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              f"--max-restarts={restarts}", str(worker), scenario, str(tmp_path / scenario)], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-4000:]
        if scenario == "once":
            assert "injected fault on rank 1, first attempt" in out.stderr
            assert "resumed from" in out.stdout
    a, b = parameters(tmp_path / "once"), parameters(tmp_path / "none")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path):
    """A checkpoint holds the global envs' state, so a 2-rank run continued by one process (``resume=`` with a longer
    ``total_steps``; constant learning rates, which do not depend on the run's length) ends where a 1-rank run of that
    length ends (to reduction order)."""
    overrides = [*(o for o in CONFIGS["sapo"] if not o.startswith("total_steps=")), "algo.lr_schedule=constant"]
    run("sapo", 1, [*overrides, "total_steps=224"], tmp_path / "one")
    run("sapo", 2, [*overrides, "total_steps=128"], tmp_path / "two")
    resumed = subprocess.run(command("sapo", 1, [f"resume={tmp_path / 'two'}", "total_steps=224"], tmp_path / "two"), cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_close_runs(tmp_path / "one", tmp_path / "two")
