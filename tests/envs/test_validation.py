"""Input validation of every registered env (``tphys.envs.list_envs()``), table-driven.

Ranges: every physical parameter and numeric option an env accepts has a valid range (its family's
``PARAMETER_RANGES``, listed by ``tphys.envs.registry.parameters``); ``make`` refuses a value outside it with
ValueError ``"{env}: {name} must be {range}, got {value!r}"`` before anything is built.
Finite inputs: NaN/inf in a float input of ``step`` raises FloatingPointError naming the key and the env
indices before the physics runs (``validate=True``); ``validate=False`` lets it through to the physics.
"""

import functools
import math
import re

import numpy as np
import pytest
import torch

import tphys.envs as E
from tphys.envs.base import TphysEnv, check_finite_inputs
from tphys.envs.ranges import FINITE, NON_NEGATIVE, POSITIVE, check_ranges, int_at_least, interval
from tphys.envs.registry import parameters
from tphys.mpm import outside_grid

NAMES = sorted(E.list_envs())
# small sizes: the step tests build each env once (defaults of the physical parameters, passed explicitly)
SMALL = {
    "soft_jumper": dict(substeps=2, horizon=4, samples=8),
    "rolling_flat": dict(grid_size=16, lattice=(4, 4, 4), samples=16, substeps=2, horizon=4),
    "hand_flip": dict(grid_size=16, particles=64, samples=16, substeps=2, horizon=4),
    "fluid_move": dict(grid_size=16, particles=64, samples=16, substeps=2, horizon=4),
}
OBSERVATION_KEYS = {"observation", "particle_q", "com_q"}  # float outputs that step does not read


def out_of_range(valid) -> list:
    """Values just outside ``valid`` (a ``tphys.envs.ranges.Range``), plus the non-finite ones and wrong types."""
    values = []
    if valid.lo is not None:
        values.append(valid.lo - 1 if valid.integer else valid.lo if not valid.lo_closed else valid.lo - 0.1)
    if valid.hi is not None:
        values.append(valid.hi + 1 if valid.integer else valid.hi if not valid.hi_closed else valid.hi + 0.1)
    if valid.integer:
        values += [float(max(valid.lo, 1)), True]  # an int's value as a float, a bool: not counts
    else:
        values += [math.nan, math.inf, -math.inf, "1.0"]
    return values


BAD_VALUES = [(name, key, value) for name in NAMES for key, valid in parameters(name)[1].items() for value in out_of_range(valid)]


# ---------------------------------------------------------------------------- the range tables
@pytest.mark.parametrize("name", NAMES)
def test_every_physical_parameter_and_count_has_a_range_and_the_defaults_are_in_it(name):
    defaults, ranges = parameters(name)
    missing = sorted(set(defaults) - set(ranges))
    assert not missing, f"{name}: physical parameters without an entry in their family's PARAMETER_RANGES: {missing}"
    assert {"substeps", "horizon"} <= set(ranges), "every env's step counts are range-checked"
    check_ranges(name, defaults, ranges)


