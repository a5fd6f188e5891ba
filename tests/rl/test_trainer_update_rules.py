"""The first-order trainer's update rules by hand (issue 22: the mutation job's tests for ``rl/trainers/loop.py``'s
learning-rate schedule and gradient clipping and ``rl/trainers/first_order.py``'s critic mini-epochs)."""

import copy
import math
import re

import pytest
import torch
from point_mass import PointMass1D

from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import SHACLoss
from rl.trainers import FirstOrderTrainer, NonFiniteError, TrainerConfig
from rl.trainers.loop import clip_grad_norm


def params_with_grads(*grads):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g), dtype=torch.float32))
        p.grad = torch.tensor(g, dtype=torch.float32)
        out.append(p)
    return out


def test_clip_grad_norm_scales_to_the_bound_and_returns_the_norm_before():
    ps = params_with_grads([3.0, 0.0], [4.0, 12.0])  # total norm 13
    ps.append(torch.nn.Parameter(torch.ones(2)))  # no gradient: skipped
    assert clip_grad_norm(ps, 6.5) == pytest.approx(13.0, rel=1e-12)
    scale = 6.5 / (13.0 + 1e-6)
    assert ps[0].grad.tolist() == pytest.approx([3.0 * scale, 0.0], rel=1e-6)
    assert ps[1].grad.tolist() == pytest.approx([4.0 * scale, 12.0 * scale], rel=1e-6)
    assert ps[2].grad is None
    ps = params_with_grads([3.0], [4.0])
    assert clip_grad_norm(ps, None) == pytest.approx(5.0) and [p.grad.item() for p in ps] == [3.0, 4.0]  # only measures
    ps = params_with_grads([3.0], [4.0])
    assert clip_grad_norm(ps, 5.0) == pytest.approx(5.0) and [p.grad.item() for p in ps] == [3.0, 4.0]  # at the bound: kept
    ps = params_with_grads([3.0], [4.0])
    assert clip_grad_norm(ps, 7.0) == pytest.approx(5.0) and [p.grad.item() for p in ps] == [3.0, 4.0]
    assert clip_grad_norm([torch.nn.Parameter(torch.ones(2))], 1.0) == 0.0
    big = params_with_grads([3e20, 4e20])  # float32 norm overflows; the float64 one does not
    assert clip_grad_norm(big, 1.0) == pytest.approx(5e20, rel=1e-6)
    assert big[0].grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)


