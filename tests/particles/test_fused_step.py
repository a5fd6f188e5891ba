"""The fused C particle step (``tphys/kernels/cpu/particles.c``) equals the torch path of ``semi_implicit_euler`` on
every payload env that has only springs and cables, in float64 and float32, from random initial states under random
actions, for batch sizes that are not multiples of its block of envs, on both of its paths ("band": every payload env
by default; "general": forced with ``particle_kernels.BAND = 0``, and taken by a rope whose particles are renumbered);
and the dispatch takes it only where it may.

Tolerances (relative to each env's largest |x| or |v|): float64, one env step from the same state, 1e-12, and whole
50-step trajectories 2e-9 (general path) / 1e-8 (band path) (the stiff cables amplify a round-off difference by ~1e3
per step: the stretch is ~1e-3 of the length); float32, one env step 2e-4, and within 3x of torch's own float32 error
against float64 (the kernel's float32 is as accurate as torch's; whole float32 trajectories of either path drift 1e-2
from float64, so they are not compared).
"""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import tphys.envs as E
from tphys.kernels import c_kernels, particle_kernels, particle_unrolled
from tphys.particles import ParticleControl, ParticleModel, ParticleState, fused_step, semi_implicit_euler

pytestmark = pytest.mark.skipif(not particle_kernels.available(torch.float64), reason="no C compiler")

FUSED_ENVS = ("pendulum2d", "pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d")
STEPS = 50


def relative_error(a: ParticleState, b: ParticleState) -> float:
    """max over envs of |a - b| / max |b| (per env, positions and velocities apart)."""
    return max(((p - q).abs().amax((1, 2)) / q.abs().amax((1, 2)).clamp_min(1e-30)).max().item() for p, q in ((a.x, b.x), (a.v, b.v)))


def as_dtype(state: ParticleState, dtype) -> ParticleState:
    return ParticleState(*[t.to(dtype) if t.is_floating_point() else t for t in state])


KERNEL_PATHS = ("unrolled", *particle_kernels.PATHS)


@pytest.fixture(params=KERNEL_PATHS)
def kernel_path(request, monkeypatch):
    """Each of the kernel's paths in turn: "unrolled" (``particle_unrolled``: the default for every payload env in
    float32; forced in float64 too), "band" (forced with the unrolled path off; float64 too) and "general" (forced with
    the unrolled path off and BAND = 0; the default in float64)."""
    if request.param == "unrolled":
        monkeypatch.setattr(particle_unrolled, "DTYPES", (torch.float32, torch.float64))
    else:
        monkeypatch.setattr(particle_unrolled, "DTYPES", ())
    if request.param == "general":
        monkeypatch.setattr(particle_kernels, "BAND", 0)
    elif request.param == "band":
        monkeypatch.setattr(particle_kernels, "BAND_DTYPES", (torch.float32, torch.float64))
    fused_step._PLANS.clear()  # plans hold the path: derive them again under these settings
    yield request.param
    fused_step._PLANS.clear()


