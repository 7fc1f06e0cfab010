/* NCCL communicator, stream and events for the device gradient all-reduce
 * and ZeRO-1's reduce to the shard owners and broadcast from them (nccl.h),
 * with libnccl.so.2 loaded at run time. */
#include "dist/nccl.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "ops/cuda/common.cuh"

static_assert(sizeof(ncclUniqueId) == DVL_NCCL_ID_BYTES, "ncclUniqueId size");

#define NCCL_LIB "libnccl.so.2"

/* The NCCL entry points dvl uses, typed from nccl.h. Each user holds its own
 * dlopen reference (no process-wide state). */
typedef struct nccl_api {
    void *lib;
    decltype(&::ncclGetUniqueId) get_unique_id;
    decltype(&::ncclCommInitRank) comm_init_rank;
    decltype(&::ncclCommDestroy) comm_destroy;
    decltype(&::ncclAllReduce) all_reduce;
    decltype(&::ncclReduce) reduce;
    decltype(&::ncclBroadcast) broadcast;
    decltype(&::ncclGroupStart) group_start;
    decltype(&::ncclGroupEnd) group_end;
    decltype(&::ncclGetErrorString) error_string;
    decltype(&::ncclGetLastError) last_error;
} nccl_api;

static void api_close(nccl_api *a)
{
    if (a->lib)
        dlclose(a->lib);
    memset(a, 0, sizeof *a);
}

static int api_open(nccl_api *a, dvl_err *err)
{
    memset(a, 0, sizeof *a);
    a->lib = dlopen(NCCL_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!a->lib) {
        const char *why = dlerror();
        return dvl_errf(err, DVL_EDEVICE, "nccl: cannot load %s: %s", NCCL_LIB,
                        why ? why : "not found");
    }
    struct {
        const char *name;
        void **slot;
    } syms[] = {{"ncclGetUniqueId", (void **)&a->get_unique_id},
                {"ncclCommInitRank", (void **)&a->comm_init_rank},
                {"ncclCommDestroy", (void **)&a->comm_destroy},
                {"ncclAllReduce", (void **)&a->all_reduce},
                {"ncclReduce", (void **)&a->reduce},
                {"ncclBroadcast", (void **)&a->broadcast},
                {"ncclGroupStart", (void **)&a->group_start},
                {"ncclGroupEnd", (void **)&a->group_end},
                {"ncclGetErrorString", (void **)&a->error_string},
                {"ncclGetLastError", (void **)&a->last_error}};
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(a->lib, syms[i].name);
        if (!*syms[i].slot) {
            dvl_errf(err, DVL_EDEVICE, "nccl: %s has no %s (too old?)", NCCL_LIB, syms[i].name);
            api_close(a);
            return DVL_EDEVICE;
        }
    }
    return DVL_OK;
}

struct dvl_nccl {
    nccl_api api;
    ncclComm_t comm;
    /* Non-blocking: no implicit ordering with the legacy default stream,
     * so the all-reduces overlap the backward kernels; the events order
     * them explicitly. */
    cudaStream_t stream;
    cudaEvent_t ready; /* default stream -> communicator stream */
    cudaEvent_t done;  /* communicator stream -> default stream */
};

static int nccl_fail(const nccl_api *a, dvl_err *err, ncclResult_t r, ncclComm_t comm,
                     const char *what)
{
    const char *last = a->last_error(comm);
    return dvl_errf(err, DVL_EDEVICE, "nccl: %s: %s%s%s%s", what, a->error_string(r),
                    last && last[0] ? " (" : "", last && last[0] ? last : "",
                    last && last[0] ? ")" : "");
}

extern "C" int dvl_nccl_probe(dvl_err *err)
{
    nccl_api a;
    int rc = api_open(&a, err);
    if (rc == DVL_OK)
        api_close(&a);
    return rc;
}

extern "C" int dvl_nccl_unique_id(unsigned char id[DVL_NCCL_ID_BYTES], dvl_err *err)
{
    nccl_api a;
    int rc = api_open(&a, err);
    if (rc)
        return rc;
    ncclUniqueId uid;
    ncclResult_t r = a.get_unique_id(&uid);
    if (r != ncclSuccess)
        rc = nccl_fail(&a, err, r, NULL, "ncclGetUniqueId");
    else
        memcpy(id, &uid, sizeof uid);
    api_close(&a);
    return rc;
}

extern "C" void dvl_nccl_free(dvl_nccl *c)
{
    if (!c)
        return;
    if (c->comm)
        c->api.comm_destroy(c->comm); /* finishes the operations still queued */
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->ready)
        cudaEventDestroy(c->ready);
    if (c->done)
        cudaEventDestroy(c->done);
    api_close(&c->api);
    free(c);
}

