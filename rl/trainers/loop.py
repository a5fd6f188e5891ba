"""The one training loop under every algorithm: ``Trainer`` and its typed ``LoopConfig``.

A subclass implements ``step()``: one iteration (a first-order window, a PODS epoch, a PPO or a SAC
collector batch) -> its scalars. ``Trainer`` holds everything around it:

* optimizers: one per parameter group the loss declares (``loss.parameter_groups()``: actor, critic,
  temperature), each with its group's learning rate ``<group>_lr`` and the config's schedule;
  ``clip`` scales gradients with ``clip_grad_norm`` (the norm accumulated in float64);
* the non-finite guard: ``nonfinite(what)`` stops the run (``on_nonfinite=stop``) or counts a skip
  (``skip``, at most ``max_skips``); ``snapshot()`` and ``nonfinite_parameters()`` undo an update that
  left a weight or an optimizer moment non-finite;
* ``advance``: after an iteration, the counters, the episode returns and the stall monitor;
* ``train()``: progress bar, periodic evaluation, logging, checkpoints;
* checkpoints: networks, optimizers, counters, every random generator (torch's, the trainer's, the
  envs'), episode-return tracking and the stall monitor; a subclass adds its own state through
  ``extra_state`` / ``load_extra_state``, so a resumed run computes what the uninterrupted run
  computes, bit for bit on CPU;
* data parallelism (``rl.distributed``, under ``torchrun``): the env is this rank's shard of the global envs
  (``num_envs`` and ``steps_per_iter`` count all of them); ``reduce_gradients`` sums a group's gradients over ranks,
  ``fail_together`` turns one rank's failure into every rank's; episode returns and evaluation episodes are gathered;
  rank 0 alone logs, shows progress and writes checkpoints (the envs' state gathered from every rank, so a checkpoint
  is the one a single process would write, and resumes at any world size that divides ``num_envs``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from rl import distributed
from rl.distributed import env_shard
from rl.modules.normalizer import ObservationNormalizer
from rl.trainers.checkpoint import env_generator_state, load_checkpoint, restore_env_generator, save_checkpoint
from rl.trainers.episodes import track_episode_returns
from rl.trainers.evaluation import evaluate
from rl.trainers.guard import Snapshot, StallMonitor, nonfinite_state
from rl.trainers.logging import RunLogger, progress_postfix

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
NONFINITE_POLICIES = ("stop", "skip")
GROUPS = ("actor", "critic", "alpha")  # the parameter groups a loss may declare, each with its <group>_lr
log = logging.getLogger("rl.trainers")
_MISSING = object()


def fusable(params: list[Tensor]) -> bool:
    """Whether torch's fused Adam/AdamW serves ``params``: floating-point tensors on one CPU or CUDA device."""
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def clip_grad_norm(params: list[Tensor], max_norm: float | None) -> float:
    """Scale gradients in place to total norm <= ``max_norm`` (None: only measure); returns the norm before.

    The norm is accumulated in float64: gradients through long stiff rollouts can be finite in float32
    yet have a float32 norm of inf (elements above ~1e19), where ``clip_grad_norm_`` would zero them
    instead of rescaling.
    """
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # one multi-tensor kernel per call (each tensor's norm in float64, as ``g.double().norm()`` computes it): the critic's
    # mini-epochs clip 64 times a window
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64))).item()
    if max_norm is not None and norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm


class NonFiniteError(FloatingPointError):
    """Training met a NaN/inf loss, gradient, weight or simulator state and was configured to stop."""


