"""What the tphys envs share: ``TphysEnv`` (specs, seeding) and input checks whose messages name the
env, the expected shape or dtype, and the env indices at fault.

Parameter ranges: each env family keeps one table ``PARAMETER_RANGES`` (name -> ``Range``) next to its
default physical parameters; ``check_ranges`` refuses a value outside its range (or non-finite) before
anything is built, with one message form: ``rope3d: stiffness must be > 0, got -1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from numbers import Integral, Real

import torch
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class TphysEnv(EnvBase):
    """Base of the tphys envs: stateless (the state travels in the tensordict), batch-locked to
    ``num_envs``, actions in [-1, 1], an [N, 1] reward, done / terminated / truncated flags and a
    seeded torch.Generator for resets (``generator``, public: a checkpoint saves and restores its state).
    Subclasses call ``_set_specs`` and ``_seed_generator``."""

    batch_locked = True

    def _set_specs(self, action_dim: int, **state) -> None:
        """Specs from the state entries (``name=spec``) plus ``step_count``, actions and reward."""
        n, kw = self.batch_size[0], dict(dtype=self.dtype, device=self.device)
        self.observation_spec = Composite(**state, step_count=Unbounded(shape=(n, 1), dtype=torch.int64, device=self.device),
                                          shape=(n,))
        self.action_spec = Bounded(low=-1.0, high=1.0, shape=(n, action_dim), **kw)
        self.reward_spec = Unbounded(shape=(n, 1), **kw)
        self.done_spec = done_spec(n, self.device)

    def _seed_generator(self, seed: int | None) -> None:
        self.generator = torch.Generator()
        self._set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        self.generator.manual_seed(torch.seed() if seed is None else int(seed))


@dataclass(frozen=True)
class Range:
    """A valid range of a numeric parameter: ``lo`` < / <= value < / <= ``hi`` (None: unbounded), an int when
    ``integer``, None allowed as well when ``optional``; ``text`` states it in messages. Build one with
    ``POSITIVE``, ``NON_NEGATIVE``, ``FINITE``, ``interval``, ``int_at_least`` (and ``.or_none()``)."""

    text: str
    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    integer: bool = False
    optional: bool = False

    def contains(self, value) -> bool:
        if value is None:
            return self.optional
        if not _is_number(value) or (self.integer and not isinstance(value, Integral)):
            return False
        if self.lo is not None and not (value >= self.lo if self.lo_closed else value > self.lo):
            return False
        return self.hi is None or (value <= self.hi if self.hi_closed else value < self.hi)

    def describe(self, value=0.0) -> str:
        """The range as messages state it; for a ``value`` that is not a finite number, "a finite number" leads."""
        text = self.text
        if not (self.integer or text.startswith("a finite") or _is_number(value)):
            text = f"a finite number {text}"
        return f"None or {text}" if self.optional else text

    def or_none(self) -> Range:
        """The same range with None allowed as well (an option whose None means "the default")."""
        return replace(self, optional=True)


def _is_number(value) -> bool:
    """A finite real number (bool is not one)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE = Range("> 0", lo=0.0, lo_closed=False)
NON_NEGATIVE = Range(">= 0", lo=0.0)
FINITE = Range("a finite number")


def interval(lo: float, hi: float, closed: str = "[)") -> Range:
    """Values between ``lo`` and ``hi``; ``closed`` is "[]", "[)", "(]" or "()", as the range's text shows it."""
    if closed not in ("[]", "[)", "(]", "()"):
        raise ValueError(f"closed must be one of '[]', '[)', '(]', '()', got {closed!r}")
    return Range(f"in {closed[0]}{lo:g}, {hi:g}{closed[1]}", lo, hi, closed[0] == "[", closed[1] == "]")


def int_at_least(k: int) -> Range:
    """Integer counts >= ``k``."""
    return Range(f"an int >= {k}", lo=k, integer=True)


def check_ranges(env: str, values: Mapping, ranges: Mapping[str, Range]) -> None:
    """Raise ValueError ``"{env}: {name} must be {range}, got {value!r}"`` on the first value outside its range.

    ``values`` maps parameter names to values; every name needs an entry in ``ranges`` (else KeyError). NaN and
    inf are outside every range; for a value that is not a finite number the range reads "a finite number > 0"
    (``rope3d: stiffness must be a finite number > 0, got inf``).
    """
    missing = [name for name in values if name not in ranges]
    if missing:
        raise KeyError(f"{env}: no valid range for {missing}; add one to the family's PARAMETER_RANGES")
    for name, value in values.items():
        valid = ranges[name]
        if not valid.contains(value):
            raise ValueError(f"{env}: {name} must be {valid.describe(value)}, got {value!r}")


