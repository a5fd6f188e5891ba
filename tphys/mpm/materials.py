"""MPM materials: Kirchhoff stress τ(F) and plastic return mapping F_trial -> F.

Kinds (Lamé μ, λ in Pa from Young's modulus E and Poisson's ratio ν; Hencky strain ε = log of the
singular values s of F):

    corotated     τ = 2μ (F - R) Fᵀ + λ (J - 1) J I                       (R: polar rotation of F)
    neo_hookean   τ = μ (F Fᵀ - I) + λ log(J) I
    water         τ = K (J - 1) J I, K = λ + 2μ/3; F is reset to J^(1/3) I (no shear memory)
    plasticine    corotated stress; von Mises return mapping on the deviatoric Hencky strain with
                  yield stress σ_y: ε ← ε - max(0, |ε̂| - σ_y/(2μ)) ε̂/|ε̂|   (PlasticineLab's model)
    sand          Drucker-Prager (Klar et al. 2016): tr ε >= 0 projects to the tip (ε = 0); otherwise
                  ε ← ε - max(0, |ε̂| + (3λ + 2μ)/(2μ)·tr ε·α) ε̂/|ε̂|, α = sqrt(2/3)·2 sin φ/(3 - sin φ);
                  τ = U (2μ ε + λ tr ε I) Uᵀ (St. Venant-Kirchhoff in Hencky strain)

All are functions of batches [..., 3, 3]; gradients go through ``svd.polar`` / ``svd.spectral``, exact at
repeated singular values (every particle at rest has F = I). ``backend`` ("auto" | "triton" | "cpu" | "torch",
see ``tphys.kernels``) picks the C kernels or torch ops for the SVD, the 3x3 products and plasticine's stress.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import c_kernels, matmul3, runs_c_kernels
from tphys.mpm.svd import EPS, det3, polar, signed_svd, spectral, spectral_vjp

KINDS = ("corotated", "neo_hookean", "water", "plasticine", "sand")
_MIN_STRETCH = 1e-4  # floor on |s| before taking logs


class Material(NamedTuple):
    """One material for every particle of a model.

    Attributes:
        kind: one of ``KINDS``.
        mu, lam: Lamé parameters, Pa.
        yield_stress: plasticine's von Mises yield stress, Pa.
        friction_angle: sand's internal friction angle, degrees.
    """

    kind: str
    mu: float
    lam: float
    yield_stress: float = 0.0
    friction_angle: float = 30.0

    @staticmethod
    def from_young(kind: str, young: float, poisson: float, **kw) -> Material:
        """Lamé parameters from Young's modulus (Pa) and Poisson's ratio."""
        if kind not in KINDS:
            raise ValueError(f"unknown material kind {kind!r}; valid: {', '.join(KINDS)}")
        if young <= 0 or not -1.0 < poisson < 0.5:
            raise ValueError(f"need young > 0 and -1 < poisson < 0.5, got {young}, {poisson}")
        mu = young / (2 * (1 + poisson))
        lam = young * poisson / ((1 + poisson) * (1 - 2 * poisson))
        return Material(kind, mu, lam, **kw)


def _eye(f: Tensor) -> Tensor:
    return torch.eye(3, dtype=f.dtype, device=f.device)


def _hencky(s: Tensor) -> Tensor:
    return torch.log(s.abs().clamp_min(_MIN_STRETCH))


def _safe_norm(x: Tensor) -> Tensor:
    return torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-20)


def _plastic_flow(material: Material):
    """The return mapping as a map of singular values s [..., 3] -> projected stretches [..., 3] (isotropic)."""
    kind, mu, lam = material.kind, material.mu, material.lam
    if kind == "plasticine":

        def flow(s):
            eps = _hencky(s)
            deviator = eps - eps.mean(-1, keepdim=True)
            norm = _safe_norm(deviator)
            excess = torch.clamp_min(norm - material.yield_stress / (2 * mu), 0.0)
            return torch.exp(eps - excess * deviator / norm)

        return flow
    sine = math.sin(math.radians(material.friction_angle))
    alpha = math.sqrt(2 / 3) * 2 * sine / (3 - sine)

    def sand(s):
        eps = _hencky(s)
        trace = eps.sum(-1, keepdim=True)
        deviator = eps - trace / 3
        norm = _safe_norm(deviator)
        excess = torch.clamp_min(norm + (3 * lam + 2 * mu) / (2 * mu) * trace * alpha, 0.0)
        return torch.exp(torch.where(trace >= 0, torch.zeros_like(eps), eps - excess * deviator / norm))

    return sand


def project(material: Material, f_trial: Tensor, backend: str = "auto") -> Tensor:
    """Return mapping: the plastic (or fluid) projection of the trial deformation gradient [..., 3, 3]."""
    kind = material.kind
    if kind in ("corotated", "neo_hookean"):
        return f_trial
    if kind == "water":
        j = det3(f_trial)
        return torch.sign(j)[..., None, None] * j.abs().pow(1 / 3)[..., None, None] * _eye(f_trial)
    if kind in ("plasticine", "sand"):
        return spectral(f_trial, _plastic_flow(material), backend=backend)
    raise ValueError(f"unknown material kind {kind!r}; valid: {', '.join(KINDS)}")


def kirchhoff_stress(material: Material, f: Tensor, parts: tuple | None = None, backend: str = "auto") -> Tensor:
    """τ = P·Fᵀ [..., 3, 3] in Pa for deformation gradients f [..., 3, 3] (after ``project``); ``parts``: a signed
    SVD (U, S, V) of f when the caller has one (S need not be sorted)."""
    kind, mu, lam = material.kind, material.mu, material.lam
    eye = _eye(f)
    j = det3(f)[..., None, None]
    if kind in ("corotated", "plasticine"):
        return 2 * mu * matmul3(f - polar(f, parts=parts, backend=backend), f.transpose(-1, -2), backend) + lam * (j - 1) * j * eye
    if kind == "neo_hookean":
        return mu * (matmul3(f, f.transpose(-1, -2), backend) - eye) + lam * torch.log(j.clamp_min(_MIN_STRETCH)) * eye
    if kind == "water":
        return (lam + 2 * mu / 3) * (j - 1) * j * eye
    if kind == "sand":  # U·diag(2μ ε + λ tr ε)·Uᵀ = [U·diag(...)·Vᵀ]·[U·Vᵀ]ᵀ, both with exact gradients

        def hencky_stress(s):
            eps = _hencky(s)
            return 2 * mu * eps + lam * eps.sum(-1, keepdim=True)

        return matmul3(spectral(f, hencky_stress, parts=parts, backend=backend), polar(f, parts=parts, backend=backend).transpose(-1, -2),
                       backend)
    raise ValueError(f"unknown material kind {kind!r}; valid: {', '.join(KINDS)}")


def elastic_stress(material: Material, f_trial: Tensor, fused: bool | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(elastic F = ``project(material, f_trial)``, its Kirchhoff stress τ) [..., 3, 3], from one SVD of f_trial.

    The return mapping keeps the singular bases (F = U·diag(flow(s))·Vᵀ with positive stretches), so
    (U, flow(s), V) decomposes F and the stress needs no second SVD.

    ``fused`` (default: where ``backend`` runs the C kernels, ``tphys.kernels.runs_c_kernels``): plasticine's
    forward as one C loop (``c_kernels``' ``plasticine_stress``) with a hand-written backward; False: the same
    maps in SVD, spectral and 3x3-product kernels (C or torch by ``backend``). Water, fused: one C loop each way
    (``_WaterStress``, where ``cpu/stress.c`` builds); else its torch ops (``_water_stress``). ``fused=True`` with
    ``backend="torch"`` is an error.
    """
    if fused is None:
        fused = runs_c_kernels(f_trial, backend)
    elif fused and backend == "torch":
        raise ValueError("fused=True runs a C kernel, which backend='torch' rules out")
    if material.kind == "plasticine" and fused:
        return _PlasticineStress.apply(f_trial, material, backend)
    if material.kind == "water":
        return _WaterStress.apply(f_trial, material) if fused and stress_c_available(f_trial.dtype) else _water_stress(material, f_trial)
    if material.kind not in ("plasticine", "sand"):
        f = project(material, f_trial, backend)
        return f, kirchhoff_stress(material, f, backend=backend)
    u, s, v = parts = signed_svd(f_trial, backend)
    flow = _plastic_flow(material)
    f = spectral(f_trial, flow, parts=parts, backend=backend)
    with torch.no_grad():
        stretch = flow(s)
    return f, kirchhoff_stress(material, f, parts=(u, stretch, v), backend=backend)


