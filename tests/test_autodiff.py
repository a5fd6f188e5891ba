"""One recompute option for every engine (``tphys.autodiff``): each engine's step accepts "none", "step", "substep" and
the aliases True / False with the same results and gradients (float64, to round-off), and rejects anything else
with the one message of ``check_recompute``."""

import re

import pytest
import torch
from helpers import pressed_block
from torch.utils.checkpoint import checkpoint

from tphys import autodiff
from tphys.autodiff import RECOMPUTE, check_recompute, run_substeps
from tphys.mpm import MPMControl, MPMState
from tphys.mpm import step as mpm_step
from tphys.particles import ParticleBuilder, ParticleControl, ParticleState, SolidControl, semi_implicit_euler
from tphys.particles import solid as fem_solid
from tphys.particles.meshing import box_mesh
from tphys.rigid import RigidControl, RigidState, load_mjcf, model_path
from tphys.rigid import step as rigid_step

F64 = dict(dtype=torch.float64)
MODES = ["none", "step", "substep", True, False]
MESSAGE = "recompute must be one of 'none', 'step', 'substep' (or True/False), got {!r}"


def rigid_case():
    """Two frames of 4 substeps of the ant with ground contact: (frame function, leaf inputs)."""
    model = load_mjcf(model_path("ant"))
    gen = torch.Generator().manual_seed(0)
    q = model.q0.expand(2, -1).clone()
    q[:, 2] = 0.6
    qd = 0.3 * torch.randn(2, model.nv, generator=gen, **F64)
    actions = torch.rand(2, 2, model.num_actuators, generator=gen, **F64) * 2 - 1

    def rollout(recompute, q, qd, actions):
        state = RigidState(q, qd)
        for a in actions:
            state = rigid_step(model, state, RigidControl(a), 1 / 60, substeps=4, recompute=recompute)
        return state

    return rollout, [q, qd, actions]


def mpm_case():
    """Two frames of 3 substeps of a plasticine block pressed by a moving sphere (C kernels where they build)."""
    model, x, shapes, eye = pressed_block("plasticine", cutoff=0.0)
    v = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), **F64)
    start = torch.tensor([[[0.45, 0.68, 0.45]]], **F64)
    moves = torch.tensor([[[[0.0, -0.02, 0.01]]], [[[0.01, -0.02, 0.0]]]], **F64)

    def rollout(recompute, v, start, moves):
        state = MPMState.at_rest(x, v)
        for move in moves:
            control = MPMControl(shapes, lambda t, p, m: (p + t * m, eye), (start, move))
            state = mpm_step(model, state, control, 3 * model.dt, recompute=recompute)
            start = start + move
        return state

    return rollout, [v, start, moves]


def particle_case():
    """Two steps of 5 substeps of a damped spring chain hanging from a moving handle, with ground contact."""
    b = ParticleBuilder(dim=3)
    handle = b.add_handle([0.0, 1.0, 0.0])
    previous = handle
    for k in range(1, 4):
        i = b.add_particle([0.1 * k, 1.0 - 0.2 * k, 0.05 * k], mass=0.5)
        b.add_spring(previous, i, stiffness=200.0, damping=1.0)
        previous = i
    b.set_ground(height=0.3)
    model, rest = b.build()
    model = model.to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = rest.to(torch.float64).expand(2, -1, -1).clone()
    v = 0.3 * torch.randn(x.shape, generator=gen, **F64)
    handle_velocity = torch.randn(2, 2, 1, 3, generator=gen, **F64)

    def rollout(recompute, x, v, handle_velocity):
        state = ParticleState.without_history(x, v)
        for u in handle_velocity:
            state = semi_implicit_euler(model, state, ParticleControl(u), 1 / 60, substeps=5, recompute=recompute)
        return state

    return rollout, [x, v, handle_velocity]


