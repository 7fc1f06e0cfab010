/* Row ops over the first dimension: a [n, ...] tensor has n rows of
 * numel / n elements each. They assemble the multimodal sequence (image
 * features spliced into the text embeddings, [x_t ; x_0] for block
 * diffusion) and pick rows out of it again. */
#include <stdint.h>
#include <string.h>

#include "ops/cpu/embedding.h"
#include "ops/cpu/rows.h"
#include "ops/dev.h"
#include "ops/ops.h"

/* Elements per row: the product of all dimensions after the first (computed
 * that way, not numel / n, so a tensor with 0 rows still has a row size). */
static int64_t row_size(const dvl_tensor *t)
{
    int64_t r = 1;
    for (int k = 1; k < t->ndim; k++)
        r *= t->shape[k];
    return r;
}

/* Whether a and b have the same dimensions after the first. */
static bool same_row_shape(const dvl_tensor *a, const dvl_tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int k = 1; k < a->ndim; k++)
        if (a->shape[k] != b->shape[k])
            return false;
    return true;
}

/* A tensor of x's shape with `n` rows. */
static dvl_tensor *new_rows(dvl_ctx *ctx, const dvl_tensor *x, int64_t n)
{
    int64_t shape[DVL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = n;
    return dvl_new(ctx, DVL_F32, x->ndim, shape);
}

/* f32 with at least one dimension, else an error naming op and tensor. */
static bool check_rows(dvl_ctx *ctx, const char *op, const char *what, const dvl_tensor *t)
{
    char s[64];
    if (t->dtype != DVL_F32 || t->ndim < 1) {
        dvl_fail(ctx, "%s: %s %s must be an f32 tensor with rows, is %s %s", op, what,
                 dvl_tname(t), dvl_dtype_name(t->dtype), dvl_shape_str(t, s, sizeof s));
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ concat_rows */

/* The output gradient splits at row na: the first part is a's, the rest b's. */
static void concat_rows_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *a = node->in[0], *b = node->in[1];
    const float *gout = dvl_grad(ctx, node->out);
    float *ga = a->requires_grad ? dvl_grad(ctx, a) : NULL;
    float *gb = b->requires_grad ? dvl_grad(ctx, b) : NULL;
    if (!gout || (a->requires_grad && !ga) || (b->requires_grad && !gb))
        return;
    switch (a->device) {
    case DVL_CPU:
        dvl_cpu_concat_rows_bwd(ga, gb, gout, a->shape[0], b->shape[0], row_size(a));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_concat_rows_bwd(ga, gb, gout, a->shape[0], b->shape[0], row_size(a));
        dvl_ctx_check(ctx, "concat_rows backward");
        break;
#endif
    default:
        dvl_fail(ctx, "concat_rows: device not supported");
    }
}

dvl_tensor *dvl_concat_rows(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b)
{
    if (!a || !b)
        return NULL;
    if (!check_rows(ctx, "concat_rows", "a", a) || !check_rows(ctx, "concat_rows", "b", b))
        return NULL;
    char sa[64], sb[64];
    if (!same_row_shape(a, b))
        return dvl_fail(ctx, "concat_rows: rows of %s %s and %s %s differ in shape", dvl_tname(a),
                        dvl_shape_str(a, sa, sizeof sa), dvl_tname(b),
                        dvl_shape_str(b, sb, sizeof sb));
    if (a->device != b->device)
        return dvl_fail(ctx, "concat_rows: %s and %s are on different devices", dvl_tname(a),
                        dvl_tname(b));
    dvl_tensor *out = new_rows(ctx, a, a->shape[0] + b->shape[0]);
    if (!out)
        return NULL;
    switch (a->device) {
    case DVL_CPU:
        dvl_cpu_concat_rows_fwd(dvl_f32(out), dvl_f32(a), dvl_f32(b), a->shape[0], b->shape[0],
                                row_size(a));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_concat_rows_fwd(dvl_f32(out), dvl_f32(a), dvl_f32(b), a->shape[0],
                                 b->shape[0], row_size(a));
        if (!dvl_ctx_check(ctx, "concat_rows"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "concat_rows: device not supported");
    }
    dvl_tensor *ins[2] = {a, b};
    if (dvl_needs_grad(ctx, ins, 2) &&
        !dvl_record(ctx, "concat_rows", concat_rows_backward, out, ins, 2))
        return NULL;
    return out;
}

/* ------------------------------------------------------------- slice_rows */

dvl_tensor *dvl_slice_rows(dvl_ctx *ctx, dvl_tensor *x, int64_t start, int64_t n)
{
    if (!x)
        return NULL;
    char s[64];
    if (x->ndim < 1)
        return dvl_fail(ctx, "slice_rows: %s %s has no rows", dvl_tname(x),
                        dvl_shape_str(x, s, sizeof s));
    if (start < 0 || n < 0 || n > x->shape[0] - start)
        return dvl_fail(ctx, "slice_rows: rows [%lld, %lld + %lld) outside the %lld rows of %s %s",
                        (long long)start, (long long)start, (long long)n,
                        (long long)x->shape[0], dvl_tname(x), dvl_shape_str(x, s, sizeof s));
    /* Rows are contiguous, so the slice is a view; it shares x's gradient
     * buffer, which is how its gradient reaches x without a tape node. */
    int64_t shape[DVL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = n;
    return dvl_view(ctx, x, x->ndim, shape, start * row_size(x));
}

/* ------------------------------------------------------------ slice_cols */
/* Columns are not contiguous: the slice is a copy, its gradient added back
 * into the columns it came from. */

static void slice_cols_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0];
    const int64_t rows = dvl_rows(x), cols = dvl_cols(x), start = node->i[0], n = node->i[1];
    const float *gy = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, x);
    if (!gy || !gx)
        return;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_slice_cols_bwd(gx, gy, rows, cols, start, n);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_slice_cols_bwd(gx, gy, rows, cols, start, n);
        dvl_ctx_check(ctx, "slice_cols backward");
        break;
#endif
    default:
        dvl_fail(ctx, "slice_cols: device not supported");
    }
}

