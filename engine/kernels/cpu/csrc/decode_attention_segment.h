/* The cascade's segment task (decode_attention_cascade.h): query rows of one kv head over a run of keys read in place
 * from the pool, chunk by chunk with an online softmax, as matrix products on prepared chunks. Each chunk's keys are
 * loaded once for all the task's query rows: K transposed into dim-pair rows per 16-key block, V paired by keys.
 *
 * The products run on AMX tiles where the build targets AMX-BF16 and Linux grants this process tile data
 * (decode_attention_amx.h), else by AVX512_BF16 vdpbf16ps on the same layouts: each query row's dword (a pair of
 * dims, or of keys' weights) is broadcast against a 16-lane vector of 16 keys x 2 dims (or 16 dims x 2 keys), so no
 * lane ever needs a horizontal sum, which is the vector kernel's floor (~9 ns per key and kv head of 4 query heads
 * with every row in cache, where a 16 x 16 block of products here costs a few multiply-adds per pair).
 */
#define SEG_CH 128 /* keys per chunk: its transposed K and paired V (32 KB at head_dim 64) stay in L1/L2 */

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && !defined(DA_NO_AMX)
#include "decode_attention_amx.h"
#endif

/* 1 when this call's products run on tiles (AMX compiled in and permitted), 0 for the vector products */
static inline int seg_use_amx(void) {
#ifdef HAVE_AMX
    return amx_permitted;
#else
    return 0;
#endif
}

/* r[i] lane j -> r[j] lane i, for 32-bit lanes */
static inline void transpose16_epi32(__m512i *r) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* u[i + e], 128-bit lane L: rows i..i+3 of column 4L + e */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int e = 0; e < 4; ++e) {
        const __m512i x0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44), x1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
        const __m512i y0 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
        const __m512i y1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
        r[e] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + e] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
        r[8 + e] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
    }
}

/* One chunk's keys slots[0, nk) (nk <= SEG_CH) of kv head kh, prepared for the products: kt = K transposed in
 * dword (dim pair) rows per 16-key block, vp = V in key pairs per 16 dims; keys past nk read as 0. */
static void seg_prepare_chunk(const char *k_pool, const char *v_pool, const int32_t *slots, int64_t nk, int64_t kh,
                              int64_t KVH, int64_t D, uint16_t (*kt)[SEG_CH / 16][16][32],
                              uint16_t (*vp)[SEG_CH / 2][32]) {
    const int64_t row_bytes = KVH * D * 2, koff = kh * D * 2, KD = D / 32, nb16 = (nk + 15) / 16;
    for (int64_t j = 0; j < nb16; ++j)
        for (int64_t kd = 0; kd < KD; ++kd) {
            __m512i r[16];
            for (int64_t n = 0; n < 16; ++n) {
                const int64_t t = j * 16 + n;
                r[n] = t < nk ? _mm512_loadu_si512(k_pool + (int64_t)slots[t] * row_bytes + koff + kd * 64)
                              : _mm512_setzero_si512();
            }
            transpose16_epi32(r);
            for (int w = 0; w < 16; ++w) _mm512_store_si512(kt[kd][j][w], r[w]);
        }
    /* 16-bit lanes of (row 2w, row 2w + 1) interleaved: dims 0-15 of the pair, then dims 16-31 */
    static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                        8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                        24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_loadu_si512(lo_idx), hi = _mm512_loadu_si512(hi_idx);
    for (int64_t w = 0; w < ((nk + 31) & ~(int64_t)31) / 2; ++w) { /* padded keys get V = 0: 0 * garbage may be NaN */
        const int64_t t0 = 2 * w, t1 = 2 * w + 1;
        for (int64_t h = 0; h < KD; ++h) {
            const __m512i a = t0 < nk ? _mm512_loadu_si512(v_pool + (int64_t)slots[t0] * row_bytes + koff + h * 64)
                                      : _mm512_setzero_si512();
            const __m512i b = t1 < nk ? _mm512_loadu_si512(v_pool + (int64_t)slots[t1] * row_bytes + koff + h * 64)
                                      : _mm512_setzero_si512();
            _mm512_store_si512(vp[2 * h][w], _mm512_permutex2var_epi16(a, lo, b));
            _mm512_store_si512(vp[2 * h + 1][w], _mm512_permutex2var_epi16(a, hi, b));
        }
    }
}


/* c_i[16 v + l] (+)= sum over pairs w of a_i[2w] b_wv[2l] + a_i[2w + 1] b_wv[2l + 1], for rows i < rows and column
 * vectors v < n_cv: a_i = a + i * lda (bf16), b_wv = b + w * ldb_w + v * ldb_v (32 bf16, 16 lanes of 2), c_i = c + i *
 * ldc (fp32); `accumulate` adds to c. What one tile multiply computes, in 4 x 4 blocks of registers; rows and vectors
 * past the ends are computed on clamped copies and not stored. */
