/* Decode attention over a paged KV pool, read in place, for CPUs (built by engine/kernels/cpu/decode_attention.py).
 *
 * One query token per request; request b's keys are the pool rows table[rows[b], 0 .. seq_lens[b]), in order.
 * Layouts (all contiguous): q, out [B, H, D]; k_pool, v_pool [num_slots, KVH, D]; table [*, table_stride] int32.
 * Query head h reads kv head h / (H / KVH) (grouped-query attention). Scores, softmax and the output
 * accumulator are fp32; bf16 tensors are read and written as raw uint16 (round to nearest even on output).
 *
 * Work is one (request, kv head) pair per task, split over the OpenMP threads (torch's own libgomp when loaded
 * into a torch process, so one thread pool serves both). Keys go in blocks (16 in the AVX-512 path, BLK in the
 * portable loop) with an online softmax: each K and V row is read once from the pool, for all query heads of its
 * kv head, instead of being gathered into a padded copy and read again; requests that share a cached prefix read
 * the same rows, which then come from cache rather than memory. The AVX-512 path is decode_attention_avx512.h; CPUs
 * with AVX2 but no AVX-512 take 8-key blocks (decode_attention_avx2.h). With AVX512_BF16, bf16 scores are vdpbf16ps
 * dot products of the raw rows (exact bf16 products, fp32 sums), as a bf16 matmul computes them, and the cascade
 * for shared prefixes and the extend entry are compiled in (decode_attention_cascade.h).
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#define BLK 32
#define MAX_D 256
#define MAX_G 16

/* dst[0..D) = the fp32 value of a pool row (bf16 when is_bf16, else fp32) */
static inline void load_row(float *restrict dst, const void *restrict src, int64_t D, int is_bf16) {
    if (is_bf16) {
        const uint16_t *h = (const uint16_t *)src;
        uint32_t *u = (uint32_t *)dst;
        for (int64_t d = 0; d < D; ++d) u[d] = (uint32_t)h[d] << 16;
    } else {
        memcpy(dst, src, (size_t)D * 4);
    }
}

static inline void store_row(void *restrict dst, const float *restrict src, float mul, int64_t D, int is_bf16) {
    if (is_bf16) {
        uint16_t *h = (uint16_t *)dst;
        for (int64_t d = 0; d < D; ++d) {
            float f = src[d] * mul;
            uint32_t u;
            memcpy(&u, &f, 4);
            u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (finite values only) */
            h[d] = (uint16_t)(u >> 16);
        }
    } else {
        float *o = (float *)dst;
        for (int64_t d = 0; d < D; ++d) o[d] = src[d] * mul;
    }
}

/* exp(x) for x <= 0 (arguments here are score - running max), relative error < 2e-7; plain arithmetic so that
 * the compiler vectorises the loops that call it (libm's expf does not vectorise without -ffast-math). */
static inline float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f); /* round(x / ln2), x <= 0 */
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static void attend_generic(const char *q, const char *k_pool, const char *v_pool, const int32_t *slots, int64_t n,
                       char *out, int64_t kh, int64_t KVH, int64_t G, int64_t D, float scale, int is_bf16) {
    const int64_t esz = is_bf16 ? 2 : 4, row_bytes = KVH * D * esz;
    float qf[MAX_G][MAX_D], acc[MAX_G][MAX_D], s[MAX_G][BLK], kt[BLK][MAX_D], m[MAX_G], l[MAX_G];
    for (int64_t g = 0; g < G; ++g) {
        load_row(qf[g], q + g * D * esz, D, is_bf16);
        for (int64_t d = 0; d < D; ++d) {
            qf[g][d] *= scale;
            acc[g][d] = 0.0f;
        }
        m[g] = -FLT_MAX;
        l[g] = 0.0f;
    }
    for (int64_t t0 = 0; t0 < n; t0 += BLK) {
        const int64_t nb = n - t0 < BLK ? n - t0 : BLK;
        for (int64_t j = 0; j < nb; ++j)
            load_row(kt[j], k_pool + (int64_t)slots[t0 + j] * row_bytes + kh * D * esz, D, is_bf16);
        for (int64_t g = 0; g < G; ++g) {
            for (int64_t j = 0; j < nb; ++j) {
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t d = 0; d < D; ++d) sum += qf[g][d] * kt[j][d];
                s[g][j] = sum;
            }
            float mx = m[g];
            for (int64_t j = 0; j < nb; ++j) mx = s[g][j] > mx ? s[g][j] : mx;
            const float corr = exp_nonpos(m[g] - mx);
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < nb; ++j) {
                s[g][j] = exp_nonpos(s[g][j] - mx);
                sum += s[g][j];
            }
            l[g] = l[g] * corr + sum;
            m[g] = mx;
            for (int64_t d = 0; d < D; ++d) acc[g][d] *= corr;
        }
        for (int64_t j = 0; j < nb; ++j)
            load_row(kt[j], v_pool + (int64_t)slots[t0 + j] * row_bytes + kh * D * esz, D, is_bf16);
        for (int64_t g = 0; g < G; ++g)
            for (int64_t j = 0; j < nb; ++j) {
                const float p = s[g][j];
                for (int64_t d = 0; d < D; ++d) acc[g][d] += p * kt[j][d];
            }
    }
    for (int64_t g = 0; g < G; ++g) store_row(out + g * D * esz, acc[g], 1.0f / l[g], D, is_bf16);
}

