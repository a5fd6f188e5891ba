"""The rigid ground contact's force laws against hand computations (issue 22: these kill mutants of
``tphys/rigid/contact.py`` that every other rigid test lets through, e.g. a dropped friction coefficient).

For a sphere of radius r whose centre c is at height z < r, the contact point is p = c - r·ẑ with
depth d = r - z; with point velocity v = (v_t, v_n):
    f_n = d · (ke + kd · max(-v_n, 0)),   f_t = -v_t/|v_t| · min(kf·|v_t|, mu·ke·d)
and the link receives the spatial force (p × f, f). A box sliding on the ground decelerates at mu·g.
"""

import math

import pytest
import torch

from tphys.rigid import RigidControl, RigidState, kinematics, load_mjcf, material, step
from tphys.rigid.contact import contact_points, ground_forces

KE, KD, KF, MU = 2e4, 300.0, 500.0, 0.6
R, OFFSET = 0.1, (0.05, -0.02, 0.0)  # sphere radius; the geom sits off the body origin


def sphere_model():
    xml = f"""<mujoco><worldbody><body pos="0 0 1"><freejoint/>
              <geom type="sphere" size="{R}" pos="{OFFSET[0]} {OFFSET[1]} {OFFSET[2]}" density="500"/>
              </body></worldbody></mujoco>"""
    model = load_mjcf(xml)
    return model._replace(material=material(contact_ke=KE, contact_kd=KD, contact_kf=KF, contact_mu=MU))


def forces_on_sphere(body_pos, lin_vel, ang_vel):
    """ground_forces for the sphere body at body_pos (identity orientation) with world linear/angular velocity."""
    model = sphere_model()
    q = model.q0[None].clone()
    q[0, :3] = torch.tensor(body_pos, dtype=torch.float64)
    qd = torch.tensor([[*lin_vel, *ang_vel]], dtype=torch.float64)
    kin = kinematics(model, q, qd)
    f = ground_forces(model, kin.poses, kin.velocities)
    assert f.shape == (1, model.num_links, 6)
    return f[0].sum(0), model  # the one body link (the world has no contact)


def expected(body_pos, lin_vel, ang_vel):
    """Hand computation of (torque about the origin, force) from the module docstring's law."""
    c = torch.tensor(body_pos, dtype=torch.float64) + torch.tensor(OFFSET, dtype=torch.float64)
    p = c - torch.tensor([0.0, 0.0, R], dtype=torch.float64)
    d = max(R - c[2].item(), 0.0)
    v_body = torch.tensor(lin_vel, dtype=torch.float64)
    w = torch.tensor(ang_vel, dtype=torch.float64)
    # a free joint's linear velocity is the body origin's; the point moves with v + w x (p - origin)
    v = v_body + torch.linalg.cross(w, p - torch.tensor(body_pos, dtype=torch.float64))
    vn, vt = v[2].item(), torch.tensor([v[0].item(), v[1].item(), 0.0], dtype=torch.float64)
    fn = d * (KE + KD * max(-vn, 0.0))
    speed = vt.norm().item()
    ft = -vt / speed * min(KF * speed, MU * KE * d) if speed > 0 else torch.zeros(3, dtype=torch.float64)
    f = ft + torch.tensor([0.0, 0.0, fn], dtype=torch.float64)
    return torch.cat((torch.linalg.cross(p, f), f))


@pytest.mark.parametrize("lin_vel,ang_vel,case", [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "at rest: spring only"),
    ((0.0, 0.0, -0.4), (0.0, 0.0, 0.0), "approaching: damping grows with depth"),
    ((0.0, 0.0, 0.4), (0.0, 0.0, 0.0), "separating: no damping (no pull)"),
    ((0.003, -0.004, 0.0), (0.0, 0.0, 0.0), "slow slide: viscous ramp kf·v below the cap"),
    ((1.5, -2.0, 0.0), (0.0, 0.0, 0.0), "fast slide: Coulomb cap mu·ke·d"),
    ((0.0, 0.0, 0.0), (3.0, 0.0, 0.0), "rolling about x: the point moves along y"),
    ((0.2, 0.1, -0.3), (0.5, -1.0, 2.0), "everything at once"),
])
def test_sphere_contact_force_matches_the_law(lin_vel, ang_vel, case):
    body_pos = (0.3, -0.2, R - 0.004)  # 4 mm deep below the geom's centre (geom offset has no z)
    got, _ = forces_on_sphere(body_pos, lin_vel, ang_vel)
    want = expected(body_pos, lin_vel, ang_vel)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=case)


def test_friction_cone_holds_at_the_cap():
    """Sliding fast without normal velocity: |f_t| = mu · f_n exactly, opposite to the sliding direction."""
    body_pos = (0.0, 0.0, R - 0.003)
    got, _ = forces_on_sphere(body_pos, (2.0, 1.0, 0.0), (0.0, 0.0, 0.0))
    f = got[3:]
    fn, ft = f[2].item(), f[:2]
    assert fn == pytest.approx(KE * 0.003, rel=1e-12)
    assert ft.norm().item() == pytest.approx(MU * fn, rel=1e-12)
    direction = torch.tensor([2.0, 1.0], dtype=torch.float64) / math.sqrt(5.0)
    torch.testing.assert_close(ft / ft.norm(), -direction, rtol=0, atol=1e-12)


