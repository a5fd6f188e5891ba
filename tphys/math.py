"""Small differentiable helpers shared by the engines."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_norm(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Euclidean norm along ``dim`` whose gradient stays finite at zero.

    ``torch.linalg.vector_norm`` returns a zero (not NaN) gradient at the zero vector; the
    clamp keeps divisions by the norm finite there too.
    """
    return torch.linalg.vector_norm(x, dim=dim).clamp_min(eps)


# --- quaternions: (w, x, y, z), MuJoCo's order; unit quaternions rotate from body to world ---


def quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of [..., 4] quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack((aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw), dim=-1)


def quat_to_matrix(q: Tensor) -> Tensor:
    """[..., 4] quaternions (normalized here) -> [..., 3, 3] rotation matrices."""
    q = q / safe_norm(q)[..., None]
    w, x, y, z = q.unbind(-1)
    rows = (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def matrix_to_quat(m: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions with w >= 0 (Shepperd's method)."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack((
        torch.stack((1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), -1),
        torch.stack((m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]), -1),
        torch.stack((m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]), -1),
        torch.stack((m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22), -1),
    ), dim=-2)  # row i is 4·q·q_i, largest for the largest |q_i|
    best = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1).argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / safe_norm(q)[..., None]
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: unit ``axis`` [..., 3] and ``angle`` [...] (rad) -> [..., 3, 3]."""
    k = skew(axis)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return eye + s * k + (1 - c) * (k @ k)


def quat_integrate(q: Tensor, omega: Tensor, dt: float) -> Tensor:
    """q ⊗ exp(ω·dt/2), renormalized: rotate the frame q by the body-frame angular velocity ω [..., 3] for dt.

    The same update as MuJoCo's ``mju_quatIntegrate`` followed by normalization.
    """
    half = omega * (0.5 * dt)
    theta = safe_norm(half)
    sinc = torch.where(theta > 1e-8, torch.sin(theta) / theta, 1 - theta * theta / 6)
    delta = torch.cat((torch.cos(theta)[..., None], sinc[..., None] * half), dim=-1)
    out = quat_mul(q, delta)
    return out / safe_norm(out)[..., None]


def skew(v: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] matrices with skew(v) @ u = v × u."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).unflatten(-1, (3, 3))


# --- spatial (Plücker) vectors in world coordinates, taken at the world origin: motion (ω, v_O), force (n_O, f) ---


def cross_motion(v: Tensor, m: Tensor) -> Tensor:
    """v ×ₘ m for [..., 6] motion vectors (the rate of change of m carried by a frame moving with v)."""
    w, vo = v[..., :3], v[..., 3:]
    a, b = m[..., :3], m[..., 3:]
    return torch.cat((torch.cross(w, a, dim=-1), torch.cross(w, b, dim=-1) + torch.cross(vo, a, dim=-1)), dim=-1)


def cross_force(v: Tensor, f: Tensor) -> Tensor:
    """v ×* f for a [..., 6] motion vector v and force vector f."""
    w, vo = v[..., :3], v[..., 3:]
    n, lin = f[..., :3], f[..., 3:]
    return torch.cat((torch.cross(w, n, dim=-1) + torch.cross(vo, lin, dim=-1), torch.cross(w, lin, dim=-1)), dim=-1)


def spatial_inertia(mass: Tensor, com: Tensor, inertia: Tensor) -> Tensor:
    """[..., 6, 6] spatial inertia at the world origin of bodies with ``mass`` [...] (kg), centre of mass
    ``com`` [..., 3] (m, world) and rotational inertia about the centre of mass ``inertia`` [..., 3, 3]
    (kg·m², world axes). Acting on (ω, v_O) it gives (angular momentum about O, linear momentum)."""
    c = skew(com)
    m = mass[..., None, None]
    eye = torch.eye(3, dtype=com.dtype, device=com.device)
    top = torch.cat((inertia + m * (c @ c.transpose(-1, -2)), m * c), dim=-1)
    bottom = torch.cat((m * c.transpose(-1, -2), m * eye.expand_as(c)), dim=-1)
    return torch.cat((top, bottom), dim=-2)
