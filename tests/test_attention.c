/* Attention and its masks: dvl_mask_allows against hand-checked tables,
 * dvl_attention forward and backward against a dense double-precision
 * reference whose mask rule is written again here from the spec (not
 * through dvl_mask_allows), finite differences, KV-cache consistency,
 * padding, frozen inputs, thread-count determinism and error messages. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ------------------------------------------------------------ reference */

/* The rules of ops.h, pair by pair, as the DiffusionVL / BD3-LM training
 * mask states them. Independent of src/ops/mask.c on purpose. */
static bool ref_allows(dvl_mask_kind kind, int64_t B, int64_t L, int64_t qoff, int64_t i,
                       int64_t j)
{
    switch (kind) {
    case DVL_MASK_BIDIR:
        return true;
    case DVL_MASK_CAUSAL:
        return j <= qoff + i;
    case DVL_MASK_BLOCK_CAUSAL:
        return j / B <= (qoff + i) / B;
    case DVL_MASK_BLOCK_DIFF: {
        bool q_noisy = i < L, k_noisy = j < L;
        int64_t bq = (i % L) / B, bk = (j % L) / B;
        if (q_noisy && k_noisy)
            return bk == bq;
        if (q_noisy && !k_noisy)
            return bk < bq;
        if (!q_noisy && !k_noisy)
            return bk <= bq;
        return false; /* clean q -> noisy k */
    }
    }
    return false;
}

typedef struct acase {
    const char *what;
    int64_t N, Tq, Tk, Hq, Hkv, D;
    dvl_mask_kind kind;
    int B;
    int64_t L, qoff;
    bool pad;
} acase;

/* Dense attention in double: out, and the analytic gradients for the seed
 * dO (any of dq/dk/dv may be NULL). Layouts as the op's. */
static void ref_attention(const acase *c, const float *q, const float *k, const float *v,
                          const uint8_t *kvalid, float scale, const float *dO, double *out,
                          double *dq, double *dk, double *dv)
{
    const int64_t N = c->N, Tq = c->Tq, Tk = c->Tk, Hq = c->Hq, Hkv = c->Hkv, D = c->D;
    memset(out, 0, sizeof(double) * (size_t)(N * Tq * Hq * D));
    if (dq)
        memset(dq, 0, sizeof(double) * (size_t)(N * Tq * Hq * D));
    if (dk)
        memset(dk, 0, sizeof(double) * (size_t)(N * Tk * Hkv * D));
    if (dv)
        memset(dv, 0, sizeof(double) * (size_t)(N * Tk * Hkv * D));
    double *P = malloc(sizeof(double) * (size_t)(Tk ? Tk : 1));
    double *dP = malloc(sizeof(double) * (size_t)(Tk ? Tk : 1));
    bool *vis = malloc(sizeof(bool) * (size_t)(Tk ? Tk : 1));
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t g = h / (Hq / Hkv);
            for (int64_t i = 0; i < Tq; i++) {
                const float *qi = q + ((n * Tq + i) * Hq + h) * D;
                double mx = -INFINITY;
                int cnt = 0;
                for (int64_t j = 0; j < Tk; j++) {
                    vis[j] = ref_allows(c->kind, c->B, c->L, c->qoff, i, j) &&
                             (!kvalid || kvalid[n * Tk + j]);
                    if (!vis[j])
                        continue;
                    const float *kj = k + ((n * Tk + j) * Hkv + g) * D;
                    double s = 0;
                    for (int64_t d = 0; d < D; d++)
                        s += (double)qi[d] * kj[d];
                    P[j] = s * scale;
                    mx = P[j] > mx ? P[j] : mx;
                    cnt++;
                }
                if (!cnt)
                    continue; /* zeros out, zero gradient */
                double sum = 0;
                for (int64_t j = 0; j < Tk; j++)
                    if (vis[j])
                        sum += (P[j] = exp(P[j] - mx));
                double *oi = out + ((n * Tq + i) * Hq + h) * D;
                const float *doi = dO + ((n * Tq + i) * Hq + h) * D;
                double di = 0;
                for (int64_t j = 0; j < Tk; j++) {
                    if (!vis[j])
                        continue;
                    P[j] /= sum;
                    const float *vj = v + ((n * Tk + j) * Hkv + g) * D;
                    dP[j] = 0;
                    for (int64_t d = 0; d < D; d++) {
                        oi[d] += P[j] * vj[d];
                        dP[j] += (double)doi[d] * vj[d];
                    }
                    di += P[j] * dP[j];
                }
                for (int64_t j = 0; j < Tk; j++) {
                    if (!vis[j])
                        continue;
                    double ds = P[j] * (dP[j] - di);
                    const float *kj = k + ((n * Tk + j) * Hkv + g) * D;
                    for (int64_t d = 0; d < D; d++) {
                        if (dq)
                            dq[((n * Tq + i) * Hq + h) * D + d] += scale * ds * kj[d];
                        if (dk)
                            dk[((n * Tk + j) * Hkv + g) * D + d] += scale * ds * qi[d];
                        if (dv)
                            dv[((n * Tk + j) * Hkv + g) * D + d] += P[j] * doi[d];
                    }
                }
            }
        }
    free(P);
    free(dP);
    free(vis);
}

/* ------------------------------------------------------------- helpers */

