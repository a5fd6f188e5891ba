"""The rigid engine's C frame (tphys/kernels/cpu/rigid.c, tphys.kernels.rigid_kernels) against its torch twin
(tphys.rigid.integrator.substep) in float64, against central finite differences, in float32, its dispatch rule, and the
DFlex envs with backend cpu vs torch.

States are chosen to exercise every branch: bodies lowered into the ground (contact points penetrating, sliding and
sticking), hinge/slide joints pushed beyond their ranges (limit penalties on), commands beyond the actuators' ranges
(saturation), and fast random velocities; each test asserts that its branch is actually hit.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torchrl.envs.utils import step_mdp

import tphys.envs as E
from tphys.autodiff import twice_differentiable
from tphys.kernels import rigid_kernels
from tphys.rigid.contact import contact_points
from tphys.rigid.integrator import RigidControl, RigidState, compiled_substep, route, step
from tphys.rigid.kinematics import forward_kinematics

NAMES = ("ant", "hopper", "cartpole_swingup", "cheetah", "humanoid")
pytestmark = pytest.mark.skipif(not rigid_kernels.available(torch.float64), reason="no C compiler")


def make_env(name, n=1, dtype=torch.float64, **options):
    return E.make(name, num_envs=n, dtype=dtype, **options)


def random_inputs(env, n, seed):
    """(q, qd, actuation) [n, ...] float64: reset states lowered into the ground, joints beyond their limits, saturated commands."""
    model, gen = env.model, torch.Generator().manual_seed(seed)
    q, qd = env.task.sample_initial(model, n, gen)
    q, qd = q.to(model.dtype), qd.to(model.dtype)
    dofs = model.dofs
    span = dofs.upper - dofs.lower
    rand = torch.rand(n, dofs.scalar.numel(), generator=gen, dtype=q.dtype)
    limited = dofs.limited > 0
    beyond = dofs.lower - 0.15 * span + 1.3 * span * rand  # 15% of the range outside each end
    beyond[0], beyond[1] = dofs.lower - 0.05 * span, dofs.upper + 0.05 * span  # envs 0 and 1: every limit hit
    q[:, dofs.scalar_q[limited]] = beyond[:, limited]
    qd = qd + torch.randn(qd.shape, generator=gen, dtype=q.dtype)
    actuation = 1.5 * torch.randn(n, model.num_actuators, generator=gen, dtype=q.dtype)
    if env.task.contact and model.contacts.link.numel():
        _, depth = contact_points(model, forward_kinematics(model, q))
        lift = depth.min(1).values + 0.01 + 0.02 * torch.rand(n, generator=gen, dtype=q.dtype)  # lowest point 1-3 cm deep
        links = model.links
        if links.free.numel():
            q[:, links.free_q[0] + 2] -= lift
        else:
            vertical = [int(links.slide_q[i]) for i in range(links.slide.numel())
                        if torch.allclose(links.slide_axis[i], torch.tensor([0.0, 0.0, 1.0], dtype=q.dtype))]
            q[:, vertical[0]] -= lift
    return q, qd, actuation


def branches(env, q, actuation):
    """Which branches a state hits: (penetrating contact points, joints beyond a limit, saturated commands)."""
    model, dofs = env.model, env.model.dofs
    penetrating = 0
    if env.task.contact and model.contacts.link.numel():
        penetrating = int((contact_points(model, forward_kinematics(model, q))[1] < 0).sum())
    pos = q[:, dofs.scalar_q]
    beyond = int((((pos < dofs.lower) | (pos > dofs.upper)) & (dofs.limited > 0)).sum())
    saturated = int(((actuation > env.model.actuators.upper) | (actuation < env.model.actuators.lower)).sum())
    return penetrating, beyond, saturated


def frame(env, q, qd, actuation, backend, frames=1):
    state = RigidState(q, qd)
    for _ in range(frames):
        state = step(env.model, state, RigidControl(actuation), env.dt, env.substeps, env.task.contact, backend=backend)
    return state


def frame_and_vjp(env, q, qd, actuation, backend, weights, frames=1):
    q, qd, actuation = (t.clone().requires_grad_() for t in (q, qd, actuation))
    out = frame(env, q, qd, actuation, backend, frames)
    loss = (out.q * weights[0]).sum() + (out.qd * weights[1]).sum()
    return (out.q.detach(), out.qd.detach(), *torch.autograd.grad(loss, (q, qd, actuation)))


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", NAMES)
def test_frame_matches_torch_twin_float64(name):
    """Forward (q', qd') to 1e-10 and the VJP w.r.t. q, qd, actuation to 1e-9 (relative to the largest entry), one frame of
    every env of a batch from states that hit contact, limits and saturation."""
    env = make_env(name)
    q, qd, u = random_inputs(env, 6, seed=1)
    penetrating, beyond, saturated = branches(env, q, u)
    assert beyond > 0 and saturated > 0 and (penetrating > 0 or not env.task.contact)
    gen = torch.Generator().manual_seed(2)
    weights = (torch.randn(q.shape, generator=gen, dtype=q.dtype), torch.randn(qd.shape, generator=gen, dtype=q.dtype))
    c_path = frame_and_vjp(env, q, qd, u, "cpu", weights)
    twin = frame_and_vjp(env, q, qd, u, "torch", weights)
    for k, (a, b) in enumerate(zip(c_path, twin)):
        assert torch.isfinite(a).all()
        assert relative(a, b) < (1e-10 if k < 2 else 1e-9), ("q", "qd", "dq", "dqd", "du")[k]


@pytest.mark.parametrize("name", ["ant", "hopper", "cartpole_swingup"])
def test_vjp_matches_central_differences_float64(name):
    """Directional derivative of a loss after 2 frames through the C path vs central differences (h = 1e-6)."""
    env = make_env(name)
    q, qd, u = random_inputs(env, 2, seed=3)
    gen = torch.Generator().manual_seed(4)
    weights = (torch.randn(q.shape, generator=gen, dtype=q.dtype), torch.randn(qd.shape, generator=gen, dtype=q.dtype))
    direction = [torch.randn(t.shape, generator=gen, dtype=q.dtype) for t in (q, qd, u)]
    *_, gq, gqd, gu = frame_and_vjp(env, q, qd, u, "cpu", weights, frames=2)
    analytic = float((gq * direction[0]).sum() + (gqd * direction[1]).sum() + (gu * direction[2]).sum())

    def loss(sign, eps=1e-6):
        with torch.no_grad():
            out = frame(env, q + sign * eps * direction[0], qd + sign * eps * direction[1], u + sign * eps * direction[2], "cpu", frames=2)
        return float((out.q * weights[0]).sum() + (out.qd * weights[1]).sum())

    numeric = (loss(1) - loss(-1)) / 2e-6
    assert abs(analytic - numeric) <= 1e-5 * max(abs(numeric), 1.0), (analytic, numeric)


@pytest.mark.parametrize("name", NAMES)
def test_float32_agrees(name):
    """The float32 C frame (double inside, state rounded per substep) agrees with the torch float32 frame to float32 accuracy."""
    env = make_env(name, dtype=torch.float32)
    q, qd, u = (t.float() for t in random_inputs(make_env(name), 4, seed=5))
    gen = torch.Generator().manual_seed(6)
    weights = (torch.randn(q.shape, generator=gen), torch.randn(qd.shape, generator=gen))
    c_path = frame_and_vjp(env, q, qd, u, "cpu", weights)
    twin = frame_and_vjp(env, q, qd, u, "torch", weights)
    for k, (a, b) in enumerate(zip(c_path, twin)):
        assert a.dtype == torch.float32
        assert relative(a, b) < (2e-5 if k < 2 else 1e-4), ("q", "qd", "dq", "dqd", "du")[k]  # seen: <= 1e-6


def test_recompute_modes_give_the_same_gradients():
    env = make_env("ant")
    q, qd, u = random_inputs(env, 3, seed=7)
    gen = torch.Generator().manual_seed(8)
    weights = (torch.randn(q.shape, generator=gen, dtype=q.dtype), torch.randn(qd.shape, generator=gen, dtype=q.dtype))
    results = []
    for recompute in ("none", "step", "substep"):
        qq, vv, uu = (t.clone().requires_grad_() for t in (q, qd, u))
        out = step(env.model, RigidState(qq, vv), RigidControl(uu), env.dt, env.substeps, recompute=recompute, backend="cpu")
        results.append(torch.autograd.grad((out.q * weights[0]).sum() + (out.qd * weights[1]).sum(), (qq, vv, uu)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert relative(a, b) < 1e-12


# ------------------------------------------------------------------ the dispatch rule
def test_backend_resolution():
    ant = make_env("ant").model
    assert rigid_kernels.resolve_backend(ant, "auto") == "cpu" and rigid_kernels.resolve_backend(ant, "torch") == "torch"
    assert rigid_kernels.resolve_backend(ant.to(dtype=torch.float32), "cpu") == "cpu"
    half = ant.to(dtype=torch.bfloat16)
    assert rigid_kernels.resolve_backend(half, "auto") == "torch"
    with pytest.raises(RuntimeError, match="backend='cpu'"):
        rigid_kernels.resolve_backend(half, "cpu")
    muscles = E.make("snu_humanoid", num_envs=1).model
    assert rigid_kernels.supports(muscles) is not None and rigid_kernels.resolve_backend(muscles, "auto") == "torch"
    with pytest.raises(RuntimeError, match="muscles"):
        rigid_kernels.resolve_backend(muscles, "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        rigid_kernels.resolve_backend(ant, "cuda")


def test_route_rule():
    """Which calls the C frame serves, and that the torch fallbacks keep the derivatives the C node does not give."""
    env = make_env("ant")
    model = env.model
    q, qd, u = random_inputs(env, 2, seed=9)
    state, control = RigidState(q, qd), RigidControl(u)
    assert route(model, state, control) == "plain"
    assert route(model, state, control, "torch") == "torch"
    assert route(model, RigidState(q.clone().requires_grad_(), qd), control) == "node"
    with torch.no_grad():
        assert route(model, RigidState(q.clone().requires_grad_(), qd), control) == "plain"
    leaf = RigidControl(u.clone().requires_grad_())
    with twice_differentiable():
        assert route(model, state, leaf) == "torch"
    assert route(model, state, leaf, substep_fn=lambda *a: a) == "torch"
    with pytest.raises(ValueError, match="substep_fn"):
        route(model, state, leaf, "cpu", substep_fn=lambda *a: a)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(u, torch.ones_like(u))
        assert route(model, state, RigidControl(dual)) == "torch"  # (tangents then stop at linalg.spd_solve's C op, as before)
    # a model tensor that requires grad: the twin runs and that tensor gets its gradient
    ke = model.material.contact_ke.clone().requires_grad_()
    identified = model._replace(material=model.material._replace(contact_ke=ke))
    assert route(identified, state, leaf) == "torch"
    out = step(identified, state, leaf, env.dt, env.substeps)
    (grad,) = torch.autograd.grad(out.qd.square().sum(), ke)
    assert torch.isfinite(grad) and grad != 0
    # torch.func transforms go to the twin (which itself stops at an autograd.Function there, as before)
    seen = []
    torch.func.grad(lambda a: seen.append(route(model, state, RigidControl(a))) or a.sum())(u)
    assert seen == ["torch"]


def test_env_backend_option_and_compile_substep():
    env = E.make("ant", num_envs=1)
    assert env.backend == "cpu" and not env.compiled
    assert E.make("ant", num_envs=1, backend="torch").backend == "torch"
    compiled = E.make("ant", num_envs=1, compile_substep=True)  # auto + compile_substep: the compiled torch substeps
    assert compiled.backend == "torch" and compiled.compiled and compiled._substep_fn is not None
    with pytest.raises(ValueError, match="compile_substep"):
        E.make("ant", num_envs=1, compile_substep=True, backend="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        E.make("ant", num_envs=1, backend="gpu")
    assert E.make("snu_humanoid", num_envs=1).model.muscles is not None  # its env keeps the twin (rule above)
    assert callable(compiled_substep)


def recipe_options(name):
    with open(f"recipes/config/env/{name}.yaml") as f:
        return dict(yaml.safe_load(f).get("options") or {})


@pytest.mark.parametrize("name", ["ant", "hopper", "cartpole_swingup"])
def test_recipe_env_cpu_matches_torch(name):
    """The recipe's env (its yaml options, compile off) stepped 3 frames with backend cpu and torch (float64) from states in
    ground contact with joints beyond their limits: the same observations, rewards and action gradients."""
    options = {k: v for k, v in recipe_options(name).items() if k not in ("compile_substep", "backend")}
    runs = []
    for backend in ("cpu", "torch"):
        env = E.make(name, num_envs=3, dtype=torch.float64, seed=0, backend=backend, **options)
        assert env.backend == backend
        td = env.reset()
        q, qd, _ = random_inputs(env, 3, seed=11)
        td.set("q", q).set("qd", qd)
        gen = torch.Generator().manual_seed(10)
        actions, observations, rewards = [], [], []
        for _ in range(3):
            a = (2 * torch.rand(3, env.action_spec.shape[-1], generator=gen, dtype=torch.float64) - 1).requires_grad_()
            td = env.step(td.set("action", a))
            actions.append(a)
            observations.append(td["next", "observation"])
            rewards.append(td["next", "reward"])
            td = step_mdp(td)
        grads = torch.autograd.grad(torch.stack(rewards).sum(), actions)
        runs.append((torch.stack(observations).detach(), torch.stack(rewards).detach(), torch.stack(grads)))
    for a, b in zip(*runs):
        assert relative(a, b) < 1e-9


def random_tree(seed: int):
    """Every joint type on one random tree (no DFlex model has a ball joint): free root, a ball child with a rotated frame,
    a hinge + slide body (a massless link between them), a limited, sprung, damped hinge sibling with a fixed child;
    contact points, motors with gear and range, a full (non-diagonal) inertia."""
    from tphys.math import axis_angle_to_matrix
    from tphys.rigid import Body, Joint, RigidBuilder

    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return tuple((2 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1).tolist())

    a = torch.tensor(r(3, 3), dtype=torch.float64)
    inertia = 0.02 * torch.eye(3, dtype=torch.float64) + 0.002 * (a @ a.T)
    rot = axis_angle_to_matrix(torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    b = RigidBuilder()
    b.add_body(Body("root", -1, pos=(0.0, 0.0, 0.3), mass=2.0, com=r(3), inertia=inertia, joints=[Joint("free")],
                    contacts=[(r(3), 0.05), (r(3), 0.0)]))
    b.add_body(Body("ball", 0, pos=r(3), rot=rot, mass=1.0, com=r(3), inertia=inertia, joints=[Joint("ball", pos=r(3))],
                    contacts=[(r(3), 0.04)]))
    b.add_body(Body("arm", 1, pos=r(3), mass=1.0, inertia=inertia,
                    joints=[Joint("hinge", "h1", axis=r(3), pos=r(3), ref=0.2, armature=0.01),
                            Joint("slide", "s1", axis=r(3), limited=True, range=(-0.1, 0.1), damping=0.5)],
                    contacts=[(r(3), 0.03)]))
    b.add_body(Body("leg", 0, pos=r(3), mass=1.0, inertia=inertia,
                    joints=[Joint("hinge", "h2", axis=r(3), limited=True, range=(-0.5, 0.4), stiffness=20.0, springref=0.1,
                                  damping=0.3)]))
    b.add_body(Body("foot", 3, pos=r(3), mass=0.5, inertia=inertia, contacts=[(r(3), 0.02)]))
    b.add_motor("h1", 30.0, (-1.0, 1.0))
    b.add_motor("s1", 50.0)
    b.add_motor("h2", 20.0, (-0.5, 0.8))
    return b.finalize()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_joint_type_matches_twin_and_differences(seed):
    """The random tree (ball, free, hinge + slide on one body, fixed): forward and VJP vs the twin (float64) over 2 frames of
    8 substeps with ground contact, and the VJP vs central differences."""
    from tphys.rigid.integrator import integrate_positions

    model = random_tree(seed)
    assert {k for k in ("hinge", "slide", "ball", "free", "fixed") if getattr(model.links, k).numel()} == {"hinge", "slide", "ball",
                                                                                                        "free", "fixed"}
    gen = torch.Generator().manual_seed(100 + seed)
    n = 4
    q = integrate_positions(model, model.q0.expand(n, -1), torch.randn(n, model.nv, generator=gen, dtype=torch.float64), 0.5)
    _, depth = contact_points(model, forward_kinematics(model, q))
    q[:, 2] -= depth.min(1).values + 0.01  # the lowest point 1 cm deep
    qd = torch.randn(n, model.nv, generator=gen, dtype=torch.float64)
    u = 1.5 * torch.randn(n, model.num_actuators, generator=gen, dtype=torch.float64)
    weights = (torch.randn(q.shape, generator=gen, dtype=q.dtype), torch.randn(qd.shape, generator=gen, dtype=q.dtype))

    class Env:  # what frame_and_vjp needs
        pass

    env = Env()
    env.model, env.dt, env.substeps = model, 1 / 60, 8
    env.task = type("Task", (), {"contact": True})()
    c_path = frame_and_vjp(env, q, qd, u, "cpu", weights, frames=2)
    twin = frame_and_vjp(env, q, qd, u, "torch", weights, frames=2)
    for k, (a, b) in enumerate(zip(c_path, twin)):
        assert relative(a, b) < (1e-10 if k < 2 else 1e-9), ("q", "qd", "dq", "dqd", "du")[k]
    direction = [torch.randn(t.shape, generator=gen, dtype=q.dtype) for t in (q, qd, u)]
    analytic = sum(float((g * d).sum()) for g, d in zip(c_path[2:], direction))

    def loss(sign, eps=1e-6):
        with torch.no_grad():
            out = frame(env, q + sign * eps * direction[0], qd + sign * eps * direction[1], u + sign * eps * direction[2], "cpu", 2)
        return float((out.q * weights[0]).sum() + (out.qd * weights[1]).sum())

    numeric = (loss(1) - loss(-1)) / 2e-6
    assert abs(analytic - numeric) <= 1e-5 * max(abs(numeric), 1.0), (analytic, numeric)