dvl_tensor *dvl_slice_cols(dvl_ctx *ctx, dvl_tensor *x, int64_t start, int64_t n)
{
    if (!x)
        return NULL;
    char s[64];
    if (x->dtype != DVL_F32 || x->ndim < 1)
        return dvl_fail(ctx, "slice_cols: %s %s must be an f32 tensor of at least one dimension",
                        dvl_tname(x), dvl_shape_str(x, s, sizeof s));
    const int64_t rows = dvl_rows(x), cols = dvl_cols(x);
    if (start < 0 || n < 0 || n > cols - start)
        return dvl_fail(ctx,
                        "slice_cols: columns [%lld, %lld + %lld) outside the %lld columns of %s %s",
                        (long long)start, (long long)start, (long long)n, (long long)cols,
                        dvl_tname(x), dvl_shape_str(x, s, sizeof s));
    int64_t shape[DVL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = n;
    dvl_tensor *y = dvl_new(ctx, DVL_F32, x->ndim, shape);
    if (!y)
        return NULL;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_slice_cols_fwd(dvl_f32(y), dvl_f32(x), rows, cols, start, n);
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        dvl_cuda_slice_cols_fwd(dvl_f32(y), dvl_f32(x), rows, cols, start, n);
        if (!dvl_ctx_check(ctx, "slice_cols"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "slice_cols: device not supported");
    }
    if (dvl_needs_grad(ctx, &x, 1)) {
        dvl_node *node = dvl_record(ctx, "slice_cols", slice_cols_backward, y, &x, 1);
        if (!node)
            return NULL;
        node->i[0] = start;
        node->i[1] = n;
    }
    return y;
}

/* ------------------------------------------------------------ gather_rows */

/* Scatter-add of the output rows back to the rows they were read from, in
 * the order of idx for every element (repeats add deterministically). */
static void gather_rows_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *x = node->in[0];
    if (!x->requires_grad)
        return;
    const float *gout = dvl_grad(ctx, node->out);
    float *gx = dvl_grad(ctx, x);
    if (!gout || !gx)
        return;
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_embedding_bwd(gx, gout, (const int32_t *)node->p[0], node->i[0], row_size(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        int32_t *uid, *off, *pos;
        int64_t nu = dvl_dev_group_ids(ctx, node->p[0], node->i[0], &uid, &off, &pos);
        if (nu < 0)
            return;
        dvl_cuda_embedding_bwd(gx, gout, uid, off, pos, nu, row_size(x));
        dvl_ctx_check(ctx, "gather_rows backward");
        break;
    }
#endif
    default:
        dvl_fail(ctx, "gather_rows: device not supported");
    }
}

