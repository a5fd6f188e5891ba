"""cpu/water.c's cube root of det F_trial (``cube_root``: a first guess, two Halley steps and a Newton step in place of libm's
cbrt) agrees with the exact cube root to a few ulp over dets e^-40..e^40 in float64, and passes zero, negative,
subnormal-range and non-finite dets to libm's cbrt."""

from __future__ import annotations

import math

import pytest
import torch

from tphys.kernels import c_kernels
from tphys.mpm import water

F64 = dict(dtype=torch.float64)
pytestmark = pytest.mark.skipif(not water.available(torch.float64), reason="no C compiler")


def stretch(dets: list[float]) -> torch.Tensor:
    """water_prologue's c [P] for particles with F_trial = diag(det, 1, 1), float64."""
    p = len(dets)
    f = torch.eye(3, dtype=torch.float64).repeat(1, p, 1, 1)
    f[0, :, 0, 0] = torch.tensor(dets, dtype=torch.float64)
    x, v, c = torch.zeros(1, p, 3, **F64), torch.zeros(1, p, 3, **F64), torch.zeros(1, p, 3, 3, **F64)
    m, s, origin = torch.ones(p, **F64), torch.ones(p, **F64), torch.zeros(1, 3, dtype=torch.int64)
    local, q, a, out = torch.empty_like(x), torch.empty_like(x), torch.empty_like(c), torch.empty(1, p, **F64)
    functions, _ = water._functions(c_kernels.REALS[torch.float64])
    functions.water_prologue(*(t.data_ptr() for t in (x, v, c, f, m, s, origin, local, q, a, out)), 1, p, 0.1, 1.0)
    return out[0]


def test_the_cube_root_is_within_a_few_ulp_over_a_wide_range():
    dets = torch.exp(torch.linspace(-40, 40, 20001, dtype=torch.float64))
    dets = torch.cat([dets, 1 + torch.linspace(-0.3, 0.3, 20001, dtype=torch.float64)])
    exact = torch.tensor([math.cbrt(d) for d in dets.tolist()], dtype=torch.float64)
    torch.testing.assert_close(stretch(dets.tolist()), exact, rtol=1e-15, atol=0)


def test_zero_negative_tiny_and_non_finite_dets_take_libm():
    dets = [0.0, -0.0, -8.0, -1e-5, 1e-310, 2.0**-1001, 2.0**1001, math.inf, -math.inf]
    assert stretch(dets).tolist() == [math.cbrt(d) for d in dets]
    assert math.isnan(stretch([math.nan])[0].item())
