"""benchmarks/import_floor.py: the resident set after each import, measured in a fresh process."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import import_floor  # noqa: E402


def test_the_probe_reports_every_step_in_order_with_its_modules():
    rows = import_floor.measure(sys.executable, "cartpole_swingup", 2)
    steps = [row[0] for row in rows]
    assert steps[:5] == ["python", *import_floor.STEPS] and steps[5].startswith("make('cartpole_swingup'")
    rss = [row[1] for row in rows]
    assert rss[1] > rss[0] + 50  # torch alone is far above a bare interpreter
    assert all(b >= a - 5 for a, b in zip(rss, rss[1:]))  # imports only add (a few MB of slack for the allocator)
    assert rows[1][2] == [] or rows[1][2] == ["triton"]  # torch itself imports no dynamo, no sympy
    assert "torch._dynamo" in rows[2][2] and "sympy" in rows[2][2]  # tensordict's allow_in_graph decorators do


def test_the_table_gives_increments():
    lines = import_floor.table([("python", 10.0, []), ("torch", 230.0, []), ("tensordict", 316.0, ["sympy"])])
    assert lines[2] == "| python | 10 |  | - |"
    assert lines[3] == "| torch | 230 | 220 | - |"
    assert lines[4] == "| tensordict | 316 | 86 | sympy |"
