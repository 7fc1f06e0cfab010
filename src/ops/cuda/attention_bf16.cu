/* Attention on bf16 tensor cores, for contexts whose products are bf16
 * (train.precision bf16): FlashAttention-2 (Dao 2023, alg. 1 and 2) with
 * every product a warp-level mma.sync (ops/cuda/mma.cuh) on bf16 operands
 * with f32 accumulation, and the softmax, masking and row sums in f32 on
 * the accumulators themselves: the scores S and probabilities P never leave
 * registers. The same three kernels, tile skipping, mask rule and fixed
 * sum order as the f32 kernels of ops/cuda/attention.cu (read that file's
 * comment first), other tile sizes:
 *   forward   one block per (n, h, tile of 64 query rows), a loop over key
 *             tiles: S = scale Q K^T, online softmax, O += P V;
 *   backward  kernel kv, one block per (n, query head, tile of 64 keys), a
 *             loop over query tiles: dV_h += P^T dO, dK_h += dS^T Q;
 *             kernel q, one block per (n, h, tile of 64 query rows), a
 *             loop over key tiles: dQ += dS K;
 *   with P = exp(S - lse), dP = dO V^T, dS = P (dP - D), D = dO . O.
 * Rounded to bf16 (nearest even): Q, K, V, dO, which the kernels take in
 * bf16 (attention.cu rounds them once per call; a key tile is read by every
 * query tile's block, so rounding as tiles load repeated the conversions and
 * read f32 bytes that often), and P and dS before they multiply
 * (FlashAttention-2's bf16 recipe); everything else is f32.
 *
 * Threads: 4 warps; warp w owns rows 16 w .. 16 w + 15 of the block's 64
 * (query rows, or keys in kernel kv): the m of its m16n8k16 products.
 * A product with C columns leaves C / 8 accumulator tiles c[j][4] per
 * lane; with g = lane / 4, t = lane % 4, c[j][e] is row 16 w + g + 8 (e / 2),
 * column 8 j + 2 t + e % 2 (mma.cuh). A row's values are spread over the 4
 * lanes of a quad (same g): row max and row sum are two shuffles.
 * Two accumulator tiles are exactly the A operand of the next product
 * (acc_to_a), so P and dS go from one product into the next in registers.
 *
 * Shared memory holds bf16 tiles as the tensors store them (a row per
 * position, D values), rows padded by 8 values (16 bytes). Fragments come
 * from the tiles by ldmatrix (mma.cuh), 4 8 x 8 matrices a warp instruction:
 * A operands and the B operands that a tile stores transposed ([n][k]: K in
 * S = Q K^T) as stored, the B operands with k along the tile's rows (V in
 * O += P V, dO and Q in kernel kv, K in kernel q) with .trans, so no tile
 * is copied transposed (such copies were 2-byte stores, 8 to a bank). The
 * padding puts the 8 rows of one matrix, 16 bytes each, in 32 different
 * banks.
 *
 * The loop's tiles (K and V, or Q and dO in kernel kv) are double-buffered:
 * while the warps multiply one, the next tile the mask lets the block see
 * is already on its way into the other buffer by cp.async (mma.cuh), so a
 * block does not stall on global memory at each step (FlashAttention-2's
 * pipelining, with 2 stages).
 *
 * Where every row of a query tile sees every key of a key tile (no padding,
 * one span of each row holds the tile: all tiles away from the mask's
 * edges), the per-element mask test is skipped (key_tile). */
#include <math.h>

#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/mma.cuh"

/* The softmax runs in base 2 (FlashAttention-2's choice): exp(x) =
 * exp2(x log2 e), so each probability is one multiply-add and one exp2 (a
 * hardware instruction, 2 ulp; P is rounded to bf16 next anyway), and lse
 * is converted back to base e when stored. */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

#define MMA_THREADS 128
#define MMA_ROWS 64 /* rows of a block's tile: 16 per warp */

/* Tile of the loop's other side: 64 wide, 32 at D = 128, which keeps kernel
 * kv's and q's accumulators (dK, dV, or dQ with Q, dO, at D x 16 floats per
 * warp each) within the registers. */
template <int DP> __host__ __device__ constexpr int loop_tile() { return DP > 64 ? 32 : 64; }

