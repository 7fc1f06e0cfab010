/* Determinism: the same seed gives bit-identical losses, gradients and
 * weights; the thread count changes nothing beyond BLAS rounding; a
 * steady-state training step performs no allocation. */
#include <math.h>
#include <omp.h>
#include <cblas.h>

#include "optim/adamw.h"
#include "toy.h"

static const toy_cfg CFG = {.vocab = 31, .dim = 32, .layers = 2, .heads = 4, .kv_heads = 2,
                            .ffn = 48, .seq = 16, .batch = 3};

/* Three AdamW steps from seed; returns the parameter store. */
static dvl_params *train(uint64_t seed, float *losses, int64_t *mallocs_after_warmup)
{
    dvl_params *p = toy_params(&CFG, seed);
    toy_batch b = toy_batch_new(&CFG, seed + 1);
    dvl_err err = {0};
    dvl_adamw *o = dvl_adamw_new(p, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t warm = 0;
    for (int step = 0; step < 4; step++) {
        if (step == 1)
            warm = dvl_arena_mallocs(ctx);
        dvl_ctx_reset(ctx);
        dvl_params_zero_grad(p);
        dvl_tensor *l = toy_loss(ctx, &CFG, p, &b);
        ck_assert_msg(l != NULL, "%s", dvl_ctx_err(ctx)->msg);
        losses[step] = dvl_f32(l)[0];
        ck_assert_int_eq(dvl_backward(ctx, l), 0);
        dvl_adamw_step(o, 1e-2f);
    }
    if (mallocs_after_warmup)
        *mallocs_after_warmup = dvl_arena_mallocs(ctx) - warm;
    dvl_ctx_free(ctx);
    dvl_adamw_free(o);
    toy_batch_free(&b);
    return p;
}

START_TEST(same_seed_bit_identical)
{
    float la[4], lb[4];
    dvl_params *a = train(5, la, NULL);
    dvl_params *b = train(5, lb, NULL);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_mem_eq(a->data, b->data, (size_t)a->numel * sizeof(float));
    ck_assert_mem_eq(a->grad, b->grad, (size_t)a->numel_grad * sizeof(float));
    /* And the run actually trains: the loss moved. */
    ck_assert_float_ne(la[0], la[3]);
    dvl_params_free(a);
    dvl_params_free(b);
}
END_TEST

START_TEST(thread_count_does_not_matter)
{
    float l1[4], l2[4];
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    dvl_params *a = train(7, l1, NULL);
    omp_set_num_threads(2);
    openblas_set_num_threads(2);
    dvl_params *b = train(7, l2, NULL);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(l1[i], l2[i], 1e-5f * fabsf(l1[i]));
    ck_assert_double_le(tu_max_abs_diff(a->data, b->data, a->numel), 1e-5);
    dvl_params_free(a);
    dvl_params_free(b);
}
END_TEST

START_TEST(steady_state_step_allocates_nothing)
{
    float l[4];
    int64_t extra = -1;
    dvl_params *p = train(3, l, &extra);
    ck_assert_int_eq(extra, 0);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("determinism");
    TCase *tc = tcase_create("determinism");
    tcase_add_test(tc, same_seed_bit_identical);
    tcase_add_test(tc, thread_count_does_not_matter);
    tcase_add_test(tc, steady_state_step_allocates_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
