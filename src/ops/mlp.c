/* The SwiGLU MLP of Qwen2 and LLaMA layers (transformers' Qwen2MLP):
 *   y = down(silu(gate(x)) * up(x)) = (silu(x Wg^T) * (x Wu^T)) Wd^T
 * as one op, so that a context with bf16 products can keep the hidden
 * activations in bf16 (torch.autocast's recipe for this block: products
 * with bf16 outputs, SwiGLU on bf16). Everywhere else it is the three ops it
 * stands for, dvl_linear(dvl_swiglu_cat(dvl_linear_cat(x, [Wg; Wu])), Wd),
 * recorded as they are: the same graph and bits as writing them out.
 *
 * The bf16 form (a CUDA context in DVL_MATH_BF16 with bf16 activations on,
 * tensor.h), with [G | U] the [gate | up] rows and bf16() rounding to
 * nearest even:
 *   forward   xb = bf16(x)                     kept for dWgu
 *             GU = bf16(xb [Wg; Wu]^T)         kept: [rows, 2 I] bf16
 *             A  = bf16(silu(G) * U)           kept: [rows, I] bf16
 *             y  = A Wd^T                      f32, as the products' results
 *   backward  dyb = bf16(dy)
 *             dWd  += dyb^T A                  f32 accumulation
 *             dA   = bf16(dyb Wd)
 *             dGU  = bf16(SwiGLU'(G, U) dA)    (the f32 kernel's formulas)
 *             dx   += dGU [Wg; Wu]             f32
 *             dWgu += dGU^T xb                 f32
 * The weights' bf16 copies are the parameter store's when it keeps them
 * (dvl_params_keep_bf16), else rounded into scratch per call. Against the
 * f32-activation path (bf16 only as operands) it writes, reads and keeps
 * half the bytes of the two largest activations of the layer (at Qwen2.5
 * shapes 2 I = 10.9 d) and drops the casts of A and dGU before their
 * products; it rounds G, U, dA once more each (bf16 tolerance, as
 * autocast). */
#include <limits.h>

#include "ops/dev.h"
#include "ops/ops.h"

#ifdef DVL_HAVE_CUDA
/* Bytes of n bf16 values, rounded to the arena's 256-byte alignment. */
static size_t b16(int64_t n) { return ((size_t)n * 2 + 255) / 256 * 256; }

/* The bf16 copy of the n consecutive weights w kept by their store, or one
 * rounded into the arena now. */
static const uint16_t *weights16(dvl_ctx *ctx, dvl_tensor *const *w, int n, int64_t numel)
{
    const uint16_t *c = dvl_bf16_copy_group(w, n);
    if (c)
        return c;
    uint16_t *r = dvl_alloc_dev(ctx, b16(numel));
    dvl_err e = {0, ""};
    if (r && dvl_cuda_to_bf16(r, dvl_f32(w[0]), numel, &e) != DVL_OK) {
        dvl_ctx_set_err(ctx, &e);
        return NULL;
    }
    return r;
}

/* The fused form applies: a bf16 CUDA context with bf16 activations, and
 * inputs the three-op form would accept (f32, one device, [Wg; Wu] one
 * matrix, the shapes chained). Anything else goes the three-op way, whose
 * checks then name what is wrong. */
static bool fused_ok(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *const *gu, dvl_tensor *wd)
{
    if (x->device != DVL_CUDA || !dvl_ctx_bf16_activations(ctx) ||
        dvl_cublas_math(dvl_ctx_cublas(ctx)) != DVL_MATH_BF16 || !dvl_linear_cat_ok(2, gu, NULL))
        return false;
    const dvl_tensor *t[4] = {x, gu[0], gu[1], wd};
    for (int k = 0; k < 4; k++)
        if (t[k]->dtype != DVL_F32 || t[k]->device != DVL_CUDA || t[k]->ndim < 1)
            return false;
    const int64_t I = gu[0]->shape[0], d = dvl_cols(x);
    return gu[0]->ndim == 2 && gu[1]->ndim == 2 && wd->ndim == 2 && gu[1]->shape[0] == I &&
           gu[0]->shape[1] == d && gu[1]->shape[1] == d && wd->shape[1] == I &&
           dvl_rows(x) <= INT_MAX && 2 * I <= INT_MAX && d <= INT_MAX && wd->shape[0] <= INT_MAX;
}

