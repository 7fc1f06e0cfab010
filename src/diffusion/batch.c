#include "diffusion/batch.h"

#include <stdlib.h>

#include "diffusion/noise.h"

static void cfg_common(dvl_diff_cfg *c)
{
    /* DiffusionVL train.py get_model: bd3lm_sampling_eps_min 1e-3,
     * bd3lm_sampling_eps_max 1.0, bd3lm_antithetic_sampling True;
     * bd3lm_block_aligned_eos defaults to True. B = 8: BD3LM_BLOCK_SIZE in
     * DiffusionVL's finetune and eval scripts (train.py's field default is
     * 4). */
    c->block_size = 8;
    c->eps_min = 1e-3;
    c->eps_max = 1.0;
    c->antithetic = true;
    c->block_align_eos = true;
    c->shift_logits = false;
}

void dvl_diff_cfg_qwen(dvl_diff_cfg *c)
{
    cfg_common(c);
    c->mask_id = DVL_QWEN_MASK_ID;
    c->pad_id = DVL_QWEN_PAD_ID;
    c->eos_id = DVL_QWEN_IM_END_ID;
}

void dvl_diff_cfg_llada(dvl_diff_cfg *c)
{
    cfg_common(c);
    c->mask_id = DVL_LLADA_MASK_ID;
    c->pad_id = DVL_LLADA_PAD_ID;
    c->eos_id = DVL_LLADA_EOT_ID;
}

int64_t dvl_diff_aligned_len(int64_t len, int block_size)
{
    return (len + block_size - 1) / block_size * block_size;
}

int dvl_diff_block_align(int32_t *ids, int32_t *labels, int64_t *len, int64_t cap,
                         int block_size, int32_t eos_id, dvl_err *err)
{
    if (block_size < 1)
        return dvl_errf(err, DVL_EINVAL, "diffusion: block_size %d must be >= 1", block_size);
    int64_t to = dvl_diff_aligned_len(*len, block_size);
    if (to > cap)
        return dvl_errf(err, DVL_EINVAL,
                        "diffusion: block-aligning a sequence of %lld tokens to %lld needs "
                        "capacity %lld, have %lld",
                        (long long)*len, (long long)to, (long long)to, (long long)cap);
    for (int64_t i = *len; i < to; i++) {
        ids[i] = eos_id;
        labels[i] = eos_id;
    }
    *len = to;
    return DVL_OK;
}

dvl_diff_batch *dvl_diff_batch_new(int64_t cap_n, int64_t cap_L, dvl_err *err)
{
    if (cap_n < 1 || cap_L < 1 || cap_n * 2 * cap_L > INT32_MAX) {
        dvl_errf(err, DVL_EINVAL, "diffusion: batch capacity %lld x %lld out of range",
                 (long long)cap_n, (long long)cap_L);
        return NULL;
    }
    dvl_diff_batch *b = calloc(1, sizeof *b);
    size_t nl = (size_t)(cap_n * cap_L), n2l = 2 * nl;
    if (b) {
        b->cap_n = cap_n;
        b->cap_L = cap_L;
        b->ids = malloc(n2l * sizeof *b->ids);
        b->pos = malloc(n2l * sizeof *b->pos);
        b->key_valid = malloc(n2l);
        b->labels = malloc(nl * sizeof *b->labels);
        b->weight = malloc(nl * sizeof *b->weight);
        b->noisy_rows = malloc(nl * sizeof *b->noisy_rows);
        b->masked = malloc(nl);
        /* nblocks <= cap_L (B >= 1). */
        b->t = malloc(nl * sizeof *b->t);
        b->len = malloc((size_t)cap_n * sizeof *b->len);
        b->n_sup = malloc((size_t)cap_n * sizeof *b->n_sup);
    }
    if (!b || !b->ids || !b->pos || !b->key_valid || !b->labels || !b->weight ||
        !b->noisy_rows || !b->masked || !b->t || !b->len || !b->n_sup) {
        dvl_diff_batch_free(b);
        dvl_errf(err, DVL_ENOMEM, "diffusion: out of memory for a batch of %lld x %lld",
                 (long long)cap_n, (long long)cap_L);
        return NULL;
    }
    return b;
}

