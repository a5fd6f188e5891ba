/* MLS-MPM particle-grid transfers, a signed 3x3 SVD, batched 3x3 products and plasticine's stress for CPU,
 * with hand-written backwards.
 *
 * The C twins of tphys/kernels/transfer_triton.py (same math as the torch twins in stencil.py), built by
 * tphys/kernels/c_kernels.py with the system C compiler once per REAL type (-DREAL=float or double)
 * and called through ctypes on contiguous tensors. Single-threaded; one pass over the particles.
 *
 * Layouts (row-major, contiguous): x, mom [N, P, 3]; m [N, P]; a, c [N, P, 3, 3];
 * grid mass [N, GX, GY, GZ]; grid momentum / velocity [N, GX, GY, GZ, 3]. Nodes sit at i·dx.
 */
#include <math.h>
#include <stdint.h>

#ifndef REAL
#define REAL float
#endif

/* The transfers below contract a·b + c into fused multiply-adds (one rounding in place of two, in the double
 * accumulators; float32 grids and particles round the same as without): 1.35x faster on an AVX-512 Xeon (P2G, G2P and
 * their backwards, 16 x 2880 water particles). The SVD, products and stresses after them keep the file's flags. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#elif defined(__clang__)
#pragma clang fp contract(fast)
#endif

typedef struct {
    int64_t node[3][3]; /* per axis, per offset: node index, or -1 outside the grid */
    double w[3][3];     /* per axis, per offset: quadratic B-spline weight */
    double slope[3][3]; /* d w / d x (1/m) */
    double d[3][3];     /* node position - particle position, m */
} Stencil;

static void stencil(const REAL *x, int64_t gx, int64_t gy, int64_t gz, double dx, Stencil *s) {
    const int64_t size[3] = {gx, gy, gz};
    double inv_dx = 1.0 / dx;
    for (int k = 0; k < 3; k++) {
        double f = (double)x[k] * inv_dx;
        double base = floor(f - 0.5);
        double fr = f - base;
        s->w[k][0] = 0.5 * (1.5 - fr) * (1.5 - fr);
        s->w[k][1] = 0.75 - (fr - 1.0) * (fr - 1.0);
        s->w[k][2] = 0.5 * (fr - 0.5) * (fr - 0.5);
        s->slope[k][0] = (fr - 1.5) * inv_dx;
        s->slope[k][1] = -2.0 * (fr - 1.0) * inv_dx;
        s->slope[k][2] = (fr - 0.5) * inv_dx;
        for (int o = 0; o < 3; o++) {
            int64_t i = (int64_t)base + o;
            s->node[k][o] = (i >= 0 && i < size[k]) ? i : -1;
            s->d[k][o] = (o - fr) * dx;
        }
    }
}

#define FOR_STENCIL(s, env, gx, gy, gz)                                                        \
    for (int ox = 0; ox < 3; ox++)                                                             \
        for (int oy = 0; oy < 3; oy++)                                                         \
            for (int oz = 0; oz < 3; oz++)                                                     \
                if ((s).node[0][ox] >= 0 && (s).node[1][oy] >= 0 && (s).node[2][oz] >= 0)

#define NODE(s, env, gx, gy, gz) ((((env) * (gx) + (s).node[0][ox]) * (gy) + (s).node[1][oy]) * (gz) + (s).node[2][oz])

/* Whether all 27 stencil nodes lie on the grid (always, on a grid window that holds the particles): then the loops
 * below take their fast form, which walks each (x, y) row of 3 nodes contiguously and hoists what depends on fewer
 * than three axes out of the inner loop; particles near the grid's edge take the node-by-node form. */
static inline int inside(const Stencil *s) {
    return s->node[0][0] >= 0 && s->node[0][2] >= 0 && s->node[1][0] >= 0 && s->node[1][2] >= 0 && s->node[2][0] >= 0 && s->node[2][2] >= 0;
}

