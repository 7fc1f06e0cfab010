/* Elementwise ops and the full sum: shape checks, tape records, dispatch to
 * the device kernels (ops/cpu/elementwise.c). */
#include <stdint.h>

#include "ops/cpu/elementwise.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* x must be an f32 tensor (all ops compute in f32). */
static bool check_f32(dvl_ctx *ctx, const char *op, const char *role, const dvl_tensor *x)
{
    if (x->dtype == DVL_F32)
        return true;
    dvl_fail(ctx, "%s: %s %s is %s, expected f32", op, role, dvl_tname(x),
             dvl_dtype_name(x->dtype));
    return false;
}

/* a and b must have one shape (no broadcasting) and live on one device. */
static bool check_pair(dvl_ctx *ctx, const char *op, const char *ra, const dvl_tensor *a,
                       const char *rb, const dvl_tensor *b)
{
    if (!check_f32(ctx, op, ra, a) || !check_f32(ctx, op, rb, b))
        return false;
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (!same) {
        char sa[64], sb[64];
        dvl_fail(ctx, "%s: %s %s has shape %s but %s %s has shape %s", op, ra, dvl_tname(a),
                 dvl_shape_str(a, sa, sizeof sa), rb, dvl_tname(b),
                 dvl_shape_str(b, sb, sizeof sb));
        return false;
    }
    if (a->device != b->device) {
        dvl_fail(ctx, "%s: %s %s and %s %s are on different devices", op, ra, dvl_tname(a), rb,
                 dvl_tname(b));
        return false;
    }
    return true;
}

/* The output of a one-input op: x checked, then a new tensor of its shape.
 * NULL when x is NULL, fails the check, or memory runs out. */
static dvl_tensor *unary_out(dvl_ctx *ctx, const char *op, const char *role, dvl_tensor *x)
{
    if (!x || !check_f32(ctx, op, role, x))
        return NULL;
    return dvl_new(ctx, DVL_F32, x->ndim, x->shape);
}

/* The output of a two-input op: a and b checked as a pair, then a new
 * tensor of their shape. */
static dvl_tensor *binary_out(dvl_ctx *ctx, const char *op, const char *ra, dvl_tensor *a,
                              const char *rb, dvl_tensor *b)
{
    if (!a || !b || !check_pair(ctx, op, ra, a, rb, b))
        return NULL;
    return dvl_new(ctx, DVL_F32, a->ndim, a->shape);
}

/* Puts y = op(a) (b NULL) or op(a, b) on the tape when an input needs a
 * gradient, for the ops whose backward needs nothing saved beyond their
 * inputs. False when recording fails. */
static bool record(dvl_ctx *ctx, const char *op, dvl_backward_fn backward, dvl_tensor *y,
                   dvl_tensor *a, dvl_tensor *b)
{
    dvl_tensor *in[2] = {a, b};
    int n = b ? 2 : 1;
    return !dvl_needs_grad(ctx, in, n) || dvl_record(ctx, op, backward, y, in, n);
}

/* The gradient buffer of in[k] when it requires one, else NULL (frozen
 * inputs never get a buffer). *ok turns false on out-of-memory. */
static float *grad_of(dvl_ctx *ctx, dvl_node *node, int k, bool *ok)
{
    dvl_tensor *t = node->in[k];
    if (!t->requires_grad)
        return NULL;
    float *g = dvl_grad(ctx, t);
    if (!g)
        *ok = false;
    return g;
}

/* Two gradient ranges of n floats that overlap without being the same range
 * (two different views of one buffer) cannot be updated in one parallel
 * loop without a race; the backward functions then make two calls. */
static bool overlap_unequal(const float *p, const float *q, int64_t n)
{
    if (!p || !q || p == q)
        return false;
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)q, len = (uintptr_t)n * sizeof(float);
    return a < b + len && b < a + len;
}

/* ------------------------------------------------------------------ add */

