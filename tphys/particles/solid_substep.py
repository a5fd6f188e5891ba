"""One semi-implicit Euler substep of a tetrahedral solid on the ground as one autograd node with a
hand-written vector-Jacobian product.

Same physics as a substep of ``integrators.semi_implicit_euler`` (``forces.total_forces`` on a model of
tetrahedra, gravity, drag and ground), which is its torch twin and which the tests hold it equal to:

    v' = v + h·f(x, v, a)/m,    x' = x + h·v'.

Backward recomputes the elements' deformation from the saved inputs (x, v, activation) instead of
keeping per-element intermediates, so a rollout stores two [N, P, 3] tensors per substep, and runs
the transposed element algebra below as a few dozen fused tensor ops (one loop each under
``torch.compile``). Element algebra, for F = Ds·Dm⁻¹ stored by columns F_j [..., T, 3 (j), 3 (xyz)]:

    columns(E)[j] = Σ_k Dm⁻¹[k, j]·E_k     (edges E_k = x_{k+1} - x_0 -> F; also dL/dP -> ... see below)
    corners(P)[k] = Σ_j Dm⁻¹[k, j]·P_j     (stress -> nodal forces -V·P·Dm⁻ᵀ on corners 1..3; its adjoint)

``columns`` and ``corners`` are each other's transposes, which is all the backward needs besides
the stress's own derivative. First derivatives w.r.t. x, v and the activation only (not double
backward, not ``torch.func``, not gradients w.r.t. model parameters): the twin serves those.

``substep_forward`` / ``substep_backward`` are themselves the torch twins of C loops
(``tphys/kernels/cpu/fem.c``, ``tphys.kernels.fem_kernels``) that run the same algebra over blocks of
envs, a whole frame's substeps per call; ``SolidSubstep(backend=...)`` picks one (see there).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._pytree import tree_leaves

from tphys.autodiff import twice_differentiable_requested
from tphys.compiling import compile_fixed
from tphys.kernels import fem_kernels
from tphys.particles.forces import smooth_ramp, total_forces
from tphys.particles.model import ParticleModel, Tetrahedra

_EPS = 1e-12  # tphys.math.safe_norm's floor on the fiber stretch |F f|

# Layout: per-particle values are [P, 3, N] and per-element scalars [T, N] (envs last and contiguous, so
# each element's algebra runs over the envs in vector lanes); a 3-vector is a list of three such tensors.


def _dot(a: list, b: list) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: list, b: list) -> list:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _gather(tets: Tetrahedra, values: Tensor) -> list:
    """Edge vectors E_k = value(corner k+1) - value(corner 0), k = 0..2, of per-particle values [P, 3, N]."""
    corner = values.index_select(0, tets.corners.reshape(-1)).unflatten(0, tets.corners.shape)  # [T, 4, 3, N]
    return [[corner[:, k + 1, d] - corner[:, 0, d] for d in range(3)] for k in range(3)]


def _scatter(tets: Tetrahedra, edge_values: list, like: Tensor) -> Tensor:
    """Adjoint of ``_gather``: sums edge values (corner k+1 gets E_k, corner 0 gets -Σ E_k) into [P, 3, N]."""
    first = [-(edge_values[0][d] + edge_values[1][d] + edge_values[2][d]) for d in range(3)]
    per_corner = torch.stack([torch.stack(c, 1) for c in (first, *edge_values)], 1)  # [T, 4, 3, N]
    return torch.zeros_like(like).index_add(0, tets.corners.reshape(-1), per_corner.flatten(0, 1))


def _columns(m: Tensor, edges: list) -> list:
    """Columns F_j = Σ_k Dm⁻¹[k, j]·E_k; m = Dm⁻¹ [T, 3, 3, 1]."""
    return [[sum(m[:, k, j] * edges[k][d] for k in range(3)) for d in range(3)] for j in range(3)]


def _corners(m: Tensor, columns: list) -> list:
    """Transpose of ``_columns``: E_k = Σ_j Dm⁻¹[k, j]·P_j."""
    return [[sum(m[:, k, j] * columns[j][d] for j in range(3)) for d in range(3)] for k in range(3)]


def _elements(tets: Tetrahedra) -> dict:
    """Per-element constants shaped [T, 1] (and Dm⁻¹ [T, 3, 3, 1]) to broadcast against [T, N]."""
    column = {name: getattr(tets, name).unsqueeze(-1) for name in ("rest_volume", "mu", "lam", "damping", "max_stress")}
    column["alpha"] = 1.0 + 0.75 * column["mu"] / column["lam"]
    column["fiber"] = [tets.fiber[:, j, None] for j in range(3)]
    column["m"] = tets.rest_inverse.unsqueeze(-1)
    return column


def _deformation(el: dict, tets: Tetrahedra, x: Tensor):
    f = _columns(el["m"], _gather(tets, x))
    ic = sum(f[j][d] * f[j][d] for j in range(3) for d in range(3))
    cof = [_cross(f[1], f[2]), _cross(f[2], f[0]), _cross(f[0], f[1])]
    w = [sum(f[j][d] * el["fiber"][j] for j in range(3)) for d in range(3)]  # F·fiber
    return f, ic, cof, _dot(f[0], cof[0]), w, torch.sqrt(_dot(w, w)).clamp_min(_EPS)


def _stress(el: dict, tets: Tetrahedra, x: Tensor, v: Tensor, activation: Tensor) -> list:
    """First Piola-Kirchhoff stress by columns (see ``fem``'s docstring); activation [T, N]."""
    f, ic, cof, j, w, w_norm = _deformation(el, tets, x)
    f_dot = _columns(el["m"], _gather(tets, v))
    scale = el["mu"] * (1 - 1 / (ic + 1))
    volumetric = el["lam"] * (j - el["alpha"])
    tension = activation * el["max_stress"] / w_norm
    return [[scale * f[c][d] + volumetric * cof[c][d] + el["damping"] * f_dot[c][d] + tension * w[d] * el["fiber"][c]
             for d in range(3)] for c in range(3)]


def _stress_adjoint(el: dict, tets: Tetrahedra, x: Tensor, activation: Tensor, grad_p: list) -> tuple[list, Tensor]:
    """(dL/dF by columns, dL/d activation [T, N]) of the non-damping stress, from dL/dP by columns."""
    f, ic, cof, j, w, w_norm = _deformation(el, tets, x)
    scale = el["mu"] * (1 - 1 / (ic + 1))
    along_f = 2 * el["mu"] / (ic + 1).square() * sum(_dot(f[c], grad_p[c]) for c in range(3))
    along_cof = el["lam"] * sum(_dot(cof[c], grad_p[c]) for c in range(3))
    volumetric = el["lam"] * (j - el["alpha"])
    g0, g1, g2 = grad_p
    d_cof = [_sub(_cross(f[1], g2), _cross(f[2], g1)), _sub(_cross(f[2], g0), _cross(f[0], g2)), _sub(_cross(f[0], g1), _cross(f[1], g0))]
    # fiber: P_c += a·σ·n·fiber_c with n = w/|w|, w = F·fiber
    pulled = [sum(grad_p[c][d] * el["fiber"][c] for c in range(3)) for d in range(3)]
    n = [w[d] / w_norm for d in range(3)]
    along_n = _dot(n, pulled)
    tension = activation * el["max_stress"] / w_norm
    grad_w = [tension * (pulled[d] - along_n * n[d]) for d in range(3)]
    grad_f = [[scale * grad_p[c][d] + along_f * f[c][d] + along_cof * cof[c][d] + volumetric * d_cof[c][d] + grad_w[d] * el["fiber"][c]
               for d in range(3)] for c in range(3)]
    return grad_f, el["max_stress"] * along_n


def _sub(a: list, b: list) -> list:
    return [a[d] - b[d] for d in range(3)]


def _ground(model: ParticleModel, x: Tensor, v: Tensor):
    """Contact terms of ``forces.ground_forces`` from x, v [P, 3, N]."""
    g, up = model.ground, model.up_axis
    depth = g.height - x[:, up]
    press = smooth_ramp(depth, g.smoothing)
    stiffness = g.stiffness + g.damping * smooth_ramp(-v[:, up], g.slip)
    tangential = [torch.zeros_like(depth) if d == up else v[:, d] for d in range(3)]
    slip_speed = torch.sqrt(_dot(tangential, tangential) + g.slip**2)
    return depth, press, stiffness, tangential, slip_speed


def _ground_force(model: ParticleModel, x: Tensor, v: Tensor) -> Tensor:
    """``forces.ground_forces`` [P, 3, N]."""
    _, press, stiffness, tangential, slip_speed = _ground(model, x, v)
    normal_force = stiffness * press
    friction = -model.ground.friction * normal_force / slip_speed
    return torch.stack([normal_force if d == model.up_axis else friction * tangential[d] for d in range(3)], 1)


def _ground_adjoint(model: ParticleModel, x: Tensor, v: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dx, dL/dv) [P, 3, N] of ``_ground_force`` given dL/dforce [P, 3, N]."""
    g, up = model.ground, model.up_axis
    depth, press, stiffness, tangential, slip_speed = _ground(model, x, v)
    friction = g.friction * stiffness * press / slip_speed
    along = sum(grad[:, d] * tangential[d] for d in range(3) if d != up)  # dL/dforce · v_t
    grad_normal = grad[:, up] - g.friction * along / slip_speed
    grad_depth = grad_normal * stiffness * torch.clamp(depth / g.smoothing, 0.0, 1.0)
    grad_approach = grad_normal * press * g.damping
    grad_v = [-grad_approach * torch.clamp(-v[:, up] / g.slip, 0.0, 1.0) if d == up
              else friction * (along / slip_speed.square() * tangential[d] - grad[:, d]) for d in range(3)]
    zero = torch.zeros_like(depth)
    grad_x = torch.stack([-grad_depth if d == up else zero for d in range(3)], 1)
    return grad_x, torch.stack(grad_v, 1)


def _lanes(t: Tensor) -> Tensor:
    """[N, P, 3] -> [P, 3, N] (a view)."""
    return t.permute(1, 2, 0)


def _unlanes(t: Tensor) -> Tensor:
    """[P, 3, N] -> [N, P, 3] (a view)."""
    return t.permute(2, 0, 1)


def _forces(model: ParticleModel, x: Tensor, v: Tensor, activation: Tensor) -> Tensor:
    """Total force [P, 3, N] on particles at x, v [P, 3, N]; activation [T, N]."""
    tets = model.tetrahedra
    el = _elements(tets)
    stress = _stress(el, tets, x, v, activation)
    edge_forces = [[-el["rest_volume"] * e for e in edge] for edge in _corners(el["m"], stress)]
    force = (model.mass[:, None] * model.gravity)[..., None] - model.drag * v + _scatter(tets, edge_forces, x)
    return force + _ground_force(model, x, v) if model.ground is not None else force


def substep_forward(model: ParticleModel, h: float, x: Tensor, v: Tensor, activation: Tensor) -> tuple[Tensor, Tensor]:
    """(x', v') [N, P, 3] after one substep of h seconds from x, v [N, P, 3]; activation [N, T]."""
    force = _unlanes(_forces(model, _lanes(x), _lanes(v), activation.transpose(0, 1)))
    v_next = v + (h / model.mass).unsqueeze(-1) * force
    return x + h * v_next, v_next


def substep_backward(model: ParticleModel, h: float, x: Tensor, v: Tensor, activation: Tensor, grad_x_next: Tensor,
                     grad_v_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx, dL/dv, dL/d activation) of ``substep_forward`` from dL/dx', dL/dv' (shapes as there)."""
    tets = model.tetrahedra
    el = _elements(tets)
    x_l, v_l, activation_t = _lanes(x), _lanes(v), activation.transpose(0, 1)
    grad_v_total = grad_v_next + h * grad_x_next
    grad_force = _lanes((h / model.mass).unsqueeze(-1) * grad_v_total)
    grad_p = [[-el["rest_volume"] * e for e in column] for column in _columns(el["m"], _gather(tets, grad_force))]
    grad_f, grad_activation = _stress_adjoint(el, tets, x_l, activation_t, grad_p)
    grad_f_dot = [[el["damping"] * e for e in column] for column in grad_p]
    grad_x = _scatter(tets, _corners(el["m"], grad_f), x_l)
    grad_v = _scatter(tets, _corners(el["m"], grad_f_dot), v_l) - model.drag * grad_force
    if model.ground is not None:
        ground_x, ground_v = _ground_adjoint(model, x_l, v_l, grad_force)
        grad_x, grad_v = grad_x + ground_x, grad_v + ground_v
    return grad_x_next + _unlanes(grad_x), grad_v_total + _unlanes(grad_v), grad_activation.transpose(0, 1)


class _Substep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, activation, stepper):
        ctx.save_for_backward(x, v, activation)
        ctx.stepper = stepper
        return stepper.forward_fn(x, v, activation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x_next, grad_v_next):
        x, v, activation = ctx.saved_tensors
        grad_x_next = torch.zeros_like(x) if grad_x_next is None else grad_x_next
        grad_v_next = torch.zeros_like(v) if grad_v_next is None else grad_v_next
        return (*ctx.stepper.backward_fn(x, v, activation, grad_x_next, grad_v_next), None)


