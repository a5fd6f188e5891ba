"""The MuJoCo side of the rigid-body reference tests: each asset as MuJoCo and tphys load it, and random poses."""

import mujoco
import numpy as np

from tphys.rigid import load_mjcf, model_path

_CACHE = {}


def models(name: str):
    """(MjModel without contact and limits, its MjData, our RigidModel) of the asset ``name``, loaded once."""
    if name not in _CACHE:
        mj = mujoco.MjModel.from_xml_path(str(model_path(name)))
        mj.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT | mujoco.mjtDisableBit.mjDSBL_LIMIT
        _CACHE[name] = (mj, mujoco.MjData(mj), load_mjcf(model_path(name)))
    return _CACHE[name]


def random_qpos(mj, rng: np.random.Generator, scale: float) -> np.ndarray:
    """qpos0 plus N(0, scale²) noise, with every free and ball joint's quaternion normalized."""
    qpos = mj.qpos0 + scale * rng.normal(size=mj.nq)
    for j in range(mj.njnt):
        if mj.jnt_type[j] in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL):
            a = mj.jnt_qposadr[j] + (3 if mj.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE else 0)
            qpos[a:a + 4] /= np.linalg.norm(qpos[a:a + 4])
    return qpos


def random_state(mj, seed: int, scale: float):
    """(qpos, qvel ~ N(0, (2 scale)²), controls ~ U(-1.5, 1.5)) of the seed."""
    rng = np.random.default_rng(seed)
    qpos = random_qpos(mj, rng, scale)
    return qpos, scale * rng.normal(size=mj.nv) * 2, rng.uniform(-1.5, 1.5, size=mj.nu)