/* Index of node (ox, oy, 0) of an inside stencil. */
static inline int64_t row(const Stencil *s, int64_t env, int64_t gx, int64_t gy, int64_t gz, int ox, int oy) {
    return ((env * gx + s->node[0][ox]) * gy + s->node[1][oy]) * gz + s->node[2][0];
}

/* P2G of one particle with an inside stencil; the same sums, in the same order, as the node-by-node form. A row's 9
 * momentum components (3 nodes x 3) are 8 + 1 so that the compiler vectorises the 8 (G2P's rows likewise). */
static void p2g_inside(const Stencil *s, int64_t env, int64_t gx, int64_t gy, int64_t gz, double mass, const REAL *q, const REAL *A,
                       REAL *gm, REAL *gmv) {
    double along[9], wz[9]; /* [3·oz + r]: A[r][2]·d_z, w_z */
    for (int oz = 0; oz < 3; oz++)
        for (int r = 0; r < 3; r++) along[3 * oz + r] = A[3 * r + 2] * s->d[2][oz], wz[3 * oz + r] = s->w[2][oz];
    for (int ox = 0; ox < 3; ox++)
        for (int oy = 0; oy < 3; oy++) {
            double wxy = s->w[0][ox] * s->w[1][oy], b[9];
            for (int r = 0; r < 3; r++) b[r] = q[r] + A[3 * r] * s->d[0][ox] + A[3 * r + 1] * s->d[1][oy];
            for (int j = 3; j < 9; j++) b[j] = b[j - 3];
            int64_t node = row(s, env, gx, gy, gz, ox, oy);
            REAL *restrict M = gm + node, *restrict Q = gmv + 3 * node;
            for (int oz = 0; oz < 3; oz++) M[oz] += (REAL)(wxy * s->w[2][oz] * mass);
            REAL add[8];
            for (int j = 0; j < 8; j++) add[j] = (REAL)(wxy * wz[j] * (b[j] + along[j]));
            for (int j = 0; j < 8; j++) Q[j] += add[j];
            Q[8] += (REAL)(wxy * wz[8] * (b[8] + along[8]));
        }
}

void p2g_forward(const REAL *x, const REAL *m, const REAL *mom, const REAL *a, REAL *gm, REAL *gmv, int64_t n, int64_t p,
                 int64_t gx, int64_t gy, int64_t gz, double dx) {
    Stencil s;
    for (int64_t env = 0; env < n; env++)
    for (int64_t i = env * p; i < (env + 1) * p; i++) {
        stencil(x + 3 * i, gx, gy, gz, dx, &s);
        const REAL *q = mom + 3 * i, *A = a + 9 * i;
        if (inside(&s)) {
            p2g_inside(&s, env, gx, gy, gz, m[i], q, A, gm, gmv);
            continue;
        }
        FOR_STENCIL(s, env, gx, gy, gz) {
            int64_t node = NODE(s, env, gx, gy, gz);
            double w = s.w[0][ox] * s.w[1][oy] * s.w[2][oz];
            double d0 = s.d[0][ox], d1 = s.d[1][oy], d2 = s.d[2][oz];
            gm[node] += (REAL)(w * m[i]);
            for (int r = 0; r < 3; r++)
                gmv[3 * node + r] += (REAL)(w * (q[r] + A[3 * r] * d0 + A[3 * r + 1] * d1 + A[3 * r + 2] * d2));
        }
    }
}

/* P2G's backward for one particle with an inside stencil: g_m, g_q, g_a and the weight-gradient part of g_x summed
 * row by row; the -w·Aᵀh part of g_x is -Aᵀ·g_q, taken once per particle by the caller (it is linear in w·h). */
