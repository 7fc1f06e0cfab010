/* Helpers for the CUDA cases of the op layer (src/ops/NAME.c): copies of the
 * callers' host arrays (token ids, labels, weights, positions, masks) into
 * the context's device arena, and the grouping of token positions by id
 * that makes the embedding backward deterministic. Only compiled into the
 * CUDA cases (DVL_HAVE_CUDA). */
#ifndef DVL_OPS_DEV_H
#define DVL_OPS_DEV_H

#ifdef DVL_HAVE_CUDA

#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda.h"
#include "tensor/tensor.h"

/* A device copy of `bytes` of host memory (arena, valid until reset); NULL
 * with the context's error set on failure. bytes 0 gives a valid pointer. */
static inline void *dvl_dev_copy(dvl_ctx *ctx, const void *host, size_t bytes)
{
    void *d = dvl_alloc_dev(ctx, bytes);
    if (!d || (bytes && dvl_ctx_memcpy_h2d(ctx, d, host, bytes) != DVL_OK))
        return NULL;
    return d;
}

/* Attention's products in the arithmetic of the context's other products
 * (f32, TF32 or bf16): the precision the user chose for the matrix work,
 * unless the handle names one for attention (dvl_cublas_set_attention_math). */
static inline dvl_cuda_math dvl_dev_attention_math(dvl_ctx *ctx)
{
    return dvl_cublas_attention_math(dvl_ctx_cublas(ctx));
}

/* The linear layer's products y = x W^T (+ b) and its backward (dx += dy W,
 * dW += dy^T x, db += colsum dy; each may be NULL) on the context's cuBLAS
 * handle, in the handle's math mode: f32 or TF32 products, or bf16 ones
 * whose operand copies and column-sum scratch come from the device arena.
 * The scratch is given back once the products are queued (the arena is
 * rewound behind it): the next allocation reuses it after them on the same
 * stream, so a step holds one call's operand copies, not every layer's
 * (at 7B a bf16 copy of the weights alone is 16 GB). w16: W's bf16 copy
 * kept by its parameter store (a frozen weight, dvl_bf16_copy) or NULL;
 * bf16 products then read it instead of rounding W. False with the
 * context's error set on failure. */
static inline bool dvl_dev_linear_fwd(dvl_ctx *ctx, float *y, const float *x, const float *w,
                                      const uint16_t *w16, const float *b, int64_t rows,
                                      int64_t in, int64_t out)
{
    struct dvl_cublas *h = dvl_ctx_cublas(ctx);
    dvl_err e = {0, ""};
    int rc;
    if (dvl_cublas_math(h) == DVL_MATH_BF16) {
        const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
        void *scratch =
            dvl_alloc_dev(ctx, dvl_cuda_linear_bf16_scratch(rows, in, out, false, w16 != NULL));
        if (!scratch)
            return false;
        rc = dvl_cuda_linear_fwd_bf16(h, y, x, w, w16, b, scratch, rows, in, out, &e);
        dvl_arena_rewind(ctx, mark);
    } else {
        rc = dvl_cuda_linear_fwd(h, y, x, w, b, rows, in, out, &e);
    }
    if (rc != DVL_OK) {
        dvl_ctx_set_err(ctx, &e);
        return false;
    }
    return true;
}

static inline bool dvl_dev_linear_bwd(dvl_ctx *ctx, float *dx, float *dw, float *db,
                                      const float *dy, const float *x, const float *w,
                                      const uint16_t *w16, int64_t rows, int64_t in, int64_t out)
{
    struct dvl_cublas *h = dvl_ctx_cublas(ctx);
    const dvl_arena_mark mark = dvl_arena_get_mark(ctx);
    float *colsum = NULL;
    void *scratch = NULL;
    const bool bf16 = dvl_cublas_math(h) == DVL_MATH_BF16;
    if ((db && !(colsum = dvl_alloc_dev(ctx, (size_t)dvl_cuda_colsum_scratch(rows, out) *
                                                 sizeof(float)))) ||
        (bf16 && (dx || dw) &&
         !(scratch = dvl_alloc_dev(
               ctx, dvl_cuda_linear_bf16_scratch(rows, in, out, true, w16 != NULL))))) {
        dvl_arena_rewind(ctx, mark);
        return false;
    }
    dvl_err e = {0, ""};
    const int rc = bf16 ? dvl_cuda_linear_bwd_bf16(h, dx, dw, db, colsum, scratch, dy, x, w, w16,
                                                   rows, in, out, &e)
                        : dvl_cuda_linear_bwd(h, dx, dw, db, colsum, dy, x, w, rows, in, out, &e);
    dvl_arena_rewind(ctx, mark);
    if (rc != DVL_OK) {
        dvl_ctx_set_err(ctx, &e);
        return false;
    }
    return true;
}

static inline int dvl_dev_cmp_i64(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Token positions grouped by id, on the device: uid[k] the k-th distinct id
 * (ascending), its positions pos[off[k] .. off[k+1]) ascending. Sorting
 * (id << 32 | position) keys on the host: n is a batch of tokens, small next
 * to the work of the step. Returns the number of distinct ids, -1 on
 * failure (context error set). */
static inline int64_t dvl_dev_group_ids(dvl_ctx *ctx, const int32_t *ids, int64_t n,
                                        int32_t **uid_d, int32_t **off_d, int32_t **pos_d)
{
    int64_t *key = dvl_alloc(ctx, (size_t)(n ? n : 1) * sizeof *key);
    int32_t *uid = dvl_alloc(ctx, (size_t)(n ? n : 1) * sizeof *uid);
    int32_t *off = dvl_alloc(ctx, (size_t)(n + 1) * sizeof *off);
    int32_t *pos = dvl_alloc(ctx, (size_t)(n ? n : 1) * sizeof *pos);
    if (!key || !uid || !off || !pos)
        return -1;
    for (int64_t i = 0; i < n; i++)
        key[i] = ((int64_t)ids[i] << 32) | i;
    qsort(key, (size_t)n, sizeof *key, dvl_dev_cmp_i64);
    int64_t nu = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = (int32_t)(key[i] >> 32);
        if (i == 0 || id != uid[nu - 1]) {
            uid[nu] = id;
            off[nu] = (int32_t)i;
            nu++;
        }
        pos[i] = (int32_t)(key[i] & 0xffffffff);
    }
    off[nu] = (int32_t)n;
    *uid_d = dvl_dev_copy(ctx, uid, (size_t)nu * sizeof *uid);
    *off_d = dvl_dev_copy(ctx, off, (size_t)(nu + 1) * sizeof *off);
    *pos_d = dvl_dev_copy(ctx, pos, (size_t)n * sizeof *pos);
    if (!*uid_d || !*off_d || !*pos_d)
        return -1;
    return nu;
}

#endif /* DVL_HAVE_CUDA */

#endif
