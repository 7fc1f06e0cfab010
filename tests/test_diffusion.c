/* Block diffusion maths (src/diffusion): antithetic noise levels, masking,
 * the [x_t ; x_0] batch layout with its labels and loss weights, block-
 * aligned EOS, the attention rule against BD3-LM's block_diff_mask, the
 * transfer schedule, token sampling filters and low-confidence remasking. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/batch.h"
#include "diffusion/decode.h"
#include "diffusion/noise.h"
#include "util.h"

/* ------------------------------------------------------------ noise levels */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

START_TEST(antithetic_t_is_stratified_and_in_range)
{
    /* G rows of nb cells drawn one after another from one stream are the
     * bd3lms grid of n = G nb cells; shapes with one row, one column and
     * both. */
    enum { N = 35 };
    const int64_t shapes[3][2] = {{1, 35}, {5, 7}, {35, 1}};
    dvl_rng rng;
    dvl_rng_seed(&rng, 7);
    for (int sh = 0; sh < 3; sh++) {
        const int64_t G = shapes[sh][0], nb = shapes[sh][1];
        for (int rep = 0; rep < 20; rep++) {
            double u[N];
            for (int64_t g = 0; g < G; g++)
                dvl_diff_sample_u(&rng, g, G, nb, true, u + g * nb);
            /* Cell i holds u in [i/n, (i+1)/n) ... */
            for (int i = 0; i < N; i++)
                ck_assert_msg(u[i] >= (double)i / N && u[i] < (double)(i + 1) / N,
                              "%lld x %lld: u[%d] = %.17g outside its stratum", (long long)G,
                              (long long)nb, i, u[i]);
            /* ... so, sorted, exactly one u per interval of width 1/n. */
            qsort(u, N, sizeof u[0], cmp_double);
            for (int i = 0; i < N; i++)
                ck_assert_int_eq((int)floor(u[i] * N), i);
        }
    }
    /* t = eps_min + (eps_max - eps_min) u, inside [eps_min, eps_max]; row 2
     * of 5 alone draws the same as in the grid. */
    float t[7];
    dvl_rng_seed(&rng, 8);
    dvl_diff_sample_t(&rng, 2, 5, 7, true, 1e-3, 1.0, t);
    dvl_rng r2;
    dvl_rng_seed(&r2, 8);
    double u[7];
    dvl_diff_sample_u(&r2, 2, 5, 7, true, u);
    for (int i = 0; i < 7; i++) {
        ck_assert(u[i] >= (14.0 + i) / 35 && u[i] < (15.0 + i) / 35);
        ck_assert(t[i] >= 1e-3f && t[i] <= 1.0f);
        ck_assert_float_eq(t[i], (float)(1e-3 + (1.0 - 1e-3) * u[i]));
    }
    dvl_diff_sample_t(&rng, 0, 1, 7, true, 0.25, 0.5, t);
    for (int i = 0; i < 7; i++)
        ck_assert(t[i] >= 0.25f && t[i] <= 0.5f);
    /* Without antithetic sampling: plain U[0,1) draws, whatever the row. */
    double v[N];
    dvl_diff_sample_u(&rng, 3, 5, N, false, v);
    int low = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(v[i] >= 0.0 && v[i] < 1.0);
        low += v[i] < (double)(N / 2) / N;
    }
    ck_assert(low > 0 && low < N); /* not stratified by index: both halves visited */
    /* Sample seeds: a function of (step seed, g), different for neighbours. */
    ck_assert_uint_eq(dvl_diff_sample_seed(5, 3), dvl_diff_sample_seed(5, 3));
    ck_assert_uint_ne(dvl_diff_sample_seed(5, 3), dvl_diff_sample_seed(5, 4));
    ck_assert_uint_ne(dvl_diff_sample_seed(5, 3), dvl_diff_sample_seed(6, 3));
}
END_TEST

/* ------------------------------------------------------------------ masking */

START_TEST(mask_rate_matches_t_and_spares_unsupervised)
{
    enum { LEN = 4096, REPS = 25 };
    int32_t *x0 = malloc(LEN * sizeof *x0), *lab = malloc(LEN * sizeof *lab);
    int32_t *xt = malloc(LEN * sizeof *xt);
    uint8_t *m = malloc(LEN);
    /* Every third position unsupervised. */
    int64_t n_sup = 0;
    for (int i = 0; i < LEN; i++) {
        x0[i] = 100 + i % 50;
        lab[i] = i % 3 == 0 ? DVL_IGNORE_INDEX : x0[i];
        n_sup += lab[i] != DVL_IGNORE_INDEX;
    }
    dvl_rng rng;
    dvl_rng_seed(&rng, 11);
    const float ts[] = {0.05f, 0.3f, 0.5f, 0.9f};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        /* One block spanning the sequence: every position uses t. */
        float t = ts[k];
        int64_t hits = 0;
        for (int r = 0; r < REPS; r++) {
            int64_t c = dvl_diff_mask(&rng, x0, lab, LEN, &t, LEN, 7, xt, m);
            int64_t recount = 0;
            for (int i = 0; i < LEN; i++) {
                if (lab[i] == DVL_IGNORE_INDEX)
                    ck_assert_msg(!m[i] && xt[i] == x0[i], "unsupervised %d masked", i);
                ck_assert_int_eq(xt[i], m[i] ? 7 : x0[i]);
                recount += m[i];
            }
            ck_assert_int_eq(c, recount);
            hits += c;
        }
        /* Binomial(n_sup * REPS, t): within 5 standard errors. */
        double trials = (double)n_sup * REPS, rate = (double)hits / trials;
        double se = sqrt(t * (1.0 - t) / trials);
        ck_assert_msg(fabs(rate - t) < 5 * se, "t %.2f: masked rate %.5f (se %.5f)", t, rate, se);
    }
    /* t = 1 masks every supervised token. */
    float one = 1.0f;
    ck_assert_int_eq(dvl_diff_mask(&rng, x0, lab, LEN, &one, LEN, 7, xt, m), n_sup);
    /* Per-block t: block b of 64 uses t[b]; alternate 1 and tiny t. */
    float tb[LEN / 64];
    for (int b = 0; b < LEN / 64; b++)
        tb[b] = b % 2 ? 1.0f : 0.0f;
    dvl_diff_mask(&rng, x0, lab, LEN, tb, 64, 7, xt, m);
    for (int i = 0; i < LEN; i++)
        ck_assert_int_eq(m[i], lab[i] != DVL_IGNORE_INDEX && (i / 64) % 2);
    free(x0);
    free(lab);
    free(xt);
    free(m);
}
END_TEST

