"""tphys.render: frames, GIF/PNG writing, input checks and the CLI, on tiny rollouts."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import tphys.envs as E
from tphys.render import mp4_available, render_frames, rollout_positions, save_frames_png, save_rollout, write_video
from tphys.render.__main__ import main as render_cli
from tphys.render.geometry import make_scene, view_box

STEPS = 5
SMALL = (160, 120)  # (width, height) for the tests that do not check the default size


@pytest.fixture(scope="module", params=["pendulum2d", "cloth"])
def rollout(request):
    torch.manual_seed(0)
    env = E.make(request.param, num_envs=2, seed=0)
    with torch.no_grad():
        td = env.rollout(STEPS, policy=None, break_when_any_done=False)
    return env, td


def test_rollout_positions_joins_first_state_and_next_states(rollout):
    env, td = rollout
    x = rollout_positions(td, env_index=1)
    assert x.shape == (STEPS + 1, *td["x"].shape[2:])
    np.testing.assert_allclose(x[0], td["x"][1, 0].numpy())
    np.testing.assert_allclose(x[1:], td["next", "x"][1].numpy())


def test_frames_have_fixed_size_and_show_motion(rollout):
    env, td = rollout
    x = rollout_positions(td, env_index=1)
    frames = render_frames(env.render_geometry(), torch.as_tensor(x), title=False)  # no title: only motion changes pixels
    assert len(frames) == STEPS + 1
    for frame in frames:
        assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8
    assert any(not np.array_equal(frames[0], f) for f in frames[1:]), "frames do not change over time"
    # Handles are drawn as red squares (#d62728).
    red = (np.abs(frames[0].astype(int) - [214, 39, 40]).sum(-1) < 30).sum()
    assert red > 20


def test_blitting_matches_a_full_redraw(rollout):
    env, td = rollout
    x = rollout_positions(td, env_index=0)[:3]
    fast = render_frames(env.render_geometry(), x, dt=env.dt, size=SMALL)
    full = render_frames(env.render_geometry(), x, dt=env.dt, size=SMALL, blit=False)
    for a, b in zip(fast, full, strict=True):
        assert a.shape == (SMALL[1], SMALL[0], 3)
        assert (np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30).mean() < 0.02  # antialiasing at overlaps


def test_save_rollout_gif_reads_back(rollout, tmp_path):
    env, td = rollout
    path = save_rollout(env, td, tmp_path / "sub" / "roll.gif", env_index=1, size=SMALL)
    assert path.exists()
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (STEPS + 1, SMALL[1], SMALL[0])
    sparse = save_rollout(env, td, tmp_path / "every2.gif", every=2, size=SMALL)
    assert iio.imread(sparse, index=None).shape[0] == len(range(0, STEPS + 1, 2))


def test_view_box_covers_trajectory_and_ground(rollout):
    env, td = rollout
    x = rollout_positions(td, 0)
    geometry = env.render_geometry()
    scene = make_scene(geometry, x)
    low, high = view_box(scene, x)
    assert (x >= low).all() and (x <= high).all()
    assert np.allclose((high - low) >= 0.3 * (high - low).max(), True)
    if geometry["ground"] is not None:
        assert low[1] <= geometry["ground"] <= high[1]


def test_bad_inputs_raise_clear_errors(rollout, tmp_path):
    env, td = rollout
    geometry = env.render_geometry()
    x = rollout_positions(td, 0)
    wrong_dim = np.zeros((*x.shape[:2], 5 - x.shape[-1]))
    with pytest.raises(ValueError, match="last dimension"):
        render_frames(geometry, wrong_dim)
    with pytest.raises(ValueError, match=r"\[T, P"):
        render_frames(geometry, x[0])
    with pytest.raises(ValueError, match="reference"):
        render_frames(geometry, x[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        render_frames(geometry, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="edges"):
        render_frames({**geometry, "edges": [[0, 99]], "cable": [True], "reference": None}, x)
    for index in (2, -1):
        with pytest.raises(ValueError, match="out of range"):
            save_rollout(env, td, tmp_path / "x.gif", env_index=index)
    with pytest.raises(ValueError, match="every"):
        save_rollout(env, td, tmp_path / "x.gif", every=0)
    with pytest.raises(ValueError, match="batch"):
        save_rollout(env, td[0], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="unsupported video format"):
        save_rollout(env, td, tmp_path / "x.avi")


def test_mp4_needs_imageio_ffmpeg(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    if mp4_available():
        assert write_video(frames, tmp_path / "a.mp4", fps=10).exists()
    else:
        with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
            write_video(frames, tmp_path / "a.mp4", fps=10)


def test_save_frames_png_numbers_the_files(tmp_path):
    frames = [np.full((24, 32, 3), v, np.uint8) for v in (0, 100, 200)]
    paths = save_frames_png(frames, tmp_path / "png")
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    np.testing.assert_array_equal(iio.imread(paths[1]), frames[1])
    with pytest.raises(ValueError, match="one size"):
        save_frames_png([frames[0], np.zeros((8, 8, 3), np.uint8)], tmp_path / "bad")


def test_cli_writes_a_gif(tmp_path, capsys):
    out = tmp_path / "pendulum.gif"
    render_cli(["pendulum2d", "--steps", "3", "--out", str(out), "--size", "96"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert iio.imread(out, index=None).shape[:3] == (4, 96, 96)
