/* The per-step context: a bump arena for activations and the autograd tape. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensor/tensor.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

/* Released gradient blocks are poisoned under AddressSanitizer, so a read
 * of a gradient after its node has run is reported where it happens. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ARENA_ALIGN 64
#define ARENA_MIN_CHUNK ((size_t)1 << 20)
/* Device arena allocations: 256 bytes, cudaMalloc's own alignment (and
 * enough for any vector load). */
#define DEV_ALIGN 256

/* A gradient block given back during backward: n floats at p, allocated at
 * arena position pos (a rewind to before pos takes it away). */
typedef struct free_grad {
    float *p;
    int64_t n;
    size_t pos;
} free_grad;

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    char *mem;
    bool dev;    /* mem is device memory (cudaMalloc) */
    bool pinned; /* mem is page-locked host memory (cudaMallocHost) */
} chunk;

struct dvl_ctx {
    dvl_device device;
    bool grad_enabled;
    dvl_err err;
    /* Arena: chunks in a list, newest first. After a step that needed more
     * than one chunk, reset replaces them with one chunk of the total, so the
     * next identical step fits without allocating. */
    chunk *chunks;
    size_t used_total;
    int64_t mallocs;
    /* The most of the arena a step has held at once (host, device): with
     * dvl_arena_rewind, chunks made during a step may be gone by its end,
     * so reset sizes the next step's single chunk by this, not by the
     * chunks left. */
    size_t peak, dpeak;
    /* Tape: a growable array of nodes; its capacity survives resets. */
    dvl_node *tape;
    int tape_len;
    int64_t tape_cap;
    /* The parameter lists of nodes whose backward completes parameters
     * that are not among their inputs (dvl_checkpoint's blocks: node
     * params_at, n_params); emptied by reset, capacity kept. */
    dvl_tensor **plist;
    int64_t plist_len, plist_cap;
    /* Gradient blocks of activations whose nodes have run (dvl_backward),
     * for reuse by the next gradient of the same size; emptied by reset
     * and rewind, capacity kept. */
    free_grad *gfree;
    int gfree_len;
    int64_t gfree_cap;
    bool keep_grads; /* dvl_set_keep_grads: release nothing */
    bool bf16_activations; /* dvl_ctx_set_bf16_activations */
    /* CUDA contexts only: the device arena (same policy as chunks) and the
     * cuBLAS handle. */
    chunk *dchunks;
    size_t dused_total;
    struct dvl_cublas *blas;
    /* CUDA contexts only: the pinned staging arena of dvl_ctx_memcpy_h2d
     * (same policy again, made on first use) and an event recorded after
     * each copy from it, so reset knows when the copies have read it. */
    chunk *pchunks;
    struct dvl_cuda_event *staged;
    bool staged_pending;
    /* Gradient-ready hook and the generation counter that marks which
     * parameters a backward pass has already seen. */
    dvl_grad_ready_fn ready_fn;
    void *ready_user;
    uint64_t mark_gen;
    /* Op profile (dvl_ctx_profile): on or off, the clock's last point, the
     * rows. */
    bool prof;
    double prof_t;
    int prof_n;
    dvl_op_time prof_rows[DVL_PROF_OPS];
};

