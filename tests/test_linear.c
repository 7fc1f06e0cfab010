/* dvl_linear: forward against a double-precision loop, backward against
 * finite differences (with and without bias, 3-D input, frozen weight, a
 * weight used twice), determinism of the bias gradient, error messages. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Finite differences: y is linear in every single parameter element (also
 * for x and W both trainable, the product is bilinear), so a central
 * difference is exact up to f32 rounding of the forward pass (~1e-7 relative
 * per output, divided by 2 eps = 2e-2). Measured errors are 0.4-1.3e-5 of
 * the gradient's scale; tolerance 1e-4 keeps a margin of ~8x and catches any
 * wrong index or missing term. */
#define GC_EPS 1e-2f
#define GC_TOL 1e-4

typedef struct lin_case {
    const char *x, *w, *b; /* parameter names; b NULL for no bias */
    bool twice;            /* y = linear(linear(x, W), W) */
} lin_case;

static dvl_tensor *lin_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    const lin_case *c = user;
    dvl_tensor *x = dvl_params_find(p, c->x), *w = dvl_params_find(p, c->w);
    dvl_tensor *b = c->b ? dvl_params_find(p, c->b) : NULL;
    dvl_tensor *y = dvl_linear(ctx, x, w, b);
    return c->twice ? dvl_linear(ctx, y, w, b) : y;
}

/* A store with x (shape xs), W [out, in] and optionally b [out], randomly
 * filled. */
static dvl_params *make(int xnd, const int64_t *xs, int64_t out, bool bias, bool x_train,
                        bool w_train, bool b_train)
{
    tu_pspec s[3] = {{"x", xnd, {0}, x_train}, {"W", 2, {out, xs[xnd - 1]}, w_train},
                     {"b", 1, {out}, b_train}};
    memcpy(s[0].shape, xs, (size_t)xnd * sizeof *xs);
    return tu_make_params(s, bias ? 3 : 2, 100, 1.0f);
}

/* y[i, j] = sum_k x[i, k] W[j, k] + b[j] in double. */
static void naive(double *y, const float *x, const float *w, const float *b, int64_t rows,
                  int64_t in, int64_t out)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < out; j++) {
            double s = b ? b[j] : 0.0;
            for (int64_t k = 0; k < in; k++)
                s += (double)x[i * in + k] * (double)w[j * in + k];
            y[i * out + j] = s;
        }
}

