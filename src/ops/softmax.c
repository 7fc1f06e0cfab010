/* Softmax over the last dimension: shape checks, tape record, dispatch to
 * the device kernels (ops/cpu/softmax.c). The backward reads the output. */
#include "ops/cpu/softmax.h"
#include "ops/dev.h"
#include "ops/ops.h"

static void softmax_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *y = node->out;
    const float *gy = dvl_grad(ctx, y);
    float *gx = dvl_grad(ctx, x);
    if (!gy || !gx)
        return;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_softmax_bwd(gx, gy, dvl_f32(y), dvl_rows(x), dvl_cols(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_softmax_bwd(gx, gy, dvl_f32(y), dvl_rows(x), dvl_cols(x));
        dvl_ctx_check(ctx, "softmax backward");
        break;
#endif
    default:
        dvl_fail(ctx, "softmax backward: device not supported");
    }
}

dvl_tensor *dvl_softmax(dvl_ctx *ctx, dvl_tensor *x)
{
    if (!x)
        return NULL;
    if (x->dtype != DVL_F32)
        return dvl_fail(ctx, "softmax: x %s is %s, expected f32", dvl_tname(x),
                        dvl_dtype_name(x->dtype));
    if (x->ndim < 1)
        return dvl_fail(ctx, "softmax: x %s is a scalar, needs a last dimension", dvl_tname(x));
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, x->shape);
    if (!y)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_softmax_fwd(dvl_f32(y), dvl_f32(x), dvl_rows(x), dvl_cols(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_softmax_fwd(dvl_f32(y), dvl_f32(x), dvl_rows(x), dvl_cols(x));
        if (!dvl_ctx_check(ctx, "softmax"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "softmax: device not supported");
    }
    if (dvl_needs_grad(ctx, &x, 1) && !dvl_record(ctx, "softmax", softmax_backward, y, &x, 1))
        return NULL;
    return y;
}
