"""The SAPO paper's table 2 (appendix E, "Shared hyperparameters") pinned on the recipe configs.

Table 2 has a *shared* column and one per algorithm; an algorithm uses the shared value unless its own
column gives one. Each assertion quotes its row as ``row | shared | PPO | SAC | APG | SHAC | SAPO`` with
``.`` for an empty cell. Configs are composed as the recipes compose them (``recipes/config/<algo>.yaml``,
default env), and rows that are not a config key (LayerNorm, sigma(s), the target critic, the optimizer
class, the schedule) are checked on the networks, losses and trainers the recipes build from that config.
Where our config departs from the paper on purpose, the test pins our value and the comment gives the
stated reason.

TrajOpt is not a column of table 2: its settings are appendix E's paragraph above the table. PODS is from
another paper (Zamora et al. 2021): its appendix A.3 and section 3.3 are pinned here too. Network sizes
are not in table 2: tables 3 (DFlex) and 4 (Rewarped) give them per task, with table 4's N and batch size,
for every algorithm (``recipes/config/task/<env>.yaml``, pinned at the end of this file). PPO's and SAC's rows already pinned in
``tests/rl/test_baselines.py::test_configs_hold_table_2_and_pass_check_config`` (H, gamma, K, GAE lambda,
the learning rates, KL(0.008), AdamW, betas, grad clip, LayerNorm, SiLU, log sigma, tau, replay buffer,
init temperature, hidden sizes) are not repeated here.
"""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from rl.experiment import check_config, load_recipe, make_env
from rl.modules import MLP

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "config"


def composed(name, overrides=(), check=True):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    if check:
        check_config(cfg)
    return cfg


def first_order(name):
    """``(cfg, loss, trainer, action_dim)`` of a first-order recipe's defaults, built but not run."""
    cfg = composed(name)
    env = make_env(cfg)
    trainer = load_recipe(name).make_trainer(cfg, env)
    return cfg, trainer.loss, trainer, int(env.action_spec.shape[-1])


def layout(mlp: MLP):
    """``([(width, norm, activation) of each hidden block], head width)`` of an ``rl.modules.MLP``."""
    blocks = []
    for layer in mlp.body:
        if isinstance(layer, nn.Linear):
            blocks.append([layer.out_features, None, None])
        elif isinstance(layer, nn.LayerNorm):
            blocks[-1][1] = "LayerNorm"
        else:
            blocks[-1][2] = type(layer).__name__
    return [tuple(b) for b in blocks], mlp.head.out_features


def optimizers(trainer):
    return [opt for opt in (trainer.actor_opt, trainer.critic_opt, trainer.alpha_opt) if opt is not None]


def assert_shared_rows(cfg):
    # Num envs N | 64 | . | . | . | . | .
    assert cfg.num_envs == 64
    # Horizon H | 32 | . | . | . | . | .
    assert cfg.algo.horizon == 32
    # Batch size | 2048 | . | . | . | . | .   (first-order: one window of N envs x H steps)
    assert cfg.num_envs * cfg.algo.horizon == 2048
    # Discount γ | 0.99 | . | . | . | . | .
    assert cfg.algo.gamma == 0.99


def assert_linear_decay(trainer, lrs):
    # η schedule | . | KL(0.008) | . | linear | linear | linear   (decays to lr_end = 1e-5: not in table 2, ours)
    assert trainer.cfg.lr_schedule == "linear" and trainer.cfg.lr_end == 1e-5
    first, last = trainer.learning_rates(0), trainer.learning_rates(trainer.iterations)
    assert {k: first[k] for k in lrs} == lrs
    assert all(math.isclose(last[k], 1e-5, rel_tol=1e-9) for k in lrs)


