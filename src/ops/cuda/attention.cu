/* Attention on the GPU, tiled (FlashAttention-2, Dao 2023, alg. 1 and 2):
 * queries and keys go through shared memory in tiles, the softmax is
 * computed online over key tiles, and the [Tq, Tk] score matrix never
 * exists in memory. The forward pass saves one logsumexp per query row;
 * the backward pass recomputes the scores tile by tile.
 *
 * Layouts as ops/cpu/attention.h: q, out, dout, dq [N, Tq, Hq, D]; k, v,
 * dk, dv [N, Tk, Hkv, D]; lse [N, Hq, Tq] (+inf for a row that sees no
 * key); query head h reads kv head h / (Hq / Hkv). A row's visible keys are
 * its mask spans (ops/mask_spans.h, the rule the CPU uses) minus padded
 * keys. f32 in and out, f32 arithmetic (products in TF32 in the tensor-core
 * variant, at the end of this comment).
 *
 *   forward   (one block per (n, h, tile of FWD_BQ query rows); for each
 *              key tile of FWD_BK keys that some row of the tile may see)
 *     S = scale Q K^T (invisible keys -inf);  m' = max(m, rowmax S)
 *     P = exp(S - m');  l = l exp(m - m') + rowsum P;  O = O exp(m - m') + P V
 *     at the end O / l and lse = m + log l (zeros and +inf when l = 0)
 *   backward, with D_i = dO_i . O_i (FlashAttention-2, sec. 3.1.2) first:
 *     P = exp(S - lse),  dP = dO V^T,  dS = P (dP - D)
 *     kernel kv (one block per (n, query head, tile of KV_BK keys), looping
 *       over the query tiles that see it):  dV_h = P^T dO,  dK_h = scale dS^T Q;
 *       with grouped heads (Hq > Hkv) each head's dK_h, dV_h go to scratch
 *       and kernel kv_sum adds the group's heads in order into dK, dV
 *       (a block per kv head instead leaves N Hkv Tk / KV_BK blocks, 128
 *       for 2 x 2048 positions and 2 kv heads, on 132 SMs: on an H200 the
 *       backward of that shape took 10.6 ms that way, 4.7 ms this way)
 *     kernel q (one block per (n, h, tile of BQ_BQ query rows), looping
 *       over the key tiles it sees):  dQ += scale dS K
 * Splitting dQ from dK/dV recomputes S and dP once more than FA-2's single
 * kernel with atomic dQ updates, but every sum then runs in an order fixed
 * by the sizes, so reruns give the same bits (as the rest of the backend).
 *
 * Skipping: a key tile that no row of the query tile may see (the future of
 * a causal tile, the other x_t blocks of a block-diffusion tile) is skipped
 * whole, before it is loaded; the test is one __syncthreads_or over the
 * tile's rows. Padded keys inside a visited tile are masked per element.
 *
 * Threads: 256 per block as a 16 x 16 grid (ty, tx); warp w holds rows
 * ty = 2w, 2w + 1, each in one half-warp. For a [R, C] product tile, thread
 * (ty, tx) owns rows ty + 16 i (i < R/16) and columns tx + 16 j (j < C/16),
 * so a row's 16 owners are one half-warp and row max / row sum are
 * shuffles within it. Shared-memory rows are padded to DP + 1 floats so
 * that the 16 threads of a row reading 16 different rows hit 16 banks.
 *
 * The head size D is padded with zeros to DP in {32, 64, 128} (a template
 * parameter, so per-thread arrays stay in registers); longer heads use the
 * reference kernel (ops/cuda/attention_ref.cu).
 *
 * Each kernel comes in two variants (template parameter TC): CUDA-core
 * products in f32 (contexts with f32 products, the default: the CPU's
 * arithmetic up to summation order), or the products on tensor cores with
 * TF32 inputs (contexts whose products are TF32), which pass the product
 * tiles through shared memory (tc_mm below); the softmax, masking and all
 * sums outside the products are the same code. Contexts whose products are
 * bf16 run the kernels of ops/cuda/attention_bf16.cu instead (mma.sync,
 * scores in registers), through the same launchers and D = dO . O and
 * kv_sum kernels as here. */
#include <limits.h>
#include <math.h>

#include <mma.h>
#include <type_traits>

#include "ops/cuda/attention_tiles.cuh"

namespace wmma = nvcuda::wmma;

#define FA_THREADS 256
/* Tile sizes (multiples of 16). Shared memory at DP = 128: forward
 * 115.7 KB, kv 116.0 KB, q 107.5 KB of floats (TC: 118.8, 153.6, 153.6 KB),
 * plus the row spans: within the 163 KB a block may opt into on sm_80 and
 * 227 KB on sm_90. */
#define FWD_BQ 64 /* forward: query rows per block */
#define FWD_BK 64 /* forward: keys per tile */
#define KV_BK 64  /* backward kv: keys per block */
#define KV_BQ 32  /* backward kv: query rows per tile */
#define BQ_BQ 64  /* backward q: query rows per block */
#define BQ_BK 32  /* backward q: keys per tile */


/* ------------------------------------------------------------- helpers */

/* dst[r][d] (row stride SP) = src[(row0 + r) * stride + d] for the ROWS x
 * DP tile, zero past the last row (nvalid rows exist) and past D. */
