/* The MLS-MPM grid update for CPU (tphys.kernels.grid_kernels): momentum -> velocity, gravity, kinematic colliders,
 * walls with Coulomb friction and the sticky floor, with its hand-written adjoint.
 *
 * The C twin of tphys/mpm/grid.py:grid_velocity_torch + tphys/mpm/colliders.py:collide (same math, same order of
 * operations, the same subgradients at kinks as torch's autograd: clamp passes the gradient where the bound holds
 * with equality, a norm has zero gradient at 0, max/argmax take the first maximum). Built by c_kernels.build with
 * -DREAL=float or double; one thread, one pass over the window's nodes of every env (empty nodes: zero velocity,
 * zero gradient), pose gradients accumulated in double in node order: deterministic.
 *
 * Layouts (row-major, contiguous): mass [N, WX, WY, WZ]; momentum, velocity [N, WX, WY, WZ, 3]; origin [N, 3] int64
 * (the window's first node in the G³ domain); gravity [3]; kinds [S] int64 (0 sphere, 1 box, 2 capsule, 3 cylinder,
 * the order of colliders.SHAPES); sizes [S, 3]; position, position_next [N, S, 3]; rotation, rotation_next
 * [N, S, 3, 3] (local -> world). Nodes sit at (origin + local index)·dx.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <tgmath.h>

#ifndef REAL
#define REAL double
#endif
#define TINY ((REAL)1e-12)
#define MAX_SHAPES 64

typedef struct {
    int64_t n, wx, wy, wz, grid, bound, sticky, shapes;
    REAL gdt[3], dt, dx, mu, min_mass, friction, softness, band;
    const int64_t *origin, *kinds;
    const REAL *sizes, *position, *rotation, *position_next, *rotation_next;
    double *reach; /* [N, S, 3] or NULL: a node farther than this from a shape's centre along an axis is out of its band */
} Params;

static inline REAL dot3(const REAL *a, const REAL *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
static inline REAL len3(const REAL *a) { return sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]); }
static inline REAL sgn(REAL a) { return (REAL)((a > 0) - (a < 0)); }

/* n = p / max(|p|, TINY) */
static inline void unit3(const REAL *p, REAL *n) {
    REAL l = len3(p), s = l > TINY ? l : TINY;
    for (int i = 0; i < 3; i++) n[i] = p[i] / s;
}

/* g_p += (d unit3(p) / dp)ᵀ g_n */
static inline void unit3_back(const REAL *p, const REAL *g_n, REAL *g_p) {
    REAL l = len3(p), s = l >= TINY ? l : TINY;
    for (int i = 0; i < 3; i++) g_p[i] += g_n[i] / s;
    if (l >= TINY) {
        REAL g_s = -dot3(g_n, p) / (s * s);
        for (int i = 0; i < 3; i++) g_p[i] += g_s * p[i] / l;
    }
}

/* g_p += g_l · d|p|/dp (zero at p = 0) */
static inline void len3_back(const REAL *p, REAL g_l, REAL *g_p) {
    REAL l = len3(p);
    if (l > 0)
        for (int i = 0; i < 3; i++) g_p[i] += g_l * p[i] / l;
}

/* A box's terms at local point p (half extents size): q = |p| - size, o = max(q, 0), y = o * sign(p); returns the axis
   of the largest q (shared by sdf and sdf_back). */
static inline int box_terms(const REAL *p, const REAL *size, REAL *q, REAL *o, REAL *y) {
    for (int i = 0; i < 3; i++) {
        q[i] = fabs(p[i]) - size[i];
        o[i] = q[i] > 0 ? q[i] : 0;
        y[i] = o[i] * sgn(p[i]);
    }
    int am = 0;
    if (q[1] > q[am]) am = 1;
    if (q[2] > q[am]) am = 2;
    return am;
}

