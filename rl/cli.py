"""The recipes' command line: Hydra composition, checks that name the key, and ``resume=RUN_DIR``.

``recipe_main("sapo", run)`` is a recipe's whole ``__main__`` (``run(cfg, run_dir)`` from ``rl.experiment.recipe_run``).
Before Hydra runs it

* refuses any override of a key the recipe does not have, with one message whether it was written
  ``key=value`` or ``+key=value`` (Hydra's own hint to append with ``+`` would make the run ignore the
  key); only ``env.options.*`` (checked by ``tphys.envs.make``) and ``env.encoder.*`` are open;
* checks every value's type against the recipe's default (``seed=abc`` names ``seed`` and "int"),
  refuses non-finite numbers, and refuses null where the recipe cannot take one;
* with ``resume=RUN_DIR`` (or a checkpoint file) builds the run from the run's own ``config.yaml``,
  not from the command line: overrides that would change the experiment are refused naming each key,
  the few that make sense (``RESUMABLE``) are applied and recorded in ``recipe.json``; nothing in the
  run directory is written before all of that is validated;
* with ``-m`` (Hydra's multirun) composes and checks every job of the sweep before any starts, then runs them
  through the launcher (``recipes/config/hydra/launcher``: ``local`` = joblib on this machine, the default;
  ``slurm`` = submitit); each job writes its own run directory (``hydra.sweep.subdir``), its ``run.log`` and a
  ``job`` entry in ``recipe.json``; a job with ``resume=RUN_DIR`` continues that run; a job that fails is reported
  and the sweep exits non-zero after the others finish. Config groups of an added config directory
  (``hydra.searchpath=[file://DIR]`` or ``--config-dir``; Hydra's experiment pattern, ``+experiment=NAME``) are
  chosen whole: this is how ``benchmarks/learning.py`` launches a list of runs that is not a cartesian product.

Errors print ``error: <message>`` on stderr and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from rl.trainers.checkpoint import CheckpointError, atomic_write_text, checkpoint_file, load_latest_checkpoint

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"
GROUPS = ("env", "algo")
OPEN_KEYS = ("env.options", "env.encoder")  # checked where they are used (tphys.envs.make, point_cloud_encoder)
NULLABLE = ("total_steps", "resume", "algo.grad_clip", "algo.target_tau", "algo.target_entropy", "algo.max_action_change",
            "algo.newton_step_cap", "algo.clip_value", "env.encoder")
RESUMABLE = ("total_steps", "threads", "progress", "logger", "checkpoint_every", "on_nonfinite", "eval.every", "video.enabled",
             "video.format", "video.every")
# Hydra's flags that take a value (their value is not an override)
FLAGS_WITH_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package", "-p",
                    "--info", "-i", "--experimental-rerun")
_MISSING = object()


class ConfigError(ValueError):
    """A bad value in a recipe config; the message names the key."""


# ---------------------------------------------------------------------- parsing
def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(overrides, hydra flags)`` of a recipe's command line."""
    overrides, flags, skip = [], [], False
    for arg in argv:
        if skip:
            flags.append(arg)
            skip = False
        elif arg.startswith("-"):
            flags.append(arg)
            skip = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return overrides, flags


def parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def compose(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """The recipe's config, composed by Hydra's compose API (no run directory, nothing written); ``hydra``: with
    its ``hydra`` node (``hydra.runtime.choices``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)
    except MissingConfigException as err:  # env=nonexistent: Hydra's message ends in its search path; name the choice
        group, _, name = str(err.missing_cfg_file or "").rpartition("/")
        if not group or not err.options:
            raise
        raise ConfigError(f"{group}={name}: no such {group} in recipes/config/{group}; valid: {', '.join(sorted(err.options))}"
                          ) from None
    finally:
        GlobalHydra.instance().clear()


@functools.lru_cache(maxsize=64)
def recipe_defaults(config_name: str, choices: tuple[str, ...]) -> DictConfig:
    """The recipe's defaults for its group choices (``env=X``, ``algo=Y``): composed once per process (a sweep checks
    many jobs against the same few); read only."""
    return compose(config_name, list(choices))


def group_choices(parsed) -> list[str]:
    """``env=X`` / ``algo=Y`` overrides (the first value of a sweep)."""
    out = []
    for o in parsed:
        if o.key_or_group in GROUPS and not o.is_delete():
            value = o.value()
            if o.is_sweep_override():
                value = next(iter(o.sweep_string_iterator()))
            out.append(f"{o.key_or_group}={value}")
    return out


# ---------------------------------------------------------------------- keys and types
def is_hydra_key(key: str) -> bool:
    """``hydra.*`` keys and ``hydra/*`` groups (``hydra/launcher=joblib``): Hydra's own, not the recipe's."""
    return re.split(r"[./]", key, maxsplit=1)[0] == "hydra"


def check_keys(defaults: DictConfig, parsed, groups: tuple[str, ...] = ()) -> None:
    """Refuse every override of a key ``defaults`` lacks, ``+`` or not, outside the open namespaces (``groups``: config
    groups of a ``--config-dir`` / ``hydra.searchpath`` directory, chosen whole)."""
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or key in groups or is_hydra_key(key) or key.split("@")[0] in GROUPS:
            continue
        if OmegaConf.select(defaults, key, default=_MISSING) is not _MISSING:
            continue
        if any(key == p or key.startswith(p + ".") for p in OPEN_KEYS):
            continue
        raise ConfigError(unknown_key_message(defaults, key, o.input_line))


def unknown_key_message(defaults: DictConfig, key: str, line: str) -> str:
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(defaults, parent, default=None) if parent else defaults
    while node is None and parent:  # the deepest existing parent
        parent, _, _ = parent.rpartition(".")
        node = OmegaConf.select(defaults, parent, default=None) if parent else defaults
    keys = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "none"
    where = f"'{parent}'" if parent else "the top level"
    return (f"unknown config key '{key}': no such key in this recipe's config; keys at {where}: {keys}. "
            "A leading '+' does not add keys here: every key a recipe reads is already in recipes/config "
            "(env options go under env.options, e.g. +env.options.horizon=50)")


def type_name(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "mapping"
    return type(value).__name__


def a_type(value) -> str:
    name = type_name(value)
    return f"an {name}" if name == "int" else f"a {name}"


def check_value(key: str, value, default) -> None:
    """Raise ``ConfigError`` naming ``key`` when ``value`` does not have the type of the recipe's ``default``."""
    shown = f"{value!r} ({type_name(value)})" if value is not None else "null"
    if value is None:
        if default is not None and not any(key == k or key.startswith(k + ".") for k in NULLABLE):
            raise ConfigError(f"{key} must be {a_type(default)}, got null")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if default is None or isinstance(default, (dict, DictConfig)):
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, ListConfig)):
        ok = isinstance(value, (list, ListConfig))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{key} must be {a_type(default)}, got {shown}")


def check_types(cfg: DictConfig, defaults: DictConfig, prefix: str = "") -> None:
    """Every leaf of ``cfg`` against the same leaf of ``defaults`` (open namespaces: finiteness only)."""
    for key in cfg.keys():
        path = f"{prefix}{key}"
        value = cfg[key]
        default = OmegaConf.select(defaults, str(key), default=None) if defaults is not None else None
        if isinstance(value, DictConfig):
            check_types(value, default if isinstance(default, DictConfig) else None, prefix=path + ".")
        elif isinstance(value, ListConfig):
            for i, item in enumerate(value):
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{path}[{i}] must be a finite number, got {item!r}")
            check_value(path, value, default)
        else:
            check_value(path, value, default)


def check_learning_rates(cfg: DictConfig) -> None:
    """Learning rates must be finite and > 0 (``lr_end``, ``lr_min``: >= 0)."""
    for key, value in cfg.algo.items():
        key = str(key)
        if not (key.endswith("_lr") or key in ("lr_end", "lr_min", "lr_max")) or value is None:
            continue
        floor_ok = key in ("lr_end", "lr_min")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                value == 0 and not floor_ok):
            raise ConfigError(f"algo.{key} must be a finite number {'>= 0' if floor_ok else '> 0'}, got {value!r}")


def _seed_fits(seed: int) -> bool:
    """Whether ``seed`` and the eval env's ``seed + 10000`` are seeds torch takes (``tphys.envs.base.SEEDS``)."""
    from tphys.envs.base import SEEDS

    return SEEDS[0] <= seed <= SEEDS[1] - 10_000


# valid ranges of the recipes' numeric settings (where a key is present): (test, text)
RANGES = {
    "seed": (_seed_fits,
             "an int in [-2^63, 2^64 - 10001] (torch's seeds; the eval env takes seed + 10000)"),
    "num_envs": (lambda v: v >= 1, "an int >= 1"), "threads": (lambda v: v >= 1, ">= 1"), "total_steps": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0 (0: never)"), "eval.every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "eval.episodes": (lambda v: v >= 1, ">= 1"), "eval.num_envs": (lambda v: v >= 1, ">= 1"), "video.every": (lambda v: v >= 1, ">= 1"),
    "algo.horizon": (lambda v: v >= 1, ">= 1"), "algo.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "algo.lmbda": (lambda v: 0 <= v <= 1, "in [0, 1]"), "algo.grad_clip": (lambda v: v > 0, "> 0 (null: no clipping)"),
    "algo.target_tau": (lambda v: 0 <= v < 1, "in [0, 1) (null: no target network)"), "algo.weight_decay": (lambda v: v >= 0, ">= 0"),
    "algo.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "algo.num_critics": (lambda v: v >= 1, ">= 1"), "algo.critic_iterations": (lambda v: v >= 0, ">= 0"),
    "algo.critic_minibatches": (lambda v: v >= 1, ">= 1"), "algo.minibatches": (lambda v: v >= 1, ">= 1"),
    "algo.epochs": (lambda v: v >= 1, ">= 1"), "algo.batch_size": (lambda v: v >= 1, ">= 1"),
    "algo.updates_per_batch": (lambda v: v >= 0, ">= 0"), "algo.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "algo.replay_size": (lambda v: v >= 1, ">= 1"), "algo.clip_epsilon": (lambda v: v > 0, "> 0"),
    "algo.init_alpha": (lambda v: v > 0, "> 0"), "algo.regression_steps": (lambda v: v >= 1, ">= 1"),
    "algo.line_search_trials": (lambda v: v >= 1, ">= 1"), "algo.cg_iterations": (lambda v: v >= 1, ">= 1"),
    "algo.damping": (lambda v: v >= 0, ">= 0"), "algo.order": (lambda v: v in (1, 2), "1 or 2"),
    "algo.log_std_bounds": (lambda v: len(v) == 2 and v[0] < v[1], "(low, high) with low < high"),
}


# the choices of the recipes' string settings (where a key is present); per-algorithm ones keyed by algo.name
CHOICES = {
    "dtype": ("float32", "float64"), "logger": ("csv", "tensorboard", "none"), "on_nonfinite": ("stop", "skip"),
    "video.format": ("gif", "mp4"), "algo.optimizer": ("adam", "adamw"), "algo.activation": ("silu", "elu", "relu", "tanh"),
    "algo.loss_function": ("l1", "l2", "smooth_l1"), "algo.loss_critic_type": ("l1", "l2", "smooth_l1"),
}
LR_SCHEDULES = {"ppo": ("adaptive_kl", "constant"), "sac": ()}  # others: linear | constant


def check_choices(cfg: DictConfig) -> None:
    """String settings among their choices; ``device`` a CPU or an available CUDA device."""
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and str(value).lower() not in valid:
            raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}")
    schedule = OmegaConf.select(cfg, "algo.lr_schedule", default=None)
    valid = LR_SCHEDULES.get(str(OmegaConf.select(cfg, "algo.name", default="")), ("linear", "constant"))
    if schedule is not None and schedule not in valid:
        raise ConfigError(f"algo.lr_schedule must be one of {', '.join(valid)}, got {schedule!r}")
    device = OmegaConf.select(cfg, "device", default=None)
    if device is not None:
        import torch

        from tphys.envs.registry import available_device

        try:
            dev = torch.device(str(device))
        except RuntimeError:
            raise ConfigError(f"device must be a torch device such as cpu or cuda:0, got {device!r}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda[:index], got {device!r}")
        try:
            available_device(dev)  # the envs' check (tphys.envs.make): the device and its index exist here
        except ValueError as err:
            raise ConfigError(f"device={device!r}: {err} (torch {torch.__version__}); use device=cpu") from None


def check_ranges(cfg: DictConfig) -> None:
    """Every ``RANGES`` key present in ``cfg`` (and not null) inside its range."""
    for key, (ok, text) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        try:
            inside = bool(ok(plain))
        except TypeError:
            inside = False
        if not inside:
            raise ConfigError(f"{key} must be {text}, got {plain!r}")


def validate(config_name: str, cfg: DictConfig, choices: list[str]) -> None:
    """The recipe's own algorithm; types of ``cfg`` against the recipe's defaults for the same env and algo; ranges;
    learning rates."""
    algo = OmegaConf.select(cfg, "algo.name", default=None)
    if algo is not None and algo != config_name:
        raise ConfigError(f"algo={algo}: recipes/{config_name}.py wires {config_name} (its modules, loss and trainer); "
                          f"run recipes/{algo}.py for {algo}")
    defaults = recipe_defaults(config_name, tuple(choices))
    check_types(cfg, defaults)
    check_ranges(cfg)
    check_choices(cfg)
    check_learning_rates(cfg)


# ---------------------------------------------------------------------- resume
def resume_config(config_name: str, resume: str, overrides: list[str], groups: tuple[str, ...] = ()
                  ) -> tuple[DictConfig, Path, dict]:
    """``(config, run dir, record)`` of a resumed run: the run's saved config plus the ``RESUMABLE`` overrides
    (``groups``: config groups of a sweep's own config directory, ``+experiment=NAME``, which are not checked here)."""
    ckpt = checkpoint_file(resume)
    run_dir = ckpt.parent.parent
    saved_path = run_dir / "config.yaml"
    state, source = load_latest_checkpoint(ckpt)  # CheckpointError names the file
    if not saved_path.is_file():
        raise ConfigError(f"resume={resume}: {saved_path} is missing, so the run's config is unknown; "
                          "a run directory written by a tphys recipe holds config.yaml beside checkpoints/")
    try:
        cfg = OmegaConf.load(saved_path)
    except Exception as err:  # a damaged or foreign file: say which
        raise ConfigError(f"resume={resume}: cannot read the run's config {saved_path} ({type(err).__name__}: {err})") from None
    if not isinstance(cfg, DictConfig) or not {"env", "algo", "seed"} <= set(cfg.keys()):
        raise ConfigError(f"resume={resume}: {saved_path} is not a tphys recipe config (no env / algo / seed)")
    record = read_record(run_dir)
    if record.get("recipe", config_name) != config_name:
        raise ConfigError(f"resume={resume}: the run was made by recipes/{record['recipe']}.py, not recipes/{config_name}.py")
    saved_algo = cfg.algo.get("name")
    if saved_algo is not None and saved_algo != config_name:
        raise ConfigError(f"resume={resume}: the run is a {saved_algo} run; resume it with recipes/{saved_algo}.py")
    parsed = [o for o in parse(overrides) if not is_hydra_key(o.key_or_group) and o.key_or_group not in groups]
    refused, applied = [], {}
    for o in parsed:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"resume: sweeps are not resumable ('{o.input_line}')")
        if key in GROUPS:
            chosen = compose(config_name, [f"{key}={o.value()}"])[key].get("name")
            if chosen != cfg[key].get("name"):
                refused.append(f"{key} (run: {cfg[key].get('name')}, given: {chosen})")
            continue
        value = o.value()
        old = OmegaConf.select(cfg, key, default=_MISSING)
        if old is _MISSING and not any(key.startswith(p + ".") for p in OPEN_KEYS):
            raise ConfigError(unknown_key_message(cfg, key, o.input_line))
        if key in RESUMABLE:
            check_value(key, value, None if old is _MISSING else old)
            OmegaConf.update(cfg, key, value, merge=False)
            applied[key] = value
        elif old is _MISSING or not same_value(old, value):
            refused.append(f"{key} (run: {'unset' if old is _MISSING else old_repr(old)}, given: {value!r})")
    if refused:
        raise ConfigError(
            f"resume={resume}: these overrides would change the experiment: {'; '.join(refused)}. A resumed run keeps its own "
            f"config ({saved_path}); start a new run to change them. On resume only {', '.join(RESUMABLE)} may change")
    done = int(state.get("counters", {}).get("env_steps", 0))
    if "total_steps" in applied and cfg.total_steps is not None and float(cfg.total_steps) < done:
        raise ConfigError(f"total_steps={applied['total_steps']!r} is less than the {done} env steps the checkpoint has already "
                          "trained; pass a larger total_steps to extend the run")
    cfg.resume = str(source)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": str(source), "env_steps": done, "overrides": applied}
    return cfg, run_dir, entry


def same_value(old, new) -> bool:
    old = OmegaConf.to_container(old, resolve=True) if isinstance(old, (DictConfig, ListConfig)) else old
    if isinstance(new, (int, float)) and isinstance(old, (int, float)) and not isinstance(new, bool):
        return float(new) == float(old)
    return old == new


def old_repr(old) -> str:
    return repr(OmegaConf.to_container(old, resolve=True) if isinstance(old, (DictConfig, ListConfig)) else old)


def read_record(run_dir: Path) -> dict:
    path = run_dir / "recipe.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_record(run_dir: Path, config_name: str, choices: list[str] | None, overrides: list[str] | None,
                 resume_entry: dict | None = None, job: dict | None = None) -> None:
    """``recipe.json``: the recipe, its group choices and overrides, the sweep's job (``job_entry``) and one entry
    per resume. Under ``torchrun`` only rank 0 writes it."""
    if os.environ.get("RANK", "0") != "0":
        return
    record = read_record(run_dir)
    record.setdefault("recipe", config_name)
    if choices is not None:
        record["choices"], record["overrides"] = choices, overrides
        record.pop("job", None)
        if job is not None:
            record["job"] = job
    if resume_entry is not None:
        record.setdefault("resumes", []).append(resume_entry)
    atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))


# ---------------------------------------------------------------------- sweeps
def search_dirs(parsed, flags: list[str]) -> list[str]:
    """Config directories added on the command line: ``hydra.searchpath=[file://DIR]`` and ``--config-dir DIR``."""
    dirs = []
    for o in parsed:
        if o.key_or_group == "hydra.searchpath" and not o.is_delete():
            value = o.value()
            dirs += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    for i, flag in enumerate(flags):
        if flag in ("--config-dir", "-cd") and i + 1 < len(flags):
            dirs.append(flags[i + 1])
        elif flag.startswith("--config-dir="):
            dirs.append(flag.partition("=")[2])
    return [d if "://" in d else f"file://{Path(d).resolve()}" for d in dirs]


def extra_groups(dirs: list[str]) -> tuple[str, ...]:
    """The config groups of ``dirs`` (Hydra's experiment pattern, ``+experiment=NAME``: the benchmarks' jobs); their
    options are composed and checked as a whole (``check_sweep``), not key by key."""
    groups = set()
    for d in dirs:
        path = Path(d[len("file://"):]) if d.startswith("file://") else None
        if path is not None and path.is_dir():
            groups |= {child.name for child in path.iterdir() if child.is_dir() and child.name != "hydra"}
    return tuple(sorted(groups))


def is_multirun(flags: list[str]) -> bool:
    return any(f in ("-m", "--multirun") for f in flags) and not any(
        f.split("=")[0] in ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
        for f in flags)


def check_sweep(config_name: str, parsed, dirs: list[str], groups: tuple[str, ...]) -> int:
    """Compose and check every job of a multirun before any starts (the jobs of Hydra's basic sweeper: the cartesian
    product of the ``a,b,c`` overrides); a job that resumes a run (``resume=RUN_DIR``) is checked as its resume.
    Returns the number of jobs; a bad job raises ``ConfigError`` naming it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if any(o.key_or_group == "hydra/sweeper" for o in parsed):
        return 0  # another sweeper makes its own jobs: each is checked when it runs
    search = [f"hydra.searchpath=[{','.join(dirs)}]"] if dirs and not any(o.key_or_group == "hydra.searchpath" for o in parsed) else []
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    for num, job in enumerate(jobs):
        shown = " ".join(j for j in job if not is_hydra_key(j.split("=")[0].lstrip("+~")))
        try:
            cfg = compose(config_name, [*job, *search], hydra=True)
            choices = [f"{g}={cfg.hydra.runtime.choices[g]}" for g in GROUPS if g in cfg.hydra.runtime.choices]
            with open_dict(cfg):
                del cfg["hydra"]
            if cfg.resume:
                rest = [o.input_line for o in parse(job) if o.key_or_group not in ("resume", *groups)]
                cfg, run_dir, _ = resume_config(config_name, str(cfg.resume), rest, groups)
                choices = read_record(run_dir).get("choices") or [f"env={cfg.env.name}", f"algo={cfg.algo.name}"]
            else:
                check_no_new_keys(cfg, recipe_defaults(config_name, tuple(choices)))  # a key an experiment config adds
            validate(config_name, cfg, choices)
        except (ConfigError, CheckpointError) as err:
            raise ConfigError(f"job #{num} of the sweep ({shown}): {err}") from None
    return len(jobs)


def check_no_new_keys(cfg: DictConfig, defaults: DictConfig, prefix: str = "") -> None:
    """Refuse a key of ``cfg`` that ``defaults`` lacks (outside the open namespaces): what a config merged in whole
    (``+experiment=NAME``) may add without an override naming it."""
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if any(path == p or path.startswith(p + ".") for p in OPEN_KEYS):
            continue
        default = OmegaConf.select(defaults, path, default=_MISSING)
        if default is _MISSING:
            raise ConfigError(unknown_key_message(defaults, path, path))
        if isinstance(cfg[key], DictConfig) and isinstance(default, DictConfig):
            check_no_new_keys(cfg[key], defaults, prefix=path + ".")


class Tee:
    """A text stream that also writes into a file (a sweep job's ``run.log``)."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def job_output(path: Path):
    """A sweep job's stdout and stderr, also appended to ``path``: parallel jobs share one terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log, redirect_stdout(Tee(sys.stdout, log)), redirect_stderr(Tee(sys.stderr, log)):
        yield


def job_entry(hc) -> dict:
    """Where and how a sweep's job ran: its number, launcher, process and thread settings."""
    return {"num": int(hc.job.num), "launcher": hc.runtime.choices.get("hydra/launcher"), "host": socket.gethostname(),
            "pid": os.getpid(), "started": time.time(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


# ---------------------------------------------------------------------- entry point
def recipe_main(config_name: str, run: Callable[[DictConfig, str | Path], dict], argv: list[str] | None = None) -> None:
    """A recipe's ``__main__``: check the command line, then run ``run(cfg, run_dir)`` under Hydra (or resume).

    ``-m`` (Hydra's multirun) runs the sweep's jobs through the configured launcher (``recipes/config/hydra/launcher``:
    joblib on this machine by default, submitit on SLURM); every job is checked before any starts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, flags = split_argv(argv)
    try:
        parsed = parse(overrides)
    except Exception:  # a syntax error: Hydra's own message says where
        parsed = None
    groups: tuple[str, ...] = ()
    try:
        if parsed is not None:
            resume = [o for o in parsed if o.key_or_group == "resume" and o.value() is not None]
            if resume and not flags:
                rest = [o.input_line for o in parsed if o.key_or_group != "resume"]
                cfg, run_dir, entry = resume_config(config_name, str(resume[0].value()), rest)
                choices = read_record(run_dir).get("choices") or [f"env={cfg.env.name}", f"algo={cfg.algo.name}"]
                validate(config_name, cfg, choices)
                write_record(run_dir, config_name, None, None, entry)
                run(cfg, run_dir)
                return
            dirs = search_dirs(parsed, flags)
            groups = extra_groups(dirs)
            choices = group_choices(parsed)
            check_keys(compose(config_name, choices), parsed, groups)
            if is_multirun(flags):
                check_sweep(config_name, parsed, dirs, groups)
            elif not flags and not any(o.is_sweep_override() for o in parsed):
                plain = [o.input_line for o in parsed if not is_hydra_key(o.key_or_group)]
                validate(config_name, compose(config_name, plain), choices)
    except (ConfigError, CheckpointError) as err:
        fail(err)
    hydra_run(config_name, run, overrides, argv, groups)


def fail(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


def hydra_run(config_name: str, run: Callable, overrides: list[str], argv: list[str], groups: tuple[str, ...] = ()) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def task(cfg: DictConfig):
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            try:
                return start(cfg, hc, Path(hc.runtime.output_dir))
            except (ConfigError, CheckpointError) as err:
                fail(err)
        # a sweep's job, maybe in a launcher's worker process: its output also goes to run.log; a bad job is
        # reported and raised (Hydra marks it failed, the other jobs go on, and the sweep exits non-zero at the end)
        with job_output(Path(hc.runtime.output_dir) / "run.log"):
            try:
                return start(cfg, hc, Path(hc.runtime.output_dir), job_entry(hc))
            except (ConfigError, CheckpointError) as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                raise
            except BaseException:
                traceback.print_exc()
                raise

    def start(cfg: DictConfig, hc, run_dir: Path, job: dict | None = None):
        choices = [f"{g}={hc.runtime.choices[g]}" for g in GROUPS if g in hc.runtime.choices]
        if job is not None and cfg.resume:  # a sweep's job that continues a run: the run's own config, as resume=
            rest = [line for line in hc.overrides.task if parse([line])[0].key_or_group not in ("resume", *groups)]
            cfg, run_dir, entry = resume_config(config_name, str(cfg.resume), rest, groups)
            choices = read_record(run_dir).get("choices") or [f"env={cfg.env.name}", f"algo={cfg.algo.name}"]
            validate(config_name, cfg, choices)
            write_record(run_dir, config_name, None, None, {**entry, "job": job})
        else:
            validate(config_name, cfg, choices)
            write_record(run_dir, config_name, choices, list(hc.overrides.task), job=job)
        return run(cfg, run_dir)

    if not any(a.startswith("hydra.job.name=") for a in argv):
        overrides = [*overrides, f"hydra.job.name={config_name}"]  # the job (and its .log file) is named after the recipe
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0's run directory is the run's; Hydra's own
        # files of this rank go to a scratch directory instead of a second run directory
        scratch = tempfile.mkdtemp(prefix=f"tphys-rank{os.environ['RANK']}-")
        overrides = [*(o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.output_subdir="))),
                     f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    _, flags = split_argv(argv)
    sys.argv = [sys.argv[0], *overrides, *flags]  # one run of overrides: argparse takes no second one after the flags
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)()
