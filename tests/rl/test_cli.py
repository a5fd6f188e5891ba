"""The recipes' command line (rl.cli): no key is ignored, wrong types name the key, ``resume=RUN_DIR`` restores the run's
own config and refuses overrides that would change the experiment, writing nothing before it has checked them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl.cli import ConfigError, recipe_main, resume_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ["env=pendulum2d", "env.goal=stop", "num_envs=4", "algo.horizon=8", "eval.episodes=4", "eval.num_envs=4", "eval.every=0",
        "progress=false", "checkpoint_every=1", "video.enabled=false", "total_steps=64"]


def refused(argv, capsys, config_name="sapo"):
    """Run the command line with a run function that must not be reached; returns the error text."""
    def never(cfg, run_dir):
        raise AssertionError("the run started")

    with pytest.raises(SystemExit) as exit_info:
        recipe_main(config_name, never, argv=argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("line", ["totl_steps=1000", "+totl_steps=1000", "++totl_steps=1000"])
def test_an_unknown_key_is_refused_with_or_without_plus(line, capsys, tmp_path):
    err = refused([line, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert err.startswith("error: unknown config key 'totl_steps': no such key") and "total_steps" in err
    assert not (tmp_path / "run").exists()


def test_another_algorithm_is_refused_naming_its_recipe(capsys):
    """A recipe wires one algorithm: ``recipes/sapo.py algo=shac`` would build SAPO's loss from SHAC's settings."""
    assert refused(["algo=shac"], capsys).strip() == (
        "error: algo=shac: recipes/sapo.py wires sapo (its modules, loss and trainer); run recipes/shac.py for shac")


def test_plus_and_plain_unknown_keys_get_the_same_message(capsys):
    assert refused(["algo.horizn=3"], capsys) == refused(["+algo.horizn=3"], capsys)
    assert "keys at 'algo'" in refused(["+algo.horizn=3"], capsys)


@pytest.mark.parametrize("line, message", [
    ("seed=abc", "seed must be an int, got 'abc' (string)"),
    ("total_steps=abc", "total_steps must be an int, got 'abc' (string)"),
    ("num_envs=2.5", "num_envs must be an int, got 2.5 (number)"),
    ("algo.actor_lr=abc", "algo.actor_lr must be a number, got 'abc' (string)"),
    ("algo.actor_lr=inf", "algo.actor_lr must be a finite number, got inf"),
    ("algo.critic_lr=nan", "algo.critic_lr must be a finite number, got nan"),
    ("algo.actor_lr=-1e-3", "algo.actor_lr must be a finite number > 0, got -0.001"),
    ("algo.actor_lr=0", "algo.actor_lr must be a finite number > 0, got 0"),
    ("progress=maybe", "progress must be a bool, got 'maybe' (string)"),
    ("algo.actor_hidden=64", "algo.actor_hidden must be a list, got 64 (int)"),
    ("seed=null", "seed must be an int, got null"),
    ("algo.betas=[0.9,inf]", "algo.betas[1] must be a finite number, got inf"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(line, message, capsys):
    assert refused([line], capsys).strip() == f"error: {message}"


@pytest.mark.parametrize("line, message", [
    ("algo.gamma=1.5", "algo.gamma must be in (0, 1], got 1.5"),
    ("seed=99999999999999999999999", "seed must be an int in [-2^63, 2^64 - 10001] (torch's seeds; the eval env takes seed + "
                                      "10000), got 99999999999999999999999"),
    ("env=nonexistent", "env=nonexistent: no such env in recipes/config/env; valid: ant, cable_payload2d, cartpole_swingup, "
                        "cheetah, cloth, double_pendulum3d, fluid_move, hand_flip, hopper, humanoid, pendulum2d, pendulum3d, "
                        "rolling_flat, rope, rope3d, snu_humanoid, soft_jumper"),
    ("threads=0", "threads must be >= 1, got 0"),
    ("eval.every=-1", "eval.every must be >= 0 (0: never), got -1"),
    ("algo.betas=[0.9,1.0]", "algo.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("algo.log_std_bounds=[2.0,-5.0]", "algo.log_std_bounds must be (low, high) with low < high, got [2.0, -5.0]"),
    ("algo.grad_clip=0", "algo.grad_clip must be > 0 (null: no clipping), got 0"),
    ("algo.critic_minibatches=0", "algo.critic_minibatches must be >= 1, got 0"),
    ("dtype=float16", "dtype must be one of float32, float64, got 'float16'"),
    ("logger=wandb", "logger must be one of csv, tensorboard, none, got 'wandb'"),
    ("on_nonfinite=ignore", "on_nonfinite must be one of stop, skip, got 'ignore'"),
    ("algo.optimizer=sgd", "algo.optimizer must be one of adam, adamw, got 'sgd'"),
    ("algo.activation=gelu", "algo.activation must be one of silu, elu, relu, tanh, got 'gelu'"),
    ("algo.lr_schedule=cosine", "algo.lr_schedule must be one of linear, constant, got 'cosine'"),
    ("device=meta", "device must be cpu or cuda[:index], got 'meta'"),
    ("device=banana", "device must be a torch device such as cpu or cuda:0, got 'banana'"),
])
def test_a_setting_out_of_its_range_or_choices_names_the_key(line, message, capsys):
    assert refused([line], capsys).strip() == f"error: {message}"


@pytest.mark.parametrize("recipe", ["sapo", "shac", "apg", "trajopt", "pods", "gps", "ppo", "sac"])
def test_every_recipes_defaults_pass_the_checks(recipe):
    from rl.cli import compose, validate

    for env in ("rope", "ant", "hand_flip"):
        validate(recipe, compose(recipe, [f"env={env}"]), [f"env={env}", f"algo={recipe}"])


def test_a_damaged_run_config_is_named(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(run_dir, run)
    (run / "config.yaml").write_text("{ not: yaml: at all")
    assert f"cannot read the run's config {run / 'config.yaml'}" in refused([f"resume={run}"], capsys)
    (run / "config.yaml").write_text("a: 1\n")
    assert "is not a tphys recipe config" in refused([f"resume={run}"], capsys)


def test_values_of_the_right_type_pass(capsys):
    """2e6 for an int key, an int for a float key, null where the recipe takes one: no error before the run starts."""
    from rl.cli import compose, validate

    cfg = compose("sapo", ["total_steps=2e6", "algo.actor_lr=1", "algo.grad_clip=null", "+env.options.horizon=50"])
    validate("sapo", cfg, ["env=rope", "algo=sapo"])


def test_the_recipe_process_refuses_a_plus_key_before_hydra_writes_anything(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "sapo.py"), "+totl_steps=1000", f"hydra.run.dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2 and "unknown config key 'totl_steps'" in proc.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "pendulum"
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "sapo.py"), *TINY, f"hydra.run.dir={path}"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def snapshot(path: Path) -> dict:
    return {p.relative_to(path): (p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*") if p.is_file()}


def test_resume_alone_restores_the_runs_own_config(run_dir):
    cfg, where, entry = resume_config("sapo", str(run_dir), [])
    assert where == run_dir and cfg.env.name == "pendulum2d" and cfg.env.goal == "stop" and cfg.num_envs == 4
    assert cfg.resume == str(run_dir / "checkpoints" / "last.pt") and entry["env_steps"] == 64


@pytest.mark.parametrize("overrides, keys", [
    (["env=rope"], ["env (run: pendulum2d, given: rope3d)"]),
    (["env.goal=stop_at_origin"], ["env.goal (run: 'stop', given: 'stop_at_origin')"]),
    (["seed=3", "num_envs=8"], ["seed (run: 0, given: 3)", "num_envs (run: 4, given: 8)"]),
    (["dtype=float64"], ["dtype"]),
    (["algo=shac"], ["algo"]),
    (["algo.actor_hidden=[8,8]"], ["algo.actor_hidden (run: [256, 128], given: [8, 8])"]),
    (["+env.options.horizon=9"], ["env.options.horizon (run: unset, given: 9)"]),
])
def test_resume_refuses_overrides_that_change_the_experiment_and_writes_nothing(run_dir, overrides, keys, capsys):
    before = snapshot(run_dir)
    err = refused([f"resume={run_dir}", *overrides], capsys)
    assert "would change the experiment" in err
    for key in keys:
        assert key in err
    assert snapshot(run_dir) == before


def test_resume_accepts_an_override_equal_to_the_runs_value(run_dir):
    cfg, _, _ = resume_config("sapo", str(run_dir), ["env=pendulum2d", "env.goal=stop", "num_envs=4"])
    assert cfg.env.goal == "stop"


def test_resume_with_a_larger_total_steps_extends_the_run_and_records_it(run_dir, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    seen = {}

    def record(cfg, where):
        seen["cfg"], seen["dir"] = cfg, where

    recipe_main("sapo", record, argv=[f"resume={run}", "total_steps=128", "threads=1", "progress=false"])
    assert seen["dir"] == run and seen["cfg"].total_steps == 128 and seen["cfg"].env.goal == "stop"
    resumes = json.loads((run / "recipe.json").read_text())["resumes"]
    assert resumes[-1]["overrides"] == {"total_steps": 128, "threads": 1, "progress": False} and resumes[-1]["env_steps"] == 64


def test_resume_refuses_a_total_below_what_was_trained(run_dir):
    with pytest.raises(ConfigError, match="total_steps=32 is less than the 64 env steps"):
        resume_config("sapo", str(run_dir), ["total_steps=32"])


def test_resume_with_another_recipe_is_refused(run_dir, capsys):
    assert "made by recipes/sapo.py, not recipes/shac.py" in refused([f"resume={run_dir}"], capsys, config_name="shac")


def test_resume_of_a_directory_without_a_checkpoint_names_it(tmp_path, capsys):
    err = refused([f"resume={tmp_path}"], capsys)
    assert f"no checkpoint at {tmp_path / 'checkpoints' / 'last.pt'}" in err


def test_the_saved_config_is_the_experiment_not_the_resume(run_dir):
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.resume is None and saved.env.goal == "stop"


def test_hydra_flags_with_a_value_after_overrides_print_the_config(monkeypatch, capsys):
    """``--cfg hydra -p hydra.launcher`` after overrides: the recipe's own ``hydra.job.name=`` override used to be
    appended after the flags, which argparse refused ("unrecognized arguments")."""
    def never(cfg, run_dir):
        raise AssertionError("the run started")

    monkeypatch.setattr(sys, "argv", ["sapo.py"])
    recipe_main("sapo", never, argv=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"])
    out = capsys.readouterr().out
    assert "SlurmLauncher" in out and "partition: gpu" in out


def test_a_cuda_device_this_machine_lacks_is_refused_by_the_envs_check(capsys):
    """The recipes ask tphys.envs' own device check (one mechanism): an index past this machine's count is refused too."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    err = refused([f"device=cuda:{count}"], capsys).strip()
    assert err.startswith(f"error: device='cuda:{count}': device 'cuda:{count}' is not available: this machine has {count} "
                          "CUDA device(s)") and err.endswith("use device=cpu")
