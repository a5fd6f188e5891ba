"""PointNet encoder for particle observations: the DP3 variant (Ze et al. 2024) the SAPO paper uses
(appendix B.2), with mineral's sizes for Rewarped's soft tasks (blocks 64-128-256, a 64-d latent).

``PointNet``: points [..., M, 3] -> per-point Linear -> LayerNorm -> ReLU blocks -> max over points ->
Linear -> LayerNorm -> latent [..., out_dim]. Invariant to the order of the points.

``PointCloudEncoder``: a flat observation [..., D] whose first ``num_points·point_dim`` entries are the
points (the tphys MPM envs lay out ``observation`` that way) -> [..., out_dim + D - num_points·point_dim],
the PointNet latent followed by the remaining entries (centre of mass, joint positions, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rl.modules.linear import Linear


class PointNet(nn.Module):
    def __init__(self, point_dim: int = 3, blocks: Sequence[int] = (64, 128, 256), out_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        width = point_dim
        for size in blocks:
            layers += [Linear(width, int(size)), nn.LayerNorm(int(size)), nn.ReLU()]
            width = int(size)
        self.per_point = nn.Sequential(*layers)
        self.project = nn.Sequential(Linear(width, out_dim), nn.LayerNorm(out_dim))
        self.point_dim, self.out_dim = point_dim, out_dim

    def forward(self, points: Tensor) -> Tensor:
        if points.shape[-1] != self.point_dim:
            raise ValueError(f"PointNet expects points [..., M, {self.point_dim}], got shape {tuple(points.shape)}")
        return self.project(self.per_point(points).max(dim=-2).values)


class PointCloudEncoder(nn.Module):
    """Flat observation with a leading point cloud -> [PointNet latent, the other entries]; see the module docstring."""

    def __init__(self, obs_dim: int, num_points: int, point_dim: int = 3, blocks: Sequence[int] = (64, 128, 256), out_dim: int = 64):
        super().__init__()
        if num_points < 1 or num_points * point_dim > obs_dim:
            raise ValueError(f"a cloud of {num_points} x {point_dim} does not fit an observation of {obs_dim}")
        self.obs_dim, self.num_points, self.point_dim = obs_dim, num_points, point_dim
        self.pointnet = PointNet(point_dim, blocks, out_dim)
        self.output_dim = out_dim + obs_dim - num_points * point_dim

    def forward(self, obs: Tensor) -> Tensor:
        split = self.num_points * self.point_dim
        points = obs[..., :split].unflatten(-1, (self.num_points, self.point_dim))
        return torch.cat([self.pointnet(points), obs[..., split:]], -1)
