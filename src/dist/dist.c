/* MPI for data-parallel training: setup, broadcasts, bucketed gradient
 * all-reduce (or ZeRO-1's reduce to the shard owners and the all-gather of
 * the updated weights), cross-rank consistency checks, scalar reductions. */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/hash.h"
#include "ops/cpu/par.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif
#ifdef DVL_HAVE_NCCL
#include "dist/nccl.h"
#endif

/* MPI counts are int: anything larger goes in pieces of this many elements. */
#define PIECE ((int64_t)1 << 30)

static int mpi_fail(dvl_err *err, int rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", rc);
    return dvl_errf(err, DVL_EIO, "%s: %s", what, s);
}

/* ------------------------------------------------------------ setup */

int dvl_dist_init(int *argc, char ***argv, dvl_dist *d, dvl_err *err)
{
    memset(d, 0, sizeof *d);
    d->comm = MPI_COMM_NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return dvl_errf(err, DVL_EINVAL, "dvl_dist_init: MPI was already finalized");
    if (!inited) {
        /* FUNNELED: OpenMP threads compute, only the main thread calls MPI. */
        int provided = 0;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "MPI_Init_thread");
        d->owns_mpi = true;
    }
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &d->comm);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, rc, "MPI_Comm_dup");
    /* Failures come back as codes that we turn into messages. */
    MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->world);
    /* Ranks sharing memory are the ranks of this node. */
    MPI_Comm node;
    rc = MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, rc, "MPI_Comm_split_type");
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_world);
    MPI_Comm_free(&node);
    return DVL_OK;
}

int dvl_dist_finalize(dvl_dist *d, dvl_err *err)
{
#ifdef DVL_HAVE_NCCL
    dvl_nccl_free(d->nccl);
#endif
    d->nccl = NULL;
    if (d->comm != MPI_COMM_NULL)
        MPI_Comm_free(&d->comm);
    d->comm = MPI_COMM_NULL;
    if (d->owns_mpi) {
        d->owns_mpi = false;
        int rc = MPI_Finalize();
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "MPI_Finalize");
    }
    return DVL_OK;
}

#if defined(DVL_HAVE_CUDA) && defined(DVL_HAVE_NCCL)
/* Whether this rank's GPU is also another rank's: the ranks compare
 * (host, PCI bus id), as NCCL's "Duplicate GPU" check does, so
 * CUDA_VISIBLE_DEVICES set per rank is seen through. The host is NCCL's
 * too: NCCL_HOSTID where set (NCCL then takes ranks with different ids for
 * different hosts, joined by its network transport, even on one GPU: how
 * the tests run two NCCL ranks on a one-GPU machine), else the host name.
 * A rank that cannot tell counts as sharing (the host-memory path always
 * works). Collective. */
static int gpu_shared(const dvl_dist *d, bool *shared, dvl_err *err)
{
    char key[384] = "", bus[64] = "";
    int dev = 0;
    size_t len = 0;
    const char *host_id = getenv("NCCL_HOSTID");
    if (host_id && host_id[0])
        snprintf(key, 256, "%s", host_id);
    else if (gethostname(key, 255) == 0)
        key[255] = 0;
    len = strlen(key);
    bool known = dvl_cuda_get_device(&dev, NULL) == DVL_OK &&
                 dvl_cuda_pci_bus_id(dev, bus, sizeof bus, NULL) == DVL_OK;
    snprintf(key + len, sizeof key - len, "/%s", known ? bus : "?");
    uint64_t mine = dvl_hash64(key, strlen(key));
    uint64_t *all = malloc((size_t)d->world * sizeof *all);
    if (!all)
        return dvl_errf(err, DVL_ENOMEM, "nccl: out of memory for %d GPU ids", d->world);
    int rc = MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, d->comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return mpi_fail(err, rc, "nccl: comparing the ranks' GPUs");
    }
    *shared = !known;
    for (int r = 0; r < d->world; r++)
        if (r != d->rank && all[r] == mine)
            *shared = true;
    free(all);
    return DVL_OK;
}
#endif

