"""The grid update in C (``tphys.kernels.grid_kernels``, ``cpu/grid.c``) against its torch twin
(``tphys.mpm.grid.grid_velocity_torch`` + ``colliders.collide``): forward and backward on random windows with every
shape kind (nodes inside, in the band and outside, empty nodes, walls with and without friction, sticky floor on and
off), finite differences of MPM substeps with moving colliders through the C path, float32, determinism, and the rule
that picks the C kernel or the twin."""

import math

import pytest
import torch
from helpers import check_directional_derivative
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.kernels import grid_kernels
from tphys.mpm import Material, MPMModel, MPMState, substep
from tphys.mpm.colliders import SHAPES, Shapes, signed_distance
from tphys.mpm.grid import grid_velocity, grid_velocity_torch

F64 = dict(dtype=torch.float64)
SIZES = {"sphere": [0.1, 0.0, 0.0], "box": [0.1, 0.05, 0.08], "capsule": [0.04, 0.12, 0.0], "cylinder": [0.07, 0.06, 0.0]}
GRID, WINDOW = 16, (8, 7, 8)

pytestmark = pytest.mark.skipif(not grid_kernels.available(torch.float64), reason="no C compiler")


def rotations(count: int, gen: torch.Generator) -> torch.Tensor:
    """[count, 3, 3] random proper rotations."""
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=gen, **F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q * torch.det(q)[:, None, None]


def scene(seed: int, kinds: tuple, sticky: bool, wall_friction: float, cutoff: float = 0.1, n: int = 3):
    """(model, shapes, mass [n, *WINDOW], momentum, origin [n, 3], poses): random windows of a 16³ domain (one at the
    domain's low corner, one at its high corner: every wall acts), a fifth of the nodes empty or below the mass
    threshold, shapes of ``kinds`` around the window's middle, moving and turning over the substep."""
    gen = torch.Generator().manual_seed(seed)
    dx = 1.0 / GRID
    model = MPMModel(GRID, dx, 1e-3, torch.tensor([0.0, -9.8, 0.0], **F64), torch.ones(1, **F64), torch.ones(1, **F64),
                     Material("corotated", 1.0, 1.0), bound=3, wall_friction=wall_friction, sticky_floor=sticky)
    shapes = Shapes(kinds, torch.tensor([SIZES[k] for k in kinds], **F64), friction=0.4, softness=20.0, cutoff=cutoff)
    mass = 0.5 + torch.rand(n, *WINDOW, generator=gen, **F64)
    empty = torch.rand(mass.shape, generator=gen, **F64)
    mass = torch.where(empty < 0.15, 0.0, torch.where(empty < 0.2, 1e-13, mass))
    momentum = mass.unsqueeze(-1) * 2.0 * torch.randn(n, *WINDOW, 3, generator=gen, **F64)
    high = torch.tensor([GRID - w for w in WINDOW])
    origin = torch.stack([torch.zeros(3, dtype=torch.int64), high, *(torch.randint(0, GRID - 7, (n - 2, 3), generator=gen))])[:n]
    s = len(kinds)
    middle = (origin.to(torch.float64) + torch.tensor(WINDOW, **F64) / 2) * dx
    position = middle[:, None] + 0.12 * torch.randn(n, s, 3, generator=gen, **F64)
    rotation = rotations(n * s, gen).view(n, s, 3, 3)
    position_next = position + 0.002 * torch.randn(n, s, 3, generator=gen, **F64)
    rotation_next = rotation @ rotations(1, gen)[0].lerp(torch.eye(3, **F64), 0.97)  # a small turn (not quite orthogonal: fine)
    return model, shapes, mass, momentum, origin, [position, rotation, position_next, rotation_next]