static dvl_tensor *t4(dvl_ctx *ctx, int64_t a, int64_t b, int64_t c, int64_t d, uint64_t seed,
                      const char *name)
{
    int64_t s[4] = {a, b, c, d};
    dvl_tensor *t = dvl_new(ctx, DVL_F32, 4, s);
    ck_assert_ptr_nonnull(t);
    tu_randn(t, seed, 1.0f);
    t->name = name;
    return t;
}

/* Key padding: about a quarter of the keys hidden, and key 0 of sequence 1
 * always, so a causal query 0 there sees nothing. */
static uint8_t *make_padding(int64_t N, int64_t Tk, uint64_t seed)
{
    uint8_t *kv = malloc((size_t)(N * Tk > 0 ? N * Tk : 1));
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    for (int64_t i = 0; i < N * Tk; i++)
        kv[i] = (dvl_rng_u64(&r) % 4) != 0;
    if (N > 1 && Tk > 0)
        kv[Tk] = 0;
    return kv;
}

static dvl_mask mask_of(const acase *c, const uint8_t *kv)
{
    dvl_mask m = {.kind = c->kind, .block_size = c->B, .half = c->L, .q_offset = c->qoff,
                  .key_valid = kv};
    return m;
}

/* max |a - r| / max(max |r|, floor) */
static double rel_err(const float *a, const double *r, int64_t n, double floor)
{
    double m = 0, s = floor;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - r[i]);
        if (isnan(d))
            return INFINITY;
        m = d > m ? d : m;
        s = fabs(r[i]) > s ? fabs(r[i]) : s;
    }
    return m / s;
}

static double abs_err(const float *a, const double *r, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - r[i]);
        if (isnan(d))
            return INFINITY;
        m = d > m ? d : m;
    }
    return m;
}

/* ------------------------------------------------- forward and backward */

