/* Scaled dot-product attention with grouped-query heads and the DiffusionVL
 * masks (ops.h). The forward pass keeps only the per-row logsumexp; the
 * backward pass recomputes the scores from q and k (ops/cpu/attention.c). */
#include <math.h>
#include <string.h>

#include "ops/cpu/attention.h"
#include "ops/dev.h"
#include "ops/ops.h"

static const char *mask_name(dvl_mask_kind k)
{
    switch (k) {
    case DVL_MASK_BIDIR: return "BIDIR";
    case DVL_MASK_CAUSAL: return "CAUSAL";
    case DVL_MASK_BLOCK_DIFF: return "BLOCK_DIFF";
    case DVL_MASK_BLOCK_CAUSAL: return "BLOCK_CAUSAL";
    }
    return "unknown";
}

/* Saved for backward: node->p[0] the mask (key_valid copied into the arena),
 * p[1] the logsumexp [N, Hq, Tq]; f[0] the scale. The output itself is
 * needed too (D_i = dO . O) and is node->out. */
static void attention_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *out = node->out, *q = node->in[0], *k = node->in[1], *v = node->in[2];
    const dvl_mask *mask = node->p[0];
    const float *lse = node->p[1];
    const float *dout = dvl_grad(ctx, out);
    if (!dout)
        return;
    /* Only inputs that require a gradient get one (frozen ones never get a
     * buffer). */
    float *dq = NULL, *dk = NULL, *dv = NULL;
    if (q->requires_grad && !(dq = dvl_grad(ctx, q)))
        return;
    if (k->requires_grad && !(dk = dvl_grad(ctx, k)))
        return;
    if (v->requires_grad && !(dv = dvl_grad(ctx, v)))
        return;
    if (!dq && !dk && !dv)
        return;
    const int64_t N = q->shape[0], Tq = q->shape[1], Hq = q->shape[2], D = q->shape[3];
    const int64_t Tk = k->shape[1], Hkv = k->shape[2];
    /* The scratch is given back when the work is done (CPU) or queued
     * (CUDA: later users of the memory run after it on the same stream). */
    const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
    switch (q->device) {
    case DVL_CPU: {
        size_t floats = dvl_cpu_attention_bwd_scratch(N, Tq, Tk, Hq);
        float *scratch = dvl_alloc(ctx, floats * sizeof(float));
        if (!scratch)
            return;
        dvl_cpu_attention_bwd(dq, dk, dv, scratch, dout, dvl_f32(out), lse, dvl_f32(q),
                              dvl_f32(k), dvl_f32(v), N, Tq, Tk, Hq, Hkv, D, mask,
                              node->f[0]);
        break;
    }
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        /* p[2]: the device copy of key_valid (NULL without padding). */
        const int64_t floats =
            dvl_cuda_attention_scratch(N, Tq, Tk, Hq, Hkv, D, true, dvl_dev_attention_math(ctx));
        float *scratch = floats ? dvl_alloc_dev(ctx, (size_t)floats * sizeof(float)) : NULL;
        if (floats && !scratch)
            return;
        dvl_err e = {0, ""};
        if (dvl_cuda_attention_bwd(dq, dk, dv, scratch, dout, dvl_f32(out), lse, dvl_f32(q),
                                   dvl_f32(k), dvl_f32(v), N, Tq, Tk, Hq, Hkv, D,
                                   (int)mask->kind, mask->block_size, mask->half,
                                   mask->q_offset, node->p[2], node->f[0],
                                   dvl_dev_attention_math(ctx), &e) != DVL_OK)
            dvl_ctx_set_err(ctx, &e);
        break;
    }
#endif
    default:
        dvl_fail(ctx, "attention: device not supported");
    }
    dvl_arena_rewind(ctx, mark);
}

