/* The attention mask rules (dvl_mask in ops.h) in span form, as a static
 * inline function over plain scalars so that one definition serves the C
 * library (ops/mask.c: dvl_mask_spans, dvl_mask_allows) and the CUDA
 * kernels (ops/cuda/attention.cu) alike.
 *
 * Every rule lets query row i see at most two contiguous runs of keys; the
 * function writes them as half-open ranges [lo, hi) clipped to [0, tk), in
 * increasing order, and returns how many. kind is a dvl_mask_kind, B the
 * block size, L the half length of BLOCK_DIFF, q_offset the absolute
 * position of query row 0. Padding (key_valid) is applied on top by the
 * kernels. */
#ifndef DVL_OPS_MASK_SPANS_H
#define DVL_OPS_MASK_SPANS_H

#include <stdint.h>

#ifdef __CUDACC__
#define DVL_HD __host__ __device__
#else
#define DVL_HD
#endif

/* Values of dvl_mask_kind (ops.h), repeated here so that CUDA code need not
 * include ops.h; ops/mask.c checks that they agree. */
#define DVL_MASK_SPANS_BIDIR 0
#define DVL_MASK_SPANS_CAUSAL 1
#define DVL_MASK_SPANS_BLOCK_DIFF 2
#define DVL_MASK_SPANS_BLOCK_CAUSAL 3

static inline DVL_HD int64_t dvl_spans_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Append [lo, hi) clipped to [0, tk) if it is not empty. */
static inline DVL_HD int dvl_spans_push(int n, int64_t lo, int64_t hi, int64_t tk, int64_t *los,
                                        int64_t *his)
{
    if (lo < 0)
        lo = 0;
    hi = dvl_spans_min64(hi, tk);
    if (lo >= hi)
        return n;
    los[n] = lo;
    his[n] = hi;
    return n + 1;
}

static inline DVL_HD int dvl_spans(int kind, int64_t B, int64_t L, int64_t q_offset, int64_t i,
                                   int64_t tk, int64_t lo[2], int64_t hi[2])
{
    const int64_t p = q_offset + i; /* absolute query position */
    switch (kind) {
    case DVL_MASK_SPANS_BIDIR:
        return dvl_spans_push(0, 0, tk, tk, lo, hi);
    case DVL_MASK_SPANS_CAUSAL:
        /* j <= p. */
        if (p < 0)
            return 0;
        return dvl_spans_push(0, 0, p + 1, tk, lo, hi);
    case DVL_MASK_SPANS_BLOCK_CAUSAL:
        /* b(j) <= b(p) with b(x) = x / B: every key before the end of p's
         * block, i.e. j < (p / B + 1) * B. */
        if (B <= 0 || p < 0)
            return 0;
        return dvl_spans_push(0, 0, (p / B + 1) * B, tk, lo, hi);
    case DVL_MASK_SPANS_BLOCK_DIFF: {
        /* Sequence [x_t ; x_0], halves of length L; b(x) = (x mod L) / B.
         * The rule is stated in row indices of that sequence, so q_offset
         * does not enter (the op requires it to be 0). */
        if (B <= 0 || L <= 0 || i < 0 || i >= 2 * L)
            return 0;
        if (i < L) {
            const int64_t bq = i / B;
            /* noisy q -> noisy k iff b(k) == b(q): q's own block of x_t,
             * cut at L where the last block is partial. */
            int n = dvl_spans_push(0, bq * B, dvl_spans_min64((bq + 1) * B, L), tk, lo, hi);
            /* noisy q -> clean k iff b(k) < b(q): the x_0 blocks before q's
             * (empty for the first block). */
            return dvl_spans_push(n, L, L + bq * B, tk, lo, hi);
        }
        /* clean q -> clean k iff b(k) <= b(q): x_0 up to the end of q's
         * block; clean q -> noisy k never. */
        const int64_t bq = (i - L) / B;
        return dvl_spans_push(0, L, L + dvl_spans_min64((bq + 1) * B, L), tk, lo, hi);
    }
    }
    return 0;
}

#endif
