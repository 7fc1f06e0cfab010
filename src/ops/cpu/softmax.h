/* CPU kernels for softmax over the last dimension of a [rows, cols] array. */
#ifndef DVL_CPU_SOFTMAX_H
#define DVL_CPU_SOFTMAX_H

#include <stdint.h>

/* y = exp(x - max) / sum exp(x - max) per row. A row whose every entry is
 * -inf (fully masked) gives zeros rather than NaN. */
void dvl_cpu_softmax_fwd(float *y, const float *x, int64_t rows, int64_t cols);
/* gx += y * (gy - sum(gy * y)) per row. */
void dvl_cpu_softmax_bwd(float *gx, const float *gy, const float *y, int64_t rows, int64_t cols);

#endif
