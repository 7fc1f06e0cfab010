#include "diffusion/decode.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "ops/cpu/par.h"

int dvl_transfer_schedule(int n_masked, int steps, int *out_counts)
{
    if (steps < 1 || n_masked < 0)
        return DVL_EINVAL;
    int base = n_masked / steps, extra = n_masked % steps;
    for (int i = 0; i < steps; i++)
        out_counts[i] = base + (i < extra);
    return DVL_OK;
}

void dvl_sampler_default(dvl_sampler *s)
{
    s->temperature = 0.0f;
    s->top_k = 0;
    s->top_p = 1.0f;
    s->remask = DVL_REMASK_STATIC;
    s->tau = 0.85f;
}

/* A candidate token: tempered logit and id. */
typedef struct cand {
    float z;
    int32_t id;
} cand;

/* Scratch: V probabilities (first, so 8-byte aligned), V candidates, V kept
 * ids. */
size_t dvl_sample_scratch_bytes(int64_t V)
{
    return (size_t)V * (sizeof(cand) + sizeof(int32_t) + sizeof(double));
}

/* Descending z, ascending id on ties: a total order, so the result does not
 * depend on qsort's algorithm. */
static int cand_cmp(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    if (a->z != b->z)
        return a->z > b->z ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Min-heap of floats (the k largest seen so far, smallest on top). */
static void heap_sift_down(float *h, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l] < h[m])
            m = l;
        if (r < n && h[r] < h[m])
            m = r;
        if (m == i)
            return;
        float tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

/* The k-th largest of z[0..V), k <= V, using heap[k] as workspace. */
static float kth_largest(const cand *c, int64_t V, int64_t k, float *heap)
{
    for (int64_t i = 0; i < k; i++)
        heap[i] = c[i].z;
    for (int64_t i = k / 2 - 1; i >= 0; i--)
        heap_sift_down(heap, k, i);
    for (int64_t i = k; i < V; i++)
        if (c[i].z > heap[0]) {
            heap[0] = c[i].z;
            heap_sift_down(heap, k, 0);
        }
    return heap[0];
}

int64_t dvl_sample_dist(const float *logits, int64_t V, const dvl_sampler *s, void *scratch,
                        const int32_t **idx, const double **prob)
{
    double *p = scratch;
    cand *c = (cand *)(p + V);
    int32_t *ids = (int32_t *)(c + V);
    /* Tempered logits in f32, as torch's logits / temperature. */
    const float T = s->temperature > 0.0f ? s->temperature : 1.0f;
    for (int64_t i = 0; i < V; i++) {
        c[i].z = logits[i] / T;
        c[i].id = (int32_t)i;
    }
    int64_t m = V;
    const bool use_k = s->top_k > 0 && s->top_k < V;
    const bool use_p = s->top_p < 1.0f;
    if (use_k) {
        /* Keep z >= k-th largest: _top_k_logits sets only `logits < kth` to
         * -inf, so ties with the k-th value survive. The heap reuses the
         * probability array as float workspace (it is written later). */
        float kth = kth_largest(c, V, s->top_k, (float *)p);
        m = 0;
        for (int64_t i = 0; i < V; i++)
            if (c[i].z >= kth)
                c[m++] = c[i];
    }
    if (use_k || use_p)
        qsort(c, (size_t)m, sizeof *c, cand_cmp);
    /* Softmax over the kept candidates, in double. */
    float zmax = c[0].z;
    for (int64_t i = 1; i < m; i++)
        zmax = c[i].z > zmax ? c[i].z : zmax;
    double sum = 0.0;
    for (int64_t i = 0; i < m; i++) {
        p[i] = exp((double)c[i].z - (double)zmax);
        sum += p[i];
    }
    if (use_p) {
        /* Drop token j when the mass of tokens before it exceeds top_p
         * (_top_p_logits: sorted_mask = cumsum > p, shifted right by one,
         * first token always kept). */
        double cum = 0.0;
        int64_t keep = m;
        for (int64_t j = 0; j < m; j++) {
            if (j > 0 && cum > (double)s->top_p * sum) {
                keep = j;
                break;
            }
            cum += p[j];
        }
        m = keep;
        sum = 0.0;
        for (int64_t i = 0; i < m; i++)
            sum += p[i];
    }
    for (int64_t i = 0; i < m; i++) {
        p[i] /= sum;
        ids[i] = c[i].id;
    }
    *idx = ids;
    *prob = p;
    return m;
}

/* Softmax probability of token tok under the raw logits, in double. */
static double softmax_at(const float *logits, int64_t V, int32_t tok)
{
    float mx = logits[0];
    for (int64_t i = 1; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++)
        sum += exp((double)logits[i] - (double)mx);
    return exp((double)logits[tok] - (double)mx) / sum;
}

