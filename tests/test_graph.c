/* Whole-graph gradient check: the loss of a 2-layer toy transformer, its
 * gradient projected on a random direction d against the central difference
 * (L(theta + h d) - L(theta - h d)) / 2h; plus stage-1 style freezing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toy.h"

static const toy_cfg CFG = {.vocab = 23, .dim = 16, .layers = 2, .heads = 4, .kv_heads = 2,
                            .ffn = 24, .seq = 9, .batch = 2};

static double loss_at(dvl_ctx *ctx, dvl_params *p, const toy_batch *b)
{
    dvl_ctx_reset(ctx);
    bool prev = dvl_set_grad_enabled(ctx, false);
    dvl_tensor *l = toy_loss(ctx, &CFG, p, b);
    dvl_set_grad_enabled(ctx, prev);
    ck_assert_msg(l != NULL, "%s", dvl_ctx_err(ctx)->msg);
    return dvl_f32(l)[0];
}

START_TEST(directional_derivative_matches_finite_difference)
{
    dvl_params *p = toy_params(&CFG, 11);
    toy_batch b = toy_batch_new(&CFG, 12);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *l = toy_loss(ctx, &CFG, p, &b);
    ck_assert_msg(l != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);

    /* d: random direction, unit norm over all parameters. */
    int64_t n = p->numel;
    float *d = malloc((size_t)n * sizeof *d), *theta = malloc((size_t)n * sizeof *theta);
    dvl_rng r;
    dvl_rng_seed(&r, 13);
    dvl_rng_fill_normal(&r, d, n, 1.0f);
    double norm = 0, gd = 0;
    for (int64_t i = 0; i < n; i++)
        norm += (double)d[i] * d[i];
    for (int64_t i = 0; i < n; i++)
        d[i] = (float)(d[i] / sqrt(norm));
    /* All parameters are trainable here, so data and grad share a layout. */
    ck_assert_int_eq(p->numel, p->numel_grad);
    for (int64_t i = 0; i < n; i++)
        gd += (double)p->grad[i] * d[i];
    memcpy(theta, p->data, (size_t)n * sizeof *theta);

    /* f32 loss has ~1e-7 relative resolution; h = 1e-2 keeps the rounding
     * error of the difference near 1e-5 while the truncation error
     * (O(h^2) times the third derivative) stays far smaller. */
    const float h = 1e-2f;
    for (int64_t i = 0; i < n; i++)
        p->data[i] = theta[i] + h * d[i];
    double lp = loss_at(ctx, p, &b);
    for (int64_t i = 0; i < n; i++)
        p->data[i] = theta[i] - h * d[i];
    double lm = loss_at(ctx, p, &b);
    double fd = (lp - lm) / (2.0 * h);
    printf("directional derivative: analytic %.7g, finite difference %.7g\n", gd, fd);
    /* Tolerance: 1% of the directional derivative. */
    ck_assert_msg(fabs(gd) > 1e-3, "directional derivative too small to test: %g", gd);
    ck_assert_msg(fabs(fd - gd) <= 1e-2 * fabs(gd), "analytic %.7g vs finite difference %.7g", gd,
                  fd);
    free(d);
    free(theta);
    dvl_ctx_free(ctx);
    toy_batch_free(&b);
    dvl_params_free(p);
}
END_TEST

/* Freeze everything but the last layer's MLP: the frozen parameters get no
 * gradient buffer, the trainable ones get the same gradient as when
 * everything trains (activation gradients flow through frozen layers). */
