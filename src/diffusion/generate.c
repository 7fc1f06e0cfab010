/* Generation: block diffusion with KV cache, diffusion without cache, and
 * autoregressive decoding (generate.h). */
#include "diffusion/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

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
    o->attention = -1;
}

int dvl_gen_set_precision(dvl_ctx *ctx, const dvl_gen_opts *o, dvl_err *err)
{
    if (!o->bf16 && o->attention < 0)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    dvl_cublas *h = dvl_ctx_cublas(ctx);
    if (h) {
        const int rc = o->bf16 ? dvl_cublas_set_math(h, DVL_MATH_BF16, err) : DVL_OK;
        return rc ? rc : dvl_cublas_set_attention_math(h, o->attention, err);
    }
#endif
    return dvl_errf(err, DVL_EINVAL,
                    "generate: %s the model on a CUDA device (it is on the CPU)",
                    o->bf16 ? "bf16 products need" : "attention in another arithmetic needs");
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

/* State of one generation over N sequences. Row r of sequence i holds
 * absolute position r - off[i] (rows before off[i] are padding: key
 * invalid, never read); off[i] is a multiple of B in the diffusion modes,
 * so row blocks are position blocks.
 *
 * The device is the model's (its store moved with dvl_params_move): the
 * context, the KV cache and every activation live there, while the prompt
 * embeddings, the token/position/mask arrays (the ops upload them) and the
 * logits the sampler reads are host memory. On the GPU that costs one d2h
 * copy per prompt (its embeddings, once), one h2d copy per sequence and
 * forward (the prompt rows of that pass, only in passes that hold any)
 * and one d2h copy of the wanted logit rows per forward; on the CPU every
 * copy is the memcpy it always was. */
typedef struct gen {
    const dvl_lm *lm;
    const dvl_gen_opts *o;
    dvl_ctx *ctx;
    int N;
    int64_t d, V;
    const int64_t *P;   /* [N] prompt lengths */
    int64_t *off;       /* [N] */
    float **pe;         /* [N] prompt embeddings [P_i, d] (image rows spliced in), host */
    dvl_kv_cache kv;
    dvl_gen_result *r;  /* [N] */
    bool *done;         /* [N] */
    int64_t forwards, forward_tokens;
    dvl_err *err;
} gen;

/* The context's error as the caller's. */
static int ctx_fail(gen *g)
{
    const dvl_err *e = dvl_ctx_err(g->ctx);
    return dvl_errf(g->err, e->code ? e->code : DVL_EINVAL, "%s", e->msg);
}

/* A prompt's input embeddings, once: token rows, and for a VLM the
 * connector outputs at the image placeholder rows. */
static int embed_prompt(gen *g, const dvl_model *m, int i, const int32_t *prompt,
                        const float *pixels)
{
    dvl_tensor *x;
    if (m->cfg.arch == DVL_ARCH_VLM) {
        const dvl_siglip_config *vc = &m->cfg.vision;
        int64_t s4[4] = {1, vc->channels, vc->image_size, vc->image_size};
        dvl_tensor *px = NULL;
        if (pixels) /* the host image, uploaded on a GPU context */
            px = dvl_ctx_device(g->ctx) == DVL_CPU
                     ? dvl_wrap(g->ctx, DVL_F32, 4, s4, (void *)pixels)
                     : dvl_from_host(g->ctx, DVL_F32, 4, s4, pixels);
        if (pixels && !px)
            return ctx_fail(g);
        dvl_vlm_input in = {.batch = 1, .seq = g->P[i], .ids = prompt, .pixels = px};
        x = dvl_vlm_embed(g->ctx, &m->vlm, &in);
    } else {
        x = dvl_lm_embed(g->ctx, g->lm, prompt, g->P[i]);
    }
    if (!x)
        return ctx_fail(g);
    size_t bytes = (size_t)(g->P[i] * g->d) * sizeof(float);
    if (!(g->pe[i] = malloc(bytes)))
        return dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory for the prompt");
    if (dvl_tensor_to_host(g->ctx, x, g->pe[i]))
        return ctx_fail(g);
    dvl_ctx_reset(g->ctx);
    return DVL_OK;
}

/* Logits [N * n_out, V] (sequence-major, host memory, the sampler may
 * write them) of rows [out0, out0 + n_out) of one forward pass over rows
 * [row0, row0 + T) of every sequence, ids[i*ld + t] the token of sequence i
 * at row row0 + t. Prompt rows take the saved prompt embeddings, padding
 * rows are masked out as keys. With a cache, row0 must be its len. n_out
 * 0: no logits (a pass that only fills the cache); a non-NULL dummy is
 * returned then. NULL on error (err set). Valid until the context is
 * reset. */
static float *forward(gen *g, const int32_t *ids, int64_t ld, int64_t row0, int64_t T,
                      dvl_mask_kind kind, bool cached, bool store, int64_t out0, int64_t n_out)
{
    dvl_ctx *ctx = g->ctx;
    const int N = g->N;
    const int64_t Tk = (cached ? g->kv.len : 0) + T, k0 = row0 + T - Tk;
    int32_t *tok = dvl_alloc(ctx, (size_t)(N * T) * sizeof *tok);
    int32_t *pos = dvl_alloc(ctx, (size_t)(N * T) * sizeof *pos);
    uint8_t *kv_ok = dvl_alloc(ctx, (size_t)(N * Tk));
    if (!tok || !pos || !kv_ok) {
        ctx_fail(g);
        return NULL;
    }
    bool padded = false;
    for (int i = 0; i < N; i++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t p = row0 + t - g->off[i];
            /* Prompt and padding rows are looked up as id 0 and overwritten
             * (prompt) or never seen (padding): a VLM's image placeholder
             * need not be a vocabulary id. */
            tok[i * T + t] = p < g->P[i] ? 0 : ids[i * ld + t];
            pos[i * T + t] = (int32_t)(p < 0 ? 0 : p);
        }
        for (int64_t j = 0; j < Tk; j++) {
            kv_ok[i * Tk + j] = k0 + j >= g->off[i];
            padded |= !kv_ok[i * Tk + j];
        }
    }
    dvl_tensor *x = dvl_lm_embed(ctx, g->lm, tok, N * T);
    for (int i = 0; x && i < N; i++) {
        /* Sequence i's prompt rows in this pass, positions [p0, p1): one
         * contiguous run (a memcpy, or an h2d copy on the GPU). */
        int64_t p0 = row0 - g->off[i], p1 = row0 + T - g->off[i];
        p0 = p0 < 0 ? 0 : p0;
        p1 = p1 > g->P[i] ? g->P[i] : p1;
        if (p0 < p1 &&
            dvl_ctx_memcpy_h2d(ctx, dvl_f32(x) + (i * T + p0 + g->off[i] - row0) * g->d,
                               g->pe[i] + p0 * g->d, (size_t)((p1 - p0) * g->d) * sizeof(float)))
            x = NULL;
    }
    dvl_mask mask = {.kind = kind, .block_size = g->o->block_size, .key_valid = padded ? kv_ok : NULL};
    dvl_lm_input in = {.batch = N,
                       .seq = T,
                       .embeds = x,
                       .pos = pos,
                       .mask = &mask,
                       .cache = cached ? &g->kv : NULL,
                       .cache_store = store};
    dvl_tensor *h = x ? dvl_lm_forward(ctx, g->lm, &in) : NULL;
    g->forwards++;
    g->forward_tokens += N * T;
    static float none = 0.0f;
    if (h && n_out == 0)
        return &none;
    dvl_tensor *hs = h;
    if (h && (out0 != 0 || n_out != T)) {
        /* The wanted rows of every sequence. */
        int32_t *rows = dvl_alloc(ctx, (size_t)(N * n_out) * sizeof *rows);
        if (!rows) {
            ctx_fail(g);
            return NULL;
        }
        for (int i = 0; i < N; i++)
            for (int64_t t = 0; t < n_out; t++)
                rows[i * n_out + t] = (int32_t)(i * T + out0 + t);
        hs = dvl_gather_rows(ctx, h, rows, N * n_out);
    }
    dvl_tensor *z = dvl_lm_logits(ctx, g->lm, hs);
    if (!z) {
        ctx_fail(g);
        return NULL;
    }
    if (dvl_ctx_device(ctx) == DVL_CPU)
        return dvl_f32(z);
    /* The wanted rows only (gathered above) into the host arena. */
    size_t bytes = (size_t)dvl_numel(z) * sizeof(float);
    float *zh = dvl_alloc(ctx, bytes);
    if (!zh || dvl_ctx_memcpy_d2h(ctx, zh, dvl_f32(z), bytes)) {
        ctx_fail(g);
        return NULL;
    }
    return zh;
}

