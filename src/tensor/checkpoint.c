/* Activation checkpointing (tensor.h, dvl_checkpoint): a block of ops whose
 * activations are dropped after the forward pass and recomputed during
 * backward, the arena rewound around both. */
#include <string.h>

#include "tensor/tensor.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

typedef struct block {
    dvl_block_fn fn;
    const void *user;
} block;

/* dst += src over n floats of the context's device. */
static bool acc(dvl_ctx *ctx, float *dst, const float *src, int64_t n)
{
    if (dvl_ctx_device(ctx) == DVL_CPU) {
        for (int64_t i = 0; i < n; i++)
            dst[i] += src[i];
        return true;
    }
#ifdef DVL_HAVE_CUDA
    dvl_cuda_add_bwd(dst, NULL, src, n);
    return dvl_ctx_check(ctx, "checkpoint gradient");
#else
    return false;
#endif
}

/* y = fn(x) again with grad mode on, y's gradient pushed through it, x's
 * gradient added; then the recomputation's tape nodes and arena dropped. */
static void checkpoint_backward(dvl_ctx *ctx, dvl_node *node)
{
    /* Copies: the inner forward may grow (move) the tape under node. */
    const block b = *(const block *)node->p[0];
    dvl_tensor *x = node->in[0], *y = node->out;
    const float *gy = dvl_grad(ctx, y);
    /* x's gradient before the mark, so the rewind keeps it. */
    float *gx = x->requires_grad ? dvl_grad(ctx, x) : NULL;
    if (!gy || (x->requires_grad && !gx))
        return;
    const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
    const int lo = dvl_tape_len(ctx);
    const bool was = dvl_set_grad_enabled(ctx, true);
    dvl_tensor *xr = dvl_wrap(ctx, x->dtype, x->ndim, x->shape, x->data);
    if (xr)
        xr->requires_grad = x->requires_grad;
    dvl_tensor *yr = xr ? b.fn(ctx, b.user, xr) : NULL;
    dvl_set_grad_enabled(ctx, was);
    if (yr && yr->requires_grad) {
        float *g = dvl_grad(ctx, yr);
        if (g && acc(ctx, g, gy, dvl_numel(y)) && dvl_backward_nodes_from(ctx, lo) == DVL_OK &&
            gx && dvl_has_grad(xr))
            acc(ctx, gx, dvl_grad(ctx, xr), dvl_numel(x));
    }
    dvl_arena_rewind(ctx, mark);
}

dvl_tensor *dvl_checkpoint(dvl_ctx *ctx, dvl_block_fn fn, const void *user, dvl_tensor *x)
{
    if (!x)
        return NULL;
    if (!dvl_grad_enabled(ctx))
        return fn(ctx, user, x);
    /* The output and the node's state before the mark: they outlive it. */
    dvl_tensor *y = dvl_new(ctx, x->dtype, x->ndim, x->shape);
    block *b = dvl_alloc(ctx, sizeof *b);
    if (!y || !b)
        return NULL;
    *b = (block){fn, user};
    /* fn runs with grad mode on, as it will in backward, so that its tape
     * nodes say which trainable parameters it uses (the gradient-ready
     * hook reports them after this node's backward); the nodes are dropped
     * unrun, the arena rewound: only y stays. */
    const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
    const int lo = dvl_tape_len(ctx);
    dvl_tensor *yb = fn(ctx, user, x);
    int64_t params_at = 0;
    int n_params = 0;
    if (dvl_tape_drop_from(ctx, lo, &params_at, &n_params) != DVL_OK)
        yb = NULL;
    if (yb && (dvl_numel(yb) != dvl_numel(x) || yb->dtype != x->dtype)) {
        char s1[64], s2[64];
        dvl_fail(ctx, "checkpoint: the block maps %s to %s; it must keep the shape",
                 dvl_shape_str(x, s1, sizeof s1), dvl_shape_str(yb, s2, sizeof s2));
        yb = NULL;
    }
    const bool trainable = yb && yb->requires_grad;
    if (yb) {
        const size_t bytes = (size_t)dvl_numel(x) * dvl_dtype_size(x->dtype);
        if (dvl_ctx_device(ctx) == DVL_CPU) {
            memcpy(y->data, yb->data, bytes);
        } else {
#ifdef DVL_HAVE_CUDA
            dvl_err e = {0, ""};
            if (dvl_cuda_memcpy_d2d(y->data, yb->data, bytes, &e) != DVL_OK) {
                dvl_ctx_set_err(ctx, &e);
                yb = NULL;
            }
#endif
        }
    }
    dvl_arena_rewind(ctx, mark);
    if (!yb)
        return NULL;
    if (!trainable) /* nothing in the block or before it is trained */
        return y;
    dvl_node *node = dvl_record(ctx, "checkpoint", checkpoint_backward, y, &x, 1);
    if (!node)
        return NULL;
    node->p[0] = b;
    node->params_at = params_at;
    node->n_params = n_params;
    return y;
}
