"""``TphysEnv``: the one protocol of the tphys envs, and the checks of ``step``'s inputs (messages name the env, the
expected shape or dtype, and the env indices at fault).

The template, written here once:

    reset   every env gets a fresh state from ``initial_state`` (drawn with the env's ``generator``; for all the global
            envs and sliced under ``set_shard``), ``step_count`` 0,
            the observation of that state (``observe`` with a zero action) and False flags. Under a partial reset (a
            ``_reset`` [N, 1] bool mask in the tensordict) the envs not flagged keep every entry from the tensordict, and
            its autograd graph; the flagged ones start fresh, cut from the graph.
    step    the action [N, A] is checked (shape, dtype, NaN/inf) and so is every float state entry
            (``finite_input_keys``: present, with its spec's shape and dtype, no NaN/inf) when ``validate``, and the
            state must be one the model simulates (``invalid_state``: particles on the MPM grid, rigid joints' quaternions
            not ~0); the action is clamped to [-1, 1];
            ``next = physics_step(tensordict, action)``; with ``validate`` the entries ``finite_output_keys`` of ``next``
            must be finite and ``next`` a state the model simulates; then ``observe`` and ``reward`` of ``next``, which
            with ``validate`` must be finite too, as must every other float state entry the step made
            (``check_finite_results``: a finite input far outside the model's range, or a blow-up, can overflow them
            first); ``terminated``, truncation after ``horizon`` steps, done = terminated | truncated. ``next`` is the
            TensorDict ``step`` returns: no copy is made.

The hooks a family implements (``state`` is a TensorDict [N] holding ``state_keys`` and ``step_count``):

    initial_state()                          {key: [N, ...]} the ``state_keys`` of N fresh envs, drawn with ``generator``
    physics_step(state, action) -> state     one env step: a new TensorDict [N] (``next_state``) of every state key and
                                             ``step_count`` + 1; ``action`` [N, A] in [-1, 1]; ``state`` is not written.
                                             A family whose physics may end an episode (divergence) adds ``terminated``.
    observe(state, action)                   {key: [N, ...]}: ``observation`` and any other observation entries
    reward(state, action, observation)       [N, 1], ``observation`` from ``observe``
    terminated(state, observation)           [N, 1] bool (default: never)
    invalid_state(state, when)               (envs [N] bool, what) of finite states the model does not simulate, or
                                             None (default: every finite state is one); ``when``: "input" / "output"

and sets ``name`` (in messages), ``state_keys``, ``finite_output_keys``, ``model`` and, in ``__init__``, calls
``TphysEnv.__init__`` then ``_set_specs``. The same two calls run the physics without TorchRL (``benchmarks/throughput.py``):
``state = env.physics_step(state, action)``; ``env.reward(state, action, env.observe(state, action))``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

FLAGS = ("done", "terminated", "truncated")


class TphysEnv(EnvBase):
    """Base of the tphys envs (see the module docstring): stateless (the state travels in the tensordict), batch-locked
    to ``num_envs``, actions in [-1, 1], an [N, 1] reward, done / terminated / truncated flags and a seeded
    torch.Generator for resets (``generator``, public: a checkpoint saves and restores its state)."""

    batch_locked = True
    name: str  # the env's name in messages
    state_keys: tuple[str, ...]  # the float state entries physics_step reads and returns (besides step_count)
    finite_output_keys: tuple[str, ...] = ()  # entries of physics_step's result that must be finite (validate)

    def __init__(self, num_envs: int, device, dtype: torch.dtype, horizon: int, dt: float, validate: bool, seed: int | None):
        """``horizon``: steps per episode; ``dt``: seconds per env step; ``validate``: the checks of step's inputs and
        outputs; ``seed``: the reset generator's seed (None: a random one)."""
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs, self.dtype, self.horizon, self.dt, self.validate = num_envs, dtype, horizon, dt, validate
        self.generator = torch.Generator()
        self._set_seed(seed)

    @property
    def finite_input_keys(self) -> tuple[str, ...]:
        """The float inputs of step besides the action: every state key."""
        return self.state_keys

    def _set_specs(self, action_dim: int, **shapes: tuple[int, ...]) -> None:
        """Specs of the state and observation entries (``name=shape``, the shape of one env's entry), ``step_count``,
        actions [N, ``action_dim``] in [-1, 1], the [N, 1] reward and the flags."""
        n, kw = self.num_envs, dict(dtype=self.dtype, device=self.device)
        self.action_dim = action_dim
        entries = {key: Unbounded(shape=(n, *shape), **kw) for key, shape in shapes.items()}
        self.observation_spec = Composite(**entries, step_count=Unbounded(shape=(n, 1), dtype=torch.int64, device=self.device),
                                          shape=(n,))
        self.action_spec = Bounded(low=-1.0, high=1.0, shape=(n, action_dim), **kw)
        self.reward_spec = Unbounded(shape=(n, 1), **kw)
        self.done_spec = done_spec(n, self.device)
        spec = self.observation_spec
        self.input_entries = {key: (tuple(spec[key].shape), spec[key].dtype) for key in (*self.finite_input_keys, "step_count")}

    def _set_seed(self, seed: int | None) -> None:
        seed = check_seed(seed)
        self.generator.manual_seed(torch.seed() if seed is None else seed)

    compiled: bool = False  # whether stepping runs code under torch.compile (its first frames compile; tphys.compiling)
    shard: tuple[int, int] | None = None  # (start, total): this env steps the global envs start:start+num_envs of total

    def set_shard(self, start: int, total: int) -> None:
        """Make this env the global envs ``start:start+num_envs`` of ``total`` (data-parallel training, ``rl.distributed``):
        every reset draws the initial states of all ``total`` envs, exactly as one env of ``total`` would from the same
        generator state, and keeps this slice. Each env thus starts where it would in a single process, whatever the
        number of processes, and every process's generator stays in step."""
        if not (0 <= start and start + self.num_envs <= total):
            raise ValueError(f"{self.name}: shard start={start} with {self.num_envs} envs does not fit in {total} envs")
        self.shard = None if total == self.num_envs else (int(start), int(total))

    def sharded_initial_state(self) -> dict[str, Tensor]:
        """``initial_state`` of this env's slice of the global envs (``set_shard``; without a shard: ``initial_state``)."""
        if self.shard is None:
            return self.initial_state()
        (start, total), local = self.shard, self.num_envs
        self.num_envs = total
        try:
            full = self.initial_state()
        finally:
            self.num_envs = local
        return {key: value[start:start + local] for key, value in full.items()}

    # ------------------------------------------------------------------ the template
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        n = self.num_envs
        state = TensorDict({**self.sharded_initial_state(), "step_count": torch.zeros(n, 1, dtype=torch.int64, device=self.device)},
                           batch_size=self.batch_size, device=self.device)
        for key, value in self.observe(state, torch.zeros(n, self.action_dim, dtype=self.dtype, device=self.device)).items():
            state.set(key, value)
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is not None and mask.numel() != n:
            raise ValueError(f"{self.name}: '_reset' has shape {tuple(mask.shape)}, expected ({n}, 1): one flag per env (True: "
                             f"reset it)")
        if mask is not None and self.state_keys[0] in tensordict.keys():
            keep = mask.reshape(n).logical_not()
            for key, fresh in list(state.items()):
                state.set(key, torch.where(keep.view(n, *[1] * (fresh.dim() - 1)), tensordict.get(key), fresh))
        flags = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        for key in FLAGS:
            state.set(key, flags.clone())
        return state

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        if self.validate:
            try:
                check_action(self.name, action, self.num_envs, self.action_dim, self.dtype, finite=False)
                check_input_entries(self.name, tensordict, self.input_entries)
                if not all_finite([action, *(tensordict.get(key) for key in self.finite_input_keys)]):  # one host sync
                    check_action(self.name, action, self.num_envs, self.action_dim, self.dtype)  # the searches: the action's,
                    check_finite_inputs(self.name, tensordict, self.finite_input_keys)  # then the state's
                self.check_state(tensordict, "input")
            except (ValueError, TypeError, FloatingPointError) as err:
                if self.shard is None or "env indices" not in str(err):  # a shape, dtype or missing key names no env
                    raise
                raise type(err)(f"{err} (indices within this shard: global env index = {self.shard[0]} + index)") from None
        elif action is None:
            check_action(self.name, action, self.num_envs, self.action_dim, self.dtype)  # its message, not an AttributeError
        action = action.clamp(-1.0, 1.0)
        state = self.physics_step(tensordict, action)
        if self.validate and self.finite_output_keys:
            self.check_finite_outputs(state)
        if self.validate:
            self.check_state(state, "output")
        observation = self.observe(state, action)
        reward = self.reward(state, action, observation)
        if self.validate:
            self.check_finite_results(tensordict, state, observation, reward)
        terminated = self.terminated(state, observation)
        truncated = state.get("step_count") >= self.horizon
        for key, value in observation.items():
            state.set(key, value)
        state.set("reward", reward)
        state.set("done", terminated | truncated)
        state.set("terminated", terminated)
        state.set("truncated", truncated)
        return state

    def next_state(self, state: TensorDictBase, **entries: Tensor) -> TensorDictBase:
        """The result of ``physics_step``: ``entries`` (the state keys the step changed, [N, ...] each), the other
        ``state_keys`` carried over from ``state``, and ``step_count`` + 1, in a new TensorDict [N]."""
        carried = {key: state.get(key) for key in self.state_keys if key not in entries}
        # the entries are the env's own tensors of its batch size and device: built without TensorDict's checks of
        # each entry (~10 µs a step; tests/envs check every env's step output against its specs)
        return TensorDict._new_unsafe({**carried, **entries, "step_count": state.get("step_count") + 1}, batch_size=self.batch_size,
                                      device=self.device)

    def check_finite_outputs(self, state: TensorDictBase) -> None:
        """Raise FloatingPointError naming the envs where an entry ``finite_output_keys`` of ``state`` holds NaN/inf.
        A finite sum of the entries (NaN and inf propagate through sums) skips the search env by env: one host sync a
        step; a sum that overflowed searches and finds nothing to raise."""
        if all_finite([state.get(key) for key in self.finite_output_keys]):
            return
        bad = ~torch.stack([torch.isfinite(state.get(key)).flatten(1).all(-1) for key in self.finite_output_keys], -1).all(-1)
        if bad.any():
            raise FloatingPointError(self.nonfinite_state_message(self.global_envs(bad)))

    def check_state(self, state: TensorDictBase, when: str) -> None:
        """Raise where ``state`` (``when``: "input" of step, or its "output") is not a state the model simulates
        (``invalid_state``): ValueError for an input (step refuses it before the physics), FloatingPointError for an
        output from a valid input (a blow-up, which the trainers' non-finite guard handles), naming the env indices and
        what is wrong."""
        found = self.invalid_state(state, when)
        if found is None:
            return
        bad, detail = found
        if when == "input":
            raise ValueError(f"{self.name}: input state outside what the model simulates in env indices {env_indices(bad)}: {detail}")
        raise FloatingPointError(f"{self.name}: the step left the states the model simulates, from an input inside them, in env "
                                 f"indices {env_indices(self.global_envs(bad))}: {detail} (a blow-up)")

    def invalid_state(self, state: TensorDictBase, when: str) -> tuple[Tensor, str] | None:
        """(envs [N] bool, what is wrong, in the first of them) for the envs of ``state`` that are finite but not a state
        the model simulates, or None where every env's is; ``when``: "input" of step or its "output". The default:
        every finite state is one (None). A family with such states overrides it (the MPM tasks: a particle off the
        grid; the rigid envs: a joint quaternion of norm ~0); ``step`` calls it under ``validate``."""
        return None

    def global_envs(self, mask: Tensor) -> Tensor:
        """``mask`` [N] over this env's envs as a mask over the global envs ([total] under ``set_shard``; else itself)."""
        if self.shard is None:
            return mask
        start, total = self.shard
        return torch.zeros(total, dtype=torch.bool, device=mask.device).index_copy(
            0, torch.arange(start, start + self.num_envs, device=mask.device), mask)

    def check_finite_results(self, tensordict: TensorDictBase, state: TensorDictBase, observation: dict[str, Tensor],
                             reward: Tensor) -> None:
        """Raise FloatingPointError naming the entries and the envs where what ``step`` returns besides the state
        ``check_finite_outputs`` checked holds NaN/inf: the observation entries, the reward, and the float state
        entries the step made (those carried over from the input ``tensordict`` unchanged were checked as inputs).
        A finite input can still give them (a particle far outside the model's domain: an overflowing distance), and a
        NaN reward would train on silently. Cost: one sum per entry and one host sync (``all_finite``)."""
        inputs = {id(tensordict.get(key, None)) for key in self.finite_input_keys}
        entries = {**observation, "reward": reward}
        for key in self.state_keys:
            value = state.get(key)
            if key not in self.finite_output_keys and value.is_floating_point() and id(value) not in inputs:
                entries[key] = value
        found = None if all_finite(list(entries.values())) else nonfinite_envs(entries)
        if found is not None:
            where, detail, bad = self.global_envs(found[0]), found[1], found[2]
            sizes = {key: float(state.get(key).detach().abs().max()) for key in self.finite_output_keys
                     if state.get(key).is_floating_point() and state.get(key).numel()}
            largest = max(sizes, key=sizes.get) if sizes else None
            scale = f"; the largest state entry is |{largest}| = {sizes[largest]:.3g}" if largest else ""
            raise FloatingPointError(f"{self.name}: non-finite {', '.join(map(repr, bad))} after the step, from a finite state, "
                                     f"in env indices {env_indices(where)}: {detail}{scale} (a blow-up, an input far outside "
                                     f"the model's range, or a bug in the task's observe / reward)")

    def nonfinite_state_message(self, bad: Tensor) -> str:
        """The message of ``check_finite_outputs`` for the envs ``bad`` [N] bool (the global envs' [total] under a shard)."""
        return f"{self.name}: non-finite state after the step in env indices {env_indices(bad)}"

    # ------------------------------------------------------------------ hooks (see the module docstring)
    def initial_state(self) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define initial_state")

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        raise NotImplementedError(f"{type(self).__name__} must define physics_step")

    def observe(self, state: TensorDictBase, action: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define observe")

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define reward")

    def terminated(self, state: TensorDictBase, observation: dict[str, Tensor]) -> Tensor:
        return torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)


