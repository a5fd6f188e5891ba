"""Values derived from one tensor, kept per tensor object and version: derived once, derived again after an in-place
edit of the tensor (its version counter moves), never handed to another tensor that reuses a freed one's id."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")


def per_tensor(derive: Callable[[Tensor], T], size: int = 64) -> Callable[[Tensor], T]:
    """``derive`` cached per tensor: the entry of a tensor holds the tensor itself (so its id stays its own while the
    entry lives) and its ``_version`` at derivation; at most ``size`` entries, the oldest dropped first."""
    cache: dict[int, tuple] = {}

    @functools.wraps(derive)
    def cached(tensor: Tensor) -> T:
        entry = cache.get(id(tensor))
        if entry is not None and entry[0] is tensor and entry[1] == tensor._version:
            return entry[2]
        value = derive(tensor)
        cache[id(tensor)] = (tensor, tensor._version, value)
        while len(cache) > size:
            cache.pop(next(iter(cache)))
        return value

    return cached