class SolidSubstep:
    """``(x, v, activation) -> (x', v')``: one substep of ``h`` s of a free tetrahedral solid on the ground.

    x, v: [N, P, 3] m, m/s; activation: [N, T] (fiber stress scale per element). Needs a model of
    tetrahedra only (gravity, drag and ground allowed; no springs, membranes or handles).

    ``backend`` ("auto" | "cpu" | "torch"; ``tphys.kernels.fem_kernels.resolve_backend``, decided once from the
    model's tensors): "cpu" runs the substeps and their backward as C loops (``tphys/kernels/cpu/fem.c``, the C twin
    of ``substep_forward`` / ``substep_backward``) and also offers ``frame`` (a frame's substeps in one C call and
    one autograd node); "torch" runs the torch functions, under torch.compile with ``compile=True`` (fixed shapes,
    compiled lazily on the first call); "auto" takes "cpu" for float32/float64 CPU models when the C file builds,
    "torch" otherwise (CUDA). ``self.backend`` is the resolved choice. ``compile`` applies to the torch backend only.

    The twin (``total_forces`` under autograd) takes over, whatever the backend, where the fused node cannot serve:
    forward-mode tangents, ``tphys.autodiff.twice_differentiable()``, model tensors that require grad.
    """

    def __init__(self, model: ParticleModel, h: float, compile: bool = False, backend: str = "auto"):
        if model.tetrahedra is None or model.springs is not None or model.triangles is not None:
            raise ValueError("SolidSubstep needs a model of tetrahedra only (no springs or membranes)")
        if not bool((model.free_mask == 1).all()):
            raise ValueError("SolidSubstep needs a model without handles")
        self.model, self.h = model, float(h)
        self.backend = fem_kernels.resolve_backend(model.mass, backend)
        self.kernel = fem_kernels.FemKernel(model, self.h) if self.backend == "cpu" else None
        if self.kernel is not None:
            kernel = self.kernel

            def forward(x, v, activation):
                return kernel.forward(x, v, activation, 1)[:2]

            def backward(x, v, activation, grad_x_next, grad_v_next):
                return kernel.backward(x, v, activation, None, grad_x_next, grad_v_next, 1)

            self.forward_fn, self.backward_fn = forward, backward
            return

        def forward(x, v, activation):
            return substep_forward(model, self.h, x, v, activation)

        def backward(x, v, activation, grad_x_next, grad_v_next):
            return substep_backward(model, self.h, x, v, activation, grad_x_next, grad_v_next)

        self.forward_fn = compile_fixed(forward) if compile else forward
        self.backward_fn = compile_fixed(backward) if compile else backward

    def twin(self, x: Tensor, v: Tensor, activation: Tensor) -> tuple[Tensor, Tensor]:
        """The same substep by ``forces.total_forces`` under plain autograd."""
        v_next = v + (self.h / self.model.mass).unsqueeze(-1) * total_forces(self.model, x, v, activation=activation)
        return x + self.h * v_next, v_next

    def route(self, x: Tensor, v: Tensor, activation: Tensor) -> str:
        """How a call on these inputs runs: "twin" (forward-mode tangents on an input, or, with grad on, inside
        ``twice_differentiable()`` or with model tensors that require grad), "plain" (no graph needed: ``forward_fn``)
        or "node" (the fused autograd node)."""
        inputs = (x, v, activation)
        if any(fwAD.unpack_dual(t).tangent is not None for t in inputs):
            return "twin"  # before "plain": the C loops (and compiled graphs) would drop the tangents
        grad = torch.is_grad_enabled()
        if grad and (twice_differentiable_requested() or any(isinstance(t, Tensor) and t.requires_grad for t in tree_leaves(self.model))):
            return "twin"
        if not grad or not any(t.requires_grad for t in inputs):
            return "plain"
        return "node"

    def __call__(self, x: Tensor, v: Tensor, activation: Tensor) -> tuple[Tensor, Tensor]:
        route = self.route(x, v, activation)
        if route == "plain":
            return self.forward_fn(x, v, activation)
        if route == "twin":
            return self.twin(x, v, activation)
        return _Substep.apply(x, v, activation, self)

    def fuses_frames(self, x: Tensor, v: Tensor, activation: Tensor) -> bool:
        """Whether ``frame`` serves these inputs: the C backend and not the twin's route."""
        return self.kernel is not None and self.route(x, v, activation) != "twin"

    def frame(self, x: Tensor, v: Tensor, activation: Tensor, substeps: int, keep_states: bool = True) -> tuple[Tensor, Tensor]:
        """(x, v) [N, P, 3] after ``substeps`` substeps with the activation [N, T] held: one C call forward and, with
        grad, one autograd node whose backward is one C call. ``keep_states``: the node keeps every substep's input
        state (2·N·P·3 numbers per substep); False: only the frame's inputs, and backward reruns the substeps first
        (``fem_kernels.frame``). Only where ``fuses_frames`` (raises ValueError otherwise)."""
        if not self.fuses_frames(x, v, activation):
            raise ValueError(f"SolidSubstep.frame needs the C backend (this one runs {self.backend!r}) and inputs the fused node "
                             "serves (see route)")
        if self.route(x, v, activation) == "plain":
            return self.kernel.forward(x, v, activation, substeps)[:2]
        return fem_kernels.frame(self.kernel, x, v, activation, substeps, keep_states)
