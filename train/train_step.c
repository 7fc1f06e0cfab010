/* Forward pass and loss of one micro batch, per stage (train_step.h). */
#include "train_step.h"

#include <stdlib.h>

#include "models/flops.h"

/* Token embeddings of ids [nseq * T] with the images' feature rows spliced
 * into their placeholders. Each row of T positions is cut into segments of
 * seg positions that each hold one copy of the sample's image: seg = T for
 * an ordinary sequence, seg = L for [x_t ; x_0], where both halves carry the
 * image at the same positions (DiffusionVL embeds the clean sequence once,
 * images included, and builds x_t from it by replacing masked rows with the
 * mask embedding, so the image rows of both halves are the same features;
 * gather_rows' backward adds the two halves' gradients, as autograd does
 * there). The vision tower runs once per image. */
static dvl_tensor *embed(dvl_ctx *ctx, train_model *tm, const int32_t *ids, int64_t nseq,
                         int64_t T, int64_t seg, const dvl_batch *b, dvl_err *err)
{
    int64_t n = nseq * T;
    if (!tm->is_vlm) {
        if (b->n_images > 0) {
            dvl_errf(err, DVL_EINVAL,
                     "data: batch has %lld image(s) but the model is a language model (%s)",
                     (long long)b->n_images, dvl_arch_name(tm->m.cfg.arch));
            return NULL;
        }
        return dvl_lm_embed(ctx, tm->lm, ids, n);
    }
    const dvl_vlm *v = &tm->m.vlm;
    int64_t P = tm->patches, k = 0;
    for (int64_t i = 0; i < n; i++)
        k += ids[i] == tm->image_token;
    if (k == 0)
        return dvl_lm_embed(ctx, tm->lm, ids, n);
    int32_t *rows = dvl_alloc(ctx, (size_t)k * sizeof *rows);
    int32_t *feat = dvl_alloc(ctx, (size_t)k * sizeof *feat);
    int32_t *tok = dvl_alloc(ctx, (size_t)n * sizeof *tok);
    if (!rows || !feat || !tok)
        return NULL;
    /* Placeholder ids need not be vocabulary rows (LLaVA's -200): look them
     * up as 0, their rows are replaced anyway. */
    bool sentinel = tm->image_token < 0 || tm->image_token >= tm->lm->cfg.vocab;
    int64_t j = 0, patch = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i % seg == 0)
            patch = 0;
        tok[i] = ids[i];
        if (ids[i] != tm->image_token)
            continue;
        int64_t s = i / T;
        int32_t img = b->image_of[s];
        if (img < 0 || patch >= P) {
            dvl_errf(err, DVL_EINVAL,
                     "data: sample %lld has %s image placeholder (id %d) at position %lld "
                     "(the model takes %lld rows per image)",
                     (long long)b->sample[s], img < 0 ? "an" : "an extra", tm->image_token,
                     (long long)(i % T), (long long)P);
            return NULL;
        }
        rows[j] = (int32_t)i;
        feat[j] = (int32_t)(img * P + patch);
        j++;
        patch++;
        if (sentinel)
            tok[i] = 0;
    }
    int64_t shape[4] = {b->n_images, v->cfg.vision.channels, b->image_size, b->image_size};
    dvl_tensor *px = dvl_wrap(ctx, DVL_F32, 4, shape, b->images);
    dvl_tensor *f = dvl_siglip_forward(ctx, &v->vision, px, tm->checkpoint);
    f = dvl_connector_forward(ctx, &v->connector, f);
    dvl_tensor *x = dvl_lm_embed(ctx, tm->lm, tok, n);
    return dvl_scatter_rows(ctx, x, dvl_gather_rows(ctx, f, feat, k), rows);
}

/* Rows with a label, of n x len labels, from position `from` of each. */
static int64_t scored(const int32_t *labels, int64_t n, int64_t len, int64_t from)
{
    int64_t k = 0;
    for (int64_t s = 0; s < n; s++)
        for (int64_t t = from; t < len; t++)
            k += labels[s * len + t] != DVL_IGNORE_INDEX;
    return k;
}

/* ar and stage 1: next-token cross-entropy with the shift, each sample's
 * supervised targets weighted 1 / (its count * m), times scale. */