static chunk *chunk_new(dvl_ctx *ctx, size_t size)
{
    chunk *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    size = (size + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    c->mem = aligned_alloc(ARENA_ALIGN, size);
    if (!c->mem) {
        free(c);
        return NULL;
    }
    c->size = size;
    c->used = 0;
    c->next = NULL;
    c->dev = false;
    c->pinned = false;
    ctx->mallocs++;
    return c;
}

#ifdef DVL_HAVE_CUDA
/* A chunk of CUDA-allocated memory: device memory (one cudaMalloc'd block,
 * 256-byte aligned) or, pinned, page-locked host memory, the source of
 * asynchronous host-to-device copies. */
static chunk *cuda_chunk_new(dvl_ctx *ctx, size_t size, bool pinned, dvl_err *err)
{
    chunk *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    size_t align = pinned ? ARENA_ALIGN : DEV_ALIGN;
    size = (size + align - 1) / align * align;
    c->mem = pinned ? dvl_cuda_malloc_host(size, err) : dvl_cuda_malloc(size, err);
    if (!c->mem) {
        free(c);
        return NULL;
    }
    c->size = size;
    c->used = 0;
    c->next = NULL;
    c->dev = !pinned;
    c->pinned = pinned;
    ctx->mallocs++;
    return c;
}

static chunk *dchunk_new(dvl_ctx *ctx, size_t size, dvl_err *err)
{
    return cuda_chunk_new(ctx, size, false, err);
}

static chunk *pchunk_new(dvl_ctx *ctx, size_t size, dvl_err *err)
{
    return cuda_chunk_new(ctx, size, true, err);
}

/* Wait until every staged copy queued so far has read its source, so the
 * staging arena can be rewritten or freed. */
static void staged_wait(dvl_ctx *ctx)
{
    if (ctx->staged_pending) {
        if (dvl_cuda_event_sync(ctx->staged, NULL) != DVL_OK)
            dvl_cuda_sync(NULL, NULL); /* the whole device, then */
        ctx->staged_pending = false;
    }
}
#endif

static void chunks_free(chunk *c)
{
    while (c) {
        chunk *n = c->next;
#ifdef DVL_HAVE_CUDA
        if (c->dev)
            dvl_cuda_free(c->mem);
        else if (c->pinned)
            dvl_cuda_free_host(c->mem);
        else
#endif
            free(c->mem);
        free(c);
        c = n;
    }
}

dvl_ctx *dvl_ctx_new_err(dvl_device device, dvl_err *err)
{
    if (device != DVL_CPU && device != DVL_CUDA) {
        dvl_errf(err, DVL_EINVAL, "context: unknown device %d", (int)device);
        return NULL;
    }
#ifndef DVL_HAVE_CUDA
    if (device == DVL_CUDA) {
        dvl_errf(err, DVL_EDEVICE, "context: dvl was built without CUDA (nvcc not found at "
                                   "configure time, or -Dcuda=disabled)");
        return NULL;
    }
#endif
    dvl_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        dvl_errf(err, DVL_ENOMEM, "context: out of memory");
        return NULL;
    }
    ctx->device = device;
    ctx->grad_enabled = true;
    ctx->bf16_activations = true;
    ctx->chunks = chunk_new(ctx, ARENA_MIN_CHUNK);
    if (!ctx->chunks) {
        free(ctx);
        dvl_errf(err, DVL_ENOMEM, "context: out of memory for the arena");
        return NULL;
    }
#ifdef DVL_HAVE_CUDA
    if (device == DVL_CUDA) {
        /* The thread's current device: 0, or the one a multi-GPU rank chose
         * with dvl_cuda_init before making its contexts. */
        int dev = 0;
        if (dvl_cuda_get_device(&dev, NULL) != DVL_OK)
            dev = 0; /* no usable driver: dvl_cuda_init says why */
        if (dvl_cuda_init(dev, err) != DVL_OK ||
            !(ctx->dchunks = dchunk_new(ctx, ARENA_MIN_CHUNK, err)) ||
            !(ctx->blas = dvl_cublas_new(false, err)) ||
            !(ctx->staged = dvl_cuda_event_new(err))) {
            dvl_ctx_free(ctx);
            return NULL;
        }
    }
#endif
    return ctx;
}

dvl_ctx *dvl_ctx_new(dvl_device device) { return dvl_ctx_new_err(device, NULL); }

void dvl_ctx_free(dvl_ctx *ctx)
{
    if (!ctx)
        return;
#ifdef DVL_HAVE_CUDA
    staged_wait(ctx);
#endif
    chunks_free(ctx->chunks);
    chunks_free(ctx->dchunks);
#ifdef DVL_HAVE_CUDA
    chunks_free(ctx->pchunks);
    dvl_cuda_event_free(ctx->staged);
    dvl_cublas_free(ctx->blas);
#endif
    free(ctx->tape);
    free(ctx->plist);
    for (int i = 0; i < ctx->gfree_len; i++)
        if (ctx->device == DVL_CPU)
            UNPOISON(ctx->gfree[i].p, (size_t)ctx->gfree[i].n * sizeof(float));
    free(ctx->gfree);
    free(ctx);
}

/* The arena position of the next allocation of activation memory (host
 * for a CPU context, device otherwise). */
static size_t arena_pos(const dvl_ctx *ctx)
{
    return ctx->device == DVL_CPU ? ctx->used_total : ctx->dused_total;
}

/* Forget the released gradient blocks allocated at or after pos (all of
 * them for 0): the arena is about to hand that memory out again. */
static void drop_free_grads(dvl_ctx *ctx, size_t pos)
{
    int k = 0;
    for (int i = 0; i < ctx->gfree_len; i++) {
        free_grad f = ctx->gfree[i];
        if (pos > 0 && f.pos < pos) {
            ctx->gfree[k++] = f;
        } else if (ctx->device == DVL_CPU) {
            UNPOISON(f.p, (size_t)f.n * sizeof(float));
        }
    }
    ctx->gfree_len = k;
}

