/* Linear layer y = x W^T + b (torch.nn.functional.linear): x [..., in],
 * W [out, in], b [out] or NULL, y [..., out]. All leading dimensions of x are
 * one matrix of rows, so the layer is a single matrix product each way. */
#include <limits.h>

#include "ops/cpu/linear.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* The node's inputs: x, then the n weights, then their n biases (if any);
 * i[] = rows, in, out (all weights' rows together), n; p[0] the weights'
 * bf16 copy (dvl_bf16_copy_group) or NULL. The weights (and
 * biases) are consecutive in memory, as are the gradients of trainable
 * ones, so the first of each stands for the concatenated matrix (vector):
 * one product each way. */
static dvl_tensor *weight0(const dvl_node *node) { return node->in[1]; }
static dvl_tensor *bias0(const dvl_node *node)
{
    return node->n_in > 1 + node->i[3] ? node->in[1 + node->i[3]] : NULL;
}

/* Backward of y = x W^T + b with g = dL/dy:
 *   dL/dx = g W,   dL/dW = g^T x,   dL/db = column sums of g.
 * Only inputs that require a gradient get one: a frozen weight keeps no
 * gradient buffer while the gradient still flows on to x. */
static void linear_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *w = weight0(node), *b = bias0(node);
    int64_t rows = node->i[0], in = node->i[1], out = node->i[2];
    const float *dy = dvl_grad(ctx, node->out);
    float *dx = x->requires_grad ? dvl_grad(ctx, x) : NULL;
    float *dw = w->requires_grad ? dvl_grad(ctx, w) : NULL;
    float *db = b && b->requires_grad ? dvl_grad(ctx, b) : NULL;
    if (!dy || (x->requires_grad && !dx) || (w->requires_grad && !dw) ||
        (b && b->requires_grad && !db))
        return; /* out of memory, reported by the arena */
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_linear_bwd(dx, dw, db, dy, dvl_f32(x), dvl_f32(w), rows, in, out);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: /* f32, TF32 or bf16 products: the context's math mode */
        dvl_dev_linear_bwd(ctx, dx, dw, db, dy, dvl_f32(x), dvl_f32(w), node->p[0], rows, in,
                           out);
        break;
#endif
    default:
        dvl_fail(ctx, "linear: device not supported");
    }
}

/* t[k] directly follows t[k-1] in memory, and so will its gradient when
 * the group trains (all or none of it: a mixed group has no one gradient
 * matrix): parameters declared one after the other in a store (their
 * gradients are consecutive in its flat buffer, tensor.h), or consecutive
 * views of one tensor (their gradients are views of its gradient). */
static bool consecutive(dvl_tensor *const *t, int n)
{
    for (int k = 1; k < n; k++) {
        const dvl_tensor *a = t[k - 1], *c = t[k];
        if (a->requires_grad != c->requires_grad || dvl_f32(c) != dvl_f32(a) + dvl_numel(a))
            return false;
        if (!a->requires_grad)
            continue;
        if (a->base || c->base) {
            if (a->base != c->base || c->offset != a->offset + dvl_numel(a))
                return false;
        } else if (!a->grad || c->grad != a->grad + dvl_numel(a)) {
            return false;
        }
    }
    return true;
}

bool dvl_linear_cat_ok(int n, dvl_tensor *const *w, dvl_tensor *const *b)
{
    if (n < 1 || n > DVL_LINEAR_CAT_MAX || !w)
        return false;
    for (int k = 0; k < n; k++)
        if (!w[k] || (b && !b[k]))
            return false;
    return consecutive(w, n) && (!b || consecutive(b, n));
}

/* One weight (and its bias, or NULL) fits x: f32, one device, [out, x cols]. */
static bool check_weight(dvl_ctx *ctx, const char *op, const dvl_tensor *x, const dvl_tensor *w,
                         const dvl_tensor *b)
{
    char sx[64], sw[64], sb[64];
    if (x->dtype != DVL_F32 || w->dtype != DVL_F32 || (b && b->dtype != DVL_F32)) {
        dvl_fail(ctx, "%s: x %s (%s), weight %s (%s)%s%s must be f32", op, dvl_tname(x),
                 dvl_dtype_name(x->dtype), dvl_tname(w), dvl_dtype_name(w->dtype),
                 b ? " and bias " : "", b ? dvl_tname(b) : "");
        return false;
    }
    if (w->device != x->device || (b && b->device != x->device)) {
        dvl_fail(ctx, "%s: x %s, weight %s%s%s are on different devices", op, dvl_tname(x),
                 dvl_tname(w), b ? " and bias " : "", b ? dvl_tname(b) : "");
        return false;
    }
    if (w->ndim != 2) {
        dvl_fail(ctx, "%s: weight %s must be [out, in], has shape %s", op, dvl_tname(w),
                 dvl_shape_str(w, sw, sizeof sw));
        return false;
    }
    int64_t out = w->shape[0], in = w->shape[1];
    if (x->ndim < 1 || dvl_cols(x) != in) {
        dvl_fail(ctx, "%s: x %s %s has %lld features but weight %s %s takes %lld", op,
                 dvl_tname(x), dvl_shape_str(x, sx, sizeof sx),
                 (long long)(x->ndim ? dvl_cols(x) : 0), dvl_tname(w),
                 dvl_shape_str(w, sw, sizeof sw), (long long)in);
        return false;
    }
    if (b && (b->ndim != 1 || b->shape[0] != out)) {
        dvl_fail(ctx, "%s: bias %s %s does not match weight %s %s (want [%lld])", op,
                 dvl_tname(b), dvl_shape_str(b, sb, sizeof sb), dvl_tname(w),
                 dvl_shape_str(w, sw, sizeof sw), (long long)out);
        return false;
    }
    return true;
}

