"""Build a ``RigidModel`` from bodies, joints, shapes and motors (what ``load_mjcf`` produces, or written by hand).

Bodies are added parent first. Each body carries its joints in MJCF order; joint positions and
velocities get MuJoCo's addresses (bodies in the order added, joints in body order), so a model
loaded from MJCF has the same ``qpos``/``qvel`` layout as ``mujoco.MjModel`` of the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tphys.math import matrix_to_quat
from tphys.rigid.model import JOINT_TYPES, SHAPE_KINDS, Actuators, ContactPoints, Dofs, Links, RigidModel, Shapes, material

_NQ = {"free": 7, "ball": 4, "slide": 1, "hinge": 1, "fixed": 0}
_NV = {"free": 6, "ball": 3, "slide": 1, "hinge": 1, "fixed": 0}


@dataclass
class Joint:
    """One joint of a body. ``pos`` (anchor) and ``axis`` are in the body frame; ranges in rad or m."""

    type: str
    name: str = ""
    axis: tuple = (0.0, 0.0, 1.0)
    pos: tuple = (0.0, 0.0, 0.0)
    ref: float = 0.0
    limited: bool = False
    range: tuple = (0.0, 0.0)
    armature: float = 0.0
    damping: float = 0.0
    stiffness: float = 0.0
    springref: float = 0.0

    def __post_init__(self):
        if self.type not in JOINT_TYPES:
            raise ValueError(f"unknown joint type {self.type!r}; expected one of {JOINT_TYPES}")
        norm = math.sqrt(sum(a * a for a in self.axis))
        if self.type in ("hinge", "slide"):
            if norm < 1e-12:
                raise ValueError(f"joint {self.name!r}: zero axis")
            self.axis = tuple(a / norm for a in self.axis)
        if self.limited and self.range[0] > self.range[1]:
            raise ValueError(f"joint {self.name!r}: range {self.range} has lower > upper")


@dataclass
class Body:
    """A rigid body: pose in its parent's frame at q = ref, inertia about its centre of mass (body axes)."""

    name: str
    parent: int  # body index, -1 = world
    pos: tuple = (0.0, 0.0, 0.0)
    rot: torch.Tensor = field(default_factory=lambda: torch.eye(3, dtype=torch.float64))
    mass: float = 0.0
    com: tuple = (0.0, 0.0, 0.0)
    inertia: torch.Tensor = field(default_factory=lambda: torch.zeros(3, 3, dtype=torch.float64))
    joints: list = field(default_factory=list)
    contacts: list = field(default_factory=list)  # (pos in body frame, radius)
    shapes: list = field(default_factory=list)  # (name, kind, pos, rot [3, 3], size) in the body frame


