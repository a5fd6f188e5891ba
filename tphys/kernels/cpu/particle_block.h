/* What the fused particle step's two C sources share (cpu/particles.c and the per-model sources of
 * tphys/kernels/particle_unrolled.py): the float type and block layout, the block transposes in and out of the torch
 * layout, the vector type and its helpers, and the tension of one spring on vectors. Included, not compiled alone. */
#ifndef TPHYS_PARTICLE_BLOCK_H
#define TPHYS_PARTICLE_BLOCK_H
#include <stdint.h>

#ifndef REAL
#define REAL float
#endif
#ifndef LANES
#define LANES 32 /* envs per block (the loader passes two 64-byte vectors' worth: 32 floats, 16 doubles) */
#endif

#define SQRT(x) (sizeof(REAL) == sizeof(float) ? __builtin_sqrtf(x) : __builtin_sqrt(x))
#define INLINE static inline __attribute__((always_inline))
/* A loop over the lanes of a block, left rolled for the vectorizer (complete unrolling first would leave it
 * straight-line code that it packs across the wrong dimension). */
#define FOR_LANES(e) _Pragma("GCC unroll 1") _Pragma("GCC ivdep") for (int e = 0; e < LANES; e++)
#define AT(p, a) (((p) * D + (a)) * LANES) /* offset of particle p, axis a in a block array [P][D][LANES] */

/* FAST_FLOAT: float blocks run AVX-512 intrinsics (TPHYS_GENERIC: the portable loops everywhere, for tests). */
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
#include <immintrin.h>
#define FAST_FLOAT (sizeof(REAL) == sizeof(float) && LANES % 16 == 0)
#else
#define FAST_FLOAT 0
#endif


/* Spring kinds: the cable value and whether it is damped, known at compile time in each instance of one_spring (a
 * cable value of exactly 0 or 1, or a damping of exactly 0, drops terms that would add or multiply an exact 0 or 1:
 * the same result, fewer instructions). */
enum { SPRING = 0, CABLE = 1, BLEND = 2 };

/* Particle kinds (see update in particles.c): FREE (free = 1), STILL (a handle: free = 0, impulse = 0), ANY. */
enum { FREE = 0, STILL = 1, ANY = 2 };

/* Block arrays from/to the torch layout [N, P, D]: lane e holds env min(first + e, last). A float build with AVX-512
 * moves 16 envs x 16 numbers at a time: 16 row loads (masked at the end of a row), a 16 x 16 transpose in registers
 * (transpose16) and 16 vector stores, and back the same way; otherwise plain loops. */
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
#define GATHERED_COLUMNS 4 /* a last chunk of at most this many columns moves by gathers and scatters */
/* r[0..15] (rows) <- its transpose: 64 shuffles (unpack pairs, pairs of pairs, then 128-bit lanes twice). */
INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));     /* columns 0, 4, 8, 12 of rows 4i..4i+3 */
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)); /* columns 1, 5, 9, 13 */
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d)); /* columns 2, 6, 10, 14 */
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)); /* columns 3, 7, 11, 15 */
    }
    for (int k = 0; k < 4; k++) {
        const __m512 u0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), u1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
        const __m512 u2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88), u3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
        t[k] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        t[k + 8] = _mm512_shuffle_f32x4(u0, u2, 0xdd);
        t[k + 4] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        t[k + 12] = _mm512_shuffle_f32x4(u1, u3, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}
#endif

INLINE void gather(const int D, const REAL *src, REAL *dst, int64_t first, int64_t last, int64_t p_count) {
    const int64_t width = p_count * D;
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
    if (FAST_FLOAT) {
        for (int e0 = 0; e0 < LANES; e0 += 16) {
            const float *row[16];
            for (int e = 0; e < 16; e++) row[e] = (const float *)src + (first + e0 + e < last ? first + e0 + e : last) * width;
            int32_t offset[16] __attribute__((aligned(64))); /* each lane's row, from row[0] */
            for (int e = 0; e < 16; e++) offset[e] = (int32_t)(row[e] - row[0]);
            const __m512i rows = _mm512_load_si512(offset);
            for (int64_t c = 0; c < width; c += 16) {
                const int count = width - c < 16 ? (int)(width - c) : 16;
                if (count <= GATHERED_COLUMNS) { /* a few last columns: a gather each, not a whole transpose */
                    for (int k = 0; k < count; k++)
                        _mm512_store_ps((float *)dst + (c + k) * LANES + e0, _mm512_i32gather_ps(rows, row[0] + c + k, 4));
                    continue;
                }
                const __mmask16 mask = (__mmask16)((1u << count) - 1);
                __m512 r[16];
                for (int e = 0; e < 16; e++) r[e] = _mm512_maskz_loadu_ps(mask, row[e] + c);
                transpose16(r);
                for (int k = 0; k < count; k++) _mm512_store_ps((float *)dst + (c + k) * LANES + e0, r[k]);
            }
        }
        return;
    }
#endif
    FOR_LANES(e) {
        const REAL *row = src + (first + e < last ? first + e : last) * width;
        for (int64_t r = 0; r < width; r++) dst[r * LANES + e] = row[r];
    }
}

