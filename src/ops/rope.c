/* Rotary position embedding: shape checks, the per-call cos/sin table in the
 * arena (kept for the backward), dispatch to the device kernels
 * (ops/cpu/rope.c, where the float32 rounding that matches HF is explained). */
#include <math.h>

#include "ops/cpu/rope.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* Saved: p[0] = cos table, p[1] = sin table [tokens, D/2]; i[0..2] = tokens, H, D. */
static void rope_backward(dvl_ctx *ctx, dvl_node *node)
{
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, node->in[0]);
    if (!gy || !gx)
        return;
    switch (node->in[0]->device) {
    case DVL_CPU:
        dvl_cpu_rope_bwd(gx, gy, node->p[0], node->p[1], node->i[0], node->i[1], node->i[2]);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_rope_bwd(gx, gy, node->p[0], node->p[1], node->i[0], node->i[1], node->i[2]);
        dvl_ctx_check(ctx, "rope backward");
        break;
#endif
    default:
        dvl_fail(ctx, "rope backward: device not supported");
    }
}

dvl_tensor *dvl_rope(dvl_ctx *ctx, dvl_tensor *x, const int32_t *pos, float theta)
{
    if (!x)
        return NULL;
    char sx[64];
    if (x->dtype != DVL_F32)
        return dvl_fail(ctx, "rope: x %s is %s, expected f32", dvl_tname(x),
                        dvl_dtype_name(x->dtype));
    if (x->ndim != 4)
        return dvl_fail(ctx, "rope: x %s has shape %s, expected [N, T, H, D]", dvl_tname(x),
                        dvl_shape_str(x, sx, sizeof sx));
    int64_t tokens = x->shape[0] * x->shape[1], H = x->shape[2], D = x->shape[3];
    if (D % 2 != 0)
        return dvl_fail(ctx, "rope: x %s has shape %s, head size %lld is odd (rotate-half needs "
                        "it even)", dvl_tname(x), dvl_shape_str(x, sx, sizeof sx), (long long)D);
    if (!pos && tokens > 0)
        return dvl_fail(ctx, "rope: positions for x %s are NULL", dvl_tname(x));
    if (!(theta > 0.0f) || isinf(theta))
        return dvl_fail(ctx, "rope: theta %g for x %s must be positive and finite",
                        (double)theta, dvl_tname(x));
    dvl_tensor *y = dvl_new(ctx, DVL_F32, 4, x->shape);
    size_t table = (size_t)(tokens * (D / 2)) * sizeof(float);
    float *cos_t = dvl_alloc(ctx, table), *sin_t = dvl_alloc(ctx, table);
    float *inv_freq = dvl_alloc(ctx, (size_t)(D / 2) * sizeof(float));
    if (!y || !cos_t || !sin_t || !inv_freq)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_rope_table(cos_t, sin_t, inv_freq, pos, tokens, D, theta);
        dvl_cpu_rope_fwd(dvl_f32(y), dvl_f32(x), cos_t, sin_t, tokens, H, D);
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
        dvl_cuda_rope_fwd(dvl_f32(y), dvl_f32(x), cos_t, sin_t, tokens, H, D);
        if (!dvl_ctx_check(ctx, "rope"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "rope: device not supported");
    }
    if (dvl_needs_grad(ctx, &x, 1)) {
        dvl_node *node = dvl_record(ctx, "rope", rope_backward, y, &x, 1);
        if (!node)
            return NULL;
        node->p[0] = cos_t;
        node->p[1] = sin_t;
        node->i[0] = tokens;
        node->i[1] = H;
        node->i[2] = D;
    }
    return y;
}