/* Append new final tokens of sequence i: cut at the first stop id (which
 * ends its generation) and at max_new. Returns true when it is over. */
static bool emit(gen *g, int i, const int32_t *ids, int64_t n)
{
    dvl_gen_result *r = &g->r[i];
    int64_t keep = n;
    for (int64_t j = 0; j < n && keep == n; j++)
        for (int s = 0; s < g->o->n_stop; s++)
            if (ids[j] == g->o->stop_ids[s]) {
                keep = j;
                r->stopped = true;
                break;
            }
    if (keep > g->o->max_new - r->n)
        keep = g->o->max_new - r->n;
    memcpy(r->ids + r->n, ids, (size_t)keep * sizeof *ids);
    r->n += keep;
    if (g->o->on_tokens && keep > 0)
        g->o->on_tokens(g->o->user, i, ids, keep);
    g->done[i] = r->stopped || r->n >= g->o->max_new;
    return g->done[i];
}

static bool all_done(const gen *g)
{
    for (int i = 0; i < g->N; i++)
        if (!g->done[i])
            return false;
    return true;
}

/* DVL_GEN_BLOCK (cached) and DVL_GEN_FULL (not): the block loop of
 * generate_with_bd3lm, the sequences in step. Sequence i's complete prompt
 * blocks end at row Kmax B (off[i] = (Kmax - K_i) B), so every sequence's
 * first decode block is rows [Kmax B, Kmax B + B). */