template <int ROWS, int DP, int SP>
__device__ static inline void load_rows(float *dst, const float *src, int64_t row0,
                                        int64_t nvalid, int64_t stride, int64_t D)
{
    for (int e = threadIdx.x; e < ROWS * DP; e += FA_THREADS) {
        const int r = e / DP, d = e % DP;
        dst[r * SP + d] = (r < nvalid && d < D) ? src[(row0 + r) * stride + d] : 0.0f;
    }
}

/* acc[i][j] = A[ty + 16 i] . B[tx + 16 j] over DP: A [R][DP], B [C][DP]
 * in shared memory with row stride SP. */
template <int R, int C, int DP, int SP>
__device__ static inline void mm_abt(float (&acc)[R / 16][C / 16], const float *A,
                                     const float *B, int ty, int tx)
{
#pragma unroll
    for (int i = 0; i < R / 16; i++)
#pragma unroll
        for (int j = 0; j < C / 16; j++)
            acc[i][j] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < DP; d++) {
        float x[R / 16], y[C / 16];
#pragma unroll
        for (int i = 0; i < R / 16; i++)
            x[i] = A[(ty + 16 * i) * SP + d];
#pragma unroll
        for (int j = 0; j < C / 16; j++)
            y[j] = B[(tx + 16 * j) * SP + d];
#pragma unroll
        for (int i = 0; i < R / 16; i++)
#pragma unroll
            for (int j = 0; j < C / 16; j++)
                acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
    }
}

/* acc[i][j] += sum_c P[ty + 16 i][c] V[c][tx + 16 j]: P [R][KC] with row
 * stride LP, V [KC][DP] with row stride SP, in shared memory. */
template <int R, int KC, int DP, int LP, int SP>
__device__ static inline void mm_ab(float (&acc)[R / 16][DP / 16], const float *P, const float *V,
                                    int ty, int tx)
{
#pragma unroll 4
    for (int c = 0; c < KC; c++) {
        float x[R / 16], y[DP / 16];
#pragma unroll
        for (int i = 0; i < R / 16; i++)
            x[i] = P[(ty + 16 * i) * LP + c];
#pragma unroll
        for (int j = 0; j < DP / 16; j++)
            y[j] = V[c * SP + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < R / 16; i++)
#pragma unroll
            for (int j = 0; j < DP / 16; j++)
                acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
    }
}

/* The tensor-core variant (TC) of the two products: TF32 inputs (10-bit
 * mantissa, rounded to nearest) with f32 accumulation, on wmma's 16 x 16 x 8
 * tiles. The block's 8 warps share the [R, C] output's 16 x 16 tiles and
 * store them to out (row stride ldo) in shared memory; each thread then takes
 * its elements (ty + 16 i, tx + 16 j), which is where the CUDA-core products
 * leave theirs in registers, so the softmax code is the same for both.
 * wmma needs row strides that are multiples of 4 floats and tile pointers
 * aligned to 32 bytes: the TC variant pads rows to DP + 4 and BK + 4 (not
 * + 1) and every shared array starts at a multiple of 8 floats. */
template <typename Frag> __device__ static inline void to_tf32(Frag &f)
{
    for (int t = 0; t < f.num_elements; t++)
        f.x[t] = wmma::__float_to_tf32(f.x[t]);
}

/* out = A B^T (BT; B given as [C][K], row stride ldb, read column-major as
 * B^T) or out = A B (B given as [K][C]): A [R][K] (row stride lda). */
template <int R, int C, int K, bool BT>
__device__ static inline void tc_mm(float *out, int ldo, const float *A, int lda, const float *B,
                                    int ldb)
{
    using BL = typename std::conditional<BT, wmma::col_major, wmma::row_major>::type;
    for (int t = threadIdx.x / 32; t < (R / 16) * (C / 16); t += FA_THREADS / 32) {
        const int ti = t / (C / 16), tj = t % (C / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int k = 0; k < K; k += 8) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, BL> b;
            wmma::load_matrix_sync(a, A + ti * 16 * lda + k, lda);
            wmma::load_matrix_sync(b, BT ? B + tj * 16 * ldb + k : B + k * ldb + tj * 16, ldb);
            to_tf32(a);
            to_tf32(b);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(out + ti * 16 * ldo + tj * 16, acc, ldo, wmma::mem_row_major);
    }
}

/* acc = A B^T as mm_abt. TC: through `tmp` ([R][LT] floats of shared
 * memory), with a barrier before the threads read it. */
template <bool TC, int R, int C, int DP, int SP, int LT>
__device__ static inline void prod_abt(float (&acc)[R / 16][C / 16], const float *A,
                                       const float *B, float *tmp, int ty, int tx)
{
    if constexpr (TC) {
        tc_mm<R, C, DP, true>(tmp, LT, A, SP, B, SP);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < R / 16; i++)
#pragma unroll
            for (int j = 0; j < C / 16; j++)
                acc[i][j] = tmp[(ty + 16 * i) * LT + tx + 16 * j];
    } else {
        mm_abt<R, C, DP, SP>(acc, A, B, ty, tx);
    }
}

