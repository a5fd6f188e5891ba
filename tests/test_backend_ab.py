"""benchmarks/backend_ab.py runs (a tiny A/B, no timing asserted): both backends of a rigid env print a rate and the load."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backend_ab.py"


def test_backend_ab_prints_both_backends():
    out = subprocess.run([sys.executable, str(SCRIPT), "cartpole_swingup", "2", "--against", "eager", "--rounds", "1", "--horizon", "2"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    lines = out.splitlines()
    assert any("C (backend=cpu):" in line and "env-steps/s" in line for line in lines), out
    assert any("torch eager:" in line and "env-steps/s" in line for line in lines), out
    assert lines[-1].startswith("load ")
