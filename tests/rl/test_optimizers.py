"""The trainers' optimizers: torch's fused Adam/AdamW (one kernel per step for a group), the same update as the
per-tensor loop to round-off."""

import pytest
import torch

from rl.trainers.loop import OPTIMIZERS, fusable


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_fused_update_is_the_per_tensor_update(name):
    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (1,)]
    start = [torch.randn(s, dtype=torch.float64) for s in shapes]
    runs = []
    for fused in (False, True):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = OPTIMIZERS[name](params, lr=3e-2, betas=(0.7, 0.95), weight_decay=0.1, fused=fused)
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        runs.append(params)
    for plain, fused, before in zip(*runs, start):
        torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-14)
        assert not torch.equal(fused.detach(), before)  # the steps moved every tensor


def test_fused_is_chosen_for_tensors_on_one_cpu_or_cuda_device_only():
    cpu = [torch.zeros(2, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    assert fusable(cpu) and not fusable([]) and not fusable([torch.zeros(2, device="meta")])


def test_a_trainer_steps_with_fused_optimizers():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_trainer import make_trainer

    trainer = make_trainer()
    assert all(opt.defaults["fused"] for opt in trainer.optimizers.values())
