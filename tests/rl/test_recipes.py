"""Recipes: Hydra config errors name the key; every first-order recipe runs end to end on a tiny config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

import tphys.envs
from rl.experiment import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "config"
RECIPES = ("sapo", "shac", "apg", "trajopt")
TINY = ["env=pendulum2d", "num_envs=4", "algo.horizon=8", "eval.episodes=4", "eval.num_envs=4", "eval.every=2",
        "progress=false", "checkpoint_every=2"]


def composed(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_every_registered_env_has_a_config():
    names = {p.stem for p in (CONFIG_DIR / "env").glob("*.yaml")}
    assert set(tphys.envs.list_envs()) <= names
    for name in names:
        cfg = composed("sapo", [f"env={name}"])
        check_config(cfg)


def test_unknown_env_lists_the_options():
    with pytest.raises(MissingConfigException, match=r"Could not find 'env/nope'(.|\n)*rope"):
        composed("sapo", ["env=nope"])
    cfg = composed("sapo", ["env.name=nope"])
    with pytest.raises(ConfigError, match=r"env.name: unknown env 'nope'"):
        check_config(cfg)


def test_unknown_algorithm_option_names_the_key():
    with pytest.raises(ConfigCompositionException, match=r"algo.horizn"):
        composed("sapo", ["algo.horizn=16"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_horizon_longer_than_episode_and_bad_num_envs_are_rejected(recipe):
    with pytest.raises(ConfigError, match=r"algo.horizon=151 is longer than the episode of env 'rope3d' \(150 steps\)"):
        check_config(composed(recipe, ["algo.horizon=151"]))
    with pytest.raises(ConfigError, match="num_envs must be an int >= 1, got 0"):
        check_config(composed(recipe, ["num_envs=0"]))


def run_recipe(name, overrides, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "recipes" / f"{name}.py"), *overrides], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke_run_writes_every_output(recipe, tmp_path):
    steps = "total_steps=256" if recipe != "trajopt" else "algo.epochs=1"
    proc = run_recipe(recipe, [*TINY, steps, "video.every=30", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "curve.png", "eval.json", "policy.gif", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["deterministic"]["episodes"] == 4 and summary["algo"] == recipe
    assert "eval over 4 episodes" in proc.stdout


def test_bad_config_fails_the_recipe_with_the_key_in_the_message(tmp_path):
    proc = run_recipe("sapo", ["num_envs=0", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0 and "num_envs must be an int >= 1" in proc.stderr


PODS_TINY = ["env=pendulum2d", "+env.options.horizon=12", "num_envs=4", "eval.episodes=4", "eval.num_envs=4", "eval.every=1",
             "progress=false", "checkpoint_every=1", "algo.cg_iterations=3", "algo.regression_steps=5", "dtype=float64"]


@pytest.mark.parametrize("order", [1, 2])
def test_pods_recipe_writes_every_output_and_the_paper_metrics(order, tmp_path):
    proc = run_recipe("pods", [*PODS_TINY, f"algo.order={order}", "total_steps=96", "video.every=6", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "curve.png", "eval.json", "policy.gif", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["algo"] == f"pods{order}" and summary["env_steps"] == 96 and summary["stochastic"] is None
    assert set(summary["metrics"]["deterministic"]) == {"final_kinetic_energy", "final_distance", "mean_handle_speed"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["pods/improved_return"] >= r["train/episode_return"] for r in records if "pods/improved_return" in r)
    assert ("pods/cg_iterations" in records[0]) == (order == 2)


def test_pods_recipe_resumes_from_its_checkpoint(tmp_path):
    first = run_recipe("pods", [*PODS_TINY, "total_steps=48", "video.enabled=false", f"hydra.run.dir={tmp_path}"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_recipe("pods", [*PODS_TINY, "total_steps=96", "video.enabled=false", f"resume={tmp_path}",
                                 f"hydra.run.dir={tmp_path / 'resumed'}"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 96


def test_pods_rejects_a_bad_order(tmp_path):
    proc = run_recipe("pods", [*PODS_TINY, "algo.order=3", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0 and "algo.order must be 1 or 2" in proc.stderr


def test_gps_recipe_trains_and_resumes(tmp_path):
    tiny = [arg for arg in PODS_TINY if not arg.startswith("algo.cg_iterations")]
    first = run_recipe("gps", [*tiny, "total_steps=48", "video.enabled=false", f"hydra.run.dir={tmp_path}"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_recipe("gps", [*tiny, "total_steps=96", "video.every=6", f"resume={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}"])
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["algo"] == "gps" and summary["env_steps"] == 96 and summary["stochastic"] is None
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [48, 96]
    # every c-step keeps its KL bound (0.2 per step x 12 steps x the adapted multiplier) and improves every episode here
    assert all(r["gps/kl"] <= 0.2 * 12 * r["gps/kl_multiplier"] * (1 + 1e-6) for r in records[:1])
    assert all(r["gps/improved_fraction"] == 1.0 for r in records)


def test_sapo_runs_on_rolling_flat_with_the_pointnet_encoder(tmp_path):
    """A tiny MPM config (16³ grid, 108 particles, 20 observed): the recipe trains, evaluates and saves PointNet weights."""
    small = ["+env.options.grid_size=16", "+env.options.lattice=[6,3,6]", "+env.options.samples=20", "+env.options.substeps=4",
             "+env.options.horizon=8", "env.encoder.points=20"]
    proc = run_recipe("sapo", ["env=rolling_flat", "num_envs=2", "algo.horizon=4", "total_steps=16", "eval.episodes=2", "eval.num_envs=2",
                               "eval.every=100", "progress=false", "video.every=2", *small, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["loss"]
    assert any(k.startswith("actor.encoder.pointnet.") for k in state) and any(".pointnet." in k and k.startswith("critic.") for k in state)
    assert (tmp_path / "policy.gif").is_file() and json.loads((tmp_path / "eval.json").read_text())["env"] == "rolling_flat"


@pytest.mark.parametrize("env", ["hand_flip", "fluid_move"])
def test_sapo_runs_on_the_hand_and_fluid_mpm_tasks_with_the_pointnet_encoder(tmp_path, env):
    """Tiny configs (16³ grid, 64 particles, 16 observed): the recipe trains, evaluates and renders."""
    small = ["+env.options.grid_size=16", "+env.options.particles=64", "+env.options.samples=16", "+env.options.substeps=4",
             "+env.options.horizon=8", "env.encoder.points=16"]
    proc = run_recipe("sapo", [f"env={env}", "num_envs=2", "algo.horizon=4", "total_steps=16", "eval.episodes=2", "eval.num_envs=2",
                               "eval.every=100", "progress=false", "video.every=2", *small, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["loss"]
    assert any(k.startswith("actor.encoder.pointnet.") for k in state)
    assert (tmp_path / "policy.gif").is_file() and json.loads((tmp_path / "eval.json").read_text())["env"] == env
