/* fp32 matrix times a few fp32 activation rows, for CPUs (built by engine/kernels/cpu/f32_gemv.py).
 *
 * out[m, n] = sum_k x[m, k] * w[n, k]   (x fp32 [M, K], w fp32 [N, K] row-major, out fp32 [M, N]; all contiguous;
 * any M >= 0, N >= 0, K >= 1). Sums in fp32, in 8 lanes of k (chunk by chunk) then across lanes: another order
 * than a torch matmul, so results agree to fp32 rounding, not bitwise.
 *
 * Why: at decode sizes the product is a stream over the weight, and an fp32 LM head is the largest one
 * (Qwen2.5-0.5B: [151936, 896] = 545 MB per step). oneDNN's packed linear streams it at 10-17 GB/s on the 2-core
 * AVX2 EPYC dev VM, where a plain 2-thread read of the same bytes runs 18-25 GB/s. This kernel reads it at
 * 15-23 GB/s for 1-4 rows, 1.3-1.8x faster than the packed path up to 8 rows and 1.2-1.55x at 16
 * (bench/model_speed/f32_gemv_speed.py, 0.5B / 1.5B / 7B LM heads; details in engine/kernels/cpu/f32_gemv.py).
 *
 * AVX2 path, as measured on that VM (medians of interleaved rounds, [151936, 896] and [152064, 3584]):
 * - blocks of 6 weight rows, so one activation row keeps 6 streams (and 6 FMA chains) in flight and a pair of
 *   rows needs 12 accumulators + 2 x vectors + 1 weight vector = 15 of the 16 ymm registers. For one activation
 *   row, 1-row blocks streamed ~30% slower and 2-row ~10%, 4-8 rows within noise of each other; from 2 rows on,
 *   6 beat 8 (as 2 x 4 tiles) by 15-23% and 12 (2 x 6 tiles twice) by 7-12%.
 * - k in chunks of 256: every activation row goes over a chunk of the block (6 KB, in L1) before the next chunk
 *   streams in, the accumulators parked on the stack between chunks. At K = 3584 (a block is 86 KB) whole rows
 *   took 15% longer at 8 activation rows (the same at 2); chunks of 64-896 measured alike.
 * - no software prefetch: the hardware prefetcher follows the 6 streams at the read rate; prefetching the block
 *   1-2 ahead or 1-32 KB ahead in each row (T0, T1, T2 or NTA; from the first pass or every pass) measured
 *   0-25% slower at 1 and 8 rows.
 * - threads take 8 blocks (48 rows) at a time, dynamically (2-32 measured alike), so that both cores stream to
 *   the end when one is held up (the int4 kernel measured a static split well behind).
 * From about 6 rows the FMAs, not the stream, set the time: at 8 rows the 0.5B head takes 37-44 ms, against
 * 22-25 ms to read it and ~23 ms for the same FMAs on a weight in L3; the two overlap only in part.
 * Activation rows beyond GROUP go in further passes over the weight.
 */
#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* fixed by the measurements above; -D overrides them for a sweep */
#ifndef ROWS
#define ROWS 6 /* weight rows per block */
#endif
#ifndef KC
#define KC 256 /* k per chunk (a multiple of 8) */
#endif
#ifndef DYNAMIC_BLOCKS
#define DYNAMIC_BLOCKS 8 /* blocks a thread takes at a time */
#endif
#define GROUP 16 /* activation rows per pass over the weight: the accumulators of a block live on the stack */

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

/* MT (1 or 2) activation rows at x (row stride K) against the ROWS weight rows at wb, over k in [k0, k1), onto the
 * accumulators acc[i * ROWS + r] (which start at zero when k0 == 0) */
static inline __attribute__((always_inline)) void tile_avx2(const float *x, const float *wb, __m256 *acc, int64_t K,
                                                            int64_t k0, int64_t k1, int MT) {
    __m256 a[2][ROWS];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) a[i][r] = k0 ? acc[i * ROWS + r] : _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
        __m256 y[2];
#pragma GCC unroll 16
        for (int i = 0; i < MT; ++i) y[i] = _mm256_loadu_ps(x + i * K + k);
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) {
            const __m256 v = _mm256_loadu_ps(wb + r * K + k);
#pragma GCC unroll 16
            for (int i = 0; i < MT; ++i) a[i][r] = _mm256_fmadd_ps(v, y[i], a[i][r]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) acc[i * ROWS + r] = a[i][r];
}

/* the block of ROWS weight rows from row n0, activation rows 0..M-1 (M <= GROUP) */
static void block_avx2(const float *x, const float *w, float *out, int64_t M, int64_t N, int64_t K, int64_t n0) {
    const float *wb = w + n0 * K;
    const int64_t K8 = K & ~(int64_t)7;
    __m256 acc[GROUP * ROWS];
    for (int64_t k0 = 0; k0 < K8; k0 += KC) {
        const int64_t k1 = k0 + KC < K8 ? k0 + KC : K8;
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) tile_avx2(x + m * K, wb, acc + m * ROWS, K, k0, k1, 2);
        if (m < M) tile_avx2(x + m * K, wb, acc + m * ROWS, K, k0, k1, 1);
    }
    for (int64_t m = 0; m < M; ++m)
        for (int r = 0; r < ROWS; ++r) {
            float s = K8 ? hsum(acc[m * ROWS + r]) : 0.0f;
            for (int64_t k = K8; k < K; ++k) s += x[m * K + k] * wb[r * K + k];
            out[m * N + n0 + r] = s;
        }
}
#endif

/* one weight row n, activation rows 0..M-1 (the portable path, and the AVX2 path's last N % ROWS rows) */
static void row_generic(const float *x, const float *w, float *out, int64_t M, int64_t N, int64_t K, int64_t n) {
    const float *wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
        const float *xm = x + m * K;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < K; ++k) sum += xm[k] * wn[k];
        out[m * N + n] = sum;
    }
}

/* 1 when the AVX2 + FMA path was compiled in */
int f32_gemv_vectorised(void) {
#if defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* 0 on success, 1 on bad sizes (the Python wrapper checks them first) */
int f32_gemv(const float *x, const float *w, float *out, int64_t M, int64_t N, int64_t K, int num_threads) {
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
            for (int64_t b = 0; b < blocks; ++b) block_avx2(xg, w, og, rows, N, K, b * ROWS);
#pragma omp for schedule(static)
            for (int64_t n = blocks * ROWS; n < N; ++n) row_generic(xg, w, og, rows, N, K, n);
        }
    }
#else
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) row_generic(x, w, out, M, N, K, n);
#endif
    return 0;
}