void dvl_diff_batch_free(dvl_diff_batch *b)
{
    if (!b)
        return;
    free(b->ids);
    free(b->pos);
    free(b->key_valid);
    free(b->labels);
    free(b->weight);
    free(b->noisy_rows);
    free(b->masked);
    free(b->t);
    free(b->len);
    free(b->n_sup);
    free(b);
}

static int check_cfg(const dvl_diff_cfg *c, dvl_err *err)
{
    if (c->block_size < 1)
        return dvl_errf(err, DVL_EINVAL, "diffusion: block_size %d must be >= 1", c->block_size);
    /* t = 0 would give an infinite loss weight 1/t. */
    if (!(c->eps_min > 0.0 && c->eps_min <= c->eps_max && c->eps_max <= 1.0))
        return dvl_errf(err, DVL_EINVAL,
                        "diffusion: noise range [eps_min %g, eps_max %g] must satisfy "
                        "0 < eps_min <= eps_max <= 1",
                        c->eps_min, c->eps_max);
    return DVL_OK;
}

/* Token j of sample s after block alignment: the sequence itself, then
 * eos_id (supervised) up to the aligned length. */
static int32_t tok_at(const dvl_diff_seq *q, const dvl_diff_cfg *c, int64_t j)
{
    return j < q->len ? q->ids[j] : c->eos_id;
}

static int32_t label_at(const dvl_diff_seq *q, const dvl_diff_cfg *c, int64_t j)
{
    return j < q->len ? q->labels[j] : c->eos_id;
}

