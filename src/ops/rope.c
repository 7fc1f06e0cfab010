/* Rotary position embedding: shape checks, the cos/sin tables in the arena
 * (made once per set of positions, kept for the backward), dispatch to the
 * device kernels (ops/cpu/rope.c, where the float32 rounding that matches HF
 * is explained). */
#include <math.h>

#include "ops/cpu/rope.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* Saved: p[0] = cos table, p[1] = sin table [tokens, D/2]; i[0..4] = tokens,
 * H, D, ld (floats between x's tokens) and the first column of x read. */
static void rope_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, node->in[0]);
    if (!gy || !gx)
        return;
    gx += node->i[4];
    const int64_t tokens = node->i[0], H = node->i[1], D = node->i[2], ld = node->i[3];
    switch (node->in[0]->device) {
    case DVL_CPU:
        dvl_cpu_rope_bwd(gx, gy, node->p[0], node->p[1], tokens, H, D, ld);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_rope_bwd(gx, gy, node->p[0], node->p[1], tokens, H, D, ld);
        dvl_ctx_check(ctx, "rope backward");
        break;
#endif
    default:
        dvl_fail(ctx, "rope backward: device not supported");
    }
}

/* y [N, T, H, D] (shape) = the rotation of the H D columns of x from column
 * `start` of each of its N T rows, which are ld floats long, by table t;
 * x's type and t's fit already checked. */
static dvl_tensor *rope(dvl_ctx *ctx, const char *op, dvl_tensor *x, int64_t start, int64_t ld,
                        const int64_t *shape, const dvl_rope_table *t)
{
    const int64_t tokens = shape[0] * shape[1], H = shape[2], D = shape[3];
    dvl_tensor *y = dvl_new(ctx, DVL_F32, 4, shape);
    if (!y)
        return NULL;
    const float *xs = dvl_f32(x) + start;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_rope_fwd(dvl_f32(y), xs, t->cos, t->sin, tokens, H, D, ld);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_rope_fwd(dvl_f32(y), xs, t->cos, t->sin, tokens, H, D, ld);
        if (!dvl_ctx_check(ctx, op))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "%s: device not supported", op);
    }
    if (dvl_needs_grad(ctx, &x, 1)) {
        dvl_node *node = dvl_record(ctx, op, rope_backward, y, &x, 1);
        if (!node)
            return NULL;
        /* the table lives in the arena until reset, as the node does */
        node->p[0] = (float *)t->cos;
        node->p[1] = (float *)t->sin;
        node->i[0] = tokens;
        node->i[1] = H;
        node->i[2] = D;
        node->i[3] = ld;
        node->i[4] = start;
    }
    return y;
}

const dvl_rope_table *dvl_rope_table_make(dvl_ctx *ctx, dvl_device device, const int32_t *pos,
                                          int64_t tokens, int64_t D, float theta)
{
    if (tokens < 0 || D <= 0 || D % 2 != 0)
        return dvl_fail(ctx, "rope table: %lld tokens of head size %lld (want an even size)",
                        (long long)tokens, (long long)D);
    if (!pos && tokens > 0)
        return dvl_fail(ctx, "rope table: positions are NULL");
    if (!(theta > 0.0f) || isinf(theta))
        return dvl_fail(ctx, "rope table: theta %g must be positive and finite", (double)theta);
    dvl_rope_table *t = dvl_alloc(ctx, sizeof *t);
    size_t bytes = (size_t)(tokens * (D / 2)) * sizeof(float);
    float *cos_t = dvl_alloc(ctx, bytes), *sin_t = dvl_alloc(ctx, bytes);
    float *inv_freq = dvl_alloc(ctx, (size_t)(D / 2) * sizeof(float));
    if (!t || !cos_t || !sin_t || !inv_freq)
        return NULL;
    dvl_cpu_rope_table(cos_t, sin_t, inv_freq, pos, tokens, D, theta);
    switch (device) {
    case DVL_CPU:
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        /* Made on the host by the CPU code (bit for bit its float32
         * angles), then copied once: a model's layers share it. */
        cos_t = dvl_dev_copy(ctx, cos_t, bytes);
        sin_t = dvl_dev_copy(ctx, sin_t, bytes);
        if (!cos_t || !sin_t)
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "rope table: device not supported");
    }
    *t = (dvl_rope_table){cos_t, sin_t, tokens, D, device};
    return t;
}

static const char *dev_name(dvl_device d)
{
    return d == DVL_CUDA ? "cuda" : "cpu";
}

/* The checks every form shares: f32 x, an even head size; for a table, its
 * tokens, head size and device those of x. */