static int run_blocks(gen *g, const int32_t *const *prompts, bool cached)
{
    const dvl_gen_opts *o = g->o;
    const int N = g->N, S = o->steps;
    const int64_t B = o->block_size;
    int64_t Kmax = 0, R = 0;
    for (int i = 0; i < N; i++)
        Kmax = g->P[i] / B > Kmax ? g->P[i] / B : Kmax;
    for (int i = 0; i < N; i++) {
        g->off[i] = (Kmax - g->P[i] / B) * B;
        int64_t end = (g->P[i] + o->max_new + B - 1) / B * B + g->off[i];
        R = end > R ? end : R;
    }
    int32_t *seq = malloc((size_t)(N * R) * sizeof *seq);
    int *sched = malloc((size_t)S * sizeof *sched);
    dvl_rng *rng = malloc((size_t)N * sizeof *rng);
    dvl_decoder *dec = dvl_decoder_new(&o->sampler, g->V, (int)B, g->err);
    int rc = DVL_OK;
    if (!seq || !sched || !rng || !dec) {
        rc = dec ? dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory") : g->err->code;
        goto done;
    }
    /* The cache before seq is written: a length too long for memory is an
     * error at once, not after gigabytes of seq have been touched. */
    if (cached && (rc = dvl_kv_cache_init_on(&g->kv, &g->lm->cfg, N, R, dvl_ctx_device(g->ctx),
                                             g->err)))
        goto done;
    for (int i = 0; i < N; i++) {
        int32_t *si = seq + i * R;
        for (int64_t r = 0; r < R; r++) {
            int64_t p = r - g->off[i];
            si[r] = p < 0 ? 0 : p < g->P[i] ? prompts[i][p] : o->mask_id;
        }
        /* Each sequence draws from its own stream: a batch gives what its
         * prompts give alone. */
        dvl_rng_seed(&rng[i], o->seed);
    }
    /* DiffusionVL: get_bd3lm_num_transfer_tokens(block_size, steps), each
     * step's count clamped to the masks left (docs/diffusion.md). */
    dvl_transfer_schedule((int)B, S, sched);
    int64_t b0 = Kmax * B;
    if (cached && b0 > 0) {
        /* Prefill: the complete prompt blocks under the block-causal rule. */
        if (!forward(g, seq, R, 0, b0, DVL_MASK_BLOCK_CAUSAL, true, true, 0, 0)) {
            rc = g->err->code;
            goto done;
        }
        dvl_ctx_reset(g->ctx);
    }
    for (; b0 < R && !all_done(g); b0 += B) {
        for (int s = 0;; s++) {
            int any = 0;
            for (int i = 0; i < N; i++)
                for (int64_t j = 0; j < B && !g->done[i]; j++)
                    any += seq[i * R + b0 + j] == o->mask_id;
            if (!any)
                break;
            float *z = cached ? forward(g, seq + b0, R, b0, B, DVL_MASK_BLOCK_CAUSAL, true, false, 0, B)
                              : forward(g, seq, R, 0, R, o->full_mask, false, false, b0, B);
            if (!z) {
                rc = g->err->code;
                goto done;
            }
            for (int i = 0; i < N; i++) {
                int32_t *x = seq + i * R + b0;
                int masks = 0;
                for (int64_t j = 0; j < B; j++)
                    masks += x[j] == o->mask_id;
                if (g->done[i] || !masks)
                    continue;
                float *zi = z + (int64_t)i * B * g->V;
                /* The mask token is never a proposal: a committed mask
                 * would stay masked (a trained model gives it ~0
                 * probability; a random one need not). */
                for (int64_t j = 0; j < B; j++)
                    zi[j * g->V + o->mask_id] = -INFINITY;
                dvl_decode_step(dec, x, (int)B, o->mask_id, zi, s < S ? sched[s] : masks, &rng[i]);
            }
            dvl_ctx_reset(g->ctx);
        }
        for (int i = 0; i < N; i++) {
            if (g->done[i])
                continue;
            int64_t lo = g->P[i] + g->off[i] > b0 ? g->P[i] + g->off[i] : b0;
            emit(g, i, seq + i * R + lo, b0 + B - lo);
        }
        if (cached && !all_done(g) && b0 + B < R) {
            /* The finished block joins the cache (its keys/values are
             * recomputed from the committed tokens, as generate_with_bd3lm's
             * last iteration does). Not after the last block. */
            if (!forward(g, seq + b0, R, b0, B, DVL_MASK_BLOCK_CAUSAL, true, true, 0, 0)) {
                rc = g->err->code;
                goto done;
            }
            dvl_ctx_reset(g->ctx);
        }
    }
done:
    free(seq);
    free(sched);
    free(rng);
    dvl_decoder_free(dec);
    return rc;
}

