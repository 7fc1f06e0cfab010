/* Generation: block diffusion with KV cache, diffusion without cache, and
 * autoregressive decoding (generate.h). */
#include "diffusion/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void dvl_gen_opts_default(dvl_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->mode = DVL_GEN_BLOCK;
    o->block_size = 8;
    o->steps = 8;
    dvl_sampler_default(&o->sampler);
    o->max_new = 128;
    o->mask_id = -1;
    o->full_mask = DVL_MASK_BIDIR;
}

void dvl_gen_result_free(dvl_gen_result *r)
{
    if (!r)
        return;
    free(r->ids);
    r->ids = NULL;
    r->n = 0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* State of one generation. */
typedef struct gen {
    const dvl_lm *lm;
    const dvl_gen_opts *o;
    dvl_ctx *ctx;
    int64_t P, d, V;
    float *pe;          /* [P, d] prompt embeddings (image rows spliced in) */
    dvl_kv_cache kv;
    dvl_gen_result *r;
    int64_t r_cap;
    dvl_err *err;
} gen;

/* The context's error as the caller's. */
static int ctx_fail(gen *g)
{
    const dvl_err *e = dvl_ctx_err(g->ctx);
    return dvl_errf(g->err, e->code ? e->code : DVL_EINVAL, "%s", e->msg);
}

/* The prompt's input embeddings, once: token rows, and for a VLM the
 * connector outputs at the image placeholder rows. */
static int embed_prompt(gen *g, const dvl_model *m, const int32_t *prompt, const float *pixels,
                        int64_t n_img)
{
    dvl_tensor *x;
    if (m->cfg.arch == DVL_ARCH_VLM) {
        const dvl_siglip_config *vc = &m->cfg.vision;
        int64_t s4[4] = {n_img, vc->channels, vc->image_size, vc->image_size};
        dvl_vlm_input in = {.batch = 1,
                            .seq = g->P,
                            .ids = prompt,
                            .pixels = n_img ? dvl_wrap(g->ctx, DVL_F32, 4, s4, (void *)pixels)
                                            : NULL};
        x = dvl_vlm_embed(g->ctx, &m->vlm, &in);
    } else {
        x = dvl_lm_embed(g->ctx, g->lm, prompt, g->P);
    }
    if (!x)
        return ctx_fail(g);
    g->pe = malloc((size_t)(g->P * g->d) * sizeof *g->pe);
    if (!g->pe)
        return dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory for the prompt");
    memcpy(g->pe, dvl_f32(x), (size_t)(g->P * g->d) * sizeof *g->pe);
    dvl_ctx_reset(g->ctx);
    return DVL_OK;
}

/* Logits [n_out, V] of rows [out0, out0 + n_out) of one forward pass over
 * the tokens ids[0..T) at absolute positions [start, start + T): prompt
 * positions take the saved prompt embeddings, the rest their token's. With
 * a cache, start must be its len (the rows run after the cached ones).
 * n_out 0: no logits (a pass that only fills the cache); returns a non-NULL
 * dummy then. NULL on error (err set). Valid until the context is reset. */
static const float *forward(gen *g, const int32_t *ids, int64_t start, int64_t T,
                            dvl_mask_kind kind, bool cached, bool store, int64_t out0,
                            int64_t n_out)
{
    dvl_ctx *ctx = g->ctx;
    int32_t *tok = dvl_alloc(ctx, (size_t)T * sizeof *tok);
    if (!tok) {
        ctx_fail(g);
        return NULL;
    }
    /* Prompt rows are looked up as id 0 and overwritten: a VLM's image
     * placeholder need not be a vocabulary id. */
    for (int64_t t = 0; t < T; t++)
        tok[t] = start + t < g->P ? 0 : ids[t];
    dvl_tensor *x = dvl_lm_embed(ctx, g->lm, tok, T);
    if (x)
        for (int64_t t = 0; t < T && start + t < g->P; t++)
            memcpy(dvl_f32(x) + t * g->d, g->pe + (start + t) * g->d,
                   (size_t)g->d * sizeof(float));
    dvl_mask mask = {.kind = kind, .block_size = g->o->block_size};
    dvl_lm_input in = {.batch = 1,
                       .seq = T,
                       .embeds = x,
                       .mask = &mask,
                       .cache = cached ? &g->kv : NULL,
                       .cache_store = store};
    dvl_tensor *h = x ? dvl_lm_forward(ctx, g->lm, &in) : NULL;
    g->r->forwards++;
    g->r->forward_tokens += T;
    static const float none = 0.0f;
    if (h && n_out == 0)
        return &none;
    dvl_tensor *z = dvl_lm_logits(ctx, g->lm, dvl_slice_rows(ctx, h, out0, n_out));
    if (!z) {
        ctx_fail(g);
        return NULL;
    }
    return dvl_f32(z);
}

/* Append new final tokens: cut at the first stop id (which ends the
 * generation) and at max_new. Returns true when generation is over. */
static bool emit(gen *g, const int32_t *ids, int64_t n)
{
    dvl_gen_result *r = g->r;
    int64_t keep = n;
    for (int64_t i = 0; i < n && keep == n; i++)
        for (int s = 0; s < g->o->n_stop; s++)
            if (ids[i] == g->o->stop_ids[s]) {
                keep = i;
                r->stopped = true;
                break;
            }
    if (keep > g->o->max_new - r->n)
        keep = g->o->max_new - r->n;
    memcpy(r->ids + r->n, ids, (size_t)keep * sizeof *ids);
    r->n += keep;
    if (g->o->on_tokens && keep > 0)
        g->o->on_tokens(g->o->user, ids, keep);
    return r->stopped || r->n >= g->o->max_new;
}

/* DVL_GEN_BLOCK (cached) and DVL_GEN_FULL (not): the block loop of
 * generate_with_bd3lm. */
static int run_blocks(gen *g, const int32_t *prompt, bool cached)
{
    const dvl_gen_opts *o = g->o;
    const int64_t B = o->block_size, P = g->P;
    const int S = o->steps;
    const int64_t end = (P + o->max_new + B - 1) / B * B;
    int32_t *seq = malloc((size_t)end * sizeof *seq);
    int *sched = malloc((size_t)S * sizeof *sched);
    dvl_decoder *dec = dvl_decoder_new(&o->sampler, g->V, (int)B, g->err);
    int rc = DVL_OK;
    if (!seq || !sched || !dec) {
        rc = dec ? dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory") : g->err->code;
        goto done;
    }
    memcpy(seq, prompt, (size_t)P * sizeof *seq);
    for (int64_t i = P; i < end; i++)
        seq[i] = o->mask_id;
    /* DiffusionVL: get_bd3lm_num_transfer_tokens(block_size, steps), each
     * step's count clamped to the masks left (docs/diffusion.md). */
    dvl_transfer_schedule((int)B, S, sched);
    dvl_rng rng;
    dvl_rng_seed(&rng, o->seed);
    int64_t b0 = P / B * B;
    if (cached && (rc = dvl_kv_cache_init(&g->kv, &g->lm->cfg, 1, end, g->err)))
        goto done;
    if (cached && b0 > 0) {
        /* Prefill: the complete prompt blocks under the block-causal rule. */
        if (!forward(g, seq, 0, b0, DVL_MASK_BLOCK_CAUSAL, true, true, 0, 0)) {
            rc = g->err->code;
            goto done;
        }
        dvl_ctx_reset(g->ctx);
    }
    for (; b0 < end; b0 += B) {
        int32_t *x = seq + b0;
        for (int s = 0;; s++) {
            int masks = 0;
            for (int64_t j = 0; j < B; j++)
                masks += x[j] == o->mask_id;
            if (!masks)
                break;
            int k = s < S ? sched[s] : masks;
            const float *z =
                cached ? forward(g, x, b0, B, DVL_MASK_BLOCK_CAUSAL, true, false, 0, B)
                       : forward(g, seq, 0, end, o->full_mask, false, false, b0, B);
            if (!z) {
                rc = g->err->code;
                goto done;
            }
            /* The mask token is never a proposal: a committed mask would
             * stay masked (a trained model gives it ~0 probability; a
             * random one need not). */
            float *zw = (float *)z;
            for (int64_t j = 0; j < B; j++)
                zw[j * g->V + o->mask_id] = -INFINITY;
            dvl_decode_step(dec, x, (int)B, o->mask_id, z, k, &rng);
            dvl_ctx_reset(g->ctx);
        }
        int64_t lo = b0 > P ? b0 : P;
        if (emit(g, seq + lo, b0 + B - lo))
            break; /* the last block's keys are never needed: no store pass */
        if (cached) {
            /* The finished block joins the cache (its keys/values are
             * recomputed from the committed tokens, as generate_with_bd3lm's
             * last iteration does). */
            if (!forward(g, x, b0, B, DVL_MASK_BLOCK_CAUSAL, true, true, 0, 0)) {
                rc = g->err->code;
                goto done;
            }
            dvl_ctx_reset(g->ctx);
        }
    }
done:
    free(seq);
    free(sched);
    dvl_decoder_free(dec);
    return rc;
}

/* DVL_GEN_AR: prompt into the cache under the causal rule, then one token
 * per forward. */
static int run_ar(gen *g, const int32_t *prompt)
{
    const dvl_gen_opts *o = g->o;
    int rc = dvl_kv_cache_init(&g->kv, &g->lm->cfg, 1, g->P + o->max_new, g->err);
    void *scratch = malloc(dvl_sample_scratch_bytes(g->V));
    if (rc || !scratch) {
        free(scratch);
        return rc ? rc : dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory");
    }
    dvl_rng rng;
    dvl_rng_seed(&rng, o->seed);
    const float *z = forward(g, prompt, 0, g->P, DVL_MASK_CAUSAL, true, true, g->P - 1, 1);
    int64_t pos = g->P;
    while (z) {
        int32_t tok = dvl_sample_token(z, g->V, &o->sampler, &rng, scratch, NULL);
        dvl_ctx_reset(g->ctx);
        if (emit(g, &tok, 1))
            break;
        z = forward(g, &tok, pos++, 1, DVL_MASK_CAUSAL, true, true, 0, 1);
    }
    free(scratch);
    return z ? DVL_OK : g->err->code;
}

int dvl_generate(const dvl_model *m, const int32_t *prompt, int64_t P, const float *pixels,
                 int64_t n_img, const dvl_gen_opts *o, dvl_gen_result *out, dvl_err *err)
{
    memset(out, 0, sizeof *out);
    dvl_arch arch = m->cfg.arch;
    if (arch == DVL_ARCH_SIGLIP)
        return dvl_errf(err, DVL_EINVAL, "generate: a vision tower (siglip) cannot generate text");
    if (n_img && arch != DVL_ARCH_VLM)
        return dvl_errf(err, DVL_EINVAL, "generate: a %s model takes no image",
                        dvl_arch_name(arch));
    const dvl_lm *lm = arch == DVL_ARCH_VLM ? &m->vlm.lm : &m->lm;
    if (P < 1)
        return dvl_errf(err, DVL_EINVAL, "generate: the prompt is empty");
    if (o->max_new < 1)
        return dvl_errf(err, DVL_EINVAL, "generate: max new tokens %lld must be >= 1",
                        (long long)o->max_new);
    if (o->mode != DVL_GEN_BLOCK && o->mode != DVL_GEN_FULL && o->mode != DVL_GEN_AR)
        return dvl_errf(err, DVL_EINVAL, "generate: unknown mode %d", (int)o->mode);
    if (o->mode != DVL_GEN_AR) {
        if (o->block_size < 1)
            return dvl_errf(err, DVL_EINVAL, "generate: block size %d must be >= 1",
                            o->block_size);
        if (o->steps < 1 || o->steps > o->block_size)
            return dvl_errf(err, DVL_EINVAL, "generate: steps %d must be in 1..block size %d",
                            o->steps, o->block_size);
        if (o->mask_id < 0 || o->mask_id >= lm->cfg.vocab)
            return dvl_errf(err, DVL_EINVAL,
                            "generate: mask token id %d is not in the vocabulary of %lld",
                            o->mask_id, (long long)lm->cfg.vocab);
        if (o->mode == DVL_GEN_FULL && o->full_mask != DVL_MASK_BIDIR &&
            o->full_mask != DVL_MASK_BLOCK_CAUSAL)
            return dvl_errf(err, DVL_EINVAL, "generate: full mode attends BIDIR or BLOCK_CAUSAL");
    }
    gen g = {.lm = lm, .o = o, .P = P, .d = lm->cfg.hidden, .V = lm->cfg.vocab, .r = out,
             .err = err};
    out->ids = malloc((size_t)(o->max_new + 1) * sizeof *out->ids);
    g.ctx = dvl_ctx_new(DVL_CPU);
    if (!out->ids || !g.ctx) {
        dvl_ctx_free(g.ctx);
        dvl_gen_result_free(out);
        return dvl_errf(err, DVL_ENOMEM, "generate: out of memory");
    }
    dvl_set_grad_enabled(g.ctx, false);
    double t0 = now();
    int rc = embed_prompt(&g, m, prompt, pixels, n_img);
    if (!rc)
        rc = o->mode == DVL_GEN_AR ? run_ar(&g, prompt)
                                   : run_blocks(&g, prompt, o->mode == DVL_GEN_BLOCK);
    out->seconds = now() - t0;
    dvl_kv_cache_free(&g.kv);
    free(g.pe);
    dvl_ctx_free(g.ctx);
    if (rc)
        dvl_gen_result_free(out);
    return rc;
}
