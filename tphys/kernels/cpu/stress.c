/* The backward of plasticine's fused stress (tphys.mpm.materials._PlasticineStress) for CPU: one loop over particles;
 * and water's stress both ways (_WaterStress, at the end of the file).
 *
 * The C twin of _PlasticineStress's torch backward (materials.plasticine_stress_vjp_torch): from the forward's saved
 * F = U·diag(g)·Vᵀ, the signed SVD (U, s, V) of F_trial, the stretches g = flow(s) and their Jacobian jac [k, i] =
 * dg_k/ds_i, and the incoming dL/dF, dL/dτ (either may be absent: has_f, has_tau), it gives dL/dF_trial:
 *
 *   dF  = dL/dF + 2μ ((G + Gᵀ) F - Gᵀ R) + λ (2J - 1) tr(G) cof F,   dR = -2μ G F   (G = dL/dτ, R = U Vᵀ, J = Π g)
 *   dL/dF_trial = svd.spectral_vjp(U, s, V, [(g, jac, dF), (1, 0, dR)], eps)
 *
 * spectral_vjp: M = Uᵀ dX V per term; off the diagonal sym(M)·(g_i - g_j)/(s_i - s_j) (d g_i/ds_i - d g_i/ds_j where
 * |s_i - s_j| < eps) + skew(M)·(g_i + g_j)/(s_i + s_j) (the sum kept at least eps away from 0); on the diagonal
 * Σ_k M_kk d g_k/ds_i; then U·Z·Vᵀ. Arithmetic in double for either REAL. Layouts: [count, 3, 3] matrices, [count, 3]
 * vectors, row-major.
 */
#include <math.h>
#include <stdint.h>

#ifndef REAL
#define REAL double
#endif

static void mul(const double a[3][3], const double b[3][3], double c[3][3], int ta, int tb) {
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double x = 0;
            for (int k = 0; k < 3; k++) x += (ta ? a[k][i] : a[i][k]) * (tb ? b[j][k] : b[k][j]);
            c[i][j] = x;
        }
}

static void load(const REAL *p, double m[3][3]) {
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) m[i][j] = (double)p[3 * i + j];
}

void plasticine_stress_backward(const REAL *f, const REAL *u, const REAL *s, const REAL *v, const REAL *g, const REAL *jac, const REAL *grad_f,
                                const REAL *grad_tau, REAL *out, int64_t count, double mu, double lam, double eps, int64_t has_f,
                                int64_t has_tau) {
    for (int64_t p = 0; p < count; p++) {
        double F[3][3], U[3][3], V[3][3], J[3][3], dF[3][3] = {{0}}, dR[3][3] = {{0}}, S[3], gk[3];
        load(f + 9 * p, F);
        load(u + 9 * p, U);
        load(v + 9 * p, V);
        load(jac + 9 * p, J);
        for (int k = 0; k < 3; k++) S[k] = (double)s[3 * p + k], gk[k] = (double)g[3 * p + k];
        if (has_f) load(grad_f + 9 * p, dF);
        if (has_tau) {
            double G[3][3], GGt[3][3], R[3][3], A[3][3], B[3][3], C[3][3];
            load(grad_tau + 9 * p, G);
            double det = gk[0] * gk[1] * gk[2], trace = G[0][0] + G[1][1] + G[2][2];
            mul(U, V, R, 0, 1);
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) GGt[i][j] = G[i][j] + G[j][i];
            mul(GGt, F, A, 0, 0);
            mul(G, R, B, 1, 0);
            mul(G, F, C, 0, 0);
            double cof[3][3]; /* columns: F's other two columns crossed */
            for (int c = 0; c < 3; c++) {
                int a = (c + 1) % 3, b = (c + 2) % 3;
                for (int r = 0; r < 3; r++) {
                    int r1 = (r + 1) % 3, r2 = (r + 2) % 3;
                    cof[r][c] = F[r1][a] * F[r2][b] - F[r2][a] * F[r1][b];
                }
            }
            double scale = lam * (2 * det - 1) * trace;
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    dF[i][j] += 2 * mu * (A[i][j] - B[i][j]) + scale * cof[i][j];
                    dR[i][j] = -2 * mu * C[i][j];
                }
        }
        double M1[3][3], M2[3][3], T[3][3], Z[3][3], W[3][3];
        mul(U, dF, T, 1, 0);
        mul(T, V, M1, 0, 0);
        mul(U, dR, T, 1, 0);
        mul(T, V, M2, 0, 0);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                if (i == j) {
                    Z[i][i] = M1[0][0] * J[0][i] + M1[1][1] * J[1][i] + M1[2][2] * J[2][i];
                    continue;
                }
                double gap = S[i] - S[j], total = S[i] + S[j];
                total = total >= 0 ? (total > eps ? total : eps) : (total < -eps ? total : -eps);
                double minus = fabs(gap) < eps ? J[i][i] - J[i][j] : (gk[i] - gk[j]) / gap;
                double plus = (gk[i] + gk[j]) / total;
                Z[i][j] = 0.5 * (M1[i][j] + M1[j][i]) * minus + 0.5 * (M1[i][j] - M1[j][i]) * plus
                          + 0.5 * (M2[i][j] - M2[j][i]) * (2.0 / total);
            }
        mul(U, Z, T, 0, 0);
        mul(T, V, W, 0, 1);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) out[9 * p + 3 * i + j] = (REAL)W[i][j];
    }
}

