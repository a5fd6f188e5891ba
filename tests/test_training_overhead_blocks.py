"""benchmarks/training_overhead.py's alternating blocks (no timing): training and env windows take turns, each phase
gets its seconds, and with a critic worker the pending job is joined between a training block and the env block, outside
both measures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import training_overhead  # noqa: E402


class FakeClock:
    """A clock that each call of a window advances by that window's seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTrainer:
    def __init__(self, clock, calls, window_s):
        self.clock, self.calls, self.window_s = clock, calls, window_s
        self.pending = False

    def step(self):
        self.calls.append("train")
        self.clock.now += self.window_s
        self.pending = True

    def join_critic(self):
        self.calls.append("join")
        self.clock.now += 100.0  # a long wait: must stay out of both phases
        self.pending = False


def run(overlapping: bool):
    clock, calls = FakeClock(), []
    trainer = FakeTrainer(clock, calls, 0.4)

    def env_window():
        assert not (overlapping and trainer.pending), "an env window ran beside a pending critic job"
        calls.append("env")
        clock.now += 0.3

    blocks = training_overhead.alternate(trainer, env_window, seconds=2.0, block_seconds=1.0, clock=clock,
                                         overlapping=overlapping)
    return blocks, calls


def test_blocks_alternate_until_each_phase_has_its_seconds():
    blocks, calls = run(overlapping=False)
    assert calls == (["train"] * 3 + ["env"] * 4) * 2  # 3 x 0.4 s >= 1 s, 4 x 0.3 s >= 1 s; two blocks reach 2 s each
    assert [(b["train_windows"], b["env_windows"]) for b in blocks] == [(3, 4), (3, 4)]
    assert all(abs(b["train_s"] - 1.2) < 1e-9 and abs(b["env_s"] - 1.2) < 1e-9 for b in blocks)


def test_the_critic_job_is_joined_before_the_env_block_and_timed_in_neither():
    blocks, calls = run(overlapping=True)
    assert calls == (["train"] * 3 + ["join"] + ["env"] * 4) * 2
    assert all(abs(b["train_s"] - 1.2) < 1e-9 and abs(b["env_s"] - 1.2) < 1e-9 for b in blocks)
    assert all(b["end_wait_s"] >= 0 for b in blocks)