START_TEST(frozen_parameters_get_no_gradient)
{
    dvl_params *full = toy_params(&CFG, 21);
    toy_batch b = toy_batch_new(&CFG, 22);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *l = toy_loss(ctx, &CFG, full, &b);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);

    dvl_params *part = dvl_params_new();
    dvl_err err = {0};
    for (int i = 0; i < full->n; i++) {
        dvl_tensor *t = full->t[i];
        bool train = strncmp(t->name, "l0.", 3) == 0 && strstr(t->name, "gate");
        ck_assert_ptr_nonnull(dvl_params_add(part, t->name, t->ndim, t->shape, train, &err));
    }
    ck_assert_int_eq(dvl_params_alloc(part, &err), 0);
    for (int i = 0; i < full->n; i++)
        memcpy(part->t[i]->data, full->t[i]->data, (size_t)dvl_numel(full->t[i]) * 4);
    dvl_ctx_reset(ctx);
    l = toy_loss(ctx, &CFG, part, &b);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);
    dvl_tensor *g = dvl_params_find(part, "l0.gate.w");
    ck_assert_int_eq(part->numel_grad, (dvl_numel(g) + 15) / 16 * 16);
    for (int i = 0; i < part->n; i++)
        if (part->t[i] != g)
            ck_assert_ptr_null(part->t[i]->grad);
    dvl_tensor *gf = dvl_params_find(full, "l0.gate.w");
    ck_assert_double_le(tu_max_abs_diff(g->grad, gf->grad, dvl_numel(g)), 1e-6);

    /* Nothing trainable at all: no tape is recorded. */
    dvl_params_set_trainable(part, "", false);
    for (int i = 0; i < part->n; i++)
        part->t[i]->requires_grad = false;
    dvl_ctx_reset(ctx);
    l = toy_loss(ctx, &CFG, part, &b);
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_ctx_free(ctx);
    toy_batch_free(&b);
    dvl_params_free(full);
    dvl_params_free(part);
}
END_TEST

/* ------------------------------------------------- activation checkpointing */

/* A residual block y = x + silu(x W1^T) W2^T over the store's w1, w2. */
static dvl_tensor *res_block(dvl_ctx *ctx, const void *user, dvl_tensor *x)
{
    dvl_params *p = (dvl_params *)user;
    dvl_tensor *h = dvl_silu(ctx, dvl_linear(ctx, x, dvl_params_find(p, "w1"), NULL));
    return dvl_add(ctx, x, dvl_linear(ctx, h, dvl_params_find(p, "w2"), NULL));
}

static dvl_tensor *shrink_block(dvl_ctx *ctx, const void *user, dvl_tensor *x)
{
    (void)user;
    return dvl_sum(ctx, x);
}

/* Three blocks, checkpointed or not: sum(block^3(x)). x's gradient (when x
 * needs one) and the parameters' gradients into gx, gp. */
static void run_blocks(dvl_params *p, const float *xv, bool x_grad, bool ck, float *gx, float *gp,
                       int *tape)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t shape[2] = {5, 8};
    dvl_tensor *x = dvl_from_host(ctx, DVL_F32, 2, shape, xv);
    ck_assert_ptr_nonnull(x);
    x->requires_grad = x_grad;
    dvl_params_zero_grad(p);
    dvl_tensor *y = x;
    for (int i = 0; i < 3; i++)
        y = ck ? dvl_checkpoint(ctx, res_block, p, y) : res_block(ctx, p, y);
    dvl_tensor *l = dvl_sum(ctx, y);
    ck_assert_msg(l != NULL, "%s", dvl_ctx_err(ctx)->msg);
    *tape = dvl_tape_len(ctx);
    ck_assert_msg(dvl_backward(ctx, l) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    if (x_grad)
        memcpy(gx, dvl_grad(ctx, x), 40 * sizeof(float));
    memcpy(gp, p->grad, (size_t)p->numel_grad * sizeof(float));
    dvl_ctx_free(ctx);
}

/* dvl_checkpoint gives the gradients of the plain graph to the bit, with
 * the input needing a gradient or not, records one node per block; a block
 * that changes the shape is an error; with grad mode off it is the block. */
