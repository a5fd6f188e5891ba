"""PODS: first- (algo.order=1) or second-order (algo.order=2) policy improvement through the simulator.

    python recipes/pods.py env=pendulum2d env.goal=stop
    python recipes/pods.py env=rope algo.order=1 num_envs=64 total_steps=2e5
    python recipes/pods.py resume=runs/pods/<run>      # continue a run from its last checkpoint

k = num_envs initial states per epoch, one episode each (env steps per epoch: k x episode length).
Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json (with the PODS
paper's metrics: final kinetic energy, distance to the target, handle speed) and policy.gif.
"""

from rl.cli import recipe_main
from rl.experiment import run_pods

if __name__ == "__main__":
    recipe_main("pods", run_pods)