/* DVL_GEN_AR: the prompts, right-aligned (off[i] = Pmax - P_i), into the
 * cache under the causal rule, then one token per sequence per forward. */
static int run_ar(gen *g, const int32_t *const *prompts)
{
    const dvl_gen_opts *o = g->o;
    const int N = g->N;
    int64_t Pmax = 0;
    for (int i = 0; i < N; i++)
        Pmax = g->P[i] > Pmax ? g->P[i] : Pmax;
    int32_t *x = malloc((size_t)(N * Pmax) * sizeof *x);
    dvl_rng *rng = malloc((size_t)N * sizeof *rng);
    void *scratch = malloc(dvl_sample_scratch_bytes(g->V));
    int rc = !x || !rng || !scratch ? dvl_errf(g->err, DVL_ENOMEM, "generate: out of memory")
                                    : dvl_kv_cache_init_on(&g->kv, &g->lm->cfg, N,
                                                           Pmax + o->max_new,
                                                           dvl_ctx_device(g->ctx), g->err);
    if (rc)
        goto done;
    for (int i = 0; i < N; i++) {
        g->off[i] = Pmax - g->P[i];
        for (int64_t r = 0; r < Pmax; r++)
            x[i * Pmax + r] = r < g->off[i] ? 0 : prompts[i][r - g->off[i]];
        dvl_rng_seed(&rng[i], o->seed);
    }
    float *z = forward(g, x, Pmax, 0, Pmax, DVL_MASK_CAUSAL, true, true, Pmax - 1, 1);
    for (int64_t row = Pmax; z; row++) {
        for (int i = 0; i < N; i++) {
            x[i] = 0;
            if (g->done[i])
                continue;
            x[i] = dvl_sample_token(z + (int64_t)i * g->V, g->V, &o->sampler, &rng[i], scratch,
                                    NULL);
            emit(g, i, &x[i], 1);
        }
        dvl_ctx_reset(g->ctx);
        if (all_done(g))
            break;
        z = forward(g, x, 1, row, 1, DVL_MASK_CAUSAL, true, true, 0, 1);
    }
    if (!z)
        rc = g->err->code;
done:
    free(x);
    free(rng);
    free(scratch);
    return rc;
}