static void p2g_backward_inside(const Stencil *s, int64_t env, int64_t gx, int64_t gy, int64_t gz, double mass, const REAL *q,
                                const REAL *A, const REAL *ggm, const REAL *ggmv, double g_x[3], double *g_m, double g_q[3],
                                double g_a[9]) {
    double along_z[3][3]; /* [oz][r]: A[r][2]·d_z */
    for (int oz = 0; oz < 3; oz++)
        for (int r = 0; r < 3; r++) along_z[oz][r] = A[3 * r + 2] * s->d[2][oz];
    for (int ox = 0; ox < 3; ox++)
        for (int oy = 0; oy < 3; oy++) {
            double wx = s->w[0][ox], wy = s->w[1][oy], wxy = wx * wy, sxy = s->slope[0][ox] * wy, wsy = wx * s->slope[1][oy];
            double b[3], t[3] = {0, 0, 0}, tz[3] = {0, 0, 0}, tu = 0;
            for (int r = 0; r < 3; r++) b[r] = q[r] + A[3 * r] * s->d[0][ox] + A[3 * r + 1] * s->d[1][oy];
            int64_t node = row(s, env, gx, gy, gz, ox, oy);
            const REAL *U = ggm + node, *H = ggmv + 3 * node;
            for (int oz = 0; oz < 3; oz++) {
                double wz = s->w[2][oz], u = U[oz], value = mass * u; /* what the weight multiplies: m·u + h·(q + A·dpos) */
                tu += wz * u;
                for (int r = 0; r < 3; r++) {
                    double h = H[3 * oz + r];
                    t[r] += wz * h;
                    tz[r] += wz * s->d[2][oz] * h;
                    value += h * (b[r] + along_z[oz][r]);
                }
                g_x[0] += sxy * wz * value;
                g_x[1] += wsy * wz * value;
                g_x[2] += wxy * s->slope[2][oz] * value;
            }
            *g_m += wxy * tu;
            for (int r = 0; r < 3; r++) {
                g_q[r] += wxy * t[r];
                g_a[3 * r] += wxy * s->d[0][ox] * t[r];
                g_a[3 * r + 1] += wxy * s->d[1][oy] * t[r];
                g_a[3 * r + 2] += wxy * tz[r];
            }
        }
    for (int c = 0; c < 3; c++) g_x[c] -= A[c] * g_q[0] + A[3 + c] * g_q[1] + A[6 + c] * g_q[2];
}

