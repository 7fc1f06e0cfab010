/* The CUDA backend's C interface: device and memory management, cuBLAS
 * matrix products, and the elementwise / normalisation / optimiser kernels.
 * Usable from C11; the .cu files implement it with C linkage.
 *
 * Conventions, as the CPU kernels: raw device pointers and sizes, f32,
 * row-major and contiguous, "rows" = all leading dimensions flattened.
 * Backward kernels ACCUMULATE (+=) into gradients, and a NULL gradient
 * pointer means "that input needs no gradient" (frozen parameters get none).
 *
 * Everything runs on the legacy default stream, so launches are ordered with
 * each other and with the cudaMemcpy calls below. Kernel launches are
 * asynchronous and the kernel functions return void (the CPU signatures):
 * a launch error surfaces at dvl_cuda_check, an execution error at
 * dvl_cuda_sync. Functions that take a dvl_err report with DVL_EDEVICE and
 * a message that names the failing call and the CUDA/cuBLAS error string.
 *
 * Kernels never allocate: where a deterministic reduction needs scratch, the
 * caller passes device memory of the size the matching *_scratch function
 * returns (the op takes it from the context's arena). */
#ifndef DVL_OPS_CUDA_H
#define DVL_OPS_CUDA_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* err.h and dtype.h are C headers without their own linkage guards. */
#include "core/dtype.h"
#include "core/err.h"

/* ---------------------------------------------------------------- device */
/* Number of usable CUDA devices; 0 when there is no driver, no device or
 * any other error (never fails, never aborts). */
int dvl_cuda_device_count(void);
/* The same, with the reason when the answer is 0 because of an error (no
 * driver, driver too old for this runtime, ...) written into err. */
int dvl_cuda_probe(dvl_err *err);
/* Select `device` for this thread and create its context. */
int dvl_cuda_init(int device, dvl_err *err);
/* "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" into buf. */
int dvl_cuda_describe(int device, char *buf, size_t n, dvl_err *err);

/* ---------------------------------------------------------------- memory */
/* Device memory (256-byte aligned); NULL with err set on failure. */
void *dvl_cuda_malloc(size_t bytes, dvl_err *err);
void dvl_cuda_free(void *p); /* NULL is fine */
int dvl_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memset_zero(void *p, size_t bytes, dvl_err *err);
/* Wait for all queued work; reports launch and execution errors. `what`
 * names the caller's step for the message (may be NULL). */
int dvl_cuda_sync(const char *what, dvl_err *err);
/* Report (and clear) an error from the last launches without waiting. */
int dvl_cuda_check(const char *what, dvl_err *err);

/* ------------------------------------------------------------------ blas */
/* A cuBLAS handle on the default stream. With tf32, f32 products use the
 * tensor cores' TF32 inputs (10-bit mantissa, f32 accumulation: about 1e-3
 * relative error) instead of full f32 FMAs. */
typedef struct dvl_cublas dvl_cublas;
dvl_cublas *dvl_cublas_new(bool tf32, dvl_err *err);
void dvl_cublas_free(dvl_cublas *h);
int dvl_cublas_set_tf32(dvl_cublas *h, bool tf32, dvl_err *err);
bool dvl_cublas_tf32(const dvl_cublas *h);

/* y = x W^T (+ b): x [rows, in], W [out, in], b [out] or NULL, y [rows, out].
 * Sizes up to INT_MAX (cuBLAS's int). */
int dvl_cuda_linear_fwd(dvl_cublas *h, float *y, const float *x, const float *w,
                        const float *b, int64_t rows, int64_t in, int64_t out, dvl_err *err);
/* dx += dy W, dW += dy^T x, db += sum over rows of dy; each may be NULL.
 * scratch: dvl_cuda_colsum_scratch(rows, out) floats when db is given. */
int dvl_cuda_linear_bwd(dvl_cublas *h, float *dx, float *dw, float *db, float *scratch,
                        const float *dy, const float *x, const float *w, int64_t rows,
                        int64_t in, int64_t out, dvl_err *err);
/* y = x W^T with bf16 x [rows, in] and W [out, in] (raw bf16 bits), f32
 * accumulation, y [rows, out] of ytype DVL_F32 or DVL_BF16. */
int dvl_cuda_matmul_bf16(dvl_cublas *h, void *y, dvl_dtype ytype, const uint16_t *x,
                         const uint16_t *w, int64_t rows, int64_t in, int64_t out, dvl_err *err);

/* --------------------------------------------------------------- kernels */
/* Column sums, deterministic: out[c] += sum_r a[r, c]. The rows are summed
 * in fixed chunks of DVL_CUDA_COLSUM_CHUNK (partial sums in scratch), then
 * the chunks in order, so the result does not depend on scheduling. */
#define DVL_CUDA_COLSUM_CHUNK 256
int64_t dvl_cuda_colsum_scratch(int64_t rows, int64_t cols); /* floats */
void dvl_cuda_colsum_acc(float *out, float *scratch, const float *a, int64_t rows, int64_t cols);

/* y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps) per row, saved in
 * rstd [rows] (may be NULL when not needed). */
void dvl_cuda_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows,
                          int64_t cols, float eps);
/* dx += rstd * (w dy - x rstd^2 mean(w dy x)), dw += sum over rows of
 * dy x rstd (two passes over row chunks, as colsum). dx or dw may be NULL;
 * scratch: dvl_cuda_rmsnorm_bwd_scratch(rows, cols) floats when dw is given. */
int64_t dvl_cuda_rmsnorm_bwd_scratch(int64_t rows, int64_t cols);
void dvl_cuda_rmsnorm_bwd(float *dx, float *dw, float *scratch, const float *dy, const float *x,
                          const float *w, const float *rstd, int64_t rows, int64_t cols);

/* silu(x) = x sigmoid(x); dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))). */
void dvl_cuda_silu_fwd(float *y, const float *x, int64_t n);
void dvl_cuda_silu_bwd(float *dx, const float *dy, const float *x, int64_t n);
/* y = silu(g) u; dg += dy u silu'(g), du += dy silu(g) (either may be NULL). */
void dvl_cuda_swiglu_fwd(float *y, const float *g, const float *u, int64_t n);
void dvl_cuda_swiglu_bwd(float *dg, float *du, const float *dy, const float *g, const float *u,
                         int64_t n);

/* One AdamW step as torch.optim.AdamW (decoupled weight decay), step >= 1:
 *   p -= lr wd p
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps) */
void dvl_cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr,
                    float beta1, float beta2, float eps, float wd, int64_t step);

#ifdef __cplusplus
}
#endif

#endif