/* Shapes and mask parameters: true when fine, else false with the error set. */
static bool check(dvl_ctx *ctx, dvl_tensor *q, dvl_tensor *k, dvl_tensor *v, const dvl_mask *m,
                  float scale)
{
    char a[64], b[64], c[64];
    dvl_tensor *t[3] = {q, k, v};
    const char *role[3] = {"q", "k", "v"};
    for (int i = 0; i < 3; i++) {
        if (t[i]->ndim != 4) {
            dvl_fail(ctx, "attention: %s %s has shape %s, expected 4 dims [N, T, H, D]", role[i],
                     dvl_tname(t[i]), dvl_shape_str(t[i], a, sizeof a));
            return false;
        }
        if (t[i]->dtype != DVL_F32) {
            dvl_fail(ctx, "attention: %s %s has dtype %s, expected f32", role[i], dvl_tname(t[i]),
                     dvl_dtype_name(t[i]->dtype));
            return false;
        }
        if (t[i]->device != q->device) {
            dvl_fail(ctx, "attention: %s %s is on another device than q %s", role[i],
                     dvl_tname(t[i]), dvl_tname(q));
            return false;
        }
    }
    dvl_shape_str(q, a, sizeof a);
    dvl_shape_str(k, b, sizeof b);
    dvl_shape_str(v, c, sizeof c);
    if (memcmp(k->shape, v->shape, sizeof k->shape) != 0) {
        dvl_fail(ctx, "attention: k %s %s and v %s %s differ in shape", dvl_tname(k), b,
                 dvl_tname(v), c);
        return false;
    }
    if (q->shape[0] != k->shape[0] || q->shape[3] != k->shape[3]) {
        dvl_fail(ctx, "attention: q %s %s and k %s %s differ in batch N or head size D",
                 dvl_tname(q), a, dvl_tname(k), b);
        return false;
    }
    const int64_t Hq = q->shape[2], Hkv = k->shape[2], D = q->shape[3];
    if (Hkv < 1 || D < 1 || Hq % Hkv != 0) {
        dvl_fail(ctx,
                 "attention: q %s %s has %lld heads, not a positive multiple of the %lld kv "
                 "heads of k %s %s (or D is 0)",
                 dvl_tname(q), a, (long long)Hq, (long long)Hkv, dvl_tname(k), b);
        return false;
    }
    if (!isfinite(scale)) {
        dvl_fail(ctx, "attention: scale %g is not finite", (double)scale);
        return false;
    }
    const int64_t Tq = q->shape[1], Tk = k->shape[1];
    const char *mk = mask_name(m->kind);
    switch (m->kind) {
    case DVL_MASK_BIDIR:
    case DVL_MASK_CAUSAL:
        break;
    case DVL_MASK_BLOCK_DIFF:
        if (m->half <= 0 || Tq != 2 * m->half || Tk != 2 * m->half) {
            dvl_fail(ctx,
                     "attention: BLOCK_DIFF mask needs Tq = Tk = 2 * half, got half %lld, q %s "
                     "%s, k %s %s",
                     (long long)m->half, dvl_tname(q), a, dvl_tname(k), b);
            return false;
        }
        if (m->q_offset != 0) {
            dvl_fail(ctx, "attention: BLOCK_DIFF mask needs q_offset 0, got %lld",
                     (long long)m->q_offset);
            return false;
        }
        break;
    case DVL_MASK_BLOCK_CAUSAL:
        break;
    default:
        dvl_fail(ctx, "attention: unknown mask kind %d", (int)m->kind);
        return false;
    }
    const bool blocks = m->kind == DVL_MASK_BLOCK_DIFF || m->kind == DVL_MASK_BLOCK_CAUSAL;
    if (blocks && m->block_size <= 0) {
        dvl_fail(ctx, "attention: %s mask needs block_size > 0, got %d", mk, m->block_size);
        return false;
    }
    if (m->q_offset < 0) {
        dvl_fail(ctx, "attention: %s mask has negative q_offset %lld", mk, (long long)m->q_offset);
        return false;
    }
    return true;
}

