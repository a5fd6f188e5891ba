"""MLS-MPM particle-grid transfers as Triton kernels with hand-written backward kernels.

Same signatures and math as ``stencil.p2g_torch`` / ``stencil.g2p_torch`` (the twins, see there).
One program handles BLOCK particles and unrolls the 27 stencil nodes:

    p2g forward    scatter (atomic adds) of w·m and w·(m v + A·dpos) into the grids
    p2g backward   gather of dL/dgrid at the 27 nodes -> dL/dx, dL/dm, dL/d(m v), dL/dA (no atomics)
    g2p forward    gather of grid velocity -> v, C
    g2p backward   scatter of dL/dv, dL/dC into dL/dgrid (atomic adds) and a gather of dL/dx

On CPU tensors these run only under ``TRITON_INTERPRET=1`` set before this module is imported
(slow: for tests against the twins). Inputs are made contiguous; first derivatives only.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from tphys.kernels.stencil import check_grid_velocity, check_transfer_inputs
from tphys.kernels.transfer_function import G2P, P2G, Launchers

BLOCK = 128


@triton.jit
def _weight(f, o: tl.constexpr):
    """Quadratic B-spline weight of stencil offset o at fractional position f in [0.5, 1.5)."""
    if o == 0:
        return 0.5 * (1.5 - f) * (1.5 - f)
    elif o == 1:
        return 0.75 - (f - 1.0) * (f - 1.0)
    else:
        return 0.5 * (f - 0.5) * (f - 0.5)


@triton.jit
def _weight_slope(f, o: tl.constexpr):
    """d weight / d f."""
    if o == 0:
        return f - 1.5
    elif o == 1:
        return -2.0 * (f - 1.0)
    else:
        return f - 0.5


@triton.jit
def _axis(x, inv_dx):
    """(base node index int64, fractional position f) along one axis."""
    fx = x * inv_dx
    base = tl.floor(fx - 0.5)
    return base.to(tl.int64), fx - base


@triton.jit
def _node(env, bx, by, bz, ox: tl.constexpr, oy: tl.constexpr, oz: tl.constexpr, GX, GY, GZ, valid):
    """(flat node index into [N·GX·GY·GZ], in-grid mask) of stencil node (ox, oy, oz)."""
    ix, iy, iz = bx + ox, by + oy, bz + oz
    inside = valid & (ix >= 0) & (ix < GX) & (iy >= 0) & (iy < GY) & (iz >= 0) & (iz < GZ)
    return ((env * GX + ix) * GY + iy) * GZ + iz, inside


@triton.jit
def _particles(total, P, BLOCK: tl.constexpr):
    """(flat particle indices of this program, in-range mask, env index of each)."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = p < total
    p = p.to(tl.int64)
    return p, valid, p // P


@triton.jit
def _stencil_base(x_ptr, p, valid, inv_dx):
    """(bx, fx, by, fy, bz, fz): base node and fractional position per axis of particles p."""
    bx, fx = _axis(tl.load(x_ptr + 3 * p, mask=valid, other=1.0), inv_dx)
    by, fy = _axis(tl.load(x_ptr + 3 * p + 1, mask=valid, other=1.0), inv_dx)
    bz, fz = _axis(tl.load(x_ptr + 3 * p + 2, mask=valid, other=1.0), inv_dx)
    return bx, fx, by, fy, bz, fz


@triton.jit
def _load3(ptr, p, valid):
    return (tl.load(ptr + 3 * p, mask=valid, other=0.0), tl.load(ptr + 3 * p + 1, mask=valid, other=0.0),
            tl.load(ptr + 3 * p + 2, mask=valid, other=0.0))


@triton.jit
def _load9(ptr, p, valid, scale):
    """The 9 entries of each particle's row-major 3x3 matrix, times ``scale``."""
    a0, a1, a2 = _load3(ptr, 3 * p, valid)
    a3, a4, a5 = _load3(ptr, 3 * p + 1, valid)
    a6, a7, a8 = _load3(ptr, 3 * p + 2, valid)
    return a0 * scale, a1 * scale, a2 * scale, a3 * scale, a4 * scale, a5 * scale, a6 * scale, a7 * scale, a8 * scale