/* y = x [W_0; ...; W_{n-1}]^T + [b_0; ...] for checked, consecutive
 * weights and biases (b NULL: none), recorded with inputs x, w..., b.... */
static dvl_tensor *product(dvl_ctx *ctx, const char *op, dvl_tensor *x, int n,
                           dvl_tensor *const *w, dvl_tensor *const *b)
{
    int64_t rows = dvl_rows(x), in = w[0]->shape[1], out = 0;
    for (int k = 0; k < n; k++)
        out += w[k]->shape[0];
    char sx[64], sw[64];
    /* BLAS takes int dimensions. */
    if (rows > INT_MAX || in > INT_MAX || out > INT_MAX)
        return dvl_fail(ctx, "%s: x %s %s times weight %s %s exceeds BLAS int dimensions", op,
                        dvl_tname(x), dvl_shape_str(x, sx, sizeof sx), dvl_tname(w[0]),
                        dvl_shape_str(w[0], sw, sizeof sw));
    int64_t shape[DVL_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    shape[x->ndim - 1] = out;
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, shape);
    if (!y)
        return NULL;
    const float *bias = b ? dvl_f32(b[0]) : NULL;
    const uint16_t *w16 = dvl_bf16_copy_group(w, n); /* NULL: the products round W */
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_linear_fwd(dvl_f32(y), dvl_f32(x), dvl_f32(w[0]), bias, rows, in, out);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        if (!dvl_dev_linear_fwd(ctx, dvl_f32(y), dvl_f32(x), dvl_f32(w[0]), w16, bias, rows, in,
                                out))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "%s: device not supported", op);
    }

    dvl_tensor *ins[DVL_NODE_IN] = {x};
    int n_in = 1;
    for (int k = 0; k < n; k++)
        ins[n_in++] = w[k];
    for (int k = 0; b && k < n; k++)
        ins[n_in++] = b[k];
    if (dvl_needs_grad(ctx, ins, n_in)) {
        /* Backward reads x and W in place: no copy is saved. */
        dvl_node *node = dvl_record(ctx, op, linear_backward, y, ins, n_in);
        if (!node)
            return NULL;
        node->i[0] = rows;
        node->i[1] = in;
        node->i[2] = out;
        node->i[3] = n;
        node->p[0] = (void *)w16;
        if (dvl_ctx_profiling(ctx)) { /* dx = dy W, dW_k = dy_k^T x */
            const double f = 2.0 * (double)rows * (double)in;
            double bwd = x->requires_grad ? f * (double)out : 0.0;
            for (int k = 0; k < n; k++)
                bwd += w[k]->requires_grad ? f * (double)w[k]->shape[0] : 0.0;
            dvl_node_flops(ctx, node, f * (double)out, bwd);
        }
    }
    return y;
}

dvl_tensor *dvl_linear(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, dvl_tensor *b)
{
    if (!x || !w)
        return NULL;
    if (!check_weight(ctx, "linear", x, w, b))
        return NULL;
    return product(ctx, "linear", x, 1, &w, b ? &b : NULL);
}

dvl_tensor *dvl_linear_cat(dvl_ctx *ctx, dvl_tensor *x, int n, dvl_tensor *const *w,
                           dvl_tensor *const *b)
{
    if (!x || !w)
        return NULL;
    if (n < 1 || n > DVL_LINEAR_CAT_MAX)
        return dvl_fail(ctx, "linear_cat: %d weights, want 1 to %d", n, DVL_LINEAR_CAT_MAX);
    for (int k = 0; k < n; k++)
        if (!w[k] || (b && !b[k]))
            return NULL;
    for (int k = 0; k < n; k++)
        if (!check_weight(ctx, "linear_cat", x, w[k], b ? b[k] : NULL))
            return NULL;
    if (!consecutive(w, n) || (b && !consecutive(b, n))) {
        dvl_tensor *const *t = consecutive(w, n) ? b : w;
        int k = 1;
        while (consecutive(t, k + 1))
            k++;
        return dvl_fail(ctx,
                        "linear_cat: %s does not directly follow %s in memory%s (declare them "
                        "one after the other, all trainable or all frozen)",
                        dvl_tname(t[k]), dvl_tname(t[k - 1]),
                        t[k]->requires_grad != t[k - 1]->requires_grad
                            ? ": one trains, the other is frozen"
                            : "");
    }
    return product(ctx, "linear_cat", x, n, w, b);
}

void dvl_linear_group(dvl_ctx *ctx, dvl_tensor *x, int n, dvl_tensor *const *w,
                      dvl_tensor *const *b, dvl_tensor **y)
{
    if (dvl_linear_cat_ok(n, w, b)) {
        dvl_tensor *cat = dvl_linear_cat(ctx, x, n, w, b);
        int64_t col = 0;
        for (int k = 0; k < n; k++) {
            y[k] = dvl_slice_cols(ctx, cat, col, w[k]->shape[0]);
            col += w[k]->shape[0];
        }
        return;
    }
    for (int k = 0; k < n; k++)
        y[k] = dvl_linear(ctx, x, w[k], b ? b[k] : NULL);
}
