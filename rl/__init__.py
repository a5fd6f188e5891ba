"""rl: first-order model-based RL on tphys environments, written as TorchRL-style losses.

The algorithms (SAPO, SHAC, APG, PODS, TrajOpt) arrive with later issues; this package
exists now so that the install layout is final.
"""