@pytest.mark.parametrize("name, key, value", BAD_VALUES, ids=[f"{n}-{k}-{v!r}" for n, k, v in BAD_VALUES])
def test_a_value_out_of_range_is_refused_before_anything_is_built(name, key, value, monkeypatch):
    valid = parameters(name)[1][key]

    def built(*args, **kwargs):
        raise AssertionError(f"{name}: the env was being built with {key}={value!r}; the range check must come first")

    monkeypatch.setattr(TphysEnv, "__init__", built)
    message = f"{name}: {key} must be {valid.describe(value)}, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        E.make(name, num_envs=1, **{key: value})


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("rope3d", dict(stiffness=-1.0), "rope3d: stiffness must be > 0, got -1.0"),
        ("rope", dict(stiffness=math.inf), "rope3d: stiffness must be a finite number > 0, got inf"),
        ("cloth", dict(friction=-0.1), "cloth: friction must be >= 0, got -0.1"),
        ("cloth", dict(rows=1), "cloth: rows must be an int >= 2, got 1"),
        ("pendulum2d", dict(newton_tol=0.0), "pendulum2d: newton_tol must be None or > 0, got 0.0"),
        ("soft_jumper", dict(density=0.0), "soft_jumper: density must be > 0, got 0.0"),
        ("soft_jumper", dict(damping=-30.0), "soft_jumper: damping must be >= 0, got -30.0"),
        ("rolling_flat", dict(poisson=0.5), "rolling_flat: poisson must be in [0, 0.5), got 0.5"),
        ("hand_flip", dict(gravity=math.nan), "hand_flip: gravity must be a finite number, got nan"),
        ("fluid_move", dict(dt=-5e-4), "fluid_move: dt must be > 0, got -0.0005"),
        ("fluid_move", dict(grid_size=8), "fluid_move: grid_size must be an int >= 12, got 8"),
        ("humanoid", dict(substeps=0), "humanoid: substeps must be an int >= 1, got 0"),
        ("cartpole", dict(horizon=2.5), "cartpole_swingup: horizon must be an int >= 1, got 2.5"),
    ],
)
def test_the_message_names_env_parameter_range_and_value(name, overrides, message):
    with pytest.raises(ValueError) as info:
        E.make(name, **overrides)
    assert str(info.value) == message


def test_range_kinds():
    assert POSITIVE.contains(1e-300) and not POSITIVE.contains(0.0) and not POSITIVE.contains(math.inf)
    assert NON_NEGATIVE.contains(0) and not NON_NEGATIVE.contains(-1e-12) and not NON_NEGATIVE.contains(math.nan)
    assert FINITE.contains(-9.8) and not FINITE.contains(-math.inf) and not FINITE.contains(True)
    poisson = interval(0.0, 0.5, "[)")
    assert poisson.contains(0.0) and poisson.contains(0.4999) and not poisson.contains(0.5) and not poisson.contains(-0.1)
    assert interval(0, 1, "(]").contains(1) and not interval(0, 1, "(]").contains(0) and interval(0, 1, "(]").text == "in (0, 1]"
    count = int_at_least(12)
    assert count.contains(12) and count.contains(np.int64(48)) and not count.contains(11) and not count.contains(12.0)
    assert POSITIVE.contains(np.float32(2.0)) and not POSITIVE.contains("2.0") and not POSITIVE.contains(None)
    assert POSITIVE.or_none().contains(None) and POSITIVE.or_none().describe(math.inf) == "None or a finite number > 0"
    with pytest.raises(KeyError, match=r"env: no valid range for \['unlisted'\]"):
        check_ranges("env", {"unlisted": 1.0}, {"listed": POSITIVE})


# ---------------------------------------------------------------------------- finite inputs of step
class PhysicsRan(Exception):
    """Raised by the stand-in physics: the step got past its input checks."""


@functools.cache
def small_env(name: str):
    """Env ``name`` at small sizes, built once, with its physical defaults passed explicitly (they build fine)."""
    return E.make(name, num_envs=2, seed=0, **SMALL.get(name, {}), **parameters(name)[0])


@pytest.mark.parametrize("name", NAMES)
def test_each_env_builds_with_its_defaults_passed_explicitly(name):
    assert small_env(name).num_envs == 2


def float_inputs(td) -> list[str]:
    return sorted(k for k in td.keys() if td.get(k).is_floating_point() and k not in OBSERVATION_KEYS)


def poisoned(env, key: str, value: float = math.nan, index: int = 1):
    """A reset tensordict with ``value`` in one entry of ``key`` in env ``index``, and a zero action."""
    td = env.reset()
    t = td.get(key).clone()
    t[(index,) + (0,) * (t.dim() - 1)] = value
    return td.set(key, t).set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))


def stand_in_physics(*args, **kwargs):
    raise PhysicsRan


def step_inputs(name: str) -> list:
    """The float keys of ``name``'s reset tensordict that step reads; [None] if the env does not build (its test says why)."""
    try:
        return float_inputs(small_env(name).reset())
    except Exception:
        return [None]


INPUTS = [(name, key) for name in NAMES for key in step_inputs(name)]