/* acc += P V as mm_ab. TC: through `tmp` ([R][SP] floats of shared memory
 * that no thread reads meanwhile), with a barrier before the threads read
 * it and one after (tmp is free again on return). */
template <bool TC, int R, int KC, int DP, int LP, int SP>
__device__ static inline void prod_ab(float (&acc)[R / 16][DP / 16], const float *P,
                                      const float *V, float *tmp, int ty, int tx)
{
    if constexpr (TC) {
        tc_mm<R, DP, KC, false>(tmp, SP, P, LP, V, SP);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < R / 16; i++)
#pragma unroll
            for (int j = 0; j < DP / 16; j++)
                acc[i][j] += tmp[(ty + 16 * i) * SP + tx + 16 * j];
        __syncthreads();
    } else {
        mm_ab<R, KC, DP, LP, SP>(acc, P, V, ty, tx);
    }
}

/* Row strides of the shared tiles: + 1 float against bank conflicts for the
 * CUDA-core products, + 4 for wmma (see above). */
template <bool TC> __host__ __device__ constexpr int pad() { return TC ? 4 : 1; }

/* Dynamic shared memory of each kernel, in bytes. TC adds a [64][DP]
 * product buffer to the backward kernels and a second score tile to q. */
template <int DP, bool TC> static size_t fwd_smem()
{
    constexpr int SP = DP + pad<TC>(), LP = FWD_BK + pad<TC>();
    return (size_t)(FWD_BQ * SP + 2 * FWD_BK * SP + FWD_BQ * LP) * sizeof(float);
}
template <int DP, bool TC> static size_t kv_smem()
{
    constexpr int SP = DP + pad<TC>(), LP = KV_BQ + pad<TC>();
    return (size_t)(2 * KV_BK * SP + 2 * KV_BQ * SP + 2 * KV_BK * LP + (TC ? KV_BK * SP : 0)) *
           sizeof(float);
}
template <int DP, bool TC> static size_t q_smem()
{
    constexpr int SP = DP + pad<TC>(), LP = BQ_BK + pad<TC>();
    return (size_t)(2 * BQ_BQ * SP + 2 * BQ_BK * SP + (TC ? 2 : 1) * BQ_BQ * LP +
                    (TC ? BQ_BQ * SP : 0)) *
           sizeof(float);
}

/* -------------------------------------------------------------- forward */

/* Block fa_block_of(blockIdx.x, qtiles, a, true): a query tile of one
 * head of one sequence, the last tiles first. */
template <int DP, bool TC>
__global__ static void __launch_bounds__(FA_THREADS)
    fa_fwd_k(float *out, float *lse, const float *q, const float *k, const float *v, fa_args a,
             int64_t qtiles)
{
    constexpr int BQ = FWD_BQ, BK = FWD_BK, SP = DP + pad<TC>(), LP = BK + pad<TC>();
    constexpr int RM = BQ / 16, CN = BK / 16, DN = DP / 16;
    extern __shared__ __align__(128) float smem[];
    float *Qs = smem, *Ks = Qs + BQ * SP, *Vs = Ks + BK * SP, *Ps = Vs + BK * SP;
    __shared__ int64_t s_lo[BQ][2], s_hi[BQ][2];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const fa_block bl = fa_block_of(blockIdx.x, qtiles, a, true);
    const int64_t i0 = bl.tile * BQ, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, qs = a.Hq * D, ks = a.Hkv * D;
    const float *qb = q + (n * a.Tq * a.Hq + h) * D; /* row i at qb + i qs */
    const float *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_rows<BQ, DP, SP>(Qs, qb, i0, a.Tq - i0, qs, D);
    if (tid < BQ)
        row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
    __syncthreads();

    float m[RM], l[RM], o[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < DN; j++)
            o[i][j] = 0.0f;
    }
    for (int64_t k0 = 0; k0 < a.Tk; k0 += BK) {
        /* The same answer in every thread: the loop stays uniform. */
        const int need = tid < BQ && spans_meet(s_lo[tid], s_hi[tid], k0, k0 + BK);
        if (!__syncthreads_or(need))
            continue;
        load_rows<BK, DP, SP>(Ks, kb, k0, a.Tk - k0, ks, D);
        load_rows<BK, DP, SP>(Vs, vb, k0, a.Tk - k0, ks, D);
        if (tid < BK)
            s_kv[tid] = key_ok(a, n, k0 + tid);
        __syncthreads();
        float s[RM][CN];
        /* TC: the scores pass through Ps; each thread reads back only the
         * elements it then overwrites with P. */
        prod_abt<TC, BQ, BK, DP, SP, LP>(s, Qs, Ks, Ps, ty, tx);
#pragma unroll
        for (int i = 0; i < RM; i++) {
            const int r = ty + 16 * i;
            float mt = -INFINITY;
#pragma unroll
            for (int j = 0; j < CN; j++) {
                const int c = tx + 16 * j;
                const bool vis = s_kv[c] && in_spans(s_lo[r], s_hi[r], k0 + c);
                s[i][j] = vis ? __fmul_rn(a.scale, s[i][j]) : -INFINITY;
                mt = fmaxf(mt, s[i][j]);
            }
            mt = group_max<16>(mt); /* a row's 16 owners: a half-warp */
            const float mn = fmaxf(m[i], mt);
            /* mn = -inf: the row has seen no key yet; P stays 0 and O, l
             * (both 0) need no rescaling. exp(-inf - mn) = 0 otherwise. */
            float alpha = 1.0f, rs = 0.0f;
#pragma unroll
            for (int j = 0; j < CN; j++) {
                s[i][j] = mn == -INFINITY ? 0.0f : expf(s[i][j] - mn);
                rs += s[i][j];
            }
            if (mn != -INFINITY)
                alpha = expf(m[i] - mn);
            rs = group_sum<16>(rs);
            l[i] = l[i] * alpha + rs;
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < DN; j++)
                o[i][j] *= alpha;
#pragma unroll
            for (int j = 0; j < CN; j++)
                Ps[r * LP + tx + 16 * j] = s[i][j];
        }
        __syncthreads();
        /* TC: P V lands in Ks, read by nobody after the scores. */
        prod_ab<TC, BQ, BK, DP, LP, SP>(o, Ps, Vs, Ks, ty, tx);
        __syncthreads(); /* Ks, Vs, Ps are overwritten by the next tile */
    }

