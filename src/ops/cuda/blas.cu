/* Matrix products through cuBLAS, for the linear layer y = x W^T + b.
 *
 * cuBLAS is column-major; our matrices are row-major. A row-major [r, c]
 * matrix read column-major is its transpose [c, r] with leading dimension c,
 * so each row-major product C = A B is issued as C^T = B^T A^T, which needs
 * no copies:
 *   y  [rows, out] = x [rows, in] W^T  ->  y^T = W x^T    : gemm(T, N, out, rows, in)
 *   dx [rows, in] += dy [rows, out] W  ->  dx^T = W^T dy^T: gemm(N, N, in, rows, out)
 *   dW [out, in]  += dy^T x            ->  dW^T = x^T dy  : gemm(N, T, in, out, rows)  */
#include <limits.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "ops/cuda/common.cuh"

struct dvl_cublas {
    cublasHandle_t h;
    dvl_cuda_math math;
    int attention; /* DVL_MATH_* of attention's kernels, or -1: math's */
};

__attribute__((format(printf, 3, 4))) static int blas_fail(dvl_err *err, cublasStatus_t s,
                                                           const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return dvl_errf(err, DVL_EDEVICE, "cublas: %s: %s (%s)", what, cublasGetStatusString(s),
                    cublasGetStatusName(s));
}

static const char *math_name(dvl_cuda_math m)
{
    switch (m) {
    case DVL_MATH_F32: return "f32";
    case DVL_MATH_TF32: return "tf32";
    case DVL_MATH_BF16: return "bf16";
    }
    return "unknown";
}

extern "C" int dvl_cublas_set_math(dvl_cublas *h, dvl_cuda_math math, dvl_err *err)
{
    if (math != DVL_MATH_F32 && math != DVL_MATH_TF32 && math != DVL_MATH_BF16)
        return dvl_errf(err, DVL_EINVAL, "cublas: unknown math mode %d", (int)math);
    /* DEFAULT keeps f32 products in f32 (unless NVIDIA_TF32_OVERRIDE says
     * otherwise); TF32_TENSOR_OP lets cublasSgemm round inputs to TF32. The
     * bf16 mode's products are cublasGemmEx calls on bf16 copies, which use
     * the tensor cores under DEFAULT; any sgemm left stays f32. */
    const bool tf32 = math == DVL_MATH_TF32;
    cublasStatus_t s =
        cublasSetMathMode(h->h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "cublasSetMathMode(%s)", math_name(math));
    h->math = math;
    return DVL_OK;
}

extern "C" dvl_cuda_math dvl_cublas_math(const dvl_cublas *h) { return h->math; }

extern "C" int dvl_cublas_set_attention_math(dvl_cublas *h, int math, dvl_err *err)
{
    if (math != -1 && math != DVL_MATH_F32 && math != DVL_MATH_TF32 && math != DVL_MATH_BF16)
        return dvl_errf(err, DVL_EINVAL, "cublas: unknown attention math mode %d", math);
    h->attention = math;
    return DVL_OK;
}

extern "C" dvl_cuda_math dvl_cublas_attention_math(const dvl_cublas *h)
{
    return h->attention < 0 ? h->math : (dvl_cuda_math)h->attention;
}

extern "C" dvl_cublas *dvl_cublas_new(bool tf32, dvl_err *err)
{
    dvl_cublas *h = (dvl_cublas *)calloc(1, sizeof *h);
    if (!h) {
        dvl_errf(err, DVL_ENOMEM, "cublas: out of host memory for the handle");
        return NULL;
    }
    cublasStatus_t s = cublasCreate(&h->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        blas_fail(err, s, "cublasCreate");
        free(h);
        return NULL;
    }
    h->attention = -1;
    if (dvl_cublas_set_math(h, tf32 ? DVL_MATH_TF32 : DVL_MATH_F32, err) != DVL_OK) {
        dvl_cublas_free(h);
        return NULL;
    }
    return h;
}

