/* Row copies on the CPU: plain loops over rows, parallel because these move
 * whole activations (a sequence of image and text tokens) at memory speed.
 * Every destination row of a parallel loop is written by one iteration, so
 * no two threads touch the same memory. */
#include <string.h>

#include "ops/cpu/rows.h"
#include "ops/cpu/par.h"

void dvl_cpu_concat_rows_fwd(float *out, const float *a, const float *b, int64_t na, int64_t nb,
                             int64_t row)
{
#pragma omp parallel for schedule(static) if (dvl_par((na + nb) * row))
    for (int64_t r = 0; r < na + nb; r++) {
        const float *s = r < na ? a + r * row : b + (r - na) * row;
        memcpy(out + r * row, s, (size_t)row * sizeof(float));
    }
}

/* gdst[0, n) += g[0, n), parallel over rows. */
static void add_rows(float *gdst, const float *g, int64_t n, int64_t row)
{
#pragma omp parallel for schedule(static) if (dvl_par(n * row))
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < row; j++)
            gdst[r * row + j] += g[r * row + j];
}

void dvl_cpu_concat_rows_bwd(float *ga, float *gb, const float *gout, int64_t na, int64_t nb,
                             int64_t row)
{
    /* One pass per input: ga and gb may be the same memory (concat of a
     * tensor with itself or with an overlapping slice of it), and within a
     * pass every destination row has one writer. */
    if (ga)
        add_rows(ga, gout, na, row);
    if (gb)
        add_rows(gb, gout + na * row, nb, row);
}

void dvl_cpu_scatter_rows_fwd(float *out, const float *dst, const float *src, const int32_t *inv,
                              int64_t n, int64_t row)
{
#pragma omp parallel for schedule(static) if (dvl_par(n * row))
    for (int64_t r = 0; r < n; r++) {
        const float *s = inv[r] >= 0 ? src + (int64_t)inv[r] * row : dst + r * row;
        memcpy(out + r * row, s, (size_t)row * sizeof(float));
    }
}

void dvl_cpu_scatter_rows_bwd(float *gdst, float *gsrc, const float *gout, const int32_t *inv,
                              int64_t n, int64_t row)
{
    /* A replaced row's value came from src alone, a kept row's from dst
     * alone. One pass per input, as gdst and gsrc may overlap; inside the src
     * pass each gsrc row has one writer because inv is injective. */
    if (gdst) {
#pragma omp parallel for schedule(static) if (dvl_par(n * row))
        for (int64_t r = 0; r < n; r++)
            if (inv[r] < 0)
                for (int64_t j = 0; j < row; j++)
                    gdst[r * row + j] += gout[r * row + j];
    }
    if (gsrc) {
#pragma omp parallel for schedule(static) if (dvl_par(n * row))
        for (int64_t r = 0; r < n; r++)
            if (inv[r] >= 0)
                for (int64_t j = 0; j < row; j++)
                    gsrc[(int64_t)inv[r] * row + j] += gout[r * row + j];
    }
}

void dvl_cpu_slice_cols_fwd(float *y, const float *x, int64_t rows, int64_t cols, int64_t start,
                            int64_t n)
{
    if (n == 0) /* an empty y may have no memory at all */
        return;
#pragma omp parallel for schedule(static) if (dvl_par(rows * n))
    for (int64_t r = 0; r < rows; r++)
        memcpy(y + r * n, x + r * cols + start, (size_t)n * sizeof(float));
}

void dvl_cpu_slice_cols_bwd(float *gx, const float *gy, int64_t rows, int64_t cols, int64_t start,
                            int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * n))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++)
            gx[r * cols + start + j] += gy[r * n + j];
}