/* Signed distance d and outward unit normal n of the local point p (colliders.signed_distance). */
static void sdf(int64_t kind, const REAL *size, const REAL *p, REAL *d, REAL *n) {
    if (kind == 0) { /* sphere */
        *d = len3(p) - size[0];
        unit3(p, n);
    } else if (kind == 2) { /* capsule */
        REAL a = p[1] > -size[1] ? p[1] : -size[1];
        a = a < size[1] ? a : size[1];
        REAL o[3] = {p[0], p[1] - a, p[2]};
        *d = len3(o) - size[0];
        unit3(o, n);
    } else if (kind == 3) { /* cylinder */
        REAL rad[3] = {p[0], 0, p[2]}, rn[3], cn[3] = {0, sgn(p[1]), 0};
        REAL side = len3(rad) - size[0], cap = fabs(p[1]) - size[1];
        REAL o0 = side > 0 ? side : 0, o1 = cap > 0 ? cap : 0;
        unit3(rad, rn);
        if (side > 0 || cap > 0) {
            *d = sqrt(o0 * o0 + o1 * o1);
            REAL w[3] = {o0 * rn[0] + o1 * cn[0], o0 * rn[1] + o1 * cn[1], o0 * rn[2] + o1 * cn[2]};
            unit3(w, n);
        } else {
            *d = side >= cap ? side : cap;
            for (int i = 0; i < 3; i++) n[i] = side > cap ? rn[i] : cn[i];
        }
    } else { /* box */
        REAL q[3], o[3], y[3];
        int am = box_terms(p, size, q, o, y);
        *d = len3(o) + (q[am] < 0 ? q[am] : 0);
        if (q[0] > 0 || q[1] > 0 || q[2] > 0) {
            unit3(y, n);
        } else {
            n[0] = n[1] = n[2] = 0;
            n[am] = sgn(p[am]);
        }
    }
}

/* g_p += (dd/dp)ᵀ g_d + (dn/dp)ᵀ g_n at the local point p; the sizes get no gradient. */
static void sdf_back(int64_t kind, const REAL *size, const REAL *p, REAL g_d, const REAL *g_n, REAL *g_p) {
    if (kind == 0) {
        len3_back(p, g_d, g_p);
        unit3_back(p, g_n, g_p);
    } else if (kind == 2) {
        REAL a = p[1] > -size[1] ? p[1] : -size[1];
        a = a < size[1] ? a : size[1];
        REAL o[3] = {p[0], p[1] - a, p[2]}, g_o[3] = {0, 0, 0};
        len3_back(o, g_d, g_o);
        unit3_back(o, g_n, g_o);
        g_p[0] += g_o[0];
        g_p[2] += g_o[2];
        if (!(p[1] >= -size[1] && p[1] <= size[1])) g_p[1] += g_o[1]; /* the clamp passes p_y inside the segment */
    } else if (kind == 3) {
        REAL rad[3] = {p[0], 0, p[2]}, rn[3], cn[3] = {0, sgn(p[1]), 0};
        REAL side = len3(rad) - size[0], cap = fabs(p[1]) - size[1];
        REAL o0 = side > 0 ? side : 0, o1 = cap > 0 ? cap : 0;
        REAL g_side = 0, g_cap = 0, g_o0 = 0, g_o1 = 0, g_rn[3] = {0, 0, 0}, g_rad[3] = {0, 0, 0};
        unit3(rad, rn);
        if (side > 0 || cap > 0) {
            REAL l = sqrt(o0 * o0 + o1 * o1);
            if (l > 0) {
                g_o0 += g_d * o0 / l;
                g_o1 += g_d * o1 / l;
            }
            REAL w[3] = {o0 * rn[0] + o1 * cn[0], o0 * rn[1] + o1 * cn[1], o0 * rn[2] + o1 * cn[2]}, g_w[3] = {0, 0, 0};
            unit3_back(w, g_n, g_w);
            g_o0 += dot3(g_w, rn);
            g_o1 += dot3(g_w, cn);
            for (int i = 0; i < 3; i++) g_rn[i] += o0 * g_w[i];
        } else {
            if (side > cap) g_side += g_d;
            else if (side < cap) g_cap += g_d;
            else {
                g_side += g_d / 2;
                g_cap += g_d / 2;
            }
            if (side > cap)
                for (int i = 0; i < 3; i++) g_rn[i] += g_n[i];
        }
        if (side >= 0) g_side += g_o0;
        if (cap >= 0) g_cap += g_o1;
        len3_back(rad, g_side, g_rad);
        unit3_back(rad, g_rn, g_rad);
        g_p[0] += g_rad[0];
        g_p[2] += g_rad[2];
        g_p[1] += g_cap * sgn(p[1]);
    } else {
        REAL q[3], o[3], y[3], g_o[3] = {0, 0, 0}, g_q[3] = {0, 0, 0};
        int am = box_terms(p, size, q, o, y);
        len3_back(o, g_d, g_o);
        if (q[am] <= 0) g_q[am] += g_d;
        if (q[0] > 0 || q[1] > 0 || q[2] > 0) {
            REAL g_y[3] = {0, 0, 0};
            unit3_back(y, g_n, g_y);
            for (int i = 0; i < 3; i++) g_o[i] += g_y[i] * sgn(p[i]);
        }
        for (int i = 0; i < 3; i++) {
            if (q[i] >= 0) g_q[i] += g_o[i];
            g_p[i] += g_q[i] * sgn(p[i]);
        }
    }
}

