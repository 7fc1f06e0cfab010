/* The emulated backend's own checks can fail (meson -Dgpu_emu=true: test
 * cuda_emu_selftest): each refusal a GPU would make is made here too, and a
 * correct call still works. Compiled by ./cxx like src/ops/cuda/. */
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>

#include <cublas_v2.h>

#include "ops/cuda/mma.cuh"

static int failures;
#define EXPECT(cond, what)                                                                        \
    do {                                                                                          \
        if (cond)                                                                                 \
            printf("ok   %s\n", what);                                                            \
        else {                                                                                    \
            printf("FAIL %s (line %d)\n", what, __LINE__);                                        \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

__global__ static void fill_k(float *x, float v, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = v + (float)i;
}

/* One block: each thread writes its 2-D index, then reads its neighbour's
 * through shared memory after a barrier. */
__global__ static void shared_k(float *out)
{
    extern __shared__ __align__(128) float smem[];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    smem[t] = (float)(100 * threadIdx.y + threadIdx.x);
    __syncthreads();
    out[t] = smem[(t + 1) % (blockDim.x * blockDim.y)];
}

/* Block 0 writes a static shared array and reads it back; block 1 reads it
 * without writing: on a GPU its contents are undefined, here NaN. */
__global__ static void stale_shared_k(float *out)
{
    __shared__ float s[32];
    const int t = threadIdx.x;
    if (blockIdx.x == 0)
        s[t] = 1.0f;
    out[blockIdx.x * 32 + t] = s[t];
}

/* One warp: each lane copies 8 values by cp.async into shared memory,
 * waits for them only if `wait`, then reads them back. */
__global__ static void cp_async_k(uint16_t *out, const uint16_t *src, int wait)
{
    extern __shared__ __align__(128) float smem[];
    uint16_t *s = (uint16_t *)smem;
    const int t = threadIdx.x;
    cp_async16(s + 8 * t, src + 8 * t, true);
    cp_async_commit();
    if (wait)
        cp_async_wait<0>();
    __syncthreads();
    for (int i = 0; i < 8; i++)
        out[8 * t + i] = s[8 * ((t + 1) % 32) + i];
}

/* Dies by SIGSEGV iff the host touching device memory faults. */
static bool host_touch_faults()
{
    float *d = nullptr;
    if (cudaMalloc(&d, 64) != cudaSuccess)
        return false;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        volatile float x = d[3]; /* the bug the protection is there to catch */
        (void)x;
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    cudaFree(d);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

int main()
{
    const int n = 1000;
    float *d = nullptr, h[n];
    EXPECT(cudaMalloc(&d, n * sizeof(float)) == cudaSuccess, "cudaMalloc");
    fill_k<<<(n + 255) / 256, 256>>>(d, 0.5f, n);
    EXPECT(cudaGetLastError() == cudaSuccess, "a valid launch");
    EXPECT(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaSuccess && h[0] == 0.5f &&
               h[n - 1] == 999.5f,
           "the kernel ran over the grid");
    EXPECT(cudaMemcpy(h, d, sizeof h, cudaMemcpyHostToDevice) ==
               cudaErrorInvalidMemcpyDirection,
           "a copy whose kind names the wrong sides is refused");
    EXPECT(cudaMemset(h, 0, sizeof h) != cudaSuccess, "a memset of host memory is refused");
    cudaGetLastError();
    fill_k<<<1, 2048>>>(d, 0.0f, n);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration,
           "a block of 2048 threads is refused");
    fill_k<<<0, 32>>>(d, 0.0f, n);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid is refused");

    /* 2-D block, dynamic shared memory past 48 KB only with the opt-in. */
    float *o = nullptr, ho[6];
    cudaMalloc(&o, sizeof ho);
    shared_k<<<1, dim3(3, 2), 64 * 1024>>>(o);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration,
           "64 KB of shared memory without cudaFuncSetAttribute is refused");
    EXPECT(cudaFuncSetAttribute(shared_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                300 * 1024) != cudaSuccess,
           "an opt-in past 227 KB is refused");
    cudaGetLastError();
    EXPECT(cudaFuncSetAttribute(shared_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                64 * 1024) == cudaSuccess,
           "an opt-in of 64 KB");
    shared_k<<<1, dim3(3, 2), 64 * 1024>>>(o);
    EXPECT(cudaGetLastError() == cudaSuccess, "64 KB after the opt-in");
    cudaMemcpy(ho, o, sizeof ho, cudaMemcpyDeviceToHost);
    EXPECT(ho[0] == 1.0f && ho[2] == 100.0f && ho[5] == 0.0f,
           "threadIdx.x / .y of a 3 x 2 block and a barrier through shared memory");

    /* A static shared array does not carry a block's values into the next. */
    float *dst = nullptr, hst[64];
    cudaMalloc(&dst, sizeof hst);
    stale_shared_k<<<2, 32>>>(dst);
    cudaMemcpy(hst, dst, sizeof hst, cudaMemcpyDeviceToHost);
    EXPECT(hst[0] == 1.0f && hst[31] == 1.0f && std::isnan(hst[32]) && std::isnan(hst[63]),
           "a static shared array is NaN at each block's start");
    cudaFree(dst);

    /* cp.async: the data is there after the wait and a barrier, and not
     * without the wait (the emulator lands a copy only at its wait). */
    uint16_t hs[256], hr[256], *ds = nullptr, *dr = nullptr;
    for (int i = 0; i < 256; i++)
        hs[i] = (uint16_t)(i + 1);
    cudaMalloc(&ds, sizeof hs);
    cudaMalloc(&dr, sizeof hr);
    cudaMemcpy(ds, hs, sizeof hs, cudaMemcpyHostToDevice);
    cp_async_k<<<1, 32, sizeof hs>>>(dr, ds, 1);
    cudaMemcpy(hr, dr, sizeof hr, cudaMemcpyDeviceToHost);
    EXPECT(hr[0] == 9 && hr[255] == 8, "cp.async, waited for, then read by another thread");
    cp_async_k<<<1, 32, sizeof hs>>>(dr, ds, 0);
    cudaMemcpy(hr, dr, sizeof hr, cudaMemcpyDeviceToHost);
    EXPECT(hr[0] != 9 && hr[255] != 8, "cp.async read without its wait does not see the data");
    cudaFree(ds);
    cudaFree(dr);

    /* cuBLAS: C = A B column-major, 2 x 2 x 3, then its refusals. */
    cublasHandle_t hb;
    cublasCreate(&hb);
    const float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 2, 1, 0, 1}, one = 1, zero = 0;
    float *dA, *dB, *dC, C[4];
    cudaMalloc(&dA, sizeof A);
    cudaMalloc(&dB, sizeof B);
    cudaMalloc(&dC, sizeof C);
    cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice);
    /* A = [1 3 5; 2 4 6] (lda 2), B = [1 1; 0 0; 2 1] (ldb 3): C = [11 6; 14 8]. */
    EXPECT(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA, 2, dB, 3, &zero, dC, 2) ==
               CUBLAS_STATUS_SUCCESS,
           "cublasSgemm");
    cudaMemcpy(C, dC, sizeof C, cudaMemcpyDeviceToHost);
    EXPECT(C[0] == 11 && C[1] == 14 && C[2] == 6 && C[3] == 8, "cublasSgemm's product");
    EXPECT(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA, 1, dB, 3, &zero, dC, 2) ==
               CUBLAS_STATUS_INVALID_VALUE,
           "a leading dimension below the rows is refused");
    EXPECT(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA, 2, dB, 3, &zero, C, 2) ==
               CUBLAS_STATUS_INVALID_VALUE,
           "a host C is refused");
    EXPECT(cublasSgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, 3, 2, 2, &one, dA, 2, dB, 3, &zero, dC, 3) ==
               CUBLAS_STATUS_INVALID_VALUE,
           "an operand reaching past its allocation is refused");
    cublasDestroy(hb);

    EXPECT(host_touch_faults(), "the host reading device memory faults");
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dC);
    cudaFree(o);
    cudaFree(d);
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
