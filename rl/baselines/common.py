"""What PPO and SAC share: networks (``NormalizedMLP``, ``BoundedNormalParams``, ``make_actor``) and the outer loop (``BaselineTrainer``).

See ``rl/baselines/__init__.py`` for the design notes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.modules import ProbabilisticActor, TanhNormal
from tqdm.auto import tqdm

from rl.experiment import finish_run, prepare_run, train_or_resume
from rl.modules import MLP, ObservationNormalizer
from rl.trainers import NonFiniteError, RunLogger, evaluate, load_checkpoint, save_checkpoint
from rl.trainers.checkpoint import env_generator_state, restore_env_generator
from rl.trainers.episodes import track_episode_returns
from rl.trainers.first_order import NONFINITE_POLICIES, OPTIMIZERS, clip_grad_norm
from rl.trainers.guard import Snapshot, StallMonitor, describe, nonfinite_state
from rl.trainers.logging import progress_postfix

MAX_SKIPS = 10
log = logging.getLogger("rl.trainers")

class NormalizedMLP(nn.Module):
    """``(obs [..., D], *extra [..., E]) -> [..., out]``: ``MLP(cat(normalizer(obs), *extra))``.

    The normalizer is shared by reference and deliberately not a submodule (see the module
    docstring); its statistics are checkpointed by the trainer.
    """

    def __init__(self, obs_dim: int, out_dim: int, hidden: Sequence[int], act: str = "silu", layer_norm: bool = True,
                 extra_dim: int = 0, out_gain: float = 1.0, normalizer: ObservationNormalizer | None = None):
        super().__init__()
        self.obs_dim = obs_dim
        self.mlp = MLP(obs_dim + extra_dim, out_dim, hidden, act, layer_norm, out_gain=out_gain)
        object.__setattr__(self, "normalizer", normalizer)  # bypass nn.Module registration on purpose

    def forward(self, obs: Tensor, *extra: Tensor) -> Tensor:
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        return self.mlp(torch.cat([obs, *extra], dim=-1) if extra else obs)


class BoundedNormalParams(nn.Module):
    """``[..., 2A] -> (loc [..., A], scale [..., A])`` with ``log scale`` smoothly bounded to ``[lo, hi]``.

    ``log_scale = lo + (hi - lo) * (tanh(raw) + 1) / 2`` (as ``rl.modules.SquashedGaussianActor``):
    a ``NormalParamExtractor`` whose scale is state dependent and bounded, never cutting the gradient.
    """

    def __init__(self, log_std_bounds: Sequence[float]):
        super().__init__()
        lo, hi = float(log_std_bounds[0]), float(log_std_bounds[1])
        if not lo < hi:
            raise ValueError(f"log_std_bounds must be (low, high) with low < high, got {tuple(log_std_bounds)}")
        self.lo, self.hi = lo, hi

    def forward(self, out: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        log_scale = self.lo + 0.5 * (self.hi - self.lo) * (torch.tanh(raw) + 1.0)
        return loc, log_scale.exp()


def make_actor(algo: DictConfig, obs_dim: int, action_dim: int, normalizer: ObservationNormalizer | None,
               dtype: torch.dtype) -> ProbabilisticActor:
    """``ProbabilisticActor`` writing ``loc``, ``scale``, ``action`` in (-1, 1) and ``action_log_prob``.

    Deterministic mode (``ExplorationType.DETERMINISTIC``) gives ``tanh(loc)``; random mode a sample.
    """
    net = nn.Sequential(
        NormalizedMLP(obs_dim, 2 * action_dim, tuple(algo.actor_hidden), algo.activation, bool(algo.layer_norm),
                      out_gain=0.01, normalizer=normalizer),
        BoundedNormalParams(tuple(algo.log_std_bounds)),
    ).to(dtype)
    params = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(params, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                              distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True)


def make_optimizer(algo: DictConfig, params, lr: float) -> torch.optim.Optimizer:
    if algo.optimizer not in OPTIMIZERS:
        raise ValueError(f"algo.optimizer: unknown optimizer {algo.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[algo.optimizer](list(params), lr=lr, betas=tuple(algo.betas), weight_decay=float(algo.weight_decay))


# ---------------------------------------------------------------------- the outer loop
class BaselineTrainer:
    """Collector iteration, logging, evaluation, checkpoints; subclasses implement ``update(batch)``.

    One iteration = one collector batch of ``num_envs x algo.horizon`` frames. Per iteration:
    track finished episodes' returns, ``update(batch)`` (the algorithm's gradient steps), fold
    the batch's observations into the normalizer, then evaluate / log / checkpoint as configured.
    Subclasses set ``self.actor``, ``self.loss``, ``self.normalizer`` before calling
    ``_start(...)`` and add their own state through ``extra_state`` / ``load_extra_state``.
    """

    name = "baseline"

    def _start(self, cfg: DictConfig, run_dir: str | Path, env: EnvBase, eval_env: EnvBase | None,
               init_random_frames: int = 0) -> None:
        if cfg.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite: unknown policy {cfg.on_nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}")
        self.cfg = cfg
        self.env, self.eval_env = env, eval_env
        self.num_envs = int(env.batch_size.numel())
        self.frames_per_batch = self.num_envs * int(cfg.algo.horizon)
        self.iterations = math.ceil(float(cfg.total_steps) / self.frames_per_batch)
        self.collector = Collector(env, self.actor, frames_per_batch=self.frames_per_batch,
                                   total_frames=self.iterations * self.frames_per_batch,
                                   init_random_frames=int(init_random_frames) or None,
                                   auto_register_policy_transforms=False)
        self.run_dir = Path(run_dir)
        self.logger = RunLogger(self.run_dir, cfg.logger)
        self.iteration = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.skips = 0
        self.running_return = torch.zeros(self.num_envs, dtype=torch.float64)
        self.recent_returns: list[float] = []
        self.last_eval: dict | None = None
        self.stall = StallMonitor()

    # ------------------------------------------------------------------ subclass hooks
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement update(batch): one collected batch -> scalars")

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ helpers for subclasses
    def where(self) -> str:
        return f"iteration {self.iteration} (env steps {self.env_steps})"

    def nonfinite(self, what: str) -> None:
        """Raise ``NonFiniteError`` (``on_nonfinite=stop``, or too many skips); else count a skip and return."""
        if self.cfg.on_nonfinite == "stop" or self.skips >= MAX_SKIPS:
            extra = "" if self.cfg.on_nonfinite == "stop" else f" after {self.skips} skips (max {MAX_SKIPS})"
            raise NonFiniteError(f"{self.name}: non-finite values at {self.where()}{extra}: {what}")
        self.skips += 1
        tqdm.write(f"[skip {self.skips}/{MAX_SKIPS}] {self.name}: non-finite values at {self.where()}: {what}")

    @staticmethod
    def nonfinite_report(losses: dict[str, Tensor], named_params: list[tuple[str, Tensor]]) -> str:
        """'' if every loss and gradient is finite, else what is not."""
        problems = [f"{k} = {v.item()}" for k, v in losses.items() if not torch.isfinite(v).all()]
        bad = [n for n, p in named_params if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            problems.append(f"non-finite gradient in {bad[:8]}" + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""))
        return "; ".join(problems)

    @staticmethod
    def clip(params: list[Tensor], max_norm: float | None) -> float:
        """The first-order trainers' clipping (norm accumulated in float64: ``clip_grad_norm_``'s float32 norm can be
        inf for finite gradients and would then zero them instead of rescaling)."""
        return clip_grad_norm(params, None if max_norm is None else float(max_norm))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {n: getattr(self, n) for n in ("actor_opt", "critic_opt", "alpha_opt") if getattr(self, n, None) is not None}

    def _watch_stall(self, scalars: dict[str, float]) -> None:
        warning = self.stall.update(scalars.get("grad_norm/actor"), scalars.get("loss/actor"))
        if warning:
            log.warning("%s: %s at %s", self.name, warning, self.where())
            tqdm.write(f"warning: {self.name}: {warning} at {self.where()}")
        if self.stall.stalled:
            scalars["warn/stalled"] = 1.0

    def _track_returns(self, batch: TensorDictBase) -> None:
        reward = batch["next", "reward"].reshape(self.num_envs, -1).double()
        done = batch["next", "done"].reshape(self.num_envs, -1)
        self.recent_returns = track_episode_returns(self.running_return, self.recent_returns, reward, done)

    # ------------------------------------------------------------------ the loop
    def _collect(self, iterator):
        """The next batch; a simulator NaN/inf (FloatingPointError) stops or, with ``skip``, resets the envs.

        Iterates ``collector.iterator()`` rather than ``iter(collector)``: the latter shuts the
        collector down (closing the env) on any exception, which would make a skip impossible.
        """
        while True:
            try:
                return next(iterator), iterator
            except FloatingPointError as err:
                self.nonfinite(f"simulator state during collection: {err}; envs reset, partial batch dropped")
                self.collector.reset()
                self.running_return.zero_()
                iterator = self.collector.iterator()

    def train(self) -> None:
        """Run until ``total_steps`` with progress bar, logs, periodic evaluation and checkpoints."""
        cfg = self.cfg
        eval_every, ckpt_every = int(cfg.eval.every), int(cfg.checkpoint_every)
        bar = tqdm(total=self.iterations * self.frames_per_batch, initial=self.env_steps, unit="step", unit_scale=True,
                   disable=not cfg.progress, dynamic_ncols=True, desc=self.name.upper(),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        start = time.perf_counter() - self.wall_time
        steps_at, time_at = self.env_steps, time.perf_counter()
        iterator = self.collector.iterator()
        while self.iteration < self.iterations:
            batch, iterator = self._collect(iterator)
            self._track_returns(batch)
            snapshot = Snapshot({"loss": self.loss, "normalizer": self.normalizer, **self.optimizers()}) \
                if cfg.on_nonfinite == "skip" else None
            scalars = self.update(batch)
            bad = nonfinite_state({"loss": self.loss}, self.optimizers())
            if bad:
                if snapshot is not None:
                    snapshot.restore()
                self.nonfinite(f"non-finite parameters or optimizer state after the update: {describe(bad)}; update undone")
                scalars = {"train/skipped": float(self.skips)}
            if self.normalizer is not None:
                self.normalizer.update(batch["observation"])
            self.collector.update_policy_weights_()
            self.iteration += 1
            self.env_steps += int(batch.numel())
            self.wall_time = time.perf_counter() - start
            now = time.perf_counter()
            rate = (self.env_steps - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = self.env_steps, now
            bar.update(self.env_steps - bar.n)
            if self.recent_returns:
                recent = self.recent_returns[-100:]
                scalars["train/episode_return"] = sum(recent) / len(recent)
            scalars["train/step_reward"] = batch["next", "reward"].mean().item()
            if self.eval_env is not None and eval_every and (self.iteration % eval_every == 0 or self.iteration == self.iterations):
                res = evaluate(self.eval_env, self.actor, int(cfg.eval.episodes), deterministic=True)
                self.last_eval = {"eval/return": res.mean, "eval/return_ci95": res.ci95}
                scalars.update(self.last_eval)
            self._watch_stall(scalars)
            bar.set_postfix(progress_postfix(scalars, rate, self.last_eval, self.stall.reason if self.stall.stalled else None),
                            refresh=False)
            self.logger.log(self.env_steps, **scalars, **{"time/wall": self.wall_time, "time/steps_per_s": rate})
            if ckpt_every and (self.iteration % ckpt_every == 0 or self.iteration == self.iterations):
                self.save(self.run_dir / "checkpoints" / "last.pt")
        bar.close()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        carrier = getattr(self.collector, "_carrier", None)  # the envs' current state (TorchRL keeps it private)
        return {
            "algo": self.name,
            "loss": self.loss.state_dict(),
            "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
            "collector": self.collector.state_dict(),
            "env_state": None if carrier is None else carrier.exclude("collector").to_dict(),
            "env_generator": env_generator_state(self.env),
            "eval_env_generator": env_generator_state(self.eval_env),
            "torch_rng": torch.get_rng_state(),
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps, "wall_time": self.wall_time, "skips": self.skips},
            "running_return": self.running_return.clone(),
            "recent_returns": list(self.recent_returns),
            "last_eval": self.last_eval,
            "stall": self.stall.state_dict(),
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("algo") != self.name:
            raise ValueError(f"checkpoint is of algorithm {state.get('algo')!r}, not {self.name!r}")
        self.loss.load_state_dict(state["loss"])
        if self.normalizer is not None and state["normalizer"] is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        self.collector.load_state_dict(state["collector"])
        carrier = getattr(self.collector, "_carrier", None)
        if carrier is not None and state["env_state"] is not None:
            carrier.update(TensorDict(state["env_state"], batch_size=self.env.batch_size, device=self.env.device))
        else:  # no saved env state: the envs start fresh episodes
            self.running_return.zero_()
        restore_env_generator(self.env, state["env_generator"])
        restore_env_generator(self.eval_env, state.get("eval_env_generator"))
        torch.set_rng_state(state["torch_rng"])
        counters = state["counters"]
        self.iteration, self.env_steps = counters["iteration"], counters["env_steps"]
        self.wall_time, self.skips = counters["wall_time"], counters["skips"]
        if state["env_state"] is not None:
            self.running_return = state["running_return"].clone()
        self.recent_returns = list(state["recent_returns"])
        self.last_eval = state["last_eval"]
        self.stall.load_state_dict(state.get("stall"))
        self.load_extra_state(state)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint and drop log records written after it (they will be re-logged)."""
        self.load_state_dict(load_checkpoint(path))
        self.logger.truncate_after(self.env_steps)


def run_baseline(cfg: DictConfig, run_dir: str | Path, trainer_cls: type[BaselineTrainer]) -> dict:
    """Check the config, train (or resume) ``trainer_cls``, then write every output of the run; returns the eval summary."""
    run_dir, env, eval_env = prepare_run(cfg, run_dir)
    trainer = trainer_cls(cfg, run_dir, env, eval_env)
    train_or_resume(cfg, trainer)
    return finish_run(cfg, run_dir, eval_env, trainer.actor, trainer.env_steps, trainer.wall_time, algo_name=trainer.name)