def node_distances(model, shapes, mass, origin, poses):
    """[M, S] signed distances of the filled nodes to each shape (start pose)."""
    index = torch.nonzero(mass > grid_kernels.MIN_MASS)
    node = (index[:, 1:] + origin[index[:, 0]]).to(torch.float64) * model.dx
    out = []
    for s, kind in enumerate(shapes.kinds):
        p = torch.einsum("mj,mji->mi", node - poses[0][index[:, 0], s], poses[1][index[:, 0], s])
        out.append(signed_distance(kind, shapes.sizes[s], p)[0])
    return torch.stack(out, -1)


def both(model, shapes, mass, momentum, origin, poses, dtype=torch.float64, colliders=True):
    """(velocity, gradients) of the twin and of C for a random upstream gradient."""
    out = []
    weights = torch.randn(momentum.shape, generator=torch.Generator().manual_seed(7), **F64).to(dtype)
    model = model.to(dtype=dtype)
    shapes = shapes._replace(sizes=shapes.sizes.to(dtype))
    for run in (grid_velocity_torch, grid_kernels.grid_velocity_cpu):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (mass, momentum, *poses)]
        hit = (shapes, *leaves[2:]) if colliders else None
        velocity = run(model, leaves[0], leaves[1], hit, origin)
        grads = torch.autograd.grad((velocity * weights).sum(), leaves if colliders else leaves[:2])
        out.append((velocity.detach(), grads))
    return out


def assert_near(actual, expected, rtol):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-300))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kinds=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=5).map(tuple),
       sticky=st.booleans(), wall_friction=st.sampled_from([0.0, 0.3]), cutoff=st.sampled_from([0.1, 0.0]))
def test_c_matches_the_twin_forward_and_backward_in_float64(seed, kinds, sticky, wall_friction, cutoff):
    model, shapes, mass, momentum, origin, poses = scene(seed, kinds, sticky, wall_friction, cutoff)
    (v_twin, g_twin), (v_c, g_c) = both(model, shapes, mass, momentum, origin, poses)
    assert_near(v_c, v_twin, 1e-12)
    for name, a, b in zip(("mass", "momentum", "position", "rotation", "position_next", "rotation_next"), g_c, g_twin):
        assert_near(a, b, 1e-11), name


@pytest.mark.parametrize("kind", SHAPES)
def test_every_kind_meets_nodes_inside_in_the_band_and_outside_and_c_matches_the_twin(kind):
    """The fixed scenes behind the property test do reach each regime: nodes inside a shape, in its band, beyond it;
    walls that act; the sticky floor; and C's gradients agree there (the pose gradients are not zero)."""
    model, shapes, mass, momentum, origin, poses = scene(3, (kind, kind), sticky=True, wall_friction=0.3)
    distance = node_distances(model, shapes, mass, origin, poses)
    band = math.log(1 / shapes.cutoff) / shapes.softness
    assert (distance <= 0).sum() >= 5 and ((distance > 0) & (distance < band)).sum() >= 20 and (distance >= band).sum() >= 20
    (v_twin, g_twin), (v_c, g_c) = both(model, shapes, mass, momentum, origin, poses)
    assert_near(v_c, v_twin, 1e-12)
    for a, b in zip(g_c, g_twin):
        assert b.abs().max() > 0
        assert_near(a, b, 1e-11)
    filled = mass > grid_kernels.MIN_MASS
    assert (v_c[~filled] == 0).all() and (g_c[0][~filled] == 0).all() and (g_c[1][~filled] == 0).all()
    assert ((v_c[..., 1] == 0) & filled).any()  # walls and the sticky floor stopped some nodes


def test_without_colliders_and_without_walls_in_reach():
    model, shapes, mass, momentum, origin, poses = scene(5, ("sphere",), sticky=False, wall_friction=0.3)
    (v_twin, g_twin), (v_c, g_c) = both(model, shapes, mass, momentum, origin, poses, colliders=False)
    assert_near(v_c, v_twin, 1e-12)
    for a, b in zip(g_c, g_twin):
        assert_near(a, b, 1e-12)


