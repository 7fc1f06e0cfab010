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

#include "ops/cuda/common.cuh"

struct dvl_cublas {
    cublasHandle_t h;
    bool tf32;
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

static int set_math(dvl_cublas *h, bool tf32, dvl_err *err)
{
    /* DEFAULT keeps f32 products in f32 (unless NVIDIA_TF32_OVERRIDE says
     * otherwise); TF32_TENSOR_OP lets cublasSgemm round inputs to TF32. */
    cublasStatus_t s =
        cublasSetMathMode(h->h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, s, "cublasSetMathMode(%s)", tf32 ? "TF32" : "default");
    h->tf32 = tf32;
    return DVL_OK;
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
    if (set_math(h, tf32, err) != DVL_OK) {
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
    return set_math(h, tf32, err);
}

extern "C" bool dvl_cublas_tf32(const dvl_cublas *h) { return h->tf32; }

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
