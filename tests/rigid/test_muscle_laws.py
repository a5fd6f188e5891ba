"""Fast, deterministic muscle laws (issue 22: the mutation job's tests for ``tphys/rigid/muscles.py``).

The SNU humanoid against MuJoCo's spatial tendons at fixed poses (``test_muscles.py`` does it under Hypothesis, too slow
per mutant): path lengths (``ten_length``), moment arms (``ten_J``) and the joint forces of clamped activations through
both routes (link forces into Newton-Euler, and -Jᵀ·tension) against ``qfrc_actuator``; tensions and one segment's
spatial forces by hand.
"""

import mujoco
import numpy as np
import pytest
import torch
from mujoco_reference import models, random_qpos

from tphys.rigid import bias_forces, kinematics
from tphys.rigid.muscles import generalized_forces, link_forces, moment_arms, path_lengths, tensions, via_points

F64 = torch.float64


def snu():
    return models("snu_humanoid")


def pose(mj, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    qpos = random_qpos(mj, rng, scale)
    return qpos, rng.uniform(-0.3, 1.3, size=mj.nu)  # activations outside [0, 1] too: the clamp


@pytest.mark.parametrize("seed", [1, 2])
def test_snu_lengths_moment_arms_and_joint_forces_equal_mujoco(seed):
    mj, data, model = snu()
    qpos, ctrl = pose(mj, seed)
    data.qpos[:], data.qvel[:], data.ctrl[:] = qpos, 0.0, ctrl
    mujoco.mj_forward(mj, data)
    q, u = torch.tensor(qpos)[None], torch.tensor(ctrl)[None]
    qd = torch.zeros(1, model.nv, dtype=F64)
    kin = kinematics(model, q, qd)
    np.testing.assert_allclose(path_lengths(model.muscles, kin.poses)[0].numpy(), data.ten_length, rtol=0, atol=1e-9)
    ten_j = np.zeros((mj.ntendon, mj.nv))
    mujoco.mju_sparse2dense(ten_j, data.ten_J, mj.ten_J_rownnz, mj.ten_J_rowadr, mj.ten_J_colind)
    np.testing.assert_allclose(moment_arms(model, q)[0].numpy(), ten_j, rtol=0, atol=1e-9)
    tension = tensions(model.muscles, u)
    scale = max(1.0, np.abs(data.qfrc_actuator).max())
    via_links = bias_forces(model, kin, qd) - bias_forces(model, kin, qd, link_forces(model.muscles, kin.poses, tension))
    np.testing.assert_allclose(via_links[0].numpy(), data.qfrc_actuator, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(generalized_forces(model, q, tension)[0].numpy(), data.qfrc_actuator, rtol=0, atol=1e-9 * scale)
    sites = np.concatenate([mj.wrap_objid[mj.tendon_adr[t]:mj.tendon_adr[t] + mj.tendon_num[t]] for t in range(mj.ntendon)])
    np.testing.assert_allclose(via_points(model.muscles, kin.poses)[0].numpy(), data.site_xpos[sites], rtol=0, atol=1e-12)


def test_tensions_are_max_force_times_activation_clamped_to_0_1():
    _, _, model = snu()
    m = model.muscles.count
    a = torch.linspace(-0.5, 1.5, m, dtype=F64)[None]
    expected = model.muscles.max_force * torch.where(a < 0, 0.0, torch.where(a > 1, 1.0, a))
    torch.testing.assert_close(tensions(model.muscles, a), expected, rtol=0, atol=0)
    assert (model.muscles.max_force != 1).all()
    with pytest.raises(ValueError, match=f"activation has {m + 1} entries per env, the model has {m} muscles"):
        tensions(model.muscles, torch.zeros(1, m + 1, dtype=F64))


def test_one_crossing_segment_pulls_its_ends_together_with_torques_about_the_origin():
    """Each crossing segment puts f = t·(b - a)/|b - a| at its start point a on a's link and -f at b on b's link,
    as world spatial forces (a × f, f): summed over the links, equal to the segments' sum by hand."""
    mj, _, model = snu()
    qpos, _ = pose(mj, 4)
    q = torch.tensor(qpos)[None]
    kin = kinematics(model, q, torch.zeros(1, model.nv, dtype=F64))
    mus = model.muscles
    tension = torch.linspace(10.0, 200.0, mus.count, dtype=F64)[None]
    out = link_forces(mus, kin.poses, tension)
    points = via_points(mus, kin.poses)[0]
    expected = torch.zeros_like(out[0])
    assert 0 < mus.cross.numel() < mus.seg_start.numel()  # some segments stay on one link: they exert nothing
    for s in mus.cross.tolist():
        start = int(mus.seg_start[s])
        a, b = points[start], points[start + 1]
        f = tension[0, mus.seg_muscle[s]] * (b - a) / (b - a).norm()
        for link, p, force in ((mus.point_link[start], a, f), (mus.point_link[start + 1], b, -f)):
            expected[link] += torch.cat((torch.linalg.cross(p, force), force))
    torch.testing.assert_close(out[0], expected, rtol=1e-12, atol=1e-9)
    assert out.abs().max() > 1.0


def test_segments_of_a_subset_and_forces_per_env_of_a_batch():
    """``_segments(which)``: the chosen segments' start / end points; a batch of 3 envs (any of N = 3 and
    3-vectors could be confused by an axis-less cross product) gives each env its own forces and lengths."""
    from tphys.rigid.muscles import _segments

    mj, _, model = snu()
    qs = torch.stack([torch.tensor(pose(mj, s)[0]) for s in (5, 6, 7)])
    kin = kinematics(model, qs, torch.zeros(3, model.nv, dtype=F64))
    mus = model.muscles
    points = via_points(mus, kin.poses)
    which = torch.tensor([4, 0, 9])
    a, b, d = _segments(mus, points, which)
    torch.testing.assert_close(a, points[:, mus.seg_start[which]], rtol=0, atol=0)
    torch.testing.assert_close(b, points[:, mus.seg_start[which] + 1], rtol=0, atol=0)
    torch.testing.assert_close(d, b - a, rtol=0, atol=0)
    tension = torch.rand(3, mus.count, generator=torch.Generator().manual_seed(0), dtype=F64) * 100
    forces, lengths = link_forces(mus, kin.poses, tension), path_lengths(mus, kin.poses)
    for i in range(3):
        one = kinematics(model, qs[i:i + 1], torch.zeros(1, model.nv, dtype=F64))
        torch.testing.assert_close(link_forces(mus, one.poses, tension[i:i + 1])[0], forces[i], rtol=1e-13, atol=1e-10)
        torch.testing.assert_close(path_lengths(mus, one.poses)[0], lengths[i], rtol=1e-14, atol=0)
    arms = moment_arms(model, qs)
    for i in range(3):
        torch.testing.assert_close(moment_arms(model, qs[i:i + 1])[0], arms[i], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(generalized_forces(model, qs[i:i + 1], tension[i:i + 1])[0],
                                   -(tension[i, :, None] * arms[i]).sum(0), rtol=1e-12, atol=1e-10)


def test_muscle_outputs_are_made_on_the_poses_device():
    """The zero tensors lengths and forces are added into live on the input's device (meta: shapes only)."""
    _, _, model = snu()
    meta = model.to(device="meta")
    q = torch.zeros(2, model.nq, dtype=F64, device="meta")
    kin = kinematics(meta, q, torch.zeros(2, model.nv, dtype=F64, device="meta"))
    assert path_lengths(meta.muscles, kin.poses).device.type == "meta"
    tension = torch.zeros(2, model.muscles.count, dtype=F64, device="meta")
    assert link_forces(meta.muscles, kin.poses, tension).device.type == "meta"
    assert moment_arms(meta, q).device.type == "meta"
