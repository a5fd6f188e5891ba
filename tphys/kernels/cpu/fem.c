/* The FEM solid's substeps and their adjoint for CPU: tphys.particles.solid_substep in C, every substep of a frame
 * and every env in one call.
 *
 * The C twin of solid_substep.substep_forward / substep_backward (the torch functions, which the tests hold it equal
 * to): a free tetrahedral solid (stable neo-Hookean + stress damping + active fibers), gravity, linear drag and an
 * optional penalty ground with smooth Coulomb friction, stepped by semi-implicit Euler. Built by
 * tphys/kernels/fem_kernels.py with the system C compiler once per REAL type (-DREAL=float or double) and called
 * through ctypes on contiguous tensors. Single-threaded: the corner forces are summed in tetrahedron order, so
 * results are deterministic.
 *
 * Layout. Inputs and outputs are the torch layout, x, v [N, P, 3], activation [N, T] (row-major). Envs are taken
 * LANES at a time (the loader passes one 64-byte vector: 16 floats or 8 doubles): a block's positions and
 * velocities are transposed into arrays [P][3][LANES] (env index innermost), all substeps run there, and the
 * block is transposed back. Every arithmetic loop runs over the LANES envs of a block with the same (tetrahedron,
 * particle) indices: one vector element per env. A partial last block repeats its last env in the spare lanes
 * (their results are not stored).
 *
 * Per substep of length h (substep_forward's order of operations, so that results agree to round-off):
 *     F = Ds·Dm⁻¹ by columns F_j = Σ_k Dm⁻¹[k][j]·E_k (edges E_k = x_{k+1} - x_0), Ḟ likewise from v
 *     I_C = |F|², cof = (F_1×F_2, F_2×F_0, F_0×F_1), J = F_0·cof_0, w = F·fiber, |w| floored at 1e-12
 *     P_c = μ(1 - 1/(I_C + 1))·F_c + λ(J - α)·cof_c + damping·Ḟ_c + (a·max_stress/|w|)·w·fiber_c
 *     edge forces -V·Σ_j Dm⁻¹[k][j]·P_j on corner k+1, minus their sum on corner 0
 *     f_p = (m_p·g - drag·v_p) + Σ corner forces + ground(x_p, v_p);  v_p += (h/m_p)·f_p;  x_p += h·v_p
 * The adjoint runs the transposed algebra of substep_backward (see there and _stress_adjoint / _ground_adjoint).
 *
 * Entry points (see fem_kernels.py for the Python side):
 *     fem_forward(model, x0, v0, act, x_out, v_out, trajectory, n, substeps)
 *         x_out, v_out [N, P, 3] after `substeps` substeps; trajectory (or NULL): every substep's input state,
 *         block layout [blocks][substeps][2 (x, v)][P][3][LANES], what fem_backward reads.
 *     fem_backward(model, x0, v0, act, trajectory, gx, gv, gx_out, gv_out, gact_out, n, substeps, scratch)
 *         dL/dx0, dL/dv0 [N, P, 3] and dL/d act [N, T] (summed over the substeps: the activation is held) from
 *         dL/dx, dL/dv of the frame's outputs. With trajectory NULL the block's substeps are rerun from x0, v0 into
 *         `scratch` (substeps·2·P·3·LANES reals) first.
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef LANES
#define LANES 16
#endif

#define SQRT(x) (sizeof(REAL) == sizeof(float) ? __builtin_sqrtf(x) : __builtin_sqrt(x))
#define INLINE static inline __attribute__((always_inline))
#define FOR_LANES(e) _Pragma("GCC ivdep") for (int e = 0; e < LANES; e++)
#define AT(p, a) (((p) * 3 + (a)) * LANES) /* offset of particle p, axis a in a block array [P][3][LANES] */

static const REAL EPS = (REAL)1e-12; /* tphys.math.safe_norm's floor on the fiber stretch |F f| */

/* The model's constants (fem_kernels.Model mirrors this struct field by field). */
typedef struct {
    const int64_t *corners;                              /* [T][4] particle indices */
    const REAL *rest_inverse;                            /* [T][3][3] Dm⁻¹[k][j] */
    const REAL *volume, *mu, *lam, *alpha, *damping, *max_stress; /* [T]; alpha = 1 + 0.75·mu/lam */
    const REAL *fiber;                                   /* [T][3] */
    const REAL *weight;                                  /* [P][3] m·g, N */
    const REAL *impulse;                                 /* [P] h/m, s/kg */
    REAL drag, h;                                        /* N·s/m, s */
    REAL height, stiffness, ground_damping, friction, slip, smoothing; /* the ground (if has_ground) */
    int64_t particles, tets, up, has_ground;
} Model;

