/* int4 weight-only GEMV for CPUs on torch's own packed int4 layout (built by engine/kernels/cpu/int4_gemv.py).
 *
 * out[m, n] = sum_k x[m, k] * ((q[n, k] - 8) * scale[k / G, n] + zero[k / G, n])      x, out: fp32, row-major
 *
 * Weights are read where torch's `_convert_weight_to_int4pack_for_cpu(q, 1)` left them (uint8 [N, K / 2]), the
 * scales from `scales_and_zeros` bf16 [K / G, N, 2] (scale, zero per row and group): no second copy.
 *
 * The packed layout (torch 2.13, aten/src/ATen/native/cpu/int4mm_kernel.cpp, checked byte by byte against its
 * packer under ATEN_CPU_CAPABILITY=default, avx2 and avx512; tests/kernels/cpu/test_cpu_int4_gemv.py):
 *   rows go in blocks of B = 4 * (floats per vector) rows: B = 32 for DEFAULT and AVX2, 64 for AVX512. Block b
 *   (nb = min(B, N - b * B) rows, a multiple of 16) starts at byte b * B * K / 2 and holds nb / 2 bytes per k,
 *   k-major: byte k * nb / 2 + j of the block. Two layouts of those bytes:
 *   - interleaved (AVX2, AVX512, full blocks only): byte j = q[j] | q[j + B / 2] << 4   (rows of the block)
 *   - pairs (DEFAULT, and every partial tail block): byte j = q[2 j] | q[2 j + 1] << 4
 *   The caller passes B and whether full blocks are interleaved (int4_gemv.py reads them off torch's capability).
 *
 * Per group, sum_k x (q - 8) s + z x = s * dot(x, q) + (z - 8 s) * sum(x over the group): the group sums of x
 * are taken once per call, so the inner loop only widens nibbles and multiplies-adds.
 *
 * Vector path (AVX2 + FMA): the rows are cut into units of 32 (a whole AVX2 block, half of an AVX512 one, or 32
 * rows of a pairs block: 2 chunks of 8 bytes per k) or 16 (a 16-row tail: 1 chunk); each 8-byte chunk widens to
 * two 8-lane vectors (low nibbles, high nibbles), rows in SIMD lanes and x[m, k] broadcast. Threads take units
 * 4 at a time; software prefetch runs `prefetch_bytes` ahead of the first m-tile's weight reads, and 2 groups
 * ahead on the scales. Groups are the outer loop inside a unit, so a group's weights (16 G bytes) stay in L1
 * across the m-tiles (4 rows of x on one chunk at a time, then 2 rows on both; a last row alone unrolls k by 2 so
 * that 8 FMA chains stay in flight).
 * The inner step (2 widenings, 2 masks / shifts, 4 int -> float conversions, 4 FMAs per k and 32 rows) keeps
 * the FP pipes busy: on the 2-core AVX2 dev VM about 1.5-1.9 ns per k per core from L1, so at M = 1 one core
 * computes about as fast as it can stream from DRAM.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

#if defined(__AVX2__) && defined(__FMA__) && !defined(INT4_GENERIC)
#define INT4_VECTOR 1
#include <immintrin.h>
#else
#define INT4_VECTOR 0
#endif

enum { INT4_OK = 0, INT4_BAD_SHAPE = 1, INT4_NO_MEMORY = 2 };
#define SZ_AHEAD 2 /* groups ahead whose scales the vector path prefetches */
#define M_CHUNK 16 /* rows of x per pass over the weights: bounds the per-thread accumulators */

int int4_gemv_vectorised(void) { return INT4_VECTOR; }

#if !INT4_VECTOR
/* q[n, k] of the packed layout (the portable path; the vector path walks the same addresses in chunks) */
static inline int q_at(const uint8_t *w, int64_t n, int64_t k, int64_t N, int64_t K, int64_t B, int interleaved) {
    const int64_t b = n / B, r = n - b * B, nb = (N - b * B < B) ? N - b * B : B;
    const uint8_t *blk = w + b * B * (K / 2) + k * (nb / 2);
    if (interleaved && nb == B) {
        const uint8_t v = blk[r % (B / 2)];
        return r < B / 2 ? (v & 15) : (v >> 4);
    }
    const uint8_t v = blk[r / 2];
    return (r & 1) ? (v >> 4) : (v & 15);
}

