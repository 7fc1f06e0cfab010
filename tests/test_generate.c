/* Generation (diffusion/generate.h) and the LM's KV cache (models/lm.h) on a
 * tiny random Qwen2-shaped model whose weights are large enough (std 0.3)
 * that logits are peaked: near-ties, which float rounding could flip, do
 * not occur on these seeds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/generate.h"
#include "gen_fixture.h"
#include "util.h"

static dvl_gen_result gen(const dvl_model *m, const int32_t *p, int64_t P, const dvl_gen_opts *o)
{
    dvl_gen_result r;
    dvl_err err = {0};
    ck_assert_msg(dvl_generate(m, p, P, NULL, 0, o, &r, &err) == 0, "%s", err.msg);
    return r;
}

/* The cache at the LM level: prefill rows [0, c) and then a block's rows
 * [c, c + B) without storing give the logits of the same rows of one
 * forward over [0, c + B) without cache under the block-causal rule. */
START_TEST(kv_cache_logits)
{
    dvl_model m;
    tg_tiny_model(&m, 1);
    const int64_t B = 4, c = 8, T = c + B;
    int32_t *ids = tg_prompt(T, 2);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_set_grad_enabled(ctx, false);
    dvl_mask bc = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = (int)B};
    dvl_lm_input full = {.batch = 1, .seq = T, .ids = ids, .mask = &bc};
    dvl_tensor *zf = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &full));
    ck_assert_msg(zf != NULL, "%s", dvl_ctx_err(ctx)->msg);
    dvl_kv_cache kv;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_kv_cache_init(&kv, &m.lm.cfg, 1, T, &err), 0);
    dvl_lm_input pre = {.batch = 1, .seq = c, .ids = ids, .mask = &bc, .cache = &kv,
                        .cache_store = true};
    ck_assert(dvl_lm_forward(ctx, &m.lm, &pre) != NULL);
    ck_assert_int_eq(kv.len, c);
    for (int rep = 0; rep < 2; rep++) { /* a step leaves the cache as it was */
        dvl_lm_input blk = {.batch = 1, .seq = B, .ids = ids + c, .mask = &bc, .cache = &kv};
        dvl_tensor *zb = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &blk));
        ck_assert_msg(zb != NULL, "%s", dvl_ctx_err(ctx)->msg);
        ck_assert_int_eq(kv.len, c);
        double d = tu_max_abs_diff(dvl_f32(zb), dvl_f32(zf) + c * TG_VOCAB, B * TG_VOCAB);
        ck_assert_msg(d < 1e-5, "cached block logits off by %g", d);
    }
    /* Causal AR steps: one token at a time equals the causal forward. */
    dvl_mask causal = {.kind = DVL_MASK_CAUSAL};
    full.mask = &causal;
    zf = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &full));
    kv.len = 0;
    for (int64_t t = 0; t < T; t++) {
        dvl_lm_input one = {.batch = 1, .seq = 1, .ids = ids + t, .mask = &causal, .cache = &kv,
                            .cache_store = true};
        dvl_tensor *z = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &one));
        ck_assert(z != NULL);
        double d = tu_max_abs_diff(dvl_f32(z), dvl_f32(zf) + t * TG_VOCAB, TG_VOCAB);
        ck_assert_msg(d < 1e-5, "AR step %lld off by %g", (long long)t, d);
    }
    /* Overflow and grad mode are errors naming the cause. */
    dvl_lm_input over = {.batch = 1, .seq = 1, .ids = ids, .mask = &causal, .cache = &kv};
    ck_assert(dvl_lm_forward(ctx, &m.lm, &over) == NULL);
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "exceed the KV cache") != NULL, "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    kv.len = 0;
    dvl_set_grad_enabled(ctx, true);
    ck_assert(dvl_lm_forward(ctx, &m.lm, &over) == NULL);
    ck_assert(strstr(dvl_ctx_err(ctx)->msg, "grad mode") != NULL);
    dvl_kv_cache_free(&kv);
    dvl_ctx_free(ctx);
    free(ids);
    dvl_model_free(&m);
}
END_TEST

