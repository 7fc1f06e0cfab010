/* The machine's own matrix-product rate, measured: the denominator of an
 * MFU (model FLOPs per second over what the hardware's products reach).
 * One n x n x n product, 2 n^3 FLOPs, timed after a warm-up; the best of
 * three. Buffers are the function's own (malloc / cudaMalloc), not an
 * arena's, so measuring leaves no trace in a context's memory. */
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

#include "core/rng.h"
#include "ops/ops.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Operands of ordinary magnitude: all-zero ones run faster on some GPUs
 * (less switching, higher clocks) and would flatter the peak. */
static float *operand(int64_t n, uint64_t seed)
{
    float *a = malloc((size_t)n * sizeof *a);
    if (!a)
        return NULL;
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++)
        a[i] = dvl_rng_uniform(&r) - 0.5f;
    return a;
}

static int cpu_peak(int n, double *gflops, dvl_err *err)
{
    const int64_t nn = (int64_t)n * n;
    float *a = operand(nn, 1), *b = operand(nn, 2), *c = malloc((size_t)nn * sizeof *c);
    int rc = DVL_OK;
    if (!a || !b || !c) {
        rc = dvl_errf(err, DVL_ENOMEM, "matmul peak: out of memory for %d x %d operands", n, n);
        goto out;
    }
    double best = 1e30;
    for (int k = 0; k < 4; k++) { /* the first call warms up */
        const double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        const double t = now_s() - t0;
        if (k > 0 && t < best)
            best = t;
    }
    *gflops = 2.0 * (double)n * n * n / best / 1e9;
out:
    free(a), free(b), free(c);
    return rc;
}

#ifdef DVL_HAVE_CUDA
/* One product in the handle's math mode: y = x W^T through the linear
 * layer's f32 / TF32 entry point, or bf16 operands (rounded once, outside
 * the timing) through dvl_cuda_gemm_bf16. */
static int gpu_product(dvl_cublas *h, bool bf16, int n, float *y, const float *x, const float *w,
                       const uint16_t *x16, const uint16_t *w16, dvl_err *err)
{
    return bf16 ? dvl_cuda_gemm_bf16(h, false, true, n, n, n, x16, w16, 0.0f, y, DVL_F32, err)
                : dvl_cuda_linear_fwd(h, y, x, w, NULL, n, n, n, err);
}

static int gpu_peak(dvl_ctx *ctx, int n, double *gflops, dvl_err *err)
{
    dvl_cublas *h = dvl_ctx_cublas(ctx);
    const bool bf16 = dvl_cublas_math(h) == DVL_MATH_BF16;
    const int64_t nn = (int64_t)n * n;
    const size_t fb = (size_t)nn * sizeof(float), bb = (size_t)nn * sizeof(uint16_t);
    float *ha = operand(nn, 1), *hw = operand(nn, 2);
    float *x = dvl_cuda_malloc(fb, err), *w = x ? dvl_cuda_malloc(fb, err) : NULL;
    float *y = w ? dvl_cuda_malloc(fb, err) : NULL;
    uint16_t *x16 = y && bf16 ? dvl_cuda_malloc(bb, err) : NULL;
    uint16_t *w16 = x16 ? dvl_cuda_malloc(bb, err) : NULL;
    int rc = DVL_OK;
    if (!ha || !hw) {
        rc = dvl_errf(err, DVL_ENOMEM, "matmul peak: out of host memory for %d x %d operands", n,
                      n);
        goto out;
    }
    if (!y || (bf16 && !w16)) {
        rc = err && err->code ? err->code : DVL_ENOMEM;
        goto out;
    }
    if ((rc = dvl_cuda_memcpy_h2d(x, ha, fb, err)) || (rc = dvl_cuda_memcpy_h2d(w, hw, fb, err)))
        goto out;
    if (bf16 &&
        ((rc = dvl_cuda_to_bf16(x16, x, nn, err)) || (rc = dvl_cuda_to_bf16(w16, w, nn, err))))
        goto out;
    double best = 1e30;
    for (int k = 0; k < 4; k++) { /* the first call warms up */
        if ((rc = dvl_cuda_sync("matmul peak", err)))
            goto out;
        const double t0 = now_s();
        if ((rc = gpu_product(h, bf16, n, y, x, w, x16, w16, err)) ||
            (rc = dvl_cuda_sync("matmul peak", err)))
            goto out;
        const double t = now_s() - t0;
        if (k > 0 && t < best)
            best = t;
    }
    *gflops = 2.0 * (double)n * n * n / best / 1e9;
out:
    dvl_cuda_free(x), dvl_cuda_free(w), dvl_cuda_free(y), dvl_cuda_free(x16), dvl_cuda_free(w16);
    free(ha), free(hw);
    return rc;
}
#endif

int dvl_matmul_peak(dvl_ctx *ctx, int n, double *gflops, dvl_err *err)
{
    if (n < 1)
        return dvl_errf(err, DVL_EINVAL, "matmul peak: size %d (want >= 1)", n);
#ifdef DVL_HAVE_CUDA
    if (dvl_ctx_device(ctx) == DVL_CUDA)
        return gpu_peak(ctx, n, gflops, err);
#endif
    (void)ctx;
    return cpu_peak(n, gflops, err);
}