/* ------------------------------------------------------- block-aligned EOS */

START_TEST(block_align_pads_the_end_with_supervised_eos)
{
    int32_t ids[16] = {1, 2, 3, 4, 5}, lab[16] = {-100, -100, 3, 4, 5};
    int64_t len = 5;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_diff_block_align(ids, lab, &len, 16, 4, 99, &err), 0);
    const int32_t want_ids[8] = {1, 2, 3, 4, 5, 99, 99, 99};
    const int32_t want_lab[8] = {-100, -100, 3, 4, 5, 99, 99, 99};
    ck_assert_int_eq(len, 8);
    ck_assert_mem_eq(ids, want_ids, sizeof want_ids);
    ck_assert_mem_eq(lab, want_lab, sizeof want_lab);
    /* Already aligned, and empty: unchanged. */
    ck_assert_int_eq(dvl_diff_block_align(ids, lab, &len, 16, 4, 99, &err), 0);
    ck_assert_int_eq(len, 8);
    int64_t zero = 0;
    ck_assert_int_eq(dvl_diff_block_align(ids, lab, &zero, 16, 4, 99, &err), 0);
    ck_assert_int_eq(zero, 0);
    ck_assert_int_eq(dvl_diff_aligned_len(9, 8), 16);
    ck_assert_int_eq(dvl_diff_aligned_len(16, 8), 16);
    /* Not enough room: an error naming the sizes, buffers untouched. */
    int64_t len9 = 9;
    ck_assert_int_eq(dvl_diff_block_align(ids, lab, &len9, 12, 8, 99, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "capacity 16, have 12"));
    ck_assert_int_eq(len9, 9);
}
END_TEST

/* ------------------------------------------------------------------ batches */

/* The next step's noise: a fresh seed each call (one global batch). */
static const dvl_diff_draw *next_draw(dvl_diff_draw *d)
{
    d->seed++;
    return d;
}

static void cfg_test(dvl_diff_cfg *c, int B)
{
    dvl_diff_cfg_qwen(c);
    c->block_size = B;
    c->mask_id = 1000;
    c->pad_id = 2000;
    c->eos_id = 3000;
}

START_TEST(batch_layout_positions_and_padding)
{
    /* Two samples, B = 4, no EOS alignment: lengths 5 and 11 -> L = 12. */
    const int32_t ids0[5] = {10, 11, 12, 13, 14}, lab0[5] = {-100, -100, 12, 13, 14};
    const int32_t ids1[11] = {20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
    const int32_t lab1[11] = {-100, -100, -100, -100, -100, -100, 26, 27, 28, 29, 30};
    dvl_diff_seq seqs[2] = {{ids0, lab0, 5}, {ids1, lab1, 11}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    cfg.block_align_eos = false;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(4, 32, &err);
    ck_assert_ptr_nonnull(b);
    dvl_diff_draw draw = {.seed = 3};
    /* Several draws: the layout rules hold whatever gets masked. */
    for (int rep = 0; rep < 50; rep++) {
        ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 0, &err), 0);
        ck_assert_int_eq(b->n, 2);
        ck_assert_int_eq(b->L, 12);
        ck_assert_int_eq(b->nblocks, 3);
        const int64_t L = b->L;
        int64_t masked = 0;
        for (int s = 0; s < 2; s++) {
            const dvl_diff_seq *q = &seqs[s];
            ck_assert_int_eq(b->len[s], q->len);
            ck_assert_int_eq(b->n_sup[s], s == 0 ? 3 : 5);
            for (int64_t j = 0; j < L; j++) {
                const int64_t r = s * 2 * L + j;
                const bool real = j < q->len;
                /* x_0 half: the tokens then pad_id; positions 0..L-1 twice. */
                ck_assert_int_eq(b->ids[r + L], real ? q->ids[j] : 2000);
                ck_assert_int_eq(b->pos[r], j);
                ck_assert_int_eq(b->pos[r + L], j);
                ck_assert_int_eq(b->key_valid[r], real);
                ck_assert_int_eq(b->key_valid[r + L], real);
                ck_assert_int_eq(b->noisy_rows[s * L + j], r);
                /* x_t half: mask_id exactly where masked; only supervised
                 * real tokens can be masked. */
                const uint8_t m = b->masked[s * L + j];
                const bool sup = real && q->labels[j] != DVL_IGNORE_INDEX;
                ck_assert(!m || sup);
                ck_assert_int_eq(b->ids[r], m ? 1000 : (real ? q->ids[j] : 2000));
                /* Unshifted labels: the clean token at masked rows. */
                ck_assert_int_eq(b->labels[s * L + j], m ? q->ids[j] : DVL_IGNORE_INDEX);
                if (!m)
                    ck_assert_float_eq(b->weight[s * L + j], 0.0f);
                masked += m;
            }
        }
        ck_assert_int_eq(b->n_masked, masked);
        ck_assert_int_eq(b->n_labelled, masked);
    }
    /* A fixed L: 16 is accepted, 14 (not a multiple) and 8 (too short) are not. */
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 16, &err), 0);
    ck_assert_int_eq(b->L, 16);
    ck_assert_int_eq(b->key_valid[15], 0);
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 14, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "L 14"));
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 8, &err), DVL_EINVAL);
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 64, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "capacity 32"));
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 5, 0, &err), DVL_EINVAL);
    /* Shifted (AR-style) labels are refused, naming sample and position. */
    const int32_t bad[5] = {-100, 12, 13, 14, -100};
    dvl_diff_seq badq[1] = {{ids0, bad, 5}};
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), badq, 1, 0, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "sequence 0 position 1: label 12 differs"));
    cfg.eps_min = 0.0;
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 0, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "eps_min"));
    dvl_diff_batch_free(b);
}
END_TEST