/* Per (env, shape, axis), how far from the shape's centre a node may lie along a world axis and still be within the band
   (or inside): the half extent of the shape's world bounding box (a box's rotated half extents; a sphere's radius;
   radius + half length for capsules and cylinders) + band + a margin (1e-3 (1 + extent + |centre|) m) far above the
   float error of the distance that shape_geometry computes. A node beyond it on any axis is farther than the band from
   the shape, so shape_geometry would return 0 for it: `far` skips its transform and distance (5 walls per node in
   fluid_move) with the same results. NULL where out of memory (nothing is skipped then). */
static double *shape_reach(const Params *c) {
    double *reach = malloc((size_t)(3 * c->n * c->shapes + 1) * sizeof(double));
    if (!reach) return NULL;
    for (int64_t k = 0; k < c->n * c->shapes; k++) {
        int64_t s = k % c->shapes;
        const REAL *R = c->rotation + 9 * k, *P = c->position + 3 * k, *size = c->sizes + 3 * s;
        for (int j = 0; j < 3; j++) {
            double extent;
            if (c->kinds[s] == 1) /* box: world x_j = sum_i R[j][i] local_i, |local_i| <= size_i */
                extent = fabs((double)R[3 * j]) * fabs((double)size[0]) + fabs((double)R[3 * j + 1]) * fabs((double)size[1]) +
                         fabs((double)R[3 * j + 2]) * fabs((double)size[2]);
            else if (c->kinds[s] == 0) /* sphere */
                extent = fabs((double)size[0]);
            else /* capsule, cylinder: within radius + half length of the centre */
                extent = fabs((double)size[0]) + fabs((double)size[1]);
            reach[3 * k + j] = extent + (double)c->band + 1e-3 * (1 + extent + fabs((double)P[j]));
        }
    }
    return reach;
}

/* Whether node x is beyond shape s's reach (shape_reach) in env e: shape_geometry would return 0. */
static inline int far(const Params *c, int64_t e, int64_t s, const REAL *x) {
    if (!c->reach) return 0;
    const double *r = c->reach + 3 * (e * c->shapes + s);
    const REAL *P = c->position + 3 * (e * c->shapes + s);
    return fabs((double)x[0] - P[0]) > r[0] || fabs((double)x[1] - P[1]) > r[1] || fabs((double)x[2] - P[2]) > r[2];
}

/* Shape s of env e at node x: local point Rᵀ(x - p), distance, local normal; returns whether the shape acts. */
static int shape_geometry(const Params *c, int64_t e, int64_t s, const REAL *x, REAL *xp, REAL *local, REAL *d, REAL *nl) {
    const REAL *R = c->rotation + 9 * (e * c->shapes + s), *P = c->position + 3 * (e * c->shapes + s);
    for (int j = 0; j < 3; j++) xp[j] = x[j] - P[j];
    for (int i = 0; i < 3; i++) local[i] = xp[0] * R[i] + xp[1] * R[3 + i] + xp[2] * R[6 + i];
    sdf(c->kinds[s], c->sizes + 3 * s, local, d, nl);
    return *d < c->band || *d <= 0;
}

