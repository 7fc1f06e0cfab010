/* Elementwise CPU kernels. Arithmetic ops are single IEEE float operations,
 * as in torch; compiled as ISO C11, gcc contracts no multiply-add into an fma
 * (-ffp-contract=off under -std=c11), so they match torch bit for bit. */
#include <math.h>

#include "ops/cpu/elementwise.h"
#include "ops/cpu/par.h"

void dvl_cpu_add_fwd(float *y, const float *a, const float *b, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void dvl_cpu_add_bwd(float *ga, float *gb, const float *gy, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++) {
        if (ga)
            ga[i] += gy[i];
        if (gb)
            gb[i] += gy[i];
    }
}

void dvl_cpu_mul_fwd(float *y, const float *a, const float *b, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * b[i];
}

void dvl_cpu_mul_bwd(float *ga, float *gb, const float *gy, const float *a, const float *b,
                     int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++) {
        if (ga)
            ga[i] += gy[i] * b[i];
        if (gb)
            gb[i] += gy[i] * a[i];
    }
}

void dvl_cpu_scale_fwd(float *y, const float *a, float s, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * s;
}

void dvl_cpu_scale_bwd(float *ga, const float *gy, float s, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        ga[i] += gy[i] * s;
}

/* The activations are evaluated in double and rounded once, so each output
 * is within half a unit in the last place (plus double's ~1e-16) of the true
 * value; torch's float kernels are up to a few units off, and far off for
 * gelu at x << 0 (see below). The cost is small next to the matmuls. In
 * double, exp(-x) stays finite for |x| < 709: below that x / inf gives the
 * correct limit -0. */
static inline double silu_d(double x) { return x / (1.0 + exp(-x)); }

/* d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) (torch silu_backward). */
static inline double silu_grad_d(double x)
{
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

void dvl_cpu_silu_fwd(float *y, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)silu_d(x[i]);
}

void dvl_cpu_silu_bwd(float *gx, const float *gy, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        gx[i] += (float)(gy[i] * silu_grad_d(x[i]));
}

/* silu(gate) is rounded to float before the product, as HF's Qwen2MLP
 * (act_fn(gate_proj(x)) * up_proj(x)) rounds it, so swiglu(g, u) equals
 * mul(silu(g), u) bit for bit. */
void dvl_cpu_swiglu_fwd(float *y, const float *gate, const float *up, int64_t rows,
                        int64_t cols, int64_t ld)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t i = 0; i < rows * cols; i++) {
        const int64_t r = i / cols, j = r * ld + (i - r * cols);
        y[i] = (float)silu_d(gate[j]) * up[j];
    }
}

void dvl_cpu_swiglu_bwd(float *ggate, float *gup, const float *gy, const float *gate,
                        const float *up, int64_t rows, int64_t cols, int64_t ld)
{
#pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
    for (int64_t i = 0; i < rows * cols; i++) {
        const int64_t r = i / cols, j = r * ld + (i - r * cols);
        /* silu_d and silu_grad_d with their one exp shared: the same
         * doubles, half the exps. */
        const double x = gate[j], e = exp(-x), s = 1.0 / (1.0 + e);
        if (ggate)
            ggate[j] += (float)((double)gy[i] * up[j] * (s * (1.0 + x * (1.0 - s))));
        if (gup)
            gup[j] += gy[i] * (float)(x / (1.0 + e));
    }
}

/* gelu, erf form: x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2
 * = erfc(-x / sqrt 2) / 2. The erfc form has no cancellation for x << 0,
 * where 1 + erf(...) loses every digit (torch's float kernel gives
 * gelu(-5) = -1.19e-6 for the true -1.43e-6).
 * tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3); as
 * 1 + tanh(u) = 2 sigmoid(2u) it is x sigmoid(2u), again free of the
 * cancellation at x << 0. */
#define GELU_BETA 0.79788456080286535588 /* sqrt(2/pi) */
#define GELU_KAPPA 0.044715
#define GELU_PDF 0.39894228040143267794 /* 1/sqrt(2 pi) */

static inline double gelu_erf_d(double x) { return 0.5 * x * erfc(-x * M_SQRT1_2); }

/* Phi(x) + x phi(x). */
static inline double gelu_erf_grad_d(double x)
{
    return 0.5 * erfc(-x * M_SQRT1_2) + x * GELU_PDF * exp(-0.5 * x * x);
}

static inline double gelu_tanh_d(double x)
{
    double u = GELU_BETA * (x + GELU_KAPPA * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

/* y = x s with s = sigmoid(2u): dy/dx = s + x 2 s (1 - s) du/dx,
 * du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2). */
static inline double gelu_tanh_grad_d(double x)
{
    double u = GELU_BETA * (x + GELU_KAPPA * x * x * x);
    double s = 1.0 / (1.0 + exp(-2.0 * u));
    return s + x * 2.0 * s * (1.0 - s) * GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x * x);
}

void dvl_cpu_gelu_fwd(float *y, const float *x, int kind, int64_t n)
{
    if (kind == 0) {
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t i = 0; i < n; i++)
            y[i] = (float)gelu_erf_d(x[i]);
    } else {
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t i = 0; i < n; i++)
            y[i] = (float)gelu_tanh_d(x[i]);
    }
}

void dvl_cpu_gelu_bwd(float *gx, const float *gy, const float *x, int kind, int64_t n)
{
    if (kind == 0) {
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t i = 0; i < n; i++)
            gx[i] += (float)(gy[i] * gelu_erf_grad_d(x[i]));
    } else {
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t i = 0; i < n; i++)
            gx[i] += (float)(gy[i] * gelu_tanh_grad_d(x[i]));
    }
}

int64_t dvl_cpu_sum_partials(int64_t n) { return (n + DVL_SUM_CHUNK - 1) / DVL_SUM_CHUNK; }

void dvl_cpu_sum_fwd(float *y, double *partial, const float *x, int64_t n)
{
    int64_t nc = dvl_cpu_sum_partials(n);
#pragma omp parallel for schedule(static) if (dvl_par(n))
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
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        gx[i] += g;
}
