"""Physical invariants of the rigid-body integrator: energy without dissipation, momentum of a free
body without gravity, and a rest state on the ground."""

import pytest
import torch

from tphys.rigid import RigidControl, RigidState, kinematics, load_mjcf, mass_matrix, material, model_path, step


def conservative(model, gravity=True):
    """The model with damping, springs, joint limits, armature (rotor inertia outside the bodies, whose reaction
    the links do not feel) and (optionally) gravity switched off."""
    dofs = model.dofs._replace(damping=torch.zeros_like(model.dofs.damping), stiffness=torch.zeros_like(model.dofs.stiffness),
                               armature=torch.zeros_like(model.dofs.armature))
    mat = material(limit_ke=0.0, limit_kd=0.0)
    return model._replace(dofs=dofs, material=mat, gravity=model.gravity if gravity else torch.zeros(3, dtype=torch.float64))


def energy(model, state):
    kin = kinematics(model, state.q, state.qd)
    kinetic = 0.5 * torch.einsum("nd,nde,ne->n", state.qd, mass_matrix(model, kin), state.qd)
    com = kin.poses.pos + (kin.poses.rot @ model.links.com[..., None])[..., 0]
    potential = -(model.links.mass * (com @ model.gravity)).sum(-1)
    return kinetic + potential


def test_energy_is_conserved_without_dissipation():
    """Humanoid (23 dofs, free base) in free fall for 1 s: semi-implicit Euler keeps the total energy within 0.1 %."""
    model = conservative(load_mjcf(model_path("humanoid")))
    g = torch.Generator().manual_seed(0)
    state = RigidState(model.q0[None].clone(), torch.randn(1, model.nv, generator=g, dtype=torch.float64))
    e0 = energy(model, state)
    zero = torch.zeros(1, model.num_actuators, dtype=torch.float64)
    for _ in range(60):
        state = step(model, state, RigidControl(zero), 1 / 60, substeps=32, contact=False)
    kinetic0 = 0.5 * torch.einsum("nd,nde,ne->n", state.qd, mass_matrix(model, kinematics(model, state.q, state.qd)), state.qd)
    assert kinetic0.item() > 1.0  # it moves
    assert abs(energy(model, state) - e0).item() < 1e-3 * abs(e0).item() + 1e-3 * kinetic0.item()


def test_momentum_of_a_free_body_without_gravity():
    """Ant floating in space with random joint velocities: linear and angular momentum are conserved up to the
    integrator's first-order error (drift shrinks 4x when the substep shrinks 4x)."""
    model = conservative(load_mjcf(model_path("ant")), gravity=False)

    def drift(substeps):
        g = torch.Generator().manual_seed(1)
        state = RigidState(model.q0[None].clone(), torch.randn(1, model.nv, generator=g, dtype=torch.float64))

        def momentum(s):
            kin = kinematics(model, s.q, s.qd)
            return (kin.inertias @ kin.velocities[..., None])[..., 0].sum(1)[0]

        h0 = momentum(state)
        for _ in range(30):
            state = step(model, state, RigidControl(torch.zeros(1, 8, dtype=torch.float64)), 1 / 60, substeps=substeps, contact=False)
        return (momentum(state) - h0).abs().max().item(), h0.abs().max().item()

    coarse, scale = drift(16)
    fine, _ = drift(64)
    assert coarse < 1e-3 * scale
    assert 3.0 < coarse / fine < 5.0


@pytest.mark.parametrize("shape,size,points,spin", [("sphere", "0.1", 1, 0.0), ("box", "0.2 0.1 0.05", 4, 2.0)])
def test_dropped_shape_comes_to_rest_at_the_analytic_penetration(shape, size, points, spin):
    """A free sphere / box (sliding and spinning) dropped from 2 cm settles with its weight on the penalty springs:
    depth m·g/(ke·points) (a sphere gets no spin: a point contact cannot stop it)."""
    xml = f"""<mujoco><worldbody><body pos="0 0 {float(size.split()[-1]) + 0.02}"><freejoint/>
              <geom type="{shape}" size="{size}" density="800"/></body></worldbody></mujoco>"""
    model = load_mjcf(xml)
    # DFlex's normal damping acts on approach only and scales with depth (kd·depth ~ 1e6 · 2 mm): a strong kd settles it
    model = model._replace(material=material(contact_ke=2e4, contact_kd=1e6, contact_kf=1e3, contact_mu=0.9))
    qd = torch.tensor([[0.3 * (spin > 0), 0.0, 0.0, 0.0, 0.0, spin]], dtype=torch.float64)
    state = RigidState(model.q0[None].clone(), qd)
    for _ in range(360):
        state = step(model, state, RigidControl(torch.zeros(1, 0, dtype=torch.float64)), 1 / 60, substeps=16)
    mass = model.links.mass.sum()
    half_height = float(size.split()[-1])
    expected = half_height - mass * 9.81 / (2e4 * points)
    assert state.qd.abs().max() < 1e-6
    assert abs(state.q[0, 2] - expected) < 1e-6
