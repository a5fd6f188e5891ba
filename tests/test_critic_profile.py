"""benchmarks/critic_profile.py: op names grouped for the critic's mini-epochs profile."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import critic_profile  # noqa: E402


def test_ops_fall_into_their_groups_and_the_times_add_up():
    times = {"aten::mm": 10.0, "aten::addmm": 5.0, "aten::native_layer_norm_backward": 3.0, "aten::silu": 2.0,
             "aten::silu_backward": 1.0, "Optimizer.step#AdamW.step": 4.0, "aten::_fused_adamw_": 0.5, "aten::copy_": 7.0}
    groups = critic_profile.grouped(times)
    assert groups == {"GEMM": 15.0, "LayerNorm": 3.0, "activation": 3.0, "optimizer": 4.5, "other": 7.0}
    assert sum(groups.values()) == pytest.approx(sum(times.values()))


@pytest.mark.slow
def test_the_script_runs_on_a_small_recipe(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["critic_profile.py", "--env", "rope", "--windows", "1", "--repeats", "1",
                                      "--override", "num_envs=4"])
    critic_profile.main()
    out = capsys.readouterr().out
    assert "fit_critic:" in out and "| GEMM |" in out
