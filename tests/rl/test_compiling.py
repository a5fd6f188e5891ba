"""Compiled substeps (what the recipes build by default for the rigid and soft envs): Inductor's cache on disk, the
warm-up stated by the trainer, and the compiled step equal to the eager one."""

import pytest
import torch
from point_mass import PointMass1D

import tphys.envs as E
from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import SAPOLoss
from rl.trainers import FirstOrderTrainer, TrainerConfig, read_metrics
from tphys import compiling


def test_the_cache_dir_defaults_to_the_users_cache_and_a_set_one_is_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.use_cache_dir() == tmp_path / "xdg" / "tphys" / "inductor"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "tphys" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.use_cache_dir() == tmp_path / "mine" == compiling.cache_dir()


def test_building_a_compiled_env_points_inductor_at_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    env = E.make("hopper", num_envs=1, compile_substep=True)
    assert env.compiled and not E.make("hopper", num_envs=1).compiled
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "tphys" / "inductor")


def test_compiled_kernels_are_called_from_cpp(monkeypatch):
    """``compile_fixed`` asks Inductor for its C++ wrapper (the Python call around each small kernel was most of a
    compiled substep's time) and aggressive fusion (fewer kernels), and a caller can turn either off."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    compiling.compile_fixed(lambda x: x)
    compiling.compile_fixed(lambda x: x, cpp_wrapper=False, aggressive_fusion=False)
    assert seen == [dict(dynamic=False, options={"cpp_wrapper": True, "aggressive_fusion": True}),
                    dict(dynamic=False, options={"cpp_wrapper": False, "aggressive_fusion": False})]


def trainer_on(compiled: bool, run_dir) -> FirstOrderTrainer:
    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    env.compiled = compiled  # what a compiled env declares (tphys.envs.base.TphysEnv.compiled)
    norm = ObservationNormalizer(2)
    loss = SAPOLoss(env, SquashedGaussianActor(2, 1, (16,), normalizer=norm), ValueEnsemble(2, (16,), normalizer=norm), horizon=5)
    config = TrainerConfig(total_steps=4 * 5 * 3, critic_iterations=1, critic_minibatches=1, progress=False, eval_every=0,
                           checkpoint_every=0)
    return FirstOrderTrainer(loss, config, run_dir=run_dir, normalizer=norm, logger="csv")


@pytest.mark.parametrize("compiled", [True, False])
def test_the_trainer_states_the_warm_up_of_a_compiled_env_once(compiled, capsys, tmp_path):
    trainer = trainer_on(compiled, tmp_path)
    trainer.train()
    out = capsys.readouterr()
    text = out.out + out.err
    assert ("compiles the env's substep" in text) == compiled and ("warm-up" in text) == compiled
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [("time/warmup_s" in r) for r in records] == [compiled, False, False]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ant", "hopper", "cartpole_swingup"])
def test_the_compiled_substep_steps_and_differentiates_as_the_eager_one(name):
    """One frame (DFlex's 16 substeps) from a random initial state: state and the gradient of the reward to the action
    agree with the eager substeps to float32 round-off (compilation fuses ops, so not bitwise)."""
    results = []
    for compiled in (False, True):
        env = E.make(name, num_envs=4, compile_substep=compiled, seed=3)
        td = env.reset()
        action = torch.linspace(-0.9, 0.9, env.action_dim).expand(4, -1).clone().requires_grad_(True)
        td["action"] = action
        td = env.step(td)
        (grad,) = torch.autograd.grad(td["next", "reward"].sum(), action)
        results.append((td["next", "q"].detach(), td["next", "qd"].detach(), grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=2e-4, atol=2e-4)


# where compiling pays (benchmarks/throughput.py --compile, benchmarks/vs_rewarped.py): nowhere on CPU since the C frame
# kernels (benchmarks/vs_rewarped.py --task all, issue 21); the recipes with a C frame take it (backend auto)
COMPILED_BY_DEFAULT: set[str] = set()
C_FRAME_BY_DEFAULT = {"ant", "hopper", "cheetah", "humanoid", "soft_jumper", "cartpole_swingup"}


@pytest.mark.parametrize("env", ["ant", "hopper", "cheetah", "soft_jumper", "humanoid", "snu_humanoid", "cartpole_swingup", "rope"])
def test_the_recipes_compile_where_it_pays_and_the_envs_stay_eager_by_default(env):
    from rl.cli import compose

    cfg = compose("sapo", [f"env={env}"])
    options = dict(cfg.env.options or {})
    assert bool(options.get("compile_substep", False)) == (env in COMPILED_BY_DEFAULT)
    assert E.make(cfg.env.name, num_envs=1).compiled is False  # tests and users' make(): not compiled
    if env in C_FRAME_BY_DEFAULT:  # the recipe's env runs the C frame on this CPU
        assert options.get("backend") == "auto" and E.make(cfg.env.name, num_envs=1, **options).backend == "cpu"