#pragma unroll
    for (int i = 0; i < RM; i++) {
        const int64_t gi = i0 + ty + 16 * i;
        if (gi >= a.Tq)
            continue;
        /* l >= 1 once any key was seen (the max contributes exp(0)). */
        const bool any = l[i] > 0.0f;
        const float inv = any ? 1.0f / l[i] : 0.0f;
        float *orow = out + ((n * a.Tq + gi) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DN; j++) {
            const int col = tx + 16 * j;
            if (col < D)
                orow[col] = any ? o[i][j] * inv : 0.0f;
        }
        if (tx == 0 && lse)
            lse[(n * a.Hq + h) * a.Tq + gi] = any ? m[i] + logf(l[i]) : INFINITY;
    }
}

/* ------------------------------------------------------------- backward */

/* Dv[(n * Hq + h) * Tq + i] = dO_i . O_i, one warp per row, in double as
 * the CPU kernel. */
__global__ static void fa_dot_k(float *Dv, const float *dout, const float *out, fa_args a)
{
    const int64_t row = (int64_t)blockIdx.x * (FA_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= a.N * a.Hq * a.Tq)
        return;
    const int64_t i = row % a.Tq, h = (row / a.Tq) % a.Hq, n = row / (a.Tq * a.Hq);
    const int64_t off = ((n * a.Tq + i) * a.Hq + h) * a.D;
    double s = 0.0;
    for (int64_t d = lane; d < a.D; d += 32)
        s += (double)dout[off + d] * (double)out[off + d];
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0)
        Dv[row] = (float)s;
}

/* Query head h's part of dK and dV for one tile of keys; block
 * fa_block_of(blockIdx.x, ktiles, a, false). Rows of the product tiles are keys,
 * columns queries. With pk (pv) given, the part is stored there as [N, Tk,
 * Hq, D] (kernel kv_sum adds the heads of a group); else (one query head per
 * kv head) it is added into dk (dv) [N, Tk, Hkv, D] directly. */
