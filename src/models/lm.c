/* The decoder LM (lm.h): Qwen2 / LLaDA blocks over the ops. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/init.h"
#include "models/lm.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

/* Checkpoint names per architecture. Projections get ".weight" / ".bias"
 * appended; layer names are prefixed by layer_fmt with the layer index. */
typedef struct lm_names {
    const char *embed, *norm, *head, *layer_fmt;
    const char *attn_norm, *q, *k, *v, *o, *mlp_norm, *gate, *up, *down;
} lm_names;

/* transformers Qwen2ForCausalLM. */
static const lm_names QWEN2 = {
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.%d.",
    "input_layernorm.weight", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj", "post_attention_layernorm.weight", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj"};

/* LLaDA-8B's checkpoint (modeling_llada.py, LLaDALlamaBlock): ff_proj is
 * the gate (SiLU applied to it), ff_out the down projection, and the
 * transformer-level ff_out the LM head. */
static const lm_names LLADA = {
    "model.transformer.wte.weight", "model.transformer.ln_f.weight",
    "model.transformer.ff_out.weight", "model.transformer.blocks.%d.",
    "attn_norm.weight", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm.weight", "ff_proj",
    "up_proj", "ff_out"};

static const lm_names *names_of(dvl_arch a) { return a == DVL_ARCH_LLADA ? &LLADA : &QWEN2; }

const char *dvl_lm_embed_name(dvl_arch arch) { return names_of(arch)->embed; }

dvl_mask dvl_lm_default_mask(const dvl_lm_config *cfg)
{
    dvl_mask m = {.kind = cfg->arch == DVL_ARCH_LLADA ? DVL_MASK_BIDIR : DVL_MASK_CAUSAL};
    return m;
}

/* ------------------------------------------------------------ declaring */

typedef struct decl {
    dvl_params *p;
    dvl_err *err;
    int rc;
} decl;

/* Declare name (printf-style prefix + suffix) with shape [a] or [a, b]. */
static dvl_tensor *add(decl *d, const char *pre, const char *suf, int64_t a, int64_t b)
{
    if (d->rc)
        return NULL;
    char name[512];
    snprintf(name, sizeof name, "%s%s", pre, suf);
    int64_t s[2] = {a, b};
    dvl_tensor *t = dvl_params_add(d->p, name, b ? 2 : 1, s, true, d->err);
    if (!t)
        d->rc = d->err ? d->err->code : DVL_EINVAL;
    return t;
}

/* A projection's PRE NAME.weight [out, in] (b 0) or PRE NAME.bias [out]. */
static dvl_tensor *proj(decl *d, const char *pre, const char *name, int64_t out, int64_t in)
{
    char p[256];
    snprintf(p, sizeof p, "%s%s.", pre, name);
    return add(d, p, in ? "weight" : "bias", out, in);
}

int dvl_lm_declare(dvl_lm *m, const dvl_lm_config *cfg, dvl_params *p, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const lm_names *nm = names_of(cfg->arch);
    int64_t d = cfg->hidden, qd = cfg->heads * cfg->head_dim, kvd = cfg->kv_heads * cfg->head_dim;
    int64_t I = cfg->intermediate, V = cfg->vocab;
    m->layer = calloc((size_t)cfg->layers, sizeof *m->layer);
    if (!m->layer)
        return dvl_errf(err, DVL_ENOMEM, "out of memory declaring %lld layers",
                        (long long)cfg->layers);
    decl D = {p, err, DVL_OK};
    /* Declaration order = the flat buffer's order = checkpoint shard order:
     * embedding, layers, final norm, head, as transformers saves them. */
    m->embed = add(&D, nm->embed, "", V, d);
    char pre[128];
    for (int l = 0; l < cfg->layers; l++) {
        dvl_lm_layer *L = &m->layer[l];
        snprintf(pre, sizeof pre, nm->layer_fmt, l);
        L->attn_norm = add(&D, pre, nm->attn_norm, d, 0);
        /* The q, k, v weights one after the other, then their biases, and
         * gate before up: consecutive in the store, so each group is one
         * matrix product (dvl_linear_cat). */
        L->wq = proj(&D, pre, nm->q, qd, d);
        L->wk = proj(&D, pre, nm->k, kvd, d);
        L->wv = proj(&D, pre, nm->v, kvd, d);
        if (cfg->qkv_bias) {
            L->bq = proj(&D, pre, nm->q, qd, 0);
            L->bk = proj(&D, pre, nm->k, kvd, 0);
            L->bv = proj(&D, pre, nm->v, kvd, 0);
        }
        L->wo = proj(&D, pre, nm->o, d, qd);
        L->mlp_norm = add(&D, pre, nm->mlp_norm, d, 0);
        L->w_gate = proj(&D, pre, nm->gate, I, d);
        L->w_up = proj(&D, pre, nm->up, I, d);
        L->w_down = proj(&D, pre, nm->down, d, I);
    }
    m->norm = add(&D, nm->norm, "", d, 0);
    m->head = cfg->tied ? m->embed : add(&D, nm->head, "", V, d);
    if (D.rc) {
        dvl_lm_free(m);
        return D.rc;
    }
    return DVL_OK;
}

