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
 * softmax runs on OpenMP, each row by one thread. Handing the cores from
 * one thread pool to the other costs time (and a lot of it when both spin
 * while waiting), so tiles go in batches that share a scratch budget: all
 * their score sgemms, then one OpenMP region over all their rows, then all
 * their output sgemms. Tiles are visited in one fixed order (n, h, i0) and
 * every += into dQ, dK and dV is an sgemm at the serial level in that order,
 * so the result does not depend on the thread count. */
#include "ops/cpu/attention.h"
#include "ops/cpu/par.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Keys [k0, k0 + len) held in score columns [col, col + len). */
typedef struct segment {
    int64_t k0, len, col;
} segment;

/* Score columns [c0, c1) of one row that its mask spans allow, holding keys
 * j0, j0 + 1, ... */
typedef struct colrun {
    int64_t c0, c1, j0;
} colrun;

/* Query rows of one (sequence, head) pair with its key segments and its
 * score blocks in the scratch: S (scores, then probabilities) and, for
 * backward, dS (dP, then dS); each rows x ncol. */
typedef struct tile {
    int64_t n, h, i0, rows, ncol;
    segment sg[2];
    int nseg;
    float *S, *dS;
} tile;

/* A batch holds at most this many tiles and, when it has more than one,
 * at most BATCH_FLOATS floats of score blocks. */
#define MAX_BATCH_TILES 64
#define BATCH_FLOATS ((size_t)1 << 20)

/* Score-block floats (one block per tile) a batch may use: one full tile
 * always fits, and small problems take no more than all their tiles need. */
static size_t batch_floats(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq)
{
    const size_t tile = (size_t)DVL_ATTN_TILE * (size_t)(Tk > 0 ? Tk : 1);
    const size_t all = (size_t)(N * Hq * ((Tq + DVL_ATTN_TILE - 1) / DVL_ATTN_TILE)) * tile;
    size_t b = all < BATCH_FLOATS ? all : BATCH_FLOATS;
    return b > tile ? b : tile;
}

size_t dvl_cpu_attention_fwd_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq)
{
    return batch_floats(N, Tq, Tk, Hq);
}

size_t dvl_cpu_attention_bwd_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq)
{
    return 2 * batch_floats(N, Tq, Tk, Hq);
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

/* The next tiles in (n, h, i0) order, from flat tile index *next on, whose
 * nbuf score blocks each fit in `budget` floats of scratch (at least one
 * tile, at most MAX_BATCH_TILES); advances *next. */
static int plan_batch(tile *tl, int64_t *next, int64_t Tq, int64_t Tk, int64_t Hq,
                      int64_t ntiles, const dvl_mask *m, float *scratch, size_t budget, int nbuf)
{
    const int64_t per_head = (Tq + DVL_ATTN_TILE - 1) / DVL_ATTN_TILE;
    size_t used = 0;
    int cnt = 0;
    while (*next < ntiles && cnt < MAX_BATCH_TILES) {
        tile t;
        t.n = *next / (Hq * per_head);
        t.h = (*next / per_head) % Hq;
        t.i0 = (*next % per_head) * DVL_ATTN_TILE;
        t.rows = Tq - t.i0 < DVL_ATTN_TILE ? Tq - t.i0 : DVL_ATTN_TILE;
        t.nseg = tile_segments(m, t.i0, t.i0 + t.rows, Tk, t.sg, &t.ncol);
        const size_t block = (size_t)(t.rows * t.ncol);
        if (cnt > 0 && used + (size_t)nbuf * block > budget)
            break;
        t.S = scratch + used;
        t.dS = t.S + block;
        used += (size_t)nbuf * block;
        tl[cnt++] = t;
        (*next)++;
    }
    return cnt;
}

static int64_t batch_scores(const tile *tl, int nt)
{
    int64_t n = 0;
    for (int t = 0; t < nt; t++)
        n += tl[t].rows * tl[t].ncol;
    return n;
}

/* C[:, seg] = alpha * A B[seg]^T for each segment of the tile: A the tile's
 * rows (stride as), B key rows (stride bs), C rows ncol. Gives S = scale Q
 * K^T and dP = dO V^T. */
static void rows_times_keys(float *C, const tile *t, const float *A, int64_t as, const float *B,
                            int64_t bs, int64_t D, float alpha)
{
    for (int s = 0; s < t->nseg; s++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t->rows, (int)t->sg[s].len,
                    (int)D, alpha, A, (int)as, B + t->sg[s].k0 * bs, (int)bs, 0.0f,
                    C + t->sg[s].col, (int)t->ncol);
}

void dvl_cpu_attention_fwd(float *out, float *lse, float *scratch, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale)
{
    const int64_t group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    const int64_t ntiles = N * Hq * ((Tq + DVL_ATTN_TILE - 1) / DVL_ATTN_TILE);
    const size_t budget = dvl_cpu_attention_fwd_scratch(N, Tq, Tk, Hq);
    tile tl[MAX_BATCH_TILES];
    for (int64_t next = 0; next < ntiles;) {
        const int nt = plan_batch(tl, &next, Tq, Tk, Hq, ntiles, mask, scratch, budget, 1);
        for (int t = 0; t < nt; t++) { /* S = scale Q K^T */
            const int64_t kvo = (tl[t].n * Tk * Hkv + tl[t].h / group) * D;
            rows_times_keys(tl[t].S, &tl[t], q + ((tl[t].n * Tq + tl[t].i0) * Hq + tl[t].h) * D, qs,
                            k + kvo, ks, D, scale);
        }
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * batch_scores(tl, nt)))
        for (int64_t x = 0; x < nt * DVL_ATTN_TILE; x++) {
            const tile *t = &tl[x / DVL_ATTN_TILE];
            const int64_t r = x % DVL_ATTN_TILE, i = t->i0 + r;
            if (r >= t->rows)
                continue;
            float l = INFINITY;
            if (t->nseg == 0) { /* no row of the tile sees a key: zeros */
                memset(out + ((t->n * Tq + i) * Hq + t->h) * D, 0, (size_t)D * sizeof *out);
            } else {
                colrun cr[2];
                int nr = row_colruns(mask, i, Tk, t->sg, t->nseg, cr);
                const uint8_t *kv = mask->key_valid ? mask->key_valid + t->n * Tk : NULL;
                l = softmax_row(t->S + r * t->ncol, t->ncol, cr, nr, kv);
            }
            if (lse)
                lse[(t->n * Hq + t->h) * Tq + i] = l;
        }
        for (int t = 0; t < nt; t++) { /* O = P V, segment after segment */
            const int64_t kvo = (tl[t].n * Tk * Hkv + tl[t].h / group) * D;
            float *ot = out + ((tl[t].n * Tq + tl[t].i0) * Hq + tl[t].h) * D;
            for (int s = 0; s < tl[t].nseg; s++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)tl[t].rows, (int)D,
                            (int)tl[t].sg[s].len, 1.0f, tl[t].S + tl[t].sg[s].col,
                            (int)tl[t].ncol, v + kvo + tl[t].sg[s].k0 * ks, (int)ks,
                            s ? 1.0f : 0.0f, ot, (int)qs);
        }
    }
}