/* node: in = x, Wg, Wu, Wd; i = rows, d, I, d_out; p = xb, GU, A (bf16). */
static void mlp_bf16_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0], *wg = node->in[1], *wd = node->in[3];
    const int64_t rows = node->i[0], d = node->i[1], I = node->i[2], dout = node->i[3];
    const uint16_t *xb = node->p[0], *gu = node->p[1], *a = node->p[2];
    const float *dy = dvl_grad(ctx, node->out);
    float *dx = x->requires_grad ? dvl_grad(ctx, x) : NULL;
    float *dwgu = wg->requires_grad ? dvl_grad(ctx, wg) : NULL; /* [Wg; Wu]'s, consecutive */
    float *dwd = wd->requires_grad ? dvl_grad(ctx, wd) : NULL;
    if (!dy || (x->requires_grad && !dx) || (wg->requires_grad && !dwgu) ||
        (wd->requires_grad && !dwd))
        return; /* out of memory, reported by the arena */
    struct dvl_cublas *h = dvl_ctx_cublas(ctx);
    const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
    dvl_err e = {0, ""};
    int rc = DVL_OK;
    uint16_t *dyb = dvl_alloc_dev(ctx, b16(rows * dout));
    if (!dyb)
        goto out;
    if ((rc = dvl_cuda_to_bf16(dyb, dy, rows * dout, &e)))
        goto out;
    if (dwd && (rc = dvl_cuda_gemm_bf16(h, true, false, dout, I, rows, dyb, a, 1.0f, dwd,
                                        DVL_F32, &e)))
        goto out;
    if (dx || dwgu) {
        const uint16_t *wd16 = weights16(ctx, &wd, 1, dout * I);
        uint16_t *da = dvl_alloc_dev(ctx, b16(rows * I));
        uint16_t *dgu = dvl_alloc_dev(ctx, b16(rows * 2 * I));
        if (!wd16 || !da || !dgu)
            goto out;
        if ((rc = dvl_cuda_gemm_bf16(h, false, false, rows, I, dout, dyb, wd16, 0.0f, da,
                                     DVL_BF16, &e)))
            goto out;
        dvl_cuda_swiglu_bwd_bf16(dgu, da, gu, rows, I);
        if (!dvl_ctx_check(ctx, "swiglu_mlp backward"))
            goto out;
        if (dx) {
            const uint16_t *wgu16 = weights16(ctx, &node->in[1], 2, 2 * I * d);
            if (!wgu16 || (rc = dvl_cuda_gemm_bf16(h, false, false, rows, d, 2 * I, dgu, wgu16,
                                                   1.0f, dx, DVL_F32, &e)))
                goto out;
        }
        if (dwgu && (rc = dvl_cuda_gemm_bf16(h, true, false, 2 * I, d, rows, dgu, xb, 1.0f,
                                             dwgu, DVL_F32, &e)))
            goto out;
    }
out:
    if (rc)
        dvl_ctx_set_err(ctx, &e);
    dvl_arena_rewind(ctx, mark); /* the products are queued: scratch reused after them */
}

