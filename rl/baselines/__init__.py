"""Zeroth-order (model-free) baselines built from TorchRL's own components: PPO and SAC.

Both use TorchRL's ``Collector`` on our batch-locked envs (``rl.trainers.collector``), a
``ProbabilisticActor`` with a ``TanhNormal`` over an ``rl.modules.MLP`` (LayerNorm + activation)
whose head gives the Gaussian location and a state-dependent, smoothly bounded scale, TorchRL losses
(``ClipPPOLoss`` + ``GAE``; ``SACLoss`` + ``SoftUpdate``) and TorchRL replay buffers. The recipes
``recipes/ppo.py`` and ``recipes/sac.py`` wire them.

``networks.py`` holds the networks and their builders (``tanh_normal_actor``, ``state_value``,
``q_values``); ``ppo.py`` and ``sac.py`` each hold the loss (TorchRL's, declaring its parameter groups
and after-update step to the trainer), the typed config and the trainer's ``update(batch)``. The loop
around them (collector iteration, episode returns, progress bar, logging, evaluation, checkpoints and
resume, the non-finite guard) is ``rl.trainers``', shared with the first-order algorithms.

Observation normalization: TorchRL's ``VecNorm`` updates in place inside the forward pass;
we use ``rl.modules.ObservationNormalizer`` inside the networks instead, updated out of place
(no grad) from each collected batch, after that batch's gradient updates. It is held by
reference, NOT registered as a submodule: TorchRL losses take a functional copy of their
networks' parameters *and buffers* (stacked copies for SAC's Q ensemble), which would freeze
the statistics the losses see at their construction-time values.
"""

from rl.baselines.networks import BoundedNormalParams, NormalizedMLP, q_values, state_value, tanh_normal_actor
from rl.baselines.ppo import PPOBaselineLoss, PPOConfig, PPOTrainer
from rl.baselines.sac import SACBaselineLoss, SACConfig, SACTrainer

__all__ = ["BoundedNormalParams", "NormalizedMLP", "PPOBaselineLoss", "PPOConfig", "PPOTrainer", "SACBaselineLoss", "SACConfig",
           "SACTrainer", "q_values", "state_value", "tanh_normal_actor"]
