"""The GPS iteration: one c-step from k fresh initial states, then the s-step's regression (``PODSTrainer``'s
epoch with ``rl.objectives.GPSLoss`` in place of PODS's improvement).

Env steps count the k·T steps of the policy episodes; ``time/sim_steps`` also counts, per linearization, its
rollout, one backward pass through the physics per state entry (the rows of the dynamics Jacobian) and the
new controller's rollout.

The observation normalizer is fixed after the first s-step (the statistics of the first c-step's trajectories, as
the GPS reference code normalizes once, "only at the beginning"): the c-step bounds the KL from the policy it
linearized, and a normalizer that kept running would change the policy between the c-step and the s-step, outside
that bound. On pendulum2d/stop (64 envs, float32) the running statistics moved the policy's actions by an RMS of
0.014-0.039 per iteration after the regression's targets had been fixed, and its deterministic evaluation return
fell from -20.1 to -33.8 to -53.5 over iterations 2-4 (from -19.3 to -18.9 to -8.6 with the statistics fixed).

The s-step is accepted only where the regressed policy's mean return from the iteration's initial states is at least
the policy's before (one more deterministic episode per initial state, counted in ``time/sim_steps``); otherwise the
actor and its optimizer go back and the KL multiplier halves: the next c-step asks a smaller move of the regression.
MDGPS's step-size rule measures the global policy's improvement for this; the c-step's rule (``GPSLoss``) sees only the
controllers', which the regression may not reproduce: on pendulum2d/stop with the statistics fixed (and 200 regression
steps), a c-step under a bound of 112 nats returned -11.8, and the policy regressed onto it fell from -21.7 to -28.5 in
evaluation.

With ``rollouts_per_epoch`` k above num_envs, the c-step runs chunk by chunk (``PODSTrainer.improve``); unlike
PODS's, GPS's chunks are not independent: the KL multiplier adapts after each chunk and each chunk's
precisions are normalized to a mean trace of A over that chunk. k = num_envs (the default) has one chunk.
For the same reason GPS does not run data parallel (``torchrun``): its step-size rule and precision normalization
average over the initial states a process holds, so ranks would drift apart; it refuses to start.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import Tensor

from rl import distributed
from rl.trainers.guard import Snapshot
from rl.trainers.pods import PODSTrainer


def chunk_mean(chunks, key: str) -> float:
    """The mean over the c-step's chunks of the scalar ``key``."""
    return sum(chunk[key].item() for chunk in chunks) / len(chunks)


def rms_action_error(actor, batch) -> float:
    """Root mean square over the ``batch``'s rows [B] of |π(observation) - target_action| (action units, unweighted)."""
    with torch.no_grad():
        predicted = actor(batch.select("observation").clone(False))["action"]
    return (predicted - batch["target_action"]).square().sum(-1).mean().sqrt().item()


class GPSTrainer(PODSTrainer):
    """Trains ``loss.actor`` by mirror-descent GPS (``rl.objectives.GPSLoss``) with ``PODSConfig``'s regression."""

    def __init__(self, *args, **kwargs):
        if distributed.is_distributed():
            raise NotImplementedError(f"GPS does not run data parallel ({distributed.world_size()} ranks): its KL step-size rule "
                                      "and precision normalization average over one process's initial states; run it in one "
                                      "process (several seeds: a Hydra sweep, -m seed=0,1,...)")
        super().__init__(*args, **kwargs)
        self.fit, self.start, self.value_before = {}, None, None

    @property
    def name(self) -> str:
        return "gps"

    def step(self) -> dict[str, float]:
        """``PODSTrainer.step``; after the first s-step without the normalizer's update (see the module docstring)."""
        normalizer = self.normalizer
        if normalizer is None or normalizer.count.item() == 0:
            return super().step()
        self.normalizer = None  # PODSTrainer.step folds the c-step's observations in only where there is a normalizer
        try:
            return super().step()
        finally:
            self.normalizer = normalizer

    def improve(self, start) -> tuple[TensorDict, list[TensorDict]]:
        """``PODSTrainer.improve``, keeping the initial states and the policy's returns from them for ``regress``."""
        improved, chunks = super().improve(start)
        self.start, self.value_before = start, improved["stats", "value_policy"]
        return improved, chunks

    def regress(self, batch) -> tuple[float, float, float]:
        """``PODSTrainer.regress``, then the s-step's acceptance test (see the module docstring): the regressed policy's
        mean return from this iteration's initial states against the policy's before; below it, the actor and its
        optimizer go back to where they were and the KL multiplier halves (``GPSLoss.shrink_step``). Notes the unweighted
        RMS action error to the c-step's targets before and after the regression."""
        before = rms_action_error(self.loss.actor, batch)
        saved = Snapshot({"actor": self.loss.actor, **self.guarded()[1]})
        first, last, grad_norm = super().regress(batch)
        if not math.isfinite(last):
            return first, last, grad_norm
        self.fit = {"gps/target_rms_before": before, "gps/target_rms_after": rms_action_error(self.loss.actor, batch)}
        value_after = self.policy_returns(self.start)
        accepted = bool(value_after.mean() >= self.value_before.mean())
        self.fit.update({"gps/policy_return_after": value_after.mean().item(), "gps/accepted": float(accepted)})
        if not accepted:
            saved.restore()
            self.loss.shrink_step()
        return first, last, grad_norm

    def policy_returns(self, start) -> Tensor:
        """[k] returns of the policy's deterministic episodes from the k states ``start``, in chunks of num_envs (the last
        padded as in ``PODSTrainer.improve``)."""
        values = []
        for begin in range(0, self.rollouts, self.chunk):
            part = start[begin:begin + self.chunk]
            size = part.shape[0]
            if size < self.chunk:
                part = torch.cat([part, part[torch.arange(self.chunk - size) % size]])
            values.append(self.loss.policy_episode(part)[1][:size])
        return torch.cat(values)

    def improvement_scalars(self, improved, chunks) -> dict[str, float]:
        """The c-step's diagnostics (``GPSLoss.improve``: over all k initial states; ``gps/eta``: the median, kept states'
        η = 1e16 included) and the s-step's fit (``regress``)."""
        stats = improved["stats"]
        return {
            "gps/improved_return": stats["value_improved"].mean().item(), "gps/kl": stats["kl"].mean().item(),
            "gps/kl_bound": stats["kl_bound"].mean().item(), "gps/eta": stats["eta"].median().item(),
            "gps/quu_min_eig": stats["quu_min_eig"].min().item(), "gps/kl_multiplier": self.loss.kl_multiplier.item(),
            "gps/improved_fraction": (stats["value_improved"] > stats["value_policy"]).double().mean().item(),
            **{f"gps/{key}": chunk_mean(chunks, key) for key in ("predicted_improvement", "actual_improvement", "weight_ess")},
            **self.fit,
        }

    def simulated_steps(self, chunk) -> int:
        per_linearization = 1 + int(chunk["state_dim"].item()) + 1  # rollout, Jacobian rows, controller rollout
        # the policy's episode, the linearizations, the regressed policy's episode (the acceptance test)
        return (2 + int(chunk["linearizations"].item()) * per_linearization) * self.chunk * self.loss.horizon
