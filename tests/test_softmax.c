/* Softmax over the last dimension: gradients against central finite
 * differences, values against a double-precision formula, rows summing to
 * one, no overflow for large inputs, fully masked rows, errors. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static dvl_tensor *f_softmax(dvl_ctx *c, dvl_params *p, void *u)
{
    return dvl_softmax(c, dvl_params_find(p, "x"));
}

/* eps = 1e-2 on logits of std 2 (peaked rows, where the curvature is
 * largest); seen errors ~2e-5 of the gradient's scale: tol 2e-4. */
START_TEST(gradcheck_softmax)
{
    tu_pspec s3 = {"x", 3, {3, 5, 13}, true}, s2 = {"x", 2, {7, 33}, true};
    tu_pspec s1 = {"x", 1, {1}, true};
    dvl_params *p = tu_make_params(&s3, 1, 201, 2.0f);
    TU_GRADCHECK_NAMED("softmax [3,5,13]", f_softmax, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
    p = tu_make_params(&s2, 1, 202, 2.0f);
    TU_GRADCHECK_NAMED("softmax [7,33]", f_softmax, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
    /* One column: y = 1 whatever x, so the gradient is exactly 0. */
    p = tu_make_params(&s1, 1, 203, 1.0f);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ck_assert_int_eq(dvl_backward(ctx, f_softmax(ctx, p, NULL)), 0);
    ck_assert_float_eq(p->t[0]->grad[0], 0.0f);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* exp(x - max) / sum in double. The kernel rounds x - max to f32 (as torch
 * does), which moves exp by up to |x - max| 2^-24 relative; then expf and one
 * division: within (2 + |x - max|) FLT_EPSILON relative. */
static void check_rows(const dvl_tensor *x, const dvl_tensor *y)
{
    int64_t rows = dvl_rows(x), cols = dvl_cols(x);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = dvl_f32(x) + r * cols, *yr = dvl_f32(y) + r * cols;
        double m = -INFINITY, s = 0, total = 0;
        for (int64_t c = 0; c < cols; c++)
            m = fmax(m, xr[c]);
        for (int64_t c = 0; c < cols; c++)
            s += exp((double)xr[c] - m);
        for (int64_t c = 0; c < cols; c++) {
            double ref = exp((double)xr[c] - m) / s;
            double tol = (2.0 + fabs((double)xr[c] - m)) * FLT_EPSILON * ref + 1e-40;
            ck_assert_msg(isfinite(yr[c]) && fabs(yr[c] - ref) <= tol,
                          "softmax[%lld, %lld] = %.9g, want %.9g", (long long)r, (long long)c,
                          (double)yr[c], ref);
            total += yr[c];
        }
        ck_assert_msg(fabs(total - 1.0) <= 1e-6, "row %lld sums to %.9g", (long long)r, total);
    }
}

START_TEST(matches_double_formula)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[3] = {2, 3, 37};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 3, s);
    tu_randn(x, 211, 4.0f);
    for (int64_t i = 0; i < dvl_numel(x); i++) /* multiples of 2^-10: x + 64 is exact */
        dvl_f32(x)[i] = roundf(dvl_f32(x)[i] * 1024.0f) / 1024.0f;
    dvl_tensor *y = dvl_softmax(ctx, x);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(y->ndim, 3);
    check_rows(x, y);
    /* Shift invariance: adding a constant to a row changes no bit (the
     * maximum is subtracted first and x - max is the same float). */
    dvl_tensor *xs = dvl_new(ctx, DVL_F32, 3, s);
    for (int64_t i = 0; i < dvl_numel(x); i++)
        dvl_f32(xs)[i] = dvl_f32(x)[i] + 64.0f;
    dvl_tensor *ys = dvl_softmax(ctx, xs);
    ck_assert(memcmp(dvl_f32(y), dvl_f32(ys), (size_t)dvl_numel(y) * sizeof(float)) == 0);
    dvl_ctx_free(ctx);
}
END_TEST

/* torch.softmax(x, -1), torch 2.11 on CPU, float32. torch multiplies by the
 * reciprocal of a float sum; ours is one correctly rounded quotient of a
 * double sum: within 2 units in the last place. */
