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