/* Block decoding with the cache gives the same tokens as recomputing the
 * whole sequence every step under the block-causal rule (full mode with
 * BLOCK_CAUSAL), over block sizes, steps, prompt lengths that are and are
 * not block multiples, both remasking rules, greedy and sampled; and it
 * takes fewer token rows of compute. */
START_TEST(block_cache_equals_recompute)
{
    dvl_model m;
    tg_tiny_model(&m, 3);
    const int Bs[] = {4, 8}, Ps[] = {5, 8, 13};
    int cases = 0;
    for (int bi = 0; bi < 2; bi++)
        for (int pi = 0; pi < 3; pi++)
            for (int mode = 0; mode < 4; mode++) {
                int B = Bs[bi];
                int32_t *p = tg_prompt(Ps[pi], 10 + pi);
                dvl_gen_opts o;
                dvl_gen_opts_default(&o);
                o.block_size = B;
                o.steps = mode & 1 ? B / 2 : B;
                o.sampler.remask = mode & 2 ? DVL_REMASK_DYNAMIC : DVL_REMASK_STATIC;
                o.sampler.tau = 0.5f;
                o.sampler.temperature = pi == 1 ? 0.8f : 0.0f;
                o.sampler.top_k = pi == 1 ? 10 : 0;
                o.max_new = 19;
                o.mask_id = TG_MASK;
                o.seed = 5;
                dvl_gen_result a = gen(&m, p, Ps[pi], &o);
                o.mode = DVL_GEN_FULL;
                o.full_mask = DVL_MASK_BLOCK_CAUSAL;
                dvl_gen_result b = gen(&m, p, Ps[pi], &o);
                ck_assert_int_eq(a.n, 19);
                ck_assert_int_eq(b.n, a.n);
                for (int64_t i = 0; i < a.n; i++)
                    ck_assert_msg(a.ids[i] == b.ids[i], "B %d P %d mode %d: token %lld %d vs %d",
                                  B, Ps[pi], mode, (long long)i, a.ids[i], b.ids[i]);
                ck_assert_int_lt(a.forward_tokens, b.forward_tokens);
                dvl_gen_result_free(&a);
                dvl_gen_result_free(&b);
                free(p);
                cases++;
            }
    ck_assert_int_eq(cases, 24);
    dvl_model_free(&m);
}
END_TEST

/* The VLM: the image rows are spliced into the prompt's embeddings, in the
 * prefilled blocks and in the prompt tail of the first decode block alike;
 * cached block decoding equals the block-causal recompute. The fixture's
 * LM gets peaked random weights (std 0.3) over the loaded ones. */
