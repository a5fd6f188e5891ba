"""Config -> env, networks, loss, trainer, and the run's outputs. Shared by ``recipes/*.py``.

A run directory gets: ``config.yaml`` (resolved), ``metrics.jsonl`` and ``logs/`` (TorchRL
logger), ``checkpoints/last.pt``, ``curve.png``, ``eval.json`` and ``policy.gif``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import EnvBase

import tphys.envs
from rl.cli import ConfigError
from rl.modules import DeterministicActor, ObservationNormalizer, PointCloudEncoder, SquashedGaussianActor, ValueEnsemble
from rl.objectives import APGLoss, PODSLoss, SAPOLoss, SHACLoss, TrajOptLoss
from rl.trainers import FirstOrderTrainer, PODSTrainer, TrainerConfig, evaluate, plot_curves
from rl.trainers.checkpoint import atomic_write_text, checkpoint_file, load_checkpoint

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------- validation and envs
def check_config(cfg: DictConfig) -> None:
    """Errors that name the offending key, raised before anything is built."""
    try:
        tphys.envs.registry.resolve(cfg.env.name)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"env.name: {err}") from None
    if not isinstance(cfg.num_envs, int) or isinstance(cfg.num_envs, bool) or cfg.num_envs < 1:
        raise ConfigError(f"num_envs must be an int >= 1, got {cfg.num_envs!r}")
    if cfg.total_steps is not None and float(cfg.total_steps) < 1:
        raise ConfigError(f"total_steps must be >= 1, got {cfg.total_steps!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if int(cfg.eval.episodes) < 1 or int(cfg.eval.num_envs) < 1:
        raise ConfigError("eval.episodes and eval.num_envs must be >= 1")
    horizon = cfg.algo.get("horizon")
    if horizon is not None:
        episode = episode_length(cfg)
        if not isinstance(horizon, int) or horizon < 1:
            raise ConfigError(f"algo.horizon must be an int >= 1, got {horizon!r}")
        if horizon > episode:
            raise ConfigError(f"algo.horizon={horizon} is longer than the episode of env {cfg.env.name!r} ({episode} steps)")


def episode_length(cfg: DictConfig) -> int:
    return int(make_env(cfg, num_envs=1, seed=0).horizon)


def make_env(cfg: DictConfig, num_envs: int | None = None, seed: int | None = None) -> EnvBase:
    """The env of ``cfg.env`` (name, goal, options) with ``num_envs`` (default ``cfg.num_envs``)."""
    options = cfg.env.get("options")
    options = {} if options is None else dict(OmegaConf.to_container(options, resolve=True))
    return tphys.envs.make(
        cfg.env.name, num_envs=int(num_envs or cfg.num_envs), device=cfg.device, dtype=DTYPES[cfg.dtype],
        goal=cfg.env.goal, seed=int(cfg.seed if seed is None else seed), **options,
    )


def make_eval_env(cfg: DictConfig) -> EnvBase:
    """Evaluation env: its own seed (``seed + 10_000``) so evaluation never shifts training resets."""
    return make_env(cfg, num_envs=int(cfg.eval.num_envs), seed=int(cfg.seed) + 10_000)


def setup(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))


def prepare_run(cfg: DictConfig, run_dir: str | Path) -> tuple[Path, EnvBase, EnvBase]:
    """Validate, seed, write config.yaml; returns (run dir, training env, evaluation env)."""
    check_config(cfg)
    setup(cfg)
    run_dir = resolve_run_dir(cfg, run_dir)
    write_config(cfg, run_dir)
    return run_dir, make_env(cfg), make_eval_env(cfg)


def train_or_resume(cfg: DictConfig, trainer) -> None:
    """``trainer.train()``, first loading ``cfg.resume``'s checkpoint when there is one."""
    if cfg.resume:
        trainer.resume(checkpoint_file(cfg.resume))
        print(f"resumed from {checkpoint_file(cfg.resume)} at env step {trainer.env_steps}")
    trainer.train()


# ---------------------------------------------------------------------- first-order algorithms
def point_cloud_encoder(cfg: DictConfig, obs_dim: int):
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



