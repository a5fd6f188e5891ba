"""Muscle-tendon units (``tphys.rigid.muscles``): path lengths, moment arms and forces, float64.

* On the SNU humanoid (tphys/rigid/assets/snu_humanoid.xml, 152 muscles) at random poses: path lengths equal
  MuJoCo's spatial tendons through the same sites (``ten_length``), moment arms dL/dq equal MuJoCo's tendon
  Jacobian (``ten_J``), and the joint forces of random activations equal MuJoCo's ``qfrc_actuator`` (general
  actuators of gain F_max, gear -1 on those tendons), all to 1e-9.
* On a random small tree (hinge, slide, ball, free joints; via points on random links): a spring-like muscle
  (tension k (L - rest)) gives joint forces -dE/dq of its energy k/2 (L - rest)², by central finite differences
  in every dof (quaternions moved on the sphere), and the link-force route the simulator uses equals Jᵀ f of
  the moment arms; moment arms are central differences of path lengths.
* One simulator step is differentiable in the activations (``torch.autograd.gradcheck``).
"""

import mujoco
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mujoco_reference import models, random_qpos

from tphys.rigid import Body, Joint, RigidBuilder, RigidControl, RigidState, bias_forces, kinematics, step
from tphys.rigid.integrator import integrate_positions
from tphys.rigid.muscles import build_muscles, generalized_forces, link_forces, moment_arms, path_lengths, tensions

F64 = torch.float64


def snu():
    return models("snu_humanoid")


def muscle_joint_forces(model, q, tension):
    """τ [N, D] of tensions through the simulator's route: link forces into recursive Newton-Euler."""
    qd = torch.zeros(q.shape[0], model.nv, dtype=q.dtype)
    kin = kinematics(model, q, qd)
    return bias_forces(model, kin, qd) - bias_forces(model, kin, qd, link_forces(model.muscles, kin.poses, tension))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 0.4, 1.0]))
def test_snu_paths_match_mujoco_tendons(seed, scale):
    mj, data, model = snu()
    rng = np.random.default_rng(seed)
    qpos, ctrl = random_qpos(mj, rng, scale), rng.uniform(-0.2, 1.2, size=mj.nu)
    data.qpos[:], data.qvel[:], data.ctrl[:] = qpos, 0.0, ctrl
    mujoco.mj_forward(mj, data)
    q, u = torch.tensor(qpos)[None], torch.tensor(ctrl)[None]
    kin = kinematics(model, q, torch.zeros(1, model.nv, dtype=F64))
    np.testing.assert_allclose(path_lengths(model.muscles, kin.poses)[0].numpy(), data.ten_length, rtol=0, atol=1e-9)
    ten_j = np.zeros((mj.ntendon, mj.nv))  # MuJoCo keeps the tendon Jacobian sparse
    mujoco.mju_sparse2dense(ten_j, data.ten_J, mj.ten_J_rownnz, mj.ten_J_rowadr, mj.ten_J_colind)
    np.testing.assert_allclose(moment_arms(model, q)[0].numpy(), ten_j, rtol=0, atol=1e-9)
    tau = muscle_joint_forces(model, q, tensions(model.muscles, u))[0].numpy()
    np.testing.assert_allclose(tau, data.qfrc_actuator, rtol=0, atol=1e-9 * max(1.0, np.abs(data.qfrc_actuator).max()))