int32_t dvl_sample_token(const float *logits, int64_t V, const dvl_sampler *s, dvl_rng *rng,
                         void *scratch, float *conf)
{
    int32_t tok = 0;
    if (s->temperature <= 0.0f) {
        /* First maximum, as torch.argmax. */
        for (int64_t i = 1; i < V; i++)
            if (logits[i] > logits[tok])
                tok = (int32_t)i;
    } else {
        const int32_t *ids;
        const double *p;
        int64_t m = dvl_sample_dist(logits, V, s, scratch, &ids, &p);
        /* Inverse CDF; the last kept token takes any rounding remainder. */
        double u = dvl_rng_uniform_f64(rng), cum = 0.0;
        tok = ids[m - 1];
        for (int64_t j = 0; j < m - 1; j++) {
            cum += p[j];
            if (u < cum) {
                tok = ids[j];
                break;
            }
        }
    }
    if (conf)
        *conf = (float)softmax_at(logits, V, tok);
    return tok;
}

/* Position a is preferred over b: higher confidence, then lower position. */
static bool better(const float *conf, int a, int b)
{
    return conf[a] > conf[b] || (conf[a] == conf[b] && a < b);
}

int dvl_select_commits(const float *conf, const uint8_t *masked, int n, int k, dvl_remask mode,
                       float tau, uint8_t *commit)
{
    int n_masked = 0, n_high = 0;
    for (int j = 0; j < n; j++) {
        commit[j] = 0;
        n_masked += masked[j] != 0;
        n_high += masked[j] && conf[j] > tau;
    }
    if (mode == DVL_REMASK_DYNAMIC && n_high >= k) {
        for (int j = 0; j < n; j++)
            commit[j] = masked[j] && conf[j] > tau;
        return n_high;
    }
    int take = k < n_masked ? k : n_masked;
    /* Top `take` by repeated selection: O(n * take) on a block, no scratch. */
    for (int r = 0; r < take; r++) {
        int best = -1;
        for (int j = 0; j < n; j++)
            if (masked[j] && !commit[j] && (best < 0 || better(conf, j, best)))
                best = j;
        commit[best] = 1;
    }
    return take < 0 ? 0 : take;
}

dvl_decoder *dvl_decoder_new(const dvl_sampler *s, int64_t V, int cap_n, dvl_err *err)
{
    if (V < 1 || cap_n < 1) {
        dvl_errf(err, DVL_EINVAL, "decode: vocabulary %lld and block capacity %d must be >= 1",
                 (long long)V, cap_n);
        return NULL;
    }
    dvl_decoder *d = calloc(1, sizeof *d);
    if (d) {
        d->s = *s;
        d->V = V;
        d->cap_n = cap_n;
        d->conf = malloc((size_t)cap_n * sizeof *d->conf);
        d->proposal = malloc((size_t)cap_n * sizeof *d->proposal);
        d->masked = malloc((size_t)cap_n);
        d->commit = malloc((size_t)cap_n);
        d->scratch = malloc(dvl_sample_scratch_bytes(V));
    }
    if (!d || !d->conf || !d->proposal || !d->masked || !d->commit || !d->scratch) {
        dvl_decoder_free(d);
        dvl_errf(err, DVL_ENOMEM, "decode: out of memory for vocabulary %lld", (long long)V);
        return NULL;
    }
    return d;
}

void dvl_decoder_free(dvl_decoder *d)
{
    if (!d)
        return;
    free(d->conf);
    free(d->proposal);
    free(d->masked);
    free(d->commit);
    free(d->scratch);
    free(d);
}

int dvl_decode_step(dvl_decoder *d, int32_t *x, int n, int32_t mask_id, const float *logits,
                    int k, dvl_rng *rng)
{
    if (n > d->cap_n || n < 0)
        return -1;
    /* Sampled tokens in position order (the rng's draws); greedy ones,
     * and every confidence, a position each on a team: a confidence is a
     * softmax over the vocabulary in double (~1 ms at V = 151936, the
     * decoding's host time on a GPU), each independent of the others, so
     * the same bits on any number of threads. */
    const bool greedy = d->s.temperature <= 0.0f;
    for (int j = 0; j < n; j++) {
        d->masked[j] = x[j] == mask_id;
        d->conf[j] = 0.0f;
        if (d->masked[j] && !greedy)
            d->proposal[j] = dvl_sample_token(logits + (int64_t)j * d->V, d->V, &d->s, rng,
                                              d->scratch, NULL);
    }
#pragma omp parallel for schedule(static) if (dvl_par((int64_t)n * d->V * DVL_WORK_EXP))
    for (int j = 0; j < n; j++) {
        if (!d->masked[j])
            continue;
        const float *z = logits + (int64_t)j * d->V;
        if (greedy) /* touches neither rng nor scratch */
            d->proposal[j] = dvl_sample_token(z, d->V, &d->s, NULL, NULL, NULL);
        d->conf[j] = (float)softmax_at(z, d->V, d->proposal[j]);
    }
    int c = dvl_select_commits(d->conf, d->masked, n, k, d->s.remask, d->s.tau, d->commit);
    for (int j = 0; j < n; j++)
        if (d->commit[j])
            x[j] = d->proposal[j];
    return c;
}
