/* Shared-prefix (cascade) decode attention and extend attention by AMX tiles: included by decode_attention.c when the compiler targets
 * AMX-BF16 and AVX512_BF16 (bf16 pools, head_dim % 32 == 0).
 *
 * A group is a set of decode requests whose tables hold the same slots on positions [key_start, key_end): the radix
 * cache hands one set of slots to everyone who matched a prefix, and engine/attention/prefix_tree.py cuts a step's
 * requests into nested groups, one per level. A group's keys are attended once for all of its query rows
 * (members x query heads of a kv head), as matrix products on AMX tiles, in tasks of one (group, kv head) that walk
 * the group's keys in chunks of AMX_CH with an online softmax; each task leaves a partial softmax state per query
 * row: m (the max scaled score), l (the sum of exp(score - m)) and acc[D] (the sum of exp(score - m) * v), fp32.
 * The rest of each request's keys (from the end of its deepest group on, or all of them outside any group) then
 * run through the vector kernel, resuming from the merged states of its groups.
 *
 * Extend attention takes the same task: its query rows are one request's new tokens (x query heads), each row
 * seeing the keys up to its own position (causal_base in amx_rows), and it writes normalised outputs directly.
 *
 * Why tiles pay here: the vector kernel's floor is its per-(query, key) dot-product reductions (~9 ns per key and
 * kv head of 4 query heads with every row in cache); a tile multiply does 16 x 16 x 32 products per instruction,
 * and a group's K/V rows are prepared (transposed, paired) once for all its query rows.
 *
 * Tile layouts (all tiles 16 rows x 64 bytes):
 *   scores S[q][key] = Q [16 q x 32 dims] . KT [16 dim pairs x (16 keys x 2)], summed over head_dim / 32;
 *   out O[q][dim] = P [16 q x 32 keys] . VP [16 key pairs x (16 dims x 2)], summed over the chunk's keys.
 */
#include <sys/syscall.h>
#include <unistd.h>

#define HAVE_AMX 1
#define AMX_CH 128 /* keys per chunk: its transposed K and paired V (32 KB at head_dim 64) stay in L1/L2 */
#define AMX_ARCH_GET_XCOMP_PERM 0x1022
#define AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_XFEATURE_XTILEDATA 18

static int amx_permitted = 0; /* set once by decode_attention_cascade_supported(); Linux grants it per process */

