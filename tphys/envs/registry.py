"""Name -> env factory registry behind ``tphys.envs.make`` and ``tphys.envs.list_envs``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torchrl.envs import EnvBase

from tphys.envs.base import check_seed
from tphys.envs.ranges import Range


@dataclass(frozen=True)
class EnvEntry:
    name: str
    description: str
    factory: Callable[..., EnvBase]
    defaults: Mapping[str, object] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)


_REGISTRY: dict[str, EnvEntry] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, description: str, aliases: tuple[str, ...] = (), defaults: Mapping | None = None,
             ranges: Mapping[str, Range] | None = None):
    """Decorator: register ``factory(num_envs, device, dtype, **overrides) -> EnvBase``.

    ``defaults``: the env's physical parameters and their default values; ``ranges``: the valid range of
    every numeric parameter and option it accepts (its family's ``PARAMETER_RANGES``, see ``parameters``).
    """

    def wrap(factory):
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"env name {key!r} is registered twice")
        _REGISTRY[name] = EnvEntry(name, description, factory, dict(defaults or {}), dict(ranges or {}))
        for alias in aliases:
            _ALIASES[alias] = name
        return factory

    return wrap


def list_envs() -> dict[str, str]:
    """Registered env names mapped to a one-line description (aliases not repeated)."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def parameters(name: str) -> tuple[dict, dict[str, Range]]:
    """(defaults, ranges) of env ``name``: its physical parameters with their default values, and the valid
    range of every numeric parameter and option it accepts (``make`` refuses a value outside it)."""
    entry = _REGISTRY[resolve(name)]
    return dict(entry.defaults), dict(entry.ranges)


def resolve(name: str) -> str:
    """Canonical name of ``name`` or alias; ValueError listing the valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"env name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    valid = ", ".join(sorted(_REGISTRY) + sorted(f"{a} (= {t})" for a, t in _ALIASES.items()))
    raise ValueError(f"unknown env {name!r}; registered envs: {valid}")


def make(
    name: str,
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> EnvBase:
    """Build the registered env ``name`` batched over ``num_envs``.

    ``overrides`` are the env's own options (``goal``, ``integrator``, physical
    parameters, ...); an unknown option raises a ValueError listing the valid ones.
    """
    entry = _REGISTRY[resolve(name)]
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if "seed" in overrides:
        overrides["seed"] = check_seed(overrides["seed"])
    for key in FLAGS & overrides.keys():
        value = overrides[key]
        if not is_flag(value):
            raise ValueError(f"{resolve(name)}: {key} must be True or False, got {value!r}"
                             + (" (a non-empty string is truthy: 'no' would switch it on)" if isinstance(value, str) else ""))
        overrides[key] = bool(value)
    return entry.factory(num_envs=num_envs, device=available_device(device), dtype=dtype, **overrides)


FLAGS = frozenset({"validate", "compile_substep", "early_termination"})  # the envs' on/off options


def is_flag(value) -> bool:
    """A bool (numpy's too): what an on/off option takes; a string, None or a number would be read by truthiness."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def available_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, checked to exist on this machine: ValueError naming the device and what there is, where
    the first tensor built on it would raise torch's own AssertionError ('Torch not compiled with CUDA enabled')."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({error})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(f"device {str(device)!r} is not available: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} is not available on this machine")
    return device