extern "C" void dvl_cublas_free(dvl_cublas *h)
{
    if (!h)
        return;
    cublasDestroy(h->h);
    free(h);
}

extern "C" int dvl_cublas_set_tf32(dvl_cublas *h, bool tf32, dvl_err *err)
{
    return dvl_cublas_set_math(h, tf32 ? DVL_MATH_TF32 : DVL_MATH_F32, err);
}

extern "C" bool dvl_cublas_tf32(const dvl_cublas *h) { return h->math == DVL_MATH_TF32; }

/* cuBLAS sizes are int. */
static int check_dims(const char *fn, int64_t rows, int64_t in, int64_t out, dvl_err *err)
{
    if (rows < 0 || in < 0 || out < 0 || rows > INT_MAX || in > INT_MAX || out > INT_MAX)
        return dvl_errf(err, DVL_EINVAL,
                        "%s: sizes rows=%lld in=%lld out=%lld outside cuBLAS's [0, %d]", fn,
                        (long long)rows, (long long)in, (long long)out, INT_MAX);
    return DVL_OK;
}

/* y[r, c] = b[c]: the bias, which the product then adds to (beta = 1). */
__global__ static void fill_rows_k(float *y, const float *b, int64_t rows, int64_t cols)
{
    const int64_t n = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = b[i % cols];
}

extern "C" int dvl_cuda_linear_fwd(dvl_cublas *h, float *y, const float *x, const float *w,
                                   const float *b, int64_t rows, int64_t in, int64_t out,
                                   dvl_err *err)
{
    if (check_dims("dvl_cuda_linear_fwd", rows, in, out, err))
        return err ? err->code : DVL_EINVAL;
    if (rows == 0 || out == 0)
        return DVL_OK;
    float beta = 0.0f;
    if (b) {
        fill_rows_k<<<dvl_cu_blocks(rows * out), DVL_CU_THREADS>>>(y, b, rows, out);
        if (dvl_cuda_check("dvl_cuda_linear_fwd bias", err))
            return DVL_EDEVICE;
        beta = 1.0f;
    } else if (in == 0) {
        return dvl_cuda_memset_zero(y, (size_t)(rows * out) * sizeof(float), err);
    }
    if (in == 0)
        return DVL_OK; /* y = b */
    const float one = 1.0f;
    cublasStatus_t s = cublasSgemm(h->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)rows, (int)in,
                                   &one, w, (int)in, x, (int)in, &beta, y, (int)out);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "linear forward sgemm rows=%lld in=%lld out=%lld",
                         (long long)rows, (long long)in, (long long)out);
    return DVL_OK;
}

extern "C" int dvl_cuda_linear_bwd(dvl_cublas *h, float *dx, float *dw, float *db, float *scratch,
                                   const float *dy, const float *x, const float *w, int64_t rows,
                                   int64_t in, int64_t out, dvl_err *err)
{
    if (check_dims("dvl_cuda_linear_bwd", rows, in, out, err))
        return err ? err->code : DVL_EINVAL;
    if (rows == 0 || out == 0)
        return DVL_OK; /* every gradient term is an empty sum */
    const float one = 1.0f;
    cublasStatus_t s;
    if (dx && in > 0) {
        s = cublasSgemm(h->h, CUBLAS_OP_N, CUBLAS_OP_N, (int)in, (int)rows, (int)out, &one, w,
                        (int)in, dy, (int)out, &one, dx, (int)in);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "linear backward dx sgemm rows=%lld in=%lld out=%lld",
                             (long long)rows, (long long)in, (long long)out);
    }
    if (dw && in > 0) {
        s = cublasSgemm(h->h, CUBLAS_OP_N, CUBLAS_OP_T, (int)in, (int)out, (int)rows, &one, x,
                        (int)in, dy, (int)out, &one, dw, (int)in);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "linear backward dW sgemm rows=%lld in=%lld out=%lld",
                             (long long)rows, (long long)in, (long long)out);
    }
    if (db) {
        if (!scratch)
            return dvl_errf(err, DVL_EINVAL,
                            "dvl_cuda_linear_bwd: db needs scratch of %lld floats, got NULL",
                            (long long)dvl_cuda_colsum_scratch(rows, out));
        dvl_cuda_colsum_acc(db, scratch, dy, rows, out);
        if (dvl_cuda_check("dvl_cuda_linear_bwd db", err))
            return DVL_EDEVICE;
    }
    return DVL_OK;
}