/* ------------------------------------------------------------- helpers */

/* bf16 rows [row0, row0 + ROWS) of src (row stride `stride`, D values) into
 * the tile dst [ROWS][DP + 8]; zero past nvalid rows and past D. Eight
 * values (16 bytes) per load where rows allow it (D a multiple of 8, src
 * 16-byte aligned: the rows of a model's [N, T, H, D] tensors at D = 64 or
 * 128), one otherwise. */
template <int ROWS, int DP>
__device__ static inline void load_tile(uint16_t *dst, const uint16_t *src, int64_t row0,
                                        int64_t nvalid, int64_t stride, int64_t D)
{
    if (D % 8 == 0 && stride % 8 == 0 && (uintptr_t)src % 16 == 0) {
        for (int e = threadIdx.x; e < ROWS * DP / 8; e += MMA_THREADS) {
            const int r = e / (DP / 8), d = 8 * (e % (DP / 8));
            uint4 x = make_uint4(0, 0, 0, 0);
            if (r < nvalid && d < D)
                x = *(const uint4 *)(src + (row0 + r) * stride + d);
            /* 16-byte aligned: DP + 8 and d are multiples of 8 */
            *(uint4 *)(dst + r * (DP + 8) + d) = x;
        }
        return;
    }
    for (int e = threadIdx.x; e < ROWS * DP; e += MMA_THREADS) {
        const int r = e / DP, d = e % DP;
        dst[r * (DP + 8) + d] = (r < nvalid && d < D) ? src[(row0 + r) * stride + d] : 0;
    }
}

/* load_tile by cp.async (mma.cuh), so that the loop's next tile loads while
 * the warps multiply the current one; the caller commits and waits. Rows
 * that do not allow 16-byte copies go load_tile's way: plain stores, which
 * the same barrier publishes. */
template <int ROWS, int DP>
__device__ static inline void load_tile_async(uint16_t *dst, const uint16_t *src, int64_t row0,
                                              int64_t nvalid, int64_t stride, int64_t D)
{
    if (D % 8 == 0 && stride % 8 == 0 && (uintptr_t)src % 16 == 0) {
        for (int e = threadIdx.x; e < ROWS * DP / 8; e += MMA_THREADS) {
            const int r = e / (DP / 8), d = 8 * (e % (DP / 8));
            const bool ok = r < nvalid && d < D;
            cp_async16(dst + r * (DP + 8) + d, ok ? src + (row0 + r) * stride + d : src, ok);
        }
        return;
    }
    load_tile<ROWS, DP>(dst, src, row0, nvalid, stride, D);
}

/* The first key tile from k0 on (a multiple of BK) that some row of the
 * query tile, spans s_lo, s_hi, sees; a.Tk if none. Each tile's test is a
 * barrier: every thread must call. */
template <int BQ, int BK>
__device__ static inline int64_t next_key_tile(const int64_t (*s_lo)[2], const int64_t (*s_hi)[2],
                                               const fa_args &a, int64_t k0)
{
    const int tid = threadIdx.x;
    for (; k0 < a.Tk; k0 += BK)
        if (__syncthreads_or(tid < BQ && spans_meet(s_lo[tid], s_hi[tid], k0, k0 + BK)))
            return k0;
    return a.Tk;
}

/* The forward and dQ kernels' key tile k0: K and V into KV [2 BK][DP + 8]
 * by cp.async. */
template <int BK, int DP>
__device__ static inline void load_key_tile(uint16_t *KV, const uint16_t *kb, const uint16_t *vb,
                                            int64_t k0, const fa_args &a)
{
    const int64_t ks = a.Hkv * a.D;
    load_tile_async<BK, DP>(KV, kb, k0, a.Tk - k0, ks, a.D);
    load_tile_async<BK, DP>(KV + BK * (DP + 8), vb, k0, a.Tk - k0, ks, a.D);
}

/* Kernel kv's loop: the first query tile from i0 on (a multiple of BQ)
 * with a row that sees a key of [j0, j0 + BK), a.Tq if none; the spans of
 * its rows left in s_lo, s_hi. Each tile's test is a barrier. */