def test_sapo_column():
    cfg, loss, trainer, action_dim = first_order("sapo")
    algo = cfg.algo
    assert_shared_rows(cfg)
    assert (loss.horizon, loss.gamma) == (32, 0.99)
    # Mini-epochs K | . | 5 | 8 | 1 | 16 | 16   (critic epochs per window, in critic_minibatches = 4 minibatches)
    assert algo.critic_iterations == 16 and trainer.cfg.critic_iterations == 16
    # TD/GAE λ | . | 0.95 | . | . | 0.95 | 0.95
    assert algo.lmbda == 0.95 and loss.lmbda == 0.95
    # Actor η | . | 5e-4 | 5e-4 | 2e-3 | 2e-3 | 2e-3
    # Critic η | . | 5e-4 | 5e-4 | . | 5e-4 | 5e-4
    # Entropy η | . | . | 5e-3 | . | . | 5e-3
    assert (algo.actor_lr, algo.critic_lr, algo.alpha_lr) == (2e-3, 5e-4, 5e-3)
    assert_linear_decay(trainer, {"actor": 2e-3, "critic": 5e-4, "alpha": 5e-3})
    # Optim type | AdamW | . | . | Adam | Adam | .   (SAPO: the shared AdamW, appendix B.1 V)
    # Optim (β_1, β_2) | (0.9, 0.999) | . | . | (0.7, 0.95) | (0.7, 0.95) | (0.7, 0.95)
    # (weight decay is not in table 2: the reference implementation, mineral's agents/diffrl/shac.py, builds every SAPO
    # optimizer as torch.optim.AdamW(params, lr=..., betas=...) - actor, critics and the temperature's log(alpha) - so
    # torch's default decay 0.01 applies to all three; ours too)
    assert algo.optimizer == "adamw" and list(algo.betas) == [0.7, 0.95] and algo.weight_decay == 0.01
    assert len(optimizers(trainer)) == 3
    for opt in optimizers(trainer):
        assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.7, 0.95) and opt.defaults["weight_decay"] == 0.01
    assert torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults["weight_decay"] == 0.01  # torch's default
    # Grad clip | 0.5 | . | . | 1.0 | 1.0 | .   (SAPO: the shared 0.5, appendix B.1 V)
    assert algo.grad_clip == 0.5 and trainer.cfg.grad_clip == 0.5
    # Norm type | LayerNorm | . | . | . | . | .
    # Act type | SiLU | . | . | ELU | ELU | .
    # Actor σ(s) | yes | . | . | no | no | .   (the head outputs mean and log σ: 2 dim(A))
    # (hidden sizes are not in table 2: tables 3 and 4 give them per task, pinned below; on a task of neither table,
    # as rope here, ours: (256, 128) for both)
    assert algo.activation == "silu" and algo.state_dependent_std and loss.actor.state_dependent_std
    assert layout(loss.actor.net) == ([(256, "LayerNorm", "SiLU"), (128, "LayerNorm", "SiLU")], 2 * action_dim)
    # Actor log(σ) | . | log(0.1, 1.0) | (-5, 2) | . | . | (-5, 2)
    assert list(algo.log_std_bounds) == [-5.0, 2.0] and loss.actor.log_std_bounds == (-5.0, 2.0)
    # Num critics C | . | . | 2 | . | . | 2
    assert algo.num_critics == 2 and len(loss.critic.critics) == 2
    for critic in loss.critic.critics:
        assert layout(critic) == ([(256, "LayerNorm", "SiLU"), (128, "LayerNorm", "SiLU")], 1)
    # Critic τ | . | . | 0.995 | . | 0.995 | .   (SAPO: no target critic, appendix B.1 IV)
    assert "target_tau" not in algo and loss.critic_target is None
    # Target entropy H̄ | . | . | -dim(A)/2 | . | . | -dim(A)/2
    assert algo.target_entropy is None and action_dim == 2 and loss.target_entropy == -action_dim / 2
    # Init temperature | . | . | 1.0 | . | . | 1.0
    assert algo.init_alpha == 1.0 and loss.alpha.item() == 1.0
    # (weight decay, continued) the decay reaches log(alpha): one step with a zero gradient shrinks it by lr x 0.01
    log_alpha = next(iter(trainer.parameter_groups["alpha"]))
    with torch.no_grad():
        log_alpha.fill_(1.0)
    log_alpha.grad = torch.zeros_like(log_alpha)
    trainer.alpha_opt.step()
    assert log_alpha.item() == pytest.approx(1.0 - 5e-3 * 0.01, rel=1e-6)


