/* dvl-bench train: stage-2 (block diffusion) training steps of a
 * Qwen2.5-0.5B-shaped language model (--shape 7b: Qwen2.5-7B's layers) with
 * random weights, on random token sequences: tokens/s and achieved GFLOP/s
 * beside the machine's sgemm peak measured in the same run.
 *
 *   dvl-bench train [--seq L] [--batch N] [--layers K] [--steps S] [--block B]
 *                   [--vocab V] [--shape 0.5b|7b] [--profile] [--checkpoint] [--separate]
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
 *   and PV), pairs counted with dvl_mask_pairs;
 *   LM head: 2 x d x V per noisy row (fused linear + cross-entropy).
 * The whole sequence is supervised (every token may be masked).
 * --profile adds one step with the context's op profile on (tensor.h:
 * dvl_ctx_profile) and prints the time per op, forward and backward.
 * --separate runs q, k, v and gate, up as one product per projection (the
 * baseline of the fused dvl_linear_group products).
 *
 *   dvl-bench train --device cuda [--seq L] [--steps S] [--tf32 | --bf16] [--ranks R] [...]
 * runs the same step on the GPU (default L 2048): parameters, gradients and
 * AdamW moments on the device, forward + backward + clip + AdamW there. It
 * reports tokens/s, the model FLOP rate
 *   model FLOPs = 6 P (2L N) + 12 layers Hq D pairs N
 * (P the parameters that multiply: all but an untied embedding; 2L
 * positions per sequence of [x_t ; x_0]; attention
 * forward 4 D Hq per allowed pair, x 3 with backward) and the MFU against
 * cuBLAS f32, TF32 and bf16 GEMM rates measured at 4096^3 in the same run.
 * If the step does not fit in GPU memory at L, L is halved until it does.
 * --tf32 switches the context's cuBLAS handle to TF32 products, --bf16 to
 * bf16 products with f32 accumulation (DVL_MATH_BF16: f32 master weights
 * and gradients; each product rounds its operands to bf16; activations f32
 * but the MLP's hidden ones, bf16), whose MFU is the one to read against
 * the bf16 peak.
 * --frozen makes it a stage-1 step: every LM weight frozen, the gradient
 * going through the whole LM to the input embeddings (as it goes to the
 * connector's outputs), no optimizer; model FLOPs 4 P (2L N) + attention.
 * --bf16-copies none|frozen|all (with --bf16; default frozen, as
 * dvl-train's train.bf16_weight_copies): which weights have bf16 copies
 * (dvl_params_keep_bf16) that the products read instead of rounding W each
 * time; all refreshes the trainable ones' after each AdamW step, inside
 * the timed step. none is the baseline.
 * --f32-activations (with --bf16) keeps the MLP's hidden activations in f32
 * (dvl_ctx_set_bf16_activations false, as dvl-train's
 * train.bf16_activations false): the baseline of the bf16 ones.
 * --attention f32|tf32|bf16 runs attention's tiled kernels in that
 * arithmetic whatever the products' (dvl_cublas_set_attention_math, as
 * dvl-train's train.attention_precision): `--bf16 --attention tf32` is the
 * baseline of the bf16 mma.sync kernels. */
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
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

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

static int train_cuda(const bench_args *a);

/* The model of the bench (--shape): Qwen2.5-0.5B (config.json of
 * Qwen/Qwen2.5-0.5B-Instruct, the default) or Qwen2.5-7B (of
 * Qwen/Qwen2.5-7B-Instruct: the recipe's LM; run it with few --layers to fit
 * one device), with `layers` layers and a vocabulary of V. False for an
 * unknown name. */
static bool bench_shape(const char *name, int layers, int V, dvl_lm_config *c)
{
    const bool big = strcmp(name, "7b") == 0;
    if (!big && strcmp(name, "0.5b") != 0)
        return false;
    *c = (dvl_lm_config){.arch = DVL_ARCH_QWEN2, .hidden = big ? 3584 : 896, .layers = layers,
                         .heads = big ? 28 : 14, .kv_heads = big ? 4 : 2,
                         .head_dim = big ? 128 : 64, .intermediate = big ? 18944 : 4864,
                         .vocab = V, .rms_eps = 1e-6f, .rope_theta = 1e6f, .tied = !big,
                         .qkv_bias = true, .max_positions = 32768, .mask_token_id = -1};
    return true;
}

static void print_shape(const char *name, const dvl_lm_config *c, int64_t params)
{
    printf("Qwen2.5-%s shape (d %lld, %lld layers, %lld/%lld heads of %lld, I %lld, V %lld, %s), "
           "%" PRId64 " parameters",
           strcmp(name, "7b") == 0 ? "7B" : "0.5B", (long long)c->hidden, (long long)c->layers,
           (long long)c->heads, (long long)c->kv_heads, (long long)c->head_dim,
           (long long)c->intermediate, (long long)c->vocab, c->tied ? "tied" : "untied", params);
}

