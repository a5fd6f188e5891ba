"""SAPO: maximum-entropy first-order actor-critic (SAPO paper, appendix B).

    python recipes/sapo.py env=rope
    python recipes/sapo.py env=pendulum2d env.goal=stop_at_origin seed=3 algo.horizon=16 algo.init_alpha=0.5
    python recipes/sapo.py resume=runs/sapo/<run>      # continue a run from its last checkpoint, with its own config

The run (``rl.experiment.run_experiment``) checks the config, seeds, makes the envs, calls ``make_trainer``,
trains, and writes config.yaml, metrics.jsonl, checkpoints/, curve.png, eval.json and policy.gif.
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.builders import gaussian_actor, observation_normalizer, value_ensemble
from rl.cli import recipe_main
from rl.experiment import recipe_run
from rl.objectives import SAPOLoss
from rl.trainers import FirstOrderTrainer, TrainerConfig


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> FirstOrderTrainer:
    """SAPO on ``env``; ``outputs`` (run_dir, eval_env, logger) say where the trainer logs and evaluates."""
    algo = cfg.algo
    # modules: a squashed-Gaussian actor with state-dependent std and C = 2 critics, sharing one observation normalizer
    normalizer = observation_normalizer(cfg, env)
    actor = gaussian_actor(cfg, env, normalizer)
    critic = value_ensemble(cfg, env, normalizer)
    # loss: soft H-step returns through the simulator (Eq. 8-10), the temperature's loss (Eq. 21), TD(lambda) targets
    loss = SAPOLoss(env, actor, critic, algo.horizon, algo.gamma, algo.lmbda, target_entropy=algo.target_entropy,
                    init_alpha=algo.init_alpha)
    # trainer: per window, the actor and temperature step, then the critics' mini-epochs; no target critic
    return FirstOrderTrainer(loss, TrainerConfig.from_config(cfg), normalizer=normalizer, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("sapo", run)
