"""The iteration of the zeroth-order baselines (PPO, SAC): one batch of TorchRL's ``Collector``.

Per iteration, ``num_envs x horizon`` frames are collected under no_grad (a simulator NaN/inf stops
the run, or with ``on_nonfinite=skip`` resets the envs and collects again), the finished episodes'
returns are recorded, the subclass's ``update(batch)`` takes the algorithm's gradient steps (undone
whole if it leaves a weight or an optimizer moment non-finite), and the batch's observations are
folded into the normalizer. Checkpoints add the collector's state and the envs' current state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from rl import distributed
from rl.distributed import gather_tree, sharded_noise, slice_tree
from rl.trainers.guard import describe
from rl.trainers.loop import LoopConfig, Trainer


@dataclass
class CollectorConfig(LoopConfig):
    """``LoopConfig`` and the collector's batch: ``horizon`` steps in each env."""

    horizon: int = 32

    MINIMUM: ClassVar[dict[str, int]] = {**LoopConfig.MINIMUM, "horizon": 1}


class CollectorTrainer(Trainer):
    """A ``Trainer`` whose ``step`` is one collector batch; subclasses implement ``update(batch) -> scalars``.

    Args:
        loss: a ``Trainable`` TorchRL loss (its actor is ``loss.actor_network``).
        env: the training env; ``config``: a ``CollectorConfig``.
        init_random_frames: frames of uniform random actions before the policy acts (SAC's warm-up).
        run_dir, eval_env, normalizer, logger: as ``Trainer``.
    """

    def __init__(self, loss: nn.Module, env: EnvBase, config: CollectorConfig, init_random_frames: int = 0, **outputs):
        super().__init__(loss, config, env, int(env.batch_size.numel()) * config.horizon, **outputs)
        with sharded_noise(self.env_shard):  # the collector runs the policy once to learn its outputs
            self.collector = Collector(env, self.actor, frames_per_batch=self.local_steps_per_iter,
                                       total_frames=self.iterations * self.local_steps_per_iter,
                                       init_random_frames=int(init_random_frames) or None, auto_register_policy_transforms=False)
        self.batches = None  # the collector's iterator, started by the first step

    @property
    def actor(self) -> nn.Module:
        return self.loss.actor_network

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement update(batch): one collected batch -> scalars")

    def step(self) -> dict[str, float]:
        batch = self.collect()
        self.track_returns(batch["next", "reward"].reshape(self.local_envs, -1).double(),
                           batch["next", "done"].reshape(self.local_envs, -1))
        snapshot = self.snapshot() if self.cfg.on_nonfinite == "skip" else None
        scalars = self.update(batch)
        bad = self.nonfinite_parameters()
        if bad:
            if snapshot is not None:
                snapshot.restore()
            self.nonfinite(f"non-finite parameters or optimizer state after the update: {describe(bad)}", "update undone")
            scalars = {"train/skipped": float(self.skips)}
        if self.normalizer is not None:
            self.normalizer.update(batch["observation"])
        self.collector.update_policy_weights_()
        scalars = self.advance(self.steps_per_iter, scalars)
        scalars["train/step_reward"] = batch["next", "reward"].mean().item()
        return distributed.mean_scalars(scalars, ("train/step_reward",))

    def collect(self) -> TensorDictBase:
        """The next batch; a simulator NaN/inf (FloatingPointError) stops or, with ``skip``, resets the envs.

        Iterates ``collector.iterator()`` rather than ``iter(collector)``: the latter shuts the
        collector down (closing the env) on any exception, which would make a skip impossible.
        """
        if self.batches is None:
            self.batches = self.collector.iterator()
        while True:
            failure = None
            try:
                with sharded_noise(self.env_shard):
                    batch = next(self.batches)
            except FloatingPointError as err:
                failure = f"simulator state during collection: {err}"
            failure = self.fail_together(failure)
            if failure is None:
                return batch
            else:
                self.nonfinite(failure, "envs reset, partial batch dropped")
                self.collector.reset()
                self.running_return.zero_()
                self.batches = self.collector.iterator()

    def extra_state(self) -> dict:
        """The collector's counters and the envs' current state, of all the global envs (every rank's gathered)."""
        carrier = getattr(self.collector, "_carrier", None)  # the envs' current state (TorchRL keeps it private)
        return {"collector": self.collector.state_dict(),
                "env_state": None if carrier is None else gather_tree(self.env, carrier.exclude("collector").to_dict())}

    def load_extra_state(self, state: dict) -> None:
        self.collector.load_state_dict(state["collector"])
        carrier = getattr(self.collector, "_carrier", None)
        if state["env_state"] is None:  # no saved env state: the envs start fresh episodes
            self.running_return.zero_()
        elif carrier is not None:
            mine = slice_tree(state["env_state"], self.env_shard)
            carrier.update(TensorDict(mine, batch_size=self.env.batch_size, device=self.env.device))