INLINE REAL ramp(REAL s, REAL w) { /* forces.smooth_ramp: r = clamp(s, 0, w); r(2s - r)·(0.5/w) */
    REAL r = s > 0 ? s : 0;
    r = r < w ? r : w;
    return r * (2 * s - r) * ((REAL)0.5 / w);
}

INLINE REAL clamp01(REAL s) { return s < 0 ? 0 : (s > 1 ? 1 : s); }

/* Block arrays from/to the torch layout [N, K] (K values per env): lane e holds env min(first + e, last). */
static void gather(const REAL *src, REAL *dst, int64_t first, int64_t last, int64_t width) {
    for (int e = 0; e < LANES; e++) {
        const int64_t env = first + e <= last ? first + e : last;
        const REAL *row = src + env * width;
        for (int64_t r = 0; r < width; r++) dst[r * LANES + e] = row[r];
    }
}

static void scatter(const REAL *src, REAL *dst, int64_t first, int64_t last, int64_t width) {
    for (int e = 0; e < LANES && first + e <= last; e++) {
        REAL *row = dst + (first + e) * width;
        for (int64_t r = 0; r < width; r++) row[r] = src[r * LANES + e];
    }
}

/* One tetrahedron's constants, loaded once per tetrahedron (scalars broadcast over the lanes). */
typedef struct {
    int64_t c[4];
    REAL m[3][3], fib[3], vol, mu, lam, alpha, damping, max_stress;
} Tet;

INLINE Tet load_tet(const Model *md, int64_t t) {
    Tet q;
    for (int k = 0; k < 4; k++) q.c[k] = md->corners[4 * t + k];
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 3; j++) q.m[k][j] = md->rest_inverse[9 * t + 3 * k + j];
    for (int j = 0; j < 3; j++) q.fib[j] = md->fiber[3 * t + j];
    q.vol = md->volume[t], q.mu = md->mu[t], q.lam = md->lam[t], q.alpha = md->alpha[t];
    q.damping = md->damping[t], q.max_stress = md->max_stress[t];
    return q;
}

/* Columns F_j[d] = Σ_k Dm⁻¹[k][j]·E_k[d] of the edges of per-particle values X at lane e. */
INLINE void columns(const Tet *q, const REAL *restrict X, int e, REAL F[3][3]) {
    REAL E[3][3];
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 3; d++) E[k][d] = X[AT(q->c[k + 1], d) + e] - X[AT(q->c[0], d) + e];
    for (int j = 0; j < 3; j++)
        for (int d = 0; d < 3; d++) F[j][d] = q->m[0][j] * E[0][d] + q->m[1][j] * E[1][d] + q->m[2][j] * E[2][d];
}

/* The transpose: edge values E_k[d] = scale·Σ_j Dm⁻¹[k][j]·P_j[d] added to corner k+1, their negated sum to corner 0. */
INLINE void corners_add(const Tet *q, REAL scale, REAL P[3][3], REAL *restrict out, int e) {
    REAL E[3][3];
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 3; d++) E[k][d] = scale * (q->m[k][0] * P[0][d] + q->m[k][1] * P[1][d] + q->m[k][2] * P[2][d]);
    for (int d = 0; d < 3; d++) out[AT(q->c[0], d) + e] += -(E[0][d] + E[1][d] + E[2][d]);
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 3; d++) out[AT(q->c[k + 1], d) + e] += E[k][d];
}

INLINE void cross(const REAL a[3], const REAL b[3], REAL out[3]) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

INLINE REAL dot(const REAL a[3], const REAL b[3]) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

/* solid_substep._deformation: F, I_C, cofactor columns, J, w = F·fiber, |w| (floored). */
typedef struct {
    REAL F[3][3], cof[3][3], w[3], ic, j, w_norm;
} Deformation;

INLINE void deformation(const Tet *q, const REAL *restrict X, int e, Deformation *g) {
    columns(q, X, e, g->F);
    g->ic = 0;
    for (int j = 0; j < 3; j++)
        for (int d = 0; d < 3; d++) g->ic += g->F[j][d] * g->F[j][d];
    cross(g->F[1], g->F[2], g->cof[0]);
    cross(g->F[2], g->F[0], g->cof[1]);
    cross(g->F[0], g->F[1], g->cof[2]);
    g->j = dot(g->F[0], g->cof[0]);
    for (int d = 0; d < 3; d++) g->w[d] = g->F[0][d] * q->fib[0] + g->F[1][d] * q->fib[1] + g->F[2][d] * q->fib[2];
    const REAL norm = SQRT(dot(g->w, g->w));
    g->w_norm = norm > EPS ? norm : EPS;
}

