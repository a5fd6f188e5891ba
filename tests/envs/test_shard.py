"""Data-parallel sharding of the envs (``TphysEnv.set_shard``): every env of every family starts where it starts in one
process with all the envs, full and partial resets alike, so a K-rank run steps the same envs as a 1-rank run."""

import pytest
import torch
from tensordict import TensorDict

import tphys.envs as E

ENVS = sorted(E.list_envs())
TOTAL = 4


def _reset_twice(env, mask=None):
    first = env.reset()
    if mask is None:
        return first, env.reset()
    td = first.clone()
    td.set("_reset", mask)
    return first, env.reset(td)


@pytest.mark.parametrize("name", ENVS)
def test_every_shard_resets_to_its_slice_of_the_global_envs(name):
    whole = E.make(name, num_envs=TOTAL, seed=3)
    mask = torch.tensor([[True], [False], [False], [True]])
    expected = _reset_twice(whole, mask)
    for start in (0, 2):
        part = E.make(name, num_envs=2, seed=3)
        part.set_shard(start, TOTAL)
        got = _reset_twice(part, mask[start:start + 2])
        for exp, out in zip(expected, got):
            for key in part.state_keys:
                torch.testing.assert_close(out.get(key), exp.get(key)[start:start + 2], rtol=0, atol=0, msg=f"{name}: {key}")
        # the generators of every shard stay in step with the single process's
        assert torch.equal(part.generator.get_state(), whole.generator.get_state())


def test_a_shard_that_does_not_fit_is_refused_naming_the_env():
    env = E.make("pendulum2d", num_envs=2, seed=0)
    with pytest.raises(ValueError, match="shard start=3 with 2 envs does not fit in 4 envs"):
        env.set_shard(3, 4)


def test_a_whole_shard_is_no_shard():
    env = E.make("pendulum2d", num_envs=2, seed=0)
    env.set_shard(0, 2)
    assert env.shard is None
    assert isinstance(env.reset(), TensorDict)
