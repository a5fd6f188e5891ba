"""The C frame kernels over threads (``tphys.kernels.c_kernels.threads`` / ``spans`` / ``parallel``): with
``torch.set_num_threads(2)`` the rigid (``rigid_kernels``) and FEM (``fem_kernels``) frames split their envs (env blocks
for FEM) over two threads, and their forward outputs, saved trajectories and adjoint gradients are bitwise those of one
thread, for ant, hopper and soft_jumper models, batches not divisible by the thread count, and one env."""

from __future__ import annotations

import pytest
import torch

import tphys.envs as E
from tphys.kernels import c_kernels, fem_kernels, rigid_kernels
from tphys.particles.solid_substep import SolidSubstep

pytestmark = pytest.mark.skipif(not rigid_kernels.available(torch.float32) or not fem_kernels.available(torch.float32),
                                reason="no C compiler")


@pytest.fixture
def threads():
    """Runs the body under a given torch thread count; restores the count afterwards."""
    before = torch.get_num_threads()

    def under(count, fn):
        torch.set_num_threads(count)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    yield under
    torch.set_num_threads(before)


@pytest.fixture
def spans_seen(monkeypatch):
    """The spans every ``c_kernels.parallel`` call ran (one list of call counts per call)."""
    seen = []
    parallel = c_kernels.parallel

    def spy(calls):
        seen.append(len(calls))
        return parallel(calls)

    monkeypatch.setattr(c_kernels, "parallel", spy)
    return seen


def test_spans_split_in_order_and_cover_everything():
    for units in range(0, 12):
        for parts in range(1, 5):
            spans = c_kernels.spans(units, parts)
            assert len(spans) == parts and spans[0][0] == 0 and spans[-1][1] == units
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert c_kernels.spans(5, 2) == [(0, 3), (3, 5)]


def test_thread_count_is_torchs_capped_by_the_units(threads):
    assert threads(1, lambda: c_kernels.threads(64)) == 1
    assert threads(2, lambda: c_kernels.threads(64)) == 2
    assert threads(3, lambda: c_kernels.threads(2)) == 2
    assert threads(2, lambda: c_kernels.threads(1)) == 1
    assert threads(2, lambda: c_kernels.threads(0)) == 1