static void add_backward(dvl_ctx *ctx, dvl_node *node)
{
    int64_t n = dvl_numel(node->out);
    const float *gy = dvl_grad(ctx, node->out);
    bool ok = gy != NULL;
    float *ga = grad_of(ctx, node, 0, &ok), *gb = grad_of(ctx, node, 1, &ok);
    if (!ok)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        if (overlap_unequal(ga, gb, n)) {
            dvl_cpu_add_bwd(ga, NULL, gy, n);
            dvl_cpu_add_bwd(NULL, gb, gy, n);
        } else {
            dvl_cpu_add_bwd(ga, gb, gy, n);
        }
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        if (overlap_unequal(ga, gb, n)) { /* two launches, ordered by the stream */
            dvl_cuda_add_bwd(ga, NULL, gy, n);
            dvl_cuda_add_bwd(NULL, gb, gy, n);
        } else {
            dvl_cuda_add_bwd(ga, gb, gy, n);
        }
        dvl_ctx_check(ctx, "add backward");
        break;
#endif
    default:
        dvl_fail(ctx, "add backward: device not supported");
    }
}

dvl_tensor *dvl_add(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b)
{
    dvl_tensor *y = binary_out(ctx, "add", "a", a, "b", b);
    if (!y)
        return NULL;
    switch (a->device) {
    case DVL_CPU:
        dvl_cpu_add_fwd(dvl_f32(y), dvl_f32(a), dvl_f32(b), dvl_numel(y));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_add_fwd(dvl_f32(y), dvl_f32(a), dvl_f32(b), dvl_numel(y));
        if (!dvl_ctx_check(ctx, "add"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "add: device not supported");
    }
    return record(ctx, "add", add_backward, y, a, b) ? y : NULL;
}

/* ------------------------------------------------------------------ mul */

static void mul_backward(dvl_ctx *ctx, dvl_node *node)
{
    int64_t n = dvl_numel(node->out);
    const float *gy = dvl_grad(ctx, node->out);
    const float *a = dvl_f32(node->in[0]), *b = dvl_f32(node->in[1]);
    bool ok = gy != NULL;
    float *ga = grad_of(ctx, node, 0, &ok), *gb = grad_of(ctx, node, 1, &ok);
    if (!ok)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        if (overlap_unequal(ga, gb, n)) {
            dvl_cpu_mul_bwd(ga, NULL, gy, a, b, n);
            dvl_cpu_mul_bwd(NULL, gb, gy, a, b, n);
        } else {
            dvl_cpu_mul_bwd(ga, gb, gy, a, b, n);
        }
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        if (overlap_unequal(ga, gb, n)) {
            dvl_cuda_mul_bwd(ga, NULL, gy, a, b, n);
            dvl_cuda_mul_bwd(NULL, gb, gy, a, b, n);
        } else {
            dvl_cuda_mul_bwd(ga, gb, gy, a, b, n);
        }
        dvl_ctx_check(ctx, "mul backward");
        break;
#endif
    default:
        dvl_fail(ctx, "mul backward: device not supported");
    }
}

dvl_tensor *dvl_mul(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b)
{
    dvl_tensor *y = binary_out(ctx, "mul", "a", a, "b", b);
    if (!y)
        return NULL;
    switch (a->device) {
    case DVL_CPU:
        dvl_cpu_mul_fwd(dvl_f32(y), dvl_f32(a), dvl_f32(b), dvl_numel(y));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_mul_fwd(dvl_f32(y), dvl_f32(a), dvl_f32(b), dvl_numel(y));
        if (!dvl_ctx_check(ctx, "mul"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "mul: device not supported");
    }
    return record(ctx, "mul", mul_backward, y, a, b) ? y : NULL;
}

/* ---------------------------------------------------------------- scale */

static void scale_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *ga = dvl_grad(ctx, node->in[0]);
    if (!gy || !ga)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        dvl_cpu_scale_bwd(ga, gy, node->f[0], dvl_numel(node->out));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_scale_bwd(ga, gy, node->f[0], dvl_numel(node->out));
        dvl_ctx_check(ctx, "scale backward");
        break;
#endif
    default:
        dvl_fail(ctx, "scale backward: device not supported");
    }
}

dvl_tensor *dvl_scale(dvl_ctx *ctx, dvl_tensor *a, float s)
{
    dvl_tensor *y = unary_out(ctx, "scale", "a", a);
    if (!y)
        return NULL;
    switch (a->device) {
    case DVL_CPU:
        dvl_cpu_scale_fwd(dvl_f32(y), dvl_f32(a), s, dvl_numel(y));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_scale_fwd(dvl_f32(y), dvl_f32(a), s, dvl_numel(y));
        if (!dvl_ctx_check(ctx, "scale"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "scale: device not supported");
    }
    if (dvl_needs_grad(ctx, &a, 1)) {
        dvl_node *node = dvl_record(ctx, "scale", scale_backward, y, &a, 1);
        if (!node)
            return NULL;
        node->f[0] = s;
    }
    return y;
}

/* ----------------------------------------------------------------- silu */

static void silu_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, node->in[0]);
    if (!gy || !gx)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        dvl_cpu_silu_bwd(gx, gy, dvl_f32(node->in[0]), dvl_numel(node->out));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_silu_bwd(gx, gy, dvl_f32(node->in[0]), dvl_numel(node->out));
        dvl_ctx_check(ctx, "silu backward");
        break;