/* The way out: lanes e < `lanes` of the block arrays into rows first + e of dst [N, P, D]. */
INLINE void scatter(const int D, const REAL *src, REAL *dst, int64_t first, int64_t lanes, int64_t p_count) {
    const int64_t width = p_count * D;
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
    if (FAST_FLOAT) {
        for (int e0 = 0; e0 < lanes; e0 += 16) {
            const int rows = lanes - e0 < 16 ? (int)(lanes - e0) : 16;
            const __m512i offset = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                      _mm512_set1_epi32((int32_t)width)); /* lane e: row e's offset */
            float *base = (float *)dst + (first + e0) * width;
            for (int64_t c = 0; c < width; c += 16) {
                const int count = width - c < 16 ? (int)(width - c) : 16;
                if (count <= GATHERED_COLUMNS) { /* a few last columns: a scatter each (rows < 16 masked) */
                    for (int k = 0; k < count; k++)
                        _mm512_mask_i32scatter_ps(base + c + k, (__mmask16)((1u << rows) - 1), offset,
                                                  _mm512_load_ps((const float *)src + (c + k) * LANES + e0), 4);
                    continue;
                }
                const __mmask16 mask = (__mmask16)((1u << count) - 1);
                __m512 r[16];
                for (int k = 0; k < 16; k++) r[k] = k < count ? _mm512_load_ps((const float *)src + (c + k) * LANES + e0) : _mm512_setzero_ps();
                transpose16(r);
                for (int e = 0; e < rows; e++) _mm512_mask_storeu_ps((float *)dst + (first + e0 + e) * width + c, mask, r[e]);
            }
        }
        return;
    }
#endif
    for (int e = 0; e < lanes; e++) {
        REAL *row = dst + (first + e) * width;
        for (int64_t r = 0; r < width; r++) row[r] = src[r * LANES + e];
    }
}

/* A block's arrays X, V [P][D][LANES] from x0, v0 [N, P, D] for envs first.. (gather), with each particle's velocity
 * v = free·v + u_h on a handle particle (handle[p] = h: its commanded velocity), else free·v. The commanded velocities
 * are u [N, handles, D], or (u = 0) action [N, inputs] · basis [inputs, handles, D], summed over the inputs in order
 * (torch.mm's values where a column of the basis has one nonzero entry: every payload task's). A lane past the last
 * env takes the last env's. */
INLINE void load_block(const int D, const int64_t P, const REAL *x0, const REAL *v0, const REAL *u, const REAL *action, const REAL *basis,
                       int64_t inputs, const int64_t *handle, const REAL *free_, int64_t handles, REAL *X, REAL *V, int64_t first, int64_t n) {
    gather(D, x0, X, first, n - 1, P);
    gather(D, v0, V, first, n - 1, P);
    for (int64_t p = 0; p < P; p++) {
        const REAL free = free_[p];
        const int64_t hd = handle[p];
        for (int a = 0; a < D; a++) {
            REAL *vp = V + AT(p, a);
            if (hd < 0) /* two loops: the first one vectorises as it is */
                FOR_LANES(e) vp[e] = free * vp[e] + (REAL)0;
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
            else if (FAST_FLOAT) /* 16 envs at a time, by gathers */
                for (int e0 = 0; e0 < LANES; e0 += 16) {
                    const __m512i lane = _mm512_min_epi32(_mm512_add_epi32(_mm512_set1_epi32(e0), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8,
                                                          9, 10, 11, 12, 13, 14, 15)), _mm512_set1_epi32((int32_t)(n - 1 - first)));
                    __m512 commanded;
                    if (u) {
                        commanded = _mm512_i32gather_ps(_mm512_mullo_epi32(lane, _mm512_set1_epi32((int32_t)(handles * D))),
                                                        (const float *)u + (first * handles + hd) * D + a, 4);
                    } else {
                        const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int32_t)inputs));
                        const float *column = (const float *)action + first * inputs, *weights = (const float *)basis + hd * D + a;
                        commanded = _mm512_mul_ps(_mm512_i32gather_ps(rows, column, 4), _mm512_set1_ps(weights[0]));
                        for (int64_t k = 1; k < inputs; k++)
                            commanded = _mm512_fmadd_ps(_mm512_i32gather_ps(rows, column + k, 4), _mm512_set1_ps(weights[k * handles * D]), commanded);
                    }
                    float *row = (float *)vp + e0;
                    _mm512_store_ps(row, _mm512_fmadd_ps(_mm512_set1_ps((float)free), _mm512_load_ps(row), commanded));
                }