/* The step's arena (host + device): what the forward pass and loss keep for
 * backward, and the most held at once during the step (in backward about a
 * layer's activation gradients join them; with --checkpoint, one recomputed
 * layer at a time).
 * The per-position-per-layer figure divides everything by layers, so it is
 * an upper bound on one layer's share: run two --layers values and take the
 * difference for the exact figure, which scales memory plans to other depths
 * and lengths. */
/* torch clip_grad_norm_(max_norm 1)'s factor for a gradient norm gn, as
 * AdamW's gscale. */
static float clip_at_1(double gn) { return gn > 1.0 ? (float)(1.0 / (gn + 1e-6)) : 1.0f; }

static void print_arena(size_t fwd, size_t peak, int positions, int layers)
{
    printf("  step arena: %.1f MiB after forward + loss, peak %.1f MiB; "
           "%.1f KiB per position per layer after forward (all of it / layers / positions)\n",
           fwd / 1048576.0, peak / 1048576.0, fwd / 1024.0 / positions / layers);
}

static int by_time(const void *a, const void *b)
{
    const dvl_op_time *x = a, *y = b;
    double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
    return tx < ty ? 1 : tx > ty ? -1 : 0;
}

/* --profile: the op table of the profiled step (dvl_ctx_profile), the ops
 * by forward + backward time; beside the product ops the rate of the model
 * FLOPs they report (dvl_node_flops) in `unit` (1e9: GFLOP/s, 1e12:
 * TFLOP/s). Under --checkpoint the recomputed forward ops count again. */
static void print_profile(const dvl_ctx *ctx, double best, double unit)
{
    const dvl_op_time *rows;
    int n = dvl_ctx_profile_rows(ctx, &rows);
    dvl_op_time sorted[DVL_PROF_OPS];
    double sum = 0;
    for (int i = 0; i < n; i++)
        sorted[i] = rows[i], sum += rows[i].fwd_s + rows[i].bwd_s;
    qsort(sorted, (size_t)n, sizeof *sorted, by_time);
    printf("  op profile (one more step, waiting for the device after every op): %.3f s in ops "
           "vs best step %.3f s; product ops: model %s forward / backward (tensor.h: "
           "dvl_node_flops)\n",
           sum, best, unit >= 1e12 ? "TFLOP/s" : "GFLOP/s");
    for (int i = 0; i < n; i++) {
        const dvl_op_time *r = &sorted[i];
        printf("    %-22s forward %9.2f ms (%4" PRId64 " calls)  backward %9.2f ms (%4" PRId64
               ")  %5.1f%%",
               r->op, r->fwd_s * 1e3, r->fwd_n, r->bwd_s * 1e3, r->bwd_n,
               100.0 * (r->fwd_s + r->bwd_s) / sum);
        if (r->fwd_flops > 0)
            printf("  %8.1f / %8.1f", r->fwd_flops / r->fwd_s / unit,
                   r->bwd_s > 0 ? r->bwd_flops / r->bwd_s / unit : 0.0);
        printf("\n");
    }
}

/* --frozen: the input embeddings as a leaf that needs a gradient (as the
 * connector's outputs do in stage 1) instead of the token ids, so that the
 * gradient runs through every frozen layer. */
static void embed_leaf(dvl_ctx *ctx, const dvl_lm *lm, dvl_lm_input *li)
{
    li->embeds = dvl_lm_embed(ctx, lm, li->ids, li->batch * li->seq);
    li->ids = NULL;
    if (li->embeds)
        li->embeds->requires_grad = true;
}

static const bench_opt TRAIN_OPTS[] = {
    {"--device", 's'}, {"--seq", 'i'}, {"--batch", 'i'}, {"--layers", 'i'}, {"--steps", 'i'},
    {"--block", 'i'}, {"--vocab", 'i'}, {"--shape", 's'}, {"--profile", 0}, {"--checkpoint", 0},
    {"--separate", 0}, {"--frozen", 0}, {"--tf32", 0}, {"--bf16", 0}, {"--ranks", 'i'},
    {"--zero-init", 0}, {"--bf16-copies", 's'}, {"--f32-activations", 0}, {"--attention", 's'},
    {NULL, 0}};

static const char TRAIN_USAGE[] =
    "usage: dvl-bench train [--device cpu|cuda] [--seq L] [--batch N] [--layers K] "
    "[--steps S] [--block B] [--vocab V] [--shape 0.5b|7b] [--profile] "
    "[--checkpoint] [--separate] [--tf32 | --bf16 (cuda)] [--ranks R (cuda)]\n"
    "       [--frozen] [--zero-init] [--bf16-copies none|frozen|all] "
    "[--f32-activations] [--attention f32|tf32|bf16] (cuda)\n"
    "  --profile: one more step with the op profile on: time per op\n"
    "  --checkpoint: recompute each layer in backward (activation checkpointing)\n"
    "  --separate: one product per projection (not q|k|v and gate|up fused)\n"
    "  --ranks R: AdamW moments of one ZeRO-1 rank of R only (its memory)\n"
    "  --zero-init (cuda): leave the weights at zero (memory plans at full depth)\n"
    "  --frozen: a stage-1 step: the LM frozen, gradient to the inputs\n"
    "  --bf16-copies none|frozen|all (cuda, --bf16): weights with bf16 copies "
    "(default frozen)\n"
    "  --f32-activations (cuda, --bf16): keep the MLP's activations in f32 "
    "(default bf16)\n"
    "  --attention f32|tf32|bf16 (cuda): attention's kernels in that arithmetic "
    "(default: the products')\n";

