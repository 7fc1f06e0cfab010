/* Data-parallel training over MPI: every rank holds the whole model, works
 * on its own slice of the batch, and after backward the gradients are
 * averaged so every rank takes the same optimizer step.
 *
 *   dvl_dist d;
 *   if (dvl_dist_init(&argc, &argv, &d, &err)) ...   // MPI_Init; works without mpirun
 *   dvl_dist_bcast_params(&d, params, &err);          // rank 0's weights everywhere
 *   dvl_dist_grad_sync *gs = dvl_dist_grad_sync_new(&d, params, 25 << 20, &err);
 *   each step:
 *     backward ...; whenever some parameters' gradients are complete:
 *       dvl_dist_grad_sync_ready(gs, done, n_done, &err);  // starts buckets now covered
 *     dvl_dist_grad_sync_finish(gs, &err);            // wait, divide by world size
 *     dvl_dist_allreduce_f64(&d, &loss, 1, DVL_DIST_SUM, &err);
 *     dvl_adamw_step(...);
 *   every so often: dvl_dist_check_params(&d, params, &err);  // bit-identical?
 *   dvl_dist_grad_sync_free(gs); dvl_dist_finalize(&d, &err);
 *
 * Gradients are summed in buckets: runs of consecutive trainable parameters
 * of at most bucket_bytes (a larger parameter gets a bucket of its own),
 * formed from the LAST parameter backwards, because backward completes the
 * last layers' gradients first, so bucket 0 can be summed while backward
 * still runs through the earlier layers. A bucket is one contiguous range of
 * the store's flat gradient buffer (padding included; it is zero). The
 * boundaries depend only on the parameter list and bucket_bytes, so every
 * rank, and every run, reduces the same ranges in the same order.
 *
 * MPI requires every rank to start collectives on a communicator in the
 * same order; buckets therefore start strictly in index order (0, 1, ...)
 * whatever order their parameters were reported in: a covered bucket waits
 * until every earlier bucket has started.
 *
 * A store on the GPU (dvl_params_to_device / dvl_params_move, one GPU per
 * rank chosen from local_rank) is reduced the same way, bucket by bucket:
 * with NCCL when dvl_dist_nccl_init made a communicator (the all-reduce of
 * a bucket queued on NCCL's stream after the kernels that wrote it, the
 * default stream waiting for all of them at finish, then a division by the
 * world size on the device), otherwise through host memory (each bucket
 * copied to a host buffer when it starts, MPI as above, the mean copied
 * back at finish). Parameter broadcasts and checks copy device stores
 * through host memory.
 *
 * ZeRO-1 (dvl_dist_grad_sync_new_zero1; optim/adamw.h for the partition):
 * the same buckets, but each is reduced only to the ranks that own its
 * elements, rank r owning the contiguous shard [lo_r, hi_r) =
 * dvl_adamw_shard(numel_grad, world, r) of the gradient buffer, in place:
 * after finish, p->grad[lo, hi) holds the mean gradient of this rank's
 * shard and the rest of p->grad is undefined (partial sums). A bucket cut
 * by shard boundaries becomes one reduce per owner of a piece of it (MPI:
 * MPI_Ireduce to root r, in place there; NCCL: ncclReduce to root r in one
 * group), still started during backward: the overlap is kept. The rank's
 * optimizer shard (dvl_adamw_new_shard over [lo, hi)) steps its elements,
 * then dvl_dist_grad_sync_gather_params brings every rank's updated weights
 * to every rank (each owner broadcasts its piece, through p->grad, in
 * place), so the ranks again hold identical full weights. Owner reduces
 * and broadcasts rather than reduce-scatter / all-gather because the
 * pieces are uneven (MPI_Reduce_scatter_block and ncclReduceScatter need
 * equal counts, i.e. a padded buffer larger than p->grad) and MPI's
 * all-gather displacements are int (too small for a 7B buffer); the bytes
 * moved are the same. A device store without NCCL goes through host
 * memory as above.
 *
 * All calls are collective unless stated otherwise: every rank must make
 * them, in the same order. They return DVL_OK or an error code with a
 * message (MPI failures are returned, not fatal: the communicator uses
 * MPI_ERRORS_RETURN). Only the thread that called dvl_dist_init may call
 * them (MPI_THREAD_FUNNELED); OpenMP regions in between are fine. */
