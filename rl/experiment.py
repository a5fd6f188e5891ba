"""A recipe's run, around the modules, loss and trainer the recipe wires: config checks, seeding, the
run directory, the envs, training or resuming, and the run's outputs (``rl.trainers.outputs``).
Shared by ``recipes/*.py``; ``load_recipe`` imports one by path for tests and benchmarks.

A run directory gets: ``config.yaml`` (resolved), ``recipe.json`` (``rl.cli``), ``metrics.jsonl`` and
``logs/`` (TorchRL logger), ``checkpoints/last.pt``, ``curve.png``, ``eval.json`` and ``policy.gif``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record
from torchrl.envs import EnvBase

import tphys.envs
from rl import distributed
from rl.allocator import keep_freed_memory
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
    if not isinstance(cfg.get("keep_freed_memory", True), bool):
        raise ConfigError(f"keep_freed_memory must be true or false, got {cfg.keep_freed_memory!r}")
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


def make_env(cfg: DictConfig, num_envs: int | None = None, seed: int | None = None, sharded: bool = False,
             what: str = "num_envs") -> EnvBase:
    """The env of ``cfg.env`` (name, goal, options) with ``num_envs`` (default ``cfg.num_envs``).

    ``sharded``: under data parallelism (``torchrun``), this rank's share of the ``num_envs`` global envs
    (``TphysEnv.set_shard``); ``what`` names the count in the error when it does not split evenly.
    """
    options = cfg.env.get("options")
    options = {} if options is None else dict(OmegaConf.to_container(options, resolve=True))
    total = int(num_envs or cfg.num_envs)
    part = distributed.shard(total, what) if sharded else None
    env = tphys.envs.make(
        cfg.env.name, num_envs=total if part is None else part.size, device=cfg.device, dtype=DTYPES[cfg.dtype],
        goal=cfg.env.goal, seed=int(cfg.seed if seed is None else seed), **options,
    )
    if part is not None:
        env.set_shard(part.start, total)
    return env


def make_eval_env(cfg: DictConfig, sharded: bool = False) -> EnvBase:
    """Evaluation env: its own seed (``seed + 10_000``) so evaluation never shifts training resets."""
    return make_env(cfg, num_envs=int(cfg.eval.num_envs), seed=int(cfg.seed) + 10_000, sharded=sharded, what="eval.num_envs")


def start_env_of(cfg: DictConfig, env: EnvBase, rollouts: int | None) -> EnvBase:
    """The env whose ``reset`` draws an epoch's k = ``rollouts`` initial states (PODS, GPS): ``env`` when k is its
    global env count (or None), else an env of k envs of the same task and seed (this rank's share of them when
    ``env`` is a data-parallel shard)."""
    if rollouts is None or int(rollouts) == distributed.env_shard(env).total:
        return env
    return make_env(cfg, num_envs=int(rollouts), sharded=getattr(env, "shard", None) is not None, what="algo.rollouts_per_epoch")


def setup(cfg: DictConfig) -> None:
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    if int(cfg.threads) > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        warnings.warn(f"threads={int(cfg.threads)} without OMP_WAIT_POLICY=PASSIVE in the environment: torch's OpenMP threads "
                      "spin between its parallel ops and take cores from the C kernels' threads (set it before Python starts; "
                      "see the README's rigid section)", stacklevel=2)


def train_or_resume(cfg: DictConfig, trainer: Trainer, restart: Path | None = None) -> None:
    """``trainer.train()``, first loading ``cfg.resume``'s checkpoint (or ``restart``, an elastic restart's) when there is one."""
    source = checkpoint_file(cfg.resume) if cfg.resume else restart
    if source is not None:
        trainer.resume(source)
        if distributed.is_main():
            print(f"resumed from {source} at env step {trainer.env_steps}")
    trainer.train()


# ---------------------------------------------------------------------- a recipe's run
MakeTrainer = Callable[..., Trainer]  # make_trainer(cfg, env, run_dir=..., eval_env=..., logger=...) -> Trainer


def run_experiment(cfg: DictConfig, run_dir: str | Path, make_trainer: MakeTrainer) -> dict:
    """A recipe's run; returns the eval summary.

    Under ``torchrun`` (``rl.distributed``) every rank runs this: rank 0 chooses the run directory and writes every
    output, each rank steps its share of ``num_envs`` and of the evaluation envs, and an elastic restart of the job
    (``torchrun --max-restarts``) resumes from the run's last checkpoint.

    Checks ``cfg``, seeds torch, resolves the run directory (a resumed run's own), makes the training
    and evaluation envs, calls the recipe's ``make_trainer(cfg, env, run_dir=, eval_env=, logger=)``
    (modules, loss, trainer), writes ``config.yaml`` (after ``make_trainer``, which may fill in a
    default that depends on the env), trains or resumes, then writes ``eval.json``, ``curve.png`` and
    the policy video (``finish_run``).
    """
    check_config(cfg)
    device = distributed.init(cfg.device)
    try:
        if device != cfg.device:
            cfg = cfg.copy()
            cfg.device = device  # cuda:<LOCAL_RANK>
        setup(cfg)
        sharded = distributed.is_distributed()
        for key in ("num_envs", "eval.num_envs"):  # both split evenly, before anything is written
            if sharded and int(OmegaConf.select(cfg, key)) % distributed.world_size():
                raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} does not split evenly across {distributed.world_size()} "
                                  f"ranks; use a multiple of {distributed.world_size()}")
        run_dir = Path(distributed.broadcast_object(str(resolve_run_dir(cfg, run_dir)) if distributed.is_main() else None))
        restart = None if cfg.resume else elastic_restart_checkpoint(run_dir)
        if restart is not None:
            run_dir = restart.parent.parent
        env, eval_env = make_env(cfg, sharded=sharded), make_eval_env(cfg, sharded=sharded)
        trainer = make_trainer(cfg, env, run_dir=run_dir, eval_env=eval_env, logger=cfg.logger)
        if distributed.is_main():
            write_config(cfg, run_dir)
        train_or_resume(cfg, trainer, restart)
        return finish_run(cfg, run_dir, eval_env, trainer.actor, trainer.env_steps, trainer.wall_time, algo_name=trainer.name,
                          stochastic=trainer.stochastic_policy)
    finally:
        distributed.shutdown()


def recipe_run(make_trainer: MakeTrainer) -> Callable[[DictConfig, str | Path], dict]:
    """The ``run(cfg, run_dir) -> eval summary`` of the recipe whose modules, loss and trainer ``make_trainer`` wires.

    Under ``torchrun`` an exception in any rank is recorded for the launcher (``record``), which stops the other ranks and
    prints the failed rank and its message.
    """
    @record
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
def elastic_restart_checkpoint(run_dir: Path) -> Path | None:
    """Under ``torchrun``, the checkpoint an elastic restart resumes from (None on a first attempt, outside torchrun, or
    when the first attempt wrote no checkpoint).

    The first attempt's rank 0 records its run directory in ``.torchrun-<run id>`` beside it (``torchrun`` gives every
    attempt of one job the same run id); a restarted attempt, whose Hydra directory is new, continues in the recorded
    directory from its ``checkpoints/last.pt``. The same answer on every rank.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    pointer = run_dir.parent / f".torchrun-{run_id}"
    found = None
    if distributed.is_main():
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and pointer.is_file():
            ckpt = Path(pointer.read_text().strip()) / "checkpoints" / "last.pt"
            found = str(ckpt) if ckpt.is_file() else None
        else:
            atomic_write_text(pointer, str(run_dir))
    found = distributed.broadcast_object(found)
    return None if found is None else Path(found)


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
