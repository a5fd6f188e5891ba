"""benchmarks/training_overhead.py's stored rows (no timing): a cell's row replaces only its own, read again before each
write so two runs on different cells keep both, and --no-launch tables the stored rows as they are."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import training_overhead  # noqa: E402


def row(env: str, ratio: float, **extra) -> dict:
    return dict(recipe="sapo", env=env, num_envs=4, horizon=8, compiled=False, env_steps_per_s=100.0,
                train_steps_per_s=100.0 * ratio, forward_fraction=0.3, critic_fraction=0.5, rest_fraction=0.2,
                env_warmup_s=None, train_warmup_s=1.0, seconds=5.0, load=[2.0, 2.0, 2.0], clock="thread CPU time", **extra)


def test_a_row_replaces_only_its_cell_and_survives_another_runs_write(tmp_path):
    path = tmp_path / "rows.json"
    training_overhead.store_row(path, row("rope", 0.4))
    first_run_view = training_overhead.stored_rows(path)  # a long run read the file here ...
    training_overhead.store_row(path, row("ant", 0.7))  # ... another run stored its cell meanwhile ...
    training_overhead.store_row(path, row("rope", 0.5))  # ... and the first run's cell ends: both survive
    rows = training_overhead.stored_rows(path)
    assert set(first_run_view) == {("sapo", "rope", ())} and set(rows) == {("sapo", "rope", ()), ("sapo", "ant", ())}
    assert rows["sapo", "rope", ()]["train_steps_per_s"] == 50.0 and len(json.loads(path.read_text())) == 2


def test_the_serial_and_the_overlapped_rows_of_a_cell_are_kept_apart(tmp_path):
    path = tmp_path / "rows.json"
    serial = [training_overhead.SERIAL]
    training_overhead.store_row(path, row("rope", 0.4, overrides=serial, overlap_critic=False))
    training_overhead.store_row(path, row("rope", 0.8, overrides=[], overlap_critic=True))
    rows = training_overhead.stored_rows(path)
    assert rows["sapo", "rope", tuple(serial)]["train_steps_per_s"] == 40.0
    assert rows["sapo", "rope", ()]["train_steps_per_s"] == 80.0
    lines = training_overhead.table([rows["sapo", "rope", ()], rows["sapo", "rope", tuple(serial)]])
    assert "| yes |" in lines[2] and "| no |" in lines[3]


def test_the_table_names_each_rows_clock_and_marks_a_missing_cell():
    lines = training_overhead.table([row("rope", 0.5), {**row("ant", 0.75), "clock": "wall time"},
                                     {"recipe": "sapo", "env": "rolling_flat", "error": "not measured (no stored row)"}])
    assert "| 0.50 |" in lines[2] and "thread CPU time" in lines[2] and "none (measured from the first window)" in lines[2]
    assert "wall time" in lines[3] and "| 0.75 |" in lines[3]
    assert "failed: not measured" in lines[4]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_a_row_names_the_commit_it_was_measured_at():
    """Rows of one table come from different runs (a cell is reused until measured again): each names its commit."""
    lines = training_overhead.table([row("rope", 0.5, commit="abc1234"), row("ant", 0.8)])
    assert lines[2].endswith(", commit abc1234 |")
    assert "commit" not in lines[3]  # a row stored before rows had a commit says nothing rather than a wrong one