extern "C" int dvl_cuda_matmul_bf16(dvl_cublas *h, void *y, dvl_dtype ytype, const uint16_t *x,
                                    const uint16_t *w, int64_t rows, int64_t in, int64_t out,
                                    dvl_err *err)
{
    if (check_dims("dvl_cuda_matmul_bf16", rows, in, out, err))
        return err ? err->code : DVL_EINVAL;
    if (ytype != DVL_F32 && ytype != DVL_BF16)
        return dvl_errf(err, DVL_EUNSUP, "dvl_cuda_matmul_bf16: output dtype %s (want f32 or bf16)",
                        dvl_dtype_name(ytype));
    if (rows == 0 || out == 0)
        return DVL_OK;
    if (in == 0) {
        size_t esz = ytype == DVL_F32 ? sizeof(float) : sizeof(uint16_t);
        return dvl_cuda_memset_zero(y, (size_t)(rows * out) * esz, err);
    }
    /* alpha and beta are f32 for CUBLAS_COMPUTE_32F, whatever the output. */
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t yt = ytype == DVL_F32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasStatus_t s = cublasGemmEx(h->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)rows, (int)in,
                                    &one, w, CUDA_R_16BF, (int)in, x, CUDA_R_16BF, (int)in, &zero,
                                    y, yt, (int)out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "bf16 gemm rows=%lld in=%lld out=%lld", (long long)rows,
                         (long long)in, (long long)out);
    return DVL_OK;
}