START_TEST(batch_block_aligned_eos)
{
    /* Length 5 with B = 4 becomes 8 with three supervised EOS; the other
     * sample (length 9 -> 12) sets L = 12. */
    const int32_t ids0[5] = {10, 11, 12, 13, 14}, lab0[5] = {-100, -100, 12, 13, 14};
    const int32_t ids1[9] = {20, 21, 22, 23, 24, 25, 26, 27, 28};
    const int32_t lab1[9] = {-100, -100, -100, -100, -100, -100, -100, 27, 28};
    dvl_diff_seq seqs[2] = {{ids0, lab0, 5}, {ids1, lab1, 9}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    cfg.eps_min = cfg.eps_max = 1.0; /* t = 1: every supervised token masked */
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(2, 16, &err);
    dvl_diff_draw draw = {.seed = 5};
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 0, &err), 0);
    ck_assert_int_eq(b->L, 12);
    const int32_t x0_0[12] = {10, 11, 12, 13, 14, 3000, 3000, 3000, 2000, 2000, 2000, 2000};
    const int32_t xt_0[12] = {10, 11, 1000, 1000, 1000, 1000, 1000, 1000, 2000, 2000, 2000, 2000};
    const int32_t lab_0[12] = {-100, -100, 12, 13, 14, 3000, 3000, 3000, -100, -100, -100, -100};
    ck_assert_mem_eq(b->ids, xt_0, sizeof xt_0);
    ck_assert_mem_eq(b->ids + 12, x0_0, sizeof x0_0);
    ck_assert_mem_eq(b->labels, lab_0, sizeof lab_0);
    ck_assert_int_eq(b->len[0], 8);
    ck_assert_int_eq(b->n_sup[0], 6);
    ck_assert_int_eq(b->len[1], 12);
    ck_assert_int_eq(b->n_sup[1], 5);
    for (int j = 0; j < 12; j++) {
        ck_assert_int_eq(b->key_valid[j], j < 8);
        ck_assert_int_eq(b->key_valid[12 + j], j < 8);
        ck_assert_int_eq(b->key_valid[24 + j], 1);
    }
    ck_assert_int_eq(b->ids[24 + 12 + 11], 3000);
    dvl_diff_batch_free(b);
}
END_TEST

START_TEST(loss_weights_hand_example)
{
    /* t fixed at 0.5 (eps_min = eps_max), N = 2, n_sup 3 and 5:
     * weight = 1 / (0.5 * 3 * 2) = 1/3 and 1 / (0.5 * 5 * 2) = 1/5. */
    const int32_t ids0[4] = {1, 2, 3, 4}, lab0[4] = {-100, 2, 3, 4};
    const int32_t ids1[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const int32_t lab1[8] = {-100, -100, -100, 4, 5, 6, 7, 8};
    dvl_diff_seq seqs[2] = {{ids0, lab0, 4}, {ids1, lab1, 8}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    cfg.eps_min = cfg.eps_max = 0.5;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(2, 8, &err);
    dvl_diff_draw draw = {.seed = 9};
    int seen0 = 0, seen1 = 0;
    for (int rep = 0; rep < 20; rep++) {
        ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 2, 0, &err), 0);
        for (int j = 0; j < 8; j++) {
            if (b->masked[j]) {
                ck_assert_float_eq_tol(b->weight[j], 1.0f / 3.0f, 1e-7f);
                seen0++;
            }
            if (b->masked[8 + j]) {
                ck_assert_float_eq_tol(b->weight[8 + j], 0.2f, 1e-7f);
                seen1++;
            }
        }
    }
    ck_assert(seen0 > 0 && seen1 > 0);
    dvl_diff_batch_free(b);
}
END_TEST

/* The weighted cross-entropy over the batch's rows equals the DiffusionVL
 * loss written out: 1/N sum_s 1/n_sup(s) sum_{i masked} CE_i / t. */
START_TEST(loss_weights_give_the_diffusionvl_loss)
{
    enum { V = 16, B = 4 };
    const int32_t ids0[7] = {1, 2, 3, 4, 5, 6, 7}, lab0[7] = {-100, -100, 3, 4, 5, 6, 7};
    const int32_t ids1[10] = {8, 9, 10, 11, 12, 13, 14, 1, 2, 3};
    const int32_t lab1[10] = {-100, 9, 10, 11, 12, 13, 14, 1, 2, 3};
    const int32_t ids2[3] = {4, 5, 6}, lab2[3] = {-100, -100, 6};
    dvl_diff_seq seqs[3] = {{ids0, lab0, 7}, {ids1, lab1, 10}, {ids2, lab2, 3}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, B);
    cfg.eos_id = 15;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(3, 16, &err);
    dvl_diff_draw draw = {.seed = 21};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    for (int shift = 0; shift < 2; shift++) {
        cfg.shift_logits = shift;
        for (int rep = 0; rep < 10; rep++) {
            dvl_ctx_reset(ctx);
            ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 3, 0, &err), 0);
            const int64_t n = b->n, L = b->L, rows = n * L;
            dvl_tensor *logits = dvl_new2(ctx, rows, V);
            tu_randn(logits, 100 + (uint64_t)rep, 2.0f);
            dvl_tensor *loss = dvl_cross_entropy(ctx, logits, b->labels, b->weight);
            ck_assert_ptr_nonnull(loss);
            /* The formula, in double, from the masks and t alone. */
            double want = 0.0;
            for (int64_t s = 0; s < n; s++) {
                double acc = 0.0;
                for (int64_t p = 0; p < L; p++) {
                    if (!b->masked[s * L + p])
                        continue;
                    int64_t row = shift ? p - 1 : p; /* the row that scores position p */
                    if (row < 0)
                        continue;
                    const float *z = dvl_f32(logits) + (s * L + row) * V;
                    double mx = z[0], se = 0.0;
                    for (int v = 1; v < V; v++)
                        mx = z[v] > mx ? z[v] : mx;
                    for (int v = 0; v < V; v++)
                        se += exp(z[v] - mx);
                    const int32_t tok = b->ids[s * 2 * L + L + p];
                    acc += (mx + log(se) - z[tok]) / b->t[s * b->nblocks + p / B];
                }
                want += acc / (double)b->n_sup[s];
            }
            want /= (double)n;
            ck_assert_msg(fabs(dvl_f32(loss)[0] - want) <= 1e-5 * fabs(want) + 1e-6,
                          "shift %d: loss %.8g, formula %.8g", shift, dvl_f32(loss)[0], want);
        }
    }
    dvl_ctx_free(ctx);
    dvl_diff_batch_free(b);
}
END_TEST

