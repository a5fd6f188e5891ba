"""Window returns and TD(lambda) targets against closed forms, on the caller's device, with their errors (issue 22)."""

import pytest
import torch

from rl.objectives import td_lambda_targets, window_return


def test_constant_reward_window_return_is_the_geometric_sum():
    """r every step, no episode end: R = r (1 - gamma^H) / (1 - gamma) + gamma^H V(s_H)."""
    gamma, horizon, r, v_end = 0.9, 7, 2.0, 5.0
    rewards = torch.full((2, horizon), r, dtype=torch.float64)
    values = torch.full((2, horizon), 100.0, dtype=torch.float64)
    values[:, -1] = v_end
    done = torch.zeros(2, horizon, dtype=torch.bool)
    expected = r * (1 - gamma**horizon) / (1 - gamma) + gamma**horizon * v_end
    torch.testing.assert_close(window_return(rewards, values, done, gamma), torch.full((2,), expected, dtype=torch.float64))
    # lambda = 1: every target is the Monte-Carlo return to the window's end
    targets = td_lambda_targets(rewards, values, done, gamma, 1.0)
    for t in range(horizon):
        k = horizon - t
        assert targets[0, t].item() == pytest.approx(r * (1 - gamma**k) / (1 - gamma) + gamma**k * v_end, rel=1e-12)


def test_returns_follow_the_callers_device():
    """On the "meta" device (shapes only): a helper tensor made on the default device would make torch refuse."""
    rewards = torch.zeros(3, 4, device="meta")
    done = torch.zeros(3, 4, dtype=torch.bool, device="meta")
    assert window_return(rewards, rewards, done, 0.9).device.type == "meta"
    assert td_lambda_targets(rewards, rewards, done, 0.9, 0.95).device.type == "meta"


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"rewards must be \[N, H\], got shape \(3,\)"):
        window_return(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool), 0.9)
    with pytest.raises(ValueError, match=r"rewards \(2, 3\), next_values \(2, 3\) and done \(2, 4\) must share \[N, H\]"):
        td_lambda_targets(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool), 0.9, 0.9)
    with pytest.raises(TypeError, match="done must be a bool tensor, got torch.float32"):
        td_lambda_targets(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 0.9, 0.9)