def test_float32_agrees_with_the_twin():
    model, shapes, mass, momentum, origin, poses = scene(11, SHAPES, sticky=True, wall_friction=0.3)
    (v64, _), _ = both(model, shapes, mass, momentum, origin, poses)
    (v_twin, g_twin), (v_c, g_c) = both(model, shapes, mass, momentum, origin, poses, dtype=torch.float32)
    assert v_c.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_c)
    assert_near(v_c.double(), v64, 1e-5)
    assert_near(v_c, v_twin, 1e-5)
    for a, b in zip(g_c, g_twin):
        assert_near(a, b, 1e-4)


def test_results_are_deterministic():
    model, shapes, mass, momentum, origin, poses = scene(13, SHAPES, sticky=True, wall_friction=0.3)
    first, second = both(model, shapes, mass, momentum, origin, poses)[1], both(model, shapes, mass, momentum, origin, poses)[1]
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def block_scene():
    """A plasticine block on the floor of an 8³ grid (float64, sticky floor, wall friction), a rotating box and a
    sliding capsule above it; cutoff 0 (every node feels both shapes, so no band edge makes FD jump)."""
    grid = 8
    dx = 1.0 / grid
    axis = torch.arange(0.3, 0.62, dx / 2, **F64)
    x = torch.stack(torch.meshgrid(axis, axis - 0.05, axis, indexing="ij"), -1).reshape(1, -1, 3)
    volume = torch.full((x.shape[1],), (dx / 2) ** 3, **F64)
    model = MPMModel(grid, dx, 1e-3, torch.tensor([0.0, -9.8, 0.0], **F64), 1000 * volume, volume,
                     Material.from_young("plasticine", 5e3, 0.2, yield_stress=50.0), wall_friction=0.3, sticky_floor=True)
    shapes = Shapes(("box", "capsule"), torch.tensor([[0.12, 0.04, 0.1], [0.03, 0.15, 0.0]], **F64), friction=0.5, softness=40.0,
                    cutoff=0.0)
    return model, x, shapes


def turn(angle):
    """[1, 1, 3, 3] rotations about z by ``angle`` [1, 1]."""
    c, s, o, i = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, o, s, c, o, o, o, i], -1).view(*angle.shape, 3, 3)


def test_gradients_through_moving_colliders_match_finite_differences_on_the_c_path(monkeypatch):
    """5 substeps of a block pressed by a box that turns and sinks and a capsule that slides (float64, backend "cpu"):
    d(weighted final positions and velocities)/d(the shapes' motion and the block's initial velocity)."""
    calls = []
    original = grid_kernels.grid_velocity_cpu
    monkeypatch.setattr(grid_kernels, "grid_velocity_cpu", lambda *a: calls.append(1) or original(*a))
    model, x, shapes = block_scene()
    gen = torch.Generator().manual_seed(2)
    weights = torch.randn(2, *x.shape, generator=gen, **F64)
    start = torch.tensor([[[0.46, 0.42, 0.46], [0.3, 0.43, 0.45]]], **F64)

    def loss(motion, spin, v0):
        state = MPMState.at_rest(x, v0.expand_as(x))
        for k in range(5):
            now, nxt = start + k * motion, start + (k + 1) * motion
            lying = turn(torch.tensor([[math.pi / 2]], **F64))  # the capsule lies along x
            rot = lambda j: torch.cat([turn(spin * j), lying], 1)  # noqa: E731
            state = substep(model, state, backend="cpu", colliders=(shapes, now, rot(k), nxt, rot(k + 1)))
        return (state.x * weights[0]).sum() + 1e-3 * (state.v * weights[1]).sum()

    motion = torch.tensor([[[0.0, -0.004, 0.001], [0.003, -0.002, 0.0]]], **F64)
    spin = torch.tensor([[0.02]], **F64)
    v0 = torch.tensor([0.1, -0.3, 0.05], **F64)
    directions = [torch.tensor([[[0.3, -1.0, 0.2], [1.0, 0.5, -0.4]]], **F64) * 1e-3, torch.tensor([[1e-3]], **F64),
                  torch.tensor([0.2, 0.5, -0.3], **F64) * 1e-2]
    check_directional_derivative(loss, [motion, spin, v0], directions, eps=(1e-6, 1e-5), rtol=1e-5)
    assert calls, "the C kernel did not run"