#define NO_PAD false
#define PAD true
static const acase cases[] = {
    /* what, N, Tq, Tk, Hq, Hkv, D, kind, B, L, qoff, pad */
    {"bidir gqa", 2, 13, 11, 4, 2, 6, DVL_MASK_BIDIR, 0, 0, 0, NO_PAD},
    {"bidir gqa pad", 2, 13, 11, 4, 2, 6, DVL_MASK_BIDIR, 0, 0, 0, PAD},
    {"bidir mha", 2, 13, 13, 2, 2, 6, DVL_MASK_BIDIR, 0, 0, 0, NO_PAD},
    {"bidir mha pad", 2, 13, 13, 2, 2, 6, DVL_MASK_BIDIR, 0, 0, 0, PAD},
    {"causal gqa", 2, 13, 13, 4, 2, 6, DVL_MASK_CAUSAL, 0, 0, 0, NO_PAD},
    {"causal gqa pad", 2, 13, 13, 4, 2, 6, DVL_MASK_CAUSAL, 0, 0, 0, PAD},
    {"causal mha", 2, 13, 13, 2, 2, 6, DVL_MASK_CAUSAL, 0, 0, 0, NO_PAD},
    {"causal mha pad", 2, 13, 13, 2, 2, 6, DVL_MASK_CAUSAL, 0, 0, 0, PAD},
    {"causal q_offset", 2, 5, 13, 4, 2, 6, DVL_MASK_CAUSAL, 0, 0, 8, PAD},
    {"block_diff gqa", 2, 14, 14, 4, 2, 6, DVL_MASK_BLOCK_DIFF, 3, 7, 0, NO_PAD},
    {"block_diff gqa pad", 2, 14, 14, 4, 2, 6, DVL_MASK_BLOCK_DIFF, 3, 7, 0, PAD},
    {"block_diff mha", 2, 26, 26, 2, 2, 6, DVL_MASK_BLOCK_DIFF, 4, 13, 0, NO_PAD},
    {"block_diff mha pad", 2, 26, 26, 2, 2, 6, DVL_MASK_BLOCK_DIFF, 4, 13, 0, PAD},
    {"block_causal gqa", 2, 13, 13, 4, 2, 6, DVL_MASK_BLOCK_CAUSAL, 4, 0, 0, NO_PAD},
    {"block_causal gqa pad", 2, 13, 13, 4, 2, 6, DVL_MASK_BLOCK_CAUSAL, 4, 0, 0, PAD},
    {"block_causal mha", 2, 13, 13, 2, 2, 6, DVL_MASK_BLOCK_CAUSAL, 3, 0, 0, NO_PAD},
    {"block_causal mha pad", 2, 13, 13, 2, 2, 6, DVL_MASK_BLOCK_CAUSAL, 3, 0, 0, PAD},
    {"block_causal q_offset", 2, 4, 13, 4, 2, 6, DVL_MASK_BLOCK_CAUSAL, 4, 0, 9, PAD},
    /* Several query tiles (DVL_ATTN_TILE 64), tiles that mix x_t and x_0
     * rows, blocks that straddle tile edges, and D = 1. */
    {"bidir tiles", 1, 150, 97, 2, 1, 5, DVL_MASK_BIDIR, 0, 0, 0, PAD},
    {"causal tiles", 2, 150, 150, 2, 1, 5, DVL_MASK_CAUSAL, 0, 0, 0, PAD},
    {"causal tiles q_offset", 1, 70, 200, 3, 1, 5, DVL_MASK_CAUSAL, 0, 0, 130, NO_PAD},
    {"block_diff tiles", 2, 150, 150, 2, 1, 5, DVL_MASK_BLOCK_DIFF, 8, 75, 0, PAD},
    {"block_diff tiles B=24", 1, 150, 150, 2, 2, 5, DVL_MASK_BLOCK_DIFF, 24, 75, 0, NO_PAD},
    {"block_diff B > L", 1, 10, 10, 2, 1, 3, DVL_MASK_BLOCK_DIFF, 7, 5, 0, NO_PAD},
    {"block_causal tiles", 2, 150, 150, 2, 1, 5, DVL_MASK_BLOCK_CAUSAL, 16, 0, 0, PAD},
    {"block_causal d1", 1, 9, 9, 2, 2, 1, DVL_MASK_BLOCK_CAUSAL, 2, 0, 0, NO_PAD},
    /* The kernels work in batches of tiles: more tiles than one batch holds
     * (66 > 64), and score blocks larger than one batch's scratch budget
     * (3 tiles of 64 x 4100 per batch). */
    {"many tiles", 1, 70, 12, 33, 3, 2, DVL_MASK_BLOCK_CAUSAL, 5, 0, 0, PAD},
    {"long keys", 1, 130, 4100, 2, 1, 3, DVL_MASK_CAUSAL, 0, 0, 3970, PAD},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* Forward within 5e-6 absolute of the double reference (outputs are O(1):
 * convex combinations of N(0,1) values; seen <= 6e-7); backward within 1e-5
 * of each gradient's largest reference entry (seen <= 6e-7). */
START_TEST(matches_dense_reference)
{
    const acase *c = &cases[_i];
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *q = t4(ctx, c->N, c->Tq, c->Hq, c->D, 100 + (uint64_t)_i, "q");
    dvl_tensor *k = t4(ctx, c->N, c->Tk, c->Hkv, c->D, 200 + (uint64_t)_i, "k");
    dvl_tensor *v = t4(ctx, c->N, c->Tk, c->Hkv, c->D, 300 + (uint64_t)_i, "v");
    q->requires_grad = k->requires_grad = v->requires_grad = true;
    uint8_t *kv = c->pad ? make_padding(c->N, c->Tk, 400 + (uint64_t)_i) : NULL;
    dvl_mask m = mask_of(c, kv);
    float scale = 1.0f / sqrtf((float)c->D);
    dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, scale);
    ck_assert_msg(o != NULL, "%s: %s", c->what, dvl_ctx_err(ctx)->msg);
    int64_t nq = dvl_numel(q), nk = dvl_numel(k);
    float *seed = malloc(sizeof(float) * (size_t)nq);
    dvl_rng r;
    dvl_rng_seed(&r, 500 + (uint64_t)_i);
    dvl_rng_fill_normal(&r, seed, nq, 1.0f);
    ck_assert_int_eq(dvl_backward_seed(ctx, o, seed), 0);

    double *ro = malloc(sizeof(double) * (size_t)nq), *rdq = malloc(sizeof(double) * (size_t)nq);
    double *rdk = malloc(sizeof(double) * (size_t)nk), *rdv = malloc(sizeof(double) * (size_t)nk);
    ref_attention(c, dvl_f32(q), dvl_f32(k), dvl_f32(v), kv, scale, seed, ro, rdq, rdk, rdv);
    double eo = abs_err(dvl_f32(o), ro, nq);
    double eq = rel_err(q->grad, rdq, nq, 1e-3), ek = rel_err(k->grad, rdk, nk, 1e-3),
           ev = rel_err(v->grad, rdv, nk, 1e-3);
    ck_assert_msg(eo <= 5e-6, "%s: out off by %g", c->what, eo);
    ck_assert_msg(eq <= 1e-5 && ek <= 1e-5 && ev <= 1e-5, "%s: dq %g dk %g dv %g", c->what, eq,
                  ek, ev);
    free(ro);
    free(rdq);
    free(rdk);
    free(rdv);
    free(seed);
    free(kv);
    dvl_ctx_free(ctx);
}
END_TEST

/* --------------------------------------------------- finite differences */

typedef struct gc_user {
    dvl_mask mask;
    float scale;
} gc_user;

static dvl_tensor *gc_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    gc_user *u = user;
    return dvl_attention(ctx, dvl_params_find(p, "q"), dvl_params_find(p, "k"),
                         dvl_params_find(p, "v"), &u->mask, u->scale);
}

static const acase gc_cases[] = {
    {"bidir", 2, 7, 9, 4, 2, 4, DVL_MASK_BIDIR, 0, 0, 0, PAD},
    {"causal", 2, 9, 9, 4, 2, 4, DVL_MASK_CAUSAL, 0, 0, 0, PAD},
    {"block_diff", 2, 10, 10, 4, 2, 4, DVL_MASK_BLOCK_DIFF, 2, 5, 0, PAD},
    {"block_causal", 2, 4, 9, 4, 2, 4, DVL_MASK_BLOCK_CAUSAL, 3, 0, 5, PAD},
    {"block_diff nopad", 1, 14, 14, 2, 2, 3, DVL_MASK_BLOCK_DIFF, 3, 7, 0, NO_PAD},
};

/* Central differences with eps 1e-2 on every element of q, k and v; the
 * O(eps^2) truncation and the f32 rounding of the projected sum stay below
 * 2e-4 of the gradient's scale (seen <= 3e-5; smaller eps is worse, the
 * rounding term grows as 1/eps). */
