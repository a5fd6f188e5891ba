"""TrajOpt: one open-loop action sequence optimised through the simulator (SAPO paper, appendix E).

    python recipes/trajopt.py env=rope
    python recipes/trajopt.py env=pendulum2d env.goal=stop_at_origin seed=3 num_envs=64 total_steps=2e6 algo.horizon=16
    python recipes/trajopt.py resume=runs/trajopt/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

from rl.cli import recipe_main
from rl.experiment import run_first_order

if __name__ == "__main__":
    recipe_main("trajopt", run_first_order)
