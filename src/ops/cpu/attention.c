/* Attention on the CPU, flash-attention style (Dao et al. 2022, alg. 1-2,
 * with whole key rows instead of key tiles since a [64, Tk] block of scores
 * is small on a CPU).
 *
 * For each sequence n, query head h and tile of up to DVL_ATTN_TILE query
 * rows, working on the strided head slices in place (row stride Hq*D for
 * queries, Hkv*D for keys, passed to BLAS as leading dimensions, so grouped
 * kv heads are shared by index and nothing is copied):
 *   forward   S = scale Q K^T              (sgemm)
 *             P = softmax(S + mask) by row  (OpenMP over rows), lse saved
 *             O = P V                       (sgemm)
 *   backward  P  = exp(S - lse)             (S recomputed by sgemm)
 *             dV += P^T dO,  dP = dO V^T
 *             dS = P * (dP - rowsum(dO * O))
 *             dQ += scale dS K,  dK += scale dS^T Q.
 * Only the keys some row of the tile can see are computed: the tile's rows'
 * mask spans (ops/mask.c) are joined into at most two key runs ("segments")
 * laid side by side in the score block, which skips the future of a causal
 * tile and the unrelated x_t blocks of a block-diffusion tile.
 *
 * BLAS is called only from the serial level (OpenBLAS here runs its own
 * pthreads and must not be entered from an OpenMP region); the row-wise
 * softmax runs on OpenMP, each row by one thread. The loops over n, h and
 * tiles are serial, so the += into dK and dV across the query heads of a
 * group happens in one fixed order whatever the thread count. */
#include "ops/cpu/attention.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Below this many scores per tile an OpenMP region costs more than it saves. */
#define PAR_MIN_SCORES 8192

/* Keys [k0, k0 + len) held in score columns [col, col + len). */
typedef struct segment {
    int64_t k0, len, col;
} segment;

/* Score columns [c0, c1) of one row that its mask spans allow, holding keys
 * j0, j0 + 1, ... */
typedef struct colrun {
    int64_t c0, c1, j0;
} colrun;

size_t dvl_cpu_attention_fwd_scratch(int64_t Tk)
{
    return (size_t)DVL_ATTN_TILE * (size_t)(Tk > 0 ? Tk : 1);
}

size_t dvl_cpu_attention_bwd_scratch(int64_t Tk)
{
    return 2 * dvl_cpu_attention_fwd_scratch(Tk) + DVL_ATTN_TILE;
}

/* The key segments of query rows [i0, i1): the hull of the rows' first
 * spans and the hull of their second spans, merged when they touch. Every
 * span of every row lies inside one segment. Returns the number of segments
 * (0: no row sees any key) and the number of score columns. */
static int tile_segments(const dvl_mask *m, int64_t i0, int64_t i1, int64_t Tk, segment sg[2],
                         int64_t *ncol)
{
    int64_t lo[2] = {INT64_MAX, INT64_MAX}, hi[2] = {0, 0};
    for (int64_t i = i0; i < i1; i++) {
        int64_t sl[2], sh[2];
        int ns = dvl_mask_spans(m, i, Tk, sl, sh);
        for (int r = 0; r < ns; r++) {
            if (sl[r] < lo[r])
                lo[r] = sl[r];
            if (sh[r] > hi[r])
                hi[r] = sh[r];
        }
    }
    int n = 0;
    int64_t a[2], b[2];
    for (int r = 0; r < 2; r++)
        if (lo[r] < hi[r]) {
            a[n] = lo[r];
            b[n] = hi[r];
            n++;
        }
    if (n == 2) {
        if (a[1] < a[0]) { /* order by first key */
            int64_t t = a[0];
            a[0] = a[1];
            a[1] = t;
            t = b[0];
            b[0] = b[1];
            b[1] = t;
        }
        if (a[1] <= b[0]) { /* overlapping or adjacent: one run */
            if (b[1] > b[0])
                b[0] = b[1];
            n = 1;
        }
    }
    int64_t col = 0;
    for (int s = 0; s < n; s++) {
        sg[s].k0 = a[s];
        sg[s].len = b[s] - a[s];
        sg[s].col = col;
        col += sg[s].len;
    }
    *ncol = col;
    return n;
}

