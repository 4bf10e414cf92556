/* Weight-only int8 matrix times a few fp32 activation rows, for CPUs (built by engine/kernels/cpu/int8_gemv.py),
 * and the dequantization that lets many rows go through a dense fp32 matmul instead.
 *
 * out[m, n] = scale[n] * sum_k x[m, k] * w[n, k]   (x fp32 [M, K], w int8 [N, K] row-major, scale fp32 [N],
 * out fp32 [M, N]; all contiguous). Sums in fp32, in 8 lanes of k then across lanes: another order than a torch
 * matmul, so results agree to fp32 rounding, not bitwise.
 *
 * Why: at decode sizes (M of 1 to 64) the product is a stream over the weight. torch's _weight_int8pack_mm wants
 * bf16 activations (its fp32 path is scalar) and streams int8 weights from DRAM at 5-10 GB/s on an AVX2 EPYC,
 * against 17+ GB/s for oneDNN's fp32 GEMV on the same VM.
 *
 * AVX2 path, as measured on the 2-core AVX2 EPYC dev VM (2026-12-08 03:56-04:02 UTC; medians of 5-9 interleaved
 * passes over 24 layers of the Qwen2.5-0.5B / 1.5B projections, int8 from DRAM; the VM drifts +-15% between runs,
 * so only ratios within a run count). Against the previous kernel (4-row blocks, 2 activation rows per tile,
 * prefetch 2 blocks ahead, 8 blocks per dynamic take), in the final run (04:01 UTC) this one ran 1.27x / 1.28x
 * faster at 1 row (0.5B 11.5 -> 14.6 GB/s, 1.5B 11.3 -> 14.4 GB/s), 1.39-1.48x at 2, 1.37-1.44x at 4,
 * 1.12-1.22x at 8, 1.08-1.10x at 16, 1.10-1.13x at 64 (earlier runs: 1.16-1.38x at 1 row; 15-18.5 GB/s when
 * the VM was quieter):
 * - blocks of 4 weight rows, each 8 int8 converted once for up to 3 activation rows: 12 accumulators + 3 x
 *   vectors + 1 weight vector = all 16 ymm registers. 4 x 3 measured -2% to +11% against 6 x 2 (alike at 1 row);
 *   8 x 1 lost ~5% at 1 row and 15-25% from 2, 3 x 4 lost 5-15%, 5 x 2 measured alike to 6 x 2 (+-10%).
 * - software prefetch of the next block (1 ahead, T0, the first activation row's pass, one line per 64 bytes of
 *   each row): unlike the fp32 kernel (where none was best), int8 rows are short (896-8960 bytes) and the hardware
 *   prefetcher does not ramp up within one; without prefetch the kernel lost 10-20% at 1 row against 2 blocks
 *   ahead, 1 block ahead beat 2 by 2-17% (1-8 rows) and 4 measured alike to 2; NTA and T1 alike to T0.
 * - whole rows, no k chunking: chunks of 256-1024 (accumulators parked between chunks, KC) measured -10% to +5%
 *   against whole rows at 1-8 rows (a 4-row block of the longest rows, 35 KB, stays in L2 while rows pass over it).
 * - threads take 16 blocks (64 rows) at a time, dynamically: 4 lost 4-12% against 8, 16 measured -3% to +9%.
 * - activation rows in passes of GROUP (64: one pass over the weight for every decode size).
 * From about 4 rows the conversions and FMAs, not the stream, set the time.
 */
#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* fixed by the measurements above; -D overrides them for a sweep */
#ifndef ROWS
#define ROWS 4 /* weight rows per block */
#endif
#ifndef MTILE
#define MTILE 3 /* activation rows per tile: each 8 weights converted once for them (ROWS * MTILE + MTILE + 1 <= 16) */
#endif
#ifndef KC
#define KC 0 /* k per chunk (a multiple of 8); 0: whole rows */
#endif
#ifndef PF
#define PF 1 /* software prefetch of the block PF blocks ahead (0: none) */
#endif
#ifndef PFHINT
#define PFHINT _MM_HINT_T0
#endif
#ifndef DYNAMIC_BLOCKS
#define DYNAMIC_BLOCKS 16 /* blocks a thread takes at a time */
#endif
#ifndef GROUP
#define GROUP 64 /* activation rows per pass over the weight: the accumulators of a block live on the stack */
#endif

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

/* 8 int8 at p as 8 fp32 lanes */
static inline __m256 load8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* MT activation rows at x (row stride K) against the ROWS weight rows at wb, over k in [k0, k1), onto the
 * accumulators acc[i * ROWS + r] (which start at zero when k0 == 0); pf: the block to prefetch, or NULL */
static inline __attribute__((always_inline)) void tile_avx2(const float *x, const int8_t *wb, __m256 *acc, int64_t K,
                                                            int64_t k0, int64_t k1, int MT, const int8_t *pf) {
    __m256 a[MTILE][ROWS];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) a[i][r] = k0 ? acc[i * ROWS + r] : _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
#if PF
        if (pf && (k & 63) == 0)
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; ++r) _mm_prefetch((const char *)(pf + r * K + k), PFHINT);
#endif
        __m256 y[MTILE];
