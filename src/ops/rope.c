/* Rotary position embedding: shape checks, the per-call cos/sin table in the
 * arena (kept for the backward), dispatch to the device kernels
 * (ops/cpu/rope.c, where the float32 rounding that matches HF is explained). */
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
 * `start` of each of its N T rows, which are ld floats long; x's type,
 * positions and theta already checked. */
static dvl_tensor *rope(dvl_ctx *ctx, const char *op, dvl_tensor *x, int64_t start, int64_t ld,
                        const int64_t *shape, const int32_t *pos, float theta)
{
    const int64_t tokens = shape[0] * shape[1], H = shape[2], D = shape[3];
    dvl_tensor *y = dvl_new(ctx, DVL_F32, 4, shape);
    size_t table = (size_t)(tokens * (D / 2)) * sizeof(float);
    float *cos_t = dvl_alloc(ctx, table), *sin_t = dvl_alloc(ctx, table);
    float *inv_freq = dvl_alloc(ctx, (size_t)(D / 2) * sizeof(float));
    if (!y || !cos_t || !sin_t || !inv_freq)
        return NULL;
    const float *xs = dvl_f32(x) + start;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_rope_table(cos_t, sin_t, inv_freq, pos, tokens, D, theta);
        dvl_cpu_rope_fwd(dvl_f32(y), xs, cos_t, sin_t, tokens, H, D, ld);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        /* The tables on the host by the CPU code (bit for bit its float32
         * angles), then copied; the device copies are what backward keeps.
         * A device table kernel is remaining work. */
        dvl_cpu_rope_table(cos_t, sin_t, inv_freq, pos, tokens, D, theta);
        cos_t = dvl_dev_copy(ctx, cos_t, table);
        sin_t = dvl_dev_copy(ctx, sin_t, table);
        if (!cos_t || !sin_t)
            return NULL;
        dvl_cuda_rope_fwd(dvl_f32(y), xs, cos_t, sin_t, tokens, H, D, ld);
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
        node->p[0] = cos_t;
        node->p[1] = sin_t;
        node->i[0] = tokens;
        node->i[1] = H;
        node->i[2] = D;
        node->i[3] = ld;
        node->i[4] = start;
    }
    return y;
}

/* The checks both forms share: f32 x, an even head size, positions, theta. */
static bool check(dvl_ctx *ctx, const char *op, const dvl_tensor *x, int64_t tokens, int64_t D,
                  const int32_t *pos, float theta)
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
    if (!pos && tokens > 0) {
        dvl_fail(ctx, "%s: positions for x %s are NULL", op, dvl_tname(x));
        return false;
    }
    if (!(theta > 0.0f) || isinf(theta)) {
        dvl_fail(ctx, "%s: theta %g for x %s must be positive and finite", op, (double)theta,
                 dvl_tname(x));
        return false;
    }
    return true;
}

dvl_tensor *dvl_rope(dvl_ctx *ctx, dvl_tensor *x, const int32_t *pos, float theta)
{
    if (!x)
        return NULL;
    char sx[64];
    if (x->ndim != 4)
        return dvl_fail(ctx, "rope: x %s has shape %s, expected [N, T, H, D]", dvl_tname(x),
                        dvl_shape_str(x, sx, sizeof sx));
    const int64_t tokens = x->shape[0] * x->shape[1], H = x->shape[2], D = x->shape[3];
    if (!check(ctx, "rope", x, tokens, D, pos, theta))
        return NULL;
    return rope(ctx, "rope", x, 0, H * D, x->shape, pos, theta);
}

dvl_tensor *dvl_rope_cols(dvl_ctx *ctx, dvl_tensor *x, int64_t start, const int64_t *shape,
                          const int32_t *pos, float theta)
{
    if (!x)
        return NULL;
    char sx[64];
    const int64_t tokens = shape[0] * shape[1], width = shape[2] * shape[3];
    if (shape[0] < 0 || shape[1] < 0 || shape[2] < 0 || shape[3] < 0 || x->ndim < 1 ||
        dvl_rows(x) != tokens || start < 0 || width > dvl_cols(x) - start)
        return dvl_fail(ctx,
                        "rope_cols: [%lld, %lld, %lld, %lld] from column %lld does not fit x %s "
                        "%s (want %lld rows of at least %lld columns)",
                        (long long)shape[0], (long long)shape[1], (long long)shape[2],
                        (long long)shape[3], (long long)start, dvl_tname(x),
                        dvl_shape_str(x, sx, sizeof sx), (long long)tokens,
                        (long long)(start + width));
    if (!check(ctx, "rope_cols", x, tokens, shape[3], pos, theta))
        return NULL;
    return rope(ctx, "rope_cols", x, start, dvl_cols(x), shape, pos, theta);
}
