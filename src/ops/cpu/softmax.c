/* Softmax CPU kernels. Subtracting the row maximum keeps every exponent
 * <= 0, so exp never overflows (inputs of 1000 are fine); the denominator is
 * then >= 1. The sum runs in double (rows can be a vocabulary long) and each
 * output is one correctly rounded quotient. */
#include <math.h>

#include "ops/cpu/softmax.h"
#include "ops/cpu/par.h"

void dvl_cpu_softmax_fwd(float *y, const float *x, int64_t rows, int64_t cols)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = -INFINITY;
        for (int64_t c = 0; c < cols; c++)
            m = xr[c] > m ? xr[c] : m;
        if (m == -INFINITY) { /* nothing visible: exp(-inf - -inf) would be NaN */
            for (int64_t c = 0; c < cols; c++)
                yr[c] = 0.0f;
            continue;
        }
        double s = 0;
        for (int64_t c = 0; c < cols; c++) {
            yr[c] = expf(xr[c] - m);
            s += yr[c];
        }
        for (int64_t c = 0; c < cols; c++)
            yr[c] = (float)(yr[c] / s);
    }
}

void dvl_cpu_softmax_bwd(float *gx, const float *gy, const float *y, int64_t rows, int64_t cols)
{
    /* dy_i/dx_j = y_i (delta_ij - y_j), so gx_j = y_j (g_j - sum_i g_i y_i). */
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = gy + r * cols, *yr = y + r * cols;
        float *gxr = gx + r * cols;
        double dot = 0;
        for (int64_t c = 0; c < cols; c++)
            dot += (double)gr[c] * yr[c];
        float d = (float)dot;
        for (int64_t c = 0; c < cols; c++)
            gxr[c] += yr[c] * (gr[c] - d);
    }
}
