"""The first-order training loop (SAPO Algorithm 1; also SHAC, APG, TrajOpt).

One iteration = one window of H steps in N parallel envs:

1. ``loss(state)`` rolls the env out with the graph and returns the actor loss (and SAPO's
   temperature loss); backward, a non-finite guard, gradient-norm clipping, optimizer step.
2. The window's observations update the running observation normalizer (after backward).
3. Losses with a critic: K mini-epochs over the window's (s_t, target_t) pairs in
   ``critic_minibatches`` minibatches; then the target critic update if there is one.
4. Learning rates decay linearly; evaluation, logging and checkpoints every so often.

Checkpoints hold everything the next iteration reads (networks, optimizers, the env
state the next window starts from, the env's and the trainer's random generators, the
episode-return trackers), so a resumed run computes the same next losses bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from tqdm.auto import tqdm

from rl.modules.normalizer import ObservationNormalizer
from rl.objectives.common import FirstOrderLoss
from rl.trainers.checkpoint import env_generator_state, load_checkpoint, restore_env_generator, save_checkpoint
from rl.trainers.episodes import track_episode_returns
from rl.trainers.evaluation import evaluate
from rl.trainers.guard import Snapshot, StallMonitor, describe, nonfinite_state
from rl.trainers.logging import RunLogger, progress_postfix

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
NONFINITE_POLICIES = ("stop", "skip")
log = logging.getLogger("rl.trainers")


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None) -> float:
    """Scale gradients in place to total norm <= ``max_norm`` (None: only measure); returns the norm before.

    The norm is accumulated in float64: gradients through long stiff rollouts can be finite in float32
    yet have a float32 norm of inf (elements above ~1e19), where ``clip_grad_norm_`` would zero them
    instead of rescaling.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.stack([g.detach().double().norm() for g in grads]).norm().item()
    if max_norm is not None and norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


class NonFiniteError(FloatingPointError):
    """Training met a NaN/inf loss, gradient or simulator state and was configured to stop."""


