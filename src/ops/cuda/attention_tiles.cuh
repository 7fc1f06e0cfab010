/* What the tiled attention kernels share (C++ only): the problem's
 * arguments, the mask rule per query row (the spans of ops/mask_spans.h,
 * the rule the CPU uses, minus padded keys), the launcher, and the bf16
 * tensor-core kernels' entry points (ops/cuda/attention_bf16.cu), which
 * ops/cuda/attention.cu calls for contexts whose products are bf16.
 * Layouts as ops/cpu/attention.h: q, out, dout, dq [N, Tq, Hq, D]; k, v, dk,
 * dv [N, Tk, Hkv, D]; lse [N, Hq, Tq] (+inf for a row that sees no key). */
#ifndef DVL_OPS_CUDA_ATTENTION_TILES_CUH
#define DVL_OPS_CUDA_ATTENTION_TILES_CUH

#include <limits.h>
#include <stdint.h>

#include "ops/cuda/common.cuh"
#include "ops/mask_spans.h"

struct fa_args {
    int64_t N, Tq, Tk, Hq, Hkv, D;
    int kind;
    int64_t block, half, q_offset;
    const uint8_t *key_valid; /* [N, Tk] device bytes or NULL */
    float scale;
};

/* Max and sum over each group of W consecutive lanes (W a power of two up
 * to 32; xor offsets below W stay inside the group): the owners of one row
 * of a product tile (16 in the f32 kernels, 4 in the bf16 ones). Every lane
 * of the warp must call; all lanes of a group get the same bits (each
 * butterfly step combines the same two values). */
template <int W> __device__ static inline float group_max(float v)
{
    for (int o = W / 2; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int W> __device__ static inline float group_sum(float v)
{
    for (int o = W / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Which tile, head and sequence block blk of a kernel's grid takes. The
 * tile varies slowest: one tile of every (sequence, head) before the next.
 * A GPU starts blocks about in index order, and under the causal rules
 * (causal, block-causal, each half of block diffusion) a query tile's work
 * grows with its index and a key tile's shrinks, so query tiles go last
 * first (queries: true) and key tiles first first: the longest blocks start
 * first and the last wave holds the shortest (longest-processing-time
 * order; with the tile varying fastest, the last heads' longest tiles
 * started last and ran on while the other multiprocessors idled). Blocks
 * write disjoint outputs, so the order changes no result. */
struct fa_block {
    int64_t tile, h, n;
};
__device__ static inline fa_block fa_block_of(unsigned blk, int64_t tiles, const fa_args &a,
                                              bool queries)
{
    /* 32-bit: the launch checked that the grid, tiles x N x Hq, fits an int */
    const unsigned heads = (unsigned)(a.N * a.Hq), hq = (unsigned)a.Hq;
    const unsigned nh = blk % heads, t = blk / heads;
    return fa_block{queries ? tiles - 1 - (int64_t)t : (int64_t)t, (int64_t)(nh % hq),
                    (int64_t)(nh / hq)};
}

/* Query row i's mask spans into lo/hi, empty ([0, 0)) where the rule gives
 * fewer than two or the row is past the end (a partial last tile). */
__device__ static inline void row_spans(const fa_args &a, int64_t i, int64_t *lo, int64_t *hi)
{
    int64_t l[2] = {0, 0}, h[2] = {0, 0};
    int n = 0;
    if (i < a.Tq)
        n = dvl_spans(a.kind, a.block, a.half, a.q_offset, i, a.Tk, l, h);
    for (int r = 0; r < 2; r++) {
        lo[r] = r < n ? l[r] : 0;
        hi[r] = r < n ? h[r] : 0;
    }
}

__device__ static inline bool in_spans(const int64_t *lo, const int64_t *hi, int64_t j)
{
    return (j >= lo[0] && j < hi[0]) || (j >= lo[1] && j < hi[1]);
}

/* Whether a row's spans meet keys [k0, k1). */
__device__ static inline bool spans_meet(const int64_t *lo, const int64_t *hi, int64_t k0,
                                         int64_t k1)
{
    return (lo[0] < hi[0] && lo[0] < k1 && hi[0] > k0) ||
           (lo[1] < hi[1] && lo[1] < k1 && hi[1] > k0);
}

/* Whether one of a row's spans holds all of keys [k0, k1). */
__device__ static inline bool spans_cover(const int64_t *lo, const int64_t *hi, int64_t k0,
                                          int64_t k1)
{
    return (lo[0] <= k0 && hi[0] >= k1) || (lo[1] <= k0 && hi[1] >= k1);
}

/* One element of a query head's dK and dV parts: stored into the per-head
 * scratch pk, pv [N, Tk, Hq, D] at poff when given (grouped heads: kv_sum
 * adds the group's heads later), else added into dk, dv [N, Tk, Hkv, D] at
 * off (either may be NULL: that gradient is not wanted). */
__device__ static inline void store_kv_grad(float *dk, float *dv, float *pk, float *pv,
                                            int64_t off, int64_t poff, float gk, float gv)
{
    if (pk)
        pk[poff] = gk;
    else if (dk)
        dk[off] += gk;
    if (pv)
        pv[poff] = gv;
    else if (dv)
        dv[off] += gv;
}

/* Key j of sequence n exists and is not padding. */
__device__ static inline unsigned char key_ok(const fa_args &a, int64_t n, int64_t j)
{
    return j < a.Tk && (!a.key_valid || a.key_valid[n * a.Tk + j]);
}

static inline int64_t fa_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#ifndef DVL_CUDA_EMU_KERNELS
/* Opt the kernel into `bytes` of dynamic shared memory (past the default
 * 48 KB), then launch `blocks` blocks of `threads`; errors into err. */
template <typename K, typename... Args>
static int fa_launch(K kernel, int64_t blocks, int threads, size_t bytes, const char *what,
                     dvl_err *err, Args... args)
{
    if (blocks > INT_MAX)
        return dvl_errf(err, DVL_EINVAL, "attention %s: %lld thread blocks exceed the grid limit",
                        what, (long long)blocks);
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)bytes);
    if (e != cudaSuccess)
        return dvl_cu_fail(err, e, "attention %s: opting into %zu bytes of shared memory", what,
                           bytes);
    kernel<<<(unsigned)blocks, threads, bytes>>>(args...);
    return dvl_cuda_check(what, err);
}

/* The bf16 tensor-core kernels (ops/cuda/attention_bf16.cu), D <=
 * DVL_CUDA_ATTN_MAX_D, on q, k, v, dout rounded to bf16 (the layouts of the
 * f32 tensors). fwd: out, lse as the f32 kernels. bwd_kv: query head h's
 * parts of dK, dV per key, stored into pk, pv [N, Tk, Hq, D] when given
 * (grouped heads), else added into dk, dv. bwd_q: dq +=. Dv: dO . O per
 * query row, [N, Hq, Tq] (from the f32 dO and O). */
int fa_bf16_fwd(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                const fa_args &a, dvl_err *err);
int fa_bf16_bwd_kv(float *dk, float *dv, float *pk, float *pv, const uint16_t *dout,
                   const uint16_t *q, const uint16_t *k, const uint16_t *v, const float *lse,
                   const float *Dv, const fa_args &a, dvl_err *err);
int fa_bf16_bwd_q(float *dq, const uint16_t *dout, const uint16_t *q, const uint16_t *k,
                  const uint16_t *v, const float *lse, const float *Dv, const fa_args &a,
                  dvl_err *err);
#endif

#endif
