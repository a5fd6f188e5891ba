"""PODS: first- (algo.order=1) or second-order (algo.order=2) policy improvement through the simulator.

    python recipes/pods.py env=pendulum2d env.goal=stop
    python recipes/pods.py env=rope algo.order=1 num_envs=64 total_steps=2e5
    python recipes/pods.py env=pendulum2d env.goal=stop algo.rollouts_per_epoch=500 num_envs=64 algo.integrator=bdf2
    python recipes/pods.py resume=runs/pods/<run>      # continue a run from its last checkpoint

k = algo.rollouts_per_epoch initial states per epoch (null: num_envs), one episode each, simulated in chunks of
num_envs envs (env steps per epoch: k x episode length). algo.integrator sets the env's env.options.integrator
(recipes/config/pods.yaml): bdf2 is the paper's scheme.
eval.json also holds the PODS paper's metrics (final kinetic energy, distance to the target, handle speed).
"""

from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.builders import deterministic_actor, observation_normalizer
from rl.cli import recipe_main
from rl.experiment import recipe_run, start_env_of
from rl.objectives import PODSLoss
from rl.trainers import PODSConfig, PODSTrainer


def make_trainer(cfg: DictConfig, env: EnvBase, **outputs) -> PODSTrainer:
    """PODS on ``env`` with the deterministic tanh policy of its appendix A.3."""
    algo = cfg.algo
    normalizer = observation_normalizer(cfg, env)
    actor = deterministic_actor(cfg, env, normalizer)
    # loss: the policy's actions improved through the simulator under a monotone line search (section 3.3),
    # then regressed onto (Eq. 7); order 2 solves the Gauss-Newton system (Eq. 13-14) by conjugate gradients
    loss = PODSLoss(env, actor, order=algo.order, max_action_change=algo.max_action_change, newton_step_cap=algo.newton_step_cap,
                    line_search_trials=algo.line_search_trials, armijo=algo.armijo, cg_iterations=algo.cg_iterations,
                    cg_tol=algo.cg_tol, damping=algo.damping, gradient_fallback=algo.get("gradient_fallback", True))
    # trainer: per epoch, one improvement from k fresh initial states, then regression_steps optimizer steps
    # the k = algo.rollouts_per_epoch initial states of an epoch come from one env of k envs (the training env when
    # k = num_envs), then run in chunks of num_envs
    config = PODSConfig.from_config(cfg)
    start_env = start_env_of(cfg, env, config.rollouts_per_epoch)
    return PODSTrainer(loss, config, normalizer=normalizer, start_env=start_env, **outputs)


run = recipe_run(make_trainer)  # run(cfg, run_dir) -> the eval summary

if __name__ == "__main__":
    recipe_main("pods", run)
