/* The fused forward of tphys.particles.semi_implicit_euler for CPU: every substep of one step in one call.
 *
 * The C twin of the torch path (tphys/particles/integrators.py with forces.total_forces and the fused spring
 * node spring_vjp._SpringForce), forward only, for models of point masses, kinematic handles, springs and cables
 * with axial damping, gravity and linear drag (no membrane, tetrahedra or ground: the caller checks). Built by
 * tphys/kernels/particle_kernels.py with the system C compiler once per REAL type (-DREAL=float or double) and
 * called through ctypes on contiguous tensors. Single-threaded.
 *
 * Layout. Inputs and outputs are the torch layout, x, v [N, P, D] (row-major). Envs are taken LANES at a time
 * (the loader passes 32 for float, 16 for double: two 64-byte vectors): a block's positions and velocities are
 * transposed into arrays [P][D][LANES] on the stack (env index innermost, a few KB: L1), all substeps run there,
 * and the block is transposed back (float with AVX-512: 16 x 16 transposes in registers, transpose16). A partial
 * last block repeats its last env in the spare lanes (their results are not stored). Two paths run the substeps,
 * chosen by the caller (particle_kernels.path) and checked here (particle_step returns the one it took):
 *   band     springs joining particles at most MAX_BAND apart in index (every payload env: chains): one pass over
 *            the particles a substep, spring forces summed in registers, each particle updated in place once its
 *            last spring is done (band_substep); vectors of 16 floats / 8 doubles with AVX-512, else 32 bytes
 *   general  any springs: every spring into a force array F [P][D][LANES], then every particle (one_spring, update)
 * Every arithmetic loop runs over the envs of a block with the same (particle, spring) indices: one vector element
 * per env. Float with AVX-512 takes 1/|d| from the hardware estimate refined by a Newton step (one_spring_avx512,
 * vrsqrt_refined); double, and any CPU without AVX-512 (or -DTPHYS_GENERIC: the portable code, for tests), a square
 * root and a division.
 *
 * Per substep of length h (the torch path's order of operations, so that results agree to round-off):
 *     f_p  = (m_p·g - drag·v_p) + sum over springs of their force on p
 *     v_p += impulse_p · (free_p · f_p)       impulse_p = h·free_p / m_p (0 on handles: they keep v = u)
 *     x_p += h · v_p
 * A spring s from particle i to j (d = x_j - x_i, l = max(|d|, 1e-12), stretch e = l - rest):
 *     tau = clamp(e / w, 0, 1), ramp = tau·(e - w·tau/2)                  (forces.smooth_ramp, slack width w)
 *     elastic = e + cable·(ramp - e), taut = 1 + cable·(tau²(3 - 2 tau) - 1)
 *     T = k·elastic + (c·taut)·(d/l · (v_j - v_i))       f_i += T·d/l, f_j -= T·d/l
 * Before the substeps, v_p = free_p·v_p + u_h on each handle p = handle h (the commanded velocity), else free_p·v_p.
 * Terms that add or multiply an exact 0 or 1 (a cable value of 0 or 1, no damping, no drag, free = 1, a handle's
 * zero impulse) are left out where the data says so: the same results for finite values, fewer instructions.
 */
#include "particle_block.h"

typedef struct {
    const int64_t *first, *second;                 /* [S] particle i (incidence -1) and j (+1) of each spring */
    const REAL *rest, *stiffness, *damping, *cable; /* [S] m, N/m, N·s/m, 0 or 1 (tension only) */
    REAL width;                                     /* m, cables' slack width */
    int64_t count;
} Springs;

typedef struct {
    const int64_t *handle;  /* [P] index of the handle particle p is, or -1 */
    const REAL *free;       /* [P] 1 on free particles, 0 on handles */
    const REAL *impulse;    /* [P] h·free/m, s/kg */
    const REAL *weight;     /* [P, D] m·g, N */
    REAL drag;              /* N·s/m */
    int64_t particles, handles;
} Particles;


