/* CPU kernels of scaled dot-product attention (flash-attention style: the
 * [Tq, Tk] probability matrix is never kept; the forward pass saves one
 * logsumexp per query row and the backward pass recomputes the scores).
 *
 * Layouts: q, out, dout, dq [N, Tq, Hq, D]; k, v, dk, dv [N, Tk, Hkv, D];
 * lse [N, Hq, Tq]. Query head h reads kv head h / (Hq / Hkv). */
#ifndef DVL_CPU_ATTENTION_H
#define DVL_CPU_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"

/* Query rows per tile: the kernels hold a [tile, Tk] block of scores. */
#define DVL_ATTN_TILE 64

/* The mask rule in span form (defined in ops/mask.c next to
 * dvl_mask_allows, which is built on it): the keys query row i may see,
 * ignoring padding, as at most two non-empty half-open ranges [lo, hi) in
 * increasing order, clipped to [0, tk). Returns how many. */
int dvl_mask_spans(const dvl_mask *m, int64_t i, int64_t tk, int64_t lo[2], int64_t hi[2]);

/* Scratch floats the kernels need (from the arena): a batch of score
 * blocks, at least [DVL_ATTN_TILE, Tk], at most about 4 MiB (8 MiB for
 * backward) unless one tile needs more. */
size_t dvl_cpu_attention_fwd_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq);
size_t dvl_cpu_attention_bwd_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq);

/* out = softmax(q k^T * scale + mask) v; lse (may be NULL) receives
 * log sum_j exp(s_ij) over the visible keys, +inf for a row with none (its
 * output is zero). */
void dvl_cpu_attention_fwd(float *out, float *lse, float *scratch, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale);

/* Accumulates (+=) the gradients into dq, dk, dv; any of them may be NULL
 * (not wanted). out and lse are the forward pass's. */
void dvl_cpu_attention_bwd(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale);

#endif