START_TEST(shift_logits_labels)
{
    /* B = 4, t = 1 (all supervised masked): supervised positions 2..5. */
    const int32_t ids[6] = {1, 2, 3, 4, 5, 6}, lab[6] = {-100, -100, 3, 4, 5, 6};
    dvl_diff_seq seqs[1] = {{ids, lab, 6}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    cfg.block_align_eos = false;
    cfg.eps_min = cfg.eps_max = 1.0;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(1, 8, &err);
    dvl_diff_draw draw = {.seed = 1};
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 1, 0, &err), 0);
    const int32_t plain[8] = {-100, -100, 3, 4, 5, 6, -100, -100};
    ck_assert_mem_eq(b->labels, plain, sizeof plain);
    cfg.shift_logits = true;
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 1, 0, &err), 0);
    /* Row i carries the token of position i + 1 when that one is masked. */
    const int32_t shifted[8] = {-100, 3, 4, 5, 6, -100, -100, -100};
    ck_assert_mem_eq(b->labels, shifted, sizeof shifted);
    ck_assert_int_eq(b->n_labelled, 4);
    ck_assert_int_eq(b->n_masked, 4);
    ck_assert_float_eq(b->weight[0], 0.0f);
    ck_assert_float_eq_tol(b->weight[1], 0.25f, 1e-7f);
    /* With random t, row i is weighted by the t of position i+1's block:
     * row 3 scores position 4, in block 1. */
    cfg.eps_min = 0.2;
    cfg.eps_max = 0.9;
    for (int rep = 0; rep < 30; rep++) {
        ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 1, 0, &err), 0);
        for (int i = 0; i + 1 < 8; i++)
            if (b->masked[i + 1])
                ck_assert_float_eq_tol(b->weight[i], 1.0f / (b->t[(i + 1) / 4] * 4.0f), 1e-6f);
    }
    dvl_diff_batch_free(b);
}
END_TEST

/* bd3lm_utils.py block_diff_mask, transcribed: the rule DiffusionVL trains
 * with, against the project's DVL_MASK_BLOCK_DIFF. */
static bool ref_block_diff(int64_t q, int64_t kv, int64_t B, int64_t n)
{
    bool x0q = q >= n, x0k = kv >= n;
    int64_t bq = x0q ? (q - n) / B : q / B, bk = x0k ? (kv - n) / B : kv / B;
    bool diag = bq == bk && x0q == x0k;
    bool obc = bq > bk && x0k && !x0q;
    bool bc = bq >= bk && x0k && x0q;
    return diag || obc || bc;
}

START_TEST(attention_mask_matches_bd3lm)
{
    const int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, lab[9] = {-100, 2, 3, 4, 5, 6, 7, 8, 9};
    dvl_diff_seq seqs[1] = {{ids, lab, 9}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    cfg.block_align_eos = false;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(1, 12, &err);
    dvl_diff_draw draw = {.seed = 1};
    ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, next_draw(&draw), seqs, 1, 0, &err), 0);
    dvl_mask m = dvl_diff_attn_mask(b, 4);
    ck_assert_int_eq(m.kind, DVL_MASK_BLOCK_DIFF);
    ck_assert_int_eq(m.half, 12);
    ck_assert_ptr_eq(m.key_valid, b->key_valid);
    for (int64_t q = 0; q < 24; q++)
        for (int64_t k = 0; k < 24; k++)
            ck_assert_msg(dvl_mask_allows(&m, q, k) == ref_block_diff(q, k, 4, 12),
                          "q %lld k %lld", (long long)q, (long long)k);
    dvl_diff_batch_free(b);
}
END_TEST

START_TEST(batch_is_deterministic_and_resumable)
{
    const int32_t ids[13] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    const int32_t lab[13] = {-100, -100, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    dvl_diff_seq seqs[2] = {{ids, lab, 13}, {ids, lab, 7}};
    dvl_diff_cfg cfg;
    cfg_test(&cfg, 4);
    dvl_err err = {0};
    dvl_diff_batch *a = dvl_diff_batch_new(2, 16, &err), *b = dvl_diff_batch_new(2, 16, &err);
    /* The noise is a function of the draw's seed (dvl-train: of train.seed
     * and the step): two builds from the same seed agree, and a resumed
     * run, which only knows the step, redraws it exactly. */
    for (uint64_t step = 0; step < 5; step++) {
        dvl_diff_draw d1 = {.seed = 42 + step}, d2 = d1;
        ck_assert_int_eq(dvl_diff_make_batch(a, &cfg, &d1, seqs, 2, 0, &err), 0);
        ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, &d2, seqs, 2, 0, &err), 0);
        const size_t nl = (size_t)(a->n * a->L);
        ck_assert_mem_eq(a->ids, b->ids, 2 * nl * sizeof *a->ids);
        ck_assert_mem_eq(a->labels, b->labels, nl * sizeof *a->labels);
        ck_assert_mem_eq(a->weight, b->weight, nl * sizeof *a->weight);
        ck_assert_mem_eq(a->t, b->t, (size_t)(a->n * a->nblocks) * sizeof *a->t);
        ck_assert_int_eq(a->n * a->nblocks, 8);
    }
    /* Another seed gives other noise. */
    dvl_diff_draw d1 = {.seed = 42}, d2 = {.seed = 43};
    dvl_diff_make_batch(a, &cfg, &d1, seqs, 2, 0, &err);
    dvl_diff_make_batch(b, &cfg, &d2, seqs, 2, 0, &err);
    ck_assert(memcmp(a->t, b->t, (size_t)(a->n * a->nblocks) * sizeof *a->t) != 0);
    dvl_diff_batch_free(a);
    dvl_diff_batch_free(b);
}
END_TEST