dvl_tensor *dvl_gather_rows(dvl_ctx *ctx, dvl_tensor *x, const int32_t *idx, int64_t n)
{
    if (!x)
        return NULL;
    if (!check_rows(ctx, "gather_rows", "x", x))
        return NULL;
    char s[64];
    if (n < 0 || (n > 0 && !idx))
        return dvl_fail(ctx, "gather_rows: %lld indices %s for %s", (long long)n,
                        idx ? "given" : "missing", dvl_tname(x));
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= x->shape[0])
            return dvl_fail(ctx,
                            "gather_rows: index %d at position %lld is outside the %lld rows of "
                            "%s %s",
                            (int)idx[i], (long long)i, (long long)x->shape[0], dvl_tname(x),
                            dvl_shape_str(x, s, sizeof s));
    dvl_tensor *out = new_rows(ctx, x, n);
    if (!out)
        return NULL;
    /* Gathering rows is an embedding lookup with x as the table. */
    switch (x->device) {
    case DVL_CPU:
        dvl_cpu_embedding_fwd(dvl_f32(out), dvl_f32(x), idx, n, row_size(x));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA: {
        int32_t *idx_d = dvl_dev_copy(ctx, idx, (size_t)n * sizeof *idx);
        if (!idx_d)
            return NULL;
        dvl_cuda_embedding_fwd(dvl_f32(out), dvl_f32(x), idx_d, n, row_size(x));
        if (!dvl_ctx_check(ctx, "gather_rows"))
            return NULL;
        break;
    }
#endif
    default:
        return dvl_fail(ctx, "gather_rows: device not supported");
    }
    if (dvl_needs_grad(ctx, &x, 1)) {
        int32_t *saved = dvl_arena_dup(ctx, idx, (size_t)n * sizeof *idx);
        if (!saved)
            return NULL;
        dvl_node *node = dvl_record(ctx, "gather_rows", gather_rows_backward, out, &x, 1);
        if (!node)
            return NULL;
        node->i[0] = n;
        node->p[0] = saved;
    }
    return out;
}

/* ----------------------------------------------------------- scatter_rows */

/* Each output row came from exactly one place: src row inv[r] when replaced,
 * dst row r otherwise, so its gradient goes there and nowhere else. */
static void scatter_rows_backward(dvl_ctx *ctx, dvl_node *node)
{
    dvl_tensor *dst = node->in[0], *src = node->in[1];
    const float *gout = dvl_grad(ctx, node->out);
    float *gdst = dst->requires_grad ? dvl_grad(ctx, dst) : NULL;
    float *gsrc = src->requires_grad ? dvl_grad(ctx, src) : NULL;
    if (!gout || (dst->requires_grad && !gdst) || (src->requires_grad && !gsrc))
        return;
    switch (dst->device) {
    case DVL_CPU:
        dvl_cpu_scatter_rows_bwd(gdst, gsrc, gout, (const int32_t *)node->p[0], dst->shape[0],
                                 row_size(dst));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        /* p[1]: the device copy of inv made by the forward pass. */
        dvl_cuda_scatter_rows_bwd(gdst, gsrc, gout, (const int32_t *)node->p[1], dst->shape[0],
                                  row_size(dst));
        dvl_ctx_check(ctx, "scatter_rows backward");
        break;
#endif
    default:
        dvl_fail(ctx, "scatter_rows: device not supported");
    }
}