int dvl_generate_batch(const dvl_model *m, int n, const int32_t *const *prompts,
                       const int64_t *lens, const float *const *pixels, const dvl_gen_opts *o,
                       dvl_gen_result *out, dvl_err *err)
{
    if (n < 1)
        return dvl_errf(err, DVL_EINVAL, "generate: no prompts");
    memset(out, 0, (size_t)n * sizeof *out);
    dvl_arch arch = m->cfg.arch;
    if (arch == DVL_ARCH_SIGLIP)
        return dvl_errf(err, DVL_EINVAL, "generate: a vision tower (siglip) cannot generate text");
    const dvl_lm *lm = arch == DVL_ARCH_VLM ? &m->vlm.lm : &m->lm;
    for (int i = 0; i < n; i++) {
        if (pixels && pixels[i] && arch != DVL_ARCH_VLM)
            return dvl_errf(err, DVL_EINVAL, "generate: a %s model takes no image",
                            dvl_arch_name(arch));
        if (lens[i] < 1)
            return dvl_errf(err, DVL_EINVAL, "generate: prompt %d is empty", i);
    }
    if (o->max_new < 1)
        return dvl_errf(err, DVL_EINVAL, "generate: max new tokens %lld must be >= 1",
                        (long long)o->max_new);
    /* Positions past the model's range (as vLLM's max_model_len): beyond it
     * the sequence buffers alone can exceed memory (2^31 new tokens are 8 GB
     * of ids), which would be the kernel's OOM kill, not an error. */
    for (int i = 0; i < n; i++)
        if (lens[i] > lm->cfg.max_positions - o->max_new)
            return dvl_errf(err, DVL_EINVAL,
                            "generate: prompt %d of %lld positions + %lld new tokens is more than "
                            "the %lld positions of the model (max_position_embeddings, LLaDA: "
                            "max_sequence_length)",
                            i, (long long)lens[i], (long long)o->max_new,
                            (long long)lm->cfg.max_positions);
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
    gen g = {.lm = lm, .o = o, .N = n, .d = lm->cfg.hidden, .V = lm->cfg.vocab, .P = lens,
             .r = out, .err = err};
    g.off = calloc((size_t)n, sizeof *g.off);
    g.pe = calloc((size_t)n, sizeof *g.pe);
    g.done = calloc((size_t)n, sizeof *g.done);
    /* The model's device: where its store was put (dvl_params_move). */
    g.ctx = dvl_ctx_new_err(lm->embed->device, err);
    if (!g.ctx) {
        int e = err && err->code ? err->code : dvl_errf(err, DVL_ENOMEM, "generate: out of memory");
        free(g.off), free(g.pe), free(g.done);
        return e;
    }
    bool ok = g.off && g.pe && g.done;
    for (int i = 0; i < n && ok; i++)
        ok = (out[i].ids = malloc((size_t)(o->max_new + 1) * sizeof *out[i].ids)) != NULL;
    int rc = ok ? dvl_gen_set_precision(g.ctx, o, err)
                : dvl_errf(err, DVL_ENOMEM, "generate: out of memory");
    double t0 = now();
    if (!rc)
        dvl_set_grad_enabled(g.ctx, false);
    for (int i = 0; i < n && !rc; i++)
        rc = embed_prompt(&g, m, i, prompts[i], pixels ? pixels[i] : NULL);
    if (!rc)
        rc = o->mode == DVL_GEN_AR ? run_ar(&g, prompts)
                                   : run_blocks(&g, prompts, o->mode == DVL_GEN_BLOCK);
    double dt = now() - t0;
    for (int i = 0; i < n; i++) {
        out[i].seconds = dt;
        out[i].forwards = g.forwards;
        out[i].forward_tokens = g.forward_tokens;
        if (rc)
            dvl_gen_result_free(&out[i]);
        if (g.pe)
            free(g.pe[i]);
    }
    dvl_kv_cache_free(&g.kv);
    free(g.pe);
    free(g.off);
    free(g.done);
    dvl_ctx_free(g.ctx);
    return rc;
}

int dvl_generate(const dvl_model *m, const int32_t *prompt, int64_t P, const float *pixels,
                 int64_t n_img, const dvl_gen_opts *o, dvl_gen_result *out, dvl_err *err)
{
    if (n_img > 1)
        return dvl_errf(err, DVL_EINVAL, "generate: at most one image per prompt (got %lld)",
                        (long long)n_img);
    const float *px = n_img ? pixels : NULL;
    return dvl_generate_batch(m, 1, &prompt, &P, &px, o, out, err);
}