def test_no_force_above_the_ground():
    got, _ = forces_on_sphere((0.0, 0.0, R + 0.01), (1.0, 0.0, -1.0), (1.0, 2.0, 3.0))
    assert torch.count_nonzero(got) == 0


def test_contact_point_and_depth():
    """The contact point is the sphere's lowest point (centre - r·ẑ, centre = body pos + R·geom offset), depth z - r."""
    model = sphere_model()
    q = model.q0[None].clone()
    q[0, :3] = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    half = math.sqrt(0.5)
    q[0, 3:7] = torch.tensor([half, 0.0, 0.0, half], dtype=torch.float64)  # 90 degrees about z: offset (x, y) -> (-y, x)
    kin = kinematics(model, q, torch.zeros(1, 6, dtype=torch.float64))
    point, depth = contact_points(model, kin.poses)
    centre = torch.tensor([0.3 - OFFSET[1], -0.2 + OFFSET[0], 0.5], dtype=torch.float64)
    torch.testing.assert_close(point[0, 0], centre - torch.tensor([0.0, 0.0, R], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(depth[0, 0], torch.tensor(0.5 - R, dtype=torch.float64), rtol=0, atol=1e-12)


def test_contact_forces_keep_float32():
    """dtype follows the caller: a float32 model gives float32 forces."""
    model32 = sphere_model().to(dtype=torch.float32)
    q = model32.q0[None].clone()
    q[0, 2] = R - 0.004
    kin = kinematics(model32, q, torch.ones(1, 6, dtype=torch.float32))
    f = ground_forces(model32, kin.poses, kin.velocities)
    assert f.dtype == torch.float32 and f.abs().sum() > 0


def test_box_sliding_on_the_ground_decelerates_at_mu_g():
    """A box resting on its penalty springs, pushed along x, slows at mu·g (Coulomb friction at the cap)."""
    xml = """<mujoco><worldbody><body pos="0 0 1"><freejoint/>
             <geom type="box" size="0.2 0.1 0.05" density="800"/></body></worldbody></mujoco>"""
    model = load_mjcf(xml)
    model = model._replace(material=material(contact_ke=2e4, contact_kd=0.0, contact_kf=1e3, contact_mu=MU))
    mass = model.links.mass.sum().item()
    q = model.q0[None].clone()
    q[0, 2] = 0.05 - mass * 9.81 / (2e4 * 4)  # the 4 bottom corners carry the weight
    v0 = 2.0
    state = RigidState(q, torch.tensor([[v0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    frames, dt = 10, 1 / 60
    for _ in range(frames):
        state = step(model, state, RigidControl(torch.zeros(1, 0, dtype=torch.float64)), dt, substeps=16)
    t = frames * dt
    assert state.qd[0, 0].item() == pytest.approx(v0 - MU * 9.81 * t, rel=0.02)
    assert abs(state.qd[0, 1].item()) < 1e-9  # no sideways drift


def test_contact_forces_follow_the_callers_device():
    """device follows the caller: on the "meta" device (shapes only, no GPU needed) a helper tensor made on the
    default device instead of the caller's one makes torch refuse the mixed-device op."""
    model = sphere_model().to(device="meta")
    q = model.q0[None].clone()
    kin = kinematics(model, q, torch.ones(1, 6, dtype=torch.float64, device="meta"))
    point, _ = contact_points(model, kin.poses)
    f = ground_forces(model, kin.poses, kin.velocities)
    assert point.device.type == "meta" and f.device.type == "meta" and f.shape == (1, model.num_links, 6)


def test_batched_envs_equal_one_at_a_time():
    """Three envs at once (a batch of 3: the cross products must run over xyz, not over the env axis) equal each
    env alone."""
    model = sphere_model()
    q = model.q0[None].repeat(3, 1)
    q[:, :3] = torch.tensor([[0.3, -0.2, R - 0.004], [0.0, 0.1, R - 0.002], [-0.4, 0.2, R - 0.006]], dtype=torch.float64)
    qd = torch.tensor([[0.2, 0.1, -0.3, 0.5, -1.0, 2.0], [1.5, -2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.4, 3.0, 0.0, 0.0]],
                      dtype=torch.float64)
    kin = kinematics(model, q, qd)
    batched = ground_forces(model, kin.poses, kin.velocities)
    for i in range(3):
        ki = kinematics(model, q[i:i + 1], qd[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], ground_forces(model, ki.poses, ki.velocities), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched[i].sum(0), expected(q[i, :3].tolist(), qd[i, :3].tolist(), qd[i, 3:].tolist()),
                                   rtol=1e-9, atol=1e-9)