/* ---------------------------------------------------------------- water: volume-only stress, forward and backward */

static double det(const double F[3][3]) {
    return F[0][0] * (F[1][1] * F[2][2] - F[1][2] * F[2][1]) - F[0][1] * (F[1][0] * F[2][2] - F[1][2] * F[2][0])
           + F[0][2] * (F[1][0] * F[2][1] - F[1][1] * F[2][0]);
}

/* Water (tphys.mpm.materials._water_stress): from j = det F_trial, F = c·I with c = cbrt(j) and τ = K (J - 1) J·I with
 * J = c·(c·c) (the determinant of F), K = bulk. */
void water_stress(const REAL *f_trial, REAL *f_out, REAL *tau_out, int64_t count, double bulk) {
    for (int64_t p = 0; p < count; p++) {
        double F[3][3];
        load(f_trial + 9 * p, F);
        double c = cbrt(det(F)), J = c * (c * c), pressure = bulk * (J - 1.0) * J;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                f_out[9 * p + 3 * i + j] = (REAL)(i == j ? c : 0.0);
                tau_out[9 * p + 3 * i + j] = (REAL)(i == j ? pressure : 0.0);
            }
    }
}

/* dL/dF_trial of water_stress from dL/dF, dL/dτ (either may be absent): dL/dc = tr(dL/dF) + K (2J - 1) tr(dL/dτ)·3c²,
 * dc/dj = 1/(3c²), dj/dF_trial = cof(F_trial). */
void water_stress_backward(const REAL *f_trial, const REAL *grad_f, const REAL *grad_tau, REAL *out, int64_t count, double bulk,
                           int64_t has_f, int64_t has_tau) {
    for (int64_t p = 0; p < count; p++) {
        double F[3][3];
        load(f_trial + 9 * p, F);
        double c = cbrt(det(F)), c2 = c * c, J = c * c2, grad_c = 0;
        if (has_f) grad_c += (double)grad_f[9 * p] + (double)grad_f[9 * p + 4] + (double)grad_f[9 * p + 8];
        if (has_tau)
            grad_c += bulk * (2.0 * J - 1.0) * ((double)grad_tau[9 * p] + (double)grad_tau[9 * p + 4] + (double)grad_tau[9 * p + 8]) * 3.0 * c2;
        double scale = grad_c / (3.0 * c2);
        for (int r = 0; r < 3; r++) {
            int r1 = (r + 1) % 3, r2 = (r + 2) % 3;
            for (int col = 0; col < 3; col++) {
                int a = (col + 1) % 3, b = (col + 2) % 3;
                out[9 * p + 3 * r + col] = (REAL)(scale * (F[r1][a] * F[r2][b] - F[r2][a] * F[r1][b]));
            }
        }
    }
}