#endif
            else
                FOR_LANES(e) {
                    const int64_t env = first + e < n ? first + e : n - 1;
                    REAL commanded;
                    if (u)
                        commanded = u[(env * handles + hd) * D + a];
                    else {
                        commanded = action[env * inputs] * basis[hd * D + a];
                        for (int64_t k = 1; k < inputs; k++) commanded = action[env * inputs + k] * basis[(k * handles + hd) * D + a] + commanded;
                    }
                    vp[e] = free * vp[e] + commanded;
                }
        }
    }
}

#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
#define VBYTES 64
#define VEC_AVX512 1
#else
#define VBYTES 32
#define VEC_AVX512 0
#endif
typedef REAL vec __attribute__((vector_size(VBYTES)));
typedef __typeof__(_Generic((REAL)0, float: (int32_t)0, default: (int64_t)0)) lane_int;
typedef lane_int ivec __attribute__((vector_size(VBYTES)));
#define VW ((int)(VBYTES / sizeof(REAL)))

INLINE vec vload(const REAL *p) {
    vec r;
    __builtin_memcpy(&r, p, sizeof r);
    return r;
}
INLINE void vstore(REAL *p, vec a) { __builtin_memcpy(p, &a, sizeof a); }
INLINE vec vset(REAL a) { /* every lane a (an element loop would be built lane by lane; x - 0 = x, -0 included) */
#if VEC_AVX512
    if (sizeof(REAL) == sizeof(float)) return (vec)_mm512_set1_ps((float)a);
    return (vec)_mm512_set1_pd((double)a);
#else
    return a - (vec){0};
#endif
}
/* a < b ? b : a and a > b ? b : a, lane by lane (a NaN in a passes, like one_spring's comparisons: the intrinsics
 * return their second operand where either is NaN). */
INLINE vec vmax(vec a, vec b) {
#if VEC_AVX512
    if (sizeof(REAL) == sizeof(float)) return (vec)_mm512_max_ps((__m512)b, (__m512)a);
    return (vec)_mm512_max_pd((__m512d)b, (__m512d)a);
#else
    const ivec m = a < b;
    return (vec)((m & (ivec)b) | (~m & (ivec)a));
#endif
}
INLINE vec vmin(vec a, vec b) {
#if VEC_AVX512
    if (sizeof(REAL) == sizeof(float)) return (vec)_mm512_min_ps((__m512)b, (__m512)a);
    return (vec)_mm512_min_pd((__m512d)b, (__m512d)a);
#else
    const ivec m = a > b;
    return (vec)((m & (ivec)b) | (~m & (ivec)a));
#endif
}
INLINE vec vsqrt(vec a) {
#if VEC_AVX512
    if (sizeof(REAL) == sizeof(float)) return (vec)_mm512_sqrt_ps((__m512)a);
    return (vec)_mm512_sqrt_pd((__m512d)a);
#else
    REAL r[VW]; /* a loop over an array (over the vector's own lanes it would stay scalar) */
    __builtin_memcpy(r, &a, sizeof a);
    for (int e = 0; e < VW; e++) r[e] = SQRT(r[e]);
    __builtin_memcpy(&a, r, sizeof a);
    return a;
#endif
}
/* 1/sqrt(a), float with AVX-512: the 14-bit estimate and one Newton step y <- y·(3/2 - (a/2)·y²) (one_spring_avx512);
 * other builds do not call it. */
INLINE vec vrsqrt_refined(vec a) {
#if VEC_AVX512
    if (sizeof(REAL) == sizeof(float)) {
        const __m512 y = _mm512_rsqrt14_ps((__m512)a);
        const __m512 half_xy = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), (__m512)a), y);
        return (vec)_mm512_mul_ps(y, _mm512_fnmadd_ps(half_xy, y, _mm512_set1_ps(1.5f)));
    }
#endif
    return a;
}

