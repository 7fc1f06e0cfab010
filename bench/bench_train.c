/* dvl-bench train: stage-2 (block diffusion) training steps of a
 * Qwen2.5-0.5B-shaped language model with random weights, on random token
 * sequences: tokens/s and achieved GFLOP/s beside the machine's sgemm peak
 * measured in the same run.
 *
 *   dvl-bench train [--seq L] [--batch N] [--layers K] [--steps S] [--block B]
 *                   [--vocab V]
 *   defaults: L 512 (so 2L = 1024 positions with [x_t ; x_0]), N 1, K 24
 *   (the full 0.5B depth), S 3 timed steps after one warm-up, B 8, V 151936.
 *
 * One step is what dvl-train does in stage 2 (train/train_step.c): the
 * [x_t ; x_0] batch (diffusion/batch.h), the forward pass over 2L positions
 * under the block-diffusion mask, the LM head and cross-entropy on the noisy
 * half only, backward, global-norm clip and AdamW.
 *
 * FLOP accounting (useful work, forward x 3 for forward + backward):
 *   linear layers: 2 x rows x in x out per projection over all 2L rows;
 *   attention: 4 x D x Hq per allowed (query, key) pair of the mask (QK^T
 *   and PV), pairs counted with dvl_mask_allows;
 *   LM head: 2 x d x V per noisy row (fused linear + cross-entropy).
 * The whole sequence is supervised (every token may be masked). */
#include <cblas.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "core/rng.h"
#include "diffusion/batch.h"
#include "models/model.h"
#include "optim/adamw.h"

