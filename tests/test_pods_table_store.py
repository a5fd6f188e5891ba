"""benchmarks/pods_table.py's summary store: a stored summary with the requested budget fills its cell without a
launch, one of another budget is relaunched (and overwritten), and a cell with none reads "not run". The launch
function is monkeypatched: nothing trains."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pods_table  # noqa: E402


def fake_eval(algo, env, seed, goal, value):
    """An eval.json as ``rl.trainers.outputs.finish_run`` writes it (per-episode returns included)."""
    result = {"mean": value, "std": 1.0, "ci95": 0.5, "episodes": 8, "deterministic": True, "returns": [value] * 8}
    return {"algo": algo, "env": env, "goal": goal, "seed": seed, "env_steps": 9600, "train_wall_time_s": 12.5,
            "deterministic": result, "stochastic": None, "random_policy": {**result, "mean": -500.0},
            "metrics": {"deterministic": {m: {"mean": 0.1, "std": 0.0} for m, _, _ in pods_table.METRICS}},
            "commit": "abc1234", "machine": "test", "torch": "x"}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    launched = []

    def launch_all(args, jobs):
        launched.extend(jobs)
        return [fake_eval(a, e, s, g, -10.0 * (1 + len(launched))) for a, e, s, g in jobs]

    monkeypatch.setattr(pods_table, "launch_all", launch_all)
    args = argparse.Namespace(algos=["gps", "apg"], envs=["pendulum2d"], goals=["stop"], seeds=1, eval_episodes=8, num_envs=64,
                              steps={"pendulum2d": 9600}, algo_steps={}, runs=tmp_path / "runs", store=tmp_path / "store",
                              fresh=False, no_launch=False, jobs=1, launcher="local", goal="stop", previous=None)
    return args, launched


def test_stored_summary_is_reused_when_the_budget_matches_and_relaunched_when_not(setup):
    args, launched = setup
    job = [("gps", "pendulum2d", 0, "stop")]
    first = pods_table.gather(args, job)[("gps", "pendulum2d", "stop")]
    path = pods_table.summary_path(args.store, "gps", "pendulum2d", "stop", 0)
    assert len(launched) == 1 and path.is_file() and "returns" not in path.read_text()
    assert first[0]["budget"] == {"env_steps": 9600, "eval_episodes": 8, "num_envs": 64}

    again = pods_table.gather(args, job)[("gps", "pendulum2d", "stop")]  # same budget: read back, no launch
    assert len(launched) == 1 and again[0]["deterministic"]["mean"] == first[0]["deterministic"]["mean"]

    args.algo_steps = {("gps", "pendulum2d"): 4800}  # another budget for the gps column: relaunched, summary replaced
    other = pods_table.gather(args, job)[("gps", "pendulum2d", "stop")]
    assert len(launched) == 2 and other[0]["budget"]["env_steps"] == 4800
    assert other[0]["deterministic"]["mean"] != first[0]["deterministic"]["mean"]


def test_a_cell_without_a_summary_renders_not_run(setup):
    args, launched = setup
    pods_table.gather(args, [("gps", "pendulum2d", 0, "stop")])
    args.no_launch = True
    results = pods_table.gather(args, [(a, "pendulum2d", 0, "stop") for a in args.algos])
    assert len(launched) == 1  # --no-launch: apg is not launched
    reward = next(line for line in pods_table.tables(args, results) if line.startswith("| pendulum2d | stop |"))
    assert reward == "| pendulum2d | stop | -20.0 | not run | -500.0 |"
    cols, empty = pods_table.columns(args, results)
    assert empty == ["apg"] and any(line.startswith("| gps | 1/1 | 9,600 |") and "abc1234" in line for line in cols)
    assert "| apg | 0/1 | - | - | - | not run |" in cols
