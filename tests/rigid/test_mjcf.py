"""MJCF loading: defaults, frames, inertia from geoms, clear errors on what is not supported."""

import math

import pytest
import torch

from tphys.math import axis_angle_to_matrix, matrix_to_quat, quat_integrate, quat_mul, quat_to_matrix
from tphys.rigid import load_mjcf, model_path


def test_default_classes_and_childclass():
    xml = """<mujoco><compiler angle="radian"/>
      <default><joint damping="2"/><default class="stiff"><joint damping="7" armature="0.5"/></default></default>
      <worldbody><body name="a" childclass="stiff"><joint name="j1" axis="0 1 0"/><geom size="0.1"/>
        <body name="b" pos="0 0 -0.3"><joint name="j2" class="main" axis="1 0 0"/><geom size="0.1"/></body></body>
      </worldbody></mujoco>"""
    model = load_mjcf(xml)
    assert model.dofs.damping.tolist() == [7.0, 2.0]
    assert model.dofs.armature.tolist() == [0.5, 0.0]


def test_capsule_fromto_mass_and_contacts():
    xml = """<mujoco><worldbody><body><freejoint/>
      <geom type="capsule" fromto="0 0 0 0.4 0 0" size="0.05" density="1000"/></body></worldbody></mujoco>"""
    model = load_mjcf(xml)
    expected = 1000 * (math.pi * 0.05**2 * 0.4 + 4 / 3 * math.pi * 0.05**3)
    assert model.links.mass.sum().item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(model.links.com[0], torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64))
    ends = sorted(p[0] for p in model.contacts.pos.tolist())
    assert ends == pytest.approx([0.0, 0.4]) and model.contacts.radius.tolist() == [0.05, 0.05]


@pytest.mark.parametrize("xml,error,match", [
    ("<robot/>", ValueError, "not an MJCF"),
    ("<mujoco><worldbody><body><joint class='nope'/><geom size='1'/></body></worldbody></mujoco>", ValueError, "unknown default class"),
    ("<mujoco><worldbody><body><joint type='screw'/><geom size='1'/></body></worldbody></mujoco>", ValueError, "unknown joint type"),
    ("<mujoco><worldbody><body><joint/><geom size='1'/></body></worldbody><actuator><position joint='x'/></actuator></mujoco>",
     NotImplementedError, "only <motor>"),
    ("<mujoco><worldbody><body><joint name='a'/><geom size='1'/></body></worldbody><actuator><motor joint='b'/></actuator></mujoco>",
     ValueError, "no joint named 'b'"),
    ("<mujoco><worldbody><body><geom size='1'/><body><freejoint/><geom size='1'/></body></body></worldbody></mujoco>",
     ValueError, "free joint"),
    ("<mujoco><worldbody><body><geom size='1'/></body></worldbody></mujoco>", ValueError, "no degrees of freedom"),
])
def test_errors(xml, error, match):
    with pytest.raises(error, match=match):
        load_mjcf(xml)


def test_missing_file_and_unknown_model():
    with pytest.raises(FileNotFoundError):
        load_mjcf("/nonexistent/ant.xml")
    with pytest.raises(KeyError, match="unknown rigid model"):
        model_path("anymal")


def test_quaternion_helpers():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(100, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    torch.testing.assert_close(matrix_to_quat(quat_to_matrix(q)), q)
    r = torch.randn(100, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quat_to_matrix(quat_mul(q, r)), quat_to_matrix(q) @ quat_to_matrix(r))
    axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    turned = quat_integrate(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), axis * 0.3, 2.0)  # 0.6 rad about z
    torch.testing.assert_close(quat_to_matrix(turned), axis_angle_to_matrix(axis, torch.tensor(0.6, dtype=torch.float64)))


def test_model_cast_and_gymnasium_assets():
    model = load_mjcf(model_path("ant")).to(dtype=torch.float32)
    assert model.q0.dtype == torch.float32 and model.links.inertia.dtype == torch.float32
    assert model.dofs.link.dtype == torch.long
    assert model.names["joints"]["hip_1"][2] == "hinge" and model.nv == 14