/* 1 when this process may use AMX tile data (asks Linux once; idempotent) */
static int amx_request_permission(void) {
    if (!amx_permitted) {
        unsigned long bits = 0;
        if (syscall(SYS_arch_prctl, AMX_ARCH_REQ_XCOMP_PERM, AMX_XFEATURE_XTILEDATA) == 0 &&
            syscall(SYS_arch_prctl, AMX_ARCH_GET_XCOMP_PERM, &bits) == 0 && (bits >> AMX_XFEATURE_XTILEDATA) & 1)
            amx_permitted = 1;
    }
    return amx_permitted;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

/* every tile 16 rows x 64 bytes; the configuration is per thread */
static void amx_configure(void) {
    amx_tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
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

/* One chunk's keys slots[0, nk) (nk <= AMX_CH) of kv head kh, prepared for the tiles: kt = K transposed in
 * dword (dim pair) rows per 16-key block, vp = V in key pairs per 16 dims; keys past nk read as 0. */
static void amx_prepare_chunk(const char *k_pool, const char *v_pool, const int32_t *slots, int64_t nk, int64_t kh,
                              int64_t KVH, int64_t D, uint16_t (*kt)[AMX_CH / 16][16][32],
                              uint16_t (*vp)[AMX_CH / 2][32]) {
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

/* Where a task's query rows come from: row r is query head kh * G + r % G of token `tokens[r / G]` (decode groups)
 * or `first_token + r / G` (one extend request's new tokens) of q [*, H, D]; with causal_base >= 0, row r sees
 * only the keys [0, causal_base + r / G + 1) (token r / G sits at position causal_base + r / G). */
typedef struct {
    const uint16_t *q;
    int64_t H, first_token, causal_base;
    const int64_t *tokens;
} amx_rows;

static inline int64_t amx_row_limit(const amx_rows *src, int64_t r, int64_t G, int64_t n_keys) {
    return src->causal_base < 0 ? n_keys : src->causal_base + r / G + 1;
}

/* Query rows [row0, row0 + n_rows) of kv head kh over keys slots[0, n_keys), chunk by chunk with an online softmax.
 * Leaves row r's state [m, l, acc[D]] at part + (r - row0) * (D + 2); with `out` (bf16 [*, H, D]) it also writes
 * each row's normalised output there. */
static void amx_segment_task(const amx_rows *src, const char *k_pool, const char *v_pool, const int32_t *slots,
                             int64_t n_keys, int64_t row0, int64_t n_rows, int64_t kh, int64_t KVH, int64_t D,
                             float scale, float *part, uint16_t *out) {
    const int64_t H = src->H, G = H / KVH, S = D + 2, KD = D / 32;
    _Alignas(64) uint16_t kt[MAX_D / 32][AMX_CH / 16][16][32]; /* [dims/32][key block][dim pair][key, 2 dims] */
    _Alignas(64) uint16_t vp[MAX_D / 16][AMX_CH / 2][32];       /* [dims/16][key pair][dim, 2 keys] */
    _Alignas(64) uint16_t qb[16][MAX_D];
    _Alignas(64) float s[16][AMX_CH];
    _Alignas(64) uint16_t p[16][AMX_CH];
    _Alignas(64) float o[16][MAX_D];
    float corr[16];
    for (int64_t r = 0; r < n_rows; ++r) {
        part[r * S] = -FLT_MAX;
        memset(part + r * S + 1, 0, (size_t)(D + 1) * 4);
    }
    const int64_t last_limit = amx_row_limit(src, row0 + n_rows - 1, G, n_keys);
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t c0 = 0; c0 < n_keys && c0 < last_limit; c0 += AMX_CH) {
        const int64_t nk = n_keys - c0 < AMX_CH ? n_keys - c0 : AMX_CH;
        const int64_t nb16 = (nk + 15) / 16, nk32 = (nk + 31) & ~(int64_t)31;
        amx_prepare_chunk(k_pool, v_pool, slots + c0, nk, kh, KVH, D, kt, vp);
        for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
            const int64_t rows = n_rows - r0 < 16 ? n_rows - r0 : 16;
            if (amx_row_limit(src, row0 + r0 + rows - 1, G, n_keys) <= c0) continue; /* causal: sees none of it */
            for (int64_t i = 0; i < 16; ++i) {
                if (i < rows) {
                    const int64_t row = row0 + r0 + i, t = src->tokens ? src->tokens[row / G] : src->first_token + row / G;
                    memcpy(qb[i], src->q + (t * H + kh * G + row % G) * D, (size_t)D * 2);
                } else {
                    memset(qb[i], 0, (size_t)D * 2);
                }
            }
            for (int64_t j = 0; j < nb16; ++j) {
                _tile_zero(0);
                for (int64_t kd = 0; kd < KD; ++kd) {
                    _tile_loadd(1, &qb[0][kd * 32], MAX_D * 2);
                    _tile_loadd(2, kt[kd][j], 64);
                    _tile_dpbf16ps(0, 1, 2);
                }
                _tile_stored(0, &s[0][j * 16], AMX_CH * 4);
            }
            for (int64_t i = 0; i < 16; ++i) {
                const int64_t seen = i < rows ? amx_row_limit(src, row0 + r0 + i, G, n_keys) - c0 : 0;
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
            for (int64_t t = 0; t < D / 16; ++t) {
                _tile_zero(3);
                for (int64_t kb = 0; kb < nk32 / 32; ++kb) {
                    _tile_loadd(4, &p[0][kb * 32], AMX_CH * 2);
                    _tile_loadd(5, vp[t][kb * 16], 64);
                    _tile_dpbf16ps(3, 4, 5);
                }
                _tile_stored(3, &o[0][t * 16], MAX_D * 4);
            }
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

/* init[g * (D + 2) ..] = the merge of the states src[i] + g * (D + 2) (query head g's row of each source) */
static void amx_merge_states(const float *const *src, int64_t n_src, int64_t G, int64_t D, float *init) {
    for (int64_t g = 0; g < G; ++g) {
        float *dst = init + g * (D + 2);
        float m = -FLT_MAX;
        for (int64_t i = 0; i < n_src; ++i) m = src[i][g * (D + 2)] > m ? src[i][g * (D + 2)] : m;
        dst[0] = m;
        memset(dst + 1, 0, (size_t)(D + 1) * 4);
        for (int64_t i = 0; i < n_src; ++i) {
            const float *st = src[i] + g * (D + 2), w = exp_nonpos(st[0] - m);
            dst[1] += w * st[1];
            for (int64_t d = 0; d < D; ++d) dst[2 + d] += w * st[2 + d];
        }
    }
}

#define AMX_MAX_LEVELS 64 /* segments one request can be in: one per level of the prefix tree, < the batch size */

/* decode_attention_cascade (decode_attention.c) on this build: 0, -1 (limits), -2 (out of memory), -3 (groups) */
static int amx_cascade(const void *q, const void *k_pool, const void *v_pool, const int32_t *table,
                       int64_t table_stride, const int64_t *rows, const int64_t *seq_lens, void *out, int64_t B,
                       int64_t H, int64_t KVH, int64_t D, float scale, int num_threads, int64_t n_groups,
                       const int64_t *group_start, const int64_t *members, const int64_t *key_start,
                       const int64_t *key_end) {
    if (!amx_permitted || D % 32 != 0 || D > MAX_D || H % KVH != 0 || H / KVH > MAX_G) return -1;
    const int64_t G = H / KVH, S = D + 2;
    if (n_groups < 0 || group_start[0] != 0) return -3;
    for (int64_t g = 0; g < n_groups; ++g)
        if (group_start[g + 1] <= group_start[g] || key_start[g] < 0 || key_end[g] <= key_start[g] ||
            key_end[g] > table_stride)
            return -3;
    const int64_t n_members = group_start[n_groups];
    /* per request: its segments (group, place in it) in key order, and where its own keys start; per group: its
     * first state (prefix sums) */
    int64_t *buf = (int64_t *)malloc(sizeof(int64_t) * (size_t)(3 * B + 1 + 2 * n_members + n_groups + 1));
    if (!buf) return -2;
    int64_t *first = buf, *suffix = first + B + 1, *fill = suffix + B, *entry = fill + B;
    int64_t *part_off = entry + 2 * n_members;
    int ok = 1;
    for (int64_t b = 0; b <= B; ++b) first[b] = 0;
    for (int64_t k = 0; ok && k < n_members; ++k) {
        ok = members[k] >= 0 && members[k] < B;
        if (ok) ++first[members[k] + 1];
    }
    for (int64_t b = 0; ok && b < B; ++b) {
        first[b + 1] += first[b];
        fill[b] = first[b];
    }
    for (int64_t g = 0; ok && g < n_groups; ++g)
        for (int64_t k = group_start[g]; k < group_start[g + 1]; ++k) {
            int64_t *e = entry + 2 * fill[members[k]]++;
            e[0] = g;
            e[1] = k - group_start[g];
        }
    for (int64_t b = 0; ok && b < B; ++b) { /* the kernel reads memory by these: check them all */
        int64_t *e = entry + 2 * first[b];
        const int64_t n = first[b + 1] - first[b];
        for (int64_t i = 1; i < n; ++i) /* by key_start (a few segments each: insertion sort) */
            for (int64_t j = i; j > 0 && key_start[e[2 * j]] < key_start[e[2 * j - 2]]; --j) {
                const int64_t g = e[2 * j], x = e[2 * j + 1];
                e[2 * j] = e[2 * j - 2], e[2 * j + 1] = e[2 * j - 1];
                e[2 * j - 2] = g, e[2 * j - 1] = x;
            }
        int64_t at = 0;
        const int32_t *row = table + rows[b] * table_stride;
        for (int64_t i = 0; ok && i < n; ++i) {
            const int64_t g = e[2 * i], lead = members[group_start[g]];
            ok = key_start[g] == at && n <= AMX_MAX_LEVELS &&
                 memcmp(row + at, table + rows[lead] * table_stride + at, (size_t)(key_end[g] - at) * 4) == 0;
            at = key_end[g];
        }
        ok = ok && at < seq_lens[b];
        suffix[b] = at;
    }
    if (!ok) {
        free(buf);
        return -3;
    }
    part_off[0] = 0;
    for (int64_t g = 0; g < n_groups; ++g)
        part_off[g + 1] = part_off[g] + KVH * (group_start[g + 1] - group_start[g]) * G * S;
    float *part = (float *)malloc(sizeof(float) * (size_t)(part_off[n_groups] > 0 ? part_off[n_groups] : 1));
    if (!part) {
        free(buf);
        return -2;
    }
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1)
    {
        amx_configure();
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_groups * KVH; ++t) {
            const int64_t g = t / KVH, kh = t % KVH, lo = group_start[g], n = group_start[g + 1] - lo;
            const amx_rows src = {(const uint16_t *)q, H, 0, -1, members + lo};
            amx_segment_task(&src, (const char *)k_pool, (const char *)v_pool,
                             table + rows[members[lo]] * table_stride + key_start[g], key_end[g] - key_start[g], 0,
                             n * G, kh, KVH, D, scale, part + part_off[g] + kh * n * G * S, NULL);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < B * KVH; ++t) {
            const int64_t b = t / KVH, kh = t % KVH, n_src = first[b + 1] - first[b];
            const int32_t *row = table + rows[b] * table_stride;
            if (n_src == 0) {
                attend_task(q, k_pool, v_pool, row, 0, seq_lens[b], out, b, kh, H, KVH, D, scale, 1, NULL);
                continue;
            }
            const float *src[AMX_MAX_LEVELS];
            for (int64_t i = 0; i < n_src; ++i) {
                const int64_t g = entry[2 * (first[b] + i)], idx = entry[2 * (first[b] + i) + 1];
                src[i] = part + part_off[g] + (kh * (group_start[g + 1] - group_start[g]) + idx) * G * S;
            }
            float init[MAX_G * (MAX_D + 2)];
            amx_merge_states(src, n_src, G, D, init);
            attend_task(q, k_pool, v_pool, row, suffix[b], seq_lens[b], out, b, kh, H, KVH, D, scale, 1, init);
        }
        _tile_release();
    }
    free(part);
    free(buf);
    return 0;
}

#define AMX_EXTEND_ROWS 128 /* query rows per extend task: 32 tokens of 4 query heads */

/* extend_attention_cascade (decode_attention.c) on this build: 0, or -1 (no AMX here, or shapes outside its limits) */
static int amx_extend(const void *q, const void *k_pool, const void *v_pool, const int32_t *table, int64_t table_stride,
                      const int64_t *rows, const int64_t *prefix_lens, const int64_t *extend_lens,
                      const int64_t *extend_starts, void *out, int64_t B, int64_t H, int64_t KVH, int64_t D, float scale,
                      int num_threads) {
    if (!amx_permitted || D % 32 != 0 || D > MAX_D || H % KVH != 0 || H / KVH > MAX_G) return -1;
    const int64_t G = H / KVH;
    int64_t *task_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(B + 1)); /* first task of each request */
    if (!task_off) return -2;
    task_off[0] = 0;
    for (int64_t b = 0; b < B; ++b)
        task_off[b + 1] = task_off[b] + KVH * ((extend_lens[b] * G + AMX_EXTEND_ROWS - 1) / AMX_EXTEND_ROWS);
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1)
    {
        amx_configure();
        float part[AMX_EXTEND_ROWS * (MAX_D + 2)];
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < task_off[B]; ++t) {
            int64_t b = 0;
            while (task_off[b + 1] <= t) ++b;
            const int64_t n_blocks = (task_off[b + 1] - task_off[b]) / KVH, kh = (t - task_off[b]) / n_blocks;
            const int64_t row0 = (t - task_off[b]) % n_blocks * AMX_EXTEND_ROWS, all = extend_lens[b] * G;
            const amx_rows src = {(const uint16_t *)q, H, extend_starts[b], prefix_lens[b], NULL};
            amx_segment_task(&src, (const char *)k_pool, (const char *)v_pool, table + rows[b] * table_stride,
                             prefix_lens[b] + extend_lens[b], row0, all - row0 < AMX_EXTEND_ROWS ? all - row0 : AMX_EXTEND_ROWS,
                             kh, KVH, D, scale, part, (uint16_t *)out);
        }
        _tile_release();
    }
    free(task_off);
    return 0;
}
