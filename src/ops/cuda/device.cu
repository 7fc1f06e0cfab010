/* Device selection and device memory: thin wrappers over the CUDA runtime
 * that turn its error codes into dvl_err messages. */
#include "ops/cuda/common.cuh"

extern "C" int dvl_cuda_probe(dvl_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        /* No driver, a driver older than this runtime, no device: all mean
         * "no CUDA here" to callers, which fall back to the CPU. */
        dvl_cu_fail(err, e, "cudaGetDeviceCount");
        return 0;
    }
    return n;
}

extern "C" int dvl_cuda_device_count(void) { return dvl_cuda_probe(NULL); }

extern "C" bool dvl_cuda_emulated(void)
{
#ifdef DVL_CUDA_EMU
    return true;
#else
    return false;
#endif
}

extern "C" int dvl_cuda_init(int device, dvl_err *err)
{
    dvl_err why = {0, ""};
    int n = dvl_cuda_probe(&why);
    if (n == 0)
        return dvl_errf(err, DVL_EDEVICE, "cuda: device %d requested but none is usable (%s)",
                        device, why.code ? why.msg : "no devices");
    if (device < 0 || device >= n)
        return dvl_errf(err, DVL_EDEVICE, "cuda: device %d out of range (%d devices)", device, n);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaSetDevice(%d)", device);
    /* cudaSetDevice is lazy; a no-op call makes the context now, so a broken
     * device fails here rather than inside the first op. */
    e = cudaFree(0);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "creating the context of device %d", device);
    return DVL_OK;
}

extern "C" int dvl_cuda_get_device(int *device, dvl_err *err)
{
    cudaError_t e = cudaGetDevice(device);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaGetDevice");
    return DVL_OK;
}

extern "C" int dvl_cuda_describe(int device, char *buf, size_t n, dvl_err *err)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaGetDeviceProperties(%d)", device);
    snprintf(buf, n, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return DVL_OK;
}

extern "C" int dvl_cuda_pci_bus_id(int device, char *buf, size_t n, dvl_err *err)
{
    cudaError_t e = cudaDeviceGetPCIBusId(buf, n > 64 ? 64 : (int)n, device);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaDeviceGetPCIBusId(%d)", device);
    return DVL_OK;
}

extern "C" void *dvl_cuda_malloc(size_t bytes, dvl_err *err)
{
    void *p = NULL;
    /* cudaMalloc(0) may return NULL with success; ask for one byte so that
     * NULL always means failure. */
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        dvl_cu_fail(err, e, "cudaMalloc of %zu bytes", bytes);
        return NULL;
    }
    return p;
}

extern "C" int dvl_cuda_mem_info(size_t *free_bytes, size_t *total_bytes, dvl_err *err)
{
    cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaMemGetInfo");
    return DVL_OK;
}

extern "C" void dvl_cuda_free(void *p)
{
    if (p)
        cudaFree(p);
}

static int copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *name,
                dvl_err *err)
{
    if (bytes == 0)
        return DVL_OK;
    cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "%s of %zu bytes", name, bytes);
    return DVL_OK;
}

extern "C" int dvl_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes, dvl_err *err)
{
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, "cudaMemcpy host to device", err);
}

extern "C" int dvl_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes, dvl_err *err)
{
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, "cudaMemcpy device to host", err);
}

extern "C" int dvl_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes, dvl_err *err)
{
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpy device to device", err);
}

extern "C" int dvl_cuda_memset_zero(void *p, size_t bytes, dvl_err *err)
{
    if (bytes == 0)
        return DVL_OK;
    cudaError_t e = cudaMemset(p, 0, bytes);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaMemset of %zu bytes", bytes);
    return DVL_OK;
}

extern "C" int dvl_cuda_check(const char *what, dvl_err *err)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "%s: kernel launch", what ? what : "(unnamed step)");
    return DVL_OK;
}

extern "C" int dvl_cuda_sync(const char *what, dvl_err *err)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "%s", what ? what : "cudaDeviceSynchronize");
    return DVL_OK;
}

/* ------------------------------------------------ pinned memory, events */

extern "C" void *dvl_cuda_malloc_host(size_t bytes, dvl_err *err)
{
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        dvl_cu_fail(err, e, "cudaMallocHost of %zu bytes", bytes);
        return NULL;
    }
    return p;
}

extern "C" void dvl_cuda_free_host(void *p)
{
    if (p)
        cudaFreeHost(p);
}

extern "C" int dvl_cuda_memcpy_h2d_async(void *dst, const void *src, size_t bytes, dvl_err *err)
{
    if (bytes == 0)
        return DVL_OK;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cudaStreamLegacy);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaMemcpyAsync host to device of %zu bytes", bytes);
    return DVL_OK;
}

/* dvl_cuda_event is cudaEvent_t (a pointer to the runtime's event struct)
 * under another name, so C code can hold one. */
extern "C" dvl_cuda_event *dvl_cuda_event_new(dvl_err *err)
{
    cudaEvent_t ev = NULL;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        dvl_cu_fail(err, e, "cudaEventCreateWithFlags");
        return NULL;
    }
    return (dvl_cuda_event *)ev;
}

extern "C" void dvl_cuda_event_free(dvl_cuda_event *ev)
{
    if (ev)
        cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int dvl_cuda_event_record(dvl_cuda_event *ev, dvl_err *err)
{
    cudaError_t e = cudaEventRecord((cudaEvent_t)ev, cudaStreamLegacy);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaEventRecord");
    return DVL_OK;
}

extern "C" int dvl_cuda_event_sync(dvl_cuda_event *ev, dvl_err *err)
{
    cudaError_t e = cudaEventSynchronize((cudaEvent_t)ev);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "cudaEventSynchronize");
    return DVL_OK;
}
