"""PPO: the zeroth-order baseline of the SAPO paper's table 2, from TorchRL's components.

    python recipes/ppo.py env=rope
    python recipes/ppo.py env=pendulum2d env.goal=stop_at_origin seed=3 algo.lr_schedule=constant
    python recipes/ppo.py resume=runs/ppo/<run>      # continue a run from its last checkpoint

TorchRL's Collector (under no_grad: no gradient through the simulator), ClipPPOLoss with GAE, and
rl_games' adaptive-KL learning rate; see rl/baselines/ppo.py.
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.baselines import PPOBaselineLoss, PPOConfig, PPOTrainer, state_value, tanh_normal_actor
from rl.builders import observation_normalizer
from rl.cli import recipe_main
from rl.experiment import recipe_run


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> PPOTrainer:
    """PPO on ``env``: a tanh-Gaussian actor and a state-value critic sharing one observation normalizer (held by
    reference, updated after each batch's gradient steps)."""
    algo = cfg.algo
    normalizer = observation_normalizer(cfg, env)
    actor = tanh_normal_actor(cfg, env, normalizer)
    critic = state_value(cfg, env, normalizer)
    loss = PPOBaselineLoss(actor, critic, gamma=algo.gamma, lmbda=algo.lmbda, entropy_coeff=algo.entropy_coeff,
                           clip_epsilon=float(algo.clip_epsilon), critic_coeff=float(algo.critic_coeff),
                           loss_critic_type=algo.loss_critic_type, normalize_advantage=bool(algo.normalize_advantage),
                           clip_value=None if algo.clip_value is None else float(algo.clip_value))
    return PPOTrainer(loss, env, PPOConfig.from_config(cfg), normalizer=normalizer, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("ppo", run)