void dvl_ctx_reset(dvl_ctx *ctx)
{
    ctx->tape_len = 0;
    ctx->plist_len = 0;
    drop_free_grads(ctx, 0);
    if (ctx->chunks->next || ctx->chunks->size < ctx->peak) {
        size_t total = 0;
        for (chunk *c = ctx->chunks; c; c = c->next)
            total += c->size;
        if (total < ctx->peak)
            total = ctx->peak;
        chunks_free(ctx->chunks);
        ctx->chunks = chunk_new(ctx, total);
        if (!ctx->chunks) /* keep the context usable; the next alloc reports */
            ctx->chunks = chunk_new(ctx, ARENA_MIN_CHUNK);
    }
    if (ctx->chunks)
        ctx->chunks->used = 0;
    ctx->used_total = 0;
    ctx->peak = 0;
#ifdef DVL_HAVE_CUDA
    /* The device arena: the same consolidation. Kernels still queued read
     * the old blocks, so wait for them before freeing. */
    if (ctx->dchunks && (ctx->dchunks->next || ctx->dchunks->size < ctx->dpeak)) {
        size_t total = 0;
        for (chunk *c = ctx->dchunks; c; c = c->next)
            total += c->size;
        if (total < ctx->dpeak)
            total = ctx->dpeak;
        dvl_cuda_sync("context reset", NULL);
        chunks_free(ctx->dchunks);
        ctx->dchunks = dchunk_new(ctx, total, NULL);
        if (!ctx->dchunks)
            ctx->dchunks = dchunk_new(ctx, ARENA_MIN_CHUNK, NULL);
    }
    if (ctx->dchunks)
        ctx->dchunks->used = 0;
    ctx->dused_total = 0;
    ctx->dpeak = 0;
    /* The staging arena: once its copies have run, the same again (its
     * first chunk is made by the first copy). */
    staged_wait(ctx);
    if (ctx->pchunks && ctx->pchunks->next) {
        size_t total = 0;
        for (chunk *c = ctx->pchunks; c; c = c->next)
            total += c->size;
        chunks_free(ctx->pchunks);
        ctx->pchunks = pchunk_new(ctx, total, NULL); /* NULL: the next copy makes one */
    }
    if (ctx->pchunks)
        ctx->pchunks->used = 0;
#endif
}

dvl_device dvl_ctx_device(const dvl_ctx *ctx) { return ctx->device; }

bool dvl_set_grad_enabled(dvl_ctx *ctx, bool on)
{
    bool prev = ctx->grad_enabled;
    ctx->grad_enabled = on;
    return prev;
}

bool dvl_grad_enabled(const dvl_ctx *ctx) { return ctx->grad_enabled; }

bool dvl_set_keep_grads(dvl_ctx *ctx, bool on)
{
    bool prev = ctx->keep_grads;
    ctx->keep_grads = on;
    return prev;
}

bool dvl_ctx_ok(const dvl_ctx *ctx) { return ctx->err.code == DVL_OK; }

const dvl_err *dvl_ctx_err(const dvl_ctx *ctx) { return &ctx->err; }

void dvl_ctx_clear_error(dvl_ctx *ctx)
{
    ctx->err.code = DVL_OK;
    ctx->err.msg[0] = 0;
}