static double sgemm_peak(int n)
{
    float *a = aligned_alloc(64, (size_t)n * n * sizeof(float));
    float *b = aligned_alloc(64, (size_t)n * n * sizeof(float));
    float *c = aligned_alloc(64, (size_t)n * n * sizeof(float));
    dvl_rng r;
    dvl_rng_seed(&r, 1);
    dvl_rng_fill_normal(&r, a, (int64_t)n * n, 1.0f);
    dvl_rng_fill_normal(&r, b, (int64_t)n * n, 1.0f);
    double best = 1e30;
    for (int k = 0; k < 4; k++) { /* first call warms up */
        double t0 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double t = bench_now() - t0;
        if (k > 0 && t < best)
            best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

static int arg_int(int argc, char **argv, const char *name, int def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return atoi(argv[i + 1]);
    return def;
}

int bench_train(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: dvl-bench train [--seq L] [--batch N] [--layers K] [--steps S] "
                   "[--block B] [--vocab V]\n");
            return 0;
        }
    int L = arg_int(argc, argv, "--seq", 512), N = arg_int(argc, argv, "--batch", 1);
    int layers = arg_int(argc, argv, "--layers", 24), steps = arg_int(argc, argv, "--steps", 3);
    int B = arg_int(argc, argv, "--block", 8), V = arg_int(argc, argv, "--vocab", 151936);
    if (L < B || L % B || N < 1 || layers < 1 || steps < 1 || B < 1 || V < 16) {
        fprintf(stderr, "dvl-bench train: --seq must be a positive multiple of --block; "
                        "--batch, --layers, --steps >= 1; --vocab >= 16\n");
        return 2;
    }
    /* Qwen2.5-0.5B (config.json of Qwen/Qwen2.5-0.5B-Instruct). */
    dvl_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.arch = DVL_ARCH_QWEN2;
    mc.lm = (dvl_lm_config){.arch = DVL_ARCH_QWEN2, .hidden = 896, .layers = layers, .heads = 14,
                            .kv_heads = 2, .head_dim = 64, .intermediate = 4864, .vocab = V,
                            .rms_eps = 1e-6f, .rope_theta = 1e6f, .tied = true, .qkv_bias = true,
                            .max_positions = 32768, .mask_token_id = -1};
    const dvl_lm_config *c = &mc.lm;
    dvl_err err = {0};
    dvl_model m;
    if (dvl_model_init(&m, &mc, &err) || dvl_params_alloc(m.params, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    dvl_model_init_random(&m, 1);
    dvl_adamw *opt = dvl_adamw_new(m.params, 0.9f, 0.999f, 1e-8f, 0.0f, &err);
    dvl_diff_cfg dc;
    dvl_diff_cfg_qwen(&dc);
    dc.block_size = B;
    dc.mask_id = V - 1;
    dc.eos_id = V - 2;
    dc.pad_id = 0;
    dc.block_align_eos = false;
    dvl_diff_batch *db = dvl_diff_batch_new(N, L, &err);
    if (!opt || !db) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = malloc((size_t)N * L * sizeof *ids);
    dvl_diff_seq *seqs = malloc((size_t)N * sizeof *seqs);
    dvl_rng rng;
    dvl_rng_seed(&rng, 7);
    for (int64_t i = 0; i < (int64_t)N * L; i++)
        ids[i] = (int32_t)(dvl_rng_u64(&rng) % (uint64_t)(V - 2));
    for (int s = 0; s < N; s++)
        seqs[s] = (dvl_diff_seq){ids + (int64_t)s * L, ids + (int64_t)s * L, L};

    /* FLOPs of one step. */
    double d = (double)c->hidden, qd = (double)(c->heads * c->head_dim),
           kvd = (double)(c->kv_heads * c->head_dim), ff = (double)c->intermediate;
    double rows = 2.0 * L * N;
    double lin = 2.0 * rows * (d * qd + 2 * d * kvd + qd * d + 3 * d * ff) * (double)layers;
    if (dvl_diff_make_batch(db, &dc, &rng, seqs, N, L, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    dvl_mask mask = dvl_diff_attn_mask(db, B);
    double pairs = 0;
    for (int64_t i = 0; i < 2 * L; i++)
        for (int64_t j = 0; j < 2 * L; j++)
            pairs += dvl_mask_allows(&mask, i, j);
    double attn = 4.0 * (double)c->head_dim * (double)c->heads * pairs * N * (double)layers;
    double head = 2.0 * d * (double)V * (double)L * N;
    double flops = 3.0 * (lin + attn + head);

    printf("dvl-bench train: Qwen2.5-0.5B shape (d 896, %d layers, 14/2 heads, I 4864, V %d, "
           "tied), %" PRId64 " parameters\n",
           layers, V, m.params->numel);
    printf("  stage 2 step: batch %d x [x_t ; x_0] of 2 x %d = %d positions, block %d; "
           "%.1f GFLOP per step (%.0f%% attention over %.0f allowed pairs per sequence)\n",
           N, L, 2 * L, B, flops / 1e9, 100.0 * 3.0 * attn / flops, pairs);
    fflush(stdout);
    double peak = sgemm_peak(2048);

    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    double best = 1e30, total = 0;
    for (int k = 0; k <= steps; k++) {
        double t0 = bench_now();
        dvl_params_zero_grad(m.params);
        dvl_ctx_reset(ctx);
        if (dvl_diff_make_batch(db, &dc, &rng, seqs, N, L, &err)) {
            fprintf(stderr, "dvl-bench train: %s\n", err.msg);
            return 1;
        }
        mask = dvl_diff_attn_mask(db, B);
        dvl_lm_input li = {.batch = N, .seq = 2 * L, .ids = db->ids, .pos = db->pos, .mask = &mask};
        dvl_tensor *h = dvl_lm_forward(ctx, &m.lm, &li);
        dvl_tensor *hn = dvl_gather_rows(ctx, h, db->noisy_rows, (int64_t)N * L);
        dvl_tensor *loss = dvl_lm_loss(ctx, &m.lm, hn, N, L, db->labels, db->weight, false);
        if (!loss || dvl_backward(ctx, loss)) {
            fprintf(stderr, "dvl-bench train: %s\n", dvl_ctx_err(ctx)->msg);
            return 1;
        }
        double gn = dvl_grad_norm(m.params);
        if (gn > 1.0)
            dvl_grad_scale(m.params, (float)(1.0 / (gn + 1e-6)));
        dvl_adamw_step(opt, 1e-5f);
        double t = bench_now() - t0;
        printf("  step %d%s: %.2f s, loss %.4f\n", k, k == 0 ? " (warm-up)" : "", t,
               dvl_f32(loss)[0]);
        fflush(stdout);
        if (k > 0) {
            total += t;
            if (t < best)
                best = t;
        }
    }
    double tokens = (double)N * L; /* sequence tokens per step (x_0) */
    printf("  best step %.2f s (mean %.2f s): %.0f tokens/s (%.0f positions/s), %.1f GFLOP/s\n",
           best, total / steps, tokens / best, 2 * tokens / best, flops / best / 1e9);
    printf("  machine sgemm peak (2048^3, same run): %.1f GFLOP/s -> %.0f%% of peak\n", peak,
           100.0 * flops / best / 1e9 / peak);
    dvl_ctx_free(ctx);
    dvl_adamw_free(opt);
    dvl_diff_batch_free(db);
    dvl_model_free(&m);
    free(ids);
    free(seqs);
    return 0;
}
