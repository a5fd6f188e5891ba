"""The trainers' non-finite guard covers parameters and optimizer state after every update, a non-finite action from
the policy goes through the same stop/skip path, and a policy that stops learning is warned about."""

import logging

import pytest
import torch
from point_mass import PointMass1D

import tphys.envs
from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import APGLoss, SAPOLoss
from rl.trainers import FirstOrderTrainer, NonFiniteError, TrainerConfig
from rl.trainers.guard import StallMonitor, nonfinite_state


def sapo_trainer(on_nonfinite="stop", env=None, **cfg):
    torch.manual_seed(0)
    env = env or PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    norm = ObservationNormalizer(obs_dim)
    actor = SquashedGaussianActor(obs_dim, action_dim, (16,), normalizer=norm)
    critic = ValueEnsemble(obs_dim, (16,), normalizer=norm)
    loss = SAPOLoss(env, actor, critic, horizon=5)
    config = TrainerConfig(total_steps=4 * 5 * 8, critic_iterations=2, critic_minibatches=2, progress=False, seed=0, eval_every=0,
                           checkpoint_every=0, on_nonfinite=on_nonfinite, max_skips=1, **cfg)
    return FirstOrderTrainer(loss, config, normalizer=norm, logger="none")


def poison_after_step(optimizer, at_step, poison):
    """An optimizer hook that makes something non-finite right after optimizer step number ``at_step``."""
    count = {"n": 0}

    def hook(opt, args, kwargs):
        count["n"] += 1
        if count["n"] == at_step:
            poison()

    optimizer.register_step_post_hook(hook)


def weight(trainer):
    return trainer.loss.actor.net.head.weight


def test_nonfinite_weights_after_the_update_stop_at_that_iteration_naming_the_parameter():
    trainer = sapo_trainer("stop")
    poison_after_step(trainer.actor_opt, 2, lambda: weight(trainer).data.__setitem__((0, 0), float("nan")))
    trainer.step()
    with pytest.raises(NonFiniteError, match=r"iteration 1 \(env steps 20\).*non-finite parameters.*actor\.net\.head\.weight"):
        trainer.step()


def test_nonfinite_optimizer_state_is_caught_and_named():
    trainer = sapo_trainer("stop")

    def poison():
        next(iter(trainer.actor_opt.state.values()))["exp_avg_sq"].fill_(float("inf"))

    poison_after_step(trainer.actor_opt, 1, poison)
    with pytest.raises(NonFiniteError, match=r"iteration 0 \(env steps 0\).*actor_opt\.state\[0\]\.exp_avg_sq"):
        trainer.step()


def test_a_skipped_update_is_undone_whole():
    trainer = sapo_trainer("skip")
    trainer.step()
    before = {k: v.clone() for k, v in trainer.loss.state_dict().items()}
    opt_before = trainer.actor_opt.state_dict()["state"][0]["exp_avg"].clone()
    poison_after_step(trainer.actor_opt, 1, lambda: weight(trainer).data.__setitem__((0, 0), float("nan")))
    out = trainer.step()
    assert out == {"train/skipped": 1.0} and trainer.iteration == 1
    after = trainer.loss.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # weights, critic, normalizer statistics and alpha as before
    assert torch.equal(trainer.actor_opt.state_dict()["state"][0]["exp_avg"], opt_before)
    assert not nonfinite_state({"loss": trainer.loss}, {"actor": trainer.actor_opt})


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nonfinite_action_goes_through_the_stop_skip_path(policy):
    env = tphys.envs.make("pendulum2d", num_envs=3, seed=0)
    trainer = sapo_trainer(policy, env=env)
    trainer.step()
    with torch.no_grad():
        trainer.loss.actor.net.head.bias.fill_(float("nan"))
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"iteration 1 \(env steps 15\): simulator: .*non-finite action"):
            trainer.step()
    else:
        assert trainer.step() == {"train/skipped": 1.0}


