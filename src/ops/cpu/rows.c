/* Row copies on the CPU: plain loops over rows, parallel because these move
 * whole activations (a sequence of image and text tokens) at memory speed.
 * Every output row is written by exactly one iteration, so no two threads
 * touch the same memory. */
#include <string.h>

#include "ops/cpu/rows.h"

void dvl_cpu_concat_rows_fwd(float *out, const float *a, const float *b, int64_t na, int64_t nb,
                             int64_t row)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < na + nb; r++) {
        const float *s = r < na ? a + r * row : b + (r - na) * row;
        memcpy(out + r * row, s, (size_t)row * sizeof(float));
    }
}

void dvl_cpu_concat_rows_bwd(float *ga, float *gb, const float *gout, int64_t na, int64_t nb,
                             int64_t row)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < na + nb; r++) {
        float *d = r < na ? (ga ? ga + r * row : NULL) : (gb ? gb + (r - na) * row : NULL);
        if (!d)
            continue;
        const float *g = gout + r * row;
        for (int64_t j = 0; j < row; j++)
            d[j] += g[j];
    }
}

void dvl_cpu_scatter_rows_fwd(float *out, const float *dst, const float *src, const int32_t *inv,
                              int64_t n, int64_t row)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const float *s = inv[r] >= 0 ? src + (int64_t)inv[r] * row : dst + r * row;
        memcpy(out + r * row, s, (size_t)row * sizeof(float));
    }
}

void dvl_cpu_scatter_rows_bwd(float *gdst, float *gsrc, const float *gout, const int32_t *inv,
                              int64_t n, int64_t row)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        /* A replaced row's value came from src alone, a kept row's from dst
         * alone; inv is injective, so each gsrc row has one writer. */
        float *d = inv[r] >= 0 ? (gsrc ? gsrc + (int64_t)inv[r] * row : NULL)
                               : (gdst ? gdst + r * row : NULL);
        if (!d)
            continue;
        const float *g = gout + r * row;
        for (int64_t j = 0; j < row; j++)
            d[j] += g[j];
    }
}
