/* Shared-prefix (cascade) decode attention and extend attention on matrix products: included by decode_attention.c
 * when the compiler targets AVX512_BF16 (bf16 pools, head_dim % 32 == 0). The products run on AMX tiles where the CPU
 * has them, else on AVX512_BF16 vectors (decode_attention_segment.h).
 *
 * A group is a set of decode requests whose tables hold the same slots on positions [key_start, key_end): the radix
 * cache hands one set of slots to everyone who matched a prefix, and engine/attention/prefix_tree.py cuts a step's
 * requests into nested groups, one per level. A group's keys are attended once for all of its query rows
 * (members x query heads of a kv head), in tasks of one (group, kv head) that walk the group's keys in chunks of
 * SEG_CH with an online softmax; each task leaves a partial softmax state per query row: m (the max scaled score),
 * l (the sum of exp(score - m)) and acc[D] (the sum of exp(score - m) * v), fp32. The rest of each request's keys
 * (from the end of its deepest group on, or all of them outside any group) then run through the vector kernel,
 * resuming from the merged states of its groups.
 *
 * Extend attention takes the same task: its query rows are one request's new tokens (x query heads), each row
 * seeing the keys up to its own position (causal_base in seg_rows), and it writes normalised outputs directly.
 */
#define HAVE_CASCADE 1
#include "decode_attention_segment.h"

/* init[g * (D + 2) ..] = the merge of the states src[i] + g * (D + 2) (query head g's row of each source) */
static void seg_merge_states(const float *const *src, int64_t n_src, int64_t G, int64_t D, float *init) {
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

#define SEG_MAX_LEVELS 64 /* segments one request can be in: one per level of the prefix tree, < the batch size */

/* decode_attention_cascade (decode_attention.c): 0, -1 (limits), -2 (out of memory), -3 (groups) */
static int cascade_decode(const void *q, const void *k_pool, const void *v_pool, const int32_t *table,
                       int64_t table_stride, const int64_t *rows, const int64_t *seq_lens, void *out, int64_t B,
                       int64_t H, int64_t KVH, int64_t D, float scale, int num_threads, int64_t n_groups,
                       const int64_t *group_start, const int64_t *members, const int64_t *key_start,
                       const int64_t *key_end) {
    if (D % 32 != 0 || D > MAX_D || H % KVH != 0 || H / KVH > MAX_G) return -1;
    const int64_t G = H / KVH, S = D + 2;
    const int amx = seg_use_amx();
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
            ok = key_start[g] == at && n <= SEG_MAX_LEVELS &&
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
#ifdef HAVE_AMX
        if (amx) amx_configure();
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_groups * KVH; ++t) {
            const int64_t g = t / KVH, kh = t % KVH, lo = group_start[g], n = group_start[g + 1] - lo;
            const seg_rows src = {(const uint16_t *)q, H, 0, -1, members + lo};
            seg_task(amx, &src, (const char *)k_pool, (const char *)v_pool,
                     table + rows[members[lo]] * table_stride + key_start[g], key_end[g] - key_start[g], 0, n * G, kh,
                     KVH, D, scale, part + part_off[g] + kh * n * G * S, NULL);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < B * KVH; ++t) {
            const int64_t b = t / KVH, kh = t % KVH, n_src = first[b + 1] - first[b];
            const int32_t *row = table + rows[b] * table_stride;
            if (n_src == 0) {
                attend_task(q, k_pool, v_pool, row, 0, seq_lens[b], out, b, kh, H, KVH, D, scale, 1, NULL);
                continue;
            }
            const float *src[SEG_MAX_LEVELS];
            for (int64_t i = 0; i < n_src; ++i) {
                const int64_t g = entry[2 * (first[b] + i)], idx = entry[2 * (first[b] + i) + 1];
                src[i] = part + part_off[g] + (kh * (group_start[g + 1] - group_start[g]) + idx) * G * S;
            }
            float init[MAX_G * (MAX_D + 2)];
            seg_merge_states(src, n_src, G, D, init);
            attend_task(q, k_pool, v_pool, row, suffix[b], seq_lens[b], out, b, kh, H, KVH, D, scale, 1, init);
        }
#ifdef HAVE_AMX
        if (amx) _tile_release();
#endif
    }
    free(part);
    free(buf);
    return 0;
}

#define SEG_EXTEND_ROWS 128 /* query rows per extend task: 32 tokens of 4 query heads */

/* extend_attention_cascade (decode_attention.c): 0, -1 (shapes outside its limits), -2 (out of memory) */
static int cascade_extend(const void *q, const void *k_pool, const void *v_pool, const int32_t *table, int64_t table_stride,
                      const int64_t *rows, const int64_t *prefix_lens, const int64_t *extend_lens,
                      const int64_t *extend_starts, void *out, int64_t B, int64_t H, int64_t KVH, int64_t D, float scale,
                      int num_threads) {
    if (D % 32 != 0 || D > MAX_D || H % KVH != 0 || H / KVH > MAX_G) return -1;
    const int64_t G = H / KVH;
    const int amx = seg_use_amx();
    int64_t *task_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(B + 1)); /* first task of each request */
    if (!task_off) return -2;
    task_off[0] = 0;
    for (int64_t b = 0; b < B; ++b)
        task_off[b + 1] = task_off[b] + KVH * ((extend_lens[b] * G + SEG_EXTEND_ROWS - 1) / SEG_EXTEND_ROWS);
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1)
    {
#ifdef HAVE_AMX
        if (amx) amx_configure();
#endif
        float part[SEG_EXTEND_ROWS * (MAX_D + 2)];
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < task_off[B]; ++t) {
            int64_t b = 0;
            while (task_off[b + 1] <= t) ++b;
            const int64_t n_blocks = (task_off[b + 1] - task_off[b]) / KVH, kh = (t - task_off[b]) / n_blocks;
            const int64_t row0 = (t - task_off[b]) % n_blocks * SEG_EXTEND_ROWS, all = extend_lens[b] * G;
            const seg_rows src = {(const uint16_t *)q, H, extend_starts[b], prefix_lens[b], NULL};
            seg_task(amx, &src, (const char *)k_pool, (const char *)v_pool, table + rows[b] * table_stride,
                     prefix_lens[b] + extend_lens[b], row0, all - row0 < SEG_EXTEND_ROWS ? all - row0 : SEG_EXTEND_ROWS,
                     kh, KVH, D, scale, part, (uint16_t *)out);
        }
#ifdef HAVE_AMX
        if (amx) _tile_release();
#endif
    }
    free(task_off);
    return 0;
}