/* Adds spring k's force to F (block arrays [P][D][LANES]); oi, oj: offsets AT(i, 0), AT(j, 0) of its particles. */
INLINE void one_spring(const int D, const int kind, const int damped, const Springs *s, int64_t k, int64_t oi, int64_t oj,
                       const REAL *restrict X, const REAL *restrict V, REAL *restrict F) {
    const REAL half_width = (REAL)0.5 * s->width, inv_width = (REAL)1 / s->width;
    const REAL *xi = X + oi, *xj = X + oj, *vi = V + oi, *vj = V + oj;
    REAL *restrict fi = F + oi;
    REAL *restrict fj = F + oj;
    const REAL rest = s->rest[k], stiffness = s->stiffness[k], damping = s->damping[k], cable = s->cable[k];
    FOR_LANES(e) {
        REAL d[3], length2 = 0, dot = 0;
        for (int a = 0; a < D; a++) {
            d[a] = xj[a * LANES + e] - xi[a * LANES + e];
            length2 += d[a] * d[a];
        }
        if (damped)
            for (int a = 0; a < D; a++) dot += (vj[a * LANES + e] - vi[a * LANES + e]) * d[a];
        REAL length = SQRT(length2);
        length = length < (REAL)1e-12 ? (REAL)1e-12 : length;
        const REAL inverse = (REAL)1 / length;
        const REAL stretch = length - rest;
        REAL elastic = stretch, taut = 1;
        if (kind != SPRING) {
            REAL tau = stretch * inv_width;
            tau = tau < 0 ? 0 : tau;
            tau = tau > 1 ? 1 : tau;
            const REAL ramp = tau * (stretch - half_width * tau);
            const REAL step = tau * tau * (3 - 2 * tau);
            elastic = kind == CABLE ? ramp : stretch + cable * (ramp - stretch);
            taut = kind == CABLE ? step : 1 + cable * (step - 1);
        }
        const REAL tension = damped ? stiffness * elastic + (damping * taut) * (dot * inverse) : stiffness * elastic;
        const REAL g = tension * inverse;
        for (int a = 0; a < D; a++) {
            fi[a * LANES + e] += g * d[a];
            fj[a * LANES + e] -= g * d[a];
        }
    }
}

/* one_spring for float blocks with AVX-512 (16 envs a vector): the same formula in intrinsics, with 1/|d| from the
 * hardware approximation (relative error < 2^-14) refined by one Newton step y <- y·(3/2 - |d|²·y²/2), within a few
 * ulps of the rounded 1/sqrt; it replaces a square root and a division, the slowest vector instructions, and gives
 * results as close to the torch path as float32 round-off already allows (tests/particles/test_fused_step.py). The
 * compiler's own vectorisation of one_spring runs about 1.5x the instructions (masked clamps, spills). */