START_TEST(gradcheck_masks)
{
    const acase *c = &gc_cases[_i];
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t sq[4] = {c->N, c->Tq, c->Hq, c->D}, sk[4] = {c->N, c->Tk, c->Hkv, c->D};
    dvl_tensor *q = dvl_params_add(p, "q", 4, sq, true, &err);
    dvl_tensor *k = dvl_params_add(p, "k", 4, sk, true, &err);
    dvl_tensor *v = dvl_params_add(p, "v", 4, sk, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(q, 11 + (uint64_t)_i, 1.0f);
    tu_randn(k, 22 + (uint64_t)_i, 1.0f);
    tu_randn(v, 33 + (uint64_t)_i, 1.0f);
    uint8_t *kv = c->pad ? make_padding(c->N, c->Tk, 44 + (uint64_t)_i) : NULL;
    gc_user u = {mask_of(c, kv), 1.0f / sqrtf((float)c->D)};
    TU_GRADCHECK(gc_fn, p, &u, 1e-2f, 0, 2e-4);
    free(kv);
    dvl_params_free(p);
}
END_TEST

/* ------------------------------------------------------ hand-checked masks */

static void check_table(const dvl_mask *m, int64_t Tq, int64_t Tk, const char *const *rows,
                        const char *what)
{
    for (int64_t i = 0; i < Tq; i++)
        for (int64_t j = 0; j < Tk; j++)
            ck_assert_msg(dvl_mask_allows(m, i, j) == (rows[i][j] == '1'),
                          "%s: (%lld, %lld) should be %s", what, (long long)i, (long long)j,
                          rows[i][j] == '1' ? "allowed" : "denied");
}

/* The same table through dvl_attention: with q = k = 0 every visible key
 * gets the same weight, and v = identity rows (D = Tk) makes out[i] the
 * visibility row divided by its count. */
static void check_table_attention(const dvl_mask *m, int64_t Tq, int64_t Tk,
                                  const char *const *rows, const char *what)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t sq[4] = {1, Tq, 1, Tk}, sk[4] = {1, Tk, 1, Tk};
    dvl_tensor *q = dvl_zeros(ctx, DVL_F32, 4, sq), *k = dvl_zeros(ctx, DVL_F32, 4, sk);
    dvl_tensor *v = dvl_zeros(ctx, DVL_F32, 4, sk);
    for (int64_t j = 0; j < Tk; j++)
        dvl_f32(v)[j * Tk + j] = 1.0f;
    dvl_tensor *o = dvl_attention(ctx, q, k, v, m, 1.0f);
    ck_assert_msg(o != NULL, "%s: %s", what, dvl_ctx_err(ctx)->msg);
    for (int64_t i = 0; i < Tq; i++) {
        int cnt = 0;
        for (int64_t j = 0; j < Tk; j++)
            cnt += rows[i][j] == '1';
        for (int64_t j = 0; j < Tk; j++) {
            float want = rows[i][j] == '1' ? 1.0f / (float)cnt : 0.0f;
            ck_assert_msg(fabsf(dvl_f32(o)[i * Tk + j] - want) < 1e-6f,
                          "%s: attention row %lld key %lld is %g, want %g", what, (long long)i,
                          (long long)j, (double)dvl_f32(o)[i * Tk + j], (double)want);
        }
    }
    dvl_ctx_free(ctx);
}

START_TEST(block_diff_table)
{
    /* L = 6, B = 2: x_t = rows 0-5 (blocks {0,1} {2,3} {4,5}), x_0 = rows
     * 6-11 (blocks {6,7} {8,9} {10,11}). A noisy query sees its own x_t
     * block and the x_0 blocks before it; a clean query sees x_0 up to the
     * end of its block and never x_t. */
    static const char *const t6[12] = {
        "11..........", "11..........", /* x_t block 0: itself only   */
        "..11..11....", "..11..11....", /* x_t block 1: + x_0 block 0 */
        "....111111..", "....111111..", /* x_t block 2: + x_0 0..1    */
        "......11....", "......11....", /* x_0 block 0                */
        "......1111..", "......1111..", /* x_0 blocks 0..1            */
        "......111111", "......111111", /* x_0 blocks 0..2            */
    };
    dvl_mask m = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 2, .half = 6};
    check_table(&m, 12, 12, t6, "block_diff L=6 B=2");
    check_table_attention(&m, 12, 12, t6, "block_diff L=6 B=2");
    /* Spot checks read straight off the rule. */
    ck_assert(dvl_mask_allows(&m, 1, 0));   /* noisy b0 -> noisy b0 */
    ck_assert(!dvl_mask_allows(&m, 1, 2));  /* noisy b0 -> noisy b1 */
    ck_assert(!dvl_mask_allows(&m, 2, 1));  /* noisy b1 -> noisy b0 */
    ck_assert(!dvl_mask_allows(&m, 0, 6));  /* noisy b0 -> clean b0: not < */
    ck_assert(dvl_mask_allows(&m, 3, 7));   /* noisy b1 -> clean b0 */
    ck_assert(!dvl_mask_allows(&m, 3, 8));  /* noisy b1 -> clean b1 */
    ck_assert(dvl_mask_allows(&m, 5, 9));   /* noisy b2 -> clean b1 */
    ck_assert(!dvl_mask_allows(&m, 6, 0));  /* clean -> noisy never */
    ck_assert(!dvl_mask_allows(&m, 11, 5)); /* clean -> noisy never */
    ck_assert(dvl_mask_allows(&m, 8, 7));   /* clean b1 -> clean b0 */
    ck_assert(!dvl_mask_allows(&m, 7, 8));  /* clean b0 -> clean b1 */
    ck_assert(dvl_mask_allows(&m, 10, 11)); /* clean b2 -> clean b2 */
    ck_assert(!dvl_mask_allows(&m, 12, 0)); /* outside [0, 2L) */
    ck_assert(!dvl_mask_allows(&m, 0, 12));

    /* L = 5, B = 2: the last block of each half has one row. */
    static const char *const t5[10] = {
        "11........", "11........", "..11.11...", "..11.11...", "....11111.",
        ".....11...", ".....11...", ".....1111.", ".....1111.", ".....11111",
    };
    m.half = 5;
    check_table(&m, 10, 10, t5, "block_diff L=5 B=2");
    check_table_attention(&m, 10, 10, t5, "block_diff L=5 B=2");
}
END_TEST