@pytest.mark.parametrize("name, key", INPUTS, ids=[f"{n}-{k}" for n, k in INPUTS])
def test_nan_in_a_float_input_is_refused_before_the_step(name, key, monkeypatch):
    env = small_env(name)
    monkeypatch.setattr(env, "physics_step", stand_in_physics)
    message = rf"{name}: non-finite input state \(NaN/inf\) in env indices \[1\]: '{key}' in \[1\]$"
    with pytest.raises(FloatingPointError, match=message):
        env.step(poisoned(env, key))
    monkeypatch.setattr(env, "validate", False)
    with pytest.raises(PhysicsRan):  # no check: the NaN reaches the physics
        env.step(poisoned(env, key))


@pytest.mark.parametrize("name", NAMES)
def test_finite_inputs_reach_the_physics(name, monkeypatch):
    env = small_env(name)
    monkeypatch.setattr(env, "physics_step", stand_in_physics)
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))
    with pytest.raises(PhysicsRan):
        env.step(td)


def test_every_key_and_env_at_fault_is_named():
    td = E.make("rope3d", num_envs=4, seed=0).reset().clone()  # (at reset x_prev is x and v_prev is v)
    td["x"][3, 2, 1] = -math.inf
    td["v_prev"][0, 0, 0] = math.nan
    td["v_prev"][3, 1, 0] = math.inf
    message = r"rope3d: non-finite input state \(NaN/inf\) in env indices \[0, 3\]: 'x' in \[3\], 'v_prev' in \[0, 3\]$"
    with pytest.raises(FloatingPointError, match=message):
        check_finite_inputs("rope3d", td, ("x", "v", "x_prev", "v_prev"))
    huge = td.clone().set("x", torch.full_like(td["x"], 3e38)).set("v_prev", torch.zeros_like(td["v_prev"]))  # the sums overflow
    check_finite_inputs("rope3d", huge, ("x", "v", "x_prev", "v_prev"))


def test_all_finite_is_the_sum_test_and_overflow_falls_to_the_search():
    """``all_finite``: NaN or ±inf anywhere makes it False; so does a finite sum that overflows (the callers then search
    entry by entry and raise nothing); an empty list is finite."""
    from tphys.envs.base import all_finite, check_action

    ok = [torch.ones(3, 2), torch.zeros(3)]
    assert all_finite(ok) and all_finite([]) and all_finite(ok[:1])
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(3, 2)
        x[1, 0] = bad
        assert not all_finite([torch.zeros(3), x])
    huge = torch.full((2, 3), 3e38)  # float32: finite entries, an infinite sum
    assert not all_finite([huge])
    check_action("env", huge, 2, 3, torch.float32)  # ... and nothing to raise: every action is finite


# ---------------------------------------------------------------------------- finite results of step
HUGE = (1e30, -3e38)


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("name, key", INPUTS, ids=[f"{n}-{k}" for n, k in INPUTS])
def test_a_step_from_a_huge_finite_input_raises_naming_the_env_or_returns_finite_entries(name, key, value):
    """With validate on, ``step`` never hands back NaN/inf: a finite but absurd input (1e30 in one entry of env 1) either
    raises naming env 1, or every float entry of the result is finite (where a NaN reward once came back silently:
    hand_flip's start distance from a particle at 1e30 m)."""
    env = small_env(name)
    try:
        out = env.step(poisoned(env, key, value))
    except (FloatingPointError, ValueError) as error:
        assert re.search(r"env indices \[1\]", str(error)), str(error)
        return
    bad = [k for k, v in out["next"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"{name}: non-finite {bad} returned from a finite input"


def test_a_non_finite_reward_from_a_finite_state_names_the_entries_the_envs_and_the_scale():
    env = E.make("pendulum2d", num_envs=3, substeps=1, stiffness=1e7)
    td = env.reset()
    message = (r"pendulum2d: non-finite 'reward' after the step, from a finite state, in env indices \[0, 1, 2\]: 'reward' in "
               r"\[0, 1, 2\]; the largest state entry is \|v\| = \S+ \(a blow-up")
    with pytest.raises(FloatingPointError, match=message):
        for _ in range(200):
            td = env.step(td.set("action", torch.zeros(3, 1)))["next"]


# ---------------------------------------------------------------------------- shapes and dtypes of step's inputs
ENTRIES = [(name, key) for name, key in INPUTS if key is not None] + [(name, "step_count") for name in NAMES]


def replaced(env, key: str, value):
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))
    td.del_(key)
    return td if value is None else td.set(key, value)


