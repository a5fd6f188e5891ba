"""``Linear``: ``nn.Linear`` whose float32 CPU products run on oneDNN, the library's networks' one linear layer.

torch routes a float32 CPU ``nn.Linear`` (``addmm`` / ``mm``) to MKL's sgemm. On CPUs that MKL does not recognise as
Intel's (AMD EPYC), MKL runs its AVX2 code: on an AMD Zen 5 host with AVX-512 the critic's products ([512, 256] x
[256, 128], one thread) ran at 93 GFLOP/s with MKL and 200 GFLOP/s with oneDNN (``benchmarks/linear_ab.py``), and
SAPO's critic mini-epochs spend most of their time in them. ``Linear`` computes the same products with oneDNN's
linear (``torch.ops.mkldnn._linear_pointwise``, the op Inductor's CPU linear lowers to), forward and backward:

    y = x·Wᵀ + b        x [..., in], W [out, in], b [out]  ->  y [..., out]
    ∂x = ∂y·W           ∂W = ∂yᵀ·x      ∂b = Σ_rows ∂y

each of the backward's products again through the same autograd function, so that a double backward
(``create_graph=True``) works. Results agree with ``nn.Linear`` to float32 round-off (the products sum in another
order), and are deterministic for a given machine and thread count.

Where it applies: "auto" (the default) on CPUs whose vendor is not Intel (on Intel's, MKL runs its AVX-512 code),
"onednn" on any CPU, "torch" nowhere (``TPHYS_LINEAR`` in the environment, or ``set_backend``); float32 CPU input and
parameters; products of at least ``MIN_MULTIPLY_ADDS`` (rows·in·out: oneDNN's fixed cost a call is ~5x MKL's, so the
actor's per-step products at N = 64 stay with MKL); oneDNN built into torch; not under torch.compile's tracing
(Inductor chooses itself), a torch.func transform (vmap, grad, jacrev, jvp) or forward-mode AD (the node has no vmap
or jvp rule), or CPU autocast (F.linear computes in the autocast dtype). Everything else (float64 gradient checks,
CUDA, bf16, an empty batch) runs ``torch.nn.functional.linear``. The parameters and state dict are ``nn.Linear``'s
either way, so checkpoints load across backends.
"""

from __future__ import annotations

import os

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "onednn", "torch")
# oneDNN's linear costs ~10 µs a call before any arithmetic (MKL's ~2): below this many multiply-adds a product stays
# with F.linear ([64, 32] x [32, 256]: 15 µs MKL, 21 oneDNN; [512, 32] x [32, 256], 4.2 M: 93 against 51)
MIN_MULTIPLY_ADDS = 1 << 22
_backend = os.environ.get("TPHYS_LINEAR", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"TPHYS_LINEAR={_backend!r}; valid: {', '.join(BACKENDS)}")


def _onednn_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...) from /proc/cpuinfo; '' where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


_OP = _onednn_op()
# On Intel CPUs MKL runs its own AVX-512 code (the Intel host's GEMM probe: 173-193 GFLOP/s a core, at its multiply-add
# peak), so "auto" keeps F.linear there; elsewhere (AMD, where MKL runs AVX2) oneDNN
def onednn_preferred(vendor: str) -> bool:
    """Whether "auto" runs oneDNN on a CPU of ``vendor`` (``cpu_vendor``'s string): where torch has it and the vendor is
    known and not Intel."""
    return _OP is not None and vendor not in ("GenuineIntel", "")


_PREFERRED = onednn_preferred(cpu_vendor())


def set_backend(name: str) -> str:
    """Choose the float32 CPU products' library: "auto" (oneDNN where it applies on a CPU not made by Intel), "onednn"
    (oneDNN where it applies, any CPU) or "torch" (``F.linear``); returns the previous choice."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown linear backend {name!r}; valid: {', '.join(BACKENDS)}")
    previous, _backend = _backend, name
    return previous


def uses_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether ``linear(x, weight, bias)`` runs on oneDNN (see the module docstring)."""
    chosen = _backend == "onednn" and _OP is not None or _backend == "auto" and _PREFERRED
    return (chosen and all(t is None or (t.dtype is torch.float32 and t.device.type == "cpu") for t in (x, weight, bias))
            and x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1]  # else F.linear's own error
            and x.numel() * weight.shape[0] >= MIN_MULTIPLY_ADDS  # (an empty batch: 0)
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")  # autocast casts in F.linear
            and not _transformed(x, weight, bias))


def _transformed(*tensors: Tensor | None) -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, jvp, ...) is running or a tensor carries a forward-mode
    tangent: the oneDNN node has neither a vmap nor a jvp rule, F.linear has both."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return True
    if getattr(fwAD, "_current_level", -1) < 0:  # outside every fwAD.dual_level(): no tensor has a tangent
        return False
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [rows, in] · weight [out, in]ᵀ (+ bias [out]) by oneDNN, no autograd."""
    return _OP(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y [rows, out] = x [rows, in] · w [out, in]ᵀ (+ b [out]) by oneDNN; w may be a strided view (a transpose)."""

    # forward(ctx, ...) with the context, not a separate setup_context: Function.apply binds a setup_context-style
    # forward's arguments with inspect.signature at every call (~8 µs; SAPO's critic calls this 256 times a window)
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        # create_graph=True (grad mode on here): the products through this function, so that they have a backward too
        product = _OneDNNLinear.apply if torch.is_grad_enabled() else _product
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = product(grad, weight.t(), None)  # ∂y·W = ∂y·(Wᵀ)ᵀ, as many multiply-adds as forward
        if ctx.needs_input_grad[1]:
            grad_w = product(grad.t(), x.t(), None)  # ∂yᵀ·x, the same
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` [..., out] from x [..., in], on oneDNN where ``uses_onednn``."""
    if not uses_onednn(x, weight, bias):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    return _OneDNNLinear.apply(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and state dict) computed by ``linear``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