/* A global batch of 6 built whole, and cut into micro batches as 2 ranks
 * (samples 0 2 4 | 1 3 5) and 3 ranks x 2 micro batches (0 | 3 | 1 | 4 |
 * 2 | 5, one sample each, padded to its own L) would: every sample gets the
 * same t on its real blocks, the same masks and the same x_t, and weights
 * that differ only by the batch-size factor. */
START_TEST(noise_depends_on_the_global_index_only)
{
    enum { G = 6, B = 4, CAP = 32 };
    int32_t ids[G][CAP], lab[G][CAP];
    const int64_t lens[G] = {5, 13, 9, 22, 1, 17};
    dvl_diff_seq seqs[G];
    for (int s = 0; s < G; s++) {
        for (int j = 0; j < lens[s]; j++) {
            ids[s][j] = 10 + (s * 7 + j) % 50;
            lab[s][j] = j < 2 ? DVL_IGNORE_INDEX : ids[s][j];
        }
        seqs[s] = (dvl_diff_seq){ids[s], lab[s], lens[s]};
    }
    dvl_diff_cfg cfg;
    cfg_test(&cfg, B);
    dvl_err err = {0};
    dvl_diff_batch *whole = dvl_diff_batch_new(G, CAP, &err), *part = dvl_diff_batch_new(G, CAP, &err);
    const int64_t cuts[2][G] = {{0, 2, 4, 1, 3, 5}, {0, 3, 1, 4, 2, 5}};
    const int64_t per[2] = {3, 1};
    for (uint64_t seed = 1; seed <= 10; seed++) {
        dvl_diff_draw dw = {.seed = seed};
        ck_assert_int_eq(dvl_diff_make_batch(whole, &cfg, &dw, seqs, G, 0, &err), 0);
        const int64_t Lw = whole->L;
        for (int c = 0; c < 2; c++) {
            for (int64_t m0 = 0; m0 < G; m0 += per[c]) {
                const int64_t *index = cuts[c] + m0, n = per[c];
                dvl_diff_seq sub[G];
                for (int64_t k = 0; k < n; k++)
                    sub[k] = seqs[index[k]];
                dvl_diff_draw dp = {.seed = seed, .global_n = G, .index = index};
                ck_assert_int_eq(dvl_diff_make_batch(part, &cfg, &dp, sub, n, 0, &err), 0);
                const int64_t Lp = part->L;
                for (int64_t k = 0; k < n; k++) {
                    const int64_t g = index[k], len = part->len[k], nb = (len + B - 1) / B;
                    ck_assert_int_eq(len, whole->len[g]);
                    ck_assert_mem_eq(part->t + k * part->nblocks, whole->t + g * whole->nblocks,
                                     (size_t)nb * sizeof(float));
                    for (int64_t q = nb; q < whole->nblocks; q++)
                        ck_assert_float_eq(whole->t[g * whole->nblocks + q], 0.0f);
                    ck_assert_mem_eq(part->masked + k * Lp, whole->masked + g * Lw, (size_t)len);
                    ck_assert_mem_eq(part->ids + k * 2 * Lp, whole->ids + g * 2 * Lw,
                                     (size_t)len * sizeof(int32_t));
                    for (int64_t j = 0; j < len; j++) {
                        const float wp = part->weight[k * Lp + j] * (float)n;
                        const float ww = whole->weight[g * Lw + j] * (float)G;
                        ck_assert_msg(fabsf(wp - ww) <= 1e-6f * ww, "sample %lld row %lld: "
                                      "weight x n %.9g vs %.9g", (long long)g, (long long)j,
                                      wp, ww);
                    }
                }
            }
        }
    }
    /* The index must lie in the global batch. */
    const int64_t bad[1] = {6};
    dvl_diff_draw db = {.seed = 1, .global_n = G, .index = bad};
    ck_assert_int_eq(dvl_diff_make_batch(part, &cfg, &db, seqs, 1, 0, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "global index 6 outside the global batch [0, 6)"));
    dvl_diff_draw small = {.seed = 1, .global_n = 2};
    ck_assert_int_eq(dvl_diff_make_batch(part, &cfg, &small, seqs, 3, 0, &err), DVL_EINVAL);
    dvl_diff_batch_free(whole);
    dvl_diff_batch_free(part);
}
END_TEST

/* With antithetic sampling, sample g of G draws its blocks' t from the
 * stratum [g/G, (g+1)/G) of u, cut into its own real blocks; and over many
 * steps the masked count of every sample matches the sum of its t's over
 * its supervised positions (what dvl_diff_mask promises, through the
 * batch). */
START_TEST(batch_t_strata_and_mask_rate)
{
    enum { G = 4, B = 8, CAP = 64, STEPS = 400 };
    int32_t ids[G][CAP], lab[G][CAP];
    const int64_t lens[G] = {64, 40, 17, 56};
    dvl_diff_seq seqs[G];
    for (int s = 0; s < G; s++) {
        for (int j = 0; j < lens[s]; j++) {
            ids[s][j] = 10 + j;
            lab[s][j] = j % 5 == 0 ? DVL_IGNORE_INDEX : ids[s][j];
        }
        seqs[s] = (dvl_diff_seq){ids[s], lab[s], lens[s]};
    }
    dvl_diff_cfg cfg;
    cfg_test(&cfg, B);
    cfg.block_align_eos = false;
    dvl_err err = {0};
    dvl_diff_batch *b = dvl_diff_batch_new(G, CAP, &err);
    double hits[G] = {0}, want[G] = {0}, var[G] = {0};
    for (uint64_t step = 0; step < STEPS; step++) {
        dvl_diff_draw d = {.seed = 1000 + step};
        ck_assert_int_eq(dvl_diff_make_batch(b, &cfg, &d, seqs, G, 0, &err), 0);
        for (int s = 0; s < G; s++) {
            const int64_t nb = (lens[s] + B - 1) / B;
            for (int64_t q = 0; q < nb; q++) {
                const double t = b->t[s * b->nblocks + q];
                const double u = (t - cfg.eps_min) / (cfg.eps_max - cfg.eps_min);
                ck_assert_msg(u >= (double)s / G - 1e-6 && u < (double)(s + 1) / G + 1e-6,
                              "sample %d block %lld: t %.7g outside its stratum", s,
                              (long long)q, t);
            }
            for (int64_t j = 0; j < b->L; j++) {
                const bool sup = j < lens[s] && lab[s][j] != DVL_IGNORE_INDEX;
                const double t = b->t[s * b->nblocks + j / B];
                hits[s] += b->masked[s * b->L + j];
                want[s] += sup ? t : 0.0;
                var[s] += sup ? t * (1.0 - t) : 0.0;
            }
        }
    }
    for (int s = 0; s < G; s++)
        ck_assert_msg(fabs(hits[s] - want[s]) < 5.0 * sqrt(var[s]),
                      "sample %d: %.0f masked, expected %.1f (sd %.1f)", s, hits[s], want[s],
                      sqrt(var[s]));
    dvl_diff_batch_free(b);
}
END_TEST

