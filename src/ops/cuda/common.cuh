/* Helpers shared by the .cu files of the CUDA backend (C++ only). */
#ifndef DVL_OPS_CUDA_COMMON_CUH
#define DVL_OPS_CUDA_COMMON_CUH

#include <stdio.h>

#include <cuda_runtime.h>

#include "ops/cuda/cuda.h"

/* Report a failed CUDA runtime call: "cudaMalloc of 64 bytes: out of memory
 * (cudaErrorMemoryAllocation)". Clears the runtime's last-error slot so the
 * same failure is not reported again by a later dvl_cuda_check. */
__attribute__((format(printf, 3, 4))) static inline int dvl_cu_fail(dvl_err *err, cudaError_t e,
                                                                     const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    cudaGetLastError();
    return dvl_errf(err, DVL_EDEVICE, "cuda: %s: %s (%s)", what, cudaGetErrorString(e),
                    cudaGetErrorName(e));
}

/* Threads per block for the 1-D elementwise kernels, and a grid that covers
 * n elements (the kernels loop with a grid stride past the cap). */
#define DVL_CU_THREADS 256
static inline unsigned dvl_cu_blocks(int64_t n)
{
    int64_t b = (n + DVL_CU_THREADS - 1) / DVL_CU_THREADS;
    return (unsigned)(b < 65536 * 16 ? b : 65536 * 16);
}

#endif