static void gemv_generic(const float *x, const uint8_t *w, const uint16_t *sz, const float *gsum, float *out,
                         int64_t M, int64_t N, int64_t K, int64_t G, int64_t B, int interleaved, int nt) {
    const int64_t groups = K / G;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                float dot = 0.0f;
                for (int64_t k = g * G; k < (g + 1) * G; k++)
                    dot += x[m * K + k] * (float)q_at(w, n, k, N, K, B, interleaved);
                const float s = bf16_load(sz[(g * N + n) * 2]), z = bf16_load(sz[(g * N + n) * 2 + 1]);
                acc += s * dot + (z - 8.0f * s) * gsum[m * groups + g];
            }
            out[m * N + n] = acc;
        }
}

#else
/* A unit: `nc` chunks (1 or 2) of 8 bytes per k at w + k * stride. Chunk c's low nibbles are rows lo[c] + 0..7,
 * high nibbles rows hi[c] + 0..7 (interleaved), or, in pairs mode, rows base + 16 c + (0, 2, .., 14) and
 * (1, 3, .., 15). */
typedef struct {
    const uint8_t *w;
    int64_t stride, lo[2], hi[2];
    int nc, pairs;
} Unit;

static Unit unit_at(const uint8_t *w, int64_t u, int64_t N, int64_t K, int64_t B, int interleaved) {
    const int64_t full_blocks = N / B, units_per_block = B / 32;
    const int64_t b = u < full_blocks * units_per_block ? u / units_per_block : full_blocks;
    const int64_t nb = b < full_blocks ? B : N - b * B, first = b * units_per_block, j = u - first;
    Unit t;
    t.stride = nb / 2;
    t.pairs = !(interleaved && nb == B);
    t.nc = (nb - 32 * j >= 32) ? 2 : 1;
    t.w = w + b * B * (K / 2) + j * 16; /* unit j of a block: bytes 16 j .. 16 j + 15 of each k */
    for (int c = 0; c < 2; c++) {
        if (t.pairs) t.lo[c] = t.hi[c] = b * B + 32 * j + 16 * c; /* base row of the chunk */
        else t.lo[c] = b * B + 16 * j + 8 * c, t.hi[c] = t.lo[c] + B / 2;
    }
    return t;
}

/* 8 (scale, zero) words of the rows of one lane vector: bf16 scale in the low half, zero in the high half */
static inline __m256i load_sz(const uint32_t *sz, const Unit *t, int c, int high) {
    if (!t->pairs) return _mm256_loadu_si256((const __m256i *)(sz + (high ? t->hi[c] : t->lo[c])));
    const __m256 a = _mm256_loadu_ps((const float *)(sz + t->lo[c]));
    const __m256 b = _mm256_loadu_ps((const float *)(sz + t->lo[c] + 8));
    const __m256 e = high ? _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))
                          : _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_si256(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* dot(x[m0 + i, group], q[row, group]) for T rows of x and the 2 nc lane vectors of chunks c0 .. c0 + nc - 1
 * -> d[i][v] (v = 2 (c - c0) + high) */
static inline __attribute__((always_inline)) void group_dots(const Unit *t, const uint8_t *w, const float *x,
                                                           int64_t K, int64_t G, const int T, const int nc,
                                                           const int c0, int64_t pf, __m256 d[4][4]) {
    const __m256i m15 = _mm256_set1_epi32(15);
    const int P = T == 1 ? 2 : 1; /* independent k phases: 8 FMA chains in flight either way */
    __m256 a[2][4][4];
    for (int p = 0; p < P; p++)
        for (int i = 0; i < T; i++)
            for (int v = 0; v < 2 * nc; v++) a[p][i][v] = _mm256_setzero_ps();
    const int64_t stride = t->stride;
    for (int64_t k = 0; k < G; k += 4) {
        if (pf) {
            const char *p = (const char *)(w + k * stride + pf);
            _mm_prefetch(p, _MM_HINT_T0);
            if (stride * 4 > 64) _mm_prefetch(p + 64, _MM_HINT_T0);
        }
        for (int kk = 0; kk < 4; kk++) {
            const int p = kk % P;
            const uint8_t *wk = w + (k + kk) * stride;
            for (int c = 0; c < nc; c++) {
                const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wk + 8 * (c0 + c))));
                const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, m15));
                const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                for (int i = 0; i < T; i++) {
                    const __m256 xb = _mm256_broadcast_ss(x + i * K + k + kk);
                    a[p][i][2 * c] = _mm256_fmadd_ps(lo, xb, a[p][i][2 * c]);
                    a[p][i][2 * c + 1] = _mm256_fmadd_ps(hi, xb, a[p][i][2 * c + 1]);
                }
            }
        }
    }
    for (int i = 0; i < T; i++)
        for (int v = 0; v < 2 * nc; v++) d[i][v] = P == 2 ? _mm256_add_ps(a[0][i][v], a[1][i][v]) : a[0][i][v];
}