START_TEST(causal_tables)
{
    /* Causal, 3 queries at absolute positions 3..5 over 6 keys. */
    static const char *const c3[3] = {"1111..", "11111.", "111111"};
    dvl_mask m = {.kind = DVL_MASK_CAUSAL, .q_offset = 3};
    check_table(&m, 3, 6, c3, "causal q_offset 3");
    check_table_attention(&m, 3, 6, c3, "causal q_offset 3");
    /* Block-causal B = 2 from position 0. */
    static const char *const b2[6] = {"11....", "11....", "1111..", "1111..", "111111", "111111"};
    dvl_mask mb = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 2};
    check_table(&mb, 6, 6, b2, "block_causal B=2");
    check_table_attention(&mb, 6, 6, b2, "block_causal B=2");
    /* Block-causal B = 4, queries at positions 2..4: block 0 sees keys 0-3,
     * block 1 keys 0-7 (only 0-5 exist). */
    static const char *const b4[3] = {"1111..", "1111..", "111111"};
    mb.block_size = 4;
    mb.q_offset = 2;
    check_table(&mb, 3, 6, b4, "block_causal B=4 q_offset 2");
    check_table_attention(&mb, 3, 6, b4, "block_causal B=4 q_offset 2");
    dvl_mask bi = {.kind = DVL_MASK_BIDIR, .q_offset = 7};
    ck_assert(dvl_mask_allows(&bi, 0, 100));
}
END_TEST

/* dvl_mask_allows against the reference rule over many shapes, and
 * dvl_mask_pairs against the count of the rule's pairs. */
START_TEST(mask_allows_matches_rule)
{
    for (int kind = 0; kind < 4; kind++)
        for (int B = 1; B <= 5; B++)
            for (int64_t L = 1; L <= 9; L++)
                for (int64_t qoff = 0; qoff <= (kind == DVL_MASK_BLOCK_DIFF ? 0 : 7); qoff += 3) {
                    dvl_mask m = {.kind = (dvl_mask_kind)kind, .block_size = B, .half = L,
                                  .q_offset = qoff};
                    int64_t pairs = 0;
                    for (int64_t i = 0; i < 2 * L; i++)
                        for (int64_t j = 0; j < 2 * L + qoff; j++) {
                            ck_assert_msg(dvl_mask_allows(&m, i, j) ==
                                              ref_allows(m.kind, B, L, qoff, i, j),
                                          "kind %d B %d L %lld qoff %lld (%lld, %lld)", kind, B,
                                          (long long)L, (long long)qoff, (long long)i,
                                          (long long)j);
                            pairs += ref_allows(m.kind, B, L, qoff, i, j);
                        }
                    /* dvl_mask_pairs counts them (keys clipped to tk). */
                    ck_assert_int_eq(dvl_mask_pairs(&m, 2 * L, 2 * L + qoff), pairs);
                    int64_t clipped = 0;
                    for (int64_t i = 0; i < 2 * L; i++)
                        for (int64_t j = 0; j < L; j++)
                            clipped += ref_allows(m.kind, B, L, qoff, i, j);
                    ck_assert_int_eq(dvl_mask_pairs(&m, 2 * L, L), clipped);
                }
}
END_TEST

/* ------------------------------------------------------------ KV cache */

/* Rows [t0, t0 + n) of a [N, T, H, D] tensor, keys [0, n) when t0 = 0. */
static dvl_tensor *rows_of(dvl_ctx *ctx, dvl_tensor *x, int64_t t0, int64_t n)
{
    const int64_t N = x->shape[0], T = x->shape[1], HD = x->shape[2] * x->shape[3];
    int64_t s[4] = {N, n, x->shape[2], x->shape[3]};
    dvl_tensor *y = dvl_new(ctx, DVL_F32, 4, s);
    for (int64_t b = 0; b < N; b++)
        memcpy(dvl_f32(y) + b * n * HD, dvl_f32(x) + (b * T + t0) * HD,
               sizeof(float) * (size_t)(n * HD));
    return y;
}

