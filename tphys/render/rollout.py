"""From a TorchRL rollout of a tphys env to a video file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tphys.render.draw import render_frames
from tphys.render.video import write_video


def rollout_positions(td, env_index: int = 0) -> np.ndarray:
    """[T + 1, P, d] positions (m) of env ``env_index`` in a rollout ``td`` of batch [N, T].

    Frame 0 is ``td["x"][env_index, 0]`` (the state before the first step); frame k > 0 is
    ``td["next", "x"][env_index, k - 1]`` (the state after step k).
    """
    if td.batch_dims != 2:
        raise ValueError(
            f"expected a rollout tensordict of batch [num_envs, steps] as env.rollout() returns, got batch {tuple(td.batch_size)}"
        )
    num_envs, num_steps = td.batch_size
    if isinstance(env_index, bool) or not isinstance(env_index, (int, np.integer)):
        raise ValueError(f"env_index must be an int, got {env_index!r}")
    if not 0 <= env_index < num_envs:
        raise ValueError(f"env_index {env_index} is out of range for a rollout of {num_envs} envs (valid: 0 .. {num_envs - 1})")
    keys = td.keys(include_nested=True)
    for key in ("x", ("next", "x")):
        if key not in keys:
            raise ValueError(f"rollout tensordict has no {key!r} entry (particle positions [N, T, P, d])")
    first = td["x"][env_index, :1]
    after = td["next", "x"][env_index]
    x = np.concatenate([first.detach().cpu().numpy(), after.detach().cpu().numpy()], 0)
    return x.astype(np.float64)


def save_rollout(
    env,
    td,
    path: str | Path,
    env_index: int = 0,
    every: int = 1,
    fps: float | None = None,
    *,
    size: tuple[int, int] = (480, 480),
    show_reward: bool = True,
) -> Path:
    """Render env ``env_index`` of a rollout ``td`` (batch [N, T]) to a GIF, or an MP4 by suffix.

    Args:
        env: the tphys env that produced ``td`` (for ``render_geometry()``, ``dt`` and, where it has
            one, ``render_positions(td, env_index)``: the [T + 1, P, d] points to draw).
        td: ``env.rollout(T, ...)`` output: ``td["x"]`` and ``td["next", "x"]`` are [N, T, P, d] (m).
        path: destination, ``.gif`` or ``.mp4`` (MP4 needs ``imageio-ffmpeg``).
        env_index: which env of the batch to draw, 0 <= env_index < N.
        every: draw every ``every``-th state (the T + 1 states are steps 0 .. T).
        fps: playback frames per second; default ``1 / (env.dt * every)``, i.e. real time.
        size: (width, height) of the frames in pixels.
        show_reward: append the step's reward ``td["next", "reward"]`` to the title (frames after step 0).

    Returns:
        The path written.

    Raises:
        ValueError: malformed ``td``, ``env_index`` out of range, ``every`` < 1, bad suffix or fps.
    """
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    # Particle envs carry positions ("x"); others (rigid bodies) map their state to drawable points.
    x = env.render_positions(td, env_index) if hasattr(env, "render_positions") else rollout_positions(td, env_index)
    steps = list(range(0, x.shape[0], every))
    labels = None
    if show_reward and ("next", "reward") in td.keys(include_nested=True):
        reward = td["next", "reward"][env_index].detach().cpu().reshape(-1).tolist()
        labels = ["" if s == 0 else f"r = {reward[s - 1]:.3g}" for s in steps]
    dt = float(env.dt)
    frames = render_frames(env.render_geometry(), x[steps], dt=dt, steps=steps, labels=labels, size=size)
    fps = 1.0 / (dt * every) if fps is None else fps
    return write_video(frames, path, fps)