def test_shac_column():
    cfg, loss, trainer, action_dim = first_order("shac")
    algo = cfg.algo
    assert_shared_rows(cfg)
    assert (loss.horizon, loss.gamma) == (32, 0.99)
    # Mini-epochs K | . | 5 | 8 | 1 | 16 | 16
    assert algo.critic_iterations == 16 and trainer.cfg.critic_iterations == 16
    # TD/GAE λ | . | 0.95 | . | . | 0.95 | 0.95
    assert algo.lmbda == 0.95 and loss.lmbda == 0.95
    # Actor η | . | 5e-4 | 5e-4 | 2e-3 | 2e-3 | 2e-3
    # Critic η | . | 5e-4 | 5e-4 | . | 5e-4 | 5e-4
    # Entropy η | . | . | 5e-3 | . | . | 5e-3   (SHAC: none, no temperature)
    assert (algo.actor_lr, algo.critic_lr) == (2e-3, 5e-4) and "alpha_lr" not in algo and trainer.alpha_opt is None
    assert_linear_decay(trainer, {"actor": 2e-3, "critic": 5e-4})
    # Optim type | AdamW | . | . | Adam | Adam | .
    # Optim (β_1, β_2) | (0.9, 0.999) | . | . | (0.7, 0.95) | (0.7, 0.95) | (0.7, 0.95)
    assert algo.optimizer == "adam" and list(algo.betas) == [0.7, 0.95]
    assert len(optimizers(trainer)) == 2
    for opt in optimizers(trainer):
        assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.7, 0.95)
    # Grad clip | 0.5 | . | . | 1.0 | 1.0 | .
    assert algo.grad_clip == 1.0 and trainer.cfg.grad_clip == 1.0
    # Norm type | LayerNorm | . | . | . | . | .
    # Act type | SiLU | . | . | ELU | ELU | .
    # Actor σ(s) | yes | . | . | no | no | .   (a state-independent log σ parameter; the head outputs the mean only)
    assert algo.activation == "elu" and not algo.state_dependent_std and not loss.actor.state_dependent_std
    assert layout(loss.actor.net) == ([(256, "LayerNorm", "ELU"), (128, "LayerNorm", "ELU")], action_dim)
    assert loss.actor.log_std.shape == (action_dim,)
    # Num critics C | . | . | 2 | . | . | 2   (SHAC: empty, its single critic)
    assert algo.num_critics == 1 and len(loss.critic.critics) == 1
    assert layout(loss.critic.critics[0]) == ([(256, "LayerNorm", "ELU"), (128, "LayerNorm", "ELU")], 1)
    # Critic τ | . | . | 0.995 | . | 0.995 | .   (V' <- 0.995 V' + 0.005 V after each critic phase)
    assert algo.target_tau == 0.995 and loss.target_tau == 0.995 and loss.critic_target is not None