/* What shape s (pose k) does to a node at x (local: its position in the shape's frame, d, nl: its signed distance and local
   normal) moving at v: the terms of colliders.collide, shared by the forward (shape_apply) and the adjoint (shape_back). */
typedef struct {
    REAL normal[3], u[3], r[3], t[3], tt[3]; /* world normal, body velocity, relative velocity, its tangent, after friction */
    REAL e1, w, rn, cl, tn, sc, a;          /* exp(-softness d), weight, normal speed, min(rn, 0), |t|, max(|t|, TINY), kept */
    int approach;                           /* rn < 0 */
} ShapeTerms;

static void shape_terms(const Params *c, int64_t k, const REAL *x, const REAL *local, REAL d, const REAL *nl, const REAL *v,
                        ShapeTerms *o) {
    const REAL *R = c->rotation + 9 * k, *R1 = c->rotation_next + 9 * k, *P1 = c->position_next + 3 * k;
    for (int i = 0; i < 3; i++) {
        o->normal[i] = R[3 * i] * nl[0] + R[3 * i + 1] * nl[1] + R[3 * i + 2] * nl[2];
        REAL moved = R1[3 * i] * local[0] + R1[3 * i + 1] * local[1] + R1[3 * i + 2] * local[2] + P1[i];
        o->u[i] = (moved - x[i]) / c->dt;
    }
    o->e1 = exp(-c->softness * d);
    o->w = o->e1 < 1 ? o->e1 : 1;
    for (int i = 0; i < 3; i++) o->r[i] = v[i] - o->u[i];
    o->rn = dot3(o->r, o->normal);
    o->cl = o->rn < 0 ? o->rn : 0;
    for (int i = 0; i < 3; i++) o->t[i] = o->r[i] - o->cl * o->normal[i];
    o->approach = o->rn < 0;
    o->tn = o->sc = o->a = 0;
    if (o->approach) {
        o->tn = len3(o->t);
        o->sc = o->tn > TINY ? o->tn : TINY;
        o->a = o->tn + c->friction * o->rn;
        o->a = o->a > 0 ? o->a : 0;
        for (int i = 0; i < 3; i++) o->tt[i] = o->t[i] / o->sc * o->a;
    } else {
        for (int i = 0; i < 3; i++) o->tt[i] = o->t[i];
    }
}

/* v <- the velocity after shape s acts (colliders.collide for one node and shape). */
static void shape_apply(const Params *c, int64_t e, int64_t s, const REAL *x, const REAL *local, REAL d, const REAL *nl, REAL *v) {
    ShapeTerms o;
    shape_terms(c, e * c->shapes + s, x, local, d, nl, v, &o);
    for (int i = 0; i < 3; i++) v[i] = o.u[i] + (1 - o.w) * o.r[i] + o.w * o.tt[i];
}

