"""SAC (zeroth-order baseline from TorchRL components), table 2 of the SAPO paper.

    python recipes/sac.py env=rope
    python recipes/sac.py env=pendulum2d env.goal=stop_at_origin seed=3 total_steps=2e6
    python recipes/sac.py resume=runs/sac/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl.baselines.sac import run_sac


@hydra.main(config_path="config", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_sac(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
