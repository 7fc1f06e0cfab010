/* Row ops (first dimension): concat_rows, slice_rows (a view), gather_rows,
 * scatter_rows, and slice_cols (last dimension, a copy) against hand-made expectations, exact backward sums, finite
 * differences, frozen inputs and error messages. */
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* All these ops copy or add values unchanged, so a central difference is
 * exact up to f32 rounding of the projected output (measured <= 6e-8 of the
 * gradient's scale); where linear layers join in, the output is still linear
 * in each single element but sgemm rounding shows (~1e-5, see test_linear).
 * eps 1e-2, tolerance 1e-4 of the gradient's scale. */
#define GC_EPS 1e-2f
#define GC_TOL 1e-4

/* f32 tensor in ctx holding v[0..numel). */
static dvl_tensor *tensor(dvl_ctx *ctx, int ndim, const int64_t *shape, const float *v,
                          const char *name)
{
    dvl_tensor *t = dvl_new(ctx, DVL_F32, ndim, shape);
    ck_assert_ptr_nonnull(t);
    memcpy(t->data, v, (size_t)dvl_numel(t) * sizeof(float));
    t->name = name;
    return t;
}

static void assert_floats(const float *got, const float *want, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "element %lld is %g, want %g", (long long)i, got[i],
                      want[i]);
}

static const char *msg(dvl_ctx *ctx) { return dvl_ctx_err(ctx)->msg; }

/* ------------------------------------------------------------ concat_rows */

START_TEST(concat_forward)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t sa[2] = {2, 3}, sb[2] = {1, 3};
    const float va[6] = {0, 1, 2, 3, 4, 5}, vb[3] = {10, 11, 12};
    dvl_tensor *a = tensor(ctx, 2, sa, va, "a"), *b = tensor(ctx, 2, sb, vb, "b");
    dvl_tensor *out = dvl_concat_rows(ctx, a, b);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(out->shape[0], 3);
    ck_assert_int_eq(out->shape[1], 3);
    const float want[9] = {0, 1, 2, 3, 4, 5, 10, 11, 12};
    assert_floats(dvl_f32(out), want, 9);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);

    /* 3-D rows, and an empty side. */
    int64_t s3a[3] = {1, 2, 2}, s3b[3] = {2, 2, 2}, s3e[3] = {0, 2, 2};
    const float v3a[4] = {1, 2, 3, 4}, v3b[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    dvl_tensor *a3 = tensor(ctx, 3, s3a, v3a, "a3"), *b3 = tensor(ctx, 3, s3b, v3b, "b3");
    dvl_tensor *o3 = dvl_concat_rows(ctx, b3, a3);
    ck_assert_int_eq(o3->ndim, 3);
    ck_assert_int_eq(o3->shape[0], 3);
    const float want3[12] = {5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4};
    assert_floats(dvl_f32(o3), want3, 12);
    dvl_tensor *e = dvl_new(ctx, DVL_F32, 3, s3e);
    dvl_tensor *oe = dvl_concat_rows(ctx, e, a3);
    ck_assert_int_eq(oe->shape[0], 1);
    assert_floats(dvl_f32(oe), v3a, 4);
    dvl_ctx_free(ctx);
}
END_TEST

