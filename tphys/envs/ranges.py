"""Valid ranges of the envs' parameters: each env family keeps one table ``PARAMETER_RANGES`` (name -> ``Range``)
next to its default physical parameters; ``check_ranges`` refuses a value outside its range (or non-finite) before
anything is built, with one message form: ``rope3d: stiffness must be > 0, got -1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from numbers import Integral, Real


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
