"""tphys: a PyTorch-native differentiable multiphysics simulator."""

__version__ = "0.1.0"
