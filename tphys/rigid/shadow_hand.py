"""The Shadow hand as a kinematic tree with collision capsules and boxes, for kinematic colliders (``hand_flip``).

The model is the MuJoCo Shadow hand that OpenAI's hand tasks use (``robot0:`` names, 24 hinge joints:
WRJ1 WRJ0, FFJ3-0, MFJ3-0, RFJ3-0, LFJ4-0, THJ4-0, the layout Rewarped's ``dexdeform`` hand has), read
from the copy that ships with the maintained ``gymnasium-robotics`` package
(``gymnasium_robotics/envs/assets/hand/robot.xml``; found without importing the package). The tree is
rooted at ``robot0:forearm``; the forearm's convex mesh and the visual meshes are left out, the 19
``DC_Hand`` capsules and boxes of the wrist, palm and fingers are kept. Tendon couplings are ignored:
every joint is driven on its own, as in Rewarped's kinematic hand.

Conventions: lengths scale by ``scale`` (Rewarped uses 2.5); capsules come out along their local y axis
(``tphys.mpm.colliders``; MJCF capsules run along local z); forward kinematics is batched over envs.
"""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from tphys.math import axis_angle_to_matrix
from tphys.rigid.mjcf import floats, frame_rotation

JOINTS = ("WRJ1", "WRJ0", "FFJ3", "FFJ2", "FFJ1", "FFJ0", "MFJ3", "MFJ2", "MFJ1", "MFJ0", "RFJ3", "RFJ2", "RFJ1", "RFJ0",
          "LFJ4", "LFJ3", "LFJ2", "LFJ1", "LFJ0", "THJ4", "THJ3", "THJ2", "THJ1", "THJ0")
PREFIX = "robot0:"


def asset_path() -> Path:
    """robot.xml of gymnasium-robotics' Shadow hand (RuntimeError naming the package when it is missing)."""
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Shadow hand model comes from gymnasium-robotics: pip install gymnasium-robotics")
    path = Path(list(spec.submodule_search_locations)[0]) / "envs" / "assets" / "hand" / "robot.xml"
    if not path.exists():
        raise RuntimeError(f"gymnasium-robotics is installed but has no {path}")
    return path


class ShadowHand(NamedTuple):
    """Constants of the hand (float64 CPU tensors; ``to`` casts).

    Attributes:
        parent: per body (B = 24, one per joint, in ``JOINTS`` order), the index of its parent body, -1 for the root.
        offset: [B, 3] body origin in its parent's frame at zero joint angles, m (scaled); the root's in the hand mount's.
        rotation: [B, 3, 3] body orientation in its parent's frame at zero joint angles.
        axis: [B, 3] joint axis in the body frame.
        lower, upper: [B] joint limits, rad.
        geom_body: per collision geom (G = 19), its body.
        geom_kind: per geom, "capsule" or "box".
        geom_size: [G, 3] radius and half length (capsules) or half extents (boxes), m (scaled).
        geom_offset: [G, 3], geom_rotation: [G, 3, 3] the geom's pose in its body frame (capsules: local y along the axis).
    """

    parent: tuple[int, ...]
    offset: Tensor
    rotation: Tensor
    axis: Tensor
    lower: Tensor
    upper: Tensor
    geom_body: tuple[int, ...]
    geom_kind: tuple[str, ...]
    geom_size: Tensor
    geom_offset: Tensor
    geom_rotation: Tensor

    def to(self, device=None, dtype=None) -> ShadowHand:
        return self._replace(**{k: v.to(device=device, dtype=dtype) for k, v in self._asdict().items() if isinstance(v, Tensor)})


def _vector(element, name: str, default: str = "0 0 0") -> Tensor:
    return torch.tensor(floats(element.get(name, default), 3), dtype=torch.float64)


def _frame_rotation(element) -> Tensor:
    """An element's orientation; the hand's files set ``<compiler angle="radian">`` and MuJoCo's default eulerseq."""
    return frame_rotation(element.attrib, degrees=False)


_CAPSULE_Y_TO_Z = axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor(math.pi / 2, dtype=torch.float64))


