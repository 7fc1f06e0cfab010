/* Cross-entropy losses: over materialised logits, and fused with the LM-head
 * product so that the [n, V] logits never exist (V = 151936 for Qwen2).
 *
 * loss = sum_i w_i (logsumexp(z_i) - z_i[y_i]) over rows with y_i !=
 * DVL_IGNORE_INDEX, matching torch.nn.functional.cross_entropy with
 * reduction="sum" (times the per-row weights). The gradient is
 * dz_i = g w_i (softmax(z_i) - onehot(y_i)), zero for ignored rows. */
#include <stdint.h>
#include <string.h>

#include "ops/cpu/cross_entropy.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* Every label must be DVL_IGNORE_INDEX or in [0, V); after this check the
 * kernels may treat any negative label as ignored. */
static bool check_labels(dvl_ctx *ctx, const char *op, const dvl_tensor *t,
                         const int32_t *labels, int64_t n, int64_t V)
{
    if (n > 0 && !labels) {
        dvl_fail(ctx, "%s: labels are NULL for %lld rows of %s", op, (long long)n, dvl_tname(t));
        return false;
    }
    for (int64_t i = 0; i < n; i++)
        if (labels[i] != DVL_IGNORE_INDEX && (labels[i] < 0 || labels[i] >= V)) {
            dvl_fail(ctx, "%s: label %d at row %lld is outside [0, %lld) (vocabulary of %s) and "
                          "is not the ignore index %d",
                     op, (int)labels[i], (long long)i, (long long)V, dvl_tname(t),
                     DVL_IGNORE_INDEX);
            return false;
        }
    return true;
}

static dvl_tensor *new_scalar(dvl_ctx *ctx)
{
    const int64_t one = 1;
    return dvl_new(ctx, DVL_F32, 1, &one);
}

/* ------------------------------------------------------ materialised logits */

/* Saved: p[0] labels [n] (arena copy), p[1] weight [n] or NULL, p[2] row
 * maxima [n], p[3] log-sums [n]; i[0] = n, i[1] = V. */
static void cross_entropy_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *z = node->in[0];
    if (!z->requires_grad)
        return;
    const float *gout = dvl_grad(ctx, node->out);
    float *dz = dvl_grad(ctx, z);
    if (!gout || !dz)
        return;
    switch (z->device) {
    case DVL_CPU:
        dvl_cpu_cross_entropy_bwd(dz, dvl_f32(z), node->p[2], node->p[3], node->p[0], node->p[1],
                                  gout[0], node->i[0], node->i[1]);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        /* p[0], p[1]: device copies of labels and weights; gout stays on
         * the device (the kernel reads it). */
        dvl_cuda_cross_entropy_bwd(dz, dvl_f32(z), node->p[2], node->p[3], node->p[0],
                                   node->p[1], gout, node->i[0], node->i[1]);
        dvl_ctx_check(ctx, "cross_entropy backward");
        break;
#endif
    default:
        dvl_fail(ctx, "cross_entropy: device not supported");
    }
}

