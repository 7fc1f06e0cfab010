#include "toy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Declare a trainable [a, b] parameter, or [a] when b is 0. */
static dvl_tensor *add2(dvl_params *p, const char *name, int64_t a, int64_t b)
{
    dvl_err err = {0};
    int64_t s[2] = {a, b};
    dvl_tensor *t = dvl_params_add(p, name, b ? 2 : 1, s, true, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    return t;
}

dvl_params *toy_params(const toy_cfg *c, uint64_t seed)
{
    dvl_params *p = dvl_params_new();
    int hd = c->dim / c->heads;
    char n[64];
    add2(p, "embed", c->vocab, c->dim);
    for (int l = 0; l < c->layers; l++) {
#define P(name, a, b)                                                                          \
    snprintf(n, sizeof n, "l%d." name, l);                                                     \
    add2(p, n, a, b)
        P("ln1", c->dim, 0);
        P("q.w", c->heads * hd, c->dim);
        P("q.b", c->heads * hd, 0);
        P("k.w", c->kv_heads * hd, c->dim);
        P("k.b", c->kv_heads * hd, 0);
        P("v.w", c->kv_heads * hd, c->dim);
        P("v.b", c->kv_heads * hd, 0);
        P("o.w", c->dim, c->heads * hd);
        P("ln2", c->dim, 0);
        P("gate.w", c->ffn, c->dim);
        P("up.w", c->ffn, c->dim);
        P("down.w", c->dim, c->ffn);
#undef P
    }
    add2(p, "norm", c->dim, 0);
    add2(p, "head", c->vocab, c->dim);
    dvl_err err = {0};
    ck_assert_msg(dvl_params_alloc(p, &err) == 0, "%s", err.msg);
    for (int i = 0; i < p->n; i++) {
        dvl_tensor *t = p->t[i];
        if (t->ndim == 1 && (strstr(t->name, "ln") || strstr(t->name, "norm"))) {
            tu_randn(t, seed + (uint64_t)i, 0.1f);
            for (int64_t j = 0; j < dvl_numel(t); j++)
                dvl_f32(t)[j] += 1.0f;
        } else {
            tu_randn(t, seed + (uint64_t)i, t->ndim == 1 ? 0.05f : 1.0f / sqrtf((float)t->shape[1]));
        }
    }
    return p;
}

toy_batch toy_batch_new(const toy_cfg *c, uint64_t seed)
{
    toy_batch b;
    int n = c->batch * c->seq;
    b.ids = malloc((size_t)n * sizeof *b.ids);
    b.labels = malloc((size_t)n * sizeof *b.labels);
    b.pos = malloc((size_t)n * sizeof *b.pos);
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    for (int i = 0; i < n; i++)
        b.ids[i] = (int32_t)(dvl_rng_u64(&r) % (uint64_t)c->vocab);
    for (int s = 0; s < c->batch; s++)
        for (int t = 0; t < c->seq; t++) {
            int i = s * c->seq + t;
            b.pos[i] = t;
            /* Next token; the last position and the first two (a "prompt")
             * carry no label. */
            b.labels[i] = (t + 1 < c->seq && t >= 2) ? b.ids[i + 1] : DVL_IGNORE_INDEX;
        }
    return b;
}

void toy_batch_free(toy_batch *b)
{
    free(b->ids);
    free(b->labels);
    free(b->pos);
}

#define W(name) dvl_params_find(p, name)

dvl_tensor *toy_loss(dvl_ctx *ctx, const toy_cfg *c, dvl_params *p, const toy_batch *b)
{
    int64_t n = (int64_t)c->batch * c->seq, hd = c->dim / c->heads;
    char nm[64];
    dvl_tensor *x = dvl_embedding(ctx, W("embed"), b->ids, n);
    for (int l = 0; l < c->layers; l++) {
#define L(name) (snprintf(nm, sizeof nm, "l%d." name, l), W(nm))
        dvl_tensor *h = dvl_rmsnorm(ctx, x, L("ln1"), 1e-6f);
        dvl_tensor *q = dvl_linear(ctx, h, L("q.w"), L("q.b"));
        dvl_tensor *k = dvl_linear(ctx, h, L("k.w"), L("k.b"));
        dvl_tensor *v = dvl_linear(ctx, h, L("v.w"), L("v.b"));
        int64_t sq[4] = {c->batch, c->seq, c->heads, hd};
        int64_t skv[4] = {c->batch, c->seq, c->kv_heads, hd};
        q = dvl_rope(ctx, dvl_reshape(ctx, q, 4, sq), b->pos, 10000.0f);
        k = dvl_rope(ctx, dvl_reshape(ctx, k, 4, skv), b->pos, 10000.0f);
        v = dvl_reshape(ctx, v, 4, skv);
        dvl_mask m = {.kind = DVL_MASK_CAUSAL};
        dvl_tensor *a = dvl_attention(ctx, q, k, v, &m, 1.0f / sqrtf((float)hd));
        int64_t s2[2] = {n, c->heads * hd};
        a = dvl_linear(ctx, dvl_reshape(ctx, a, 2, s2), L("o.w"), NULL);
        x = dvl_add(ctx, x, a);
        h = dvl_rmsnorm(ctx, x, L("ln2"), 1e-6f);
        dvl_tensor *g = dvl_swiglu(ctx, dvl_linear(ctx, h, L("gate.w"), NULL),
                                   dvl_linear(ctx, h, L("up.w"), NULL));
        x = dvl_add(ctx, x, dvl_linear(ctx, g, L("down.w"), NULL));
#undef L
    }
    x = dvl_rmsnorm(ctx, x, W("norm"), 1e-6f);
    int count = 0;
    for (int64_t i = 0; i < n; i++)
        count += b->labels[i] != DVL_IGNORE_INDEX;
    float *wts = dvl_alloc(ctx, (size_t)n * sizeof *wts);
    if (!wts)
        return NULL;
    for (int64_t i = 0; i < n; i++)
        wts[i] = 1.0f / (float)count;
    /* A small chunk so the vocabulary is split unevenly. */
    return dvl_linear_cross_entropy(ctx, x, W("head"), b->labels, wts, 7);
}
