/* The attention mask rules (dvl_mask in ops.h), defined once.
 *
 * Every rule lets a query see at most two contiguous runs of keys, so the
 * rules are written in that form (ops/mask_spans.h, shared with the CUDA
 * kernels): dvl_mask_spans gives, for query row i,
 * the half-open key ranges it may attend to. The attention kernels use the
 * spans directly (one call per query row, not one per score, and they tell
 * the kernel which key ranges a tile of queries can skip), and
 * dvl_mask_allows is defined through them, so the kernels and the per-pair
 * rule cannot disagree. Padding (key_valid) is applied on top by the kernels. */
#include <stdint.h>

#include "ops/cpu/attention.h"
#include "ops/mask_spans.h"
#include "ops/ops.h"

_Static_assert(DVL_MASK_BIDIR == DVL_MASK_SPANS_BIDIR && DVL_MASK_CAUSAL == DVL_MASK_SPANS_CAUSAL &&
                   DVL_MASK_BLOCK_DIFF == DVL_MASK_SPANS_BLOCK_DIFF &&
                   DVL_MASK_BLOCK_CAUSAL == DVL_MASK_SPANS_BLOCK_CAUSAL,
               "mask kinds of ops.h and ops/mask_spans.h differ");

int dvl_mask_spans(const dvl_mask *m, int64_t i, int64_t tk, int64_t lo[2], int64_t hi[2])
{
    return dvl_spans((int)m->kind, m->block_size, m->half, m->q_offset, i, tk, lo, hi);
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

int64_t dvl_mask_pairs(const dvl_mask *m, int64_t tq, int64_t tk)
{
    int64_t n = 0;
    for (int64_t i = 0; i < tq; i++) {
        int64_t lo[2], hi[2];
        const int r = dvl_mask_spans(m, i, tk, lo, hi);
        for (int k = 0; k < r; k++)
            n += hi[k] > lo[k] ? hi[k] - lo[k] : 0;
    }
    return n;
}