dvl_tensor *dvl_attention(dvl_ctx *ctx, dvl_tensor *q, dvl_tensor *k, dvl_tensor *v,
                          const dvl_mask *mask, float scale)
{
    if (!q || !k || !v)
        return NULL;
    /* No mask: every query sees every key (not documented in ops.h; kept
     * lenient so callers without a rule need not build one). */
    const dvl_mask bidir = {.kind = DVL_MASK_BIDIR};
    if (!mask)
        mask = &bidir;
    if (!check(ctx, q, k, v, mask, scale))
        return NULL;
    const int64_t N = q->shape[0], Tq = q->shape[1], Hq = q->shape[2], D = q->shape[3];
    const int64_t Tk = k->shape[1], Hkv = k->shape[2];
    dvl_tensor *out = dvl_new(ctx, DVL_F32, 4, q->shape);
    if (!out)
        return NULL;

    dvl_tensor *in[3] = {q, k, v};
    const bool record = dvl_needs_grad(ctx, in, 3);
    float *lse = NULL;
    dvl_mask *saved = NULL;
    void *key_valid_d = NULL; /* CUDA: the device copy of mask->key_valid */
    if (record) {
        lse = dvl_alloc_dev(ctx, (size_t)(N * Hq * Tq) * sizeof *lse);
        saved = dvl_alloc(ctx, sizeof *saved);
        if (!lse || !saved)
            return NULL;
        *saved = *mask;
        if (mask->key_valid) {
            saved->key_valid = dvl_arena_dup(ctx, mask->key_valid, (size_t)(N * Tk));
            if (!saved->key_valid)
                return NULL;
        }
    }

    switch (q->device) {
    case DVL_CPU: {
        size_t floats = dvl_cpu_attention_fwd_scratch(N, Tq, Tk, Hq);
        float *scratch = dvl_alloc(ctx, floats * sizeof(float));
        if (!scratch)
            return NULL;
        dvl_cpu_attention_fwd(dvl_f32(out), lse, scratch, dvl_f32(q), dvl_f32(k), dvl_f32(v), N,
                              Tq, Tk, Hq, Hkv, D, mask, scale);
        break;
    }
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        /* For the tiled kernels none, or bf16 copies of q, k, v in bf16
         * math; [N, Hq, Tq, Tk] scores for the reference kernel that takes
         * heads longer than it supports. */
        const int64_t floats =
            dvl_cuda_attention_scratch(N, Tq, Tk, Hq, Hkv, D, false, dvl_dev_attention_math(ctx));
        float *scratch = floats ? dvl_alloc_dev(ctx, (size_t)floats * sizeof(float)) : NULL;
        if (floats && !scratch)
            return NULL;
        if (mask->key_valid &&
            !(key_valid_d = dvl_dev_copy(ctx, mask->key_valid, (size_t)(N * Tk))))
            return NULL;
        dvl_err e = {0, ""};
        if (dvl_cuda_attention_fwd(dvl_f32(out), lse, scratch, dvl_f32(q), dvl_f32(k),
                                   dvl_f32(v), N, Tq, Tk, Hq, Hkv, D, (int)mask->kind,
                                   mask->block_size, mask->half, mask->q_offset, key_valid_d,
                                   scale, dvl_dev_attention_math(ctx), &e) != DVL_OK) {
            dvl_ctx_set_err(ctx, &e);
            return NULL;
        }
        break;
    }
#endif
    default:
        return dvl_fail(ctx, "attention: device not supported");
    }

    if (record) {
        dvl_node *node = dvl_record(ctx, "attention", attention_backward, out, in, 3);
        if (!node)
            return NULL;
        node->p[0] = saved;
        node->p[1] = lse;
        node->p[2] = key_valid_d;
        node->f[0] = scale;
        if (dvl_ctx_profiling(ctx)) {
            /* S = Q K^T and O = P V over the pairs the rule allows (padding
             * not subtracted), 4 D a pair and head; backward dV, dP, dQ, dK:
             * twice that (the kernels' recomputation of S and P not counted). */
            const double f = 4.0 * (double)(N * Hq * D) * (double)dvl_mask_pairs(mask, Tq, Tk);
            dvl_node_flops(ctx, node, f, 2 * f);
        }
    }
    return out;
}
