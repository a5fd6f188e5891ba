"""benchmarks/threads_ab.py runs (a tiny A/B, no timing asserted): both thread counts of a rigid and the FEM env print a rate,
their ratio, and the load."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "threads_ab.py"


def test_threads_ab_prints_both_counts():
    out = subprocess.run([sys.executable, str(SCRIPT), "hopper:3", "soft_jumper:17", "--rounds", "1", "--horizon", "1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    lines = out.splitlines()
    for name, n in (("hopper", 3), ("soft_jumper", 17)):
        for threads in (1, 2):
            assert any(line.startswith(f"{name} N={n} threads={threads}:") and "env-steps/s" in line for line in lines), out
        assert any(line.startswith(f"{name} N={n} threads=2 / threads=1:") for line in lines), out
    assert lines[0].startswith("load before ") and lines[-1].startswith("load after ")