def build_first_order(cfg: DictConfig, env: EnvBase) -> tuple:
    """``(loss, normalizer)`` for ``cfg.algo.name`` in apg, shac, sapo, trajopt."""
    algo = cfg.algo
    obs_dim = int(env.observation_spec["observation"].shape[-1])
    action_dim = int(env.action_spec.shape[-1])
    dtype = DTYPES[cfg.dtype]
    if algo.name == "trajopt":
        return TrajOptLoss(env, horizon=int(algo.horizon), gamma=float(algo.gamma)), None
    normalizer = ObservationNormalizer(obs_dim) if algo.obs_norm else None
    encoder = point_cloud_encoder(cfg, obs_dim)
    actor = SquashedGaussianActor(
        obs_dim, action_dim, tuple(algo.actor_hidden), algo.activation, state_dependent_std=bool(algo.state_dependent_std),
        log_std_bounds=tuple(algo.log_std_bounds), init_log_std=float(algo.init_log_std), normalizer=normalizer,
        encoder=None if encoder is None else encoder(),
    ).to(dtype)
    if algo.name == "apg":
        return APGLoss(env, actor, int(algo.horizon), float(algo.gamma)), normalizer
    critic = ValueEnsemble(obs_dim, tuple(algo.critic_hidden), algo.activation, num_critics=int(algo.num_critics),
                           normalizer=normalizer, encoder=encoder).to(dtype)
    if algo.name == "shac":
        tau = algo.target_tau
        return SHACLoss(env, actor, critic, int(algo.horizon), float(algo.gamma), float(algo.lmbda),
                        None if tau is None else float(tau)), normalizer
    if algo.name == "sapo":
        return SAPOLoss(env, actor, critic, int(algo.horizon), float(algo.gamma), float(algo.lmbda),
                        target_entropy=algo.target_entropy, init_alpha=float(algo.init_alpha)), normalizer
    raise ConfigError(f"algo.name: unknown first-order algorithm {algo.name!r}; valid: apg, shac, sapo, trajopt")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    algo = cfg.algo
    return TrainerConfig(
        total_steps=int(float(cfg.total_steps)), actor_lr=float(algo.actor_lr), critic_lr=float(algo.get("critic_lr", 0.0)),
        alpha_lr=float(algo.get("alpha_lr", 0.0)), optimizer=algo.optimizer, betas=tuple(algo.betas),
        weight_decay=float(algo.get("weight_decay", 0.0)), lr_schedule=algo.lr_schedule, lr_end=float(algo.lr_end),
        grad_clip=None if algo.grad_clip is None else float(algo.grad_clip),
        critic_iterations=int(algo.get("critic_iterations", 0)), critic_minibatches=int(algo.get("critic_minibatches", 1)),
        eval_every=int(cfg.eval.every), eval_episodes=int(cfg.eval.episodes), checkpoint_every=int(cfg.checkpoint_every),
        on_nonfinite=cfg.on_nonfinite, seed=int(cfg.seed), progress=bool(cfg.progress),
    )


def run_first_order(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train, evaluate and write every output of a first-order run; returns the eval summary."""
    if cfg.total_steps is None and cfg.algo.name == "trajopt":
        cfg.total_steps = int(cfg.algo.epochs) * episode_length(cfg) * int(cfg.num_envs)
    run_dir, env, eval_env = prepare_run(cfg, run_dir)
    loss, normalizer = build_first_order(cfg, env)
    trainer = FirstOrderTrainer(loss, trainer_config(cfg), run_dir=run_dir, eval_env=eval_env, normalizer=normalizer,
                                logger=cfg.logger)
    train_or_resume(cfg, trainer)
    return finish_run(cfg, run_dir, eval_env, loss.actor, trainer.env_steps, trainer.wall_time)


# ---------------------------------------------------------------------- PODS
def build_pods(cfg: DictConfig, env: EnvBase) -> tuple[PODSLoss, ObservationNormalizer | None]:
    """``(loss, normalizer)`` of PODS with the deterministic tanh policy of its appendix A.3."""
    algo = cfg.algo
    obs_dim = int(env.observation_spec["observation"].shape[-1])
    action_dim = int(env.action_spec.shape[-1])
    normalizer = ObservationNormalizer(obs_dim) if algo.obs_norm else None
    actor = DeterministicActor(obs_dim, action_dim, tuple(algo.actor_hidden), algo.activation, bool(algo.layer_norm),
                               normalizer=normalizer).to(DTYPES[cfg.dtype])
    cap, change = algo.newton_step_cap, algo.max_action_change
    loss = PODSLoss(env, actor, order=int(algo.order), max_action_change=None if change is None else float(change),
                    newton_step_cap=None if cap is None else float(cap), line_search_trials=int(algo.line_search_trials),
                    armijo=float(algo.armijo),
                    cg_iterations=int(algo.cg_iterations), cg_tol=float(algo.cg_tol), damping=float(algo.damping),
                    gradient_fallback=bool(algo.get("gradient_fallback", True)))
    return loss, normalizer


def run_pods(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train PODS, evaluate and write every output; returns the eval summary."""
    if int(cfg.algo.order) not in (1, 2):
        raise ConfigError(f"algo.order must be 1 or 2, got {cfg.algo.order!r}")
    run_dir, env, eval_env = prepare_run(cfg, run_dir)
    loss, normalizer = build_pods(cfg, env)
    trainer = PODSTrainer(loss, trainer_config(cfg), regression_steps=int(cfg.algo.regression_steps),
                          minibatches=int(cfg.algo.minibatches), run_dir=run_dir, eval_env=eval_env, normalizer=normalizer,
                          logger=cfg.logger)
    train_or_resume(cfg, trainer)
    return finish_run(cfg, run_dir, eval_env, loss.actor, trainer.env_steps, trainer.wall_time,
                      algo_name=f"pods{int(cfg.algo.order)}", stochastic=False)


# ---------------------------------------------------------------------- run directory and outputs
def resolve_run_dir(cfg: DictConfig, run_dir: str | Path) -> Path:
    """A resumed run continues in the directory its checkpoint lives in."""
    if cfg.resume:
        ckpt = checkpoint_file(cfg.resume)
        load_checkpoint(ckpt)  # FileNotFoundError names the path early
        return ckpt.parent.parent
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    """``config.yaml``: the experiment's resolved config (``resume`` is not part of it: ``recipe.json`` records resumes)."""
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["resume"] = None
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(saved))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class UniformRandomPolicy(torch.nn.Module):
    """Writes ``action`` uniform in the env's action box, drawn from its own generator seeded with ``seed`` (the same
    actions whatever ran before)."""

    def __init__(self, env: EnvBase, seed: int):
        super().__init__()
        self.low, self.high = env.action_spec.space.low, env.action_spec.space.high
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, td):
        u = torch.rand(self.low.shape, generator=self.generator, dtype=torch.float64).to(self.low.dtype)
        return td.set("action", self.low + (self.high - self.low) * u)