START_TEST(block_causal_kv_cache)
{
    /* T = 13, B = 4: blocks [0,4) [4,8) [8,12) [12,13). Decoding block b
     * runs its queries at q_offset = 4b against the cached keys 0..end of
     * the block; its rows must equal those of one block-causal pass over
     * the whole sequence (up to BLAS rounding, 1e-6). */
    const int64_t N = 2, T = 13, Hq = 4, Hkv = 2, D = 6, B = 4;
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *q = t4(ctx, N, T, Hq, D, 1, "q"), *k = t4(ctx, N, T, Hkv, D, 2, "k"),
               *v = t4(ctx, N, T, Hkv, D, 3, "v");
    uint8_t *kv = make_padding(N, T, 4);
    dvl_mask full = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = B, .key_valid = kv};
    dvl_tensor *o = dvl_attention(ctx, q, k, v, &full, 0.4f);
    ck_assert_ptr_nonnull(o);
    uint8_t *kvc = malloc((size_t)(N * T));
    for (int64_t t0 = 0; t0 < T; t0 += B) {
        int64_t n = t0 + B < T ? B : T - t0, tk = t0 + n;
        for (int64_t b = 0; b < N; b++) /* the cache's padding, [N, tk] */
            memcpy(kvc + b * tk, kv + b * T, (size_t)tk);
        dvl_mask step = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = B, .q_offset = t0,
                         .key_valid = kvc};
        dvl_tensor *os = dvl_attention(ctx, rows_of(ctx, q, t0, n), rows_of(ctx, k, 0, tk),
                                       rows_of(ctx, v, 0, tk), &step, 0.4f);
        ck_assert_ptr_nonnull(os);
        dvl_tensor *want = rows_of(ctx, o, t0, n);
        double e = tu_max_abs_diff(dvl_f32(os), dvl_f32(want), dvl_numel(want));
        ck_assert_msg(e <= 1e-6, "block at %lld differs by %g", (long long)t0, e);
    }
    free(kvc);
    free(kv);
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------------------- padding */

static bool all_finite(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

/* Sequence 1 has no valid key at all: its outputs are exactly zero and
 * nothing it reads gets a gradient; sequence 0 is unaffected. */
START_TEST(all_padded_rows_are_zero)
{
    const dvl_mask_kind kinds[3] = {DVL_MASK_BIDIR, DVL_MASK_BLOCK_DIFF, DVL_MASK_CAUSAL};
    for (int kk = 0; kk < 3; kk++) {
        const int64_t N = 2, T = 10, Hq = 4, Hkv = 2, D = 3;
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *q = t4(ctx, N, T, Hq, D, 5, "q"), *k = t4(ctx, N, T, Hkv, D, 6, "k"),
                   *v = t4(ctx, N, T, Hkv, D, 7, "v");
        q->requires_grad = k->requires_grad = v->requires_grad = true;
        uint8_t kv[20];
        for (int j = 0; j < 20; j++)
            kv[j] = j < 10 ? (j % 3 != 1) : 0;
        dvl_mask m = {.kind = kinds[kk], .block_size = 2, .half = 5, .key_valid = kv};
        dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, 0.5f);
        ck_assert_ptr_nonnull(o);
        float seed[2 * 10 * 4 * 3];
        for (int i = 0; i < 240; i++)
            seed[i] = (float)(i % 7) - 3.0f;
        ck_assert_int_eq(dvl_backward_seed(ctx, o, seed), 0);
        const int64_t hq = T * Hq * D, hk = T * Hkv * D; /* one sequence */
        ck_assert(all_finite(dvl_f32(o), 2 * hq));
        ck_assert(all_finite(q->grad, 2 * hq));
        ck_assert(all_finite(k->grad, 2 * hk));
        ck_assert(all_finite(v->grad, 2 * hk));
        for (int64_t i = 0; i < hq; i++) {
            ck_assert(dvl_f32(o)[hq + i] == 0.0f);
            ck_assert(q->grad[hq + i] == 0.0f);
        }
        for (int64_t i = 0; i < hk; i++)
            ck_assert(k->grad[hk + i] == 0.0f && v->grad[hk + i] == 0.0f);
        /* Hidden keys of sequence 0 get no gradient either. */
        for (int64_t j = 0; j < T; j++)
            if (!kv[j])
                for (int64_t e = 0; e < Hkv * D; e++)
                    ck_assert(k->grad[j * Hkv * D + e] == 0.0f &&
                              v->grad[j * Hkv * D + e] == 0.0f);
        /* Sequence 0 still attends (rows with a visible key are nonzero). */
        double s = 0;
        for (int64_t i = 0; i < hq; i++)
            s += fabs(dvl_f32(o)[i]);
        ck_assert(s > 0);
        dvl_ctx_free(ctx);
    }
}
END_TEST

/* No keys at all (Tk = 0): zeros, no gradient, no crash. */
START_TEST(no_keys)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *q = t4(ctx, 2, 3, 2, 4, 1, "q");
    int64_t sk[4] = {2, 0, 1, 4};
    dvl_tensor *k = dvl_new(ctx, DVL_F32, 4, sk), *v = dvl_new(ctx, DVL_F32, 4, sk);
    q->requires_grad = true;
    dvl_tensor *o = dvl_attention(ctx, q, k, v, NULL, 1.0f);
    ck_assert_ptr_nonnull(o);
    for (int i = 0; i < 48; i++)
        ck_assert(dvl_f32(o)[i] == 0.0f);
    float seed[48];
    for (int i = 0; i < 48; i++)
        seed[i] = 1.0f;
    ck_assert_int_eq(dvl_backward_seed(ctx, o, seed), 0);
    for (int i = 0; i < 48; i++)
        ck_assert(q->grad[i] == 0.0f);
    dvl_ctx_free(ctx);
}
END_TEST

