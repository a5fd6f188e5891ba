"""Fast, deterministic laws of the rigid dynamics and its substep (issue 22: the mutation job's tests for
``tphys/rigid/dynamics.py`` and ``tphys/rigid/integrator.py``).

MuJoCo (a test dependency) is the reference for H, C, passive and actuator forces, qdd and the position update at fixed
states (``test_mujoco.py`` does the same under Hypothesis, too slow to run per mutant); the joint-limit penalty, the
external-force term of C and the semi-implicit substep are checked against hand computations.
"""


import mujoco
import numpy as np
import pytest
import torch
from mujoco_reference import models, random_state

from tphys.rigid import RigidControl, RigidState, bias_forces, joint_accelerations, kinematics, load_mjcf, mass_matrix, model_path
from tphys.rigid import step as rigid_step
from tphys.rigid.dynamics import actuator_forces, limit_forces, passive_forces
from tphys.rigid.integrator import external_forces, generalized_forces, integrate_positions, substep


def state(mj, seed, scale=0.7):
    return random_state(mj, seed, scale)


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


@pytest.mark.parametrize("name", ["hopper", "ant", "humanoid"])
def test_mass_matrix_bias_passive_actuator_and_qdd_equal_mujoco(name):
    """hopper: slides + hinges; ant: free base; humanoid: free base, springs, damping, armature, 17 motors
    (controls outside their range: the clamp)."""
    mj, data, model = models(name)
    for seed in (3, 11):
        qpos, qvel, ctrl = state(mj, seed)
        data.qpos[:], data.qvel[:], data.ctrl[:] = qpos, qvel, ctrl
        mujoco.mj_forward(mj, data)
        q, qd, u = (torch.tensor(x)[None] for x in (qpos, qvel, ctrl))
        kin = kinematics(model, q, qd)
        full = np.zeros((mj.nv, mj.nv))
        mujoco.mj_fullM(mj, data, full)
        assert rel(mass_matrix(model, kin)[0].numpy(), full) < 1e-9
        assert rel(bias_forces(model, kin, qd)[0].numpy(), data.qfrc_bias) < 1e-9
        assert rel(passive_forces(model, q, qd)[0].numpy(), data.qfrc_passive) < 1e-9
        assert rel(actuator_forces(model, u)[0].numpy(), data.qfrc_actuator) < 1e-9
        tau = passive_forces(model, q, qd) + actuator_forces(model, u)
        assert rel(joint_accelerations(model, kin, qd, tau)[0].numpy(), data.qacc) < 1e-6


def test_passive_forces_by_hand():
    """-damping·qd - stiffness·(q - springref) on the hinge/slide dofs, zero on the free base's dofs."""
    _, _, model = models("humanoid")
    dofs = model.dofs
    g = torch.Generator().manual_seed(0)
    q = model.q0[None] + 0.3 * torch.randn(1, model.nq, generator=g, dtype=torch.float64)
    qd = torch.randn(1, model.nv, generator=g, dtype=torch.float64)
    expected = -dofs.damping * qd
    expected[:, dofs.scalar] -= dofs.stiffness * (q[:, dofs.scalar_q] - dofs.springref)
    assert (dofs.stiffness != 0).sum() > 5
    torch.testing.assert_close(passive_forces(model, q, qd), expected, rtol=1e-13, atol=1e-13)
    springref = dofs.springref + 0.25  # a shifted rest angle moves the spring force by -stiffness·0.25
    shifted = model._replace(dofs=dofs._replace(springref=springref))
    delta = torch.zeros_like(qd)
    delta[:, dofs.scalar] = 0.25 * dofs.stiffness
    torch.testing.assert_close(passive_forces(shifted, q, qd), expected + delta, rtol=1e-13, atol=1e-13)