static dvl_tensor *mlp_bf16(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *const *gu, dvl_tensor *wd)
{
    const int64_t rows = dvl_rows(x), d = dvl_cols(x), I = gu[0]->shape[0], dout = wd->shape[0];
    int64_t shape[DVL_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    shape[x->ndim - 1] = dout;
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, shape);
    if (!y)
        return NULL;
    dvl_tensor *ins[4] = {x, gu[0], gu[1], wd};
    const bool keep = dvl_needs_grad(ctx, ins, 4);
    /* Kept for backward first, then the scratch that the mark gives back;
     * without backward all of it is scratch. */
    const dvl_arena_mark all = dvl_arena_get_mark(ctx);
    uint16_t *xb = dvl_alloc_dev(ctx, b16(rows * d));
    uint16_t *g = dvl_alloc_dev(ctx, b16(rows * 2 * I));
    uint16_t *a = dvl_alloc_dev(ctx, b16(rows * I));
    if (!xb || !g || !a)
        return NULL;
    const dvl_arena_mark scratch = dvl_arena_get_mark(ctx);
    struct dvl_cublas *h = dvl_ctx_cublas(ctx);
    dvl_err e = {0, ""};
    const uint16_t *wgu16 = weights16(ctx, gu, 2, 2 * I * d);
    if (!wgu16)
        return NULL;
    int rc = dvl_cuda_to_bf16(xb, dvl_f32(x), rows * d, &e);
    if (!rc)
        rc = dvl_cuda_gemm_bf16(h, false, true, rows, 2 * I, d, xb, wgu16, 0.0f, g, DVL_BF16, &e);
    if (rc) {
        dvl_ctx_set_err(ctx, &e);
        return NULL;
    }
    dvl_arena_rewind(ctx, scratch);
    dvl_cuda_swiglu_fwd_bf16(a, g, rows, I);
    if (!dvl_ctx_check(ctx, "swiglu_mlp"))
        return NULL;
    const uint16_t *wd16 = weights16(ctx, &wd, 1, dout * I);
    if (!wd16)
        return NULL;
    rc = dvl_cuda_gemm_bf16(h, false, true, rows, dout, I, a, wd16, 0.0f, dvl_f32(y), DVL_F32,
                            &e);
    if (rc) {
        dvl_ctx_set_err(ctx, &e);
        return NULL;
    }
    dvl_arena_rewind(ctx, keep ? scratch : all);
    if (!keep)
        return y;
    dvl_node *node = dvl_record(ctx, "swiglu_mlp", mlp_bf16_backward, y, ins, 4);
    if (!node)
        return NULL;
    node->i[0] = rows;
    node->i[1] = d;
    node->i[2] = I;
    node->i[3] = dout;
    node->p[0] = xb;
    node->p[1] = g;
    node->p[2] = a;
    if (dvl_ctx_profiling(ctx)) {
        /* Forward [G|U] = x [Wg;Wu]^T and y = A Wd^T; backward as
         * mlp_bf16_backward: dWd, dA = dy Wd (for dx or d[Wg;Wu]), dx,
         * d[Wg;Wu] (Wg and Wu train together: dvl_linear_cat_ok). */
        const double f = 2.0 * (double)rows * (double)I, gu2 = 2 * f * (double)d,
                     down = f * (double)dout;
        const bool dx = x->requires_grad, dgu = gu[0]->requires_grad;
        const double bwd = (wd->requires_grad ? down : 0) + (dx || dgu ? down : 0) +
                           (dx ? gu2 : 0) + (dgu ? gu2 : 0);
        dvl_node_flops(ctx, node, gu2 + down, bwd);
    }
    return y;
}
#endif

dvl_tensor *dvl_swiglu_mlp(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *const *gate_up,
                           dvl_tensor *w_down)
{
    if (!x || !gate_up || !gate_up[0] || !gate_up[1] || !w_down)
        return NULL;
#ifdef DVL_HAVE_CUDA
    if (fused_ok(ctx, x, gate_up, w_down))
        return mlp_bf16(ctx, x, gate_up, w_down);
#endif
    return dvl_linear(ctx, dvl_swiglu_cat(ctx, dvl_linear_cat(ctx, x, 2, gate_up, NULL)), w_down,
                      NULL);
}