template <int BQ, int BK>
__device__ static inline int64_t next_query_tile(int64_t (*s_lo)[2], int64_t (*s_hi)[2],
                                                 const fa_args &a, int64_t i0, int64_t j0)
{
    const int tid = threadIdx.x;
    for (; i0 < a.Tq; i0 += BQ) {
        int need = 0;
        if (tid < BQ) {
            row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
            need = spans_meet(s_lo[tid], s_hi[tid], j0, j0 + BK);
        }
        if (__syncthreads_or(need))
            return i0;
    }
    return a.Tq;
}

/* Kernel kv's query tile i0: Q and dO into QO [2 BQ][DP + 8] by cp.async,
 * the rows' lse (base 2) and D into s_lse, s_D. */
template <int BQ, int DP>
__device__ static inline void load_query_tile(uint16_t *QO, float *s_lse, float *s_D,
                                              const uint16_t *qb, const uint16_t *ob,
                                              const float *lb, const float *db, int64_t i0,
                                              const fa_args &a)
{
    const int64_t qs = a.Hq * a.D;
    load_tile_async<BQ, DP>(QO, qb, i0, a.Tq - i0, qs, a.D);
    load_tile_async<BQ, DP>(QO + BQ * (DP + 8), ob, i0, a.Tq - i0, qs, a.D);
    const int tid = threadIdx.x;
    if (tid < BQ) {
        const int64_t gi = i0 + tid;
        s_lse[tid] = gi < a.Tq ? lb[gi] * LOG2E : INFINITY;
        s_D[tid] = gi < a.Tq ? db[gi] : 0.0f;
    }
}

/* A operand of the 16 x 16 tile at rows r0, columns k0 of S [.][ld]: its
 * a[0..3] are the 8 x 8 matrices at (r0, k0), (r0 + 8, k0), (r0, k0 + 8),
 * (r0 + 8, k0 + 8), whose rows lanes 0-7, 8-15, 16-23, 24-31 address. */
__device__ static inline void frag_a(uint32_t (&a)[4], const uint16_t *S, int ld, int r0, int k0)
{
    const int l = threadIdx.x % 32;
    ldsm_x4(a, S + (r0 + l % 8 + 8 * (l / 8 % 2)) * ld + k0 + 8 * (l / 16));
}

/* The B operands (16 x 8, k x n) of columns n0 .. n0 + 7 (b[0]) and n0 + 8
 * .. n0 + 15 (b[1]) at k0, from S [n][k] (B transposed, row stride ld):
 * the matrices at (n0, k0), (n0, k0 + 8), (n0 + 8, k0), (n0 + 8, k0 + 8). */