def small_model(seed: int):
    """A random tree: free root, a ball child, a hinge + slide grandchild, a hinge sibling; 4 random muscles."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (2 * torch.rand(*shape, generator=gen, dtype=F64) - 1).tolist()

    b = RigidBuilder()
    inertia = torch.diag(torch.tensor([0.02, 0.03, 0.04], dtype=F64))
    b.add_body(Body("root", -1, pos=(0.0, 0.0, 1.0), mass=2.0, inertia=inertia, joints=[Joint("free")]))
    b.add_body(Body("ball", 0, pos=tuple(r(3)), mass=1.0, inertia=inertia, joints=[Joint("ball", pos=tuple(r(3)))]))
    b.add_body(Body("arm", 1, pos=tuple(r(3)), mass=1.0, inertia=inertia,
                    joints=[Joint("hinge", axis=tuple(r(3)), pos=tuple(r(3))), Joint("slide", axis=tuple(r(3)))]))
    b.add_body(Body("leg", 0, pos=tuple(r(3)), mass=1.0, inertia=inertia, joints=[Joint("hinge", axis=tuple(r(3)))]))
    model = b.finalize()
    links = model.names["body_links"]
    paths = [[(links[i], r(3)) for i in route] for route in ([0, 1, 2], [0, 0, 3], [2, 1, 0, 3], [3, 0, 1, 1, 2])]
    muscles = build_muscles(paths, [1.0] * len(paths))
    q = integrate_positions(model, model.q0[None], torch.tensor([r(model.nv)], dtype=F64), 1.0)  # a random pose
    return model._replace(muscles=muscles), q


def moved(model, q, eps):
    """[D, nq]: q moved by eps along each generalized velocity (quaternions rotated, not added to)."""
    return integrate_positions(model, q.expand(model.nv, -1), torch.eye(model.nv, dtype=F64), eps)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_spring_muscle_forces_are_minus_energy_gradient(seed):
    model, q = small_model(seed)
    k = torch.tensor([30.0, 10.0, 5.0, 20.0], dtype=F64)
    rest = path_lengths(model.muscles, kinematics(model, q, torch.zeros(1, model.nv, dtype=F64)).poses) * 0.8

    def lengths(x):  # [B, M]
        return path_lengths(model.muscles, kinematics(model, x, torch.zeros(x.shape[0], model.nv, dtype=F64)).poses)

    def energy(x):  # [B]
        return (0.5 * k * (lengths(x) - rest) ** 2).sum(-1)

    tension = k * (lengths(q) - rest)
    eps = 1e-6
    plus, minus = moved(model, q, eps), moved(model, q, -eps)
    fd_energy = (energy(plus) - energy(minus)) / (2 * eps)  # [D]
    fd_lengths = ((lengths(plus) - lengths(minus)) / (2 * eps)).T  # [M, D]
    tau_links = muscle_joint_forces(model, q, tension)[0]
    tau_arms = generalized_forces(model, q, tension)[0]
    torch.testing.assert_close(moment_arms(model, q)[0], fd_lengths, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tau_arms, -fd_energy, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tau_links, tau_arms, rtol=1e-10, atol=1e-10)


def test_step_is_differentiable_in_activation():
    model, q = small_model(3)
    state = RigidState(q, torch.zeros(1, model.nv, dtype=F64))

    def final(activation):
        new = step(model, state, RigidControl(torch.zeros(1, 0, dtype=F64), activation), 1 / 60, substeps=2, contact=False)
        return torch.cat((new.q, new.qd), -1)

    activation = torch.tensor([[0.2, 0.5, 0.7, 0.4]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(final, (activation,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_muscles_pull_and_check_shapes():
    model, q = small_model(5)
    state = RigidState(q, torch.zeros(1, model.nv, dtype=F64))
    with pytest.raises(ValueError, match="muscle activations"):
        step(model, state, RigidControl(torch.zeros(1, 0, dtype=F64), torch.zeros(1, 3, dtype=F64)), 1 / 60)
    # a pulled muscle shortens: after a short step from rest without gravity, every lone-pulled path got shorter
    model = model._replace(gravity=torch.zeros(3, dtype=F64))
    for m in range(model.num_muscles):
        activation = torch.zeros(1, model.num_muscles, dtype=F64)
        activation[0, m] = 1.0
        new = step(model, state, RigidControl(torch.zeros(1, 0, dtype=F64), activation), 1 / 60, substeps=4, contact=False)
        before, after = (path_lengths(model.muscles, kinematics(model, x, state.qd).poses)[0, m] for x in (q, new.q))
        assert after < before


def test_recompute_modes_give_the_same_activation_gradient():
    model, q = small_model(3)
    state = RigidState(q, torch.zeros(1, model.nv, dtype=F64))
    grads = []
    for recompute in ("none", "step", "substep"):
        activation = torch.tensor([[0.2, 0.5, 0.7, 0.4]], dtype=F64, requires_grad=True)
        new = step(model, state, RigidControl(torch.zeros(1, 0, dtype=F64), activation), 1 / 60, substeps=3, contact=False,
                   recompute=recompute)
        (new.q.sum() + new.qd.sum()).backward()
        grads.append(activation.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-12, atol=0)