/* acc[i][v] += s * d + (z - 8 s) * gsum[i], for the T rows of x of a tile */
static inline __attribute__((always_inline)) void apply_group(const Unit *t, const uint32_t *szg, __m256 d[4][4],
                                                            const float *gs, int64_t gstride, const int T,
                                                            const int nc, const int c0, float (*acc)[32]) {
    const __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);
    for (int v = 0; v < 2 * nc; v++) {
        const __m256i w = load_sz(szg, t, c0 + v / 2, v & 1);
        const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        const __m256 z = _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), s, _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask)));
        for (int i = 0; i < T; i++) {
            __m256 r = _mm256_loadu_ps(acc[i] + 8 * (2 * c0 + v));
            r = _mm256_fmadd_ps(s, d[i][v], r);
            r = _mm256_fmadd_ps(z, _mm256_broadcast_ss(gs + i * gstride), r);
            _mm256_storeu_ps(acc[i] + 8 * (2 * c0 + v), r);
        }
    }
}

#define TILE(T, NC, C0)                                                                                         \
    do {                                                                                                        \
        __m256 d[4][4];                                                                                         \
        group_dots(&t, wg, x + (m0 + m) * K + g * G, K, G, T, NC, C0, m == 0 ? pf : 0, d);                      \
        apply_group(&t, szg, d, gsum + (m0 + m) * groups + g, groups, T, NC, C0, acc + m);                      \
    } while (0)

static void gemv_vector(const float *x, const uint8_t *w, const uint16_t *sz, const float *gsum, float *out,
                        int64_t M, int64_t N, int64_t K, int64_t G, int64_t B, int interleaved, int nt, int64_t pf) {
    const int64_t groups = K / G, units = (N / B) * (B / 32) + ((N % B) + 31) / 32;
/* dynamic, 4 units (128 rows) a grab: streams stay long and contiguous, and a core slowed by another process
 * does not leave the other waiting at the end (static split measured 10 against 14.5 GB/s on 17920 x 1536) */
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
    for (int64_t u = 0; u < units; u++) {
        const Unit t = unit_at(w, u, N, K, B, interleaved);
        for (int64_t m0 = 0; m0 < M; m0 += M_CHUNK) {
            const int64_t mc = M - m0 < M_CHUNK ? M - m0 : M_CHUNK;
            float acc[M_CHUNK][32];
            memset(acc, 0, sizeof(acc));
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *wg = t.w + g * G * t.stride;
                const uint32_t *szg = (const uint32_t *)sz + g * N;
                /* the scales of a later group lie N * 4 bytes further per group: no hardware prefetcher follows */
                const uint32_t *ahead = szg + SZ_AHEAD * N;
                for (int c = 0; c < t.nc; c++) {
                    _mm_prefetch((const char *)(ahead + t.lo[c]), _MM_HINT_T0);
                    _mm_prefetch((const char *)(ahead + t.hi[c] + 8), _MM_HINT_T0);
                }
                int64_t m = 0;
                for (; m + 4 <= mc; m += 4) { /* 4 rows of x share each widened chunk: one chunk per pass */
                    TILE(4, 1, 0);
                    if (t.nc == 2) TILE(4, 1, 1);
                }
                if (t.nc == 2) {
                    for (; m + 2 <= mc; m += 2) TILE(2, 2, 0);
                    if (m < mc) TILE(1, 2, 0);
                } else {
                    for (; m + 2 <= mc; m += 2) TILE(2, 1, 0);
                    if (m < mc) TILE(1, 1, 0);
                }
            }
            for (int64_t m = 0; m < mc; m++) { /* lane order back to rows */
                float *o = out + (m0 + m) * N;
                for (int c = 0; c < t.nc; c++) {
                    const __m256 lo = _mm256_loadu_ps(acc[m] + 16 * c), hi = _mm256_loadu_ps(acc[m] + 16 * c + 8);
                    if (t.pairs) {
                        const __m256 a = _mm256_unpacklo_ps(lo, hi), b = _mm256_unpackhi_ps(lo, hi);
                        _mm256_storeu_ps(o + t.lo[c], _mm256_permute2f128_ps(a, b, 0x20));
                        _mm256_storeu_ps(o + t.lo[c] + 8, _mm256_permute2f128_ps(a, b, 0x31));
                    } else {
                        _mm256_storeu_ps(o + t.lo[c], lo);
                        _mm256_storeu_ps(o + t.hi[c], hi);
                    }
                }
            }
        }
    }
}
#endif