template <int DP, bool TC>
__global__ static void __launch_bounds__(FA_THREADS) fa_bwd_kv_k(
    float *dk, float *dv, float *pk, float *pv, const float *dout, const float *q, const float *k,
    const float *v, const float *lse, const float *Dv, fa_args a, int64_t ktiles)
{
    constexpr int BK = KV_BK, BQ = KV_BQ, SP = DP + pad<TC>(), LP = BQ + pad<TC>();
    constexpr int RM = BK / 16, CN = BQ / 16, DN = DP / 16;
    extern __shared__ __align__(128) float smem[];
    float *Ks = smem, *Vs = Ks + BK * SP, *Qs = Vs + BK * SP;
    float *dOs = Qs + BQ * SP, *PT = dOs + BQ * SP, *dST = PT + BK * LP;
    float *Xs = dST + BK * LP; /* TC: [BK][SP], the dV and dK products */
    __shared__ int64_t s_lo[BQ][2], s_hi[BQ][2];
    __shared__ float s_lse[BQ], s_D[BQ];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const fa_block bl = fa_block_of(blockIdx.x, ktiles, a, false);
    const int64_t j0 = bl.tile * BK, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, qs = a.Hq * D, ks = a.Hkv * D;
    const float *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_rows<BK, DP, SP>(Ks, kb, j0, a.Tk - j0, ks, D);
    load_rows<BK, DP, SP>(Vs, vb, j0, a.Tk - j0, ks, D);
    if (tid < BK)
        s_kv[tid] = key_ok(a, n, j0 + tid);
    /* The first barrier below also publishes these. */

    float adk[RM][DN], adv[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int j = 0; j < DN; j++)
            adk[i][j] = adv[i][j] = 0.0f;

    const float *qb = q + (n * a.Tq * a.Hq + h) * D, *ob = dout + (n * a.Tq * a.Hq + h) * D;
    const float *lb = lse + (n * a.Hq + h) * a.Tq, *db = Dv + (n * a.Hq + h) * a.Tq;
    for (int64_t i0 = 0; i0 < a.Tq; i0 += BQ) {
        /* Safe to overwrite: the previous tile's readers passed its
         * closing barrier (or, when it was skipped, read nothing). */
        int need = 0;
        if (tid < BQ) {
            row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
            need = spans_meet(s_lo[tid], s_hi[tid], j0, j0 + BK);
        }
        if (!__syncthreads_or(need))
            continue;
        load_rows<BQ, DP, SP>(Qs, qb, i0, a.Tq - i0, qs, D);
        load_rows<BQ, DP, SP>(dOs, ob, i0, a.Tq - i0, qs, D);
        if (tid < BQ) {
            const int64_t gi = i0 + tid;
            s_lse[tid] = gi < a.Tq ? lb[gi] : INFINITY;
            s_D[tid] = gi < a.Tq ? db[gi] : 0.0f;
        }
        __syncthreads();
        float s[RM][CN], dp[RM][CN];
        /* TC: S^T and dP^T pass through PT and dST, which each thread then
         * overwrites at the elements it read. */
        prod_abt<TC, BK, BQ, DP, SP, LP>(s, Ks, Qs, PT, ty, tx);
        prod_abt<TC, BK, BQ, DP, SP, LP>(dp, Vs, dOs, dST, ty, tx);
#pragma unroll
        for (int i = 0; i < RM; i++)
#pragma unroll
            for (int j = 0; j < CN; j++) {
                const int r = ty + 16 * i, c = tx + 16 * j; /* key r, query c */
                const float L = s_lse[c];
                /* lse = +inf: the row saw no key, P = 0 (no NaN from
                 * exp(s - inf) on the way). */
                const bool vis = s_kv[r] && L < INFINITY && in_spans(s_lo[c], s_hi[c], j0 + r);
                /* The scaled score rounded as in the forward pass (no
                 * fma with the subtraction): P is exp of the same value. */
                const float p = vis ? expf(__fmul_rn(a.scale, s[i][j]) - L) : 0.0f;
                PT[r * LP + c] = p;
                dST[r * LP + c] = p * (dp[i][j] - s_D[c]);
            }
        __syncthreads();
        prod_ab<TC, BK, BQ, DP, LP, SP>(adv, PT, dOs, Xs, ty, tx);
        prod_ab<TC, BK, BQ, DP, LP, SP>(adk, dST, Qs, Xs, ty, tx);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < RM; i++) {
        const int64_t gj = j0 + ty + 16 * i;
        if (gj >= a.Tk)
            continue;
        const int64_t off = ((n * a.Tk + gj) * a.Hkv + hk) * D;
        const int64_t poff = ((n * a.Tk + gj) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DN; j++) {
            const int col = tx + 16 * j;
            if (col >= D)
                continue;
            store_kv_grad(dk, dv, pk, pv, off + col, poff + col, a.scale * adk[i][j], adv[i][j]);
        }
    }
}

/* dst[n, j, hk, d] += sum over the group's query heads g (in order) of
 * part[n, j, hk G + g, d]: dst [N, Tk, Hkv, D], part [N, Tk, Hq, D]. One
 * thread per element of dst. */
__global__ static void fa_kv_sum_k(float *dst, const float *part, fa_args a)
{
    const int64_t e = (int64_t)blockIdx.x * FA_THREADS + threadIdx.x;
    if (e >= a.N * a.Tk * a.Hkv * a.D)
        return;
    const int64_t G = a.Hq / a.Hkv, d = e % a.D, row = e / a.D; /* row = (n Tk + j) Hkv + hk */
    const float *p = part + (row * G) * a.D + d;
    float s = 0.0f;
    for (int64_t g = 0; g < G; g++)
        s += p[g * a.D];
    dst[e] += s;
}