/* g[j] = T/|d| of `count` springs of one kind side by side (one_spring's formula in particles.c), j < count (1 or 2, a
 * constant in each inlined call: each statement below is written for every spring in turn, so that the independent
 * chains of two springs interleave in the instruction stream), from d[j] = x_hi - x_lo (D vectors) and, when `damped`,
 * the velocity difference v_hi - v_lo: the D vectors dv[j], or (dv = 0, count 1) read from the block arrays at vh, vl
 * as the damping term needs them (the band path: loads there, late, run ~5 % faster on rope3d than all six at the
 * start). rest .. cable: [count] each. */
#define EACH(j) _Pragma("GCC unroll 2") for (int j = 0; j < count; j++)
INLINE void spring_tensions(const int D, const int kind, const int damped, const int count, const vec (*d)[3], const vec (*dv)[3],
                            const REAL *vh, const REAL *vl, const REAL *rest, const REAL *stiffness, const REAL *damping,
                            const REAL *cable, REAL inv_width, REAL half_width, vec *g) {
#ifdef TPHYS_PROFILE_NO_SPRING_MATH /* profiling builds only (benchmarks/particle_split.py): the loop without the spring math */
    EACH(j) g[j] = d[j][0] * rest[j];
    return;
#endif
    vec length2[2], inverse[2], stretch[2];
    EACH(j) length2[j] = d[j][0] * d[j][0];
    for (int a = 1; a < D; a++) EACH(j) length2[j] = d[j][a] * d[j][a] + length2[j];
    if (VEC_AVX512 && sizeof(REAL) == sizeof(float)) { /* one_spring_avx512's 1/|d| (|d| >= 1e-12; a NaN passes) */
        EACH(j) length2[j] = vmax(length2[j], vset((REAL)1e-24));
        EACH(j) inverse[j] = vrsqrt_refined(length2[j]);
        EACH(j) stretch[j] = length2[j] * inverse[j] - rest[j];
    } else {
        EACH(j) {
            const vec length = vmax(vsqrt(length2[j]), vset((REAL)1e-12));
            inverse[j] = vset(1) / length;
            stretch[j] = length - rest[j];
        }
    }
    if (kind == SPRING && !damped) { /* k·(l - rest)/l as k - (k·rest)·(1/l): one multiply-add, not three operations */
        EACH(j) g[j] = stiffness[j] - (stiffness[j] * rest[j]) * inverse[j];
        return;
    }
    vec elastic[2], taut[2], tau[2], tau2[2];
    EACH(j) elastic[j] = stretch[j], taut[j] = vset(1), tau[j] = vset(0), tau2[j] = vset(0);
    if (kind != SPRING) {
        EACH(j) tau[j] = vmin(vmax(stretch[j] * inv_width, vset(0)), vset(1));
        EACH(j) tau2[j] = tau[j] * tau[j];
        EACH(j) {
            const vec ramp = tau[j] * (stretch[j] - half_width * tau[j]);
            const vec step = tau2[j] * (3 - 2 * tau[j]);
            elastic[j] = kind == CABLE ? ramp : stretch[j] + cable[j] * (ramp - stretch[j]);
            taut[j] = kind == CABLE ? step : 1 + cable[j] * (step - 1);
        }
    }
    vec tension[2];
    EACH(j) tension[j] = stiffness[j] * elastic[j];
    if (damped) {
        vec dot[2];
        EACH(j) dot[j] = (dv ? dv[j][0] : vload(vh) - vload(vl)) * d[j][0];
        for (int a = 1; a < D; a++) EACH(j) dot[j] = (dv ? dv[j][a] : vload(vh + a * LANES) - vload(vl + a * LANES)) * d[j][a] + dot[j];
        /* a cable's c·taut = c·tau²(3 - 2 tau) as tau²·(3c - 2c·tau): one operation fewer */
        EACH(j) {
            const vec damped_taut = kind == CABLE ? (tau2[j] * ((3 * damping[j]) - (2 * damping[j]) * tau[j])) : damping[j] * taut[j];
            tension[j] = damped_taut * (dot[j] * inverse[j]) + tension[j];
        }
    }
    EACH(j) g[j] = tension[j] * inverse[j];
}
#undef EACH

/* spring_tensions of one spring. */
INLINE vec spring_tension(const int D, const int kind, const int damped, const vec *d, const vec *dv, const REAL *vh, const REAL *vl,
                          REAL rest, REAL stiffness, REAL damping, REAL cable, REAL inv_width, REAL half_width) {
    vec g;
    spring_tensions(D, kind, damped, 1, (const vec (*)[3])d, (const vec (*)[3])dv, vh, vl, &rest, &stiffness, &damping, &cable, inv_width,
                    half_width, &g);
    return g;
}

#endif
