"""DFlex's versions of the task models: our MJCF with the parameters DFlex's envs pass to its loaders
(DiffRL ``envs/<task>.py``), so that our tasks simulate what SHAC, AHAC and SAPO trained on.

Per task:
    model       name for ``model_path``
    density     geom density (kg/m³) or None (the MJCF's masses)
    armature, damping, stiffness
                values for the actuated joints (DFlex's ``parse_mjcf`` arguments), or None where DFlex
                reads them from the MJCF (``load_stiffness`` / ``load_armature``): the file's values stay
    contact     (ke N/m, kd N·s/m², kf N·s/m, mu), or None for no ground
    limit       joint-limit penalty (ke, kd)
    strength    N·m (N) per unit action for every motor, or None to keep the MJCF gears
    substeps    per 1/60 s frame
    limit_mass  (optional) kg: joint-limit (ke, kd) scaled per hinge/slide by the mass of its body / limit_mass
                (DFlex's SNU Skeleton loader, mass_scale = mass / 15 kg)
    muscle_scale (optional) factor on every muscle's maximum force (DiffRL's SNUHumanoid: str_scale 0.6, applied
                twice, so 0.36 x the units' f0)

Known differences from DFlex (its loader ignores parts of MJCF; ours follows MuJoCo): unactuated
root joints of the planar models keep the file's zero armature (DFlex's hopper puts 1.0 on them),
``settotalmass`` and ``<inertial>`` are honoured, and joint damping from MJCF default classes applies.
"""

from __future__ import annotations

import torch

from tphys.rigid.mjcf import load_mjcf
from tphys.rigid.model import RigidModel, material
from tphys.rigid.model_files import model_path

DFLEX = {
    "cartpole": dict(model="cartpole", density=None, armature=None, damping=None, stiffness=None, contact=None,
                     limit=(100.0, 1.0), strength=1000.0, substeps=4),
    "hopper": dict(model="hopper", density=1000.0, armature=1.0, damping=2.0, stiffness=0.0, contact=(2e4, 1e3, 1e3, 0.9),
                   limit=(1e3, 10.0), strength=200.0, substeps=16),
    "cheetah": dict(model="half_cheetah", density=None, armature=0.1, damping=None, stiffness=None,
                    contact=(2e4, 1e3, 1e3, 1.0), limit=(1e3, 10.0), strength=200.0, substeps=16),
    "ant": dict(model="ant", density=1000.0, armature=0.05, damping=1.0, stiffness=0.0, contact=(4e4, 1e4, 3e3, 0.75),
                limit=(1e3, 10.0), strength=200.0, substeps=16),
    "humanoid": dict(model="dflex_humanoid", density=None, armature=None, damping=None, stiffness=None,
                     contact=(2e4, 5e3, 1e3, 0.75), limit=(1e3, 10.0), strength=None, substeps=48),
    # limit kd 0: DFlex applies its limit damping inside the range too, so the file carries it as joint damping
    "snu_humanoid": dict(model="snu_humanoid", density=None, armature=None, damping=None, stiffness=None,
                         contact=(5e3, 2e3, 1e3, 0.5), limit=(1e3, 0.0), strength=None, substeps=48, limit_mass=15.0,
                         muscle_scale=0.36),
}  # fmt: skip


def dflex_model(name: str, dtype=torch.float32, device=None) -> RigidModel:
    """The task model ``name`` with DFlex's parameters (see ``DFLEX``), cast to ``dtype``."""
    if name not in DFLEX:
        raise KeyError(f"no DFlex preset for {name!r}; known: {sorted(DFLEX)}")
    p = DFLEX[name]
    model = load_mjcf(model_path(p["model"]), density=p["density"])
    dofs, scalar = model.dofs, model.dofs.scalar
    actuated = torch.zeros_like(dofs.armature).index_fill(0, model.actuators.dof, 1.0)  # [D]
    armature = dofs.armature if p["armature"] is None else torch.where(actuated > 0, p["armature"], dofs.armature)
    damping = dofs.damping if p["damping"] is None else torch.where(actuated > 0, p["damping"], dofs.damping)
    stiffness = dofs.stiffness if p["stiffness"] is None else torch.where(actuated[scalar] > 0, p["stiffness"], dofs.stiffness)
    model = model._replace(dofs=dofs._replace(armature=armature, damping=damping, stiffness=stiffness))
    if p["strength"] is not None:
        model = model._replace(actuators=model.actuators._replace(gear=torch.full_like(model.actuators.gear, p["strength"])))
    ke, kd, kf, mu = p["contact"] or (0.0, 0.0, 0.0, 0.0)
    limit_ke, limit_kd = p["limit"]
    if p.get("limit_mass"):  # [Ds]: per hinge/slide, by the mass of its link
        scale = model.links.mass[dofs.link[scalar]] / p["limit_mass"]
        limit_ke, limit_kd = limit_ke * scale, limit_kd * scale
    model = model._replace(material=material(contact_ke=ke, contact_kd=kd, contact_kf=kf, contact_mu=mu,
                                             limit_ke=limit_ke, limit_kd=limit_kd))
    if p.get("muscle_scale") is not None:
        model = model._replace(muscles=model.muscles._replace(max_force=model.muscles.max_force * p["muscle_scale"]))
    return model.to(device=device, dtype=dtype)