static void check_forward(int xnd, const int64_t *xs, int64_t out, bool bias)
{
    dvl_params *p = make(xnd, xs, out, bias, false, false, false);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = p->t[0], *w = p->t[1], *b = bias ? p->t[2] : NULL;
    dvl_tensor *y = dvl_linear(ctx, x, w, b);
    ck_assert_msg(y != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(y->ndim, xnd);
    for (int k = 0; k < xnd - 1; k++)
        ck_assert_int_eq(y->shape[k], xs[k]);
    ck_assert_int_eq(y->shape[xnd - 1], out);
    ck_assert(!y->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    int64_t rows = dvl_rows(x), in = dvl_cols(x);
    double *ref = malloc((size_t)(rows * out) * sizeof *ref);
    naive(ref, dvl_f32(x), dvl_f32(w), b ? dvl_f32(b) : NULL, rows, in, out);
    /* f32 products summed by sgemm over `in` N(0,1) terms: rounding error
     * about 1e-7 * sqrt(in) * |terms|; 1e-5 is well above it for in <= 64. */
    for (int64_t i = 0; i < rows * out; i++)
        ck_assert_msg(fabs(dvl_f32(y)[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])),
                      "y[%lld] = %.9g, want %.9g", (long long)i, dvl_f32(y)[i], ref[i]);
    free(ref);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}

START_TEST(forward_matches_naive)
{
    int64_t a[2] = {13, 33}, c[3] = {2, 7, 5}, d[1] = {9}, e[4] = {2, 1, 3, 64};
    check_forward(2, a, 7, true);
    check_forward(2, a, 7, false);
    check_forward(3, c, 13, true);
    check_forward(1, d, 4, true);
    check_forward(4, e, 33, false);
}
END_TEST

START_TEST(gradcheck_bias)
{
    int64_t xs[2] = {7, 13};
    dvl_params *p = make(2, xs, 11, true, true, true, true);
    lin_case c = {"x", "W", "b", false};
    TU_GRADCHECK(lin_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_no_bias)
{
    int64_t xs[2] = {5, 33};
    dvl_params *p = make(2, xs, 3, false, true, true, false);
    lin_case c = {"x", "W", NULL, false};
    TU_GRADCHECK(lin_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_3d_input)
{
    int64_t xs[3] = {2, 3, 7};
    dvl_params *p = make(3, xs, 5, true, true, true, true);
    lin_case c = {"x", "W", "b", false};
    TU_GRADCHECK(lin_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

/* The same weight used twice: both uses must add into one gradient. */
START_TEST(gradcheck_shared_weight)
{
    int64_t xs[2] = {4, 6};
    dvl_params *p = make(2, xs, 6, true, true, true, true);
    lin_case c = {"x", "W", "b", true};
    /* Quadratic in W and b now: the central difference is still exact for a
     * quadratic, so the same tolerance holds. */
    TU_GRADCHECK(lin_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

/* A frozen weight gets no gradient buffer; x and the bias still get theirs. */
START_TEST(frozen_weight)
{
    int64_t xs[3] = {3, 2, 9};
    dvl_params *p = make(3, xs, 7, true, true, false, true);
    dvl_tensor *w = dvl_params_find(p, "W");
    ck_assert_ptr_null(w->grad);
    lin_case c = {"x", "W", "b", false};
    TU_GRADCHECK(lin_fn, p, &c, GC_EPS, 0, GC_TOL);
    ck_assert_ptr_null(w->grad);
    ck_assert(!w->requires_grad);

    /* Frozen bias too: only x trains. */
    dvl_params *q = make(2, xs + 1, 4, true, true, false, false);
    TU_GRADCHECK(lin_fn, q, &c, GC_EPS, 0, GC_TOL);
    ck_assert_ptr_null(dvl_params_find(q, "W")->grad);
    ck_assert_ptr_null(dvl_params_find(q, "b")->grad);
    ck_assert_int_eq(q->numel_grad, 32); /* x [2, 9] only, rounded to 16s */
    dvl_params_free(q);
    dvl_params_free(p);
}
END_TEST

/* Nothing trainable or grad mode off: nothing recorded. */
START_TEST(no_record_without_grad)
{
    int64_t xs[2] = {3, 4};
    dvl_params *p = make(2, xs, 5, true, false, false, false);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y = dvl_linear(ctx, p->t[0], p->t[1], p->t[2]);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    p->t[1]->requires_grad = true; /* as if trainable, grad mode off */
    dvl_set_grad_enabled(ctx, false);
    y = dvl_linear(ctx, p->t[0], p->t[1], p->t[2]);
    ck_assert_ptr_nonnull(y);
    ck_assert(!y->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_set_grad_enabled(ctx, true);
    y = dvl_linear(ctx, p->t[0], p->t[1], p->t[2]);
    ck_assert(y->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 1);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* The bias gradient sums over rows per column: bitwise the same for any
 * thread count. Exact against a sequential double sum. */
START_TEST(bias_grad_deterministic)
{
    int64_t rows = 301, in = 3, out = 131; /* several column blocks, a ragged one */
    int64_t xs[2] = {rows, in};
    dvl_params *p = make(2, xs, out, true, false, false, true);
    float *seed = malloc((size_t)(rows * out) * sizeof *seed);
    dvl_rng r;
    dvl_rng_seed(&r, 7);
    dvl_rng_fill_normal(&r, seed, rows * out, 1.0f);
    float *first = malloc((size_t)out * sizeof *first);
    int threads[3] = {1, 2, 3};
    for (int t = 0; t < 3; t++) {
        omp_set_num_threads(threads[t]);
        dvl_params_zero_grad(p);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *y = dvl_linear(ctx, p->t[0], p->t[1], p->t[2]);
        ck_assert_int_eq(dvl_backward_seed(ctx, y, seed), 0);
        if (t == 0)
            memcpy(first, p->t[2]->grad, (size_t)out * sizeof *first);
        else
            ck_assert_mem_eq(first, p->t[2]->grad, (size_t)out * sizeof *first);
        dvl_ctx_free(ctx);
    }
    omp_set_num_threads(2);
    for (int64_t j = 0; j < out; j++) {
        double s = 0;
        for (int64_t i = 0; i < rows; i++)
            s += seed[i * out + j];
        ck_assert_float_eq(first[j], (float)s);
    }
    free(first);
    free(seed);
    dvl_params_free(p);
}
END_TEST

/* Gradients accumulate (+=) into what is already there. */
START_TEST(backward_accumulates)
{
    int64_t xs[2] = {5, 6};
    dvl_params *p = make(2, xs, 4, true, true, true, true);
    float seed[20];
    for (int i = 0; i < 20; i++)
        seed[i] = 0.25f * (float)(i % 7) - 0.5f;
    float once[128];
    ck_assert_int_le(p->numel_grad, 128);
    for (int pass = 0; pass < 2; pass++) {
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *y = dvl_linear(ctx, p->t[0], p->t[1], p->t[2]);
        ck_assert_int_eq(dvl_backward_seed(ctx, y, seed), 0);
        if (pass == 0)
            memcpy(once, p->grad, (size_t)p->numel_grad * sizeof(float));
        dvl_ctx_free(ctx);
    }
    /* Two identical passes: exactly twice the gradient (x2 is exact). */
    for (int64_t i = 0; i < p->numel_grad; i++)
        ck_assert_float_eq(p->grad[i], 2 * once[i]);
    dvl_params_free(p);
}
END_TEST

static bool msg_has(dvl_ctx *ctx, const char *a, const char *b)
{
    const char *m = dvl_ctx_err(ctx)->msg;
    return strstr(m, a) && (!b || strstr(m, b));
}

START_TEST(errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 3, 5), *w = dvl_new2(ctx, 4, 6), *w2 = dvl_new2(ctx, 4, 5);
    int64_t b3[1] = {3}, w1[1] = {5};
    dvl_tensor *b = dvl_new(ctx, DVL_F32, 1, b3), *wv = dvl_new(ctx, DVL_F32, 1, w1);
    x->name = "h";
    w->name = "q_proj.weight";
    b->name = "q_proj.bias";
    w2->name = "k_proj.weight";

    /* A NULL input returns NULL and leaves no message (it was set upstream). */
    ck_assert_ptr_null(dvl_linear(ctx, NULL, w, NULL));
    ck_assert_ptr_null(dvl_linear(ctx, x, NULL, NULL));
    ck_assert(dvl_ctx_ok(ctx));

    ck_assert_ptr_null(dvl_linear(ctx, x, w, NULL));
    ck_assert_msg(msg_has(ctx, "h [3, 5]", "q_proj.weight [4, 6]"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    ck_assert_ptr_null(dvl_linear(ctx, x, w2, b));
    ck_assert_msg(msg_has(ctx, "q_proj.bias [3]", "k_proj.weight [4, 5]"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    ck_assert_ptr_null(dvl_linear(ctx, x, wv, NULL));
    ck_assert_msg(msg_has(ctx, "[out, in]", "[5]"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    int64_t s[2] = {3, 5};
    dvl_tensor *xi = dvl_new(ctx, DVL_I32, 2, s);
    xi->name = "ids";
    ck_assert_ptr_null(dvl_linear(ctx, xi, w2, NULL));
    ck_assert_msg(msg_has(ctx, "ids", "f32"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    /* The first error is kept. */
    ck_assert_ptr_null(dvl_linear(ctx, x, w, NULL));
    ck_assert_ptr_null(dvl_linear(ctx, x, wv, NULL));
    ck_assert_msg(msg_has(ctx, "q_proj.weight", NULL), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("linear");
    TCase *tc = tcase_create("linear");
    tcase_add_test(tc, forward_matches_naive);
    tcase_add_test(tc, gradcheck_bias);
    tcase_add_test(tc, gradcheck_no_bias);
    tcase_add_test(tc, gradcheck_3d_input);
    tcase_add_test(tc, gradcheck_shared_weight);
    tcase_add_test(tc, frozen_weight);
    tcase_add_test(tc, no_record_without_grad);
    tcase_add_test(tc, bias_grad_deterministic);
    tcase_add_test(tc, backward_accumulates);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