dvl_tensor *dvl_cross_entropy(dvl_ctx *ctx, dvl_tensor *logits, const int32_t *labels,
                              const float *weight)
{
    if (!logits)
        return NULL;
    if (logits->ndim < 1) {
        char s[64];
        return dvl_fail(ctx, "cross_entropy: logits %s of shape %s need a vocabulary dimension",
                        dvl_tname(logits), dvl_shape_str(logits, s, sizeof s));
    }
    const int64_t n = dvl_rows(logits), V = dvl_cols(logits);
    if (!check_labels(ctx, "cross_entropy", logits, labels, n, V))
        return NULL;
    dvl_tensor *out = new_scalar(ctx);
    float *rowmax = dvl_alloc_dev(ctx, (size_t)n * sizeof(float));
    float *logsum = dvl_alloc_dev(ctx, (size_t)n * sizeof(float));
    if (!out || !rowmax || !logsum)
        return NULL;
    int32_t *lab_d = NULL;
    float *wt_d = NULL;
    switch (logits->device) {
    case DVL_CPU:
        dvl_cpu_cross_entropy_fwd(dvl_f32(out), rowmax, logsum, dvl_f32(logits), labels, weight,
                                  n, V);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        float *rowloss = dvl_alloc_dev(ctx, (size_t)n * sizeof(float));
        lab_d = dvl_dev_copy(ctx, labels, (size_t)n * sizeof *labels);
        if (weight)
            wt_d = dvl_dev_copy(ctx, weight, (size_t)n * sizeof *weight);
        if (!rowloss || !lab_d || (weight && !wt_d))
            return NULL;
        dvl_cuda_cross_entropy_fwd(dvl_f32(out), rowloss, rowmax, logsum, dvl_f32(logits), lab_d,
                                   wt_d, n, V);
        if (!dvl_ctx_check(ctx, "cross_entropy"))
            return NULL;
        break;
    }
#endif
    default:
        return dvl_fail(ctx, "cross_entropy: device not supported");
    }
    if (dvl_needs_grad(ctx, &logits, 1)) {
        dvl_node *node = dvl_record(ctx, "cross_entropy", cross_entropy_backward, out, &logits, 1);
        int32_t *lab = dvl_arena_dup(ctx, labels, (size_t)n * sizeof *labels);
        float *wt = weight ? dvl_arena_dup(ctx, weight, (size_t)n * sizeof *weight) : NULL;
        if (!node || !lab || (weight && !wt))
            return NULL;
        node->p[0] = logits->device == DVL_CPU ? (void *)lab : (void *)lab_d;
        node->p[1] = logits->device == DVL_CPU ? wt : wt_d;
        node->p[2] = rowmax;
        node->p[3] = logsum;
        node->i[0] = n;
        node->i[1] = V;
    }
    return out;
}

/* ------------------------------------------------------------------- fused */

#ifdef DVL_HAVE_CUDA
/* The CUDA path: the CPU algorithm with cuBLAS products and the chunk
 * kernels of ops/cuda/ops.cu (dvl_cuda_lxent_*), over all n_sup rows at once
 * (no row tiles: the GPU wants the tall products). Device memory from the
 * step arena, with C = chunk:
 *   forward   4 n_sup C (one chunk of logits Z) + 4 n_sup d (h_s)
 *             + 32 n_sup (row indices, labels, weights, running sums, label
 *             logits, maxima and log-sums)
 *             [+ 2 (n_sup d + C d + n_sup C) for the bf16 operand copies]
 *   backward  the same Z and bf16 copies again (kept here, in node->p[3])
 *             + 4 n_sup d (dh_s, when h needs a gradient)
 * e.g. n_sup = 4096, C = 4096, d = 896: 64 MiB + 14 MiB (+ 46 MiB bf16)
 * against 2.5 GB for the [n_sup, V] logits at V = 151936; nothing n_sup x V
 * exists. */
typedef struct xent_dev {
    int32_t *rows, *labels; /* [n_sup] each, device copies */
    float *wt;              /* [n_sup] or NULL */
    float *hs;              /* the supervised rows of h [n_sup, d] */
    float *z;               /* one chunk of logits [n_sup, C]; dZ in backward */
    void *bf16;             /* bf16 operand copies (DVL_MATH_BF16) or NULL */
    size_t bf16_bytes;
    const uint16_t *w16;    /* W's bf16 copy kept by its store (frozen) or NULL */
} xent_dev;

/* Rows c0 .. of W's bf16 copy, or NULL. */
static const uint16_t *xent_w16(const xent_dev *xd, int64_t c0, int64_t d)
{
    return xd->w16 ? xd->w16 + c0 * d : NULL;
}

/* Operand copies for the chunk products of the handle's mode: none for f32
 * and TF32 (cublasSgemm), bf16 copies of h_s, W_c (unless W has a kept
 * copy) and (backward) dZ for DVL_MATH_BF16, sized for the backward pass
 * when one follows and made once for all chunks (dvl_dev_linear_fwd would
 * take new ones from the arena at every chunk). */
static bool xent_bf16_scratch(dvl_ctx *ctx, xent_dev *xd, int64_t n_sup, int64_t d, int64_t C,
                              bool backward)
{
    if (dvl_cublas_math(dvl_ctx_cublas(ctx)) != DVL_MATH_BF16)
        return true;
    const size_t need = dvl_cuda_linear_bf16_scratch(n_sup, d, C, backward, xd->w16 != NULL);
    if (xd->bf16 && xd->bf16_bytes >= need)
        return true;
    xd->bf16 = dvl_alloc_dev(ctx, need);
    xd->bf16_bytes = need;
    return xd->bf16 != NULL;
}