def _water_stress(material: Material, f_trial: Tensor) -> tuple[Tensor, Tensor]:
    """Water's (F = c·I, τ = K (J - 1) J·I) [..., 3, 3] from one determinant j = det F_trial: c = sign(j)·|j|^(1/3) and
    J = c·(c·c), which is ``det3`` of c·I to the bit (``project`` then ``kirchhoff_stress`` take a second ``det3``, of F)."""
    j = det3(f_trial)
    c = torch.sign(j) * j.abs().pow(1 / 3)
    volume = c * (c * c)
    eye = _eye(f_trial)
    return c[..., None, None] * eye, ((material.lam + 2 * material.mu / 3) * (volume - 1) * volume)[..., None, None] * eye


class _WaterStress(torch.autograd.Function):
    """``_water_stress`` as one C loop each way (``cpu/stress.c``: ``water_stress``, ``water_stress_backward``), in place of
    its dozen small tensor ops per substep and their backward nodes; c = cbrt(det F_trial) in double."""

    @staticmethod
    def forward(ctx, f_trial: Tensor, material: Material):
        f_trial = f_trial.detach().contiguous()
        f, tau = torch.empty_like(f_trial), torch.empty_like(f_trial)
        library = _stress_library(c_kernels.REALS[f_trial.dtype])
        library.water_stress(*(ctypes.c_void_p(t.data_ptr()) for t in (f_trial, f, tau)), ctypes.c_int64(f_trial.numel() // 9),
                             ctypes.c_double(material.lam + 2 * material.mu / 3))
        ctx.save_for_backward(f_trial)
        ctx.bulk = material.lam + 2 * material.mu / 3
        return f, tau

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f, grad_tau):
        (f_trial,) = ctx.saved_tensors
        out, zero = torch.empty_like(f_trial), f_trial.new_zeros(1)  # zero: an absent gradient (never read)
        grads = [zero if g is None else g.contiguous() for g in (grad_f, grad_tau)]
        library = _stress_library(c_kernels.REALS[f_trial.dtype])
        pointers = [ctypes.c_void_p(t.data_ptr()) for t in (f_trial, *grads, out)]
        library.water_stress_backward(*pointers, ctypes.c_int64(f_trial.numel() // 9), ctypes.c_double(ctx.bulk),
                                      ctypes.c_int64(grad_f is not None), ctypes.c_int64(grad_tau is not None))
        return out, None


def _cofactor(f: Tensor) -> Tensor:
    """cof(F) = det(F)·F⁻ᵀ [..., 3, 3] (columns: cross products of F's other two columns)."""
    c0, c1, c2 = f[..., :, 0], f[..., :, 1], f[..., :, 2]
    return torch.stack([torch.linalg.cross(c1, c2), torch.linalg.cross(c2, c0), torch.linalg.cross(c0, c1)], -1)


class _PlasticineStress(torch.autograd.Function):
    """``elastic_stress`` for plasticine: forward in C, backward by hand through τ = 2μ (F Fᵀ - R Fᵀ) + λ (J² - J) I
    (dF += 2μ (G F + Gᵀ F - Gᵀ R) + λ (2J - 1) tr(G) cof F, dR = -2μ G F) and ``svd.spectral_vjp``: one C loop
    (``cpu/stress.c``, ``plasticine_stress_vjp_c``) where it builds, else its torch twin ``plasticine_stress_vjp_torch``
    (two dozen batched ops and eight 3x3 products: 67 ms against C's 4.9 ms for 16 x 2600 float32 particles, thread CPU
    time, load 4.3; tests in ``tests/mpm/test_stress_backward.py``)."""

    @staticmethod
    def forward(ctx, f_trial: Tensor, material: Material, backend: str):
        f_trial = f_trial.detach().contiguous()
        f, tau, u, v, jac = (torch.empty_like(f_trial) for _ in range(5))
        s, g = f_trial.new_empty(f_trial.shape[:-1]), f_trial.new_empty(f_trial.shape[:-1])
        c_kernels.call("plasticine_stress", f_trial, f, tau, u, s, v, g, jac, f_trial.numel() // 9, float(material.mu),
                          float(material.lam), float(material.yield_stress), _MIN_STRETCH)
        ctx.save_for_backward(f, u, s, v, g, jac)
        ctx.material, ctx.backend = material, backend
        return f, tau

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f, grad_tau):
        saved = ctx.saved_tensors
        vjp = plasticine_stress_vjp_c if stress_c_available(saved[0].dtype) else plasticine_stress_vjp_torch
        return vjp(*saved, grad_f, grad_tau, ctx.material, ctx.backend), None, None