#ifndef DVL_DIST_H
#define DVL_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "core/err.h"
#include "optim/adamw.h"
#include "tensor/tensor.h"

typedef struct dvl_dist {
    int rank, world;             /* in MPI_COMM_WORLD */
    int local_rank, local_world; /* among the ranks on this node (GPU choice) */
    MPI_Comm comm;               /* a duplicate of MPI_COMM_WORLD: dvl's traffic only */
    bool owns_mpi;               /* dvl_dist_init called MPI_Init, finalize ends it */
    struct dvl_nccl *nccl;       /* device gradients' communicator (dvl_dist_nccl_init) */
} dvl_dist;

/* Initialise MPI (unless the program already did) and fill d. Run without
 * mpirun it is a world of one. argc/argv may be NULL. */
int dvl_dist_init(int *argc, char ***argv, dvl_dist *d, dvl_err *err);
/* Free the communicator and, if dvl_dist_init started MPI, finalize it. */
int dvl_dist_finalize(dvl_dist *d, dvl_err *err);

/* For device gradients: an NCCL communicator over the ranks, each on the
 * CUDA device its thread uses (dvl_cuda_init first). NCCL needs a GPU of
 * its own per rank, so when any node has more ranks than GPUs, when some
 * rank cannot load libnccl.so.2, when the build has no NCCL, or when `want`
 * is false, none is made and device gradients go through host memory.
 * *using tells which (the same on every rank); when false, why (size n,
 * may be NULL) says for what reason. Collective; a world of one makes none. */
int dvl_dist_nccl_init(dvl_dist *d, bool want, bool *using, char *why, size_t n, dvl_err *err);

/* Rank 0's parameter buffer (all p->numel floats, frozen ones too) to every
 * rank. */
int dvl_dist_bcast_params(const dvl_dist *d, dvl_params *p, dvl_err *err);
/* Rank `root`'s n bytes to every rank (any size; sent in pieces). */
int dvl_dist_bcast(const dvl_dist *d, void *buf, size_t n, int root, dvl_err *err);

/* Whether every rank's parameter buffer is bit-identical: each hashes its
 * buffer (dvl_hash64), the hashes are gathered and compared with rank 0's.
 * DVL_EINVAL on every rank when they differ, the message naming the ranks
 * that differ from rank 0. */
int dvl_dist_check_params(const dvl_dist *d, const dvl_params *p, dvl_err *err);
/* The same for any buffer; `what` names it in the message. */
int dvl_dist_check_same(const dvl_dist *d, const void *buf, size_t n, const char *what,
                        dvl_err *err);

typedef enum dvl_dist_op { DVL_DIST_SUM = 0, DVL_DIST_MAX, DVL_DIST_MIN } dvl_dist_op;
/* In-place all-reduce of n doubles (losses, token counts: integers up to
 * 2^53 sum exactly) or n int64s. */
int dvl_dist_allreduce_f64(const dvl_dist *d, double *x, int n, dvl_dist_op op, dvl_err *err);
int dvl_dist_allreduce_i64(const dvl_dist *d, int64_t *x, int n, dvl_dist_op op, dvl_err *err);
/* *any = whether `flag` is true on any rank ("some rank saw a NaN"). */
int dvl_dist_any(const dvl_dist *d, bool flag, bool *any, dvl_err *err);
/* Wait for every rank. */
int dvl_dist_barrier(const dvl_dist *d, dvl_err *err);

/* ------------------------------------------------- gradient averaging */
typedef struct dvl_dist_grad_sync dvl_dist_grad_sync;