void p2g_backward(const REAL *x, const REAL *m, const REAL *mom, const REAL *a, const REAL *ggm, const REAL *ggmv, REAL *gx_out,
                  REAL *gm_out, REAL *gmom_out, REAL *ga_out, int64_t n, int64_t p, int64_t gx, int64_t gy, int64_t gz, double dx) {
    Stencil s;
    for (int64_t env = 0; env < n; env++)
    for (int64_t i = env * p; i < (env + 1) * p; i++) {
        stencil(x + 3 * i, gx, gy, gz, dx, &s);
        const REAL *q = mom + 3 * i, *A = a + 9 * i;
        double g_x[3] = {0, 0, 0}, g_m = 0, g_q[3] = {0, 0, 0}, g_a[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        if (inside(&s)) {
            p2g_backward_inside(&s, env, gx, gy, gz, m[i], q, A, ggm, ggmv, g_x, &g_m, g_q, g_a);
        } else {
            FOR_STENCIL(s, env, gx, gy, gz) {
                int64_t node = NODE(s, env, gx, gy, gz);
                double wx = s.w[0][ox], wy = s.w[1][oy], wz = s.w[2][oz], w = wx * wy * wz;
                double d[3] = {s.d[0][ox], s.d[1][oy], s.d[2][oz]};
                double u = ggm[node], h[3] = {ggmv[3 * node], ggmv[3 * node + 1], ggmv[3 * node + 2]};
                g_m += w * u;
                double value = m[i] * u; /* s = m·u + h·(q + A·dpos): what the weight multiplies */
                for (int r = 0; r < 3; r++) {
                    g_q[r] += w * h[r];
                    for (int c = 0; c < 3; c++) g_a[3 * r + c] += w * h[r] * d[c];
                    value += h[r] * (q[r] + A[3 * r] * d[0] + A[3 * r + 1] * d[1] + A[3 * r + 2] * d[2]);
                }
                double dw[3] = {s.slope[0][ox] * wy * wz, wx * s.slope[1][oy] * wz, wx * wy * s.slope[2][oz]};
                for (int c = 0; c < 3; c++) /* through the weight, and through dpos (d dpos / dx = -I): -w·Aᵀh */
                    g_x[c] += dw[c] * value - w * (A[c] * h[0] + A[3 + c] * h[1] + A[6 + c] * h[2]);
            }
        }
        for (int c = 0; c < 3; c++) {
            gx_out[3 * i + c] = (REAL)g_x[c];
            gmom_out[3 * i + c] = (REAL)g_q[c];
        }
        gm_out[i] = (REAL)g_m;
        for (int k = 0; k < 9; k++) ga_out[9 * i + k] = (REAL)g_a[k];
    }
}

/* G2P of one particle with an inside stencil, as 9-wide sums over the (x, y) rows of 3 nodes x 3 components (j = 3·oz + r):
 * V = Σ w_x·w_y·row, X = Σ w_x·d_x·w_y·row, Y = Σ w_x·w_y·d_y·row; then v_r = Σ_oz w_z·V, and the affine columns
 * Σ_oz w_z·X, Σ_oz w_z·Y, Σ_oz w_z·d_z·V. */
static void g2p_inside(const Stencil *s, int64_t env, int64_t gx, int64_t gy, int64_t gz, const REAL *gv, double vel[3], double aff[9]) {
    double V[9] = {0}, X[9] = {0}, Y[9] = {0};
    for (int ox = 0; ox < 3; ox++)
        for (int oy = 0; oy < 3; oy++) {
            double wxy = s->w[0][ox] * s->w[1][oy], wx_dx = wxy * s->d[0][ox], wy_dy = wxy * s->d[1][oy];
            const REAL *G = gv + 3 * row(s, env, gx, gy, gz, ox, oy);
            double g[8];
            for (int j = 0; j < 8; j++) g[j] = G[j];
            for (int j = 0; j < 8; j++) V[j] += wxy * g[j];
            for (int j = 0; j < 8; j++) X[j] += wx_dx * g[j];
            for (int j = 0; j < 8; j++) Y[j] += wy_dy * g[j];
            double g8 = G[8];
            V[8] += wxy * g8;
            X[8] += wx_dx * g8;
            Y[8] += wy_dy * g8;
        }
    for (int oz = 0; oz < 3; oz++) {
        double wz = s->w[2][oz], wd = wz * s->d[2][oz];
        for (int r = 0; r < 3; r++) {
            int j = 3 * oz + r;
            vel[r] += wz * V[j];
            aff[3 * r] += wz * X[j];
            aff[3 * r + 1] += wz * Y[j];
            aff[3 * r + 2] += wd * V[j];
        }
    }
}

void g2p_forward(const REAL *x, const REAL *gv, REAL *v, REAL *c, int64_t n, int64_t p, int64_t gx, int64_t gy, int64_t gz, double dx) {
    Stencil s;
    double k = 4.0 / (dx * dx);
    for (int64_t env = 0; env < n; env++)
    for (int64_t i = env * p; i < (env + 1) * p; i++) {
        stencil(x + 3 * i, gx, gy, gz, dx, &s);
        double vel[3] = {0, 0, 0}, aff[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        if (inside(&s)) {
            g2p_inside(&s, env, gx, gy, gz, gv, vel, aff);
        } else {
            FOR_STENCIL(s, env, gx, gy, gz) {
                int64_t node = NODE(s, env, gx, gy, gz);
                double w = s.w[0][ox] * s.w[1][oy] * s.w[2][oz];
                double d[3] = {s.d[0][ox], s.d[1][oy], s.d[2][oz]};
                for (int r = 0; r < 3; r++) {
                    double u = w * gv[3 * node + r];
                    vel[r] += u;
                    for (int q = 0; q < 3; q++) aff[3 * r + q] += u * d[q];
                }
            }
        }
        for (int r = 0; r < 3; r++) v[3 * i + r] = (REAL)vel[r];
        for (int q = 0; q < 9; q++) c[9 * i + q] = (REAL)(k * aff[q]);
    }
}

/* G2P's backward for one particle with an inside stencil (e = dL/dv, b = (4/dx²)·dL/dC): the grid gradient w·r node
 * by node (r = e + b·dpos, the same sums in the same order as the node-by-node form) and g_x's weight part; its
 * -w·bᵀu part is -bᵀ·Σ w·u, taken once at the end. */
static void g2p_backward_inside(const Stencil *s, int64_t env, int64_t gx, int64_t gy, int64_t gz, const REAL *gv, const double e[3],
                                const double b[9], REAL *ggv, double g_x[3]) {
    double along_z[3][3], su[3] = {0, 0, 0}; /* [oz][a]: b[a][2]·d_z; Σ w·u */
    for (int oz = 0; oz < 3; oz++)
        for (int a = 0; a < 3; a++) along_z[oz][a] = b[3 * a + 2] * s->d[2][oz];
    for (int ox = 0; ox < 3; ox++)
        for (int oy = 0; oy < 3; oy++) {
            double wx = s->w[0][ox], wy = s->w[1][oy], wxy = wx * wy, sxy = s->slope[0][ox] * wy, wsy = wx * s->slope[1][oy];
            double base[3];
            for (int a = 0; a < 3; a++) base[a] = e[a] + b[3 * a] * s->d[0][ox] + b[3 * a + 1] * s->d[1][oy];
            int64_t node = row(s, env, gx, gy, gz, ox, oy);
            const REAL *U = gv + 3 * node;
            REAL *D = ggv + 3 * node;
            for (int oz = 0; oz < 3; oz++) {
                double wz = s->w[2][oz], w = wxy * wz, value = 0;
                for (int a = 0; a < 3; a++) {
                    double r = base[a] + along_z[oz][a], u = U[3 * oz + a];
                    D[3 * oz + a] += (REAL)(w * r);
                    value += u * r;
                    su[a] += w * u;
                }
                g_x[0] += sxy * wz * value;
                g_x[1] += wsy * wz * value;
                g_x[2] += wxy * s->slope[2][oz] * value;
            }
        }
    for (int q = 0; q < 3; q++) g_x[q] -= b[q] * su[0] + b[3 + q] * su[1] + b[6 + q] * su[2];
}

void g2p_backward(const REAL *x, const REAL *gv, const REAL *dv, const REAL *dc, REAL *ggv, REAL *gx_out, int64_t n, int64_t p,
                  int64_t gx, int64_t gy, int64_t gz, double dx) {
    Stencil s;
    double k = 4.0 / (dx * dx);
    for (int64_t env = 0; env < n; env++)
    for (int64_t i = env * p; i < (env + 1) * p; i++) {
        stencil(x + 3 * i, gx, gy, gz, dx, &s);
        double e[3] = {dv[3 * i], dv[3 * i + 1], dv[3 * i + 2]}, b[9], g_x[3] = {0, 0, 0};
        for (int q = 0; q < 9; q++) b[q] = k * dc[9 * i + q]; /* (4/dx²)·dL/dC */
        if (inside(&s)) {
            g2p_backward_inside(&s, env, gx, gy, gz, gv, e, b, ggv, g_x);
        } else {
            FOR_STENCIL(s, env, gx, gy, gz) {
                int64_t node = NODE(s, env, gx, gy, gz);
                double wx = s.w[0][ox], wy = s.w[1][oy], wz = s.w[2][oz], w = wx * wy * wz;
                double d[3] = {s.d[0][ox], s.d[1][oy], s.d[2][oz]};
                double r[3], u[3], value = 0;
                for (int a = 0; a < 3; a++) { /* r = dL/dv + (4/dx²)·dL/dC·dpos: what the node velocity meets per unit weight */
                    r[a] = e[a] + b[3 * a] * d[0] + b[3 * a + 1] * d[1] + b[3 * a + 2] * d[2];
                    u[a] = gv[3 * node + a];
                    ggv[3 * node + a] += (REAL)(w * r[a]);
                    value += u[a] * r[a];
                }
                double dw[3] = {s.slope[0][ox] * wy * wz, wx * s.slope[1][oy] * wz, wx * wy * s.slope[2][oz]};
                for (int q = 0; q < 3; q++) g_x[q] += dw[q] * value - w * (b[q] * u[0] + b[3 + q] * u[1] + b[6 + q] * u[2]);
            }
        }
        for (int q = 0; q < 3; q++) gx_out[3 * i + q] = (REAL)g_x[q];
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#elif defined(__clang__)
#pragma clang fp contract(on)
#endif

/* ---------------------------------------------------------------- signed SVD of 3x3 matrices */

#define LANES 8
#define SWEEPS 5 /* cyclic Jacobi sweeps; quadratic convergence: 5 reach double round-off on 3x3 */

/* One Jacobi rotation zeroing a[p][q] in each lane (struct of arrays: a[i][j][lane], v[i][j][lane]), branch-free
 * so the lane loops vectorise. */
static inline __attribute__((always_inline)) void jacobi_rotate_lanes(double a[3][3][LANES], double v[3][3][LANES], int p, int q) {
    for (int l = 0; l < LANES; l++) {
        double apq = a[p][q][l];
        int tiny = fabs(apq) < 1e-300;
        double tau = (a[q][q][l] - a[p][p][l]) / (2.0 * (tiny ? 1.0 : apq));
        double t = (tau >= 0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
        t = tiny ? 0.0 : t;
        double c = 1.0 / sqrt(1.0 + t * t), sn = t * c;
        for (int k = 0; k < 3; k++) { /* A <- Jᵀ A J, V <- V J */
            double akp = a[k][p][l], akq = a[k][q][l];
            a[k][p][l] = c * akp - sn * akq;
            a[k][q][l] = sn * akp + c * akq;
        }
        for (int k = 0; k < 3; k++) {
            double apk = a[p][k][l], aqk = a[q][k][l];
            a[p][k][l] = c * apk - sn * aqk;
            a[q][k][l] = sn * apk + c * aqk;
        }
        for (int k = 0; k < 3; k++) {
            double vkp = v[k][p][l], vkq = v[k][q][l];
            v[k][p][l] = c * vkp - sn * vkq;
            v[k][q][l] = sn * vkp + c * vkq;
        }
    }
}

static void cross(const double *a, const double *b, double *out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

/* U, S from F and the sorted eigenvectors V (columns col[c]) of FᵀF, for one matrix. */
static void finish_svd(const REAL *F, double lam[3], double col[3][3], REAL *u_out, REAL *s_out, REAL *v_out) {
    for (int pass = 0; pass < 3; pass++) { /* sort by decreasing eigenvalue */
        int i0 = pass == 1 ? 1 : 0, i1 = i0 + 1;
        if (lam[i1] > lam[i0]) {
            double t = lam[i0];
            lam[i0] = lam[i1];
            lam[i1] = t;
            for (int k = 0; k < 3; k++) {
                t = col[i0][k];
                col[i0][k] = col[i1][k];
                col[i1][k] = t;
            }
        }
    }
    double x01[3];
    cross(col[0], col[1], x01);
    if (x01[0] * col[2][0] + x01[1] * col[2][1] + x01[2] * col[2][2] < 0)
        for (int k = 0; k < 3; k++) col[2][k] = -col[2][k];
    double fv[3][3];
    for (int c = 0; c < 3; c++)
        for (int r = 0; r < 3; r++) fv[c][r] = F[3 * r] * col[c][0] + F[3 * r + 1] * col[c][1] + F[3 * r + 2] * col[c][2];
    double u[3][3];
    double n0 = sqrt(fv[0][0] * fv[0][0] + fv[0][1] * fv[0][1] + fv[0][2] * fv[0][2]);
    for (int k = 0; k < 3; k++) u[0][k] = n0 > 1e-30 ? fv[0][k] / n0 : (k == 0);
    double dot = u[0][0] * fv[1][0] + u[0][1] * fv[1][1] + u[0][2] * fv[1][2];
    for (int k = 0; k < 3; k++) u[1][k] = fv[1][k] - dot * u[0][k];
    double n1 = sqrt(u[1][0] * u[1][0] + u[1][1] * u[1][1] + u[1][2] * u[1][2]);
    if (n1 > 1e-12 * n0 && n1 > 1e-300) {
        for (int k = 0; k < 3; k++) u[1][k] /= n1;
    } else { /* rank < 2: any unit vector orthogonal to u0 */
        double axis[3] = {1, 0, 0}, t[3];
        cross(u[0], axis, t);
        if (t[0] * t[0] + t[1] * t[1] + t[2] * t[2] < 0.25) {
            double other[3] = {0, 1, 0};
            cross(u[0], other, t);
        }
        double nt = sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2]);
        for (int k = 0; k < 3; k++) u[1][k] = t[k] / nt;
    }
    cross(u[0], u[1], u[2]);
    for (int c = 0; c < 3; c++) {
        s_out[c] = (REAL)(u[c][0] * fv[c][0] + u[c][1] * fv[c][1] + u[c][2] * fv[c][2]);
        for (int r = 0; r < 3; r++) {
            u_out[3 * r + c] = (REAL)u[c][r];
            v_out[3 * r + c] = (REAL)col[c][r];
        }
    }
}

/* F = U·diag(S)·Vᵀ with U, V rotations (det +1), |S| decreasing, a reflection in the sign of S[2].
 * Cyclic Jacobi on FᵀF in double (SWEEPS sweeps, LANES matrices at a time), then U's columns from F·v_i
 * (Gram-Schmidt) and u0 × u1. */
void svd3(const REAL *f, REAL *u_out, REAL *s_out, REAL *v_out, int64_t count) {
    double a[3][3][LANES], v[3][3][LANES];
    for (int64_t start = 0; start < count; start += LANES) {
        int lanes = count - start < LANES ? (int)(count - start) : LANES;
        for (int l = 0; l < LANES; l++) {
            const REAL *F = f + 9 * (start + (l < lanes ? l : 0));
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 3; c++) {
                    a[r][c][l] = (double)F[r] * F[c] + (double)F[3 + r] * F[3 + c] + (double)F[6 + r] * F[6 + c];
                    v[r][c][l] = r == c;
                }
        }
        for (int sweep = 0; sweep < SWEEPS; sweep++) {
            jacobi_rotate_lanes(a, v, 0, 1);
            jacobi_rotate_lanes(a, v, 0, 2);
            jacobi_rotate_lanes(a, v, 1, 2);
        }
        for (int l = 0; l < lanes; l++) {
            int64_t i = start + l;
            double lam[3] = {a[0][0][l], a[1][1][l], a[2][2][l]}, col[3][3];
            for (int c = 0; c < 3; c++)
                for (int k = 0; k < 3; k++) col[c][k] = v[k][c][l];
            finish_svd(f + 9 * i, lam, col, u_out + 9 * i, s_out + 3 * i, v_out + 9 * i);
        }
    }
}

/* ---------------------------------------------------------------- batched 3x3 products */

/* out[i] = op(a[i])·op(b[i]) for count row-major 3x3 matrices; op transposes when the flag is set. */
void matmul3(const REAL *a, const REAL *b, REAL *out, int64_t count, int64_t transpose_a, int64_t transpose_b) {
    for (int64_t i = 0; i < count; i++) {
        const REAL *A = a + 9 * i, *B = b + 9 * i;
        REAL *C = out + 9 * i;
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++) {
                double sum = 0;
                for (int k = 0; k < 3; k++)
                    sum += (double)(transpose_a ? A[3 * k + r] : A[3 * r + k]) * (transpose_b ? B[3 * c + k] : B[3 * k + c]);
                C[3 * r + c] = (REAL)sum;
            }
    }
}

/* ---------------------------------------------------------------- plasticine: return mapping and stress */

/* For each trial F: its signed SVD (u, s, v), the von Mises return mapping on the Hencky strain
 * (tphys.mpm.materials, "plasticine") g = flow(s) and its Jacobian jac[k][i] = d g_k / d s_i, the elastic
 * F = U diag(g) Vᵀ and the corotated Kirchhoff stress τ = 2μ (F - U Vᵀ) Fᵀ + λ (J - 1) J I, J = Π g. */
void plasticine_stress(const REAL *f_trial, REAL *f_out, REAL *tau_out, REAL *u_out, REAL *s_out, REAL *v_out, REAL *g_out,
                       REAL *jac_out, int64_t count, double mu, double lam, double yield_stress, double min_stretch) {
    svd3(f_trial, u_out, s_out, v_out, count);
    double limit = yield_stress / (2.0 * mu);
    for (int64_t i = 0; i < count; i++) {
        const REAL *U = u_out + 9 * i, *V = v_out + 9 * i, *S = s_out + 3 * i;
        double eps[3], inv_s[3], dev[3], mean = 0, norm2 = 1e-20;
        for (int k = 0; k < 3; k++) {
            double a = fabs((double)S[k]);
            eps[k] = log(a > min_stretch ? a : min_stretch);
            inv_s[k] = a > min_stretch ? 1.0 / S[k] : 0.0;
            mean += eps[k] / 3.0;
        }
        for (int k = 0; k < 3; k++) {
            dev[k] = eps[k] - mean;
            norm2 += dev[k] * dev[k];
        }
        double norm = sqrt(norm2), excess = norm - limit;
        double g[3], jeps[3][3];
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 3; j++) jeps[k][j] = k == j;
        if (excess > 0) {
            for (int k = 0; k < 3; k++) eps[k] -= excess * dev[k] / norm;
            /* eps' = mean·1 + limit·dev/norm: d/d eps = 11ᵀ/3 + limit·(I/norm - dev devᵀ/norm³)·(I - 11ᵀ/3) */
            double m[3][3];
            for (int k = 0; k < 3; k++)
                for (int j = 0; j < 3; j++) m[k][j] = limit * ((k == j) / norm - dev[k] * dev[j] / (norm * norm2));
            for (int k = 0; k < 3; k++) {
                double row = (m[k][0] + m[k][1] + m[k][2]) / 3.0;
                for (int j = 0; j < 3; j++) jeps[k][j] = 1.0 / 3.0 + m[k][j] - row;
            }
        }
        double J = 1.0;
        for (int k = 0; k < 3; k++) {
            g[k] = exp(eps[k]);
            J *= g[k];
            g_out[3 * i + k] = (REAL)g[k];
        }
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 3; j++) jac_out[9 * i + 3 * k + j] = (REAL)(g[k] * jeps[k][j] * inv_s[j]);
        /* F = U diag(g) Vᵀ; τ = U diag(2μ (g - 1) g + λ (J - 1) J) Uᵀ (since (F - R) Fᵀ = U diag((g - 1) g) Uᵀ) */
        double h[3], pressure = lam * (J - 1.0) * J;
        for (int k = 0; k < 3; k++) h[k] = 2.0 * mu * (g[k] - 1.0) * g[k] + pressure;
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++) {
                double fe = 0, t = 0;
                for (int k = 0; k < 3; k++) {
                    fe += (double)U[3 * r + k] * g[k] * V[3 * c + k];
                    t += (double)U[3 * r + k] * h[k] * U[3 * c + k];
                }
                f_out[9 * i + 3 * r + c] = (REAL)fe;
                tau_out[9 * i + 3 * r + c] = (REAL)t;
            }
    }
}
