"""Where the MJCF models of the rigid-body tasks come from.

hopper, ant, humanoid, half_cheetah: gymnasium's MuJoCo assets (maintained by the Farama
Foundation, the descendants of the models DFlex adapted; the ``gymnasium`` wheel ships the XML
files and needs no MuJoCo to install). cartpole: ours (``tphys/rigid/assets/cartpole.xml``),
DFlex's URDF cart-pole written in MJCF, because no maintained package ships that model.
dflex_humanoid: ours (``tphys/rigid/assets/dflex_humanoid.xml``), the 21-motor humanoid with ankles
that DFlex's Humanoid task uses (gymnasium's humanoid has 17 motors and no ankles).
snu_humanoid: ours (``tphys/rigid/assets/snu_humanoid.xml``), the lower body and 152 muscles of the SNU (MASS)
skeleton that DFlex's SNUHumanoid task uses, written from DiffRL's human.xml / muscle284.xml numbers.
"""

from __future__ import annotations

from pathlib import Path

OURS = ("cartpole", "dflex_humanoid", "snu_humanoid")
GYMNASIUM = ("hopper", "ant", "humanoid", "half_cheetah")


def model_path(name: str) -> Path:
    """Path of the MJCF file of a named model."""
    if name in OURS:
        return Path(__file__).with_name("assets") / f"{name}.xml"
    if name in GYMNASIUM:
        try:
            import gymnasium
        except ImportError as err:  # pragma: no cover - gymnasium is a dependency
            raise ImportError(f"the {name} model comes from gymnasium's assets: pip install gymnasium") from err
        return Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / f"{name}.xml"
    raise KeyError(f"unknown rigid model {name!r}; known: {sorted(OURS + GYMNASIUM)}")