extern "C" int dvl_cuda_gemm_bf16(dvl_cublas *h, bool a_t, bool b_t, int64_t m, int64_t n,
                                  int64_t k, const uint16_t *a, const uint16_t *b, float beta,
                                  void *c, dvl_dtype ctype, dvl_err *err)
{
    if (m < 0 || n < 0 || k < 0 || m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return dvl_errf(err, DVL_EINVAL, "dvl_cuda_gemm_bf16: sizes m=%lld n=%lld k=%lld",
                        (long long)m, (long long)n, (long long)k);
    if (ctype != DVL_F32 && ctype != DVL_BF16)
        return dvl_errf(err, DVL_EUNSUP, "dvl_cuda_gemm_bf16: output dtype %s (want f32 or bf16)",
                        dvl_dtype_name(ctype));
    if (m == 0 || n == 0)
        return DVL_OK;
    const size_t esz = ctype == DVL_F32 ? sizeof(float) : sizeof(uint16_t);
    if (k == 0)
        return beta == 0.0f ? dvl_cuda_memset_zero(c, (size_t)(m * n) * esz, err) : DVL_OK;
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T:
     * cuBLAS gets B first, each transposed when its row-major form is. */
    const float one = 1.0f;
    cublasStatus_t s = cublasGemmEx(
        h->h, b_t ? CUBLAS_OP_T : CUBLAS_OP_N, a_t ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m,
        (int)k, &one, b, CUDA_R_16BF, (int)(b_t ? k : n), a, CUDA_R_16BF, (int)(a_t ? m : k),
        &beta, c, ctype == DVL_F32 ? CUDA_R_32F : CUDA_R_16BF, (int)n, CUBLAS_COMPUTE_32F,
        CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "bf16 gemm%s%s m=%lld n=%lld k=%lld", a_t ? " A^T" : "",
                         b_t ? " B^T" : "", (long long)m, (long long)n, (long long)k);
    return DVL_OK;
}

/* ------------------------------------------------------ bf16 mixed precision
 * The linear layer with bf16 products (torch.autocast's recipe, with f32
 * results): f32 master weights and activations stay as they are; each call
 * rounds its operands to bf16 copies in caller scratch (round to nearest
 * even), multiplies them with f32 accumulation (cublasGemmEx, compute
 * 32F) and writes or accumulates f32 results:
 *   forward   y = bf16(x) bf16(W)^T (+ b)
 *   backward  dx += bf16(dy) bf16(W),  dW += bf16(dy)^T bf16(x),  db += colsum(dy)
 * Casting per call, rather than keeping a bf16 shadow of each weight that
 * the optimiser refreshes, needs no state tied to the parameter store and
 * cannot go stale; it costs one pass over W per product (memory-bound,
 * ~1/100 of the product's time at these shapes). */

#define GRID_STRIDE(i, n)                                                                     \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                 \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ static void to_bf16_k(__nv_bfloat16 *y, const float *x, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

/* Bytes of a bf16 copy of n values, rounded up to 256 (the arena's device
 * alignment, so copies laid end to end stay aligned). */
static size_t bf16_bytes(int64_t n) { return ((size_t)n * 2 + 255) / 256 * 256; }

extern "C" size_t dvl_cuda_linear_bf16_scratch(int64_t rows, int64_t in, int64_t out,
                                               bool backward, bool have_w16)
{
    if (rows < 0 || in < 0 || out < 0)
        return 0;
    return bf16_bytes(rows * in) + (have_w16 ? 0 : bf16_bytes(out * in)) +
           (backward ? bf16_bytes(rows * out) : 0);
}

/* bf16 copy of x [n] into dst (device), launch checked. */
static int cast(__nv_bfloat16 *dst, const float *x, int64_t n, const char *what, dvl_err *err)
{
    if (n <= 0)
        return DVL_OK;
    to_bf16_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(dst, x, n);
    return dvl_cuda_check(what, err);
}

extern "C" int dvl_cuda_to_bf16(uint16_t *dst, const float *src, int64_t n, dvl_err *err)
{
    return cast((__nv_bfloat16 *)dst, src, n, "dvl_cuda_to_bf16", err);
}

/* C (f32, column-major m x n, ldc) = A B + beta C with bf16 A, B (column-
 * major views as in the f32 products above), f32 accumulation. */
static cublasStatus_t gemm_bf16(dvl_cublas *h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                int n, int k, const __nv_bfloat16 *A, int lda,
                                const __nv_bfloat16 *B, int ldb, float beta, float *C, int ldc)
{
    const float one = 1.0f;
    return cublasGemmEx(h->h, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                        &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

extern "C" int dvl_cuda_linear_fwd_bf16(dvl_cublas *h, float *y, const float *x, const float *w,
                                        const uint16_t *w16, const float *b, void *scratch,
                                        int64_t rows, int64_t in, int64_t out, dvl_err *err)
{
    if (check_dims("dvl_cuda_linear_fwd_bf16", rows, in, out, err))
        return err ? err->code : DVL_EINVAL;
    if (rows == 0 || out == 0)
        return DVL_OK;
    if (in == 0) /* y = b, or 0: the f32 path's handling */
        return dvl_cuda_linear_fwd(h, y, x, w, b, rows, in, out, err);
    if (!scratch)
        return dvl_errf(err, DVL_EINVAL,
                        "dvl_cuda_linear_fwd_bf16: needs %zu bytes of scratch, got NULL",
                        dvl_cuda_linear_bf16_scratch(rows, in, out, false, w16 != NULL));
    __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch;
    const __nv_bfloat16 *wb = (const __nv_bfloat16 *)w16;
    int rc = cast(xb, x, rows * in, "linear bf16: cast x", err);
    if (rc)
        return rc;
    if (!wb) {
        __nv_bfloat16 *wc = (__nv_bfloat16 *)((char *)scratch + bf16_bytes(rows * in));
        if ((rc = cast(wc, w, out * in, "linear bf16: cast W", err)))
            return rc;
        wb = wc;
    }
    float beta = 0.0f;
    if (b) {
        fill_rows_k<<<dvl_cu_blocks(rows * out), DVL_CU_THREADS>>>(y, b, rows, out);
        if (dvl_cuda_check("dvl_cuda_linear_fwd_bf16 bias", err))
            return DVL_EDEVICE;
        beta = 1.0f;
    }
    /* y^T = W x^T as the f32 forward. */
    cublasStatus_t s = gemm_bf16(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)rows, (int)in, wb,
                                 (int)in, xb, (int)in, beta, y, (int)out);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "linear forward bf16 gemm rows=%lld in=%lld out=%lld",
                         (long long)rows, (long long)in, (long long)out);
    return DVL_OK;
}

extern "C" int dvl_cuda_linear_bwd_bf16(dvl_cublas *h, float *dx, float *dw, float *db,
                                        float *colsum_scratch, void *scratch, const float *dy,
                                        const float *x, const float *w, const uint16_t *w16,
                                        int64_t rows, int64_t in, int64_t out, dvl_err *err)
{
    if (check_dims("dvl_cuda_linear_bwd_bf16", rows, in, out, err))
        return err ? err->code : DVL_EINVAL;
    if (rows == 0 || out == 0)
        return DVL_OK;
    if ((dx || dw) && in > 0) {
        if (!scratch)
            return dvl_errf(err, DVL_EINVAL,
                            "dvl_cuda_linear_bwd_bf16: needs %zu bytes of scratch, got NULL",
                            dvl_cuda_linear_bf16_scratch(rows, in, out, true, w16 != NULL));
        /* Scratch: bf16 x, then W's copy unless w16 is given, then dy. */
        __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch;
        __nv_bfloat16 *wc = (__nv_bfloat16 *)((char *)scratch + bf16_bytes(rows * in));
        __nv_bfloat16 *dyb = w16 ? wc : (__nv_bfloat16 *)((char *)wc + bf16_bytes(out * in));
        const __nv_bfloat16 *wb = w16 ? (const __nv_bfloat16 *)w16 : wc;
        int rc = cast(dyb, dy, rows * out, "linear bf16 backward: cast dy", err);
        if (rc)
            return rc;
        if (dx) { /* dx^T += W^T dy^T */
            if (!w16 && (rc = cast(wc, w, out * in, "linear bf16 backward: cast W", err)))
                return rc;
            cublasStatus_t s = gemm_bf16(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)in, (int)rows,
                                         (int)out, wb, (int)in, dyb, (int)out, 1.0f, dx, (int)in);
            if (s != CUBLAS_STATUS_SUCCESS)
                return blas_fail(err, s, "linear backward dx bf16 gemm rows=%lld in=%lld out=%lld",
                                 (long long)rows, (long long)in, (long long)out);
        }
        if (dw) { /* dW^T += x^T dy */
            if ((rc = cast(xb, x, rows * in, "linear bf16 backward: cast x", err)))
                return rc;
            cublasStatus_t s = gemm_bf16(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)in, (int)out,
                                         (int)rows, xb, (int)in, dyb, (int)out, 1.0f, dw, (int)in);
            if (s != CUBLAS_STATUS_SUCCESS)
                return blas_fail(err, s, "linear backward dW bf16 gemm rows=%lld in=%lld out=%lld",
                                 (long long)rows, (long long)in, (long long)out);
        }
    }
    /* db from the f32 dy, as the f32 path. */
    return dvl_cuda_linear_bwd(h, NULL, NULL, db, colsum_scratch, dy, x, w, rows, in, out, err);
}