def test_a_policy_that_stops_learning_is_warned_about(caplog):
    """A saturated tanh policy (the dead policy an absurd learning rate leaves): its gradient is exactly 0."""
    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    actor = SquashedGaussianActor(2, 1, (16,))
    with torch.no_grad():
        actor.net.head.bias.fill_(1e4)
    trainer = FirstOrderTrainer(APGLoss(env, actor, horizon=5), TrainerConfig(total_steps=200, progress=False, eval_every=0,
                                                                          checkpoint_every=0), logger="none")
    with caplog.at_level(logging.WARNING, logger="rl.trainers"):
        scalars = [trainer.step() for _ in range(4)]
    assert all(s["grad_norm/actor"] == 0.0 for s in scalars)
    assert "warn/stalled" not in scalars[1] and scalars[2]["warn/stalled"] == 1.0 and scalars[3]["warn/stalled"] == 1.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "stopped learning: actor gradient exactly 0 for 3 iterations" in warnings[0]


def test_stall_monitor_sees_a_loss_grown_by_orders_of_magnitude_and_recovery():
    monitor = StallMonitor(patience=2, growth=1e3, floor=0.1)
    assert [monitor.update(1.0, loss) for loss in (1.0, 2.0, 900.0)] == [None] * 3  # first level 1.0
    assert monitor.update(1.0, 1e4) is None and "over 1000x its first level 1" in monitor.update(1.0, -5e4)
    assert monitor.update(1.0, 3e5) is None  # warned once per stall
    assert monitor.update(1.0, 1.0) is None and not monitor.stalled  # recovered
    assert monitor.update(0.0, 1.0) is None and monitor.update(0.0, 1.0) is not None
    tiny = StallMonitor(patience=1, growth=1e3, floor=0.1)
    assert tiny.update(1.0, 1e-6) is None and tiny.update(1.0, 50.0) is None  # a first loss near 0 is floored at 0.1


def test_an_absurd_learning_rate_is_warned_about(caplog):
    """SAPO with actor_lr=1e3 (the issue's case): the actor loss explodes by orders of magnitude and stays there."""
    trainer = sapo_trainer("stop", env=tphys.envs.make("pendulum2d", num_envs=4, seed=0), actor_lr=1e3)
    with caplog.at_level(logging.WARNING, logger="rl.trainers"):
        scalars = [trainer.step() for _ in range(6)]
    assert any("stopped learning" in r.getMessage() for r in caplog.records), [s["loss/actor"] for s in scalars]
    assert scalars[-1].get("warn/stalled") == 1.0


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_the_baseline_trainers_guard_parameters_and_optimizer_state_too(policy, tmp_path):
    """PPO: a weight made non-finite by the update stops the run naming it, or (skip) the update is undone whole."""
    from rl.cli import compose
    from rl.experiment import load_recipe

    cfg = compose("ppo", ["env=pendulum2d", "num_envs=4", "algo.horizon=8", "total_steps=64", "progress=false", "eval.every=0",
                          "checkpoint_every=0", "logger=none", f"on_nonfinite={policy}"])
    env = tphys.envs.make("pendulum2d", num_envs=4, seed=0)
    trainer = load_recipe("ppo").make_trainer(cfg, env, run_dir=tmp_path, logger=cfg.logger)
    net = trainer.actor.module[0].module[0].mlp
    first = next(net.parameters())
    before = {k: v.clone() for k, v in trainer.loss.state_dict().items()}
    last_step = int(cfg.algo.epochs) * int(cfg.algo.minibatches)  # after the batch's last step: no later loss sees it
    poison_after_step(trainer.actor_opt, last_step, lambda: first.data.fill_(float("nan")))
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"ppo: non-finite values at iteration 0 \(env steps 0\): non-finite parameters"):
            trainer.train()
    else:
        trainer.iterations = 1
        trainer.train()
        assert trainer.skips == 1
        for key, value in before.items():
            assert torch.equal(value, trainer.loss.state_dict()[key]), key


def test_the_baselines_clip_a_finite_gradient_whose_float32_norm_overflows():
    """PPO/SAC clip as the first-order trainers do (one ``clip_grad_norm`` in the shared loop): ``clip_grad_norm_`` would
    zero these finite gradients (its float32 norm is inf)."""
    from rl.trainers import clip_grad_norm

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3e19, 3e19, 0.0, 0.0])
    norm = clip_grad_norm([p], 1.0)
    assert norm == pytest.approx(3e19 * 2**0.5, rel=1e-6)
    assert torch.allclose(p.grad, torch.tensor([0.5**0.5, 0.5**0.5, 0.0, 0.0]), atol=1e-6)
