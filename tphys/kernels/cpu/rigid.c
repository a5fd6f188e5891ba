/* The rigid engine's substeps (tphys.rigid.integrator.substep) over a whole frame, forward and adjoint, per env.

   C twin of the torch substep (kinematics, DFlex's penalty ground contact, motors / passive springs and damping / joint-limit
   penalties, H(q)·qdd = τ - C(q, qd) by Cholesky, qd' = qd + h·qdd, q' = q ⊕ h·qd' with quaternions integrated by the
   exponential map and renormalized); ``tphys.kernels.rigid_kernels`` is its loader and the tests hold it to the torch
   functions in float64. The model is small (tens of links and dofs), so each env runs alone with the model's arrays in
   cache; every intermediate is double whatever REAL is (the torch path's float32 rounds each op, so float32 results agree
   to float32 accuracy, not bitwise); the state is rounded to REAL after every substep, as the torch path stores it.

   Tree algebra (world-frame Plücker vectors at the origin, tphys.math): link velocities v_l = v_parent + Σ_{d of l} S_d qd_d;
   bias accelerations a_l likewise with the rates v_l ×ₘ S_d; forces f_l = I_l (a_l - g) + v_l ×* I_l v_l - f_ext,l;
   C_d = S_d · Σ_{subtree of d's link} f; H[d, e] = S_dᵀ (Σ_{subtree of e's link} I) S_e for d on e's link or above
   (composite rigid bodies; the einsums over the ancestor mask of tphys.rigid.dynamics, summed in another order).

   backward: for each env, substeps in reverse, the substep's intermediates are recomputed from its saved input state and the
   vector-Jacobian product runs the stages backwards (integration, solve, joint forces, bias forces, contact, mass matrix,
   velocities, subspaces, kinematics). Where a torch op has a kink (clamp_min, minimum/maximum, where) the adjoint takes
   torch's side: clamp_min passes the gradient where x >= bound, minimum/maximum split it on ties, vector norms give 0 at 0.
*/
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif

enum { HINGE = 0, SLIDE = 1, BALL = 2, FREE = 3, FIXED = 4 };

typedef struct {
    int64_t links, dofs, nq, contacts, actuators, scalars, frees, balls, has_contact;
    /* links [L] */
    const int64_t *parent, *jtype, *jq;
    const double *jaxis, *janchor, *jref, *opos, *orot, *mass, *com, *inertia;
    const int64_t *ldof_start, *ldof; /* CSR: dofs of link l are ldof[ldof_start[l] .. ldof_start[l+1]) */
    /* dofs [D] */
    const int64_t *dlink;
    const double *daxis, *danchor, *drot, *dwf, *armature, *damping;
    /* scalar (hinge / slide) dofs [Ds] */
    const int64_t *sdof, *sq;
    const double *stiffness, *springref, *limited, *lower, *upper, *limit_ke, *limit_kd;
    /* quaternion joints: free [F] (q, dof of position then quaternion), ball [B] */
    const int64_t *free_q, *free_dof, *ball_q, *ball_dof;
    /* contacts [C], actuators [A] */
    const int64_t *clink;
    const double *cpos, *cradius;
    const int64_t *adof;
    const double *gear, *alower, *aupper;
    double gravity[3], ke, kd, kf, mu, h;
} Model;

/* ------------------------------------------------------------------ small algebra */
static inline void cross3(const double *a, const double *b, double *o) {
    double x = a[1] * b[2] - a[2] * b[1], y = a[2] * b[0] - a[0] * b[2], z = a[0] * b[1] - a[1] * b[0];
    o[0] = x; o[1] = y; o[2] = z;
}
static inline void cross3_add(const double *a, const double *b, double *o) {
    o[0] += a[1] * b[2] - a[2] * b[1]; o[1] += a[2] * b[0] - a[0] * b[2]; o[2] += a[0] * b[1] - a[1] * b[0];
}
static inline double dot3(const double *a, const double *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
static inline double dot6(const double *a, const double *b) { return dot3(a, b) + dot3(a + 3, b + 3); }
static inline void mat3_vec(const double *m, const double *v, double *o) {
    for (int i = 0; i < 3; ++i) o[i] = m[3 * i] * v[0] + m[3 * i + 1] * v[1] + m[3 * i + 2] * v[2];
}
static inline void mat3t_vec(const double *m, const double *v, double *o) { /* mᵀ v */
    for (int i = 0; i < 3; ++i) o[i] = m[i] * v[0] + m[3 + i] * v[1] + m[6 + i] * v[2];
}
static inline void mat3_mul(const double *a, const double *b, double *o) {
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) o[3 * i + j] = a[3 * i] * b[j] + a[3 * i + 1] * b[3 + j] + a[3 * i + 2] * b[6 + j];
}
static inline void mat3_mul_at_add(const double *a, const double *b, double *o) { /* o += aᵀ b */
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) o[3 * i + j] += a[i] * b[j] + a[3 + i] * b[3 + j] + a[6 + i] * b[6 + j];
}
static inline void mat3_mul_bt_add(const double *a, const double *b, double *o) { /* o += a bᵀ */
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) o[3 * i + j] += a[3 * i] * b[3 * j] + a[3 * i + 1] * b[3 * j + 1] + a[3 * i + 2] * b[3 * j + 2];
}
static inline void outer3_add(const double *a, const double *b, double *o) { /* o += a bᵀ */
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) o[3 * i + j] += a[i] * b[j];
}
static inline void mat6_vec(const double *m, const double *v, double *o) {
    for (int i = 0; i < 6; ++i) {
        double s = 0.0;
        for (int j = 0; j < 6; ++j) s += m[6 * i + j] * v[j];
        o[i] = s;
    }
}
static inline void mat6t_vec_add(const double *m, const double *v, double *o) { /* o += mᵀ v */
    for (int i = 0; i < 6; ++i) {
        double s = 0.0;
        for (int j = 0; j < 6; ++j) s += m[6 * j + i] * v[j];
        o[i] += s;
    }
}
static inline void outer6_add(double w, const double *a, const double *b, double *o) { /* o += w a bᵀ */
    for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) o[6 * i + j] += w * a[i] * b[j];
}
/* v ×ₘ m: (ω × a, ω × b + v_O × a) */
static inline void cross_motion(const double *v, const double *m, double *o) {
    cross3(v, m, o);
    cross3(v, m + 3, o + 3);
    cross3_add(v + 3, m, o + 3);
}
/* adjoint of o = v ×ₘ m: adds into gv, gm */
static inline void cross_motion_adj(const double *v, const double *m, const double *g, double *gv, double *gm) {
    if (gv) { cross3_add(m, g, gv); cross3_add(m + 3, g + 3, gv); cross3_add(m, g + 3, gv + 3); }
    if (gm) { cross3_add(g, v, gm); cross3_add(g + 3, v + 3, gm); cross3_add(g + 3, v, gm + 3); }
}
/* v ×* f: (ω × n + v_O × f_lin, ω × f_lin) */
static inline void cross_force(const double *v, const double *f, double *o) {
    cross3(v, f, o);
    cross3_add(v + 3, f + 3, o);
    cross3(v, f + 3, o + 3);
}
static inline void cross_force_adj(const double *v, const double *f, const double *g, double *gv, double *gf) {
    cross3_add(f, g, gv); cross3_add(f + 3, g + 3, gv); cross3_add(f + 3, g, gv + 3);
    cross3_add(g, v, gf); cross3_add(g, v + 3, gf + 3); cross3_add(g + 3, v, gf + 3);
}
static inline double norm_safe(const double *v, int n, double eps, double *raw) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += v[i] * v[i];
    *raw = sqrt(s);
    return *raw >= eps ? *raw : eps;
}

