"""PPO (zeroth-order baseline from TorchRL components), table 2 of the SAPO paper.

    python recipes/ppo.py env=rope
    python recipes/ppo.py env=pendulum2d env.goal=stop_at_origin seed=3 total_steps=2e6
    python recipes/ppo.py resume=runs/ppo/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

from rl.baselines.ppo import run_ppo
from rl.cli import recipe_main

if __name__ == "__main__":
    recipe_main("ppo", run_ppo)