int dvl_dist_nccl_init(dvl_dist *d, bool want, bool *using, char *why, size_t n, dvl_err *err)
{
    char none[1];
    if (!why || n == 0) {
        why = none;
        n = sizeof none;
    }
    why[0] = 0;
    *using = d->nccl != NULL;
    if (d->nccl)
        return DVL_OK;
    if (d->world < 2) {
        snprintf(why, n, "one rank");
        return DVL_OK;
    }
#if defined(DVL_HAVE_CUDA) && defined(DVL_HAVE_NCCL)
    /* Every rank must agree: one rank's reason turns NCCL off for all. NCCL
     * refuses two ranks on one GPU ("Duplicate GPU detected"). */
    dvl_err e = {0, ""};
    bool shared = false;
    int rc = gpu_shared(d, &shared, err);
    if (rc)
        return rc;
    if (!want)
        snprintf(why, n, "turned off by the caller");
    else if (shared)
        snprintf(why, n,
                 "ranks share a GPU (%d ranks, %d GPU(s) visible on this node; NCCL takes "
                 "them only with an NCCL_HOSTID of their own)",
                 d->local_world, dvl_cuda_device_count());
    else if (dvl_nccl_probe(&e) != DVL_OK)
        snprintf(why, n, "%s", e.msg);
    bool off;
    rc = dvl_dist_any(d, why[0] != 0, &off, err);
    if (rc)
        return rc;
    if (off) {
        if (!why[0])
            snprintf(why, n, "not usable on another rank");
        return DVL_OK;
    }
    /* Rank 0's id (or its failure) to everyone: byte 0 says which. */
    unsigned char msg[1 + DVL_NCCL_ID_BYTES] = {0};
    dvl_err e0 = {0, ""};
    if (d->rank == 0)
        msg[0] = dvl_nccl_unique_id(msg + 1, &e0) == DVL_OK;
    if ((rc = dvl_dist_bcast(d, msg, sizeof msg, 0, err)))
        return rc;
    if (!msg[0])
        return d->rank == 0 ? dvl_errf(err, e0.code, "%s", e0.msg)
                            : dvl_errf(err, DVL_EDEVICE, "nccl: rank 0 could not make an id");
    d->nccl = dvl_nccl_new(msg + 1, d->world, d->rank, &e);
    bool failed;
    if ((rc = dvl_dist_any(d, d->nccl == NULL, &failed, err)))
        return rc;
    if (failed) {
        dvl_nccl_free(d->nccl);
        d->nccl = NULL;
        return e.code ? dvl_errf(err, e.code, "%s", e.msg)
                      : dvl_errf(err, DVL_EDEVICE, "nccl: another rank failed to join");
    }
    *using = true;
    return DVL_OK;
#else
    (void)want, (void)err;
    snprintf(why, n, "dvl was built without NCCL");
    return DVL_OK;
#endif
}

/* ------------------------------------------------- broadcast, checks */

/* A malloc'd host buffer for a device store's data, holding a copy of it
 * when `download`. Collective: when any rank fails, every rank returns NULL
 * with err set (so none is left waiting in the collective that follows). */
static float *host_params(const dvl_dist *d, const dvl_params *p, bool download, const char *what,
                          dvl_err *err)
{
    dvl_err e = {0, ""};
    float *h = malloc((size_t)(p->numel ? p->numel : 1) * sizeof(float));
    if (!h)
        dvl_errf(&e, DVL_ENOMEM, "%s: out of memory for %lld parameters", what,
                 (long long)p->numel);
    else if (download && dvl_params_data_to_host(p, h, &e) != DVL_OK) {
        free(h);
        h = NULL;
    }
    bool any = false;
    if (dvl_dist_any(d, h == NULL, &any, err) != DVL_OK) {
        free(h);
        return NULL;
    }
    if (any) {
        if (e.code)
            dvl_errf(err, e.code, "%s", e.msg);
        else
            dvl_errf(err, DVL_EDEVICE, "%s: another rank could not copy its parameters", what);
        free(h);
        return NULL;
    }
    return h;
}

int dvl_dist_bcast(const dvl_dist *d, void *buf, size_t n, int root, dvl_err *err)
{
    char *p = buf;
    for (size_t off = 0; off < n; off += (size_t)PIECE) {
        int k = (int)(n - off < (size_t)PIECE ? n - off : (size_t)PIECE);
        int rc = MPI_Bcast(p + off, k, MPI_BYTE, root, d->comm);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "dvl_dist_bcast");
    }
    return DVL_OK;
}