/* quaternion (w, x, y, z) -> rotation matrix, normalized first (tphys.math.quat_to_matrix) */
static void quat_matrix(const double *q4, double *r) {
    double raw, n = norm_safe(q4, 4, 1e-12, &raw);
    double w = q4[0] / n, x = q4[1] / n, y = q4[2] / n, z = q4[3] / n;
    r[0] = 1 - 2 * (y * y + z * z); r[1] = 2 * (x * y - w * z); r[2] = 2 * (x * z + w * y);
    r[3] = 2 * (x * y + w * z); r[4] = 1 - 2 * (x * x + z * z); r[5] = 2 * (y * z - w * x);
    r[6] = 2 * (x * z - w * y); r[7] = 2 * (y * z + w * x); r[8] = 1 - 2 * (x * x + y * y);
}
/* adjoint of quat_matrix: adds dL/dq4 for dL/dR = g */
static void quat_matrix_adj(const double *q4, const double *g, double *gq) {
    double raw, n = norm_safe(q4, 4, 1e-12, &raw);
    double w = q4[0] / n, x = q4[1] / n, y = q4[2] / n, z = q4[3] / n;
    double gn[4];
    gn[0] = 2 * (-z * g[1] + y * g[2] + z * g[3] - x * g[5] - y * g[6] + x * g[7]);
    gn[1] = 2 * (y * g[1] + z * g[2] + y * g[3] - 2 * x * g[4] - w * g[5] + z * g[6] + w * g[7] - 2 * x * g[8]);
    gn[2] = 2 * (-2 * y * g[0] + x * g[1] + w * g[2] + x * g[3] + z * g[5] - w * g[6] + z * g[7] - 2 * y * g[8]);
    gn[3] = 2 * (-2 * z * g[0] - w * g[1] + x * g[2] + w * g[3] - 2 * z * g[4] + y * g[5] + x * g[6] + y * g[7]);
    double qn[4] = {w, x, y, z};
    double d = raw >= 1e-12 ? qn[0] * gn[0] + qn[1] * gn[1] + qn[2] * gn[2] + qn[3] * gn[3] : 0.0;
    for (int i = 0; i < 4; ++i) gq[i] += (gn[i] - qn[i] * d) / n;
}
static inline void quat_mul(const double *a, const double *b, double *o) {
    o[0] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
    o[1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
    o[2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
    o[3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
}
/* q ⊗ exp(ω h / 2), renormalized (tphys.math.quat_integrate) */
static void quat_integrate(const double *q, const double *omega, double h, double *out) {
    double half[3] = {omega[0] * (0.5 * h), omega[1] * (0.5 * h), omega[2] * (0.5 * h)}, raw;
    double theta = norm_safe(half, 3, 1e-12, &raw);
    double sinc = theta > 1e-8 ? sin(theta) / theta : 1 - theta * theta / 6;
    double delta[4] = {cos(theta), sinc * half[0], sinc * half[1], sinc * half[2]}, o[4];
    quat_mul(q, delta, o);
    double n = norm_safe(o, 4, 1e-12, &raw);
    for (int i = 0; i < 4; ++i) out[i] = o[i] / n;
}
/* adjoint of quat_integrate: adds into gq [4] and gomega [3] for dL/dout = g */
static void quat_integrate_adj(const double *q, const double *omega, double h, const double *g, double *gq, double *gomega) {
    double half[3] = {omega[0] * (0.5 * h), omega[1] * (0.5 * h), omega[2] * (0.5 * h)}, hraw, oraw;
    double theta = norm_safe(half, 3, 1e-12, &hraw);
    double st = sin(theta), ct = cos(theta);
    double sinc = theta > 1e-8 ? st / theta : 1 - theta * theta / 6;
    double dsinc = theta > 1e-8 ? ct / theta - st / (theta * theta) : -theta / 3;
    double delta[4] = {ct, sinc * half[0], sinc * half[1], sinc * half[2]}, o[4];
    quat_mul(q, delta, o);
    double n = norm_safe(o, 4, 1e-12, &oraw);
    double out[4] = {o[0] / n, o[1] / n, o[2] / n, o[3] / n};
    double d = oraw >= 1e-12 ? out[0] * g[0] + out[1] * g[1] + out[2] * g[2] + out[3] * g[3] : 0.0;
    double go[4], gd[4], t[4];
    for (int i = 0; i < 4; ++i) go[i] = (g[i] - out[i] * d) / n;
    double dconj[4] = {delta[0], -delta[1], -delta[2], -delta[3]}, qconj[4] = {q[0], -q[1], -q[2], -q[3]};
    quat_mul(go, dconj, t);
    for (int i = 0; i < 4; ++i) gq[i] += t[i];
    quat_mul(qconj, go, gd);
    double gtheta = -st * gd[0] + dsinc * (gd[1] * half[0] + gd[2] * half[1] + gd[3] * half[2]);
    for (int i = 0; i < 3; ++i) {
        double gh = sinc * gd[1 + i];
        if (hraw >= 1e-12) gh += gtheta * half[i] / hraw;
        gomega[i] += (0.5 * h) * gh;
    }
}

/* ------------------------------------------------------------------ per-env workspace */
typedef struct {
    double *rj, *pj, *rot, *pos, *R, *P, *comw, *iw, *M, *v, *a, *f, *ext, *Ic, *Fc; /* per link */
    double *S, *rates;                                                                 /* per dof [D, 6] */
    double *H, *Lf, *tau, *qdd, *qd1, *y;                                              /* [D, D], [D] */
    /* adjoint */
    double *gR, *gP, *gM, *gv, *ga, *gf, *gext, *gIc, *gFc, *gS, *grates, *gqd1, *u, *Hbar;
} Work;

static size_t work_doubles(int64_t L, int64_t D) {
    return (size_t)L * (9 + 3 + 9 + 3 + 9 + 3 + 3 + 9 + 36 + 6 + 6 + 6 + 6 + 36 + 6) + (size_t)D * 12 + (size_t)D * D * 2 + D * 4 +
           (size_t)L * (9 + 3 + 36 + 6 + 6 + 6 + 6 + 36 + 6) + (size_t)D * 12 + D * 2 + (size_t)D * D;
}

static void work_init(Work *w, double *p, int64_t L, int64_t D) {
#define TAKE(field, count) do { w->field = p; p += (count); } while (0)
    TAKE(rj, 9 * L); TAKE(pj, 3 * L); TAKE(rot, 9 * L); TAKE(pos, 3 * L); TAKE(R, 9 * L); TAKE(P, 3 * L); TAKE(comw, 3 * L);
    TAKE(iw, 9 * L); TAKE(M, 36 * L); TAKE(v, 6 * L); TAKE(a, 6 * L); TAKE(f, 6 * L); TAKE(ext, 6 * L); TAKE(Ic, 36 * L);
    TAKE(Fc, 6 * L); TAKE(S, 6 * D); TAKE(rates, 6 * D); TAKE(H, D * D); TAKE(Lf, D * D); TAKE(tau, D); TAKE(qdd, D);
    TAKE(qd1, D); TAKE(y, D);
    TAKE(gR, 9 * L); TAKE(gP, 3 * L); TAKE(gM, 36 * L); TAKE(gv, 6 * L); TAKE(ga, 6 * L); TAKE(gf, 6 * L); TAKE(gext, 6 * L);
    TAKE(gIc, 36 * L); TAKE(gFc, 6 * L); TAKE(gS, 6 * D); TAKE(grates, 6 * D); TAKE(gqd1, D); TAKE(u, D); TAKE(Hbar, D * D);
#undef TAKE
}

/* ------------------------------------------------------------------ forward stages */
static void hinge_matrix(const double *axis, double angle, double *r) {
    double k[9] = {0, -axis[2], axis[1], axis[2], 0, -axis[0], -axis[1], axis[0], 0}, kk[9];
    mat3_mul(k, k, kk);
    double s = sin(angle), c = cos(angle);
    for (int i = 0; i < 9; ++i) r[i] = (i % 4 == 0 ? 1.0 : 0.0) + s * k[i] + (1 - c) * kk[i];
}

static void kinematics(const Model *m, Work *w, const double *q, const double *qd) {
    const int64_t L = m->links;
    for (int64_t l = 0; l < L; ++l) {
        double *rj = w->rj + 9 * l, *pj = w->pj + 3 * l, t[3];
        const double *axis = m->jaxis + 3 * l, *anchor = m->janchor + 3 * l;
        switch (m->jtype[l]) {
        case HINGE:
            hinge_matrix(axis, q[m->jq[l]] - m->jref[l], rj);
            mat3_vec(rj, anchor, t);
            for (int i = 0; i < 3; ++i) pj[i] = anchor[i] - t[i];
            break;
        case BALL:
            quat_matrix(q + m->jq[l], rj);
            mat3_vec(rj, anchor, t);
            for (int i = 0; i < 3; ++i) pj[i] = anchor[i] - t[i];
            break;
        case FREE:
            quat_matrix(q + m->jq[l] + 3, rj);
            for (int i = 0; i < 3; ++i) pj[i] = q[m->jq[l] + i];
            break;
        default: /* slide, fixed */
            for (int i = 0; i < 9; ++i) rj[i] = (i % 4 == 0) ? 1.0 : 0.0;
            for (int i = 0; i < 3; ++i) pj[i] = m->jtype[l] == SLIDE ? axis[i] * (q[m->jq[l]] - m->jref[l]) : 0.0;
        }
        const double *orot = m->orot + 9 * l;
        mat3_mul(orot, rj, w->rot + 9 * l);
        mat3_vec(orot, pj, t);
        for (int i = 0; i < 3; ++i) w->pos[3 * l + i] = m->opos[3 * l + i] + t[i];
        int64_t p = m->parent[l];
        if (p < 0) {
            memcpy(w->R + 9 * l, w->rot + 9 * l, 9 * sizeof(double));
            memcpy(w->P + 3 * l, w->pos + 3 * l, 3 * sizeof(double));
        } else {
            mat3_mul(w->R + 9 * p, w->rot + 9 * l, w->R + 9 * l);
            mat3_vec(w->R + 9 * p, w->pos + 3 * l, t);
            for (int i = 0; i < 3; ++i) w->P[3 * l + i] = w->P[3 * p + i] + t[i];
        }
        /* world inertia at the origin */
        const double *R = w->R + 9 * l, mass = m->mass[l];
        double *c = w->comw + 3 * l, *iw = w->iw + 9 * l, *M = w->M + 36 * l, tmp[9];
        mat3_vec(R, m->com + 3 * l, t);
        for (int i = 0; i < 3; ++i) c[i] = w->P[3 * l + i] + t[i];
        mat3_mul(R, m->inertia + 9 * l, tmp);
        memset(iw, 0, 9 * sizeof(double));
        mat3_mul_bt_add(tmp, R, iw);
        double k[9] = {0, -c[2], c[1], c[2], 0, -c[0], -c[1], c[0], 0}, kkt[9] = {0};
        mat3_mul_bt_add(k, k, kkt);
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                M[6 * i + j] = iw[3 * i + j] + mass * kkt[3 * i + j];
                M[6 * i + 3 + j] = mass * k[3 * i + j];
                M[6 * (3 + i) + j] = mass * k[3 * j + i];
                M[6 * (3 + i) + 3 + j] = i == j ? mass : 0.0;
            }
    }
    /* motion subspaces, velocities, bias accelerations (links in tree order) */
    for (int64_t l = 0; l < L; ++l) {
        const double *R = w->R + 9 * l, *P = w->P + 3 * l;
        int64_t p = m->parent[l];
        double *v = w->v + 6 * l, *a = w->a + 6 * l;
        for (int i = 0; i < 6; ++i) { v[i] = p < 0 ? 0.0 : w->v[6 * p + i]; a[i] = p < 0 ? 0.0 : w->a[6 * p + i]; }
        for (int64_t k = m->ldof_start[l]; k < m->ldof_start[l + 1]; ++k) {
            int64_t d = m->ldof[k];
            double *S = w->S + 6 * d, axis[3], anchor[3];
            if (m->dwf[d] > 0) memcpy(axis, m->daxis + 3 * d, sizeof axis);
            else mat3_vec(R, m->daxis + 3 * d, axis);
            mat3_vec(R, m->danchor + 3 * d, anchor);
            for (int i = 0; i < 3; ++i) anchor[i] += P[i];
            if (m->drot[d] > 0) {
                memcpy(S, axis, sizeof axis);
                cross3(anchor, axis, S + 3);
            } else {
                S[0] = S[1] = S[2] = 0.0;
                memcpy(S + 3, axis, sizeof axis);
            }
            for (int i = 0; i < 6; ++i) v[i] += S[i] * qd[d];
        }
    }
    for (int64_t l = 0; l < L; ++l) {
        double *a = w->a + 6 * l;
        int64_t p = m->parent[l];
        for (int i = 0; i < 6; ++i) a[i] = p < 0 ? 0.0 : w->a[6 * p + i];
        for (int64_t k = m->ldof_start[l]; k < m->ldof_start[l + 1]; ++k) {
            int64_t d = m->ldof[k];
            double *rt = w->rates + 6 * d;
            if (m->dwf[d] > 0) memset(rt, 0, 6 * sizeof(double));
            else cross_motion(w->v + 6 * l, w->S + 6 * d, rt);
            for (int i = 0; i < 6; ++i) a[i] += rt[i] * qd[d];
        }
    }
}

/* one contact point's force: fills point [3], force [3] and the quantities its adjoint needs */
typedef struct {
    double point[3], force[3], vel[3], pen, nd, speed_raw, speed, A, B, mn, coef;
    int pen_on, nd_on;
} Contact;

static void contact_point(const Model *m, const Work *w, int64_t c, Contact *k) {
    int64_t l = m->clink[c];
    const double *R = w->R + 9 * l, *P = w->P + 3 * l, *v = w->v + 6 * l;
    double centre[3], r = m->cradius[c];
    mat3_vec(R, m->cpos + 3 * c, centre);
    for (int i = 0; i < 3; ++i) centre[i] += P[i];
    k->point[0] = centre[0]; k->point[1] = centre[1]; k->point[2] = centre[2] - r;
    double negdepth = -(centre[2] - r);
    k->pen_on = negdepth >= 0.0;
    k->pen = k->pen_on ? negdepth : 0.0;
    cross3(v, k->point, k->vel);
    for (int i = 0; i < 3; ++i) k->vel[i] += v[3 + i];
    double vt[2] = {k->vel[0], k->vel[1]};
    k->nd_on = -k->vel[2] >= 0.0;
    k->nd = k->nd_on ? -k->vel[2] : 0.0;
    double normal = k->pen * (m->ke + m->kd * k->nd);
    k->speed_raw = sqrt(vt[0] * vt[0] + vt[1] * vt[1]);
    k->speed = k->speed_raw >= 1e-12 ? k->speed_raw : 1e-12;
    k->A = m->kf * k->speed;
    k->B = m->mu * m->ke * k->pen;
    k->mn = k->A < k->B ? k->A : k->B;
    k->coef = k->mn / k->speed;
    k->force[0] = -vt[0] * k->coef;
    k->force[1] = -vt[1] * k->coef;
    k->force[2] = normal;
}

static void contact_forces(const Model *m, Work *w) {
    memset(w->ext, 0, 6 * m->links * sizeof(double));
    if (!m->has_contact) return;
    for (int64_t c = 0; c < m->contacts; ++c) {
        Contact k;
        contact_point(m, w, c, &k);
        double *e = w->ext + 6 * m->clink[c];
        cross3_add(k.point, k.force, e);
        for (int i = 0; i < 3; ++i) e[3 + i] += k.force[i];
    }
}

static void joint_forces(const Model *m, Work *w, const double *q, const double *qd, const double *u) {
    for (int64_t d = 0; d < m->dofs; ++d) w->tau[d] = -m->damping[d] * qd[d];
    for (int64_t a = 0; a < m->actuators; ++a) {
        double c = u[a] < m->aupper[a] ? u[a] : m->aupper[a];
        c = c > m->alower[a] ? c : m->alower[a];
        w->tau[m->adof[a]] += m->gear[a] * c;
    }
    for (int64_t s = 0; s < m->scalars; ++s) {
        int64_t d = m->sdof[s];
        double pos = q[m->sq[s]], vel = qd[d];
        double below = m->lower[s] - pos, above = pos - m->upper[s];
        below = below >= 0 ? below : 0.0;
        above = above >= 0 ? above : 0.0;
        double outside = (below > 0 || above > 0) ? 1.0 : 0.0;
        w->tau[d] += -m->stiffness[s] * (pos - m->springref[s]);
        w->tau[d] += m->limited[s] * (m->limit_ke[s] * (below - above) - m->limit_kd[s] * vel * outside);
    }
}

/* H and C (composite bodies), rhs = τ - C, Cholesky (NaN accelerations when H is not positive definite) */
static void dynamics(const Model *m, Work *w) {
    const int64_t L = m->links, D = m->dofs;
    double g6[6] = {0, 0, 0, m->gravity[0], m->gravity[1], m->gravity[2]};
    memset(w->H, 0, D * D * sizeof(double));
    for (int64_t l = 0; l < L; ++l) {
        const double *M = w->M + 36 * l, *v = w->v + 6 * l, *a = w->a + 6 * l;
        double t[6], p[6], x[6];
        for (int i = 0; i < 6; ++i) t[i] = a[i] - g6[i];
        mat6_vec(M, t, w->f + 6 * l);
        mat6_vec(M, v, p);
        cross_force(v, p, x);
        for (int i = 0; i < 6; ++i) w->f[6 * l + i] += x[i] - w->ext[6 * l + i];
    }
    memcpy(w->Ic, w->M, 36 * L * sizeof(double));
    memcpy(w->Fc, w->f, 6 * L * sizeof(double));
    for (int64_t l = L - 1; l >= 0; --l) {
        int64_t p = m->parent[l];
        if (p < 0) continue;
        for (int i = 0; i < 36; ++i) w->Ic[36 * p + i] += w->Ic[36 * l + i];
        for (int i = 0; i < 6; ++i) w->Fc[6 * p + i] += w->Fc[6 * l + i];
    }
    for (int64_t d = 0; d < D; ++d) w->y[d] = w->tau[d] - dot6(w->S + 6 * d, w->Fc + 6 * m->dlink[d]);
    for (int64_t e = 0; e < D; ++e) {
        int64_t j = m->dlink[e];
        double F[6];
        mat6_vec(w->Ic + 36 * j, w->S + 6 * e, F);
        for (int64_t k = j, first = 1; k >= 0; k = m->parent[k], first = 0)
            for (int64_t s = m->ldof_start[k]; s < m->ldof_start[k + 1]; ++s) {
                int64_t d = m->ldof[s];
                if (first && s > m->ldof_start[k] && m->ldof[s - 1] == e) break; /* same link: pairs up to e once */
                double val = dot6(w->S + 6 * d, F);
                w->H[e * D + d] = val;
                w->H[d * D + e] = val;
                if (first && d == e) break;
            }
    }
    for (int64_t d = 0; d < D; ++d) w->H[d * D + d] += m->armature[d];
    /* Cholesky as linalg.c (lower triangle) */
    double *lf = w->Lf;
    for (int64_t j = 0; j < D; ++j) {
        double pivot = w->H[j * D + j];
        for (int64_t k = 0; k < j; ++k) pivot -= lf[j * D + k] * lf[j * D + k];
        if (!(pivot > 0.0) || !isfinite(pivot)) {
            for (int64_t i = 0; i < D; ++i) w->qdd[i] = NAN;
            lf[0] = NAN;
            return;
        }
        double diag = sqrt(pivot);
        lf[j * D + j] = diag;
        for (int64_t i = j + 1; i < D; ++i) {
            double s = w->H[i * D + j];
            for (int64_t k = 0; k < j; ++k) s -= lf[i * D + k] * lf[j * D + k];
            lf[i * D + j] = s / diag;
        }
    }
    for (int64_t i = 0; i < D; ++i) w->qdd[i] = w->y[i];
}

/* x = H⁻¹ x in place with the factor in w->Lf (NaN if the factor failed) */
static void chol_solve(const Work *w, int64_t D, double *x) {
    const double *lf = w->Lf;
    if (!isfinite(lf[0])) {
        for (int64_t i = 0; i < D; ++i) x[i] = NAN;
        return;
    }
    for (int64_t i = 0; i < D; ++i) {
        double s = x[i];
        for (int64_t k = 0; k < i; ++k) s -= lf[i * D + k] * x[k];
        x[i] = s / lf[i * D + i];
    }
    for (int64_t i = D - 1; i >= 0; --i) {
        double s = x[i];
        for (int64_t k = i + 1; k < D; ++k) s -= lf[k * D + i] * x[k];
        x[i] = s / lf[i * D + i];
    }
}

/* the whole substep: q1, qd1 from q, qd, u (intermediates left in w) */
static void substep(const Model *m, Work *w, const double *q, const double *qd, const double *u, double *q1, double *qd1) {
    const double h = m->h;
    kinematics(m, w, q, qd);
    contact_forces(m, w);
    joint_forces(m, w, q, qd, u);
    dynamics(m, w);
    chol_solve(w, m->dofs, w->qdd);
    for (int64_t d = 0; d < m->dofs; ++d) qd1[d] = qd[d] + h * w->qdd[d];
    memcpy(q1, q, m->nq * sizeof(double));
    for (int64_t s = 0; s < m->scalars; ++s) q1[m->sq[s]] = q[m->sq[s]] + h * qd1[m->sdof[s]];
    for (int64_t f = 0; f < m->frees; ++f) {
        int64_t iq = m->free_q[f], id = m->free_dof[f];
        for (int i = 0; i < 3; ++i) q1[iq + i] = q[iq + i] + h * qd1[id + i];
        quat_integrate(q + iq + 3, qd1 + id + 3, h, q1 + iq + 3);
    }
    for (int64_t b = 0; b < m->balls; ++b) quat_integrate(q + m->ball_q[b], qd1 + m->ball_dof[b], h, q1 + m->ball_q[b]);
}

/* ------------------------------------------------------------------ adjoint of one substep */
/* inputs q, qd, u; gq1, gqd1 = dL/d(q1, qd1); outputs (overwritten) gq, gqd; gu accumulated. w holds the forward of (q, qd, u). */
static void substep_adjoint(const Model *m, Work *w, const double *q, const double *qd, const double *u, const double *gq1,
                            const double *gqd1, double *gq, double *gqd, double *gu) {
    const int64_t L = m->links, D = m->dofs;
    const double h = m->h;
    double *qd1 = w->qd1, *g1 = w->gqd1;
    for (int64_t d = 0; d < D; ++d) qd1[d] = qd[d] + h * w->qdd[d];
    /* integration */
    memcpy(gq, gq1, m->nq * sizeof(double));
    memcpy(g1, gqd1, D * sizeof(double));
    for (int64_t s = 0; s < m->scalars; ++s) g1[m->sdof[s]] += h * gq1[m->sq[s]];
    for (int64_t f = 0; f < m->frees; ++f) {
        int64_t iq = m->free_q[f], id = m->free_dof[f];
        for (int i = 0; i < 3; ++i) g1[id + i] += h * gq1[iq + i];
        for (int i = 0; i < 4; ++i) gq[iq + 3 + i] = 0.0;
        quat_integrate_adj(q + iq + 3, qd1 + id + 3, h, gq1 + iq + 3, gq + iq + 3, g1 + id + 3);
    }
    for (int64_t b = 0; b < m->balls; ++b) {
        int64_t iq = m->ball_q[b], id = m->ball_dof[b];
        for (int i = 0; i < 4; ++i) gq[iq + i] = 0.0;
        quat_integrate_adj(q + iq, qd1 + id, h, gq1 + iq, gq + iq, g1 + id);
    }
    /* qd1 = qd + h qdd; qdd = H⁻¹ (τ - C) */
    double *uu = w->u;
    for (int64_t d = 0; d < D; ++d) { gqd[d] = g1[d]; uu[d] = h * g1[d]; }
    chol_solve(w, D, uu);
    for (int64_t d = 0; d < D; ++d)
        for (int64_t e = 0; e < D; ++e) w->Hbar[d * D + e] = -0.5 * (uu[d] * w->qdd[e] + w->qdd[d] * uu[e]);
    /* τ: motors, damping, springs, limits (g_τ = u) */
    for (int64_t d = 0; d < D; ++d) gqd[d] += -m->damping[d] * uu[d];
    for (int64_t a = 0; a < m->actuators; ++a) {
        double g = m->gear[a] * uu[m->adof[a]], lo = m->alower[a], hi = m->aupper[a], x = u[a];
        double c = x < hi ? x : hi;
        double gc = c > lo ? g : (c == lo ? 0.5 * g : 0.0);       /* maximum(c, lower) */
        gu[a] += x < hi ? gc : (x == hi ? 0.5 * gc : 0.0);        /* minimum(u, upper) */
    }
    for (int64_t s = 0; s < m->scalars; ++s) {
        int64_t d = m->sdof[s], iq = m->sq[s];
        double g = uu[d], pos = q[iq];
        double below = m->lower[s] - pos, above = pos - m->upper[s];
        double outside = ((below >= 0 ? below : 0.0) > 0 || (above >= 0 ? above : 0.0) > 0) ? 1.0 : 0.0;
        gq[iq] += -m->stiffness[s] * g;
        double gb = m->limited[s] * m->limit_ke[s] * g;
        if (below >= 0) gq[iq] -= gb;
        if (above >= 0) gq[iq] -= gb;
        gqd[d] += -m->limited[s] * m->limit_kd[s] * outside * g;
    }
    /* C_d = S_d · Fc_link(d), g_C = -u */
    memset(w->gS, 0, 6 * D * sizeof(double));
    memset(w->gFc, 0, 6 * L * sizeof(double));
    for (int64_t d = 0; d < D; ++d) {
        int64_t l = m->dlink[d];
        for (int i = 0; i < 6; ++i) {
            w->gS[6 * d + i] -= uu[d] * w->Fc[6 * l + i];
            w->gFc[6 * l + i] -= uu[d] * w->S[6 * d + i];
        }
    }
    for (int64_t l = 0; l < L; ++l) { /* f_l feeds every composite above it */
        int64_t p = m->parent[l];
        for (int i = 0; i < 6; ++i) w->gf[6 * l + i] = w->gFc[6 * l + i] + (p < 0 ? 0.0 : w->gf[6 * p + i]);
    }
    /* f = M (a - g) + v ×* (M v) - ext */
    double g6[6] = {0, 0, 0, m->gravity[0], m->gravity[1], m->gravity[2]};
    memset(w->gM, 0, 36 * L * sizeof(double));
    memset(w->gv, 0, 6 * L * sizeof(double));
    memset(w->ga, 0, 6 * L * sizeof(double));
    for (int64_t l = 0; l < L; ++l) {
        const double *M = w->M + 36 * l, *v = w->v + 6 * l, *a = w->a + 6 * l, *gf = w->gf + 6 * l;
        double t[6], p[6], gp[6] = {0};
        for (int i = 0; i < 6; ++i) { t[i] = a[i] - g6[i]; w->gext[6 * l + i] = -gf[i]; }
        outer6_add(1.0, gf, t, w->gM + 36 * l);
        mat6t_vec_add(M, gf, w->ga + 6 * l);
        mat6_vec(M, v, p);
        cross_force_adj(v, p, gf, w->gv + 6 * l, gp);
        outer6_add(1.0, gp, v, w->gM + 36 * l);
        mat6t_vec_add(M, gp, w->gv + 6 * l);
    }
    /* a_l = a_parent + Σ rates_d qd_d: subtree sums of g_a */
    for (int64_t l = L - 1; l >= 0; --l) {
        int64_t p = m->parent[l];
        if (p >= 0)
            for (int i = 0; i < 6; ++i) w->ga[6 * p + i] += w->ga[6 * l + i];
    }
    for (int64_t d = 0; d < D; ++d) {
        int64_t l = m->dlink[d];
        if (m->dwf[d] > 0) continue;
        const double *ga = w->ga + 6 * l;
        gqd[d] += dot6(ga, w->rates + 6 * d);
        double gr[6];
        for (int i = 0; i < 6; ++i) gr[i] = ga[i] * qd[d];
        cross_motion_adj(w->v + 6 * l, w->S + 6 * d, gr, w->gv + 6 * l, w->gS + 6 * d);
    }
    /* contact */
    memset(w->gR, 0, 9 * L * sizeof(double));
    memset(w->gP, 0, 3 * L * sizeof(double));
    if (m->has_contact)
        for (int64_t c = 0; c < m->contacts; ++c) {
            Contact k;
            contact_point(m, w, c, &k);
            int64_t l = m->clink[c];
            const double *ge = w->gext + 6 * l, *v = w->v + 6 * l;
            double gpoint[3] = {0}, gforce[3] = {ge[3], ge[4], ge[5]};
            cross3_add(k.force, ge, gpoint); /* torque = point × force */
            cross3_add(ge, k.point, gforce);
            double vt[2] = {k.vel[0], k.vel[1]}, gvel[3];
            double gcoef = -(vt[0] * gforce[0] + vt[1] * gforce[1]);
            gvel[0] = -k.coef * gforce[0];
            gvel[1] = -k.coef * gforce[1];
            double gmn = gcoef / k.speed, gspeed = -gcoef * k.mn / (k.speed * k.speed);
            double gA = k.A < k.B ? gmn : (k.A == k.B ? 0.5 * gmn : 0.0), gB = k.B < k.A ? gmn : (k.A == k.B ? 0.5 * gmn : 0.0);
            gspeed += m->kf * gA;
            double gpen = m->mu * m->ke * gB;
            if (k.speed_raw >= 1e-12 && k.speed_raw > 0) {
                gvel[0] += gspeed * vt[0] / k.speed_raw;
                gvel[1] += gspeed * vt[1] / k.speed_raw;
            }
            double gnormal = gforce[2];
            gpen += gnormal * (m->ke + m->kd * k.nd);
            double gnd = gnormal * k.pen * m->kd;
            gvel[2] = k.nd_on ? -gnd : 0.0;
            /* vel = v_O + ω × point */
            for (int i = 0; i < 3; ++i) w->gv[6 * l + 3 + i] += gvel[i];
            cross3_add(k.point, gvel, w->gv + 6 * l);
            cross3_add(gvel, v, gpoint);
            if (k.pen_on) gpoint[2] -= gpen; /* pen = clamp(-(centre_z - r)) */
            for (int i = 0; i < 3; ++i) w->gP[3 * l + i] += gpoint[i];
            outer3_add(gpoint, m->cpos + 3 * c, w->gR + 9 * l);
        }
    /* H[d, e] = S_d · Ic_link(e) S_e (pairs as in dynamics; symmetric Hbar: an off-diagonal pair weighs both entries) */
    memset(w->gIc, 0, 36 * L * sizeof(double));
    for (int64_t e = 0; e < D; ++e) {
        int64_t j = m->dlink[e];
        const double *Ic = w->Ic + 36 * j, *Se = w->S + 6 * e;
        double F[6];
        mat6_vec(Ic, Se, F);
        for (int64_t k = j, first = 1; k >= 0; k = m->parent[k], first = 0)
            for (int64_t s = m->ldof_start[k]; s < m->ldof_start[k + 1]; ++s) {
                int64_t d = m->ldof[s];
                double wgt = d == e ? w->Hbar[e * D + e] : w->Hbar[e * D + d] + w->Hbar[d * D + e];
                const double *Sd = w->S + 6 * d;
                for (int i = 0; i < 6; ++i) w->gS[6 * d + i] += wgt * F[i];
                double G[6] = {0};
                mat6t_vec_add(Ic, Sd, G);
                for (int i = 0; i < 6; ++i) w->gS[6 * e + i] += wgt * G[i];
                outer6_add(wgt, Sd, Se, w->gIc + 36 * j);
                if (first && d == e) break;
            }
    }
    for (int64_t l = 0; l < L; ++l) { /* M_l feeds the composite of every link from it up to the root */
        int64_t p = m->parent[l];
        if (p >= 0)
            for (int i = 0; i < 36; ++i) w->gIc[36 * l + i] += w->gIc[36 * p + i];
        for (int i = 0; i < 36; ++i) w->gM[36 * l + i] += w->gIc[36 * l + i];
    }
    /* M from (com_w, I_w) -> gR, gP */
    for (int64_t l = 0; l < L; ++l) {
        const double *G = w->gM + 36 * l, *c = w->comw + 3 * l, *R = w->R + 9 * l, *I = m->inertia + 9 * l, mass = m->mass[l];
        double giw[9], gc[3], gtr[9], gbl[9], tmp[9];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                giw[3 * i + j] = G[6 * i + j];
                gtr[3 * i + j] = G[6 * i + 3 + j];
                gbl[3 * i + j] = G[6 * (3 + i) + j];
            }
        double tr = giw[0] + giw[4] + giw[8]; /* top left: I_w + m (|c|² 1 - c cᵀ) */
        for (int i = 0; i < 3; ++i) {
            double s = 0.0;
            for (int j = 0; j < 3; ++j) s += (giw[3 * i + j] + giw[3 * j + i]) * c[j];
            gc[i] = mass * (2 * tr * c[i] - s);
        }
        gc[0] += mass * ((gtr[7] - gtr[5]) - (gbl[7] - gbl[5])); /* m skew(c) top right, m skew(c)ᵀ bottom left */
        gc[1] += mass * ((gtr[2] - gtr[6]) - (gbl[2] - gbl[6]));
        gc[2] += mass * ((gtr[3] - gtr[1]) - (gbl[3] - gbl[1]));
        for (int i = 0; i < 3; ++i) w->gP[3 * l + i] += gc[i]; /* c = P + R com */
        outer3_add(gc, m->com + 3 * l, w->gR + 9 * l);
        double rit[9] = {0}, ri[9]; /* I_w = R I Rᵀ: g_R += G R Iᵀ + Gᵀ R I */
        mat3_mul_bt_add(R, I, rit);
        mat3_mul(R, I, ri);
        mat3_mul(giw, rit, tmp);
        for (int i = 0; i < 9; ++i) w->gR[9 * l + i] += tmp[i];
        mat3_mul_at_add(giw, ri, w->gR + 9 * l);
    }
    /* v_l = v_parent + Σ S_d qd_d: subtree sums of g_v */
    for (int64_t l = L - 1; l >= 0; --l) {
        int64_t p = m->parent[l];
        if (p >= 0)
            for (int i = 0; i < 6; ++i) w->gv[6 * p + i] += w->gv[6 * l + i];
    }
    for (int64_t d = 0; d < D; ++d) {
        const double *gv = w->gv + 6 * m->dlink[d];
        gqd[d] += dot6(gv, w->S + 6 * d);
        for (int i = 0; i < 6; ++i) w->gS[6 * d + i] += gv[i] * qd[d];
    }
    /* subspaces -> gR, gP */
    for (int64_t d = 0; d < D; ++d) {
        int64_t l = m->dlink[d];
        const double *R = w->R + 9 * l, *P = w->P + 3 * l, *gS = w->gS + 6 * d;
        double axis[3], anchor[3], gaxis[3] = {0}, ganchor[3] = {0};
        if (m->dwf[d] > 0) memcpy(axis, m->daxis + 3 * d, sizeof axis);
        else mat3_vec(R, m->daxis + 3 * d, axis);
        mat3_vec(R, m->danchor + 3 * d, anchor);
        for (int i = 0; i < 3; ++i) anchor[i] += P[i];
        if (m->drot[d] > 0) {
            for (int i = 0; i < 3; ++i) gaxis[i] = gS[i];
            cross3_add(axis, gS + 3, ganchor); /* S_lin = anchor × axis */
            cross3_add(gS + 3, anchor, gaxis);
        } else {
            for (int i = 0; i < 3; ++i) gaxis[i] = gS[3 + i];
        }
        if (!(m->dwf[d] > 0)) outer3_add(gaxis, m->daxis + 3 * d, w->gR + 9 * l);
        for (int i = 0; i < 3; ++i) w->gP[3 * l + i] += ganchor[i];
        outer3_add(ganchor, m->danchor + 3 * d, w->gR + 9 * l);
    }
    /* world frames, leaves first (R_l = R_p rot_l, P_l = P_p + R_p pos_l), then the joints */
    for (int64_t l = L - 1; l >= 0; --l) {
        int64_t p = m->parent[l];
        double grot[9] = {0}, gpos[3];
        const double *gR = w->gR + 9 * l, *gP = w->gP + 3 * l;
        if (p < 0) {
            memcpy(grot, gR, sizeof grot);
            memcpy(gpos, gP, sizeof gpos);
        } else {
            const double *Rp = w->R + 9 * p;
            mat3_mul_at_add(Rp, gR, grot);
            mat3t_vec(Rp, gP, gpos);
            mat3_mul_bt_add(gR, w->rot + 9 * l, w->gR + 9 * p);
            outer3_add(gP, w->pos + 3 * l, w->gR + 9 * p);
            for (int i = 0; i < 3; ++i) w->gP[3 * p + i] += gP[i];
        }
        const double *orot = m->orot + 9 * l, *axis = m->jaxis + 3 * l, *anchor = m->janchor + 3 * l;
        double grj[9] = {0}, gpj[3];
        mat3_mul_at_add(orot, grot, grj); /* rot = O rj, pos = o + O pj */
        mat3t_vec(orot, gpos, gpj);
        int64_t iq = m->jq[l];
        switch (m->jtype[l]) {
        case HINGE: {
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) grj[3 * i + j] -= gpj[i] * anchor[j]; /* pj = anchor - rj anchor */
            double k[9] = {0, -axis[2], axis[1], axis[2], 0, -axis[0], -axis[1], axis[0], 0}, kk[9];
            mat3_mul(k, k, kk);
            double angle = q[iq] - m->jref[l], s = sin(angle), c = cos(angle), g = 0.0;
            for (int i = 0; i < 9; ++i) g += grj[i] * (c * k[i] + s * kk[i]);
            gq[iq] += g;
            break;
        }
        case SLIDE:
            gq[iq] += dot3(axis, gpj);
            break;
        case BALL:
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) grj[3 * i + j] -= gpj[i] * anchor[j];
            quat_matrix_adj(q + iq, grj, gq + iq);
            break;
        case FREE:
            quat_matrix_adj(q + iq + 3, grj, gq + iq + 3);
            for (int i = 0; i < 3; ++i) gq[iq + i] += gpj[i];
            break;
        default:
            break;
        }
    }
}

