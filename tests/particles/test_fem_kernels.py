"""The FEM solid's C substeps (``tphys/kernels/cpu/fem.c``) against their torch twins (``solid_substep.substep_forward``
/ ``substep_backward``), central finite differences, float32 accuracy, the dispatch rules, and soft_jumper on both
backends.

Tolerances: float64, the C loops and the torch functions run the same operations in the same order up to FMA
contraction, so states and vector-Jacobian products agree to 1e-12 relative to their largest entry over a few
substeps; float32, the C path's error against float64 is within 3x of the torch path's own (plus a floor of a few
float32 ulps of the value's scale).
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.autodiff import twice_differentiable
from tphys.kernels import fem_kernels
from tphys.particles import ParticleBuilder, ParticleState, SolidControl, solid
from tphys.particles.meshing import box_mesh
from tphys.particles.solid_substep import SolidSubstep, substep_backward, substep_forward

pytestmark = pytest.mark.skipif(not fem_kernels.available(torch.float64), reason="no C compiler")


def block(seed: int, cells=(2, 1, 1), ground=True, up=1, drag=0.0):
    """A random block of muscle tetrahedra: random Lamé moduli, damping, fibers, ground law and up axis; float64."""
    gen = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand(1, generator=gen))  # noqa: E731
    b = ParticleBuilder(dim=3, up_axis=up, drag=drag)
    vertices, tets = box_mesh([0.0, 0.0, 0.0], [0.1 * cells[0], 0.1 * cells[1], 0.1 * cells[2]], cells)
    fibers = torch.nn.functional.normalize(torch.randn(len(tets), 3, generator=gen, dtype=torch.float64), dim=-1).tolist()
    b.add_solid(vertices, tets, density=1000.0, mu=10 ** (3 + 2 * u()), lam=10 ** (3 + 2 * u()), damping=5 * u(), fiber=fibers,
                max_stress=1e4 * u())
    if ground:
        b.set_ground(height=0.02 * u(), stiffness=3e4, damping=300 * u(), friction=u(), slip=1e-2 + 0.2 * u(), smoothing=1e-3)
    return b.build()


def random_state(model, rest, n, gen, dtype=torch.float64):
    """x, v [n, P, 3], activation [n, T]: deformed, moving, partly below the ground (up axis), some at rest tangentially."""
    up = model.up_axis
    x = rest + 0.01 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    x[..., up] -= 0.015
    v = 0.5 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    v[:, ::3] *= 0.01  # a few particles slower than the slip speed (the viscous friction branch)
    if model.ground is not None:  # and some inside the ramps' rounded bands: depth in (0, smoothing), approach speed in (0, slip)
        g = model.ground
        x[:, 1::5, up] = g.height - g.smoothing * torch.rand(n, x[:, 1::5].shape[1], generator=gen, dtype=torch.float64)
        v[:, 2::5, up] = -g.slip * torch.rand(n, v[:, 2::5].shape[1], generator=gen, dtype=torch.float64)
    activation = 2 * torch.rand(n, model.tetrahedra.corners.shape[0], generator=gen, dtype=torch.float64) - 1
    return x.to(dtype), v.to(dtype), activation.to(dtype)


def torch_substeps(model, h, x, v, activation, substeps, grad_x, grad_v):
    """The torch twins chained: (x', v') after ``substeps`` substeps and (dL/dx, dL/dv, dL/d activation) from dL/dx', dL/dv'."""
    states = [(x, v)]
    for _ in range(substeps):
        states.append(substep_forward(model, h, *states[-1], activation))
    grad_a = torch.zeros_like(activation)
    for x_k, v_k in reversed(states[:-1]):
        grad_x, grad_v, g = substep_backward(model, h, x_k, v_k, activation, grad_x, grad_v)
        grad_a = grad_a + g
    return states[-1], (grad_x, grad_v, grad_a)


def relative(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 19), ground=st.booleans(), up=st.integers(0, 2), substeps=st.integers(1, 4),
       keep=st.booleans(), drag=st.sampled_from([0.0, 0.3]))
def test_c_substeps_equal_the_torch_functions_in_float64(seed, n, ground, up, substeps, keep, drag):
    """States and VJPs of 1-4 substeps, n envs (partial blocks of 8 included), with or without the saved trajectory."""
    model, rest = block(seed, cells=(2, 2, 1), ground=ground, up=up, drag=drag)
    gen = torch.Generator().manual_seed(seed + 1)
    x, v, activation = random_state(model, rest, n, gen)
    grad_x, grad_v = torch.randn_like(x, dtype=torch.float64), torch.randn_like(v, dtype=torch.float64)
    h = 5e-4
    (tx, tv), t_grads = torch_substeps(model, h, x, v, activation, substeps, grad_x, grad_v)
    kernel = fem_kernels.FemKernel(model, h)
    cx, cv, trajectory = kernel.forward(x, v, activation, substeps, keep=keep)
    c_grads = kernel.backward(x, v, activation, trajectory, grad_x, grad_v, substeps)
    assert relative(cx, tx) < 1e-12 and relative(cv, tv) < 1e-12
    for name, a, b in zip(("x", "v", "activation"), c_grads, t_grads):
        assert relative(a, b) < 1e-12, f"dL/d{name}: {relative(a, b):.2e}"


def test_the_cases_are_in_contact_and_the_fibers_pull():
    """The random states of the test above reach every branch: particles below the ground, approaching, sliding faster
    and slower than the slip speed, and active fibers that change the force."""
    model, rest = block(1, cells=(2, 2, 1))
    x, v, activation = random_state(model, rest, 4, torch.Generator().manual_seed(2))
    depth = model.ground.height - x[..., 1]
    assert (depth > model.ground.smoothing).any() and ((depth > 0) & (depth < model.ground.smoothing)).any() and (depth < 0).any()
    tangential = v[..., [0, 2]].norm(dim=-1)
    assert (tangential < model.ground.slip).any() and (tangential > model.ground.slip).any()
    assert ((v[..., 1] < 0) & (depth > 0)).any() and ((v[..., 1] < 0) & (v[..., 1] > -model.ground.slip)).any()
    kernel = fem_kernels.FemKernel(model, 1e-3)
    assert relative(kernel.forward(x, v, activation, 1)[1], kernel.forward(x, v, 0 * activation, 1)[1]) > 1e-6


@pytest.mark.parametrize("seed,keep_states", [(0, True), (1, True), (2, False)])
def test_c_frame_gradient_matches_central_finite_differences(seed, keep_states):
    """Six substeps in contact as one C frame node (keeping the states, or rerunning them in backward), float64: autograd
    against gradcheck's central differences."""
    model, rest = block(seed, cells=(1, 1, 1))
    x, v, activation = random_state(model, rest, 2, torch.Generator().manual_seed(seed))
    stepper = SolidSubstep(model, 5e-4, backend="cpu")

    def frame(x, v, activation):
        return stepper.frame(x, v, activation, 6, keep_states=keep_states)

    assert frame(*[t.requires_grad_() for t in (x, v, activation)])[0].grad_fn.name() == "_FrameBackward"
    assert torch.autograd.gradcheck(frame, (x, v, activation), eps=1e-8, atol=1e-5, rtol=1e-4)


