/* Weight-only int8 matrix times a few fp32 activation rows, for CPUs (built by engine/kernels/cpu/int8_gemv.py),
 * and the dequantization that lets many rows go through a dense fp32 matmul instead.
 *
 * out[m, n] = scale[n] * sum_k x[m, k] * w[n, k]   (x fp32 [M, K], w int8 [N, K] row-major, scale fp32 [N],
 * out fp32 [M, N]; all contiguous). Sums in fp32, in 8 lanes of k then across lanes: another order than a torch
 * matmul, so results agree to fp32 rounding, not bitwise.
 *
 * Why: at decode sizes (M of 1 to 64) the product is a stream over the weight. torch's _weight_int8pack_mm wants
 * bf16 activations (its fp32 path is scalar) and streams int8 weights from DRAM at 5-10 GB/s on an AVX2 EPYC,
 * against 17+ GB/s for oneDNN's fp32 GEMV on the same VM. The AVX2 path here keeps four weight rows in flight,
 * converts each 8 int8 once for two activation rows, and prefetches the rows two blocks ahead so the stream does
 * not stall at row ends (the hardware prefetcher follows few concurrent streams).
 */
#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define ROWS 4                  /* weight rows per block */
#define PREFETCH_BLOCKS 2       /* how many blocks ahead the software prefetch reads */
/* blocks a thread takes at a time: a dynamic split keeps both cores streaming when one is held up (the int4
 * kernel measured 10 against 14.5 GB/s for a static one), in runs long enough for the prefetch to pay */
#define DYNAMIC_BLOCKS 8

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

/* 8 int8 at p as 8 fp32 lanes */
static inline __m256 load8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* the four rows PREFETCH_BLOCKS blocks after the one at row n0, from column k (none past the last row) */
static inline void prefetch_block(const int8_t *w, int64_t N, int64_t K, int64_t n0, int64_t k) {
    if (n0 + (PREFETCH_BLOCKS + 1) * ROWS <= N) {
        const int8_t *p = w + (n0 + PREFETCH_BLOCKS * ROWS) * K + k;
        _mm_prefetch((const char *)p, _MM_HINT_T0);
        _mm_prefetch((const char *)(p + K), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + 2 * K), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + 3 * K), _MM_HINT_T0);
    }
}

/* one block of ROWS weight rows starting at row n0, every activation row; K8 = K rounded down to 8 */
static void block_avx2(const float *x, const int8_t *w, const float *scale, float *out, int64_t M, int64_t N,
                       int64_t K, int64_t n0) {
    const int8_t *w0 = w + n0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    const int64_t K8 = K & ~(int64_t)7;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
        const float *x0 = x + m * K, *x1 = x0 + K;
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
        __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        for (int64_t k = 0; k < K8; k += 8) {
            if (m == 0 && (k & 63) == 0) prefetch_block(w, N, K, n0, k);
            const __m256 v0 = load8(w0 + k), v1 = load8(w1 + k), v2 = load8(w2 + k), v3 = load8(w3 + k);
            const __m256 y0 = _mm256_loadu_ps(x0 + k), y1 = _mm256_loadu_ps(x1 + k);
            a00 = _mm256_fmadd_ps(v0, y0, a00); a01 = _mm256_fmadd_ps(v1, y0, a01);
            a02 = _mm256_fmadd_ps(v2, y0, a02); a03 = _mm256_fmadd_ps(v3, y0, a03);
            a10 = _mm256_fmadd_ps(v0, y1, a10); a11 = _mm256_fmadd_ps(v1, y1, a11);
            a12 = _mm256_fmadd_ps(v2, y1, a12); a13 = _mm256_fmadd_ps(v3, y1, a13);
        }
        float s0[ROWS] = {hsum(a00), hsum(a01), hsum(a02), hsum(a03)};
        float s1[ROWS] = {hsum(a10), hsum(a11), hsum(a12), hsum(a13)};
        for (int64_t k = K8; k < K; ++k)
            for (int r = 0; r < ROWS; ++r) {
                s0[r] += x0[k] * (float)w0[r * K + k];
                s1[r] += x1[k] * (float)w0[r * K + k];
            }
        for (int r = 0; r < ROWS; ++r) {
            out[m * N + n0 + r] = s0[r] * scale[n0 + r];
            out[(m + 1) * N + n0 + r] = s1[r] * scale[n0 + r];
        }
    }
    for (; m < M; ++m) {
        const float *x0 = x + m * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K8; k += 8) {
            if (m == 0 && (k & 63) == 0) prefetch_block(w, N, K, n0, k);
            const __m256 y0 = _mm256_loadu_ps(x0 + k);
            a0 = _mm256_fmadd_ps(load8(w0 + k), y0, a0); a1 = _mm256_fmadd_ps(load8(w1 + k), y0, a1);
            a2 = _mm256_fmadd_ps(load8(w2 + k), y0, a2); a3 = _mm256_fmadd_ps(load8(w3 + k), y0, a3);
        }
        float s0[ROWS] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
        for (int64_t k = K8; k < K; ++k)
            for (int r = 0; r < ROWS; ++r) s0[r] += x0[k] * (float)w0[r * K + k];
        for (int r = 0; r < ROWS; ++r) out[m * N + n0 + r] = s0[r] * scale[n0 + r];
    }
}
#endif

/* one weight row n, every activation row (the portable path, and the AVX2 path's last N % 4 rows) */
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
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(dynamic, DYNAMIC_BLOCKS) nowait
        for (int64_t b = 0; b < blocks; ++b) block_avx2(x, w, scale, out, M, N, K, b * ROWS);
#pragma omp for schedule(static)
        for (int64_t n = blocks * ROWS; n < N; ++n) row_generic(x, w, scale, out, M, N, K, n);
    }
#else
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) row_generic(x, w, scale, out, M, N, K, n);
#endif
    return 0;
}
