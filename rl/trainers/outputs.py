"""A finished run's outputs: ``eval.json`` (the final policy against the uniform random policy, from the same
initial states, and the env's episode metrics), ``curve.png`` and the policy's video.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from rl import distributed
from rl.trainers.checkpoint import atomic_write_text
from rl.trainers.evaluation import evaluate
from rl.trainers.logging import plot_curves


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class UniformRandomPolicy(torch.nn.Module):
    """Writes ``action`` uniform in the env's action box, drawn from its own generator seeded with ``seed`` (the same
    actions whatever ran before; for a data-parallel shard of the envs, drawn for all the global envs and sliced)."""

    def __init__(self, env: EnvBase, seed: int):
        super().__init__()
        self.low, self.high = env.action_spec.space.low, env.action_spec.space.high
        self.generator = torch.Generator().manual_seed(int(seed))
        self.shard = distributed.env_shard(env)

    def forward(self, td):
        s = self.shard
        u = torch.rand((s.total, *self.low.shape[1:]), generator=self.generator, dtype=torch.float64)[s.start:s.stop]
        return td.set("action", self.low + (self.high - self.low) * u.to(self.low.dtype))


@torch.no_grad()
def random_policy_return(env: EnvBase, episodes: int, seed: int = 0):
    """Uniform random actions in the action box, scored as every policy is: one episode per env, ended at its
    first done (``evaluate``), from the same initial states when the caller reseeds ``env`` first."""
    return evaluate(env, UniformRandomPolicy(env, seed), episodes, deterministic=False)


def finish_run(cfg: DictConfig, run_dir: Path, eval_env: EnvBase, policy, env_steps: int, wall_time: float,
               algo_name: str | None = None, stochastic: bool = True) -> dict:
    """Write ``eval.json`` (final policy: deterministic, stochastic unless the policy has no noise,
    random policy, and the env's episode metrics), ``curve.png`` and the video.

    Under data parallelism every rank evaluates its share of the episodes (collectives); rank 0 writes and prints.
    """
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
    if not distributed.is_main():
        return summary
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
    with set_exploration_type(ExplorationType.DETERMINISTIC), distributed.sharded_noise(distributed.env_shard(env)):
        while count < episodes:
            traj = env.rollout(int(env.horizon), policy, break_when_any_done=False)
            for name, value in env.episode_metrics(traj).items():
                values.setdefault(name, []).append(distributed.gather_envs(env, value.double()))
            count += distributed.env_shard(env).total
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