@dataclass
class TrainerConfig:
    """Hyper-parameters of the loop (defaults: SAPO's column of table 2)."""

    total_steps: int = 1_000_000
    actor_lr: float = 2e-3
    critic_lr: float = 5e-4
    alpha_lr: float = 5e-3
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.7, 0.95)
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    lr_end: float = 1e-5
    grad_clip: float | None = 0.5
    critic_iterations: int = 16
    critic_minibatches: int = 4
    eval_every: int = 50
    eval_episodes: int = 64
    checkpoint_every: int = 50
    log_every: int = 1
    on_nonfinite: str = "stop"
    max_skips: int = 10
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: linear, constant")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"unknown on_nonfinite {self.on_nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.critic_iterations < 0 or self.critic_minibatches < 1:
            raise ValueError("critic_iterations must be >= 0 and critic_minibatches >= 1")
        self.betas = tuple(self.betas)


class FirstOrderTrainer:
    """Trains ``loss.actor`` (and ``loss.critic``) on ``loss.env``; see the module docstring.

    Args:
        loss: a ``FirstOrderLoss`` (APG, SHAC, SAPO, TrajOpt).
        config: ``TrainerConfig``.
        run_dir: where ``metrics.jsonl``, ``logs/`` and ``checkpoints/`` go (None: nowhere).
        eval_env: env for periodic evaluation (None: no periodic evaluation).
        normalizer: the observation normalizer shared by actor and critic, updated per window.
        logger: "csv", "tensorboard" or "none".
    """

    def __init__(self, loss: FirstOrderLoss, config: TrainerConfig, run_dir: str | Path | None = None,
                 eval_env=None, normalizer: ObservationNormalizer | None = None, logger: str = "csv"):
        self.loss, self.cfg = loss, config
        self.env = loss.env
        self.eval_env = eval_env
        self.normalizer = normalizer
        self.num_envs = int(self.env.batch_size.numel())
        self.steps_per_iter = self.num_envs * loss.horizon
        self.iterations = math.ceil(config.total_steps / self.steps_per_iter)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.logger = RunLogger(self.run_dir, logger) if self.run_dir is not None else None
        opt = OPTIMIZERS[config.optimizer]
        kw = dict(betas=config.betas, weight_decay=config.weight_decay)
        self.actor_params = [p for p in loss.actor.parameters() if p.requires_grad]
        self.actor_opt = opt(self.actor_params, lr=config.actor_lr, **kw)
        self.critic_opt = None
        if loss.has_critic:
            self.critic_opt = opt([p for p in loss.critic.parameters() if p.requires_grad], lr=config.critic_lr, **kw)
        self.alpha_opt = opt([loss.log_alpha], lr=config.alpha_lr, **kw) if hasattr(loss, "log_alpha") else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.skips = 0
        self.state: TensorDictBase | None = None
        self.running_return = torch.zeros(self.num_envs, dtype=torch.float64)
        self.recent_returns: list[float] = []
        self.last_eval: dict | None = None
        self.stall = StallMonitor()

    # ------------------------------------------------------------------ schedule
    def learning_rates(self, iteration: int) -> dict[str, float]:
        frac = min(iteration / max(self.iterations, 1), 1.0) if self.cfg.lr_schedule == "linear" else 0.0
        def decay(lr):
            return lr + frac * (min(self.cfg.lr_end, lr) - lr)
        return {"actor": decay(self.cfg.actor_lr), "critic": decay(self.cfg.critic_lr), "alpha": decay(self.cfg.alpha_lr)}

    def _set_lrs(self) -> dict[str, float]:
        lrs = self.learning_rates(self.iteration)
        for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt), ("alpha", self.alpha_opt)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lrs[name]
        return lrs

    # ------------------------------------------------------------------ one iteration
    def reset_env(self) -> None:
        self.state = self.env.reset()
        self.running_return.zero_()

    def step(self) -> dict[str, float]:
        """One window: actor (and alpha) step, normalizer update, critic mini-epochs. Returns scalars."""
        if self.state is None:
            self.reset_env()
        lrs = self._set_lrs()
        snapshot = self._snapshot() if self.cfg.on_nonfinite == "skip" else None
        self.actor_opt.zero_grad(set_to_none=True)
        if self.alpha_opt is not None:
            self.alpha_opt.zero_grad(set_to_none=True)
        try:
            out = self.loss(self.state)
            actor_objective = out["loss_actor"] + (out["loss_alpha"] if "loss_alpha" in out.keys() else 0.0)
            actor_objective.backward()
        except FloatingPointError as err:  # the env's NaN/inf state or action check
            return self._nonfinite(f"simulator: {err}")
        bad = self._nonfinite_report(out)
        if bad:
            return self._nonfinite(bad)
        grad_norm = self._clip(self.actor_params)
        self.actor_opt.step()
        if self.alpha_opt is not None:
            self.alpha_opt.step()
        if self.normalizer is not None and "critic_batch" in out.keys():
            self.normalizer.update(out["critic_batch", "observation"])
        elif self.normalizer is not None:
            self.normalizer.update(self.state["observation"])
        critic_loss = self._train_critic(out["critic_batch"]) if self.critic_opt is not None else float("nan")
        if hasattr(self.loss, "update_target"):
            self.loss.update_target()
        bad = self.nonfinite_parameters()
        if bad:
            if snapshot is not None:
                snapshot.restore()
            return self._nonfinite(f"non-finite parameters or optimizer state after the update: {describe(bad)}")
        self.state = out["next_state"]
        self._track_returns(out["window"])
        self.iteration += 1
        self.env_steps += self.steps_per_iter
        scalars = {
            "loss/actor": out["loss_actor"].item(), "loss/critic": critic_loss, "grad_norm/actor": grad_norm,
            "lr/actor": lrs["actor"], "train/window_reward": out["window", "reward"].mean().item(),
        }
        for key in ("alpha", "entropy"):
            if key in out.keys():
                scalars[f"sapo/{key}"] = out[key].item()
        if self.recent_returns:
            scalars["train/episode_return"] = sum(self.recent_returns[-100:]) / len(self.recent_returns[-100:])
        self._watch_stall(scalars)
        return scalars

    # ------------------------------------------------------------------ guards
    def guarded(self) -> tuple[dict, dict]:
        """``(modules, optimizers)`` whose tensors must stay finite after every update."""
        modules = {"actor": self.loss.actor, "critic": getattr(self.loss, "critic", None),
                   "critic_target": getattr(self.loss, "critic_target", None), "log_alpha": getattr(self.loss, "log_alpha", None)}
        optimizers = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}
        return modules, optimizers

    def nonfinite_parameters(self) -> list[str]:
        return nonfinite_state(*self.guarded())

    def _snapshot(self) -> Snapshot:
        return Snapshot({"loss": self.loss, **self.guarded()[1]})

    def _watch_stall(self, scalars: dict[str, float]) -> None:
        warning = self.stall.update(scalars.get("grad_norm/actor"), scalars.get("loss/actor"))
        if warning:
            log.warning("%s at iteration %d (env steps %d)", warning, self.iteration, self.env_steps)
            tqdm.write(f"warning: {warning} at iteration {self.iteration} (env steps {self.env_steps})")
        if self.stall.stalled:
            scalars["warn/stalled"] = 1.0

    def _nonfinite_report(self, out: TensorDict) -> str:
        problems = []
        for key in ("loss_actor", "loss_alpha"):
            if key in out.keys() and not torch.isfinite(out[key]).all():
                problems.append(f"{key} = {out[key].item()}")
        named = list(self.loss.actor.named_parameters())
        if hasattr(self.loss, "log_alpha"):
            named.append(("log_alpha", self.loss.log_alpha))
        bad = [name for name, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            problems.append(f"non-finite gradient in actor parameters {bad[:8]}" + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""))
        return "; ".join(problems)

    def _nonfinite(self, what: str) -> dict[str, float]:
        where = f"iteration {self.iteration} (env steps {self.env_steps})"
        if self.cfg.on_nonfinite == "stop" or self.skips >= self.cfg.max_skips:
            extra = "" if self.cfg.on_nonfinite == "stop" else f" after {self.skips} skipped windows (max_skips)"
            raise NonFiniteError(f"non-finite values at {where}{extra}: {what}")
        self.skips += 1
        tqdm.write(f"[skip {self.skips}/{self.cfg.max_skips}] non-finite values at {where}: {what}; window dropped, envs reset")
        self.actor_opt.zero_grad(set_to_none=True)
        if self.alpha_opt is not None:
            self.alpha_opt.zero_grad(set_to_none=True)
        self.reset_env()
        return {"train/skipped": float(self.skips)}

    def _clip(self, params: list[nn.Parameter]) -> float:
        return clip_grad_norm(params, self.cfg.grad_clip)

    def _train_critic(self, batch: TensorDictBase) -> float:
        size = batch.shape[0]
        per = math.ceil(size / self.cfg.critic_minibatches)
        params = [p for p in self.loss.critic.parameters() if p.requires_grad]
        last = float("nan")
        for _ in range(self.cfg.critic_iterations):
            order = torch.randperm(size, generator=self.generator)
            for start in range(0, size, per):
                mb = batch[order[start:start + per]]
                self.critic_opt.zero_grad(set_to_none=True)
                loss = self.loss.critic_loss(mb)["loss_critic"]
                if not torch.isfinite(loss):
                    return self._critic_nonfinite(loss)
                loss.backward()
                self._clip(params)
                self.critic_opt.step()
                last = loss.item()
        return last

    def _critic_nonfinite(self, loss) -> float:
        msg = f"critic loss {loss.item()} at iteration {self.iteration} (env steps {self.env_steps})"
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(f"non-finite values: {msg}")
        tqdm.write(f"non-finite {msg}; critic update skipped")
        self.critic_opt.zero_grad(set_to_none=True)
        return float("nan")

    def _track_returns(self, window: TensorDictBase) -> None:
        self.recent_returns = track_episode_returns(self.running_return, self.recent_returns, window["reward"].double(), window["done"])

    # ------------------------------------------------------------------ outer loop
    def evaluate(self, episodes: int | None = None, deterministic: bool = True):
        env = self.eval_env if self.eval_env is not None else self.env
        return evaluate(env, self.loss.actor, episodes or self.cfg.eval_episodes, deterministic=deterministic)

    def train(self, iterations: int | None = None) -> None:
        """Run until ``total_steps`` (or ``iterations`` more windows), with progress bar, logs and checkpoints."""
        stop = self.iterations if iterations is None else min(self.iterations, self.iteration + iterations)
        bar = tqdm(total=self.iterations * self.steps_per_iter, initial=self.env_steps, unit="step", unit_scale=True,
                   disable=not self.cfg.progress, dynamic_ncols=True, desc=type(self.loss).__name__.replace("Loss", ""),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        start = time.perf_counter() - self.wall_time
        steps_at, time_at = self.env_steps, time.perf_counter()
        while self.iteration < stop:
            scalars = self.step()
            self.wall_time = time.perf_counter() - start
            bar.update(self.env_steps - bar.n)
            now = time.perf_counter()
            rate = (self.env_steps - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = self.env_steps, now
            if self.cfg.eval_every and self.eval_env is not None and (self.iteration % self.cfg.eval_every == 0 or self.iteration == stop):
                res = self.evaluate()
                self.last_eval = {"eval/return": res.mean, "eval/return_ci95": res.ci95}
                scalars.update(self.last_eval)
            bar.set_postfix(progress_postfix(scalars, rate, self.last_eval, self.stall.reason if self.stall.stalled else None),
                            refresh=False)
            if self.logger is not None and (self.iteration % self.cfg.log_every == 0 or "eval/return" in scalars):
                self.logger.log(self.env_steps, **scalars, **{"time/wall": self.wall_time, "time/steps_per_s": rate})
            if self.run_dir is not None and self.cfg.checkpoint_every and (
                self.iteration % self.cfg.checkpoint_every == 0 or self.iteration == self.iterations
            ):
                self.save(self.run_dir / "checkpoints" / "last.pt")
        bar.close()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "loss": self.loss.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": None if self.critic_opt is None else self.critic_opt.state_dict(),
            "alpha_opt": None if self.alpha_opt is None else self.alpha_opt.state_dict(),
            "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "env_generator": env_generator_state(self.env),
            "eval_env_generator": env_generator_state(self.eval_env),
            "env_state": None if self.state is None else self.state.to_dict(),
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps, "wall_time": self.wall_time, "skips": self.skips},
            "running_return": self.running_return.clone(),
            "recent_returns": list(self.recent_returns),
            "last_eval": self.last_eval,
            "stall": self.stall.state_dict(),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        for name in ("critic_opt", "alpha_opt"):
            if getattr(self, name) is not None and state[name] is not None:
                getattr(self, name).load_state_dict(state[name])
        if self.normalizer is not None and state["normalizer"] is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        restore_env_generator(self.env, state["env_generator"])
        restore_env_generator(self.eval_env, state.get("eval_env_generator"))
        if state["env_state"] is not None:
            self.state = TensorDict(state["env_state"], batch_size=self.env.batch_size, device=self.env.device)
        counters = state["counters"]
        self.iteration, self.env_steps = counters["iteration"], counters["env_steps"]
        self.wall_time, self.skips = counters["wall_time"], counters["skips"]
        self.running_return = state["running_return"].clone()
        self.recent_returns = list(state["recent_returns"])
        self.last_eval = state["last_eval"]
        self.stall.load_state_dict(state.get("stall"))

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint and drop log records written after it (they will be re-logged)."""
        self.load_state_dict(load_checkpoint(path))
        if self.logger is not None:
            self.logger.truncate_after(self.env_steps)
