/* Attention on the GPU, the straightforward version: correct under every
 * mask rule, GQA and key padding, deterministic, not fast. It keeps one row
 * of scores per query in global scratch [N, Hq, Tq, Tk], so its memory
 * grows with Tq Tk. The op runs the tiled kernel (ops/cuda/attention.cu)
 * and falls back to this one only for heads longer than the tiled kernel
 * supports; the tests use it as a second reference on the device.
 *
 * Layouts as ops/cpu/attention.h: q, out, dout, dq [N, Tq, Hq, D]; k, v,
 * dk, dv [N, Tk, Hkv, D]; lse [N, Hq, Tq]; query head h reads kv head
 * h / (Hq / Hkv). The visible keys of a row are its mask spans
 * (ops/mask_spans.h, the one rule the CPU uses) minus padded keys.
 *
 *   forward   (one block per (n, h, i))
 *     s_j = scale q_i . k_j for visible j;  m = max s;  l = sum exp(s_j - m)
 *     lse_i = m + log l;  P_ij = exp(s_j - lse_i);  o_i = sum_j P_ij v_j
 *   backward
 *     kernel A (one block per (n, h, i)): P_ij recomputed, D_i = dO_i . O_i,
 *       dS_ij = P_ij (dO_i . v_j - D_i), dQ_i += scale sum_j dS_ij k_j;
 *       P and dS stored (zeros for invisible keys)
 *     kernel B (one block per (n, hk, j)): dK_j += scale sum dS_ij q_i,
 *       dV_j += sum P_ij dO_i over the group's query heads and rows, in
 *       order: no atomics, so the result is the same on every run. */
#include <math.h>

#include "ops/cuda/common.cuh"
#include "ops/mask_spans.h"

#define ATT_THREADS 128

struct ref_shape {
    int64_t N, Tq, Tk, Hq, Hkv, D;
    int kind;
    int64_t block, half, q_offset;
    const uint8_t *key_valid;
    float scale;
};

/* Fixed-shape shared-memory tree over ATT_THREADS values. */
__device__ static float block_reduce(float v, float *sh, bool is_max)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] = is_max ? fmaxf(sh[threadIdx.x], sh[threadIdx.x + s])
                                     : sh[threadIdx.x] + sh[threadIdx.x + s];
        __syncthreads();
    }
    const float r = sh[0];
    __syncthreads(); /* sh is reused by the next reduction */
    return r;
}

/* Whether key j of sequence n is visible to the row with spans lo/hi. */
__device__ static inline bool visible(const ref_shape &a, int64_t n, int64_t j, int ns,
                                      const int64_t *lo, const int64_t *hi)
{
    bool in = false;
    for (int r = 0; r < ns; r++)
        in = in || (j >= lo[r] && j < hi[r]);
    return in && (!a.key_valid || a.key_valid[n * a.Tk + j]);
}

__device__ static inline float dotf(const float *x, const float *y, int64_t D)
{
    float s = 0.0f;
    for (int64_t d = 0; d < D; d++)
        s += x[d] * y[d];
    return s;
}

/* blockIdx.x = (n * Hq + h) * Tq + i. */
__global__ static void att_fwd_k(float *out, float *lse, float *S, const float *q,
                                 const float *k, const float *v, ref_shape a)
{
    __shared__ float sh[ATT_THREADS];
    const int64_t row = blockIdx.x;
    const int64_t i = row % a.Tq, h = (row / a.Tq) % a.Hq, n = row / (a.Tq * a.Hq);
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D;
    const float *qi = q + ((n * a.Tq + i) * a.Hq + h) * D;
    float *Sr = S + row * a.Tk;
    int64_t lo[2], hi[2];
    const int ns = dvl_spans(a.kind, a.block, a.half, a.q_offset, i, a.Tk, lo, hi);

    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < a.Tk; j += ATT_THREADS) {
        float s = -INFINITY;
        if (visible(a, n, j, ns, lo, hi))
            s = a.scale * dotf(qi, k + ((n * a.Tk + j) * a.Hkv + hk) * D, D);
        Sr[j] = s;
        m = fmaxf(m, s);
    }
    m = block_reduce(m, sh, true);
    float *oi = out + ((n * a.Tq + i) * a.Hq + h) * D;
    if (m == -INFINITY) { /* no visible key: zero output, lse = +inf */
        for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS)
            oi[d] = 0.0f;
        if (threadIdx.x == 0 && lse)
            lse[(n * a.Hq + h) * a.Tq + i] = INFINITY;
        return;
    }
    float l = 0.0f;
    for (int64_t j = threadIdx.x; j < a.Tk; j += ATT_THREADS)
        l += expf(Sr[j] - m); /* exp(-inf) = 0 for invisible keys */
    l = block_reduce(l, sh, false);
    const float L = m + logf(l);
    for (int64_t j = threadIdx.x; j < a.Tk; j += ATT_THREADS)
        Sr[j] = expf(Sr[j] - L);
    if (threadIdx.x == 0 && lse)
        lse[(n * a.Hq + h) * a.Tq + i] = L;
    __syncthreads(); /* the probabilities are read by every thread below */
    for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int r = 0; r < ns; r++)
            for (int64_t j = lo[r]; j < hi[r]; j++)
                acc += Sr[j] * v[((n * a.Tk + j) * a.Hkv + hk) * D + d];
        oi[d] = acc;
    }
}

