"""TrajOpt: one open-loop action sequence optimised through the simulator (SAPO paper, appendix E).

    python recipes/trajopt.py env=rope
    python recipes/trajopt.py env=pendulum2d env.goal=stop_at_origin algo.epochs=100 num_envs=16
    python recipes/trajopt.py resume=runs/trajopt/<run>      # continue a run from its last checkpoint

A single T-step sequence of zero actions, shared by the N envs, optimised for ``algo.epochs`` passes
over the episode in windows of H steps (APG's loss with gamma 1, no network, no normalizer).
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.cli import recipe_main
from rl.distributed import env_shard
from rl.experiment import recipe_run
from rl.objectives import TrajOptLoss
from rl.trainers import FirstOrderTrainer, TrainerConfig


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> FirstOrderTrainer:
    """TrajOpt on ``env``; ``total_steps: null`` (the default) becomes epochs x episode length x N."""
    if cfg.total_steps is None:
        cfg.total_steps = int(cfg.algo.epochs) * int(env.horizon) * env_shard(env).total  # every rank's envs
    loss = TrajOptLoss(env, horizon=cfg.algo.horizon, gamma=cfg.algo.gamma)  # the sequence is the loss's own policy
    return FirstOrderTrainer(loss, TrainerConfig.from_config(cfg), **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("trajopt", run)