def solid_case():
    """Two frames of 5 fused substeps of a muscle block falling on the ground."""
    b = ParticleBuilder(dim=3)
    vertices, tets = box_mesh([0.0, 0.0, 0.0], [0.2, 0.1, 0.1], (2, 1, 1))
    b.add_solid(vertices, tets, density=1000.0, mu=1e4, lam=4e4, damping=1.0, max_stress=1e4)
    b.set_ground(height=0.0, stiffness=3e4, damping=100.0, friction=0.8, slip=0.2, smoothing=1e-3)
    model, rest = b.build()
    model = model.to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = rest.to(torch.float64).expand(2, -1, -1) + torch.tensor([0.0, 0.005, 0.0], **F64)
    v = 0.3 * torch.randn(x.shape, generator=gen, **F64)
    activation = torch.rand(2, 2, len(tets), generator=gen, **F64) * 2 - 1

    def rollout(recompute, x, v, activation):
        state = ParticleState.without_history(x, v)
        for a in activation:
            state = fem_solid.step(model, state, SolidControl(a), 1 / 60, substeps=5, recompute=recompute)
        return state

    return rollout, [x, v, activation]


ENGINES = {"rigid": rigid_case, "mpm": mpm_case, "particles": particle_case, "fem_solid": solid_case}


def value_and_gradients(rollout, leaves, recompute):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    state = rollout(recompute, *leaves)
    weights = torch.Generator().manual_seed(9)
    loss = sum((s * torch.randn(s.shape, generator=weights, **F64)).sum() for s in state if s.is_floating_point())
    return [s.detach() for s in state], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_recompute_value_gives_the_same_result_and_gradients(engine):
    rollout, leaves = ENGINES[engine]()
    reference_state, reference_grads = value_and_gradients(rollout, leaves, "none")
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in reference_grads)
    for mode in MODES[1:]:
        state, grads = value_and_gradients(rollout, leaves, mode)
        for a, b in zip(state + list(grads), reference_state + list(reference_grads)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, mode=mode: f"recompute={mode!r}: {m}")


@pytest.mark.parametrize("bad", ["always", "Step", "", 1, 0, None, "True"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_rejects_other_values_with_one_message(engine, bad):
    rollout, leaves = ENGINES[engine]()
    with pytest.raises(ValueError, match=f"^{re.escape(MESSAGE.format(bad))}$"):
        rollout(bad, *leaves)


def test_check_recompute_maps_the_aliases():
    assert [check_recompute(m) for m in MODES] == ["none", "step", "substep", "step", "none"]
    assert RECOMPUTE == ("none", "step", "substep")


def count_checkpoints(monkeypatch) -> list:
    """Patch ``tphys.autodiff``'s checkpoint to record each call; returns the list it appends to."""
    calls = []

    def counted(fn, *args, **kwargs):
        calls.append(fn)
        return checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(autodiff, "checkpoint", counted)
    return calls


SUBSTEPS = {"rigid": 4, "mpm": 3, "particles": 5, "fem_solid": 5}  # per frame, two frames each (see the cases)


@pytest.mark.parametrize("mode", ["none", "step", "substep"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_each_mode_checkpoints_what_it_says(engine, mode, monkeypatch):
    """"substep": one checkpoint per substep; "step": one per frame (MPM: none, its frame node builds no graph in
    the forward and checkpoints substeps in its backward); "none": none."""
    rollout, leaves = ENGINES[engine]()
    calls = count_checkpoints(monkeypatch)
    rollout(mode, *[t.clone().requires_grad_() for t in leaves])
    frame = 0 if engine == "mpm" else 1
    assert len(calls) == 2 * {"none": 0, "step": frame, "substep": SUBSTEPS[engine]}[mode]


@pytest.mark.parametrize("mode", ["none", "step", "substep"])
def test_run_substeps_keeps_what_its_mode_says(mode, monkeypatch):
    """Saved tensors in the forward (counted by a saved-tensor hook; checkpoints keep theirs to themselves): "none"
    keeps every substep's; the checkpointed modes none. Values and gradients are the loop's."""
    x = torch.linspace(0.1, 1.0, 5, **F64).requires_grad_()
    calls = count_checkpoints(monkeypatch)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (out,) = run_substeps(lambda k, carry: (torch.sin(carry[0]) * (k + 1),), (x,), 4, mode)
    kept = len(saved)
    (grad,) = torch.autograd.grad(out.sum(), x)
    expected = x.detach().clone()
    d = torch.ones_like(expected)
    for k in range(4):
        d, expected = d * torch.cos(expected) * (k + 1), torch.sin(expected) * (k + 1)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(grad, d, rtol=1e-14, atol=1e-14)
    assert kept == (4 if mode == "none" else 0)  # sin saves its input
    assert len(calls) == {"none": 0, "step": 1, "substep": 4}[mode]
