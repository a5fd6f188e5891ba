"""GPS: mirror-descent guided policy search with the simulator's own dynamics (the PODS paper's baseline).

    python recipes/gps.py env=pendulum2d env.goal=stop
    python recipes/gps.py env=rope3d algo.kl_step=0.5 num_envs=64 total_steps=2e5
    python recipes/gps.py resume=runs/gps/<run>      # continue a run from its last checkpoint

k = algo.rollouts_per_epoch initial states per iteration (null: num_envs), one episode each, in chunks of num_envs
envs; the envs need reward_residual (the PODS envs). algo.integrator sets env.options.integrator (as PODS's).
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.builders import deterministic_actor, observation_normalizer
from rl.cli import recipe_main
from rl.experiment import recipe_run, start_env_of
from rl.objectives import GPSLoss
from rl.trainers import GPSTrainer, PODSConfig


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> GPSTrainer:
    """GPS on ``env`` with PODS's deterministic tanh policy (the paper gives every algorithm the same network)."""
    algo = cfg.algo
    normalizer = observation_normalizer(cfg, env)
    actor = deterministic_actor(cfg, env, normalizer)
    # loss: c-step, time-varying linear-Gaussian controllers by LQR on the simulator's linearization under a KL
    # bound to the linearized policy; s-step, the policy regressed onto their mean actions, weighted by precision
    loss = GPSLoss(env, actor, kl_step=algo.kl_step, policy_std=algo.policy_std, iterations=algo.iterations,
                   backtracks=algo.backtracks)
    # trainer: per iteration, one c-step from k fresh initial states, then regression_steps optimizer steps
    # the k = algo.rollouts_per_epoch initial states of an epoch come from one env of k envs (the training env when
    # k = num_envs), then run in chunks of num_envs
    config = PODSConfig.from_config(cfg)
    start_env = start_env_of(cfg, env, config.rollouts_per_epoch)
    return GPSTrainer(loss, config, normalizer=normalizer, start_env=start_env, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("gps", run)