@pytest.mark.parametrize("name, key", ENTRIES, ids=[f"{n}-{k}" for n, k in ENTRIES])
def test_a_missing_misshapen_or_mistyped_input_is_refused_naming_env_and_key(name, key, monkeypatch):
    """One message form per fault, before the physics (whose own errors named neither env nor key: 'expected scalar
    type Double but found Float', 'index 28 is out of bounds', or a silent promotion to float64)."""
    env = small_env(name)
    monkeypatch.setattr(env, "physics_step", stand_in_physics)
    good = env.reset().get(key)
    other = torch.float64 if good.dtype == torch.float32 else torch.float32 if good.is_floating_point() else torch.int32
    with pytest.raises(TypeError, match=rf"^{name}: input '{key}' is {other}, expected {good.dtype}"):
        env.step(replaced(env, key, good.to(other)))
    short = good[:, :-1] if good.shape[1] > 1 else torch.cat([good, good], 1)
    with pytest.raises(ValueError, match=rf"^{name}: input '{key}' has shape {re.escape(str(tuple(short.shape)))}, expected "
                                         rf"{re.escape(str(tuple(good.shape)))}"):
        env.step(replaced(env, key, short.contiguous()))
    with pytest.raises(ValueError, match=rf"^{name}: the input lacks '{key}', which step reads"):
        env.step(replaced(env, key, None))
    monkeypatch.setattr(env, "validate", False)
    with pytest.raises(PhysicsRan):  # no check: the misshapen entry reaches the physics
        env.step(replaced(env, key, short.contiguous()))


# ---------------------------------------------------------------------------- make's device and seed, step's action
def test_a_device_this_machine_lacks_is_refused_naming_it():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"device 'cuda:{count}' is not available: this machine has {count} CUDA device"):
        E.make("rope3d", num_envs=2, device=f"cuda:{count}")
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'"):
        E.make("rope3d", num_envs=2, device="gpu")


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5, "3", True])
def test_a_seed_torch_cannot_take_is_refused_naming_it_in_make_and_set_seed(seed):
    message = r"seed must be None or an integer in \[-9223372036854775808, 18446744073709551615\]"
    with pytest.raises(ValueError, match=message):
        E.make("pendulum2d", num_envs=2, seed=seed)
    env = E.make("pendulum2d", num_envs=2, seed=0)
    with pytest.raises(ValueError, match=message):
        env.set_seed(seed)


def test_integral_seeds_of_any_type_give_the_same_resets():
    first = E.make("pendulum2d", num_envs=2, seed=2**64 - 1).reset()["x"]
    for seed in (np.uint64(2**64 - 1), torch.tensor(2**63 - 1).item() * 2 + 1):
        assert torch.equal(E.make("pendulum2d", num_envs=2, seed=seed).reset()["x"], first)
    assert torch.equal(E.make("pendulum2d", num_envs=2, seed=np.int64(-5)).reset()["x"],
                       E.make("pendulum2d", num_envs=2, seed=-5).reset()["x"])


@pytest.mark.parametrize("validate", [True, False])
def test_a_step_without_an_action_names_the_env_and_the_shape(validate):
    env = E.make("rope3d", num_envs=3, seed=0, validate=validate)
    with pytest.raises(ValueError, match=r"^rope3d: the input has no 'action': set td\['action'\] to a tensor of shape \(3, 2\)"):
        env.step(env.reset())


@pytest.mark.parametrize("name, key", [("rope3d", "validate"), ("ant", "compile_substep"), ("hopper", "early_termination"),
                                       ("rolling_flat", "validate"), ("soft_jumper", "compile_substep")])
@pytest.mark.parametrize("value", ["no", "False", None, 0, 1])
def test_an_on_off_option_takes_a_bool_only(name, key, value):
    """A string, None or a number would be read by truthiness ('no' switching early termination on): refused, naming
    the env and the option."""
    with pytest.raises(ValueError, match=rf"^{name}: {key} must be True or False, got {re.escape(repr(value))}"):
        E.make(name, num_envs=1, **{key: value})


