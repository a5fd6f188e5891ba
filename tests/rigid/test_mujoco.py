"""tphys.rigid against MuJoCo on the same MJCF, contacts and limits off (MuJoCo is a test dependency).

For random positions (normalized quaternions), velocities and controls in float64: link poses,
the joint-space mass matrix, bias forces, passive and actuator forces and the joint
accelerations agree to 1e-6 relative (measured: ~1e-14)."""

import mujoco
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mujoco_reference import models, random_state

from tphys.rigid import bias_forces, joint_accelerations, kinematics, mass_matrix
from tphys.rigid.dynamics import actuator_forces, passive_forces

MODELS = ("cartpole", "hopper", "ant", "humanoid", "half_cheetah", "dflex_humanoid")
def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 0.5, 1.5]))
def test_dynamics_match_mujoco(name, seed, scale):
    mj, data, model = models(name)
    qpos, qvel, ctrl = random_state(mj, seed, scale)
    data.qpos[:], data.qvel[:], data.ctrl[:] = qpos, qvel, ctrl
    mujoco.mj_forward(mj, data)
    q, qd, u = (torch.tensor(x)[None] for x in (qpos, qvel, ctrl))
    kin = kinematics(model, q, qd)
    links = model.names["body_links"]
    np.testing.assert_allclose(kin.poses.pos[0, links].numpy(), data.xpos[1:], atol=1e-9)
    np.testing.assert_allclose(kin.poses.rot[0, links].reshape(-1, 9).numpy(), data.xmat[1:], atol=1e-9)
    full = np.zeros((mj.nv, mj.nv))
    mujoco.mj_fullM(mj, data, full)
    assert rel(mass_matrix(model, kin)[0].numpy(), full) < 1e-9
    assert rel(bias_forces(model, kin, qd)[0].numpy(), data.qfrc_bias) < 1e-9
    assert rel(passive_forces(model, q, qd)[0].numpy(), data.qfrc_passive) < 1e-9
    assert rel(actuator_forces(model, u)[0].numpy(), data.qfrc_actuator) < 1e-9
    tau = passive_forces(model, q, qd) + actuator_forces(model, u)
    assert rel(joint_accelerations(model, kin, qd, tau)[0].numpy(), data.qacc) < 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_model_constants_match_mujoco(name):
    mj, _, model = models(name)
    assert (model.nq, model.nv, model.num_actuators) == (mj.nq, mj.nv, mj.nu)
    np.testing.assert_allclose([model.links.mass[i].item() for i in model.names["body_links"]], mj.body_mass[1:], rtol=1e-12)
    np.testing.assert_allclose(model.q0.numpy(), mj.qpos0, atol=1e-12)
    limited = mj.jnt_limited.astype(bool) & np.isin(mj.jnt_type, [mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE])
    np.testing.assert_allclose(model.dofs.lower[model.dofs.limited > 0].numpy(), mj.jnt_range[limited, 0], rtol=1e-12)
    np.testing.assert_allclose(model.dofs.upper[model.dofs.limited > 0].numpy(), mj.jnt_range[limited, 1], rtol=1e-12)


def test_batched_equals_single():
    _, _, model = models("humanoid")
    mj = models("humanoid")[0]
    states = [random_state(mj, s, 0.5) for s in range(4)]
    q = torch.tensor(np.stack([s[0] for s in states]))
    qd = torch.tensor(np.stack([s[1] for s in states]))
    tau = torch.randn(4, model.nv, dtype=torch.float64)
    batched = joint_accelerations(model, kinematics(model, q, qd), qd, tau)
    for i in range(4):
        single = joint_accelerations(model, kinematics(model, q[i:i + 1], qd[i:i + 1]), qd[i:i + 1], tau[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-12, atol=1e-12)
