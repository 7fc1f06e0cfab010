/* Elementwise CPU kernels. The float formulas follow torch's CPU kernels
 * (aten/src/ATen/native/cpu/Activation.cpp, UnaryOpsKernel.cpp) operation
 * for operation, so results agree with torch to within libm's last bit.
 * Compiled as ISO C11, so no multiply-add is contracted into an fma behind
 * our back (gcc's -ffp-contract=off under -std=c11). */
#include <math.h>

#include "ops/cpu/elementwise.h"

void dvl_cpu_add_fwd(float *y, const float *a, const float *b, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void dvl_cpu_add_bwd(float *ga, float *gb, const float *gy, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        if (ga)
            ga[i] += gy[i];
        if (gb)
            gb[i] += gy[i];
    }
}

void dvl_cpu_mul_fwd(float *y, const float *a, const float *b, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * b[i];
}

void dvl_cpu_mul_bwd(float *ga, float *gb, const float *gy, const float *a, const float *b,
                     int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        if (ga)
            ga[i] += gy[i] * b[i];
        if (gb)
            gb[i] += gy[i] * a[i];
    }
}

void dvl_cpu_scale_fwd(float *y, const float *a, float s, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * s;
}

void dvl_cpu_scale_bwd(float *ga, const float *gy, float s, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        ga[i] += gy[i] * s;
}

/* For x below about -88, expf(-x) overflows to inf and x / inf gives -0,
 * the correct limit; the sigmoid below likewise goes to 0. */
static inline float silu(float x) { return x / (1.0f + expf(-x)); }

/* d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) (torch silu_backward). */
static inline float silu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

void dvl_cpu_silu_fwd(float *y, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = silu(x[i]);
}

void dvl_cpu_silu_bwd(float *gx, const float *gy, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        gx[i] += gy[i] * silu_grad(x[i]);
}

void dvl_cpu_swiglu_fwd(float *y, const float *gate, const float *up, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = silu(gate[i]) * up[i];
}

void dvl_cpu_swiglu_bwd(float *ggate, float *gup, const float *gy, const float *gate,
                        const float *up, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        if (ggate)
            ggate[i] += gy[i] * up[i] * silu_grad(gate[i]);
        if (gup)
            gup[i] += gy[i] * silu(gate[i]);
    }
}

/* Constants as torch computes them: in double, then rounded to float. */
#define GELU_SQRT1_2 ((float)M_SQRT1_2)                       /* 1/sqrt(2) */
#define GELU_PDF_NORM ((float)(M_2_SQRTPI * M_SQRT1_2 * 0.5)) /* 1/sqrt(2 pi) */
#define GELU_BETA ((float)(M_SQRT2 * M_2_SQRTPI * 0.5))       /* sqrt(2/pi) */
#define GELU_KAPPA 0.044715f

void dvl_cpu_gelu_fwd(float *y, const float *x, int kind, int64_t n)
{
    if (kind == 0) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * 0.5f * (1.0f + erff(x[i] * GELU_SQRT1_2));
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float v = x[i], cube = v * v * v;
            y[i] = 0.5f * v * (1.0f + tanhf(GELU_BETA * (v + GELU_KAPPA * cube)));
        }
    }
}

void dvl_cpu_gelu_bwd(float *gx, const float *gy, const float *x, int kind, int64_t n)
{
    if (kind == 0) {
        /* d/dx x Phi(x) = Phi(x) + x phi(x). */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            float cdf = 0.5f * (1.0f + erff(v * GELU_SQRT1_2));
            float pdf = GELU_PDF_NORM * expf(v * v * -0.5f);
            gx[i] += gy[i] * (cdf + v * pdf);
        }
    } else {
        /* y = 0.5 x (1 + t), t = tanh(u), u = beta (x + kappa x^3):
         * dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2). */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float v = x[i], sq = v * v, cube = sq * v;
            float t = tanhf(GELU_BETA * (v + GELU_KAPPA * cube));
            float left = 0.5f * v, right = 1.0f + t;
            float dleft = 0.5f * right;
            float dright = left * (1.0f - t * t) * GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * sq);
            gx[i] += gy[i] * (dleft + dright);
        }
    }
}

int64_t dvl_cpu_sum_partials(int64_t n) { return (n + DVL_SUM_CHUNK - 1) / DVL_SUM_CHUNK; }

void dvl_cpu_sum_fwd(float *y, double *partial, const float *x, int64_t n)
{
    int64_t nc = dvl_cpu_sum_partials(n);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nc; c++) {
        int64_t lo = c * DVL_SUM_CHUNK, hi = lo + DVL_SUM_CHUNK < n ? lo + DVL_SUM_CHUNK : n;
        double s = 0;
        for (int64_t i = lo; i < hi; i++)
            s += x[i];
        partial[c] = s;
    }
    double s = 0;
    for (int64_t c = 0; c < nc; c++)
        s += partial[c];
    *y = (float)s;
}

void dvl_cpu_sum_bwd(float *gx, const float *gy, int64_t n)
{
    const float g = *gy;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        gx[i] += g;
}