int dvl_dist_bcast_params(const dvl_dist *d, dvl_params *p, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "dvl_dist_bcast_params: the store is not allocated");
    size_t bytes = (size_t)p->numel * sizeof(float);
    if (p->device == DVL_CPU)
        return dvl_dist_bcast(d, p->data, bytes, 0, err);
    if (d->world == 1)
        return DVL_OK;
    /* Device store: through host memory, rank 0's copy to the others. */
    float *h = host_params(d, p, d->rank == 0, "dvl_dist_bcast_params", err);
    if (!h)
        return err ? err->code : DVL_EDEVICE;
    int rc = dvl_dist_bcast(d, h, bytes, 0, err);
    if (!rc && d->rank != 0)
        rc = dvl_params_data_from_host(p, h, err);
    free(h);
    return rc;
}

int dvl_dist_check_same(const dvl_dist *d, const void *buf, size_t n, const char *what,
                        dvl_err *err)
{
    uint64_t h = dvl_hash64(buf, n);
    uint64_t *all = malloc((size_t)d->world * sizeof *all);
    if (!all)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory for %d checksums", what, d->world);
    int rc = MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, d->comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return mpi_fail(err, rc, what);
    }
    /* Every rank sees the same table, so every rank returns the same verdict. */
    char list[256] = "";
    size_t len = 0;
    int bad = 0;
    for (int r = 1; r < d->world; r++) {
        if (all[r] == all[0])
            continue;
        if (bad < 16 && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", bad ? ", " : "", r);
        bad++;
    }
    if (bad == 0) {
        free(all);
        return DVL_OK;
    }
    int first = 1;
    while (all[first] == all[0])
        first++;
    rc = dvl_errf(err, DVL_EINVAL,
                  "%s differ across ranks: %d of %d ranks (%s%s) differ from rank 0 "
                  "(checksum %016llx, rank %d has %016llx)",
                  what, bad, d->world, list, bad > 16 ? ", ..." : "", (unsigned long long)all[0],
                  first, (unsigned long long)all[first]);
    free(all);
    return rc;
}

int dvl_dist_check_params(const dvl_dist *d, const dvl_params *p, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "dvl_dist_check_params: the store is not allocated");
    size_t bytes = (size_t)p->numel * sizeof(float);
    if (p->device == DVL_CPU)
        return dvl_dist_check_same(d, p->data, bytes, "parameters", err);
    float *h = host_params(d, p, true, "dvl_dist_check_params", err);
    if (!h)
        return err ? err->code : DVL_EDEVICE;
    int rc = dvl_dist_check_same(d, h, bytes, "parameters", err);
    free(h);
    return rc;
}

/* --------------------------------------------------------- scalars */

static MPI_Op mpi_op(dvl_dist_op op)
{
    switch (op) {
    case DVL_DIST_MAX: return MPI_MAX;
    case DVL_DIST_MIN: return MPI_MIN;
    default: return MPI_SUM;
    }
}

int dvl_dist_allreduce_f64(const dvl_dist *d, double *x, int n, dvl_dist_op op, dvl_err *err)
{
    int rc = MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, mpi_op(op), d->comm);
    return rc == MPI_SUCCESS ? DVL_OK : mpi_fail(err, rc, "dvl_dist_allreduce_f64");
}

int dvl_dist_allreduce_i64(const dvl_dist *d, int64_t *x, int n, dvl_dist_op op, dvl_err *err)
{
    int rc = MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_INT64_T, mpi_op(op), d->comm);
    return rc == MPI_SUCCESS ? DVL_OK : mpi_fail(err, rc, "dvl_dist_allreduce_i64");
}

int dvl_dist_any(const dvl_dist *d, bool flag, bool *any, dvl_err *err)
{
    int v = flag ? 1 : 0;
    int rc = MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LOR, d->comm);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, rc, "dvl_dist_any");
    *any = v != 0;
    return DVL_OK;
}

int dvl_dist_barrier(const dvl_dist *d, dvl_err *err)
{
    int rc = MPI_Barrier(d->comm);
    return rc == MPI_SUCCESS ? DVL_OK : mpi_fail(err, rc, "dvl_dist_barrier");
}

/* ------------------------------------------------ gradient buckets */

typedef struct bucket {
    int first, last;     /* parameter indices, declaration order */
    int64_t off, count;  /* elements of p->grad */
    int n_params;        /* trainable parameters in it */
    int remaining;       /* of those, not yet reported this step */
    /* Pieces of at most PIECE elements: of the bucket (all-reduce), or of
     * each owner's part of it (ZeRO-1). */
    int n_req;
    MPI_Request *req;
} bucket;