def test_limit_penalty_by_hand_and_at_the_boundary():
    """ke·(lower - q) - kd·qd below the range, ke·(upper - q) - kd·qd above, zero inside and exactly at a bound
    (no damping there either)."""
    _, _, model = models("hopper")
    dofs = model.dofs
    assert (dofs.limited > 0).sum() == 3
    i, j, k = [int(x) for x in torch.nonzero(dofs.limited > 0)[:, 0]]  # indices into the hinge/slide dofs
    ke, kd = 300.0, 7.0
    q = model.q0[None].clone()
    qd = torch.zeros(1, model.nv, dtype=torch.float64)
    q[0, dofs.scalar_q[i]] = dofs.lower[i] - 0.1
    q[0, dofs.scalar_q[j]] = dofs.upper[j] + 0.2
    q[0, dofs.scalar_q[k]] = dofs.lower[k]  # on the bound: inside
    qd[0, dofs.scalar[i]], qd[0, dofs.scalar[j]], qd[0, dofs.scalar[k]] = 0.5, -1.5, 3.0
    out = limit_forces(model, q, qd, ke, kd)
    expected = torch.zeros_like(qd)
    expected[0, dofs.scalar[i]] = ke * 0.1 - kd * 0.5
    expected[0, dofs.scalar[j]] = -ke * 0.2 + kd * 1.5
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-10)
    q[0, dofs.scalar_q[k]] = dofs.upper[k]  # the upper bound: inside too
    torch.testing.assert_close(limit_forces(model, q, qd, ke, kd), expected, rtol=1e-12, atol=1e-10)
    q[0, dofs.scalar_q[k]] = 0.5 * (dofs.lower[k] + dofs.upper[k])
    torch.testing.assert_close(limit_forces(model, q, qd, ke, kd), expected, rtol=1e-12, atol=1e-10)
    unlimited = model._replace(dofs=dofs._replace(limited=torch.zeros_like(dofs.limited)))
    assert limit_forces(unlimited, q, qd, ke, kd).abs().max() == 0


def test_actuator_forces_are_gear_times_clamped_control_on_the_motor_dof():
    _, _, model = models("hopper")
    act = model.actuators
    u = torch.tensor([[0.5, -3.0, 2.0]], dtype=torch.float64)
    expected = torch.zeros(1, model.nv, dtype=torch.float64)
    for a, value in enumerate((0.5, -1.0, 1.0)):
        expected[0, act.dof[a]] += act.gear[a] * value
    assert (act.gear != 1).all()
    torch.testing.assert_close(actuator_forces(model, u), expected, rtol=0, atol=0)


def test_external_wrench_enters_the_bias_with_a_minus_sign():
    """C(g) = C(g = 0, external = each link's weight as a world spatial force (com × m·g, m·g)); and a pure force on a
    link changes C by -Jᵀ f (checked against the mass matrix's J: an external force that equals I·(S qdd) gives qdd)."""
    mj, _, model = models("ant")
    qpos, qvel, _ = state(mj, 5)
    q, qd = torch.tensor(qpos)[None], torch.tensor(qvel)[None]
    kin = kinematics(model, q, qd)
    com = kin.poses.pos + (kin.poses.rot @ model.links.com[..., None])[..., 0]
    weight = model.links.mass[None, :, None] * model.gravity
    wrench = torch.cat((torch.cross(com, weight, dim=-1), weight), -1)
    zero_g = model._replace(gravity=torch.zeros_like(model.gravity))
    torch.testing.assert_close(bias_forces(zero_g, kin, qd, wrench), bias_forces(model, kin, qd), rtol=1e-11, atol=1e-9)
    # qdd from an external wrench alone (no gravity, no velocity): H qdd = Jᵀ w
    still = torch.zeros_like(qd)
    kin0 = kinematics(model, q, still)
    w = torch.zeros_like(wrench)
    w[:, 3, 3:] = torch.tensor([0.0, 0.0, 40.0], dtype=torch.float64)
    qdd = joint_accelerations(zero_g, kin0, still, torch.zeros_like(qd), w)
    jac = kin0.subspaces.transpose(-1, -2)[:, None] * model.dofs.ancestor[:, None, :]  # [N, L, 6, D]
    jt_w = torch.einsum("nlsd,nls->nd", jac, w)
    torch.testing.assert_close(mass_matrix(model, kin0) @ qdd[..., None], jt_w[..., None], rtol=1e-10, atol=1e-10)
    assert jt_w.abs().max() > 1.0


