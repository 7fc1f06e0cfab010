/* dvl_linear: forward against a double-precision loop, backward against
 * finite differences (with and without bias, 3-D input, frozen weight, a
 * weight used twice), determinism of the bias gradient, error messages.
 * dvl_linear_cat: finite differences, equal to one dvl_linear per
 * projection, views, error messages. */
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

/* ------------------------------------------------------------ linear_cat */

/* A store x [rows, in], then W0..W{n-1} [outs[k], in], then b0..b{n-1}
 * (bias) with the given trainability: consecutive when the sizes are
 * multiples of 16 floats (the store's alignment). */
static dvl_params *make_cat(int64_t rows, int64_t in, int n, const int64_t *outs, bool bias,
                            bool w_train)
{
    static const char *wn[3] = {"W0", "W1", "W2"}, *bn[3] = {"b0", "b1", "b2"};
    tu_pspec s[7] = {{"x", 2, {rows, in}, true}};
    int k = 1;
    for (int j = 0; j < n; j++)
        s[k++] = (tu_pspec){wn[j], 2, {outs[j], in}, w_train};
    for (int j = 0; bias && j < n; j++)
        s[k++] = (tu_pspec){bn[j], 1, {outs[j]}, true};
    return tu_make_params(s, k, 300, 1.0f);
}

typedef struct cat_case {
    int n;
    bool bias;
} cat_case;

static dvl_tensor *cat_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    const cat_case *c = user;
    dvl_tensor *w[3], *b[3];
    for (int k = 0; k < c->n; k++) {
        w[k] = p->t[1 + k];
        b[k] = c->bias ? p->t[1 + c->n + k] : NULL;
    }
    return dvl_linear_cat(ctx, p->t[0], c->n, w, c->bias ? b : NULL);
}

/* The three projections of attention (q 32, k and v 16 outputs) with
 * biases, and two without (gate and up): finite differences for x, every
 * weight and bias. */