STRESS_SOURCE = Path(c_kernels.__file__).with_name("cpu") / "stress.c"


def _stress_library(real: str):
    """The compiled ``cpu/stress.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    return c_kernels.build(STRESS_SOURCE, real)


def stress_c_available(dtype: torch.dtype) -> bool:
    """Whether ``cpu/stress.c`` (the fused plasticine stress's backward, water's stress) runs for ``dtype`` here (water takes
    its torch ops where it does not); where it does not,
    ``_PlasticineStress`` differentiates with ``plasticine_stress_vjp_torch`` (the forward ran C already)."""
    return c_kernels.builds(_stress_library, dtype)


def plasticine_stress_vjp_c(f, u, s, v, g, jac, grad_f, grad_tau, material: Material, backend: str = "auto") -> Tensor:
    """``plasticine_stress_vjp_torch`` as one C loop over particles (``cpu/stress.c``; CPU float32/float64)."""
    out = torch.empty_like(f)
    zero = f.new_zeros(1)  # an absent gradient (never read)
    grads = [zero if t is None else t.contiguous() for t in (grad_f, grad_tau)]
    function = _stress_library(c_kernels._REAL[f.dtype]).plasticine_stress_backward
    pointers = [ctypes.c_void_p(t.data_ptr()) for t in (f, u, s, v, g, jac, *grads, out)]
    function(*pointers, ctypes.c_int64(f.numel() // 9), ctypes.c_double(material.mu), ctypes.c_double(material.lam),
             ctypes.c_double(EPS), ctypes.c_int64(grad_f is not None), ctypes.c_int64(grad_tau is not None))
    return out


def plasticine_stress_vjp_torch(f, u, s, v, g, jac, grad_f, grad_tau, material: Material, backend: str = "auto") -> Tensor:
    """dL/dF_trial [..., 3, 3] of ``_PlasticineStress`` from its saved tensors (elastic F, the signed SVD (U, S, V) of
    F_trial, the stretches g = flow(S) [..., 3] and dg/dS [..., 3, 3]) and dL/dF, dL/dτ (None: zero), as torch ops
    (3x3 products by ``backend``); the twin of ``cpu/stress.c``."""
    mu, lam = material.mu, material.lam
    grad_f = torch.zeros_like(f) if grad_f is None else grad_f
    if grad_tau is None:
        grad_r = torch.zeros_like(f)
    else:
        j = g.prod(-1)[..., None, None]
        trace = torch.diagonal(grad_tau, dim1=-2, dim2=-1).sum(-1)[..., None, None]
        rotation = matmul3(u, v.transpose(-1, -2), backend)
        grad_tau_t = grad_tau.transpose(-1, -2)
        grad_f = (grad_f + 2 * mu * (matmul3(grad_tau + grad_tau_t, f, backend) - matmul3(grad_tau_t, rotation, backend))
                  + lam * (2 * j - 1) * trace * _cofactor(f))
        grad_r = -2 * mu * matmul3(grad_tau, f, backend)
    terms = [(g, jac, grad_f), (torch.ones_like(g), torch.zeros_like(jac), grad_r)]
    return spectral_vjp(u, s, v, terms, backend=backend)