def test_clip_grad_norm_is_the_float64_norm_of_every_tensors_float64_norm():
    """The norm is ``||(||g_i||_2 in float64)_i||_2`` to the last bit, and clipping scales every gradient by
    ``max_norm / (norm + 1e-6)`` exactly (a float32 norm, or a norm of the concatenation, differs in the last bits)."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        shapes = [(int(torch.randint(1, 300, (1,), generator=gen)),) for _ in range(7)] + [(17, 33)]
        grads = [torch.randn(shape, generator=gen) * 10.0 ** float(torch.randint(-3, 4, (1,), generator=gen)) for shape in shapes]
        ps = params_with_grads(*[g.reshape(-1).tolist() for g in grads])
        expected = torch.stack([g.double().norm() for g in grads]).norm().item()
        assert clip_grad_norm(ps, None) == expected
        bound = expected / 3.0
        assert clip_grad_norm(ps, bound) == expected
        for p, g in zip(ps, grads):
            assert torch.equal(p.grad, g.reshape(-1).mul(bound / (expected + 1e-6)))


def trainer(**kw):
    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    loss = SHACLoss(env, actor, ValueEnsemble(2, (16,), normalizer=norm), horizon=5, target_tau=0.9)
    config = dict(total_steps=200, critic_iterations=2, critic_minibatches=3, progress=False, eval_every=0, checkpoint_every=0)
    return FirstOrderTrainer(loss, TrainerConfig(**{**config, **kw}), normalizer=norm, logger="none")


def test_learning_rates_decay_linearly_from_each_groups_rate_to_lr_end():
    """lr(i) = lr + min(i / iterations, 1)·(min(lr_end, lr) - lr); a rate already below lr_end stays; 200 steps of
    4 envs x 5 steps: 10 iterations."""
    t = trainer(actor_lr=2e-3, critic_lr=5e-5, alpha_lr=4e-3, lr_end=1e-4)
    assert t.iterations == 10
    for i, frac in ((0, 0.0), (3, 0.3), (10, 1.0), (15, 1.0)):
        lrs = t.learning_rates(i)
        assert lrs["actor"] == pytest.approx(2e-3 + frac * (1e-4 - 2e-3), rel=1e-12)
        assert lrs["alpha"] == pytest.approx(4e-3 + frac * (1e-4 - 4e-3), rel=1e-12)
        assert lrs["critic"] == pytest.approx(5e-5, rel=1e-12)
    t.iteration = 4
    lrs = t.set_learning_rates()
    assert [g["lr"] for g in t.actor_opt.param_groups] == [pytest.approx(2e-3 + 0.4 * (1e-4 - 2e-3), rel=1e-12)]
    assert [g["lr"] for g in t.critic_opt.param_groups] == [pytest.approx(5e-5, rel=1e-12)]
    assert lrs["actor"] == t.actor_opt.param_groups[0]["lr"]
    constant = trainer(actor_lr=2e-3, lr_schedule="constant", lr_end=1e-4)
    assert constant.learning_rates(7)["actor"] == 2e-3


def window_batch(t):
    out = t.loss(t.env.reset())
    return out["critic_batch"].detach()


def test_critic_mini_epochs_replay_by_hand():
    """K = 2 mini-epochs over 20 rows in 3 minibatches of ceil(20 / 3) = 7, 7, 6 rows of a fresh permutation each
    (the trainer's generator); per minibatch: zero grad, ensemble MSE, backward, clip at grad_clip, AdamW step. The trainer
    normalizes the window's observations once and indexes them; the replay normalizes each minibatch's rows."""
    a, b = trainer(grad_clip=0.05), trainer(grad_clip=0.05)
    batch = window_batch(a)
    assert batch.shape[0] == 20
    last = a.train_critic(batch)
    critic, opt, g = b.loss.critic, b.critic_opt, b.generator
    params = list(critic.parameters())
    sizes, expected = [], None
    for _ in range(2):
        order = torch.randperm(20, generator=g)
        for start in range(0, 20, 7):
            rows = order[start:start + 7]
            sizes.append(rows.numel())
            opt.zero_grad(set_to_none=True)
            loss = b.loss.critic_loss(batch[rows])["loss_critic"]
            loss.backward()
            clip_grad_norm(params, 0.05)
            opt.step()
            expected = loss.item()
    assert sizes == [7, 7, 6, 7, 7, 6]
    assert last == expected
    for p, q in zip(a.loss.critic.parameters(), params):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.loss.critic.parameters(), trainer().loss.critic.parameters()))


def test_the_critics_inputs_are_normalized_once_per_window_as_each_minibatch_would_be():
    """``loss.critic_data`` normalizes the window's observations once (the normalizer holds still through the
    mini-epochs): a minibatch's rows of it give ``critic_loss`` of the same rows to the last bit, and the raw
    observations would not."""
    t = trainer()
    batch = window_batch(t)
    t.normalizer.update(batch["observation"] * 3.0 + 1.0)  # statistics away from mean 0, variance 1
    inputs, targets = t.loss.critic_data(batch)
    assert torch.equal(inputs, t.normalizer(batch["observation"])) and torch.equal(targets, batch["value_target"])
    rows = torch.randperm(20, generator=torch.Generator().manual_seed(1))[:7]
    fit = t.loss.critic_fit_error(inputs[rows], targets[rows])
    assert torch.equal(fit, t.loss.critic_loss(batch[rows])["loss_critic"])
    values = t.loss.critic(batch["observation"][rows])
    assert torch.equal(fit, (values - batch["value_target"][rows].unsqueeze(-1)).square().mean())
    assert not torch.isclose(t.loss.critic_fit_error(batch["observation"][rows], targets[rows]), fit)


def test_a_non_finite_critic_loss_skips_the_update_or_stops(capsys):
    t = trainer(on_nonfinite="skip", max_skips=3)
    batch = window_batch(t)
    batch["value_target"][3] = float("nan")
    before = copy.deepcopy(list(t.loss.critic.parameters()))
    assert math.isnan(t.train_critic(batch)) and t.skips == 1
    assert "non-finite values at iteration 0 (env steps 0): critic loss nan; critic update skipped" in capsys.readouterr().out
    for p, q in zip(t.loss.critic.parameters(), before):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in t.loss.critic.parameters())
    stop = trainer()
    with pytest.raises(NonFiniteError, match="critic loss nan"):
        stop.train_critic(batch)


def sapo_trainer(**kw):
    from rl.objectives import SAPOLoss

    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=5, dtype=torch.float32, seed=0)  # episodes of 5 steps end with the window
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    loss = SAPOLoss(env, actor, ValueEnsemble(2, (16,), normalizer=norm), horizon=5, init_alpha=0.8)
    config = dict(total_steps=200, critic_iterations=2, critic_minibatches=3, progress=False, eval_every=0, checkpoint_every=0,
                  grad_clip=0.01, actor_lr=3e-3, alpha_lr=2e-2, lr_end=1e-4)
    return FirstOrderTrainer(loss, TrainerConfig(**{**config, **kw}), normalizer=norm, logger="none")


def test_one_window_of_the_first_order_trainer_replays_by_hand():
    """step(): reset, the iteration's learning rates, backward of loss_actor + loss_alpha, the actor's gradient clipped
    at grad_clip (the temperature's never), AdamW steps of actor and temperature, the normalizer fed the window's
    observations, the critic's mini-epochs, the next window's start; and the scalars it reports."""
    a, b = sapo_trainer(), sapo_trainer()
    a.iteration = b.iteration = 2  # lr = lr + 0.2·(lr_end - lr): 10 iterations
    torch.manual_seed(11)
    scalars = a.step()
    torch.manual_seed(11)
    b.state = b.env.reset()
    lrs = b.set_learning_rates()
    assert lrs["actor"] == pytest.approx(3e-3 + 0.2 * (1e-4 - 3e-3)) and lrs["alpha"] == pytest.approx(2e-2 + 0.2 * (1e-4 - 2e-2))
    b.zero_grad("actor", "alpha")
    out = b.loss(b.state)
    (out["loss_actor"] + out["loss_alpha"]).backward()
    actor_params = b.parameter_groups["actor"]
    alpha_grad = b.loss.log_alpha.grad.clone()
    norm = clip_grad_norm(actor_params, 0.01)
    assert norm > 0.01  # the clip is active
    assert torch.equal(b.loss.log_alpha.grad, alpha_grad)  # the temperature is not clipped
    b.actor_opt.step()
    b.alpha_opt.step()
    b.normalizer.update(out["critic_batch", "observation"])
    critic_loss = b.train_critic(out["critic_batch"])
    b.loss.after_update()
    for (name, p), q in zip(a.loss.named_parameters(), b.loss.parameters()):
        assert torch.equal(p, q), name
    assert a.normalizer.count.item() == 20 and torch.equal(a.normalizer.mean, b.normalizer.mean)
    assert torch.equal(a.normalizer.var, b.normalizer.var)
    assert torch.equal(a.state["observation"], out["next_state", "observation"])
    assert scalars["grad_norm/actor"] == pytest.approx(norm, rel=1e-12)
    assert scalars["loss/actor"] == pytest.approx(out["loss_actor"].item(), rel=1e-12)
    assert scalars["loss/critic"] == pytest.approx(critic_loss, rel=1e-12)
    assert scalars["lr/actor"] == pytest.approx(lrs["actor"], rel=1e-12)
    assert scalars["train/window_reward"] == pytest.approx(out["window", "reward"].mean().item(), rel=1e-12)
    assert scalars["sapo/alpha"] == pytest.approx(0.8, rel=1e-6)
    assert scalars["sapo/entropy"] == pytest.approx(out["entropy"].item(), rel=1e-12)
    assert (a.iteration, a.env_steps) == (3, 20)
    assert "train/episode_return" in scalars  # the episodes ended with the window
    assert [g["lr"] for g in a.alpha_opt.param_groups] == [pytest.approx(lrs["alpha"])]


def test_clip_factor_keeps_the_1e_6_guard_and_a_one_iteration_run_decays_fully():
    """Clipping scales by max_norm / (norm + 1e-6) (the guard shows at a tiny norm: 5e-6 clipped at 1e-6 scales by 1/6);
    a run of one iteration reaches lr_end at iteration 1."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([3e-6, 4e-6], dtype=torch.float64)
    assert clip_grad_norm([p], 1e-6) == pytest.approx(5e-6, rel=1e-12)
    torch.testing.assert_close(p.grad, torch.tensor([3e-6, 4e-6], dtype=torch.float64) / 6, rtol=1e-12, atol=0)
    t = trainer(total_steps=20, actor_lr=2e-3, lr_end=1e-4)
    assert t.iterations == 1
    assert t.learning_rates(1)["actor"] == pytest.approx(1e-4, rel=1e-12)
    assert t.learning_rates(0)["actor"] == pytest.approx(2e-3, rel=1e-12)


def replay_window(b):
    """One window of ``FirstOrderTrainer.step`` by hand on trainer ``b`` (one process, normalizer, SAPO loss)."""
    if b.state is None:
        b.state = b.env.reset()
    b.set_learning_rates()
    b.zero_grad("actor", "alpha")
    out = b.loss(b.state)
    (out["loss_actor"] + out["loss_alpha"]).backward()
    clip_grad_norm(b.parameter_groups["actor"], b.cfg.grad_clip)
    b.actor_opt.step()
    b.alpha_opt.step()
    b.normalizer.update(out["critic_batch", "observation"])
    b.train_critic(out["critic_batch"])
    b.loss.after_update()
    b.state = out["next_state"]
    b.iteration += 1


def test_two_windows_zero_the_actor_and_temperature_gradients_between_them():
    """Each window's actor and temperature gradients are its own (zeroed before its backward, not accumulated over
    windows): two steps equal two hand windows."""
    a, b = sapo_trainer(), sapo_trainer()
    torch.manual_seed(5)
    a.step()
    a.step()
    torch.manual_seed(5)
    replay_window(b)
    replay_window(b)
    for (name, p), q in zip(a.loss.named_parameters(), b.loss.parameters()):
        assert torch.equal(p, q), name


def test_the_window_reduces_actor_and_temperature_gradients_over_this_ranks_noise(monkeypatch):
    """The data-parallel wiring, observed in one process: the actor phase sums the gradients of the actor's parameters
    and log_alpha over ranks (``rl.distributed.reduce_gradients``), under ``sharded_noise`` of this rank's env shard."""
    import rl.trainers.first_order as first_order
    from rl import distributed

    t = sapo_trainer()
    reduced, shards = [], []
    reduce, noise = distributed.reduce_gradients, first_order.sharded_noise

    def recording_reduce(params, extra=None):
        reduced.append([id(p) for p in params])
        return reduce(params, extra)

    def recording_noise(shard):
        shards.append(shard)
        return noise(shard)

    monkeypatch.setattr(distributed, "reduce_gradients", recording_reduce)
    monkeypatch.setattr(first_order, "sharded_noise", recording_noise)
    t.step()
    actor_ids = [id(p) for p in t.parameter_groups["actor"]] + [id(t.loss.log_alpha)]
    assert reduced[0] == actor_ids
    assert all(r == [id(p) for p in t.parameter_groups["critic"]] for r in reduced[1:]) and len(reduced) == 1 + 2 * 3
    assert shards == [t.env_shard]


@pytest.mark.parametrize("where", ["loss_actor", "loss_alpha", "actor", "alpha"])
def test_a_non_finite_window_names_the_loss_or_parameter(where):
    """A NaN in either loss, or in the actor's or the temperature's gradient, stops the window naming it."""
    t = sapo_trainer()
    forward = t.loss.forward
    if where in ("loss_actor", "loss_alpha"):
        def nan_loss(td):
            out = forward(td)
            out[where] = out[where] * float("nan")
            return out
        t.loss.forward = nan_loss
        message = f"{where} = nan"
    elif where == "actor":
        t.loss.actor.net.head.weight.register_hook(lambda g: g * float("nan"))
        message = "non-finite gradient in ['actor.net.head.weight']"
    else:
        t.loss.log_alpha.register_hook(lambda g: g * float("nan"))
        message = "non-finite gradient in ['log_alpha']"
    with pytest.raises(NonFiniteError, match=re.escape(message)):
        t.step()


def test_stop_mode_takes_no_snapshot_and_skip_mode_one_per_window():
    for policy, expected in (("stop", 0), ("skip", 1)):
        t = sapo_trainer(on_nonfinite=policy)
        calls, snapshot = [], t.snapshot
        t.snapshot = lambda: calls.append(1) or snapshot()
        t.step()
        assert len(calls) == expected, policy


def test_the_normalizer_sees_the_window_or_the_start_states():
    """With a critic batch the normalizer is fed its observations (4 envs x 5 steps); an actor-only loss (APG) feeds it
    the window's start states (4); no normalizer: nothing to feed."""
    from rl.objectives import APGLoss

    t = sapo_trainer()
    t.step()
    assert t.normalizer.count.item() == 20
    torch.manual_seed(0)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    config = dict(total_steps=200, progress=False, eval_every=0, checkpoint_every=0)
    apg = FirstOrderTrainer(APGLoss(env, actor, horizon=5), TrainerConfig(**config), normalizer=norm, logger="none")
    apg.reset_env()
    start = apg.state["observation"].clone()
    scalars = apg.step()
    assert norm.count.item() == 4
    torch.testing.assert_close(norm.mean, start.double().mean(0), rtol=1e-6, atol=1e-7)
    assert math.isnan(scalars["loss/critic"])
    torch.manual_seed(0)
    env2 = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    loss = SHACLoss(env2, SquashedGaussianActor(2, 1, (16,)), ValueEnsemble(2, (16,)), horizon=5, target_tau=0.9)
    bare = FirstOrderTrainer(loss, TrainerConfig(**config, critic_iterations=1, critic_minibatches=1), logger="none")
    assert math.isfinite(bare.step()["loss/critic"])


def test_a_ranks_share_of_each_critic_minibatch_by_hand():
    """Rank 0 of 2 (envs 0-1 of 4, rows 0-9 of the global 20): each global minibatch of 2 rows contributes the loss of
    the rows it holds weighted by their share (|mine| / |rows|), and nothing (no loss on an empty batch) where it holds
    none; the parameters still step with the other ranks' gradients (here: none)."""
    from rl.distributed import EnvShard

    a, b = trainer(critic_minibatches=10), trainer(critic_minibatches=10)
    batch = window_batch(a)[:10]
    for t in (a, b):
        t.env_shard, t.local_envs = EnvShard(0, 2, 4), 2
    last = a.train_critic(batch)
    params, g = b.parameter_groups["critic"], b.generator
    empty, expected = 0, None
    for _ in range(2):
        order = torch.randperm(20, generator=g)
        for start in range(0, 20, 2):
            rows = order[start:start + 2]
            mine = rows[rows < 10]
            b.critic_opt.zero_grad(set_to_none=True)
            if mine.numel():
                loss = b.loss.critic_loss(batch[mine])["loss_critic"] * (mine.numel() / rows.numel())
                loss.backward()
                expected = loss.item()
            else:
                empty += 1
                expected = 0.0
            clip_grad_norm(params, b.cfg.grad_clip)
            b.critic_opt.step()
    assert empty > 0 and any(0 < (order[s:s + 2] < 10).sum() < 2 for s in range(0, 20, 2))
    assert last == pytest.approx(expected, rel=1e-12, abs=0)
    for p, q in zip(a.loss.critic.parameters(), params):
        assert torch.equal(p, q)


def test_no_critic_iterations_report_nan_and_the_scalars_averaged_over_ranks(monkeypatch):
    from rl import distributed

    t = trainer(critic_iterations=0)
    assert math.isnan(t.train_critic(window_batch(t)))
    keys, mean = [], distributed.mean_scalars
    monkeypatch.setattr(distributed, "mean_scalars", lambda scalars, k: keys.append(k) or mean(scalars, k))
    sapo_trainer().step()
    assert keys == [("loss/actor", "train/window_reward", "sapo/entropy")]


def test_a_ranks_actor_gradient_is_its_share_of_the_global_mean():
    """Rank 0 of 2 (envs 0-3 of 8): the window's actor objective is weighted by the rank's share 4/8 before backward
    (the ranks' gradients then sum to the global mean's); its exploration noise is drawn at the global size."""
    from rl.distributed import EnvShard, sharded_noise

    a, b = sapo_trainer(grad_clip=None), sapo_trainer(grad_clip=None)
    for t in (a, b):
        t.env_shard = EnvShard(0, 4, 8)
    torch.manual_seed(5)
    a.step()
    torch.manual_seed(5)
    b.state = b.env.reset()
    b.set_learning_rates()
    with sharded_noise(b.env_shard):
        out = b.loss(b.state)
    ((out["loss_actor"] + out["loss_alpha"]) * 0.5).backward()
    b.actor_opt.step()
    b.alpha_opt.step()
    for (name, p), q in zip(a.loss.named_parameters(), b.loss.parameters()):
        if not name.startswith("critic"):
            assert torch.equal(p, q), name