/* Row i's mask spans as score columns, in increasing column order. */
static int row_colruns(const dvl_mask *m, int64_t i, int64_t Tk, const segment *sg, int nseg,
                       colrun cr[2])
{
    int64_t lo[2], hi[2];
    int ns = dvl_mask_spans(m, i, Tk, lo, hi);
    int n = 0;
    for (int r = 0; r < ns; r++)
        for (int s = 0; s < nseg; s++)
            if (lo[r] >= sg[s].k0 && hi[r] <= sg[s].k0 + sg[s].len) {
                cr[n].c0 = sg[s].col + (lo[r] - sg[s].k0);
                cr[n].c1 = cr[n].c0 + (hi[r] - lo[r]);
                cr[n].j0 = lo[r];
                n++;
                break;
            }
    return n;
}

/* In place: scores -> exp(s - shift) on the visible columns (allowed by the
 * runs and not padding), 0 elsewhere. Returns the sum of the exponentials. */
static double exp_visible(float *s, int64_t ncol, const colrun *cr, int nr, const uint8_t *kv,
                          float shift)
{
    double sum = 0;
    int64_t prev = 0;
    for (int r = 0; r < nr; r++) {
        memset(s + prev, 0, (size_t)(cr[r].c0 - prev) * sizeof *s);
        const int64_t jc = cr[r].j0 - cr[r].c0; /* key = column + jc */
        for (int64_t c = cr[r].c0; c < cr[r].c1; c++) {
            float e = (!kv || kv[c + jc]) ? expf(s[c] - shift) : 0.0f;
            s[c] = e;
            sum += e;
        }
        prev = cr[r].c1;
    }
    memset(s + prev, 0, (size_t)(ncol - prev) * sizeof *s);
    return sum;
}

/* One row of scores -> probabilities in place. Returns the row's logsumexp
 * over the visible keys, +inf (and an all-zero row) when there are none. */
static float softmax_row(float *s, int64_t ncol, const colrun *cr, int nr, const uint8_t *kv)
{
    float mx = -INFINITY;
    for (int r = 0; r < nr; r++) {
        const int64_t jc = cr[r].j0 - cr[r].c0;
        for (int64_t c = cr[r].c0; c < cr[r].c1; c++)
            if ((!kv || kv[c + jc]) && s[c] > mx)
                mx = s[c];
    }
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)ncol * sizeof *s);
        return INFINITY;
    }
    double sum = exp_visible(s, ncol, cr, nr, kv, mx); /* >= 1: the max gives exp(0) */
    float inv = (float)(1.0 / sum);
    for (int r = 0; r < nr; r++)
        for (int64_t c = cr[r].c0; c < cr[r].c1; c++)
            s[c] *= inv;
    return mx + (float)log(sum);
}

/* S[:, seg] = scale * Q K[seg]^T for every segment; Q rows stride qs, K rows
 * stride ks, S rows ncol. */
static void scores(float *S, const float *qt, int64_t qs, const float *kh, int64_t ks, int64_t rows,
                   int64_t D, const segment *sg, int nseg, int64_t ncol, float scale)
{
    for (int s = 0; s < nseg; s++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)sg[s].len, (int)D,
                    scale, qt, (int)qs, kh + sg[s].k0 * ks, (int)ks, 0.0f, S + sg[s].col,
                    (int)ncol);
}

void dvl_cpu_attention_fwd(float *out, float *lse, float *scratch, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale)
{
    const int64_t group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    float *P = scratch;
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *kv = mask->key_valid ? mask->key_valid + n * Tk : NULL;
        for (int64_t h = 0; h < Hq; h++) {
            const int64_t g = h / group;
            const float *kh = k + (n * Tk * Hkv + g) * D, *vh = v + (n * Tk * Hkv + g) * D;
            for (int64_t i0 = 0; i0 < Tq; i0 += DVL_ATTN_TILE) {
                const int64_t rows = Tq - i0 < DVL_ATTN_TILE ? Tq - i0 : DVL_ATTN_TILE;
                const float *qt = q + ((n * Tq + i0) * Hq + h) * D;
                float *ot = out + ((n * Tq + i0) * Hq + h) * D;
                float *lt = lse ? lse + (n * Hq + h) * Tq + i0 : NULL;
                segment sg[2];
                int64_t ncol;
                int nseg = tile_segments(mask, i0, i0 + rows, Tk, sg, &ncol);
                if (nseg == 0) { /* no row of the tile sees a key */
                    for (int64_t r = 0; r < rows; r++) {
                        memset(ot + r * qs, 0, (size_t)D * sizeof *ot);
                        if (lt)
                            lt[r] = INFINITY;
                    }
                    continue;
                }
                scores(P, qt, qs, kh, ks, rows, D, sg, nseg, ncol, scale);
#pragma omp parallel for schedule(static) if (rows * ncol >= PAR_MIN_SCORES)
                for (int64_t r = 0; r < rows; r++) {
                    colrun cr[2];
                    int nr = row_colruns(mask, i0 + r, Tk, sg, nseg, cr);
                    float l = softmax_row(P + r * ncol, ncol, cr, nr, kv);
                    if (lt)
                        lt[r] = l;
                }
                /* O = P V, one segment after the other (beta 1 adds). */
                for (int s = 0; s < nseg; s++)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D,
                                (int)sg[s].len, 1.0f, P + sg[s].col, (int)ncol, vh + sg[s].k0 * ks,
                                (int)ks, s ? 1.0f : 0.0f, ot, (int)qs);
            }
        }
    }
}