struct dvl_dist_grad_sync {
    const dvl_dist *d;
    dvl_params *p;
    int nb;
    bucket *b;
    int *bucket_of; /* per parameter, -1 for frozen */
    bool *done;     /* per parameter: reported this step */
    int *by_off;    /* trainable parameter indices in gradient order (= declaration) */
    int n_train;
    int next;       /* next bucket to start */
    /* Device store without NCCL: the host copy MPI reduces (numel_grad). */
    float *host;
    /* ZeRO-1: every rank's shard [own_lo[r], own_hi[r]) of p->grad, and
     * scratch for one bucket's part per owner (NCCL). Plain: lo, hi span
     * the whole buffer. */
    bool zero1;
    int64_t lo, hi;
    int64_t *own_lo, *own_hi, *part_lo, *part_hi;
};

void dvl_dist_grad_sync_free(dvl_dist_grad_sync *s)
{
    if (!s)
        return;
    if (s->b)
        for (int i = 0; i < s->nb; i++)
            free(s->b[i].req);
    free(s->b);
    free(s->bucket_of);
    free(s->done);
    free(s->by_off);
    free(s->host);
    free(s->own_lo);
    free(s->own_hi);
    free(s->part_lo);
    free(s->part_hi);
    free(s);
}

/* ZeRO-1: the elements of bucket k that rank q owns, [*a, *a + return). */
static int64_t owned(const dvl_dist_grad_sync *s, const bucket *k, int q, int64_t *a)
{
    int64_t lo = k->off > s->own_lo[q] ? k->off : s->own_lo[q];
    int64_t hi = k->off + k->count < s->own_hi[q] ? k->off + k->count : s->own_hi[q];
    *a = lo;
    return hi > lo ? hi - lo : 0;
}

static dvl_dist_grad_sync *sync_new(const dvl_dist *d, dvl_params *p, size_t bucket_bytes,
                                    bool zero1, dvl_err *err)
{
    if (!p->allocated) {
        dvl_errf(err, DVL_EINVAL, "dvl_dist_grad_sync_new: the store is not allocated");
        return NULL;
    }
    if (bucket_bytes < sizeof(float)) {
        dvl_errf(err, DVL_EINVAL, "dvl_dist_grad_sync_new: bucket size %zu bytes", bucket_bytes);
        return NULL;
    }
    dvl_dist_grad_sync *s = calloc(1, sizeof *s);
    int n = p->n ? p->n : 1;
    if (!s || !(s->bucket_of = malloc((size_t)n * sizeof *s->bucket_of)) ||
        !(s->done = calloc((size_t)n, sizeof *s->done)) ||
        !(s->by_off = malloc((size_t)n * sizeof *s->by_off)) ||
        !(s->b = calloc((size_t)n, sizeof *s->b)))
        goto oom;
    s->d = d;
    s->p = p;
    s->zero1 = zero1;
    s->lo = 0;
    s->hi = p->numel_grad;
    if (zero1) {
        size_t w = (size_t)d->world;
        if (!(s->own_lo = malloc(w * sizeof *s->own_lo)) ||
            !(s->own_hi = malloc(w * sizeof *s->own_hi)) ||
            !(s->part_lo = malloc(w * sizeof *s->part_lo)) ||
            !(s->part_hi = malloc(w * sizeof *s->part_hi)))
            goto oom;
        for (int q = 0; q < d->world; q++)
            dvl_adamw_shard(p->numel_grad, d->world, q, &s->own_lo[q], &s->own_hi[q]);
        s->lo = s->own_lo[d->rank];
        s->hi = s->own_hi[d->rank];
    }
    if (p->device != DVL_CPU && !d->nccl &&
        !(s->host = malloc((size_t)(p->numel_grad ? p->numel_grad : 1) * sizeof(float))))
        goto oom;
    /* A parameter's slot in the gradient buffer runs to the next trainable
     * parameter's offset (numel rounded up for alignment), the last one's
     * to numel_grad. */
    for (int i = 0; i < p->n; i++) {
        s->bucket_of[i] = -1;
        if (p->grad_off[i] >= 0)
            s->by_off[s->n_train++] = i;
    }
    int64_t max_elems = (int64_t)(bucket_bytes / sizeof(float));
    int64_t end = p->numel_grad; /* end of the slot of the parameter at hand */
    for (int j = s->n_train - 1; j >= 0; j--) {
        int i = s->by_off[j];
        int64_t begin = p->grad_off[i];
        bucket *cur = s->nb ? &s->b[s->nb - 1] : NULL;
        /* Open a new bucket when there is none or this slot would overflow
         * the current one (a single slot larger than a bucket gets its own). */
        if (!cur || cur->off + cur->count - begin > max_elems) {
            cur = &s->b[s->nb++];
            cur->last = i;
            cur->off = end;
            cur->count = 0;
        }
        cur->first = i;
        cur->count += cur->off - begin;
        cur->off = begin;
        cur->n_params++;
        s->bucket_of[i] = s->nb - 1;
        end = begin;
    }
    for (int b = 0; b < s->nb; b++) {
        bucket *k = &s->b[b];
        k->remaining = k->n_params;
        if (zero1) {
            int64_t a, req = 0;
            for (int q = 0; q < d->world; q++)
                req += (owned(s, k, q, &a) + PIECE - 1) / PIECE;
            k->n_req = (int)req;
        } else {
            k->n_req = (int)((k->count + PIECE - 1) / PIECE);
        }
        if (!(k->req = malloc((size_t)(k->n_req ? k->n_req : 1) * sizeof *k->req)))
            goto oom;
        for (int r = 0; r < k->n_req; r++)
            k->req[r] = MPI_REQUEST_NULL;
    }
    return s;
oom:
    dvl_dist_grad_sync_free(s);
    dvl_errf(err, DVL_ENOMEM, "dvl_dist_grad_sync_new: out of memory for %d parameters", p->n);
    return NULL;
}