# ---------------------------------------------------------------------------- checks of step's inputs
def env_indices(mask: Tensor, limit: int = 20) -> str:
    """The indices where ``mask`` [N] is True, as text (the first ``limit``)."""
    idx = torch.nonzero(mask).flatten().tolist()
    return str(idx[:limit]) + (f" ... ({len(idx)} in all)" if len(idx) > limit else "")


def all_finite(tensors: list[Tensor]) -> bool:
    """True when the sum of every entry of ``tensors`` is finite, so that every entry is (NaN and ±inf propagate
    through sums); False also when a sum of finite entries overflowed: the caller then searches entry by entry."""
    sums = [t.detach().sum() for t in tensors]
    return math.isfinite((sums[0] if len(sums) == 1 else torch.stack(sums).sum()).item()) if sums else True


SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def check_seed(seed) -> int | None:
    """``seed`` as an int (any integral type: int, numpy ints), or None; ValueError naming the seed and the range
    otherwise, where torch would say 'Overflow when unpacking long long'."""
    if seed is None:
        return None
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not SEEDS[0] <= value <= SEEDS[1]:
        raise ValueError(f"seed must be None or an integer in [{SEEDS[0]}, {SEEDS[1]}] (torch.Generator's), got {seed!r}")
    return value


def check_input_entries(name: str, tensordict, expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Raise on an entry of ``tensordict`` that ``step`` reads (``expected``: key -> (shape, dtype), the env's specs) and
    that is missing or of another shape (ValueError) or dtype (TypeError), naming the env, the key, what came and what
    was expected; where the physics' own error would name neither (``expected scalar type Double but found Float``,
    an index out of bounds) or would silently promote the state to float64."""
    keys = tensordict.keys()
    for key, (shape, dtype) in expected.items():
        if key not in keys:
            raise ValueError(f"{name}: the input lacks {key!r}, which step reads (shape {shape}, {dtype}); step takes the "
                             f"tensordict of reset or of the previous step's 'next'")
        value = tensordict.get(key)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: input {key!r} has shape {tuple(value.shape)}, expected {shape} (num_envs first)")
        if value.dtype != dtype:
            raise TypeError(f"{name}: input {key!r} is {value.dtype}, expected {dtype} (the env's; a {value.dtype} state would "
                            f"not fit the model's tensors)")


def check_finite_inputs(name: str, tensordict, keys: Iterable[str]) -> None:
    """Raise FloatingPointError naming the env, the env indices and the keys where a float input of ``step``
    (``keys`` of ``tensordict``, each [N, ...]) holds NaN or inf:
    ``soft_jumper: non-finite input state (NaN/inf) in env indices [1]: 'x' in [1], 'com_start' in [1]``.

    Cost: one sum per key, their sum and one host sync (NaN and inf propagate through sums, so a finite total
    means finite entries); the search entry by entry runs only when the total is not finite (a NaN/inf, or a
    sum that overflowed: then nothing is raised).
    """
    entries = {key: tensordict.get(key) for key in keys}
    if all_finite(list(entries.values())):
        return
    found = nonfinite_envs(entries)
    if found is not None:
        where, detail, _ = found
        raise FloatingPointError(f"{name}: non-finite input state (NaN/inf) in env indices {env_indices(where)}: {detail}")


def nonfinite_envs(entries: dict[str, Tensor]) -> tuple[Tensor, str, list[str]] | None:
    """The search behind the finite checks, entry by entry: (the envs [N] bool where a float entry [N, ...] of
    ``entries`` holds NaN/inf, "'key' in [envs], ..." naming each such entry's envs, those entries' keys), or None where
    every entry is finite (a sum that overflowed)."""
    bad = {key: ~torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(-1) for key, value in entries.items()
           if value.is_floating_point()}
    bad = {key: mask for key, mask in bad.items() if mask.any()}
    if not bad:
        return None
    return (torch.stack(list(bad.values())).any(0), ", ".join(f"{key!r} in {env_indices(mask)}" for key, mask in bad.items()),
            list(bad))


class NonFiniteActionError(FloatingPointError, ValueError):
    """A NaN/inf action: a ValueError (bad input to ``step``) that the trainers' non-finite guard catches as a
    FloatingPointError, like a non-finite simulator state, so it stops or skips naming the iteration."""


def check_action(name: str, action: Tensor, num_envs: int, action_dim: int, dtype: torch.dtype, finite: bool = True) -> None:
    """Raise on a missing action or a wrong shape (ValueError), a dtype other than the env's (TypeError) or, with
    ``finite``, NaN/inf (ValueError; ``step`` tests the action and the state for NaN/inf in one sum and searches only
    where that fails)."""
    expected = (num_envs, action_dim)
    if action is None:
        raise ValueError(f"{name}: the input has no 'action': set td['action'] to a tensor of shape {expected} before step")
    if tuple(action.shape) != expected:
        raise ValueError(f"{name}: action has shape {tuple(action.shape)}, expected {expected} (num_envs, action_dim)")
    if action.dtype != dtype:
        raise TypeError(
            f"{name}: action dtype is {action.dtype} but the env runs in {dtype}; "
            f"cast the policy output (a {action.dtype} action would silently promote the state)"
        )
    if not finite or all_finite([action]):
        return
    bad = ~torch.isfinite(action).all(-1)
    if bad.any():
        raise NonFiniteActionError(f"{name}: non-finite action (NaN/inf) in env indices {env_indices(bad)}")


def done_spec(num_envs: int, device) -> Composite:
    """done / terminated / truncated, [N, 1] bool each."""
    flag = Categorical(2, shape=(num_envs, 1), dtype=torch.bool, device=device)
    return Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=(num_envs,))