def test_numpy_bools_are_bools():
    assert E.make("hopper", num_envs=1, early_termination=np.bool_(False)).early_termination is False


def test_under_a_shard_an_input_error_naming_envs_says_how_to_read_them_and_one_naming_none_does_not():
    env = E.make("pendulum2d", num_envs=2, seed=0)
    env.set_shard(4, 8)
    td = poisoned(env, "x", math.nan, index=1)
    with pytest.raises(FloatingPointError, match=r"env indices \[1\].*\(indices within this shard: global env index = 4 \+ index\)$"):
        env.step(td)
    with pytest.raises(ValueError, match=r"^pendulum2d: the input lacks 'v', which step reads .*previous step's 'next'$"):
        env.step(poisoned(env, "x", 0.0).exclude("v"))


# ---------------------------------------------------------------------------- finite states the model does not simulate
def checks_states(name: str) -> bool:
    """Whether env ``name`` has finite states it does not simulate (overrides ``invalid_state``)."""
    return type(small_env(name)).invalid_state is not TphysEnv.invalid_state


BOUNDED = ["fluid_move", "hand_flip", "rolling_flat"]  # the MPM tasks: particles must stay on the grid
QUATERNIONS = {"ant": ["root"], "humanoid": ["root"], "snu_humanoid": ["root", "FemurR", "TalusR", "FemurL", "TalusL"]}


def test_the_envs_with_such_states_are_the_mpm_tasks_and_the_rigid_envs_and_the_rigid_ones_list_every_quaternion():
    from tphys.envs.rigid_env import RigidEnv

    rigid = [name for name in NAMES if isinstance(small_env(name), RigidEnv)]
    assert sorted(name for name in NAMES if checks_states(name)) == sorted(BOUNDED + rigid)
    assert {name: [joint for joint, _ in small_env(name).quaternions] for name in rigid if small_env(name).quaternions} == QUATERNIONS


def placed(env, cells: float, axis: int, index: int = 1):
    """A reset tensordict with particle 0 of env ``index`` at ``cells`` grid cells (x = cells·dx) on ``axis``."""
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))
    x = td.get("x").clone()
    x[index, 0, axis] = cells * env.model.dx
    return td.set("x", x)


@pytest.mark.parametrize("name", BOUNDED)
def test_a_particle_off_the_grid_is_refused_before_the_step_and_one_just_on_it_is_not(name, monkeypatch):
    """A particle whose stencil leaves the grid (x/dx outside [0.5, G - 1.5)) would lose mass to nodes that do not
    exist and move with the rest, silently (a particle at 50 m once stepped as if nothing were wrong): refused, naming
    the env, the particle and the range, on every axis and both sides, near and far."""
    env = small_env(name)
    g = env.model.grid_size
    monkeypatch.setattr(env, "physics_step", stand_in_physics)
    for axis in range(3):
        for cells in (0.49, -3.0, g - 1.5, g - 1.49, 1e3 * g):
            message = (rf"^{name}: input state outside what the model simulates in env indices \[1\]: particles off the simulation "
                       rf"grid: env 1: 1 of its \d+ particles outside, the farthest \(particle 0\) at .* m; the grid's stencils reach "
                       rf"\[\S+, \S+\) m on each axis \(x/dx in \[0.5, G - 1.5\), G = {g}, dx = \S+ m\)$")
            with pytest.raises(ValueError, match=message):
                env.step(placed(env, cells, axis))
        for cells in (0.51, g - 1.51):
            with pytest.raises(PhysicsRan):
                env.step(placed(env, cells, axis))
    monkeypatch.setattr(env, "validate", False)
    with pytest.raises(PhysicsRan):  # no check: the particle reaches the physics
        env.step(placed(env, -3.0, 0))