void *dvl_fail(dvl_ctx *ctx, const char *fmt, ...)
{
    if (ctx->err.code == DVL_OK) {
        va_list ap;
        va_start(ap, fmt);
        dvl_verrf(&ctx->err, DVL_EINVAL, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

void *dvl_alloc(dvl_ctx *ctx, size_t bytes)
{
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (bytes == 0)
        bytes = ARENA_ALIGN;
    chunk *c = ctx->chunks;
    if (!c || c->size - c->used < bytes) {
        size_t size = c ? c->size * 2 : ARENA_MIN_CHUNK;
        if (size < bytes)
            size = bytes;
        chunk *n = chunk_new(ctx, size);
        if (!n) {
            if (ctx->err.code == DVL_OK)
                dvl_errf(&ctx->err, DVL_ENOMEM, "out of memory allocating %zu bytes of activations",
                         bytes);
            return NULL;
        }
        n->next = c;
        ctx->chunks = c = n;
    }
    void *p = c->mem + c->used;
    c->used += bytes;
    ctx->used_total += bytes;
    if (ctx->used_total > ctx->peak)
        ctx->peak = ctx->used_total;
    return p;
}

void *dvl_calloc(dvl_ctx *ctx, size_t bytes)
{
    void *p = dvl_alloc(ctx, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void *dvl_arena_dup(dvl_ctx *ctx, const void *src, size_t bytes)
{
    void *p = dvl_alloc(ctx, bytes);
    if (p && bytes)
        memcpy(p, src, bytes);
    return p;
}

size_t dvl_arena_used(const dvl_ctx *ctx) { return ctx->used_total + ctx->dused_total; }

size_t dvl_arena_peak(const dvl_ctx *ctx) { return ctx->peak + ctx->dpeak; }

dvl_arena_mark dvl_arena_get_mark(const dvl_ctx *ctx)
{
    return (dvl_arena_mark){.chunk = ctx->chunks,
                            .used = ctx->chunks ? ctx->chunks->used : 0,
                            .total = ctx->used_total,
                            .dchunk = ctx->dchunks,
                            .dused = ctx->dchunks ? ctx->dchunks->used : 0,
                            .dtotal = ctx->dused_total};
}

/* Chunks made since the mark go (device ones once the queued kernels that
 * may use them are done); the mark's chunk takes back its fill. */
static void rewind_chunks(chunk **head, void *mark_chunk, size_t used)
{
    chunk *newer = *head;
    if (newer == mark_chunk) {
        if (newer)
            newer->used = used;
        return;
    }
    chunk *c = newer;
    while (c && c->next != mark_chunk)
        c = c->next;
    if (!c) /* not a mark of this arena: leave it alone */
        return;
#ifdef DVL_HAVE_CUDA
    if (newer->dev)
        dvl_cuda_sync("arena rewind", NULL);
#endif
    c->next = NULL;
    chunks_free(newer);
    *head = mark_chunk;
    if (*head)
        (*head)->used = used;
}

void dvl_arena_rewind(dvl_ctx *ctx, dvl_arena_mark m)
{
    drop_free_grads(ctx, ctx->device == DVL_CPU ? m.total : m.dtotal);
    rewind_chunks(&ctx->chunks, m.chunk, m.used);
    ctx->used_total = m.total;
    rewind_chunks(&ctx->dchunks, m.dchunk, m.dused);
    ctx->dused_total = m.dtotal;
}

void *dvl_alloc_dev(dvl_ctx *ctx, size_t bytes)
{
    if (ctx->device == DVL_CPU)
        return dvl_alloc(ctx, bytes);
#ifdef DVL_HAVE_CUDA
    bytes = (bytes + DEV_ALIGN - 1) / DEV_ALIGN * DEV_ALIGN;
    if (bytes == 0)
        bytes = DEV_ALIGN;
    chunk *c = ctx->dchunks;
    if (!c || c->size - c->used < bytes) {
        size_t size = c ? c->size * 2 : ARENA_MIN_CHUNK;
        if (size < bytes)
            size = bytes;
        dvl_err e = {0, ""};
        chunk *n = dchunk_new(ctx, size, &e);
        if (!n) {
            if (ctx->err.code == DVL_OK) {
                if (e.code)
                    ctx->err = e;
                else
                    dvl_errf(&ctx->err, DVL_ENOMEM,
                             "out of memory allocating %zu bytes of device activations", bytes);
            }
            return NULL;
        }
        n->next = c;
        ctx->dchunks = c = n;
    }
    void *p = c->mem + c->used;
    c->used += bytes;
    ctx->dused_total += bytes;
    if (ctx->dused_total > ctx->dpeak)
        ctx->dpeak = ctx->dused_total;
    return p;
#else
    return dvl_fail(ctx, "device arena: built without CUDA");
#endif
}

void *dvl_calloc_dev(dvl_ctx *ctx, size_t bytes)
{
    if (ctx->device == DVL_CPU)
        return dvl_calloc(ctx, bytes);
    void *p = dvl_alloc_dev(ctx, bytes);
#ifdef DVL_HAVE_CUDA
    dvl_err e = {0, ""};
    if (p && dvl_cuda_memset_zero(p, bytes, &e) != DVL_OK) {
        dvl_ctx_set_err(ctx, &e); /* the first error stays */
        return NULL;
    }
#endif
    return p;
}

struct dvl_cublas *dvl_ctx_cublas(dvl_ctx *ctx) { return ctx->blas; }

void dvl_ctx_set_bf16_activations(dvl_ctx *ctx, bool on) { ctx->bf16_activations = on; }
bool dvl_ctx_bf16_activations(const dvl_ctx *ctx) { return ctx->bf16_activations; }

int dvl_ctx_set_err(dvl_ctx *ctx, const dvl_err *e)
{
    if (e->code && ctx->err.code == DVL_OK)
        ctx->err = *e;
    return e->code;
}

bool dvl_ctx_check(dvl_ctx *ctx, const char *what)
{
#ifdef DVL_HAVE_CUDA
    if (ctx->device == DVL_CUDA) {
        dvl_err e = {0, ""};
        if (dvl_cuda_check(what, &e) != DVL_OK) {
            dvl_ctx_set_err(ctx, &e);
            return false;
        }
    }
#endif
    return ctx->err.code == DVL_OK;
}

#ifdef DVL_HAVE_CUDA
/* `bytes` of the staging arena (bump allocation as dvl_alloc). */
static void *staging_alloc(dvl_ctx *ctx, size_t bytes, dvl_err *e)
{
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    chunk *c = ctx->pchunks;
    if (!c || c->size - c->used < bytes) {
        size_t size = c ? c->size * 2 : ARENA_MIN_CHUNK;
        if (size < bytes)
            size = bytes;
        chunk *n = pchunk_new(ctx, size, e);
        if (!n) {
            if (!e->code)
                dvl_errf(e, DVL_ENOMEM, "out of memory for %zu bytes of pinned staging", bytes);
            return NULL;
        }
        n->next = c;
        ctx->pchunks = c = n;
    }
    void *p = c->mem + c->used;
    c->used += bytes;
    return p;
}
#endif

int dvl_ctx_memcpy_h2d(dvl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (ctx->device == DVL_CPU) {
        if (bytes)
            memcpy(dst, src, bytes);
        return DVL_OK;
    }
#ifdef DVL_HAVE_CUDA
    /* Through pinned staging, asynchronously: the caller's memory is copied
     * into the staging arena now (so it may change at once, as with a
     * plain copy) and the DMA runs in stream order, before any kernel
     * launched later, while the host goes on queueing work. The staging
     * memory stays untouched until reset has waited for the event. */
    if (bytes == 0)
        return DVL_OK;
    dvl_err e = {0, ""};
    void *s = staging_alloc(ctx, bytes, &e);
    if (!s)
        return dvl_ctx_set_err(ctx, &e);
    memcpy(s, src, bytes);
    if (dvl_cuda_memcpy_h2d_async(dst, s, bytes, &e) != DVL_OK)
        return dvl_ctx_set_err(ctx, &e);
    ctx->staged_pending = true;
    if (dvl_cuda_event_record(ctx->staged, &e) != DVL_OK) {
        dvl_cuda_sync(NULL, NULL); /* no event to wait on: the copy must be done now */
        return dvl_ctx_set_err(ctx, &e);
    }
#endif
    return DVL_OK;
}

int dvl_ctx_memcpy_d2h(dvl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (ctx->device == DVL_CPU) {
        if (bytes)
            memcpy(dst, src, bytes);
        return DVL_OK;
    }
#ifdef DVL_HAVE_CUDA
    dvl_err e = {0, ""};
    if (dvl_cuda_memcpy_d2h(dst, src, bytes, &e) != DVL_OK)
        return dvl_ctx_set_err(ctx, &e);
#endif
    return DVL_OK;
}

int dvl_memcpy_any(void *dst, bool dst_dev, const void *src, bool src_dev, size_t bytes,
                   dvl_err *err)
{
    if (!bytes)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    if (dst_dev && src_dev)
        return dvl_cuda_memcpy_d2d(dst, src, bytes, err);
    if (dst_dev)
        return dvl_cuda_memcpy_h2d(dst, src, bytes, err);
    if (src_dev)
        return dvl_cuda_memcpy_d2h(dst, src, bytes, err);
#else
    if (dst_dev || src_dev)
        return dvl_errf(err, DVL_EDEVICE, "copy of device memory in a build without CUDA");
#endif
    memcpy(dst, src, bytes);
    return DVL_OK;
}

int64_t dvl_arena_mallocs(const dvl_ctx *ctx) { return ctx->mallocs; }

/* ------------------------------------------------------------------ tape */

bool dvl_needs_grad(const dvl_ctx *ctx, dvl_tensor *const *in, int n)
{
    if (!ctx->grad_enabled)
        return false;
    for (int i = 0; i < n; i++)
        if (in[i] && in[i]->requires_grad)
            return true;
    return false;
}

/* ----------------------------------------------------------- profile */

static double prof_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for the context's device; the time since the last point. */
static double prof_lap(dvl_ctx *ctx)
{
#ifdef DVL_HAVE_CUDA
    if (ctx->device == DVL_CUDA) {
        dvl_err e = {0, ""};
        if (dvl_cuda_sync("op profile", &e) != DVL_OK && ctx->err.code == DVL_OK)
            ctx->err = e;
    }
#endif
    double t = prof_now(), dt = t - ctx->prof_t;
    ctx->prof_t = t;
    return dt;
}

static dvl_op_time *prof_row(dvl_ctx *ctx, const char *op)
{
    for (int i = 0; i < ctx->prof_n; i++)
        if (!strcmp(ctx->prof_rows[i].op, op))
            return &ctx->prof_rows[i];
    if (ctx->prof_n == DVL_PROF_OPS - 1 && strcmp(op, "other"))
        return prof_row(ctx, "other");
    dvl_op_time *r = &ctx->prof_rows[ctx->prof_n++];
    *r = (dvl_op_time){.op = op};
    return r;
}

void dvl_ctx_profile(dvl_ctx *ctx, bool on)
{
    ctx->prof = on;
    if (on) {
        ctx->prof_n = 0;
        dvl_ctx_profile_mark(ctx);
    }
}

bool dvl_ctx_profiling(const dvl_ctx *ctx) { return ctx->prof; }

void dvl_node_flops(dvl_ctx *ctx, dvl_node *node, double fwd, double bwd)
{
    if (!ctx->prof || !node)
        return;
    prof_row(ctx, node->op)->fwd_flops += fwd;
    node->bwd_flops = bwd;
}

void dvl_ctx_profile_mark(dvl_ctx *ctx)
{
    if (ctx->prof)
        prof_lap(ctx);
}

int dvl_ctx_profile_rows(const dvl_ctx *ctx, const dvl_op_time **rows)
{
    *rows = ctx->prof_rows;
    return ctx->prof_n;
}

/* The array a of capacity *cap with room for `need` elements of `size`
 * bytes: a itself when it has it, else grown by doubling (from `first`),
 * so appends cost amortised O(1) and, as capacities survive resets,
 * nothing once a step has sized them. Each growth counts as a malloc
 * (dvl_arena_mallocs). NULL on out of memory, a and *cap left as they were. */
static void *grow(dvl_ctx *ctx, void *a, int64_t *cap, int64_t need, int64_t first, size_t size)
{
    if (need <= *cap)
        return a;
    int64_t c = *cap ? *cap : first;
    while (c < need)
        c *= 2;
    void *p = realloc(a, (size_t)c * size);
    if (!p)
        return NULL;
    ctx->mallocs++;
    *cap = c;
    return p;
}

/* ------------------------------------------------------------- tape */

dvl_node *dvl_record(dvl_ctx *ctx, const char *op, dvl_backward_fn backward, dvl_tensor *out,
                     dvl_tensor *const *in, int n_in)
{
    if (ctx->prof) {
        dvl_op_time *r = prof_row(ctx, op);
        r->fwd_s += prof_lap(ctx);
        r->fwd_n++;
    }
    if (n_in < 0 || n_in > DVL_NODE_IN) {
        dvl_fail(ctx, "tape: op %s records %d inputs, at most %d", op, n_in, DVL_NODE_IN);
        return NULL;
    }
    dvl_node *tape = grow(ctx, ctx->tape, &ctx->tape_cap, ctx->tape_len + 1, 256, sizeof *tape);
    if (!tape) {
        if (ctx->err.code == DVL_OK)
            dvl_errf(&ctx->err, DVL_ENOMEM, "out of memory growing the autograd tape");
        return NULL;
    }
    ctx->tape = tape;
    dvl_node *node = &ctx->tape[ctx->tape_len++];
    memset(node, 0, sizeof *node);
    node->op = op;
    node->backward = backward;
    node->out = out;
    node->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        node->in[i] = in[i];
    out->requires_grad = true;
    return node;
}

bool dvl_has_grad(const dvl_tensor *t)
{
    const dvl_tensor *b = t->base ? t->base : t;
    return b->grad != NULL;
}

/* A zeroed released gradient block of n floats, the latest given back,
 * or NULL when there is none (or zeroing it failed: the error is in ctx,
 * which stops backward). */
static float *take_grad(dvl_ctx *ctx, int64_t n, size_t *pos)
{
    for (int i = ctx->gfree_len - 1; i >= 0; i--) {
        free_grad f = ctx->gfree[i];
        if (f.n != n)
            continue;
        memmove(ctx->gfree + i, ctx->gfree + i + 1, (size_t)(ctx->gfree_len - i - 1) * sizeof f);
        ctx->gfree_len--;
        const size_t bytes = (size_t)n * sizeof(float);
        if (ctx->device == DVL_CPU) {
            UNPOISON(f.p, bytes);
            memset(f.p, 0, bytes);
        } else {
#ifdef DVL_HAVE_CUDA
            dvl_err e = {0, ""};
            if (dvl_cuda_memset_zero(f.p, bytes, &e) != DVL_OK) {
                dvl_ctx_set_err(ctx, &e);
                return NULL;
            }
#endif
        }
        *pos = f.pos;
        return f.p;
    }
    return NULL;
}

/* After t's producing node has run its backward, give t's gradient block
 * back (dvl_backward's comment says why that is safe). Views and
 * parameters keep theirs; a full list just keeps the block. */
static void release_grad(dvl_ctx *ctx, dvl_tensor *t)
{
    if (ctx->keep_grads || !t || t->base || t->is_param || !t->grad)
        return;
    free_grad *l = grow(ctx, ctx->gfree, &ctx->gfree_cap, ctx->gfree_len + 1, 64, sizeof *l);
    if (!l)
        return;
    ctx->gfree = l;
    const int64_t n = dvl_numel(t);
    ctx->gfree[ctx->gfree_len++] = (free_grad){t->grad, n, t->grad_pos};
    if (ctx->device == DVL_CPU)
        POISON(t->grad, (size_t)n * sizeof(float));
    t->grad = NULL;
}

float *dvl_grad(dvl_ctx *ctx, dvl_tensor *t)
{
    if (t->grad)
        return t->grad;
    dvl_tensor *b = t->base ? t->base : t;
    if (!b->grad) {
        b->grad = take_grad(ctx, dvl_numel(b), &b->grad_pos);
        if (!b->grad) {
            b->grad_pos = arena_pos(ctx);
            b->grad = dvl_calloc_dev(ctx, (size_t)dvl_numel(b) * sizeof(float));
        }
        if (!b->grad)
            return NULL;
    }
    if (t != b)
        t->grad = b->grad + t->offset;
    return t->grad;
}

void dvl_set_grad_ready_hook(dvl_ctx *ctx, dvl_grad_ready_fn fn, void *user)
{
    ctx->ready_fn = fn;
    ctx->ready_user = user;
}

typedef struct first_use {
    int node;
    dvl_tensor *param;
} first_use;

/* The k-th tensor through which node uses parameters, k < node_uses(node):
 * its inputs, then its parameter list. Views count as their base. */
static int node_uses(const dvl_node *node) { return node->n_in + node->n_params; }

static dvl_tensor *node_use(const dvl_ctx *ctx, const dvl_node *node, int k)
{
    dvl_tensor *t = k < node->n_in ? node->in[k] : ctx->plist[node->params_at + k - node->n_in];
    return t && t->base ? t->base : t;
}

static bool trainable_param(const dvl_tensor *b) { return b && b->is_param && b->requires_grad; }

/* The trainable parameters in order of their first use on the tape: a
 * parameter's gradient is complete once the reverse walk has run that node.
 * NULL with *n = 0 when there is no hook (the common case costs nothing). */
static first_use *first_uses(dvl_ctx *ctx, int *n)
{
    *n = 0;
    if (!ctx->ready_fn)
        return NULL;
    int cap = 0;
    for (int i = 0; i < ctx->tape_len; i++)
        cap += node_uses(&ctx->tape[i]);
    first_use *f = dvl_alloc(ctx, (size_t)(cap ? cap : 1) * sizeof *f);
    if (!f)
        return NULL;
    uint64_t gen = ++ctx->mark_gen;
    for (int i = 0; i < ctx->tape_len; i++)
        for (int k = 0; k < node_uses(&ctx->tape[i]); k++) {
            dvl_tensor *b = node_use(ctx, &ctx->tape[i], k);
            if (trainable_param(b) && b->tape_mark != gen) {
                b->tape_mark = gen;
                f[(*n)++] = (first_use){i, b};
            }
        }
    return f;
}

int dvl_tape_drop_from(dvl_ctx *ctx, int lo, int64_t *params_at, int *n_params)
{
    if (lo < 0 || lo > ctx->tape_len) {
        dvl_fail(ctx, "tape: position %d outside [0, %d]", lo, ctx->tape_len);
        return ctx->err.code;
    }
    int64_t need = 0;
    for (int i = lo; i < ctx->tape_len; i++)
        need += node_uses(&ctx->tape[i]);
    dvl_tensor **l = grow(ctx, ctx->plist, &ctx->plist_cap, ctx->plist_len + need, 256, sizeof *l);
    if (!l) {
        if (ctx->err.code == DVL_OK)
            dvl_errf(&ctx->err, DVL_ENOMEM, "out of memory growing the tape's parameter lists");
        return DVL_ENOMEM;
    }
    ctx->plist = l;
    const int64_t at = ctx->plist_len;
    uint64_t gen = ++ctx->mark_gen;
    for (int i = lo; i < ctx->tape_len; i++)
        for (int k = 0; k < node_uses(&ctx->tape[i]); k++) {
            dvl_tensor *b = node_use(ctx, &ctx->tape[i], k);
            if (trainable_param(b) && b->tape_mark != gen) {
                b->tape_mark = gen;
                ctx->plist[ctx->plist_len++] = b;
            }
        }
    ctx->tape_len = lo;
    *params_at = at;
    *n_params = (int)(ctx->plist_len - at);
    return DVL_OK;
}

/* Run the backward of tape nodes [lo, tape_len) in reverse, then drop them.
 * Gradient-ready hooks fire for the whole tape only (lo = 0). */
static int run_nodes(dvl_ctx *ctx, int lo)
{
    int n_first = 0;
    first_use *first = lo == 0 ? first_uses(ctx, &n_first) : NULL;
    int next = n_first - 1; /* the latest first use not yet reported */
    for (int i = ctx->tape_len - 1; i >= lo && !ctx->err.code; i--) {
        dvl_node *node = &ctx->tape[i];
        if (dvl_has_grad(node->out)) {
            /* node is not used after its backward: a checkpoint's backward
             * records onto the tape, which may move. */
            const char *op = node->op;
            const double flops = node->bwd_flops;
            if (ctx->prof)
                prof_lap(ctx); /* the work between nodes is no node's */
            dvl_tensor *out = node->out;
            node->backward(ctx, node);
            release_grad(ctx, out);
            if (ctx->prof) {
                dvl_op_time *r = prof_row(ctx, op);
                r->bwd_s += prof_lap(ctx);
                r->bwd_n++;
                r->bwd_flops += flops;
            }
        }
        for (; next >= 0 && first[next].node == i; next--)
            ctx->ready_fn(ctx->ready_user, first[next].param);
    }
    ctx->tape_len = lo;
    return ctx->err.code;
}

static int run_tape(dvl_ctx *ctx) { return run_nodes(ctx, 0); }

int dvl_backward_nodes_from(dvl_ctx *ctx, int lo)
{
    if (lo < 0 || lo > ctx->tape_len) {
        dvl_fail(ctx, "backward: tape position %d outside [0, %d]", lo, ctx->tape_len);
        return ctx->err.code;
    }
    return run_nodes(ctx, lo);
}

int dvl_backward_seed(dvl_ctx *ctx, dvl_tensor *out, const float *seed)
{
    if (!ctx->err.code && !out)
        dvl_fail(ctx, "backward: output is NULL");
    if (ctx->err.code)
        return ctx->err.code;
    if (!out->requires_grad) {
        dvl_fail(ctx, "backward: %s does not depend on any trainable parameter", dvl_tname(out));
        return ctx->err.code;
    }
    float *g = dvl_grad(ctx, out);
    if (!g)
        return ctx->err.code;
    int64_t n = dvl_numel(out);
    if (out->device == DVL_CPU) {
        for (int64_t i = 0; i < n; i++)
            g[i] += seed[i];
    } else {
#ifdef DVL_HAVE_CUDA
        /* The seed is host memory: copy it to the device arena, then add. */
        float *d = dvl_alloc_dev(ctx, (size_t)n * sizeof(float));
        if (!d || dvl_ctx_memcpy_h2d(ctx, d, seed, (size_t)n * sizeof(float)) != DVL_OK)
            return ctx->err.code;
        dvl_cuda_add_bwd(g, NULL, d, n);
        if (!dvl_ctx_check(ctx, "backward seed"))
            return ctx->err.code;
#endif
    }
    return run_tape(ctx);
}

int dvl_backward(dvl_ctx *ctx, dvl_tensor *loss)
{
    if (loss && dvl_numel(loss) != 1) {
        char s[64];
        dvl_fail(ctx, "backward: loss %s must have one element, has shape %s", dvl_tname(loss),
                 dvl_shape_str(loss, s, sizeof s));
    }
    const float one = 1.0f;
    return dvl_backward_seed(ctx, loss, &one);
}

int dvl_tape_len(const dvl_ctx *ctx) { return ctx->tape_len; }