#if defined(__AVX512F__) && !defined(DA_GENERIC)
#define HAVE_AVX512 1
#include "decode_attention_avx512.h"
#endif

#if !defined(HAVE_AVX512) && defined(__AVX2__) && defined(__FMA__) && !defined(DA_GENERIC)
#define HAVE_AVX2 1
#include "decode_attention_avx2.h"
#endif

/* Request b's query heads of kv head kh over its keys row[start, n), resuming from `init` when not NULL (only the
 * AVX-512 path takes it: the cascade entry runs only where AVX512_BF16, hence AVX-512, is compiled in). */
static void attend_task(const void *q, const void *k_pool, const void *v_pool, const int32_t *row, int64_t start,
                        int64_t n, void *out, int64_t b, int64_t kh, int64_t H, int64_t KVH, int64_t D, float scale,
                        int is_bf16, const float *init) {
    const int64_t G = H / KVH, esz = is_bf16 ? 2 : 4, head0 = (b * H + kh * G) * D * esz;
    const char *qb = (const char *)q + head0;
    char *ob = (char *)out + head0;
    const int32_t *slots = row + start;
    n -= start;
    (void)init; /* read by the AVX-512 path only */
#ifdef HAVE_AVX512
    /* constant head dims, group sizes and dtypes let the compiler unroll the loops over heads and row chunks,
     * keeping q and the accumulators in registers */
    if (is_bf16 && (D == 64 || D == 128) && G <= 8)
        attend_bf16_specialised(qb, k_pool, v_pool, slots, n, ob, kh, KVH, G, D, scale, init);
    else if (D % 16 == 0)
        attend_avx512(qb, k_pool, v_pool, slots, n, ob, kh, KVH, G, D, scale, is_bf16, init);
    else
#endif
#ifdef HAVE_AVX2
    if (D % 8 == 0)
        attend_avx2_specialised(qb, k_pool, v_pool, slots, n, ob, kh, KVH, G, D, scale, is_bf16);
    else
#endif
        attend_generic(qb, k_pool, v_pool, slots, n, ob, kh, KVH, G, D, scale, is_bf16);
}

#if defined(HAVE_AVX512) && defined(__AVX512BF16__)
#include "decode_attention_cascade.h"
#endif

/* The entry point: returns 0, or -1 when a limit is exceeded (the wrapper checks them first); runs on
 * num_threads OpenMP threads. */
int decode_attention(const void *q, const void *k_pool, const void *v_pool, const int32_t *table,
                     int64_t table_stride, const int64_t *rows, const int64_t *seq_lens, void *out, int64_t B,
                     int64_t H, int64_t KVH, int64_t D, float scale, int is_bf16, int num_threads) {
    if (D > MAX_D || H % KVH != 0 || H / KVH > MAX_G) return -1;
    /* the caller's thread count: OpenMP settings are per thread, and torch's may not reach the engine's thread */
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads > 0 ? num_threads : 1)
    for (int64_t task = 0; task < B * KVH; ++task) {
        const int64_t b = task / KVH, kh = task % KVH;
        attend_task(q, k_pool, v_pool, table + rows[b] * table_stride, 0, seq_lens[b], out, b, kh, H, KVH, D, scale,
                    is_bf16, NULL);
    }
    return 0;
}