/* Elastic + damping + fiber forces of every tetrahedron, summed into Fel (zeroed here). */
static void element_forces(const Model *md, const REAL *restrict X, const REAL *restrict V, const REAL *restrict A,
                           REAL *restrict Fel) {
    memset(Fel, 0, sizeof(REAL) * md->particles * 3 * LANES);
    for (int64_t t = 0; t < md->tets; t++) {
        const Tet q = load_tet(md, t);
        FOR_LANES(e) {
            Deformation g;
            REAL Fd[3][3], P[3][3];
            deformation(&q, X, e, &g);
            columns(&q, V, e, Fd);
            const REAL scale = q.mu * (1 - 1 / (g.ic + 1));
            const REAL volumetric = q.lam * (g.j - q.alpha);
            const REAL tension = A[t * LANES + e] * q.max_stress / g.w_norm;
            for (int c = 0; c < 3; c++)
                for (int d = 0; d < 3; d++)
                    P[c][d] = scale * g.F[c][d] + volumetric * g.cof[c][d] + q.damping * Fd[c][d] + tension * g.w[d] * q.fib[c];
            corners_add(&q, -q.vol, P, Fel, e);
        }
    }
}

/* One substep of a block in place: X, V [P][3][LANES], activation A [T][LANES]; Fel: scratch [P][3][LANES]. */
static void substep(const Model *md, REAL *restrict X, REAL *restrict V, const REAL *restrict A, REAL *restrict Fel) {
    element_forces(md, X, V, A, Fel);
    const int64_t up = md->up, a = up == 0 ? 1 : 0, b = up == 2 ? 1 : 2; /* the vertical axis and the other two, a < b */
    for (int64_t p = 0; p < md->particles; p++) {
        const REAL impulse = md->impulse[p], h = md->h, drag = md->drag;
        REAL *x = X + AT(p, 0), *v = V + AT(p, 0);
        const REAL *fel = Fel + AT(p, 0);
        const REAL *w = md->weight + 3 * p;
        if (md->has_ground) {
            const REAL height = md->height, smoothing = md->smoothing, slip = md->slip, k = md->stiffness, c = md->ground_damping;
            const REAL mu = md->friction;
            FOR_LANES(e) {
                const REAL vu = v[up * LANES + e], va = v[a * LANES + e], vb = v[b * LANES + e];
                const REAL press = ramp(height - x[up * LANES + e], smoothing);
                const REAL normal = (k + c * ramp(-vu, slip)) * press;
                const REAL friction = -mu * normal / SQRT(va * va + vb * vb + slip * slip);
                const REAL fu = w[up] - drag * vu + fel[up * LANES + e] + normal;
                const REAL fa = w[a] - drag * va + fel[a * LANES + e] + friction * va;
                const REAL fb = w[b] - drag * vb + fel[b * LANES + e] + friction * vb;
                const REAL nu = vu + impulse * fu, na = va + impulse * fa, nb = vb + impulse * fb;
                v[up * LANES + e] = nu, v[a * LANES + e] = na, v[b * LANES + e] = nb;
                x[up * LANES + e] += h * nu, x[a * LANES + e] += h * na, x[b * LANES + e] += h * nb;
            }
        } else {
            for (int d = 0; d < 3; d++) {
                const REAL wd = w[d];
                FOR_LANES(e) {
                    const REAL vn = v[d * LANES + e] + impulse * (wd - drag * v[d * LANES + e] + fel[d * LANES + e]);
                    v[d * LANES + e] = vn;
                    x[d * LANES + e] += h * vn;
                }
            }
        }
    }
}

/* The adjoint of one substep of a block from its input state X, V: on entry GX, GV hold dL/dx', dL/dv', on exit
 * dL/dx, dL/dv; GA [T][LANES] accumulates dL/d activation. GF, SX, SV: scratch [P][3][LANES]. */
