"""``load_mjcf``: the MJCF subset of the locomotion models (gymnasium's / DFlex's ant, hopper, humanoid,
half-cheetah, our cartpole) -> ``RigidModel``.

Supported: ``compiler`` (angle, inertiafromgeom, eulerseq xyz/XYZ, autolimits, settotalmass), ``option`` gravity,
``default`` classes (nested, ``class`` / ``childclass``), ``body`` (pos, quat, euler, axisangle,
childclass), ``joint`` (hinge, slide, ball, free; pos, axis, range, limited, ref, armature,
damping, stiffness, springref), ``freejoint``, ``geom`` (sphere, capsule, cylinder, box,
ellipsoid, plane; size, fromto, pos, quat/euler/axisangle, density, mass, contype/conaffinity),
``inertial`` (mass, pos, quat/euler, diaginertia, fullinertia), ``actuator/motor`` (joint, gear,
ctrlrange, ctrllimited), muscles (``tphys.rigid.muscles``): a ``general`` actuator on a ``spatial`` tendon through
``site``s, force = gainprm[0] · ctrl, gear < 0 (the force shortens the path), becomes a muscle of maximum force
-gear · gainprm[0] and activation ctrl. Lights, cameras, other sites, materials and textures are ignored (they do
not change the dynamics); anything else that would (``include``, tendons with stiffness or
limits, equality constraints, other actuators) raises ``NotImplementedError``.

Contact points for the ground (see ``tphys.rigid.contact``): sphere centres, capsule and
cylinder end-points (with the radius), box corners; for geoms that can collide
(contype or conaffinity non-zero).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from tphys.math import axis_angle_to_matrix, quat_to_matrix
from tphys.rigid.builder import Body, Joint, RigidBuilder
from tphys.rigid.inertia import combine, shape_inertia, volume
from tphys.rigid.model import RigidModel
from tphys.rigid.muscles import build_muscles

F64 = torch.float64
def load_mjcf(source: str | Path, density: float | None = None) -> RigidModel:
    """Parse an MJCF file path or XML string into a float64 ``RigidModel`` (cast with ``model.to``).

    ``density`` (kg/m³) overrides every geom's density, as DFlex's ``parse_mjcf(density=...)`` does.
    """
    text = str(source)
    if not text.lstrip().startswith("<"):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no MJCF file at {path}")
        text = path.read_text()
    root = ET.fromstring(text)
    if root.tag != "mujoco":
        raise ValueError(f"not an MJCF document: root element <{root.tag}>, expected <mujoco>")
    return _Parser(root, density).build()


def floats(text, n=None):
    """The numbers in an MJCF attribute (exactly n of them when n is given)."""
    values = [float(x) for x in text.split()]
    if n is not None and len(values) != n:
        raise ValueError(f"expected {n} numbers, got {text!r}")
    return values


def frame_rotation(attrs: dict, degrees: bool = False, eulerseq: str = "xyz") -> torch.Tensor:
    """[3, 3] float64 orientation of a body / geom / site from its MJCF attributes (quat, euler, axisangle, zaxis,
    xyaxes; identity if none); ``degrees`` and ``eulerseq`` as the document's ``compiler`` says."""

    def angle_of(value):
        return math.radians(value) if degrees else value

    if "quat" in attrs:
        return quat_to_matrix(torch.tensor(floats(attrs["quat"], 4), dtype=F64))
    if "euler" in attrs:
        angles = [angle_of(a) for a in floats(attrs["euler"], 3)]
        mats = [axis_angle_to_matrix(torch.eye(3, dtype=F64)[i], torch.tensor(a, dtype=F64)) for i, a in enumerate(angles)]
        return mats[0] @ mats[1] @ mats[2] if eulerseq == "xyz" else mats[2] @ mats[1] @ mats[0]
    if "axisangle" in attrs:
        *axis, angle = floats(attrs["axisangle"], 4)
        axis = torch.tensor(axis, dtype=F64)
        return axis_angle_to_matrix(axis / axis.norm(), torch.tensor(angle_of(angle), dtype=F64))
    if "zaxis" in attrs:
        return _z_to(torch.tensor(floats(attrs["zaxis"], 3), dtype=F64))
    if "xyaxes" in attrs:
        x, y = torch.tensor(floats(attrs["xyaxes"], 6), dtype=F64).reshape(2, 3)
        x = x / x.norm()
        y = y - x.dot(y) * x
        y = y / y.norm()
        return torch.stack((x, y, torch.linalg.cross(x, y)), dim=1)
    return torch.eye(3, dtype=F64)


