"""SAC (zeroth-order baseline from TorchRL components), table 2 of the SAPO paper.

    python recipes/sac.py env=rope
    python recipes/sac.py env=pendulum2d env.goal=stop_at_origin seed=3 total_steps=2e6
    python recipes/sac.py resume=runs/sac/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

from rl.baselines.sac import run_sac
from rl.cli import recipe_main

if __name__ == "__main__":
    recipe_main("sac", run_sac)
