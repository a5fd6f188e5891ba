"""The fused spring node equals its torch twin in value and in gradient (float64)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.particles.forces import spring_forces
from tphys.particles.spring_vjp import fused_spring_forces


@settings(max_examples=20)
@given(
    name=st.sampled_from(["pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth"]),
    seed=st.integers(0, 2**31 - 1),
    noise=st.floats(0.0, 0.02),
)
def test_fused_spring_forces_match_the_twin_in_value_and_gradient(name, seed, noise):
    env = E.make(name, num_envs=3, dtype=torch.float64, seed=seed)
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    # Noise puts some cables inside their slack ramp and some slack.
    x = td["x"] + noise * torch.randn(td["x"].shape, generator=gen, dtype=torch.float64)
    v = td["v"] + torch.randn(td["v"].shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for fn in (spring_forces, fused_spring_forces):
        leaves = [x.clone().requires_grad_(), v.clone().requires_grad_()]
        force = fn(env.model.springs, *leaves)
        results.append((force.detach(), *torch.autograd.grad((force * weight).sum(), leaves)))
    for twin, fused in zip(*results):
        assert torch.allclose(fused, twin, rtol=1e-10, atol=1e-10 * (1 + twin.abs().max().item()))


def test_fused_spring_gradcheck():
    env = E.make("rope3d", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset()
    x = td["x"].clone().requires_grad_()
    v = td["v"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v: fused_spring_forces(env.model.springs, x, v), (x, v))


def _springs_and_state(seed: int = 0):
    env = E.make("cloth", num_envs=2, dtype=torch.float64, seed=seed)
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    x = td["x"] + 0.01 * torch.randn(td["x"].shape, generator=gen, dtype=torch.float64)
    v = torch.randn(td["v"].shape, generator=gen, dtype=torch.float64)
    return env.model.springs, x, v


def _value_and_grads(fn, springs, x, v, weight):
    leaves = [x.clone().requires_grad_(), v.clone().requires_grad_()]
    force = fn(springs, *leaves)
    return (force.detach(), *torch.autograd.grad((force * weight).sum(), leaves))


def test_the_index_path_follows_an_in_place_edit_of_the_incidence():
    """The (first, second) ends are cached per incidence tensor: rewiring a spring in place must be seen (the cache keys
    on the tensor's version), in value and in gradient."""
    from tphys.particles import spring_vjp

    springs, x, v = _springs_and_state()
    incidence = springs.incidence.clone()
    springs = springs._replace(incidence=incidence)
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fused_spring_forces(springs, x, v)  # caches the ends
    assert spring_vjp._ends(incidence) is not None
    row = incidence[0].clone()
    incidence[0] = torch.roll(row, 1)  # spring 0 now joins the next two particles
    twins, fuseds = (_value_and_grads(fn, springs, x, v, weight) for fn in (spring_forces, fused_spring_forces))
    for twin, fused in zip(twins, fuseds):
        assert torch.allclose(fused, twin, rtol=1e-10, atol=1e-10 * (1 + twin.abs().max().item()))


def test_an_incidence_that_is_not_one_pair_a_row_takes_the_einsum():
    """Rows that are not exactly one -1 and one +1 (a weighted or three-particle row) have no ends: the einsum serves, and
    the node still equals the twin."""
    from tphys.particles import spring_vjp

    springs, x, v = _springs_and_state(3)
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for edit in ("scale", "third"):
        incidence = springs.incidence.clone()
        if edit == "scale":
            incidence[1] *= 0.5
        else:
            incidence[1, (incidence[1] == 0).nonzero()[0]] = 1.0
        odd = springs._replace(incidence=incidence)
        assert spring_vjp._pair_ends(incidence) is None
        twins, fuseds = (_value_and_grads(fn, odd, x, v, weight) for fn in (spring_forces, fused_spring_forces))
        for twin, fused in zip(twins, fuseds):
            assert torch.allclose(fused, twin, rtol=1e-10, atol=1e-10 * (1 + twin.abs().max().item()))


def test_pair_ends_reads_each_row():
    from tphys.particles import spring_vjp

    incidence = torch.tensor([[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, -1.0]])
    first, second = spring_vjp._pair_ends(incidence)
    assert first.tolist() == [0, 2, 2] and second.tolist() == [1, 1, 0]
    assert spring_vjp._pair_ends(torch.tensor([[-1.0, -1.0, 1.0]])) is None
    assert spring_vjp._pair_ends(torch.tensor([[1.0, 1.0, 0.0]])) is None
    assert spring_vjp._pair_ends(torch.tensor([[-1.0, 1.0, 0.3]])) is None  # a third, weighted particle
    assert spring_vjp._pair_ends(torch.zeros(0, 3)) is None


@settings(max_examples=25, deadline=None)
@given(
    particles=st.integers(2, 7),
    pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=10),
    dim=st.sampled_from([2, 3]),
    batch=st.sampled_from([(), (3,), (2, 2)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_index_path_equals_the_twin_on_any_pair_graph(particles, pairs, dim, batch, seed):
    """Any springs of one -1 / +1 pair a row (repeated pairs, pairs in either order, particles with no spring, any batch
    shape): the fused node's index gathers and scatters give the twin's forces and gradients (float64)."""
    from tphys.particles import spring_vjp
    from tphys.particles.model import Springs

    pairs = [(i % particles, j % particles) for i, j in pairs if i % particles != j % particles]
    if not pairs:
        pairs = [(0, 1)]
    gen = torch.Generator().manual_seed(seed)
    s = len(pairs)
    incidence = torch.zeros(s, particles, dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        incidence[k, i], incidence[k, j] = -1.0, 1.0
    springs = Springs(incidence, 0.05 + torch.rand(s, generator=gen, dtype=torch.float64) * 0.2,
                      10.0 + torch.rand(s, generator=gen, dtype=torch.float64) * 100.0,
                      torch.rand(s, generator=gen, dtype=torch.float64), (torch.rand(s, generator=gen) > 0.5).double(),
                      torch.tensor(1e-3, dtype=torch.float64))
    assert spring_vjp._pair_ends(incidence) is not None
    x = 0.3 * torch.randn(*batch, particles, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(*batch, particles, dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    twins, fuseds = (_value_and_grads(fn, springs, x, v, weight) for fn in (spring_forces, fused_spring_forces))
    for twin, fused in zip(twins, fuseds):
        assert torch.allclose(fused, twin, rtol=1e-10, atol=1e-10 * (1 + twin.abs().max().item()))