def test_the_rule(monkeypatch):
    """C for float32/float64 CPU tensors under "auto" and "cpu"; the twin under "torch", for mixed dtypes, for sizes or
    gravity that need a gradient (which the twin gives), more than MAX_SHAPES shapes, an unknown kind (the twin's ValueError) or other
    dtypes; "cpu" raises where the C file does not build, "auto" falls back."""
    model, shapes, mass, momentum, origin, poses = scene(1, ("sphere", "box"), sticky=False, wall_friction=0.0)
    colliders = (shapes, *poses)
    calls = []
    original = grid_kernels.grid_forward
    monkeypatch.setattr(grid_kernels, "grid_forward", lambda *a: calls.append(1) or original(*a))

    def runs_c(backend="auto", model=model, mass=mass, momentum=momentum, colliders=colliders):
        calls.clear()
        grid_velocity(model, mass, momentum, colliders, origin, backend=backend)
        return bool(calls)

    assert runs_c("auto") and runs_c("cpu") and not runs_c("torch")
    single = dict(mass=mass.float(), momentum=momentum.float(),
                  colliders=(shapes._replace(sizes=shapes.sizes.float()), *(p.float() for p in poses)))
    assert runs_c(model=model.to(dtype=torch.float32), **single)
    assert not runs_c(**single)  # float64 gravity with float32 grids: the twin (which promotes)
    assert not runs_c(mass=mass.bfloat16(), momentum=momentum.bfloat16())
    with pytest.raises(RuntimeError, match="backend='cpu'"):
        runs_c("cpu", mass=mass.bfloat16(), momentum=momentum.bfloat16())
    assert runs_c(colliders=None)

    sizes = shapes.sizes.clone().requires_grad_()
    grown = (shapes._replace(sizes=sizes), *poses)
    assert not runs_c("cpu", colliders=grown)
    velocity = grid_velocity(model, mass, momentum, grown, origin, backend="cpu")
    (grad,) = torch.autograd.grad(velocity.square().sum(), sizes)
    assert grad.abs().max() > 0
    with torch.no_grad():
        assert runs_c("cpu", colliders=grown)  # no gradient wanted: C serves
    assert not runs_c(model=model._replace(gravity=model.gravity.clone().requires_grad_()))

    many = Shapes(("sphere",) * (grid_kernels.MAX_SHAPES + 1), torch.full((grid_kernels.MAX_SHAPES + 1, 3), 0.05, **F64))
    n = mass.shape[0]
    crowd = (many, *(p[:, :1].expand(n, len(many.kinds), *p.shape[2:]) for p in poses))
    assert not runs_c(colliders=crowd)
    with pytest.raises(ValueError, match="unknown collider shape"):
        runs_c(colliders=(shapes._replace(kinds=("sphere", "cone")), *poses))

    monkeypatch.setattr(grid_kernels, "available", lambda dtype: False)  # no compiler
    assert not runs_c("auto")
    with pytest.raises(RuntimeError, match="grid.c does not build"):
        runs_c("cpu")


