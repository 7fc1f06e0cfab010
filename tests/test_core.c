/* The tensor core: arena reuse, views, the parameter store, error paths. */
#include <string.h>

#include "util.h"

START_TEST(arena_steady_state_allocates_nothing)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t before = 0;
    for (int step = 0; step < 4; step++) {
        dvl_ctx_reset(ctx);
        if (step == 2)
            before = dvl_arena_mallocs(ctx);
        /* More than the first chunk holds, in uneven pieces. */
        for (int i = 0; i < 50; i++)
            ck_assert_ptr_nonnull(dvl_new2(ctx, 100 + i, 333));
    }
    ck_assert_int_eq(dvl_arena_mallocs(ctx), before);
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(views_share_data_and_grad)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 6, 4);
    for (int i = 0; i < 24; i++)
        dvl_f32(x)[i] = (float)i;
    int64_t s3[3] = {2, 2, 4};
    dvl_tensor *v = dvl_view(ctx, x, 3, s3, 8);
    ck_assert_ptr_nonnull(v);
    ck_assert_float_eq(dvl_f32(v)[0], 8.0f);
    float *gv = dvl_grad(ctx, v);
    gv[1] = 5.0f;
    ck_assert_float_eq(dvl_grad(ctx, x)[9], 5.0f);
    /* A view of a view is relative to its parent. */
    int64_t s1[1] = {4};
    dvl_tensor *vv = dvl_view(ctx, v, 1, s1, 4);
    ck_assert_float_eq(dvl_f32(vv)[0], 12.0f);
    ck_assert_ptr_eq(dvl_grad(ctx, vv), dvl_grad(ctx, x) + 12);
    /* Out of range and bad reshape are errors, not crashes. */
    ck_assert_ptr_null(dvl_view(ctx, x, 3, s3, 9));
    ck_assert(!dvl_ctx_ok(ctx));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "does not fit"));
    dvl_ctx_clear_error(ctx);
    int64_t bad[2] = {5, 5};
    ck_assert_ptr_null(dvl_reshape(ctx, x, 2, bad));
    ck_assert_ptr_null(dvl_reshape(ctx, NULL, 2, bad));
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(params_flat_buffers)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t a[2] = {3, 5}, b[1] = {7}, c[2] = {2, 2};
    dvl_tensor *ta = dvl_params_add(p, "lm.a", 2, a, true, &err);
    dvl_tensor *tb = dvl_params_add(p, "vision.b", 1, b, true, &err);
    dvl_tensor *tc = dvl_params_add(p, "lm.c", 2, c, true, &err);
    ck_assert_ptr_null(dvl_params_add(p, "lm.a", 1, b, true, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "lm.a"));
    ck_assert_int_eq(dvl_params_set_trainable(p, "vision.", false), 1);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    ck_assert_ptr_nonnull(ta->grad);
    ck_assert_ptr_null(tb->grad);
    ck_assert(!tb->requires_grad);
    ck_assert_ptr_nonnull(tc->grad);
    /* Everything inside the two flat buffers, 64-byte aligned. */
    ck_assert((float *)ta->data >= p->data && (float *)tc->data < p->data + p->numel);
    ck_assert(tc->grad >= p->grad && tc->grad < p->grad + p->numel_grad);
    ck_assert_int_eq((uintptr_t)tc->data % 64, 0);
    ck_assert_int_eq(p->numel_grad, 32); /* 15 and 4 elements, each rounded to 16 */
    ck_assert_ptr_eq(dvl_params_find(p, "lm.c"), tc);
    ck_assert_ptr_null(dvl_params_add(p, "late", 1, b, true, &err));
    dvl_params_free(p);
}
END_TEST

START_TEST(backward_needs_trainable_scalar)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 1, 1);
    ck_assert_int_ne(dvl_backward(ctx, x), 0);
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "trainable"));
    dvl_ctx_clear_error(ctx);
    dvl_tensor *y = dvl_new2(ctx, 2, 1);
    y->requires_grad = true;
    ck_assert_int_ne(dvl_backward(ctx, y), 0);
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "one element"));
    dvl_ctx_free(ctx);
}
END_TEST

typedef struct ready_log {
    dvl_tensor *order[8];
    float first_grad[8]; /* grad[0] of each parameter when it was reported */
    int n;
} ready_log;

static void on_ready(void *user, dvl_tensor *param)
{
    ready_log *l = user;
    l->first_grad[l->n] = param->grad[0];
    l->order[l->n++] = param;
}

/* The hook reports each trainable parameter once, latest layer first, at a
 * moment when its gradient is already final. */
START_TEST(grad_ready_hook_reports_complete_gradients)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t s[2] = {3, 3};
    dvl_tensor *w1 = dvl_params_add(p, "w1", 2, s, true, &err);
    dvl_tensor *w2 = dvl_params_add(p, "w2", 2, s, true, &err);
    dvl_tensor *frozen = dvl_params_add(p, "frozen", 2, s, false, &err);
    dvl_tensor *x = dvl_params_add(p, "x", 2, s, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    for (int i = 0; i < p->n; i++)
        tu_randn(p->t[i], (uint64_t)i + 1, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ready_log log = {0};
    dvl_set_grad_ready_hook(ctx, on_ready, &log);
    /* w1 is used twice, the second time after w2: it is complete only
     * after its first use's node has run. */
    dvl_tensor *h = dvl_linear(ctx, x, w1, NULL);
    h = dvl_linear(ctx, h, frozen, NULL);
    h = dvl_linear(ctx, h, w2, NULL);
    h = dvl_linear(ctx, h, w1, NULL);
    ck_assert_int_eq(dvl_backward(ctx, dvl_sum(ctx, h)), 0);
    ck_assert_int_eq(log.n, 3);
    ck_assert_ptr_eq(log.order[0], w2);
    ck_assert_ptr_eq(log.order[1], w1);
    ck_assert_ptr_eq(log.order[2], x);
    for (int i = 0; i < log.n; i++)
        ck_assert_float_eq(log.first_grad[i], log.order[i]->grad[0]);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, arena_steady_state_allocates_nothing);
    tcase_add_test(tc, views_share_data_and_grad);
    tcase_add_test(tc, params_flat_buffers);
    tcase_add_test(tc, backward_needs_trainable_scalar);
    tcase_add_test(tc, grad_ready_hook_reports_complete_gradients);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
