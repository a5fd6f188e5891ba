"""DFlex's versions of the locomotion models: the same MJCF, with the parameters DFlex's envs pass to its
``parse_mjcf`` (DiffRL ``envs/<task>.py``), so that our tasks simulate what SHAC, AHAC and SAPO trained on.

Per task: geom density (kg/m³), hinge armature, damping and stiffness, contact (ke, kd, kf, mu),
joint limits (ke, kd), actuator strength (N·m per unit action), substeps per 1/60 s frame.
"""

from __future__ import annotations

import torch

from tphys.rigid.assets import model_path
from tphys.rigid.mjcf import load_mjcf
from tphys.rigid.model import RigidModel, material

DFLEX = {
    "ant": dict(density=1000.0, armature=0.05, damping=1.0, stiffness=0.0, contact=(4e4, 1e4, 3e3, 0.75), limit=(1e3, 10.0),
                strength=200.0, substeps=16),
}


def dflex_model(name: str, dtype=torch.float32, device=None) -> RigidModel:
    """The named model with DFlex's parameters (see ``DFLEX``), cast to ``dtype``."""
    if name not in DFLEX:
        raise KeyError(f"no DFlex preset for {name!r}; known: {sorted(DFLEX)}")
    p = DFLEX[name]
    model = load_mjcf(model_path(name), density=p["density"])
    hinge = model.dofs.rotational * (1 - model.dofs.ancestor[model.links.free].sum(0).clamp_max(1)) if model.links.free.numel() \
        else model.dofs.rotational
    # joints below the root: DFlex's armature / damping; the free root keeps none
    dofs = model.dofs._replace(armature=hinge * p["armature"], damping=hinge * p["damping"],
                               stiffness=torch.full_like(model.dofs.stiffness, p["stiffness"]))
    ke, kd, kf, mu = p["contact"]
    actuators = model.actuators._replace(gear=torch.full_like(model.actuators.gear, p["strength"]))
    model = model._replace(dofs=dofs, actuators=actuators,
                           material=material(contact_ke=ke, contact_kd=kd, contact_kf=kf, contact_mu=mu,
                                             limit_ke=p["limit"][0], limit_kd=p["limit"][1]))
    return model.to(device=device, dtype=dtype)