START_TEST(checkpoint_same_gradients)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    const int64_t s1[2] = {12, 8}, s2[2] = {8, 12};
    ck_assert_ptr_nonnull(dvl_params_add(p, "w1", 2, s1, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(p, "w2", 2, s2, true, &err));
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(dvl_params_find(p, "w1"), 1, 0.5f);
    tu_randn(dvl_params_find(p, "w2"), 2, 0.5f);
    float xv[40], gx[2][40], *gp[2];
    for (int i = 0; i < 40; i++)
        xv[i] = sinf(0.7f * (float)i);
    for (int k = 0; k < 2; k++)
        gp[k] = malloc((size_t)p->numel_grad * sizeof(float));
    for (int x_grad = 0; x_grad < 2; x_grad++) {
        int tape[2];
        for (int ck = 0; ck < 2; ck++)
            run_blocks(p, xv, x_grad, ck, gx[ck], gp[ck], &tape[ck]);
        ck_assert_int_eq(tape[1], 4); /* three checkpoints and the sum */
        ck_assert_int_gt(tape[0], tape[1]);
        ck_assert(memcmp(gp[0], gp[1], (size_t)p->numel_grad * sizeof(float)) == 0);
        if (x_grad)
            ck_assert(memcmp(gx[0], gx[1], sizeof gx[0]) == 0);
    }
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t shape[2] = {5, 8};
    dvl_tensor *x = dvl_from_host(ctx, DVL_F32, 2, shape, xv);
    x->requires_grad = true;
    /* The op profile on, and the tape a few nodes short of its first
     * capacity (256): the recomputation inside backward grows (moves) the
     * tape under the node being run (ASan checks that nothing reads it). */
    dvl_ctx_profile(ctx, true);
    dvl_tensor *y = x;
    for (int i = 0; i < 250; i++)
        y = dvl_scale(ctx, y, 1.0f);
    for (int i = 0; i < 3; i++)
        y = dvl_checkpoint(ctx, res_block, p, y);
    ck_assert_msg(dvl_backward(ctx, dvl_sum(ctx, y)) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    const dvl_op_time *rows;
    int nrows = dvl_ctx_profile_rows(ctx, &rows), ck_row = -1;
    for (int i = 0; i < nrows; i++)
        if (strcmp(rows[i].op, "checkpoint") == 0)
            ck_row = i;
    ck_assert_int_ge(ck_row, 0);
    ck_assert_int_eq(rows[ck_row].fwd_n, 3);
    ck_assert_int_eq(rows[ck_row].bwd_n, 3);
    dvl_ctx_profile(ctx, false);
    dvl_ctx_reset(ctx);
    x = dvl_from_host(ctx, DVL_F32, 2, shape, xv);
    x->requires_grad = true;
    ck_assert_ptr_null(dvl_checkpoint(ctx, shrink_block, NULL, x));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "must keep the shape"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    dvl_set_grad_enabled(ctx, false);
    ck_assert_ptr_nonnull(dvl_checkpoint(ctx, res_block, p, x));
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_ctx_free(ctx);
    free(gp[0]), free(gp[1]);
    dvl_params_free(p);
}
END_TEST

/* Two weights of one block: y = x + silu(x A^T) B^T. */
typedef struct pair_block {
    dvl_tensor *a, *b;
} pair_block;

static dvl_tensor *pair_fwd(dvl_ctx *ctx, const void *user, dvl_tensor *x)
{
    const pair_block *w = user;
    dvl_tensor *h = dvl_silu(ctx, dvl_linear(ctx, x, w->a, NULL));
    return dvl_add(ctx, x, dvl_linear(ctx, h, w->b, NULL));
}

typedef struct ready_log {
    dvl_tensor *order[8];
    float grad0[8];  /* grad[0] of each parameter when it was reported */
    float first[8];  /* sum of |grad| of the first block's weights then */
    dvl_tensor *a1, *b1;
    int n;
} ready_log;

static void on_ready(void *user, dvl_tensor *param)
{
    ready_log *l = user;
    float s = 0;
    for (int64_t i = 0; i < dvl_numel(l->a1); i++)
        s += fabsf(l->a1->grad[i]) + fabsf(l->b1->grad[i]);
    l->grad0[l->n] = param->grad[0];
    l->first[l->n] = s;
    l->order[l->n++] = param;
}

/* The gradient-ready hook through checkpointed blocks: each trainable
 * parameter is reported once, when its gradient is final; the second
 * block's own weight before the first block has been recomputed (so that
 * data-parallel buckets overlap backward); a weight that the second block
 * shares with ops outside it only after the earliest of them has run. */
START_TEST(checkpoint_reports_ready_gradients)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    const int64_t sq[2] = {8, 8};
    const char *names[4] = {"a1", "b1", "a2", "shared"};
    dvl_tensor *w[4];
    for (int i = 0; i < 4; i++)
        w[i] = dvl_params_add(p, names[i], 2, sq, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    for (int i = 0; i < 4; i++)
        tu_randn(w[i], (uint64_t)i + 1, 0.5f);
    dvl_params_zero_grad(p);
    pair_block blk[2] = {{w[0], w[1]}, {w[2], w[3]}};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ready_log log = {.a1 = w[0], .b1 = w[1]};
    dvl_set_grad_ready_hook(ctx, on_ready, &log);
    float xv[40];
    for (int i = 0; i < 40; i++)
        xv[i] = cosf(0.3f * (float)i);
    const int64_t shape[2] = {5, 8};
    dvl_tensor *y = dvl_from_host(ctx, DVL_F32, 2, shape, xv);
    y = dvl_linear(ctx, y, w[3], NULL); /* the shared weight's first use */
    for (int i = 0; i < 2; i++)
        y = dvl_checkpoint(ctx, pair_fwd, &blk[i], y);
    y = dvl_linear(ctx, y, w[3], NULL);
    ck_assert_msg(dvl_backward(ctx, dvl_sum(ctx, y)) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(log.n, 4);
    ck_assert_ptr_eq(log.order[0], w[2]);
    ck_assert_float_eq(log.first[0], 0.0f); /* the first block not yet run */
    ck_assert((log.order[1] == w[0] && log.order[2] == w[1]) ||
              (log.order[1] == w[1] && log.order[2] == w[0]));
    ck_assert_ptr_eq(log.order[3], w[3]);
    ck_assert_float_gt(log.first[3], 0.0f);
    for (int i = 0; i < log.n; i++)
        ck_assert_float_eq(log.grad0[i], log.order[i]->grad[0]);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* Backward gives each activation's gradient block back once the node that
 * produced the activation has run, and the next gradient of that size
 * takes it: the memory backward adds does not grow with depth (a chain
 * of k linear + SiLU layers), while the leaf input and the parameter keep
 * their gradients, equal to those of a run that keeps every gradient
 * (dvl_set_keep_grads). */
static size_t chain_backward_bytes(dvl_params *p, int k, float *gx, bool keep)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_set_keep_grads(ctx, keep);
    const int64_t shape[2] = {32, 16};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 2, shape);
    tu_randn(x, 9, 1.0f);
    x->requires_grad = true;
    dvl_tensor *y = x, *first = NULL;
    for (int i = 0; i < k; i++) {
        y = dvl_silu(ctx, dvl_linear(ctx, y, dvl_params_find(p, "w"), NULL));
        first = first ? first : y;
    }
    dvl_tensor *loss = dvl_sum(ctx, y);
    const size_t fwd = dvl_arena_used(ctx);
    dvl_params_zero_grad(p);
    ck_assert_msg(dvl_backward(ctx, loss) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    const size_t bwd = dvl_arena_peak(ctx) - fwd;
    ck_assert(dvl_has_grad(x));
    memcpy(gx, dvl_grad(ctx, x), 32 * 16 * sizeof(float));
    /* an intermediate's gradient: kept only when asked for */
    ck_assert(dvl_has_grad(first) == keep);
    dvl_ctx_free(ctx);
    return bwd;
}

START_TEST(backward_reuses_gradient_blocks)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    const int64_t sw[2] = {16, 16};
    ck_assert_ptr_nonnull(dvl_params_add(p, "w", 2, sw, true, &err));
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(dvl_params_find(p, "w"), 4, 0.3f);
    static float gx[3][512];
    float *gw = malloc((size_t)p->numel_grad * sizeof(float));
    ck_assert_ptr_nonnull(gw);
    size_t b2 = chain_backward_bytes(p, 2, gx[0], false);
    size_t b12 = chain_backward_bytes(p, 12, gx[1], false);
    memcpy(gw, p->grad, (size_t)p->numel_grad * sizeof(float));
    /* dvl_set_keep_grads: every gradient kept, the same values */
    size_t kept = chain_backward_bytes(p, 12, gx[2], true);
    printf("backward arena: %zu bytes at depth 2, %zu at depth 12, %zu keeping gradients (a "
           "gradient block: %zu)\n",
           b2, b12, kept, (size_t)32 * 16 * sizeof(float));
    ck_assert_uint_eq(b12, b2);
    ck_assert_uint_ge(kept, b12 + 20 * 32 * 16 * sizeof(float));
    ck_assert(memcmp(gx[1], gx[2], sizeof gx[1]) == 0);
    ck_assert(memcmp(gw, p->grad, (size_t)p->numel_grad * sizeof(float)) == 0);
    for (int i = 0; i < 512; i++)
        ck_assert(isfinite(gx[1][i]));
    free(gw);
    dvl_params_free(p);
}
END_TEST

/* The op profile counts every node of the tape once forward and once
 * backward (each node here has a gradient to pass on), under the name the
 * op recorded, with finite non-negative times; off, it counts nothing; on
 * again, it starts from an empty table. */
START_TEST(op_profile_counts_each_node)
{
    dvl_params *p = toy_params(&CFG, 31);
    toy_batch b = toy_batch_new(&CFG, 32);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const dvl_op_time *rows;
    dvl_ctx_profile(ctx, true);
    dvl_tensor *l = toy_loss(ctx, &CFG, p, &b);
    ck_assert_ptr_nonnull(l);
    const int nodes = dvl_tape_len(ctx);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);
    int n = dvl_ctx_profile_rows(ctx, &rows);
    ck_assert_int_ge(n, 4); /* embedding, rmsnorm, linear, attention, ... */
    int64_t fwd = 0, bwd = 0;
    bool saw_attention = false;
    for (int i = 0; i < n; i++) {
        ck_assert(isfinite(rows[i].fwd_s) && rows[i].fwd_s >= 0);
        ck_assert(isfinite(rows[i].bwd_s) && rows[i].bwd_s >= 0);
        ck_assert_int_eq(rows[i].fwd_n, rows[i].bwd_n);
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(rows[i].op, rows[j].op);
        saw_attention |= !strcmp(rows[i].op, "attention");
        fwd += rows[i].fwd_n, bwd += rows[i].bwd_n;
    }
    ck_assert(saw_attention);
    ck_assert_int_eq(fwd, nodes);
    ck_assert_int_eq(bwd, nodes);

    dvl_ctx_profile(ctx, false);
    dvl_ctx_reset(ctx);
    l = toy_loss(ctx, &CFG, p, &b);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);
    int64_t again = 0;
    for (int i = 0; i < dvl_ctx_profile_rows(ctx, &rows); i++)
        again += rows[i].fwd_n;
    ck_assert_int_eq(again, nodes); /* unchanged while off */
    dvl_ctx_profile(ctx, true);
    ck_assert_int_eq(dvl_ctx_profile_rows(ctx, &rows), 0);
    dvl_ctx_free(ctx);
    toy_batch_free(&b);
    dvl_params_free(p);
}
END_TEST