void dvl_cpu_attention_bwd(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, const dvl_mask *mask, float scale)
{
    const int64_t group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    const int64_t ntiles = N * Hq * ((Tq + DVL_ATTN_TILE - 1) / DVL_ATTN_TILE);
    const size_t budget = dvl_cpu_attention_bwd_scratch(N, Tq, Tk, Hq);
    const bool need_ds = dq || dk;
    tile tl[MAX_BATCH_TILES];
    for (int64_t next = 0; next < ntiles;) {
        const int nt = plan_batch(tl, &next, Tq, Tk, Hq, ntiles, mask, scratch, budget, 2);
        for (int t = 0; t < nt; t++) { /* S = scale Q K^T, dP = dO V^T */
            const int64_t kvo = (tl[t].n * Tk * Hkv + tl[t].h / group) * D;
            const int64_t qo = ((tl[t].n * Tq + tl[t].i0) * Hq + tl[t].h) * D;
            rows_times_keys(tl[t].S, &tl[t], q + qo, qs, k + kvo, ks, D, scale);
            if (need_ds)
                rows_times_keys(tl[t].dS, &tl[t], dout + qo, qs, v + kvo, ks, D, 1.0f);
        }
#pragma omp parallel for schedule(static) if (dvl_par(DVL_WORK_EXP * batch_scores(tl, nt)))
        for (int64_t x = 0; x < nt * DVL_ATTN_TILE; x++) {
            const tile *t = &tl[x / DVL_ATTN_TILE];
            const int64_t r = x % DVL_ATTN_TILE, i = t->i0 + r;
            if (r >= t->rows || t->nseg == 0) /* no keys: zero output, no gradient */
                continue;
            float *pr = t->S + r * t->ncol;
            const float l = lse[(t->n * Hq + t->h) * Tq + i];
            if (!(l < INFINITY)) { /* the row saw no key: P = 0 */
                memset(pr, 0, (size_t)t->ncol * sizeof *pr);
            } else { /* P = exp(S - lse) on the visible keys */
                colrun cr[2];
                int nr = row_colruns(mask, i, Tk, t->sg, t->nseg, cr);
                const uint8_t *kv = mask->key_valid ? mask->key_valid + t->n * Tk : NULL;
                exp_visible(pr, t->ncol, cr, nr, kv, l);
            }
            if (need_ds) {
                /* D_i = sum_j P_ij dP_ij = dO_i . O_i (FlashAttention-2, sec. 3.1). */
                const int64_t o = ((t->n * Tq + i) * Hq + t->h) * D;
                double di = 0;
                for (int64_t d = 0; d < D; d++)
                    di += (double)dout[o + d] * (double)out[o + d];
                float *ds = t->dS + r * t->ncol;
                for (int64_t c = 0; c < t->ncol; c++)
                    ds[c] = pr[c] * (ds[c] - (float)di);
            }
        }
        for (int t = 0; t < nt; t++) {
            const tile *b = &tl[t];
            const int64_t kvo = (b->n * Tk * Hkv + b->h / group) * D;
            const int64_t qo = ((b->n * Tq + b->i0) * Hq + b->h) * D;
            for (int s = 0; s < b->nseg; s++) {
                const int64_t ko = kvo + b->sg[s].k0 * ks;
                const int len = (int)b->sg[s].len, rows = (int)b->rows, ncol = (int)b->ncol;
                const float *P = b->S + b->sg[s].col, *dS = b->dS + b->sg[s].col;
                if (dv) /* dV[seg] += P[:, seg]^T dO */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, (int)D, rows, 1.0f,
                                P, ncol, dout + qo, (int)qs, 1.0f, dv + ko, (int)ks);
                if (dq) /* dQ += scale dS[:, seg] K[seg] */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, (int)D, len,
                                scale, dS, ncol, k + ko, (int)ks, 1.0f, dq + qo, (int)qs);
                if (dk) /* dK[seg] += scale dS[:, seg]^T Q */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, (int)D, rows, scale,
                                dS, ncol, q + qo, (int)qs, 1.0f, dk + ko, (int)ks);
            }
        }
    }
}