#if defined(__AVX512F__) && !defined(TPHYS_GENERIC)
INLINE void one_spring_avx512(const int D, const int kind, const int damped, const Springs *s, int64_t k, int64_t oi, int64_t oj,
                              const float *restrict X, const float *restrict V, float *restrict F) {
    const __m512 one = _mm512_set1_ps(1.0f), rest = _mm512_set1_ps((float)s->rest[k]);
    const __m512 stiffness = _mm512_set1_ps((float)s->stiffness[k]), damping = _mm512_set1_ps((float)s->damping[k]);
    const __m512 cable = _mm512_set1_ps((float)s->cable[k]), inv_width = _mm512_set1_ps(1.0f / (float)s->width);
    const __m512 half_width = _mm512_set1_ps(0.5f * (float)s->width);
    _Pragma("GCC unroll 4") for (int e = 0; e < LANES; e += 16) {
        __m512 d[3], length2;
        for (int a = 0; a < D; a++)
            d[a] = _mm512_sub_ps(_mm512_load_ps(X + oj + a * LANES + e), _mm512_load_ps(X + oi + a * LANES + e));
        length2 = _mm512_mul_ps(d[0], d[0]);
        for (int a = 1; a < D; a++) length2 = _mm512_fmadd_ps(d[a], d[a], length2);
        length2 = _mm512_max_ps(_mm512_set1_ps(1e-24f), length2); /* |d| >= 1e-12; a NaN passes */
        __m512 inverse = _mm512_rsqrt14_ps(length2);
        const __m512 half_xy = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), length2), inverse);
        inverse = _mm512_mul_ps(inverse, _mm512_fnmadd_ps(half_xy, inverse, _mm512_set1_ps(1.5f)));
        const __m512 stretch = _mm512_sub_ps(_mm512_mul_ps(length2, inverse), rest);
        __m512 elastic = stretch, taut = one;
        if (kind != SPRING) {
            __m512 tau = _mm512_mul_ps(stretch, inv_width);
            tau = _mm512_min_ps(one, _mm512_max_ps(_mm512_setzero_ps(), tau)); /* clamp to [0, 1]; a NaN passes */
            const __m512 ramp = _mm512_mul_ps(tau, _mm512_fnmadd_ps(half_width, tau, stretch));
            const __m512 step = _mm512_mul_ps(_mm512_mul_ps(tau, tau), _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), tau, _mm512_set1_ps(3.0f)));
            elastic = kind == CABLE ? ramp : _mm512_fmadd_ps(cable, _mm512_sub_ps(ramp, stretch), stretch);
            taut = kind == CABLE ? step : _mm512_fmadd_ps(cable, _mm512_sub_ps(step, one), one);
        }
        __m512 tension = _mm512_mul_ps(stiffness, elastic);
        if (damped) {
            __m512 dot = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(V + oj + e), _mm512_load_ps(V + oi + e)), d[0]);
            for (int a = 1; a < D; a++)
                dot = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_load_ps(V + oj + a * LANES + e), _mm512_load_ps(V + oi + a * LANES + e)), d[a], dot);
            tension = _mm512_fmadd_ps(_mm512_mul_ps(damping, taut), _mm512_mul_ps(dot, inverse), tension);
        }
        const __m512 g = _mm512_mul_ps(tension, inverse);
        for (int a = 0; a < D; a++) {
            float *fi = F + oi + a * LANES + e, *fj = F + oj + a * LANES + e;
            _mm512_store_ps(fi, _mm512_fmadd_ps(g, d[a], _mm512_load_ps(fi)));
            _mm512_store_ps(fj, _mm512_fnmadd_ps(g, d[a], _mm512_load_ps(fj)));
        }
    }
}
#else
#define one_spring_avx512(D, kind, damped, s, k, oi, oj, X, V, F) ((void)0)
#endif

/* The fastest one_spring for this build. */
INLINE void spring(const int D, const int kind, const int damped, const Springs *s, int64_t k, int64_t oi, int64_t oj,
                   const REAL *restrict X, const REAL *restrict V, REAL *restrict F) {
    if (FAST_FLOAT)
        one_spring_avx512(D, kind, damped, s, k, oi, oj, (const float *)X, (const float *)V, (float *)F);
    else
        one_spring(D, kind, damped, s, k, oi, oj, X, V, F);
}

/* Adds every spring's force to F; kind[k] = 2·(cable: SPRING, CABLE or BLEND) + damped. */
INLINE void spring_forces(const int D, const Springs *s, const int *kind, const int64_t *oi, const int64_t *oj, const REAL *restrict X,
                          const REAL *restrict V, REAL *restrict F) {
    for (int64_t k = 0; k < s->count; k++) {
        switch (kind[k]) {
        case 2 * SPRING: spring(D, SPRING, 0, s, k, oi[k], oj[k], X, V, F); break;
        case 2 * SPRING + 1: spring(D, SPRING, 1, s, k, oi[k], oj[k], X, V, F); break;
        case 2 * CABLE: spring(D, CABLE, 0, s, k, oi[k], oj[k], X, V, F); break;
        case 2 * CABLE + 1: spring(D, CABLE, 1, s, k, oi[k], oj[k], X, V, F); break;
        case 2 * BLEND: spring(D, BLEND, 0, s, k, oi[k], oj[k], X, V, F); break;
        default: spring(D, BLEND, 1, s, k, oi[k], oj[k], X, V, F); break;
        }
    }
}

/* One particle axis of a block through a substep: v += impulse·(free·f), x += h·v with f = (m·g - drag·v) + springs;
 * the spring sum f is read and reset to 0 for the next substep. Like the spring kinds, `kind` drops terms that are exact
 * no-ops: FREE (free = 1) multiplies by 1, STILL (free = 0 and impulse = 0: a handle) adds 0·f to v, and `dragged`
 * = 0 (drag = 0) subtracts 0·v (for finite f and v: the same result). */