def test_a_frame_node_without_its_states_reruns_them_exactly():
    """keep_states=False saves only the frame's inputs (three tensors) and gives the same gradients, bit for bit, also
    across several blocks (n = 19 > 8 envs per float64 block) and when the rerun buffer is reused by a shorter frame."""
    model, rest = block(3, cells=(2, 2, 1))
    x, v, activation = random_state(model, rest, 19, torch.Generator().manual_seed(3))
    stepper = SolidSubstep(model, 5e-4, backend="cpu")
    results = []
    for keep, substeps in ((True, 7), (False, 7), (False, 3), (True, 3)):
        inputs = [t.clone().requires_grad_() for t in (x, v, activation)]
        out = stepper.frame(*inputs, substeps, keep_states=keep)
        assert len(out[0].grad_fn.saved_tensors) == (4 if keep else 3)
        results.append((out, torch.autograd.grad((out[0].sin() + out[1]).sum(), inputs)))
    for (out_a, grads_a), (out_b, grads_b) in (results[:2], results[2:]):
        for a, b in zip((*out_a, *grads_a), (*out_b, *grads_b)):
            assert torch.equal(a, b)


def test_c_substep_nodes_gradient_matches_central_finite_differences():
    """Five C substep nodes (``SolidSubstep.__call__``) in a row, float64, against central differences."""
    model, rest = block(7, cells=(1, 1, 1))
    x, v, activation = random_state(model, rest, 1, torch.Generator().manual_seed(7))
    stepper = SolidSubstep(model, 5e-4, backend="cpu")

    def rollout(x, v, activation):
        for _ in range(5):
            x, v = stepper(x, v, activation)
        return x, v

    assert rollout(*[t.requires_grad_() for t in (x, v, activation)])[0].grad_fn.name() == "_SubstepBackward"
    assert torch.autograd.gradcheck(rollout, (x, v, activation), eps=1e-8, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_is_as_accurate_as_the_torch_path(seed):
    """Ten substeps in float32 (partial block of 16 envs: n = 19): the C path's error against float64 is within 3x of the
    torch path's own, for the states and the three gradients."""
    model64, rest = block(seed, cells=(2, 2, 1))
    model32 = model64.to(dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x, v, activation = random_state(model64, rest, 19, gen)
    grads = torch.randn_like(x), torch.randn_like(v)
    h, substeps = 5e-4, 10
    (rx, rv), r_grads = torch_substeps(model64, h, x, v, activation, substeps, *grads)
    f32 = [t.float() for t in (x, v, activation)]
    (tx, tv), t_grads = torch_substeps(model32, h, *f32, substeps, *[g.float() for g in grads])
    kernel = fem_kernels.FemKernel(model32, h)
    cx, cv, trajectory = kernel.forward(*f32, substeps, keep=True)
    c_grads = kernel.backward(*f32, trajectory, *[g.float() for g in grads], substeps)
    for c, t, r in [(cx, tx, rx), (cv, tv, rv), *zip(c_grads, t_grads, r_grads)]:
        assert c.dtype == torch.float32
        c_err, t_err = relative(c.double(), r), relative(t.double(), r)
        assert c_err <= 3 * t_err + 1e-6, f"C float32 error {c_err:.2e} against torch float32's {t_err:.2e}"


def test_backend_choice():
    model, _ = block(0)
    assert fem_kernels.resolve_backend(model.mass, "auto") == "cpu"
    assert fem_kernels.resolve_backend(model.mass.float(), "auto") == "cpu"
    assert fem_kernels.resolve_backend(model.mass, "torch") == "torch"
    assert fem_kernels.resolve_backend(model.mass.bfloat16(), "auto") == "torch"
    with pytest.raises(RuntimeError, match="backend='cpu' needs"):
        fem_kernels.resolve_backend(model.mass.bfloat16(), "cpu")
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        fem_kernels.resolve_backend(model.mass, "triton")
    assert SolidSubstep(model, 1e-3).backend == "cpu" and SolidSubstep(model, 1e-3).kernel is not None
    torch_stepper = SolidSubstep(model, 1e-3, backend="torch")
    assert torch_stepper.backend == "torch" and torch_stepper.kernel is None


def test_auto_falls_back_to_torch_without_a_compiler(monkeypatch):
    model, _ = block(0)
    monkeypatch.setattr(fem_kernels, "available", lambda dtype=torch.float32: False)
    assert SolidSubstep(model, 1e-3).backend == "torch"
    with pytest.raises(RuntimeError, match="working C compiler"):
        SolidSubstep(model, 1e-3, backend="cpu")


def test_routes_twin_for_forward_mode_double_backward_and_model_gradients():
    """The fallback rules of the fused node hold on the C backend: forward-mode tangents (with or without grad mode),
    twice_differentiable() and model tensors that require grad take the twin; no grad takes the plain C forward."""
    model, rest = block(0)
    x, v, activation = random_state(model, rest, 2, torch.Generator().manual_seed(0))
    stepper = SolidSubstep(model, 1e-3, backend="cpu")
    assert stepper.route(x, v, activation) == "plain" and stepper(x, v, activation)[1].grad_fn is None
    xg = x.clone().requires_grad_()
    assert stepper.route(xg, v, activation) == "node" and stepper(xg, v, activation)[1].grad_fn.name() == "_SubstepBackward"
    with torch.no_grad():
        assert stepper.route(xg, v, activation) == "plain"
    with twice_differentiable():
        assert stepper.route(xg, v, activation) == "twin" and not stepper.fuses_frames(xg, v, activation)
        out = stepper(xg, v, activation)[1]
        assert not out.grad_fn.name().startswith("_Substep")
        torch.autograd.grad(torch.autograd.grad(out.square().sum(), xg, create_graph=True)[0].sum(), xg)  # a second backward works
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            assert stepper.route(dual, v, activation) == "twin"
            tangent = fwAD.unpack_dual(stepper(dual, v, activation)[1]).tangent
            assert tangent is not None and tangent.abs().sum() > 0
    stiff = model._replace(tetrahedra=model.tetrahedra._replace(mu=model.tetrahedra.mu.clone().requires_grad_()))
    param_stepper = SolidSubstep(stiff, 1e-3, backend="cpu")
    assert param_stepper.route(xg, v, activation) == "twin"
    (grad_mu,) = torch.autograd.grad(param_stepper(xg, v, activation)[1].sum(), stiff.tetrahedra.mu)
    assert grad_mu.abs().sum() > 0
    torch.testing.assert_close(stepper(xg, v, activation)[1], stepper.twin(xg, v, activation)[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs the C backend"):
        SolidSubstep(model, 1e-3, backend="torch").frame(x, v, activation, 2)


@pytest.mark.parametrize("recompute", ["none", "step", "substep"])
def test_solid_step_runs_one_c_call_per_frame_except_per_substep_recompute(recompute, monkeypatch):
    """``solid.step`` on the C backend: "none" and "step" run the frame's 8 substeps as one C call forward (and "step"
    once more in backward), "substep" one call per substep; states and gradients equal the torch backend's."""
    model, rest = block(4)
    x, v, activation = random_state(model, rest, 3, torch.Generator().manual_seed(4))
    stepper = SolidSubstep(model, 1 / 480, backend="cpu")
    calls = []
    forward = stepper.kernel.forward
    monkeypatch.setattr(stepper.kernel, "forward", lambda *a, **k: calls.append(a[3]) or forward(*a, **k))
    state = ParticleState.without_history(x.requires_grad_(), v)
    out = solid.step(model, state, SolidControl(activation), 1 / 60, substeps=8, recompute=recompute, substepper=stepper)
    assert calls == ([8] if recompute != "substep" else [1] * 8)
    reference = solid.step(model, state, SolidControl(activation), 1 / 60, substeps=8, recompute="none",
                           substepper=SolidSubstep(model, 1 / 480, backend="torch"))
    assert relative(out.x, reference.x) < 1e-12 and relative(out.v, reference.v) < 1e-12
    g_c, g_t = (torch.autograd.grad((o.x.square() + o.v).sum(), x)[0] for o in (out, reference))
    assert relative(g_c, g_t) < 1e-12
    assert calls == {"none": [8], "step": [8, 8], "substep": [1] * 16}[recompute]


def frames(backend: str, dtype, n=3, steps=3, substeps=20, recompute=True):
    """States, rewards and action gradients of ``steps`` soft_jumper frames on ``backend``."""
    env = E.make("soft_jumper", num_envs=n, dtype=dtype, seed=5, substeps=substeps, backend=backend, recompute=recompute)
    assert env.backend == backend
    td = env.reset()
    gen = torch.Generator().manual_seed(6)
    actions = [(torch.rand(n, env.action_dim, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_() for _ in range(steps)]
    total, states = 0.0, []
    for a in actions:
        out = env.step(td.set("action", a))
        total = total + out["next", "reward"].sum()
        states.append((out["next", "x"].detach(), out["next", "v"].detach(), out["next", "reward"].detach()))
        td = env.step_mdp(out)
    return states, torch.autograd.grad(total, actions)


@pytest.mark.parametrize("recompute", [True, False])
def test_soft_jumper_frames_and_gradients_equal_on_both_backends_float64(recompute):
    """Three frames of 20 substeps: states to 1e-11, action gradients to 1e-8 (the 60 substeps' backward amplifies the
    paths' round-off differences, FMA contraction in C, to ~2e-10)."""
    (c_states, c_grads), (t_states, t_grads) = (frames(b, torch.float64, recompute=recompute) for b in ("cpu", "torch"))
    for c, t in zip(c_states, t_states):
        for a, b in zip(c, t):
            assert relative(a, b) < 1e-11
    for a, b in zip(c_grads, t_grads):
        assert b.abs().sum() > 0 and relative(a, b) < 1e-8


def test_soft_jumper_float32_c_path_is_as_accurate_as_the_torch_path():
    """Three float32 frames of the env's 80 substeps: against the float64 frames, the C backend's states, rewards and
    action gradients are within 3x of the torch backend's own float32 error (both ~1e-5 to 3e-3)."""
    reference_states, reference_grads = frames("torch", torch.float64, substeps=80)
    (c_states, c_grads), (t_states, t_grads) = (frames(b, torch.float32, substeps=80) for b in ("cpu", "torch"))
    pairs = [(c, t, r) for cs, ts, rs in zip(c_states, t_states, reference_states) for c, t, r in zip(cs, ts, rs)]
    for c, t, r in pairs + list(zip(c_grads, t_grads, reference_grads)):
        c_err, t_err = relative(c.double(), r), relative(t.double(), r)
        assert c_err <= 3 * t_err + 1e-6, f"C float32 error {c_err:.2e} against torch float32's {t_err:.2e}"