#endif
    default:
        dvl_fail(ctx, "silu backward: device not supported");
    }
}

dvl_tensor *dvl_silu(dvl_ctx *ctx, dvl_tensor *x)
{
    dvl_tensor *y = unary_out(ctx, "silu", "x", x);
    if (!y)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_silu_fwd(dvl_f32(y), dvl_f32(x), dvl_numel(y));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_silu_fwd(dvl_f32(y), dvl_f32(x), dvl_numel(y));
        if (!dvl_ctx_check(ctx, "silu"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "silu: device not supported");
    }
    return record(ctx, "silu", silu_backward, y, x, NULL) ? y : NULL;
}

/* --------------------------------------------------------------- swiglu */
/* Both forms run one kernel pair on [rows, cols] with gate and up rows ld
 * floats apart: two tensors (rows 1, cols = ld = n) or the halves of one
 * (ld = 2 cols). */

static bool swiglu_fwd_dev(dvl_ctx *ctx, dvl_tensor *y, const float *gate, const float *up,
                           int64_t rows, int64_t cols, int64_t ld)
{
    switch (y->device) {
    case DVL_CPU:
        dvl_cpu_swiglu_fwd(dvl_f32(y), gate, up, rows, cols, ld);
        return true;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_swiglu_fwd(dvl_f32(y), gate, up, rows, cols, ld);
        return dvl_ctx_check(ctx, "swiglu");
#endif
    default:
        dvl_fail(ctx, "swiglu: device not supported");
        return false;
    }
}

static void swiglu_bwd_dev(dvl_ctx *ctx, dvl_device dev, float *gg, float *gu, const float *gy,
                           const float *gate, const float *up, int64_t rows, int64_t cols,
                           int64_t ld)
{
    switch (dev) {
    case DVL_CPU:
        dvl_cpu_swiglu_bwd(gg, gu, gy, gate, up, rows, cols, ld);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_swiglu_bwd(gg, gu, gy, gate, up, rows, cols, ld);
        dvl_ctx_check(ctx, "swiglu backward");
        break;
#endif
    default:
        dvl_fail(ctx, "swiglu backward: device not supported");
    }
}

static void swiglu_backward(dvl_ctx *ctx, dvl_node *node)
{
    int64_t n = dvl_numel(node->out);
    const float *gy = dvl_grad(ctx, node->out);
    const float *gate = dvl_f32(node->in[0]), *up = dvl_f32(node->in[1]);
    bool ok = gy != NULL;
    float *gg = grad_of(ctx, node, 0, &ok), *gu = grad_of(ctx, node, 1, &ok);
    if (!ok)
        return;
    if (overlap_unequal(gg, gu, n)) {
        swiglu_bwd_dev(ctx, node->out->device, gg, NULL, gy, gate, up, 1, n, n);
        swiglu_bwd_dev(ctx, node->out->device, NULL, gu, gy, gate, up, 1, n, n);
    } else {
        swiglu_bwd_dev(ctx, node->out->device, gg, gu, gy, gate, up, 1, n, n);
    }
}

dvl_tensor *dvl_swiglu(dvl_ctx *ctx, dvl_tensor *gate, dvl_tensor *up)
{
    dvl_tensor *y = binary_out(ctx, "swiglu", "gate", gate, "up", up);
    if (!y)
        return NULL;
    const int64_t n = dvl_numel(y);
    if (!swiglu_fwd_dev(ctx, y, dvl_f32(gate), dvl_f32(up), 1, n, n))
        return NULL;
    return record(ctx, "swiglu", swiglu_backward, y, gate, up) ? y : NULL;
}

static void swiglu_cat_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *gu = node->in[0];
    const int64_t rows = dvl_rows(node->out), cols = dvl_cols(node->out);
    const float *gy = dvl_grad(ctx, node->out);
    float *g = dvl_grad(ctx, gu);
    if (!gy || !g)
        return;
    swiglu_bwd_dev(ctx, gu->device, g, g + cols, gy, dvl_f32(gu), dvl_f32(gu) + cols, rows, cols,
                   2 * cols);
}