/* dQ of one tile of query rows; blockIdx.x as fa_fwd_k. */
template <int DP, bool TC>
__global__ static void __launch_bounds__(FA_THREADS) fa_bwd_q_k(
    float *dq, const float *dout, const float *q, const float *k, const float *v,
    const float *lse, const float *Dv, fa_args a, int64_t qtiles)
{
    constexpr int BQ = BQ_BQ, BK = BQ_BK, SP = DP + pad<TC>(), LP = BK + pad<TC>();
    constexpr int RM = BQ / 16, CN = BK / 16, DN = DP / 16;
    extern __shared__ __align__(128) float smem[];
    float *Qs = smem, *dOs = Qs + BQ * SP, *Ks = dOs + BQ * SP;
    float *Vs = Ks + BK * SP, *dSs = Vs + BK * SP;
    float *dPs = dSs + BQ * LP, *Ys = dPs + BQ * LP; /* TC: dP tile, [BQ][SP] dS K product */
    __shared__ int64_t s_lo[BQ][2], s_hi[BQ][2];
    __shared__ unsigned char s_kv[BK];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const fa_block bl = fa_block_of(blockIdx.x, qtiles, a, true);
    const int64_t i0 = bl.tile * BQ, h = bl.h, n = bl.n;
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D, qs = a.Hq * D, ks = a.Hkv * D;
    const float *qb = q + (n * a.Tq * a.Hq + h) * D, *ob = dout + (n * a.Tq * a.Hq + h) * D;
    const float *kb = k + (n * a.Tk * a.Hkv + hk) * D, *vb = v + (n * a.Tk * a.Hkv + hk) * D;

    load_rows<BQ, DP, SP>(Qs, qb, i0, a.Tq - i0, qs, D);
    load_rows<BQ, DP, SP>(dOs, ob, i0, a.Tq - i0, qs, D);
    if (tid < BQ)
        row_spans(a, i0 + tid, s_lo[tid], s_hi[tid]);
    float L[RM], Di[RM], acc[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; i++) {
        const int64_t gi = i0 + ty + 16 * i;
        L[i] = gi < a.Tq ? lse[(n * a.Hq + h) * a.Tq + gi] : INFINITY;
        Di[i] = gi < a.Tq ? Dv[(n * a.Hq + h) * a.Tq + gi] : 0.0f;
#pragma unroll
        for (int j = 0; j < DN; j++)
            acc[i][j] = 0.0f;
    }
    __syncthreads();

    for (int64_t k0 = 0; k0 < a.Tk; k0 += BK) {
        const int need = tid < BQ && spans_meet(s_lo[tid], s_hi[tid], k0, k0 + BK);
        if (!__syncthreads_or(need))
            continue;
        load_rows<BK, DP, SP>(Ks, kb, k0, a.Tk - k0, ks, D);
        load_rows<BK, DP, SP>(Vs, vb, k0, a.Tk - k0, ks, D);
        if (tid < BK)
            s_kv[tid] = key_ok(a, n, k0 + tid);
        __syncthreads();
        float s[RM][CN], dp[RM][CN];
        /* TC: S passes through dSs (overwritten below by each thread at
         * the elements it read), dP through dPs. */
        prod_abt<TC, BQ, BK, DP, SP, LP>(s, Qs, Ks, dSs, ty, tx);
        prod_abt<TC, BQ, BK, DP, SP, LP>(dp, dOs, Vs, dPs, ty, tx);
#pragma unroll
        for (int i = 0; i < RM; i++)
#pragma unroll
            for (int j = 0; j < CN; j++) {
                const int r = ty + 16 * i, c = tx + 16 * j; /* query r, key c */
                const bool vis = s_kv[c] && L[i] < INFINITY && in_spans(s_lo[r], s_hi[r], k0 + c);
                const float p = vis ? expf(__fmul_rn(a.scale, s[i][j]) - L[i]) : 0.0f;
                dSs[r * LP + c] = p * (dp[i][j] - Di[i]);
            }
        __syncthreads();
        prod_ab<TC, BQ, BK, DP, LP, SP>(acc, dSs, Ks, Ys, ty, tx);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < RM; i++) {
        const int64_t gi = i0 + ty + 16 * i;
        if (gi >= a.Tq)
            continue;
        float *row = dq + ((n * a.Tq + gi) * a.Hq + h) * D;
#pragma unroll
        for (int j = 0; j < DN; j++) {
            const int col = tx + 16 * j;
            if (col < D)
                row[col] += a.scale * acc[i][j];
        }
    }
}

/* ------------------------------------------------------------ launchers */

/* bf16 mode: q, k, v (and dout in backward) rounded to bf16 once per call,
 * into scratch, for the kernels of ops/cuda/attention_bf16.cu; each copy
 * 16-byte aligned. */
struct fa_b16 {
    const uint16_t *q, *k, *v, *dout;
};

/* Floats of scratch that hold n bf16 values, a multiple of 16 bytes. */
static int64_t b16_floats(int64_t n) { return (n + 7) / 8 * 4; }

static int64_t b16_scratch(const fa_args &a, bool backward)
{
    const int64_t nq = a.N * a.Tq * a.Hq * a.D, nk = a.N * a.Tk * a.Hkv * a.D;
    return (backward ? 2 : 1) * b16_floats(nq) + 2 * b16_floats(nk);
}

static int round_b16(fa_b16 *b, float *at, const float *q, const float *k, const float *v,
                     const float *dout, const fa_args &a, dvl_err *err)
{
    const int64_t nq = a.N * a.Tq * a.Hq * a.D, nk = a.N * a.Tk * a.Hkv * a.D;
    uint16_t *bq = (uint16_t *)at, *bk = bq + 2 * b16_floats(nq), *bv = bk + 2 * b16_floats(nk);
    uint16_t *bo = bv + 2 * b16_floats(nk);
    int rc = DVL_OK;
    if ((rc = dvl_cuda_to_bf16(bq, q, nq, err)) || (rc = dvl_cuda_to_bf16(bk, k, nk, err)) ||
        (rc = dvl_cuda_to_bf16(bv, v, nk, err)) ||
        (dout && (rc = dvl_cuda_to_bf16(bo, dout, nq, err))))
        return rc;
    b->q = bq, b->k = bk, b->v = bv, b->dout = dout ? bo : NULL;
    return DVL_OK;
}

template <int DP>
static int fwd_dp(dvl_cuda_math math, float *out, float *lse, const float *q, const float *k,
                  const float *v, const fa_args &a, dvl_err *err)
{
    const int64_t qtiles = fa_cdiv(a.Tq, FWD_BQ);
    if (math == DVL_MATH_TF32)
        return fa_launch(fa_fwd_k<DP, true>, qtiles * a.Hq * a.N, FA_THREADS,
                         fwd_smem<DP, true>(), "attention forward", err, out, lse, q, k, v, a,
                         qtiles);
    return fa_launch(fa_fwd_k<DP, false>, qtiles * a.Hq * a.N, FA_THREADS, fwd_smem<DP, false>(),
                     "attention forward", err, out, lse, q, k, v, a, qtiles);
}

