"""The torch twins check their own inputs when called directly (the dispatch is not the only gate; issue 22)."""

import pytest
import torch

from tphys.kernels.stencil import g2p_torch, p2g_torch


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(2, 5, 3, generator=g, dtype=dtype)
    return x, torch.ones(2, 5, dtype=dtype), torch.zeros(2, 5, 3, dtype=dtype), torch.zeros(2, 5, 3, 3, dtype=dtype)


def test_p2g_twin_checks_every_per_particle_input():
    x, mass, momentum, affine = inputs()
    with pytest.raises(ValueError, match=r"mass must have shape \(2, 5\)"):
        p2g_torch(x, mass[:1].expand(2, 5)[:, :4], momentum, affine, 6, 1 / 6)
    with pytest.raises(TypeError, match="mass is torch.float32"):
        p2g_torch(x, mass.float(), momentum, affine, 6, 1 / 6)
    with pytest.raises(ValueError, match=r"momentum must have shape \(2, 5, 3\)"):
        p2g_torch(x, mass, momentum[:, :, :2], affine, 6, 1 / 6)
    with pytest.raises(TypeError, match="momentum is torch.float32"):
        p2g_torch(x, mass, momentum.float(), affine, 6, 1 / 6)
    with pytest.raises(ValueError, match=r"affine must have shape \(2, 5, 3, 3\)"):
        p2g_torch(x, mass, momentum, affine[..., 0], 6, 1 / 6)
    grid_mass, grid_momentum = p2g_torch(x, mass, momentum, affine, 6, 1 / 6)
    assert grid_mass.shape == (2, 6, 6, 6) and grid_momentum.shape == (2, 6, 6, 6, 3)


def test_g2p_twin_checks_its_inputs():
    x = inputs()[0]
    with pytest.raises(ValueError, match="grid_velocity must be"):
        g2p_torch(x, torch.zeros(1, 6, 6, 6, 3, dtype=torch.float64), 1 / 6)
    with pytest.raises(TypeError, match="grid_velocity is torch.float32"):
        g2p_torch(x, torch.zeros(2, 6, 6, 6, 3), 1 / 6)
    v, c = g2p_torch(x, torch.zeros(2, 6, 6, 6, 3, dtype=torch.float64), 1 / 6)
    assert v.shape == (2, 5, 3) and c.shape == (2, 5, 3, 3)