/* xd->z [n_sup, C] = h_s W_c^T, W_c = rows c0 .. c0+C of W (contiguous;
 * w16c its bf16 copy or NULL). */
static bool xent_chunk_logits(dvl_ctx *ctx, const xent_dev *xd, const float *wc,
                              const uint16_t *w16c, int64_t n_sup, int64_t d, int64_t C)
{
    struct dvl_cublas *hb = dvl_ctx_cublas(ctx);
    dvl_err e = {0, ""};
    const int rc =
        dvl_cublas_math(hb) == DVL_MATH_BF16
            ? dvl_cuda_linear_fwd_bf16(hb, xd->z, xd->hs, wc, w16c, NULL, xd->bf16, n_sup, d, C,
                                       &e)
            : dvl_cuda_linear_fwd(hb, xd->z, xd->hs, wc, NULL, n_sup, d, C, &e);
    if (rc != DVL_OK)
        dvl_ctx_set_err(ctx, &e);
    return rc == DVL_OK;
}

/* dhs += dZ W_c and dW_c += dZ^T h_s (beta = 1; either may be NULL), dZ in
 * xd->z. */
static bool xent_chunk_grads(dvl_ctx *ctx, const xent_dev *xd, float *dhs, float *dwc,
                             const float *wc, const uint16_t *w16c, int64_t n_sup, int64_t d,
                             int64_t C)
{
    struct dvl_cublas *hb = dvl_ctx_cublas(ctx);
    dvl_err e = {0, ""};
    const int rc = dvl_cublas_math(hb) == DVL_MATH_BF16
                       ? dvl_cuda_linear_bwd_bf16(hb, dhs, dwc, NULL, NULL, xd->bf16, xd->z,
                                                  xd->hs, wc, w16c, n_sup, d, C, &e)
                       : dvl_cuda_linear_bwd(hb, dhs, dwc, NULL, NULL, xd->z, xd->hs, wc, n_sup,
                                             d, C, &e);
    if (rc != DVL_OK)
        dvl_ctx_set_err(ctx, &e);
    return rc == DVL_OK;
}

/* Forward: per chunk Z = h_s W_c^T, then fold it into the rows' online
 * log-sum-exp; after the last chunk the loss. */
static bool xent_dev_fwd(dvl_ctx *ctx, xent_dev *xd, float *loss, float *rowmax, float *logsum,
                         const float *h, const float *w, const uint16_t *w16,
                         const int32_t *rows, const float *wt, int64_t n_sup, int64_t d,
                         int64_t V, int64_t chunk, bool backward)
{
    memset(xd, 0, sizeof *xd);
    xd->w16 = w16;
    xd->rows = dvl_dev_copy(ctx, rows, 2 * (size_t)n_sup * sizeof *rows);
    xd->labels = xd->rows ? xd->rows + n_sup : NULL;
    xd->wt = wt ? dvl_dev_copy(ctx, wt, (size_t)n_sup * sizeof *wt) : NULL;
    xd->hs = dvl_alloc_dev(ctx, (size_t)(n_sup * d) * sizeof(float));
    xd->z = dvl_alloc_dev(ctx, (size_t)(n_sup * chunk) * sizeof(float));
    double *sum = dvl_alloc_dev(ctx, (size_t)n_sup * sizeof *sum);
    float *zy = dvl_alloc_dev(ctx, (size_t)n_sup * sizeof *zy);
    if (!xd->rows || (wt && !xd->wt) || !xd->hs || !xd->z || !sum || !zy ||
        !xent_bf16_scratch(ctx, xd, n_sup, d, chunk, backward))
        return false;
    if (n_sup > 0) {
        dvl_cuda_embedding_fwd(xd->hs, h, xd->rows, n_sup, d);
        for (int64_t c0 = 0; c0 < V; c0 += chunk) {
            const int64_t C = V - c0 < chunk ? V - c0 : chunk;
            if (!xent_chunk_logits(ctx, xd, w + c0 * d, xent_w16(xd, c0, d), n_sup, d, C))
                return false;
            dvl_cuda_lxent_chunk_lse(rowmax, sum, zy, xd->z, xd->labels, n_sup, C, c0);
        }
    }
    dvl_cuda_lxent_finish(loss, logsum, rowmax, sum, zy, xd->wt, n_sup);
    return dvl_ctx_check(ctx, "linear_cross_entropy");
}

