"""The rigid engine's substeps in C (``cpu/rigid.c``) with their adjoint: loader, backend choice and the frame node.

``cpu/rigid.c`` is the C twin of ``tphys.rigid.integrator.substep`` (the torch functions stay the reference the tests hold it
to, in float64): it runs a frame's substeps of every env in one call, forward, and their vector-Jacobian product, backward,
recomputing each substep's intermediates from its saved input state (q, qd). Each env runs alone (the models are small:
ant 13 links / 14 dofs, humanoid 22 / 27); every intermediate is double, the state is rounded to the tensors' dtype after
each substep. It is compiled by the system C compiler on first use, once per float type, through ``c_kernels.build``.

Scope (``supports``): models without muscles whose joints are hinge, slide, ball, free or fixed (every joint type), with or
without ground contact, joint limits, passive springs and damping, motors with gear and control range. ``RigidKernel(model,
h, contact)`` flattens a model's constants once (as float64: exact for float32 models too); ``frame(kernel, q, qd,
actuation, substeps)`` is the autograd node over a whole frame (one C call forward, one backward; it saves every substep's
input state, N·(nq + D) numbers per substep). Which calls it serves is ``tphys.rigid.integrator.step``'s decision (``route``
there); nothing here runs unless called.

Threads: each call splits its envs into ``torch.get_num_threads()`` contiguous row spans (at most one per env, and at
most one per ``MIN_SPAN_WORK`` env·substep·dof² of work: a thread's hand-off costs tens of microseconds, more than a
cart-pole's whole frame at N = 64 or 256, which ran 0.93x and 0.82x on two threads; ``RigidKernel.parts``;
``c_kernels.threads`` / ``spans``) and runs one C call per span on offset pointers, concurrently (``c_kernels.parallel``:
ctypes releases the GIL; each call allocates its own scratch). Envs are independent and nothing is summed across
them, so results are bitwise those of one thread; one thread makes the single call of before, without the pool.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import c_kernels

SOURCE = Path(__file__).with_name("cpu") / "rigid.c"
BACKENDS = ("auto", "cpu", "torch")
_REAL = c_kernels.REALS
JOINT_CODES = {"hinge": 0, "slide": 1, "ball": 2, "free": 3, "fixed": 4}
MIN_SPAN_WORK = 3072  # env·substep·dof² each thread's span must hold. Two threads against one, fwd+bwd (threads_ab.py):
# cart-pole (2 dofs, 4 substeps) N = 256, spans of 2048: 0.82x; N = 1024, 8192: 1.35x; hopper (6, 16) N = 16, 4608: 1.31x


@cache
def _library(real: str) -> ctypes.CDLL:
    """The compiled ``rigid.c`` for one float type (``c_kernels.build``: built on first use, cached on disk)."""
    library = c_kernels.build(SOURCE, real)
    address, integer = ctypes.c_void_p, ctypes.c_int64
    library.rigid_forward.argtypes = [address] * 7 + [integer, integer]
    library.rigid_backward.argtypes = [address] * 8 + [integer, integer]
    library.rigid_forward.restype = library.rigid_backward.restype = ctypes.c_int
    return library


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the C substeps can run for ``dtype`` (float32/float64) on this machine (compiles on first call)."""
    return c_kernels.builds(_library, dtype)


def supports(model) -> str | None:
    """None if ``rigid.c`` covers ``model``'s physics, else the reason it does not (a model with muscles)."""
    if model.muscles is not None:
        return "the model has muscles"
    return None