START_TEST(vlm_cache_equals_recompute)
{
    tg_vlm f;
    tg_vlm_open(&f);
    dvl_model *m = &f.m;
    const int32_t *p = f.prompt;
    const int64_t P = f.P;
    const dvl_vlm_config *vc = &m->cfg.vlm;
    const int64_t per = vc->vision.channels * vc->vision.image_size * vc->vision.image_size;
    float *px = f.px;
    dvl_err err = {0};
    for (int B = 4; B <= 8; B += 4) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.block_size = B;
        o.steps = B;
        o.max_new = 11;
        o.mask_id = 127;
        dvl_gen_result a, b;
        ck_assert_msg(dvl_generate(m, p, P, px, 1, &o, &a, &err) == 0, "%s", err.msg);
        o.mode = DVL_GEN_FULL;
        o.full_mask = DVL_MASK_BLOCK_CAUSAL;
        ck_assert_msg(dvl_generate(m, p, P, px, 1, &o, &b, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(a.n, 11);
        ck_assert_int_eq(b.n, 11);
        for (int64_t i = 0; i < a.n; i++)
            ck_assert_msg(a.ids[i] == b.ids[i], "B %d token %lld: %d vs %d", B, (long long)i,
                          a.ids[i], b.ids[i]);
        /* Another image changes the answer: the pixels are used. */
        for (int64_t i = 0; i < per; i++)
            px[i] = -px[i];
        o.mode = DVL_GEN_BLOCK;
        dvl_gen_result_free(&b);
        ck_assert_msg(dvl_generate(m, p, P, px, 1, &o, &b, &err) == 0, "%s", err.msg);
        ck_assert(memcmp(a.ids, b.ids, (size_t)a.n * sizeof *a.ids) != 0);
        dvl_gen_result_free(&a);
        dvl_gen_result_free(&b);
    }
    tg_vlm_free(&f);
}
END_TEST

/* AR mode with the cache: each token is the argmax of a full causal
 * forward over prompt + tokens so far, recomputed without cache. */
START_TEST(ar_equals_full_argmax)
{
    dvl_model m;
    tg_tiny_model(&m, 4);
    const int64_t P = 7, G = 12;
    int32_t *seq = tg_prompt(P + G, 6);
    dvl_gen_opts o;
    dvl_gen_opts_default(&o);
    o.mode = DVL_GEN_AR;
    o.max_new = G;
    dvl_gen_result r = gen(&m, seq, P, &o);
    ck_assert_int_eq(r.n, G);
    ck_assert_int_eq(r.forwards, G); /* the prompt, then one per token but the last */
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_set_grad_enabled(ctx, false);
    for (int64_t t = 0; t < G; t++) {
        dvl_lm_input in = {.batch = 1, .seq = P + t, .ids = seq};
        dvl_tensor *z = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &in));
        ck_assert(z != NULL);
        const float *row = dvl_f32(z) + (P + t - 1) * TG_VOCAB;
        int32_t best = 0;
        for (int32_t v = 1; v < TG_VOCAB; v++)
            if (row[v] > row[best])
                best = v;
        ck_assert_msg(r.ids[t] == best, "token %lld: %d, argmax %d", (long long)t, r.ids[t], best);
        seq[P + t] = best;
        dvl_ctx_reset(ctx);
    }
    dvl_ctx_free(ctx);
    dvl_gen_result_free(&r);
    free(seq);
    dvl_model_free(&m);
}
END_TEST

/* Remasking on the model's own logits, block by block with the cache:
 * static commits exactly min(scheduled, masks left) per step; dynamic
 * never fewer. */
