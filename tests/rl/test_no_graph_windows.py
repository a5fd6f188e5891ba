"""Windows whose rewards do not depend on the actions (an MPM tool that stays above the material: with recompute none
or substep the rollout then keeps no graph) have gradient zero, as Rewarped returns it; the algorithms step on, where
``backward`` / ``autograd.grad`` raised "element 0 of tensors does not require grad"."""

import math

import torch
from point_mass import PointMass1D

from rl.modules import SquashedGaussianActor
from rl.objectives import APGLoss
from rl.objectives.trajectory import value_and_gradient
from rl.trainers import FirstOrderTrainer, TrainerConfig


class Untouched(PointMass1D):
    """The point mass with a reward that does not depend on the action (nor on the state): a constant, no graph."""

    def _step(self, td):
        out = super()._step(td)
        out["reward"] = torch.full_like(out["reward"], -1.0)
        return out


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