int64_t decode_attention_max_head_dim(void) { return MAX_D; }
int64_t decode_attention_max_group(void) { return MAX_G; }

/* 1 when a vectorised path (AVX-512, or AVX2 + FMA) was compiled in (the generic one serves the rest) */
int decode_attention_vectorised(void) {
#if defined(HAVE_AVX512) || defined(HAVE_AVX2)
    return 1;
#else
    return 0;
#endif
}

/* Decode attention with shared prefixes attended once per group (decode_attention_cascade.h), for bf16 pools: the
 * arguments of decode_attention, then n_groups groups; group g's members (indices b of this batch) are
 * members[group_start[g] .. group_start[g + 1]), and their shared keys are positions [key_start[g], key_end[g]),
 * which every member's table row holds with the same slots. A request's groups must tile its positions from 0 up to
 * below its seq_len (one group per level of a prefix tree); the rest of its keys, or all of them outside any group,
 * attend as in decode_attention. Returns 0; -1 where this build has no AVX512_BF16 or the shapes are outside its
 * limits (bf16, head_dim % 32 == 0); -2 out of memory; -3 when the groups break that contract. */
int decode_attention_cascade(const void *q, const void *k_pool, const void *v_pool, const int32_t *table,
                             int64_t table_stride, const int64_t *rows, const int64_t *seq_lens, void *out, int64_t B,
                             int64_t H, int64_t KVH, int64_t D, float scale, int num_threads, int64_t n_groups,
                             const int64_t *group_start, const int64_t *members, const int64_t *key_start,
                             const int64_t *key_end) {
#ifdef HAVE_CASCADE
    return cascade_decode(q, k_pool, v_pool, table, table_stride, rows, seq_lens, out, B, H, KVH, D, scale,
                          num_threads, n_groups, group_start, members, key_start, key_end);
#else
    (void)q, (void)k_pool, (void)v_pool, (void)table, (void)table_stride, (void)rows, (void)seq_lens, (void)out;
    (void)B, (void)H, (void)KVH, (void)D, (void)scale, (void)num_threads, (void)n_groups, (void)group_start;
    (void)members, (void)key_start, (void)key_end;
    return -1;
#endif
}

/* Extend attention for bf16 pools on the cascade's matrix products (decode_attention_cascade.h): request b's
 * extend_lens[b] new tokens, rows extend_starts[b] .. of q and out [T, H, D], sit at positions prefix_lens[b] .. of
 * table row rows[b], whose K/V the pool already holds; each attends causally to positions [0, its own]. Returns 0;
 * -1 where this build has no AVX512_BF16 or the shapes are outside its limits (bf16, head_dim % 32 == 0); -2 out of
 * memory. */
int extend_attention_cascade(const void *q, const void *k_pool, const void *v_pool, const int32_t *table,
                             int64_t table_stride, const int64_t *rows, const int64_t *prefix_lens,
                             const int64_t *extend_lens, const int64_t *extend_starts, void *out, int64_t B, int64_t H,
                             int64_t KVH, int64_t D, float scale, int num_threads) {
#ifdef HAVE_CASCADE
    return cascade_extend(q, k_pool, v_pool, table, table_stride, rows, prefix_lens, extend_lens, extend_starts, out, B,
                          H, KVH, D, scale, num_threads);
#else
    (void)q, (void)k_pool, (void)v_pool, (void)table, (void)table_stride, (void)rows, (void)prefix_lens;
    (void)extend_lens, (void)extend_starts, (void)out, (void)B, (void)H, (void)KVH, (void)D, (void)scale;
    (void)num_threads;
    return -1;
#endif
}

/* 1 when decode_attention_cascade and extend_attention_cascade run here (an AVX512_BF16 build); asks Linux for AMX
 * tile data once, where the build has tiles, so that the calls after it use them */
int decode_attention_cascade_supported(void) {
#ifdef HAVE_AMX
    amx_request_permission();
#endif
#ifdef HAVE_CASCADE
    return 1;
#else
    return 0;
#endif
}

/* 1 when the cascade's products run on AMX tiles in this process, 0 on AVX512_BF16 vectors (or no cascade) */
int decode_attention_cascade_tiles(void) {
#ifdef HAVE_AMX
    return amx_permitted;
#else
    return 0;
#endif
}