dvl_tensor *dvl_scatter_rows(dvl_ctx *ctx, dvl_tensor *dst, dvl_tensor *src, const int32_t *idx)
{
    if (!dst || !src)
        return NULL;
    if (!check_rows(ctx, "scatter_rows", "dst", dst) ||
        !check_rows(ctx, "scatter_rows", "src", src))
        return NULL;
    char sd[64], ss[64];
    if (!same_row_shape(dst, src))
        return dvl_fail(ctx, "scatter_rows: rows of src %s %s and dst %s %s differ in shape",
                        dvl_tname(src), dvl_shape_str(src, ss, sizeof ss), dvl_tname(dst),
                        dvl_shape_str(dst, sd, sizeof sd));
    if (dst->device != src->device)
        return dvl_fail(ctx, "scatter_rows: %s and %s are on different devices", dvl_tname(dst),
                        dvl_tname(src));
    int64_t n = dst->shape[0], m = src->shape[0];
    if (m > 0 && !idx)
        return dvl_fail(ctx, "scatter_rows: no indices for the %lld rows of %s", (long long)m,
                        dvl_tname(src));
    if (m > n)
        return dvl_fail(ctx, "scatter_rows: %lld rows of src %s cannot replace distinct rows of "
                        "dst %s %s", (long long)m, dvl_tname(src), dvl_tname(dst),
                        dvl_shape_str(dst, sd, sizeof sd));

    /* The inverse map, dst row -> src row (-1: kept), checks that the
     * indices are in range and distinct on the way, and lets both passes run
     * over the output rows with one writer per row. */
    int32_t *inv = dvl_alloc(ctx, (size_t)n * sizeof *inv);
    if (!inv)
        return NULL;
    for (int64_t r = 0; r < n; r++)
        inv[r] = -1;
    for (int64_t i = 0; i < m; i++) {
        if (idx[i] < 0 || idx[i] >= n)
            return dvl_fail(ctx,
                            "scatter_rows: index %d at position %lld is outside the %lld rows of "
                            "dst %s",
                            (int)idx[i], (long long)i, (long long)n, dvl_tname(dst));
        if (inv[idx[i]] >= 0)
            return dvl_fail(ctx,
                            "scatter_rows: index %d at positions %d and %lld is repeated (rows "
                            "of dst %s must be replaced once)",
                            (int)idx[i], (int)inv[idx[i]], (long long)i, dvl_tname(dst));
        inv[idx[i]] = (int32_t)i; /* i < m <= n, and n rows are addressed by int32 */
    }

    dvl_tensor *out = new_rows(ctx, dst, n);
    if (!out)
        return NULL;
    int32_t *inv_d = NULL;
    switch (dst->device) {
    case DVL_CPU:
        dvl_cpu_scatter_rows_fwd(dvl_f32(out), dvl_f32(dst), dvl_f32(src), inv, n, row_size(dst));
        break;
#ifdef DVL_HAVE_CUDA
    case DVL_CUDA:
        inv_d = dvl_dev_copy(ctx, inv, (size_t)n * sizeof *inv);
        if (!inv_d)
            return NULL;
        dvl_cuda_scatter_rows_fwd(dvl_f32(out), dvl_f32(dst), dvl_f32(src), inv_d, n,
                                  row_size(dst));
        if (!dvl_ctx_check(ctx, "scatter_rows"))
            return NULL;
        break;
#endif
    default:
        return dvl_fail(ctx, "scatter_rows: device not supported");
    }
    dvl_tensor *ins[2] = {dst, src};
    if (dvl_needs_grad(ctx, ins, 2)) {
        dvl_node *node = dvl_record(ctx, "scatter_rows", scatter_rows_backward, out, ins, 2);
        if (!node)
            return NULL;
        node->p[0] = inv; /* a copy derived from idx: the caller may reuse idx */
        node->p[1] = inv_d;
    }
    return out;
}