@dataclass
class LoopConfig:
    """What the loop reads (defaults: SAPO's column of table 2). ``from_config`` reads it off a recipe's config."""

    total_steps: int = 1_000_000
    # one optimizer per parameter group of the loss, each with its learning rate
    actor_lr: float = 2e-3
    critic_lr: float = 5e-4
    alpha_lr: float = 5e-3
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.7, 0.95)
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    lr_end: float = 1e-5
    grad_clip: float | None = 0.5
    # evaluation, logging, checkpoints and the non-finite guard
    eval_every: int = 50
    eval_episodes: int = 64
    checkpoint_every: int = 50
    log_every: int = 1
    on_nonfinite: str = "stop"
    max_skips: int = 10
    seed: int = 0
    progress: bool = True

    LR_SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "constant")
    # fields read from the run's top-level keys; every other field from the key of its name under ``algo``
    RUN_KEYS: ClassVar[dict[str, str]] = {
        "total_steps": "total_steps", "eval_every": "eval.every", "eval_episodes": "eval.episodes",
        "checkpoint_every": "checkpoint_every", "on_nonfinite": "on_nonfinite", "seed": "seed", "progress": "progress",
    }
    # the value of a field whose key an algorithm's config lacks (the part it does not have), where not the default
    ABSENT: ClassVar[dict[str, object]] = {"critic_lr": 0.0, "alpha_lr": 0.0}
    # the least value of integer fields (subclasses add theirs)
    MINIMUM: ClassVar[dict[str, int]] = {"total_steps": 1}

    def __post_init__(self):
        for name, least in self.MINIMUM.items():
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in self.LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(self.LR_SCHEDULES)}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"unknown on_nonfinite {self.on_nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_config(cls, cfg: DictConfig, **overrides):
        """The config of a recipe's ``cfg``: ``RUN_KEYS`` from the top level, the rest from ``cfg.algo``."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            value = OmegaConf.select(cfg, cls.RUN_KEYS.get(f.name, f"algo.{f.name}"), default=_MISSING)
            if value is not _MISSING:
                values[f.name] = _as_type(value, hints[f.name])
            elif f.name in cls.ABSENT:
                values[f.name] = cls.ABSENT[f.name]
        return cls(**{**values, **overrides})


def _as_type(value, hint):
    """``value`` (an OmegaConf leaf) as the field type ``hint`` (``2e6`` for an int field: 2000000)."""
    if value is None:
        return None
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    kinds = typing.get_args(hint) or (hint,)
    if bool in kinds:
        return bool(value)
    if int in kinds:
        return int(float(value))
    if float in kinds:
        return float(value)
    return value


class Trainer:
    """The loop around a subclass's ``step()``; see the module docstring.

    Args:
        loss: a ``Trainable`` loss (``parameter_groups()``, ``after_update()``).
        config: a ``LoopConfig`` (or a subclass with the algorithm's own settings).
        env: the training env; ``steps_per_iter``: env steps one iteration takes in it.
        run_dir: where ``metrics.jsonl``, ``logs/`` and ``checkpoints/`` go (None: nowhere).
        eval_env: env for periodic evaluation (None: no periodic evaluation).
        normalizer: the observation normalizer the networks share (checkpointed here).
        logger: "csv", "tensorboard" or "none".
    """

    name = "trainer"  # in progress bars, messages and checkpoints
    stochastic_policy = True  # the final evaluation also samples the policy's noise

    def __init__(self, loss: nn.Module, config: LoopConfig, env, steps_per_iter: int, run_dir: str | Path | None = None,
                 eval_env=None, normalizer: ObservationNormalizer | None = None, logger: str = "csv"):
        self.loss, self.cfg = loss, config
        self.env, self.eval_env, self.normalizer = env, eval_env, normalizer
        self.local_envs = int(env.batch_size.numel())
        self.env_shard = env_shard(env)  # this rank's envs of the global envs (all of them in one process)
        self.num_envs = self.env_shard.total
        self.local_steps_per_iter = int(steps_per_iter)  # the env steps of this rank's envs
        self.steps_per_iter = self.local_steps_per_iter * self.num_envs // self.local_envs
        self.iterations = math.ceil(config.total_steps / self.steps_per_iter)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.writes = distributed.is_main()  # the one rank that writes logs and checkpoints
        self.logger = RunLogger(self.run_dir, logger) if self.run_dir is not None and self.writes else None
        self.parameter_groups = loss.parameter_groups()
        unknown = set(self.parameter_groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"{type(loss).__name__} declares parameter groups {sorted(unknown)}; valid: {', '.join(GROUPS)}")
        opt = OPTIMIZERS[config.optimizer]
        # fused: one kernel per step for all of a group's tensors (3.5x faster than the per-tensor loop torch uses on
        # CPU for a critic ensemble; the same update to round-off)
        self.optimizers = {group: opt(params, lr=getattr(config, f"{group}_lr"), betas=config.betas,
                                      weight_decay=config.weight_decay, fused=fusable(params))
                           for group, params in self.parameter_groups.items()}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.skips = 0
        self.running_return = torch.zeros(self.num_envs, dtype=torch.float64)
        self.recent_returns: list[float] = []
        self.last_eval: dict | None = None
        self.stall = StallMonitor()

    # ------------------------------------------------------------------ what subclasses implement
    def step(self) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(): one iteration -> scalars")

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ the loss's parts
    @property
    def actor(self) -> nn.Module:
        """The policy: trained, evaluated and filmed."""
        return self.loss.actor

    @property
    def actor_opt(self) -> torch.optim.Optimizer:
        return self.optimizers["actor"]

    @property
    def critic_opt(self) -> torch.optim.Optimizer | None:
        return self.optimizers.get("critic")

    @property
    def alpha_opt(self) -> torch.optim.Optimizer | None:
        return self.optimizers.get("alpha")

    def named_parameters(self, *groups: str) -> list[tuple[str, Tensor]]:
        """``(name in the loss, parameter)`` of ``groups``' parameters, for messages."""
        names = {id(p): n for n, p in self.loss.named_parameters()}
        return [(names.get(id(p), f"{g}[{i}]"), p) for g in groups for i, p in enumerate(self.parameter_groups.get(g, ()))]

    # ------------------------------------------------------------------ learning rates and gradients
    def learning_rates(self, iteration: int) -> dict[str, float]:
        """Each group's rate at ``iteration``: constant, or linear from ``<group>_lr`` to ``lr_end`` over the run."""
        frac = min(iteration / max(self.iterations, 1), 1.0) if self.cfg.lr_schedule == "linear" else 0.0

        def decay(lr):
            return lr + frac * (min(self.cfg.lr_end, lr) - lr)
        return {group: decay(getattr(self.cfg, f"{group}_lr")) for group in GROUPS}

    def set_learning_rates(self) -> dict[str, float]:
        lrs = self.learning_rates(self.iteration)
        for group, opt in self.optimizers.items():
            for param_group in opt.param_groups:
                param_group["lr"] = lrs[group]
        return lrs

    def zero_grad(self, *groups: str) -> None:
        for group in groups:
            if group in self.optimizers:
                self.optimizers[group].zero_grad(set_to_none=True)

    def optimizer_step(self, *groups: str) -> None:
        for group in groups:
            if group in self.optimizers:
                self.optimizers[group].step()

    def reduce_gradients(self, *groups: str, extra: Tensor | None = None) -> Tensor | None:
        """Sum the gradients of ``groups`` over ranks (each rank's loss weighted by its share: the global loss's gradient);
        ``extra`` (a tensor of a few numbers, e.g. the weighted loss) is summed in the same message and returned."""
        return distributed.reduce_gradients([p for g in groups for p in self.parameter_groups.get(g, ())], extra)

    def fail_together(self, message: str | None) -> str | None:
        """Every rank's failure message joined (None when no rank failed); a collective under data parallelism, so every
        rank drops or stops together. One process: ``message``."""
        failed = distributed.failures(message)
        if not failed:
            return None
        if not distributed.is_distributed():
            return failed[0][1]
        return "; ".join(f"rank {r}: {m}" for r, m in failed)

    def clip(self, params: list[Tensor]) -> float:
        """``clip_grad_norm`` at the config's ``grad_clip``; returns the norm before clipping."""
        return clip_grad_norm(params, self.cfg.grad_clip)

    # ------------------------------------------------------------------ the non-finite guard
    def where(self) -> str:
        return f"iteration {self.iteration} (env steps {self.env_steps})"

    def nonfinite(self, what: str, consequence: str = "") -> None:
        """Raise ``NonFiniteError`` (``on_nonfinite=stop``, or ``max_skips`` reached); else count a skip and say so
        (``consequence``: what the caller drops)."""
        if self.cfg.on_nonfinite == "stop" or self.skips >= self.cfg.max_skips:
            extra = "" if self.cfg.on_nonfinite == "stop" else f" after {self.skips} skips (max_skips={self.cfg.max_skips})"
            raise NonFiniteError(f"{self.name}: non-finite values at {self.where()}{extra}: {what}")
        self.skips += 1
        tqdm.write(f"[skip {self.skips}/{self.cfg.max_skips}] {self.name}: non-finite values at {self.where()}: {what}"
                   + (f"; {consequence}" if consequence else ""))

    @staticmethod
    def nonfinite_report(losses: dict[str, Tensor], named_params: list[tuple[str, Tensor]]) -> str:
        """'' if every loss and every gradient is finite, else what is not."""
        problems = [f"{k} = {v.item()}" for k, v in losses.items() if not torch.isfinite(v).all()]
        bad = [n for n, p in named_params if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            problems.append(f"non-finite gradient in {bad[:8]}" + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""))
        return "; ".join(problems)

    def guarded(self) -> tuple[dict, dict]:
        """``(modules, optimizers)`` whose tensors must stay finite after every update."""
        return {"loss": self.loss}, {f"{group}_opt": opt for group, opt in self.optimizers.items()}

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_state(*self.guarded())

    def snapshot(self) -> Snapshot:
        """The loss, normalizer and optimizers as they are, to restore when an update is dropped."""
        return Snapshot({"loss": self.loss, "normalizer": self.normalizer, **self.guarded()[1]})

    # ------------------------------------------------------------------ bookkeeping of one iteration
    def track_returns(self, reward: Tensor, done: Tensor) -> None:
        """Fold ``reward [n, T]`` of this rank's envs into the running episode returns of all the envs; episodes that end
        (``done``) are recorded, in global env order."""
        reward, done = distributed.all_gather(reward), distributed.all_gather(done)
        self.recent_returns = track_episode_returns(self.running_return, self.recent_returns, reward, done)

    def advance(self, env_steps: int, scalars: dict[str, float]) -> dict[str, float]:
        """Count an iteration of ``env_steps`` steps; adds the recent episode return and the stall warning to ``scalars``."""
        self.iteration += 1
        self.env_steps += int(env_steps)
        if self.recent_returns:
            recent = self.recent_returns[-100:]
            scalars["train/episode_return"] = sum(recent) / len(recent)
        self.watch_stall(scalars)
        return scalars

    def watch_stall(self, scalars: dict[str, float]) -> None:
        warning = self.stall.update(scalars.get("grad_norm/actor"), scalars.get("loss/actor"))
        if warning:
            log.warning("%s: %s at %s", self.name, warning, self.where())
            tqdm.write(f"warning: {self.name}: {warning} at {self.where()}")
        if self.stall.stalled:
            scalars["warn/stalled"] = 1.0

    # ------------------------------------------------------------------ the loop
    def evaluate(self, episodes: int | None = None, deterministic: bool = True):
        env = self.eval_env if self.eval_env is not None else self.env
        return evaluate(env, self.actor, episodes or self.cfg.eval_episodes, deterministic=deterministic)

    def train(self, iterations: int | None = None) -> None:
        """Run until ``total_steps`` (or ``iterations`` more), with progress bar, evaluation, logs and checkpoints."""
        cfg = self.cfg
        stop = self.iterations if iterations is None else min(self.iterations, self.iteration + iterations)
        bar = tqdm(total=self.iterations * self.steps_per_iter, initial=self.env_steps, unit="step", unit_scale=True,
                   disable=not (cfg.progress and self.writes), dynamic_ncols=True, desc=self.name.upper(),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        start = time.perf_counter() - self.wall_time
        steps_at, time_at = self.env_steps, time.perf_counter()
        compiling = self.iteration < stop and bool(getattr(self.env, "compiled", False))
        if compiling and self.writes:
            cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default")  # set by the env (tphys.compiling)
            tqdm.write(f"{self.name}: the first iteration compiles the env's substep (torch.compile; Inductor cache "
                       f"{cache}, so later processes load it instead)")
        while self.iteration < stop:
            scalars = self.step()
            if compiling:
                compiling, scalars["time/warmup_s"] = False, time.perf_counter() - time_at
                if self.writes:
                    tqdm.write(f"{self.name}: warm-up {scalars['time/warmup_s']:.1f} s (the first iteration, compilation included)")
            self.wall_time = time.perf_counter() - start
            bar.update(self.env_steps - bar.n)
            now = time.perf_counter()
            rate = (self.env_steps - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = self.env_steps, now
            if cfg.eval_every and self.eval_env is not None and (self.iteration % cfg.eval_every == 0 or self.iteration == stop):
                res = self.evaluate()
                self.last_eval = {"eval/return": res.mean, "eval/return_ci95": res.ci95}
                scalars.update(self.last_eval)
            bar.set_postfix(progress_postfix(scalars, rate, self.last_eval, self.stall.reason if self.stall.stalled else None),
                            refresh=False)
            if self.logger is not None and (self.iteration % cfg.log_every == 0 or "eval/return" in scalars):
                self.logger.log(self.env_steps, **scalars, **{"time/wall": self.wall_time, "time/steps_per_s": rate})
            if self.run_dir is not None and cfg.checkpoint_every and (
                self.iteration % cfg.checkpoint_every == 0 or self.iteration == self.iterations
            ):
                self.save(self.run_dir / "checkpoints" / "last.pt")
        bar.close()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "algo": self.name,
            "loss": self.loss.state_dict(),
            "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
            **{f"{group}_opt": opt.state_dict() for group, opt in self.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "env_generator": env_generator_state(self.env),
            "eval_env_generator": env_generator_state(self.eval_env),
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps, "wall_time": self.wall_time, "skips": self.skips},
            "running_return": self.running_return.clone(),
            "recent_returns": list(self.recent_returns),
            "last_eval": self.last_eval,
            "stall": self.stall.state_dict(),
            "config": asdict(self.cfg),
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        algo = state.get("algo", self.name)
        if algo != self.name:
            raise ValueError(f"checkpoint is of algorithm {algo!r}, not {self.name!r}")
        self.loss.load_state_dict(state["loss"])
        if self.normalizer is not None and state["normalizer"] is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        for group, opt in self.optimizers.items():
            if state.get(f"{group}_opt") is not None:
                opt.load_state_dict(state[f"{group}_opt"])
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        counters = state["counters"]
        self.iteration, self.env_steps = counters["iteration"], counters["env_steps"]
        self.wall_time, self.skips = counters["wall_time"], counters["skips"]
        self.running_return = state["running_return"].clone()
        self.recent_returns = list(state["recent_returns"])
        self.last_eval = state["last_eval"]
        self.stall.load_state_dict(state.get("stall"))
        self.load_extra_state(state)
        restore_env_generator(self.env, state["env_generator"])
        restore_env_generator(self.eval_env, state.get("eval_env_generator"))
        torch.set_rng_state(state["torch_rng"])

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (rank 0; under data parallelism every rank calls this: the envs' state is gathered)."""
        distributed.check_in_sync(self.loss, f"{self.name} at {self.where()}")
        state = self.state_dict()
        if self.writes:
            save_checkpoint(state, path)
        return Path(path)

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint and drop log records written after it (they will be re-logged)."""
        self.load_state_dict(load_checkpoint(path))
        if self.logger is not None:
            self.logger.truncate_after(self.env_steps)
