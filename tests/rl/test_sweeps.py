"""Sweeps: ``recipes/<algo>.py -m`` runs its jobs through Hydra's joblib launcher, every job in its own run directory;
the learning benchmarks launch their runs through it, reusing finished runs and resuming interrupted ones."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rl.cli import compose, recipe_main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import learning  # noqa: E402

TINY = ["env=pendulum2d", "env.goal=stop", "num_envs=2", "total_steps=32", "algo.horizon=8", "+env.options.horizon=16",
        "eval.episodes=2", "eval.num_envs=2", "eval.every=0", "checkpoint_every=0", "video.enabled=false", "progress=false"]


def test_a_sweep_runs_two_seeds_in_parallel_through_joblib_each_in_its_own_run_directory(tmp_path):
    # runs long enough (30 windows) that the two workers' runs overlap despite the workers' start-up jitter: with 2
    # windows a run took less time than one worker's imports took longer than the other's (seen under load 4)
    cmd = [sys.executable, str(ROOT / "recipes" / "sapo.py"), "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *[o for o in TINY if not o.startswith("total_steps=")], "total_steps=480", f"hydra.sweep.dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # joblib sizes the workers' threads itself
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, "MPLBACKEND": "Agg"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = [tmp_path / "sapo" / "pendulum2d-stop" / f"seed{seed}-job{seed}" for seed in (0, 1)]
    jobs = []
    for seed, run in enumerate(runs):
        assert (run / "eval.json").is_file() and (run / "config.yaml").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        assert yaml.safe_load((run / "config.yaml").read_text())["total_steps"] == 480
        job = json.loads((run / "recipe.json").read_text())["job"]
        assert job["launcher"] == "joblib" and job["num"] == seed and job["OMP_NUM_THREADS"] == "1"
        jobs.append((job["pid"], job["started"], (run / "eval.json").stat().st_mtime))
    (pid0, start0, end0), (pid1, start1, end1) = jobs
    assert pid0 != pid1 and os.getpid() not in (pid0, pid1)  # two worker processes ...
    assert start0 < end1 and start1 < end0  # ... whose runs overlapped in time


def test_the_default_launcher_is_joblib_sized_for_this_machine_and_slurm_is_ready():
    local = compose("sapo", [], hydra=True).hydra
    assert local.launcher._target_.endswith("JoblibLauncher") and local.launcher.n_jobs == 2
    assert OmegaConf.to_container(local.sweep)["subdir"] == "${algo.name}/${env.name}-${env.goal}/seed${seed}-job${hydra.job.num}"
    slurm = compose("sapo", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"], hydra=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.timeout_min > 0 and launcher.cpus_per_task == 1 and launcher.mem_gb > 0


def test_a_bad_job_of_a_sweep_is_refused_before_any_job_runs(tmp_path, capsys):
    def never(cfg, run_dir):
        raise AssertionError("a job started")

    with pytest.raises(SystemExit) as exit_info:
        recipe_main("sapo", never, argv=["-m", "seed=0,abc", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: job #1 of the sweep (seed=abc): seed must be an int, got 'abc' (string)"
    assert not (tmp_path / "sweep").exists()


def test_a_key_that_an_experiment_config_adds_is_refused_like_an_unknown_override(tmp_path, capsys):
    """``+experiment=NAME`` merges a whole config: a misspelt key in it must not be added silently."""
    (tmp_path / "jobs" / "experiment").mkdir(parents=True)
    (tmp_path / "jobs" / "experiment" / "typo.yaml").write_text("# @package _global_\nseed: 3\nalgo:\n  horizn: 3\n")

    def never(cfg, run_dir):
        raise AssertionError("a job started")

    with pytest.raises(SystemExit) as exit_info:
        recipe_main("sapo", never, argv=["-m", "+experiment=typo", f"hydra.searchpath=[file://{tmp_path / 'jobs'}]",
                                         f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: job #0 of the sweep (+experiment=typo): unknown config key 'algo.horizn'"), err
    assert not (tmp_path / "sweep").exists()


def bench_args(tmp_path) -> Namespace:
    return Namespace(runs=tmp_path / "runs", goal="stop", steps={"pendulum2d": 4096}, num_envs=64, curve_points=2, eval_episodes=8,
                     fresh=False, jobs=2, launcher="local", launcher_overrides=[], variants={})


def test_the_benchmark_reuses_finished_runs_resumes_interrupted_ones_and_launches_the_rest_as_one_sweep(tmp_path, monkeypatch):
    args = bench_args(tmp_path)
    runs = [learning.run_dir(args, "sapo", "pendulum2d", seed) for seed in range(4)]
    old = {"env_steps": 4096, "deterministic": {"mean": -1.0}, "train_wall_time_s": 1.0}
    runs[0].mkdir(parents=True)
    (runs[0] / "eval.json").write_text(json.dumps(old))  # finished: reused
    (runs[1] / "checkpoints").mkdir(parents=True)
    (runs[1] / "checkpoints" / "last.pt").write_bytes(b"")  # interrupted at the same budget: resumed
    (runs[1] / "config.yaml").write_text("total_steps: 4096\nseed: 1\n")
    runs[3].mkdir(parents=True)
    (runs[3] / "stale.txt").write_text("")  # never checkpointed: started afresh in an emptied directory
    launched = []

    def sweep(args, recipe, names, root):
        launched.append((recipe, names))
        for run in runs[1:]:
            run.mkdir(parents=True, exist_ok=True)
            (run / "eval.json").write_text(json.dumps({**old, "deterministic": {"mean": 2.0}}))
        return 0

    monkeypatch.setattr(learning, "sweep", sweep)
    summaries = learning.launch_all(args, [("sapo", "pendulum2d", seed) for seed in range(4)])
    assert [s["deterministic"]["mean"] for s in summaries] == [-1.0, 2.0, 2.0, 2.0]
    names = [f"pendulum2d-stop-sapo-seed{seed}" for seed in (1, 2, 3)]
    assert launched == [("sapo", names)]  # one sweep of the recipe, without the finished run
    assert not (runs[3] / "stale.txt").exists()
    jobs = tmp_path / "runs" / ".jobs"
    assert yaml.safe_load((jobs / "experiment" / f"{names[0]}.yaml").read_text())["resume"] == str(runs[1].resolve())
    assert "resume" not in yaml.safe_load((jobs / "experiment" / f"{names[1]}.yaml").read_text())
    # a job is the recipe's config with the run's overrides, in the run's own directory
    cfg = compose("sapo", [f"+experiment={names[1]}", f"hydra.searchpath=[file://{jobs}]"], hydra=True)
    assert (cfg.env.name, cfg.env.goal, cfg.seed, cfg.total_steps, cfg.threads) == ("pendulum2d", "stop", 2, 4096, 1)
    assert cfg.hydra.sweep.subdir == "pendulum2d-stop/sapo/seed2"
    # all finished now: nothing is launched again
    launched.clear()
    assert learning.launch_all(args, [("sapo", "pendulum2d", seed) for seed in range(4)])[3]["deterministic"]["mean"] == 2.0
    assert launched == []