static void substep_adjoint(const Model *md, const REAL *restrict X, const REAL *restrict V, const REAL *restrict A,
                            REAL *restrict GX, REAL *restrict GV, REAL *restrict GA, REAL *restrict GF, REAL *restrict SX,
                            REAL *restrict SV) {
    const int64_t width = md->particles * 3 * LANES;
    for (int64_t p = 0; p < md->particles; p++) /* dL/dv total = dL/dv' + h·dL/dx' (in GV); dL/dforce = (h/m)·that */
        for (int i = 0; i < 3 * LANES; i++) {
            const int64_t o = AT(p, 0) + i;
            GV[o] = GV[o] + md->h * GX[o];
            GF[o] = md->impulse[p] * GV[o];
        }
    memset(SX, 0, sizeof(REAL) * width);
    memset(SV, 0, sizeof(REAL) * width);
    for (int64_t t = 0; t < md->tets; t++) {
        const Tet q = load_tet(md, t);
        FOR_LANES(e) {
            REAL G[3][3], GF_[3][3], GD[3][3], dcof[3][3], a[3], b[3];
            columns(&q, GF, e, G);
            for (int j = 0; j < 3; j++)
                for (int d = 0; d < 3; d++) G[j][d] = -q.vol * G[j][d]; /* dL/dP by columns */
            Deformation g;
            deformation(&q, X, e, &g);
            const REAL scale = q.mu * (1 - 1 / (g.ic + 1));
            const REAL ic1 = g.ic + 1;
            const REAL along_f = 2 * q.mu / (ic1 * ic1) * (dot(g.F[0], G[0]) + dot(g.F[1], G[1]) + dot(g.F[2], G[2]));
            const REAL along_cof = q.lam * (dot(g.cof[0], G[0]) + dot(g.cof[1], G[1]) + dot(g.cof[2], G[2]));
            const REAL volumetric = q.lam * (g.j - q.alpha);
            cross(g.F[1], G[2], a), cross(g.F[2], G[1], b);
            for (int d = 0; d < 3; d++) dcof[0][d] = a[d] - b[d];
            cross(g.F[2], G[0], a), cross(g.F[0], G[2], b);
            for (int d = 0; d < 3; d++) dcof[1][d] = a[d] - b[d];
            cross(g.F[0], G[1], a), cross(g.F[1], G[0], b);
            for (int d = 0; d < 3; d++) dcof[2][d] = a[d] - b[d];
            REAL pulled[3], n[3], gw[3];
            for (int d = 0; d < 3; d++) pulled[d] = G[0][d] * q.fib[0] + G[1][d] * q.fib[1] + G[2][d] * q.fib[2];
            for (int d = 0; d < 3; d++) n[d] = g.w[d] / g.w_norm;
            const REAL along_n = dot(n, pulled);
            const REAL tension = A[t * LANES + e] * q.max_stress / g.w_norm;
            for (int d = 0; d < 3; d++) gw[d] = tension * (pulled[d] - along_n * n[d]);
            for (int c = 0; c < 3; c++)
                for (int d = 0; d < 3; d++) {
                    GF_[c][d] = scale * G[c][d] + along_f * g.F[c][d] + along_cof * g.cof[c][d] + volumetric * dcof[c][d] +
                                gw[d] * q.fib[c];
                    GD[c][d] = q.damping * G[c][d];
                }
            GA[t * LANES + e] += q.max_stress * along_n;
            corners_add(&q, 1, GF_, SX, e);
            corners_add(&q, 1, GD, SV, e);
        }
    }
    const int64_t up = md->up, a = up == 0 ? 1 : 0, b = up == 2 ? 1 : 2; /* the vertical axis and the other two, a < b */
    for (int64_t p = 0; p < md->particles; p++) {
        const REAL *x = X + AT(p, 0), *v = V + AT(p, 0), *gf = GF + AT(p, 0), *sx = SX + AT(p, 0), *sv = SV + AT(p, 0);
        REAL *gx = GX + AT(p, 0), *gv = GV + AT(p, 0);
        const REAL drag = md->drag;
        if (md->has_ground) {
            const REAL height = md->height, smoothing = md->smoothing, slip = md->slip, k = md->stiffness, c = md->ground_damping;
            const REAL mu = md->friction;
            FOR_LANES(e) {
                const REAL vu = v[up * LANES + e], va = v[a * LANES + e], vb = v[b * LANES + e];
                const REAL gu = gf[up * LANES + e], ga = gf[a * LANES + e], gb = gf[b * LANES + e];
                const REAL depth = height - x[up * LANES + e];
                const REAL press = ramp(depth, smoothing);
                const REAL stiffness = k + c * ramp(-vu, slip);
                const REAL along = ga * va + gb * vb;
                const REAL slip_speed = SQRT(va * va + vb * vb + slip * slip);
                const REAL friction = mu * stiffness * press / slip_speed;
                const REAL grad_normal = gu - mu * along / slip_speed;
                const REAL grad_depth = grad_normal * stiffness * clamp01(depth / smoothing);
                const REAL grad_approach = grad_normal * press * c;
                const REAL tangent = along / (slip_speed * slip_speed);
                gx[up * LANES + e] = gx[up * LANES + e] + (sx[up * LANES + e] + -grad_depth);
                gx[a * LANES + e] = gx[a * LANES + e] + sx[a * LANES + e];
                gx[b * LANES + e] = gx[b * LANES + e] + sx[b * LANES + e];
                gv[up * LANES + e] = gv[up * LANES + e] + (sv[up * LANES + e] - drag * gu + -grad_approach * clamp01(-vu / slip));
                gv[a * LANES + e] = gv[a * LANES + e] + (sv[a * LANES + e] - drag * ga + friction * (tangent * va - ga));
                gv[b * LANES + e] = gv[b * LANES + e] + (sv[b * LANES + e] - drag * gb + friction * (tangent * vb - gb));
            }
        } else {
            for (int d = 0; d < 3; d++)
                FOR_LANES(e) {
                    gx[d * LANES + e] = gx[d * LANES + e] + sx[d * LANES + e];
                    gv[d * LANES + e] = gv[d * LANES + e] + (sv[d * LANES + e] - drag * gf[d * LANES + e]);
                }
        }
    }
}