/* ---------------------------------------------------------------- decoding */

START_TEST(transfer_schedule_table)
{
    int out[8];
    ck_assert_int_eq(dvl_transfer_schedule(8, 8, out), 0);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(out[i], 1);
    ck_assert_int_eq(dvl_transfer_schedule(7, 3, out), 0);
    ck_assert_int_eq(out[0], 3);
    ck_assert_int_eq(out[1], 2);
    ck_assert_int_eq(out[2], 2);
    ck_assert_int_eq(dvl_transfer_schedule(0, 4, out), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(out[i], 0);
    ck_assert_int_eq(dvl_transfer_schedule(3, 5, out), 0);
    const int want35[5] = {1, 1, 1, 0, 0};
    ck_assert_mem_eq(out, want35, sizeof want35);
    ck_assert_int_eq(dvl_transfer_schedule(16, 4, out), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(out[i], 4);
    ck_assert_int_eq(dvl_transfer_schedule(5, 0, out), DVL_EINVAL);
    ck_assert_int_eq(dvl_transfer_schedule(-1, 2, out), DVL_EINVAL);
}
END_TEST

/* Random logits for n positions over V. */
static void rand_logits(float *z, int n, int V, dvl_rng *rng)
{
    for (int i = 0; i < n * V; i++)
        z[i] = 3.0f * dvl_rng_normal(rng);
}

START_TEST(static_commits_the_schedule_over_a_block)
{
    enum { B = 8, V = 11, MASK = 99 };
    float z[B * V];
    dvl_sampler s;
    dvl_sampler_default(&s);
    dvl_err err = {0};
    dvl_decoder *d = dvl_decoder_new(&s, V, B, &err);
    ck_assert_ptr_nonnull(d);
    dvl_rng rng;
    dvl_rng_seed(&rng, 13);
    const int steps_list[] = {8, 3, 5, 1};
    for (int temp = 0; temp < 2; temp++) {
        d->s.temperature = temp ? 0.7f : 0.0f;
        for (size_t si = 0; si < sizeof steps_list / sizeof steps_list[0]; si++) {
            const int S = steps_list[si];
            int32_t x[B];
            for (int j = 0; j < B; j++)
                x[j] = MASK;
            int sched[8];
            ck_assert_int_eq(dvl_transfer_schedule(B, S, sched), 0);
            for (int step = 0; step < S; step++) {
                int before = 0, after = 0;
                for (int j = 0; j < B; j++)
                    before += x[j] == MASK;
                rand_logits(z, B, V, &rng);
                int c = dvl_decode_step(d, x, B, MASK, z, sched[step], &rng);
                for (int j = 0; j < B; j++)
                    after += x[j] == MASK;
                ck_assert_int_eq(c, sched[step]);
                ck_assert_int_eq(before - after, sched[step]);
            }
            for (int j = 0; j < B; j++)
                ck_assert(x[j] != MASK && x[j] >= 0 && x[j] < V);
        }
    }
    /* DiffusionVL's first generated block is partly prompt: the schedule is
     * computed for B = 8 and clamped to the masks left. 5 masks, S = 3:
     * schedule 3 3 2 commits 3, 2, 0. */
    d->s.temperature = 0.0f;
    int32_t x[B] = {1, 2, 3, MASK, MASK, MASK, MASK, MASK};
    int sched[3];
    dvl_transfer_schedule(B, 3, sched);
    const int want[3] = {3, 2, 0};
    for (int step = 0; step < 3; step++) {
        rand_logits(z, B, V, &rng);
        ck_assert_int_eq(dvl_decode_step(d, x, B, MASK, z, sched[step], &rng), want[step]);
    }
    ck_assert(x[0] == 1 && x[1] == 2 && x[2] == 3); /* prompt untouched */
    dvl_decoder_free(d);
}
END_TEST

START_TEST(static_picks_most_confident_ties_low)
{
    const float conf[6] = {0.2f, 0.9f, 0.5f, 0.9f, 0.7f, 0.95f};
    const uint8_t masked[6] = {1, 1, 1, 1, 1, 0};
    uint8_t c[6];
    /* Position 5 is not masked; 1 and 3 tie at 0.9: with k = 1 the lower. */
    ck_assert_int_eq(dvl_select_commits(conf, masked, 6, 1, DVL_REMASK_STATIC, 0.85f, c), 1);
    const uint8_t w1[6] = {0, 1, 0, 0, 0, 0};
    ck_assert_mem_eq(c, w1, 6);
    ck_assert_int_eq(dvl_select_commits(conf, masked, 6, 3, DVL_REMASK_STATIC, 0.85f, c), 3);
    const uint8_t w3[6] = {0, 1, 0, 1, 1, 0};
    ck_assert_mem_eq(c, w3, 6);
    /* k beyond the masks left: all masked. */
    ck_assert_int_eq(dvl_select_commits(conf, masked, 6, 9, DVL_REMASK_STATIC, 0.85f, c), 5);
    ck_assert_int_eq(dvl_select_commits(conf, masked, 6, 0, DVL_REMASK_STATIC, 0.85f, c), 0);
}
END_TEST

START_TEST(dynamic_commits_all_above_tau_and_at_least_k)
{
    enum { N = 16 };
    dvl_rng rng;
    dvl_rng_seed(&rng, 17);
    for (int rep = 0; rep < 2000; rep++) {
        float conf[N];
        uint8_t masked[N], c[N];
        int n_masked = 0, n_high = 0;
        const float tau = 0.85f;
        for (int j = 0; j < N; j++) {
            masked[j] = dvl_rng_uniform(&rng) < 0.7f;
            conf[j] = dvl_rng_uniform(&rng);
            n_masked += masked[j];
            n_high += masked[j] && conf[j] > tau;
        }
        int k = (int)(dvl_rng_u64(&rng) % 6);
        int got = dvl_select_commits(conf, masked, N, k, DVL_REMASK_DYNAMIC, tau, c);
        int count = 0;
        for (int j = 0; j < N; j++) {
            ck_assert(!c[j] || masked[j]);
            count += c[j];
        }
        ck_assert_int_eq(got, count);
        /* Never fewer than k (bounded by the masks left) ... */
        ck_assert_int_ge(count, k < n_masked ? k : n_masked);
        if (n_high >= k) {
            /* ... and, when at least k are above tau, exactly those. */
            for (int j = 0; j < N; j++)
                ck_assert_int_eq(c[j], masked[j] && conf[j] > tau);
        } else {
            /* Otherwise the top k, like static. */
            uint8_t cs[N];
            dvl_select_commits(conf, masked, N, k, DVL_REMASK_STATIC, tau, cs);
            ck_assert_mem_eq(c, cs, N);
        }
    }
}
END_TEST

START_TEST(top_k_top_p_filters)
{
    /* Probabilities 0.4 0.3 0.15 0.1 0.05 scattered over ids 0..5 (id 2
     * nearly impossible). */
    const double pr[6] = {0.1, 0.4, 1e-9, 0.05, 0.3, 0.15};
    float z[6];
    for (int i = 0; i < 6; i++)
        z[i] = (float)log(pr[i]);
    void *scratch = malloc(dvl_sample_scratch_bytes(6));
    const int32_t *idx;
    const double *p;
    dvl_sampler s;
    dvl_sampler_default(&s);
    s.temperature = 1.0f;
    /* No filter: everything, in id order. */
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 6);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(idx[i], i);
        ck_assert_double_eq_tol(p[i], pr[i] / (1.0 + 1e-9), 1e-6);
    }
    /* top_k = 2: ids 1 and 4, renormalised 4/7, 3/7. */
    s.top_k = 2;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 2);
    ck_assert(idx[0] == 1 && idx[1] == 4);
    ck_assert_double_eq_tol(p[0], 4.0 / 7.0, 1e-6);
    ck_assert_double_eq_tol(p[1], 3.0 / 7.0, 1e-6);
    /* top_p: mass before a token must not exceed p. 0.5 keeps 0.4, 0.3
     * (0.7 before the third); 0.75 keeps three; 0.3 keeps only the first. */
    s.top_k = 0;
    s.top_p = 0.5f;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 2);
    ck_assert(idx[0] == 1 && idx[1] == 4);
    s.top_p = 0.75f;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 3);
    ck_assert(idx[0] == 1 && idx[1] == 4 && idx[2] == 5);
    ck_assert_double_eq_tol(p[2], 0.15 / 0.85, 1e-6);
    s.top_p = 0.3f;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 1);
    ck_assert_int_eq(idx[0], 1);
    ck_assert_double_eq_tol(p[0], 1.0, 1e-12);
    /* top_k then top_p: top_k 3 leaves 0.4 0.3 0.15, renormalised 0.47 0.35
     * 0.18; the mass before the third is 0.82, so top_p 0.8 drops it and
     * 0.9 keeps it. */
    s.top_k = 3;
    s.top_p = 0.8f;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 2);
    s.top_p = 0.9f;
    ck_assert_int_eq(dvl_sample_dist(z, 6, &s, scratch, &idx, &p), 3);
    /* Temperature 2: probabilities proportional to sqrt(p). */
    s.top_k = 0;
    s.top_p = 1.0f;
    s.temperature = 2.0f;
    dvl_sample_dist(z, 6, &s, scratch, &idx, &p);
    double norm = 0.0;
    for (int i = 0; i < 6; i++)
        norm += sqrt(pr[i]);
    for (int i = 0; i < 6; i++)
        ck_assert_double_eq_tol(p[i], sqrt(pr[i]) / norm, 1e-6);
    /* Ties at the k-th value survive top_k (torch: `logits < kth` removed). */
    const float tz[5] = {1.0f, 2.0f, 2.0f, 0.0f, 2.0f};
    s.temperature = 1.0f;
    s.top_k = 2;
    ck_assert_int_eq(dvl_sample_dist(tz, 5, &s, scratch, &idx, &p), 3);
    ck_assert(idx[0] == 1 && idx[1] == 2 && idx[2] == 4); /* ties: lower id first */
    free(scratch);
}
END_TEST

