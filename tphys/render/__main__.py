"""Render a random-action rollout of a tphys env: ``python -m tphys.render ENV_NAME [--steps T] [--out PATH]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import tphys.envs as E
from tphys.render import save_rollout
from tphys.render.video import VIDEO_SUFFIXES, mp4_available


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tphys.render", description=__doc__)
    parser.add_argument("env", help=f"env name: {', '.join(E.list_envs())} (or an alias)")
    parser.add_argument("--steps", type=int, default=None, help="rollout length in env steps (default: the env's horizon)")
    parser.add_argument("--out", default=None, help="output .gif or .mp4 (default: ENV.gif in the current folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial state and of the random actions")
    parser.add_argument("--every", type=int, default=1, help="draw every n-th step")
    parser.add_argument("--fps", type=float, default=None, help="playback frames per second (default: real time)")
    parser.add_argument("--size", type=int, default=480, help="frame width and height in pixels")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")
    if args.size < 16:
        parser.error(f"--size must be >= 16, got {args.size}")

    out = Path(args.out or f"{args.env}.gif")
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        parser.error(f"--out must end in one of {', '.join(VIDEO_SUFFIXES)}, got {str(out)!r}")
    if out.suffix.lower() == ".mp4" and not mp4_available():
        parser.error("writing .mp4 needs the imageio-ffmpeg package: `pip install imageio-ffmpeg`, or use a .gif")
    try:
        env = E.make(args.env, num_envs=1, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    steps = env.horizon if args.steps is None else args.steps
    torch.manual_seed(args.seed)  # random actions come from the action spec, i.e. torch's global generator
    start = time.perf_counter()
    with torch.no_grad():
        td = env.rollout(steps, policy=None, break_when_any_done=False)
    simulated = time.perf_counter()
    path = save_rollout(env, td, out, every=args.every, fps=args.fps, size=(args.size, args.size))
    done = time.perf_counter()
    print(f"{args.env}: {steps} steps simulated in {simulated - start:.2f} s, rendered in {done - simulated:.2f} s")
    print(path)


if __name__ == "__main__":
    main()