dvl_dist_grad_sync *dvl_dist_grad_sync_new(const dvl_dist *d, dvl_params *p, size_t bucket_bytes,
                                           dvl_err *err)
{
    return sync_new(d, p, bucket_bytes, false, err);
}

dvl_dist_grad_sync *dvl_dist_grad_sync_new_zero1(const dvl_dist *d, dvl_params *p,
                                                 size_t bucket_bytes, dvl_err *err)
{
    return sync_new(d, p, bucket_bytes, true, err);
}

bool dvl_dist_grad_sync_shard(const dvl_dist_grad_sync *s, int64_t *lo, int64_t *hi)
{
    if (lo)
        *lo = s->lo;
    if (hi)
        *hi = s->hi;
    return s->zero1;
}

int dvl_dist_grad_sync_buckets(const dvl_dist_grad_sync *s) { return s->nb; }

void dvl_dist_grad_sync_bucket(const dvl_dist_grad_sync *s, int b, int *first, int *last,
                               int64_t *off, int64_t *count)
{
    const bucket *k = &s->b[b];
    if (first)
        *first = k->first;
    if (last)
        *last = k->last;
    if (off)
        *off = k->off;
    if (count)
        *count = k->count;
}

/* ZeRO-1: bucket k reduced to its owners, one MPI_Ireduce per owner and
 * piece, in place on the owner (the others only send), into k->req. */
static int reduce_to_owners(dvl_dist_grad_sync *s, int b, float *buf, dvl_err *err)
{
    bucket *k = &s->b[b];
    int r = 0;
    for (int q = 0; q < s->d->world; q++) {
        int64_t a, n = owned(s, k, q, &a);
        for (int64_t o = 0; o < n; o += PIECE) {
            int cnt = (int)(n - o < PIECE ? n - o : PIECE);
            float *x = buf + a + o;
            bool root = q == s->d->rank;
            int rc = MPI_Ireduce(root ? MPI_IN_PLACE : x, root ? x : NULL, cnt, MPI_FLOAT, MPI_SUM,
                                 q, s->d->comm, &k->req[r++]);
            if (rc != MPI_SUCCESS) {
                char what[96];
                snprintf(what, sizeof what, "gradient reduce of bucket %d to rank %d", b, q);
                return mpi_fail(err, rc, what);
            }
        }
    }
    return DVL_OK;
}