def compare(name: str, n: int, seed: int, dtype=torch.float64, steps: int = STEPS, path: str | None = None) -> dict:
    """Errors of the C step against the torch path along a torch trajectory of ``steps`` env steps: ``one_step`` (each
    step from the torch state), ``trajectory`` (the C path run on its own), and in float32 ``one_step_64`` /
    ``torch_one_step_64`` (the C and torch float32 steps against the float64 step)."""
    env = E.make(name, num_envs=n, seed=seed, dtype=torch.float64, validate=False)
    model = env.model.to(dtype=dtype)
    if path is not None:
        assert fused_step._plan(model, env.dt / env.substeps).model.path == path
    generator = torch.Generator().manual_seed(seed)
    errors = dict(one_step=0.0, trajectory=0.0, one_step_64=0.0, torch_one_step_64=0.0)
    with torch.no_grad():
        reference = env.read_state(env.reset())
        fused = as_dtype(reference, dtype)
        for _ in range(steps):
            action = torch.rand(n, env.action_dim, generator=generator, dtype=torch.float64) * 2 - 1
            control64 = ParticleControl(env.handle_velocity(action))
            control = ParticleControl(control64.handle_velocity.to(dtype))
            start = as_dtype(reference, dtype)
            torch_step = semi_implicit_euler(model, start, control, env.dt, env.substeps, backend="torch")
            c_step = semi_implicit_euler(model, start, control, env.dt, env.substeps, backend="cpu")
            fused = semi_implicit_euler(model, fused, control, env.dt, env.substeps, backend="cpu")
            errors["one_step"] = max(errors["one_step"], relative_error(c_step, torch_step))
            if dtype == torch.float64:
                reference = torch_step
            else:
                exact = semi_implicit_euler(env.model, reference, control64, env.dt, env.substeps, backend="torch")
                errors["one_step_64"] = max(errors["one_step_64"], relative_error(as_dtype(c_step, torch.float64), exact))
                errors["torch_one_step_64"] = max(errors["torch_one_step_64"], relative_error(as_dtype(torch_step, torch.float64), exact))
                reference = exact
            drift = relative_error(as_dtype(fused, torch.float64), as_dtype(reference, torch.float64))
            errors["trajectory"] = max(errors["trajectory"], drift)
    return errors


