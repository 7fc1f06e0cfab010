// cuBLAS for the emulated backend (include/cublas_v2.h): column-major
// products through OpenBLAS on host memory, after the checks cuBLAS makes.
#include <cblas.h>
#include <cmath>
#include <vector>

#include "cublas_v2.h"
#include "emu_mma.h"

struct emu_cublas {
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_cublas{CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }

namespace {
// x rounded to TF32 (10 mantissa bits, nearest, ties away as the tensor
// cores' conversion does closely enough for the tests' tolerances).
float tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

// An operand of r x c (column-major, leading dimension ld) as f32.
std::vector<float> widen(const void *p, cudaDataType t, int64_t r, int64_t c, int64_t ld,
                         bool round_tf32)
{
    std::vector<float> v((size_t)(ld * (c - 1) + r));
    for (int64_t j = 0; j < c; j++)
        for (int64_t i = 0; i < r; i++) {
            const int64_t e = j * ld + i;
            float x = t == CUDA_R_16BF ? emu_bf16_float(((const uint16_t *)p)[e])
                                       : ((const float *)p)[e];
            v[(size_t)e] = round_tf32 ? tf32(x) : x;
        }
    return v;
}

size_t esize(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

// cuBLAS's checks: sizes, leading dimensions at least the stored rows, and
// every operand inside device memory.
cublasStatus_t check(const char *fn, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                     int k, const void *A, cudaDataType at, int lda, const void *B,
                     cudaDataType bt, int ldb, const void *C, cudaDataType ct, int ldc)
{
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda-emu: %s: m %d n %d k %d, lda %d ldb %d ldc %d\n", fn, m, n, k, lda,
                ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    struct {
        const char *name;
        const void *p;
        size_t bytes;
    } ops[] = {{"A", A, k ? ((size_t)lda * (ac - 1) + ar) * esize(at) : 0},
               {"B", B, k ? ((size_t)ldb * (bc - 1) + br) * esize(bt) : 0},
               {"C", C, ((size_t)ldc * (n - 1) + m) * esize(ct)}};
    for (auto &o : ops)
        if (o.bytes && !emu_is_device(o.p, o.bytes)) {
            fprintf(stderr, "cuda-emu: %s: operand %s (%zu bytes) is not in device memory\n", fn,
                    o.name, o.bytes);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t gemm(cublasHandle_t h, const char *fn, cublasOperation_t ta, cublasOperation_t tb,
                    int m, int n, int k, float alpha, const void *A, cudaDataType at, int lda,
                    const void *B, cudaDataType bt, int ldb, float beta, void *C, cudaDataType ct,
                    int ldc)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasStatus_t s = check(fn, ta, tb, m, n, k, A, at, lda, B, bt, ldb, C, ct, ldc);
    if (s != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0)
        return s;
    char kind[120];
    snprintf(kind, sizeof kind, "%s %s%s %c%c m %d n %d k %d (FLOPs)", fn,
             at == CUDA_R_16BF                          ? "bf16"
             : h->math == CUBLAS_TF32_TENSOR_OP_MATH ? "tf32"
                                                       : "f32",
             ct == CUDA_R_16BF ? "->bf16" : "",
             ta == CUBLAS_OP_N ? 'N' : 'T', tb == CUBLAS_OP_N ? 'N' : 'T', m, n, k);
    emu_trace(kind, 2.0 * m * n * k);
    emu_device_open();
    const bool r32 = h->math == CUBLAS_TF32_TENSOR_OP_MATH && at == CUDA_R_32F;
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    /* With beta 0 cuBLAS does not read C: NaN there stays out. */
    std::vector<float> a, b,
        c = beta == 0.0f ? std::vector<float>((size_t)ldc * (n - 1) + m, 0.0f)
                         : widen(C, ct, m, n, ldc, false);
    if (k > 0) {
        a = widen(A, at, ar, ac, lda, r32);
        b = widen(B, bt, br, bc, ldb, r32);
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, a.data(), lda,
                    b.data(), ldb, beta, c.data(), ldc);
    }
    else if (beta != 0.0f)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
                c[(size_t)j * ldc + i] *= beta;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const size_t e = (size_t)j * ldc + i;
            if (ct == CUDA_R_16BF)
                ((uint16_t *)C)[e] = bf16_bits(c[e]);
            else
                ((float *)C)[e] = c[e];
        }
    emu_device_close();
    return CUBLAS_STATUS_SUCCESS;
}
} // namespace

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    return gemm(h, "cublasSgemm", ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                *beta, C, CUDA_R_32F, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t)
{
    if (compute != CUBLAS_COMPUTE_32F || at != bt)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm(h, "cublasGemmEx", ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb,
                *(const float *)beta, C, ct, ldc);
}