@pytest.mark.parametrize("name", BOUNDED)
def test_a_step_that_throws_material_off_the_grid_raises_naming_the_env(name):
    """From a state on the grid, env 1's material at 5e4 m/s crosses the grid in a substep; the step raises a
    FloatingPointError (the trainers' guard treats it as a blow-up) naming env 1, where it returned particles off the
    grid, silently."""
    env = small_env(name)
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))
    v = td.get("v").clone()
    v[1] = torch.tensor([5e4, 0.0, 0.0])
    message = (rf"^{name}: the step left the states the model simulates, from an input inside them, in env indices \[1\]: "
               rf"particles off the simulation grid: env 1: .* \(a blow-up\)$")
    with pytest.raises(FloatingPointError, match=message):
        env.step(td.set("v", v))
    out = env.step(td.set("v", torch.zeros_like(v)))  # the same state at rest steps
    assert not bool(outside_grid(env.model, out["next", "x"]).any())


def test_under_a_shard_the_blow_up_names_global_envs_and_the_input_error_local_ones_with_the_note():
    env = E.make("rolling_flat", num_envs=2, seed=0, **SMALL["rolling_flat"])
    env.set_shard(2, 4)
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))
    v = td.get("v").clone()
    v[1] = torch.tensor([5e4, 0.0, 0.0])
    with pytest.raises(FloatingPointError, match=r"in env indices \[3\]: particles off the simulation grid: env 3: "):
        env.step(td.clone().set("v", v))
    x = td.get("x").clone()
    x[1, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"in env indices \[1\]: particles off the simulation grid: env 1: .*\(indices within this "
                                         r"shard: global env index = 2 \+ index\)$"):
        env.step(td.clone().set("x", x))


QUATERNION_CASES = [(name, joint) for name, joints in QUATERNIONS.items() for joint in joints]


@pytest.mark.parametrize("name, joint", QUATERNION_CASES, ids=[f"{n}-{j}" for n, j in QUATERNION_CASES])
def test_a_zero_joint_quaternion_is_refused_naming_the_joint_and_a_scaled_one_is_its_rotation(name, joint, monkeypatch):
    """A zero quaternion is no rotation (the kinematics made it a zero matrix, a collapsed body, silently): refused,
    naming the env, the joint and its slice of q. A quaternion of any norm above 1e-6 stands for q / |q|: the step is
    the unit quaternion's."""
    env = small_env(name)
    start = dict(small_env(name).quaternions)[joint]
    td = env.reset().set("action", torch.zeros(env.action_spec.shape, dtype=env.dtype))

    def scaled(scale):
        q = td.get("q").clone()
        q[1, start:start + 4] *= scale
        return td.clone().set("q", q)

    reference = env.step(td.clone())["next"]
    for scale in (0.0, 1e-8):
        message = (rf"^{name}: input state outside what the model simulates in env indices \[1\]: joint '{joint}' "
                   rf"\(q\[{start}:{start + 4}\], w x y z\) has a quaternion of norm \S+ in env 1, below 1e-06")
        with pytest.raises(ValueError, match=message):
            env.step(scaled(scale))
    for scale in (1e-4, 30.0):
        out = env.step(scaled(scale))["next"]
        torch.testing.assert_close(out["q"], reference["q"], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(env, "physics_step", stand_in_physics)
    monkeypatch.setattr(env, "validate", False)
    with pytest.raises(PhysicsRan):  # no check: the zero quaternion reaches the physics
        env.step(scaled(0.0))


@pytest.mark.parametrize("name", [n for n in NAMES if not checks_states(n)])
def test_an_env_without_such_states_checks_none(name):
    env = small_env(name)
    assert env.invalid_state(env.reset(), "input") is None


def test_a_partial_reset_mask_of_another_size_is_refused_naming_the_env():
    env = E.make("pendulum2d", num_envs=3, seed=0)
    td = env.step(env.reset().set("action", torch.zeros(3, 1)))["next"]
    td._tensordict["_reset"] = torch.tensor([[True], [False]])  # past the tensordict's own batch check, as a user's dict may be
    with pytest.raises(ValueError, match=r"^pendulum2d: '_reset' has shape \(2, 1\), expected \(3, 1\): one flag per env"):
        env.reset(td)
    assert env.reset(td.set("_reset", torch.tensor([[True], [False], [True]])))["step_count"].flatten().tolist() == [0, 1, 0]