/* g (dL/d the velocity after shape s acted on v) <- dL/dv; pose gradients of (env e, shape s) accumulate. */
static void shape_back(const Params *c, int64_t e, int64_t s, const REAL *x, const REAL *v, REAL *g, double *gP, double *gR, double *gP1,
                       double *gR1) {
    int64_t k = e * c->shapes + s;
    const REAL *R = c->rotation + 9 * k, *R1 = c->rotation_next + 9 * k;
    REAL xp[3], local[3], d, nl[3];
    shape_geometry(c, e, s, x, xp, local, &d, nl);
    ShapeTerms o;
    shape_terms(c, k, x, local, d, nl, v, &o);
    const REAL *normal = o.normal, *r = o.r, *t = o.t, *tt = o.tt;
    const REAL e1 = o.e1, w = o.w, rn = o.rn, cl = o.cl, tn = o.tn, sc = o.sc, a = o.a;
    const int approach = o.approach;
    /* adjoint of v' = u + (1 - w) r + w tt */
    REAL g_u[3], g_r[3], g_t[3], g_normal[3], g_local[3] = {0, 0, 0}, g_nl[3], g_rn = 0, g_w = 0;
    for (int i = 0; i < 3; i++) {
        g_u[i] = g[i];
        g_r[i] = (1 - w) * g[i];
        g_w += g[i] * (tt[i] - r[i]);
    }
    if (approach) {
        REAL gtt_t = w * dot3(g, t), g_tn = 0, g_a = gtt_t / sc, g_s = -gtt_t * a / (sc * sc);
        for (int i = 0; i < 3; i++) g_t[i] = w * g[i] * a / sc;
        if (tn >= TINY) g_tn += g_s;
        if (tn + c->friction * rn >= 0) {
            g_tn += g_a;
            g_rn += c->friction * g_a;
        }
        if (tn > 0)
            for (int i = 0; i < 3; i++) g_t[i] += g_tn * t[i] / tn;
    } else {
        for (int i = 0; i < 3; i++) g_t[i] = w * g[i];
    }
    REAL g_cl = -dot3(g_t, normal);
    for (int i = 0; i < 3; i++) {
        g_r[i] += g_t[i];
        g_normal[i] = -cl * g_t[i];
    }
    if (rn <= 0) g_rn += g_cl;
    for (int i = 0; i < 3; i++) {
        g_r[i] += g_rn * normal[i];
        g_normal[i] += g_rn * r[i];
        g[i] = g_r[i]; /* dL/dv */
        g_u[i] -= g_r[i];
    }
    REAL g_d = e1 <= 1 ? g_w * e1 * -c->softness : 0;
    for (int i = 0; i < 3; i++) {
        REAL g_moved = g_u[i] / c->dt;
        gP1[3 * k + i] += g_moved;
        for (int j = 0; j < 3; j++) {
            gR1[9 * k + 3 * i + j] += g_moved * local[j];
            g_local[j] += R1[3 * i + j] * g_moved;
            gR[9 * k + 3 * i + j] += g_normal[i] * nl[j];
        }
    }
    for (int j = 0; j < 3; j++) g_nl[j] = R[j] * g_normal[0] + R[3 + j] * g_normal[1] + R[6 + j] * g_normal[2];
    sdf_back(c->kinds[s], c->sizes + 3 * s, local, g_d, g_nl, g_local);
    for (int j = 0; j < 3; j++) { /* local_i = Σ_j xp_j R_ji */
        REAL g_xp = 0;
        for (int i = 0; i < 3; i++) {
            gR[9 * k + 3 * j + i] += g_local[i] * xp[j];
            g_xp += R[3 * j + i] * g_local[i];
        }
        gP[3 * k + j] -= g_xp;
    }
}

static inline int into_wall(const Params *c, const int64_t *node, const REAL *v, int axis) {
    return (node[axis] < c->bound && v[axis] < 0) || (node[axis] >= c->grid - c->bound && v[axis] > 0);
}

static void wall_apply(const Params *c, const int64_t *node, int axis, REAL *v) {
    if (!into_wall(c, node, v, axis)) return;
    if (c->mu > 0) {
        REAL t[3] = {v[0], v[1], v[2]};
        t[axis] = v[axis] * 0;
        REAL speed = sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2] + (REAL)1e-20);
        REAL scale = 1 - c->mu * fabs(v[axis]) / speed;
        scale = scale > 0 ? scale : 0;
        for (int i = 0; i < 3; i++) v[i] = t[i] * scale;
    } else {
        v[axis] = v[axis] * 0;
    }
}

/* g (dL/d the velocity after the wall of axis acted on v) <- dL/dv */
static void wall_back(const Params *c, const int64_t *node, int axis, const REAL *v, REAL *g) {
    if (!into_wall(c, node, v, axis)) return;
    if (c->mu > 0) {
        REAL t[3] = {v[0], v[1], v[2]};
        t[axis] = 0;
        REAL speed = sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2] + (REAL)1e-20);
        REAL n = fabs(v[axis]), ratio = c->mu * n / speed, scale = 1 - ratio, g_n = 0;
        scale = scale > 0 ? scale : 0;
        REAL g_scale = dot3(g, t), g_t[3];
        for (int i = 0; i < 3; i++) g_t[i] = g[i] * scale;
        if (1 - ratio >= 0) {
            REAL g_ratio = -g_scale, g_speed = -g_ratio * c->mu * n / (speed * speed);
            g_n = g_ratio * c->mu / speed * sgn(v[axis]);
            for (int i = 0; i < 3; i++) g_t[i] += g_speed * t[i] / speed;
        }
        for (int i = 0; i < 3; i++) g[i] = g_t[i];
        g[axis] = g_n;
    } else {
        g[axis] = 0;
    }
}

