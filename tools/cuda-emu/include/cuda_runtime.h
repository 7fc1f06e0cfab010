// The CUDA runtime of the emulated backend (meson -Dgpu_emu=true): the part
// of the runtime API that src/ops/cuda/ uses, on host memory, with each
// kernel launch run block by block on the fiber emulator (emu.h). "Device"
// memory is host memory from a registry, so the calls can check what the
// GPU would refuse: copies whose kind disagrees with where the pointers
// live, launches past the device's thread, grid and shared-memory limits
// (an H100's), dynamic shared memory past 48 KB without the kernel's
// cudaFuncSetAttribute. Dev-only: see tools/cuda-emu/run.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include "emu.h"

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaEventDisableTiming 0x02

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin;
    int major, minor, multiProcessorCount, maxThreadsPerBlock;
};

// The device's min and max of mixed integer types (CUDA's overloads).
template <class A, class B> static inline auto min(A a, B b) -> std::common_type_t<A, B>
{
    return a < b ? a : b;
}
template <class A, class B> static inline auto max(A a, B b) -> std::common_type_t<A, B>
{
    return a < b ? b : a;
}

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device);
cudaError_t cudaDeviceGetPCIBusId(char *buf, int len, int device);
cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t bytes)
{
    return cudaMalloc((void **)p, bytes);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
template <class T> static inline cudaError_t cudaMallocHost(T **p, size_t bytes)
{
    return cudaMallocHost((void **)p, bytes);
}
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t ev);
cudaError_t emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value);
template <class K> static inline cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute attr,
                                                                  int value)
{
    return emu_func_set_attribute((const void *)kernel, attr, value);
}

// Whether [p, p + bytes) lies inside one device allocation (cuBLAS's check).
bool emu_is_device(const void *p, size_t bytes);
// Device memory readable and writable between these calls only (nested:
// runtime.cpp).
void emu_device_open();
void emu_device_close();

// kernel<<<grid, block, smem>>>(args) is rewritten (tools/cuda-emu/cxx) as
// emu_launch(grid, block, smem).run(kernel, "kernel")(args): a launch error
// sets the runtime's last error, as on the GPU, and runs nothing.
void emu_grid(const void *kernel, const char *name, dim3 grid, dim3 block, size_t smem,
              const std::function<void()> &fn);
struct emu_launch {
    dim3 g, b;
    size_t s;
    emu_launch(dim3 g_, dim3 b_, size_t s_ = 0, cudaStream_t = 0) : g(g_), b(b_), s(s_) {}
    template <class K> auto run(K k, const char *name) const
    {
        const emu_launch l = *this;
        return [k, l, name](auto... a) {
            emu_grid((const void *)k, name, l.g, l.b, l.s, [&] { k(a...); });
        };
    }
};
// CUDA_EMU_TRACE=1: what the device was asked to do, counted by kind
// (kernel name, cuBLAS product shape, copy direction) and printed to stderr
// at exit: calls, and per call the blocks, FLOPs or bytes (`units`).
void emu_trace(const char *kind, double units);
