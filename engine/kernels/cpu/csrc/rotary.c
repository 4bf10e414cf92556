/* Rotary position embedding (neox style, HF's rotate_half) in place on q and k, for CPUs (built by
 * engine/kernels/cpu/rotary.py).
 *
 * For a head vector x, half = head_dim / 2, the token's position p, c = cos_sin[p, :half], s = cos_sin[p, half:]
 * (fp32 rows, as engine.models.layers.RotaryEmbedding builds them):
 *   x[j]        <- x[j] * c[j] - x[j + half] * s[j]        for j < half
 *   x[j + half] <- x[j + half] * c[j] + x[j] * s[j]
 * with the torch path's roundings, so the result is bitwise that of HF's `q * cos + rotate_half(q) * sin` in the
 * model's dtype: in bf16, c and s are rounded to bf16 first and each product and the sum are rounded to bf16 (the
 * products of two bf16 values are exact in fp32, so only those roundings matter); in fp32, two products and a sum
 * without fused multiply-adds. bf16 travels as raw uint16. One pass per token over all of its heads, where torch
 * makes ~8 ops per tensor per layer (~113 us per layer for a 366-token step of the bench preset, 2 threads).
 */
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define MAX_HALF 256

static inline float bf16_value(float f) { return bf16_load(bf16_round(f)); } /* f rounded to bf16, as fp32 */

/* n_heads heads at x (token's first head), head_stride elements apart; c, s: this token's half rows (bf16 values
 * already, for bf16) */
__attribute__((optimize("fp-contract=off"))) static void rotate_bf16(uint16_t *x, int64_t n_heads, int64_t head_stride,
                                                                     int64_t half, const float *c, const float *s) {
    for (int64_t h = 0; h < n_heads; ++h) {
        uint16_t *v = x + h * head_stride;
        for (int64_t j = 0; j < half; ++j) {
            const float x1 = bf16_load(v[j]), x2 = bf16_load(v[j + half]);
            v[j] = bf16_round(bf16_value(x1 * c[j]) - bf16_value(x2 * s[j]));
            v[j + half] = bf16_round(bf16_value(x2 * c[j]) + bf16_value(x1 * s[j]));
        }
    }
}

__attribute__((optimize("fp-contract=off"))) static void rotate_f32(float *x, int64_t n_heads, int64_t head_stride,
                                                                    int64_t half, const float *c, const float *s) {
    for (int64_t h = 0; h < n_heads; ++h) {
        float *v = x + h * head_stride;
        for (int64_t j = 0; j < half; ++j) {
            const float x1 = v[j], x2 = v[j + half];
            const float a = x1 * c[j], b = x2 * s[j], d = x2 * c[j], e = x1 * s[j];
            v[j] = a - b;
            v[j + half] = d + e;
        }
    }
}

/* q [T, *] with token stride q_stride and head stride q_head_stride (elements), n_q heads of 2 * half; k likewise;
 * positions int64 [T]; cos_sin fp32 [*, 2 * half], row stride 2 * half. Returns 0, or -1 when half > MAX_HALF. */
int rotary(void *q, int64_t q_stride, int64_t q_head_stride, int64_t n_q, void *k, int64_t k_stride,
           int64_t k_head_stride, int64_t n_k, const int64_t *positions, const float *cos_sin, int64_t T, int64_t half,
           int is_bf16, int num_threads) {
    if (half > MAX_HALF) return -1;
#pragma omp parallel for schedule(static) num_threads(num_threads > 0 ? num_threads : 1) if (T * (n_q + n_k) * half >= 32768)
    for (int64_t t = 0; t < T; ++t) {
        const float *row = cos_sin + positions[t] * 2 * half;
        float c[MAX_HALF], s[MAX_HALF];
        for (int64_t j = 0; j < half; ++j) {
            c[j] = is_bf16 ? bf16_value(row[j]) : row[j];
            s[j] = is_bf16 ? bf16_value(row[half + j]) : row[half + j];
        }
        if (is_bf16) {
            rotate_bf16((uint16_t *)q + t * q_stride, n_q, q_head_stride, half, c, s);
            rotate_bf16((uint16_t *)k + t * k_stride, n_k, k_head_stride, half, c, s);
        } else {
            rotate_f32((float *)q + t * q_stride, n_q, q_head_stride, half, c, s);
            rotate_f32((float *)k + t * k_stride, n_k, k_head_stride, half, c, s);
        }
    }
    return 0;
}
