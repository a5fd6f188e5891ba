"""A recipe's run, around the modules, loss and trainer the recipe wires: config checks, seeding, the
run directory, the envs, training or resuming, and the run's outputs (``rl.trainers.outputs``).
Shared by ``recipes/*.py``; ``load_recipe`` imports one by path for tests and benchmarks.

A run directory gets: ``config.yaml`` (resolved), ``recipe.json`` (``rl.cli``), ``metrics.jsonl`` and
``logs/`` (TorchRL logger), ``checkpoints/last.pt``, ``curve.png``, ``eval.json`` and ``policy.gif``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import EnvBase

import tphys.envs
from rl.builders import DTYPES
from rl.cli import ConfigError
from rl.trainers import Trainer
from rl.trainers.checkpoint import atomic_write_text, checkpoint_file, load_checkpoint
from rl.trainers.outputs import finish_run

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


# ---------------------------------------------------------------------- validation and envs
def check_config(cfg: DictConfig) -> None:
    """Errors that name the offending key, raised before anything is built."""
    try:
        tphys.envs.registry.resolve(cfg.env.name)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"env.name: {err}") from None
    if not isinstance(cfg.num_envs, int) or isinstance(cfg.num_envs, bool) or cfg.num_envs < 1:
        raise ConfigError(f"num_envs must be an int >= 1, got {cfg.num_envs!r}")
    if cfg.total_steps is not None and float(cfg.total_steps) < 1:
        raise ConfigError(f"total_steps must be >= 1, got {cfg.total_steps!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if int(cfg.eval.episodes) < 1 or int(cfg.eval.num_envs) < 1:
        raise ConfigError("eval.episodes and eval.num_envs must be >= 1")
    horizon = cfg.algo.get("horizon")
    if horizon is not None:
        episode = episode_length(cfg)
        if not isinstance(horizon, int) or horizon < 1:
            raise ConfigError(f"algo.horizon must be an int >= 1, got {horizon!r}")
        if horizon > episode:
            raise ConfigError(f"algo.horizon={horizon} is longer than the episode of env {cfg.env.name!r} ({episode} steps)")


def episode_length(cfg: DictConfig) -> int:
    return int(make_env(cfg, num_envs=1, seed=0).horizon)


def make_env(cfg: DictConfig, num_envs: int | None = None, seed: int | None = None) -> EnvBase:
    """The env of ``cfg.env`` (name, goal, options) with ``num_envs`` (default ``cfg.num_envs``)."""
    options = cfg.env.get("options")
    options = {} if options is None else dict(OmegaConf.to_container(options, resolve=True))
    return tphys.envs.make(
        cfg.env.name, num_envs=int(num_envs or cfg.num_envs), device=cfg.device, dtype=DTYPES[cfg.dtype],
        goal=cfg.env.goal, seed=int(cfg.seed if seed is None else seed), **options,
    )


def make_eval_env(cfg: DictConfig) -> EnvBase:
    """Evaluation env: its own seed (``seed + 10_000``) so evaluation never shifts training resets."""
    return make_env(cfg, num_envs=int(cfg.eval.num_envs), seed=int(cfg.seed) + 10_000)


def setup(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))


def train_or_resume(cfg: DictConfig, trainer: Trainer) -> None:
    """``trainer.train()``, first loading ``cfg.resume``'s checkpoint when there is one."""
    if cfg.resume:
        trainer.resume(checkpoint_file(cfg.resume))
        print(f"resumed from {checkpoint_file(cfg.resume)} at env step {trainer.env_steps}")
    trainer.train()


# ---------------------------------------------------------------------- a recipe's run
MakeTrainer = Callable[..., Trainer]  # make_trainer(cfg, env, run_dir=..., eval_env=..., logger=...) -> Trainer


def run_experiment(cfg: DictConfig, run_dir: str | Path, make_trainer: MakeTrainer) -> dict:
    """A recipe's run; returns the eval summary.

    Checks ``cfg``, seeds torch, resolves the run directory (a resumed run's own), makes the training
    and evaluation envs, calls the recipe's ``make_trainer(cfg, env, run_dir=, eval_env=, logger=)``
    (modules, loss, trainer), writes ``config.yaml`` (after ``make_trainer``, which may fill in a
    default that depends on the env), trains or resumes, then writes ``eval.json``, ``curve.png`` and
    the policy video (``finish_run``).
    """
    check_config(cfg)
    setup(cfg)
    run_dir = resolve_run_dir(cfg, run_dir)
    env, eval_env = make_env(cfg), make_eval_env(cfg)
    trainer = make_trainer(cfg, env, run_dir=run_dir, eval_env=eval_env, logger=cfg.logger)
    write_config(cfg, run_dir)
    train_or_resume(cfg, trainer)
    return finish_run(cfg, run_dir, eval_env, trainer.actor, trainer.env_steps, trainer.wall_time, algo_name=trainer.name,
                      stochastic=trainer.stochastic_policy)


def recipe_run(make_trainer: MakeTrainer) -> Callable[[DictConfig, str | Path], dict]:
    """The ``run(cfg, run_dir) -> eval summary`` of the recipe whose modules, loss and trainer ``make_trainer`` wires."""
    def run(cfg: DictConfig, run_dir: str | Path) -> dict:
        return run_experiment(cfg, run_dir, make_trainer)

    return run


def load_recipe(name: str) -> ModuleType:
    """``recipes/<name>.py`` imported by path (recipes are scripts, not a package): its ``make_trainer`` and ``run``."""
    module_name = f"recipes_{name}"
    if module_name not in sys.modules:
        path = RECIPES_DIR / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"no recipe {name!r}; valid: {', '.join(sorted(p.stem for p in RECIPES_DIR.glob('*.py')))}")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# ---------------------------------------------------------------------- run directory
def resolve_run_dir(cfg: DictConfig, run_dir: str | Path) -> Path:
    """A resumed run continues in the directory its checkpoint lives in."""
    if cfg.resume:
        ckpt = checkpoint_file(cfg.resume)
        load_checkpoint(ckpt)  # FileNotFoundError names the path early
        return ckpt.parent.parent
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    """``config.yaml``: the experiment's resolved config (``resume`` is not part of it: ``recipe.json`` records resumes)."""
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["resume"] = None
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(saved))
