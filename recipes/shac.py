"""SHAC: short-horizon actor-critic through the simulator (Xu et al. 2021).

    python recipes/shac.py env=rope
    python recipes/shac.py env=pendulum2d env.goal=stop_at_origin seed=3 algo.target_tau=null
    python recipes/shac.py resume=runs/shac/<run>      # continue a run from its last checkpoint

Per window: the actor's step on the H-step return bootstrapped by the target critic, the critic's
mini-epochs on TD(lambda) targets, then the target critic's Polyak update (``SHACLoss.after_update``).
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.builders import gaussian_actor, observation_normalizer, value_ensemble
from rl.cli import recipe_main
from rl.experiment import recipe_run
from rl.objectives import SHACLoss
from rl.trainers import FirstOrderTrainer, TrainerConfig


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> FirstOrderTrainer:
    """SHAC on ``env``: a squashed-Gaussian actor with a state-independent std, one critic and its target copy
    (``algo.target_tau``; null bootstraps from the critic itself)."""
    algo = cfg.algo
    normalizer = observation_normalizer(cfg, env)  # shared by the actor and the critic, updated once per window
    actor = gaussian_actor(cfg, env, normalizer)
    critic = value_ensemble(cfg, env, normalizer)
    loss = SHACLoss(env, actor, critic, algo.horizon, algo.gamma, algo.lmbda, algo.target_tau)
    return FirstOrderTrainer(loss, TrainerConfig.from_config(cfg), normalizer=normalizer, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("shac", run)