__device__ static inline void frag_b2(uint32_t (&b)[2][2], const uint16_t *S, int ld, int n0,
                                      int k0)
{
    const int l = threadIdx.x % 32;
    uint32_t r[4];
    ldsm_x4(r, S + (n0 + l % 8 + 8 * (l / 16)) * ld + k0 + 8 * (l / 8 % 2));
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

/* The same from S [k][n] (B as stored, k along the rows), transposed by
 * ldmatrix: the matrices at rows k0, k0 + 8 of columns n0, then n0 + 8. */
__device__ static inline void frag_b2_kn(uint32_t (&b)[2][2], const uint16_t *S, int ld, int n0,
                                         int k0)
{
    const int l = threadIdx.x % 32;
    uint32_t r[4];
    ldsm_x4_trans(r, S + (k0 + l % 8 + 8 * (l / 8 % 2)) * ld + n0 + 8 * (l / 16));
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

/* The A operand of columns [16 kk, 16 kk + 16) of a product held in
 * accumulator tiles c (tiles 2 kk and 2 kk + 1), rounded to bf16. */
template <int NT>
__device__ static inline void acc_to_a(uint32_t (&a)[4], const float (&c)[NT][4], int kk)
{
    a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

/* c = A B^T over the tile's DP columns: A rows 16 w.. of As, B^T given as
 * Bs [C][DP] (both row stride DP + 8), C / 8 accumulator tiles. */
template <int C, int DP>
__device__ static inline void mm_abt16(float (&c)[C / 8][4], const uint16_t *As,
                                       const uint16_t *Bs, int w)
{
#pragma unroll
    for (int j = 0; j < C / 8; j++)
        c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk++) {
        uint32_t a[4];
        frag_a(a, As, DP + 8, 16 * w, 16 * kk);
#pragma unroll
        for (int j = 0; j < C / 8; j += 2) {
            uint32_t b[2][2];
            frag_b2(b, Bs, DP + 8, 8 * j, 16 * kk);
            mma_bf16(c[j], a, b[0]);
            mma_bf16(c[j + 1], a, b[1]);
        }
    }
}

/* acc += X Y: X [16 x K] in accumulator tiles x (rounded to bf16 here),
 * Y a tile [K][DP + 8]. */
template <int K, int DP>
__device__ static inline void mm_acc_b16(float (&acc)[DP / 8][4], const float (&x)[K / 8][4],
                                         const uint16_t *Y)
{
#pragma unroll
    for (int kk = 0; kk < K / 16; kk++) {
        uint32_t a[4];
        acc_to_a(a, x, kk);
#pragma unroll
        for (int j = 0; j < DP / 8; j += 2) {
            uint32_t b[2][2];
            frag_b2_kn(b, Y, DP + 8, 8 * j, 16 * kk);
            mma_bf16(acc[j], a, b[0]);
            mma_bf16(acc[j + 1], a, b[1]);
        }
    }
}

/* After a key tile's loads: s_kv[c] for its BK keys, and whether every row
 * of the query tile (BQ rows with spans s_lo, s_hi) sees every key of
 * [k0, k0 + BK) (no padding, and one span of each row holds the tile), as
 * away from the mask's edges, where the per-element test can be skipped.
 * Its barrier also publishes the tiles: every thread must call. */
template <int BQ, int BK>
__device__ static inline bool key_tile(unsigned char *s_kv, const int64_t (*s_lo)[2],
                                       const int64_t (*s_hi)[2], const fa_args &a, int64_t n,
                                       int64_t k0)
{
    const int tid = threadIdx.x;
    const bool ok = tid < BK && key_ok(a, n, k0 + tid);
    if (tid < BK)
        s_kv[tid] = ok;
    return !__syncthreads_or((tid < BK && !ok) ||
                             (tid < BQ && !spans_cover(s_lo[tid], s_hi[tid], k0, k0 + BK)));
}

/* Dynamic shared memory of each kernel, in bytes. */
template <int DP> static size_t fwd16_smem()
{
    constexpr int BK = 64;
    return (size_t)(MMA_ROWS + 4 * BK) * (DP + 8) * sizeof(uint16_t); /* Q, 2 x [K; V] */
}
template <int DP> static size_t kv16_smem()
{
    constexpr int BQ = loop_tile<DP>();
    return (size_t)(2 * MMA_ROWS + 4 * BQ) * (DP + 8) * sizeof(uint16_t); /* K, V, 2 x [Q; dO] */
}
template <int DP> static size_t q16_smem()
{
    constexpr int BK = loop_tile<DP>();
    return (size_t)(2 * MMA_ROWS + 4 * BK) * (DP + 8) * sizeof(uint16_t); /* Q, dO, 2 x [K; V] */
}

/* -------------------------------------------------------------- forward */

/* Block fa_block_of(blockIdx.x, qtiles, a, true): a query tile of one
 * head of one sequence, the last tiles first. */
template <int DP>
__global__ static void __launch_bounds__(MMA_THREADS)
    fa16_fwd_k(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
               fa_args a, int64_t qtiles)
{
    constexpr int BQ = MMA_ROWS, BK = 64, LD = DP + 8, NT = BK / 8, DT = DP / 8;
    extern __shared__ __align__(128) float smem[];
    /* Q, then two buffers of [K; V]: the loop's tile and the next one */
    uint16_t *Qs = (uint16_t *)smem, *KV = Qs + BQ * LD;
    __shared__ int64_t s_lo[BQ][2], s_hi[BQ][2];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    const fa_block bl = fa_block_of(blockIdx.x, qtiles, a, true);
    const int64_t i0 = bl.tile * BQ, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, qs = a.Hq * D;
    const uint16_t *qb = q + (n * a.Tq * a.Hq + h) * D;
    const uint16_t *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_tile<BQ, DP>(Qs, qb, i0, a.Tq - i0, qs, D);
    if (tid < BQ)
        row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
    __syncthreads();
    uint32_t qa[DP / 16][4]; /* the warp's rows of Q, for every key tile */
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk++)
        frag_a(qa[kk], Qs, LD, 16 * w, 16 * kk);

    /* Rows 16 w + g (index 0) and 16 w + g + 8 (index 1) of the tile. */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    int64_t k0 = next_key_tile<BQ, BK>(s_lo, s_hi, a, 0);
    if (k0 < a.Tk)
        load_key_tile<BK, DP>(KV, kb, vb, k0, a);
    cp_async_commit();
    for (int buf = 0; k0 < a.Tk; buf ^= 1) {
        /* The next tile the rows see goes into the other buffer (free: the
         * previous iteration ended with a barrier) while this one is used. */
        const int64_t k1 = next_key_tile<BQ, BK>(s_lo, s_hi, a, k0 + BK);
        if (k1 < a.Tk)
            load_key_tile<BK, DP>(KV + (buf ^ 1) * 2 * BK * LD, kb, vb, k1, a);
        cp_async_commit();
        cp_async_wait<1>(); /* this tile's copies; key_tile's barrier publishes them */
        const uint16_t *Ks = KV + buf * 2 * BK * LD, *Vs = Ks + BK * LD;
        const bool full = key_tile<BQ, BK>(s_kv, s_lo, s_hi, a, n, k0);
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++)
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                uint32_t b[2][2];
                frag_b2(b, Ks, LD, 8 * j, 16 * kk);
                mma_bf16(s[j], qa[kk], b[0]);
                mma_bf16(s[j + 1], qa[kk], b[1]);
            }
        /* Scores in base 2, -inf where hidden. */
        const float sl2 = a.scale * LOG2E;
        if (full) {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[j][e] *= sl2;
        } else {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = 16 * w + g + 8 * (e / 2), c = 8 * j + 2 * t + e % 2;
                    const bool vis = s_kv[c] && in_spans(s_lo[r], s_hi[r], k0 + c);
                    s[j][e] = vis ? s[j][e] * sl2 : -INFINITY;
                }
        }
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                mt[e / 2] = fmaxf(mt[e / 2], s[j][e]);
        float mn[2], alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int x = 0; x < 2; x++) {
            mn[x] = fmaxf(m[x], group_max<4>(mt[x]));
            /* mn = -inf: the row has seen no key yet (P = 0, nothing to
             * rescale), as the f32 kernel. */
            alpha[x] = mn[x] == -INFINITY ? 1.0f : exp2f(m[x] - mn[x]);
        }
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float mx = mn[e / 2];
                s[j][e] = mx == -INFINITY ? 0.0f : exp2f(s[j][e] - mx);
                rs[e / 2] += s[j][e];
            }