START_TEST(remask_counts)
{
    dvl_model m;
    tg_tiny_model(&m, 7);
    const int B = 8, S = 3;
    int sched[S];
    dvl_transfer_schedule(B, S, sched); /* 3 3 2 */
    int32_t *p = tg_prompt(11, 8);     /* 8 prefilled, 3 in the first block */
    for (int dyn = 0; dyn < 2; dyn++) {
        dvl_sampler s;
        dvl_sampler_default(&s);
        s.remask = dyn ? DVL_REMASK_DYNAMIC : DVL_REMASK_STATIC;
        s.tau = 0.3f;
        dvl_err err = {0};
        dvl_decoder *d = dvl_decoder_new(&s, TG_VOCAB, B, &err);
        dvl_kv_cache kv;
        ck_assert_int_eq(dvl_kv_cache_init(&kv, &m.lm.cfg, 1, 32, &err), 0);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_set_grad_enabled(ctx, false);
        dvl_mask bc = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = B};
        dvl_lm_input pre = {.batch = 1, .seq = 8, .ids = p, .mask = &bc, .cache = &kv,
                            .cache_store = true};
        ck_assert(dvl_lm_forward(ctx, &m.lm, &pre) != NULL);
        int32_t x[B];
        dvl_rng rng;
        dvl_rng_seed(&rng, 1);
        int above_k = 0;
        for (int blk = 0; blk < 2; blk++) {
            for (int j = 0; j < B; j++)
                x[j] = blk == 0 && j < 3 ? p[8 + j] : TG_MASK;
            for (int st = 0; st < S; st++) {
                int masks = 0;
                for (int j = 0; j < B; j++)
                    masks += x[j] == TG_MASK;
                if (!masks)
                    break;
                dvl_lm_input in = {.batch = 1, .seq = B, .ids = x, .mask = &bc, .cache = &kv};
                dvl_tensor *z = dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &in));
                ck_assert(z != NULL);
                for (int j = 0; j < B; j++) /* as generate does */
                    dvl_f32(z)[j * TG_VOCAB + TG_MASK] = -INFINITY;
                int want = sched[st] < masks ? sched[st] : masks;
                int c = dvl_decode_step(d, x, B, TG_MASK, dvl_f32(z), sched[st], &rng);
                if (dyn) {
                    ck_assert_int_ge(c, want);
                    above_k += c > want;
                } else {
                    ck_assert_int_eq(c, want);
                }
                int left = 0;
                for (int j = 0; j < B; j++)
                    left += x[j] == TG_MASK;
                ck_assert_int_eq(left, masks - c);
                dvl_ctx_reset(ctx);
            }
            for (int j = 0; j < B; j++)
                ck_assert_int_ne(x[j], TG_MASK);
            dvl_lm_input st = {.batch = 1, .seq = B, .ids = x, .mask = &bc, .cache = &kv,
                               .cache_store = true};
            ck_assert(dvl_lm_forward(ctx, &m.lm, &st) != NULL);
            dvl_ctx_reset(ctx);
        }
        ck_assert_int_eq(kv.len, 24);
        (void)above_k;
        dvl_ctx_free(ctx);
        dvl_kv_cache_free(&kv);
        dvl_decoder_free(d);
    }
    free(p);
    dvl_model_free(&m);
}
END_TEST

static void count_cb(void *user, int seq, const int32_t *ids, int64_t n)
{
    (void)seq;
    (void)ids;
    *(int64_t *)user += n;
}

/* The stop rule: with the k-th generated token as a stop id, the output is
 * the tokens before its first occurrence; max_new cuts mid-block; the
 * streamed tokens are the output. */
START_TEST(stop_rule)
{
    dvl_model m;
    tg_tiny_model(&m, 9);
    int32_t *p = tg_prompt(6, 12);
    for (int ar = 0; ar < 2; ar++) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.mode = ar ? DVL_GEN_AR : DVL_GEN_BLOCK;
        o.block_size = 4;
        o.steps = 4;
        o.max_new = 24;
        o.mask_id = TG_MASK;
        dvl_gen_result a = gen(&m, p, 6, &o);
        ck_assert_int_eq(a.n, 24);
        ck_assert(!a.stopped);
        /* The first token that is not also token 0 (so the cut is not at 0). */
        int64_t k = 5;
        int32_t stop = a.ids[k];
        int64_t first = 0;
        while (a.ids[first] != stop)
            first++;
        o.stop_ids = &stop;
        o.n_stop = 1;
        int64_t streamed = 0;
        o.on_tokens = count_cb;
        o.user = &streamed;
        dvl_gen_result b = gen(&m, p, 6, &o);
        ck_assert(b.stopped);
        ck_assert_int_eq(b.n, first);
        ck_assert_int_eq(streamed, first);
        for (int64_t i = 0; i < b.n; i++)
            ck_assert_int_eq(b.ids[i], a.ids[i]);
        ck_assert_int_le(b.forwards, a.forwards);
        o.stop_ids = NULL;
        o.n_stop = 0;
        o.max_new = 5;
        streamed = 0;
        dvl_gen_result c = gen(&m, p, 6, &o);
        ck_assert_int_eq(c.n, 5);
        ck_assert_int_eq(streamed, 5);
        for (int64_t i = 0; i < c.n; i++)
            ck_assert_int_eq(c.ids[i], a.ids[i]);
        dvl_gen_result_free(&a);
        dvl_gen_result_free(&b);
        dvl_gen_result_free(&c);
    }
    free(p);
    dvl_model_free(&m);
}
END_TEST