int dvl_diff_make_batch(dvl_diff_batch *b, const dvl_diff_cfg *cfg, const dvl_diff_draw *draw,
                        const dvl_diff_seq *seqs, int64_t n, int64_t L, dvl_err *err)
{
    int rc = check_cfg(cfg, err);
    if (rc)
        return rc;
    const int B = cfg->block_size;
    if (n < 1 || n > b->cap_n)
        return dvl_errf(err, DVL_EINVAL, "diffusion: batch of %lld sequences, capacity %lld",
                        (long long)n, (long long)b->cap_n);
    static const dvl_diff_draw whole = {0};
    if (!draw)
        draw = &whole;
    const int64_t G = draw->global_n ? draw->global_n : n;
    if (!draw->index && G < n)
        return dvl_errf(err, DVL_EINVAL, "diffusion: global batch of %lld samples, this batch "
                        "has %lld", (long long)G, (long long)n);
    int64_t need = 0;
    for (int64_t s = 0; s < n; s++) {
        const dvl_diff_seq *q = &seqs[s];
        const int64_t g = draw->index ? draw->index[s] : s;
        if (g < 0 || g >= G)
            return dvl_errf(err, DVL_EINVAL,
                            "diffusion: sequence %lld: global index %lld outside the global "
                            "batch [0, %lld)",
                            (long long)s, (long long)g, (long long)G);
        if (q->len < 0 || (q->len > 0 && (!q->ids || !q->labels)))
            return dvl_errf(err, DVL_EINVAL, "diffusion: sequence %lld: bad length %lld or "
                            "missing ids/labels", (long long)s, (long long)q->len);
        /* The clean target is labels[i]; the noisy input masks ids[i]. They
         * must be the same token, or labels are shifted (AR style). */
        for (int64_t i = 0; i < q->len; i++)
            if (q->labels[i] != DVL_IGNORE_INDEX && q->labels[i] != q->ids[i])
                return dvl_errf(err, DVL_EINVAL,
                                "diffusion: sequence %lld position %lld: label %d differs from "
                                "token %d (labels must be unshifted: label = token or %d)",
                                (long long)s, (long long)i, q->labels[i], q->ids[i],
                                DVL_IGNORE_INDEX);
        int64_t len = cfg->block_align_eos ? dvl_diff_aligned_len(q->len, B) : q->len;
        b->len[s] = len;
        if (len > need)
            need = len;
    }
    need = dvl_diff_aligned_len(need, B);
    if (need == 0)
        need = B; /* all sequences empty: one block of padding */
    if (L == 0)
        L = need;
    if (L % B != 0 || L < need)
        return dvl_errf(err, DVL_EINVAL,
                        "diffusion: L %lld must be a multiple of block_size %d and at least "
                        "%lld (the longest sequence, aligned)",
                        (long long)L, B, (long long)need);
    if (L > b->cap_L)
        return dvl_errf(err, DVL_EINVAL, "diffusion: L %lld exceeds the batch capacity %lld",
                        (long long)L, (long long)b->cap_L);
    b->n = n;
    b->L = L;
    b->nblocks = L / B;

    b->n_masked = 0;
    b->n_labelled = 0;
    for (int64_t s = 0; s < n; s++) {
        const dvl_diff_seq *q = &seqs[s];
        const int64_t len = b->len[s], g = draw->index ? draw->index[s] : s;
        int32_t *xt = b->ids + s * 2 * L, *x0 = xt + L;
        int32_t *pos = b->pos + s * 2 * L;
        uint8_t *kv = b->key_valid + s * 2 * L;
        int32_t *lab = b->labels + s * L;
        float *w = b->weight + s * L;
        uint8_t *msk = b->masked + s * L;
        float *ts = b->t + s * b->nblocks;

        /* The sample's own stream: t of its real blocks first, then its
         * masks (the order bd3lms and DiffusionVL draw in, torch.rand((batch,
         * blocks)) before torch.rand(batch, L), restricted to one sample).
         * Padding blocks get no draw, so the same sample padded to another
         * L, in another micro batch or on another rank, draws the same. */
        dvl_rng rng;
        dvl_rng_seed(&rng, dvl_diff_sample_seed(draw->seed, g));
        const int64_t nb = (len + B - 1) / B;
        dvl_diff_sample_t(&rng, g, G, nb, cfg->antithetic, cfg->eps_min, cfg->eps_max, ts);
        for (int64_t k = nb; k < b->nblocks; k++)
            ts[k] = 0.0f;

        /* The clean half, with labels staged in lab (overwritten below). */
        int64_t n_sup = 0;
        for (int64_t j = 0; j < L; j++) {
            bool real = j < len;
            x0[j] = real ? tok_at(q, cfg, j) : cfg->pad_id;
            lab[j] = real ? label_at(q, cfg, j) : DVL_IGNORE_INDEX;
            n_sup += lab[j] != DVL_IGNORE_INDEX;
            pos[j] = pos[L + j] = (int32_t)j;
            kv[j] = kv[L + j] = real;
        }
        b->n_sup[s] = n_sup;
        /* The noisy half: padding is unsupervised, so never masked. */
        b->n_masked += dvl_diff_mask(&rng, x0, lab, L, ts, B, cfg->mask_id, xt, msk);

        /* Weight 1/(t n_sup N): the 1/t of LogLinearNoise's loss scale, the
         * per-sample mean over supervised tokens (n_sup clamped to 1, as
         * DiffusionVL's noisy_data_length) and the batch mean. */
        const double denom_s = (double)(n_sup > 0 ? n_sup : 1) * (double)n;
        for (int64_t i = 0; i < L; i++) {
            /* Row i scores position p: p = i, or i + 1 with shift_logits. */
            int64_t p = cfg->shift_logits ? i + 1 : i;
            if (p < L && msk[p]) {
                lab[i] = x0[p];
                w[i] = (float)(1.0 / ((double)ts[p / B] * denom_s));
                b->n_labelled++;
            } else {
                lab[i] = DVL_IGNORE_INDEX;
                w[i] = 0.0f;
            }
            b->noisy_rows[s * L + i] = (int32_t)(s * 2 * L + i);
        }
    }
    return DVL_OK;
}

dvl_mask dvl_diff_attn_mask(const dvl_diff_batch *b, int block_size)
{
    dvl_mask m = {0};
    m.kind = DVL_MASK_BLOCK_DIFF;
    m.block_size = block_size;
    m.half = b->L;
    m.q_offset = 0;
    m.key_valid = b->key_valid;
    return m;
}
