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
  run directory is written before all of that is validated.

Errors print ``error: <message>`` on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

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


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """The recipe's config, composed by Hydra's compose API (no run directory, nothing written)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


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
def check_keys(defaults: DictConfig, parsed) -> None:
    """Refuse every override of a key ``defaults`` lacks, ``+`` or not, outside the open namespaces."""
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or key.split(".")[0] == "hydra" or key.split("@")[0] in GROUPS:
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


# valid ranges of the recipes' numeric settings (where a key is present): (test, text)
RANGES = {
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

        try:
            dev = torch.device(str(device))
        except RuntimeError:
            raise ConfigError(f"device must be a torch device such as cpu or cuda:0, got {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but CUDA is not available on this machine (torch {torch.__version__}); use device=cpu")
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda[:index], got {device!r}")


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
    defaults = compose(config_name, choices)
    check_types(cfg, defaults)
    check_ranges(cfg)
    check_choices(cfg)
    check_learning_rates(cfg)


# ---------------------------------------------------------------------- resume
def resume_config(config_name: str, resume: str, overrides: list[str]) -> tuple[DictConfig, Path, dict]:
    """``(config, run dir, record)`` of a resumed run: the run's saved config plus the ``RESUMABLE`` overrides."""
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
    parsed = [o for o in parse(overrides) if o.key_or_group.split(".")[0] != "hydra"]
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
                 resume_entry: dict | None = None) -> None:
    """``recipe.json``: the recipe, its group choices and overrides, and one entry per resume."""
    record = read_record(run_dir)
    record.setdefault("recipe", config_name)
    if choices is not None:
        record["choices"], record["overrides"] = choices, overrides
    if resume_entry is not None:
        record.setdefault("resumes", []).append(resume_entry)
    atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))


# ---------------------------------------------------------------------- entry point
def recipe_main(config_name: str, run: Callable[[DictConfig, str | Path], dict], argv: list[str] | None = None) -> None:
    """A recipe's ``__main__``: check the command line, then run ``run(cfg, run_dir)`` under Hydra (or resume)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, flags = split_argv(argv)
    try:
        parsed = parse(overrides)
    except Exception:  # a syntax error: Hydra's own message says where
        parsed = None
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
            choices = group_choices(parsed)
            check_keys(compose(config_name, choices), parsed)
            if not flags and not any(o.is_sweep_override() for o in parsed):  # a sweep's jobs are checked one by one
                plain = [o.input_line for o in parsed if o.key_or_group.split(".")[0] != "hydra"]
                validate(config_name, compose(config_name, plain), choices)
    except (ConfigError, CheckpointError) as err:
        fail(err)
    hydra_run(config_name, run, overrides, argv)


def fail(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


def hydra_run(config_name: str, run: Callable, overrides: list[str], argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    def task(cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        choices = [f"{g}={hc.runtime.choices[g]}" for g in GROUPS if g in hc.runtime.choices]
        try:
            validate(config_name, cfg, choices)
            run_dir = Path(hc.runtime.output_dir)
            write_record(run_dir, config_name, choices, list(hc.overrides.task))
            run(cfg, run_dir)
        except (ConfigError, CheckpointError) as err:
            fail(err)

    if not any(a.startswith("hydra.job.name=") for a in argv):
        argv = [*argv, f"hydra.job.name={config_name}"]  # the job (and its .log file) is named after the recipe
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)()