static void read_params(Params *c, int64_t n, int64_t wx, int64_t wy, int64_t wz, const int64_t *origin, const REAL *gravity, double dt,
                        double dx, int64_t grid, int64_t bound, double wall_friction, int64_t sticky, double min_mass, int64_t shapes,
                        const int64_t *kinds, const REAL *sizes, double friction, double softness, double band, const REAL *position,
                        const REAL *rotation, const REAL *position_next, const REAL *rotation_next) {
    c->n = n, c->wx = wx, c->wy = wy, c->wz = wz, c->grid = grid, c->bound = bound, c->sticky = sticky, c->shapes = shapes;
    c->dt = (REAL)dt, c->dx = (REAL)dx, c->mu = (REAL)wall_friction, c->min_mass = (REAL)min_mass;
    c->friction = (REAL)friction, c->softness = (REAL)softness, c->band = (REAL)band;
    for (int i = 0; i < 3; i++) c->gdt[i] = (REAL)dt * gravity[i];
    c->origin = origin, c->kinds = kinds, c->sizes = sizes;
    c->position = position, c->rotation = rotation, c->position_next = position_next, c->rotation_next = rotation_next;
    c->reach = NULL;
}

#define PARAMS                                                                                                                          \
    int64_t n, int64_t wx, int64_t wy, int64_t wz, const int64_t *origin, const REAL *gravity, double dt, double dx, int64_t grid,     \
        int64_t bound, double wall_friction, int64_t sticky, double min_mass, int64_t shapes, const int64_t *kinds, const REAL *sizes, \
        double friction, double softness, double band, const REAL *position, const REAL *rotation, const REAL *position_next,          \
        const REAL *rotation_next
#define READ_PARAMS(c)                                                                                                                 \
    read_params(c, n, wx, wy, wz, origin, gravity, dt, dx, grid, bound, wall_friction, sticky, min_mass, shapes, kinds, sizes,       \
                friction, softness, band, position, rotation, position_next, rotation_next)

/* The node (env e, flat window index i): global node index and position; returns e's window offset. */
static inline void node_of(const Params *c, int64_t e, int64_t i, int64_t *node, REAL *x) {
    int64_t local[3] = {i / (c->wy * c->wz), i / c->wz % c->wy, i % c->wz};
    for (int a = 0; a < 3; a++) {
        node[a] = local[a] + c->origin[3 * e + a];
        x[a] = (REAL)node[a] * c->dx;
    }
}

/* velocity [N, WX, WY, WZ, 3] from mass and momentum (every node written; empty ones 0). Returns how many times a shape
 * acted on a node (0: the velocities do not depend on the poses), or -1 when S > MAX_SHAPES. */
int64_t grid_forward(const REAL *mass, const REAL *momentum, REAL *velocity, PARAMS) {
    Params c;
    READ_PARAMS(&c);
    if (shapes > MAX_SHAPES) return -1;
    c.reach = shape_reach(&c);
    int64_t per_env = wx * wy * wz, acted = 0;
    for (int64_t e = 0; e < n; e++)
        for (int64_t i = 0; i < per_env; i++) {
            int64_t id = e * per_env + i, node[3];
            REAL *v = velocity + 3 * id, m = mass[id], x[3], xp[3], local[3], d, nl[3];
            if (!(m > c.min_mass)) {
                v[0] = v[1] = v[2] = 0;
                continue;
            }
            node_of(&c, e, i, node, x);
            for (int a = 0; a < 3; a++) v[a] = momentum[3 * id + a] / m + c.gdt[a];
            for (int64_t s = 0; s < shapes; s++)
                if (!far(&c, e, s, x) && shape_geometry(&c, e, s, x, xp, local, &d, nl)) {
                    shape_apply(&c, e, s, x, local, d, nl, v);
                    acted++;
                }
            if (sticky && node[1] < bound && v[1] < 0) v[0] = v[1] = v[2] = 0;
            for (int a = 0; a < 3; a++) wall_apply(&c, node, a, v);
        }
    free(c.reach);
    return acted;
}