/* Block workspace: X, V, F [P][3][LANES] and A [T][LANES] (forward); GX, GV, GF, SX, SV too (backward). */
static int64_t block_width(const Model *md) { return md->particles * 3 * LANES; }

void fem_forward(const Model *md, const REAL *x0, const REAL *v0, const REAL *act, REAL *x_out, REAL *v_out, REAL *trajectory,
                 int64_t n, int64_t substeps, REAL *work) {
    const int64_t width = block_width(md), pw = md->particles * 3;
    REAL *X = work, *V = X + width, *F = V + width, *A = F + width;
    for (int64_t first = 0, block = 0; first < n; first += LANES, block++) {
        const int64_t last = n - 1;
        gather(x0, X, first, last, pw);
        gather(v0, V, first, last, pw);
        gather(act, A, first, last, md->tets);
        for (int64_t k = 0; k < substeps; k++) {
            if (trajectory) {
                REAL *saved = trajectory + ((block * substeps + k) * 2) * width;
                memcpy(saved, X, sizeof(REAL) * width);
                memcpy(saved + width, V, sizeof(REAL) * width);
            }
            substep(md, X, V, A, F);
        }
        scatter(X, x_out, first, last, pw);
        scatter(V, v_out, first, last, pw);
    }
}

void fem_backward(const Model *md, const REAL *x0, const REAL *v0, const REAL *act, const REAL *trajectory, const REAL *gx_next,
                  const REAL *gv_next, REAL *gx_out, REAL *gv_out, REAL *gact_out, int64_t n, int64_t substeps, REAL *work,
                  REAL *scratch) {
    const int64_t width = block_width(md), pw = md->particles * 3;
    REAL *GX = work, *GV = GX + width, *GF = GV + width, *SX = GF + width, *SV = SX + width, *A = SV + width;
    REAL *GA = A + md->tets * LANES;
    for (int64_t first = 0, block = 0; first < n; first += LANES, block++) {
        const int64_t last = n - 1;
        gather(act, A, first, last, md->tets);
        const REAL *states = trajectory ? trajectory + block * substeps * 2 * width : scratch;
        if (!trajectory) { /* rerun the block's substeps, keeping each one's input state */
            gather(x0, scratch, first, last, pw);
            gather(v0, scratch + width, first, last, pw);
            for (int64_t k = 1; k < substeps; k++) {
                REAL *state = scratch + k * 2 * width;
                memcpy(state, state - 2 * width, sizeof(REAL) * 2 * width);
                substep(md, state, state + width, A, GF);
            }
        }
        gather(gx_next, GX, first, last, pw);
        gather(gv_next, GV, first, last, pw);
        memset(GA, 0, sizeof(REAL) * md->tets * LANES);
        for (int64_t k = substeps - 1; k >= 0; k--) {
            const REAL *state = states + k * 2 * width;
            substep_adjoint(md, state, state + width, A, GX, GV, GA, GF, SX, SV);
        }
        scatter(GX, gx_out, first, last, pw);
        scatter(GV, gv_out, first, last, pw);
        scatter(GA, gact_out, first, last, md->tets);
    }
}

/* Reals of workspace fem_forward / fem_backward need (the caller allocates it). */
int64_t fem_work_size(int64_t particles, int64_t tets) { return 6 * particles * 3 * LANES + 2 * tets * LANES; }

int64_t fem_lanes(void) { return LANES; }