dvl_tensor *dvl_swiglu_cat(dvl_ctx *ctx, dvl_tensor *gate_up)
{
    if (!gate_up || !check_f32(ctx, "swiglu_cat", "gate_up", gate_up))
        return NULL;
    char s[64];
    if (gate_up->ndim < 1 || dvl_cols(gate_up) % 2)
        return dvl_fail(ctx, "swiglu_cat: gate_up %s %s must have an even last dimension",
                        dvl_tname(gate_up), dvl_shape_str(gate_up, s, sizeof s));
    const int64_t rows = dvl_rows(gate_up), cols = dvl_cols(gate_up) / 2;
    int64_t shape[DVL_MAX_DIMS];
    for (int k = 0; k < gate_up->ndim; k++)
        shape[k] = gate_up->shape[k];
    shape[gate_up->ndim - 1] = cols;
    dvl_tensor *y = dvl_new(ctx, DVL_F32, gate_up->ndim, shape);
    if (!y)
        return NULL;
    if (!swiglu_fwd_dev(ctx, y, dvl_f32(gate_up), dvl_f32(gate_up) + cols, rows, cols, 2 * cols))
        return NULL;
    return record(ctx, "swiglu_cat", swiglu_cat_backward, y, gate_up, NULL) ? y : NULL;
}

/* ----------------------------------------------------------------- gelu */

static void gelu_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, node->in[0]);
    if (!gy || !gx)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        dvl_cpu_gelu_bwd(gx, gy, dvl_f32(node->in[0]), (int)node->i[0], dvl_numel(node->out));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_gelu_bwd(gx, gy, dvl_f32(node->in[0]), (int)node->i[0], dvl_numel(node->out));
        dvl_ctx_check(ctx, "gelu backward");
        break;
#endif
    default:
        dvl_fail(ctx, "gelu backward: device not supported");
    }
}

dvl_tensor *dvl_gelu(dvl_ctx *ctx, dvl_tensor *x, dvl_gelu_kind kind)
{
    if (!x)
        return NULL;
    if (kind != DVL_GELU_ERF && kind != DVL_GELU_TANH)
        return dvl_fail(ctx, "gelu: unknown kind %d for %s", (int)kind, dvl_tname(x));
    dvl_tensor *y = unary_out(ctx, "gelu", "x", x);
    if (!y)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_gelu_fwd(dvl_f32(y), dvl_f32(x), (int)kind, dvl_numel(y));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_gelu_fwd(dvl_f32(y), dvl_f32(x), (int)kind, dvl_numel(y));
        if (!dvl_ctx_check(ctx, "gelu"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "gelu: device not supported");
    }
    if (dvl_needs_grad(ctx, &x, 1)) {
        dvl_node *node = dvl_record(ctx, "gelu", gelu_backward, y, &x, 1);
        if (!node)
            return NULL;
        node->i[0] = kind;
    }
    return y;
}

/* ------------------------------------------------------------------ sum */

static void sum_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, node->in[0]);
    if (!gy || !gx)
        return;
    switch (node->out->device) {
    case DVL_CPU:
        dvl_cpu_sum_bwd(gx, gy, dvl_numel(node->in[0]));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_sum_bwd(gx, gy, dvl_numel(node->in[0]));
        dvl_ctx_check(ctx, "sum backward");
        break;
#endif
    default:
        dvl_fail(ctx, "sum backward: device not supported");
    }
}

dvl_tensor *dvl_sum(dvl_ctx *ctx, dvl_tensor *x)
{
    if (!x)
        return NULL;
    if (!check_f32(ctx, "sum", "x", x))
        return NULL;
    int64_t one = 1, n = dvl_numel(x);
    dvl_tensor *y = dvl_new(ctx, DVL_F32, 1, &one);
    double *partial = dvl_alloc(ctx, (size_t)dvl_cpu_sum_partials(n) * sizeof(double));
    if (!y || !partial)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_sum_fwd(dvl_f32(y), partial, dvl_f32(x), n);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_sum_fwd(dvl_f32(y), dvl_f32(x), n);
        if (!dvl_ctx_check(ctx, "sum"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "sum: device not supported");
    }
    return record(ctx, "sum", sum_backward, y, x, NULL) ? y : NULL;
}
