// The CUDA runtime of the emulated backend (include/cuda_runtime.h): device
// memory is host memory kept in a registry, so that copies, memsets and
// cuBLAS calls can check which side a pointer is on; kernels run on the
// fiber emulator, one block after another, with dynamic shared memory
// filled with NaN before each block (a read before a write shows).
//
// Device memory is mapped PROT_NONE whenever the "device" is not running a
// kernel, a copy, a memset or a product (emu_device_open / close), so host
// code that reads or writes device memory directly, which would fault on a
// GPU too, faults here (SIGSEGV at the offending line) instead of working.
// CUDA_EMU_PROTECT=0 turns that off.
//
// CUDA_EMU_DIGEST=FILE appends a line for each device-to-host copy to FILE:
// its bytes, an FNV-1a hash of them and the last kernel launched before it.
// Two runs of a program whose results do not depend on the warp order give
// the same lines in every order (CUDA_EMU_ORDER, emu.cpp): tools/cuda-emu/
// suite-orders compares them. A rank of an MPI job (Open MPI's
// OMPI_COMM_WORLD_RANK, or PMI_RANK) writes to FILE.rankN instead, as the
// ranks' lines would interleave in one file in no fixed order.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace {
std::mutex mu;
std::map<uintptr_t, size_t> dev; // device allocations: address -> bytes
size_t dev_bytes;
std::map<const void *, int> smem_optin; // kernel -> cudaFuncSetAttribute's bytes
cudaError_t last = cudaSuccess;
std::vector<float> smem;

// The emulated device: an H100's limits. Its memory is a budget over host
// memory, CUDA_EMU_MEM_GIB (default 16), so a plan that fits an 80 GB GPU but
// not this machine fails as an allocation would.
const size_t SMEM_DEFAULT = 48 * 1024, SMEM_OPTIN = 227 * 1024;
size_t total_mem()
{
    const char *s = getenv("CUDA_EMU_MEM_GIB");
    double g = s ? atof(s) : 16.0;
    return (size_t)((g > 0 ? g : 16.0) * 1073741824.0);
}

size_t page_round(size_t bytes)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (bytes + pg - 1) / pg * pg;
}

bool protect_on()
{
    static int on = -1;
    if (on < 0) {
        const char *s = getenv("CUDA_EMU_PROTECT");
        on = !(s && strcmp(s, "0") == 0);
    }
    return on == 1;
}

int open_depth;

void set_access(int prot)
{
    for (auto &a : dev)
        if (mprotect((void *)a.first, page_round(a.second ? a.second : 1), prot) != 0) {
            perror("cuda-emu: mprotect");
            abort();
        }
}

std::string last_kernel = "(none)";

// CUDA_EMU_DIGEST, with .rankN for a rank of an MPI job; "" when unset.
const std::string &digest_path()
{
    static const std::string path = [] {
        const char *p = getenv("CUDA_EMU_DIGEST");
        if (!p || !*p)
            return std::string();
        const char *r = getenv("OMPI_COMM_WORLD_RANK");
        if (!r || !*r)
            r = getenv("PMI_RANK");
        return r && *r ? std::string(p) + ".rank" + r : std::string(p);
    }();
    return path;
}

void digest(const void *p, size_t bytes)
{
    const char *path = digest_path().c_str();
    if (!*path)
        return;
    unsigned long long h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++)
        h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    // Opened for each line: a forked test's lines land in order too.
    FILE *f = fopen(path, "a");
    if (!f) {
        perror(path);
        abort();
    }
    fprintf(f, "%zu %016llx after %s\n", bytes, h, last_kernel.c_str());
    fclose(f);
}

cudaError_t fail(cudaError_t e)
{
    last = e;
    return e;
}

// The allocation that holds [p, p + bytes), or end().
std::map<uintptr_t, size_t>::iterator find(const void *p, size_t bytes)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = dev.upper_bound(a);
    if (it == dev.begin())
        return dev.end();
    --it;
    if (a + bytes > it->first + it->second)
        return dev.end();
    return it;
}
} // namespace

void emu_device_open()
{
    std::lock_guard<std::mutex> g(mu);
    if (protect_on() && open_depth++ == 0)
        set_access(PROT_READ | PROT_WRITE);
}

void emu_device_close()
{
    std::lock_guard<std::mutex> g(mu);
    if (protect_on() && --open_depth == 0)
        set_access(PROT_NONE);
}