void dvl_lm_free(dvl_lm *m)
{
    if (!m)
        return;
    free(m->layer);
    m->layer = NULL;
}

void dvl_lm_init_random(dvl_lm *m, uint64_t seed, float std)
{
    dvl_init_normal(m->embed, seed, std);
    for (int l = 0; l < m->cfg.layers; l++) {
        dvl_lm_layer *L = &m->layer[l];
        dvl_tensor *ws[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
            dvl_init_normal(ws[i], seed, std);
        dvl_tensor *bs[] = {L->bq, L->bk, L->bv};
        for (size_t i = 0; i < 3; i++)
            if (bs[i])
                dvl_init_const(bs[i], 0.0f);
        dvl_init_const(L->attn_norm, 1.0f);
        dvl_init_const(L->mlp_norm, 1.0f);
    }
    dvl_init_const(m->norm, 1.0f);
    if (m->head != m->embed)
        dvl_init_normal(m->head, seed, std);
}

/* -------------------------------------------------------------- forward */

dvl_tensor *dvl_lm_embed(dvl_ctx *ctx, const dvl_lm *m, const int32_t *ids, int64_t n)
{
    return dvl_embedding(ctx, m->embed, ids, n);
}

int dvl_kv_cache_init(dvl_kv_cache *c, const dvl_lm_config *cfg, int64_t batch, int64_t cap,
                      dvl_err *err)
{
    return dvl_kv_cache_init_on(c, cfg, batch, cap, DVL_CPU, err);
}

int dvl_kv_cache_init_on(dvl_kv_cache *c, const dvl_lm_config *cfg, int64_t batch, int64_t cap,
                         dvl_device device, dvl_err *err)
{
    memset(c, 0, sizeof *c);
    if (batch < 1 || cap < 1)
        return dvl_errf(err, DVL_EINVAL, "kv cache: batch %lld and capacity %lld must be >= 1",
                        (long long)batch, (long long)cap);
    c->layers = cfg->layers;
    c->batch = batch;
    c->cap = cap;
    c->kv_heads = cfg->kv_heads;
    c->head_dim = cfg->head_dim;
    c->device = device;
    size_t n = (size_t)(c->layers * batch * cap * c->kv_heads * c->head_dim);
    if (device == DVL_CPU) {
        c->k = malloc(n * sizeof *c->k);
        c->v = malloc(n * sizeof *c->v);
        if (!c->k || !c->v) {
            dvl_kv_cache_free(c);
            return dvl_errf(err, DVL_ENOMEM, "kv cache: out of memory for %zu floats x 2", n);
        }
        return DVL_OK;
    }
#ifdef DVL_HAVE_CUDA
    if (device == DVL_CUDA) {
        if (!(c->k = dvl_cuda_malloc(n * sizeof *c->k, err)) ||
            !(c->v = dvl_cuda_malloc(n * sizeof *c->v, err))) {
            dvl_kv_cache_free(c);
            return err ? err->code : DVL_EDEVICE;
        }
        return DVL_OK;
    }
#endif
    return dvl_errf(err, DVL_EUNSUP, "kv cache: device %d not supported in this build", (int)device);
}

void dvl_kv_cache_free(dvl_kv_cache *c)
{
    if (!c)
        return;
    if (c->device == DVL_CPU) {
        free(c->k);
        free(c->v);
    }
#ifdef DVL_HAVE_CUDA
    else {
        dvl_cuda_free(c->k);
        dvl_cuda_free(c->v);
    }
#endif
    c->k = c->v = NULL;
}

/* Copy bytes within the context's device (host memcpy on the CPU); a
 * device error goes into the context. */
static bool copy_same_device(dvl_ctx *ctx, float *dst, const float *src, int64_t floats)
{
    if (floats <= 0)
        return true;
    size_t bytes = (size_t)floats * sizeof(float);
    if (dvl_ctx_device(ctx) == DVL_CPU) {
        memcpy(dst, src, bytes);
        return true;
    }
#ifdef DVL_HAVE_CUDA
    /* cudaMemcpy device to device: queued on the default stream, after the
     * kernels that wrote src and before those that read dst. */
    dvl_err e = {0, ""};
    if (dvl_cuda_memcpy_d2d(dst, src, bytes, &e) == DVL_OK)
        return true;
    dvl_ctx_set_err(ctx, &e);
#endif
    return false;
}

/* Keys (or values) over the cache: [N, len + T, Hkv, D] = per sequence the
 * len cached rows of layer l, then the T new rows x; with store the new rows
 * are also written into the cache at [len, len + T). The cache lives on the
 * context's device: one copy per sequence and piece (a strided 2-D copy
 * done as N contiguous ones: N is a handful of sequences). */
static dvl_tensor *with_cache(dvl_ctx *ctx, dvl_tensor *x, float *cache, const dvl_kv_cache *c,
                              int l, int64_t N, int64_t T, bool store)
{
    if (!x)
        return NULL;
    if (c->device != dvl_ctx_device(ctx))
        return dvl_fail(ctx, "lm: the KV cache is on device %d but the context on %d",
                        (int)c->device, (int)dvl_ctx_device(ctx));
    const int64_t row = c->kv_heads * c->head_dim, len = c->len;
    int64_t s[4] = {N, len + T, c->kv_heads, c->head_dim};
    dvl_tensor *all = dvl_new(ctx, DVL_F32, 4, s);
    if (!all)
        return NULL;
    float *dst = dvl_f32(all);
    const float *src = dvl_f32(x);
    for (int64_t n = 0; n < N; n++) {
        float *cn = cache + ((int64_t)l * c->batch + n) * c->cap * row;
        float *dn = dst + n * (len + T) * row;
        if (!copy_same_device(ctx, dn, cn, len * row) ||
            !copy_same_device(ctx, dn + len * row, src + n * T * row, T * row) ||
            (store && !copy_same_device(ctx, cn + len * row, src + n * T * row, T * row)))
            return NULL;
    }
    return all;
}

/* Self-attention of one layer over the normed input h [N*T, d]; with a
 * cache the keys and values are the cached rows followed by the new ones
 * (lm.h). */
static dvl_tensor *attend(dvl_ctx *ctx, const dvl_lm *m, int l, dvl_tensor *h, int64_t N,
                          int64_t T, const dvl_rope_table *rt, const dvl_mask *mask,
                          const dvl_lm_input *in)
{
    const dvl_lm_config *c = &m->cfg;
    const dvl_lm_layer *L = &m->layer[l];
    int64_t sq[4] = {N, T, c->heads, c->head_dim}, skv[4] = {N, T, c->kv_heads, c->head_dim};
    /* Qwen2: rotary after the bias (HF applies it to the projection
     * output); output feature h*D + j is head h, dim j, so a reshape is the
     * head split. */
    dvl_tensor *w[3] = {L->wq, L->wk, L->wv}, *b[3] = {L->bq, L->bk, L->bv}, *q, *k, *v;
    dvl_tensor *const *bias = L->bq ? b : NULL;
    if (!in->separate_projections && dvl_linear_cat_ok(3, w, bias)) {
        /* One product for the three, columns [q | k | v]; rotary reads q
         * and k in place, v is copied out. */
        const int64_t qd = sq[2] * sq[3], kvd = skv[2] * skv[3];
        dvl_tensor *qkv = dvl_linear_cat(ctx, h, 3, w, bias);
        q = dvl_rope_cols_with(ctx, qkv, 0, sq, rt);
        k = dvl_rope_cols_with(ctx, qkv, qd, skv, rt);
        v = dvl_reshape(ctx, dvl_slice_cols(ctx, qkv, qd + kvd, kvd), 4, skv);
    } else { /* a store laid out otherwise, some of the three frozen, or asked */
        q = dvl_rope_with(ctx, dvl_reshape(ctx, dvl_linear(ctx, h, L->wq, L->bq), 4, sq), rt);
        k = dvl_rope_with(ctx, dvl_reshape(ctx, dvl_linear(ctx, h, L->wk, L->bk), 4, skv), rt);
        v = dvl_reshape(ctx, dvl_linear(ctx, h, L->wv, L->bv), 4, skv);
    }
    if (in->cache) {
        k = with_cache(ctx, k, in->cache->k, in->cache, l, N, T, in->cache_store);
        v = with_cache(ctx, v, in->cache->v, in->cache, l, N, T, in->cache_store);
    }
    dvl_tensor *a = dvl_attention(ctx, q, k, v, mask, 1.0f / sqrtf((float)c->head_dim));
    int64_t s2[2] = {N * T, c->heads * c->head_dim};
    return dvl_linear(ctx, dvl_reshape(ctx, a, 2, s2), L->wo, NULL);
}

/* One decoder layer's arguments (dvl_block_fn's user). */
typedef struct layer_args {
    const dvl_lm *m;
    int l;
    int64_t N, T;
    const dvl_rope_table *rope; /* the forward's, shared by every layer */
    dvl_mask mask;
    dvl_lm_input in;
} layer_args;

/* Decoder layer l: x + attention(norm(x)), then + MLP(norm(.)). */
static dvl_tensor *layer_fwd(dvl_ctx *ctx, const void *user, dvl_tensor *x)
{
    const layer_args *a = user;
    const dvl_lm_config *c = &a->m->cfg;
    const dvl_lm_layer *L = &a->m->layer[a->l];
    dvl_tensor *h = dvl_rmsnorm(ctx, x, L->attn_norm, c->rms_eps);
    x = dvl_add(ctx, x, attend(ctx, a->m, a->l, h, a->N, a->T, a->rope, &a->mask, &a->in));
    h = dvl_rmsnorm(ctx, x, L->mlp_norm, c->rms_eps);
    dvl_tensor *gu[2] = {L->w_gate, L->w_up};
    if (!a->in.separate_projections && dvl_linear_cat_ok(2, gu, NULL))
        return dvl_add(ctx, x, dvl_swiglu_mlp(ctx, h, gu, L->w_down));
    dvl_tensor *g = dvl_swiglu(ctx, dvl_linear(ctx, h, L->w_gate, NULL),
                               dvl_linear(ctx, h, L->w_up, NULL));
    return dvl_add(ctx, x, dvl_linear(ctx, g, L->w_down, NULL));
}

dvl_tensor *dvl_lm_forward(dvl_ctx *ctx, const dvl_lm *m, const dvl_lm_input *in)
{
    const dvl_lm_config *c = &m->cfg;
    int64_t N = in->batch, T = in->seq, n = N * T;
    if (N <= 0 || T <= 0)
        return dvl_fail(ctx, "lm: batch %lld x seq %lld is empty", (long long)N, (long long)T);
    if (!in->ids == !in->embeds)
        return dvl_fail(ctx, "lm: give exactly one of token ids and input embeddings");
    dvl_tensor *x;
    if (in->ids) {
        x = dvl_lm_embed(ctx, m, in->ids, n);
    } else {
        char s[64];
        if (dvl_numel(in->embeds) != n * c->hidden || dvl_cols(in->embeds) != c->hidden)
            return dvl_fail(ctx, "lm: input embeddings %s %s are not [%lld, %lld] (batch %lld x seq %lld)",
                            dvl_tname(in->embeds), dvl_shape_str(in->embeds, s, sizeof s),
                            (long long)n, (long long)c->hidden, (long long)N, (long long)T);
        int64_t s2[2] = {n, c->hidden};
        x = dvl_reshape(ctx, in->embeds, 2, s2);
    }
    const dvl_kv_cache *kv = in->cache;
    int64_t start = kv ? kv->len : 0;
    if (kv) {
        if (dvl_grad_enabled(ctx))
            return dvl_fail(ctx, "lm: the KV cache is for inference; turn grad mode off");
        if (kv->batch != N || kv->layers != c->layers || kv->kv_heads != c->kv_heads ||
            kv->head_dim != c->head_dim)
            return dvl_fail(ctx, "lm: KV cache of batch %lld, %lld layers x %lld heads x %lld does "
                            "not fit batch %lld of this model",
                            (long long)kv->batch, (long long)kv->layers, (long long)kv->kv_heads,
                            (long long)kv->head_dim, (long long)N);
        if (kv->len + T > kv->cap)
            return dvl_fail(ctx, "lm: %lld cached + %lld new tokens exceed the KV cache's %lld",
                            (long long)kv->len, (long long)T, (long long)kv->cap);
    }
    const int32_t *pos = in->pos;
    if (!pos) {
        int32_t *p = dvl_alloc(ctx, (size_t)n * sizeof *p);
        if (!p)
            return NULL;
        for (int64_t i = 0; i < n; i++)
            p[i] = (int32_t)(start + i % T);
        pos = p;
    }
    /* Every layer rotates q and k by the same angles: one table (made
     * before the layers, so a checkpointed layer's second run finds it). */
    const dvl_rope_table *rt =
        x ? dvl_rope_table_make(ctx, x->device, pos, n, c->head_dim, c->rope_theta) : NULL;
    if (!rt)
        return NULL;
    dvl_mask mk = in->mask ? *in->mask : dvl_lm_default_mask(c);
    if (kv)
        mk.q_offset = start; /* query row t is cache row len + t */
    for (int l = 0; l < c->layers && x; l++) {
        /* The layer's arguments in the arena: a checkpointed layer runs
         * again during backward, after this frame is gone. */
        layer_args *a = dvl_alloc(ctx, sizeof *a);
        if (!a)
            return NULL;
        *a = (layer_args){m, l, N, T, rt, mk, *in};
        a->in.mask = &a->mask;
        x = in->checkpoint ? dvl_checkpoint(ctx, layer_fwd, a, x) : layer_fwd(ctx, a, x);
    }
    x = dvl_rmsnorm(ctx, x, m->norm, c->rms_eps);
    /* Every layer has written its rows; the cache now holds them. */
    if (x && in->cache && in->cache_store)
        in->cache->len += T;
    return x;
}

dvl_tensor *dvl_lm_logits(dvl_ctx *ctx, const dvl_lm *m, dvl_tensor *h)
{
    return dvl_linear(ctx, h, m->head, NULL);
}

dvl_tensor *dvl_lm_loss(dvl_ctx *ctx, const dvl_lm *m, dvl_tensor *h, int64_t batch, int64_t seq,
                        const int32_t *labels, const float *weight, bool shift)
{
    if (!h)
        return NULL;
    int64_t n = batch * seq;
    if (dvl_rows(h) != n) {
        char s[64];
        return dvl_fail(ctx, "lm loss: hidden states %s %s have %lld rows, labels %lld x %lld",
                        dvl_tname(h), dvl_shape_str(h, s, sizeof s), (long long)dvl_rows(h),
                        (long long)batch, (long long)seq);
    }
    const int32_t *lab = labels;
    const float *wt = weight;
    if (shift) {
        /* Position t predicts the token at t+1 of the same row. */
        int32_t *sl = dvl_alloc(ctx, (size_t)n * sizeof *sl);
        float *sw = weight ? dvl_alloc(ctx, (size_t)n * sizeof *sw) : NULL;
        if (!sl || (weight && !sw))
            return NULL;
        for (int64_t b = 0; b < batch; b++)
            for (int64_t t = 0; t < seq; t++) {
                int64_t i = b * seq + t;
                sl[i] = t + 1 < seq ? labels[i + 1] : DVL_IGNORE_INDEX;
                if (sw)
                    sw[i] = t + 1 < seq ? weight[i + 1] : 0.0f;
            }
        lab = sl;
        wt = sw;
    }
    if (!wt) {
        /* Mean over the scored targets (none scored: a zero loss). */
        int64_t count = 0;
        for (int64_t i = 0; i < n; i++)
            count += lab[i] != DVL_IGNORE_INDEX;
        float *mw = dvl_alloc(ctx, (size_t)n * sizeof *mw);
        if (!mw)
            return NULL;
        for (int64_t i = 0; i < n; i++)
            mw[i] = count ? 1.0f / (float)count : 0.0f;
        wt = mw;
    }
    return dvl_linear_cross_entropy(ctx, h, m->head, lab, wt, 0);
}