void dvl_cpu_attention_bwd(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale)
{
    const int64_t group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    const bool need_ds = dq || dk;
    float *P = scratch;
    float *dS = scratch + dvl_cpu_attention_fwd_scratch(Tk);
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *kv = mask->key_valid ? mask->key_valid + n * Tk : NULL;
        for (int64_t h = 0; h < Hq; h++) {
            const int64_t g = h / group, koff = (n * Tk * Hkv + g) * D;
            const float *kh = k + koff, *vh = v + koff;
            for (int64_t i0 = 0; i0 < Tq; i0 += DVL_ATTN_TILE) {
                const int64_t rows = Tq - i0 < DVL_ATTN_TILE ? Tq - i0 : DVL_ATTN_TILE;
                const int64_t qoff = ((n * Tq + i0) * Hq + h) * D;
                const float *qt = q + qoff, *ot = out + qoff, *dot = dout + qoff;
                const float *lt = lse + (n * Hq + h) * Tq + i0;
                segment sg[2];
                int64_t ncol;
                int nseg = tile_segments(mask, i0, i0 + rows, Tk, sg, &ncol);
                if (nseg == 0) /* outputs were constant zeros: no gradient */
                    continue;
                scores(P, qt, qs, kh, ks, rows, D, sg, nseg, ncol, scale);
                if (need_ds) /* dP = dO V^T into the dS block */
                    for (int s = 0; s < nseg; s++)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows,
                                    (int)sg[s].len, (int)D, 1.0f, dot, (int)qs,
                                    vh + sg[s].k0 * ks, (int)ks, 0.0f, dS + sg[s].col, (int)ncol);
#pragma omp parallel for schedule(static) if (rows * ncol >= PAR_MIN_SCORES)
                for (int64_t r = 0; r < rows; r++) {
                    float *pr = P + r * ncol;
                    if (!(lt[r] < INFINITY)) { /* row saw no key: P = 0 */
                        memset(pr, 0, (size_t)ncol * sizeof *pr);
                    } else {
                        colrun cr[2];
                        int nr = row_colruns(mask, i0 + r, Tk, sg, nseg, cr);
                        exp_visible(pr, ncol, cr, nr, kv, lt[r]);
                    }
                    if (need_ds) {
                        /* D_i = sum_j P_ij dP_ij = dO_i . O_i (FlashAttention-2, eq. 4). */
                        double di = 0;
                        for (int64_t d = 0; d < D; d++)
                            di += (double)dot[r * qs + d] * (double)ot[r * qs + d];
                        float *ds = dS + r * ncol;
                        for (int64_t c = 0; c < ncol; c++)
                            ds[c] = pr[c] * (ds[c] - (float)di);
                    }
                }
                for (int s = 0; s < nseg; s++) {
                    const int64_t kof = sg[s].k0 * ks;
                    const int len = (int)sg[s].len;
                    if (dv) /* dV[seg] += P[:, seg]^T dO */
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, (int)D,
                                    (int)rows, 1.0f, P + sg[s].col, (int)ncol, dot, (int)qs, 1.0f,
                                    dv + koff + kof, (int)ks);
                    if (dq) /* dQ += scale dS[:, seg] K[seg] */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D,
                                    len, scale, dS + sg[s].col, (int)ncol, kh + kof, (int)ks, 1.0f,
                                    dq + qoff, (int)qs);
                    if (dk) /* dK[seg] += scale dS[:, seg]^T Q */
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, (int)D,
                                    (int)rows, scale, dS + sg[s].col, (int)ncol, qt, (int)qs, 1.0f,
                                    dk + koff + kof, (int)ks);
                }
            }
        }
    }
}