static const float TORCH_SOFTMAX[52] = {
    0x1.4b073cp-17f, 0x1.e74cb2p-8f, 0x1.fdd1c6p-16f, 0x1.773f42p-6f,
    0x1.8896bp-14f, 0x1.20f5eap-4f, 0x1.2e5082p-12f, 0x1.bd07dap-3f,
    0x1.d198dcp-11f, 0x1.56b2ap-1f, 0x1.6688f8p-9f, 0x1.771aaap-17f,
    0x1.141766p-7f, 0x1.f489dep-16f, 0x1.706a8p-6f, 0x1.81711cp-14f,
    0x1.1bb346p-4f, 0x1.28cfa4p-12f, 0x1.b4ede2p-3f, 0x1.c91f0ap-11f,
    0x1.50758ep-1f, 0x1.600216p-9f, 0x1.704692p-17f, 0x1.0f10bcp-7f,
    0x1.1b979ep-15f, 0x1.a17854p-6f, 0x1.6cf9fep-14f, 0x1.0ca314p-4f,
    0x1.190d3cp-12f, 0x1.9dbaecp-3f, 0x1.b0d9ap-11f, 0x1.3e983cp-1f,
    0x1.4d516cp-9f, 0x1.5cb8cap-17f, 0x1.00ac48p-7f, 0x1.0c88e4p-15f,
    0x1.8b4ddep-6f, 0x1.9d9294p-14f, 0x1.3067dap-4f, 0x1.e3184ep-13f,
    0x1.6393acp-3f, 0x1.74026p-11f, 0x1.11d03ep-1f, 0x1.1e77a2p-9f,
    0x1.2bb4bap-17f, 0x1.b930d4p-8f, 0x1.cd9468p-16f, 0x1.53bda4p-6f,
    0x1.6370fep-14f, 0x1.059e6cp-4f, 0x1.11b58ap-12f, 0x1.92ebdep-3f,
};

START_TEST(matches_torch)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y = dvl_softmax(ctx, tu_ref_input(ctx));
    ck_assert_ptr_nonnull(y);
    for (int i = 0; i < 52; i++)
        ck_assert_msg(tu_ulps(dvl_f32(y)[i], TORCH_SOFTMAX[i]) <= 2, "softmax[%d] = %a, torch %a",
                      i, (double)dvl_f32(y)[i], (double)TORCH_SOFTMAX[i]);
    dvl_ctx_free(ctx);
}
END_TEST

/* exp(1000) overflows f32 (and f64): the maximum must be subtracted. */
START_TEST(large_inputs_do_not_overflow)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    float v[3][4] = {{1000.0f, 999.0f, 998.0f, 1000.0f},
                     {-1000.0f, -1001.0f, -1000.5f, -1003.0f},
                     {1000.0f, -1000.0f, 0.0f, 1e30f}};
    int64_t s[2] = {3, 4};
    dvl_tensor *x = dvl_wrap(ctx, DVL_F32, 2, s, v);
    dvl_tensor *y = dvl_softmax(ctx, x);
    ck_assert_ptr_nonnull(y);
    check_rows(x, y);
    ck_assert_float_eq(dvl_f32(y)[0], dvl_f32(y)[3]);
    ck_assert_float_eq(dvl_f32(y)[11], 1.0f);
    ck_assert_float_eq(dvl_f32(y)[8], 0.0f);
    dvl_ctx_free(ctx);
}
END_TEST

/* -inf entries (masked) get exactly 0; a row with nothing but -inf gives
 * zeros rather than NaN, and its gradient is 0. */
START_TEST(masked_entries)
{
    tu_pspec s = {"x", 2, {2, 5}, true};
    dvl_params *p = tu_make_params(&s, 1, 221, 1.0f);
    float *x = dvl_f32(p->t[0]);
    x[1] = x[3] = -INFINITY;
    for (int c = 5; c < 10; c++)
        x[c] = -INFINITY;
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y = dvl_softmax(ctx, p->t[0]);
    ck_assert_float_eq(dvl_f32(y)[1], 0.0f);
    ck_assert_float_eq(dvl_f32(y)[3], 0.0f);
    double total = (double)dvl_f32(y)[0] + dvl_f32(y)[2] + dvl_f32(y)[4];
    ck_assert(fabs(total - 1.0) <= 1e-6);
    for (int c = 5; c < 10; c++)
        ck_assert_float_eq(dvl_f32(y)[c], 0.0f);
    float seed[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    ck_assert_int_eq(dvl_backward_seed(ctx, y, seed), 0);
    for (int c = 0; c < 10; c++)
        ck_assert(isfinite(p->t[0]->grad[c]));
    ck_assert_float_eq(p->t[0]->grad[1], 0.0f);
    ck_assert_float_eq(p->t[0]->grad[7], 0.0f);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

START_TEST(errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ck_assert_ptr_null(dvl_softmax(ctx, NULL));
    ck_assert(dvl_ctx_ok(ctx));
    int64_t s[2] = {2, 3};
    dvl_tensor *ids = dvl_new(ctx, DVL_I32, 2, s);
    ids->name = "labels";
    ck_assert_ptr_null(dvl_softmax(ctx, ids));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "labels"));
    dvl_ctx_clear_error(ctx);
    dvl_tensor *scalar = dvl_new(ctx, DVL_F32, 0, s);
    scalar->name = "loss";
    ck_assert_ptr_null(dvl_softmax(ctx, scalar));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "loss"));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("softmax");
    TCase *tc = tcase_create("softmax");
    tcase_add_test(tc, gradcheck_softmax);
    tcase_add_test(tc, matches_double_formula);
    tcase_add_test(tc, matches_torch);
    tcase_add_test(tc, large_inputs_do_not_overflow);
    tcase_add_test(tc, masked_entries);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
