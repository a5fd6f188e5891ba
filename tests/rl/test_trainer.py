"""First-order trainer: bit-for-bit resume, non-finite guard, evaluation statistics."""

import math

import pytest
import torch
from point_mass import PointMass1D

from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import SAPOLoss
from rl.trainers import FirstOrderTrainer, NonFiniteError, TrainerConfig, evaluate, read_metrics, summarize, t_quantile_975


def make_trainer(run_dir=None, seed=0, logger="none", **cfg):
    torch.manual_seed(seed)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=seed)
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    critic = ValueEnsemble(2, (16,), normalizer=norm)
    loss = SAPOLoss(env, actor, critic, horizon=5)
    config = TrainerConfig(total_steps=4 * 5 * 8, critic_iterations=2, critic_minibatches=2, progress=False, seed=seed,
                           eval_every=0, checkpoint_every=0, **cfg)
    return FirstOrderTrainer(loss, config, run_dir=run_dir, normalizer=norm, logger=logger)


def test_resume_reproduces_the_next_losses_bit_for_bit(tmp_path):
    straight = make_trainer()
    for _ in range(3):
        straight.step()
    straight.save(tmp_path / "ckpt.pt")
    expected = [straight.step() for _ in range(3)]

    resumed = make_trainer(seed=1)  # different init: everything must come from the checkpoint
    resumed.resume(tmp_path / "ckpt.pt")
    got = [resumed.step() for _ in range(3)]
    for e, g in zip(expected, got):
        for key in ("loss/actor", "loss/critic", "sapo/alpha", "sapo/entropy", "train/window_reward"):
            assert e[key] == g[key], (key, e[key], g[key])
    assert resumed.env_steps == straight.env_steps and resumed.iteration == straight.iteration


def test_training_loop_runs_to_total_steps_and_logs(tmp_path):
    trainer = make_trainer(run_dir=tmp_path, logger="csv")
    trainer.train()
    assert trainer.env_steps == 160 and trainer.iteration == 8
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [20 * (i + 1) for i in range(8)]
    assert all(isinstance(r["loss/actor"], float) for r in records)
    assert any((tmp_path / "logs").rglob("*.csv"))
    assert trainer.learning_rates(trainer.iterations)["actor"] == pytest.approx(1e-5)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_gradient_is_reported_and_never_trained_on(policy):
    trainer = make_trainer(on_nonfinite=policy, max_skips=1)
    trainer.step()
    with torch.no_grad():
        trainer.loss.actor.net.head.weight[0, 0] = float("nan")
    before = [p.clone() for p in trainer.loss.critic.parameters()]
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"iteration 1 \(env steps 20\)"):
            trainer.step()
    else:
        out = trainer.step()
        assert out == {"train/skipped": 1.0}
        assert trainer.iteration == 1  # the window was dropped
        with pytest.raises(NonFiniteError, match="max_skips"):
            trainer.step()
    for b, p in zip(before, trainer.loss.critic.parameters()):
        assert torch.equal(b, p)


def test_trainer_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        TrainerConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="on_nonfinite"):
        TrainerConfig(on_nonfinite="ignore")


def test_confidence_interval_matches_student_t():
    assert t_quantile_975(63) == pytest.approx(1.9983405, abs=1e-4)
    assert t_quantile_975(9) == pytest.approx(2.2621572, abs=2e-3)
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    res = summarize(r, True)
    assert res.mean == pytest.approx(3.2)
    assert res.ci95 == pytest.approx(t_quantile_975(4) * r.std().item() / math.sqrt(5))


def test_evaluate_counts_full_episodes():
    env = PointMass1D(num_envs=3, horizon=7, dtype=torch.float32)
    actor = SquashedGaussianActor(2, 1, (8,))
    res = evaluate(env, actor, episodes=5, deterministic=True)
    assert res.episodes == 5 and len(res.returns) == 5 and all(r < 0 for r in res.returns)


def test_progress_postfix_shows_a_dash_until_an_episode_has_finished_then_the_return():
    from rl.trainers.logging import progress_postfix

    assert progress_postfix({}, 1234.0, None) == {"ret": "-", "steps/s": "1,234"}
    assert progress_postfix({"train/episode_return": float("nan")}, 10.0, None)["ret"] == "-"
    shown = progress_postfix({"train/episode_return": -3.14159}, 10.0, {"eval/return": 2.0})
    assert shown == {"ret": "-3.1", "steps/s": "10", "eval": "2.0"}