#pragma GCC unroll 16
        for (int i = 0; i < MT; ++i) y[i] = _mm256_loadu_ps(x + i * K + k);
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) {
            const __m256 v = load8(wb + r * K + k);
#pragma GCC unroll 16
            for (int i = 0; i < MT; ++i) a[i][r] = _mm256_fmadd_ps(v, y[i], a[i][r]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) acc[i * ROWS + r] = a[i][r];
    (void)pf;
}

/* MT (1..MTILE) activation rows, dispatched to a tile compiled for that count */
static inline __attribute__((always_inline)) void tile_any(const float *x, const int8_t *wb, __m256 *acc, int64_t K,
                                                           int64_t k0, int64_t k1, int MT, const int8_t *pf) {
    switch (MT) {
    case 1: tile_avx2(x, wb, acc, K, k0, k1, 1, pf); break;
#if MTILE >= 2
    case 2: tile_avx2(x, wb, acc, K, k0, k1, 2, pf); break;
#endif
#if MTILE >= 3
    case 3: tile_avx2(x, wb, acc, K, k0, k1, 3, pf); break;
#endif
#if MTILE >= 4
    case 4: tile_avx2(x, wb, acc, K, k0, k1, 4, pf); break;
#endif
    }
}

/* the block of ROWS weight rows from row n0, activation rows 0..M-1 (M <= GROUP) */
static void block_avx2(const float *x, const int8_t *w, const float *scale, float *out, int64_t M, int64_t N,
                       int64_t K, int64_t n0) {
    const int8_t *wb = w + n0 * K;
    const int8_t *pf = NULL;
#if PF
    if (n0 + (PF + 1) * ROWS <= N) pf = wb + PF * ROWS * K;
#endif
    const int64_t K8 = K & ~(int64_t)7;
    const int64_t kc = KC ? KC : (K8 ? K8 : 8);
    __m256 acc[GROUP * ROWS];
    for (int64_t k0 = 0; k0 < K8; k0 += kc) {
        const int64_t k1 = k0 + kc < K8 ? k0 + kc : K8;
        int64_t m = 0;
        for (; m + MTILE <= M; m += MTILE)
            tile_avx2(x + m * K, wb, acc + m * ROWS, K, k0, k1, MTILE, m ? NULL : pf);
        if (m < M) tile_any(x + m * K, wb, acc + m * ROWS, K, k0, k1, (int)(M - m), m ? NULL : pf);
    }
    for (int64_t m = 0; m < M; ++m)
        for (int r = 0; r < ROWS; ++r) {
            float s = K8 ? hsum(acc[m * ROWS + r]) : 0.0f;
            for (int64_t k = K8; k < K; ++k) s += x[m * K + k] * (float)wb[r * K + k];
            out[m * N + n0 + r] = s * scale[n0 + r];
        }
}
#endif

/* one weight row n, every activation row (the portable path, and the AVX2 path's last N % ROWS rows) */
static void row_generic(const float *x, const int8_t *w, const float *scale, float *out, int64_t M, int64_t N,
                        int64_t K, int64_t n) {
    const int8_t *wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
        const float *xm = x + m * K;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < K; ++k) sum += xm[k] * (float)wn[k];
        out[m * N + n] = sum * scale[n];
    }
}

/* out[n, k] = w[n, k] * scale[n] (fp32 [N, K]): the dense weight the matmul of many rows multiplies by */
int int8_dequantize(const int8_t *w, const float *scale, float *out, int64_t N, int64_t K, int num_threads) {
    if (N < 0 || K <= 0) return 1;
#pragma omp parallel for schedule(static) num_threads(num_threads > 0 ? num_threads : 1)
    for (int64_t n = 0; n < N; ++n) {
        const int8_t *wn = w + n * K;
        float *on = out + n * K;
        const float s = scale[n];
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) on[k] = (float)wn[k] * s;
    }
    return 0;
}

/* 1 when the AVX2 + FMA path was compiled in */
int int8_gemv_vectorised(void) {
#if defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* 0 on success, 1 on bad sizes (the Python wrapper checks them first) */
int int8_gemv(const float *x, const int8_t *w, const float *scale, float *out, int64_t M, int64_t N, int64_t K,
              int num_threads) {
    if (M < 0 || N < 0 || K <= 0) return 1;
    const int threads = num_threads > 0 ? num_threads : 1;
#if defined(__AVX2__) && defined(__FMA__)
    const int64_t blocks = N / ROWS;
    for (int64_t m0 = 0; m0 < M; m0 += GROUP) {
        const int64_t rows = M - m0 < GROUP ? M - m0 : GROUP;
        const float *xg = x + m0 * K;
        float *og = out + m0 * N;
#pragma omp parallel num_threads(threads)
        {
#pragma omp for schedule(dynamic, DYNAMIC_BLOCKS) nowait
            for (int64_t b = 0; b < blocks; ++b) block_avx2(xg, w, scale, og, rows, N, K, b * ROWS);
#pragma omp for schedule(static)
            for (int64_t n = blocks * ROWS; n < N; ++n) row_generic(xg, w, scale, og, rows, N, K, n);
        }
    }
#else
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) row_generic(x, w, scale, out, M, N, K, n);
#endif
    return 0;
}