@triton.jit
def _store3(ptr, p, a, b, c, valid):
    tl.store(ptr + 3 * p, a, mask=valid)
    tl.store(ptr + 3 * p + 1, b, mask=valid)
    tl.store(ptr + 3 * p + 2, c, mask=valid)


@triton.jit
def _store9(ptr, p, a0, a1, a2, a3, a4, a5, a6, a7, a8, valid):
    _store3(ptr, 3 * p, a0, a1, a2, valid)
    _store3(ptr, 3 * p + 1, a3, a4, a5, valid)
    _store3(ptr, 3 * p + 2, a6, a7, a8, valid)


@triton.jit
def _stencil_node(env, bx, fx, by, fy, bz, fz, ox: tl.constexpr, oy: tl.constexpr, oz: tl.constexpr, GX, GY, GZ, dx, valid):
    """Per-axis weights, offset dpos (m), flat node index and in-grid mask of stencil node (ox, oy, oz)."""
    node, inside = _node(env, bx, by, bz, ox, oy, oz, GX, GY, GZ, valid)
    return _weight(fx, ox), _weight(fy, oy), _weight(fz, oz), (ox - fx) * dx, (oy - fy) * dx, (oz - fz) * dx, node, inside


@triton.jit
def _p2g_kernel(x_ptr, m_ptr, mom_ptr, a_ptr, gm_ptr, gmv_ptr, total, P, GX, GY, GZ, dx, inv_dx, BLOCK: tl.constexpr):
    p, valid, env = _particles(total, P, BLOCK)
    bx, fx, by, fy, bz, fz = _stencil_base(x_ptr, p, valid, inv_dx)
    m = tl.load(m_ptr + p, mask=valid, other=0.0)
    q0, q1, q2 = _load3(mom_ptr, p, valid)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _load9(a_ptr, p, valid, 1.0)
    for ox in tl.static_range(3):
        for oy in tl.static_range(3):
            for oz in tl.static_range(3):
                wx, wy, wz, d0, d1, d2, node, inside = _stencil_node(env, bx, fx, by, fy, bz, fz, ox, oy, oz, GX, GY, GZ, dx, valid)
                w = wx * wy * wz
                tl.atomic_add(gm_ptr + node, w * m, mask=inside)
                tl.atomic_add(gmv_ptr + 3 * node, w * (q0 + a00 * d0 + a01 * d1 + a02 * d2), mask=inside)
                tl.atomic_add(gmv_ptr + 3 * node + 1, w * (q1 + a10 * d0 + a11 * d1 + a12 * d2), mask=inside)
                tl.atomic_add(gmv_ptr + 3 * node + 2, w * (q2 + a20 * d0 + a21 * d1 + a22 * d2), mask=inside)


