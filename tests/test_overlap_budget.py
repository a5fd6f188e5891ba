"""benchmarks/overlap_budget.py's counting (no timing): the critic's multiply-adds a window, against torch's own count."""

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import overlap_budget  # noqa: E402

from rl.modules import linear  # noqa: E402
from rl.modules.critic import ValueEnsemble  # noqa: E402


def test_critic_multiply_adds_match_torchs_flop_count_of_the_fit_products():
    obs_dim, hidden, critics, rows, minibatches, iterations = 7, [12, 5], 2, 40, 4, 3
    critic = ValueEnsemble(obs_dim, hidden, num_critics=critics)
    inputs, targets = torch.randn(rows, obs_dim), torch.randn(rows)
    per = rows // minibatches
    previous = linear.set_backend("torch")  # F.linear: products FlopCounterMode knows
    try:
        with FlopCounterMode(display=False) as counter:
            for _ in range(iterations):
                for start in range(0, rows, per):
                    values = critic.values(inputs[start:start + per])
                    (values - targets[start:start + per, None]).square().mean().backward()
    finally:
        linear.set_backend(previous)
    expected = overlap_budget.critic_multiply_adds(obs_dim, hidden, critics, rows, iterations * minibatches, minibatches)
    assert 2 * expected == counter.get_total_flops()


def test_ceilings_follow_from_the_medians():
    med = {"window": 0.30, "main_cpu": 0.22, "wait": 0.05, "env": 0.15, "env_cpu": 0.15, "fit_cpu": 0.26, "fit_wall": 0.27}
    line = overlap_budget.row({"recipe": "sapo", "env": "rope", "N": 64, "H": 32, "worker": True, "med": med,
                               "gflop": 13.0, "per_block": [0.5]}, cores=2)
    cells = [c.strip() for c in line.strip("|").split("|")]
    # env / window, hand-off (window - max(fit wall, window - wait)), critic, main and 2-core ceilings
    assert cells[7].startswith("**0.50**") and cells[11] == "30"
    assert cells[-3:] == [f"{0.15 / 0.27:.2f}", f"{0.15 / 0.25:.2f}", f"{2 * 0.15 / 0.48:.2f}"]


def test_a_recipe_without_the_critic_worker_is_refused_naming_why(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="apg on rope runs without the critic worker here"):
        overlap_budget.main(["--recipe", "apg", "--envs", "rope", "--out", str(tmp_path / "R.md")])
    assert not (tmp_path / "R.md").exists()


def test_counts_and_durations_must_be_positive(capsys, monkeypatch):
    import pytest
    import report
    import training_overhead

    for argv in (["--blocks", "0"], ["--windows", "-2"], ["--warmup", "x"]):
        with pytest.raises(SystemExit) as stop:
            overlap_budget.main(argv)
        assert stop.value.code == 2
    assert "invalid positive_int value: '0'" in capsys.readouterr().err
    assert report.positive_float("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ValueError):
            report.positive_float(bad)
    monkeypatch.setattr(sys, "argv", ["training_overhead.py", "--seconds", "-1"])
    with pytest.raises(SystemExit) as stop:
        training_overhead.main()
    assert stop.value.code == 2 and "invalid positive_float value: '-1'" in capsys.readouterr().err


def test_contention_needs_a_second_core(monkeypatch):
    import os

    import contention
    import pytest

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    with pytest.raises(SystemExit, match="1 usable core"):
        contention.main(["--envs", "rope"])
