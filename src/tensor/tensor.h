/* Tensors, the per-step context (activation arena + autograd tape) and the
 * parameter store.
 *
 * Execution is eager: an op computes its output at once and, when any input
 * needs a gradient and grad mode is on, pushes a node on the context's tape.
 * dvl_backward() walks the tape in reverse and then clears it. Activations,
 * their gradients and tape nodes all come from the context's arena, which
 * dvl_ctx_reset() rewinds: after the first step has sized it, a training step
 * performs no malloc.
 *
 * Ops return NULL on error with the message in the context; an op given a NULL
 * input returns NULL without touching the message, so a forward pass checks
 * once, at the end (ggml style). */
#ifndef DVL_TENSOR_H
#define DVL_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/err.h"

#define DVL_MAX_DIMS 4

typedef enum dvl_device { DVL_CPU = 0, DVL_CUDA = 1 } dvl_device;

typedef struct dvl_tensor dvl_tensor;
struct dvl_tensor {
    dvl_dtype dtype;
    dvl_device device;
    int ndim;
    int64_t shape[DVL_MAX_DIMS]; /* outermost first, row-major, contiguous */
    void *data;
    /* f32 gradient with the same layout as data. For parameters it points
     * into the store's flat gradient buffer; for activations it is taken
     * from the arena (zeroed) the first time backward needs it. */
    float *grad;
    /* A view shares data (and gradient) with base, starting `offset`
     * elements in; base is never itself a view. */
    dvl_tensor *base;
    int64_t offset;
    bool requires_grad;
    bool is_param;
    const char *name; /* for messages; may be NULL */
    uint64_t tape_mark; /* scratch for dvl_backward's parameter pass */
    size_t grad_pos;    /* arena position of an activation's gradient block */
    /* A parameter's bf16 copy (round to nearest even), on its device, kept
     * by the store (dvl_params_keep_bf16); NULL otherwise. Read it through
     * dvl_bf16_copy, which also serves views. */
    const uint16_t *bf16;
};

/* ---------------------------------------------------------------- shapes */
int64_t dvl_numel(const dvl_tensor *t);
int64_t dvl_rows(const dvl_tensor *t); /* product of all dims but the last */
int64_t dvl_cols(const dvl_tensor *t); /* last dim */
static inline float *dvl_f32(const dvl_tensor *t) { return (float *)t->data; }
/* The bf16 copy of t's elements kept by its parameter store (t a
 * parameter or a view of one, in a store that keeps its copy), else NULL. */
static inline const uint16_t *dvl_bf16_copy(const dvl_tensor *t)
{
    const dvl_tensor *b = t->base ? t->base : t;
    return b->bf16 ? b->bf16 + (t->base ? t->offset : 0) : NULL;
}
/* The bf16 copy of t[0..n) as one matrix (consecutive tensors, as
 * dvl_linear_cat takes them): t[0]'s copy when each has one right after
 * the one before, else NULL. */
static inline const uint16_t *dvl_bf16_copy_group(dvl_tensor *const *t, int n)
{
    const uint16_t *c = dvl_bf16_copy(t[0]);
    for (int k = 1; c && k < n; k++)
        if (dvl_bf16_copy(t[k]) != dvl_bf16_copy(t[k - 1]) + dvl_numel(t[k - 1]))
            return NULL;
    return c;
}
/* "[3, 4]" into buf, for messages. */
const char *dvl_shape_str(const dvl_tensor *t, char *buf, size_t n);
const char *dvl_tname(const dvl_tensor *t); /* name or "(unnamed)" */

/* --------------------------------------------------------------- context */
typedef struct dvl_ctx dvl_ctx;
typedef struct dvl_node dvl_node;

typedef void (*dvl_backward_fn)(dvl_ctx *ctx, dvl_node *node);

/* Most tensor inputs one node records (dvl_linear_cat: x, three weights and
 * their biases). */
#define DVL_NODE_IN 8