def test_parallel_keeps_order_and_raises_after_every_call():
    assert c_kernels.parallel([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]
    done = []

    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        c_kernels.parallel([fails, lambda: done.append(1), lambda: done.append(2)])
    assert sorted(done) == [1, 2]


def rigid_case(name, n, dtype, seed=0):
    env = E.make(name, num_envs=1, dtype=dtype)
    model, gen = env.model, torch.Generator().manual_seed(seed)
    kernel = rigid_kernels.RigidKernel(model, env.dt / env.substeps, env.task.contact)
    q, qd = env.task.sample_initial(model, n, gen)
    q, qd = q.to(dtype), (qd + torch.randn(qd.shape, generator=gen, dtype=qd.dtype)).to(dtype)
    actuation = (1.5 * torch.randn(n, model.num_actuators, generator=gen, dtype=torch.float64)).to(dtype)
    grads = (torch.randn(n, q.shape[1], generator=gen, dtype=torch.float64).to(dtype),
             torch.randn(n, qd.shape[1], generator=gen, dtype=torch.float64).to(dtype))
    return kernel, env.substeps, (q, qd, actuation), grads


def rigid_run(kernel, substeps, inputs, grads):
    q1, qd1, trajectory = kernel.forward(*inputs, substeps, keep=True)
    q, qd, actuation = inputs
    node_q, node_qd, node_a = (t.clone().requires_grad_() for t in inputs)
    out = rigid_kernels.frame(kernel, node_q, node_qd, node_a, substeps)
    torch.autograd.backward(out, grads)
    return (q1, qd1, trajectory, *kernel.backward(actuation, trajectory, *grads, substeps), node_q.grad, node_qd.grad, node_a.grad,
            *out)


@pytest.mark.parametrize("name,n,dtype", [("ant", 7, torch.float32), ("ant", 64, torch.float32), ("hopper", 5, torch.float64),
                                          ("hopper", 1, torch.float32)])
def test_rigid_frame_is_bitwise_the_same_on_two_threads(name, n, dtype, threads, spans_seen, monkeypatch):
    monkeypatch.setattr(rigid_kernels, "MIN_SPAN_WORK", 1)  # split however small the batch
    kernel, substeps, inputs, grads = rigid_case(name, n, dtype)
    one = threads(1, lambda: rigid_run(kernel, substeps, inputs, grads))
    assert spans_seen == []  # one thread: no pool
    two = threads(2, lambda: rigid_run(kernel, substeps, inputs, grads))
    assert spans_seen == ([2] * 4 if n > 1 else [])  # forward, backward, the node's forward and backward
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert all(t.abs().sum() > 0 for t in one)


@pytest.mark.parametrize("name,n,parts", [("cartpole_swingup", 64, 1), ("cartpole_swingup", 256, 1), ("cartpole_swingup", 1024, 2),
                                          ("hopper", 8, 1), ("hopper", 16, 2), ("ant", 64, 2)])
def test_a_rigid_call_splits_only_where_each_thread_gets_enough_work(name, n, parts, threads, spans_seen):
    """A span holds at least ``MIN_SPAN_WORK`` env·substep·dof²: a cart-pole frame at N = 256 (4096) stays one call."""
    kernel, substeps, inputs, grads = rigid_case(name, n, torch.float32)
    assert threads(2, lambda: kernel.parts(n, substeps)) == parts
    threads(2, lambda: rigid_run(kernel, substeps, inputs, grads))
    assert spans_seen == ([2] * 4 if parts == 2 else [])


def fem_case(n, dtype, seed=0):
    env = E.make("soft_jumper", num_envs=1, dtype=dtype)
    kernel = SolidSubstep(env.model, env.dt / env.substeps, backend="cpu").kernel
    gen = torch.Generator().manual_seed(seed)
    rest = env.rest.double()
    x = rest + 0.01 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    x[..., env.model.up_axis] -= 0.01
    v = 0.3 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    activation = 2 * torch.rand(n, kernel.tets, generator=gen, dtype=torch.float64) - 1
    grads = tuple(torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    return kernel, (x.to(dtype), v.to(dtype), activation.to(dtype)), grads


def fem_run(kernel, substeps, inputs, grads):
    x1, v1, trajectory = kernel.forward(*inputs, substeps, keep=True)
    kept = kernel.backward(*inputs, trajectory, *grads, substeps)
    rerun = kernel.backward(*inputs, None, *grads, substeps)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fem_kernels.frame(kernel, *leaves, substeps, keep_states=False)
    torch.autograd.backward(out, grads)
    return (x1, v1, trajectory, *kept, *rerun, *(t.grad for t in leaves), *out)


@pytest.mark.parametrize("n,dtype", [(37, torch.float32), (64, torch.float32), (19, torch.float64), (12, torch.float32),
                                     (1, torch.float32)])
def test_fem_frame_is_bitwise_the_same_on_two_threads(n, dtype, threads, spans_seen):
    """soft_jumper's model; float32 blocks of 16 (37 envs: blocks of 16, 16, 5 split 2 + 1), float64 blocks of 8 (19: 8, 8,
    3), 64 float32 envs (2 + 2 blocks), 12 and one env (one block: one thread)."""
    kernel, inputs, grads = fem_case(n, dtype)
    substeps = 6
    one = threads(1, lambda: fem_run(kernel, substeps, inputs, grads))
    assert spans_seen == []
    two = threads(2, lambda: fem_run(kernel, substeps, inputs, grads))
    assert spans_seen == ([2] * 5 if n > kernel.lanes else [])
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert all(t.abs().sum() > 0 for t in one)


def test_soft_jumper_and_ant_env_steps_are_bitwise_the_same_on_two_threads(threads):
    """Through env.step (the recipes' path): two frames and the gradient of the reward to the actions."""
    def episode(name, n):
        env = E.make(name, num_envs=n, dtype=torch.float32, seed=3, backend="cpu")
        td = env.reset()
        gen = torch.Generator().manual_seed(4)
        actions = [(torch.rand(n, env.action_dim, generator=gen) * 2 - 1).requires_grad_() for _ in range(2)]
        total, states = 0.0, []
        for a in actions:
            out = env.step(td.set("action", a))
            total = total + out["next", "reward"].sum()
            states.append(out["next", "reward"].detach())
            td = env.step_mdp(out)
        return (*states, *torch.autograd.grad(total, actions))

    for name, n in (("soft_jumper", 21), ("ant", 9)):
        one = threads(1, lambda: episode(name, n))
        two = threads(2, lambda: episode(name, n))
        for a, b in zip(one, two):
            assert torch.equal(a, b)


def test_fem_threads_get_their_own_workspace_and_rerun_buffer(threads, monkeypatch):
    """Each thread's C call gets a workspace and (substeps rerun in backward) a rerun buffer of its own: no two calls'
    buffers overlap (a race on a shared one need not show in the results on a busy machine)."""
    kernel, inputs, grads = fem_case(40, torch.float32)
    substeps, library, calls = 4, fem_kernels._library, []

    class Spy:
        def __init__(self, real):
            self.library = library(real)

        def __getattr__(self, name):
            function = getattr(self.library, name)
            return (lambda *args: calls.append((name, args)) or function(*args)) if name in ("fem_forward", "fem_backward") else function

    monkeypatch.setattr(fem_kernels, "_library", Spy)
    threads(2, lambda: fem_run(kernel, substeps, inputs, grads))
    item = torch.finfo(torch.float32).bits // 8
    work, rerun = kernel.work_size * item, substeps * 2 * kernel.particles * 3 * kernel.lanes * item
    forwards = [args[-1] for name, args in calls if name == "fem_forward"]
    backwards = [args for name, args in calls if name == "fem_backward"]
    assert len(forwards) == 4 and len(backwards) == 6  # forward, frame node: 2 each; kept, rerun, node backward: 2 each
    for group in (forwards[:2], forwards[2:]):
        assert abs(group[0] - group[1]) >= work
    for pair in (backwards[0:2], backwards[2:4], backwards[4:6]):
        assert abs(pair[0][-2] - pair[1][-2]) >= work
        if pair[0][-1] is not None:
            assert abs(pair[0][-1] - pair[1][-1]) >= rerun
    assert sum(pair[0][-1] is not None for pair in (backwards[0:2], backwards[2:4], backwards[4:6])) == 2
