/* Linear layer y = x W^T + b (torch.nn.functional.linear): x [..., in],
 * W [out, in], b [out] or NULL, y [..., out]. All leading dimensions of x are
 * one matrix of rows, so the layer is a single matrix product each way. */
#include <limits.h>

#include "ops/cpu/linear.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* Backward of y = x W^T + b with g = dL/dy:
 *   dL/dx = g W,   dL/dW = g^T x,   dL/db = column sums of g.
 * Only inputs that require a gradient get one: a frozen weight keeps no
 * gradient buffer while the gradient still flows on to x. */
static void linear_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *w = node->in[1], *b = node->n_in > 2 ? node->in[2] : NULL;
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
        dvl_dev_linear_bwd(ctx, dx, dw, db, dy, dvl_f32(x), dvl_f32(w), rows, in, out);
        break;
#endif
    default:
        dvl_fail(ctx, "linear: device not supported");
    }
}

dvl_tensor *dvl_linear(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, dvl_tensor *b)
{
    if (!x || !w)
        return NULL;
    char sx[64], sw[64], sb[64];
    if (x->dtype != DVL_F32 || w->dtype != DVL_F32 || (b && b->dtype != DVL_F32))
        return dvl_fail(ctx, "linear: x %s (%s), weight %s (%s)%s%s must be f32", dvl_tname(x),
                        dvl_dtype_name(x->dtype), dvl_tname(w), dvl_dtype_name(w->dtype),
                        b ? " and bias " : "", b ? dvl_tname(b) : "");
    if (w->device != x->device || (b && b->device != x->device))
        return dvl_fail(ctx, "linear: x %s, weight %s%s%s are on different devices", dvl_tname(x),
                        dvl_tname(w), b ? " and bias " : "", b ? dvl_tname(b) : "");
    if (w->ndim != 2)
        return dvl_fail(ctx, "linear: weight %s must be [out, in], has shape %s", dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw));
    int64_t out = w->shape[0], in = w->shape[1];
    if (x->ndim < 1 || dvl_cols(x) != in)
        return dvl_fail(ctx, "linear: x %s %s has %lld features but weight %s %s takes %lld",
                        dvl_tname(x), dvl_shape_str(x, sx, sizeof sx),
                        (long long)(x->ndim ? dvl_cols(x) : 0), dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw), (long long)in);
    if (b && (b->ndim != 1 || b->shape[0] != out))
        return dvl_fail(ctx, "linear: bias %s %s does not match weight %s %s (want [%lld])",
                        dvl_tname(b), dvl_shape_str(b, sb, sizeof sb), dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw), (long long)out);
    int64_t rows = dvl_rows(x);
    /* BLAS takes int dimensions. */
    if (rows > INT_MAX || in > INT_MAX || out > INT_MAX)
        return dvl_fail(ctx, "linear: x %s %s times weight %s %s exceeds BLAS int dimensions",
                        dvl_tname(x), dvl_shape_str(x, sx, sizeof sx), dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw));

    int64_t shape[DVL_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    shape[x->ndim - 1] = out;
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, shape);
    if (!y)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_linear_fwd(dvl_f32(y), dvl_f32(x), dvl_f32(w), b ? dvl_f32(b) : NULL, rows, in,
                           out);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        if (!dvl_dev_linear_fwd(ctx, dvl_f32(y), dvl_f32(x), dvl_f32(w), b ? dvl_f32(b) : NULL,
                                rows, in, out))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "linear: device not supported");
    }

    dvl_tensor *ins[3] = {x, w, b};
    int n_in = b ? 3 : 2;
    if (dvl_needs_grad(ctx, ins, n_in)) {
        /* Backward reads x and W in place: no copy is saved. */
        dvl_node *node = dvl_record(ctx, "linear", linear_backward, y, ins, n_in);
        if (!node)
            return NULL;
        node->i[0] = rows;
        node->i[1] = in;
        node->i[2] = out;
    }
    return y;
}