@pytest.mark.parametrize("name", FUSED_ENVS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # kernel_path: once a test
@given(n=st.sampled_from([1, 7, 33, 50]), seed=st.integers(0, 2**16))
def test_the_c_step_equals_the_torch_path_in_float64(kernel_path, name, n, seed):
    """One step to 1e-12; 50 steps: the general path (float64's default) to 2e-9, the band path (float32's, forced
    here) to 1e-8, its order of a particle's spring-force sum rounding differently (seen: 2e-9, pendulum2d seed 1159).
    Round-off grows ~1e3-fold an env step in the stiff cables: the kernel before the band path (cb5b922) gives 1.05e-9
    on pendulum2d n=33 seed 1000, so the former 1e-9 bound was met by chance."""
    errors = compare(name, n, seed, path=kernel_path)
    assert errors["one_step"] < 1e-12, errors
    assert errors["trajectory"] < (2e-9 if kernel_path == "general" else 1e-8), errors


@pytest.mark.parametrize("name", FUSED_ENVS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from([5, 31, 45]), seed=st.integers(0, 2**16))
def test_the_c_step_is_as_accurate_as_the_torch_path_in_float32(kernel_path, name, n, seed):
    errors = compare(name, n, seed, torch.float32, path=kernel_path)
    assert errors["one_step"] < 2e-4, errors
    assert errors["one_step_64"] < 3 * errors["torch_one_step_64"] + 1e-6, errors


# ---------------------------------------------------------------------------- dispatch
@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of calls of the C step (counted, then run)."""
    calls = []
    original = particle_kernels.particle_step

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(particle_kernels, "particle_step", counted)
    return calls


def rope(n=5, dtype=torch.float64, **options):
    env = E.make("rope3d", num_envs=n, seed=0, dtype=dtype, validate=False, **options)
    state = env.reset()
    return env, state, torch.rand(n, env.action_dim, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_auto_takes_the_c_step_without_grad_and_torch_with_grad(kernel_calls):
    env, state, action = rope()
    with torch.no_grad():
        env.physics_step(state, action)
    assert len(kernel_calls) == 1
    env.physics_step(state, action)  # grad mode on, nothing requires grad
    assert len(kernel_calls) == 2
    action = action.clone().requires_grad_()
    out = env.physics_step(state, action)
    assert len(kernel_calls) == 2 and out["x"].grad_fn is not None
    out["x"].sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0


def test_a_model_tensor_that_requires_grad_takes_the_torch_path(kernel_calls):
    env, state, action = rope()
    model = env.model._replace(drag=env.model.drag.clone().requires_grad_())
    particles = env.read_state(state)
    out = semi_implicit_euler(model, particles, ParticleControl(env.handle_velocity(action)), env.dt, env.substeps)
    assert not kernel_calls and out.v.requires_grad


def test_backend_torch_forces_the_torch_path(kernel_calls):
    env, state, action = rope(backend="torch")
    with torch.no_grad():
        env.physics_step(state, action)
    assert not kernel_calls
    env, state, action = rope(backend="triton")  # no Triton particle kernel: the torch ops
    with torch.no_grad():
        env.physics_step(state, action)
    assert not kernel_calls


def test_backend_cpu_refuses_what_the_kernel_cannot_do():
    env, state, action = rope(backend="cpu")
    with pytest.raises(ValueError, match="autograd"):
        env.physics_step(state, action.requires_grad_())
    cloth = E.make("cloth", num_envs=2, seed=0, dtype=torch.float64, validate=False, backend="cpu")
    with torch.no_grad(), pytest.raises(ValueError, match="membrane"):
        cloth.physics_step(cloth.reset(), torch.zeros(2, cloth.action_dim, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown backend"):
        E.make("rope3d", num_envs=1, backend="gpu")


def test_unsupported_features_take_the_torch_path_under_auto(kernel_calls):
    cloth = E.make("cloth", num_envs=2, seed=0, dtype=torch.float64, validate=False)
    with torch.no_grad():
        out = cloth.physics_step(cloth.reset(), torch.zeros(2, cloth.action_dim, dtype=torch.float64))
    assert not kernel_calls and torch.isfinite(out["x"]).all()
    env, state, action = rope()
    particles = env.read_state(state)
    control = ParticleControl(env.handle_velocity(action))
    model = env.model._replace(springs=env.model.springs._replace(incidence=env.model.springs.incidence * 2))
    assert fused_step.reason_not_fused(model, particles, control, h=env.dt / env.substeps) is not None
    with pytest.raises(RuntimeError, match="float32/float64"):
        fused_step.reason_not_fused(env.model, as_dtype(particles, torch.float16), control, "cpu")


def test_forward_mode_tangents_take_the_torch_path(kernel_calls):
    import torch.autograd.forward_ad as fwAD

    env, state, action = rope()
    particles = env.read_state(state)
    with torch.no_grad(), fwAD.dual_level():
        x = fwAD.make_dual(particles.x, torch.ones_like(particles.x))
        out = semi_implicit_euler(env.model, particles._replace(x=x), ParticleControl(env.handle_velocity(action)), env.dt, env.substeps)
        tangent = fwAD.unpack_dual(out.x).tangent
    assert not kernel_calls and tangent is not None and torch.isfinite(tangent).all()


def test_an_in_place_edit_of_the_model_reaches_the_kernel():
    env, state, action = rope()
    particles, control = env.read_state(state), ParticleControl(env.handle_velocity(action))
    with torch.no_grad():
        before = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps)
        env.model.springs.stiffness.mul_(2.0)
        after = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps)
        twin = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps, backend="torch")
    assert relative_error(after, before) > 1e-6 and relative_error(after, twin) < 1e-12


# ---------------------------------------------------------------------------- the two paths: which one runs
def renumbered(model: ParticleModel, order: Tensor) -> ParticleModel:
    """``model`` with its particles renumbered: new particle k is old particle order[k]."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0])
    springs = model.springs._replace(incidence=model.springs.incidence[:, order])
    return model._replace(mass=model.mass[order], free_mask=model.free_mask[order], free_scatter=model.free_scatter[:, order],
                          handle_index=inverse[model.handle_index], handle_scatter=model.handle_scatter[:, order], springs=springs)


def test_the_path_rule_takes_the_band_for_springs_at_most_band_apart():
    i, j = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 3])
    assert particle_kernels.path(i, j) == "band" and particle_kernels.path(j, i) == "band"  # |i - j| <= 3, either way round
    assert particle_kernels.path(i, j + 1) == "general"  # a spring 4 apart
    assert particle_kernels.path(i, j, band=2) == "general"
    assert particle_kernels.path(i[:0], j[:0]) == "band"  # no springs
    assert particle_kernels.path(i, j, dtype=torch.float64) == "general"  # float64: the general path (BAND_DTYPES)
    assert f"#define MAX_BAND {particle_kernels.BAND} " in particle_kernels.SOURCE.read_text()  # the C file's own limit