START_TEST(cat_gradcheck)
{
    const int64_t outs[3] = {32, 16, 16};
    dvl_params *p = make_cat(5, 16, 3, outs, true, true);
    cat_case c = {3, true};
    ck_assert(dvl_linear_cat_ok(3, p->t + 1, p->t + 4));
    TU_GRADCHECK(cat_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);

    const int64_t gu[2] = {48, 48};
    p = make_cat(3, 32, 2, gu, false, true);
    c = (cat_case){2, false};
    TU_GRADCHECK(cat_fn, p, &c, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

/* Column block k of the output, and every gradient, equal what dvl_linear
 * gives for projection k alone (the products only sum in another order):
 * frozen weights too (stage 1), where only x gets a gradient. */
static void check_cat_vs_separate(bool w_train)
{
    const int64_t rows = 7, in = 48, outs[3] = {64, 16, 16}, total = 96;
    dvl_params *p = make_cat(rows, in, 3, outs, true, w_train);
    dvl_params *q = make_cat(rows, in, 3, outs, true, w_train); /* same seeds: same values */
    float *seed = malloc((size_t)(rows * total) * sizeof *seed);
    dvl_rng r;
    dvl_rng_seed(&r, 5);
    dvl_rng_fill_normal(&r, seed, rows * total, 1.0f);

    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y = dvl_linear_cat(ctx, p->t[0], 3, p->t + 1, p->t + 4);
    ck_assert_msg(y != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(y->shape[0], rows);
    ck_assert_int_eq(y->shape[1], total);
    ck_assert_int_eq(dvl_backward_seed(ctx, y, seed), 0);

    dvl_ctx *c2 = dvl_ctx_new(DVL_CPU);
    float *seed_k = malloc((size_t)(rows * total) * sizeof *seed_k);
    for (int k = 0, col = 0; k < 3; col += (int)outs[k], k++) {
        dvl_tensor *yk = dvl_linear(c2, q->t[0], q->t[1 + k], q->t[4 + k]);
        ck_assert_ptr_nonnull(yk);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < outs[k]; j++) {
                const float a = dvl_f32(y)[i * total + col + j], e = dvl_f32(yk)[i * outs[k] + j];
                ck_assert_msg(fabsf(a - e) <= 1e-5f * (1 + fabsf(e)),
                              "y[%lld, %lld] = %.9g, projection %d alone %.9g", (long long)i,
                              (long long)(col + j), a, k, e);
                seed_k[i * outs[k] + j] = seed[i * total + col + j];
            }
        ck_assert_int_eq(dvl_backward_seed(c2, yk, seed_k), 0);
    }
    ck_assert_int_eq(p->numel_grad, q->numel_grad);
    ck_assert_int_eq(p->numel_grad, w_train ? (rows * in + total * in + total) : rows * in + total);
    for (int64_t i = 0; i < p->numel_grad; i++)
        ck_assert_msg(fabsf(p->grad[i] - q->grad[i]) <= 1e-4f * (1 + fabsf(q->grad[i])),
                      "gradient element %lld: %.9g fused, %.9g separate", (long long)i,
                      p->grad[i], q->grad[i]);
    dvl_ctx_free(c2);
    dvl_ctx_free(ctx);
    free(seed_k);
    free(seed);
    dvl_params_free(q);
    dvl_params_free(p);
}

START_TEST(cat_matches_separate)
{
    check_cat_vs_separate(true);
    check_cat_vs_separate(false);
}
END_TEST

/* Views of one tensor placed back to back are consecutive too (their
 * gradients are views of its gradient). */
START_TEST(cat_of_views)
{
    int64_t ws[2] = {48, 16}, w0[2] = {32, 16}, w1[2] = {16, 16};
    tu_pspec s[2] = {{"x", 2, {3, 16}, true}, {"W", 2, {48, 16}, true}};
    dvl_params *p = tu_make_params(s, 2, 9, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *w[2] = {dvl_view(ctx, p->t[1], 2, w0, 0), dvl_view(ctx, p->t[1], 2, w1, 512)};
    dvl_tensor *y = dvl_linear_cat(ctx, p->t[0], 2, w, NULL);
    ck_assert_msg(y != NULL, "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx *c2 = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y2 = dvl_linear(c2, p->t[0], p->t[1], NULL);
    ck_assert_int_eq(dvl_numel(y), dvl_numel(y2));
    ck_assert_int_eq(ws[0], y->shape[1]);
    for (int64_t i = 0; i < dvl_numel(y); i++)
        ck_assert_float_eq(dvl_f32(y)[i], dvl_f32(y2)[i]); /* one product either way */
    /* Views of an activation (its gradient is only made in backward): dW
     * of the whole tensor equals that of the one product. */
    dvl_tensor *a = dvl_new2(ctx, 48, 16);
    memcpy(a->data, p->t[1]->data, 48 * 16 * sizeof(float));
    a->requires_grad = true;
    dvl_tensor *av[2] = {dvl_view(ctx, a, 2, w0, 0), dvl_view(ctx, a, 2, w1, 512)};
    ck_assert_ptr_null(av[0]->grad);
    dvl_tensor *ya = dvl_linear_cat(ctx, p->t[0], 2, av, NULL);
    ck_assert_msg(ya != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_backward(ctx, dvl_sum(ctx, ya)), 0);
    ck_assert_int_eq(dvl_backward(c2, dvl_sum(c2, y2)), 0);
    ck_assert_ptr_nonnull(a->grad);
    for (int64_t i = 0; i < 48 * 16; i++)
        ck_assert_float_eq(a->grad[i], p->t[1]->grad[i]);
    /* Out of order, the views are not consecutive. */
    dvl_tensor *rev[2] = {w[1], w[0]};
    ck_assert(!dvl_linear_cat_ok(2, rev, NULL));
    ck_assert_ptr_null(dvl_linear_cat(ctx, p->t[0], 2, rev, NULL));
    dvl_ctx_free(c2);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* dvl_linear_group: the same columns as dvl_linear_cat where the weights
 * are consecutive (one linear_cat node, n slice_cols), separate products
 * where they are not (one weight frozen). */
START_TEST(group_fused_or_separate)
{
    const int64_t outs[3] = {32, 16, 16};
    for (int frozen = 0; frozen < 2; frozen++) {
        dvl_params *p = make_cat(5, 16, 3, outs, true, true);
        if (frozen)
            p->t[2]->requires_grad = false; /* W1 */
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_ctx_profile(ctx, true);
        dvl_tensor *y[3];
        dvl_linear_group(ctx, p->t[0], 3, p->t + 1, p->t + 4, y);
        const dvl_op_time *rows;
        const int nr = dvl_ctx_profile_rows(ctx, &rows);
        ck_assert_int_eq(nr, frozen ? 1 : 2);
        ck_assert_str_eq(rows[0].op, frozen ? "linear" : "linear_cat");
        ck_assert_int_eq(rows[0].fwd_n, frozen ? 3 : 1);
        for (int k = 0; k < 3; k++) {
            ck_assert_msg(y[k] != NULL, "%s", dvl_ctx_err(ctx)->msg);
            ck_assert_int_eq(y[k]->shape[1], outs[k]);
            dvl_ctx *c2 = dvl_ctx_new(DVL_CPU);
            dvl_tensor *e = dvl_linear(c2, p->t[0], p->t[1 + k], p->t[4 + k]);
            for (int64_t i = 0; i < dvl_numel(e); i++)
                ck_assert_msg(fabsf(dvl_f32(y[k])[i] - dvl_f32(e)[i]) <= 1e-5f *
                                  (1 + fabsf(dvl_f32(e)[i])),
                              "projection %d element %lld", k, (long long)i);
            dvl_ctx_free(c2);
        }
        dvl_ctx_free(ctx);
        dvl_params_free(p);
    }
}
END_TEST

START_TEST(cat_errors)
{
    /* W0 [16, 16], b0, W1: the weights are not consecutive. */
    tu_pspec s[5] = {{"x", 2, {3, 16}, true},
                     {"q_proj.weight", 2, {16, 16}, true},
                     {"q_proj.bias", 1, {16}, true},
                     {"k_proj.weight", 2, {16, 16}, true},
                     {"v_proj.weight", 2, {16, 16}, false}};
    dvl_params *p = tu_make_params(s, 5, 1, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = p->t[0], *qk[2] = {p->t[1], p->t[3]}, *kv[2] = {p->t[3], p->t[4]};

    ck_assert(!dvl_linear_cat_ok(2, qk, NULL));
    ck_assert_ptr_null(dvl_linear_cat(ctx, x, 2, qk, NULL));
    ck_assert_msg(msg_has(ctx, "k_proj.weight does not directly follow q_proj.weight", NULL),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    /* Consecutive, but one trains and the other is frozen. */
    ck_assert(!dvl_linear_cat_ok(2, kv, NULL));
    ck_assert_ptr_null(dvl_linear_cat(ctx, x, 2, kv, NULL));
    ck_assert_msg(msg_has(ctx, "v_proj.weight does not directly follow k_proj.weight",
                          "one trains, the other is frozen"),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    ck_assert_ptr_null(dvl_linear_cat(ctx, x, 0, qk, NULL));
    ck_assert_msg(msg_has(ctx, "0 weights", NULL), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    dvl_tensor *four[4] = {p->t[1], p->t[1], p->t[1], p->t[1]};
    ck_assert(!dvl_linear_cat_ok(4, four, NULL));
    ck_assert_ptr_null(dvl_linear_cat(ctx, x, 4, four, NULL));
    ck_assert_msg(msg_has(ctx, "4 weights", "1 to 3"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    /* A weight that does not take x's features is named with its shape. */
    dvl_tensor *h = dvl_new2(ctx, 3, 8);
    h->name = "h";
    ck_assert_ptr_null(dvl_linear_cat(ctx, h, 2, kv, NULL));
    ck_assert_msg(msg_has(ctx, "h [3, 8]", "k_proj.weight [16, 16]"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);

    /* A NULL weight: NULL, no message (set upstream). */
    dvl_tensor *hole[2] = {p->t[3], NULL};
    ck_assert_ptr_null(dvl_linear_cat(ctx, x, 2, hole, NULL));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* ------------------------------------------------------------ swiglu_mlp */

/* A store x [3, rows / 3, 32], then gate and up [48, 32] (consecutive: one
 * matrix), then down [24, 48]; the weights trainable or frozen. */
static dvl_params *make_mlp(int64_t rows, bool w_train)
{
    tu_pspec s[4] = {{"x", 3, {3, rows / 3, 32}, true},
                     {"gate", 2, {48, 32}, w_train},
                     {"up", 2, {48, 32}, w_train},
                     {"down", 2, {24, 48}, w_train}};
    return tu_make_params(s, 4, 400, 0.5f);
}

static dvl_tensor *mlp_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    (void)user;
    return dvl_swiglu_mlp(ctx, p->t[0], p->t + 1, p->t[3]);
}

/* Finite differences for x, gate, up and down. */
START_TEST(swiglu_mlp_gradcheck)
{
    dvl_params *p = make_mlp(6, true);
    TU_GRADCHECK(mlp_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

/* On the CPU the op is the three it stands for: the same output and
 * gradients, bit for bit, with trainable and with frozen weights (stage 1:
 * only x gets a gradient); and its errors are theirs. */
START_TEST(swiglu_mlp_is_the_three_ops)
{
    for (int train = 0; train < 2; train++) {
        const int64_t rows = 9;
        dvl_params *p = make_mlp(rows, train), *q = make_mlp(rows, train);
        float *seed = malloc(rows * 24 * sizeof *seed);
        ck_assert_ptr_nonnull(seed);
        dvl_rng r;
        dvl_rng_seed(&r, 6);
        dvl_rng_fill_normal(&r, seed, rows * 24, 1.0f);
        dvl_ctx *c1 = dvl_ctx_new(DVL_CPU), *c2 = dvl_ctx_new(DVL_CPU);
        dvl_tensor *y1 = dvl_swiglu_mlp(c1, p->t[0], p->t + 1, p->t[3]);
        dvl_tensor *y2 = dvl_linear(
            c2, dvl_swiglu_cat(c2, dvl_linear_cat(c2, q->t[0], 2, q->t + 1, NULL)), q->t[3], NULL);
        ck_assert_msg(y1 && y2, "%s", dvl_ctx_err(c1)->msg);
        ck_assert_int_eq(y1->ndim, 3);
        ck_assert_int_eq(y1->shape[2], 24);
        ck_assert_mem_eq(dvl_f32(y1), dvl_f32(y2), rows * 24 * sizeof(float));
        ck_assert_int_eq(dvl_backward_seed(c1, y1, seed), 0);
        ck_assert_int_eq(dvl_backward_seed(c2, y2, seed), 0);
        ck_assert_int_eq(p->numel_grad, train ? rows * 32 + 2 * 48 * 32 + 24 * 48 : rows * 32);
        ck_assert_mem_eq(p->grad, q->grad, (size_t)p->numel_grad * sizeof(float));
        dvl_ctx_free(c1), dvl_ctx_free(c2);
        dvl_params_free(p), dvl_params_free(q);
        free(seed);
    }
    /* Gate and up not one matrix (down between them): linear_cat's error. */
    tu_pspec s[4] = {{"x", 2, {4, 32}, true},
                     {"gate", 2, {48, 32}, true},
                     {"down", 2, {24, 48}, true},
                     {"up", 2, {48, 32}, true}};
    dvl_params *p = tu_make_params(s, 4, 1, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *gu[2] = {p->t[1], p->t[3]};
    ck_assert_ptr_null(dvl_swiglu_mlp(ctx, p->t[0], gu, p->t[2]));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "does not directly follow"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_free(ctx);
    /* down taking the wrong width: linear's error. */
    ctx = dvl_ctx_new(DVL_CPU);
    gu[0] = p->t[1], gu[1] = p->t[3];
    tu_pspec s2[4] = {{"x", 2, {4, 32}, true},
                      {"gate", 2, {48, 32}, true},
                      {"up", 2, {48, 32}, true},
                      {"down", 2, {24, 40}, true}};
    dvl_params *p2 = tu_make_params(s2, 4, 1, 1.0f);
    ck_assert_ptr_null(dvl_swiglu_mlp(ctx, p2->t[0], p2->t + 1, p2->t[3]));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "down"), "%s", dvl_ctx_err(ctx)->msg);
    /* A NULL weight: NULL, no message (set upstream). */
    dvl_ctx_free(ctx);
    ctx = dvl_ctx_new(DVL_CPU);
    ck_assert_ptr_null(dvl_swiglu_mlp(ctx, p2->t[0], p2->t + 1, NULL));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
    dvl_params_free(p), dvl_params_free(p2);
}
END_TEST

/* dvl_matmul_peak on the CPU: a positive, finite rate for a real size, an
 * error naming the size for a bad one. */
START_TEST(matmul_peak_cpu)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_err err = {0, ""};
    double g = -1;
    ck_assert_int_eq(dvl_matmul_peak(ctx, 96, &g, &err), DVL_OK);
    ck_assert_msg(isfinite(g) && g > 0, "peak %g", g);
    ck_assert_int_ne(dvl_matmul_peak(ctx, 0, &g, &err), DVL_OK);
    ck_assert_msg(strstr(err.msg, "size 0"), "%s", err.msg);
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
    tcase_add_test(tc, cat_gradcheck);
    tcase_add_test(tc, cat_matches_separate);
    tcase_add_test(tc, cat_of_views);
    tcase_add_test(tc, cat_errors);
    tcase_add_test(tc, group_fused_or_separate);
    tcase_add_test(tc, swiglu_mlp_gradcheck);
    tcase_add_test(tc, swiglu_mlp_is_the_three_ops);
    tcase_add_test(tc, matmul_peak_cpu);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
