/* The peak flop rate of one core: CHAINS independent chains of vector multiply-adds a = a·m + c, no memory traffic.
 *
 * Built by benchmarks/roofline.py (tphys.kernels.c_kernels.build, with -ffp-contract=fast so that a·m + c becomes one
 * fused multiply-add where the CPU has them) with -DREAL=float. The vectors are 64 bytes where the compiler targets
 * AVX-512, 32 otherwise; CHAINS exceeds the FMA latency (4-5 cycles) times the FMA ports (2) so that every port issues
 * every cycle. fma_peak runs ``iterations`` rounds and returns the flops it did (a multiply-add is two); the sum of
 * the chains goes to *out so that the loop is not optimized away. */

#ifdef __AVX512F__
#define VECTOR_BYTES 64
#else
#define VECTOR_BYTES 32
#endif
#define CHAINS 12
#define LANES (VECTOR_BYTES / (int)sizeof(REAL))

typedef REAL vec __attribute__((vector_size(VECTOR_BYTES)));

double fma_peak(long iterations, REAL *out) {
    vec a[CHAINS], m, c;
    for (int l = 0; l < LANES; l++) {
        m[l] = (REAL)0.999;
        c[l] = (REAL)0.001;
    }
    for (int k = 0; k < CHAINS; k++)
        for (int l = 0; l < LANES; l++)
            a[k][l] = (REAL)(k + l) / (REAL)64;
    for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < CHAINS; k++)
            a[k] = a[k] * m + c;
        __asm__ volatile("" : "+x"(m));  /* m is opaque each round: the rounds cannot be folded together */
    }
    REAL sum = 0;
    for (int k = 0; k < CHAINS; k++)
        for (int l = 0; l < LANES; l++)
            sum += a[k][l];
    *out = sum;
    return 2.0 * CHAINS * LANES * (double)iterations;
}