/* A batch of prompts of different lengths (padding in front, per-sequence
 * positions and key padding) gives each prompt's tokens alone, in every
 * mode, greedy and sampled, with a stop id that ends some sequences early. */
START_TEST(batch_equals_singles)
{
    dvl_model m;
    tg_tiny_model(&m, 23);
    const int n = 3;
    const int64_t lens[3] = {5, 13, 8};
    int32_t *p[3];
    for (int i = 0; i < n; i++)
        p[i] = tg_prompt(lens[i], 30 + i);
    for (int c = 0; c < 6; c++) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.mode = c % 3 == 0 ? DVL_GEN_BLOCK : c % 3 == 1 ? DVL_GEN_FULL : DVL_GEN_AR;
        o.full_mask = c == 1 ? DVL_MASK_BLOCK_CAUSAL : DVL_MASK_BIDIR;
        o.block_size = 4;
        o.steps = c < 3 ? 4 : 2;
        o.sampler.remask = c < 3 ? DVL_REMASK_STATIC : DVL_REMASK_DYNAMIC;
        o.sampler.tau = 0.5f;
        o.sampler.temperature = c >= 3 ? 0.9f : 0.0f;
        o.max_new = 17;
        o.mask_id = TG_MASK;
        o.seed = 77;
        dvl_gen_result one[3];
        for (int i = 0; i < n; i++)
            one[i] = gen(&m, p[i], lens[i], &o);
        /* Stop at sequence 1's 6th token: it ends early, the others go on
         * (unless they meet it too). */
        int32_t stop = one[1].ids[5];
        o.stop_ids = &stop;
        o.n_stop = 1;
        for (int i = 0; i < n; i++) {
            dvl_gen_result_free(&one[i]);
            one[i] = gen(&m, p[i], lens[i], &o);
        }
        ck_assert(one[1].stopped && one[1].n <= 5);
        dvl_gen_result all[3];
        dvl_err err = {0};
        const int32_t *pp[3] = {p[0], p[1], p[2]};
        ck_assert_msg(dvl_generate_batch(&m, n, pp, lens, NULL, &o, all, &err) == 0, "%s",
                      err.msg);
        for (int i = 0; i < n; i++) {
            ck_assert_msg(all[i].n == one[i].n, "case %d seq %d: %lld vs %lld tokens", c, i,
                          (long long)all[i].n, (long long)one[i].n);
            ck_assert_int_eq(all[i].stopped, one[i].stopped);
            for (int64_t t = 0; t < one[i].n; t++)
                ck_assert_msg(all[i].ids[t] == one[i].ids[t], "case %d seq %d token %lld: %d vs %d",
                              c, i, (long long)t, all[i].ids[t], one[i].ids[t]);
            dvl_gen_result_free(&all[i]);
            dvl_gen_result_free(&one[i]);
        }
    }
    for (int i = 0; i < n; i++)
        free(p[i]);
    dvl_model_free(&m);
}
END_TEST

/* Sampling is a function of the seed. */
START_TEST(seed_determinism)
{
    dvl_model m;
    tg_tiny_model(&m, 13);
    int32_t *p = tg_prompt(9, 14);
    for (int mode = 0; mode < 3; mode++) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.mode = (dvl_gen_mode)mode;
        o.block_size = 4;
        o.steps = 2;
        o.max_new = 32;
        o.mask_id = TG_MASK;
        o.sampler.temperature = 1.5f;
        o.sampler.top_p = 0.95f;
        o.seed = 21;
        dvl_gen_result a = gen(&m, p, 9, &o), b = gen(&m, p, 9, &o);
        o.seed = 22;
        dvl_gen_result c = gen(&m, p, 9, &o);
        ck_assert_int_eq(a.n, b.n);
        ck_assert(memcmp(a.ids, b.ids, (size_t)a.n * sizeof *a.ids) == 0);
        ck_assert_msg(c.n != a.n || memcmp(a.ids, c.ids, (size_t)a.n * sizeof *a.ids) != 0,
                      "mode %d: another seed gave the same 32 tokens", mode);
        dvl_gen_result_free(&a);
        dvl_gen_result_free(&b);
        dvl_gen_result_free(&c);
    }
    free(p);
    dvl_model_free(&m);
}
END_TEST

