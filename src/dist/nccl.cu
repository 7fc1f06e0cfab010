/* NCCL communicator, stream and events for the device gradient all-reduce
 * (nccl.h). */
#include "dist/nccl.h"

#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "ops/cuda/common.cuh"

static_assert(sizeof(ncclUniqueId) == DVL_NCCL_ID_BYTES, "ncclUniqueId size");

struct dvl_nccl {
    ncclComm_t comm;
    /* Non-blocking: no implicit ordering with the legacy default stream,
     * so the all-reduces overlap the backward kernels; the events order
     * them explicitly. */
    cudaStream_t stream;
    cudaEvent_t ready; /* default stream -> communicator stream */
    cudaEvent_t done;  /* communicator stream -> default stream */
};

static int nccl_fail(dvl_err *err, ncclResult_t r, ncclComm_t comm, const char *what)
{
    const char *last = ncclGetLastError(comm);
    return dvl_errf(err, DVL_EDEVICE, "nccl: %s: %s%s%s%s", what, ncclGetErrorString(r),
                    last && last[0] ? " (" : "", last && last[0] ? last : "",
                    last && last[0] ? ")" : "");
}

extern "C" int dvl_nccl_unique_id(unsigned char id[DVL_NCCL_ID_BYTES], dvl_err *err)
{
    ncclUniqueId uid;
    ncclResult_t r = ncclGetUniqueId(&uid);
    if (r != ncclSuccess)
        return nccl_fail(err, r, NULL, "ncclGetUniqueId");
    memcpy(id, &uid, sizeof uid);
    return DVL_OK;
}

extern "C" void dvl_nccl_free(dvl_nccl *c)
{
    if (!c)
        return;
    if (c->comm)
        ncclCommDestroy(c->comm); /* finishes the operations still queued */
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->ready)
        cudaEventDestroy(c->ready);
    if (c->done)
        cudaEventDestroy(c->done);
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
    ncclResult_t r = ncclCommInitRank(&c->comm, world, uid, rank);
    if (r != ncclSuccess) {
        char what[96];
        snprintf(what, sizeof what, "ncclCommInitRank (rank %d of %d)", rank, world);
        nccl_fail(err, r, NULL, what);
        c->comm = NULL;
        dvl_nccl_free(c);
        return NULL;
    }
    return c;
}

extern "C" int dvl_nccl_allreduce_sum(dvl_nccl *c, float *x, int64_t n, dvl_err *err)
{
    if (n <= 0)
        return DVL_OK;
    /* Waiting on an event waits for its latest record, so one event serves
     * every bucket in turn. */
    cudaError_t e = cudaEventRecord(c->ready, cudaStreamLegacy);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(c->stream, c->ready, 0);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "ordering the all-reduce after the gradient");
    ncclResult_t r = ncclAllReduce(x, x, (size_t)n, ncclFloat32, ncclSum, c->comm, c->stream);
    if (r != ncclSuccess)
        return nccl_fail(err, r, c->comm, "ncclAllReduce");
    return DVL_OK;
}

extern "C" int dvl_nccl_join(dvl_nccl *c, dvl_err *err)
{
    cudaError_t e = cudaEventRecord(c->done, c->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(cudaStreamLegacy, c->done, 0);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "waiting for the all-reduces");
    return DVL_OK;
}