@triton.jit
def _p2g_backward_kernel(x_ptr, m_ptr, mom_ptr, a_ptr, ggm_ptr, ggmv_ptr, gx_ptr, gm_out_ptr, gmom_ptr, ga_ptr, total, P, GX, GY, GZ,
                         dx, inv_dx, BLOCK: tl.constexpr):
    p, valid, env = _particles(total, P, BLOCK)
    bx, fx, by, fy, bz, fz = _stencil_base(x_ptr, p, valid, inv_dx)
    m = tl.load(m_ptr + p, mask=valid, other=0.0)
    q0, q1, q2 = _load3(mom_ptr, p, valid)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _load9(a_ptr, p, valid, 1.0)
    zero = m * 0.0
    gx0, gx1, gx2, gm = zero, zero, zero, zero
    gq0, gq1, gq2 = zero, zero, zero
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for ox in tl.static_range(3):
        for oy in tl.static_range(3):
            for oz in tl.static_range(3):
                wx, wy, wz, d0, d1, d2, node, inside = _stencil_node(env, bx, fx, by, fy, bz, fz, ox, oy, oz, GX, GY, GZ, dx, valid)
                w = wx * wy * wz
                u = tl.load(ggm_ptr + node, mask=inside, other=0.0)
                h0 = tl.load(ggmv_ptr + 3 * node, mask=inside, other=0.0)
                h1 = tl.load(ggmv_ptr + 3 * node + 1, mask=inside, other=0.0)
                h2 = tl.load(ggmv_ptr + 3 * node + 2, mask=inside, other=0.0)
                gm += w * u
                gq0 += w * h0
                gq1 += w * h1
                gq2 += w * h2
                g00 += w * h0 * d0
                g01 += w * h0 * d1
                g02 += w * h0 * d2
                g10 += w * h1 * d0
                g11 += w * h1 * d1
                g12 += w * h1 * d2
                g20 += w * h2 * d0
                g21 += w * h2 * d1
                g22 += w * h2 * d2
                # d/dx through the weight: scalar s = m·u + h·(q + A·dpos); through dpos (d dpos/dx = -I): -w·Aᵀh
                s = m * u + h0 * (q0 + a00 * d0 + a01 * d1 + a02 * d2) + h1 * (q1 + a10 * d0 + a11 * d1 + a12 * d2) \
                    + h2 * (q2 + a20 * d0 + a21 * d1 + a22 * d2)
                gx0 += _weight_slope(fx, ox) * inv_dx * wy * wz * s - w * (a00 * h0 + a10 * h1 + a20 * h2)
                gx1 += wx * _weight_slope(fy, oy) * inv_dx * wz * s - w * (a01 * h0 + a11 * h1 + a21 * h2)
                gx2 += wx * wy * _weight_slope(fz, oz) * inv_dx * s - w * (a02 * h0 + a12 * h1 + a22 * h2)
    _store3(gx_ptr, p, gx0, gx1, gx2, valid)
    tl.store(gm_out_ptr + p, gm, mask=valid)
    _store3(gmom_ptr, p, gq0, gq1, gq2, valid)
    _store9(ga_ptr, p, g00, g01, g02, g10, g11, g12, g20, g21, g22, valid)


@triton.jit
def _g2p_kernel(x_ptr, gv_ptr, v_ptr, c_ptr, total, P, GX, GY, GZ, dx, inv_dx, BLOCK: tl.constexpr):
    p, valid, env = _particles(total, P, BLOCK)
    bx, fx, by, fy, bz, fz = _stencil_base(x_ptr, p, valid, inv_dx)
    zero = fx * 0.0
    v0, v1, v2 = zero, zero, zero
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for ox in tl.static_range(3):
        for oy in tl.static_range(3):
            for oz in tl.static_range(3):
                wx, wy, wz, d0, d1, d2, node, inside = _stencil_node(env, bx, fx, by, fy, bz, fz, ox, oy, oz, GX, GY, GZ, dx, valid)
                w = wx * wy * wz
                u0 = w * tl.load(gv_ptr + 3 * node, mask=inside, other=0.0)
                u1 = w * tl.load(gv_ptr + 3 * node + 1, mask=inside, other=0.0)
                u2 = w * tl.load(gv_ptr + 3 * node + 2, mask=inside, other=0.0)
                v0 += u0
                v1 += u1
                v2 += u2
                c00 += u0 * d0
                c01 += u0 * d1
                c02 += u0 * d2
                c10 += u1 * d0
                c11 += u1 * d1
                c12 += u1 * d2
                c20 += u2 * d0
                c21 += u2 * d1
                c22 += u2 * d2
    k = 4.0 * inv_dx * inv_dx
    _store3(v_ptr, p, v0, v1, v2, valid)
    _store9(c_ptr, p, k * c00, k * c01, k * c02, k * c10, k * c11, k * c12, k * c20, k * c21, k * c22, valid)