/* dL/d mass [N, WX, WY, WZ], dL/d momentum [N, WX, WY, WZ, 3], dL/d poses (same shapes as the poses; written, not
 * accumulated) from dL/d velocity. Returns 0, -1 when S > MAX_SHAPES, -2 when out of memory. */
int64_t grid_backward(const REAL *mass, const REAL *momentum, const REAL *grad_velocity, REAL *grad_mass, REAL *grad_momentum,
                      REAL *grad_position, REAL *grad_rotation, REAL *grad_position_next, REAL *grad_rotation_next, PARAMS) {
    Params c;
    READ_PARAMS(&c);
    if (shapes > MAX_SHAPES) return -1;
    c.reach = shape_reach(&c);
    int64_t per_env = wx * wy * wz, ns = n * shapes;
    double *acc = calloc((size_t)(24 * ns) + 1, sizeof(double));
    if (!acc) {
        free(c.reach);
        return -2;
    }
    double *gP = acc, *gR = acc + 3 * ns, *gP1 = acc + 12 * ns, *gR1 = acc + 15 * ns;
    REAL tape[MAX_SHAPES + 4][3];
    int64_t acted[MAX_SHAPES];
    for (int64_t e = 0; e < n; e++)
        for (int64_t i = 0; i < per_env; i++) {
            int64_t id = e * per_env + i, node[3], count = 0;
            REAL m = mass[id], x[3], xp[3], local[3], d, nl[3], v[3], g[3];
            if (!(m > c.min_mass)) {
                grad_mass[id] = 0;
                grad_momentum[3 * id] = grad_momentum[3 * id + 1] = grad_momentum[3 * id + 2] = 0;
                continue;
            }
            node_of(&c, e, i, node, x);
            for (int a = 0; a < 3; a++) v[a] = momentum[3 * id + a] / m + c.gdt[a];
            for (int64_t s = 0; s < shapes; s++)
                if (!far(&c, e, s, x) && shape_geometry(&c, e, s, x, xp, local, &d, nl)) {
                    for (int a = 0; a < 3; a++) tape[count][a] = v[a];
                    acted[count++] = s;
                    shape_apply(&c, e, s, x, local, d, nl, v);
                }
            int stuck = sticky && node[1] < bound && v[1] < 0;
            if (stuck) v[0] = v[1] = v[2] = 0;
            for (int a = 0; a < 3; a++) {
                for (int b = 0; b < 3; b++) tape[MAX_SHAPES + a][b] = v[b];
                wall_apply(&c, node, a, v);
            }
            for (int a = 0; a < 3; a++) g[a] = grad_velocity[3 * id + a];
            for (int a = 2; a >= 0; a--) wall_back(&c, node, a, tape[MAX_SHAPES + a], g);
            if (stuck) g[0] = g[1] = g[2] = 0;
            for (int64_t k = count - 1; k >= 0; k--) shape_back(&c, e, acted[k], x, tape[k], g, gP, gR, gP1, gR1);
            REAL gm = 0;
            for (int a = 0; a < 3; a++) {
                grad_momentum[3 * id + a] = g[a] / m;
                gm -= g[a] * momentum[3 * id + a] / (m * m);
            }
            grad_mass[id] = gm;
        }
    for (int64_t j = 0; j < 3 * ns; j++) {
        grad_position[j] = (REAL)gP[j];
        grad_position_next[j] = (REAL)gP1[j];
    }
    for (int64_t j = 0; j < 9 * ns; j++) {
        grad_rotation[j] = (REAL)gR[j];
        grad_rotation_next[j] = (REAL)gR1[j];
    }
    free(acc);
    free(c.reach);
    return 0;
}