/* The dK dV kernel of the chosen arithmetic: f32 CUDA cores, TF32 wmma (TC)
 * or bf16 mma (ops/cuda/attention_bf16.cu). pk, pv: scratch for the
 * per-head parts of dK, dV (grouped heads only). */
template <int DP>
static int bwd_kv(dvl_cuda_math math, float *dk, float *dv, float *pk, float *pv,
                  const float *dout, const float *q, const float *k, const float *v,
                  const fa_b16 &b, const float *lse, const float *Dv, const fa_args &a,
                  dvl_err *err)
{
    if (math == DVL_MATH_BF16)
        return fa_bf16_bwd_kv(dk, dv, pk, pv, b.dout, b.q, b.k, b.v, lse, Dv, a, err);
    const int64_t blocks = fa_cdiv(a.Tk, KV_BK) * a.Hq * a.N;
    if (math == DVL_MATH_TF32)
        return fa_launch(fa_bwd_kv_k<DP, true>, blocks, FA_THREADS, kv_smem<DP, true>(),
                         "attention backward dK dV", err, dk, dv, pk, pv, dout, q, k, v, lse, Dv,
                         a, fa_cdiv(a.Tk, KV_BK));
    return fa_launch(fa_bwd_kv_k<DP, false>, blocks, FA_THREADS, kv_smem<DP, false>(),
                     "attention backward dK dV", err, dk, dv, pk, pv, dout, q, k, v, lse, Dv, a,
                     fa_cdiv(a.Tk, KV_BK));
}

template <int DP>
static int bwd_q(dvl_cuda_math math, float *dq, const float *dout, const float *q,
                 const float *k, const float *v, const fa_b16 &b, const float *lse,
                 const float *Dv, const fa_args &a, dvl_err *err)
{
    if (math == DVL_MATH_BF16)
        return fa_bf16_bwd_q(dq, b.dout, b.q, b.k, b.v, lse, Dv, a, err);
    const int64_t qtiles = fa_cdiv(a.Tq, BQ_BQ);
    if (math == DVL_MATH_TF32)
        return fa_launch(fa_bwd_q_k<DP, true>, qtiles * a.Hq * a.N, FA_THREADS,
                         q_smem<DP, true>(), "attention backward dQ", err, dq, dout, q, k, v,
                         lse, Dv, a, qtiles);
    return fa_launch(fa_bwd_q_k<DP, false>, qtiles * a.Hq * a.N, FA_THREADS, q_smem<DP, false>(),
                     "attention backward dQ", err, dq, dout, q, k, v, lse, Dv, a, qtiles);
}

template <int DP>
static int bwd_dp(dvl_cuda_math math, float *dq, float *dk, float *dv, float *Dv, float *pk,
                  float *pv, const float *dout, const float *q, const float *k, const float *v,
                  const fa_b16 &b, const float *lse, const fa_args &a, dvl_err *err)
{
    int rc = DVL_OK;
    if (dk || dv) {
        const bool grouped = a.Hq != a.Hkv;
        rc = bwd_kv<DP>(math, dk, dv, grouped && dk ? pk : (float *)NULL,
                        grouped && dv ? pv : (float *)NULL, dout, q, k, v, b, lse, Dv, a, err);
        const int64_t sum_blocks = fa_cdiv(a.N * a.Tk * a.Hkv * a.D, FA_THREADS);
        if (rc == DVL_OK && grouped && sum_blocks > INT_MAX)
            rc = dvl_errf(err, DVL_EINVAL, "attention backward: %lld kv gradient blocks exceed "
                          "the grid limit", (long long)sum_blocks);
        for (int t = 0; rc == DVL_OK && grouped && t < 2; t++) {
            float *dst = t ? dv : dk;
            if (!dst)
                continue;
            fa_kv_sum_k<<<(unsigned)sum_blocks, FA_THREADS>>>(dst, t ? pv : pk, a);
            rc = dvl_cuda_check("attention backward: dK dV over the group's heads", err);
        }
    }
    if (rc == DVL_OK && dq)
        rc = bwd_q<DP>(math, dq, dout, q, k, v, b, lse, Dv, a, err);
    return rc;
}

static fa_args args_of(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                       int kind, int64_t block, int64_t half, int64_t q_offset,
                       const uint8_t *key_valid, float scale)
{
    fa_args a;
    a.N = N, a.Tq = Tq, a.Tk = Tk, a.Hq = Hq, a.Hkv = Hkv, a.D = D;
    a.kind = kind, a.block = block, a.half = half, a.q_offset = q_offset;
    a.key_valid = key_valid, a.scale = scale;
    return a;
}

extern "C" bool dvl_cuda_attention_tiled(int64_t D) { return D >= 1 && D <= DVL_CUDA_ATTN_MAX_D; }

