/* The SigLIP vision tower (siglip.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/init.h"
#include "models/siglip.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

static dvl_tensor *add(dvl_params *p, int *rc, dvl_err *err, const char *name, int nd,
                       const int64_t *shape)
{
    if (*rc)
        return NULL;
    dvl_tensor *t = dvl_params_add(p, name, nd, shape, true, err);
    if (!t)
        *rc = err ? err->code : DVL_EINVAL;
    return t;
}

int dvl_siglip_declare(dvl_siglip *m, const dvl_siglip_config *cfg, dvl_params *p,
                       const char *prefix, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->n_layers = dvl_siglip_layers_run(cfg);
    if (m->n_layers < 0 || m->n_layers > cfg->layers)
        return dvl_errf(err, DVL_EINVAL, "siglip: select layer %d of %lld layers runs %lld layers",
                        cfg->select_layer, (long long)cfg->layers, (long long)m->n_layers);
    m->layer = calloc((size_t)(m->n_layers ? m->n_layers : 1), sizeof *m->layer);
    if (!m->layer)
        return dvl_errf(err, DVL_ENOMEM, "out of memory declaring the vision tower");
    int64_t d = cfg->hidden, I = cfg->intermediate, P = cfg->patch_size;
    int rc = DVL_OK;
    char n[512];
#define ADD(dst, nd, ...)                                                                      \
    do {                                                                                       \
        int64_t s_[] = {__VA_ARGS__};                                                          \
        dst = add(p, &rc, err, n, nd, s_);                                                     \
    } while (0)
    snprintf(n, sizeof n, "%sembeddings.patch_embedding.weight", prefix);
    ADD(m->patch_w, 4, d, cfg->channels, P, P);
    snprintf(n, sizeof n, "%sembeddings.patch_embedding.bias", prefix);
    ADD(m->patch_b, 1, d);
    snprintf(n, sizeof n, "%sembeddings.position_embedding.weight", prefix);
    ADD(m->pos_emb, 2, dvl_siglip_patches(cfg), d);
    for (int l = 0; l < m->n_layers; l++) {
        dvl_siglip_layer *L = &m->layer[l];
        struct {
            dvl_tensor **t;
            const char *name;
            int nd;
            int64_t a, b;
        } tab[] = {
            {&L->ln1_w, "layer_norm1.weight", 1, d, 0},  {&L->ln1_b, "layer_norm1.bias", 1, d, 0},
            /* q, k, v weights, then their biases: consecutive in the store, so
             * the three projections are one product (dvl_linear_cat). */
            {&L->wq, "self_attn.q_proj.weight", 2, d, d},
            {&L->wk, "self_attn.k_proj.weight", 2, d, d},
            {&L->wv, "self_attn.v_proj.weight", 2, d, d},
            {&L->bq, "self_attn.q_proj.bias", 1, d, 0},
            {&L->bk, "self_attn.k_proj.bias", 1, d, 0},
            {&L->bv, "self_attn.v_proj.bias", 1, d, 0},
            {&L->wo, "self_attn.out_proj.weight", 2, d, d},
            {&L->bo, "self_attn.out_proj.bias", 1, d, 0},
            {&L->ln2_w, "layer_norm2.weight", 1, d, 0},  {&L->ln2_b, "layer_norm2.bias", 1, d, 0},
            {&L->fc1_w, "mlp.fc1.weight", 2, I, d},       {&L->fc1_b, "mlp.fc1.bias", 1, I, 0},
            {&L->fc2_w, "mlp.fc2.weight", 2, d, I},       {&L->fc2_b, "mlp.fc2.bias", 1, d, 0},
        };
        for (size_t k = 0; k < sizeof tab / sizeof *tab; k++) {
            snprintf(n, sizeof n, "%sencoder.layers.%d.%s", prefix, l, tab[k].name);
            ADD(*tab[k].t, tab[k].nd, tab[k].a, tab[k].b);
        }
    }
#undef ADD
    if (rc)
        dvl_siglip_free(m);
    return rc;
}

void dvl_siglip_free(dvl_siglip *m)
{
    if (!m)
        return;
    free(m->layer);
    m->layer = NULL;
}