#pragma unroll
        for (int x = 0; x < 2; x++) {
            l[x] = l[x] * alpha[x] + group_sum<4>(rs[x]);
            m[x] = mn[x];
        }
#pragma unroll
        for (int j = 0; j < DT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                o[j][e] *= alpha[e / 2];
        mm_acc_b16<BK, DP>(o, s, Vs);
        __syncthreads(); /* this buffer takes the tile after the next one */
        k0 = k1;
    }

#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int64_t gi = i0 + 16 * w + g + 8 * x;
        if (gi >= a.Tq)
            continue;
        /* l >= 1 once any key was seen (the max contributes exp(0)). */
        const bool any = l[x] > 0.0f;
        const float inv = any ? 1.0f / l[x] : 0.0f;
        float *orow = out + ((n * a.Tq + gi) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = 8 * j + 2 * t + e;
                if (col < D)
                    orow[col] = any ? o[j][2 * x + e] * inv : 0.0f;
            }
        if (t == 0 && lse)
            lse[(n * a.Hq + h) * a.Tq + gi] = any ? (m[x] + log2f(l[x])) * LN2 : INFINITY;
    }
}

/* ------------------------------------------------------------- backward */

/* Query head h's part of dK and dV for one tile of 64 keys; block
 * fa_block_of(blockIdx.x, ktiles, a, false). pk, pv, dk, dv as fa_bf16_bwd_kv. */
