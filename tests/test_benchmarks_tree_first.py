"""Benchmark scripts import this tree's tphys and rl, not whatever checkout a venv's editable install points to: a
measurement run from a clean worktree is stamped with that worktree's commit, so it must run that worktree's code."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# what puts the tree first, seen before a script's first tphys / rl import: report.py's import-time insertion, the
# script's own, or a sibling module that does one of those
TREE_FIRST = re.compile(r"^(from report import|import report\b"
                        r"|sys\.path\.insert\(0, str\((REPO|Path\(__file__\)\.resolve\(\)\.parents\[1\])\)\)"
                        r"|from (vs_rewarped|training_overhead|backend_ab) import)", re.M)
OURS = re.compile(r"^\s*(import|from) (tphys|rl)(\.|\s|$)", re.M)


def test_importing_report_puts_the_tree_first():
    code = f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import report; print(sys.path[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(REPO)


def test_every_script_puts_the_tree_first_before_importing_tphys_or_rl():
    late = []
    for script in sorted(BENCHMARKS.glob("*.py")):
        text = script.read_text()
        text = re.sub(r'(?s)""".*?"""', lambda m: "\n" * m.group(0).count("\n"), text)  # strings (a probe's code) are not imports
        first = OURS.search(text)
        if first is None:
            continue
        if not TREE_FIRST.search(text[:first.start()]):
            late.append(script.name)
    assert late == []