START_TEST(sampling_frequencies_and_confidence)
{
    const double pr[6] = {0.1, 0.4, 0.0, 0.05, 0.3, 0.15};
    float z[6];
    for (int i = 0; i < 6; i++)
        z[i] = pr[i] > 0 ? (float)log(pr[i]) : -INFINITY;
    void *scratch = malloc(dvl_sample_scratch_bytes(6));
    dvl_sampler s;
    dvl_sampler_default(&s);
    dvl_rng rng;
    dvl_rng_seed(&rng, 99);
    /* Greedy: the argmax, confidence its probability; first max on ties. */
    float conf = 0.0f;
    ck_assert_int_eq(dvl_sample_token(z, 6, &s, &rng, scratch, &conf), 1);
    ck_assert_float_eq_tol(conf, 0.4f, 1e-6f);
    const float tie[4] = {0.0f, 3.0f, 3.0f, 1.0f};
    ck_assert_int_eq(dvl_sample_token(tie, 4, &s, &rng, scratch, NULL), 1);
    /* top_k = 2 at temperature 0.5: only ids 1 and 4, at 16:9 (p^2 ratio);
     * confidence stays the untempered probability. */
    s.temperature = 0.5f;
    s.top_k = 2;
    enum { DRAWS = 20000 };
    int count[6] = {0};
    for (int r = 0; r < DRAWS; r++) {
        int32_t t = dvl_sample_token(z, 6, &s, &rng, scratch, &conf);
        ck_assert(t == 1 || t == 4);
        ck_assert_float_eq_tol(conf, (float)pr[t], 1e-6f);
        count[t]++;
    }
    const double want = 16.0 / 25.0, se = sqrt(want * (1 - want) / DRAWS);
    ck_assert_msg(fabs((double)count[1] / DRAWS - want) < 5 * se, "freq %d / %d", count[1], DRAWS);
    free(scratch);
}
END_TEST