def test_a_renumbered_rope_takes_the_general_path_with_the_same_results(monkeypatch):
    """The rope (chain: band path) with its particles renumbered so that springs join particles up to 5 apart: the
    general path, equal to the torch path on the renumbered model and to the band path's results renumbered."""
    monkeypatch.setattr(particle_kernels, "BAND_DTYPES", (torch.float64,))  # float64 for the comparison, the band path on
    fused_step._PLANS.clear()
    env, state, action = rope(n=7)
    order = torch.tensor([0, 5, 1, 4, 2, 3])
    model, h = renumbered(env.model, order), env.dt / env.substeps
    assert fused_step._plan(env.model, h).model.path == "band" and fused_step._plan(model, h).model.path == "general"
    control = ParticleControl(env.handle_velocity(action))
    with torch.no_grad():
        banded = env.read_state(state)
        general = banded._replace(x=banded.x[:, order], v=banded.v[:, order])
        for _ in range(5):
            twin = semi_implicit_euler(model, general, control, env.dt, env.substeps, backend="torch")
            general = semi_implicit_euler(model, general, control, env.dt, env.substeps, backend="cpu")
            banded = semi_implicit_euler(env.model, banded, control, env.dt, env.substeps, backend="cpu")
            assert relative_error(general, twin) < 1e-12
    assert relative_error(banded._replace(x=banded.x[:, order], v=banded.v[:, order]), general) < 1e-12


def test_the_c_file_refuses_the_band_path_for_a_spring_wider_than_its_band(monkeypatch):
    """The C step checks the band itself and says which path it took: a model given "band" by a wider BAND than the C
    file's is an error, not a silent switch."""
    env, state, action = rope(n=3)
    monkeypatch.setattr(particle_kernels, "BAND", 5)
    monkeypatch.setattr(particle_kernels, "BAND_DTYPES", (torch.float64,))
    fused_step._PLANS.clear()
    try:
        model = renumbered(env.model, torch.tensor([0, 5, 1, 4, 2, 3]))
        assert fused_step._plan(model, env.dt / env.substeps).model.path == "band"
        particles = env.read_state(state)
        with torch.no_grad(), pytest.raises(RuntimeError, match="took path 'general'"):
            semi_implicit_euler(model, particles, ParticleControl(env.handle_velocity(action)), env.dt, env.substeps, backend="cpu")
    finally:
        fused_step._PLANS.clear()


# ---------------------------------------------------------------------------- other builds, and the comparison has teeth
def use_build(monkeypatch, tmp_path, source=None, defines=(), header=None):
    """Route the C step (cpu/particles.c's paths and the unrolled one) to builds with extra ``defines``, in a scratch
    cache: of ``source`` (default: the C file), and with ``header`` (text) in place of cpu/particle_block.h."""
    source = source or particle_kernels.SOURCE
    monkeypatch.setenv("TPHYS_KERNEL_CACHE", str(tmp_path / "cache"))
    if header is not None:  # beside a copy of the source (a quoted include looks first beside its file), and for the
        (tmp_path / particle_unrolled.HEADER).write_text(header)  # unrolled sources, found through -I before c_kernels' own
        if source.parent != tmp_path:
            source = tmp_path / source.name
            source.write_text(particle_kernels.SOURCE.read_text())
        defines = (*defines, f"-I{tmp_path}")

    def library(real):
        return c_kernels.build(source, real, (*particle_kernels.FLAGS, f"-DLANES={particle_kernels.LANES[real]}", *defines))

    def unrolled(top, real):
        return particle_unrolled.function(top, real, (*particle_kernels.FLAGS, f"-DLANES={particle_kernels.LANES[real]}", *defines))

    monkeypatch.setattr(particle_kernels, "_library", library)
    monkeypatch.setattr(particle_kernels, "_unrolled_function", unrolled)
    fused_step._PLANS.clear()  # plans hold the unrolled build


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_portable_build_equals_the_torch_path(tmp_path, monkeypatch, kernel_path, dtype):
    """-DTPHYS_GENERIC: the plain loops the compiler vectorises and 32-byte vectors, what CPUs without AVX-512 run."""
    use_build(monkeypatch, tmp_path, defines=("-DTPHYS_GENERIC",))
    errors = compare("rope3d", 45, 3, dtype, steps=10, path=kernel_path)
    if dtype == torch.float64:
        assert errors["one_step"] < 1e-12 and errors["trajectory"] < (2e-9 if kernel_path == "general" else 1e-8), errors
    else:
        assert errors["one_step"] < 2e-4 and errors["one_step_64"] < 3 * errors["torch_one_step_64"] + 1e-6, errors


