"""The shared loop (rl.trainers.loop): optimizers come from the groups a loss declares, ``after_update`` is the one
hook for target networks, and the typed configs read a recipe's config."""

import pytest
import torch
from point_mass import PointMass1D

from rl.baselines import PPOConfig, SACConfig
from rl.cli import compose
from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import APGLoss, SHACLoss
from rl.trainers import FirstOrderTrainer, PODSConfig, Trainer, TrainerConfig

CONFIG = dict(total_steps=4 * 5 * 8, critic_iterations=2, critic_minibatches=2, progress=False, eval_every=0, checkpoint_every=0)


def point_mass_losses():
    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    return env, norm, actor


def test_one_optimizer_per_declared_group_with_its_learning_rate():
    env, norm, actor = point_mass_losses()
    apg = FirstOrderTrainer(APGLoss(env, actor, horizon=5), TrainerConfig(**CONFIG), logger="none")
    assert list(apg.optimizers) == ["actor"] and apg.critic_opt is None and apg.alpha_opt is None
    shac_loss = SHACLoss(env, actor, ValueEnsemble(2, (16,), normalizer=norm), horizon=5, target_tau=0.9)
    shac = FirstOrderTrainer(shac_loss, TrainerConfig(**CONFIG, actor_lr=1e-3, critic_lr=1e-4), normalizer=norm, logger="none")
    assert list(shac.optimizers) == ["actor", "critic"]
    assert [g["lr"] for g in shac.actor_opt.param_groups] == [1e-3] and [g["lr"] for g in shac.critic_opt.param_groups] == [1e-4]
    assert {id(p) for p in shac.critic_opt.param_groups[0]["params"]} == {id(p) for p in shac_loss.critic.parameters()}


def test_after_update_is_called_once_per_window_and_moves_the_target_critic():
    env, norm, actor = point_mass_losses()
    loss = SHACLoss(env, actor, ValueEnsemble(2, (16,), normalizer=norm), horizon=5, target_tau=0.9)
    trainer = FirstOrderTrainer(loss, TrainerConfig(**CONFIG), normalizer=norm, logger="none")
    calls, after_update = [], loss.after_update

    def checked_after_update():
        target, critic = [t.clone() for t in loss.critic_target.parameters()], [p.clone() for p in loss.critic.parameters()]
        after_update()
        for before, p, t in zip(target, critic, loss.critic_target.parameters()):
            assert torch.equal(t, torch.lerp(before, p, 0.1)) and not torch.equal(t, before)
        calls.append(trainer.iteration)

    loss.after_update = checked_after_update
    trainer.step()
    trainer.step()
    assert calls == [0, 1]


def test_a_loss_declaring_an_unknown_group_is_refused():
    env, norm, actor = point_mass_losses()
    loss = APGLoss(env, actor, horizon=5)
    loss.parameter_groups = lambda: {"actor": list(actor.parameters()), "dynamics": [torch.nn.Parameter(torch.zeros(1))]}
    with pytest.raises(ValueError, match=r"declares parameter groups \['dynamics'\]; valid: actor, critic, alpha"):
        FirstOrderTrainer(loss, TrainerConfig(**CONFIG), logger="none")


def test_a_trainer_without_step_says_what_to_implement():
    env, _, actor = point_mass_losses()
    trainer = Trainer(APGLoss(env, actor, horizon=5), TrainerConfig(**CONFIG), env, steps_per_iter=20)
    with pytest.raises(NotImplementedError, match="must implement step"):
        trainer.train()


def test_typed_configs_read_the_recipe_configs():
    sapo = TrainerConfig.from_config(compose("sapo", ["total_steps=2e6", "eval.every=7", "algo.grad_clip=null", "seed=3"]))
    assert (sapo.total_steps, sapo.eval_every, sapo.grad_clip, sapo.seed) == (2_000_000, 7, None, 3)
    assert (sapo.actor_lr, sapo.critic_lr, sapo.alpha_lr, sapo.betas, sapo.critic_iterations) == (2e-3, 5e-4, 5e-3, (0.7, 0.95), 16)
    apg = TrainerConfig.from_config(compose("apg", []))  # no critic, no temperature: their keys are absent
    assert (apg.critic_lr, apg.alpha_lr, apg.critic_iterations, apg.critic_minibatches) == (0.0, 0.0, 0, 1)
    pods = PODSConfig.from_config(compose("pods", ["algo.regression_steps=7"]))
    assert (pods.regression_steps, pods.minibatches, pods.lr_schedule, pods.grad_clip) == (7, 1, "constant", None)
    ppo = PPOConfig.from_config(compose("ppo", []))
    assert (ppo.horizon, ppo.epochs, ppo.lr_schedule, ppo.kl_target, ppo.lr_min, ppo.lr_max) == (32, 5, "adaptive_kl", 0.008, 1e-6, 1e-2)
    sac = SACConfig.from_config(compose("sac", []))
    assert (sac.lr_schedule, sac.replay_size, sac.warmup_steps, sac.batch_size) == ("constant", 1_000_000, 4096, 2048)
    assert type(sac.replay_size) is int


@pytest.mark.parametrize("config, kwargs, message", [
    (TrainerConfig, {"critic_minibatches": 0}, "critic_minibatches must be >= 1, got 0"),
    (PODSConfig, {"regression_steps": 0}, "regression_steps must be >= 1, got 0"),
    (PPOConfig, {"epochs": 0}, "epochs must be >= 1, got 0"),
    (PPOConfig, {"lr_schedule": "linear"}, "unknown lr_schedule 'linear'; valid: adaptive_kl, constant"),
    (SACConfig, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
])
def test_typed_configs_refuse_values_out_of_range(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)