/* Xavier (Glorot) uniform: U(+-sqrt(6 / (fan_in + fan_out))). */
static void xavier(dvl_tensor *w, uint64_t seed)
{
    dvl_init_uniform(w, seed, sqrtf(6.0f / (float)(w->shape[0] + w->shape[1])));
}

void dvl_siglip_init_random(dvl_siglip *m, uint64_t seed)
{
    int64_t d = m->cfg.hidden;
    int64_t fan_in = dvl_numel(m->patch_w) / d;
    dvl_init_normal(m->patch_w, seed, 1.0f / sqrtf((float)fan_in));
    dvl_init_const(m->patch_b, 0.0f);
    dvl_init_normal(m->pos_emb, seed, 1.0f / sqrtf((float)d));
    for (int l = 0; l < m->n_layers; l++) {
        dvl_siglip_layer *L = &m->layer[l];
        dvl_tensor *w[] = {L->wq, L->wk, L->wv, L->wo, L->fc1_w, L->fc2_w};
        dvl_tensor *b[] = {L->bq, L->bk, L->bv, L->bo, L->fc1_b, L->fc2_b, L->ln1_b, L->ln2_b};
        for (size_t i = 0; i < sizeof w / sizeof *w; i++)
            xavier(w[i], seed);
        for (size_t i = 0; i < sizeof b / sizeof *b; i++)
            dvl_init_const(b[i], 0.0f);
        dvl_init_const(L->ln1_w, 1.0f);
        dvl_init_const(L->ln2_w, 1.0f);
    }
}

bool dvl_siglip_trainable(const dvl_siglip *m)
{
    if (m->patch_w->requires_grad || m->patch_b->requires_grad || m->pos_emb->requires_grad)
        return true;
    for (int l = 0; l < m->n_layers; l++) {
        const dvl_siglip_layer *L = &m->layer[l];
        const dvl_tensor *t[] = {L->ln1_w, L->ln1_b, L->wq,    L->bq,    L->wk,    L->bk,
                                 L->wv,    L->bv,    L->wo,    L->bo,    L->ln2_w, L->ln2_b,
                                 L->fc1_w, L->fc1_b, L->fc2_w, L->fc2_b};
        for (size_t i = 0; i < sizeof t / sizeof *t; i++)
            if (t[i]->requires_grad)
                return true;
    }
    return false;
}

/* im2col for a stride-P, P x P conv without padding:
 * cols[(i*G + gy)*G + gx][(c*P + ky)*P + kx] = px[i][c][gy*P + ky][gx*P + kx],
 * the column order of the conv weight [d, C, P, P] flattened. */
static void patchify(float *cols, const float *px, int64_t n, int64_t C, int64_t S, int64_t P)
{
    int64_t G = S / P, K = C * P * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t gy = 0; gy < G; gy++)
            for (int64_t gx = 0; gx < G; gx++) {
                float *row = cols + ((i * G + gy) * G + gx) * K;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t ky = 0; ky < P; ky++)
                        memcpy(row + (c * P + ky) * P,
                               px + ((i * C + c) * S + gy * P + ky) * S + gx * P,
                               (size_t)P * sizeof(float));
            }
}

/* One encoder layer's arguments (dvl_block_fn's user), in the arena: a
 * checkpointed layer runs again during backward. */
typedef struct layer_args {
    const dvl_siglip *m;
    const dvl_siglip_layer *L;
    int64_t n; /* images */
} layer_args;

/* Encoder layer: x + attention(LN(x)), then + MLP(LN(.)), pre-norm as
 * transformers' SiglipEncoderLayer. */