static dvl_tensor *forward_ar(dvl_ctx *ctx, train_model *tm, const dvl_batch *b, float scale,
                              double *flops, dvl_err *err)
{
    int64_t n = b->n, T = b->len;
    dvl_tensor *x = embed(ctx, tm, b->ids, n, T, T, b, err);
    dvl_mask mask = dvl_lm_default_mask(&tm->lm->cfg);
    mask.key_valid = b->valid;
    /* With the shift, labels[1..T-1] of each row are the scored ones. */
    *flops = dvl_model_flops(&tm->m, &(dvl_flops_work){n, b->seq_len, &mask,
                                                        scored(b->labels, n, T, 1), b->n_images});
    dvl_lm_input li = {.batch = n, .seq = T, .embeds = x, .pos = b->pos, .mask = &mask,
                       .checkpoint = tm->checkpoint};
    dvl_tensor *h = x ? dvl_lm_forward(ctx, tm->lm, &li) : NULL;
    float *w = dvl_alloc(ctx, (size_t)(n * T) * sizeof *w);
    if (!h || !w)
        return NULL;
    /* With the shift, position t is scored on labels[t+1]; weight[t+1] goes
     * with that label (lm.h), so a sample's targets are labels[1..T-1]. */
    for (int64_t s = 0; s < n; s++) {
        const int32_t *lab = b->labels + s * T;
        int64_t cnt = 0;
        for (int64_t t = 1; t < T; t++)
            cnt += lab[t] != DVL_IGNORE_INDEX;
        float ws = cnt ? scale / (float)(cnt * n) : 0.0f;
        for (int64_t t = 0; t < T; t++)
            w[s * T + t] = t > 0 && lab[t] != DVL_IGNORE_INDEX ? ws : 0.0f;
    }
    return dvl_lm_loss(ctx, tm->lm, h, n, T, b->labels, w, true);
}

/* Stage 2: the BD3-LM objective on [x_t ; x_0] (diffusion/batch.h). */
static dvl_tensor *forward_diff(dvl_ctx *ctx, train_model *tm, const dvl_batch *b, float scale,
                                const dvl_diff_draw *draw, double *flops, dvl_err *err)
{
    int64_t n = b->n, T = b->len, B = tm->diff.block_size;
    int64_t capL = dvl_diff_aligned_len(T, (int)B);
    if (!tm->db || tm->db->cap_n < n || tm->db->cap_L < capL) {
        dvl_diff_batch_free(tm->db);
        /* Room to grow, so that a slightly longer batch later does not
         * reallocate. */
        tm->db = dvl_diff_batch_new(n, capL + capL / 4 + B, err);
        if (!tm->db)
            return NULL;
    }
    dvl_diff_seq *seqs = dvl_alloc(ctx, (size_t)n * sizeof *seqs);
    if (!seqs)
        return NULL;
    for (int64_t s = 0; s < n; s++)
        seqs[s] = (dvl_diff_seq){b->ids + s * T, b->labels + s * T, b->seq_len[s]};
    dvl_diff_batch *db = tm->db;
    if (dvl_diff_make_batch(db, &tm->diff, draw, seqs, n, 0, err))
        return NULL;
    int64_t L = db->L;
    dvl_tensor *x = embed(ctx, tm, db->ids, n, 2 * L, L, b, err);
    dvl_mask mask = dvl_diff_attn_mask(db, (int)B);
    *flops = dvl_model_flops(
        &tm->m, &(dvl_flops_work){n, db->len, &mask, scored(db->labels, n, L, 0), b->n_images});
    dvl_lm_input li = {.batch = n, .seq = 2 * L, .embeds = x, .pos = db->pos, .mask = &mask,
                       .checkpoint = tm->checkpoint};
    dvl_tensor *h = x ? dvl_lm_forward(ctx, tm->lm, &li) : NULL;
    /* Logits from the noisy half only (DiffusionVL slices
     * hidden_states[:, :L] before lm_head). */
    dvl_tensor *hn = dvl_gather_rows(ctx, h, db->noisy_rows, n * L);
    float *w = dvl_alloc(ctx, (size_t)(n * L) * sizeof *w);
    if (!hn || !w)
        return NULL;
    for (int64_t i = 0; i < n * L; i++)
        w[i] = db->weight[i] * scale;
    return dvl_lm_loss(ctx, tm->lm, hn, n, L, db->labels, w, false);
}

dvl_tensor *train_forward(dvl_ctx *ctx, train_model *tm, const train_cfg *cfg,
                          const dvl_batch *b, float scale, const dvl_diff_draw *draw,
                          double *flops, dvl_err *err)
{
    err->code = DVL_OK;
    double f = 0;
    dvl_tensor *loss = cfg->stage == STAGE_2 ? forward_diff(ctx, tm, b, scale, draw, &f, err)
                                             : forward_ar(ctx, tm, b, scale, &f, err);
    if (flops)
        *flops = f;
    if (!loss && err->code == DVL_OK) {
        const dvl_err *e = dvl_ctx_err(ctx);
        dvl_errf(err, e && e->code ? e->code : DVL_EINVAL, "%s",
                 e && e->code ? e->msg : "forward failed");
    }
    return loss;
}
