"""Zeroth-order baselines (TorchRL PPO and SAC): recipe smoke runs, bit-for-bit resume, the non-finite guard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from rl.experiment import check_config, load_recipe, make_env, setup
from rl.trainers import NonFiniteError, evaluate, read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "config"
TINY = ["env=pendulum2d", "num_envs=8", "algo.horizon=8", "eval.episodes=4", "eval.num_envs=4", "eval.every=2",
        "progress=false", "checkpoint_every=1"]
SAC_TINY = ["algo.warmup_steps=64", "algo.batch_size=64"]  # 1 random batch, then updates on 64 samples
RUNS = {name: (load_recipe(name).run, load_recipe(name).make_trainer, extra) for name, extra in (("ppo", []), ("sac", SAC_TINY))}


def composed(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_configs_hold_table_2_and_pass_check_config():
    ppo, sac = composed("ppo", []), composed("sac", [])
    for cfg in (ppo, sac):
        check_config(cfg)
        algo = cfg.algo
        assert (algo.horizon, algo.gamma, algo.actor_lr, algo.critic_lr, algo.grad_clip) == (32, 0.99, 5e-4, 5e-4, 0.5)
        assert algo.optimizer == "adamw" and list(algo.betas) == [0.9, 0.999] and algo.activation == "silu" and algo.layer_norm
        assert list(algo.actor_hidden) == [256, 128] and list(algo.critic_hidden) == [256, 128]
    assert ppo.num_envs * ppo.algo.horizon == 2048
    assert (ppo.algo.name, ppo.algo.epochs, ppo.algo.lmbda) == ("ppo", 5, 0.95)
    assert (ppo.algo.lr_schedule, ppo.algo.kl_target, list(ppo.algo.log_std_bounds)) == ("adaptive_kl", 0.008, [-2.302585, 0.0])
    assert (sac.algo.name, sac.algo.updates_per_batch, sac.algo.alpha_lr, sac.algo.target_tau) == ("sac", 8, 5e-3, 0.995)
    assert (float(sac.algo.replay_size), sac.algo.init_alpha, list(sac.algo.log_std_bounds)) == (1e6, 1.0, [-5.0, 2.0])


def run_recipe(name, overrides, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "recipes" / f"{name}.py"), *overrides], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("recipe", ["ppo", "sac"])
def test_recipe_smoke_run_writes_every_output(recipe, tmp_path):
    proc = run_recipe(recipe, [*TINY, *RUNS[recipe][2], "total_steps=192", "video.every=30", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "curve.png", "eval.json", "policy.gif", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["algo"] == recipe and summary["env_steps"] == 192 and summary["deterministic"]["episodes"] == 4
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [64, 128, 192]
    assert {"eval/return", "eval/return_ci95", "time/wall", "train/step_reward"} <= set(records[-1])
    assert "eval over 4 episodes" in proc.stdout


@pytest.mark.parametrize("recipe", ["ppo", "sac"])
def test_resumed_run_continues_bit_for_bit(recipe, tmp_path):
    run, make_trainer, extra = RUNS[recipe]
    base = [*TINY, *extra, "logger=none", "video.enabled=false", "eval.every=0"]
    run(composed(recipe, [*base, "total_steps=128"]), tmp_path / "a")
    summary = run(composed(recipe, [*base, "total_steps=256", f"resume={tmp_path / 'a'}"]), tmp_path / "ignored")
    assert summary["env_steps"] == 256 and json.loads((tmp_path / "a" / "eval.json").read_text())["env_steps"] == 256
    cfg = composed(recipe, [*base, "total_steps=256"])
    setup(cfg)
    make_trainer(cfg, make_env(cfg), run_dir=tmp_path / "b", logger=cfg.logger).train()  # the same run, uninterrupted
    resumed, straight = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [64, 128, 192, 256]
    for r, s in zip(resumed, straight):
        assert r["loss/critic"] == s["loss/critic"] and r["train/step_reward"] == s["train/step_reward"], r["step"]


@pytest.mark.parametrize("recipe", ["ppo", "sac"])
def test_nonfinite_critic_stops_with_the_iteration(recipe, tmp_path):
    _, make_trainer, extra = RUNS[recipe]
    cfg = composed(recipe, [*TINY, *extra, "logger=none", "total_steps=256"])
    setup(cfg)
    trainer = make_trainer(cfg, make_env(cfg), run_dir=tmp_path, logger=cfg.logger)
    critic = trainer.parameter_groups["critic"][0]
    with torch.no_grad():
        critic.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite values at iteration 0 \(env steps 0\)"):
        trainer.train()


def test_simulator_nan_during_collection_is_skipped_when_asked(tmp_path):
    cfg = composed("ppo", [*TINY, "logger=none", "total_steps=256", "on_nonfinite=skip", "eval.every=0"])
    setup(cfg)
    env = make_env(cfg)
    step, calls = env._step, []

    def failing_step(td):
        calls.append(None)
        if len(calls) == 12:  # inside the second batch
            raise FloatingPointError("injected")
        return step(td)

    env._step = failing_step
    trainer = load_recipe("ppo").make_trainer(cfg, env, run_dir=tmp_path, logger=cfg.logger)
    trainer.train()
    assert trainer.skips == 1 and trainer.env_steps == 256 and trainer.iteration == 4


@pytest.mark.parametrize("recipe", ["ppo", "sac"])
def test_policy_evaluates_deterministically_in_range(recipe, tmp_path):
    _, make_trainer, extra = RUNS[recipe]
    cfg = composed(recipe, [*TINY, *extra, "logger=none", "total_steps=64"])
    trainer = make_trainer(cfg, make_env(cfg), run_dir=tmp_path, logger=cfg.logger)
    env = make_env(cfg, num_envs=4, seed=1)
    first = evaluate(env, trainer.actor, 4, deterministic=True)
    env = make_env(cfg, num_envs=4, seed=1)
    assert evaluate(env, trainer.actor, 4, deterministic=True).returns == first.returns
    td = trainer.actor(env.reset())
    assert td["action"].dtype == torch.float32 and td["action"].abs().max() < 1 and td["action_log_prob"].shape == (4,)