static dvl_tensor *layer_fwd(dvl_ctx *ctx, const void *user, dvl_tensor *x)
{
    const layer_args *la = user;
    const dvl_siglip_layer *L = la->L;
    const dvl_siglip_config *c = &la->m->cfg;
    const int64_t n = la->n;
    int64_t T = dvl_siglip_patches(c), rows = n * T;
    int64_t s4[4] = {n, T, c->heads, c->head_dim}, s2[2] = {rows, c->hidden};
    dvl_tensor *h = dvl_layernorm(ctx, x, L->ln1_w, L->ln1_b, c->ln_eps);
    dvl_tensor *w[3] = {L->wq, L->wk, L->wv}, *b[3] = {L->bq, L->bk, L->bv}, *qkv[3];
    dvl_linear_group(ctx, h, 3, w, b, qkv); /* one product where it can */
    dvl_tensor *q = dvl_reshape(ctx, qkv[0], 4, s4), *k = dvl_reshape(ctx, qkv[1], 4, s4);
    dvl_tensor *v = dvl_reshape(ctx, qkv[2], 4, s4);
    dvl_mask bidir = {.kind = DVL_MASK_BIDIR};
    dvl_tensor *a = dvl_attention(ctx, q, k, v, &bidir, 1.0f / sqrtf((float)c->head_dim));
    x = dvl_add(ctx, x, dvl_linear(ctx, dvl_reshape(ctx, a, 2, s2), L->wo, L->bo));
    h = dvl_layernorm(ctx, x, L->ln2_w, L->ln2_b, c->ln_eps);
    h = dvl_gelu(ctx, dvl_linear(ctx, h, L->fc1_w, L->fc1_b), c->act);
    return dvl_add(ctx, x, dvl_linear(ctx, h, L->fc2_w, L->fc2_b));
}

dvl_tensor *dvl_siglip_forward(dvl_ctx *ctx, const dvl_siglip *m, dvl_tensor *pixels,
                               bool checkpoint)
{
    if (!pixels)
        return NULL;
    const dvl_siglip_config *c = &m->cfg;
    int64_t S = c->image_size, C = c->channels, P = c->patch_size, T = dvl_siglip_patches(c);
    int nd = pixels->ndim;
    char s[64];
    if (pixels->dtype != DVL_F32 || (nd != 3 && nd != 4) || pixels->shape[nd - 3] != C ||
        pixels->shape[nd - 2] != S || pixels->shape[nd - 1] != S)
        return dvl_fail(ctx, "siglip: pixels %s %s must be f32 [n, %lld, %lld, %lld]",
                        dvl_tname(pixels), dvl_shape_str(pixels, s, sizeof s), (long long)C,
                        (long long)S, (long long)S);
    if (pixels->device != dvl_ctx_device(ctx))
        return dvl_fail(ctx, "siglip: pixels %s are on device %d, the context on %d",
                        dvl_tname(pixels), (int)pixels->device, (int)dvl_ctx_device(ctx));
    int64_t n = nd == 4 ? pixels->shape[0] : 1;
    if (n < 1)
        return dvl_fail(ctx, "siglip: no images in %s", dvl_tname(pixels));
    /* A frozen tower records nothing (see siglip.h). */
    bool prev = dvl_grad_enabled(ctx);
    if (!dvl_siglip_trainable(m))
        dvl_set_grad_enabled(ctx, false);
    dvl_tensor *x = dvl_new2(ctx, n * T, C * P * P);
    if (x) {
        switch (pixels->device) {
        case DVL_CPU: patchify(dvl_f32(x), dvl_f32(pixels), n, C, S, P); break;
#ifdef DVL_HAVE_CUDA
        case DVL_CUDA:
            dvl_cuda_patchify(dvl_f32(x), dvl_f32(pixels), n, C, S, P);
            if (!dvl_ctx_check(ctx, "siglip: patch extraction"))
                x = NULL;
            break;
#endif
        default: x = dvl_fail(ctx, "siglip: patch extraction: device not supported");
        }
    }
    int64_t ws[2] = {c->hidden, C * P * P};
    x = dvl_linear(ctx, x, dvl_reshape(ctx, m->patch_w, 2, ws), m->patch_b);
    /* Position index of every row: its patch index within its image. */
    int32_t *idx = dvl_alloc(ctx, (size_t)(n * T) * sizeof *idx);
    if (idx) {
        for (int64_t i = 0; i < n * T; i++)
            idx[i] = (int32_t)(i % T);
        x = dvl_add(ctx, x, n == 1 ? m->pos_emb : dvl_gather_rows(ctx, m->pos_emb, idx, n * T));
    } else {
        x = NULL;
    }
    for (int l = 0; l < m->n_layers && x; l++) {
        layer_args *a = dvl_alloc(ctx, sizeof *a);
        if (!a) {
            x = NULL;
            break;
        }
        *a = (layer_args){m, &m->layer[l], n};
        x = checkpoint ? dvl_checkpoint(ctx, layer_fwd, a, x) : layer_fwd(ctx, a, x);
    }
    dvl_set_grad_enabled(ctx, prev);
    return x;
}
