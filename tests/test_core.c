/* The tensor core: arena reuse, views, the parameter store, error paths. */
#include <stdlib.h>
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

/* Shapes from a config.json: sizes below 1 and element counts beyond
 * DVL_PARAM_MAX_NUMEL (including ones whose product overflows int64_t) are
 * errors naming the parameter; 2^40 elements exactly may be declared. */
START_TEST(params_reject_bad_shapes)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    const int64_t big = (int64_t)1 << 31;
    int64_t zero[2] = {4, 0}, over[2] = {big, big}, wrap[3] = {big, big, big};
    const int64_t mi = (int64_t)1 << 20;
    int64_t edge[2] = {mi, mi}, past[2] = {mi + 1, mi};
    ck_assert_ptr_null(dvl_params_add(p, "w.zero", 2, zero, true, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "w.zero has dimension 1 of size 0"));
    ck_assert_ptr_null(dvl_params_add(p, "w.over", 2, over, true, &err));
    ck_assert_str_eq(err.msg, "parameter w.over: dimension 1 of size 2147483648 makes it more "
                              "than 2^40 elements");
    ck_assert_ptr_null(dvl_params_add(p, "w.wrap", 3, wrap, true, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "w.wrap: dimension 1"));
    ck_assert_ptr_null(dvl_params_add(p, "w.past", 2, past, true, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "w.past: dimension 1"));
    ck_assert_int_eq(p->n, 0);
    ck_assert_ptr_nonnull(dvl_params_add(p, "w.edge", 2, edge, true, &err));
    ck_assert_int_eq(p->n, 1);
    dvl_params_free(p); /* never allocated: 4 TiB */
}
END_TEST

/* Every element of t's bf16 copy is dvl_f32_to_bf16 of its data. */
static void assert_copy_rounds(const dvl_tensor *t)
{
    const uint16_t *c = dvl_bf16_copy(t);
    ck_assert_ptr_nonnull(c);
    for (int64_t i = 0; i < dvl_numel(t); i++)
        ck_assert_msg(c[i] == dvl_f32_to_bf16(dvl_f32(t)[i]), "%s[%lld]: copy %04x of %a",
                      t->name, (long long)i, c[i], (double)dvl_f32(t)[i]);
}

/* dvl_params_keep_bf16: copies of the frozen parameters only, laid out so
 * that frozen parameters consecutive in data are consecutive in the copies
 * (dvl_linear_cat's fused products read them as one matrix), views served
 * at their offset, refreshed by the store's own writes, dropped on request,
 * and kept by a copy of the store. */