static inline void vec_dpbf16(float *c, int64_t ldc, const uint16_t *a, int64_t lda, const uint16_t *b, int64_t ldb_w,
                              int64_t ldb_v, int64_t n_pairs, int64_t rows, int64_t n_cv, int accumulate) {
    for (int64_t i0 = 0; i0 < rows; i0 += 4)
        for (int64_t v0 = 0; v0 < n_cv; v0 += 4) {
            const uint16_t *ar[4], *bv[4];
            __m512 acc[4][4];
            for (int r = 0; r < 4; ++r) ar[r] = a + (i0 + r < rows ? i0 + r : rows - 1) * lda;
            for (int v = 0; v < 4; ++v) bv[v] = b + (v0 + v < n_cv ? v0 + v : n_cv - 1) * ldb_v;
            for (int r = 0; r < 4; ++r)
                for (int v = 0; v < 4; ++v)
                    acc[r][v] = accumulate && i0 + r < rows && v0 + v < n_cv
                                    ? _mm512_loadu_ps(c + (i0 + r) * ldc + (v0 + v) * 16) : _mm512_setzero_ps();
            for (int64_t w = 0; w < n_pairs; ++w) {
                __m512bh bw[4];
                for (int v = 0; v < 4; ++v) bw[v] = (__m512bh)_mm512_loadu_si512(bv[v] + w * ldb_w);
                for (int r = 0; r < 4; ++r) {
                    int32_t pair;
                    memcpy(&pair, ar[r] + 2 * w, 4);
                    const __m512bh aw = (__m512bh)_mm512_set1_epi32(pair);
                    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], aw, bw[v]);
                }
            }
            for (int r = 0; r < 4 && i0 + r < rows; ++r)
                for (int v = 0; v < 4 && v0 + v < n_cv; ++v) _mm512_storeu_ps(c + (i0 + r) * ldc + (v0 + v) * 16, acc[r][v]);
        }
}

/* s[i][key] = q_i . k_key (unscaled) for query rows i < rows of qb and the keys of blocks [0, nb16) of kt */
static void seg_scores(int amx, const uint16_t (*qb)[MAX_D], int64_t rows, const uint16_t (*kt)[SEG_CH / 16][16][32],
                       int64_t nb16, int64_t KD, float (*s)[SEG_CH]) {
#ifdef HAVE_AMX
    if (amx) {
        amx_scores(qb, kt, nb16, KD, s);
        return;
    }
#endif
    (void)amx;
    for (int64_t kd = 0; kd < KD; ++kd)
        vec_dpbf16(s[0], SEG_CH, &qb[0][kd * 32], MAX_D, kt[kd][0][0], 32, 16 * 32, 16, rows, nb16, kd > 0);
}

/* o[i][dim] = sum over keys [0, nk32) of p[i][key] * v[key][dim], for rows i < rows (all 16 on tiles) */
static void seg_outputs(int amx, const uint16_t (*p)[SEG_CH], int64_t rows, const uint16_t (*vp)[SEG_CH / 2][32],
                        int64_t nk32, int64_t D, float (*o)[MAX_D]) {
#ifdef HAVE_AMX
    if (amx) {
        amx_outputs(p, vp, nk32, D, o);
        return;
    }
#endif
    (void)amx;
    vec_dpbf16(o[0], MAX_D, p[0], SEG_CH, vp[0][0], 32, (SEG_CH / 2) * 32, nk32 / 2, rows, D / 16, 0);
}

/* Where a task's query rows come from: row r is query head kh * G + r % G of token `tokens[r / G]` (decode groups)
 * or `first_token + r / G` (one extend request's new tokens) of q [*, H, D]; with causal_base >= 0, row r sees
 * only the keys [0, causal_base + r / G + 1) (token r / G sits at position causal_base + r / G). */
typedef struct {
    const uint16_t *q;
    int64_t H, first_token, causal_base;
    const int64_t *tokens;
} seg_rows;

static inline int64_t seg_row_limit(const seg_rows *src, int64_t r, int64_t G, int64_t n_keys) {
    return src->causal_base < 0 ? n_keys : src->causal_base + r / G + 1;
}

/* Query rows [row0, row0 + n_rows) of kv head kh over keys slots[0, n_keys), chunk by chunk with an online softmax.
 * Leaves row r's state [m, l, acc[D]] at part + (r - row0) * (D + 2); with `out` (bf16 [*, H, D]) it also writes
 * each row's normalised output there. */
