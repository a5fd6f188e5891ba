"""A recipe's run, around the modules, loss and trainer the recipe wires: config checks, seeding, the
run directory, the envs, training or resuming, and the run's outputs. Shared by ``recipes/*.py``.

A run directory gets: ``config.yaml`` (resolved), ``metrics.jsonl`` and ``logs/`` (TorchRL
logger), ``checkpoints/last.pt``, ``curve.png``, ``eval.json`` and ``policy.gif``.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import EnvBase

import tphys.envs
from rl.builders import DTYPES
from rl.cli import ConfigError
from rl.trainers import Trainer, evaluate, plot_curves
from rl.trainers.checkpoint import atomic_write_text, checkpoint_file, load_checkpoint

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


# ---------------------------------------------------------------------- run directory and outputs
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


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class UniformRandomPolicy(torch.nn.Module):
    """Writes ``action`` uniform in the env's action box, drawn from its own generator seeded with ``seed`` (the same
    actions whatever ran before)."""

    def __init__(self, env: EnvBase, seed: int):
        super().__init__()
        self.low, self.high = env.action_spec.space.low, env.action_spec.space.high
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, td):
        u = torch.rand(self.low.shape, generator=self.generator, dtype=torch.float64).to(self.low.dtype)
        return td.set("action", self.low + (self.high - self.low) * u)


@torch.no_grad()
def random_policy_return(env: EnvBase, episodes: int, seed: int = 0):
    """Uniform random actions in the action box, scored as every policy is: one episode per env, ended at its
    first done (``evaluate``), from the same initial states when the caller reseeds ``env`` first."""
    return evaluate(env, UniformRandomPolicy(env, seed), episodes, deterministic=False)


def finish_run(cfg: DictConfig, run_dir: Path, eval_env: EnvBase, policy, env_steps: int, wall_time: float,
               algo_name: str | None = None, stochastic: bool = True) -> dict:
    """Write ``eval.json`` (final policy: deterministic, stochastic unless the policy has no noise,
    random policy, and the env's episode metrics), ``curve.png`` and the video."""
    episodes = int(cfg.eval.episodes)
    t0 = time.perf_counter()
    seed = int(cfg.seed) + 10_000
    eval_env.set_seed(seed)  # every evaluation starts from the same initial states
    det = evaluate(eval_env, policy, episodes, deterministic=True)
    sto = None
    if stochastic:
        eval_env.set_seed(seed)
        sto = evaluate(eval_env, policy, episodes, deterministic=False)
    eval_env.set_seed(seed)
    rnd = random_policy_return(eval_env, episodes, seed)
    summary = {
        "algo": algo_name or cfg.algo.name, "env": cfg.env.name, "goal": cfg.env.goal, "seed": int(cfg.seed),
        "env_steps": int(env_steps), "train_wall_time_s": round(float(wall_time), 2),
        "deterministic": det.to_dict(), "stochastic": None if sto is None else sto.to_dict(), "random_policy": rnd.to_dict(),
        "commit": git_commit(), "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if hasattr(eval_env, "episode_metrics"):
        eval_env.set_seed(seed)
        summary["metrics"] = {"deterministic": episode_metrics(eval_env, policy, episodes),
                              "random_policy": episode_metrics(eval_env, None, episodes, seed)}
    summary["eval_wall_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(run_dir / "eval.json", json.dumps(summary, indent=2))
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curve.png",
                title=f"{summary['algo']} on {cfg.env.name} ({cfg.env.goal}), seed {cfg.seed}")
    if cfg.video.enabled:
        write_policy_video(eval_env, policy, run_dir / f"policy.{cfg.video.format}", every=int(cfg.video.every))
    noisy = "" if sto is None else f"stochastic {sto.mean:.2f} ± {sto.ci95:.2f}, "
    print(f"eval over {episodes} episodes: deterministic {det.mean:.2f} ± {det.ci95:.2f}, {noisy}"
          f"random policy {rnd.mean:.2f} ± {rnd.ci95:.2f}")
    print(f"outputs in {run_dir}")
    return summary


@torch.no_grad()
def episode_metrics(env: EnvBase, policy, episodes: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and std over ``episodes`` of ``env.episode_metrics`` (deterministic policy; None: the uniform random policy
    of ``random_policy_return``, seeded with ``seed``)."""
    if policy is None:
        policy = UniformRandomPolicy(env, seed)
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    values: dict[str, list[torch.Tensor]] = {}
    count = 0
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while count < episodes:
            traj = env.rollout(int(env.horizon), policy, break_when_any_done=False)
            for name, value in env.episode_metrics(traj).items():
                values.setdefault(name, []).append(value.double())
            count += int(env.batch_size.numel())
    out = {}
    for name, chunks in values.items():
        v = torch.cat(chunks)[:episodes]
        out[name] = {"mean": v.mean().item(), "std": v.std().item() if v.numel() > 1 else 0.0}
    return out


@torch.no_grad()
def write_policy_video(env: EnvBase, policy, path: Path, every: int = 2) -> Path | None:
    """One deterministic episode of ``policy`` (env 0 of ``env``) as a GIF or MP4."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from tphys.render import mp4_available, save_rollout

    if path.suffix == ".mp4" and not mp4_available():
        print("MP4 needs imageio-ffmpeg; writing a GIF instead")
        path = path.with_suffix(".gif")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        traj = env.rollout(int(env.horizon), policy, break_when_any_done=False)
    return save_rollout(env, traj, path, env_index=0, every=every)
