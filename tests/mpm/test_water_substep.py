"""The fused water substep (``tphys.mpm.water``): the general path's state and gradients (float64, to round-off), with and
without colliders, in every recompute mode; when it serves; float32 agreement; no pose gradient without contact."""

import importlib

import pytest
import torch
from helpers import pressed_block

from tphys.mpm import MPMControl, MPMState, step, substep
from tphys.mpm import water as water_module

step_module = importlib.import_module("tphys.mpm.step")


def general(monkeypatch):
    """Make ``step.substep`` take the general path (``water.serves`` False) inside the monkeypatch's scope."""
    monkeypatch.setattr(water_module, "serves", lambda *args: False)


def water_scene(dtype=torch.float64, cutoff=0.0):
    """``pressed_block``'s scene in water (E 5e3 Pa), two envs (the second shifted: another window), a random start;
    ``cutoff`` 0: the sphere acts on every node (None: the colliders' default band)."""
    model, x, shapes, eye = pressed_block("water", cutoff=cutoff)
    model = model.to(dtype=dtype)
    shapes = shapes._replace(sizes=shapes.sizes.to(dtype))
    x = torch.cat([x, x + torch.tensor([0.05, 0.02, -0.04], dtype=torch.float64)]).to(dtype)
    gen = torch.Generator().manual_seed(11)
    v = (0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).to(dtype)
    c = (0.5 * torch.randn(*x.shape, 3, generator=gen, dtype=torch.float64)).to(dtype)
    f = (torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(*x.shape, 3, generator=gen, dtype=torch.float64)).to(dtype)
    return model, MPMState(x, v, c, f), shapes


def sphere_poses(dtype):
    """Poses (position, rotation, position_next, rotation_next) of the sphere pressing both envs' blocks."""
    position = torch.tensor([[[0.45, 0.62, 0.45]], [[0.5, 0.64, 0.41]]], dtype=dtype)
    rotation = torch.eye(3, dtype=dtype).expand(2, 1, 3, 3).clone()
    return [position, rotation, position + torch.tensor([0.0, -0.002, 0.001], dtype=dtype), rotation.clone()]


def substep_and_grads(model, state, shapes, poses):
    """(next state, d(weighted next state)/d(state, poses)) of one ``substep``."""
    leaves = [t.clone().requires_grad_() for t in (*state, *poses)]
    colliders = None if shapes is None else (shapes, *leaves[4:])
    out = substep(model, MPMState(*leaves[:4]), "auto", colliders)
    weights = torch.Generator().manual_seed(5)
    loss = sum((s * torch.randn(s.shape, generator=weights, dtype=s.dtype)).sum() for s in out)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [s.detach() for s in out], list(grads)


@pytest.mark.parametrize("with_shapes", [True, False])
def test_fused_substep_gives_the_general_paths_state_and_gradients(with_shapes, monkeypatch):
    """One substep of two water blocks (a sphere pressing them, or none), float64: the fused node's state and its
    gradients to x, v, C, F_trial and the four poses are the general path's to round-off."""
    model, state, shapes = water_scene()
    poses = sphere_poses(torch.float64) if with_shapes else []
    shapes = shapes if with_shapes else None
    assert water_module.serves(model, state.x, None, "auto")
    fused = substep_and_grads(model, state, shapes, poses)
    general(monkeypatch)
    plain = substep_and_grads(model, state, shapes, poses)
    for a, b in zip(fused[0], plain[0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused[1], plain[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))
    if with_shapes:
        assert all(g.abs().sum() > 0 for g in fused[1][4:]), "the sphere must touch the water"


@pytest.mark.parametrize("recompute", ["none", "step", "substep"])
def test_fused_frame_gives_the_general_paths_frame_and_gradients(recompute, monkeypatch):
    """A frame of 4 substeps with a moving sphere through ``step`` in each recompute mode: the fused path's state and
    gradients (to the start state and the sphere's start and move) are the general path's, float64."""
    model, state, shapes = water_scene()
    start, move = sphere_poses(torch.float64)[0], torch.tensor([[[0.01, -0.02, 0.0]], [[0.0, -0.01, 0.01]]], dtype=torch.float64)

    def poses(t, p0, d):
        position = p0 + t[:, None, None, None] * d
        return position, torch.eye(3, dtype=position.dtype).expand(*position.shape, 3)

    def run():
        leaves = [t.clone().requires_grad_() for t in (*state, start, move)]
        control = MPMControl(shapes, poses, tuple(leaves[4:]), batched=True)
        out = step(model, MPMState(*leaves[:4]), control, 4 * model.dt, recompute=recompute)
        weights = torch.Generator().manual_seed(7)
        loss = sum((s * torch.randn(s.shape, generator=weights, dtype=s.dtype)).sum() for s in out)
        return [s.detach() for s in out] + list(torch.autograd.grad(loss, leaves))

    fused = run()
    general(monkeypatch)
    plain = run()
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def test_float32_fused_substep_agrees_with_the_general_path(monkeypatch):
    """float32: the fused passes round once from double, the general path's ops per op; they agree to float32 round-off."""
    model, state, shapes = water_scene(torch.float32)
    poses = sphere_poses(torch.float32)
    fused = substep_and_grads(model, state, shapes, poses)
    general(monkeypatch)
    plain = substep_and_grads(model, state, shapes, poses)
    for a, b in zip(fused[0] + fused[1], plain[0] + plain[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_serves_only_water_on_the_c_kernels_without_model_gradients():
    model, state, _ = water_scene()
    assert water_module.serves(model, state.x, None, "auto") and water_module.serves(model, state.x, None, "cpu")
    assert not water_module.serves(model, state.x, None, "torch")
    plasticine, *_ = pressed_block("plasticine")
    assert not water_module.serves(plasticine, state.x, None, "auto")
    heavy = model._replace(particle_mass=model.particle_mass.clone().requires_grad_())
    assert not water_module.serves(heavy, state.x, None, "auto")
    with torch.no_grad():
        assert water_module.serves(heavy, state.x, None, "auto")


def test_fused_substep_is_the_one_node_and_gives_no_pose_gradient_without_contact(monkeypatch):
    """The fused path runs (one ``_WaterSubstep`` node per substep); a sphere far above the water acts on no node: its poses
    get no gradient (None), as the general path's ``_Link`` leaves them."""
    model, state, shapes = water_scene(cutoff=None)
    applied = []
    plain_apply = water_module._WaterSubstep.apply
    monkeypatch.setattr(water_module._WaterSubstep, "apply", lambda *args: applied.append(1) or plain_apply(*args))
    far = [p + torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64) if i % 2 == 0 else p for i, p in enumerate(sphere_poses(torch.float64))]
    _, grads = substep_and_grads(model, state, shapes, far)
    assert applied == [1]
    assert all(g is None for g in grads[4:]) and all(g is not None for g in grads[:4])
