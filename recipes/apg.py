"""APG / BPTT: the discounted H-step return back-propagated through the simulator (Freeman et al. 2021).

    python recipes/apg.py env=rope
    python recipes/apg.py env=pendulum2d env.goal=stop_at_origin algo.horizon=16 algo.grad_clip=null
    python recipes/apg.py resume=runs/apg/<run>      # continue a run from its last checkpoint

No critic: one actor step per window of H steps in each env, the discount restarting at episode ends.
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.builders import gaussian_actor, observation_normalizer
from rl.cli import recipe_main
from rl.experiment import recipe_run
from rl.objectives import APGLoss
from rl.trainers import FirstOrderTrainer, TrainerConfig


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> FirstOrderTrainer:
    """APG on ``env``: a squashed-Gaussian actor and its optimizer, nothing else."""
    normalizer = observation_normalizer(cfg, env)
    actor = gaussian_actor(cfg, env, normalizer)
    loss = APGLoss(env, actor, cfg.algo.horizon, cfg.algo.gamma)
    return FirstOrderTrainer(loss, TrainerConfig.from_config(cfg), normalizer=normalizer, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("apg", run)
