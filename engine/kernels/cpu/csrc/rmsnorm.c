/* RMSNorm, optionally fused with the residual add before it, for CPUs (built by engine/kernels/cpu/rmsnorm.py).
 *
 * HF LlamaRMSNorm semantics, as engine/kernels/gpu/rmsnorm.py states them: h = x + residual rounded to x's dtype (stored
 * to residual_out), normed = h * rsqrt(mean(h^2) + eps) rounded to x's dtype, out = weight * normed rounded again.
 * x, residual, weight, out, residual_out share one dtype (bf16 as raw uint16, or fp32); rows of `hidden` contiguous
 * elements. One pass per row instead of torch's eight ops, each a trip over the tensor plus dispatch overhead.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

static void row_bf16(const uint16_t *x, const uint16_t *res, const uint16_t *w, uint16_t *out, uint16_t *res_out,
                     int64_t hidden, float eps) {
    float h[hidden];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < hidden; ++d) {
        float v = bf16_load(x[d]);
        if (res) v = bf16_load(bf16_round(v + bf16_load(res[d])));
        h[d] = v;
        sum += v * v;
    }
    if (res_out)
        for (int64_t d = 0; d < hidden; ++d) res_out[d] = bf16_round(h[d]);
    const float inv = 1.0f / sqrtf(sum / (float)hidden + eps);
    for (int64_t d = 0; d < hidden; ++d) out[d] = bf16_round(bf16_load(w[d]) * bf16_load(bf16_round(h[d] * inv)));
}

static void row_f32(const float *x, const float *res, const float *w, float *out, float *res_out, int64_t hidden,
                    float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < hidden; ++d) {
        const float v = res ? x[d] + res[d] : x[d];
        sum += v * v;
    }
    const float inv = 1.0f / sqrtf(sum / (float)hidden + eps);
    for (int64_t d = 0; d < hidden; ++d) {
        const float v = res ? x[d] + res[d] : x[d];
        if (res_out) res_out[d] = v;
        out[d] = w[d] * (v * inv);
    }
}

/* residual and residual_out may be NULL (together); rows split over num_threads OpenMP threads when large */
void rmsnorm(const void *x, const void *residual, const void *weight, void *out, void *residual_out, int64_t rows,
             int64_t hidden, float eps, int is_bf16, int num_threads) {
    const int esz = is_bf16 ? 2 : 4;
#pragma omp parallel for schedule(static) num_threads(num_threads > 0 ? num_threads : 1) if (rows * hidden >= 65536)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t off = r * hidden * esz;
        const char *res = residual ? (const char *)residual + off : NULL;
        char *res_out = residual_out ? (char *)residual_out + off : NULL;
        if (is_bf16)
            row_bf16((const uint16_t *)((const char *)x + off), (const uint16_t *)res, (const uint16_t *)weight,
                     (uint16_t *)((char *)out + off), (uint16_t *)res_out, hidden, eps);
        else
            row_f32((const float *)((const char *)x + off), (const float *)res, (const float *)weight,
                    (float *)((char *)out + off), (float *)res_out, hidden, eps);
    }
}
