/* RMSNorm and LayerNorm over the last dimension: shape checks, tape records,
 * dispatch to the device kernels (ops/cpu/norm.c). The forward kernel saves
 * rstd (and mean) per row in the arena for the backward. */
#include "ops/cpu/norm.h"
#include "ops/dev.h"
#include "ops/ops.h"

static bool check_f32(dvl_ctx *ctx, const char *op, const char *role, const dvl_tensor *t)
{
    if (t->dtype == DVL_F32)
        return true;
    dvl_fail(ctx, "%s: %s %s is %s, expected f32", op, role, dvl_tname(t),
             dvl_dtype_name(t->dtype));
    return false;
}

/* A per-column parameter (weight or bias) must be [cols], f32, on x's device. */
static bool check_param(dvl_ctx *ctx, const char *op, const char *role, const dvl_tensor *p,
                        const dvl_tensor *x)
{
    if (!check_f32(ctx, op, role, p))
        return false;
    char sx[64], sp[64];
    if (p->ndim != 1 || p->shape[0] != dvl_cols(x)) {
        dvl_fail(ctx, "%s: x %s %s has %lld cols but %s %s has shape %s (expected [%lld])", op,
                 dvl_tname(x), dvl_shape_str(x, sx, sizeof sx), (long long)dvl_cols(x), role,
                 dvl_tname(p), dvl_shape_str(p, sp, sizeof sp), (long long)dvl_cols(x));
        return false;
    }
    if (p->device != x->device) {
        dvl_fail(ctx, "%s: %s %s and x %s are on different devices", op, role, dvl_tname(p),
                 dvl_tname(x));
        return false;
    }
    return true;
}

static bool check_x(dvl_ctx *ctx, const char *op, const dvl_tensor *x)
{
    if (!check_f32(ctx, op, "x", x))
        return false;
    if (x->ndim < 1) {
        dvl_fail(ctx, "%s: x %s is a scalar, needs a last dimension", op, dvl_tname(x));
        return false;
    }
    return true;
}

/* Gradient buffer of t if it requires one, else NULL; *ok false on OOM. */
static float *grad_if(dvl_ctx *ctx, dvl_tensor *t, bool *ok)
{
    if (!t || !t->requires_grad)
        return NULL;
    float *g = dvl_grad(ctx, t);
    if (!g)
        *ok = false;
    return g;
}

/* -------------------------------------------------------------- rmsnorm */

/* Saved: p[0] = rstd per row. */
static void rmsnorm_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *w = node->in[1];
    const float *gy = dvl_grad(ctx, node->out);
    bool ok = gy != NULL;
    float *gx = grad_if(ctx, x, &ok), *gw = grad_if(ctx, w, &ok);
    if (!ok)
        return;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_rmsnorm_bwd(gx, gw, gy, dvl_f32(x), dvl_f32(w), node->p[0], dvl_rows(x),
                            dvl_cols(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        /* the weight's partial sums, given back once the kernels are queued */
        const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
        float *scratch =
            gw ? dvl_alloc_dev(ctx, (size_t)dvl_cuda_rmsnorm_bwd_scratch(dvl_rows(x), dvl_cols(x)) *
                                        sizeof(float))
               : NULL;
        if (gw && !scratch)
            return;
        dvl_cuda_rmsnorm_bwd(gx, gw, scratch, gy, dvl_f32(x), dvl_f32(w), node->p[0],
                             dvl_rows(x), dvl_cols(x));
        dvl_ctx_check(ctx, "rmsnorm backward");
        dvl_arena_rewind(ctx, mark);
        break;
    }
#endif
    default:
        dvl_fail(ctx, "rmsnorm backward: device not supported");
    }
}

dvl_tensor *dvl_rmsnorm(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, float eps)
{
    if (!x || !w)
        return NULL;
    if (!check_x(ctx, "rmsnorm", x) || !check_param(ctx, "rmsnorm", "weight", w, x))
        return NULL;
    int64_t rows = dvl_rows(x), cols = dvl_cols(x);
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, x->shape);
    float *rstd = dvl_alloc_dev(ctx, (size_t)rows * sizeof(float));
    if (!y || !rstd)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_rmsnorm_fwd(dvl_f32(y), rstd, dvl_f32(x), dvl_f32(w), rows, cols, eps);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_rmsnorm_fwd(dvl_f32(y), rstd, dvl_f32(x), dvl_f32(w), rows, cols, eps);
        if (!dvl_ctx_check(ctx, "rmsnorm"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "rmsnorm: device not supported");
    }
    dvl_tensor *in[2] = {x, w};
    if (dvl_needs_grad(ctx, in, 2)) {
        dvl_node *node = dvl_record(ctx, "rmsnorm", rmsnorm_backward, y, in, 2);
        if (!node)
            return NULL;
        node->p[0] = rstd;
    }
    return y;
}

/* ------------------------------------------------------------ layernorm */

/* Saved: p[0] = mean, p[1] = rstd per row; in[2] = bias or NULL. */
static void layernorm_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
    const float *gy = dvl_grad(ctx, node->out);
    bool ok = gy != NULL;
    float *gx = grad_if(ctx, x, &ok), *gw = grad_if(ctx, w, &ok), *gb = grad_if(ctx, b, &ok);
    if (!ok)
        return;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_layernorm_bwd(gx, gw, gb, gy, dvl_f32(x), dvl_f32(w), node->p[0], node->p[1],
                              dvl_rows(x), dvl_cols(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_layernorm_bwd(gx, gw, gb, gy, dvl_f32(x), dvl_f32(w), node->p[0], node->p[1],
                               dvl_rows(x), dvl_cols(x));
        dvl_ctx_check(ctx, "layernorm backward");
        break;
#endif
    default:
        dvl_fail(ctx, "layernorm backward: device not supported");
    }
}

/* b may be NULL: a LayerNorm without bias (torch bias=False). */
dvl_tensor *dvl_layernorm(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, dvl_tensor *b, float eps)
{
    if (!x || !w)
        return NULL;
    if (!check_x(ctx, "layernorm", x) || !check_param(ctx, "layernorm", "weight", w, x))
        return NULL;
    if (b && !check_param(ctx, "layernorm", "bias", b, x))
        return NULL;
    int64_t rows = dvl_rows(x), cols = dvl_cols(x);
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, x->shape);
    float *mean = dvl_alloc_dev(ctx, (size_t)rows * sizeof(float));
    float *rstd = dvl_alloc_dev(ctx, (size_t)rows * sizeof(float));
    if (!y || !mean || !rstd)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_layernorm_fwd(dvl_f32(y), mean, rstd, dvl_f32(x), dvl_f32(w),
                              b ? dvl_f32(b) : NULL, rows, cols, eps);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_layernorm_fwd(dvl_f32(y), mean, rstd, dvl_f32(x), dvl_f32(w),
                               b ? dvl_f32(b) : NULL, rows, cols, eps);
        if (!dvl_ctx_check(ctx, "layernorm"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "layernorm: device not supported");
    }
    dvl_tensor *in[3] = {x, w, b};
    if (dvl_needs_grad(ctx, in, 3)) {
        dvl_node *node = dvl_record(ctx, "layernorm", layernorm_backward, y, in, 3);
        if (!node)
            return NULL;
        node->p[0] = mean;
        node->p[1] = rstd;
    }
    return y;
}
