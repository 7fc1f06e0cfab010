/* dvl_embedding: exact forward rows, backward with repeated ids (finite
 * differences and an exact sequential reference), ids copied at record time,
 * thread-count independence, frozen tables and error messages. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct emb_case {
    const int32_t *ids;
    int64_t n;
} emb_case;

static dvl_tensor *emb_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    const emb_case *c = user;
    return dvl_embedding(ctx, dvl_params_find(p, "wte"), c->ids, c->n);
}

static dvl_params *make_table(int64_t vocab, int64_t d, bool trainable)
{
    tu_pspec s = {"wte", 2, {vocab, d}, trainable};
    return tu_make_params(&s, 1, 11, 1.0f);
}

START_TEST(forward_copies_rows)
{
    dvl_params *p = make_table(11, 13, false);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int32_t ids[6] = {3, 0, 10, 3, 7, 3};
    dvl_tensor *out = dvl_embedding(ctx, p->t[0], ids, 6);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(out->ndim, 2);
    ck_assert_int_eq(out->shape[0], 6);
    ck_assert_int_eq(out->shape[1], 13);
    for (int i = 0; i < 6; i++)
        ck_assert_mem_eq(dvl_f32(out) + i * 13, dvl_f32(p->t[0]) + ids[i] * 13,
                         13 * sizeof(float));
    /* Frozen table: nothing recorded, no gradient buffer. */
    ck_assert(!out->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    ck_assert_ptr_null(p->t[0]->grad);
    /* No ids: an empty [0, d] output. */
    dvl_tensor *e = dvl_embedding(ctx, p->t[0], NULL, 0);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->shape[0], 0);
    ck_assert_int_eq(e->shape[1], 13);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* out is a copy of W's rows, so the central difference is exact up to the
 * f32 rounding of W +- eps; eps 1e-2, tolerance 1e-5 of the gradient's scale
 * (measured: 5e-8). Repeated ids must add up. */
START_TEST(gradcheck_repeated_ids)
{
    dvl_params *p = make_table(11, 13, true);
    const int32_t ids[9] = {3, 0, 10, 3, 7, 3, 0, 9, 10};
    emb_case c = {ids, 9};
    TU_GRADCHECK(emb_fn, p, &c, 1e-2f, 0, 1e-5);
    dvl_params_free(p);
}
END_TEST

/* dW[v] = sum over tokens with id v, in token order: bitwise equal to the
 * sequential float loop for 1, 2 and 3 threads; rows never used stay 0. The
 * caller's ids change after the op and must not matter. */
START_TEST(backward_exact_and_deterministic)
{
    /* 4 column blocks, the last ragged; n d above DVL_PAR_MIN, so the loops
     * run on a team when threads allow. */
    int64_t vocab = 17, d = 100, n = 400;
    dvl_params *p = make_table(vocab, d, true);
    int32_t ids[400], orig[400];
    for (int i = 0; i < n; i++)
        orig[i] = (int32_t)((i * 7 + i / 5) % 13); /* ids 13..16 unused */
    float *seed = malloc((size_t)(n * d) * sizeof *seed);
    dvl_rng r;
    dvl_rng_seed(&r, 3);
    dvl_rng_fill_normal(&r, seed, n * d, 1.0f);
    float *want = calloc((size_t)(vocab * d), sizeof *want);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            want[orig[i] * d + j] += seed[i * d + j];
    int threads[3] = {1, 2, 3};
    for (int t = 0; t < 3; t++) {
        omp_set_num_threads(threads[t]);
        dvl_params_zero_grad(p);
        memcpy(ids, orig, sizeof ids);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *out = dvl_embedding(ctx, p->t[0], ids, n);
        ck_assert_int_eq(dvl_tape_len(ctx), 1);
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)(vocab - 1 - ids[i]); /* the caller reuses its buffer */
        ck_assert_int_eq(dvl_backward_seed(ctx, out, seed), 0);
        ck_assert_mem_eq(p->t[0]->grad, want, (size_t)(vocab * d) * sizeof(float));
        dvl_ctx_free(ctx);
    }
    omp_set_num_threads(2);
    free(want);
    free(seed);
    dvl_params_free(p);
}
END_TEST

START_TEST(errors)
{
    dvl_params *p = make_table(11, 4, true);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int32_t high[4] = {1, 2, 10, 11}, low[3] = {0, -1, 3};
    ck_assert_ptr_null(dvl_embedding(ctx, NULL, high, 2));
    ck_assert(dvl_ctx_ok(ctx));

    ck_assert_ptr_null(dvl_embedding(ctx, p->t[0], high, 4));
    const char *m = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(m, "id 11") && strstr(m, "position 3") && strstr(m, "wte [11, 4]"), "%s",
                  m);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_ctx_clear_error(ctx);

    ck_assert_ptr_null(dvl_embedding(ctx, p->t[0], low, 3));
    ck_assert_msg(strstr(m, "id -1") && strstr(m, "position 1") && strstr(m, "wte"), "%s", m);
    dvl_ctx_clear_error(ctx);

    ck_assert_ptr_null(dvl_embedding(ctx, p->t[0], NULL, 3));
    ck_assert_msg(strstr(m, "missing") && strstr(m, "wte"), "%s", m);
    dvl_ctx_clear_error(ctx);

    int64_t s3[3] = {2, 3, 4};
    dvl_tensor *t3 = dvl_new(ctx, DVL_F32, 3, s3);
    t3->name = "table3";
    ck_assert_ptr_null(dvl_embedding(ctx, t3, high, 1));
    ck_assert_msg(strstr(m, "table3") && strstr(m, "[2, 3, 4]"), "%s", m);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("embedding");
    TCase *tc = tcase_create("embedding");
    tcase_add_test(tc, forward_copies_rows);
    tcase_add_test(tc, gradcheck_repeated_ids);
    tcase_add_test(tc, backward_exact_and_deterministic);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