START_TEST(params_keep_bf16_copies)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    ck_assert_int_eq(dvl_params_keep_bf16(p, DVL_BF16_FROZEN, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "not allocated"));
    const char *names[] = {"a", "b", "c", "d", "e", "f"};
    const int64_t shape[][2] = {{3, 5}, {4, 4}, {2, 8}, {7, 1}, {5, 1}, {4, 4}};
    const bool trainable[] = {true, false, false, false, true, false};
    dvl_tensor *t[6];
    for (int i = 0; i < 6; i++)
        ck_assert_ptr_nonnull(t[i] = dvl_params_add(p, names[i], 2, shape[i], trainable[i], &err));
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    for (int i = 0; i < 6; i++)
        tu_randn(t[i], 10 + (uint64_t)i, 3.0f);
    ck_assert_ptr_null(dvl_bf16_copy(t[1]));
    ck_assert_int_eq(dvl_params_keep_bf16(p, (dvl_bf16_copies)7, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown mode 7"));
    ck_assert_msg(dvl_params_keep_bf16(p, DVL_BF16_FROZEN, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(p->bf16_mode, DVL_BF16_FROZEN);
    /* Four frozen tensors of 16, 16, 7 and 16 elements, each from a
     * 16-element boundary. */
    ck_assert_int_eq(p->numel_bf16, 64);
    ck_assert_ptr_null(t[0]->bf16);
    ck_assert_ptr_null(t[4]->bf16);
    ck_assert_ptr_eq(t[1]->bf16, p->bf16);
    ck_assert_ptr_eq(t[2]->bf16, t[1]->bf16 + 16); /* consecutive, as in data */
    ck_assert_ptr_eq(dvl_f32(t[2]), dvl_f32(t[1]) + 16);
    ck_assert_ptr_eq(t[3]->bf16, t[2]->bf16 + 16);
    ck_assert_ptr_eq(t[5]->bf16, t[3]->bf16 + 16); /* after 7 elements and padding */
    for (int i = 1; i < 6; i++)
        if (!trainable[i])
            assert_copy_rounds(t[i]);
    /* Not vacuous: the copies are rounded, not the f32 bits' top half for
     * every element. */
    int rounded_up = 0;
    for (int64_t i = 0; i < 16; i++) {
        uint32_t bits;
        memcpy(&bits, &dvl_f32(t[1])[i], sizeof bits);
        rounded_up += t[1]->bf16[i] != (uint16_t)(bits >> 16);
    }
    ck_assert_int_gt(rounded_up, 0);
    /* Views: at their offset into the base's copy; none for a trainable base. */
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s1[1] = {8};
    ck_assert_ptr_eq(dvl_bf16_copy(dvl_view(ctx, t[2], 1, s1, 8)), t[2]->bf16 + 8);
    dvl_tensor *v = dvl_view(ctx, t[2], 1, s1, 4);
    int64_t s2[1] = {2};
    ck_assert_ptr_eq(dvl_bf16_copy(dvl_view(ctx, v, 1, s2, 3)), t[2]->bf16 + 7);
    ck_assert_ptr_null(dvl_bf16_copy(dvl_view(ctx, t[0], 1, s1, 4)));
    dvl_ctx_free(ctx);
    /* The store's own writes refresh the copies. */
    float *host = malloc((size_t)p->numel * sizeof *host);
    ck_assert_ptr_nonnull(host);
    for (int64_t i = 0; i < p->numel; i++)
        host[i] = 0.001f * (float)(i * 37 % 101) - 0.05f;
    ck_assert_int_eq(dvl_params_data_from_host(p, host, &err), DVL_OK);
    for (int i = 1; i < 6; i++)
        if (!trainable[i])
            assert_copy_rounds(t[i]);
    /* A copy of the store keeps copies of its own. */
    dvl_params *q = dvl_params_to_device(p, DVL_CPU, &err);
    ck_assert_msg(q != NULL, "%s", err.msg);
    ck_assert_int_eq(q->bf16_mode, DVL_BF16_FROZEN);
    ck_assert_int_eq(q->numel_bf16, 64);
    ck_assert_ptr_ne(q->bf16, p->bf16);
    ck_assert_int_eq(memcmp(q->bf16, p->bf16, 64 * sizeof *p->bf16), 0);
    dvl_params_free(q);
    /* Dropped: none, and later writes make none. */
    dvl_params_drop_bf16(p);
    ck_assert_int_eq(p->bf16_mode, DVL_BF16_NONE);
    ck_assert_ptr_null(p->bf16);
    ck_assert_ptr_null(dvl_bf16_copy(t[2]));
    ck_assert_int_eq(dvl_params_data_from_host(p, host, &err), DVL_OK);
    ck_assert_ptr_null(dvl_bf16_copy(t[2]));
    free(host);
    dvl_params_free(p);
    /* A store without frozen parameters keeps nothing, without error. */
    dvl_params *r = dvl_params_new();
    ck_assert_ptr_nonnull(dvl_params_add(r, "w", 2, shape[0], true, &err));
    ck_assert_int_eq(dvl_params_alloc(r, &err), 0);
    ck_assert_int_eq(dvl_params_keep_bf16(r, DVL_BF16_FROZEN, &err), DVL_OK);
    ck_assert_ptr_null(r->bf16);
    ck_assert_int_eq(r->numel_bf16, 0);
    dvl_params_free(r);
}
END_TEST

/* DVL_BF16_ALL: a copy of every parameter at its data offset (the layouts
 * coincide); dvl_params_refresh_bf16 makes the trainable ones' again after
 * their data changed (an optimizer step) and leaves the frozen ones' (they
 * do not change in training); keep again with another mode lays out anew.
 * The trainable ones come alone and as a run of two at the end (the refresh
 * rounds each run of consecutive trainable parameters in one pass). */
START_TEST(params_keep_bf16_all_and_refresh)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    enum { NP = 6 };
    const int64_t shape[NP][2] = {{3, 5}, {4, 4}, {7, 1}, {2, 8}, {5, 3}, {1, 9}};
    const bool trainable[NP] = {true, false, true, false, true, true};
    dvl_tensor *t[NP];
    for (int i = 0; i < NP; i++) {
        char name[8] = {(char)('a' + i), 0};
        ck_assert_ptr_nonnull(t[i] = dvl_params_add(p, name, 2, shape[i], trainable[i], &err));
    }
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    for (int i = 0; i < NP; i++)
        tu_randn(t[i], 20 + (uint64_t)i, 1.0f);
    ck_assert_int_eq(dvl_params_refresh_bf16(p, &err), DVL_OK); /* none kept: nothing to do */
    ck_assert_msg(dvl_params_keep_bf16(p, DVL_BF16_ALL, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(p->numel_bf16, p->numel);
    for (int i = 0; i < NP; i++) {
        ck_assert_ptr_eq(t[i]->bf16, p->bf16 + (dvl_f32(t[i]) - p->data));
        assert_copy_rounds(t[i]);
    }
    /* An "update": every parameter's data changes; the refresh follows the
     * trainable ones only. */
    for (int i = 0; i < NP; i++)
        for (int64_t k = 0; k < dvl_numel(t[i]); k++)
            dvl_f32(t[i])[k] = 2.0f * dvl_f32(t[i])[k] + 0.37f;
    ck_assert_int_eq(dvl_params_refresh_bf16(p, &err), DVL_OK);
    for (int i = 0; i < NP; i++) {
        if (trainable[i]) {
            assert_copy_rounds(t[i]);
            continue;
        }
        int stale = 0;
        for (int64_t k = 0; k < dvl_numel(t[i]); k++)
            stale += t[i]->bf16[k] != dvl_f32_to_bf16(dvl_f32(t[i])[k]);
        ck_assert_msg(stale > 0, "frozen parameter %d refreshed", i);
    }
    /* Frozen only, from the same store: trainable ones lose their copies. */
    ck_assert_int_eq(dvl_params_keep_bf16(p, DVL_BF16_FROZEN, &err), DVL_OK);
    ck_assert_int_eq(p->numel_bf16, 32);
    ck_assert_ptr_null(t[0]->bf16);
    ck_assert_ptr_null(t[2]->bf16);
    ck_assert_ptr_eq(t[3]->bf16, t[1]->bf16 + 16);
    assert_copy_rounds(t[1]);
    assert_copy_rounds(t[3]);
    ck_assert_int_eq(dvl_params_keep_bf16(p, DVL_BF16_NONE, &err), DVL_OK);
    ck_assert_ptr_null(p->bf16);
    ck_assert_ptr_null(t[1]->bf16);
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
    tcase_add_test(tc, params_reject_bad_shapes);
    tcase_add_test(tc, params_keep_bf16_copies);
    tcase_add_test(tc, params_keep_bf16_all_and_refresh);
    tcase_add_test(tc, backward_needs_trainable_scalar);
    tcase_add_test(tc, grad_ready_hook_reports_complete_gradients);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