def avx512() -> bool:
    """Whether this CPU has AVX-512 (the C file is built with -march=native: its float blocks then take that path)."""
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


ON_AVX512 = pytest.mark.skipif(not avx512(), reason="no AVX-512: float runs the portable code")


HEADER_PATH = c_kernels.CPU_DIR / particle_unrolled.HEADER
DAMPING_TERM = "tension[j] = damped_taut * (dot[j] * inverse[j]) + tension[j]"  # spring_tensions (band and unrolled paths)


@pytest.mark.parametrize("kernel_path, dtype, where, defect, replacement", [
    ("general", torch.float64, "source", "stiffness * elastic + (damping * taut) * (dot * inverse)", "stiffness * elastic"),  # one_spring
    pytest.param("general", torch.float32, "source", "_mm512_fmadd_ps(_mm512_mul_ps(damping, taut), _mm512_mul_ps(dot, inverse), tension)",
                 "tension", marks=ON_AVX512),  # one_spring_avx512
    ("band", torch.float64, "header", DAMPING_TERM, "tension[j] = tension[j]"),  # spring_tension
    pytest.param("band", torch.float32, "header", DAMPING_TERM, "tension[j] = tension[j]",
                 marks=ON_AVX512),
    ("unrolled", torch.float64, "header", DAMPING_TERM, "tension[j] = tension[j]"),
    pytest.param("unrolled", torch.float32, "header", DAMPING_TERM, "tension[j] = tension[j]",
                 marks=ON_AVX512),
], indirect=["kernel_path"])
def test_the_comparison_catches_a_kernel_without_spring_damping(tmp_path, monkeypatch, kernel_path, dtype, where, defect, replacement):
    """A mutant of the C sources that drops the damping term of the spring tension on one path fails that path's
    comparison."""
    original = (particle_kernels.SOURCE if where == "source" else HEADER_PATH).read_text()
    assert original.count(defect) == 1
    mutant = original.replace(defect, replacement)
    if where == "source":
        (tmp_path / "particles.c").write_text(mutant)
        use_build(monkeypatch, tmp_path, tmp_path / "particles.c")
    else:
        use_build(monkeypatch, tmp_path, header=mutant)
    errors = compare("pendulum2d", 3, 0, dtype, steps=2, path=kernel_path)
    assert errors["one_step"] > 1e-3, errors


@pytest.mark.parametrize("defect, replacement", [
    ("case 2: BAND_ADD(2 < B ? 2 : B); break;", "case 2: BAND_ADD(1); break;"),  # a bending spring's force to the wrong particle
    ("if (b->kind[k] == 2 * CABLE + 1) g =", "if (b->kind[k] != 2 * CABLE + 1) g ="),  # two-kind models: the kinds swapped
])
def test_the_band_path_catches_its_own_mutants(tmp_path, monkeypatch, kernel_path, defect, replacement):
    """Mutants of the band path's own code (the rope takes it: a two-kind model, springs 1 and 2 apart) fail the
    comparison; the general path does not use that code and still passes."""
    source = particle_kernels.SOURCE.read_text()
    assert source.count(defect) == 1
    mutant = tmp_path / "particles.c"
    mutant.write_text(source.replace(defect, replacement))
    use_build(monkeypatch, tmp_path, mutant)
    errors = compare("rope3d", 5, 0, torch.float64, steps=2, path=kernel_path)
    assert (errors["one_step"] > 1e-3) == (kernel_path == "band"), errors