def ranges_for(table: Mapping[str, Range], names: Iterable[str]) -> dict[str, Range]:
    """The entries of a family's range ``table`` for the parameters and options ``names`` one env accepts
    (names without an entry are left out: ``tests/envs/test_validation.py`` asserts every physical one has one)."""
    return {name: table[name] for name in names if name in table}


def check_options(env: str, goal, goals: tuple, physics: dict, defaults: dict, env_options: tuple) -> None:
    """Raise ValueError naming the env and the valid choices on an unknown goal or physical parameter."""
    if goal not in (None, *goals):
        raise ValueError(f"{env}: unknown goal {goal!r}; valid goals: {', '.join(goals)}")
    unknown = sorted(set(physics) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for env {env!r}; env options: {', '.join(env_options)}; "
                         f"physical parameters: {', '.join(defaults)}")


def env_indices(mask: Tensor, limit: int = 20) -> str:
    """The indices where ``mask`` [N] is True, as text (the first ``limit``)."""
    idx = torch.nonzero(mask).flatten().tolist()
    return str(idx[:limit]) + (f" ... ({len(idx)} in all)" if len(idx) > limit else "")


def check_finite_inputs(name: str, tensordict, keys: Iterable[str]) -> None:
    """Raise FloatingPointError naming the env, the env indices and the keys where a float input of ``step``
    (``keys`` of ``tensordict``, each [N, ...]) holds NaN or inf:
    ``soft_jumper: non-finite input state (NaN/inf) in env indices [1]: 'x' in [1], 'com_start' in [1]``.

    Cost: one sum per key, their sum and one host sync (NaN and inf propagate through sums, so a finite total
    means finite entries); the search entry by entry runs only when the total is not finite (a NaN/inf, or a
    sum that overflowed: then nothing is raised).
    """
    keys = tuple(keys)
    if math.isfinite(torch.stack([tensordict.get(key).detach().sum() for key in keys]).sum().item()):
        return
    tensors = [tensordict.get(key).detach() for key in keys]
    bad = {key: ~torch.isfinite(t).reshape(t.shape[0], -1).all(-1) for key, t in zip(keys, tensors)}
    bad = {key: mask for key, mask in bad.items() if mask.any()}
    if bad:
        where = torch.stack(list(bad.values())).any(0)
        detail = ", ".join(f"{key!r} in {env_indices(mask)}" for key, mask in bad.items())
        raise FloatingPointError(f"{name}: non-finite input state (NaN/inf) in env indices {env_indices(where)}: {detail}")


class NonFiniteActionError(FloatingPointError, ValueError):
    """A NaN/inf action: a ValueError (bad input to ``step``) that the trainers' non-finite guard catches as a
    FloatingPointError, like a non-finite simulator state, so it stops or skips naming the iteration."""


def check_action(name: str, action: Tensor, num_envs: int, action_dim: int, dtype: torch.dtype) -> None:
    """Raise on a wrong shape (ValueError), a dtype other than the env's (TypeError) or NaN/inf (ValueError)."""
    expected = (num_envs, action_dim)
    if tuple(action.shape) != expected:
        raise ValueError(f"{name}: action has shape {tuple(action.shape)}, expected {expected} (num_envs, action_dim)")
    if action.dtype != dtype:
        raise TypeError(
            f"{name}: action dtype is {action.dtype} but the env runs in {dtype}; "
            f"cast the policy output (a {action.dtype} action would silently promote the state)"
        )
    bad = ~torch.isfinite(action).all(-1)
    if bad.any():
        raise NonFiniteActionError(f"{name}: non-finite action (NaN/inf) in env indices {env_indices(bad)}")


def done_spec(num_envs: int, device) -> Composite:
    """done / terminated / truncated, [N, 1] bool each."""
    flag = Categorical(2, shape=(num_envs, 1), dtype=torch.bool, device=device)
    return Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=(num_envs,))
