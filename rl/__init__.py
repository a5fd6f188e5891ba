"""rl: first-order model-based RL on tphys environments (SAPO, SHAC, APG, PODS, TrajOpt, GPS), written as TorchRL-style
losses, with TorchRL's PPO and SAC as baselines."""
