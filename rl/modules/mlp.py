"""Multi-layer perceptron with LayerNorm, as SHAC and SAPO use (Linear -> LayerNorm -> activation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rl.modules.linear import Linear

ACTIVATIONS = {"silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def check_observations(who: str, obs: torch.Tensor, obs_dim: int, module: nn.Module) -> None:
    """Raise naming ``who`` where ``obs [..., D]`` does not fit ``module``: D other than ``obs_dim`` (ValueError), or a
    dtype or device other than its parameters' (TypeError, where torch's matmul would say 'mat1 and mat2 must have the
    same dtype')."""
    if obs.shape[-1] != obs_dim:
        raise ValueError(f"{who} expects observations [..., {obs_dim}], got shape {tuple(obs.shape)}")
    weight = next(module.parameters(), None)
    if weight is not None and (obs.dtype != weight.dtype or obs.device != weight.device):
        raise TypeError(f"{who}'s parameters are {weight.dtype} on {weight.device}, the observations {obs.dtype} on {obs.device}: "
                        f"build it in the env's dtype and device (module.to({obs.dtype}) / .to('{obs.device}'))")


def activation(name: str) -> type[nn.Module]:
    """The activation class called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return ACTIVATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]``: hidden blocks Linear -> LayerNorm -> act, then a Linear head.

    Args:
        in_dim, out_dim: input and output sizes.
        hidden: sizes of the hidden layers, e.g. (512, 256).
        act: "silu" (SAPO) or "elu" (SHAC, APG); also "relu", "tanh".
        layer_norm: put a LayerNorm after every hidden Linear (both papers do).
        out_gain: orthogonal-init gain of the output layer (small for policy heads).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 128), act: str = "silu",
                 layer_norm: bool = True, out_gain: float = 1.0):
        super().__init__()
        act_cls = activation(act)
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers.append(Linear(width, int(size)))
            if layer_norm:
                layers.append(nn.LayerNorm(int(size)))
            layers.append(act_cls())
            width = int(size)
        self.body = nn.Sequential(*layers)
        self.head = Linear(width, out_dim)
        for module in self.body:
            if isinstance(module, nn.Linear):  # rl.modules.linear.Linear is one
                nn.init.orthogonal_(module.weight, gain=1.0)
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.head.weight, gain=out_gain)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
