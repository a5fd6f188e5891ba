"""Rendering tphys rollouts to frames, GIF/MP4 videos and PNGs (matplotlib, Agg backend).

    frames = render_frames(env.render_geometry(), positions)   # positions [T, P, d] of one env (m)
    save_rollout(env, td, "rollout.gif", env_index=0)          # td = env.rollout(T, ...), batch [N, T]
    save_frames_png(frames, "frames/")                          # frames/frame_00000.png, ...

``python -m tphys.render ENV_NAME --steps T --out PATH`` renders a random-action rollout.
MP4 output needs the optional ``imageio-ffmpeg`` package; GIF always works.
"""

from tphys.render.draw import FrameRenderer, render_frames
from tphys.render.rollout import rollout_positions, save_rollout
from tphys.render.video import mp4_available, save_frames_png, write_video

__all__ = [
    "FrameRenderer",
    "mp4_available",
    "render_frames",
    "rollout_positions",
    "save_frames_png",
    "save_rollout",
    "write_video",
]
