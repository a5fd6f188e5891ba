"""TrajOpt: one open-loop action sequence optimised through the simulator (SAPO paper, appendix E).

    python recipes/trajopt.py env=rope
    python recipes/trajopt.py env=pendulum2d env.goal=stop_at_origin seed=3 num_envs=64 total_steps=2e6 algo.horizon=16
    python recipes/trajopt.py resume=runs/trajopt/<run>      # continue a run from its last checkpoint

Writes config.yaml, metrics.jsonl, logs/, checkpoints/, curve.png, eval.json and policy.gif
into the run directory (printed at the end).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl.experiment import run_first_order


@hydra.main(config_path="config", config_name="trajopt", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_first_order(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