class _Parser:
    def __init__(self, root: ET.Element, density: float | None = None):
        self.root, self.density = root, density
        compiler = root.find("compiler")
        attrs = compiler.attrib if compiler is not None else {}
        if attrs.get("coordinate", "local") != "local":
            raise NotImplementedError("compiler coordinate='global' is not supported")
        self.degrees = attrs.get("angle", "degree") == "degree"
        self.inertia_from_geom = attrs.get("inertiafromgeom", "auto")
        self.autolimits = attrs.get("autolimits", "true") == "true"
        self.eulerseq = attrs.get("eulerseq", "xyz")
        self.total_mass = float(attrs.get("settotalmass", -1))
        if self.eulerseq.lower() != "xyz":
            raise NotImplementedError(f"eulerseq {self.eulerseq!r} (only xyz / XYZ)")
        for tag in ("include", "equality"):
            if root.find(tag) is not None and (tag == "include" or len(root.find(tag))):
                raise NotImplementedError(f"<{tag}> is not supported")
        self.sites = {}  # site name -> (body index, pos [3] in the body frame), for muscle paths
        self.defaults = {}
        for default in root.findall("default"):
            self._read_defaults(default, "main", {})
        option = root.find("option")
        self.gravity = floats(option.get("gravity"), 3) if option is not None and option.get("gravity") else [0.0, 0.0, -9.81]

    def _read_defaults(self, element, name, inherited):
        own = {tag: dict(attrs) for tag, attrs in inherited.items()}
        for child in element:
            if child.tag == "default":
                continue
            own.setdefault(child.tag, {}).update(child.attrib)
        self.defaults[name] = own
        for child in element.findall("default"):
            self._read_defaults(child, child.get("class", name), own)

    def _attrs(self, element, cls):
        merged = dict(self.defaults.get(element.get("class", cls), {}).get(element.tag, {}))
        if element.get("class") and element.get("class") not in self.defaults:
            raise ValueError(f"<{element.tag}> uses unknown default class {element.get('class')!r}")
        merged.update(element.attrib)
        return merged

    def _angle(self, value):
        return math.radians(value) if self.degrees else value

    def _rotation(self, attrs) -> torch.Tensor:
        return frame_rotation(attrs, self.degrees, self.eulerseq)

    def build(self) -> RigidModel:
        builder = RigidBuilder(gravity=self.gravity)
        world = self.root.find("worldbody")
        if world is None:
            raise ValueError("MJCF without <worldbody>")
        for body in world.findall("body"):
            self._body(builder, body, -1, world.get("childclass", "main"))
        if self.total_mass > 0:  # compiler settotalmass: scale every body's mass and inertia
            scale = self.total_mass / sum(body.mass for body in builder.bodies)
            for body in builder.bodies:
                body.mass, body.inertia = body.mass * scale, body.inertia * scale
        for tendon in self.root.findall("tendon"):
            for item in tendon:
                if any(k in item.attrib for k in ("stiffness", "damping", "range", "limited")):
                    raise NotImplementedError(f"tendon {item.get('name')!r} with stiffness/damping/limits is not supported")
        actuator = self.root.find("actuator")
        muscles = []
        for motor in (actuator if actuator is not None else []):
            if motor.tag == "general" and "tendon" in motor.attrib:
                muscles.append(self._muscle(self._attrs(motor, "main")))
                continue
            if motor.tag != "motor":
                raise NotImplementedError(f"actuator <{motor.tag}> (only <motor>)")
            attrs = self._attrs(motor, "main")
            if "joint" not in attrs:
                raise NotImplementedError(f"motor {attrs.get('name')!r}: only joint transmissions are supported")
            limited = attrs.get("ctrllimited", "auto")
            limited = limited == "true" or (limited == "auto" and self.autolimits and "ctrlrange" in attrs)
            lower, upper = floats(attrs["ctrlrange"], 2) if limited else (-math.inf, math.inf)
            builder.add_motor(attrs["joint"], floats(attrs.get("gear", "1"))[0], (lower, upper), attrs.get("name", ""))
        model = builder.finalize()
        if muscles:
            links = model.names["body_links"]
            paths = [[(links[self.sites[site][0]], self.sites[site][1]) for site in path] for _, path, _ in muscles]
            model = model._replace(muscles=build_muscles(paths, [m[2] for m in muscles], [m[0] for m in muscles]))
        return model

    def _muscle(self, attrs) -> tuple:
        """(name, [site names], max force N) of a ``general`` actuator on a spatial tendon through sites."""
        name = attrs.get("name", attrs["tendon"])
        for key, plain in (("dyntype", "none"), ("gaintype", "fixed"), ("biastype", "none")):
            if attrs.get(key, plain) != plain:
                raise NotImplementedError(f"muscle {name!r}: {key}={attrs[key]!r} (only {key}={plain!r}: force = gainprm[0] * ctrl)")
        tendons = {t.get("name"): t for group in self.root.findall("tendon") for t in group}
        tendon = tendons.get(attrs["tendon"])
        if tendon is None or tendon.tag != "spatial" or any(item.tag != "site" for item in tendon):
            raise NotImplementedError(f"muscle {name!r}: only spatial tendons through sites (no wrapping, no pulleys)")
        force = -floats(attrs.get("gear", "1"))[0] * floats(attrs.get("gainprm", "1"))[0]
        if force <= 0:
            raise ValueError(f"muscle {name!r}: -gear * gainprm[0] must be > 0 (a muscle pulls), got {force}")
        path = [item.get("site") for item in tendon]
        missing = [site for site in path if site not in self.sites]
        if missing or len(path) < 2:
            raise ValueError(f"muscle {name!r}: needs at least two sites on bodies; unknown sites {missing}")
        return name, path, force

    def _body(self, builder, element, parent, childclass):
        cls = element.get("childclass", childclass)
        joints = []
        for j in element:
            if j.tag == "freejoint":
                joints.append(Joint("free", name=j.get("name", "")))
            elif j.tag == "joint":
                joints.append(self._joint(self._attrs(j, cls)))
        geoms = [self._geom(self._attrs(g, cls)) for g in element.findall("geom")]
        inertial = element.find("inertial")
        if inertial is not None and self.inertia_from_geom != "true":
            attrs = inertial.attrib
            mass = float(attrs["mass"])
            rot = self._rotation(attrs)
            if "fullinertia" in attrs:
                xx, yy, zz, xy, xz, yz = floats(attrs["fullinertia"], 6)
                local = torch.tensor([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], dtype=F64)
            else:
                local = torch.diag(torch.tensor(floats(attrs["diaginertia"], 3), dtype=F64))
            com, inertia = torch.tensor(floats(attrs.get("pos", "0 0 0"), 3), dtype=F64), rot @ local @ rot.T
        elif self.inertia_from_geom == "false":
            mass, com, inertia = 0.0, torch.zeros(3, dtype=F64), torch.zeros(3, 3, dtype=F64)
        else:
            mass, com, inertia = combine((g["mass"], g["pos"], g["rot"], g["inertia"]) for g in geoms)
        contacts = [c for g in geoms for c in g["contacts"]]
        shapes = [(g["name"], g["kind"], tuple(g["pos"].tolist()), g["rot"], tuple(g["size"])) for g in geoms]
        body = Body(name=element.get("name", ""), parent=parent, pos=tuple(floats(element.get("pos", "0 0 0"), 3)),
                    rot=self._rotation(element.attrib), mass=float(mass), com=tuple(com.tolist()), inertia=inertia,
                    joints=joints, contacts=contacts, shapes=shapes)
        index = builder.add_body(body)
        for site in element.findall("site"):
            if site.get("name"):
                self.sites[site.get("name")] = (index, floats(self._attrs(site, cls).get("pos", "0 0 0"), 3))
        for child in element.findall("body"):
            self._body(builder, child, index, cls)

    def _joint(self, attrs) -> Joint:
        kind = attrs.get("type", "hinge")
        scale = self._angle(1.0) if kind == "hinge" else 1.0
        limited = attrs.get("limited", "auto")
        limited = limited == "true" or (limited == "auto" and self.autolimits and "range" in attrs)
        lo, hi = floats(attrs["range"], 2) if "range" in attrs else (0.0, 0.0)
        return Joint(kind, name=attrs.get("name", ""), axis=tuple(floats(attrs.get("axis", "0 0 1"), 3)),
                     pos=tuple(floats(attrs.get("pos", "0 0 0"), 3)), ref=float(attrs.get("ref", 0.0)) * scale,
                     limited=limited, range=(lo * scale, hi * scale), armature=float(attrs.get("armature", 0.0)),
                     damping=float(attrs.get("damping", 0.0)), stiffness=float(attrs.get("stiffness", 0.0)),
                     springref=float(attrs.get("springref", 0.0)) * scale)

    def _geom(self, attrs) -> dict:
        kind = attrs.get("type", "sphere")
        size = floats(attrs.get("size", "0"))
        if "fromto" in attrs:
            a, b = torch.tensor(floats(attrs["fromto"], 6), dtype=F64).reshape(2, 3)
            pos, rot = (a + b) / 2, _z_to(b - a)
            size = [size[0], float((b - a).norm()) / 2, *size[2:]]
        else:
            pos, rot = torch.tensor(floats(attrs.get("pos", "0 0 0"), 3), dtype=F64), self._rotation(attrs)
        if kind == "plane":
            raise NotImplementedError("plane geoms belong to the world body (the ground is z = 0)")
        if "mass" in attrs:
            mass = float(attrs["mass"])
        else:
            mass = (self.density or float(attrs.get("density", 1000.0))) * volume(kind, size)
        inertia = shape_inertia(kind, size, mass)
        collides = int(attrs.get("contype", 1)) != 0 or int(attrs.get("conaffinity", 1)) != 0
        contacts = []
        if collides:
            if kind == "sphere":
                contacts = [(tuple(pos.tolist()), size[0])]
            elif kind in ("capsule", "cylinder"):
                contacts = [(tuple((pos + s * size[1] * rot[:, 2]).tolist()), size[0]) for s in (-1.0, 1.0)]
            elif kind == "box":
                corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=F64)
                contacts = [(tuple((pos + rot @ (c * torch.tensor(size[:3], dtype=F64))).tolist()), 0.0) for c in corners]
            else:
                raise NotImplementedError(f"ground contact for geom type {kind!r} (set contype=conaffinity=0 to make it visual)")
        return dict(mass=mass, pos=pos, rot=rot, inertia=inertia, contacts=contacts, name=attrs.get("name", ""), kind=kind,
                    size=[float(x) for x in size[:3]])


def _z_to(direction: torch.Tensor) -> torch.Tensor:
    """The minimal rotation taking +z to ``direction`` (MuJoCo's ``mju_quatZ2Vec``), as a matrix."""
    d = direction / direction.norm()
    z = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    axis = torch.linalg.cross(z, d)
    s, c = axis.norm(), z.dot(d)
    if s < 1e-12:
        return torch.eye(3, dtype=F64) if c > 0 else torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    return axis_angle_to_matrix(axis / s, torch.atan2(s, c))
