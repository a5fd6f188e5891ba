"""The first-order and PODS recipes' networks, built from the recipe's config: one function per kind.

Each reads the ``algo`` keys it needs, takes the training env for the observation and action sizes,
and returns a module in ``cfg.dtype``. A recipe calls them in the order their weights are initialised
(actor, then critics), so a seed gives the same networks. The baselines' are in ``rl.baselines.networks``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl.cli import ConfigError
from rl.modules import DeterministicActor, ObservationNormalizer, PointCloudEncoder, SquashedGaussianActor, ValueEnsemble

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def sizes(env: EnvBase) -> tuple[int, int]:
    """``(observation size, action size)`` of ``env``."""
    return int(env.observation_spec["observation"].shape[-1]), int(env.action_spec.shape[-1])


def observation_normalizer(cfg: DictConfig, env: EnvBase) -> ObservationNormalizer | None:
    """The running observation normalizer a recipe's networks share (None with ``algo.obs_norm: false``)."""
    return ObservationNormalizer(sizes(env)[0]) if cfg.algo.obs_norm else None


def point_cloud_encoder(cfg: DictConfig, obs_dim: int) -> Callable[[], PointCloudEncoder] | None:
    """A factory of ``PointCloudEncoder``s from ``cfg.env.encoder`` (None where the env config has none).

    ``env.encoder``: {points: M, blocks: [64, 128, 256], out_dim: 64}; the env's ``observation``
    must start with the M x 3 point cloud (the tphys MPM envs do). The actor and every critic get their
    own encoder (SAPO paper, appendix B.2).
    """
    spec = cfg.env.get("encoder")
    if spec is None:
        return None
    unknown = sorted(set(spec) - {"points", "blocks", "out_dim"})
    if unknown:
        raise ConfigError(f"env.encoder: unknown key(s) {unknown}; valid: points, blocks, out_dim")
    points, blocks, out_dim = int(spec.points), tuple(spec.get("blocks", (64, 128, 256))), int(spec.get("out_dim", 64))
    return lambda: PointCloudEncoder(obs_dim, points, 3, blocks, out_dim)


def gaussian_actor(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> SquashedGaussianActor:
    """The squashed-Gaussian actor of APG, SHAC and SAPO (with the env's point-cloud encoder, if it has one)."""
    algo = cfg.algo
    obs_dim, action_dim = sizes(env)
    encoder = point_cloud_encoder(cfg, obs_dim)
    return SquashedGaussianActor(
        obs_dim, action_dim, tuple(algo.actor_hidden), algo.activation, state_dependent_std=bool(algo.state_dependent_std),
        log_std_bounds=tuple(algo.log_std_bounds), init_log_std=float(algo.init_log_std), normalizer=normalizer,
        encoder=None if encoder is None else encoder(),
    ).to(DTYPES[cfg.dtype])


def value_ensemble(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> ValueEnsemble:
    """``algo.num_critics`` state-value critics (each with its own point-cloud encoder, if the env has one)."""
    algo = cfg.algo
    obs_dim = sizes(env)[0]
    return ValueEnsemble(obs_dim, tuple(algo.critic_hidden), algo.activation, num_critics=int(algo.num_critics),
                         normalizer=normalizer, encoder=point_cloud_encoder(cfg, obs_dim)).to(DTYPES[cfg.dtype])


def deterministic_actor(cfg: DictConfig, env: EnvBase, normalizer: ObservationNormalizer | None) -> DeterministicActor:
    """PODS's deterministic tanh policy (appendix A.3: 2 x 256 ReLU, no LayerNorm)."""
    algo = cfg.algo
    obs_dim, action_dim = sizes(env)
    return DeterministicActor(obs_dim, action_dim, tuple(algo.actor_hidden), algo.activation, bool(algo.layer_norm),
                              normalizer=normalizer).to(DTYPES[cfg.dtype])