/* Backward: per chunk recompute Z, turn it into dZ in place, dh_s += dZ W_c
 * (first chunk onto zeros), dW_c += dZ^T h_s; then dh[rows] += dh_s. */
static void xent_dev_bwd(dvl_ctx *ctx, xent_dev *xd, float *dh, float *dw, const float *w,
                         const float *rowmax, const float *logsum, const float *g,
                         int64_t n_sup, int64_t d, int64_t V, int64_t chunk)
{
    float *dhs = dh ? dvl_calloc_dev(ctx, (size_t)(n_sup * d) * sizeof(float)) : NULL;
    if ((dh && !dhs) || !xent_bf16_scratch(ctx, xd, n_sup, d, chunk, true))
        return;
    for (int64_t c0 = 0; c0 < V; c0 += chunk) {
        const int64_t C = V - c0 < chunk ? V - c0 : chunk;
        const uint16_t *w16c = xent_w16(xd, c0, d);
        if (!xent_chunk_logits(ctx, xd, w + c0 * d, w16c, n_sup, d, C))
            return;
        dvl_cuda_lxent_chunk_dz(xd->z, rowmax, logsum, xd->labels, xd->wt, g, n_sup, C, c0);
        if (!xent_chunk_grads(ctx, xd, dhs, dw ? dw + c0 * d : NULL, w + c0 * d, w16c, n_sup, d,
                              C))
            return;
    }
    if (dh)
        dvl_cuda_scatter_add_rows(dh, dhs, xd->rows, n_sup, d);
    dvl_ctx_check(ctx, "linear_cross_entropy backward");
}
#endif

/* Saved: p[0] int32 [2 n_sup] = supervised row indices then their labels,
 * p[1] their weights [n_sup] or NULL, p[2] float [2 n_sup] = row maxima then
 * log-sums, p[3] the forward pass's scratch (dead after it, so backward
 * reuses it and the arena holds one scratch, not two); i[0] = n_sup,
 * i[1] = d, i[2] = V, i[3] = chunk. */
static void linear_cross_entropy_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *h = node->in[0], *w = node->in[1];
    const int64_t n_sup = node->i[0], d = node->i[1], V = node->i[2], chunk = node->i[3];
    const float *gout = dvl_grad(ctx, node->out);
    if (!gout)
        return;
    /* Only what requires a gradient: a frozen W (or h) gets no buffer and
     * its half of the backward GEMMs is skipped. */
    float *dh = NULL, *dw = NULL;
    if (h->requires_grad && !(dh = dvl_grad(ctx, h)))
        return;
    if (w->requires_grad && !(dw = dvl_grad(ctx, w)))
        return;
    if (n_sup == 0)
        return;
    const int32_t *rows = node->p[0], *labels = rows + n_sup;
    const float *rowmax = node->p[2], *logsum = rowmax + n_sup;
    switch (h->device) {
    case DVL_CPU:
        dvl_cpu_linear_cross_entropy_bwd(dh, dw, node->p[3], dvl_f32(h), dvl_f32(w), rows, labels,
                                         node->p[1], rowmax, logsum, gout[0], n_sup, d, V, chunk);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: /* gout stays on the device: the dZ kernel reads it */
        xent_dev_bwd(ctx, node->p[3], dh, dw, dvl_f32(w), rowmax, logsum, gout, n_sup, d, V,
                     chunk);
        break;
#endif
    default:
        dvl_fail(ctx, "linear_cross_entropy: device not supported");
    }
}

