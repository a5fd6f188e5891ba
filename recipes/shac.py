"""SHAC: short-horizon actor-critic through the simulator (Xu et al. 2021).

    python recipes/shac.py env=rope
    python recipes/shac.py env=pendulum2d env.goal=stop_at_origin seed=3 num_envs=64 total_steps=2e6 algo.horizon=16
    python recipes/shac.py resume=runs/shac/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

from rl.cli import recipe_main
from rl.experiment import run_first_order

if __name__ == "__main__":
    recipe_main("shac", run_first_order)
