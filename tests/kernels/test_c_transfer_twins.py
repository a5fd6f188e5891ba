"""The C transfer loops (tphys/kernels/cpu/kernels.c) equal their torch twins, value and gradient, at fixed seeds:
the fast check the C mutation job (``benchmarks/mutation.py --c``) runs against each mutant of the C source."""

import pytest
import torch
from test_transfer import particles, vjp

from tphys.kernels import c_kernels, g2p, p2g

pytestmark = pytest.mark.skipif(not c_kernels.available(torch.float64), reason="no C compiler")


@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("seed,n,p,grid,margin", [(0, 2, 17, (5, 7, 6), 0.2), (1, 1, 30, 6, 1.5), (2, 2, 9, (4, 9, 5), 0.2)])
def test_c_transfers_equal_the_twins(seed, n, p, grid, margin, double):
    dtype = torch.float64 if double else torch.float32
    tol = dict(rtol=1e-10, atol=1e-10) if double else dict(rtol=2e-5, atol=2e-5)
    (x, mass, momentum, affine, grid_velocity), dx = particles(seed, n, p, grid, dtype, margin)
    for fn, inputs in ((lambda *a, b: p2g(*a, grid, dx, backend=b), [x, mass, momentum, affine]),
                       (lambda *a, b: g2p(*a, dx, backend=b), [x, grid_velocity])):
        twin = vjp(lambda *a: fn(*a, b="torch"), inputs, seed)
        other = vjp(lambda *a: fn(*a, b="cpu"), inputs, seed)
        for a, b in zip(twin[0] + twin[1], other[0] + other[1]):
            torch.testing.assert_close(b, a, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, a.abs().max().item()))