/* Buckets over p's trainable parameters (p allocated; bucket_bytes > 0,
 * 25 MiB is a good default). d and p must outlive the result. */
dvl_dist_grad_sync *dvl_dist_grad_sync_new(const dvl_dist *d, dvl_params *p, size_t bucket_bytes,
                                           dvl_err *err);
void dvl_dist_grad_sync_free(dvl_dist_grad_sync *s);

/* The buckets (not collective). Bucket b covers parameters
 * p->t[first .. last] (inclusive, declaration order, frozen ones in between
 * skipped) and gradient elements [off, off + count) of p->grad. */
int dvl_dist_grad_sync_buckets(const dvl_dist_grad_sync *s);
void dvl_dist_grad_sync_bucket(const dvl_dist_grad_sync *s, int b, int *first, int *last,
                               int64_t *off, int64_t *count);

/* Report that the gradients of these parameters (tensors of the store, or
 * views of them) are complete for this step, then start, in order, every
 * bucket whose parameters are all complete and whose predecessors have all
 * started. Reporting a parameter twice in a step is harmless. Also drives
 * MPI's progress on buckets already in flight. */
int dvl_dist_grad_sync_ready(dvl_dist_grad_sync *s, dvl_tensor *const *t, int n, dvl_err *err);
/* Start bucket b's all-reduce now (whether or not its parameters were
 * reported). b must be the next bucket to start: DVL_EINVAL otherwise. */
int dvl_dist_grad_sync_start(dvl_dist_grad_sync *s, int b, dvl_err *err);
/* How many buckets have started this step (not collective). */
int dvl_dist_grad_sync_started(const dvl_dist_grad_sync *s);
/* Let MPI progress the buckets in flight (non-blocking; Open MPI moves a
 * non-blocking collective forward only inside MPI calls). Not collective. */
int dvl_dist_grad_sync_progress(dvl_dist_grad_sync *s, dvl_err *err);
/* Start the buckets not yet started, wait for all, and divide every
 * gradient by the world size, then reset for the next step. After it every
 * rank holds the mean gradient. */
int dvl_dist_grad_sync_finish(dvl_dist_grad_sync *s, dvl_err *err);

/* ------------------------------------------------------------ ZeRO-1 */
/* A ZeRO-1 sync (see the top): the buckets of dvl_dist_grad_sync_new, each
 * reduced to the owners of its pieces; every call above works the same,
 * finish leaving the mean gradient of this rank's shard in p->grad[lo, hi)
 * (only). */
dvl_dist_grad_sync *dvl_dist_grad_sync_new_zero1(const dvl_dist *d, dvl_params *p,
                                                 size_t bucket_bytes, dvl_err *err);
/* Whether s is ZeRO-1, and the gradient elements [*lo, *hi) this rank
 * holds the mean of after finish ([0, numel_grad) for a plain sync). Not
 * collective; lo, hi may be NULL. */
bool dvl_dist_grad_sync_shard(const dvl_dist_grad_sync *s, int64_t *lo, int64_t *hi);
/* ZeRO-1, after this rank's optimizer shard has stepped: every rank's
 * updated weights (the trainable elements of its shard) to every rank, so
 * all hold identical full weights again. Uses p->grad as the buffer (the
 * gradient is spent: the next step zeroes it). DVL_EINVAL on a plain sync. */
int dvl_dist_grad_sync_gather_params(dvl_dist_grad_sync *s, dvl_err *err);
/* ZeRO-1 checkpoints: every rank's optimizer shard (rank r's over
 * dvl_adamw_shard(numel_grad, world, r) of stores of one layout) into
 * `full` on rank `root`: a whole optimizer ([0, numel_grad)) in host memory,
 * which gets the moments and the step count (NULL on the other ranks).
 * Shards in device memory go through host memory. */
int dvl_dist_gather_adamw(const dvl_dist *d, const dvl_adamw *shard, dvl_adamw *full, int root,
                          dvl_err *err);

#endif