/* enum FREE, STILL, ANY: particle_block.h */

INLINE void update(const int kind, const int dragged, REAL *restrict x, REAL *restrict v, REAL *restrict f, REAL weight, REAL drag,
                   REAL impulse, REAL free, REAL h) {
    FOR_LANES(e) {
        REAL velocity = v[e];
        if (kind != STILL) {
            const REAL force = (dragged ? weight - drag * velocity : weight) + f[e];
            velocity = velocity + impulse * (kind == FREE ? force : force * free);
        }
        f[e] = 0;
        v[e] = velocity;
        x[e] = x[e] + h * velocity;
    }
}

INLINE void update_any(REAL *restrict x, REAL *restrict v, REAL *restrict f, REAL weight, REAL drag, REAL impulse, REAL free, REAL h) {
    const int kind = free == 1 ? FREE : free == 0 && impulse == 0 ? STILL : ANY;
    if (drag == 0) {
        if (kind == FREE) update(FREE, 0, x, v, f, weight, drag, impulse, free, h);
        else if (kind == STILL) update(STILL, 0, x, v, f, weight, drag, impulse, free, h);
        else update(ANY, 0, x, v, f, weight, drag, impulse, free, h);
    } else {
        if (kind == FREE) update(FREE, 1, x, v, f, weight, drag, impulse, free, h);
        else if (kind == STILL) update(STILL, 1, x, v, f, weight, drag, impulse, free, h);
        else update(ANY, 1, x, v, f, weight, drag, impulse, free, h);
    }
}

/* ---------------------------------------------------------------------------- the band path
 * For models whose springs join particles at most MAX_BAND apart in index (0 < |i - j| <= MAX_BAND: chains such as
 * the rope, whose cables join i, i+1 and bending springs i, i+2; every payload env), a substep is one pass over the
 * particles j = 0..P-1 in order, each vector of VW envs on its own. The springs whose higher particle is j (d = x_hi -
 * x_lo) add their forces to a window of force sums held in registers, w[o] = m·g + spring forces of particle j - o,
 * o = 0..B (B: the model's widest spring, a compile-time constant in each instance of band_substep); after them
 * particle j - B has all its forces (later springs touch only particles > j - B), so it is updated in place, and the
 * window shifts. No force array in memory, one read and one write of each particle's state a substep; the forces on
 * a handle (STILL) are not summed. The arithmetic is one_spring's and update's, with two differences of round-off
 * size only: a particle's force is (m·g + springs) - drag·v with the springs in order of their higher particle (the
 * general path: (m·g - drag·v) + springs in spring order), and a spring numbered from its higher particle has d
 * negated, exactly (-(a - b) = b - a). The stiff cables amplify such round-off ~1e3-fold an env step: float64
 * pendulum2d 50-step trajectories came out up to 2e-9 of the torch path's (the general path's: 1e-10), so float64
 * takes the general path by default (particle_kernels.BAND_DTYPES).
 *
 * Vectors are GCC vector types of VBYTES bytes (VW numbers): 64 with AVX-512, else 32 (16 registers without it). */
#define MAX_BAND 3 /* the widest band; particle_kernels.BAND, which chooses the path, is the same number */
/* The band plan of a model (built by run): springs sorted by their higher particle. */
typedef struct {
    const int64_t *start;  /* [P + 1] springs start[j] .. start[j+1]-1 (sorted) have higher particle j */
    const int *offset;     /* [S] j - (lower particle), 1..MAX_BAND */
    const int *kind;       /* [S] 2·(SPRING, CABLE or BLEND) + damped */
    const REAL *rest, *stiffness, *damping, *cable; /* [S] sorted */
    const int *particle;   /* [P] FREE, STILL or ANY */
    const int *still;      /* [S] whether the lower particle is STILL (a handle: its forces are not summed) */
    REAL inv_width, half_width; /* 1/w, w/2: the cables' slack width w */
    int band;                   /* the largest offset, 1..MAX_BAND */
    int pair;                   /* every spring a damped cable or an undamped spring (the rope, the pendulums) */
} Band;

