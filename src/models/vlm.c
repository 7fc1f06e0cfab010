/* The LLaVA-OneVision style VLM (vlm.h). */
#include <string.h>

#include "models/vlm.h"

int dvl_vlm_declare(dvl_vlm *m, const dvl_vlm_config *cfg, dvl_params *p, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    int rc = dvl_lm_declare(&m->lm, &cfg->lm, p, err);
    if (!rc)
        rc = dvl_connector_declare(&m->connector, cfg->vision.hidden, cfg->lm.hidden, p,
                                   DVL_VLM_CONNECTOR_PREFIX, err);
    if (!rc)
        rc = dvl_siglip_declare(&m->vision, &cfg->vision, p, DVL_VLM_VISION_PREFIX, err);
    if (rc)
        dvl_vlm_free(m);
    return rc;
}

void dvl_vlm_free(dvl_vlm *m)
{
    if (!m)
        return;
    dvl_lm_free(&m->lm);
    dvl_siglip_free(&m->vision);
}

void dvl_vlm_init_random(dvl_vlm *m, uint64_t seed)
{
    dvl_lm_init_random(&m->lm, seed, 0.02f);
    dvl_connector_init_random(&m->connector, seed);
    dvl_siglip_init_random(&m->vision, seed);
}

int64_t dvl_vlm_expand_ids(const dvl_vlm_config *cfg, const int32_t *ids, int64_t n,
                           int32_t *out)
{
    int64_t P = dvl_siglip_patches(&cfg->vision), k = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t reps = ids[i] == cfg->image_token_index ? P : 1;
        for (int64_t r = 0; r < reps; r++, k++)
            if (out)
                out[k] = ids[i];
    }
    return k;
}

int64_t dvl_vlm_count_image_tokens(const dvl_vlm_config *cfg, const int32_t *ids, int64_t n)
{
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        k += ids[i] == cfg->image_token_index;
    return k;
}

dvl_tensor *dvl_vlm_embed(dvl_ctx *ctx, const dvl_vlm *m, const dvl_vlm_input *in)
{
    const dvl_vlm_config *c = &m->cfg;
    int64_t n = in->batch * in->seq, P = dvl_siglip_patches(&c->vision);
    int64_t n_img = in->pixels ? (in->pixels->ndim == 4 ? in->pixels->shape[0] : 1) : 0;
    int64_t k = dvl_vlm_count_image_tokens(c, in->ids, n);
    if (k != n_img * P)
        return dvl_fail(ctx,
                        "vlm: %lld image placeholder tokens (id %d) but %lld image(s) of %lld "
                        "patches",
                        (long long)k, c->image_token_index, (long long)n_img, (long long)P);
    const int32_t *ids = in->ids;
    int32_t *rows = k ? dvl_alloc(ctx, (size_t)k * sizeof *rows) : NULL;
    if (k && !rows)
        return NULL;
    if (k) {
        /* Placeholder rows in order; their ids are looked up as 0 when the
         * placeholder is not a vocabulary id (the rows are replaced). */
        bool sentinel = c->image_token_index < 0 || c->image_token_index >= c->lm.vocab;
        int32_t *e = sentinel ? dvl_alloc(ctx, (size_t)n * sizeof *e) : NULL;
        if (sentinel && !e)
            return NULL;
        for (int64_t i = 0, j = 0; i < n; i++) {
            bool img = in->ids[i] == c->image_token_index;
            if (img)
                rows[j++] = (int32_t)i;
            if (e)
                e[i] = img ? 0 : in->ids[i];
        }
        if (e)
            ids = e;
    }
    dvl_tensor *x = dvl_lm_embed(ctx, &m->lm, ids, n);
    if (!k)
        return x;
    dvl_tensor *f = dvl_siglip_forward(ctx, &m->vision, in->pixels, false);
    return dvl_scatter_rows(ctx, x, dvl_connector_forward(ctx, &m->connector, f), rows);
}

dvl_tensor *dvl_vlm_forward(dvl_ctx *ctx, const dvl_vlm *m, const dvl_vlm_input *in)
{
    dvl_tensor *x = dvl_vlm_embed(ctx, m, in);
    if (!x)
        return NULL;
    dvl_mask causal = {.kind = DVL_MASK_CAUSAL};
    dvl_lm_input li = {.batch = in->batch,
                       .seq = in->seq,
                       .embeds = x,
                       .pos = in->pos,
                       .mask = in->mask ? in->mask : &causal};
    return dvl_lm_forward(ctx, &m->lm, &li);
}

dvl_tensor *dvl_vlm_loss(dvl_ctx *ctx, const dvl_vlm *m, dvl_tensor *h, const dvl_vlm_input *in,
                         const int32_t *labels, const float *weight, bool shift)
{
    int64_t n = in->batch * in->seq;
    int32_t *lab = dvl_alloc(ctx, (size_t)n * sizeof *lab);
    if (!lab)
        return NULL;
    for (int64_t i = 0; i < n; i++)
        lab[i] = in->ids[i] == m->cfg.image_token_index ? DVL_IGNORE_INDEX : labels[i];
    return dvl_lm_loss(ctx, &m->lm, h, in->batch, in->seq, lab, weight, shift);
}
