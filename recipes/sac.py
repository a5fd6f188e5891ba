"""SAC: the off-policy zeroth-order baseline of the SAPO paper's table 2, from TorchRL's components.

    python recipes/sac.py env=rope
    python recipes/sac.py env=pendulum2d seed=3 algo.updates_per_batch=4 algo.warmup_steps=8192
    python recipes/sac.py resume=runs/sac/<run>      # continue a run from its last checkpoint (and replay buffer)

Per collector batch: into the replay buffer, then updates_per_batch updates of actor, Q-nets and
temperature, each followed by the target Q-nets' Polyak update; see rl/baselines/sac.py.
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.baselines import SACBaselineLoss, SACConfig, SACTrainer, q_values, tanh_normal_actor
from rl.builders import observation_normalizer, sizes
from rl.cli import recipe_main
from rl.experiment import recipe_run


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> SACTrainer:
    """SAC on ``env``: a tanh-Gaussian actor and C independent Q-nets, with target entropy -dim(A)/2 by default."""
    algo = cfg.algo
    normalizer = observation_normalizer(cfg, env)
    actor = tanh_normal_actor(cfg, env, normalizer)
    qnets = q_values(cfg, env, normalizer)
    target_entropy = -sizes(env)[1] / 2 if algo.target_entropy is None else float(algo.target_entropy)
    loss = SACBaselineLoss(actor, qnets, gamma=algo.gamma, target_tau=algo.target_tau, loss_function=algo.loss_function,
                           alpha_init=float(algo.init_alpha), target_entropy=target_entropy)
    return SACTrainer(loss, env, SACConfig.from_config(cfg), normalizer=normalizer, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("sac", run)
