"""rl.allocator: glibc malloc keeps freed blocks (no page faults for a training loop's recurring tensors)."""

import platform
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import rl.experiment
from rl import allocator
from rl.cli import ConfigError

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")


@glibc
def test_the_settings_take_in_a_fresh_process_and_a_second_call_changes_nothing():
    code = ("from rl.allocator import keep_freed_memory as k; first = k(); print(first == k(), sorted(first.items()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    expected = sorted({"M_TRIM_THRESHOLD": allocator.TRIM_THRESHOLD, "M_TOP_PAD": allocator.TOP_PAD,
                       "M_MMAP_THRESHOLD": allocator.MMAP_THRESHOLD}.items())
    assert out == f"True {expected}"  # glibc accepted all three values (mallopt returned 1)


def test_setup_applies_it_unless_the_config_says_false(monkeypatch):
    calls = []
    monkeypatch.setattr(rl.experiment, "keep_freed_memory", lambda: calls.append(1))
    rl.experiment.setup(OmegaConf.create({"threads": 1, "seed": 0}))
    rl.experiment.setup(OmegaConf.create({"threads": 1, "seed": 0, "keep_freed_memory": True}))
    rl.experiment.setup(OmegaConf.create({"threads": 1, "seed": 0, "keep_freed_memory": False}))
    assert len(calls) == 2


def test_a_non_boolean_setting_is_a_config_error():
    from rl.cli import compose

    cfg = compose("sapo", ["env=rope", "keep_freed_memory=sometimes"])
    with pytest.raises(ConfigError, match="keep_freed_memory must be true or false, got 'sometimes'"):
        rl.experiment.check_config(cfg)
