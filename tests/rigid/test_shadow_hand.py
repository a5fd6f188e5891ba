"""The Shadow hand's kinematic tree (gymnasium-robotics' MJCF) against MuJoCo's forward kinematics of the same file."""

import numpy as np
import pytest
import torch

from tphys.rigid.shadow_hand import JOINTS, PREFIX, asset_path, body_poses, geom_poses, load_shadow_hand

mujoco = pytest.importorskip("mujoco")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bodies_and_collision_geoms_match_mujoco(seed):
    hand = load_shadow_hand(1.0)
    model = mujoco.MjModel.from_xml_path(str(asset_path().with_name("reach.xml")))
    data = mujoco.MjData(model)
    q = np.random.default_rng(seed).uniform(hand.lower.numpy(), hand.upper.numpy())
    for k, name in enumerate(JOINTS):
        data.qpos[model.jnt_qposadr[model.joint(PREFIX + name).id]] = q[k]
    mujoco.mj_kinematics(model, data)
    mount = model.body(PREFIX + "hand mount").id
    base = torch.tensor(data.xpos[mount]), torch.tensor(data.xmat[mount].reshape(3, 3))
    position, rotation = body_poses(hand, torch.tensor(q)[None], *base)
    for k, name in enumerate(JOINTS):
        body = model.jnt_bodyid[model.joint(PREFIX + name).id]
        np.testing.assert_allclose(position[0, k].numpy(), data.xpos[body], atol=1e-12)
        np.testing.assert_allclose(rotation[0, k].numpy(), data.xmat[body].reshape(3, 3), atol=1e-12)
    position, rotation = geom_poses(hand, torch.tensor(q)[None], *base)
    names = [model.geom(i).name for i in range(model.ngeom)]
    colliders = [i for i, n in enumerate(names) if n.startswith(PREFIX + "C_") and model.geom_type[i] != mujoco.mjtGeom.mjGEOM_MESH]
    assert len(colliders) == len(hand.geom_kind) == 19
    for g, i in enumerate(colliders):
        matrix = data.geom_xmat[i].reshape(3, 3)
        np.testing.assert_allclose(position[0, g].numpy(), data.geom_xpos[i], atol=1e-12)
        if hand.geom_kind[g] == "capsule":  # our capsules run along local y, MuJoCo's along local z
            np.testing.assert_allclose(rotation[0, g, :, 1].numpy(), matrix[:, 2], atol=1e-12)
            np.testing.assert_allclose(hand.geom_size[g, :2].numpy(), model.geom_size[i, :2], atol=1e-12)
        else:
            np.testing.assert_allclose(rotation[0, g].numpy(), matrix, atol=1e-12)
            np.testing.assert_allclose(hand.geom_size[g].numpy(), model.geom_size[i], atol=1e-12)


def test_limits_and_scale():
    small, large = load_shadow_hand(1.0), load_shadow_hand(2.5)
    torch.testing.assert_close(large.offset, 2.5 * small.offset)
    torch.testing.assert_close(large.geom_size, 2.5 * small.geom_size)
    assert small.lower[JOINTS.index("THJ0")] == pytest.approx(-1.571) and small.upper[JOINTS.index("LFJ4")] == pytest.approx(0.785)
