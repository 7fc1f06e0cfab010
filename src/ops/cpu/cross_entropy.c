/* Cross-entropy kernels. Rows are independent, so every per-row loop runs in
 * parallel over rows with each row's reduction done sequentially by one
 * thread: results do not depend on the thread count. The loss total is
 * summed serially, in row order, in double. BLAS is called only from the
 * serial level (OpenBLAS here is the pthread build, which must not be
 * entered from inside an OpenMP region). */
#include "ops/cpu/cross_entropy.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "ops/cpu/par.h"

/* Online logsumexp (Milakov & Gimelshein 2018, "Online normalizer
 * calculation for softmax"): fold z[0..C) into the running maximum *m and
 * the running sum *s = sum exp(z - *m), rescaling the old sum when the
 * maximum grows. Start from *m = -inf, *s = 0. The sum is kept in double so
 * that 150k vocabulary terms lose nothing to rounding. */
static inline void lse_update(const float *z, int64_t C, float *m, double *s)
{
    float mc = -INFINITY;
    for (int64_t j = 0; j < C; j++)
        mc = z[j] > mc ? z[j] : mc; /* a NaN logit is skipped here but poisons the sum below */
    float mn = mc > *m ? mc : *m;
    double sc = 0;
    for (int64_t j = 0; j < C; j++)
        sc += expf(z[j] - mn);
    *s = (*m == -INFINITY ? 0.0 : *s * exp((double)*m - (double)mn)) + sc;
    *m = mn;
}

/* One row's term w (logsumexp(z) - z_y) = w ((m - z_y) + log s): m - z_y is
 * exact in double, so large logits (1e4) lose no precision to cancellation. */
static inline double row_loss(float m, double log_s, float zy, float w)
{
    return (double)w * (((double)m - (double)zy) + log_s);
}

/* ------------------------------------------------------ materialised logits */

void dvl_cpu_cross_entropy_fwd(float *loss, float *rowmax, float *logsum, const float *z,
                               const int32_t *labels, const float *weight, int64_t n, int64_t V)
{
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * n * V))
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0)
            continue;
        float m = -INFINITY;
        double s = 0;
        lse_update(z + i * V, V, &m, &s);
        rowmax[i] = m;
        logsum[i] = (float)log(s);
    }
    double total = 0;
    for (int64_t i = 0; i < n; i++)
        if (labels[i] >= 0)
            total += row_loss(rowmax[i], (double)logsum[i], z[i * V + labels[i]],
                              weight ? weight[i] : 1.0f);
    loss[0] = (float)total;
}

/* d loss / d z_ij = g w_i (p_ij - [j == y_i]) with p = softmax(z_i)
 * = exp((z - m) - logsum). The label's entry is formed as c (p - 1), not
 * c p - c, so a confident p ~ 1 keeps its small difference exactly. */
void dvl_cpu_cross_entropy_bwd(float *dz, const float *z, const float *rowmax,
                               const float *logsum, const int32_t *labels, const float *weight,
                               float g, int64_t n, int64_t V)
{
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * n * V))
    for (int64_t i = 0; i < n; i++) {
        int32_t y = labels[i];
        if (y < 0)
            continue;
        const float c = g * (weight ? weight[i] : 1.0f), m = rowmax[i], ls = logsum[i];
        const float *zi = z + i * V;
        float *di = dz + i * V;
        const float dy = di[y];
        for (int64_t j = 0; j < V; j++)
            di[j] += c * expf((zi[j] - m) - ls);
        di[y] = dy + c * (expf((zi[y] - m) - ls) - 1.0f);
    }
}

/* ------------------------------------------------------------------- fused */

/* Scratch of the fused kernels for a tile of T token rows and chunks of C
 * vocabulary rows: s (running sums, double) and zy (label logits) [T], the
 * logits chunk Z [T, C] (overwritten by dZ in the backward pass), the
 * gathered rows of h [T, d] and their gradient [T, d]. Each piece starts on
 * a 64-byte boundary. */
typedef struct xent_scratch {
    double *s;
    float *zy, *z, *ht, *dht;
} xent_scratch;

static size_t up64(size_t b) { return (b + 63) / 64 * 64; }

static int64_t tile_rows(int64_t n_sup) { return n_sup < DVL_XENT_TILE ? n_sup : DVL_XENT_TILE; }

size_t dvl_cpu_linear_cross_entropy_scratch(int64_t n_sup, int64_t d, int64_t chunk)
{
    size_t T = (size_t)tile_rows(n_sup);
    return up64(T * sizeof(double)) + up64(T * sizeof(float)) +
           up64(T * (size_t)chunk * sizeof(float)) + 2 * up64(T * (size_t)d * sizeof(float));
}

static xent_scratch scratch_layout(void *base, int64_t n_sup, int64_t d, int64_t chunk)
{
    size_t T = (size_t)tile_rows(n_sup);
    char *p = base;
    xent_scratch sc;
    sc.s = (double *)p;
    p += up64(T * sizeof(double));
    sc.zy = (float *)p;
    p += up64(T * sizeof(float));
    sc.z = (float *)p;
    p += up64(T * (size_t)chunk * sizeof(float));
    sc.ht = (float *)p;
    p += up64(T * (size_t)d * sizeof(float));
    sc.dht = (float *)p;
    return sc;
}

