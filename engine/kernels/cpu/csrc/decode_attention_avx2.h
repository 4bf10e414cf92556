/* The AVX2 + FMA path of decode_attention.c (included there on CPUs without AVX-512): the same (request, kv head)
 * task as attend_avx512, in blocks of 8 keys with one score per 256-bit lane. CPUs with AVX2 but no AVX-512 have
 * no native bf16 matmul, so `--dtype auto` serves fp32 there; bf16 pools are read too (widened on load).
 *
 * Why a path of its own: the portable loop scores one key at a time with a horizontal sum per (head, key); on an
 * AVX2-only AMD EPYC VM it ran 32 requests x 1,000 fp32 keys (8 heads over 2 kv heads, head_dim 64) in 5.1 ms
 * per layer. Needs D % 8 == 0; uses load_row/store_row and exp_nonpos of the including file. */
#include <immintrin.h>

/* 8 fp32 lanes of a pool row at src (bf16 when is_bf16) */
static inline __m256 load8(const char *src, int is_bf16) {
    if (is_bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
    return _mm256_loadu_ps((const float *)src);
}

/* lane j = the sum of v[j]'s 8 lanes */
static inline __m256 sum8(const __m256 *v) {
    const __m256 b0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3])); /* v0..v3: lo | hi halves */
    const __m256 b1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* exp(x) lane-wise for x <= 0: exp_nonpos's polynomial; 2^n built in the exponent bits (n >= -126 here) */
static inline __m256 exp8_nonpos(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* One (request, kv head): q pre-scaled, each K row loaded once for all G heads, online softmax per block. */
static inline __attribute__((always_inline)) void attend_avx2(
        const char *q, const char *k_pool, const char *v_pool, const int32_t *slots, int64_t n, char *out,
        int64_t kh, int64_t KVH, int64_t G, int64_t D, float scale, int is_bf16) {
    const int64_t esz = is_bf16 ? 2 : 4, row_bytes = KVH * D * esz, C = D / 8;
    __m256 qf[MAX_G * MAX_D / 8], acc[MAX_G * MAX_D / 8], part[MAX_G][8];
    float m[MAX_G], l[MAX_G], p[MAX_G][8];
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t c = 0; c < C; ++c) {
            qf[g * C + c] = _mm256_mul_ps(load8(q + (g * D + c * 8) * esz, is_bf16), _mm256_set1_ps(scale));
            acc[g * C + c] = _mm256_setzero_ps();
        }
        m[g] = -FLT_MAX;
        l[g] = 0.0f;
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const char *krow[8], *vrow[8];
    for (int64_t t0 = 0; t0 < n; t0 += 8) {
        const int64_t nb = n - t0 < 8 ? n - t0 : 8;
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)nb), lane));
        for (int64_t j = 0; j < nb; ++j) {
            const int64_t off = (int64_t)slots[t0 + j] * row_bytes + kh * D * esz;
            krow[j] = k_pool + off;
            vrow[j] = v_pool + off;
        }
        for (int64_t j = 0; t0 + 8 + j < n && j < 8; ++j) { /* the next block's rows are random reads: start them */
            const int64_t off = (int64_t)slots[t0 + 8 + j] * row_bytes + kh * D * esz;
            for (int64_t b = 0; b < D * esz; b += 64) {
                _mm_prefetch(k_pool + off + b, _MM_HINT_T0);
                _mm_prefetch(v_pool + off + b, _MM_HINT_T0);
            }
        }
        for (int64_t j = 0; j < 8; ++j) {
            if (j >= nb) {
                for (int64_t g = 0; g < G; ++g) part[g][j] = _mm256_setzero_ps();
                continue;
            }
            __m256 kc[MAX_D / 8];
            for (int64_t c = 0; c < C; ++c) kc[c] = load8(krow[j] + c * 8 * esz, is_bf16);
            for (int64_t g = 0; g < G; ++g) {
                __m256 a = _mm256_mul_ps(qf[g * C], kc[0]);
                for (int64_t c = 1; c < C; ++c) a = _mm256_fmadd_ps(qf[g * C + c], kc[c], a);
                part[g][j] = a;
            }
        }
        for (int64_t g = 0; g < G; ++g) {
            const __m256 sc = _mm256_blendv_ps(_mm256_set1_ps(-FLT_MAX), sum8(part[g]), valid);
            const float mx_blk = hmax8(sc);
            const float mx = mx_blk > m[g] ? mx_blk : m[g];
            const __m256 pr = _mm256_and_ps(exp8_nonpos(_mm256_sub_ps(sc, _mm256_set1_ps(mx))), valid);
            const float corr = exp_nonpos(m[g] - mx);
            l[g] = l[g] * corr + hsum8(pr);
            m[g] = mx;
            if (corr != 1.0f)
                for (int64_t c = 0; c < C; ++c) acc[g * C + c] = _mm256_mul_ps(acc[g * C + c], _mm256_set1_ps(corr));
            _mm256_storeu_ps(p[g], pr);
        }
        for (int64_t j = 0; j < nb; ++j)
            for (int64_t c = 0; c < C; ++c) {
                const __m256 v = load8(vrow[j] + c * 8 * esz, is_bf16);
                for (int64_t g = 0; g < G; ++g)
                    acc[g * C + c] = _mm256_fmadd_ps(_mm256_set1_ps(p[g][j]), v, acc[g * C + c]);
            }
    }
    for (int64_t g = 0; g < G; ++g) {
        float row[MAX_D];
        for (int64_t c = 0; c < C; ++c) _mm256_storeu_ps(row + c * 8, acc[g * C + c]);
        store_row(out + g * D * esz, row, 1.0f / l[g], D, is_bf16);
    }
}

#define AVX2_CASE(g, d) \
    case g: attend_avx2(q, k_pool, v_pool, slots, n, out, kh, KVH, g, d, scale, is_bf16); return;

/* constant head dims and group sizes let the compiler unroll the loops over heads and row chunks */
static void attend_avx2_specialised(const char *q, const char *k_pool, const char *v_pool, const int32_t *slots,
                                    int64_t n, char *out, int64_t kh, int64_t KVH, int64_t G, int64_t D, float scale,
                                    int is_bf16) {
    if (D == 64) {
        switch (G) { AVX2_CASE(1, 64) AVX2_CASE(2, 64) AVX2_CASE(3, 64) AVX2_CASE(4, 64)
                     AVX2_CASE(5, 64) AVX2_CASE(6, 64) AVX2_CASE(7, 64) AVX2_CASE(8, 64) }
    } else if (D == 128) {
        switch (G) { AVX2_CASE(1, 128) AVX2_CASE(2, 128) AVX2_CASE(3, 128) AVX2_CASE(4, 128)
                     AVX2_CASE(5, 128) AVX2_CASE(6, 128) AVX2_CASE(7, 128) AVX2_CASE(8, 128) }
    }
    attend_avx2(q, k_pool, v_pool, slots, n, out, kh, KVH, G, D, scale, is_bf16);
}