static bool check(dvl_ctx *ctx, const char *op, const dvl_tensor *x, int64_t tokens, int64_t D,
                  const dvl_rope_table *t)
{
    char sx[64];
    if (x->dtype != DVL_F32) {
        dvl_fail(ctx, "%s: x %s is %s, expected f32", op, dvl_tname(x), dvl_dtype_name(x->dtype));
        return false;
    }
    if (D % 2 != 0) {
        dvl_fail(ctx, "%s: x %s has shape %s, head size %lld is odd (rotate-half needs it even)",
                 op, dvl_tname(x), dvl_shape_str(x, sx, sizeof sx), (long long)D);
        return false;
    }
    if (t && (t->tokens != tokens || t->D != D || t->device != x->device)) {
        dvl_fail(ctx, "%s: x %s (%lld tokens, head size %lld, %s) does not fit its table (%lld "
                 "tokens, head size %lld, %s)", op, dvl_tname(x), (long long)tokens,
                 (long long)D, dev_name(x->device), (long long)t->tokens,
                 (long long)t->D, dev_name(t->device));
        return false;
    }
    return true;
}

/* The table of a one-off call (dvl_rope, dvl_rope_cols), its errors named
 * after the op. */
static const dvl_rope_table *own_table(dvl_ctx *ctx, const char *op, const dvl_tensor *x,
                                       int64_t tokens, int64_t D, const int32_t *pos,
                                       float theta)
{
    if (!pos && tokens > 0)
        return dvl_fail(ctx, "%s: positions for x %s are NULL", op, dvl_tname(x));
    if (!(theta > 0.0f) || isinf(theta))
        return dvl_fail(ctx, "%s: theta %g for x %s must be positive and finite", op,
                        (double)theta, dvl_tname(x));
    return dvl_rope_table_make(ctx, x->device, pos, tokens, D, theta);
}

/* x is [N, T, H, D]. */
static bool rope_shape(dvl_ctx *ctx, const dvl_tensor *x)
{
    char sx[64];
    if (x->ndim != 4) {
        dvl_fail(ctx, "rope: x %s has shape %s, expected [N, T, H, D]", dvl_tname(x),
                 dvl_shape_str(x, sx, sizeof sx));
        return false;
    }
    return true;
}

dvl_tensor *dvl_rope(dvl_ctx *ctx, dvl_tensor *x, const int32_t *pos, float theta)
{
    if (!x || !rope_shape(ctx, x))
        return NULL;
    const int64_t tokens = x->shape[0] * x->shape[1], D = x->shape[3];
    if (!check(ctx, "rope", x, tokens, D, NULL))
        return NULL;
    const dvl_rope_table *t = own_table(ctx, "rope", x, tokens, D, pos, theta);
    return t ? rope(ctx, "rope", x, 0, x->shape[2] * D, x->shape, t) : NULL;
}

dvl_tensor *dvl_rope_with(dvl_ctx *ctx, dvl_tensor *x, const dvl_rope_table *t)
{
    if (!x || !rope_shape(ctx, x))
        return NULL;
    if (!t) /* a failed dvl_rope_table_make has said why already */
        return dvl_fail(ctx, "rope: no table for x %s", dvl_tname(x));
    if (!check(ctx, "rope", x, x->shape[0] * x->shape[1], x->shape[3], t))
        return NULL;
    return rope(ctx, "rope", x, 0, x->shape[2] * x->shape[3], x->shape, t);
}

/* shape [N, T, H, D] from column start fits x's rows and columns. */
static bool cols_fit(dvl_ctx *ctx, const dvl_tensor *x, int64_t start, const int64_t *shape)
{
    char sx[64];
    const int64_t tokens = shape[0] * shape[1], width = shape[2] * shape[3];
    if (shape[0] < 0 || shape[1] < 0 || shape[2] < 0 || shape[3] < 0 || x->ndim < 1 ||
        dvl_rows(x) != tokens || start < 0 || width > dvl_cols(x) - start) {
        dvl_fail(ctx,
                 "rope_cols: [%lld, %lld, %lld, %lld] from column %lld does not fit x %s "
                 "%s (want %lld rows of at least %lld columns)",
                 (long long)shape[0], (long long)shape[1], (long long)shape[2],
                 (long long)shape[3], (long long)start, dvl_tname(x),
                 dvl_shape_str(x, sx, sizeof sx), (long long)tokens,
                 (long long)(start + width));
        return false;
    }
    return true;
}

dvl_tensor *dvl_rope_cols(dvl_ctx *ctx, dvl_tensor *x, int64_t start, const int64_t *shape,
                          const int32_t *pos, float theta)
{
    if (!x || !cols_fit(ctx, x, start, shape))
        return NULL;
    const int64_t tokens = shape[0] * shape[1];
    if (!check(ctx, "rope_cols", x, tokens, shape[3], NULL))
        return NULL;
    const dvl_rope_table *t = own_table(ctx, "rope_cols", x, tokens, shape[3], pos, theta);
    return t ? rope(ctx, "rope_cols", x, start, dvl_cols(x), shape, t) : NULL;
}

dvl_tensor *dvl_rope_cols_with(dvl_ctx *ctx, dvl_tensor *x, int64_t start, const int64_t *shape,
                               const dvl_rope_table *t)
{
    if (!x || !cols_fit(ctx, x, start, shape))
        return NULL;
    if (!t)
        return dvl_fail(ctx, "rope_cols: no table for x %s", dvl_tname(x));
    if (!check(ctx, "rope_cols", x, shape[0] * shape[1], shape[3], t))
        return NULL;
    return rope(ctx, "rope_cols", x, start, dvl_cols(x), shape, t);
}