/* ht[r] = h[rows[r]]: the supervised rows of the tile, contiguous for BLAS. */
static void gather_rows(float *ht, const float *h, const int32_t *rows, int64_t T, int64_t d)
{
#pragma omp parallel for schedule(static) if (dvl_par(T * d))
    for (int64_t r = 0; r < T; r++)
        memcpy(ht + r * d, h + (int64_t)rows[r] * d, (size_t)d * sizeof(float));
}

/* Z [T, C] = ht [T, d] W[c0 .. c0+C)^T. */
static void chunk_logits(float *z, const float *ht, const float *w, int64_t T, int64_t C,
                         int64_t d)
{
    const int ld = d > 0 ? (int)d : 1;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)C, (int)d, 1.0f, ht, ld, w,
                ld, 0.0f, z, (int)C);
}

/* Tiles of DVL_XENT_TILE supervised rows; within a tile, chunks of C
 * vocabulary rows: the scratch holds one [T, C] block of logits, never
 * [n, V]. */
void dvl_cpu_linear_cross_entropy_fwd(float *loss, float *rowmax, float *logsum, void *scratch,
                                      const float *h, const float *w, const int32_t *rows,
                                      const int32_t *labels, const float *weight, int64_t n_sup,
                                      int64_t d, int64_t V, int64_t chunk)
{
    xent_scratch sc = scratch_layout(scratch, n_sup, d, chunk);
    double total = 0;
    for (int64_t t0 = 0; t0 < n_sup; t0 += DVL_XENT_TILE) {
        const int64_t T = tile_rows(n_sup - t0);
        gather_rows(sc.ht, h, rows + t0, T, d);
        for (int64_t r = 0; r < T; r++) {
            rowmax[t0 + r] = -INFINITY;
            sc.s[r] = 0;
        }
        for (int64_t c0 = 0; c0 < V; c0 += chunk) {
            const int64_t C = V - c0 < chunk ? V - c0 : chunk;
            chunk_logits(sc.z, sc.ht, w + c0 * d, T, C, d);
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * T * C))
            for (int64_t r = 0; r < T; r++) {
                const float *zr = sc.z + r * C;
                lse_update(zr, C, &rowmax[t0 + r], &sc.s[r]);
                const int64_t y = labels[t0 + r];
                if (y >= c0 && y < c0 + C)
                    sc.zy[r] = zr[y - c0];
            }
        }
        for (int64_t r = 0; r < T; r++) {
            const double log_s = log(sc.s[r]);
            logsum[t0 + r] = (float)log_s;
            total += row_loss(rowmax[t0 + r], log_s, sc.zy[r], weight ? weight[t0 + r] : 1.0f);
        }
    }
    loss[0] = (float)total;
}

/* Per chunk: recompute Z, turn it into dZ in place, then
 *   dh_tile (+)= dZ W_c      (first chunk overwrites, later ones add)
 *   dW_c    += dZ^T h_tile   (straight into W's gradient; tiles add in order)
 * and finally scatter-add dh_tile into dh. */
void dvl_cpu_linear_cross_entropy_bwd(float *dh, float *dw, void *scratch, const float *h,
                                      const float *w, const int32_t *rows, const int32_t *labels,
                                      const float *weight, const float *rowmax,
                                      const float *logsum, float g, int64_t n_sup, int64_t d,
                                      int64_t V, int64_t chunk)
{
    if (!dh && !dw)
        return;
    xent_scratch sc = scratch_layout(scratch, n_sup, d, chunk);
    const int ld = d > 0 ? (int)d : 1;
    for (int64_t t0 = 0; t0 < n_sup; t0 += DVL_XENT_TILE) {
        const int64_t T = tile_rows(n_sup - t0);
        gather_rows(sc.ht, h, rows + t0, T, d);
        for (int64_t c0 = 0; c0 < V; c0 += chunk) {
            const int64_t C = V - c0 < chunk ? V - c0 : chunk;
            chunk_logits(sc.z, sc.ht, w + c0 * d, T, C, d);
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * T * C))
            for (int64_t r = 0; r < T; r++) {
                const int64_t k = t0 + r, y = labels[k];
                const float c = g * (weight ? weight[k] : 1.0f), m = rowmax[k], ls = logsum[k];
                float *zr = sc.z + r * C;
                const bool here = y >= c0 && y < c0 + C;
                const float zy = here ? zr[y - c0] : 0.0f;
                for (int64_t j = 0; j < C; j++)
                    zr[j] = c * expf((zr[j] - m) - ls);
                if (here)
                    zr[y - c0] = c * (expf((zy - m) - ls) - 1.0f);
            }
            if (dh)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)d, (int)C, 1.0f,
                            sc.z, (int)C, w + c0 * d, ld, c0 == 0 ? 0.0f : 1.0f, sc.dht, ld);
            if (dw)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)C, (int)d, (int)T, 1.0f,
                            sc.z, (int)C, sc.ht, ld, 1.0f, dw + c0 * d, ld);
        }
        if (dh) {
            /* Supervised rows are distinct, so the scatter has no races. */
#pragma omp parallel for schedule(static) if (dvl_par(T * d))
            for (int64_t r = 0; r < T; r++) {
                float *dst = dh + (int64_t)rows[t0 + r] * d;
                const float *src = sc.dht + r * d;
                for (int64_t e = 0; e < d; e++)
                    dst[e] += src[e];
            }
        }
    }
}