@torch.no_grad()
def random_policy_return(env: EnvBase, episodes: int, seed: int = 0):
    """Uniform random actions in the action box, scored as every policy is: one episode per env, ended at its
    first done (``evaluate``), from the same initial states when the caller reseeds ``env`` first."""
    return evaluate(env, UniformRandomPolicy(env, seed), episodes, deterministic=False)


def finish_run(cfg: DictConfig, run_dir: Path, eval_env: EnvBase, policy, env_steps: int, wall_time: float,
               algo_name: str | None = None, stochastic: bool = True) -> dict:
    """Write ``eval.json`` (final policy: deterministic, stochastic unless the policy has no noise,
    random policy, and the env's episode metrics), ``curve.png`` and the video."""
    episodes = int(cfg.eval.episodes)
    t0 = time.perf_counter()
    seed = int(cfg.seed) + 10_000
    eval_env.set_seed(seed)  # every evaluation starts from the same initial states
    det = evaluate(eval_env, policy, episodes, deterministic=True)
    sto = None
    if stochastic:
        eval_env.set_seed(seed)
        sto = evaluate(eval_env, policy, episodes, deterministic=False)
    eval_env.set_seed(seed)
    rnd = random_policy_return(eval_env, episodes, seed)
    summary = {
        "algo": algo_name or cfg.algo.name, "env": cfg.env.name, "goal": cfg.env.goal, "seed": int(cfg.seed),
        "env_steps": int(env_steps), "train_wall_time_s": round(float(wall_time), 2),
        "deterministic": det.to_dict(), "stochastic": None if sto is None else sto.to_dict(), "random_policy": rnd.to_dict(),
        "commit": git_commit(), "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if hasattr(eval_env, "episode_metrics"):
        eval_env.set_seed(seed)
        summary["metrics"] = {"deterministic": episode_metrics(eval_env, policy, episodes),
                              "random_policy": episode_metrics(eval_env, None, episodes, seed)}
    summary["eval_wall_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(run_dir / "eval.json", json.dumps(summary, indent=2))
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curve.png",
                title=f"{summary['algo']} on {cfg.env.name} ({cfg.env.goal}), seed {cfg.seed}")
    if cfg.video.enabled:
        write_policy_video(eval_env, policy, run_dir / f"policy.{cfg.video.format}", every=int(cfg.video.every))
    noisy = "" if sto is None else f"stochastic {sto.mean:.2f} ± {sto.ci95:.2f}, "
    print(f"eval over {episodes} episodes: deterministic {det.mean:.2f} ± {det.ci95:.2f}, {noisy}"
          f"random policy {rnd.mean:.2f} ± {rnd.ci95:.2f}")
    print(f"outputs in {run_dir}")
    return summary


@torch.no_grad()
def episode_metrics(env: EnvBase, policy, episodes: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and std over ``episodes`` of ``env.episode_metrics`` (deterministic policy; None: the uniform random policy
    of ``random_policy_return``, seeded with ``seed``)."""
    if policy is None:
        policy = UniformRandomPolicy(env, seed)
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    values: dict[str, list[torch.Tensor]] = {}
    count = 0
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while count < episodes:
            traj = env.rollout(int(env.horizon), policy, break_when_any_done=False)
            for name, value in env.episode_metrics(traj).items():
                values.setdefault(name, []).append(value.double())
            count += int(env.batch_size.numel())
    out = {}
    for name, chunks in values.items():
        v = torch.cat(chunks)[:episodes]
        out[name] = {"mean": v.mean().item(), "std": v.std().item() if v.numel() > 1 else 0.0}
    return out


@torch.no_grad()
def write_policy_video(env: EnvBase, policy, path: Path, every: int = 2) -> Path | None:
    """One deterministic episode of ``policy`` (env 0 of ``env``) as a GIF or MP4."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from tphys.render import mp4_available, save_rollout

    if path.suffix == ".mp4" and not mp4_available():
        print("MP4 needs imageio-ffmpeg; writing a GIF instead")
        path = path.with_suffix(".gif")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        traj = env.rollout(int(env.horizon), policy, break_when_any_done=False)
    return save_rollout(env, traj, path, env_index=0, every=every)