@triton.jit
def _g2p_backward_kernel(x_ptr, gv_ptr, dv_ptr, dc_ptr, ggv_ptr, gx_ptr, total, P, GX, GY, GZ, dx, inv_dx, BLOCK: tl.constexpr):
    p, valid, env = _particles(total, P, BLOCK)
    bx, fx, by, fy, bz, fz = _stencil_base(x_ptr, p, valid, inv_dx)
    k = 4.0 * inv_dx * inv_dx
    e0, e1, e2 = _load3(dv_ptr, p, valid)
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = _load9(dc_ptr, p, valid, k)  # (4/dx²)·dL/dC
    zero = fx * 0.0
    gx0, gx1, gx2 = zero, zero, zero
    for ox in tl.static_range(3):
        for oy in tl.static_range(3):
            for oz in tl.static_range(3):
                wx, wy, wz, d0, d1, d2, node, inside = _stencil_node(env, bx, fx, by, fy, bz, fz, ox, oy, oz, GX, GY, GZ, dx, valid)
                w = wx * wy * wz
                # r = dL/dv + (4/dx²)·dL/dC·dpos: what node velocity meets, per unit weight
                r0 = e0 + b00 * d0 + b01 * d1 + b02 * d2
                r1 = e1 + b10 * d0 + b11 * d1 + b12 * d2
                r2 = e2 + b20 * d0 + b21 * d1 + b22 * d2
                tl.atomic_add(ggv_ptr + 3 * node, w * r0, mask=inside)
                tl.atomic_add(ggv_ptr + 3 * node + 1, w * r1, mask=inside)
                tl.atomic_add(ggv_ptr + 3 * node + 2, w * r2, mask=inside)
                u0 = tl.load(gv_ptr + 3 * node, mask=inside, other=0.0)
                u1 = tl.load(gv_ptr + 3 * node + 1, mask=inside, other=0.0)
                u2 = tl.load(gv_ptr + 3 * node + 2, mask=inside, other=0.0)
                s = u0 * r0 + u1 * r1 + u2 * r2
                gx0 += _weight_slope(fx, ox) * inv_dx * wy * wz * s - w * (b00 * u0 + b10 * u1 + b20 * u2)
                gx1 += wx * _weight_slope(fy, oy) * inv_dx * wz * s - w * (b01 * u0 + b11 * u1 + b21 * u2)
                gx2 += wx * wy * _weight_slope(fz, oz) * inv_dx * s - w * (b02 * u0 + b12 * u1 + b22 * u2)
    _store3(gx_ptr, p, gx0, gx1, gx2, valid)


def _grid(total: int) -> tuple[int]:
    return (triton.cdiv(total, BLOCK),)


LAUNCHERS = Launchers(
    p2g_forward=lambda x, m, q, a, gm, gq, n, p, shape, dx: _p2g_kernel[_grid(n * p)](x, m, q, a, gm, gq, n * p, p, *shape, dx, 1.0 / dx,
                                                                                      BLOCK=BLOCK),
    p2g_backward=lambda x, m, q, a, dgm, dgq, dx_, dm, dq, da, n, p, shape, dx: _p2g_backward_kernel[_grid(n * p)](
        x, m, q, a, dgm, dgq, dx_, dm, dq, da, n * p, p, *shape, dx, 1.0 / dx, BLOCK=BLOCK),
    g2p_forward=lambda x, gv, v, c, n, p, shape, dx: _g2p_kernel[_grid(n * p)](x, gv, v, c, n * p, p, *shape, dx, 1.0 / dx, BLOCK=BLOCK),
    g2p_backward=lambda x, gv, dv, dc, dgv, dx_, n, p, shape, dx: _g2p_backward_kernel[_grid(n * p)](
        x, gv, dv, dc, dgv, dx_, n * p, p, *shape, dx, 1.0 / dx, BLOCK=BLOCK),
)


def p2g_triton(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_size, dx: float) -> tuple[Tensor, Tensor]:
    """``stencil.p2g_torch`` as Triton kernels (forward scatter, backward gather)."""
    shape = check_transfer_inputs(x, grid_size, dx, mass=mass, momentum=momentum, affine=affine)
    return P2G.apply(LAUNCHERS, x, mass, momentum, affine, shape, float(dx))


def g2p_triton(x: Tensor, grid_velocity: Tensor, dx: float) -> tuple[Tensor, Tensor]:
    """``stencil.g2p_torch`` as Triton kernels (forward gather, backward scatter)."""
    check_grid_velocity(x, grid_velocity, dx)
    return G2P.apply(LAUNCHERS, x, grid_velocity, float(dx))