/* One recorded op. The backward function reads dvl_grad(ctx, node->out) and
 * accumulates into dvl_grad(ctx, node->in[k]) for inputs that require grad.
 * Saved state: small scalars in i[] and f[], anything larger (arrays copied
 * into the arena, statistics saved by the forward pass) behind p[]. */
struct dvl_node {
    const char *op;
    dvl_backward_fn backward;
    dvl_tensor *out;
    dvl_tensor *in[DVL_NODE_IN];
    int n_in;
    int64_t i[8];
    float f[4];
    void *p[4];
    /* Trainable parameters whose gradients the backward completes without
     * their being inputs (a dvl_checkpoint block's): entries
     * [params_at, params_at + n_params) of the context's parameter lists,
     * for the gradient-ready hook. */
    int64_t params_at;
    int n_params;
    double bwd_flops; /* for the profile (dvl_node_flops) */
};

dvl_ctx *dvl_ctx_new(dvl_device device);
void dvl_ctx_free(dvl_ctx *ctx);
/* Drop all activations and the tape (rewind the arena). Tensors created in
 * the context are invalid afterwards. */
void dvl_ctx_reset(dvl_ctx *ctx);
dvl_device dvl_ctx_device(const dvl_ctx *ctx);

/* Grad mode: when off, ops record nothing (inference, frozen modules).
 * Returns the previous setting so callers can restore it. */
bool dvl_set_grad_enabled(dvl_ctx *ctx, bool on);
bool dvl_grad_enabled(const dvl_ctx *ctx);
/* Keep every activation's gradient after backward (off by default:
 * backward gives them back as it goes, see dvl_backward), for reading the
 * gradient of an intermediate tensor (debugging, saliency) at the cost of
 * the memory. Returns the previous setting. */
bool dvl_set_keep_grads(dvl_ctx *ctx, bool on);

/* Error state: the first failure wins until dvl_ctx_clear_error. */
bool dvl_ctx_ok(const dvl_ctx *ctx);
const dvl_err *dvl_ctx_err(const dvl_ctx *ctx);
void dvl_ctx_clear_error(dvl_ctx *ctx);
/* Record an error (if none yet) and return NULL, for ops:
 * `return dvl_fail(ctx, "linear: ...")`. */