class RigidBuilder:
    """Collects bodies and motors; ``finalize()`` returns the ``RigidModel`` (float64, CPU)."""

    def __init__(self, gravity=(0.0, 0.0, -9.81)):
        self.bodies: list[Body] = []
        self.motors: list[tuple] = []  # (name, joint name, gear, lower, upper)
        self.gravity = tuple(float(g) for g in gravity)

    def add_body(self, body: Body) -> int:
        if body.parent >= len(self.bodies) or body.parent < -1:
            raise ValueError(f"body {body.name!r}: parent {body.parent} must be added first (or -1 for the world)")
        types = [j.type for j in body.joints]
        if "free" in types and (len(types) > 1 or body.parent != -1):
            raise ValueError(f"body {body.name!r}: a free joint must be the only joint of a child of the world")
        if "ball" in types[:-1]:
            raise NotImplementedError(f"body {body.name!r}: a ball joint must be the body's last joint")
        if "fixed" in types:
            raise ValueError(f"body {body.name!r}: leave out fixed joints (a body without joints is welded)")
        self.bodies.append(body)
        return len(self.bodies) - 1

    def add_motor(self, joint: str, gear: float, ctrl_range=(-math.inf, math.inf), name: str = "") -> None:
        self.motors.append((name or joint, joint, float(gear), float(ctrl_range[0]), float(ctrl_range[1])))

    def finalize(self) -> RigidModel:
        if not self.bodies:
            raise ValueError("a rigid model needs at least one body")
        f64 = dict(dtype=torch.float64)
        # 1. links in body order, with MuJoCo's q / dof addresses
        links, body_last, joint_names, q0 = [], [], {}, []
        nq = nv = 0
        for b, body in enumerate(self.bodies):
            joints = body.joints or [Joint("fixed", name=f"{body.name}_weld")]
            for i, joint in enumerate(joints):
                first, last = i == 0, i == len(joints) - 1
                parent = (body_last[body.parent] if body.parent >= 0 else -1) if first else len(links) - 1
                offset_pos, offset_rot = (body.pos, body.rot) if first and joint.type != "free" else ((0.0, 0.0, 0.0), torch.eye(3, **f64))
                links.append(dict(parent=parent, joint=joint, q=nq, dof=nv, offset_pos=offset_pos, offset_rot=offset_rot,
                                  mass=body.mass if last else 0.0, com=body.com if last else (0.0, 0.0, 0.0),
                                  inertia=body.inertia if last else torch.zeros(3, 3, **f64), body=b))
                if joint.type != "fixed":
                    joint_names[joint.name or f"joint{len(joint_names)}"] = (nq, nv, joint.type)
                if joint.type == "free":
                    q0 += [*body.pos, *matrix_to_quat(body.rot.to(torch.float64)).tolist()]
                elif joint.type == "ball":
                    q0 += [1.0, 0.0, 0.0, 0.0]
                elif joint.type in ("hinge", "slide"):
                    q0.append(joint.ref)
                nq += _NQ[joint.type]
                nv += _NV[joint.type]
            body_last.append(len(links) - 1)
        if nv == 0:
            raise ValueError("the model has no degrees of freedom")
        # 2. sort links by depth (stable), so that every level is a contiguous slice after its parents
        depth = []
        for link in links:
            depth.append(0 if link["parent"] < 0 else depth[link["parent"]] + 1)
        order = sorted(range(len(links)), key=lambda i: depth[i])
        new_index = {old: new for new, old in enumerate(order)}
        links = [links[i] for i in order]
        for link in links:
            link["parent"] = new_index[link["parent"]] if link["parent"] >= 0 else -1
        body_last = [new_index[i] for i in body_last]
        depth = [depth[i] for i in order]
        levels = []
        for d in range(max(depth) + 1):
            members = [i for i, x in enumerate(depth) if x == d]
            levels.append((members[0], members[-1] + 1))
        # 3. per-type joint tables
        groups = {t: [i for i, link in enumerate(links) if link["joint"].type == t] for t in ("hinge", "slide", "ball", "free", "fixed")}
        concat = [i for t in ("hinge", "slide", "ball", "free", "fixed") for i in groups[t]]
        position = [0] * len(links)
        for k, i in enumerate(concat):
            position[i] = k

        def col(t, key, width=None):
            values = [links[i][key] if key in ("q", "dof") else getattr(links[i]["joint"], key) for i in groups[t]]
            if width is None:
                return torch.tensor(values, **f64) if key not in ("q", "dof") else torch.tensor(values, dtype=torch.long)
            return torch.tensor(values, **f64).reshape(-1, width)

        link_table = Links(
            parent=torch.tensor([link["parent"] for link in links], dtype=torch.long),
            offset_pos=torch.tensor([list(link["offset_pos"]) for link in links], **f64),
            offset_rot=torch.stack([torch.as_tensor(link["offset_rot"], **f64) for link in links]),
            order=torch.tensor(position, dtype=torch.long),
            **{t: torch.tensor(groups[t], dtype=torch.long) for t in groups},
            hinge_q=col("hinge", "q"), slide_q=col("slide", "q"), ball_q=col("ball", "q"), free_q=col("free", "q"),
            ball_dof=col("ball", "dof"), free_dof=col("free", "dof"),
            hinge_axis=col("hinge", "axis", 3), slide_axis=col("slide", "axis", 3),
            hinge_anchor=col("hinge", "pos", 3), ball_anchor=col("ball", "pos", 3),
            hinge_ref=col("hinge", "ref"), slide_ref=col("slide", "ref"),
            mass=torch.tensor([link["mass"] for link in links], **f64),
            com=torch.tensor([list(link["com"]) for link in links], **f64),
            inertia=torch.stack([torch.as_tensor(link["inertia"], **f64) for link in links]),
            levels=tuple(levels),
        )
        # 4. dofs in MuJoCo's order
        dof_rows = []
        for i, link in sorted(enumerate(links), key=lambda item: item[1]["dof"]):
            joint = link["joint"]
            eye = torch.eye(3, **f64).tolist()
            if joint.type == "free":
                dof_rows += [dict(link=i, axis=eye[k], rot=0.0, world=1.0, joint=joint) for k in range(3)]
                dof_rows += [dict(link=i, axis=eye[k], rot=1.0, world=0.0, joint=joint) for k in range(3)]
            elif joint.type == "ball":
                dof_rows += [dict(link=i, axis=eye[k], rot=1.0, world=0.0, joint=joint) for k in range(3)]
            elif joint.type in ("hinge", "slide"):
                dof_rows.append(dict(link=i, axis=list(joint.axis), rot=float(joint.type == "hinge"), world=0.0, joint=joint,
                                     q=link["q"]))
        ancestor = torch.zeros(len(links), len(dof_rows), **f64)
        for i in range(len(links)):
            chain, j = set(), i
            while j >= 0:
                chain.add(j)
                j = links[j]["parent"]
            for d, row in enumerate(dof_rows):
                if row["link"] in chain:
                    ancestor[i, d] = 1.0
        scalar = [d for d, row in enumerate(dof_rows) if "q" in row]
        dofs = Dofs(
            link=torch.tensor([row["link"] for row in dof_rows], dtype=torch.long),
            axis=torch.tensor([row["axis"] for row in dof_rows], **f64),
            anchor=torch.tensor([list(row["joint"].pos) for row in dof_rows], **f64),
            rotational=torch.tensor([row["rot"] for row in dof_rows], **f64),
            world_fixed=torch.tensor([row["world"] for row in dof_rows], **f64),
            ancestor=ancestor,
            armature=torch.tensor([row["joint"].armature for row in dof_rows], **f64),
            damping=torch.tensor([row["joint"].damping for row in dof_rows], **f64),
            scalar=torch.tensor(scalar, dtype=torch.long),
            scalar_q=torch.tensor([dof_rows[d]["q"] for d in scalar], dtype=torch.long),
            stiffness=torch.tensor([dof_rows[d]["joint"].stiffness for d in scalar], **f64),
            springref=torch.tensor([dof_rows[d]["joint"].springref for d in scalar], **f64),
            limited=torch.tensor([float(dof_rows[d]["joint"].limited) for d in scalar], **f64),
            lower=torch.tensor([dof_rows[d]["joint"].range[0] for d in scalar], **f64),
            upper=torch.tensor([dof_rows[d]["joint"].range[1] for d in scalar], **f64),
        )
        # 5. contact points and motors
        points = [(body_last[b], pos, radius) for b, body in enumerate(self.bodies) for pos, radius in body.contacts]
        contacts = ContactPoints(
            link=torch.tensor([p[0] for p in points], dtype=torch.long),
            pos=torch.tensor([list(p[1]) for p in points], **f64).reshape(-1, 3),
            radius=torch.tensor([p[2] for p in points], **f64),
        )
        shape_rows = [(body_last[b], *shape) for b, body in enumerate(self.bodies) for shape in body.shapes]
        for _, name, kind, *_ in shape_rows:
            if kind not in SHAPE_KINDS:
                raise ValueError(f"shape {name!r}: unknown kind {kind!r}; expected one of {SHAPE_KINDS}")
        shapes = Shapes(
            link=torch.tensor([r[0] for r in shape_rows], dtype=torch.long),
            pos=torch.tensor([list(r[3]) for r in shape_rows], **f64).reshape(-1, 3),
            rot=torch.stack([torch.as_tensor(r[4], **f64) for r in shape_rows]) if shape_rows else torch.zeros(0, 3, 3, **f64),
            kind=torch.tensor([SHAPE_KINDS.index(r[2]) for r in shape_rows], dtype=torch.long),
            size=torch.tensor([(list(r[5]) + [0.0, 0.0, 0.0])[:3] for r in shape_rows], **f64).reshape(-1, 3),
        )
        motor_dofs = []
        for name, joint, *_ in self.motors:
            if joint not in joint_names:
                raise ValueError(f"motor {name!r}: no joint named {joint!r} (joints: {sorted(joint_names)})")
            q, dof, kind = joint_names[joint]
            if kind not in ("hinge", "slide"):
                raise NotImplementedError(f"motor {name!r}: motors on {kind} joints are not supported")
            motor_dofs.append(dof)
        actuators = Actuators(
            dof=torch.tensor(motor_dofs, dtype=torch.long),
            gear=torch.tensor([m[2] for m in self.motors], **f64),
            lower=torch.tensor([m[3] for m in self.motors], **f64),
            upper=torch.tensor([m[4] for m in self.motors], **f64),
        )
        names = dict(bodies={body.name: body_last[b] for b, body in enumerate(self.bodies) if body.name},
                     joints=joint_names, actuators=[m[0] for m in self.motors], shapes=[r[1] for r in shape_rows],
                     body_links=list(body_last))
        return RigidModel(links=link_table, dofs=dofs, contacts=contacts, shapes=shapes, actuators=actuators, material=material(),
                          gravity=torch.tensor(self.gravity, **f64), q0=torch.tensor(q0, **f64), names=names)