def test_apg_column():
    cfg, loss, trainer, action_dim = first_order("apg")
    algo = cfg.algo
    assert_shared_rows(cfg)
    assert (loss.horizon, loss.gamma) == (32, 0.99)
    # Mini-epochs K | . | 5 | 8 | 1 | 16 | 16   (APG: one actor step per window, no critic)
    assert not loss.has_critic and trainer.critic_opt is None and trainer.cfg.critic_iterations == 0
    # Actor η | . | 5e-4 | 5e-4 | 2e-3 | 2e-3 | 2e-3
    # Critic η | . | 5e-4 | 5e-4 | . | 5e-4 | 5e-4   (APG: empty, no critic)
    assert algo.actor_lr == 2e-3 and "critic_lr" not in algo and "lmbda" not in algo
    assert_linear_decay(trainer, {"actor": 2e-3})
    # Optim type | AdamW | . | . | Adam | Adam | .
    # Optim (β_1, β_2) | (0.9, 0.999) | . | . | (0.7, 0.95) | (0.7, 0.95) | (0.7, 0.95)
    assert algo.optimizer == "adam" and list(algo.betas) == [0.7, 0.95]
    assert optimizers(trainer) == [trainer.actor_opt]
    assert type(trainer.actor_opt) is torch.optim.Adam and trainer.actor_opt.defaults["betas"] == (0.7, 0.95)
    # Grad clip | 0.5 | . | . | 1.0 | 1.0 | .
    assert algo.grad_clip == 1.0 and trainer.cfg.grad_clip == 1.0
    # Norm type | LayerNorm | . | . | . | . | .
    # Act type | SiLU | . | . | ELU | ELU | .
    # Actor σ(s) | yes | . | . | no | no | .
    assert algo.activation == "elu" and not algo.state_dependent_std and not loss.actor.state_dependent_std
    assert layout(loss.actor.net) == ([(256, "LayerNorm", "ELU"), (128, "LayerNorm", "ELU")], action_dim)


def test_ppo_and_sac_rows_not_pinned_in_test_baselines(tmp_path):
    ppo, sac = composed("ppo"), composed("sac")
    # Num envs N | 64 | . | . | . | . | .   (test_baselines pins N x H = 2048 for PPO only)
    assert ppo.num_envs == sac.num_envs == 64
    # Batch size | 2048 | . | . | . | . | .   (SAC: each update samples 2048 transitions; a collector batch is 64 x 32)
    assert sac.algo.batch_size == 2048 and sac.num_envs * sac.algo.horizon == 2048
    # η schedule | . | KL(0.008) | . | linear | linear | linear   (SAC: empty, constant learning rates)
    assert "lr_schedule" not in sac.algo
    ppo_trainer = load_recipe("ppo").make_trainer(ppo, make_env(ppo), run_dir=tmp_path / "ppo")
    sac_trainer = load_recipe("sac").make_trainer(sac, make_env(sac), run_dir=tmp_path / "sac")
    action_dim = int(make_env(sac).action_spec.shape[-1])
    for trainer in (ppo_trainer, sac_trainer):
        # Optim type | AdamW | . | . | Adam | Adam | .   (weight decay not in table 2: ours 0.0; the reference code's PPO and
        # SAC build AdamW without a decay argument, torch's 0.01: a departure, README "The papers' settings")
        for opt in (trainer.actor_opt, trainer.critic_opt):
            assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.0
        # Actor σ(s) | yes | . | . | no | no | .   (the head outputs loc and the bounded log scale: 2 dim(A))
        actor_mlp = next(m for m in trainer.actor.modules() if isinstance(m, MLP))
        assert layout(actor_mlp)[1] == 2 * action_dim
    # Num critics C | . | . | 2 | . | . | 2
    assert sac.algo.num_critics == 2 and sac_trainer.loss.num_qvalue_nets == 2
    # Critic τ | . | . | 0.995 | . | 0.995 | .   (Q' <- 0.995 Q' + 0.005 Q: TorchRL's SoftUpdate(eps=0.995))
    assert sac_trainer.loss.target_updater.eps == 0.995
    # Target entropy H̄ | . | . | -dim(A)/2 | . | . | -dim(A)/2
    assert sac.algo.target_entropy is None and action_dim == 2 and sac_trainer.loss.target_entropy.item() == -action_dim / 2