def load_shadow_hand(scale: float = 1.0, path: Path | None = None) -> ShadowHand:
    """Parse the hand below ``robot0:forearm`` of ``path`` (default ``asset_path()``); lengths times ``scale``."""
    root = ET.parse(path or asset_path()).getroot()
    forearm = next((b for b in root.iter("body") if b.get("name") == PREFIX + "forearm"), None)
    if forearm is None:
        raise ValueError(f"no body {PREFIX}forearm in {path or asset_path()}")
    parent, offset, rotation, axis, lower, upper = [], [], [], [], [], []
    geom_body, geom_kind, geom_size, geom_offset, geom_rotation = [], [], [], [], []

    def visit(body, owner: int, pending_pos: Tensor, pending_rot: Tensor):
        joints = [j for j in body.findall("joint") if j.get("type", "hinge") == "hinge"]
        pos = pending_pos + pending_rot @ _vector(body, "pos") * scale
        rot = pending_rot @ _frame_rotation(body)
        if joints:
            if len(joints) != 1 or _vector(joints[0], "pos").abs().max() > 0:
                raise ValueError(f"body {body.get('name')}: expected one hinge at the body origin")
            name = joints[0].get("name").removeprefix(PREFIX)
            if len(parent) != JOINTS.index(name):
                raise ValueError(f"joint {name} out of the expected order {JOINTS}")
            parent.append(owner)
            offset.append(pos)
            rotation.append(rot)
            a = _vector(joints[0], "axis", "0 0 1")
            axis.append(a / a.norm())
            low, high = floats(joints[0].get("range", f"{-math.pi} {math.pi}"), 2)
            lower.append(low)
            upper.append(high)
            owner, pos, rot = len(parent) - 1, torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        for geom in body.findall("geom"):
            if geom.get("class") != PREFIX + "DC_Hand" or geom.get("type") not in ("capsule", "box"):
                continue
            if owner < 0:
                raise ValueError(f"collision geom {geom.get('name')} above the first joint")
            size = floats(geom.get("size"))
            geom_body.append(owner)
            geom_kind.append(geom.get("type"))
            geom_size.append(torch.tensor((size + [0.0])[:3] if geom.get("type") == "capsule" else size, dtype=torch.float64) * scale)
            geom_offset.append(pos + rot @ _vector(geom, "pos") * scale)
            g_rot = rot @ _frame_rotation(geom)
            geom_rotation.append(g_rot @ _CAPSULE_Y_TO_Z if geom.get("type") == "capsule" else g_rot)
        for child in body.findall("body"):
            visit(child, owner, pos, rot)

    visit(forearm, -1, torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    if len(parent) != len(JOINTS):
        raise ValueError(f"found {len(parent)} hinge joints, expected {len(JOINTS)}")
    f64 = dict(dtype=torch.float64)
    return ShadowHand(tuple(parent), torch.stack(offset), torch.stack(rotation), torch.stack(axis), torch.tensor(lower, **f64),
                      torch.tensor(upper, **f64), tuple(geom_body), tuple(geom_kind), torch.stack(geom_size), torch.stack(geom_offset),
                      torch.stack(geom_rotation))


def tree_levels(parent: tuple[int, ...]) -> list[list[int]]:
    """The bodies by depth in the tree ``parent`` (-1: a root): level 0 the roots, level d the children of level d - 1."""
    depth: list[int] = []
    for p in parent:  # parents come before their children (the file's order)
        depth.append(0 if p < 0 else depth[p] + 1)
    return [[b for b, d in enumerate(depth) if d == level] for level in range(max(depth) + 1)]


def body_poses(hand: ShadowHand, joint_q: Tensor, base_position: Tensor, base_rotation: Tensor) -> tuple[Tensor, Tensor]:
    """World positions [N, B, 3] and rotations [N, B, 3, 3] of the bodies for joint angles joint_q [N, 24] (rad), the
    frame of the forearm's parent (``robot0:hand mount``) at base_position [3] / base_rotation [3, 3] (world <- mount).

    Batched over the bodies: every joint's rotation in one call, then the tree level by level (7 levels for the 24 bodies),
    each level's bodies at once from their parents' poses."""
    n, count = joint_q.shape[0], len(hand.parent)
    local = hand.rotation @ axis_angle_to_matrix(hand.axis.expand(n, count, 3), joint_q)  # [N, B, 3, 3]: in the parent's frame
    levels = tree_levels(hand.parent)
    position, rotation = base_position.expand(n, 1, 3), base_rotation.expand(n, 1, 3, 3)  # the mount, a level above the roots
    slot = {-1: 0}  # body -> its index in the level above the current one
    positions, rotations = [], []
    for level in levels:
        above = [slot[hand.parent[b]] for b in level]
        parent_pos, parent_rot = position[:, above], rotation[:, above]
        position = parent_pos + (parent_rot @ hand.offset[level].unsqueeze(-1)).squeeze(-1)
        rotation = parent_rot @ local[:, level]
        positions.append(position)
        rotations.append(rotation)
        slot = {b: i for i, b in enumerate(level)}
    order = torch.tensor([b for level in levels for b in level]).argsort().to(joint_q.device)  # level order -> body order
    return torch.cat(positions, 1)[:, order], torch.cat(rotations, 1)[:, order]


def geom_poses(hand: ShadowHand, joint_q: Tensor, base_position: Tensor, base_rotation: Tensor) -> tuple[Tensor, Tensor]:
    """World positions [N, G, 3] and rotations [N, G, 3, 3] of the collision geoms (capsules along local y)."""
    positions, rotations = body_poses(hand, joint_q, base_position, base_rotation)
    index = list(hand.geom_body)
    body_pos, body_rot = positions[:, index], rotations[:, index]
    return body_pos + (body_rot @ hand.geom_offset.unsqueeze(-1)).squeeze(-1), body_rot @ hand.geom_rotation