extern "C" dvl_nccl *dvl_nccl_new(const unsigned char id[DVL_NCCL_ID_BYTES], int world, int rank,
                                  dvl_err *err)
{
    dvl_nccl *c = (dvl_nccl *)calloc(1, sizeof *c);
    if (!c) {
        dvl_errf(err, DVL_ENOMEM, "nccl: out of memory");
        return NULL;
    }
    if (api_open(&c->api, err)) {
        free(c);
        return NULL;
    }
    cudaError_t e;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        dvl_cu_fail(err, e, "cudaStreamCreateWithFlags");
        dvl_nccl_free(c);
        return NULL;
    }
    if ((e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming)) != cudaSuccess) {
        dvl_cu_fail(err, e, "cudaEventCreateWithFlags");
        dvl_nccl_free(c);
        return NULL;
    }
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclResult_t r = c->api.comm_init_rank(&c->comm, world, uid, rank);
    if (r != ncclSuccess) {
        char what[96];
        snprintf(what, sizeof what, "ncclCommInitRank (rank %d of %d)", rank, world);
        nccl_fail(&c->api, err, r, NULL, what);
        c->comm = NULL;
        dvl_nccl_free(c);
        return NULL;
    }
    return c;
}

/* The communicator's stream waits for everything queued on the default
 * stream so far (the kernels that wrote the buffer). Waiting on an event
 * waits for its latest record, so one event serves every call in turn. */
static int after_default_stream(dvl_nccl *c, dvl_err *err)
{
    cudaError_t e = cudaEventRecord(c->ready, cudaStreamLegacy);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(c->stream, c->ready, 0);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "ordering the collective after the default stream");
    return DVL_OK;
}

extern "C" int dvl_nccl_allreduce_sum(dvl_nccl *c, float *x, int64_t n, dvl_err *err)
{
    if (n <= 0)
        return DVL_OK;
    int rc = after_default_stream(c, err);
    if (rc)
        return rc;
    ncclResult_t r =
        c->api.all_reduce(x, x, (size_t)n, ncclFloat32, ncclSum, c->comm, c->stream);
    if (r != ncclSuccess)
        return nccl_fail(&c->api, err, r, c->comm, "ncclAllReduce");
    return DVL_OK;
}

/* One group of per-root operations over the ranges (ZeRO-1): a reduce to,
 * or a broadcast from, each rank owning a non-empty range. Every rank
 * issues the same calls in the same order (the ranges are the same
 * everywhere), as NCCL requires. */
static int ranges_group(dvl_nccl *c, float *x, const int64_t *lo, const int64_t *hi, int world,
                        bool reduce, dvl_err *err)
{
    bool any = false;
    for (int q = 0; q < world; q++)
        any = any || hi[q] > lo[q];
    if (!any)
        return DVL_OK;
    int rc = after_default_stream(c, err);
    if (rc)
        return rc;
    const char *what = reduce ? "ncclReduce" : "ncclBroadcast";
    ncclResult_t r = c->api.group_start();
    if (r != ncclSuccess)
        return nccl_fail(&c->api, err, r, c->comm, "ncclGroupStart");
    ncclResult_t first = ncclSuccess;
    for (int q = 0; q < world && first == ncclSuccess; q++) {
        if (hi[q] <= lo[q])
            continue;
        float *y = x + lo[q];
        const size_t n = (size_t)(hi[q] - lo[q]);
        /* In place on the root; other ranks only send (reduce) or receive
         * (broadcast) there. */
        first = reduce ? c->api.reduce(y, y, n, ncclFloat32, ncclSum, q, c->comm, c->stream)
                       : c->api.broadcast(y, y, n, ncclFloat32, q, c->comm, c->stream);
    }
    /* The group is closed even after a failed call, so NCCL is left in a
     * sane state. */
    r = c->api.group_end();
    if (first != ncclSuccess)
        return nccl_fail(&c->api, err, first, c->comm, what);
    if (r != ncclSuccess)
        return nccl_fail(&c->api, err, r, c->comm, "ncclGroupEnd");
    return DVL_OK;
}

extern "C" int dvl_nccl_reduce_ranges(dvl_nccl *c, float *x, const int64_t *lo, const int64_t *hi,
                                      int world, dvl_err *err)
{
    return ranges_group(c, x, lo, hi, world, true, err);
}

extern "C" int dvl_nccl_bcast_ranges(dvl_nccl *c, float *x, const int64_t *lo, const int64_t *hi,
                                     int world, dvl_err *err)
{
    return ranges_group(c, x, lo, hi, world, false, err);
}

extern "C" int dvl_nccl_join(dvl_nccl *c, dvl_err *err)
{
    cudaError_t e = cudaEventRecord(c->done, c->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(cudaStreamLegacy, c->done, 0);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "waiting for the collectives");
    return DVL_OK;
}