/* Kernel A of the backward pass; blockIdx.x as att_fwd_k. */
__global__ static void att_bwd_q_k(float *dq, float *P, float *dS, const float *dout,
                                   const float *out, const float *lse, const float *q,
                                   const float *k, const float *v, ref_shape a)
{
    __shared__ float sh[ATT_THREADS];
    const int64_t row = blockIdx.x;
    const int64_t i = row % a.Tq, h = (row / a.Tq) % a.Hq, n = row / (a.Tq * a.Hq);
    const int64_t hk = h / (a.Hq / a.Hkv), D = a.D;
    const int64_t qoff = ((n * a.Tq + i) * a.Hq + h) * D;
    const float L = lse[(n * a.Hq + h) * a.Tq + i];
    float *Pr = P + row * a.Tk, *dSr = dS + row * a.Tk;
    int64_t lo[2], hi[2];
    const int ns = dvl_spans(a.kind, a.block, a.half, a.q_offset, i, a.Tk, lo, hi);
    /* D_i = dO_i . O_i, one block-wide sum. */
    float part = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS)
        part += dout[qoff + d] * out[qoff + d];
    const float Di = block_reduce(part, sh, false);
    const bool any = isfinite(L);
    for (int64_t j = threadIdx.x; j < a.Tk; j += ATT_THREADS) {
        float p = 0.0f, ds = 0.0f;
        if (any && visible(a, n, j, ns, lo, hi)) {
            const int64_t koff = ((n * a.Tk + j) * a.Hkv + hk) * D;
            p = expf(a.scale * dotf(q + qoff, k + koff, D) - L);
            ds = p * (dotf(dout + qoff, v + koff, D) - Di);
        }
        Pr[j] = p;
        dSr[j] = ds;
    }
    __syncthreads();
    if (!dq || !any)
        return;
    for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int r = 0; r < ns; r++)
            for (int64_t j = lo[r]; j < hi[r]; j++)
                acc += dSr[j] * k[((n * a.Tk + j) * a.Hkv + hk) * D + d];
        dq[qoff + d] += a.scale * acc;
    }
}

/* Kernel B; blockIdx.x = (n * Hkv + hk) * Tk + j. */
__global__ static void att_bwd_kv_k(float *dk, float *dv, const float *P, const float *dS,
                                    const float *dout, const float *q, ref_shape a)
{
    const int64_t blk = blockIdx.x;
    const int64_t j = blk % a.Tk, hk = (blk / a.Tk) % a.Hkv, n = blk / (a.Tk * a.Hkv);
    const int64_t G = a.Hq / a.Hkv, D = a.D;
    const int64_t koff = ((n * a.Tk + j) * a.Hkv + hk) * D;
    for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS) {
        float ak = 0.0f, av = 0.0f;
        for (int64_t h = hk * G; h < (hk + 1) * G; h++)
            for (int64_t i = 0; i < a.Tq; i++) {
                const int64_t sidx = ((n * a.Hq + h) * a.Tq + i) * a.Tk + j;
                const float p = P[sidx], ds = dS[sidx];
                if (p == 0.0f && ds == 0.0f)
                    continue; /* invisible (or underflowed: adds nothing) */
                const int64_t qoff = ((n * a.Tq + i) * a.Hq + h) * D + d;
                ak += ds * q[qoff];
                av += p * dout[qoff];
            }
        if (dk)
            dk[koff + d] += a.scale * ak;
        if (dv)
            dv[koff + d] += av;
    }
}

extern "C" int64_t dvl_cuda_attention_ref_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq)
{
    return N * Hq * Tq * (Tk > 0 ? Tk : 1);
}

static ref_shape shape_of(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                          int kind, int64_t block, int64_t half, int64_t q_offset,
                          const uint8_t *key_valid, float scale)
{
    ref_shape a;
    a.N = N, a.Tq = Tq, a.Tk = Tk, a.Hq = Hq, a.Hkv = Hkv, a.D = D;
    a.kind = kind, a.block = block, a.half = half, a.q_offset = q_offset;
    a.key_valid = key_valid, a.scale = scale;
    return a;
}

extern "C" void dvl_cuda_attention_ref_fwd(float *out, float *lse, float *scratch, const float *q,
                                           const float *k, const float *v, int64_t N, int64_t Tq,
                                           int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                                           int mask_kind, int64_t block, int64_t half,
                                           int64_t q_offset, const uint8_t *key_valid, float scale)
{
    const int64_t rows = N * Hq * Tq;
    if (rows <= 0 || D <= 0)
        return;
    ref_shape a = shape_of(N, Tq, Tk, Hq, Hkv, D, mask_kind, block, half, q_offset, key_valid,
                           scale);
    att_fwd_k<<<(unsigned)rows, ATT_THREADS>>>(out, lse, scratch, q, k, v, a);
}

extern "C" void dvl_cuda_attention_ref_bwd(float *dq, float *dk, float *dv, float *scratch,
                                           const float *dout, const float *out, const float *lse,
                                           const float *q, const float *k, const float *v,
                                           int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                                           int64_t Hkv, int64_t D, int mask_kind, int64_t block,
                                           int64_t half, int64_t q_offset,
                                           const uint8_t *key_valid, float scale)
{
    const int64_t rows = N * Hq * Tq;
    if (rows <= 0 || D <= 0 || Tk <= 0)
        return;
    ref_shape a = shape_of(N, Tq, Tk, Hq, Hkv, D, mask_kind, block, half, q_offset, key_valid,
                           scale);
    float *P = scratch, *dS = scratch + dvl_cuda_attention_ref_scratch(N, Tq, Tk, Hq);
    att_bwd_q_k<<<(unsigned)rows, ATT_THREADS>>>(dq, P, dS, dout, out, lse, q, k, v, a);
    if (dk || dv)
        att_bwd_kv_k<<<(unsigned)(N * Hkv * Tk), ATT_THREADS>>>(dk, dv, P, dS, dout, q, a);
}
