/* The attention mask rules (dvl_mask in ops.h), defined once.
 *
 * Every rule lets a query see at most two contiguous runs of keys, so the
 * rules are written here in that form: dvl_mask_spans gives, for query row i,
 * the half-open key ranges it may attend to. The attention kernels use the
 * spans directly (one call per query row, not one per score, and they tell
 * the kernel which key ranges a tile of queries can skip), and
 * dvl_mask_allows is defined through them, so the kernels and the per-pair
 * rule cannot disagree. Padding (key_valid) is applied on top by the kernels. */
#include <stdint.h>

#include "ops/cpu/attention.h"
#include "ops/ops.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Append [lo, hi) clipped to [0, tk) if it is not empty. */
static int push_span(int n, int64_t lo, int64_t hi, int64_t tk, int64_t *los, int64_t *his)
{
    if (lo < 0)
        lo = 0;
    hi = min64(hi, tk);
    if (lo >= hi)
        return n;
    los[n] = lo;
    his[n] = hi;
    return n + 1;
}

int dvl_mask_spans(const dvl_mask *m, int64_t i, int64_t tk, int64_t lo[2], int64_t hi[2])
{
    const int64_t B = m->block_size;
    const int64_t p = m->q_offset + i; /* absolute query position */
    switch (m->kind) {
    case DVL_MASK_BIDIR:
        return push_span(0, 0, tk, tk, lo, hi);
    case DVL_MASK_CAUSAL:
        /* j <= p. */
        if (p < 0)
            return 0;
        return push_span(0, 0, p + 1, tk, lo, hi);
    case DVL_MASK_BLOCK_CAUSAL:
        /* b(j) <= b(p) with b(x) = x / B: every key before the end of p's
         * block, i.e. j < (p / B + 1) * B. */
        if (B <= 0 || p < 0)
            return 0;
        return push_span(0, 0, (p / B + 1) * B, tk, lo, hi);
    case DVL_MASK_BLOCK_DIFF: {
        /* Sequence [x_t ; x_0], halves of length L; b(x) = (x mod L) / B.
         * The rule is stated in row indices of that sequence, so q_offset
         * does not enter (the op requires it to be 0). */
        const int64_t L = m->half;
        if (B <= 0 || L <= 0 || i < 0 || i >= 2 * L)
            return 0;
        if (i < L) {
            const int64_t bq = i / B;
            /* noisy q -> noisy k iff b(k) == b(q): q's own block of x_t,
             * cut at L where the last block is partial. */
            int n = push_span(0, bq * B, min64((bq + 1) * B, L), tk, lo, hi);
            /* noisy q -> clean k iff b(k) < b(q): the x_0 blocks before q's
             * (empty for the first block). */
            return push_span(n, L, L + bq * B, tk, lo, hi);
        }
        /* clean q -> clean k iff b(k) <= b(q): x_0 up to the end of q's
         * block; clean q -> noisy k never. */
        const int64_t bq = (i - L) / B;
        return push_span(0, L, L + min64((bq + 1) * B, L), tk, lo, hi);
    }
    }
    return 0;
}

bool dvl_mask_allows(const dvl_mask *m, int64_t i, int64_t j)
{
    int64_t lo[2], hi[2];
    int n = dvl_mask_spans(m, i, INT64_MAX, lo, hi);
    for (int r = 0; r < n; r++)
        if (j >= lo[r] && j < hi[r])
            return true;
    return false;
}