@pytest.mark.parametrize("name", ["hopper", "ant", "snu_humanoid"])
def test_position_update_equals_mujoco_integrate_pos(name):
    """Slides/hinges q += h·qd; free joints: position += h·v, quaternion ⊗ exp(h·ω/2); ball joints (snu) likewise."""
    mj = mujoco.MjModel.from_xml_path(str(model_path(name)))
    model = load_mjcf(model_path(name))
    qpos, qvel, _ = state(mj, 7)
    h = 0.013
    out = integrate_positions(model, torch.tensor(qpos)[None], torch.tensor(qvel)[None], h)[0].numpy()
    ref = qpos.copy()
    mujoco.mj_integratePos(mj, ref, qvel, h)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_substep_is_semi_implicit_euler_with_every_joint_force():
    """qd' = qd + h·H⁻¹(τ - C), τ = motors + damping/springs + limit penalty (the material's ke, kd), and the
    positions move with the new velocity qd' (symplectic)."""
    _, _, model = models("humanoid")
    g = torch.Generator().manual_seed(2)
    q = model.q0[None] + 0.4 * torch.randn(1, model.nq, generator=g, dtype=torch.float64)
    quat = slice(3, 7)
    q[:, quat] = q[:, quat] / q[:, quat].norm(dim=-1, keepdim=True)
    qd = torch.randn(1, model.nv, generator=g, dtype=torch.float64)
    u = torch.rand(1, model.num_actuators, generator=g, dtype=torch.float64) * 2 - 1
    mat = model.material
    tau = actuator_forces(model, u) + passive_forces(model, q, qd) + limit_forces(model, q, qd, mat.limit_ke, mat.limit_kd)
    assert limit_forces(model, q, qd, mat.limit_ke, mat.limit_kd).abs().max() > 1.0  # some limits are violated here
    torch.testing.assert_close(generalized_forces(model, q, qd, u), tau, rtol=1e-13, atol=1e-12)
    h = 0.004
    qdd = joint_accelerations(model, kinematics(model, q, qd), qd, tau)
    q1, qd1 = substep(model, q, qd, u, h, contact=False)
    torch.testing.assert_close(qd1, qd + h * qdd, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(q1, integrate_positions(model, q, qd + h * qdd, h), rtol=1e-12, atol=1e-11)
    # with contact: the ground's link forces enter qdd as external forces
    low = q.clone()
    low[:, 2] = 0.2  # torso low: feet and hands below the ground
    kin = kinematics(model, low, qd)
    ext = external_forces(model, kin, True, None)
    assert ext is not None and ext.abs().max() > 1.0 and external_forces(model, kin, False, None) is None
    tau_low = generalized_forces(model, low, qd, u)
    _, qd2 = substep(model, low, qd, u, h, contact=True)
    torch.testing.assert_close(qd2, qd + h * joint_accelerations(model, kin, qd, tau_low, ext), rtol=1e-12, atol=1e-11)


def test_step_runs_substeps_of_dt_over_substeps_and_checks_control_shapes():
    _, _, model = models("hopper")
    g = torch.Generator().manual_seed(4)
    q = model.q0[None] + 0.1 * torch.randn(1, model.nq, generator=g, dtype=torch.float64)
    qd = torch.randn(1, model.nv, generator=g, dtype=torch.float64)
    u = torch.tensor([[0.3, -0.2, 0.9]], dtype=torch.float64)
    out = rigid_step(model, RigidState(q, qd), RigidControl(u), 0.01, substeps=3)
    x, v = q, qd
    for _ in range(3):
        x, v = substep(model, x, v, u, 0.01 / 3, True)
    torch.testing.assert_close(out.q, x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.qd, v, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="control has 2 entries per env, the model has 3 actuators"):
        rigid_step(model, RigidState(q, qd), RigidControl(u[:, :2]), 0.01)


def test_muscle_pulls_enter_the_substep_and_activations_are_checked():
    """snu_humanoid: the muscles' link forces (tensions = max_force·clamped activation) are external forces of the
    substep; a wrong activation count is an error naming both counts."""
    model = load_mjcf(model_path("snu_humanoid"))
    m = model.muscles.count
    q, qd = model.q0[None].clone(), torch.zeros(1, model.nv, dtype=torch.float64)
    a = torch.full((1, m), 0.6, dtype=torch.float64)
    from tphys.rigid.muscles import link_forces, tensions

    low = q.clone()
    low[0, 2] -= 0.1  # sunk into the ground: contact forces and muscle pulls together
    kin_low = kinematics(model, low, qd)
    ground = external_forces(model, kin_low, True, None)
    assert ground.abs().max() > 1.0
    pull_low = link_forces(model.muscles, kin_low.poses, tensions(model.muscles, a))
    torch.testing.assert_close(external_forces(model, kin_low, True, a), ground + pull_low)
    kin = kinematics(model, q, qd)
    pull = link_forces(model.muscles, kin.poses, tensions(model.muscles, a))
    torch.testing.assert_close(external_forces(model, kin, False, a), pull)
    u = torch.zeros(1, 0, dtype=torch.float64)
    one = rigid_step(model, RigidState(q, qd), RigidControl(u, a), 0.002, substeps=1, contact=False)
    tau = generalized_forces(model, q, qd, u)
    torch.testing.assert_close(one.qd, 0.002 * joint_accelerations(model, kin, qd, tau, pull), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=f"control has {m - 1} muscle activations per env, the model has {m} muscles"):
        rigid_step(model, RigidState(q, qd), RigidControl(u, a[:, 1:]), 0.002)


def test_actuator_forces_are_made_on_the_controls_device():
    """The zero tensor the motor torques are added into lives on the control's device (meta here: shapes only, so a
    CPU-only run still tells devices apart)."""
    _, _, model = models("hopper")
    u = torch.zeros(2, 3, dtype=torch.float64, device="meta")
    out = actuator_forces(model.to(device="meta"), u)
    assert out.device.type == "meta" and out.shape == (2, model.nv) and out.dtype == torch.float64


def test_step_defaults_are_16_substeps_with_ground_contact():
    """A hopper dropped onto the ground (contact matters): ``step``'s defaults are 16 substeps of dt/16 with contact."""
    _, _, model = models("hopper")
    q = model.q0[None].clone()
    q[0, 1] -= 1.2  # rootz slide down: the feet below the ground
    qd = torch.zeros(1, model.nv, dtype=torch.float64)
    u = torch.zeros(1, 3, dtype=torch.float64)
    out = rigid_step(model, RigidState(q, qd), RigidControl(u), 0.008)
    x, v = q, qd
    for _ in range(16):
        x, v = substep(model, x, v, u, 0.008 / 16, True)
    torch.testing.assert_close(out.qd, v, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(substep(model, q, qd, u, 0.0005)[1], substep(model, q, qd, u, 0.0005, True)[1], rtol=0, atol=0)
    x2, v2 = q, qd
    for _ in range(16):
        x2, v2 = substep(model, x2, v2, u, 0.008 / 16, False)
    assert (v - v2).abs().max() > 1e-3  # contact changed the result


def test_step_hands_activations_to_a_substep_fn_only_when_given_and_recomputes_in_backward():
    """``substep_fn(q, qd, u)`` without activations (a 3-argument function works); recompute="step" reruns the frame's
    substeps in backward (the calls double)."""
    _, _, model = models("hopper")
    calls = []

    def three(q, qd, u):
        calls.append(1)
        return substep(model, q, qd, u, 0.002, False)

    q = model.q0[None].clone()
    qd = torch.zeros(1, model.nv, dtype=torch.float64, requires_grad=True)
    u = torch.zeros(1, 3, dtype=torch.float64)
    out = rigid_step(model, RigidState(q, qd), RigidControl(u), 0.004, substeps=2, substep_fn=three, recompute="step")
    assert len(calls) == 2
    out.q.sum().backward()
    assert len(calls) == 4 and qd.grad is not None
    plain = rigid_step(model, RigidState(q, qd), RigidControl(u), 0.004, substeps=2, substep_fn=three)
    plain.q.sum().backward()
    assert len(calls) == 6


@pytest.mark.parametrize("name", ["ant", "snu_humanoid"])
def test_position_update_stays_on_the_states_device(name):
    """Free and ball joints' index ranges are made on q's device (meta: shapes only, so a CPU-only run tells devices
    apart)."""
    model = load_mjcf(model_path(name)).to(device="meta")
    q = torch.zeros(2, model.nq, dtype=torch.float64, device="meta")
    qd = torch.zeros(2, model.nv, dtype=torch.float64, device="meta")
    out = integrate_positions(model, q, qd, 0.01)
    assert out.device.type == "meta" and out.shape == (2, model.nq)