/* ---------------------------------------------- frozen inputs, grad mode */

START_TEST(frozen_inputs_get_no_gradient)
{
    const acase c = {"", 2, 13, 13, 4, 2, 6, DVL_MASK_BLOCK_CAUSAL, 4, 0, 0, PAD};
    uint8_t *kv = make_padding(c.N, c.Tk, 9);
    dvl_mask m = mask_of(&c, kv);
    float *ref[3] = {NULL, NULL, NULL};
    /* which: bit 0 q, bit 1 k, bit 2 v require grad. All three first, then
     * subsets; each gradient must be bitwise the one of the full run. */
    const int subsets[4] = {7, 5, 4, 2};
    for (int s = 0; s < 4; s++) {
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *t[3] = {t4(ctx, c.N, c.Tq, c.Hq, c.D, 1, "q"),
                            t4(ctx, c.N, c.Tk, c.Hkv, c.D, 2, "k"),
                            t4(ctx, c.N, c.Tk, c.Hkv, c.D, 3, "v")};
        for (int i = 0; i < 3; i++)
            t[i]->requires_grad = (subsets[s] >> i) & 1;
        dvl_tensor *o = dvl_attention(ctx, t[0], t[1], t[2], &m, 0.3f);
        ck_assert_ptr_nonnull(o);
        ck_assert_int_eq(dvl_tape_len(ctx), 1);
        int64_t n = dvl_numel(o);
        float *seed = malloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            seed[i] = (float)((i * 37) % 11) - 5.0f;
        ck_assert_int_eq(dvl_backward_seed(ctx, o, seed), 0);
        free(seed);
        for (int i = 0; i < 3; i++) {
            int64_t ne = dvl_numel(t[i]);
            if (!t[i]->requires_grad) {
                ck_assert_msg(!dvl_has_grad(t[i]), "frozen %s got a gradient", t[i]->name);
            } else if (s == 0) {
                ref[i] = malloc(sizeof(float) * (size_t)ne);
                memcpy(ref[i], t[i]->grad, sizeof(float) * (size_t)ne);
            } else {
                ck_assert(memcmp(ref[i], t[i]->grad, sizeof(float) * (size_t)ne) == 0);
            }
        }
        dvl_ctx_free(ctx);
    }
    for (int i = 0; i < 3; i++)
        free(ref[i]);
    free(kv);
}
END_TEST

START_TEST(grad_mode_off_records_nothing)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *q = t4(ctx, 1, 5, 2, 4, 1, "q"), *k = t4(ctx, 1, 5, 1, 4, 2, "k"),
               *v = t4(ctx, 1, 5, 1, 4, 3, "v");
    q->requires_grad = true;
    dvl_mask m = {.kind = DVL_MASK_CAUSAL};
    dvl_tensor *a = dvl_attention(ctx, q, k, v, &m, 0.5f);
    ck_assert_int_eq(dvl_tape_len(ctx), 1);
    bool prev = dvl_set_grad_enabled(ctx, false);
    dvl_tensor *b = dvl_attention(ctx, q, k, v, &m, 0.5f);
    dvl_set_grad_enabled(ctx, prev);
    ck_assert_int_eq(dvl_tape_len(ctx), 1);
    ck_assert(!b->requires_grad);
    ck_assert(memcmp(a->data, b->data, sizeof(float) * 40) == 0);
    dvl_ctx_free(ctx);
}
END_TEST

/* ----------------------------------------------------------- determinism */

/* Forward and backward give the same bits with 1 and 2 OpenMP threads
 * (tiles large enough that the row loops run in parallel). */
START_TEST(same_bits_any_thread_count)
{
    const acase c = {"", 2, 200, 200, 4, 2, 8, DVL_MASK_BLOCK_DIFF, 16, 100, 0, PAD};
    uint8_t *kv = make_padding(c.N, c.Tk, 3);
    dvl_mask m = mask_of(&c, kv);
    float *first[4] = {NULL, NULL, NULL, NULL};
    int64_t sizes[4];
    const int threads[2] = {1, 2};
    int saved = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(threads[run]);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *q = t4(ctx, c.N, c.Tq, c.Hq, c.D, 1, "q"),
                   *k = t4(ctx, c.N, c.Tk, c.Hkv, c.D, 2, "k"),
                   *v = t4(ctx, c.N, c.Tk, c.Hkv, c.D, 3, "v");
        q->requires_grad = k->requires_grad = v->requires_grad = true;
        dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, 0.35f);
        ck_assert_ptr_nonnull(o);
        int64_t n = dvl_numel(o);
        float *seed = malloc(sizeof(float) * (size_t)n);
        dvl_rng r;
        dvl_rng_seed(&r, 77);
        dvl_rng_fill_normal(&r, seed, n, 1.0f);
        ck_assert_int_eq(dvl_backward_seed(ctx, o, seed), 0);
        free(seed);
        const float *got[4] = {dvl_f32(o), q->grad, k->grad, v->grad};
        sizes[0] = sizes[1] = n;
        sizes[2] = sizes[3] = dvl_numel(k);
        for (int i = 0; i < 4; i++) {
            if (run == 0) {
                first[i] = malloc(sizeof(float) * (size_t)sizes[i]);
                memcpy(first[i], got[i], sizeof(float) * (size_t)sizes[i]);
            } else {
                ck_assert_msg(memcmp(first[i], got[i], sizeof(float) * (size_t)sizes[i]) == 0,
                              "result %d differs between 1 and 2 threads", i);
            }
        }
        dvl_ctx_free(ctx);
    }
    omp_set_num_threads(saved);
    for (int i = 0; i < 4; i++)
        free(first[i]);
    free(kv);
}
END_TEST