void *dvl_fail(dvl_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Arena memory, 64-byte aligned, valid until the next reset. NULL (with the
 * context's error set) only when the system is out of memory. */
void *dvl_alloc(dvl_ctx *ctx, size_t bytes);
void *dvl_calloc(dvl_ctx *ctx, size_t bytes);
/* A copy of `bytes` of caller memory in the arena: ops keep the caller's
 * arrays (ids, labels, masks) this way, since the caller may change them
 * before backward runs. */
void *dvl_arena_dup(dvl_ctx *ctx, const void *src, size_t bytes);
/* Bytes of arena in use now and the largest block size held. */
size_t dvl_arena_used(const dvl_ctx *ctx);
/* Number of malloc calls the arena has made since the context was created
 * (a steady-state step must not increase it). */
int64_t dvl_arena_mallocs(const dvl_ctx *ctx);

/* The most arena (host + device) the step has held at once since the last
 * reset: with checkpointing, more than what is in use at its end. */
size_t dvl_arena_peak(const dvl_ctx *ctx);
/* A point in the arena to come back to: dvl_arena_rewind drops everything
 * allocated since (tensors, gradients, saved state), keeping what came
 * before. For dvl_checkpoint, which recomputes a block of ops inside it. */
typedef struct dvl_arena_mark {
    void *chunk, *dchunk;
    size_t used, total, dused, dtotal;
} dvl_arena_mark;
dvl_arena_mark dvl_arena_get_mark(const dvl_ctx *ctx);
void dvl_arena_rewind(dvl_ctx *ctx, dvl_arena_mark m);

/* New uninitialised / zeroed activation tensor of dtype (f32 or i32). */
dvl_tensor *dvl_new(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape);
dvl_tensor *dvl_zeros(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape);
dvl_tensor *dvl_new2(dvl_ctx *ctx, int64_t rows, int64_t cols); /* f32 [rows, cols] */
/* A tensor in the context wrapping caller-owned data (no copy). On a CUDA
 * context the data must be device memory (dvl_from_host copies host data). */
dvl_tensor *dvl_wrap(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape, void *data);

/* View of `t`: the same data reinterpreted as `shape` starting `offset`
 * elements in (reshape when offset is 0, row slice otherwise). Shares the
 * gradient too, so views need no tape node. */
dvl_tensor *dvl_view(dvl_ctx *ctx, dvl_tensor *t, int ndim, const int64_t *shape, int64_t offset);
dvl_tensor *dvl_reshape(dvl_ctx *ctx, dvl_tensor *t, int ndim, const int64_t *shape);

/* -------------------------------------------------------------- autograd */
/* True when an op over these inputs must be recorded. NULL inputs ignored. */
bool dvl_needs_grad(const dvl_ctx *ctx, dvl_tensor *const *in, int n);
/* Push a node for `out` (marking it requires_grad) and return it so the op
 * can save what its backward needs. Returns NULL on out-of-memory or more
 * than DVL_NODE_IN inputs (context error set). */
dvl_node *dvl_record(dvl_ctx *ctx, const char *op, dvl_backward_fn backward, dvl_tensor *out,
                     dvl_tensor *const *in, int n_in);
/* The gradient buffer of t, allocated zeroed on first use. */
float *dvl_grad(dvl_ctx *ctx, dvl_tensor *t);
/* Whether a gradient has been accumulated into t yet (no allocation). */
bool dvl_has_grad(const dvl_tensor *t);
/* Backpropagate from a scalar (1-element) tensor with seed gradient 1, then
 * clear the tape. Once a node's backward has run, the gradient of its
 * output is dead (the output's users ran before it); its block goes back
 * to the context, which gives it to the next gradient of the same size:
 * backward then holds the gradients of about one layer at a time, not of
 * all activations. After backward, leaves (tensors no node produced, and
 * views of them) and parameters have their gradients; an activation some
 * node produced has none, and a view of one has a dead pointer
 * (AddressSanitizer builds poison the block), unless dvl_set_keep_grads. Returns DVL_OK or an error code (message in ctx). */
int dvl_backward(dvl_ctx *ctx, dvl_tensor *loss);
/* Backpropagate from any tensor with a given seed gradient (same number of
 * elements as out), then clear the tape: out's gradient is the vector in a
 * vector-Jacobian product. */
int dvl_backward_seed(dvl_ctx *ctx, dvl_tensor *out, const float *seed);
int dvl_tape_len(const dvl_ctx *ctx);
/* Run the backward of the tape's nodes from position lo to the end, in
 * reverse, and drop them (the nodes before lo stay): the inner backward of
 * dvl_checkpoint. No gradient-ready hooks fire. */
int dvl_backward_nodes_from(dvl_ctx *ctx, int lo);
/* Drop the tape's nodes from position lo without running them, and append
 * the trainable parameters they use (inputs and their own lists, each
 * once) to the context's parameter lists: *params_at, *n_params for the
 * node that stands for them (dvl_checkpoint's forward runs its block with
 * grad mode on to learn them). The lists live until dvl_ctx_reset. */
int dvl_tape_drop_from(dvl_ctx *ctx, int lo, int64_t *params_at, int *n_params);

/* Activation checkpointing (Chen et al. 2016, "Training deep nets with
 * sublinear memory cost"): y = fn(ctx, user, x) with y of x's shape, where
 * the forward pass keeps only x and y, and the backward pass runs fn again
 * with grad mode on, backpropagates y's gradient through that recomputation
 * and drops it. Memory: one block's activations at a time instead of all;
 * time: one more forward of the block. The gradients equal those without
 * checkpointing bit for bit when fn is deterministic and x is used by
 * nothing but fn (a transformer layer). Parameters used inside fn get
 * their gradients in the inner backward; the gradient-ready hook reports
 * them when the checkpoint's node has run (the forward pass records fn's
 * ops to learn which parameters it uses, then drops them), so data-parallel
 * buckets still overlap backward. user must stay valid until backward has run (put it in the arena). With
 * grad mode off, just fn(ctx, user, x). */
typedef dvl_tensor *(*dvl_block_fn)(dvl_ctx *ctx, const void *user, dvl_tensor *x);
dvl_tensor *dvl_checkpoint(dvl_ctx *ctx, dvl_block_fn fn, const void *user, dvl_tensor *x);
/* Called during backward as soon as a trainable parameter's gradient is
 * complete (right after the tape node of its first use in the forward pass
 * has run), so a data-parallel trainer can start reducing gradient buckets
 * while backward goes on. NULL to remove. */
typedef void (*dvl_grad_ready_fn)(void *user, dvl_tensor *param);
void dvl_set_grad_ready_hook(dvl_ctx *ctx, dvl_grad_ready_fn fn, void *user);

/* Op profile, a developer's tool (dvl-bench train --profile): while on, the
 * context waits for its device at each op it records on the tape and after
 * each backward node, and adds the wall time since the previous such point
 * to the op's row (forward: the time up to the op's recording, so the host
 * work before an op counts to it; dvl_ctx_profile_mark restarts the clock
 * after work that is no op's). Waiting serialises host and device: the
 * times add up to more than an unprofiled step. Turning it on clears the
 * table; at most DVL_PROF_OPS distinct op names (more go to the last row,
 * "other"). */
#define DVL_PROF_OPS 48
typedef struct dvl_op_time {
    const char *op;             /* the name ops record under ("linear", "attention", ...) */
    double fwd_s, bwd_s;        /* summed wall time */
    int64_t fwd_n, bwd_n;       /* calls */
    double fwd_flops, bwd_flops; /* summed model FLOPs the op reported (dvl_node_flops) */
} dvl_op_time;
void dvl_ctx_profile(dvl_ctx *ctx, bool on);
bool dvl_ctx_profiling(const dvl_ctx *ctx);
void dvl_ctx_profile_mark(dvl_ctx *ctx);
/* A product op's model FLOPs for the profile (nothing while it is off):
 * fwd for the forward pass just recorded as node, bwd for its backward
 * (counted when that runs). Model FLOPs: 2 per multiply-add of the products
 * the maths needs, as MFU counts them; work an implementation redoes
 * (attention's scores in its backward kernels, the fused LM head's logits)
 * is not counted, so such an op's rate is a lower bound of what it runs. */
void dvl_node_flops(dvl_ctx *ctx, dvl_node *node, double fwd, double bwd);
/* The table (rows in order of first appearance); returns the row count. */
int dvl_ctx_profile_rows(const dvl_ctx *ctx, const dvl_op_time **rows);

/* ------------------------------------------------------------ parameters */
/* All parameters in one contiguous f32 buffer, the gradients of the
 * trainable ones in another (only trainable parameters get a gradient
 * slot), so all-reduce, clipping, zeroing and checkpointing are single calls
 * over one buffer. Declare with dvl_params_add, then dvl_params_alloc once. */
/* Which parameters a store keeps bf16 copies of (dvl_params_keep_bf16). */
typedef enum dvl_bf16_copies {
    DVL_BF16_NONE = 0,
    DVL_BF16_FROZEN,
    DVL_BF16_ALL
} dvl_bf16_copies;

typedef struct dvl_params {
    int n, cap;
    dvl_tensor **t;     /* tensors in declaration order */
    int64_t *grad_off;  /* offset in grad of each trainable tensor, -1 if frozen */
    int64_t numel;      /* all parameters */
    int64_t numel_grad; /* trainable parameters */
    float *data;        /* numel floats, 64-byte aligned */
    float *grad;        /* numel_grad floats, 64-byte aligned (NULL if none) */
    bool allocated;
    /* Where data and grad live (DVL_CPU unless made by dvl_params_to_device
     * or moved by dvl_params_move). */
    dvl_device device;
    /* Device stores: DVL_CUDA_SUMSQ_MAX_PARTS doubles of device memory for
     * dvl_grad_norm's partial sums, so the norm allocates nothing. */
    void *norm_scratch;
    /* dvl_params_keep_bf16: bf16 copies of the parameters that bf16_mode
     * selects, each at a 16-element boundary in declaration order (so
     * parameters with copies that are consecutive in data are consecutive
     * here too), on the store's device; numel_bf16 elements. NULL when the
     * store keeps none (or none is selected). */
    uint16_t *bf16;
    int64_t numel_bf16;
    dvl_bf16_copies bf16_mode;
} dvl_params;

dvl_params *dvl_params_new(void);
void dvl_params_free(dvl_params *p);
/* Declare a parameter; `name` is copied. NULL on a duplicate name, a bad
 * shape (a size below 1, or more than DVL_PARAM_MAX_NUMEL elements) or a
 * call after alloc (message in err). */
#define DVL_PARAM_MAX_NUMEL ((int64_t)1 << 40)
dvl_tensor *dvl_params_add(dvl_params *p, const char *name, int ndim, const int64_t *shape,
                           bool trainable, dvl_err *err);
/* Change trainability before dvl_params_alloc; names with this prefix. Returns
 * how many parameters matched. */
int dvl_params_set_trainable(dvl_params *p, const char *prefix, bool trainable);
int dvl_params_alloc(dvl_params *p, dvl_err *err);
void dvl_params_zero_grad(dvl_params *p);
dvl_tensor *dvl_params_find(const dvl_params *p, const char *name);

/* --------------------------------------------------------------- devices */
/* A CUDA context (device DVL_CUDA) keeps two arenas with one reset: the host
 * arena of dvl_alloc (tensor headers, saved index arrays, anything the host
 * reads or writes: model code may keep using dvl_alloc for such arrays) and
 * a device arena (one cudaMalloc'd block per chunk, the same growth and reset
 * policy, counted in dvl_arena_mallocs) for tensor data, gradients and
 * kernel scratch. On a CPU context both are the one host arena. Kernels run
 * on the default stream; ops report launch errors into the context. */

/* dvl_ctx_new with the reason for a NULL result written into err (may be
 * NULL): a CUDA context needs a CUDA build and a usable device (device 0). */
dvl_ctx *dvl_ctx_new_err(dvl_device device, dvl_err *err);
/* Memory on the context's device, 256-byte aligned on CUDA, for data the
 * kernels touch; dvl_calloc_dev zeroes it (cudaMemset on CUDA). */
void *dvl_alloc_dev(dvl_ctx *ctx, size_t bytes);
void *dvl_calloc_dev(dvl_ctx *ctx, size_t bytes);
/* The context's cuBLAS handle (ops/cuda/cuda.h); NULL on a CPU context. */
struct dvl_cublas *dvl_ctx_cublas(dvl_ctx *ctx);
/* bf16 storage of activations where an op offers it, on a CUDA context
 * whose products are bf16 (DVL_MATH_BF16): today the MLP's [gate | up]
 * and SwiGLU outputs (dvl_swiglu_mlp), half the bytes of f32 to write, read
 * and keep for backward. On by default; off, such ops keep f32 activations
 * (bf16 only as product operands). No effect elsewhere. */
void dvl_ctx_set_bf16_activations(dvl_ctx *ctx, bool on);
bool dvl_ctx_bf16_activations(const dvl_ctx *ctx);
/* Record e in the context unless an error is already there (first wins);
 * returns e->code. */
int dvl_ctx_set_err(dvl_ctx *ctx, const dvl_err *e);
/* After kernel launches on a CUDA context: a launch error becomes the
 * context's error (DVL_EDEVICE, naming `what`). False on error. Always true
 * on a CPU context. */
bool dvl_ctx_check(dvl_ctx *ctx, const char *what);

/* Host <-> tensor copies (any device; a CPU tensor is a memcpy). numel
 * elements of the tensor's dtype. Copies to the host wait for the GPU. */
int dvl_tensor_upload(dvl_ctx *ctx, dvl_tensor *t, const void *host);
int dvl_tensor_to_host(dvl_ctx *ctx, const dvl_tensor *t, void *host);
/* t's gradient (numel floats) into host; zeros when t has none yet. */
int dvl_tensor_grad_to_host(dvl_ctx *ctx, const dvl_tensor *t, float *host);
/* A new tensor on the context's device holding a copy of host data. */
dvl_tensor *dvl_from_host(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape,
                          const void *host);
/* Host/device copies of raw arrays on the context's device (for index and
 * weight arrays the ops take as host pointers). On a CUDA context h2d copies
 * src into a pinned staging arena at once (src may change as soon as it
 * returns) and queues an asynchronous copy on the default stream, ahead of
 * any kernel launched later; the staging is reused after dvl_ctx_reset has
 * waited for those copies. d2h waits for the GPU. */
int dvl_ctx_memcpy_h2d(dvl_ctx *ctx, void *dst, const void *src, size_t bytes);
int dvl_ctx_memcpy_d2h(dvl_ctx *ctx, void *dst, const void *src, size_t bytes);
/* bytes between host and/or device memory, each side's place given (no
 * context: stores' flat buffers, optimizer moments). Synchronous. Device
 * memory in a build without CUDA is DVL_EDEVICE. */
int dvl_memcpy_any(void *dst, bool dst_dev, const void *src, bool src_dev, size_t bytes,
                   dvl_err *err);

/* A parameter store like src (same names, shapes, order, trainability and
 * layout) with its buffers on `device`, the data copied; gradients zero.
 * NULL with err set on failure. */
dvl_params *dvl_params_to_device(const dvl_params *src, dvl_device device, dvl_err *err);
/* Move an allocated store's buffers to `device` in place: the same tensor
 * objects (so a model holding them follows), data and gradients copied,
 * the old buffers freed. On failure the store is unchanged. Anything made
 * over the store's buffers before (an optimizer's moments, a gradient sync)
 * must be made again after. */
int dvl_params_move(dvl_params *p, dvl_device device, dvl_err *err);
/* The store's flat data (numel floats) / gradient (numel_grad floats) into
 * host memory, whatever its device. */
int dvl_params_data_to_host(const dvl_params *p, float *host, dvl_err *err);
int dvl_params_grad_to_host(const dvl_params *p, float *host, dvl_err *err);
/* numel floats of host memory into the store's data, whatever its device;
 * the bf16 copies of a store that keeps them are made again. */
int dvl_params_data_from_host(dvl_params *p, const float *host, dvl_err *err);

/* bf16 copies of parameters, for bf16 mixed precision (DVL_MATH_BF16): the
 * products that read a weight with a copy take the copy (dvl_bf16_copy)
 * instead of rounding the f32 weight to bf16 again at every call, which is
 * a pass of 6 bytes per weight per product: forward, backward dx and every
 * recomputed layer, every micro batch. The copies are bit for bit what each
 * call's rounding gives (the same kernel on CUDA), so results do not change.
 *   DVL_BF16_FROZEN  copies of the frozen parameters (the whole LM in stage
 *                    1, a frozen tower): 2 bytes per frozen element; they
 *                    never go stale in training.
 *   DVL_BF16_ALL     of every parameter: 2 bytes per element; the trainable
 *                    ones' copies must be made again after each update
 *                    (dvl_params_refresh_bf16).
 * The store makes its copies again itself when it writes its data
 * (dvl_params_data_from_host, dvl_params_move; dvl_params_to_device's new
 * store keeps the same); code that writes a parameter's data any other way
 * (an optimizer step, a gather) must call dvl_params_refresh_bf16 (trainable
 * parameters) or this again (any). Allocated store, any device; calling it
 * again refreshes; DVL_BF16_NONE drops them. */
int dvl_params_keep_bf16(dvl_params *p, dvl_bf16_copies mode, dvl_err *err);
/* Round the trainable parameters' copies again (DVL_BF16_ALL; nothing
 * otherwise): after an optimizer step or a gather of the weights. */
int dvl_params_refresh_bf16(dvl_params *p, dvl_err *err);
/* Free the copies; the store keeps none from here on. */
void dvl_params_drop_bf16(dvl_params *p);

#endif