extern "C" int64_t dvl_cuda_attention_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                                              int64_t Hkv, int64_t D, bool backward,
                                              dvl_cuda_math math)
{
    if (!dvl_cuda_attention_tiled(D))
        return (backward ? 2 : 1) * dvl_cuda_attention_ref_scratch(N, Tq, Tk, Hq);
    const fa_args a = args_of(N, Tq, Tk, Hq, Hkv, D, 0, 0, 0, 0, NULL, 1.0f);
    const int64_t b16 = math == DVL_MATH_BF16 ? b16_scratch(a, backward) : 0;
    if (!backward)
        return b16;
    /* D_i per query row; with grouped heads each head's dK and dV parts;
     * then, 16-byte aligned, the bf16 copies */
    return (N * Hq * Tq + (Hq != Hkv ? 2 * N * Tk * Hq * D : 0) + 3) / 4 * 4 + b16;
}

extern "C" int dvl_cuda_attention_fwd(float *out, float *lse, float *scratch, const float *q,
                                      const float *k, const float *v, int64_t N, int64_t Tq,
                                      int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                                      int mask_kind, int64_t block, int64_t half,
                                      int64_t q_offset, const uint8_t *key_valid, float scale,
                                      dvl_cuda_math math, dvl_err *err)
{
    if (N <= 0 || Tq <= 0 || Hq <= 0 || D <= 0)
        return DVL_OK; /* empty output */
    if (Hkv <= 0 || Hq % Hkv != 0)
        return dvl_errf(err, DVL_EINVAL, "attention: %lld query heads on %lld kv heads",
                        (long long)Hq, (long long)Hkv);
    if (!dvl_cuda_attention_tiled(D)) {
        dvl_cuda_attention_ref_fwd(out, lse, scratch, q, k, v, N, Tq, Tk, Hq, Hkv, D, mask_kind,
                                   block, half, q_offset, key_valid, scale);
        return dvl_cuda_check("attention forward (reference kernel)", err);
    }
    const fa_args a = args_of(N, Tq, Tk, Hq, Hkv, D, mask_kind, block, half, q_offset, key_valid,
                              scale);
    if (math == DVL_MATH_BF16) {
        fa_b16 b;
        const int rc = round_b16(&b, scratch, q, k, v, NULL, a, err);
        return rc ? rc : fa_bf16_fwd(out, lse, b.q, b.k, b.v, a, err);
    }
    if (D <= 32)
        return fwd_dp<32>(math, out, lse, q, k, v, a, err);
    if (D <= 64)
        return fwd_dp<64>(math, out, lse, q, k, v, a, err);
    return fwd_dp<128>(math, out, lse, q, k, v, a, err);
}

extern "C" int dvl_cuda_attention_bwd(float *dq, float *dk, float *dv, float *scratch,
                                      const float *dout, const float *out, const float *lse,
                                      const float *q, const float *k, const float *v, int64_t N,
                                      int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                                      int mask_kind, int64_t block, int64_t half,
                                      int64_t q_offset, const uint8_t *key_valid, float scale,
                                      dvl_cuda_math math, dvl_err *err)
{
    if (N <= 0 || Tq <= 0 || Tk <= 0 || Hq <= 0 || D <= 0 || (!dq && !dk && !dv))
        return DVL_OK; /* every gradient term is an empty sum */
    if (Hkv <= 0 || Hq % Hkv != 0)
        return dvl_errf(err, DVL_EINVAL, "attention backward: %lld query heads on %lld kv heads",
                        (long long)Hq, (long long)Hkv);
    if (!dvl_cuda_attention_tiled(D)) {
        dvl_cuda_attention_ref_bwd(dq, dk, dv, scratch, dout, out, lse, q, k, v, N, Tq, Tk, Hq,
                                   Hkv, D, mask_kind, block, half, q_offset, key_valid, scale);
        return dvl_cuda_check("attention backward (reference kernel)", err);
    }
    const fa_args a = args_of(N, Tq, Tk, Hq, Hkv, D, mask_kind, block, half, q_offset, key_valid,
                              scale);
    const int64_t rows = N * Hq * Tq;
    float *Dv = scratch, *pk = scratch + rows, *pv = pk + N * Tk * Hq * D;
    if (fa_cdiv(rows, FA_THREADS / 32) > INT_MAX)
        return dvl_errf(err, DVL_EINVAL,
                        "attention backward: %lld query rows exceed the grid limit",
                        (long long)rows);
    fa_dot_k<<<(unsigned)fa_cdiv(rows, FA_THREADS / 32), FA_THREADS>>>(Dv, dout, out, a);
    int rc = dvl_cuda_check("attention backward D = rowsum(dO O)", err);
    if (rc != DVL_OK)
        return rc;
    fa_b16 b = {NULL, NULL, NULL, NULL};
    if (math == DVL_MATH_BF16) {
        const int64_t f32 = rows + (Hq != Hkv ? 2 * N * Tk * Hq * D : 0);
        if ((rc = round_b16(&b, scratch + (f32 + 3) / 4 * 4, q, k, v, dout, a, err)))
            return rc;
    }
#define BWD(DP) bwd_dp<DP>(math, dq, dk, dv, Dv, pk, pv, dout, q, k, v, b, lse, a, err)
    if (D <= 32)
        return BWD(32);
    if (D <= 64)
        return BWD(64);
    return BWD(128);
#undef BWD
}
