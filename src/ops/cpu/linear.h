/* CPU kernels of the linear layer y = x W^T + b (OpenBLAS sgemm). */
#ifndef DVL_CPU_LINEAR_H
#define DVL_CPU_LINEAR_H

#include <stdint.h>

/* y [rows, out] = x [rows, in] W^T + b, W [out, in], b [out] or NULL. */
void dvl_cpu_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t rows,
                        int64_t in, int64_t out);

/* Accumulate the gradients of the inputs given dy [rows, out]:
 *   dx [rows, in] += dy W,   dw [out, in] += dy^T x,   db [out] += sum_rows dy.
 * A NULL destination is skipped (that input needs no gradient). */
void dvl_cpu_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int64_t rows, int64_t in, int64_t out);

#endif
