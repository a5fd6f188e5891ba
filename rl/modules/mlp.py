"""Multi-layer perceptron with LayerNorm, as SHAC and SAPO use (Linear -> LayerNorm -> activation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}


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
            layers.append(nn.Linear(width, int(size)))
            if layer_norm:
                layers.append(nn.LayerNorm(int(size)))
            layers.append(act_cls())
            width = int(size)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)
        for module in self.body:
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain=1.0)
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.head.weight, gain=out_gain)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