int bench_train(int argc, char **argv)
{
    bench_args args, *a = &args;
    int code;
    if (!bench_args_parse("train", TRAIN_USAGE, argc, argv, TRAIN_OPTS, a, &code))
        return code;
    const char *dev = bench_str(a, "--device", "cpu");
    if (strcmp(dev, "cuda") == 0)
        return train_cuda(a);
    if (strcmp(dev, "cpu") != 0) {
        fprintf(stderr, "dvl-bench train: --device must be cpu or cuda, not '%s'\n", dev);
        return 2;
    }
    const char *cuda_only[] = {"--tf32", "--bf16", "--ranks", "--zero-init", "--bf16-copies",
                               "--f32-activations", "--attention"};
    for (size_t i = 0; i < sizeof cuda_only / sizeof *cuda_only; i++)
        if (bench_flag(a, cuda_only[i])) {
            fprintf(stderr, "dvl-bench train: %s needs --device cuda\n", cuda_only[i]);
            return 2;
        }
    int L = bench_int(a, "--seq", 512), N = bench_int(a, "--batch", 1);
    int layers = bench_int(a, "--layers", 24), steps = bench_int(a, "--steps", 3);
    int B = bench_int(a, "--block", 8), V = bench_int(a, "--vocab", 151936);
    if (L < B || L % B || N < 1 || layers < 1 || steps < 1 || B < 1 || V < 16) {
        fprintf(stderr, "dvl-bench train: --seq must be a positive multiple of --block; "
                        "--batch, --layers, --steps >= 1; --vocab >= 16\n");
        return 2;
    }
    dvl_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.arch = DVL_ARCH_QWEN2;
    const char *shape = bench_str(a, "--shape", "0.5b");
    if (!bench_shape(shape, layers, V, &mc.lm)) {
        fprintf(stderr, "dvl-bench train: --shape must be 0.5b or 7b, not '%s'\n", shape);
        return 2;
    }
    const dvl_lm_config *c = &mc.lm;
    const bool frozen = bench_flag(a, "--frozen");
    dvl_err err = {0};
    dvl_model m;
    if (dvl_model_init(&m, &mc, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    if (frozen)
        dvl_params_set_trainable(m.params, "", false);
    if (dvl_params_alloc(m.params, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    dvl_model_init_random(&m, 1);
    dvl_adamw *opt = frozen ? NULL : dvl_adamw_new(m.params, 0.9f, 0.999f, 1e-8f, 0.0f, &err);
    dvl_diff_cfg dc;
    dvl_diff_cfg_qwen(&dc);
    dc.block_size = B;
    dc.mask_id = V - 1;
    dc.eos_id = V - 2;
    dc.pad_id = 0;
    dc.block_align_eos = false;
    dvl_diff_batch *db = dvl_diff_batch_new(N, L, &err);
    if ((!opt && !frozen) || !db) {
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
    /* One rank, global batch N; each step below draws its own noise. */
    dvl_diff_draw draw = {.seed = 7};
    if (dvl_diff_make_batch(db, &dc, &draw, seqs, N, L, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    dvl_mask mask = dvl_diff_attn_mask(db, B);
    const double pairs = (double)dvl_mask_pairs(&mask, 2 * L, 2 * L);
    double attn = 4.0 * (double)c->head_dim * (double)c->heads * pairs * N * (double)layers;
    double head = 2.0 * d * (double)V * (double)L * N;
    /* --frozen: no dW products (forward and dx: 2 x forward). */
    double flops = (frozen ? 2.0 : 3.0) * (lin + head) + 3.0 * attn;

    printf("dvl-bench train: ");
    print_shape(shape, c, m.params->numel);
    printf("\n");
    printf("  stage 2 step%s: batch %d x [x_t ; x_0] of 2 x %d = %d positions, block %d; "
           "%.1f GFLOP per step (%.0f%% attention over %.0f allowed pairs per sequence)\n",
           frozen ? " as stage 1 (LM frozen, gradient to the input embeddings)" : "", N, L, 2 * L,
           B, flops / 1e9, 100.0 * 3.0 * attn / flops, pairs);
    fflush(stdout);
    double peak = sgemm_peak(2048);

    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    double best = 1e30, total = 0;
    const bool prof = bench_flag(a, "--profile");
    const bool ckpt = bench_flag(a, "--checkpoint");
    const bool separate = bench_flag(a, "--separate");
    for (int k = 0; k <= steps + prof; k++) {
        double t0 = bench_now();
        dvl_params_zero_grad(m.params);
        dvl_ctx_reset(ctx);
        draw.seed = (uint64_t)k;
        if (dvl_diff_make_batch(db, &dc, &draw, seqs, N, L, &err)) {
            fprintf(stderr, "dvl-bench train: %s\n", err.msg);
            return 1;
        }
        mask = dvl_diff_attn_mask(db, B);
        dvl_ctx_profile(ctx, k > steps); /* the extra step of --profile */
        dvl_lm_input li = {.batch = N, .seq = 2 * L, .ids = db->ids, .pos = db->pos, .mask = &mask,
                           .checkpoint = ckpt, .separate_projections = separate};
        if (frozen)
            embed_leaf(ctx, &m.lm, &li);
        dvl_tensor *h = dvl_lm_forward(ctx, &m.lm, &li);
        dvl_tensor *hn = dvl_gather_rows(ctx, h, db->noisy_rows, (int64_t)N * L);
        dvl_tensor *loss = dvl_lm_loss(ctx, &m.lm, hn, N, L, db->labels, db->weight, false);
        const size_t act = dvl_arena_used(ctx);
        if (!loss || dvl_backward(ctx, loss)) {
            fprintf(stderr, "dvl-bench train: %s\n", dvl_ctx_err(ctx)->msg);
            return 1;
        }
        if (k == 0)
            print_arena(act, dvl_arena_peak(ctx), 2 * L * N, layers);
        if (opt)
            dvl_adamw_step(opt, 1e-5f, clip_at_1(dvl_grad_norm(m.params)));
        double t = bench_now() - t0;
        if (k > steps)
            break;
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
    if (prof)
        print_profile(ctx, best, 1e9);
    dvl_ctx_free(ctx);
    dvl_adamw_free(opt);
    dvl_diff_batch_free(db);
    dvl_model_free(&m);
    free(ids);
    free(seqs);
    return 0;
}

/* ------------------------------------------------------------------ GPU */
#ifndef DVL_HAVE_CUDA
static int train_cuda(const bench_args *a)
{
    (void)a;
    fprintf(stderr, "dvl-bench train: --device cuda needs a CUDA build "
                    "(meson setup -Dcuda=enabled with nvcc installed)\n");
    return 1;
}
#else

#define TRAIN_OOM 3 /* run_cuda: the step did not fit in device memory */

/* cuBLAS GEMM rates at 4096^3 in TFLOP/s (2 n^3 per product, mean of 10
 * after 3 warm-ups): peak[0] f32, [1] TF32, [2] bf16 inputs with f32
 * accumulation (the better of f32 and bf16 output). */
static int gemm_peaks(double peak[3], dvl_err *err)
{
    const int64_t n = 4096, nn = n * n, iters = 10;
    int rc = DVL_ENOMEM;
    float *h = malloc((size_t)nn * sizeof(float));
    uint16_t *hb = malloc((size_t)nn * sizeof(uint16_t));
    float *a = NULL, *c = NULL;
    uint16_t *ab = NULL, *cb = NULL;
    dvl_cublas *blas = NULL;
    if (!h || !hb) {
        dvl_errf(err, DVL_ENOMEM, "gemm peak: out of host memory");
        goto done;
    }
    dvl_rng r;
    dvl_rng_seed(&r, 3);
    dvl_rng_fill_normal(&r, h, nn, 1.0f);
    for (int64_t i = 0; i < nn; i++) { /* bf16 by round to nearest even */
        uint32_t u;
        memcpy(&u, &h[i], 4);
        hb[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    if (!(a = dvl_cuda_malloc((size_t)nn * 4, err)) || !(c = dvl_cuda_malloc((size_t)nn * 4, err)) ||
        !(ab = dvl_cuda_malloc((size_t)nn * 2, err)) ||
        !(cb = dvl_cuda_malloc((size_t)nn * 2, err)) ||
        (rc = dvl_cuda_memcpy_h2d(a, h, (size_t)nn * 4, err)) ||
        (rc = dvl_cuda_memcpy_h2d(ab, hb, (size_t)nn * 2, err)) ||
        !(blas = dvl_cublas_new(false, err))) {
        rc = err->code ? err->code : DVL_EDEVICE;
        goto done;
    }
    double rate[4] = {0};
    for (int kind = 0; kind < 4; kind++) {
        if ((rc = dvl_cublas_set_tf32(blas, kind == 1, err)))
            goto done;
        double t0 = 0;
        for (int64_t it = 0; it < 3 + iters; it++) {
            if (it == 3) {
                if ((rc = dvl_cuda_sync("gemm peak warm-up", err)))
                    goto done;
                t0 = bench_now();
            }
            rc = kind < 2 ? dvl_cuda_linear_fwd(blas, c, a, a, NULL, n, n, n, err)
                          : dvl_cuda_matmul_bf16(blas, kind == 2 ? (void *)c : (void *)cb,
                                                 kind == 2 ? DVL_F32 : DVL_BF16, ab, ab, n, n, n,
                                                 err);
            if (rc)
                goto done;
        }
        if ((rc = dvl_cuda_sync("gemm peak", err)))
            goto done;
        rate[kind] = 2.0 * (double)n * n * n * iters / (bench_now() - t0) / 1e12;
    }
    peak[0] = rate[0];
    peak[1] = rate[1];
    peak[2] = rate[2] > rate[3] ? rate[2] : rate[3];
    rc = DVL_OK;
done:
    dvl_cublas_free(blas);
    dvl_cuda_free(a), dvl_cuda_free(c), dvl_cuda_free(ab), dvl_cuda_free(cb);
    free(h), free(hb);
    return rc;
}

/* The device twin of each of the model's parameter tensors (same name). */
static void rebind(dvl_tensor **t, const dvl_params *pd)
{
    if (*t)
        *t = dvl_params_find(pd, (*t)->name);
}

static void lm_to_device(dvl_lm *lm, const dvl_params *pd)
{
    rebind(&lm->embed, pd);
    rebind(&lm->norm, pd);
    rebind(&lm->head, pd);
    for (int i = 0; i < lm->cfg.layers; i++) {
        dvl_lm_layer *l = &lm->layer[i];
        dvl_tensor **ts[] = {&l->attn_norm, &l->wq, &l->bq,       &l->wk,   &l->bk,
                             &l->wv,        &l->bv, &l->wo,       &l->mlp_norm,
                             &l->w_gate,    &l->w_up, &l->w_down};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++)
            rebind(ts[k], pd);
    }
}

typedef struct cuda_run {
    dvl_model *m;
    dvl_params *pd;
    dvl_adamw *opt;
    const dvl_diff_cfg *dc;
    int N, layers, steps, B, V;
    dvl_cuda_math math; /* of the context's products */
    int attention;      /* --attention: a dvl_cuda_math, or -1: math's */
    double peak[3];
    bool profile;    /* --profile */
    bool checkpoint; /* --checkpoint */
    bool separate;   /* --separate */
    bool frozen;     /* --frozen: stage-1 step, LM frozen, no optimizer (opt NULL) */
    bool f32_act;    /* --f32-activations: bf16 products on f32 activations */
    int ranks;       /* --ranks: the optimizer holds rank 0's ZeRO-1 shard */
} cuda_run;

static bool is_oom(const dvl_err *e)
{
    return e->code == DVL_ENOMEM || strstr(e->msg, "out of memory") != NULL;
}

/* Steps at sequence length L on a fresh context. 0, TRAIN_OOM when the
 * warm-up step ran out of device memory (nothing printed as a result), or 1
 * on any other error (printed). */
static int run_cuda(const cuda_run *r, int L)
{
    const dvl_lm_config *c = &r->m->lm.cfg;
    const int N = r->N, B = r->B;
    dvl_err err = {0};
    int rc = 1;
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    dvl_diff_batch *db = dvl_diff_batch_new(N, L, &err);
    int32_t *ids = malloc((size_t)N * L * sizeof *ids);
    dvl_diff_seq *seqs = malloc((size_t)N * sizeof *seqs);
    if (!ctx || !db || !ids || !seqs) {
        fprintf(stderr, "dvl-bench train: %s\n", err.code ? err.msg : "out of host memory");
        goto done;
    }
    if (dvl_cublas_set_math(dvl_ctx_cublas(ctx), r->math, &err) ||
        dvl_cublas_set_attention_math(dvl_ctx_cublas(ctx), r->attention, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        goto done;
    }
    dvl_ctx_set_bf16_activations(ctx, !r->f32_act);
    dvl_rng rng;
    dvl_rng_seed(&rng, 7);
    for (int64_t i = 0; i < (int64_t)N * L; i++)
        ids[i] = (int32_t)(dvl_rng_u64(&rng) % (uint64_t)(r->V - 2));
    for (int s = 0; s < N; s++)
        seqs[s] = (dvl_diff_seq){ids + (int64_t)s * L, ids + (int64_t)s * L, L};
    dvl_diff_draw draw = {.seed = 7};
    if (dvl_diff_make_batch(db, r->dc, &draw, seqs, N, L, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        goto done;
    }
    dvl_mask mask = dvl_diff_attn_mask(db, B);
    const double pairs = (double)dvl_mask_pairs(&mask, 2 * L, 2 * L);
    /* Parameters that multiply: an untied embedding is a lookup. */
    const double P = (double)r->m->params->numel - (c->tied ? 0.0 : (double)c->vocab * c->hidden),
                 pos = 2.0 * L * N;
    const double attn = 12.0 * (double)c->head_dim * (double)c->heads * pairs * N * r->layers;
    /* Frozen weights: forward and the dx products, no dW ones. */
    const double per_param = r->frozen ? 4.0 : 6.0, model_flops = per_param * P * pos + attn;
    /* The CPU bench's count of useful work (LM head on the noisy half only). */
    double d = (double)c->hidden, qd = (double)(c->heads * c->head_dim),
           kvd = (double)(c->kv_heads * c->head_dim), ff = (double)c->intermediate;
    double lin = 2.0 * pos * (d * qd + 2 * d * kvd + qd * d + 3 * d * ff) * r->layers;
    double useful = (per_param / 2) * (lin + 2.0 * d * r->V * (double)L * N) + attn;

    double best = 1e30, total = 0, phase[3] = {0}; /* of the best step */
    for (int k = 0; k <= r->steps + r->profile; k++) {
        double tp[4]; /* phase boundaries: forward, backward, clip + AdamW */
        double t0 = bench_now();
        dvl_params_zero_grad(r->pd);
        dvl_ctx_reset(ctx);
        draw.seed = (uint64_t)k;
        if (dvl_diff_make_batch(db, r->dc, &draw, seqs, N, L, &err)) {
            fprintf(stderr, "dvl-bench train: %s\n", err.msg);
            goto done;
        }
        mask = dvl_diff_attn_mask(db, B);
        dvl_ctx_profile(ctx, k > r->steps); /* the extra step of --profile */
        dvl_lm_input li = {.batch = N, .seq = 2 * L, .ids = db->ids, .pos = db->pos, .mask = &mask,
                           .checkpoint = r->checkpoint, .separate_projections = r->separate};
        if (r->frozen)
            embed_leaf(ctx, &r->m->lm, &li);
        dvl_tensor *h = dvl_lm_forward(ctx, &r->m->lm, &li);
        dvl_tensor *hn = dvl_gather_rows(ctx, h, db->noisy_rows, (int64_t)N * L);
        dvl_tensor *loss = dvl_lm_loss(ctx, &r->m->lm, hn, N, L, db->labels, db->weight, false);
        const size_t act = dvl_arena_used(ctx);
        /* The syncs that split the step into phases cost a few launches'
         * latency; the queue is empty at each anyway (the host waits for the
         * grad norm at the end). */
        dvl_cuda_sync("forward", &err);
        tp[1] = bench_now();
        if (!loss || dvl_backward(ctx, loss) || dvl_cuda_sync("backward", &err)) {
            const dvl_err *e = err.code ? &err : dvl_ctx_err(ctx);
            if (k == 0 && is_oom(e)) {
                printf("  seq %d: does not fit in device memory (%s)\n", L, e->msg);
                rc = TRAIN_OOM;
            } else {
                fprintf(stderr, "dvl-bench train: seq %d: %s\n", L, e->msg);
            }
            goto done;
        }
        if (k == 0) {
            print_arena(act, dvl_arena_peak(ctx), 2 * L * N, r->layers);
            /* What one rank of a ZeRO-1 run holds, as the device counts it
             * (the CUDA context and cuBLAS workspace included). */
            size_t free_b, total_b;
            if (dvl_cuda_mem_info(&free_b, &total_b, &err) == DVL_OK)
                printf("  device memory after the warm-up's backward: %.2f of %.2f GiB in use "
                       "(weights + grads %.2f GiB, AdamW moments %.2f GiB%s)\n",
                       (double)(total_b - free_b) / 1073741824.0, total_b / 1073741824.0,
                       (double)(r->pd->numel + r->pd->numel_grad) * 4 / 1073741824.0,
                       r->opt ? (double)dvl_adamw_state_bytes(r->opt) / 1073741824.0 : 0.0,
                       r->ranks > 1 ? ", rank 0's ZeRO-1 shard" : "");
        }
        tp[2] = bench_now();
        double gn = dvl_grad_norm(r->pd);
        if (!isfinite(gn)) {
            fprintf(stderr, "dvl-bench train: gradient norm %g (non-finite or device error)\n",
                    gn);
            goto done;
        }
        if (r->opt)
            dvl_adamw_step(r->opt, 1e-5f, clip_at_1(gn));
        if (dvl_params_refresh_bf16(r->pd, &err)) { /* --bf16-copies all */
            fprintf(stderr, "dvl-bench train: %s\n", err.msg);
            goto done;
        }
        float l = NAN;
        if (dvl_cuda_sync("train step", &err) || dvl_tensor_to_host(ctx, loss, &l)) {
            fprintf(stderr, "dvl-bench train: %s\n",
                    err.code ? err.msg : dvl_ctx_err(ctx)->msg);
            goto done;
        }
        tp[0] = t0, tp[3] = bench_now();
        double t = tp[3] - t0;
        if (k > r->steps)
            break;
        if (k == 0)
            printf("  seq %d: stage 2 step%s: batch %d x [x_t ; x_0] of 2 x %d = %d positions, "
                   "block %d, %.0f allowed pairs per sequence\n",
                   L, r->frozen ? " as stage 1 (LM frozen, gradient to the input embeddings)" : "",
                   N, L, 2 * L, B, pairs);
        printf("  step %d%s: %.3f s (forward + loss %.3f, backward %.3f, clip + AdamW %.3f), "
               "loss %.4f, grad norm %.3f\n",
               k, k == 0 ? " (warm-up)" : "", t, tp[1] - tp[0], tp[2] - tp[1], tp[3] - tp[2], l,
               gn);
        fflush(stdout);
        if (k > 0) {
            total += t;
            if (t < best) {
                best = t;
                for (int p = 0; p < 3; p++)
                    phase[p] = tp[p + 1] - tp[p];
            }
        }
    }
    double tokens = (double)N * L, tf = model_flops / best / 1e12;
    printf("  best step %.3f s (mean %.3f s): %.0f tokens/s (seq tokens; %.0f positions/s over "
           "2 x %d); forward + loss %.0f%%, backward %.0f%%, clip + AdamW %.0f%%\n",
           best, total / r->steps, tokens / best, pos / best, L, 100 * phase[0] / best,
           100 * phase[1] / best, 100 * phase[2] / best);
    printf("  model FLOPs = %.0f P (2L N) + 12 layers Hq D pairs N = %.1f TFLOP per step "
           "(P %.0f, attention %.1f%%): %.2f TFLOP/s\n",
           per_param, model_flops / 1e12, P, 100.0 * attn / model_flops, tf);
    printf("  useful FLOPs (CPU bench count, LM head on the noisy half) %.1f TFLOP per step: "
           "%.2f TFLOP/s\n",
           useful / 1e12, useful / best / 1e12);
    static const char *math_names[3] = {"f32", "TF32", "bf16"};
    printf("  MFU (model FLOPs, cuBLAS %s products) vs measured 4096^3 peaks: f32 %.1f TFLOP/s "
           "-> %.1f%%, tf32 %.1f -> %.1f%%, bf16 %.1f -> %.1f%%\n",
           math_names[r->math], r->peak[0], 100.0 * tf / r->peak[0], r->peak[1],
           100.0 * tf / r->peak[1], r->peak[2], 100.0 * tf / r->peak[2]);
    if (r->profile)
        print_profile(ctx, best, 1e12);
    rc = 0;
done:
    dvl_ctx_free(ctx);
    dvl_diff_batch_free(db);
    free(ids);
    free(seqs);
    return rc;
}

static int train_cuda(const bench_args *a)
{
    int L = bench_int(a, "--seq", 2048), N = bench_int(a, "--batch", 1);
    int layers = bench_int(a, "--layers", 24), steps = bench_int(a, "--steps", 3);
    int B = bench_int(a, "--block", 8), V = bench_int(a, "--vocab", 151936);
    bool tf32 = bench_flag(a, "--tf32"), bf16 = bench_flag(a, "--bf16");
    if (tf32 && bf16) {
        fprintf(stderr, "dvl-bench train: --tf32 and --bf16 exclude each other\n");
        return 2;
    }
    if (L < B || L % B || N < 1 || layers < 1 || steps < 1 || B < 1 || V < 16) {
        fprintf(stderr, "dvl-bench train: --seq must be a positive multiple of --block; "
                        "--batch, --layers, --steps >= 1; --vocab >= 16\n");
        return 2;
    }
    dvl_err err = {0};
    if (dvl_cuda_probe(&err) == 0) {
        fprintf(stderr, "dvl-bench train: no usable CUDA device (%s)\n",
                err.code ? err.msg : "0 devices");
        return 1;
    }
    char desc[256] = "?";
    if (dvl_cuda_init(0, &err) || dvl_cuda_describe(0, desc, sizeof desc, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    const char *an = bench_str(a, "--attention", NULL);
    const int attention = !an                    ? -1
                          : !strcmp(an, "f32")  ? DVL_MATH_F32
                          : !strcmp(an, "tf32") ? DVL_MATH_TF32
                          : !strcmp(an, "bf16") ? DVL_MATH_BF16
                                                : -2;
    if (attention == -2) {
        fprintf(stderr, "dvl-bench train: --attention must be f32, tf32 or bf16, not '%s'\n", an);
        return 2;
    }
    const int ranks = bench_int(a, "--ranks", 1);
    if (ranks < 1) {
        fprintf(stderr, "dvl-bench train: --ranks must be >= 1\n");
        return 2;
    }
    cuda_run r = {.N = N, .layers = layers, .steps = steps, .B = B, .V = V,
                  .profile = bench_flag(a, "--profile"),
                  .checkpoint = bench_flag(a, "--checkpoint"),
                  .separate = bench_flag(a, "--separate"),
                  .frozen = bench_flag(a, "--frozen"),
                  .f32_act = bench_flag(a, "--f32-activations"),
                  .ranks = ranks, .attention = attention,
                  .math = bf16 ? DVL_MATH_BF16 : tf32 ? DVL_MATH_TF32 : DVL_MATH_F32};
    if (gemm_peaks(r.peak, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    printf("dvl-bench train --device cuda on %s%s%s%s%s\n", desc,
           bf16 ? ", bf16 products (f32 accumulation)" : tf32 ? ", cuBLAS TF32" : "",
           !bf16             ? ""
           : r.f32_act       ? ", f32 activations"
                             : ", bf16 MLP activations",
           an ? ", attention kernels in " : "", an ? an : "");
    printf("  cuBLAS 4096^3 peaks (same run): f32 %.1f TFLOP/s, tf32 %.1f, bf16 %.1f\n", r.peak[0],
           r.peak[1], r.peak[2]);
    dvl_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.arch = DVL_ARCH_QWEN2;
    const char *shape = bench_str(a, "--shape", "0.5b");
    if (!bench_shape(shape, layers, V, &mc.lm)) {
        fprintf(stderr, "dvl-bench train: --shape must be 0.5b or 7b, not '%s'\n", shape);
        return 2;
    }
    dvl_model m;
    if (dvl_model_init(&m, &mc, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        return 1;
    }
    if (r.frozen)
        dvl_params_set_trainable(m.params, "", false);
    if (dvl_params_alloc(m.params, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        dvl_model_free(&m);
        return 1;
    }
    /* --zero-init: the weights stay zero (memory plans of a full 7B depth
     * without minutes of host-side random initialisation; the numbers are
     * degenerate, so the step times are only indicative). */
    if (!bench_flag(a, "--zero-init"))
        dvl_model_init_random(&m, 1);
    else
        printf("  --zero-init: weights left at zero (for memory; step times only indicative)\n");
    dvl_params *pd = dvl_params_to_device(m.params, DVL_CUDA, &err);
    const char *cm = bench_str(a, "--bf16-copies", "frozen");
    if (strcmp(cm, "none") && strcmp(cm, "frozen") && strcmp(cm, "all")) {
        fprintf(stderr, "dvl-bench train: --bf16-copies must be none, frozen or all, not '%s'\n",
                cm);
        dvl_params_free(pd);
        dvl_model_free(&m);
        return 2;
    }
    const dvl_bf16_copies copies = !bf16 || !strcmp(cm, "none") ? DVL_BF16_NONE
                                   : !strcmp(cm, "all")        ? DVL_BF16_ALL
                                                               : DVL_BF16_FROZEN;
    if (pd && dvl_params_keep_bf16(pd, copies, &err)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        dvl_params_free(pd);
        dvl_model_free(&m);
        return 1;
    }
    /* --ranks R: the moments of rank 0's shard only, as a ZeRO-1 rank holds
     * (its step updates that shard; the timing leaves out the collectives). */
    int64_t lo = 0, hi = pd ? pd->numel_grad : 0;
    if (pd && ranks > 1)
        dvl_adamw_shard(pd->numel_grad, ranks, 0, &lo, &hi);
    dvl_adamw *opt = pd && !r.frozen
                         ? dvl_adamw_new_shard(pd, lo, hi, 0.9f, 0.999f, 1e-8f, 0.0f, &err)
                         : NULL;
    if (!pd || (!opt && !r.frozen)) {
        fprintf(stderr, "dvl-bench train: %s\n", err.msg);
        dvl_params_free(pd);
        dvl_model_free(&m);
        return 1;
    }
    lm_to_device(&m.lm, pd);
    dvl_diff_cfg dc;
    dvl_diff_cfg_qwen(&dc);
    dc.block_size = B;
    dc.mask_id = V - 1;
    dc.eos_id = V - 2;
    dc.pad_id = 0;
    dc.block_align_eos = false;
    r.m = &m, r.pd = pd, r.opt = opt, r.dc = &dc;
    printf("  ");
    print_shape(shape, &mc.lm, pd->numel);
    printf(" on the device%s%s\n", r.frozen ? ", frozen" : " (+ grads, AdamW m and v)",
           pd->numel_bf16 ? (copies == DVL_BF16_ALL ? ", bf16 copies of every weight"
                                                    : ", bf16 copies of the frozen weights")
           : bf16         ? ", no bf16 copies (W rounded in every product)"
                          : "");
    fflush(stdout);
    int rc = TRAIN_OOM;
    for (; L >= B && rc == TRAIN_OOM; L /= 2) {
        if (L % B) {
            fprintf(stderr, "dvl-bench train: seq %d is not a multiple of block %d\n", L, B);
            rc = 1;
            break;
        }
        rc = run_cuda(&r, L);
        if (rc == TRAIN_OOM) {
            /* The failed step may have updated nothing: AdamW ran only
             * after a complete backward. Zero the step count anyway so the
             * run at the smaller L starts like a fresh one. */
            if (opt)
                opt->step = 0;
        }
    }
    if (rc == TRAIN_OOM)
        fprintf(stderr, "dvl-bench train: no sequence length fits in device memory\n");
    dvl_adamw_free(opt);
    dvl_params_free(pd);
    dvl_model_free(&m);
    return rc ? 1 : 0;
}
#endif
