/* RMSNorm and LayerNorm CPU kernels. Row statistics are accumulated in
 * double and rounded once to float; the elementwise part follows the float
 * operation order of the reference (HF Qwen2RMSNorm, torch's CPU LayerNorm
 * kernel) so outputs agree with it to the last bit where the statistics do. */
#include <math.h>

#include "ops/cpu/norm.h"
#include "ops/cpu/par.h"

/* Columns per block in the weight-gradient loops: each thread owns whole
 * blocks of columns and walks all rows in order for them. */
#define COL_BLOCK 32

void dvl_cpu_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows,
                         int64_t cols, float eps)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        double ss = 0;
        for (int64_t c = 0; c < cols; c++)
            ss += (double)xr[c] * xr[c];
        /* variance = x.pow(2).mean(-1) in float, then torch.rsqrt(variance + eps). */
        float var = (float)(ss / (double)cols);
        float rs = 1.0f / sqrtf(var + eps);
        rstd[r] = rs;
        /* self.weight * (hidden_states * rsqrt): x * rstd rounds first. */
        for (int64_t c = 0; c < cols; c++)
            yr[c] = w[c] * (xr[c] * rs);
    }
}

void dvl_cpu_rmsnorm_bwd(float *gx, float *gw, const float *gy, const float *x, const float *w,
                         const float *rstd, int64_t rows, int64_t cols)
{
    if (gx) {
        /* y_j = w_j x_j r with r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / cols:
         * dx_j = r w_j g_j - x_j r^3 / cols * sum_i g_i w_i x_i. */
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * cols, *gr = gy + r * cols;
            float *gxr = gx + r * cols;
            double dot = 0;
            for (int64_t c = 0; c < cols; c++)
                dot += (double)gr[c] * w[c] * xr[c];
            double rs = rstd[r];
            float a = rstd[r], k = (float)(dot * rs * rs * rs / (double)cols);
            for (int64_t c = 0; c < cols; c++)
                gxr[c] += a * (w[c] * gr[c]) - k * xr[c];
        }
    }
    if (gw) {
        /* dw_j = sum over rows of g_j x_j r. */
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
        for (int64_t c0 = 0; c0 < cols; c0 += COL_BLOCK) {
            int64_t nb = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
            double acc[COL_BLOCK] = {0};
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols + c0, *gr = gy + r * cols + c0;
                double rs = rstd[r];
                for (int64_t c = 0; c < nb; c++)
                    acc[c] += (double)gr[c] * xr[c] * rs;
            }
            for (int64_t c = 0; c < nb; c++)
                gw[c0 + c] += (float)acc[c];
        }
    }
}

void dvl_cpu_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int64_t rows, int64_t cols, float eps)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        /* Two passes in double: the mean, then the biased variance about it. */
        double s = 0;
        for (int64_t c = 0; c < cols; c++)
            s += xr[c];
        double mu = s / (double)cols, ss = 0;
        for (int64_t c = 0; c < cols; c++) {
            double d = xr[c] - mu;
            ss += d * d;
        }
        float m = (float)mu, rs = 1.0f / sqrtf((float)(ss / (double)cols) + eps);
        mean[r] = m;
        rstd[r] = rs;
        /* torch: (x + (-mean)) * rstd * gamma + beta, left to right in float. */
        for (int64_t c = 0; c < cols; c++)
            yr[c] = (xr[c] - m) * rs * w[c] + (b ? b[c] : 0.0f);
    }
}

void dvl_cpu_layernorm_bwd(float *gx, float *gw, float *gb, const float *gy, const float *x,
                           const float *w, const float *mean, const float *rstd, int64_t rows,
                           int64_t cols)
{
    if (gx) {
        /* With xhat = (x - mean) r and d = g w (the gradient at xhat):
         * dx = r (d - mean(d) - xhat mean(d xhat)). */
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * cols, *gr = gy + r * cols;
            float *gxr = gx + r * cols;
            float m = mean[r], rs = rstd[r];
            double sd = 0, sdx = 0;
            for (int64_t c = 0; c < cols; c++) {
                double d = (double)gr[c] * w[c];
                sd += d;
                sdx += d * ((xr[c] - m) * rs);
            }
            float md = (float)(sd / (double)cols), mdx = (float)(sdx / (double)cols);
            for (int64_t c = 0; c < cols; c++) {
                float xhat = (xr[c] - m) * rs;
                gxr[c] += rs * (gr[c] * w[c] - md - xhat * mdx);
            }
        }
    }
    if (gw || gb) {
        /* dw_j = sum over rows of g_j xhat_j, db_j = sum over rows of g_j. */
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
        for (int64_t c0 = 0; c0 < cols; c0 += COL_BLOCK) {
            int64_t nb = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
            double aw[COL_BLOCK] = {0}, ab[COL_BLOCK] = {0};
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols + c0, *gr = gy + r * cols + c0;
                float m = mean[r], rs = rstd[r];
                for (int64_t c = 0; c < nb; c++) {
                    aw[c] += (double)gr[c] * ((xr[c] - m) * rs);
                    ab[c] += gr[c];
                }
            }
            for (int64_t c = 0; c < nb; c++) {
                if (gw)
                    gw[c0 + c] += (float)aw[c];
                if (gb)
                    gb[c0 + c] += (float)ab[c];
            }
        }
    }
}