/* ---------------------------------------------------------------- errors */

static void expect_error(dvl_ctx *ctx, dvl_tensor *q, dvl_tensor *k, dvl_tensor *v,
                         const dvl_mask *m, const char *part1, const char *part2)
{
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_attention(ctx, q, k, v, m, 0.5f));
    const char *msg = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(msg, part1) != NULL, "message '%s' lacks '%s'", msg, part1);
    if (part2)
        ck_assert_msg(strstr(msg, part2) != NULL, "message '%s' lacks '%s'", msg, part2);
}

START_TEST(errors_name_the_culprit)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *q = t4(ctx, 2, 6, 4, 3, 1, "layer0.q"), *k = t4(ctx, 2, 6, 2, 3, 2, "layer0.k"),
               *v = t4(ctx, 2, 6, 2, 3, 3, "layer0.v");
    dvl_mask bi = {.kind = DVL_MASK_BIDIR};
    /* A NULL input returns NULL and keeps the context clean. */
    ck_assert_ptr_null(dvl_attention(ctx, NULL, k, v, &bi, 1.0f));
    ck_assert(dvl_ctx_ok(ctx));

    int64_t s3[3] = {12, 4, 3};
    expect_error(ctx, dvl_reshape(ctx, q, 3, s3), k, v, &bi, "layer0.q", "[12, 4, 3]");
    dvl_tensor *k3 = t4(ctx, 2, 6, 3, 3, 4, "k3"), *v3 = t4(ctx, 2, 6, 3, 3, 5, "v3");
    expect_error(ctx, q, k3, v3, &bi, "4 heads", "3 kv heads");
    expect_error(ctx, q, t4(ctx, 2, 6, 2, 4, 6, "kD4"), t4(ctx, 2, 6, 2, 4, 7, "vD4"), &bi,
                 "kD4", "[2, 6, 2, 4]");
    expect_error(ctx, q, t4(ctx, 3, 6, 2, 3, 8, "kN3"), t4(ctx, 3, 6, 2, 3, 9, "vN3"), &bi,
                 "kN3", "layer0.q");
    expect_error(ctx, q, k, t4(ctx, 2, 5, 2, 3, 10, "vshort"), &bi, "vshort", "[2, 5, 2, 3]");
    int64_t si[4] = {2, 6, 2, 3};
    dvl_tensor *ki = dvl_new(ctx, DVL_I32, 4, si);
    ki->name = "kint";
    expect_error(ctx, q, ki, v, &bi, "kint", "i32");

    dvl_mask bd = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 2, .half = 4};
    expect_error(ctx, q, k, v, &bd, "half 4", "layer0.q");
    bd.half = 3;
    bd.block_size = 0;
    expect_error(ctx, q, k, v, &bd, "BLOCK_DIFF", "block_size");
    bd.block_size = 2;
    bd.q_offset = 1;
    expect_error(ctx, q, k, v, &bd, "BLOCK_DIFF", "q_offset");
    dvl_mask bc = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = -1};
    expect_error(ctx, q, k, v, &bc, "BLOCK_CAUSAL", "block_size > 0, got -1");
    dvl_mask cn = {.kind = DVL_MASK_CAUSAL, .q_offset = -2};
    expect_error(ctx, q, k, v, &cn, "CAUSAL", "q_offset -2");
    dvl_mask bad = {.kind = (dvl_mask_kind)9};
    expect_error(ctx, q, k, v, &bad, "unknown mask kind 9", NULL);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_attention(ctx, q, k, v, &bi, NAN));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "scale"));

    /* The valid configuration still works after all that. */
    dvl_ctx_clear_error(ctx);
    bd.q_offset = 0;
    ck_assert_ptr_nonnull(dvl_attention(ctx, q, k, v, &bd, 0.5f));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("attention");
    tcase_add_loop_test(tc, matches_dense_reference, 0, N_CASES);
    tcase_add_loop_test(tc, gradcheck_masks, 0, (int)(sizeof gc_cases / sizeof gc_cases[0]));
    tcase_add_test(tc, block_diff_table);
    tcase_add_test(tc, causal_tables);
    tcase_add_test(tc, mask_allows_matches_rule);
    tcase_add_test(tc, block_causal_kv_cache);
    tcase_add_test(tc, all_padded_rows_are_zero);
    tcase_add_test(tc, no_keys);
    tcase_add_test(tc, frozen_inputs_get_no_gradient);
    tcase_add_test(tc, grad_mode_off_records_nothing);
    tcase_add_test(tc, same_bits_any_thread_count);
    tcase_add_test(tc, errors_name_the_culprit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