/* The output gradient splits at a's row count; a frozen b gets nothing. */
START_TEST(concat_backward_exact)
{
    tu_pspec ps[2] = {{"a", 2, {2, 3}, true}, {"b", 2, {3, 3}, false}};
    dvl_params *p = tu_make_params(ps, 2, 1, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *out = dvl_concat_rows(ctx, p->t[0], p->t[1]);
    float seed[15];
    for (int i = 0; i < 15; i++)
        seed[i] = (float)i + 0.5f;
    ck_assert_int_eq(dvl_backward_seed(ctx, out, seed), 0);
    assert_floats(p->t[0]->grad, seed, 6);
    ck_assert_ptr_null(p->t[1]->grad);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* Both halves of the gradient land in one buffer: big enough that two
 * threads writing the same rows at once would show. */
START_TEST(concat_with_itself)
{
    tu_pspec ps[1] = {{"a", 2, {3000, 16}, true}};
    dvl_params *p = tu_make_params(ps, 1, 1, 1.0f);
    int64_t n = 3000 * 16;
    float *seed = malloc((size_t)(2 * n) * sizeof *seed), *want = malloc((size_t)n * sizeof *want);
    dvl_rng r;
    dvl_rng_seed(&r, 5);
    dvl_rng_fill_normal(&r, seed, 2 * n, 1.0f);
    for (int64_t i = 0; i < n; i++)
        want[i] = seed[i] + seed[n + i];
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *out = dvl_concat_rows(ctx, p->t[0], p->t[0]);
    ck_assert_int_eq(out->shape[0], 6000);
    ck_assert_int_eq(dvl_backward_seed(ctx, out, seed), 0);
    assert_floats(p->t[0]->grad, want, n);
    dvl_ctx_free(ctx);
    free(seed);
    free(want);
    dvl_params_free(p);
}
END_TEST

static dvl_tensor *concat_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    return dvl_concat_rows(ctx, dvl_params_find(p, "a"), dvl_params_find(p, "b"));
}

START_TEST(concat_gradcheck)
{
    tu_pspec ps[2] = {{"a", 3, {7, 3, 2}, true}, {"b", 3, {2, 3, 2}, true}};
    dvl_params *p = tu_make_params(ps, 2, 1, 1.0f);
    TU_GRADCHECK(concat_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(concat_errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t sa[2] = {2, 3}, sb[2] = {2, 4}, sc[3] = {2, 3, 1};
    dvl_tensor *a = dvl_new(ctx, DVL_F32, 2, sa), *b = dvl_new(ctx, DVL_F32, 2, sb);
    dvl_tensor *c = dvl_new(ctx, DVL_F32, 3, sc), *s = dvl_new(ctx, DVL_F32, 0, sa);
    a->name = "text";
    b->name = "image";
    c->name = "c3";
    s->name = "scalar";
    ck_assert_ptr_null(dvl_concat_rows(ctx, a, NULL));
    ck_assert(dvl_ctx_ok(ctx));
    ck_assert_ptr_null(dvl_concat_rows(ctx, a, b));
    ck_assert_msg(strstr(msg(ctx), "text [2, 3]") && strstr(msg(ctx), "image [2, 4]"), "%s",
                  msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_concat_rows(ctx, a, c));
    ck_assert_msg(strstr(msg(ctx), "c3 [2, 3, 1]"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_concat_rows(ctx, s, a));
    ck_assert_msg(strstr(msg(ctx), "scalar") && strstr(msg(ctx), "rows"), "%s", msg(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------------------- slice_rows */

START_TEST(slice_is_a_view)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[3] = {5, 2, 3};
    float v[30];
    for (int i = 0; i < 30; i++)
        v[i] = (float)i;
    dvl_tensor *x = tensor(ctx, 3, s, v, "seq");
    x->requires_grad = true;
    dvl_tensor *sl = dvl_slice_rows(ctx, x, 1, 3);
    ck_assert_ptr_nonnull(sl);
    ck_assert_int_eq(sl->ndim, 3);
    ck_assert_int_eq(sl->shape[0], 3);
    ck_assert_int_eq(sl->shape[1], 2);
    ck_assert_int_eq(sl->shape[2], 3);
    ck_assert_ptr_eq(sl->data, dvl_f32(x) + 6); /* no copy */
    ck_assert(sl->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    /* A slice of the slice is relative to it, and shares x's gradient. */
    dvl_tensor *ss = dvl_slice_rows(ctx, sl, 2, 1);
    ck_assert_ptr_eq(ss->data, dvl_f32(x) + 18);
    ck_assert_ptr_eq(dvl_grad(ctx, ss), dvl_grad(ctx, x) + 18);
    ck_assert_ptr_nonnull(dvl_slice_rows(ctx, x, 5, 0)); /* empty at the end */

    ck_assert_ptr_null(dvl_slice_rows(ctx, NULL, 0, 1));
    ck_assert(dvl_ctx_ok(ctx));
    ck_assert_ptr_null(dvl_slice_rows(ctx, x, 3, 3));
    ck_assert_msg(strstr(msg(ctx), "[3, 3 + 3)") && strstr(msg(ctx), "5 rows of seq [5, 2, 3]"),
                  "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_slice_rows(ctx, x, -1, 2));
    ck_assert_msg(strstr(msg(ctx), "seq"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_slice_rows(ctx, x, 1, -1));
    ck_assert(!dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

/* Overlapping slices of one parameter: both gradients land in it. */
static dvl_tensor *slices_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    dvl_tensor *a = dvl_params_find(p, "a");
    return dvl_concat_rows(ctx, dvl_slice_rows(ctx, a, 1, 3), dvl_slice_rows(ctx, a, 0, 2));
}

/* A slice of an activation between two linear layers: the view's gradient
 * must reach the first layer through the shared buffer. */
static dvl_tensor *slice_activation_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    dvl_tensor *h = dvl_linear(ctx, dvl_params_find(p, "x"), dvl_params_find(p, "W1"), NULL);
    return dvl_linear(ctx, dvl_slice_rows(ctx, h, 2, 3), dvl_params_find(p, "W2"),
                      dvl_params_find(p, "b2"));
}

START_TEST(slice_gradcheck)
{
    tu_pspec s1[1] = {{"a", 2, {5, 7}, true}};
    dvl_params *p = tu_make_params(s1, 1, 1, 1.0f);
    TU_GRADCHECK(slices_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);

    tu_pspec s2[4] = {{"x", 3, {7, 1, 5}, true},
                      {"W1", 2, {4, 5}, true},
                      {"W2", 2, {3, 4}, true},
                      {"b2", 1, {3}, true}};
    p = tu_make_params(s2, 4, 1, 1.0f);
    TU_GRADCHECK(slice_activation_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

/* ------------------------------------------------------------ slice_cols */

START_TEST(slice_cols_forward_backward)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[3] = {2, 1, 4};
    const float v[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    dvl_tensor *x = tensor(ctx, 3, s, v, "qkv");
    x->requires_grad = true;
    dvl_tensor *y = dvl_slice_cols(ctx, x, 1, 2);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(y->ndim, 3);
    ck_assert_int_eq(y->shape[0], 2);
    ck_assert_int_eq(y->shape[1], 1);
    ck_assert_int_eq(y->shape[2], 2);
    const float want[4] = {1, 2, 5, 6};
    assert_floats(dvl_f32(y), want, 4);
    ck_assert(y->data != x->data); /* a copy */
    /* Two overlapping slices: both gradients add into x's columns. */
    dvl_tensor *z = dvl_slice_cols(ctx, x, 2, 2);
    dvl_tensor *sum = dvl_add(ctx, y, z);
    const float seed[4] = {1, 10, 100, 1000};
    ck_assert_int_eq(dvl_backward_seed(ctx, sum, seed), 0);
    const float gx[8] = {0, 1, 11, 10, 0, 100, 1100, 1000};
    assert_floats(x->grad, gx, 8);
    /* Empty and whole slices. */
    dvl_tensor *e = dvl_slice_cols(ctx, x, 4, 0), *w = dvl_slice_cols(ctx, x, 0, 4);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(dvl_numel(e), 0);
    assert_floats(dvl_f32(w), v, 8);
    dvl_ctx_free(ctx);
}
END_TEST

static dvl_tensor *slice_cols_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    dvl_tensor *x = dvl_params_find(p, "x");
    dvl_tensor *a = dvl_slice_cols(ctx, x, 0, 5), *b = dvl_slice_cols(ctx, x, 3, 5);
    return dvl_linear(ctx, dvl_add(ctx, a, b), dvl_params_find(p, "W"), NULL);
}

START_TEST(slice_cols_gradcheck)
{
    tu_pspec s[2] = {{"x", 3, {3, 2, 9}, true}, {"W", 2, {4, 5}, true}};
    dvl_params *p = tu_make_params(s, 2, 3, 1.0f);
    TU_GRADCHECK(slice_cols_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(slice_cols_errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[2] = {3, 6};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 2, s);
    x->name = "qkv";
    ck_assert_ptr_null(dvl_slice_cols(ctx, x, 4, 3));
    ck_assert_msg(strstr(msg(ctx), "columns [4, 4 + 3) outside the 6 columns of qkv [3, 6]"),
                  "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_slice_cols(ctx, x, -1, 2));
    ck_assert_msg(strstr(msg(ctx), "qkv"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    dvl_tensor *ids = dvl_new(ctx, DVL_I32, 2, s);
    ids->name = "ids";
    ck_assert_ptr_null(dvl_slice_cols(ctx, ids, 0, 2));
    ck_assert_msg(strstr(msg(ctx), "ids [3, 6] must be an f32 tensor"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_slice_cols(ctx, NULL, 0, 2));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------------------ gather_rows */

START_TEST(gather_forward_backward)
{
    tu_pspec ps[1] = {{"x", 2, {4, 2}, true}};
    dvl_params *p = tu_make_params(ps, 1, 1, 1.0f);
    float *x = dvl_f32(p->t[0]);
    for (int r = 0; r < 4; r++) {
        x[2 * r] = (float)r;
        x[2 * r + 1] = 10.0f * (float)r;
    }
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int32_t idx[5] = {2, 0, 2, 3, 2};
    dvl_tensor *out = dvl_gather_rows(ctx, p->t[0], idx, 5);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(out->shape[0], 5);
    ck_assert_int_eq(out->shape[1], 2);
    const float want[10] = {2, 20, 0, 0, 2, 20, 3, 30, 2, 20};
    assert_floats(dvl_f32(out), want, 10);
    idx[0] = 1; /* the caller's indices change before backward */
    const float seed[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    ck_assert_int_eq(dvl_backward_seed(ctx, out, seed), 0);
    /* Row 2 gets positions 0, 2, 4 (1+5+9, 2+6+10); row 1 nothing. */
    const float gwant[8] = {3, 4, 0, 0, 15, 18, 7, 8};
    assert_floats(p->t[0]->grad, gwant, 8);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

static const int32_t gather_idx[8] = {4, 0, 4, 2, 1, 4, 0, 3};

static dvl_tensor *gather_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    return dvl_gather_rows(ctx, dvl_params_find(p, "x"), gather_idx, 8);
}

START_TEST(gather_gradcheck)
{
    tu_pspec ps[1] = {{"x", 3, {5, 3, 2}, true}};
    dvl_params *p = tu_make_params(ps, 1, 1, 1.0f);
    TU_GRADCHECK(gather_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(gather_errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[2] = {4, 2};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 2, s);
    x->name = "feats";
    const int32_t idx[3] = {0, 3, 4};
    ck_assert_ptr_null(dvl_gather_rows(ctx, NULL, idx, 3));
    ck_assert(dvl_ctx_ok(ctx));
    ck_assert_ptr_null(dvl_gather_rows(ctx, x, idx, 3));
    ck_assert_msg(strstr(msg(ctx), "index 4 at position 2") && strstr(msg(ctx), "feats [4, 2]"),
                  "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_gather_rows(ctx, x, NULL, 2));
    ck_assert_msg(strstr(msg(ctx), "feats"), "%s", msg(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

/* ----------------------------------------------------------- scatter_rows */

START_TEST(scatter_forward_backward)
{
    tu_pspec ps[2] = {{"dst", 2, {5, 2}, true}, {"src", 2, {2, 2}, true}};
    dvl_params *p = tu_make_params(ps, 2, 1, 1.0f);
    for (int i = 0; i < 10; i++)
        dvl_f32(p->t[0])[i] = (float)i;
    for (int i = 0; i < 4; i++)
        dvl_f32(p->t[1])[i] = 100.0f + (float)i;
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int32_t idx[2] = {3, 0};
    dvl_tensor *out = dvl_scatter_rows(ctx, p->t[0], p->t[1], idx);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(out->shape[0], 5);
    ck_assert_int_eq(out->shape[1], 2);
    const float want[10] = {102, 103, 2, 3, 4, 5, 100, 101, 8, 9};
    assert_floats(dvl_f32(out), want, 10);
    /* The inputs are untouched. */
    ck_assert_float_eq(dvl_f32(p->t[0])[0], 0.0f);
    idx[0] = 1; /* the caller's indices change before backward */
    const float seed[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    ck_assert_int_eq(dvl_backward_seed(ctx, out, seed), 0);
    const float gdst[10] = {0, 0, 3, 4, 5, 6, 0, 0, 9, 10}, gsrc[4] = {7, 8, 1, 2};
    assert_floats(p->t[0]->grad, gdst, 10);
    assert_floats(p->t[1]->grad, gsrc, 4);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

static const int32_t scatter_idx[3] = {5, 1, 2};

static dvl_tensor *scatter_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    return dvl_scatter_rows(ctx, dvl_params_find(p, "dst"), dvl_params_find(p, "src"),
                            scatter_idx);
}

/* src a slice of dst: the two gradients overlap in one buffer. */
static dvl_tensor *scatter_self_fn(dvl_ctx *ctx, dvl_params *p, void *user)
{
    dvl_tensor *a = dvl_params_find(p, "dst");
    static const int32_t idx[2] = {4, 1};
    return dvl_scatter_rows(ctx, a, dvl_slice_rows(ctx, a, 1, 2), idx);
}

START_TEST(scatter_gradcheck)
{
    tu_pspec ps[2] = {{"dst", 3, {7, 2, 3}, true}, {"src", 3, {3, 2, 3}, true}};
    dvl_params *p = tu_make_params(ps, 2, 1, 1.0f);
    TU_GRADCHECK(scatter_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);

    /* Frozen text embeddings, trainable image features (and the reverse):
     * the frozen side gets no gradient buffer. */
    ps[0].trainable = false; /* src only */
    p = tu_make_params(ps, 2, 1, 1.0f);
    TU_GRADCHECK(scatter_fn, p, NULL, GC_EPS, 0, GC_TOL);
    ck_assert_ptr_null(p->t[0]->grad);
    dvl_params_free(p);
    ps[0].trainable = true; /* dst only */
    ps[1].trainable = false;
    p = tu_make_params(ps, 2, 1, 1.0f);
    TU_GRADCHECK(scatter_fn, p, NULL, GC_EPS, 0, GC_TOL);
    ck_assert_ptr_null(p->t[1]->grad);
    TU_GRADCHECK(scatter_self_fn, p, NULL, GC_EPS, 0, GC_TOL);
    dvl_params_free(p);
}
END_TEST

START_TEST(scatter_errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t sd[2] = {5, 4}, ss[2] = {3, 4}, sw[2] = {3, 5}, sbig[2] = {6, 4};
    dvl_tensor *dst = dvl_new(ctx, DVL_F32, 2, sd), *src = dvl_new(ctx, DVL_F32, 2, ss);
    dvl_tensor *wide = dvl_new(ctx, DVL_F32, 2, sw), *big = dvl_new(ctx, DVL_F32, 2, sbig);
    dst->name = "tokens";
    src->name = "patches";
    wide->name = "wide";
    big->name = "big";
    const int32_t dup[3] = {2, 0, 2}, high[3] = {0, 5, 1}, neg[3] = {0, 1, -2}, ok[3] = {4, 0, 2};

    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, NULL, ok));
    ck_assert(dvl_ctx_ok(ctx));
    ck_assert_ptr_nonnull(dvl_scatter_rows(ctx, dst, src, ok));

    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, src, dup));
    ck_assert_msg(strstr(msg(ctx), "index 2 at positions 0 and 2") && strstr(msg(ctx), "tokens"),
                  "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, src, high));
    ck_assert_msg(strstr(msg(ctx), "index 5 at position 1") &&
                      strstr(msg(ctx), "5 rows of dst tokens"),
                  "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, src, neg));
    ck_assert_msg(strstr(msg(ctx), "index -2 at position 2"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, wide, ok));
    ck_assert_msg(strstr(msg(ctx), "wide [3, 5]") && strstr(msg(ctx), "tokens [5, 4]"), "%s",
                  msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_scatter_rows(ctx, src, big, ok));
    ck_assert_msg(strstr(msg(ctx), "big") && strstr(msg(ctx), "patches"), "%s", msg(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_scatter_rows(ctx, dst, src, NULL));
    ck_assert_msg(strstr(msg(ctx), "patches"), "%s", msg(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("rows");
    TCase *tc = tcase_create("rows");
    tcase_add_test(tc, concat_forward);
    tcase_add_test(tc, concat_backward_exact);
    tcase_add_test(tc, concat_with_itself);
    tcase_add_test(tc, concat_gradcheck);
    tcase_add_test(tc, concat_errors);
    tcase_add_test(tc, slice_is_a_view);
    tcase_add_test(tc, slice_gradcheck);
    tcase_add_test(tc, slice_cols_forward_backward);
    tcase_add_test(tc, slice_cols_gradcheck);
    tcase_add_test(tc, slice_cols_errors);
    tcase_add_test(tc, gather_forward_backward);
    tcase_add_test(tc, gather_gradcheck);
    tcase_add_test(tc, gather_errors);
    tcase_add_test(tc, scatter_forward_backward);
    tcase_add_test(tc, scatter_gradcheck);
    tcase_add_test(tc, scatter_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