int dvl_dist_grad_sync_start(dvl_dist_grad_sync *s, int b, dvl_err *err)
{
    if (b != s->next)
        return dvl_errf(err, DVL_EINVAL,
                        "dvl_dist_grad_sync_start: bucket %d started out of order (next is %d of %d)",
                        b, s->next, s->nb);
    bucket *k = &s->b[b];
    float *buf = s->p->grad;
#ifdef DVL_HAVE_CUDA
    if (s->p->device != DVL_CPU) {
#ifdef DVL_HAVE_NCCL
        if (s->d->nccl) {
            int rc;
            if (s->zero1) {
                for (int q = 0; q < s->d->world; q++) {
                    int64_t n = owned(s, k, q, &s->part_lo[q]);
                    s->part_hi[q] = s->part_lo[q] + n;
                }
                rc = dvl_nccl_reduce_ranges(s->d->nccl, s->p->grad, s->part_lo, s->part_hi,
                                            s->d->world, err);
            } else {
                rc = dvl_nccl_allreduce_sum(s->d->nccl, s->p->grad + k->off, k->count, err);
            }
            if (rc)
                return rc;
            s->next++;
            return DVL_OK;
        }
#endif
        /* Through the host: this copy waits for the kernels that wrote
         * the bucket (the default stream's order). */
        int rc = dvl_cuda_memcpy_d2h(s->host + k->off, s->p->grad + k->off,
                                     (size_t)k->count * sizeof(float), err);
        if (rc)
            return rc;
        buf = s->host;
    }
#endif
    if (s->zero1) {
        int rc = reduce_to_owners(s, b, buf, err);
        if (rc)
            return rc;
        s->next++;
        return DVL_OK;
    }
    for (int r = 0; r < k->n_req; r++) {
        int64_t off = k->off + (int64_t)r * PIECE;
        int64_t cnt = k->count - (int64_t)r * PIECE < PIECE ? k->count - (int64_t)r * PIECE : PIECE;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)cnt, MPI_FLOAT, MPI_SUM,
                                s->d->comm, &k->req[r]);
        if (rc != MPI_SUCCESS) {
            char what[96];
            snprintf(what, sizeof what, "gradient all-reduce of bucket %d", b);
            return mpi_fail(err, rc, what);
        }
    }
    s->next++;
    return DVL_OK;
}

int dvl_dist_grad_sync_started(const dvl_dist_grad_sync *s) { return s->next; }

int dvl_dist_grad_sync_progress(dvl_dist_grad_sync *s, dvl_err *err)
{
    for (int b = 0; b < s->next; b++) {
        int flag;
        int rc = MPI_Testall(s->b[b].n_req, s->b[b].req, &flag, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "gradient all-reduce (progress)");
    }
    return DVL_OK;
}

/* Index of the store's parameter behind t (a parameter or a view of one),
 * found by its gradient offset; -1 when t is not a trainable parameter of
 * this store. */
