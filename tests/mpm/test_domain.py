"""``tphys.mpm.outside_grid``: a particle is outside exactly where its quadratic stencil leaves the grid, i.e. where the
weights of its on-grid nodes no longer sum to 1 (``tphys.kernels.stencil``: nodes off the grid weigh 0)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.kernels.stencil import stencil
from tphys.mpm import Material, MPMModel, outside_detail, outside_grid, stencil_range

G, DX = 12, 1.0 / 12


def model() -> MPMModel:
    one = torch.ones(1, dtype=torch.float64)
    return MPMModel(G, DX, 1e-4, torch.zeros(3, dtype=torch.float64), one, one, Material("corotated", 1.0, 1.0))


def weight_on_grid(x: torch.Tensor) -> torch.Tensor:
    """[N, P] the summed weight of each particle's on-grid stencil nodes."""
    return stencil(x, G, DX)[1].sum(-1)


cells = st.floats(min_value=-2.0, max_value=G + 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(cells, cells, cells), min_size=1, max_size=6))
def test_outside_is_where_the_stencil_loses_weight(points):
    x = torch.tensor(points, dtype=torch.float64).unsqueeze(0) * DX  # one env
    lost = (weight_on_grid(x) < 1 - 1e-9).any(-1)
    assert torch.equal(outside_grid(model(), x), lost), (points, weight_on_grid(x))


def test_the_range_is_half_a_cell_to_one_and_a_half_cells_from_the_last_node():
    low, high = stencil_range(model())
    assert math.isclose(low, 0.5 * DX) and math.isclose(high, (G - 1.5) * DX)


def test_per_env_nan_is_not_outside_and_the_detail_names_the_farthest():
    x = torch.full((3, 4, 3), 0.5, dtype=torch.float64)
    x[0, 1, 2] = math.nan
    x[2, 3, 0] = -0.3
    x[2, 1, 1] = 1.05
    bad = outside_grid(model(), x)
    assert bad.tolist() == [False, False, True]
    detail = outside_detail(model(), x, bad)
    assert detail.startswith("env 2: 2 of its 4 particles outside, the farthest (particle 3) at (-0.3, 0.5, 0.5) m"), detail
