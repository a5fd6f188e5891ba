"""``rl.experiment.setup``: threads > 1 without ``OMP_WAIT_POLICY=PASSIVE`` warns (torch's OpenMP threads would spin
and take cores from the C kernels' threads); one thread, or the passive policy, says nothing."""

import warnings

import pytest
import torch
from omegaconf import OmegaConf

from rl.experiment import setup


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_above_one_without_the_passive_policy_warn(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.warns(UserWarning, match="OMP_WAIT_POLICY=PASSIVE"):
        setup(OmegaConf.create({"threads": 2, "seed": 0}))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads,policy", [(1, None), (2, "PASSIVE"), (2, "passive")])
def test_one_thread_or_the_passive_policy_say_nothing(monkeypatch, threads, policy):
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(OmegaConf.create({"threads": threads, "seed": 0}))