def test_trajopt_appendix_e():
    """Appendix E, above table 2: 'For TrajOpt, we initialize a single T-length trajectory of zero actions. This
    action is repeated across N = 16 parallel environments. We optimize this trajectory for 50 epochs with a horizon
    H of 32 steps. We use AdamW as the optimizer, with learning rate of 0.01, (β_1, β_2) = (0.7, 0.95), and gradient
    norm clipping of 0.5.'"""
    cfg = composed("trajopt")
    algo = cfg.algo
    assert (cfg.num_envs, algo.epochs, algo.horizon) == (16, 50, 32)
    assert (algo.optimizer, algo.actor_lr, list(algo.betas), algo.grad_clip) == ("adamw", 0.01, [0.7, 0.95], 0.5)
    # Not stated by the paper, ours: the summed reward (gamma 1, rl/objectives/trajopt.py), a constant learning rate,
    # and total_steps = epochs x episode length x N (recipes/config/trajopt.yaml).
    assert (algo.gamma, algo.lr_schedule, cfg.total_steps) == (1.0, "constant", None)
    env = make_env(cfg)
    loss = load_recipe("trajopt").make_trainer(cfg, env).loss
    # a single T-length sequence of zero actions, shared by the 16 envs
    (preactions,) = loss.actor.parameters()
    assert preactions.shape == (env.horizon, int(env.action_spec.shape[-1])) and not preactions.any()
    assert (loss.horizon, loss.gamma) == (32, 1.0)


def test_pods_appendix_a3():
    """PODS (Zamora et al. 2021) is not in the SAPO paper's table 2. Appendix A.3: "2 fully connected layers of
    256 units each with ReLU activations and one output layer with Tanh activation"; section 3.3: "50 gradient
    descent steps on L_θ for each policy optimization iteration", Adam (section 3.2)."""
    cfg = composed("pods")
    algo = cfg.algo
    assert (list(algo.actor_hidden), algo.activation, algo.layer_norm) == ([256, 256], "relu", False)
    assert algo.regression_steps == 50 and algo.optimizer == "adam"
    env = make_env(cfg)
    loss = load_recipe("pods").make_trainer(cfg, env).loss
    assert layout(loss.actor.net) == ([(256, None, "ReLU"), (256, None, "ReLU")], int(env.action_spec.shape[-1]))
    big = torch.full((3, env.observation_dim), 1e4)
    action = loss.actor.action(big)
    assert torch.equal(action, torch.tanh(loss.actor.net(loss.actor.normalizer(big)))) and action.abs().max() <= 1
    # Section 3.3: k = 4000 rollouts per epoch: algo.rollouts_per_epoch=4000 runs them in chunks of num_envs; the
    # default, null, is k = num_envs = 64 (a CPU-sized epoch; benchmarks/pods_table.py runs k = 64 on the 2-core CPU)
    assert cfg.num_envs == 64 and algo.rollouts_per_epoch is None
    assert composed("pods", ["algo.rollouts_per_epoch=4000"]).algo.rollouts_per_epoch == 4000


# ---------------------------------------------------------------------- tables 3 and 4 (per task, every algorithm)
PAPER_RECIPES = ("apg", "shac", "sapo", "ppo", "sac")  # the columns of table 2; TrajOpt keeps appendix E's N = 16, no networks
# Table 3, DFlex task-specific hyperparameters: "All algorithms use the same actor and critic network architecture."
#        | Hopper        | Ant           | Humanoid   | SNUHumanoid
# Actor  | (128, 64, 32) | (128, 64, 32) | (256, 128) | (512, 256)
# Critic | (64, 64)      | (64, 64)      | (128, 128) | (256, 256)
TABLE_3 = {"hopper": ([128, 64, 32], [64, 64]), "ant": ([128, 64, 32], [64, 64]), "humanoid": ([256, 128], [128, 128]),
           "snu_humanoid": ([512, 256], [256, 256])}
# Table 4, Rewarped task-specific hyperparameters (shared column; every algorithm):
# Num envs N | 32;  Batch size | 1024;  Actor MLP | (512, 256);  Critic MLP | (256, 128)
REWARPED = ("soft_jumper", "hand_flip", "rolling_flat", "fluid_move")
TABLE_4 = ([512, 256], [256, 128])