/* ------------------------------------------------------------------ entry points */
/* doubles of scratch one env needs (workspace + state buffers) */
static size_t env_doubles(const Model *m) { return work_doubles(m->links, m->dofs) + 6 * (size_t)(m->nq + m->dofs) + m->actuators; }

/* q_out, qd_out [n, nq], [n, D] after `substeps` substeps from q, qd under u [n, A] (held); traj (or NULL) [n, substeps, nq + D]
   gets every substep's input state. Returns 0, or -1 when out of memory. */
int rigid_forward(const Model *m, const REAL *q, const REAL *qd, const REAL *u, REAL *q_out, REAL *qd_out, REAL *traj, int64_t n,
                  int64_t substeps) {
    const int64_t nq = m->nq, D = m->dofs, A = m->actuators, width = nq + D;
    double *buffer = malloc(env_doubles(m) * sizeof(double));
    if (!buffer) return -1;
    Work w;
    work_init(&w, buffer, m->links, D);
    double *x = buffer + work_doubles(m->links, D), *xd = x + nq, *x1 = xd + D, *xd1 = x1 + nq, *ud = xd1 + D;
    for (int64_t b = 0; b < n; ++b) {
        for (int64_t i = 0; i < nq; ++i) x[i] = (double)q[b * nq + i];
        for (int64_t i = 0; i < D; ++i) xd[i] = (double)qd[b * D + i];
        for (int64_t i = 0; i < A; ++i) ud[i] = (double)u[b * A + i];
        for (int64_t k = 0; k < substeps; ++k) {
            if (traj) {
                REAL *t = traj + (b * substeps + k) * width;
                for (int64_t i = 0; i < nq; ++i) t[i] = (REAL)x[i];
                for (int64_t i = 0; i < D; ++i) t[nq + i] = (REAL)xd[i];
            }
            substep(m, &w, x, xd, ud, x1, xd1);
            for (int64_t i = 0; i < nq; ++i) x[i] = (double)(REAL)x1[i];
            for (int64_t i = 0; i < D; ++i) xd[i] = (double)(REAL)xd1[i];
        }
        for (int64_t i = 0; i < nq; ++i) q_out[b * nq + i] = (REAL)x[i];
        for (int64_t i = 0; i < D; ++i) qd_out[b * D + i] = (REAL)xd[i];
    }
    free(buffer);
    return 0;
}