static int param_index(const dvl_dist_grad_sync *s, const dvl_tensor *t)
{
    const dvl_tensor *base = t->base ? t->base : t;
    const dvl_params *p = s->p;
    if (!base->is_param || !base->grad || !p->grad || base->grad < p->grad ||
        base->grad >= p->grad + p->numel_grad)
        return -1;
    int64_t off = base->grad - p->grad;
    int lo = 0, hi = s->n_train - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int64_t o = p->grad_off[s->by_off[mid]];
        if (o == off)
            return p->t[s->by_off[mid]] == base ? s->by_off[mid] : -1;
        if (o < off)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int dvl_dist_grad_sync_ready(dvl_dist_grad_sync *s, dvl_tensor *const *t, int n, dvl_err *err)
{
    for (int j = 0; j < n; j++) {
        int i = t[j] ? param_index(s, t[j]) : -1;
        if (i < 0)
            return dvl_errf(err, DVL_EINVAL,
                            "dvl_dist_grad_sync_ready: %s is not a trainable parameter of the store",
                            t[j] ? dvl_tname(t[j]) : "(NULL)");
        if (s->done[i])
            continue;
        s->done[i] = true;
        s->b[s->bucket_of[i]].remaining--;
    }
    while (s->next < s->nb && s->b[s->next].remaining == 0) {
        int rc = dvl_dist_grad_sync_start(s, s->next, err);
        if (rc)
            return rc;
    }
    return dvl_dist_grad_sync_progress(s, err);
}

int dvl_dist_grad_sync_finish(dvl_dist_grad_sync *s, dvl_err *err)
{
    int rc = DVL_OK;
    while (rc == DVL_OK && s->next < s->nb)
        rc = dvl_dist_grad_sync_start(s, s->next, err);
    /* Wait for everything started, even after a failure, so no request is
     * left pointing into the gradient buffer. */
    for (int b = 0; b < s->next; b++) {
        int w = MPI_Waitall(s->b[b].n_req, s->b[b].req, MPI_STATUSES_IGNORE);
        if (w != MPI_SUCCESS && rc == DVL_OK)
            rc = mpi_fail(err, w, "gradient all-reduce (wait)");
    }
    /* Reset for the next step. */
    s->next = 0;
    for (int i = 0; i < s->p->n; i++)
        s->done[i] = false;
    for (int b = 0; b < s->nb; b++)
        s->b[b].remaining = s->b[b].n_params;
    if (rc)
        return rc;
    /* Sum -> mean, over the elements this rank holds the sum of (all of
     * them, or its ZeRO-1 shard). A division (not a multiplication by
     * 1/world) so the mean is the correctly rounded quotient. */
    int world = s->d->world;
    if (world == 1)
        return DVL_OK;
    float w = (float)world;
    int64_t lo = s->lo, n = s->hi - s->lo;
#ifdef DVL_HAVE_CUDA
#ifdef DVL_HAVE_NCCL
    if (s->p->device != DVL_CPU && s->d->nccl) {
        if ((rc = dvl_nccl_join(s->d->nccl, err)))
            return rc;
        dvl_cuda_div_scalar(s->p->grad + lo, w, n);
        return dvl_cuda_check("gradient mean over the ranks", err);
    }
#endif
    if (s->p->device != DVL_CPU) {
        float *h = s->host + lo;
        #pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t i = 0; i < n; i++)
            h[i] /= w;
        return n ? dvl_cuda_memcpy_h2d(s->p->grad + lo, h, (size_t)n * sizeof(float), err)
                 : DVL_OK;
    }
#endif
    float *g = s->p->grad + lo;
    #pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t i = 0; i < n; i++)
        g[i] /= w;
    return DVL_OK;
}

/* ------------------------------------------------------------ ZeRO-1 */

/* n floats between host and/or device memory. */
static int move(float *dst, bool dst_dev, const float *src, bool src_dev, int64_t n,
                dvl_err *err)
{
    return n <= 0 ? DVL_OK
                  : dvl_memcpy_any(dst, dst_dev, src, src_dev, (size_t)n * sizeof(float), err);
}

int dvl_dist_grad_sync_gather_params(dvl_dist_grad_sync *s, dvl_err *err)
{
    if (!s->zero1)
        return dvl_errf(err, DVL_EINVAL,
                        "dvl_dist_grad_sync_gather_params: the sync is not ZeRO-1");
    dvl_params *p = s->p;
    const dvl_dist *d = s->d;
    const bool dev = p->device != DVL_CPU;
    /* The buffer in gradient layout the weights travel through: p->grad
     * itself (CPU, NCCL), or its host copy (a device store without NCCL). */
    const bool via_host = dev && !d->nccl;
    float *buf = via_host ? s->host : p->grad;
    const bool buf_dev = dev && !via_host;
    int rc = DVL_OK;
    /* This rank's updated weights into its shard of the buffer: element j
     * of a parameter's gradient slot is element j - off of its data. */
    for (int i = 0; i < p->n && !rc; i++) {
        int64_t off = p->grad_off[i];
        if (off < 0)
            continue;
        int64_t a = off > s->lo ? off : s->lo;
        int64_t b = off + dvl_numel(p->t[i]) < s->hi ? off + dvl_numel(p->t[i]) : s->hi;
        if (a < b)
            rc = move(buf + a, buf_dev, dvl_f32(p->t[i]) + (a - off), dev, b - a, err);
    }
    if (rc)
        return rc;
    /* Each owner's piece to every rank, in place. */
#if defined(DVL_HAVE_CUDA) && defined(DVL_HAVE_NCCL)
    if (buf_dev) {
        if ((rc = dvl_nccl_bcast_ranges(d->nccl, buf, s->own_lo, s->own_hi, d->world, err)) ||
            (rc = dvl_nccl_join(d->nccl, err)))
            return rc;
    } else
#endif
    {
        for (int q = 0; q < d->world && !rc; q++)
            rc = dvl_dist_bcast(d, buf + s->own_lo[q],
                                (size_t)(s->own_hi[q] - s->own_lo[q]) * sizeof(float), q, err);
    }
    if (rc)
        return rc;
    /* Every trainable parameter back from the buffer (this rank's own too:
     * the same bytes). */
    for (int i = 0; i < p->n && !rc; i++) {
        int64_t off = p->grad_off[i];
        if (off >= 0)
            rc = move(dvl_f32(p->t[i]), dev, buf + off, buf_dev, dvl_numel(p->t[i]), err);
    }
    return rc;
}

#define GATHER_TAG 7301 /* point-to-point traffic of dvl_dist_gather_adamw */

int dvl_dist_gather_adamw(const dvl_dist *d, const dvl_adamw *shard, dvl_adamw *full, int root,
                          dvl_err *err)
{
    const dvl_params *p = shard->p;
    const int64_t n = p->numel_grad;
    int64_t lo, hi;
    dvl_adamw_shard(n, d->world, d->rank, &lo, &hi);
    dvl_err e = {0, ""};
    if (shard->lo != lo || shard->hi != hi)
        dvl_errf(&e, DVL_EINVAL,
                 "dvl_dist_gather_adamw: rank %d's optimizer holds [%lld, %lld), its shard of "
                 "%lld is [%lld, %lld)",
                 d->rank, (long long)shard->lo, (long long)shard->hi, (long long)n,
                 (long long)lo, (long long)hi);
    else if (d->rank == root &&
             (!full || full->p->device != DVL_CPU || full->lo != 0 || full->hi != n ||
              full->p->numel_grad != n))
        dvl_errf(&e, DVL_EINVAL,
                 "dvl_dist_gather_adamw: the root needs a whole host optimizer over %lld "
                 "gradient elements",
                 (long long)n);
    /* The shard in host memory. */
    const float *m = shard->m, *v = shard->v;
    float *tmp = NULL;
    if (!e.code && p->device != DVL_CPU && hi > lo) {
        if (!(tmp = malloc(2 * (size_t)(hi - lo) * sizeof(float))))
            dvl_errf(&e, DVL_ENOMEM, "dvl_dist_gather_adamw: out of memory for %lld moments",
                     (long long)(2 * (hi - lo)));
        else if (!move(tmp, false, shard->m, true, hi - lo, &e))
            move(tmp + (hi - lo), false, shard->v, true, hi - lo, &e);
        m = tmp;
        v = tmp + (hi - lo);
    }
    /* Collective verdict first, so no rank is left waiting for a message. */
    bool any = false;
    int rc = dvl_dist_any(d, e.code != 0, &any, err);
    if (!rc && any)
        rc = e.code ? dvl_errf(err, e.code, "%s", e.msg)
                    : dvl_errf(err, DVL_EINVAL,
                               "dvl_dist_gather_adamw: another rank could not send its shard");
    /* The root receives rank q's m then v, q = 0, 1, ...; rank q sends
     * them in that order (messages between two ranks arrive in order). */
    for (int q = 0; q < d->world && !rc; q++) {
        if (d->rank != root && d->rank != q)
            continue;
        int64_t qlo, qhi;
        dvl_adamw_shard(n, d->world, q, &qlo, &qhi);
        for (int mv = 0; mv < 2 && !rc; mv++) {
            float *dst = d->rank == root ? (mv ? full->v : full->m) + qlo : NULL;
            const float *src = mv ? v : m;
            if (q == root) { /* the root's own shard */
                memcpy(dst, src, (size_t)(qhi - qlo) * sizeof(float));
                continue;
            }
            for (int64_t o = 0; o < qhi - qlo && !rc; o += PIECE) {
                int cnt = (int)(qhi - qlo - o < PIECE ? qhi - qlo - o : PIECE);
                int r = d->rank == root ? MPI_Recv(dst + o, cnt, MPI_FLOAT, q, GATHER_TAG, d->comm,
                                                   MPI_STATUS_IGNORE)
                                        : MPI_Send(src + o, cnt, MPI_FLOAT, root, GATHER_TAG,
                                                   d->comm);
                if (r != MPI_SUCCESS)
                    rc = mpi_fail(err, r, "dvl_dist_gather_adamw");
            }
        }
    }
    if (!rc && d->rank == root)
        full->step = shard->step;
    free(tmp);
    return rc;
}