dvl_tensor *dvl_linear_cross_entropy(dvl_ctx *ctx, dvl_tensor *h, dvl_tensor *w,
                                     const int32_t *labels, const float *weight, int64_t chunk)
{
    if (!h || !w)
        return NULL;
    char sh[64], sw[64];
    if (h->ndim < 1 || w->ndim != 2)
        return dvl_fail(ctx,
                        "linear_cross_entropy: need h [n, d] and W [V, d], got h %s %s and W %s %s",
                        dvl_tname(h), dvl_shape_str(h, sh, sizeof sh), dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw));
    const int64_t n = dvl_rows(h), d = dvl_cols(h), V = w->shape[0];
    if (w->shape[1] != d)
        return dvl_fail(ctx, "linear_cross_entropy: h %s %s has %lld cols but W %s %s has %lld",
                        dvl_tname(h), dvl_shape_str(h, sh, sizeof sh), (long long)d, dvl_tname(w),
                        dvl_shape_str(w, sw, sizeof sw), (long long)w->shape[1]);
    if (h->device != w->device)
        return dvl_fail(ctx, "linear_cross_entropy: h %s and W %s are on different devices",
                        dvl_tname(h), dvl_tname(w));
    if (chunk < 0)
        return dvl_fail(ctx, "linear_cross_entropy: chunk %lld is negative", (long long)chunk);
    if (n > INT32_MAX) /* row indices are saved as int32 */
        return dvl_fail(ctx, "linear_cross_entropy: h %s has %lld rows, more than 2^31 - 1",
                        dvl_tname(h), (long long)n);
    if (!check_labels(ctx, "linear_cross_entropy", w, labels, n, V))
        return NULL;
    if (chunk == 0)
        chunk = DVL_XENT_CHUNK;
    if (chunk > V)
        chunk = V > 0 ? V : 1;

    /* Ignored rows are dropped here, before the GEMMs: with the diffusion
     * loss on masked tokens only, a large share of rows cost nothing. */
    int64_t n_sup = 0;
    for (int64_t i = 0; i < n; i++)
        n_sup += labels[i] != DVL_IGNORE_INDEX;
    dvl_tensor *out = new_scalar(ctx);
    int32_t *rows = dvl_alloc(ctx, 2 * (size_t)n_sup * sizeof *rows);
    float *wt = weight ? dvl_alloc(ctx, (size_t)n_sup * sizeof *wt) : NULL;
    float *stats = dvl_alloc_dev(ctx, 2 * (size_t)n_sup * sizeof *stats);
    dvl_tensor *in[2] = {h, w};
    const bool grad = dvl_needs_grad(ctx, in, 2);
    const bool cpu = h->device == DVL_CPU;
    void *scratch = n_sup && cpu
                        ? dvl_alloc(ctx, dvl_cpu_linear_cross_entropy_scratch(n_sup, d, chunk))
                        : NULL;
    if (!out || !rows || (weight && !wt) || !stats || (n_sup && cpu && !scratch))
        return NULL;
    int32_t *lab = rows + n_sup;
    for (int64_t i = 0, k = 0; i < n; i++)
        if (labels[i] != DVL_IGNORE_INDEX) {
            rows[k] = (int32_t)i;
            lab[k] = labels[i];
            if (weight)
                wt[k] = weight[i];
            k++;
        }
    float *rowmax = stats, *logsum = stats + n_sup;

    switch (h->device) {
    case DVL_CPU:
        dvl_cpu_linear_cross_entropy_fwd(dvl_f32(out), rowmax, logsum, scratch, dvl_f32(h),
                                         dvl_f32(w), rows, lab, wt, n_sup, d, V, chunk);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        xent_dev *xd = dvl_alloc(ctx, sizeof *xd);
        if (!xd || !xent_dev_fwd(ctx, xd, dvl_f32(out), rowmax, logsum, dvl_f32(h), dvl_f32(w),
                                 dvl_bf16_copy(w), rows, wt, n_sup, d, V, chunk, grad))
            return NULL;
        scratch = xd;
        break;
    }
#endif
    default:
        return dvl_fail(ctx, "linear_cross_entropy: device not supported");
    }
    if (grad) {
        dvl_node *node =
            dvl_record(ctx, "linear_cross_entropy", linear_cross_entropy_backward, out, in, 2);
        if (!node)
            return NULL;
        node->p[0] = rows;
        node->p[1] = wt;
        node->p[2] = stats;
        node->p[3] = scratch;
        node->i[0] = n_sup;
        node->i[1] = d;
        node->i[2] = V;
        node->i[3] = chunk;
        if (dvl_ctx_profiling(ctx)) {
            /* Z = h_s W^T; backward dh_s, dW (the logits redone: not counted) */
            const double f = 2.0 * (double)n_sup * (double)d * (double)V;
            dvl_node_flops(ctx, node, f, f * (h->requires_grad + w->requires_grad));
        }
    }
    return out;
}
