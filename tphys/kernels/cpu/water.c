/* The particle-side passes of a water MLS-MPM substep around the transfers, forward and backward (tphys/mpm/water.py).
 *
 * Water's elastic F is c·I with c = cbrt(det F_trial) and its Kirchhoff stress τ = K (J - 1) J·I with J = c·(c·c)
 * (tphys.mpm.materials._water_stress, K the bulk modulus). A substep is prologue -> P2G -> grid -> G2P -> epilogue:
 *
 *   prologue   local = x - origin·dx (positions in the grid window's frame), q = m·v, A = m·C + s·τ (s = -dt·V·4/dx²),
 *              and c: one pass over the particles in place of the stress kernel and four tensor ops;
 *   epilogue   x' = x + dt·v', F' = (I + dt·C')·c (materials: water's advect is a scaling).
 *
 * and their adjoints (dL/d of every input from dL/d of every output). Arithmetic in double for either REAL; layouts
 * row-major and contiguous: x, v, local, q [N, P, 3]; C, F, A [N, P, 3, 3]; m, s [P]; c [N, P]; origin [N, 3] int64.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif

/* cbrt for a in [2^-1000, 2^1000] (others: libm's): an exponent-thirding first guess (Kahan's constant, within 3.5 %), two
 * Halley steps and a Newton step: within 7e-16 relative of libm's cbrt (1e7 draws over e^±20, float32 roundings all equal)
 * at 8 ns in place of 26 (glibc's cbrt: frexp / ldexp and a division chain; 4 % of a fluid_move fwd+bwd at N = 1). */
static inline double cube_root(double a) {
    if (!(a >= 0x1p-1000 && a <= 0x1p1000)) return cbrt(a);
    uint64_t bits;
    memcpy(&bits, &a, sizeof bits);
    bits = bits / 3 + 0x2A9F7893782DA1CEull;
    double y;
    memcpy(&y, &bits, sizeof y);
    for (int t = 0; t < 2; t++) {
        double y3 = y * y * y;
        y = y * (y3 + 2.0 * a) / (2.0 * y3 + a);
    }
    double y2 = y * y;
    return y - (y2 * y - a) / (3.0 * y2);
}

static double det(const REAL *F) {
    double a = F[0], b = F[1], c = F[2], d = F[3], e = F[4], f = F[5], g = F[6], h = F[7], i = F[8];
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
}

void water_prologue(const REAL *x, const REAL *v, const REAL *C, const REAL *F, const REAL *m, const REAL *s, const int64_t *origin,
                    REAL *local, REAL *q, REAL *A, REAL *c_out, int64_t n, int64_t p, double dx, double bulk) {
    for (int64_t env = 0; env < n; env++) {
        double shift[3] = {origin[3 * env] * dx, origin[3 * env + 1] * dx, origin[3 * env + 2] * dx};
        for (int64_t k = env * p; k < (env + 1) * p; k++) {
            double mass = m[k - env * p], c = cube_root(det(F + 9 * k)), J = c * (c * c), diag = s[k - env * p] * (bulk * (J - 1.0) * J);
            for (int r = 0; r < 3; r++) {
                local[3 * k + r] = (REAL)((double)x[3 * k + r] - shift[r]);
                q[3 * k + r] = (REAL)(mass * v[3 * k + r]);
                for (int col = 0; col < 3; col++)
                    A[9 * k + 3 * r + col] = (REAL)(mass * C[9 * k + 3 * r + col] + (r == col ? diag : 0.0));
            }
            c_out[k] = (REAL)c;
        }
    }
}

/* dL/dx (= g_x + g_local), dL/dv = m·dL/dq, dL/dC = m·dL/dA and dL/dF_trial through c = cbrt(det F_trial) from
 * dL/dc (g_c) and dL/dτ = s·tr(dL/dA)... on the diagonal: dL/dc += K (2J - 1)·3c²·s·tr(dL/dA), dc/dF = cof(F)/(3c²). */
void water_prologue_backward(const REAL *F, const REAL *m, const REAL *s, const REAL *g_x, const REAL *g_local, const REAL *g_local2,
                             const REAL *g_q, const REAL *g_A, const REAL *g_c, REAL *out_x, REAL *out_v, REAL *out_C, REAL *out_F,
                             int64_t n, int64_t p, double bulk) {
    for (int64_t env = 0; env < n; env++)
        for (int64_t k = env * p; k < (env + 1) * p; k++) {
            const REAL *f = F + 9 * k, *ga = g_A + 9 * k;
            double mass = m[k - env * p], c = cube_root(det(f)), c2 = c * c, J = c * c2;
            for (int r = 0; r < 3; r++) {
                out_x[3 * k + r] = (REAL)((double)g_x[3 * k + r] + (double)g_local[3 * k + r] + (double)g_local2[3 * k + r]);
                out_v[3 * k + r] = (REAL)(mass * g_q[3 * k + r]);
            }
            for (int j = 0; j < 9; j++) out_C[9 * k + j] = (REAL)(mass * ga[j]);
            double trace = (double)ga[0] + (double)ga[4] + (double)ga[8];
            double grad_c = (double)g_c[k] + bulk * (2.0 * J - 1.0) * (s[k - env * p] * trace) * 3.0 * c2;
            double scale = grad_c / (3.0 * c2);
            for (int r = 0; r < 3; r++) {
                int r1 = (r + 1) % 3, r2 = (r + 2) % 3;
                for (int col = 0; col < 3; col++) {
                    int a = (col + 1) % 3, b = (col + 2) % 3;
                    out_F[9 * k + 3 * r + col] = (REAL)(scale * ((double)f[3 * r1 + a] * f[3 * r2 + b] - (double)f[3 * r2 + a] * f[3 * r1 + b]));
                }
            }
        }
}

void water_epilogue(const REAL *x, const REAL *v, const REAL *C, const REAL *c, REAL *x_out, REAL *F_out, int64_t count, double dt) {
    for (int64_t k = 0; k < count; k++) {
        double scale = c[k];
        for (int r = 0; r < 3; r++) {
            x_out[3 * k + r] = (REAL)((double)x[3 * k + r] + dt * v[3 * k + r]);
            for (int col = 0; col < 3; col++)
                F_out[9 * k + 3 * r + col] = (REAL)(((r == col ? 1.0 : 0.0) + dt * C[9 * k + 3 * r + col]) * scale);
        }
    }
}

/* From dL/dx', dL/dv', dL/dC', dL/dF' (absent ones passed as zeros): dL/dv (= dL/dv' + dt·dL/dx'), dL/dC
 * (= dL/dC' + dt·c·dL/dF') into g_v, g_C, and dL/dc = Σ (I + dt·C')·dL/dF' into g_c. */
void water_epilogue_backward(const REAL *C, const REAL *c, const REAL *g_x, const REAL *g_v, const REAL *g_C, const REAL *g_F, REAL *out_v,
                             REAL *out_C, REAL *out_c, int64_t count, double dt) {
    for (int64_t k = 0; k < count; k++) {
        double scale = c[k], sum = 0;
        for (int r = 0; r < 3; r++) out_v[3 * k + r] = (REAL)((double)g_v[3 * k + r] + dt * g_x[3 * k + r]);
        for (int j = 0; j < 9; j++) {
            double gf = g_F[9 * k + j];
            out_C[9 * k + j] = (REAL)((double)g_C[9 * k + j] + dt * scale * gf);
            sum += ((j % 4 == 0 ? 1.0 : 0.0) + dt * C[9 * k + j]) * gf;
        }
        out_c[k] = (REAL)sum;
    }
}