# ---------------------------------------------------------------------------- the unrolled path
def test_every_payload_env_takes_the_unrolled_path_in_float32_and_a_larger_model_the_band():
    fused_step._PLANS.clear()
    for name in FUSED_ENVS:
        env = E.make(name, num_envs=2, seed=0, validate=False)
        assert fused_step._plan(env.model, env.dt / env.substeps).model.path == "unrolled", name
        assert fused_step._plan(env.model.to(dtype=torch.float64), env.dt / env.substeps).model.path == "general", name
    env = E.make("rope3d", num_envs=2, seed=0, validate=False)
    for limit in ("MAX_PARTICLES", "MAX_SPRINGS"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(particle_unrolled, limit, 5)  # the rope has 6 particles and 9 springs
            fused_step._PLANS.clear()
            assert fused_step._plan(env.model, env.dt / env.substeps).model.path == "band", limit
    fused_step._PLANS.clear()


def test_models_with_other_numbers_and_the_same_springs_share_one_build():
    """The build is keyed on the topology (which particles move, which springs are cables or damped), not on the
    numbers: a stiffer rope takes the same function and its own constants, and steps like the torch path."""
    env, state, action = rope(n=3, dtype=torch.float32)
    h = env.dt / env.substeps
    stiffer = env.model._replace(springs=env.model.springs._replace(stiffness=env.model.springs.stiffness * 3))
    fused_step._PLANS.clear()
    plain, stiff = fused_step._plan(env.model, h).model, fused_step._plan(stiffer, h).model
    assert plain.unrolled[0] is stiff.unrolled[0] and not torch.equal(plain.unrolled[1], stiff.unrolled[1])
    particles, control = env.read_state(state), ParticleControl(env.handle_velocity(action))
    with torch.no_grad():
        fused = semi_implicit_euler(stiffer, particles, control, env.dt, env.substeps, backend="cpu")
        twin = semi_implicit_euler(stiffer, particles, control, env.dt, env.substeps, backend="torch")
        other = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps, backend="cpu")
    assert relative_error(fused, twin) < 2e-4 and relative_error(other, twin) > 1e-3


@pytest.mark.parametrize("defect", ["lower", "drag"])
def test_the_comparison_catches_a_generator_that_drops_a_force(monkeypatch, defect):
    """Mutants of the code generator: the springs' forces on their lower particle left out, or the drag term (the
    rope has no drag: a model with drag is made here) left out; each fails the comparison with the torch path."""
    original = particle_unrolled.source

    def mutant(top):
        lines = original(top).split("\n")
        if defect == "lower":
            return "\n".join(line for line in lines if not (line.strip().startswith("f") and " + g" in line))
        return "\n".join(line.replace(" - c[", " + 0 * c[") if "v" in line and "= v" in line else line for line in lines)

    monkeypatch.setattr(particle_unrolled, "source", mutant)
    monkeypatch.setattr(particle_unrolled, "DTYPES", (torch.float32, torch.float64))
    build = particle_unrolled.function.__wrapped__  # not the cached builds of the real source
    flags = {real: (*particle_kernels.FLAGS, f"-DLANES={lanes}") for real, lanes in particle_kernels.LANES.items()}
    monkeypatch.setattr(particle_kernels, "_unrolled_function", lambda top, real: build(top, real, flags[real]))
    fused_step._PLANS.clear()
    env, state, action = rope(n=3)
    model = env.model._replace(drag=torch.tensor(0.5, dtype=torch.float64)) if defect == "drag" else env.model
    particles, control = env.read_state(state), ParticleControl(env.handle_velocity(action))
    try:
        with torch.no_grad():
            fused = semi_implicit_euler(model, particles, control, env.dt, env.substeps, backend="cpu")
            twin = semi_implicit_euler(model, particles, control, env.dt, env.substeps, backend="torch")
        assert fused_step._plan(model, env.dt / env.substeps).model.path == "unrolled"
        assert relative_error(fused, twin) > 1e-6
    finally:
        fused_step._PLANS.clear()