/* vector-Jacobian product of rigid_forward: from dL/dq_out, dL/dqd_out to dL/dq, dL/dqd, dL/du (overwritten), recomputing each
   substep from traj (rigid_forward's). Returns 0, or -1 when out of memory. */
int rigid_backward(const Model *m, const REAL *u, const REAL *traj, const REAL *grad_q, const REAL *grad_qd, REAL *gq_in, REAL *gqd_in,
                   REAL *gu_in, int64_t n, int64_t substeps) {
    const int64_t nq = m->nq, D = m->dofs, A = m->actuators, width = nq + D;
    double *buffer = malloc((env_doubles(m) + 2 * (size_t)(nq + D) + A) * sizeof(double));
    if (!buffer) return -1;
    Work w;
    work_init(&w, buffer, m->links, D);
    double *x = buffer + work_doubles(m->links, D), *xd = x + nq, *x1 = xd + D, *xd1 = x1 + nq, *ud = xd1 + D;
    double *gq = ud + A, *gqd = gq + nq, *gq0 = gqd + D, *gqd0 = gq0 + nq, *gu = gqd0 + D;
    for (int64_t b = 0; b < n; ++b) {
        for (int64_t i = 0; i < nq; ++i) gq[i] = (double)grad_q[b * nq + i];
        for (int64_t i = 0; i < D; ++i) gqd[i] = (double)grad_qd[b * D + i];
        for (int64_t i = 0; i < A; ++i) { ud[i] = (double)u[b * A + i]; gu[i] = 0.0; }
        for (int64_t k = substeps - 1; k >= 0; --k) {
            const REAL *t = traj + (b * substeps + k) * width;
            for (int64_t i = 0; i < nq; ++i) x[i] = (double)t[i];
            for (int64_t i = 0; i < D; ++i) xd[i] = (double)t[nq + i];
            substep(m, &w, x, xd, ud, x1, xd1);
            substep_adjoint(m, &w, x, xd, ud, gq, gqd, gq0, gqd0, gu);
            memcpy(gq, gq0, nq * sizeof(double));
            memcpy(gqd, gqd0, D * sizeof(double));
        }
        for (int64_t i = 0; i < nq; ++i) gq_in[b * nq + i] = (REAL)gq[i];
        for (int64_t i = 0; i < D; ++i) gqd_in[b * D + i] = (REAL)gqd[i];
        for (int64_t i = 0; i < A; ++i) gu_in[b * A + i] = (REAL)gu[i];
    }
    free(buffer);
    return 0;
}
