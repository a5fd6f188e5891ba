"""Kinematic mode: shape poses and velocities against MuJoCo's geoms, target tracking, FD gradients."""

import mujoco
import numpy as np
import pytest
import torch
from helpers import check_directional_derivative
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mujoco import random_state

from tphys.rigid import load_mjcf, model_path
from tphys.rigid.integrator import integrate_positions
from tphys.rigid.kinematic_mode import joint_rates, kinematic_frame, shape_frames
from tphys.rigid.model import SHAPE_KINDS

MODELS = ("ant", "humanoid", "half_cheetah", "dflex_humanoid")
AXIAL = (SHAPE_KINDS.index("capsule"), SHAPE_KINDS.index("cylinder"))


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 0.8]))
def test_shape_poses_and_velocities_match_mujoco_geoms(name, seed, scale):
    mj = mujoco.MjModel.from_xml_path(str(model_path(name)))
    data = mujoco.MjData(mj)
    model = load_mjcf(model_path(name))
    qpos, qvel, _ = random_state(mj, seed, scale)
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(mj, data)
    frames = shape_frames(model, torch.tensor(qpos)[None], torch.tensor(qvel)[None])
    geoms = [g for g in range(mj.ngeom) if mj.geom_bodyid[g] > 0]  # the world's plane is the ground, not a shape
    assert len(geoms) == model.shapes.link.numel()
    np.testing.assert_allclose(frames.pos[0].numpy(), data.geom_xpos[geoms], atol=1e-9)
    rot = frames.rot[0].numpy()
    for k, g in enumerate(geoms):
        expected = data.geom_xmat[g].reshape(3, 3)
        if int(model.shapes.kind[k]) in AXIAL:  # a capsule's frame is fixed up to its axis' sign and the angle about it
            assert abs(abs(rot[k][:, 2] @ expected[:, 2]) - 1) < 1e-9
        elif SHAPE_KINDS[int(model.shapes.kind[k])] != "sphere":
            np.testing.assert_allclose(rot[k], expected, atol=1e-9)
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(mj, data, mujoco.mjtObj.mjOBJ_GEOM, g, velocity, 0)  # (ω, v) world, at the geom
        np.testing.assert_allclose(frames.ang_vel[0, k].numpy(), velocity[:3], atol=1e-9)
        np.testing.assert_allclose(frames.lin_vel[0, k].numpy(), velocity[3:], atol=1e-9)


def _random_pair(model, gen, n, scale):
    q = model.q0.expand(n, -1) + scale * torch.randn(n, model.nq, generator=gen, dtype=torch.float64)
    target = q + scale * torch.randn(n, model.nq, generator=gen, dtype=torch.float64)
    quat = slice(3, 7)  # the free joint of the models below
    q[:, quat] = q[:, quat] / q[:, quat].norm(dim=-1, keepdim=True)
    target[:, quat] = target[:, quat] / target[:, quat].norm(dim=-1, keepdim=True)
    return q, target


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), substeps=st.integers(1, 8))
def test_frame_ends_at_the_target_and_velocities_are_the_motion_s(seed, substeps):
    model = load_mjcf(model_path("ant"))
    gen = torch.Generator().manual_seed(seed)
    q, target = _random_pair(model, gen, 3, 0.3)
    dt = 1 / 60
    frames = kinematic_frame(model, q, target, dt, substeps)
    assert len(frames) == substeps
    end = shape_frames(model, target)
    torch.testing.assert_close(frames[-1].pos, end.pos, atol=1e-10, rtol=0)
    torch.testing.assert_close(frames[-1].rot, end.rot, atol=1e-10, rtol=0)
    # the reported velocity is the derivative of the motion: central differences of the pose in time
    qd = joint_rates(model, q, target, dt)
    t, eps = 0.4 * dt, 1e-6
    ahead = shape_frames(model, integrate_positions(model, q, qd, t + eps))
    behind = shape_frames(model, integrate_positions(model, q, qd, t - eps))
    now = shape_frames(model, integrate_positions(model, q, qd, t), qd)
    torch.testing.assert_close(now.lin_vel, (ahead.pos - behind.pos) / (2 * eps), atol=1e-6, rtol=1e-6)
    spin = (ahead.rot - behind.rot) / (2 * eps) @ now.rot.transpose(-1, -2)  # = skew(ω)
    omega = torch.stack([spin[..., 2, 1], spin[..., 0, 2], spin[..., 1, 0]], -1)
    torch.testing.assert_close(now.ang_vel, omega, atol=1e-6, rtol=1e-6)


def test_gradients_of_shape_poses_match_finite_differences():
    model = load_mjcf(model_path("dflex_humanoid"))
    gen = torch.Generator().manual_seed(0)
    q, target = _random_pair(model, gen, 2, 0.2)
    weights = torch.randn(2, model.shapes.link.numel(), 3, generator=gen, dtype=torch.float64)

    def loss(target):
        frames = kinematic_frame(model, q, target, 1 / 60, 4)
        return sum(((f.pos + f.lin_vel) * weights).sum() + f.ang_vel.square().sum() for f in frames)

    check_directional_derivative(loss, [target], [torch.randn(target.shape, generator=gen, dtype=torch.float64)])


def test_bad_shapes_are_reported():
    model = load_mjcf(model_path("ant"))
    with pytest.raises(ValueError, match="must both be"):
        kinematic_frame(model, model.q0[None], model.q0[None, :-1], 1 / 60, 4)
    with pytest.raises(ValueError, match="substeps"):
        kinematic_frame(model, model.q0[None], model.q0[None], 1 / 60, 0)