static void seg_task(int amx, const seg_rows *src, const char *k_pool, const char *v_pool, const int32_t *slots,
                     int64_t n_keys, int64_t row0, int64_t n_rows, int64_t kh, int64_t KVH, int64_t D, float scale,
                     float *part, uint16_t *out) {
    const int64_t H = src->H, G = H / KVH, S = D + 2, KD = D / 32;
    _Alignas(64) uint16_t kt[MAX_D / 32][SEG_CH / 16][16][32]; /* [dims/32][key block][dim pair][key, 2 dims] */
    _Alignas(64) uint16_t vp[MAX_D / 16][SEG_CH / 2][32];       /* [dims/16][key pair][dim, 2 keys] */
    _Alignas(64) uint16_t qb[16][MAX_D];
    _Alignas(64) float s[16][SEG_CH];
    _Alignas(64) uint16_t p[16][SEG_CH];
    _Alignas(64) float o[16][MAX_D];
    float corr[16];
    for (int64_t r = 0; r < n_rows; ++r) {
        part[r * S] = -FLT_MAX;
        memset(part + r * S + 1, 0, (size_t)(D + 1) * 4);
    }
    const int64_t last_limit = seg_row_limit(src, row0 + n_rows - 1, G, n_keys);
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t c0 = 0; c0 < n_keys && c0 < last_limit; c0 += SEG_CH) {
        const int64_t nk = n_keys - c0 < SEG_CH ? n_keys - c0 : SEG_CH;
        const int64_t nb16 = (nk + 15) / 16, nk32 = (nk + 31) & ~(int64_t)31;
        seg_prepare_chunk(k_pool, v_pool, slots + c0, nk, kh, KVH, D, kt, vp);
        for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
            const int64_t rows = n_rows - r0 < 16 ? n_rows - r0 : 16;
            if (seg_row_limit(src, row0 + r0 + rows - 1, G, n_keys) <= c0) continue; /* causal: sees none of it */
            for (int64_t i = 0; i < 16; ++i) {
                if (i < rows) {
                    const int64_t row = row0 + r0 + i, t = src->tokens ? src->tokens[row / G] : src->first_token + row / G;
                    memcpy(qb[i], src->q + (t * H + kh * G + row % G) * D, (size_t)D * 2);
                } else {
                    memset(qb[i], 0, (size_t)D * 2);
                }
            }
            seg_scores(amx, qb, rows, kt, nb16, KD, s);
            for (int64_t i = 0; i < 16; ++i) {
                const int64_t seen = i < rows ? seg_row_limit(src, row0 + r0 + i, G, n_keys) - c0 : 0;
                const int64_t nv = seen < nk ? seen : nk; /* this row's keys in the chunk */
                if (nv <= 0) { /* padded rows, or a causal row that sees none of this chunk: weights 0 */
                    memset(p[i], 0, (size_t)nk32 * 2);
                    corr[i] = 1.0f;
                    continue;
                }
                float *st = part + (r0 + i) * S;
                const int64_t nvb = (nv + 15) / 16;
                __m512 mx = _mm512_set1_ps(st[0]);
                for (int64_t j = 0; j < nvb; ++j) {
                    const __mmask16 valid = nv - j * 16 >= 16 ? (__mmask16)0xffff
                                                              : (__mmask16)((1u << (nv - j * 16)) - 1u);
                    mx = _mm512_mask_max_ps(mx, valid, mx, _mm512_mul_ps(_mm512_load_ps(&s[i][j * 16]), vscale));
                }
                const float m = _mm512_reduce_max_ps(mx);
                __m512 sum = _mm512_setzero_ps();
                for (int64_t j = 0; j < nk32 / 16; ++j) {
                    const __mmask16 valid = j >= nvb ? 0 : nv - j * 16 >= 16 ? (__mmask16)0xffff
                                                                             : (__mmask16)((1u << (nv - j * 16)) - 1u);
                    const __m512 x = _mm512_fmsub_ps(_mm512_load_ps(&s[i][j * 16]), vscale, _mm512_set1_ps(m));
                    const __m512 e = _mm512_maskz_mov_ps(valid, exp16_nonpos(_mm512_min_ps(x, _mm512_setzero_ps())));
                    _mm512_store_ps(&s[i][j * 16], e);
                    sum = _mm512_add_ps(sum, e);
                }
                corr[i] = exp_nonpos(st[0] - m);
                st[0] = m;
                st[1] = st[1] * corr[i] + _mm512_reduce_add_ps(sum);
                for (int64_t kb = 0; kb < nk32 / 32; ++kb)
                    _mm512_store_si512(&p[i][kb * 32], (__m512i)_mm512_cvtne2ps_pbh(
                                                           _mm512_load_ps(&s[i][kb * 32 + 16]), _mm512_load_ps(&s[i][kb * 32])));
            }
            seg_outputs(amx, p, rows, vp, nk32, D, o);
            for (int64_t i = 0; i < rows; ++i) {
                float *acc = part + (r0 + i) * S + 2;
                const __m512 cr = _mm512_set1_ps(corr[i]);
                for (int64_t d = 0; d < D; d += 16)
                    _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(_mm512_loadu_ps(acc + d), cr, _mm512_load_ps(&o[i][d])));
            }
        }
    }
    if (!out) return;
    for (int64_t r = 0; r < n_rows; ++r) {
        const int64_t row = row0 + r, t = src->tokens ? src->tokens[row / G] : src->first_token + row / G;
        store_row(out + (t * H + kh * G + row % G) * D, part + r * S + 2, 1.0f / part[r * S + 1], D, 1);
    }
}