template <int DP>
__global__ static void __launch_bounds__(MMA_THREADS) fa16_bwd_kv_k(
    float *dk, float *dv, float *pk, float *pv, const uint16_t *dout, const uint16_t *q,
    const uint16_t *k, const uint16_t *v, const float *lse, const float *Dv, fa_args a,
    int64_t ktiles)
{
    constexpr int BK = MMA_ROWS, BQ = loop_tile<DP>(), LD = DP + 8, NT = BQ / 8, DT = DP / 8;
    extern __shared__ __align__(128) float smem[];
    /* K, V, then two buffers of [Q; dO] and of the query rows' spans, lse
     * and D: the loop's query tile and the next one */
    uint16_t *Ks = (uint16_t *)smem, *Vs = Ks + BK * LD, *QO = Vs + BK * LD;
    __shared__ int64_t s_lo[2][BQ][2], s_hi[2][BQ][2];
    __shared__ float s_lse[2][BQ], s_D[2][BQ];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    const fa_block bl = fa_block_of(blockIdx.x, ktiles, a, false);
    const int64_t j0 = bl.tile * BK, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, ks = a.Hkv * D;
    const uint16_t *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_tile<BK, DP>(Ks, kb, j0, a.Tk - j0, ks, D);
    load_tile<BK, DP>(Vs, vb, j0, a.Tk - j0, ks, D);
    const bool ok = tid < BK && key_ok(a, n, j0 + tid);
    if (tid < BK)
        s_kv[tid] = ok;
    /* Every key of the tile exists and is not padding. */
    const bool keys_all = !__syncthreads_or(tid < BK && !ok);

    float adk[DT][4], adv[DT][4];
#pragma unroll
    for (int j = 0; j < DT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            adk[j][e] = adv[j][e] = 0.0f;

    const uint16_t *qb = q + (n * a.Tq * a.Hq + h) * D, *ob = dout + (n * a.Tq * a.Hq + h) * D;
    const float *lb = lse + (n * a.Hq + h) * a.Tq, *db = Dv + (n * a.Hq + h) * a.Tq;
    int64_t i0 = next_query_tile<BQ, BK>(s_lo[0], s_hi[0], a, 0, j0);
    if (i0 < a.Tq)
        load_query_tile<BQ, DP>(QO, s_lse[0], s_D[0], qb, ob, lb, db, i0, a);
    cp_async_commit();
    for (int buf = 0; i0 < a.Tq; buf ^= 1) {
        /* The next query tile into the other buffers (free: the previous
         * iteration ended with a barrier) while this one is used. */
        const int64_t i1 = next_query_tile<BQ, BK>(s_lo[buf ^ 1], s_hi[buf ^ 1], a, i0 + BQ, j0);
        if (i1 < a.Tq)
            load_query_tile<BQ, DP>(QO + (buf ^ 1) * 2 * BQ * LD, s_lse[buf ^ 1], s_D[buf ^ 1], qb,
                                    ob, lb, db, i1, a);
        cp_async_commit();
        cp_async_wait<1>();
        const uint16_t *Qs = QO + buf * 2 * BQ * LD, *dOs = Qs + BQ * LD;
        const int64_t(*lo)[2] = s_lo[buf], (*hi)[2] = s_hi[buf];
        const float *sl = s_lse[buf], *sd = s_D[buf];
        /* full: every query of the tile sees every key of the block (as in
         * the forward pass). The barrier, which also publishes the tiles,
         * runs whatever keys_all is. */
        const bool some_not_all =
            __syncthreads_or(tid < BQ && !spans_cover(lo[tid], hi[tid], j0, j0 + BK));
        const bool full = keys_all && !some_not_all;
        /* S^T = K Q^T and dP^T = V dO^T: rows keys, columns queries. */
        float st[NT][4], dpt[NT][4];
        mm_abt16<BQ, DP>(st, Ks, Qs, w);
        mm_abt16<BQ, DP>(dpt, Vs, dOs, w);
        const float sl2 = a.scale * LOG2E;
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = 16 * w + g + 8 * (e / 2), c = 8 * j + 2 * t + e % 2;
                const float L = sl[c];
                /* lse = +inf: the row saw no key, P = 0. */
                const bool vis =
                    full || (s_kv[r] && L < INFINITY && in_spans(lo[c], hi[c], j0 + r));
                const float p = vis ? exp2f(fmaf(st[j][e], sl2, -L)) : 0.0f;
                st[j][e] = p;
                dpt[j][e] = p * (dpt[j][e] - sd[c]);
            }
        mm_acc_b16<BQ, DP>(adv, st, dOs);  /* dV += P^T dO */
        mm_acc_b16<BQ, DP>(adk, dpt, Qs);  /* dK += dS^T Q (scaled at the end) */
        __syncthreads(); /* these buffers take the tile after the next one */
        i0 = i1;
    }

#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int64_t gj = j0 + 16 * w + g + 8 * x;
        if (gj >= a.Tk)
            continue;
        const int64_t off = ((n * a.Tk + gj) * a.Hkv + hk) * D;
        const int64_t poff = ((n * a.Tk + gj) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = 8 * j + 2 * t + e;
                if (col >= D)
                    continue;
                store_kv_grad(dk, dv, pk, pv, off + col, poff + col, a.scale * adk[j][2 * x + e],
                              adv[j][2 * x + e]);
            }
    }
}