def assert_task_row(recipe, cfg, actor, critic, num_envs, batch):
    algo = cfg.algo
    assert list(algo.actor_hidden) == actor, (recipe, cfg.env.name)
    if recipe == "apg":  # no critic
        assert "critic_hidden" not in algo
    else:
        assert list(algo.critic_hidden) == critic, (recipe, cfg.env.name)
    assert cfg.num_envs == num_envs
    # Batch size: SAC samples it per update; the others' iteration is one N x H batch (PPO's collector batch,
    # the first-order methods' window): 64 x 32 = 2048 (table 2), 32 x 32 = 1024 (table 4)
    if recipe == "sac":
        assert algo.batch_size == batch
    assert cfg.num_envs * algo.horizon == batch


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_tables_3_and_4_per_task_for_every_algorithm(recipe):
    for env, (actor, critic) in TABLE_3.items():
        assert_task_row(recipe, composed(recipe, [f"env={env}"], check=False), actor, critic, 64, 2048)
    for env in REWARPED:
        assert_task_row(recipe, composed(recipe, [f"env={env}"], check=False), *TABLE_4, 32, 1024)
    # a task of neither table keeps our defaults: (256, 128) for both, table 2's N = 64
    assert_task_row(recipe, composed(recipe, ["env=cheetah"], check=False), [256, 128], [256, 128], 64, 2048)
    # the command line still wins over the task's row
    cfg = composed(recipe, ["env=soft_jumper", "num_envs=4", "algo.actor_hidden=[64,64]"]
                   + ([] if recipe == "apg" else ["algo.critic_hidden=[16]"]) + (["algo.batch_size=8"] if recipe == "sac" else []))
    assert (cfg.num_envs, list(cfg.algo.actor_hidden)) == (4, [64, 64])
    assert recipe == "apg" or list(cfg.algo.critic_hidden) == [16]
    assert recipe != "sac" or cfg.algo.batch_size == 8


def hidden_widths(module):
    """The hidden widths of every ``rl.modules.MLP`` inside ``module``."""
    return [[w for w, _, _ in layout(m)[0]] for m in module.modules() if isinstance(m, MLP)]


@pytest.mark.parametrize("env_name", ["hopper", "rolling_flat"])
def test_the_recipes_build_the_task_networks(env_name):
    from rl import builders
    from rl.baselines.networks import q_values, state_value, tanh_normal_actor

    actor, critic = TABLE_3[env_name] if env_name in TABLE_3 else TABLE_4
    for recipe in PAPER_RECIPES:
        cfg = composed(recipe, [f"env={env_name}"])
        env = make_env(cfg, num_envs=1)
        if recipe in ("ppo", "sac"):
            actors = [tanh_normal_actor(cfg, env, None)]
            critics = [state_value(cfg, env, None)] if recipe == "ppo" else q_values(cfg, env, None)
        else:
            actors = [builders.gaussian_actor(cfg, env, None)]
            critics = [] if recipe == "apg" else [builders.value_ensemble(cfg, env, None)]
        assert [w for a in actors for w in hidden_widths(a)] == [actor], recipe
        widths = [w for c in critics for w in hidden_widths(c)]
        assert widths == [critic] * len(widths) and len(widths) == {"apg": 0, "shac": 1, "sapo": 2, "ppo": 1, "sac": 2}[recipe], recipe


def test_trajopt_and_pods_keep_their_own_settings_on_the_table_tasks():
    # TrajOpt: appendix E's N = 16 on every task (no networks); PODS: its own paper's 2 x 256 policy and N = 64
    assert composed("trajopt", ["env=soft_jumper"]).num_envs == 16
    pods = composed("pods", ["env=hopper", "~env.options.integrator"])
    assert (pods.num_envs, list(pods.algo.actor_hidden)) == (64, [256, 256]) and "task" not in pods
