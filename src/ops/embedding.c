/* Token embedding: out[i] = W[ids[i]] (torch.nn.functional.embedding),
 * W [V, d], out [n, d]. */
#include <string.h>

#include "ops/cpu/embedding.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* dL/dW[v] = sum over tokens i with ids[i] == v of dL/dout[i]; the ids were
 * copied into the arena when the op was recorded. */
static void embedding_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *w = node->in[0];
    if (!w->requires_grad)
        return;
    const float *dout = dvl_grad(ctx, node->out);
    float *dw = dvl_grad(ctx, w);
    if (!dout || !dw)
        return;
    switch (w->device) {
    case DVL_CPU:
        dvl_cpu_embedding_bwd(dw, dout, (const int32_t *)node->p[0], node->i[0], w->shape[1]);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        /* Positions grouped by id: each table row adds its tokens in order
         * 0..n-1, as the CPU kernel does, and no two threads share a row. */
        int32_t *uid, *off, *pos;
        int64_t nu = dvl_dev_group_ids(ctx, node->p[0], node->i[0], &uid, &off, &pos);
        if (nu < 0)
            return;
        dvl_cuda_embedding_bwd(dw, dout, uid, off, pos, nu, w->shape[1]);
        dvl_ctx_check(ctx, "embedding backward");
        break;
    }
#endif
    default:
        dvl_fail(ctx, "embedding: device not supported");
    }
}

dvl_tensor *dvl_embedding(dvl_ctx *ctx, dvl_tensor *w, const int32_t *ids, int64_t n)
{
    if (!w)
        return NULL;
    char sw[64];
    if (w->dtype != DVL_F32 || w->ndim != 2)
        return dvl_fail(ctx, "embedding: table %s must be f32 [V, d], is %s %s", dvl_tname(w),
                        dvl_dtype_name(w->dtype), dvl_shape_str(w, sw, sizeof sw));
    if (n < 0 || (n > 0 && !ids))
        return dvl_fail(ctx, "embedding: %lld ids %s for table %s", (long long)n,
                        ids ? "given" : "missing", dvl_tname(w));
    int64_t vocab = w->shape[0], d = w->shape[1];
    /* Check every id before any memory is read: a bad id is an input error
     * (wrong tokenizer, corrupt data), not something to crash on. */
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return dvl_fail(ctx, "embedding: id %d at position %lld is outside [0, %lld) of %s %s",
                            (int)ids[i], (long long)i, (long long)vocab, dvl_tname(w),
                            dvl_shape_str(w, sw, sizeof sw));

    dvl_tensor *out = dvl_new2(ctx, n, d);
    if (!out)
        return NULL;
    switch (w->device) {
    case DVL_CPU:
        dvl_cpu_embedding_fwd(dvl_f32(out), dvl_f32(w), ids, n, d);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        int32_t *ids_d = dvl_dev_copy(ctx, ids, (size_t)n * sizeof *ids);
        if (!ids_d)
            return NULL;
        dvl_cuda_embedding_fwd(dvl_f32(out), dvl_f32(w), ids_d, n, d);
        if (!dvl_ctx_check(ctx, "embedding"))
            return NULL;
        break;
    }
#endif
    default:
        return dvl_fail(ctx, "embedding: device not supported");
    }

    if (dvl_needs_grad(ctx, &w, 1)) {
        int32_t *saved = dvl_arena_dup(ctx, ids, (size_t)n * sizeof *ids);
        if (!saved)
            return NULL;
        dvl_node *node = dvl_record(ctx, "embedding", embedding_backward, out, &w, 1);
        if (!node)
            return NULL;
        node->i[0] = n;
        node->p[0] = saved;
    }
    return out;
}