/* dQ of one tile of 64 query rows; blockIdx.x as fa16_fwd_k. */
template <int DP>
__global__ static void __launch_bounds__(MMA_THREADS)
    fa16_bwd_q_k(float *dq, const uint16_t *dout, const uint16_t *q, const uint16_t *k,
                 const uint16_t *v, const float *lse, const float *Dv, fa_args a, int64_t qtiles)
{
    constexpr int BQ = MMA_ROWS, BK = loop_tile<DP>(), LD = DP + 8, NT = BK / 8, DT = DP / 8;
    extern __shared__ __align__(128) float smem[];
    /* Q, dO, then two buffers of [K; V] as in the forward kernel */
    uint16_t *Qs = (uint16_t *)smem, *dOs = Qs + BQ * LD, *KV = dOs + BQ * LD;
    __shared__ int64_t s_lo[BQ][2], s_hi[BQ][2];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    const fa_block bl = fa_block_of(blockIdx.x, qtiles, a, true);
    const int64_t i0 = bl.tile * BQ, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, qs = a.Hq * D;
    const uint16_t *qb = q + (n * a.Tq * a.Hq + h) * D, *ob = dout + (n * a.Tq * a.Hq + h) * D;
    const uint16_t *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_tile<BQ, DP>(Qs, qb, i0, a.Tq - i0, qs, D);
    load_tile<BQ, DP>(dOs, ob, i0, a.Tq - i0, qs, D);
    if (tid < BQ)
        row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
    float L[2], Di[2], acc[DT][4];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int64_t gi = i0 + 16 * w + g + 8 * x;
        L[x] = gi < a.Tq ? lse[(n * a.Hq + h) * a.Tq + gi] * LOG2E : INFINITY; /* base 2 */
        Di[x] = gi < a.Tq ? Dv[(n * a.Hq + h) * a.Tq + gi] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < DT; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    __syncthreads();

    int64_t k0 = next_key_tile<BQ, BK>(s_lo, s_hi, a, 0);
    if (k0 < a.Tk)
        load_key_tile<BK, DP>(KV, kb, vb, k0, a);
    cp_async_commit();
    for (int buf = 0; k0 < a.Tk; buf ^= 1) {
        const int64_t k1 = next_key_tile<BQ, BK>(s_lo, s_hi, a, k0 + BK);
        if (k1 < a.Tk)
            load_key_tile<BK, DP>(KV + (buf ^ 1) * 2 * BK * LD, kb, vb, k1, a);
        cp_async_commit();
        cp_async_wait<1>();
        const uint16_t *Ks = KV + buf * 2 * BK * LD, *Vs = Ks + BK * LD;
        const bool full = key_tile<BQ, BK>(s_kv, s_lo, s_hi, a, n, k0);
        float s[NT][4], dp[NT][4];
        mm_abt16<BK, DP>(s, Qs, Ks, w);
        mm_abt16<BK, DP>(dp, dOs, Vs, w);
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = 16 * w + g + 8 * (e / 2), c = 8 * j + 2 * t + e % 2, x = e / 2;
                const bool vis =
                    full || (s_kv[c] && L[x] < INFINITY && in_spans(s_lo[r], s_hi[r], k0 + c));
                const float p = vis ? exp2f(fmaf(s[j][e], a.scale * LOG2E, -L[x])) : 0.0f;
                s[j][e] = p * (dp[j][e] - Di[x]); /* dS */
            }
        mm_acc_b16<BK, DP>(acc, s, Ks); /* dQ += dS K (scaled at the end) */
        __syncthreads();
        k0 = k1;
    }

