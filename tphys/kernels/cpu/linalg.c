/* Batched dense symmetric positive definite solves for the rigid engine's H·qdd = τ - C (tphys.kernels.linalg).

   x_b = H_b⁻¹ r_b for b = 0..batch-1: H [batch, d, d] (only the lower triangle is read), r and x [batch, d].
   Cholesky H = L·Lᵀ, then L·y = r and Lᵀ·x = y, accumulated in double for either REAL. A matrix that is not
   positive definite (a pivot <= 0 or not finite) gives x_b = NaN, as torch.linalg.cholesky_ex + cholesky_solve
   give NaN there; the caller (RigidEnv) terminates such envs. One thread; d is small (<= ~40 dofs), so one
   matrix's factor lives on the stack.
*/
#include <math.h>
#include <stdint.h>

#ifndef REAL
#define REAL double
#endif

static void solve_one(const REAL *h, const REAL *r, REAL *x, int64_t d, double *l) {
    for (int64_t j = 0; j < d; ++j) {
        double pivot = (double)h[j * d + j];
        for (int64_t k = 0; k < j; ++k) pivot -= l[j * d + k] * l[j * d + k];
        if (!(pivot > 0.0) || !isfinite(pivot)) {
            for (int64_t i = 0; i < d; ++i) x[i] = (REAL)NAN;
            return;
        }
        double diag = sqrt(pivot);
        l[j * d + j] = diag;
        for (int64_t i = j + 1; i < d; ++i) {
            double s = (double)h[i * d + j];
            for (int64_t k = 0; k < j; ++k) s -= l[i * d + k] * l[j * d + k];
            l[i * d + j] = s / diag;
        }
    }
    double y[d];
    for (int64_t i = 0; i < d; ++i) {
        double s = (double)r[i];
        for (int64_t k = 0; k < i; ++k) s -= l[i * d + k] * y[k];
        y[i] = s / l[i * d + i];
    }
    for (int64_t i = d - 1; i >= 0; --i) {
        double s = y[i];
        for (int64_t k = i + 1; k < d; ++k) s -= l[k * d + i] * y[k];
        y[i] = s / l[i * d + i];
    }
    for (int64_t i = 0; i < d; ++i) x[i] = (REAL)y[i];
}

void spd_solve(const REAL *h, const REAL *r, REAL *x, int64_t batch, int64_t d) {
    double l[d * d];
    for (int64_t b = 0; b < batch; ++b) solve_one(h + b * d * d, r + b * d, x + b * d, d, l);
}
