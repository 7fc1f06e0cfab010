/* CPU kernels of the row ops (rows = first dimension, each `row` floats).
 * Gathering rows is the embedding lookup (cpu/embedding.h) with the tensor
 * as the table. */
#ifndef DVL_CPU_ROWS_H
#define DVL_CPU_ROWS_H

#include <stdint.h>

/* out [na + nb, row] = a [na, row] stacked on b [nb, row]. */
void dvl_cpu_concat_rows_fwd(float *out, const float *a, const float *b, int64_t na, int64_t nb,
                             int64_t row);
/* ga += gout[0, na), gb += gout[na, na + nb); a NULL destination is skipped.
 * ga and gb may overlap (a tensor concatenated with itself or its slice). */
void dvl_cpu_concat_rows_bwd(float *ga, float *gb, const float *gout, int64_t na, int64_t nb,
                             int64_t row);

/* out[r] = src[inv[r]] where inv[r] >= 0, else dst[r], for r < n; inv maps
 * each dst row to the src row replacing it (-1: kept), so it is injective on
 * the replaced rows. */
void dvl_cpu_scatter_rows_fwd(float *out, const float *dst, const float *src, const int32_t *inv,
                              int64_t n, int64_t row);
/* gsrc[inv[r]] += gout[r] for replaced rows, gdst[r] += gout[r] for kept
 * rows; a NULL destination is skipped; gdst and gsrc may overlap. */
void dvl_cpu_scatter_rows_bwd(float *gdst, float *gsrc, const float *gout, const int32_t *inv,
                              int64_t n, int64_t row);

/* Columns [start, start + n) of x [rows, cols] into y [rows, n]; backward
 * gx[:, start + j] += gy[:, j]. */
void dvl_cpu_slice_cols_fwd(float *y, const float *x, int64_t rows, int64_t cols, int64_t start,
                            int64_t n);
void dvl_cpu_slice_cols_bwd(float *gx, const float *gy, int64_t rows, int64_t cols, int64_t start,
                            int64_t n);

#endif