/* x fp32 [M, K], qweight uint8 [N, K / 2] (layout above, block_n = B), scales_and_zeros bf16 [K / G, N, 2] as raw
 * uint16, out fp32 [M, N] (every element written). N % 16 == 0, K % G == 0, G % 32 == 0, B in {32, 64}. Returns
 * INT4_OK, INT4_BAD_SHAPE or INT4_NO_MEMORY. prefetch_bytes: how far ahead of its reads the vector path prefetches
 * (0: none). */
int int4_gemv(const float *x, const uint8_t *qweight, const uint16_t *scales_and_zeros, float *out, int64_t M,
              int64_t N, int64_t K, int64_t group_size, int64_t block_n, int interleaved, int num_threads,
              int64_t prefetch_bytes) {
    const int64_t G = group_size;
    if (M < 0 || N < 0 || K <= 0 || N % 16 || G <= 0 || G % 32 || K % G || (block_n != 32 && block_n != 64))
        return INT4_BAD_SHAPE;
    if (M == 0 || N == 0) return INT4_OK;
    const int64_t groups = K / G;
    float *gsum = malloc(sizeof(float) * M * groups);
    if (!gsum) return INT4_NO_MEMORY;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = g * G; k < (g + 1) * G; k++) s += x[m * K + k];
            gsum[m * groups + g] = s;
        }
    const int nt = num_threads > 0 ? num_threads : 1;
#if INT4_VECTOR
    gemv_vector(x, qweight, scales_and_zeros, gsum, out, M, N, K, G, block_n, interleaved, nt, prefetch_bytes);
#else
    (void)prefetch_bytes;
    gemv_generic(x, qweight, scales_and_zeros, gsum, out, M, N, K, G, block_n, interleaved, nt);
#endif
    free(gsum);
    return INT4_OK;
}

/* out fp32 [N, K] = (q - 8) * scale + zero: the dense weight a matmul of many rows multiplies by (prefill), read
 * from the same packed layout and scales. Threads take row blocks; each output row is written in order (a row
 * reads its nibbles nb / 2 bytes apart from its block, which stays in L2 across the block's rows).
 * Returns INT4_OK or INT4_BAD_SHAPE. */
int int4_dequantize(const uint8_t *qweight, const uint16_t *scales_and_zeros, float *out, int64_t N, int64_t K,
                    int64_t group_size, int64_t block_n, int interleaved, int num_threads) {
    const int64_t G = group_size, B = block_n;
    if (N < 0 || K <= 0 || K % 2 || N % 16 || G <= 0 || K % G || (B != 32 && B != 64)) return INT4_BAD_SHAPE;
    const int64_t blocks = (N + B - 1) / B, groups = K / G;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads > 0 ? num_threads : 1)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * B, nb = (N - n0 < B) ? N - n0 : B, half = nb / 2;
        const int inter = interleaved && nb == B;
        for (int64_t r = 0; r < nb; r++) {
            /* the byte column and nibble of row r inside its block */
            const int64_t col = inter ? r % half : r / 2;
            const int shift = (inter ? r >= half : r & 1) ? 4 : 0;
            const uint8_t *src = qweight + n0 * (K / 2) + col;
            float *o = out + (n0 + r) * K;
            for (int64_t g = 0; g < groups; g++) {
                const uint16_t *sz = scales_and_zeros + (g * N + n0 + r) * 2;
                const float scale = bf16_load(sz[0]), zero = bf16_load(sz[1]);
                for (int64_t k = g * G; k < (g + 1) * G; k++)
                    o[k] = (float)(((src[k * half] >> shift) & 15) - 8) * scale + zero;
            }
        }
    }
    return INT4_OK;
}
