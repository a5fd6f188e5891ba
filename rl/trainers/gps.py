"""The GPS iteration: one c-step from k fresh initial states, then the s-step's regression (``PODSTrainer``'s
epoch with ``rl.objectives.GPSLoss`` in place of PODS's improvement).

Env steps count the k·T steps of the policy episodes; ``time/sim_steps`` also counts, per linearization, its
rollout, one backward pass through the physics per state entry (the rows of the dynamics Jacobian) and the
new controller's rollout.

With ``rollouts_per_epoch`` k above num_envs, the c-step runs chunk by chunk (``PODSTrainer.improve``); unlike
PODS's, GPS's chunks are not independent: the KL multiplier adapts after each chunk and each chunk's
precisions are normalized to a mean trace of A over that chunk. k = num_envs (the default) has one chunk.
For the same reason GPS does not run data parallel (``torchrun``): its step-size rule and precision normalization
average over the initial states a process holds, so ranks would drift apart; it refuses to start.
"""

from __future__ import annotations

from rl import distributed
from rl.trainers.pods import PODSTrainer


class GPSTrainer(PODSTrainer):
    """Trains ``loss.actor`` by mirror-descent GPS (``rl.objectives.GPSLoss``) with ``PODSConfig``'s regression."""

    def __init__(self, *args, **kwargs):
        if distributed.is_distributed():
            raise NotImplementedError(f"GPS does not run data parallel ({distributed.world_size()} ranks): its KL step-size rule "
                                      "and precision normalization average over one process's initial states; run it in one "
                                      "process (several seeds: a Hydra sweep, -m seed=0,1,...)")
        super().__init__(*args, **kwargs)

    @property
    def name(self) -> str:
        return "gps"

    def improvement_scalars(self, improved, chunks) -> dict[str, float]:
        stats = improved["stats"]
        return {
            "gps/improved_return": stats["value_improved"].mean().item(), "gps/kl": stats["kl"].mean().item(),
            "gps/eta": stats["eta"].mean().item(), "gps/kl_multiplier": chunks[-1]["kl_multiplier"].item(),
            "gps/improved_fraction": (stats["value_improved"] > stats["value_policy"]).double().mean().item(),
        }

    def simulated_steps(self, chunk) -> int:
        per_linearization = 1 + int(chunk["state_dim"].item()) + 1  # rollout, Jacobian rows, controller rollout
        return (1 + int(chunk["linearizations"].item()) * per_linearization) * self.chunk * self.loss.horizon