#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int64_t gi = i0 + 16 * w + g + 8 * x;
        if (gi >= a.Tq)
            continue;
        float *row = dq + ((n * a.Tq + gi) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = 8 * j + 2 * t + e;
                if (col < D)
                    row[col] += a.scale * acc[j][2 * x + e];
            }
    }
}

/* ------------------------------------------------------------ launchers */

template <int DP>
static int fwd16(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                 const fa_args &a, dvl_err *err)
{
    const int64_t qtiles = fa_cdiv(a.Tq, MMA_ROWS);
    return fa_launch(fa16_fwd_k<DP>, qtiles * a.Hq * a.N, MMA_THREADS, fwd16_smem<DP>(),
                     "attention forward (bf16)", err, out, lse, q, k, v, a, qtiles);
}

template <int DP>
static int kv16(float *dk, float *dv, float *pk, float *pv, const uint16_t *dout,
                const uint16_t *q, const uint16_t *k, const uint16_t *v, const float *lse,
                const float *Dv, const fa_args &a, dvl_err *err)
{
    const int64_t ktiles = fa_cdiv(a.Tk, MMA_ROWS);
    return fa_launch(fa16_bwd_kv_k<DP>, ktiles * a.Hq * a.N, MMA_THREADS, kv16_smem<DP>(),
                     "attention backward dK dV (bf16)", err, dk, dv, pk, pv, dout, q, k, v, lse,
                     Dv, a, ktiles);
}

template <int DP>
static int q16(float *dq, const uint16_t *dout, const uint16_t *q, const uint16_t *k,
               const uint16_t *v, const float *lse, const float *Dv, const fa_args &a,
               dvl_err *err)
{
    const int64_t qtiles = fa_cdiv(a.Tq, MMA_ROWS);
    return fa_launch(fa16_bwd_q_k<DP>, qtiles * a.Hq * a.N, MMA_THREADS, q16_smem<DP>(),
                     "attention backward dQ (bf16)", err, dq, dout, q, k, v, lse, Dv, a, qtiles);
}

int fa_bf16_fwd(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                const fa_args &a, dvl_err *err)
{
    if (a.D <= 32)
        return fwd16<32>(out, lse, q, k, v, a, err);
    if (a.D <= 64)
        return fwd16<64>(out, lse, q, k, v, a, err);
    return fwd16<128>(out, lse, q, k, v, a, err);
}

int fa_bf16_bwd_kv(float *dk, float *dv, float *pk, float *pv, const uint16_t *dout,
                   const uint16_t *q, const uint16_t *k, const uint16_t *v, const float *lse,
                   const float *Dv, const fa_args &a, dvl_err *err)
{
    if (a.D <= 32)
        return kv16<32>(dk, dv, pk, pv, dout, q, k, v, lse, Dv, a, err);
    if (a.D <= 64)
        return kv16<64>(dk, dv, pk, pv, dout, q, k, v, lse, Dv, a, err);
    return kv16<128>(dk, dv, pk, pv, dout, q, k, v, lse, Dv, a, err);
}

int fa_bf16_bwd_q(float *dq, const uint16_t *dout, const uint16_t *q, const uint16_t *k,
                  const uint16_t *v, const float *lse, const float *Dv, const fa_args &a,
                  dvl_err *err)
{
    if (a.D <= 32)
        return q16<32>(dq, dout, q, k, v, lse, Dv, a, err);
    if (a.D <= 64)
        return q16<64>(dq, dout, q, k, v, lse, Dv, a, err);
    return q16<128>(dq, dout, q, k, v, lse, Dv, a, err);
}
