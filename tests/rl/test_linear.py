"""rl.modules.linear: the networks' Linear (oneDNN for large float32 CPU products) against torch's F.linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rl.modules import linear as L
from rl.modules.mlp import MLP
from rl.modules.pointnet import PointNet

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
def test_the_onednn_op_is_found_where_torch_has_onednn():
    assert L._OP is not None  # else every oneDNN test below would run F.linear and pass for the wrong reason


@pytest.fixture(autouse=True)
def onednn_backend():
    """Every test on "onednn" (any CPU vendor) unless it sets another; the default restored after."""
    previous = L.set_backend("onednn")
    yield
    L.set_backend(previous)


def pair(rows_shape, width_in, width_out, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = L.Linear(width_in, width_out, bias=bias)
    x = torch.randn(*rows_shape, width_in, requires_grad=True)
    return layer, x


@needs_onednn
@pytest.mark.parametrize("rows_shape", [(512,), (64, 32), (3, 7, 300)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_f_linear(rows_shape, bias):
    layer, x = pair(rows_shape, 256, 128, bias)
    assert L.uses_onednn(x, layer.weight)
    y = layer(x)
    reference = F.linear(x, layer.weight, layer.bias)
    assert y.shape == reference.shape
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, layer.weight] + ([layer.bias] if bias else []), upstream)
    expected = torch.autograd.grad(reference, [x, layer.weight] + ([layer.bias] if bias else []), upstream)
    for got, want in zip(grads, expected):  # float32 round-off of sums over up to 2048 rows, relative to the largest entry
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@needs_onednn
def test_a_double_backward_matches_f_linear():
    layer, x = pair((512,), 64, 128)
    for fn in (layer, lambda v: F.linear(v, layer.weight, layer.bias)):
        y = fn(x)
        (g,) = torch.autograd.grad(torch.tanh(y).square().sum(), x, create_graph=True)
        second = torch.autograd.grad(g.square().sum(), [x, layer.weight])
        if fn is layer:
            ours = second
        else:
            torch.testing.assert_close(ours[0], second[0], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(ours[1], second[1], rtol=1e-3, atol=1e-4)


def test_small_products_float64_and_the_torch_backend_run_f_linear():
    layer, x = pair((64,), 32, 256)
    assert not L.uses_onednn(x, layer.weight)  # 64 x 32 x 256 = 0.5 M multiply-adds: under MIN_MULTIPLY_ADDS
    big = torch.randn(512, 32)
    assert L.uses_onednn(big, layer.weight) == (L._OP is not None)
    assert not L.uses_onednn(big.double(), layer.weight.double())
    assert not L.uses_onednn(big[:0], layer.weight)
    assert L.uses_onednn(big, layer.weight, layer.bias) == (L._OP is not None)
    assert not L.uses_onednn(big, layer.weight, layer.bias.double())  # a float64 bias: F.linear's promotion rules
    assert not L.uses_onednn(torch.randn(512, 33), layer.weight)  # a wrong width gets F.linear's own error
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        layer(torch.randn(512, 33))
    previous = L.set_backend("torch")
    try:
        assert not L.uses_onednn(big, layer.weight)
        torch.testing.assert_close(layer(big), F.linear(big, layer.weight, layer.bias), rtol=0, atol=0)
    finally:
        L.set_backend(previous)
    with pytest.raises(ValueError, match="unknown linear backend 'mkl'; valid: auto, onednn, torch"):
        L.set_backend("mkl")


def test_auto_runs_onednn_exactly_where_the_cpu_is_not_intels(monkeypatch):
    assert not L.onednn_preferred("GenuineIntel") and not L.onednn_preferred("")
    assert L.onednn_preferred("AuthenticAMD") == (L._OP is not None)
    assert L._PREFERRED == L.onednn_preferred(L.cpu_vendor())
    big, weight = torch.randn(512, 32), torch.randn(256, 32)
    L.set_backend("auto")
    for preferred in (False, True):
        monkeypatch.setattr(L, "_PREFERRED", preferred)
        assert L.uses_onednn(big, weight) == preferred


def test_float64_gradients_are_exact_against_finite_differences():
    torch.manual_seed(0)
    layer = L.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_the_networks_use_it_and_keep_nn_linear_state_dicts():
    mlp = MLP(32, 4, (256, 128))
    layers = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert layers and all(isinstance(m, L.Linear) for m in layers)
    assert all(isinstance(m, L.Linear) for m in PointNet().modules() if isinstance(m, nn.Linear))
    plain = nn.Sequential(nn.Linear(32, 256))
    ours = nn.Sequential(L.Linear(32, 256))
    ours.load_state_dict(plain.state_dict())  # the same keys and shapes: checkpoints load across the two
    x = torch.randn(600, 32)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def _transform_cases(layer, x):
    """(name, ours, reference): torch.func transforms and forward-mode AD through ``layer`` and through F.linear."""
    import torch.autograd.forward_ad as fwAD

    def reference(v):
        return F.linear(v, layer.weight, layer.bias)

    def dual(fn):
        def run():
            with fwAD.dual_level():
                out = fn(fwAD.make_dual(x, torch.ones_like(x)))
                return fwAD.unpack_dual(out).tangent
        return run

    cases = {
        "vmap": lambda fn: (lambda: torch.func.vmap(fn)(x.view(4, -1, x.shape[-1]))),
        "jacrev": lambda fn: (lambda: torch.func.jacrev(lambda v: torch.tanh(fn(v)).sum())(x)),
        "grad": lambda fn: (lambda: torch.func.grad(lambda v: torch.tanh(fn(v)).sum())(x)),
        "jvp": lambda fn: (lambda: torch.func.jvp(fn, (x,), (torch.ones_like(x),))[1]),
        "forward-mode AD": dual,
    }
    return [(name, make(layer), make(reference)) for name, make in cases.items()]


@needs_onednn
@pytest.mark.parametrize("case", range(5))
def test_torch_func_transforms_and_forward_mode_ad_run_and_match_f_linear(case):
    """vmap, jacrev, grad, jvp and forward-mode AD through a product large enough for oneDNN: the same results as
    F.linear's (a transform or a tangent runs F.linear itself: the oneDNN node has no vmap or jvp rule)."""
    layer, x = pair((512,), 256, 128)
    x = x.detach()
    assert L.uses_onednn(x, layer.weight, layer.bias)
    name, ours, reference = _transform_cases(layer, x)[case]
    torch.testing.assert_close(ours(), reference(), rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@needs_onednn
def test_cpu_autocast_and_inference_mode_behave_as_f_linear():
    layer, x = pair((512,), 256, 128)
    x = x.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not L.uses_onednn(x, layer.weight, layer.bias)
        ours, reference = layer(x), F.linear(x, layer.weight, layer.bias)
        assert ours.dtype == reference.dtype == torch.bfloat16
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    with torch.inference_mode():
        assert L.uses_onednn(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