START_TEST(decoding_is_deterministic)
{
    enum { B = 8, V = 23, MASK = 50 };
    float z[B * V];
    dvl_sampler s;
    dvl_sampler_default(&s);
    s.temperature = 1.0f;
    s.top_p = 0.9f;
    s.remask = DVL_REMASK_DYNAMIC;
    s.tau = 0.3f;
    dvl_err err = {0};
    dvl_decoder *d = dvl_decoder_new(&s, V, B, &err);
    int32_t out[3][B];
    for (int run = 0; run < 3; run++) {
        dvl_rng lg, rng;
        dvl_rng_seed(&lg, 5);
        dvl_rng_seed(&rng, run == 2 ? 8 : 7);
        for (int j = 0; j < B; j++)
            out[run][j] = MASK;
        int sched[4];
        dvl_transfer_schedule(B, 4, sched);
        for (int step = 0; step < 4; step++) {
            rand_logits(z, B, V, &lg);
            dvl_decode_step(d, out[run], B, MASK, z, sched[step], &rng);
        }
    }
    ck_assert_mem_eq(out[0], out[1], sizeof out[0]);
    ck_assert(memcmp(out[0], out[2], sizeof out[0]) != 0);
    ck_assert_int_eq(dvl_decode_step(d, out[0], B + 1, MASK, z, 1, NULL), -1);
    dvl_decoder_free(d);
    ck_assert_ptr_null(dvl_decoder_new(&s, 0, B, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "vocabulary 0"));
}
END_TEST

/* At a vocabulary large enough for the step's OpenMP team (the tests run on
 * 2 threads), greedy and sampled: the proposals, confidences and commits
 * are those of dvl_sample_token position by position in order, to the
 * bit; a position left unmasked keeps its id and a confidence of 0. */
START_TEST(large_vocabulary_step_equals_per_position)
{
    enum { B = 8, V = 40000, MASK = 7 };
    float *z = malloc((size_t)B * V * sizeof *z);
    void *scratch = malloc(dvl_sample_scratch_bytes(V));
    ck_assert(z && scratch);
    dvl_rng lg;
    dvl_rng_seed(&lg, 31);
    rand_logits(z, B, V, &lg);
    for (int mode = 0; mode < 2; mode++) {
        dvl_sampler s;
        dvl_sampler_default(&s);
        if (mode == 1) {
            s.temperature = 0.8f;
            s.top_k = 500;
        }
        dvl_err err = {0};
        dvl_decoder *d = dvl_decoder_new(&s, V, B, &err);
        ck_assert_ptr_nonnull(d);
        int32_t x[B], want_x[B], prop[B] = {0};
        float conf[B];
        for (int j = 0; j < B; j++)
            x[j] = want_x[j] = j == 3 ? 12 : MASK;
        uint8_t masked[B], commit[B];
        dvl_rng r1, r2;
        dvl_rng_seed(&r1, 9);
        dvl_rng_seed(&r2, 9);
        for (int j = 0; j < B; j++) {
            masked[j] = x[j] == MASK;
            conf[j] = 0.0f;
            if (masked[j])
                prop[j] = dvl_sample_token(z + (int64_t)j * V, V, &s, &r1, scratch, &conf[j]);
        }
        const int k = 3;
        ck_assert_int_eq(dvl_select_commits(conf, masked, B, k, s.remask, s.tau, commit), k);
        for (int j = 0; j < B; j++)
            if (commit[j])
                want_x[j] = prop[j];
        ck_assert_int_eq(dvl_decode_step(d, x, B, MASK, z, k, &r2), k);
        ck_assert_mem_eq(x, want_x, sizeof x);
        ck_assert_mem_eq(d->conf, conf, sizeof conf);
        ck_assert_float_eq(d->conf[3], 0.0f);
        ck_assert_int_eq(x[3], 12);
        /* both rngs drew the same number of times */
        ck_assert_uint_eq(dvl_rng_u64(&r1), dvl_rng_u64(&r2));
        dvl_decoder_free(d);
    }
    free(scratch);
    free(z);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("diffusion");
    TCase *tr = tcase_create("training");
    tcase_add_test(tr, antithetic_t_is_stratified_and_in_range);
    tcase_add_test(tr, mask_rate_matches_t_and_spares_unsupervised);
    tcase_add_test(tr, block_align_pads_the_end_with_supervised_eos);
    tcase_add_test(tr, batch_layout_positions_and_padding);
    tcase_add_test(tr, batch_block_aligned_eos);
    tcase_add_test(tr, loss_weights_hand_example);
    tcase_add_test(tr, loss_weights_give_the_diffusionvl_loss);
    tcase_add_test(tr, shift_logits_labels);
    tcase_add_test(tr, attention_mask_matches_bd3lm);
    tcase_add_test(tr, batch_is_deterministic_and_resumable);
    tcase_add_test(tr, noise_depends_on_the_global_index_only);
    tcase_add_test(tr, batch_t_strata_and_mask_rate);
    suite_add_tcase(s, tr);
    TCase *de = tcase_create("decoding");
    tcase_add_test(de, transfer_schedule_table);
    tcase_add_test(de, static_commits_the_schedule_over_a_block);
    tcase_add_test(de, static_picks_most_confident_ties_low);
    tcase_add_test(de, dynamic_commits_all_above_tau_and_at_least_k);
    tcase_add_test(de, top_k_top_p_filters);
    tcase_add_test(de, sampling_frequencies_and_confidence);
    tcase_add_test(de, decoding_is_deterministic);
    tcase_add_test(de, large_vocabulary_step_equals_per_position);
    suite_add_tcase(s, de);
    return s;
}

int main(void) { return tu_run(suite()); }