/* Bad options are errors naming the value. */
START_TEST(bad_options)
{
    dvl_model m;
    tg_tiny_model(&m, 15);
    int32_t p[3] = {1, 2, 3};
    struct {
        int B, S, mask;
        const char *want;
    } cases[] = {{0, 1, TG_MASK, "block size 0"},
                 {4, 5, TG_MASK, "steps 5 must be in 1..block size 4"},
                 {4, 0, TG_MASK, "steps 0"},
                 {4, 4, TG_VOCAB, "mask token id 64"},
                 {4, 4, -1, "mask token id -1"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.block_size = cases[i].B;
        o.steps = cases[i].S;
        o.mask_id = cases[i].mask;
        dvl_gen_result r;
        dvl_err err = {0};
        ck_assert_int_ne(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err), 0);
        ck_assert_msg(strstr(err.msg, cases[i].want) != NULL, "%s", err.msg);
        ck_assert(r.ids == NULL);
    }
    /* bf16 products are for a model on a CUDA device. */
    dvl_gen_opts o;
    dvl_gen_opts_default(&o);
    o.mask_id = TG_MASK;
    o.bf16 = true;
    dvl_gen_result r;
    dvl_err err = {0};
    ck_assert_int_ne(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err), 0);
    ck_assert_msg(strstr(err.msg, "bf16 products need the model on a CUDA device") != NULL, "%s",
                  err.msg);
    ck_assert(r.ids == NULL);
    /* So is another arithmetic for attention alone (the TF32 kernels). */
    o.bf16 = false;
    o.attention = 1;
    ck_assert_int_ne(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err), 0);
    ck_assert_msg(strstr(err.msg, "attention in another arithmetic needs the model on a CUDA device") !=
                      NULL,
                  "%s", err.msg);
    ck_assert(r.ids == NULL);
    /* Past the model's 512 positions: an error before anything is sized
     * from max_new (2^31 new tokens, in full mode, were the OOM killer's),
     * in every mode; 3 + 509 positions are allowed. */
    o.attention = -1;
    dvl_gen_mode modes[] = {DVL_GEN_BLOCK, DVL_GEN_FULL, DVL_GEN_AR};
    for (int k = 0; k < 3; k++) {
        o.mode = modes[k];
        o.max_new = INT32_MAX;
        ck_assert_int_ne(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err), 0);
        ck_assert_msg(strstr(err.msg, "prompt 0 of 3 positions + 2147483647 new tokens is more than "
                                      "the 512 positions of the model") != NULL,
                      "%s", err.msg);
        ck_assert(r.ids == NULL);
        o.max_new = 510;
        ck_assert_int_ne(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err), 0);
        ck_assert_msg(strstr(err.msg, "3 positions + 510 new tokens") != NULL, "%s", err.msg);
    }
    o.mode = DVL_GEN_AR;
    o.max_new = 509;
    ck_assert_msg(dvl_generate(&m, p, 3, NULL, 0, &o, &r, &err) == 0, "%s", err.msg);
    dvl_gen_result_free(&r);
    dvl_model_free(&m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("generate");
    TCase *tc = tcase_create("generate");
    tcase_add_test(tc, kv_cache_logits);
    tcase_add_test(tc, block_cache_equals_recompute);
    tcase_add_test(tc, vlm_cache_equals_recompute);
    tcase_add_test(tc, ar_equals_full_argmax);
    tcase_add_test(tc, remask_counts);
    tcase_add_test(tc, stop_rule);
    tcase_add_test(tc, batch_equals_singles);
    tcase_add_test(tc, seed_determinism);
    tcase_add_test(tc, bad_options);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
