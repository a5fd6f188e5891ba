"""The particles' ground contact against its law, computed by hand (issue 22; ``tphys.particles.model.Ground``):

    f_n = (k + c · ramp_slip(-v_n)) · ramp_w(depth),    f_t = -mu · f_n · v_t / sqrt(|v_t|² + slip²)

with ramp_w(s) = 0 (s <= 0), s²/(2w) (0 < s < w), s - w/2 (s >= w). Full Coulomb |f_t| -> mu·f_n when |v_t| >> slip.
"""

import pytest
import torch

from tphys.particles.forces import ground_forces
from tphys.particles.model import Ground

K, C, MU, SLIP, W, HEIGHT = 3e4, 50.0, 0.7, 0.01, 1e-3, 0.25


def ground(dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return Ground(height=t(HEIGHT), stiffness=t(K), damping=t(C), friction=t(MU), slip=t(SLIP), smoothing=t(W))


def ramp(s, w):
    return 0.0 if s <= 0 else s * s / (2 * w) if s < w else s - w / 2


def law(x, v, up):
    depth = HEIGHT - x[up]
    fn = (K + C * ramp(-v[up], SLIP)) * ramp(depth, W)
    vt = [vi if i != up else 0.0 for i, vi in enumerate(v)]
    slip = (sum(c * c for c in vt) + SLIP**2) ** 0.5
    return [(fn if i == up else 0.0) - MU * fn * vt[i] / slip for i in range(len(v))]


CASES = [  # (x, v): deep (linear ramp), shallow (quadratic ramp), approaching, separating, sliding fast / slow, airborne
    ((0.1, 0.2, 0.24), (0.0, 0.0, 0.0)),
    ((0.1, 0.2, 0.2496), (0.0, 0.0, 0.0)),
    ((0.1, 0.2, 0.245), (0.0, 0.0, -0.3)),
    ((0.1, 0.2, 0.245), (0.0, 0.0, 0.3)),
    ((0.0, 0.0, 0.245), (1.5, -2.0, 0.0)),
    ((0.0, 0.0, 0.245), (0.003, 0.004, -0.005)),
    ((0.0, 0.0, 0.245), (0.4, 0.1, -0.002)),
    ((0.0, 0.0, 0.26), (1.0, 1.0, -1.0)),
]


@pytest.mark.parametrize("x,v", CASES)
def test_ground_force_matches_the_law_in_3d(x, v):
    got = ground_forces(ground(), 2, torch.tensor([x], dtype=torch.float64), torch.tensor([v], dtype=torch.float64))
    assert got.shape == (1, 3)
    torch.testing.assert_close(got[0], torch.tensor(law(x, v, 2), dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_ground_force_in_2d_uses_the_up_axis():
    x, v = [(0.3, 0.245), (0.1, 0.2)], [(0.8, -0.2), (0.3, -0.1)]
    got = ground_forces(ground(), 1, torch.tensor(x, dtype=torch.float64), torch.tensor(v, dtype=torch.float64))
    want = torch.tensor([law(x[i], v[i], 1) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_friction_cone_is_approached_but_never_left():
    """|f_t| < mu·f_n always, and -> mu·f_n as the slip speed grows past ``slip``."""
    x = torch.tensor([[0.0, 0.0, 0.24]] * 3, dtype=torch.float64)
    v = torch.tensor([[0.001, 0.0, 0.0], [0.1, 0.0, 0.0], [100.0, 0.0, 0.0]], dtype=torch.float64)
    f = ground_forces(ground(), 2, x, v)
    ratio = f[:, 0].abs() / f[:, 2]
    assert (ratio < MU).all() and (f[:, 0] < 0).all()
    assert ratio[2].item() == pytest.approx(MU, rel=1e-8) and ratio[0] < 0.1 * MU


def test_batched_shapes_dtype_and_device_follow_the_caller():
    x = torch.tensor([[[0.0, 0.0, 0.24], [0.0, 0.0, 0.3]]] * 4, dtype=torch.float32)
    f = ground_forces(ground(torch.float32), 2, x, torch.ones_like(x))
    assert f.shape == (4, 2, 3) and f.dtype == torch.float32
    meta = ground_forces(ground(torch.float32)._replace(height=torch.tensor(HEIGHT, device="meta")), 2, x.to("meta"),
                         torch.ones_like(x, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 2, 3)


def test_half_precision_stays_half():
    """dtype follows the caller down to bfloat16 (no float32 helper tensor promotes the result)."""
    x = torch.tensor([[0.0, 0.0, 0.24]], dtype=torch.bfloat16)
    f = ground_forces(ground(torch.bfloat16), 2, x, torch.ones_like(x))
    assert f.dtype == torch.bfloat16
