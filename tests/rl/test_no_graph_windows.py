"""Windows whose rewards do not depend on the actions (an MPM tool that stays above the material: with recompute none
or substep the rollout then keeps no graph) have gradient zero, as Rewarped returns it; the algorithms step on, where
``backward`` / ``autograd.grad`` raised "element 0 of tensors does not require grad". PODS's second order likewise:
where no residual depends on the actions, Gauss-Newton is the damping alone and the step is zero."""

import math

import torch
from point_mass import PointMass1D

from rl.modules import DeterministicActor, SquashedGaussianActor
from rl.objectives import APGLoss
from rl.objectives.pods import PODSLoss
from rl.objectives.trajectory import GaussNewton, value_and_gradient
from rl.trainers import FirstOrderTrainer, TrainerConfig


class Untouched(PointMass1D):
    """The point mass with a reward that does not depend on the action (nor on the state): a constant, no graph."""

    def _step(self, td):
        out = super()._step(td)
        out["reward"] = torch.full_like(out["reward"], -1.0)
        return out

    def reward_residual(self, transition):
        """[N, 1] e = 1 with reward = -|e|² = -1: no residual depends on the action."""
        return torch.ones_like(transition["next", "reward"])


CONFIG = dict(total_steps=200, progress=False, eval_every=0, checkpoint_every=0)


def test_apg_steps_on_a_window_without_a_graph_with_a_zero_gradient():
    torch.manual_seed(0)
    env = Untouched(num_envs=4, horizon=12, dtype=torch.float32, seed=0)
    actor = SquashedGaussianActor(2, 1, (16,))
    trainer = FirstOrderTrainer(APGLoss(env, actor, horizon=5), TrainerConfig(**CONFIG), logger="none")
    before = [p.detach().clone() for p in trainer.parameter_groups["actor"]]
    scalars = trainer.step()
    assert math.isfinite(scalars["loss/actor"]) and scalars["grad_norm/actor"] == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in trainer.parameter_groups["actor"])
    # a zero gradient still steps the optimizer (weight decay only): what a graph with a zero gradient would give
    torch.manual_seed(0)
    twin = FirstOrderTrainer(APGLoss(Untouched(num_envs=4, horizon=12, dtype=torch.float32, seed=0), SquashedGaussianActor(2, 1, (16,)),
                                     horizon=5), TrainerConfig(**CONFIG), logger="none")
    for p, q in zip(twin.parameter_groups["actor"], before):
        assert torch.equal(p.detach(), q)
    twin.zero_gradient("actor")
    twin.optimizer_step("actor")
    for p, q in zip(trainer.parameter_groups["actor"], twin.parameter_groups["actor"]):
        assert torch.equal(p.detach(), q.detach())
    assert trainer.step()["grad_norm/actor"] == 0.0  # and the next window too


def test_the_open_loop_gradient_is_zero_where_no_reward_depends_on_the_actions():
    env = Untouched(num_envs=3, horizon=12, dtype=torch.float64, seed=0)
    actions = torch.rand(4, 3, 1, dtype=torch.float64)
    value, gradient = value_and_gradient(env, env.reset(), actions)
    assert torch.equal(value, torch.full((3,), -4.0, dtype=torch.float64))
    assert gradient.shape == actions.shape and not gradient.any()
    moving = PointMass1D(num_envs=3, horizon=12, dtype=torch.float64, seed=0)  # where they do: the gradient is there
    _, gradient = value_and_gradient(moving, moving.reset(), actions)
    assert gradient.abs().sum() > 0


def test_gauss_newton_where_no_residual_depends_on_the_actions_is_the_damping():
    """J_e = 0: value -T per env, a zero gradient, Ĥ·v = damping·v, dense() = damping·I, where the products raised."""
    env = Untouched(num_envs=3, horizon=12, dtype=torch.float64, seed=0)
    actions = torch.rand(4, 3, 1, dtype=torch.float64)
    hessian = GaussNewton(env, env.reset(), actions, damping=0.25)
    assert hessian.independent
    assert torch.equal(hessian.value, torch.full((3,), -4.0, dtype=torch.float64))
    assert hessian.gradient.shape == actions.shape and not hessian.gradient.any()
    vectors = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(hessian(vectors), 0.25 * vectors)
    assert torch.equal(hessian.dense(), 0.25 * torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    moving = PointMass1D(num_envs=3, horizon=12, dtype=torch.float64, seed=0)  # where they do: J_e is there
    hessian = GaussNewton(moving, moving.reset(), actions, damping=0.25)
    assert not hessian.independent and hessian.gradient.abs().sum() > 0
    assert not torch.allclose(hessian(vectors), 0.25 * vectors)


def test_second_order_pods_steps_on_where_no_residual_depends_on_the_actions():
    """The Gauss-Newton step is zero, the line search keeps the policy's actions (step size 0), nothing raises."""
    env = Untouched(num_envs=3, horizon=12, dtype=torch.float64, seed=0)
    actor = DeterministicActor(2, 1, hidden=(8,)).double()
    out = PODSLoss(env, actor, order=2, cg_iterations=5).improve(env.reset())
    stats = out["stats"]
    assert torch.equal(stats["step_size"], torch.zeros_like(stats["step_size"]))
    assert torch.equal(stats["value_improved"], stats["value_policy"])
    assert torch.isfinite(out["batch", "target_action"]).all()
