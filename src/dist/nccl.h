/* NCCL for the device gradients of data-parallel training (dist.c): one
 * communicator per rank over the rank's own GPU, all-reduces on a stream of
 * their own so they run beside the backward kernels, ordered with the
 * default stream (where every kernel of the CUDA backend runs) by events.
 * Built only where nccl.h was found (DVL_HAVE_NCCL); the .cu file
 * implements it with C linkage. The library itself (libnccl.so.2, some
 * hundred MB) is loaded at run time with dlopen, the usual search path
 * (LD_LIBRARY_PATH, the program's run path): programs start without it and
 * fall back to MPI through host memory. Errors: DVL_EDEVICE, the message
 * naming the NCCL or CUDA call. */
#ifndef DVL_DIST_NCCL_H
#define DVL_DIST_NCCL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/err.h"

/* The size of ncclUniqueId (checked against nccl.h where it is built). */
#define DVL_NCCL_ID_BYTES 128

typedef struct dvl_nccl dvl_nccl;

/* Whether libnccl.so.2 loads and has what dvl calls; why not in err. */
int dvl_nccl_probe(dvl_err *err);
/* A new communicator id (ncclGetUniqueId): rank 0 makes it, the others get
 * it by broadcast. */
int dvl_nccl_unique_id(unsigned char id[DVL_NCCL_ID_BYTES], dvl_err *err);
/* Join communicator `id` as `rank` of `world` on the thread's current CUDA
 * device (ncclCommInitRank: blocks until every rank has joined). */
dvl_nccl *dvl_nccl_new(const unsigned char id[DVL_NCCL_ID_BYTES], int world, int rank,
                       dvl_err *err);
void dvl_nccl_free(dvl_nccl *c); /* NULL is fine */
/* Queue x[0, n) (device memory) = its sum over the ranks, in place, on the
 * communicator's stream after everything queued on the default stream so
 * far (so the caller's kernels that wrote x come first). Returns at once. */
int dvl_nccl_allreduce_sum(dvl_nccl *c, float *x, int64_t n, dvl_err *err);
/* ZeRO-1 (dist.h): queue, as one NCCL group, for every rank q < world with
 * a non-empty range [lo[q], hi[q]) (element offsets into x, device
 * memory): the sum over the ranks of x[lo[q], hi[q]) into rank q's own
 * x[lo[q], hi[q]) (ncclReduce to root q, in place); on the other ranks x is
 * only read. The ranges are uneven (contiguous shards cut buckets anywhere),
 * which ncclReduceScatter's equal counts cannot express without padding
 * x. Ordered like dvl_nccl_allreduce_sum; returns at once. */
int dvl_nccl_reduce_ranges(dvl_nccl *c, float *x, const int64_t *lo, const int64_t *hi, int world,
                           dvl_err *err);
/* ZeRO-1: queue, as one NCCL group, rank q's x[lo[q], hi[q]) to every rank
 * (ncclBroadcast from root q, in place) for every q < world with a
 * non-empty range: an all-gather of uneven contiguous pieces. Ordered like
 * dvl_nccl_allreduce_sum; returns at once. */
int dvl_nccl_bcast_ranges(dvl_nccl *c, float *x, const int64_t *lo, const int64_t *hi, int world,
                          dvl_err *err);
/* Make the default stream wait for every collective queued so far: kernels
 * and copies queued after this call see the sums. Returns at once. */
int dvl_nccl_join(dvl_nccl *c, dvl_err *err);

#ifdef __cplusplus
}
#endif

#endif