def resolve_backend(model, backend: str) -> str:
    """"cpu" (the C substeps) or "torch" for ``model`` under ``backend``: "auto" takes C for a float32/float64 CPU model that
    ``supports`` covers when ``rigid.c`` builds, "torch" takes torch, "cpu" raises RuntimeError where C cannot run;
    ValueError on any other value."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    like = model.q0
    reason = supports(model)
    if reason is None and like.device.type != "cpu":
        reason = f"the model is on {like.device}"
    if reason is None and not available(like.dtype):
        reason = f"no C build for {like.dtype} (float32/float64 and a working C compiler needed)"
    if backend == "cpu" and reason is not None:
        raise RuntimeError(f"backend='cpu' cannot run this rigid model: {reason}")
    return "cpu" if reason is None else "torch"


_INTEGERS = ("parent", "jtype", "jq", "ldof_start", "ldof", "dlink", "sdof", "sq", "free_q", "free_dof", "ball_q", "ball_dof", "clink",
             "adof")
_POINTERS = ("parent", "jtype", "jq", "jaxis", "janchor", "jref", "opos", "orot", "mass", "com", "inertia", "ldof_start", "ldof",
             "dlink", "daxis", "danchor", "drot", "dwf", "armature", "damping", "sdof", "sq", "stiffness", "springref", "limited", "lower",
             "upper", "limit_ke", "limit_kd", "free_q", "free_dof", "ball_q", "ball_dof", "clink", "cpos", "cradius", "adof", "gear",
             "alower", "aupper")
_COUNTS = ("links", "dofs", "nq", "contacts", "actuators", "scalars", "frees", "balls", "has_contact")


class _Model(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in _COUNTS] + [(n, ctypes.c_void_p) for n in _POINTERS]
                + [("gravity", ctypes.c_double * 3)] + [(n, ctypes.c_double) for n in ("ke", "kd", "kf", "mu", "h")])


class RigidKernel:
    """A rigid model's constants in ``rigid.c``'s form for substeps of ``h`` s (``contact``: ground contact on), kept alive here.

    ``model``: a ``RigidModel`` without muscles, float32/float64 CPU tensors (``resolve_backend`` checks). Constants are
    converted to float64 (exact from float32)."""

    def __init__(self, model, h: float, contact: bool = True):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"RigidKernel: {reason}")
        dtype = model.q0.dtype
        if dtype not in _REAL or model.q0.device.type != "cpu":
            raise TypeError(f"RigidKernel: the model must be float32/float64 CPU tensors, got {dtype} on {model.q0.device}")
        self.dtype, self.real, self.h = dtype, _REAL[dtype], float(h)
        links, dofs, c, act, mat = model.links, model.dofs, model.contacts, model.actuators, model.material
        num_links, nv, ns = model.num_links, model.nv, dofs.scalar.numel()
        jtype = torch.full((num_links,), JOINT_CODES["fixed"], dtype=torch.int64)
        jq = torch.zeros(num_links, dtype=torch.int64)
        jaxis, janchor, jref = torch.zeros(num_links, 3), torch.zeros(num_links, 3), torch.zeros(num_links)
        jaxis, janchor, jref = jaxis.double(), janchor.double(), jref.double()
        for kind in ("hinge", "slide", "ball", "free"):
            index = getattr(links, kind)
            jtype[index] = JOINT_CODES[kind]
            jq[index] = getattr(links, f"{kind}_q")
        jaxis[links.hinge], janchor[links.hinge], jref[links.hinge] = (links.hinge_axis.double(), links.hinge_anchor.double(),
                                                                      links.hinge_ref.double())
        jaxis[links.slide], jref[links.slide] = links.slide_axis.double(), links.slide_ref.double()
        janchor[links.ball] = links.ball_anchor.double()
        order = torch.argsort(dofs.link, stable=True)  # dofs grouped by link (CSR), each link's in dof order
        counts = torch.bincount(dofs.link, minlength=num_links)
        ldof_start = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)))

        def per_scalar(value):
            return torch.as_tensor(value, dtype=torch.float64).expand(ns)

        tensors = dict(parent=links.parent, jtype=jtype, jq=jq, jaxis=jaxis, janchor=janchor, jref=jref, opos=links.offset_pos,
                       orot=links.offset_rot, mass=links.mass, com=links.com, inertia=links.inertia, ldof_start=ldof_start, ldof=order,
                       dlink=dofs.link, daxis=dofs.axis, danchor=dofs.anchor, drot=dofs.rotational, dwf=dofs.world_fixed,
                       armature=dofs.armature, damping=dofs.damping, sdof=dofs.scalar, sq=dofs.scalar_q, stiffness=dofs.stiffness,
                       springref=dofs.springref, limited=dofs.limited, lower=dofs.lower, upper=dofs.upper,
                       limit_ke=per_scalar(mat.limit_ke.detach()), limit_kd=per_scalar(mat.limit_kd.detach()), free_q=links.free_q,
                       free_dof=links.free_dof, ball_q=links.ball_q, ball_dof=links.ball_dof, clink=c.link, cpos=c.pos,
                       cradius=c.radius, adof=act.dof, gear=act.gear, alower=act.lower, aupper=act.upper)
        self._tensors = {k: t.detach().to(torch.int64 if k in _INTEGERS else torch.float64).contiguous() for k, t in tensors.items()}
        has_contact = int(bool(contact) and c.link.numel() > 0)
        self.shape = dict(links=num_links, dofs=nv, nq=model.nq, contacts=c.link.numel(), actuators=act.dof.numel(), scalars=ns,
                          frees=links.free.numel(), balls=links.ball.numel(), has_contact=has_contact)
        self.struct = _Model(**self.shape, **{k: t.data_ptr() for k, t in self._tensors.items()},
                             gravity=(ctypes.c_double * 3)(*model.gravity.double().tolist()),
                             ke=float(mat.contact_ke), kd=float(mat.contact_kd), kf=float(mat.contact_kf), mu=float(mat.contact_mu),
                             h=self.h)

    def _check(self, q: Tensor, qd: Tensor, actuation: Tensor) -> int:
        n = q.shape[0]
        for t in (q, qd, actuation):
            if t.device.type != "cpu" or t.dtype != self.dtype:
                raise TypeError(f"RigidKernel: q, qd, actuation must be CPU {self.dtype} like the model, got {t.dtype} on {t.device}")
        s = self.shape
        if tuple(q.shape) != (n, s["nq"]) or tuple(qd.shape) != (n, s["dofs"]) or tuple(actuation.shape) != (n, s["actuators"]):
            raise ValueError(f"RigidKernel: q {tuple(q.shape)}, qd {tuple(qd.shape)}, actuation {tuple(actuation.shape)} do not fit a "
                             f"model of nq={s['nq']}, {s['dofs']} dofs, {s['actuators']} actuators")
        return n

    def parts(self, n: int, substeps: int) -> int:
        """How many threads a call over ``n`` envs and ``substeps`` substeps splits into: ``c_kernels.threads(n)``, at most
        one per ``MIN_SPAN_WORK`` env·substep·dof² (at least 1; dof² stands for a substep's cost, which grows faster than
        the dofs: a hopper's env-substep costs several cart-poles')."""
        return max(1, min(c_kernels.threads(n), n * substeps * self.shape["dofs"] ** 2 // MIN_SPAN_WORK))

    def forward(self, q: Tensor, qd: Tensor, actuation: Tensor, substeps: int, keep: bool = False):
        """(q', qd', trajectory or None) after ``substeps`` substeps from q [N, nq], qd [N, D] under actuation [N, A] (held);
        ``keep``: also every substep's input state [N, substeps, nq + D] for ``backward``. No autograd."""
        n = self._check(q, qd, actuation)
        q, qd, actuation = (t.detach().contiguous() for t in (q, qd, actuation))
        q1, qd1 = torch.empty_like(q), torch.empty_like(qd)
        trajectory = q.new_empty(n, substeps, q.shape[1] + qd.shape[1]) if keep else None
        library, parts = _library(self.real), self.parts(n, substeps)

        def run(q, qd, actuation, q1, qd1, trajectory):
            return library.rigid_forward(ctypes.byref(self.struct), q.data_ptr(), qd.data_ptr(), actuation.data_ptr(), q1.data_ptr(),
                                         qd1.data_ptr(), None if trajectory is None else trajectory.data_ptr(), q.shape[0],
                                         int(substeps))

        if parts == 1:  # one thread: one call over every env
            status = [run(q, qd, actuation, q1, qd1, trajectory)] if n else []
        else:  # env rows [a, b) per thread (each call has its own scratch)
            tensors = (q, qd, actuation, q1, qd1, trajectory)
            status = c_kernels.parallel([lambda a=a, b=b: run(*(None if t is None else t[a:b] for t in tensors))
                                         for a, b in c_kernels.spans(n, parts)])
        if any(status):
            raise MemoryError("rigid_forward: out of memory")
        return q1, qd1, trajectory

    def backward(self, actuation: Tensor, trajectory: Tensor, grad_q: Tensor, grad_qd: Tensor, substeps: int):
        """(dL/dq, dL/dqd, dL/d actuation) of ``forward`` from dL/dq', dL/dqd' [N, nq], [N, D], its saved ``trajectory``."""
        n = trajectory.shape[0]
        grad_q, grad_qd = (t.to(self.dtype).contiguous() for t in (grad_q, grad_qd))
        gq, gqd, ga = torch.empty_like(grad_q), torch.empty_like(grad_qd), torch.empty_like(actuation)
        library, parts = _library(self.real), self.parts(n, substeps)

        def run(actuation, trajectory, grad_q, grad_qd, gq, gqd, ga):
            return library.rigid_backward(ctypes.byref(self.struct), actuation.data_ptr(), trajectory.data_ptr(), grad_q.data_ptr(),
                                          grad_qd.data_ptr(), gq.data_ptr(), gqd.data_ptr(), ga.data_ptr(), trajectory.shape[0],
                                          int(substeps))

        if parts == 1:
            status = [run(actuation, trajectory, grad_q, grad_qd, gq, gqd, ga)] if n else []
        else:
            tensors = (actuation, trajectory, grad_q, grad_qd, gq, gqd, ga)
            status = c_kernels.parallel([lambda a=a, b=b: run(*(t[a:b] for t in tensors)) for a, b in c_kernels.spans(n, parts)])
        if any(status):
            raise MemoryError("rigid_backward: out of memory")
        return gq, gqd, ga