bool emu_is_device(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mu);
    return find(p, bytes ? bytes : 1) != dev.end();
}

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device)
{
    if (device != 0)
        return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda-emu (the CPU, emulating an H100's limits)");
    p->totalGlobalMem = total_mem();
    p->sharedMemPerBlock = SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = SMEM_OPTIN;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *buf, int len, int device)
{
    if (device != 0 || len < 1)
        return fail(cudaErrorInvalidValue);
    snprintf(buf, (size_t)len, "0000:00:00.0");
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mu);
    *p = nullptr;
    if (dev_bytes + bytes > total_mem())
        return fail(cudaErrorMemoryAllocation);
    void *q = mmap(nullptr, page_round(bytes ? bytes : 1),
                   protect_on() && open_depth == 0 ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED)
        return fail(cudaErrorMemoryAllocation);
    dev[(uintptr_t)q] = bytes;
    dev_bytes += bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::mutex> g(mu);
    auto it = dev.find((uintptr_t)p);
    if (it == dev.end())
        return fail(cudaErrorInvalidDevicePointer);
    dev_bytes -= it->second;
    munmap(p, page_round(it->second ? it->second : 1));
    dev.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    std::lock_guard<std::mutex> g(mu);
    *total_bytes = total_mem();
    *free_bytes = *total_bytes - dev_bytes;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    const bool dd = emu_is_device(dst, bytes), sd = emu_is_device(src, bytes);
    const bool want_dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool want_sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyDefault && (dd != want_dd || sd != want_sd)) {
        fprintf(stderr, "cuda-emu: cudaMemcpy kind %d of %zu bytes from %s to %s memory\n",
                (int)kind, bytes, sd ? "device" : "host", dd ? "device" : "host");
        return fail(cudaErrorInvalidMemcpyDirection);
    }
    emu_trace(sd && dd ? "copy device to device (bytes)" : sd ? "copy device to host (bytes)"
              : dd        ? "copy host to device (bytes)"
                          : "copy host to host (bytes)",
              (double)bytes);
    emu_device_open();
    memmove(dst, src, bytes);
    emu_device_close();
    if (sd && !dd)
        digest(dst, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t)
{
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    if (!emu_is_device(p, bytes)) {
        fprintf(stderr, "cuda-emu: cudaMemset of %zu bytes of host memory\n", bytes);
        return fail(cudaErrorInvalidValue);
    }
    emu_trace("memset (bytes)", (double)bytes);
    emu_device_open();
    memset(p, value, bytes);
    emu_device_close();
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    emu_trace("host waits for the device (cudaDeviceSynchronize)", 0);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last;
    last = cudaSuccess;
    return e;
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "emulated error";
    }
}

struct emu_event {
    int unused;
};

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned)
{
    *ev = new emu_event{};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    delete ev;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t)
{
    return ev ? cudaSuccess : fail(cudaErrorInvalidValue);
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    return ev ? cudaSuccess : fail(cudaErrorInvalidValue);
}

cudaError_t emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        (size_t)value > SMEM_OPTIN)
        return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(mu);
    smem_optin[kernel] = value;
    return cudaSuccess;
}

namespace {
struct trace_row { long calls; double units; };
std::map<std::string, trace_row> *trace_rows;

void trace_print()
{
    std::vector<std::pair<std::string, trace_row>> v(trace_rows->begin(), trace_rows->end());
    std::sort(v.begin(), v.end(), [](const auto &x, const auto &y) {
        return x.second.calls != y.second.calls ? x.second.calls > y.second.calls : x.first < y.first;
    });
    long calls = 0, memsets = 0, waits = 0;
    for (auto &r : v) {
        const std::string &k = r.first;
        long &sum = k.rfind("memset", 0) == 0 ? memsets : k.rfind("host", 0) == 0 ? waits : calls;
        if (k.rfind("copy", 0) != 0)
            sum += r.second.calls;
    }
    fprintf(stderr, "cuda-emu trace: %ld kernel launches and products, %ld memsets, %ld host waits\n",
            calls, memsets, waits);
    for (auto &r : v)
        fprintf(stderr, "  %8ld  %-60s %12.4g\n", r.second.calls, r.first.c_str(), r.second.units);
}
} // namespace

void emu_trace(const char *kind, double units)
{
    static const bool on = [] {
        const char *e = getenv("CUDA_EMU_TRACE");
        return e && *e && strcmp(e, "0") != 0;
    }();
    if (!on)
        return;
    std::lock_guard<std::mutex> g(mu);
    if (!trace_rows) {
        trace_rows = new std::map<std::string, trace_row>;
        atexit(trace_print);
    }
    trace_row &r = (*trace_rows)[kind];
    r.calls++;
    r.units += units;
}

void emu_grid(const void *kernel, const char *name, dim3 grid, dim3 block, size_t bytes,
              const std::function<void()> &fn)
{
    emu_trace(name, (double)grid.x * grid.y * grid.z);
    last_kernel = name;
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    size_t limit = SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> g(mu);
        auto it = smem_optin.find(kernel);
        if (it != smem_optin.end())
            limit = (size_t)it->second;
    }
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535 ||
        grid.x > 2147483647u || threads < 1 || threads > 1024 || block.z > 64 || bytes > limit) {
        fprintf(stderr,
                "cuda-emu: launch refused: grid %u x %u x %u, block %u x %u x %u, %zu bytes of "
                "shared memory (limit %zu)\n",
                grid.x, grid.y, grid.z, block.x, block.y, block.z, bytes, limit);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    smem.resize(bytes / sizeof(float) + 1);
    emu_dim3 d, b;
    d.x = block.x, d.y = block.y, d.z = block.z;
    gridDim.x = grid.x, gridDim.y = grid.y, gridDim.z = grid.z;
    emu_device_open();
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                std::fill(smem.begin(), smem.end(), NAN);
                emu_smem = smem.data();
                b.x = x, b.y = y, b.z = z;
                emu_run_block3(b, d, fn);
            }
    emu_device_close();
}
