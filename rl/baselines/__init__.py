"""Zeroth-order (model-free) baselines built from TorchRL's own components: PPO and SAC.

Both use TorchRL's ``Collector`` on our batch-locked envs, a ``ProbabilisticActor`` with a
``TanhNormal`` over an ``rl.modules.MLP`` (LayerNorm + activation) whose head gives the
Gaussian location and a state-dependent, smoothly bounded scale, TorchRL losses
(``ClipPPOLoss`` + ``GAE``; ``SACLoss`` + ``SoftUpdate``) and TorchRL replay buffers.

    from rl.baselines.ppo import run_ppo        # or: from rl.baselines import run_ppo, run_sac
    summary = run_ppo(cfg, run_dir)             # cfg: recipes/config/ppo.yaml

``common.py`` holds what the two share: the networks (``NormalizedMLP``, ``BoundedNormalParams``,
``make_actor``) and the outer loop (``BaselineTrainer``: collector iteration, episode-return
tracking, progress bar, ``RunLogger`` logging, periodic evaluation, atomic checkpoints and
resume, the non-finite guard). ``ppo.py`` and ``sac.py`` add the loss and the update.

Observation normalization: TorchRL's ``VecNorm`` updates in place inside the forward pass;
we use ``rl.modules.ObservationNormalizer`` inside the networks instead, updated out of place
(no grad) from each collected batch, after that batch's gradient updates. It is held by
reference, NOT registered as a submodule: TorchRL losses take a functional copy of their
networks' parameters *and buffers* (stacked copies for SAC's Q ensemble), which would freeze
the statistics the losses see at their construction-time values.
"""

from rl.baselines.common import BaselineTrainer, BoundedNormalParams, NormalizedMLP, make_actor, make_optimizer, run_baseline
from rl.baselines.ppo import PPOTrainer, run_ppo
from rl.baselines.sac import SACTrainer, run_sac

__all__ = ["BaselineTrainer", "BoundedNormalParams", "NormalizedMLP", "PPOTrainer", "SACTrainer", "make_actor", "make_optimizer",
           "run_baseline", "run_ppo", "run_sac"]
