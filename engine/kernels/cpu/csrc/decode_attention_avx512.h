/* The AVX-512 path of decode_attention.c (included there when the compiler targets AVX-512F): one (request, kv head)
 * task in blocks of 16 keys, one score per lane, each K and V row loaded once for all query heads of its kv head;
 * with AVX512_BF16, bf16 scores are vdpbf16ps dot products of the raw rows. It also resumes a softmax state (`init`),
 * which is how the cascade (decode_attention_cascade.h) runs each request's own keys after its shared segments.
 * Uses load_row/store_row and exp_nonpos of the including file. */
#include <immintrin.h>
/* 16 fp32 lanes of a pool row at src (bf16 when is_bf16) */
static inline __m512 load16(const char *src, int is_bf16) {
    if (is_bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
    return _mm512_loadu_ps((const float *)src);
}

/* lane j = the sum of v[j]'s 16 lanes: a transposing tree, 45 shuffles and adds for 16 sums */
static inline __m512 sum16(const __m512 *v) {
    __m512 w[8], x[4];
    for (int i = 0; i < 8; ++i)
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
        x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 y0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xdd));
    __m512 y1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88), _mm512_shuffle_f32x4(y0, y1, 0xdd));
}

/* exp(x) lane-wise for x <= 0, same polynomial as exp_nonpos; scalef applies 2^n */
static inline __m512 exp16_nonpos(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* One (request, kv head): blocks of 16 keys, one score per lane. Needs D % 16 == 0. `init`, when not NULL, holds
 * each query head's softmax state over earlier keys (G rows of [m, l, acc[D]], the layout of decode_attention_cascade.h),
 * which these keys continue. */
static inline __attribute__((always_inline)) void attend_avx512(
        const char *q, const char *k_pool, const char *v_pool, const int32_t *slots, int64_t n, char *out,
        int64_t kh, int64_t KVH, int64_t G, int64_t D, float scale, int is_bf16, const float *init) {
    const int64_t esz = is_bf16 ? 2 : 4, row_bytes = KVH * D * esz, C = D / 16;
    /* bf16 with AVX512_BF16: scores by vdpbf16ps on the raw rows (pairs of products summed in fp32; no
     * conversion), the scale applied to the summed scores; otherwise fp32 FMAs on converted rows, q pre-scaled */
#ifdef __AVX512BF16__
    const int dot_bf16 = is_bf16 && D % 32 == 0;
#else
    const int dot_bf16 = 0;
#endif
    __m512 qf[MAX_G * MAX_D / 16], acc[MAX_G * MAX_D / 16], part[MAX_G][16];
    float m[MAX_G], l[MAX_G], p[MAX_G][16];
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t c = 0; c < C; ++c) {
            qf[g * C + c] = dot_bf16 ? _mm512_castsi512_ps(_mm512_loadu_si512(q + (g * D + c * 32) * esz))
                                     : _mm512_mul_ps(load16(q + (g * D + c * 16) * esz, is_bf16), _mm512_set1_ps(scale));
            acc[g * C + c] = init ? _mm512_loadu_ps(init + g * (D + 2) + 2 + c * 16) : _mm512_setzero_ps();
        }
        m[g] = init ? init[g * (D + 2)] : -FLT_MAX;
        l[g] = init ? init[g * (D + 2) + 1] : 0.0f;
    }
    const __m512 score_scale = _mm512_set1_ps(dot_bf16 ? scale : 1.0f);
    const char *krow[16], *vrow[16];
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
        const int64_t nb = n - t0 < 16 ? n - t0 : 16;
        const __mmask16 valid = (__mmask16)((1u << nb) - 1u);
        for (int64_t j = 0; j < nb; ++j) {
            const int64_t off = (int64_t)slots[t0 + j] * row_bytes + kh * D * esz;
            krow[j] = k_pool + off;
            vrow[j] = v_pool + off;
        }
        for (int64_t j = 0; t0 + 16 + j < n && j < 16; ++j) { /* the next block's rows are random reads: start them */
            const int64_t off = (int64_t)slots[t0 + 16 + j] * row_bytes + kh * D * esz;
            for (int64_t b = 0; b < D * esz; b += 64) {
                _mm_prefetch(k_pool + off + b, _MM_HINT_T0);
                _mm_prefetch(v_pool + off + b, _MM_HINT_T0);
            }
        }
        for (int64_t j = 0; j < 16; ++j) { /* each K row is loaded once for all G heads */
            if (j >= nb) {
                for (int64_t g = 0; g < G; ++g) part[g][j] = _mm512_setzero_ps();
                continue;
            }
            if (dot_bf16) {
#ifdef __AVX512BF16__
                __m512i k2[MAX_D / 32];
                for (int64_t c = 0; c < D / 32; ++c) k2[c] = _mm512_loadu_si512(krow[j] + c * 64);
                for (int64_t g = 0; g < G; ++g) {
                    __m512 a = _mm512_setzero_ps();
                    for (int64_t c = 0; c < D / 32; ++c)
                        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_castps_si512(qf[g * C + c]), (__m512bh)k2[c]);
                    part[g][j] = a;
                }
#endif
            } else {
                __m512 kc[MAX_D / 16];
                for (int64_t c = 0; c < C; ++c) kc[c] = load16(krow[j] + c * 16 * esz, is_bf16);
                for (int64_t g = 0; g < G; ++g) {
                    __m512 a = _mm512_mul_ps(qf[g * C], kc[0]);
                    for (int64_t c = 1; c < C; ++c) a = _mm512_fmadd_ps(qf[g * C + c], kc[c], a);
                    part[g][j] = a;
                }
            }
        }
        for (int64_t g = 0; g < G; ++g) {
            const __m512 sc = _mm512_mul_ps(sum16(part[g]), score_scale);
            const float mx_blk = _mm512_mask_reduce_max_ps(valid, sc);
            const float mx = mx_blk > m[g] ? mx_blk : m[g];
            const __m512 pr = _mm512_maskz_mov_ps(valid, exp16_nonpos(_mm512_sub_ps(sc, _mm512_set1_ps(mx))));
            const float corr = _mm512_cvtss_f32(exp16_nonpos(_mm512_set1_ps(m[g] - mx)));
            l[g] = l[g] * corr + _mm512_reduce_add_ps(pr);
            m[g] = mx;
            if (corr != 1.0f)
                for (int64_t c = 0; c < C; ++c) acc[g * C + c] = _mm512_mul_ps(acc[g * C + c], _mm512_set1_ps(corr));
            _mm512_storeu_ps(p[g], pr);
        }
        for (int64_t j = 0; j < nb; ++j)
            for (int64_t c = 0; c < C; ++c) {
                const __m512 v = load16(vrow[j] + c * 16 * esz, is_bf16);
                for (int64_t g = 0; g < G; ++g)
                    acc[g * C + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[g][j]), v, acc[g * C + c]);
            }
    }
    for (int64_t g = 0; g < G; ++g) {
        float row[MAX_D];
        for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(row + c * 16, acc[g * C + c]);
        store_row(out + g * D * esz, row, 1.0f / l[g], D, is_bf16);
    }
}

#define ATTEND_CASE(g, d) \
    case g: attend_avx512(q, k_pool, v_pool, slots, n, out, kh, KVH, g, d, scale, 1, init); return;

static void attend_bf16_specialised(const char *q, const char *k_pool, const char *v_pool, const int32_t *slots,
                                    int64_t n, char *out, int64_t kh, int64_t KVH, int64_t G, int64_t D, float scale,
                                    const float *init) {
    if (D == 64) {
        switch (G) { ATTEND_CASE(1, 64) ATTEND_CASE(2, 64) ATTEND_CASE(3, 64) ATTEND_CASE(4, 64)
                     ATTEND_CASE(5, 64) ATTEND_CASE(6, 64) ATTEND_CASE(7, 64) ATTEND_CASE(8, 64) }
    } else {
        switch (G) { ATTEND_CASE(1, 128) ATTEND_CASE(2, 128) ATTEND_CASE(3, 128) ATTEND_CASE(4, 128)
                     ATTEND_CASE(5, 128) ATTEND_CASE(6, 128) ATTEND_CASE(7, 128) ATTEND_CASE(8, 128) }
    }
    attend_avx512(q, k_pool, v_pool, slots, n, out, kh, KVH, G, D, scale, 1, init);
}