/* update() for one vector: particle p of the block arrays at lane e0 with f = m·g + its spring forces (D vectors). */
INLINE void band_update(const int D, const int kind, const int dragged, REAL *x, REAL *v, const vec *f, REAL drag, REAL impulse,
                        REAL free, REAL h) {
    for (int a = 0; a < D; a++) {
        vec velocity = vload(v + a * LANES);
        if (kind != STILL) {
            const vec force = dragged ? f[a] - drag * velocity : f[a];
            velocity = velocity + impulse * (kind == FREE ? force : force * free);
            vstore(v + a * LANES, velocity);
        }
        vstore(x + a * LANES, vload(x + a * LANES) + h * velocity);
    }
}

INLINE void band_update_any(const int D, const int code, const int dragged, REAL *x, REAL *v, const vec *f, REAL drag, REAL impulse,
                            REAL free, REAL h) {
    const int kind = code;
    if (dragged) {
        if (kind == FREE) band_update(D, FREE, 1, x, v, f, drag, impulse, free, h);
        else if (kind == STILL) band_update(D, STILL, 1, x, v, f, drag, impulse, free, h);
        else band_update(D, ANY, 1, x, v, f, drag, impulse, free, h);
    } else {
        if (kind == FREE) band_update(D, FREE, 0, x, v, f, drag, impulse, free, h);
        else if (kind == STILL) band_update(D, STILL, 0, x, v, f, drag, impulse, free, h);
        else band_update(D, ANY, 0, x, v, f, drag, impulse, free, h);
    }
}