/* The model FLOPs the product ops report to the profile (dvl_node_flops),
 * worked out by hand for a small graph: 2 per multiply-add; backward one
 * product per input that needs a gradient (frozen W: dx only); attention
 * 4 D per allowed pair and head, backward twice that. */
static dvl_tensor *filled(dvl_ctx *ctx, int64_t rows, int64_t cols, float scale, bool grad)
{
    dvl_tensor *t = dvl_new2(ctx, rows, cols);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < rows * cols; i++)
        dvl_f32(t)[i] = scale * (float)((i * 7) % 11 - 5);
    t->requires_grad = grad;
    return t;
}

START_TEST(op_profile_counts_model_flops)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_ctx_profile(ctx, true);
    ck_assert(dvl_ctx_profiling(ctx));
    dvl_tensor *x = filled(ctx, 6, 8, 0.1f, true), *wc = filled(ctx, 8, 8, 0.05f, true),
               *wf = filled(ctx, 8, 8, 0.05f, false), *wk = filled(ctx, 4, 8, 0.05f, true),
               *wv = filled(ctx, 10, 8, 0.05f, true);
    /* linear_cat: 2*6*8*8 = 768 forward; dx and dW 1536. linear: frozen
     * 768 / 768 (dx only) plus 2*6*8*4 = 384 / 768. */
    dvl_tensor *h = dvl_linear(ctx, dvl_linear_cat(ctx, x, 1, &wc, NULL), wf, NULL);
    dvl_tensor *k = dvl_linear(ctx, x, wk, NULL);
    const int64_t sq[4] = {1, 6, 2, 4}, skv[4] = {1, 6, 1, 4}, s2[2] = {6, 8};
    dvl_mask causal = {.kind = DVL_MASK_CAUSAL};
    dvl_tensor *kv = dvl_reshape(ctx, k, 4, skv);
    /* 21 causal pairs of 6: 4*D*heads*pairs = 4*4*2*21 = 672; backward 1344. */
    dvl_tensor *a = dvl_attention(ctx, dvl_reshape(ctx, h, 4, sq), kv, kv, &causal, 0.5f);
    /* 4 scored rows: 2*4*8*10 = 640 forward; dh and dW 1280. */
    const int32_t labels[6] = {1, DVL_IGNORE_INDEX, 3, 9, DVL_IGNORE_INDEX, 0};
    dvl_tensor *l = dvl_linear_cross_entropy(ctx, dvl_reshape(ctx, a, 2, s2), wv, labels, NULL, 0);
    ck_assert_msg(l != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_backward(ctx, l), 0);
    const struct {
        const char *op;
        double fwd, bwd;
    } want[] = {{"linear_cat", 768, 1536},
                {"linear", 768 + 384, 768 + 768},
                {"attention", 672, 1344},
                {"linear_cross_entropy", 640, 1280}};
    const dvl_op_time *rows;
    const int n = dvl_ctx_profile_rows(ctx, &rows);
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        int found = 0;
        for (int i = 0; i < n; i++)
            if (!strcmp(rows[i].op, want[w].op)) {
                found++;
                ck_assert_msg(rows[i].fwd_flops == want[w].fwd && rows[i].bwd_flops == want[w].bwd,
                              "%s: %g / %g FLOPs, want %g / %g", want[w].op, rows[i].fwd_flops,
                              rows[i].bwd_flops, want[w].fwd, want[w].bwd);
            }
        ck_assert_int_eq(found, 1);
    }
    for (int i = 0; i < n; i++) /* reshapes and the rest report none */
        if (!strcmp(rows[i].op, "reshape"))
            ck_assert(rows[i].fwd_flops == 0 && rows[i].bwd_flops == 0);
    /* Off: nothing counted, and turning it on again clears the table. */
    dvl_ctx_profile(ctx, false);
    ck_assert(!dvl_ctx_profiling(ctx));
    dvl_ctx_reset(ctx);
    dvl_tensor *x2 = filled(ctx, 6, 8, 0.1f, true), *w2 = filled(ctx, 8, 8, 0.05f, true);
    dvl_tensor *y2 = dvl_linear(ctx, x2, w2, NULL);
    ck_assert_ptr_nonnull(y2);
    for (int i = 0; i < dvl_ctx_profile_rows(ctx, &rows); i++)
        if (!strcmp(rows[i].op, "linear"))
            ck_assert(rows[i].fwd_flops == 768 + 384);
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("graph");
    TCase *tc = tcase_create("graph");
    tcase_add_test(tc, directional_derivative_matches_finite_difference);
    tcase_add_test(tc, frozen_parameters_get_no_gradient);
    tcase_add_test(tc, checkpoint_same_gradients);
    tcase_add_test(tc, checkpoint_reports_ready_gradients);
    tcase_add_test(tc, op_profile_counts_each_node);
    tcase_add_test(tc, op_profile_counts_model_flops);
    tcase_add_test(tc, backward_reuses_gradient_blocks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