# ---------------------------------------------------------------------------- handle velocities as action @ basis
def map_and_velocities(env, n, seed):
    action = torch.rand(n, env.action_dim, generator=torch.Generator().manual_seed(seed), dtype=env.dtype) * 2 - 1
    basis = env.velocity_basis()
    return ParticleControl(None, handle_map=(action, basis)), ParticleControl(env.handle_velocity(action))


@pytest.mark.parametrize("name", FUSED_ENVS)
def test_a_handle_map_steps_as_its_handle_velocities(kernel_path, name):
    """ParticleControl(handle_map=(action, basis)): the unrolled path computes action @ basis in the kernel, the other
    paths take torch.mm's; the step equals the one under the handle velocities themselves, bit for bit (every payload
    task's basis has one nonzero entry a column), for batch sizes around the kernel's blocks."""
    for n, dtype in ((1, torch.float32), (19, torch.float32), (33, torch.float64)):
        env = E.make(name, num_envs=n, seed=n, dtype=dtype, validate=False)
        particles = env.read_state(env.reset())
        mapped, given = map_and_velocities(env, n, seed=n)
        assert torch.equal(mapped.velocities(), given.handle_velocity)
        with torch.no_grad():
            a = semi_implicit_euler(env.model, particles, mapped, env.dt, env.substeps, backend="cpu")
            b = semi_implicit_euler(env.model, particles, given, env.dt, env.substeps, backend="cpu")
        assert fused_step._plan(env.model, env.dt / env.substeps).model.path == kernel_path
        assert torch.equal(a.x, b.x) and torch.equal(a.v, b.v), (name, n, dtype)


def test_a_handle_map_in_the_portable_build_and_under_autograd(tmp_path, monkeypatch):
    use_build(monkeypatch, tmp_path, defines=("-DTPHYS_GENERIC",))
    env = E.make("rope3d", num_envs=21, seed=0, validate=False)
    particles = env.read_state(env.reset())
    mapped, given = map_and_velocities(env, 21, seed=2)
    with torch.no_grad():
        a = semi_implicit_euler(env.model, particles, mapped, env.dt, env.substeps, backend="cpu")
        b = semi_implicit_euler(env.model, particles, given, env.dt, env.substeps, backend="cpu")
    assert torch.equal(a.x, b.x) and torch.equal(a.v, b.v)
    action = mapped.handle_map[0].clone().requires_grad_()  # the torch path, differentiable in the action
    out = semi_implicit_euler(env.model, particles, ParticleControl(None, handle_map=(action, mapped.handle_map[1])), env.dt, env.substeps)
    out.x.sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="neither handle_velocity nor handle_map"):
        ParticleControl(None).velocities()


@pytest.mark.parametrize("error", [RuntimeError("building failed"), PermissionError("read-only kernel cache")])
def test_a_failed_unrolled_build_falls_back_to_the_band_path(monkeypatch, error):
    def fails(top, real):
        raise error

    monkeypatch.setattr(particle_kernels, "_unrolled_function", fails)
    fused_step._PLANS.clear()
    env, state, action = rope(n=3, dtype=torch.float32)
    try:
        assert fused_step._plan(env.model, env.dt / env.substeps).model.path == "band"
        particles, control = env.read_state(state), ParticleControl(env.handle_velocity(action))
        with torch.no_grad():
            fused = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps)
            twin = semi_implicit_euler(env.model, particles, control, env.dt, env.substeps, backend="torch")
        assert relative_error(fused, twin) < 2e-4
    finally:
        fused_step._PLANS.clear()