class _Frame(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, qd, actuation, kernel, substeps):
        actuation = actuation.detach().contiguous()
        q1, qd1, trajectory = kernel.forward(q, qd, actuation, substeps, keep=True)
        ctx.save_for_backward(actuation, trajectory)
        ctx.kernel, ctx.substeps = kernel, substeps
        return q1, qd1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_qd):
        actuation, trajectory = ctx.saved_tensors
        n, s = trajectory.shape[0], ctx.kernel.shape
        grad_q = trajectory.new_zeros(n, s["nq"]) if grad_q is None else grad_q
        grad_qd = trajectory.new_zeros(n, s["dofs"]) if grad_qd is None else grad_qd
        return (*ctx.kernel.backward(actuation, trajectory, grad_q, grad_qd, ctx.substeps), None, None)


def frame(kernel: RigidKernel, q: Tensor, qd: Tensor, actuation: Tensor, substeps: int) -> tuple[Tensor, Tensor]:
    """(q', qd') after ``substeps`` substeps from q [N, nq], qd [N, D] under actuation [N, A] as one autograd node (first
    derivatives w.r.t. q, qd and the actuation; the caller routes forward-mode, double backward and model gradients
    elsewhere)."""
    return _Frame.apply(q, qd, actuation, kernel, int(substeps))