def test_where_no_shape_acts_the_poses_stay_out_of_the_graph(monkeypatch):
    """Shapes far from every window, and shapes near a window but beyond the band of its one filled node per env: the C
    path's velocities equal the twin's, and backward computes nothing for the poses (an autograd.Function before them
    is not called, as with the twin, whose graph has no path to them); shapes that act: it is called, and the pose
    gradients are the twin's; either way backward calls the adjoint once."""
    model, shapes, mass, momentum, origin, poses = scene(4, ("box", "sphere"), sticky=True, wall_friction=0.3)
    band = math.log(1 / shapes.cutoff) / shapes.softness
    calls, adjoints = [], []
    adjoint = grid_kernels.grid_backward
    monkeypatch.setattr(grid_kernels, "grid_backward", lambda *a: adjoints.append(1) or adjoint(*a))

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            calls.append(1)
            return grad

    sparse = torch.zeros_like(mass)
    sparse[:, 0, 0, 0] = 1.0  # one filled node per env, at the window's first corner
    corner = origin.to(torch.float64) * model.dx
    near = (corner - torch.tensor([0.0, 0.0, 0.13 + band], **F64))[:, None].expand(-1, 2, -1).clone()
    eye = torch.eye(3, **F64).expand_as(poses[1]).clone()
    cases = {"far": (mass, momentum, [poses[0] + 3.0, *poses[1:]], False),
             "near": (sparse, momentum * sparse.unsqueeze(-1), [near, eye, near.clone(), eye.clone()], False),
             "acting": (mass, momentum, poses, True)}
    for name, (m, q, pose, acts) in cases.items():
        calls.clear()
        adjoints.clear()
        touched = node_distances(model, shapes, m, origin, pose)
        assert bool(((touched < band) | (touched <= 0)).any()) == acts, name
        leaves = [t.clone().requires_grad_() for t in (m, q, *pose)]
        velocity = grid_kernels.grid_velocity_cpu(model, leaves[0], leaves[1], (shapes, Spy.apply(leaves[2]), *leaves[3:]), origin)
        twin = [t.clone().requires_grad_() for t in (m, q, *pose)]
        expected = grid_velocity_torch(model, twin[0], twin[1], (shapes, *twin[2:]), origin)
        assert_near(velocity, expected.detach(), 1e-12)
        grads = torch.autograd.grad(velocity.square().sum(), leaves, allow_unused=True)
        expected_grads = torch.autograd.grad(expected.square().sum(), twin, allow_unused=True)
        assert bool(calls) == acts and len(adjoints) == 1, name
        for a, b in zip(grads, expected_grads):
            assert (a is None) == (b is None), name
            if b is not None:
                assert_near(a, b, 1e-11)


def test_the_custom_op_alone_differentiates_every_pose_and_passes_opcheck():
    """``grid_velocity_c`` called directly (poses attached; the scene's rotations come from QR, column-major: the op
    makes its inputs contiguous): the twin's gradients, and torch.library's checks of the schema, the fake kernel and the
    registered autograd."""
    model, shapes, mass, momentum, origin, poses = scene(8, ("capsule", "cylinder"), sticky=True, wall_friction=0.3)
    band = math.log(1 / shapes.cutoff) / shapes.softness
    kinds = torch.tensor([SHAPES.index(k) for k in shapes.kinds])
    scalars = (model.dt, model.dx, GRID, model.bound, model.wall_friction, True, shapes.friction, shapes.softness, band)
    leaves = [t.clone().requires_grad_() for t in (mass, momentum, *poses)]
    velocity, acted = grid_kernels.grid_velocity_c(leaves[0], leaves[1], origin, model.gravity, kinds, shapes.sizes, *leaves[2:], *scalars)
    assert acted > 0 and not poses[1].is_contiguous()
    weights = torch.randn(velocity.shape, generator=torch.Generator().manual_seed(1), **F64)
    grads = torch.autograd.grad((velocity * weights).sum(), leaves)
    twin = [t.clone().requires_grad_() for t in (mass, momentum, *poses)]
    expected = grid_velocity_torch(model, twin[0], twin[1], (shapes, *twin[2:]), origin)
    for a, b in zip(grads, torch.autograd.grad((expected * weights).sum(), twin)):
        assert_near(a, b, 1e-11)
    small = [t[:1, :3, :3, :3].clone().contiguous().requires_grad_() for t in (mass, momentum)]
    torch.library.opcheck(torch.ops.tphys.grid_velocity.default, (*small, origin[:1], model.gravity, kinds, shapes.sizes,
                                                                  *[p[:1].clone().requires_grad_() for p in poses], *scalars))
