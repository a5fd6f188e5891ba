"""Window returns and TD(lambda) targets against naive formulas (Eq. 8-10, 19 of the SAPO paper)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from rl.objectives import bootstrap_values, td_lambda_targets, window_return


def naive_k_step(rewards, values, t, k, gamma):
    """G_{t:t+k} = sum_{l<k} gamma^l r_{t+l} + gamma^k V(s_{t+k})  (values[j] = V(s_{j+1}))."""
    return sum(gamma**j * rewards[t + j] for j in range(k)) + gamma**k * values[t + k - 1]


def naive_lambda_return(rewards, values, t, end, gamma, lmbda):
    """Eq. 19 over the segment [t, end): (1 - lambda) sum lambda^{l-1} G_{t:t+l} + lambda^{n-1} G_{t:t+n}."""
    n = end - t
    mixed = (1 - lmbda) * sum(lmbda ** (j - 1) * naive_k_step(rewards, values, t, j, gamma) for j in range(1, n))
    return mixed + lmbda ** (n - 1) * naive_k_step(rewards, values, t, n, gamma)


def segment_ends(done_row, horizon):
    """Exclusive end index of the episode segment each step belongs to."""
    ends, end = [0] * horizon, horizon
    for t in reversed(range(horizon)):
        if done_row[t]:
            end = t + 1
        ends[t] = end
    return ends


@given(
    n=st.integers(1, 3), horizon=st.integers(1, 7), gamma=st.floats(0.5, 1.0), lmbda=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16), p_done=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_td_lambda_targets_equal_eq19_per_episode_segment(n, horizon, gamma, lmbda, seed, p_done):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, horizon, generator=g, dtype=torch.float64)
    values = torch.randn(n, horizon, generator=g, dtype=torch.float64)
    done = torch.rand(n, horizon, generator=g) < p_done
    targets = td_lambda_targets(rewards, values, done, gamma, lmbda)
    for i in range(n):
        ends = segment_ends(done[i].tolist(), horizon)
        for t in range(horizon):
            expected = naive_lambda_return(rewards[i].tolist(), values[i].tolist(), t, ends[t], gamma, lmbda)
            assert abs(targets[i, t].item() - expected) < 1e-9 * (1 + abs(expected))


@given(n=st.integers(1, 3), horizon=st.integers(1, 7), gamma=st.floats(0.5, 1.0), seed=st.integers(0, 2**16),
       p_done=st.sampled_from([0.0, 0.3]))
def test_window_return_sums_discounted_segments(n, horizon, gamma, seed, p_done):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, horizon, generator=g, dtype=torch.float64)
    values = torch.randn(n, horizon, generator=g, dtype=torch.float64)
    done = torch.rand(n, horizon, generator=g) < p_done
    got = window_return(rewards, values, done, gamma)
    for i in range(n):
        ends = segment_ends(done[i].tolist(), horizon)
        total, t = 0.0, 0
        while t < horizon:
            end = ends[t]
            total += naive_k_step(rewards[i].tolist(), values[i].tolist(), t, end - t, gamma)
            t = end
        assert abs(got[i].item() - total) < 1e-9 * (1 + abs(total))


def test_lambda_one_gives_monte_carlo_and_lambda_zero_gives_td0():
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64)
    done = torch.zeros(1, 3, dtype=torch.bool)
    mc = td_lambda_targets(rewards, values, done, 0.5, 1.0)
    expected = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 30, 2 + 0.5 * 3 + 0.25 * 30, 3 + 0.5 * 30]
    assert torch.allclose(mc[0], torch.tensor(expected, dtype=torch.float64))
    td0 = td_lambda_targets(rewards, values, done, 0.5, 0.0)
    assert torch.allclose(td0[0], rewards[0] + 0.5 * values[0])


def test_termination_bootstraps_zero_and_truncation_the_terminal_value():
    values = torch.tensor([[5.0, 7.0]], dtype=torch.float64)
    terminated = torch.tensor([[True, False]])
    assert bootstrap_values(values, terminated).tolist() == [[0.0, 7.0]]
    rewards = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    done = torch.tensor([[True, False]])
    # step 0 ends an episode: its target is r_0 + gamma * V_terminal, never the next episode's return
    targets = td_lambda_targets(rewards, bootstrap_values(values, terminated), done, 0.9, 0.95)
    assert targets[0, 0].item() == 1.0
    truncated_targets = td_lambda_targets(rewards, values, done, 0.9, 0.95)
    assert abs(truncated_targets[0, 0].item() - (1.0 + 0.9 * 5.0)) < 1e-12


def test_shape_and_dtype_errors_name_the_problem():
    import pytest

    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must share"):
        td_lambda_targets(r, torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.bool), 0.9, 0.9)
    with pytest.raises(TypeError, match="bool"):
        window_return(r, r, torch.zeros(2, 3), 0.9)