/* One substep of the VW envs at lane e0 of the block arrays X, V [P][D][LANES] (see the section comment). */
INLINE void band_substep(const int D, const int B, const int dragged, const int pair, const Particles *q, const Band *b, REAL *X,
                         REAL *V, int e0, REAL h) {
    const int64_t P = q->particles;
    vec w[MAX_BAND + 1][3]; /* slots 0..B used (B: a constant in each instance; a VLA would live in memory) */
    _Pragma("GCC unroll 8") for (int o = 0; o <= B; o++) _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) w[o][a] = vset(0);
    for (int64_t j = 0; j < P; j++) {
        const REAL *xh = X + AT(j, 0) + e0, *vh = V + AT(j, 0) + e0;
        vec xj[3];
        _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) {
            xj[a] = vload(xh + a * LANES);
            w[0][a] = vset(q->weight[j * D + a]); /* m·g, then the springs' forces */
        }
        for (int64_t k = b->start[j]; k < b->start[j + 1]; k++) {
            const int o = b->offset[k];
            const REAL *xl = xh - o * D * LANES, *vl = vh - o * D * LANES;
            vec d[3], g;
            _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) d[a] = xj[a] - vload(xl + a * LANES);
            const REAL r = b->rest[k], st = b->stiffness[k], c = b->damping[k], cb = b->cable[k], iw = b->inv_width, hw = b->half_width;
            /* `pair` models (two kinds): one predictable branch, and only two copies of spring_tension in the loop; the
             * six-way switch (a jump table) of the others costs them ~5-8 % (rope3d, same-process A/B) */
            if (pair) {
                if (b->kind[k] == 2 * CABLE + 1) g = spring_tension(D, CABLE, 1, d, 0, vh, vl, r, st, c, cb, iw, hw);
                else g = spring_tension(D, SPRING, 0, d, 0, vh, vl, r, st, c, cb, iw, hw);
            } else switch (b->kind[k]) {
            case 2 * SPRING: g = spring_tension(D, SPRING, 0, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            case 2 * SPRING + 1: g = spring_tension(D, SPRING, 1, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            case 2 * CABLE: g = spring_tension(D, CABLE, 0, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            case 2 * CABLE + 1: g = spring_tension(D, CABLE, 1, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            case 2 * BLEND: g = spring_tension(D, BLEND, 0, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            default: g = spring_tension(D, BLEND, 1, d, 0, vh, vl, r, st, c, cb, iw, hw); break;
            }
            vec gd[3];
            _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) {
                gd[a] = g * d[a];
                w[0][a] = w[0][a] - gd[a];
            }
#define BAND_ADD(slot) _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) w[slot][a] = w[slot][a] + gd[a]
            switch (b->still[k] ? 0 : o) { /* a lower particle that is a handle (STILL) never uses its forces */
            case 0: break;
            case 1: BAND_ADD(1); break;
            case 2: BAND_ADD(2 < B ? 2 : B); break;
            default: BAND_ADD(B); break;
            }
#undef BAND_ADD
        }
        const int64_t p = j - B;
        if (p >= 0)
            band_update_any(D, b->particle[p], dragged, X + AT(p, 0) + e0, V + AT(p, 0) + e0, w[B], q->drag, q->impulse[p], q->free[p], h);
        _Pragma("GCC unroll 8") for (int o = B; o > 0; o--) _Pragma("GCC unroll 3") for (int a = 0; a < D; a++) w[o][a] = w[o - 1][a];
    }
    _Pragma("GCC unroll 8") for (int o = B; o > 0; o--) {
        const int64_t p = P - o;
        if (p >= 0)
            band_update_any(D, b->particle[p], dragged, X + AT(p, 0) + e0, V + AT(p, 0) + e0, w[o], q->drag, q->impulse[p], q->free[p], h);
    }
}

/* All substeps of the VW envs at lane e0. Instances (compile time and code size): a window of B = 2 for bands 1 and 2
 * (pair models or any), B = MAX_BAND for wider ones (any). */
INLINE void band_substeps(const int D, const Particles *q, const Band *b, REAL *X, REAL *V, int e0, int64_t substeps, REAL h) {
#define BAND_RUN(B, dragged, pair) for (int64_t step = 0; step < substeps; step++) band_substep(D, B, dragged, pair, q, b, X, V, e0, h)
    const int dragged = q->drag != 0, wide = b->band > 2;
    switch (4 * wide + 2 * dragged + (b->pair && !wide)) {
    case 0: BAND_RUN(2, 0, 0); break;
    case 1: BAND_RUN(2, 0, 1); break;
    case 2: BAND_RUN(2, 1, 0); break;
    case 3: BAND_RUN(2, 1, 1); break;
    case 4: BAND_RUN(MAX_BAND, 0, 0); break;
    default: BAND_RUN(MAX_BAND, 1, 0); break;
    }
#undef BAND_RUN
}

/* One block of LANES envs through every substep. */
INLINE void block(const int D, const Particles *q, const Springs *s, const Band *b, const int *kind, const int64_t *oi, const int64_t *oj, const REAL *x0, const REAL *v0, const REAL *u, REAL *x1, REAL *v1,
                  int64_t first, int64_t n, int64_t substeps, REAL h) {
    const int64_t P = q->particles, lanes = n - first < LANES ? n - first : LANES;
    REAL X[P * D * LANES] __attribute__((aligned(64)));
    REAL V[P * D * LANES] __attribute__((aligned(64)));
    REAL F[P * D * LANES] __attribute__((aligned(64)));
    load_block(D, P, x0, v0, u, 0, 0, 0, q->handle, q->free, q->handles, X, V, first, n);
    const REAL drag = q->drag;
    if (b != 0) {
        for (int e0 = 0; e0 < lanes; e0 += VW) band_substeps(D, q, b, X, V, e0, substeps, h); /* vectors with an env */
        scatter(D, X, x1, first, lanes, P);
        scatter(D, V, v1, first, lanes, P);
        return;
    }
    for (int64_t i = 0; i < P * D; i++)
        FOR_LANES(e) F[i * LANES + e] = 0;
    for (int64_t step = 0; step < substeps; step++) {
        spring_forces(D, s, kind, oi, oj, X, V, F);
        for (int64_t p = 0; p < P; p++) {
            const REAL impulse = q->impulse[p], free = q->free[p];
            for (int a = 0; a < D; a++) {
                const REAL weight = q->weight[p * D + a];
                update_any(X + AT(p, a), V + AT(p, a), F + AT(p, a), weight, drag, impulse, free, h);
            }
        }
    }
    scatter(D, X, x1, first, lanes, P);
    scatter(D, V, v1, first, lanes, P);
}

INLINE int run(const int D, const Particles *q, const Springs *s, int banded, const REAL *x0, const REAL *v0, const REAL *u, REAL *x1,
                REAL *v1, int64_t n, int64_t substeps, REAL h) {
    const int64_t count = s->count > 0 ? s->count : 1;
    int kind[count];
    int64_t oi[count], oj[count];
    for (int64_t k = 0; k < s->count; k++) {
        const REAL cable = s->cable[k];
        kind[k] = 2 * (cable == 0 ? SPRING : cable == 1 ? CABLE : BLEND) + (s->damping[k] != 0);
        oi[k] = AT(s->first[k], 0);
        oj[k] = AT(s->second[k], 0);
    }
    /* The band plan (used when `banded`): springs sorted by higher particle, a counting sort. */
    const int64_t P = q->particles;
    int64_t start[P + 1], fill[P + 1];
    int offset[count], bkind[count], particle[P], still[count];
    REAL rest[count], stiffness[count], damping[count], cable[count];
    for (int64_t j = 0; j <= P; j++) start[j] = 0;
    for (int64_t k = 0; k < s->count; k++) {
        const int64_t hi = s->first[k] > s->second[k] ? s->first[k] : s->second[k];
        start[hi + 1]++;
    }
    for (int64_t j = 0; j < P; j++) start[j + 1] += start[j];
    for (int64_t j = 0; j <= P; j++) fill[j] = start[j];
    for (int64_t p = 0; p < P; p++) {
        const REAL free = q->free[p], impulse = q->impulse[p];
        particle[p] = free == 1 ? FREE : free == 0 && impulse == 0 ? STILL : ANY;
    }
    int band_max = 1, pair = 1;
    for (int64_t k = 0; k < s->count; k++) {
        const int64_t i = s->first[k], j = s->second[k], hi = i > j ? i : j, lo = i > j ? j : i, at = fill[hi]++;
        band_max = hi - lo > band_max ? (int)(hi - lo) : band_max;
        offset[at] = (int)(hi - lo);
        still[at] = particle[lo] == STILL;
        pair = pair && (kind[k] == 2 * CABLE + 1 || kind[k] == 2 * SPRING);
        bkind[at] = kind[k];
        rest[at] = s->rest[k], stiffness[at] = s->stiffness[k], damping[at] = s->damping[k], cable[at] = s->cable[k];
        if (hi - lo < 1 || hi - lo > MAX_BAND) banded = 0;
    }
    const Band band = {start, offset, bkind, rest, stiffness, damping, cable, particle, still, (REAL)1 / s->width, (REAL)0.5 * s->width, band_max, pair};
    for (int64_t first = 0; first < n; first += LANES) block(D, q, s, banded ? &band : 0, kind, oi, oj, x0, v0, u, x1, v1, first, n, substeps, h);
    return banded;
}

/* x1, v1 [N, P, D] after `substeps` substeps of length h from x0, v0 [N, P, D] with handle velocities u [N, H, D]
 * (see the header comment for the other arguments). dim is 2 or 3. `banded`: 1 asks for the band path, 0 for the
 * general one; returns the path taken (1 band, 0 general: the general one where a spring is wider than MAX_BAND). */
int particle_step(const REAL *x0, const REAL *v0, const REAL *u, REAL *x1, REAL *v1, const int64_t *handle, const REAL *free,
                   const REAL *impulse, const REAL *weight, double drag, const int64_t *first, const int64_t *second, const REAL *rest,
                   const REAL *stiffness, const REAL *damping, const REAL *cable, double width, int64_t n, int64_t particles,
                   int64_t dim, int64_t handles, int64_t springs, int64_t substeps, double h, int64_t banded) {
    const Particles q = {handle, free, impulse, weight, (REAL)drag, particles, handles};
    const Springs s = {first, second, rest, stiffness, damping, cable, (REAL)width, springs};
    if (dim == 2)
        return run(2, &q, &s, (int)banded, x0, v0, u, x1, v1, n, substeps, (REAL)h);
    if (dim == 3)
        return run(3, &q, &s, (int)banded, x0, v0, u, x1, v1, n, substeps, (REAL)h);
    return 0;
}
