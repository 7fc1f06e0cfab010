/* CPU kernels for RMSNorm and LayerNorm over the last dimension of a
 * [rows, cols] array. The forward saves per-row statistics (rstd, and mean
 * for LayerNorm) for the backward. Backward kernels accumulate (+=) into
 * gradients; a NULL gradient pointer (frozen weight, bias or input) skips it.
 * Weight and bias gradients sum over rows column by column, each column in
 * row order, so they do not depend on the thread count. */
#ifndef DVL_CPU_NORM_H
#define DVL_CPU_NORM_H

#include <stdint.h>

/* Hugging Face Qwen2RMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)). */
void dvl_cpu_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows,
                         int64_t cols, float eps);
void dvl_cpu_rmsnorm_bwd(float *gx, float *gw, const float *gy, const float *x, const float *w,
                         const float *rstd, int64_t rows, int64_t cols);

/* torch LayerNorm: y = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps),
 * var biased; b may be NULL (no bias). */
void dvl_cpu_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int64_t rows, int64_t cols, float eps);
void dvl_cpu_layernorm_bwd(float *gx, float *gw, float *gb, const float *gy, const float *x,
                           const float *w, const float *mean, const float *rstd, int64_t rows,
                           int64_t cols);

#endif
