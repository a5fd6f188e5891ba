"""The benchmark scripts run end to end (slow: left out of the default run; ``pytest -m slow``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_learning_benchmark_quick_writes_table_and_figure(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick", "--algos", "sapo", "apg", "--envs", "pendulum2d",
           "--runs", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- learning -->" in text and "| sapo |" in text and "| random |" in text
    assert (tmp_path / "learning.png").is_file()
    assert "through hydra/launcher=local" in proc.stdout and "hydra/launcher=local, 2 runs at a time" in text  # Hydra multirun
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("reusing") == 4 and "through hydra/launcher" not in again.stdout


@pytest.mark.slow
def test_pods_table_quick_writes_reward_time_and_metric_tables(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pods_table.py"), "--quick", "--algos", "pods1", "apg", "--envs", "pendulum2d",
           "--goals", "stop", "--jobs", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- pods-table -->" in text and "| pendulum2d | stop |" in text and "failed" not in text
    assert "| pendulum2d | stop | pods1 |" in text  # the metrics row


@pytest.mark.slow
def test_pods_figure_smoke_writes_figure_and_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pods_figure.py"), "--iterations", "1", "--seeds", "1", "--num-envs", "4",
           "--cg-iterations", "2", "--horizon", "10", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "<!-- pods-figure -->" in out.read_text() and "| PODS 2nd order |" in out.read_text()
    assert (tmp_path / "pods_vs_bptt.png").is_file()


def test_transfer_kernels_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "transfer_kernels.py"), "--sizes", "1", "--seconds", "0.05", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- transfer-kernels -->" in text and "| 1 | p2g | fwd+bwd | torch |" in text and "| 1 | g2p | fwd | torch |" in text


def test_recipe_run_publishes_eval_against_random_and_reuses_a_finished_run(tmp_path):
    out, run = tmp_path / "RESULTS.md", tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "recipe_run.py"), "--section", "tiny", "--out", str(out), "sapo", "env=pendulum2d",
           "num_envs=2", "total_steps=128", "algo.horizon=8", "eval.episodes=2", "eval.num_envs=2", "eval.every=0",
           "video.enabled=false", "progress=false", f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- tiny -->" in text and "| trained, deterministic |" in text and "| uniform random |" in text and "Welch's t" in text
    assert (tmp_path / "tiny.png").is_file()
    stamp = (run / "eval.json").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert again.returncode == 0 and "reusing" in again.stdout
    assert (run / "eval.json").stat().st_mtime_ns == stamp
