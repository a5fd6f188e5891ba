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


def test_timed_stages_time_the_fits_calls_and_put_the_methods_back():
    import time

    class Loss:
        def critic_fit_error(self, x):
            time.sleep(0)  # thread CPU time: only what runs
            return sum(range(20000)) + x

    class Trainer:
        def __init__(self):
            self.loss, self.calls = Loss(), []

        def zero_grad(self, *groups):
            self.calls.append("zero_grad")

        def reduce_gradients(self, *groups, extra=None):
            return extra

        def clip(self, params):
            return sum(range(20000))

        def optimizer_step(self, *groups):
            self.calls.append("step")

        def fit_critic(self, inputs, targets):
            for _ in range(3):
                self.zero_grad("critic")
                self.reduce_gradients("critic", extra=self.loss.critic_fit_error(inputs))
                self.clip([])
                self.optimizer_step("critic")
            sum(range(50000))  # the "rest"

    trainer = Trainer()
    stages = critic_profile.timed_stages(trainer, 1, None, repeats=2)
    assert list(stages) == [*critic_profile.STAGES, "rest (backward, indexing, loop)", "fit_critic"]
    assert stages["forward + loss (critic_fit_error)"] > 0 and stages["gradient clip"] > 0
    assert stages["rest (backward, indexing, loop)"] > 0
    assert sum(v for k, v in stages.items() if k != "fit_critic") == pytest.approx(stages["fit_critic"])
    assert trainer.calls == ["zero_grad", "step"] * 6
    # the methods are the class's again, not the timing wrappers
    assert "zero_grad" not in vars(trainer) and "critic_fit_error" not in vars(trainer.loss)
