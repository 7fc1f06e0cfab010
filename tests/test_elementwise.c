/* Elementwise ops and the full sum: gradients against central finite
 * differences, forward values against double-precision formulas, gradient
 * accumulation when one tensor feeds both inputs, frozen inputs, errors. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ----------------------------------------------------- gradient checks */

static dvl_tensor *f_add(dvl_ctx *c, dvl_params *p, void *u) { return dvl_add(c, tu_param(p, "a"), tu_param(p, "b")); }
static dvl_tensor *f_mul(dvl_ctx *c, dvl_params *p, void *u) { return dvl_mul(c, tu_param(p, "a"), tu_param(p, "b")); }
static dvl_tensor *f_add_self(dvl_ctx *c, dvl_params *p, void *u) { return dvl_add(c, tu_param(p, "a"), tu_param(p, "a")); }
static dvl_tensor *f_mul_self(dvl_ctx *c, dvl_params *p, void *u) { return dvl_mul(c, tu_param(p, "a"), tu_param(p, "a")); }
static dvl_tensor *f_scale(dvl_ctx *c, dvl_params *p, void *u) { return dvl_scale(c, tu_param(p, "a"), -1.75f); }
static dvl_tensor *f_silu(dvl_ctx *c, dvl_params *p, void *u) { return dvl_silu(c, tu_param(p, "a")); }
static dvl_tensor *f_swiglu(dvl_ctx *c, dvl_params *p, void *u) { return dvl_swiglu(c, tu_param(p, "a"), tu_param(p, "b")); }
static dvl_tensor *f_swiglu_self(dvl_ctx *c, dvl_params *p, void *u) { return dvl_swiglu(c, tu_param(p, "a"), tu_param(p, "a")); }
static dvl_tensor *f_gelu(dvl_ctx *c, dvl_params *p, void *u) { return dvl_gelu(c, tu_param(p, "a"), *(dvl_gelu_kind *)u); }
static dvl_tensor *f_sum(dvl_ctx *c, dvl_params *p, void *u) { return dvl_sum(c, tu_param(p, "a")); }

/* Two partly overlapping row views of one parameter x [9, 5]: a = rows 0..6,
 * b = rows 2..8, so a gradient element receives contributions through both. */
static dvl_tensor *f_overlap(dvl_ctx *c, dvl_params *p, void *u)
{
    dvl_tensor *x = tu_param(p, "x");
    int64_t s[2] = {7, 5};
    dvl_tensor *a = dvl_view(c, x, 2, s, 0), *b = dvl_view(c, x, 2, s, 10);
    switch (*(int *)u) {
    case 0: return dvl_add(c, a, b);
    case 1: return dvl_mul(c, a, b);
    default: return dvl_swiglu(c, a, b);
    }
}

/* Linear and bilinear ops have no truncation error in a central difference:
 * only f32 rounding of the outputs, so eps = 1e-2 and tol 1e-4 of the
 * gradient's scale. Smooth nonlinear ops (silu, gelu, swiglu): eps = 1e-2,
 * truncation ~eps^2 |f'''| / 6 ~ 1e-5, tol 2e-4. Shapes are odd on purpose. */
/* swiglu on the halves of one tensor [3, 5, 2 x 7]. */
static dvl_tensor *f_swiglu_cat(dvl_ctx *c, dvl_params *p, void *u)
{
    return dvl_swiglu_cat(c, tu_param(p, "gu"));
}

START_TEST(swiglu_cat_gradcheck)
{
    tu_pspec s[1] = {{"gu", 3, {3, 5, 14}, true}};
    dvl_params *p = tu_make_params(s, 1, 15, 2.0f);
    TU_GRADCHECK_NAMED("swiglu_cat", f_swiglu_cat, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

/* The same floats as dvl_swiglu on the two halves copied out, forward and
 * backward: one formula, only the indexing differs. */
START_TEST(swiglu_cat_equals_swiglu_on_halves)
{
    const int64_t rows = 37, I = 29;
    tu_pspec s[3] = {{"gu", 2, {rows, 2 * I}, true}, {"g", 2, {rows, I}, true},
                     {"u", 2, {rows, I}, true}};
    dvl_params *p = tu_make_params(s, 3, 16, 3.0f);
    dvl_tensor *gu = p->t[0], *g = p->t[1], *u = p->t[2];
    for (int64_t r = 0; r < rows; r++) {
        memcpy(dvl_f32(g) + r * I, dvl_f32(gu) + r * 2 * I, (size_t)I * sizeof(float));
        memcpy(dvl_f32(u) + r * I, dvl_f32(gu) + r * 2 * I + I, (size_t)I * sizeof(float));
    }
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    float *seed = malloc((size_t)(rows * I) * sizeof *seed);
    for (int64_t i = 0; i < rows * I; i++)
        seed[i] = (float)((i * 7919) % 23) * 0.125f - 1.4f;
    /* One backward at a time: a backward runs (and clears) the whole tape. */
    dvl_tensor *y1 = dvl_swiglu_cat(ctx, gu);
    ck_assert_ptr_nonnull(y1);
    ck_assert_int_eq(dvl_backward_seed(ctx, y1, seed), 0);
    dvl_tensor *y2 = dvl_swiglu(ctx, g, u);
    ck_assert_ptr_nonnull(y2);
    ck_assert_int_eq(dvl_backward_seed(ctx, y2, seed), 0);
    ck_assert_int_eq(y1->shape[1], I);
    ck_assert_mem_eq(y1->data, y2->data, (size_t)(rows * I) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ck_assert_mem_eq(gu->grad + r * 2 * I, g->grad + r * I, (size_t)I * sizeof(float));
        ck_assert_mem_eq(gu->grad + r * 2 * I + I, u->grad + r * I, (size_t)I * sizeof(float));
    }
    /* An odd last dimension has no halves. */
    int64_t odd[2] = {2, 5};
    dvl_tensor *o = dvl_new(ctx, DVL_F32, 2, odd);
    o->name = "gate_up";
    ck_assert_ptr_null(dvl_swiglu_cat(ctx, o));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "gate_up [2, 5] must have an even last"), "%s",
                  dvl_ctx_err(ctx)->msg);
    free(seed);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_binary)
{
    tu_pspec s[2] = {{"a", 3, {3, 5, 7}, true}, {"b", 3, {3, 5, 7}, true}};
    dvl_params *p = tu_make_params(s, 2, 11, 1.0f);
    TU_GRADCHECK_NAMED("add", f_add, p, NULL, 1e-2f, 0, 1e-4);
    TU_GRADCHECK_NAMED("mul", f_mul, p, NULL, 1e-2f, 0, 1e-4);
    TU_GRADCHECK_NAMED("swiglu", f_swiglu, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_same_input_twice)
{
    tu_pspec s[1] = {{"a", 2, {13, 7}, true}};
    dvl_params *p = tu_make_params(s, 1, 12, 1.0f);
    TU_GRADCHECK_NAMED("add(a, a)", f_add_self, p, NULL, 1e-2f, 0, 1e-4);
    TU_GRADCHECK_NAMED("mul(a, a)", f_mul_self, p, NULL, 1e-2f, 0, 1e-4);
    TU_GRADCHECK_NAMED("swiglu(a, a)", f_swiglu_self, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_overlapping_views)
{
    tu_pspec s[1] = {{"x", 2, {9, 5}, true}};
    dvl_params *p = tu_make_params(s, 1, 13, 1.0f);
    int op = 0;
    TU_GRADCHECK_NAMED("add(overlap)", f_overlap, p, &op, 1e-2f, 0, 1e-4);
    op = 1;
    TU_GRADCHECK_NAMED("mul(overlap)", f_overlap, p, &op, 1e-2f, 0, 1e-4);
    op = 2;
    TU_GRADCHECK_NAMED("swiglu(overlap)", f_overlap, p, &op, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_unary)
{
    /* Scaled up so the nonlinearities are exercised on their curved parts. */
    tu_pspec s[1] = {{"a", 2, {7, 33}, true}};
    dvl_params *p = tu_make_params(s, 1, 14, 1.0f);
    for (int64_t i = 0; i < dvl_numel(p->t[0]); i++)
        dvl_f32(p->t[0])[i] *= 2.5f;
    TU_GRADCHECK_NAMED("scale", f_scale, p, NULL, 1e-2f, 0, 1e-4);
    TU_GRADCHECK_NAMED("silu", f_silu, p, NULL, 1e-2f, 0, 2e-4);
    dvl_gelu_kind k = DVL_GELU_ERF;
    TU_GRADCHECK_NAMED("gelu(erf)", f_gelu, p, &k, 1e-2f, 0, 2e-4);
    k = DVL_GELU_TANH;
    TU_GRADCHECK_NAMED("gelu(tanh)", f_gelu, p, &k, 1e-2f, 0, 2e-4);
    TU_GRADCHECK_NAMED("sum", f_sum, p, NULL, 1e-2f, 0, 1e-4);
    dvl_params_free(p);
}
END_TEST

/* ----------------------------------------------------- forward values */

/* Inputs spread over [-12, 12] plus signed zeros. */
static dvl_tensor *spread(dvl_ctx *ctx, int64_t n)
{
    dvl_tensor *x = dvl_new2(ctx, 1, n);
    for (int64_t i = 0; i < n; i++)
        dvl_f32(x)[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
    dvl_f32(x)[n / 2] = 0.0f;
    dvl_f32(x)[n / 2 + 1] = -0.0f;
    return x;
}

static double silu_d(double x) { return x / (1.0 + exp(-x)); }

/* The activations are rounded once from double, so each output is within
 * half a unit in the last place of the formula: 2^-24 relative (plus 1e-12
 * for the double evaluation, and a denormal's half step). The formulas are
 * the definitions; for x < -3, where 1 + erf(x/sqrt2) and 1 + tanh(u) cancel
 * even in double, the identities 1 + erf(z) = erfc(-z) and
 * 1 + tanh(u) = 2 / (1 + exp(-2u)) stand in. swiglu rounds silu(gate) to
 * float first (as HF's two tensors do): 2^-23. */
START_TEST(forward_matches_double_formulas)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t n = 1001;
    dvl_tensor *x = spread(ctx, n), *u = dvl_new2(ctx, 1, n);
    tu_randn(u, 21, 2.0f);
    dvl_tensor *ys = dvl_silu(ctx, x), *ysw = dvl_swiglu(ctx, x, u);
    dvl_tensor *ye = dvl_gelu(ctx, x, DVL_GELU_ERF), *yt = dvl_gelu(ctx, x, DVL_GELU_TANH);
    ck_assert(ys && ysw && ye && yt);
    const double k = sqrt(2.0 / M_PI), half_ulp = 0x1p-24 + 1e-12, tiny = 0x1p-149;
    for (int64_t i = 0; i < n; i++) {
        double v = dvl_f32(x)[i], w = dvl_f32(u)[i];
        double t = k * (v + 0.044715 * v * v * v);
        double rs = silu_d(v), rsw = silu_d(v) * w;
        double re = v >= -3 ? 0.5 * v * (1.0 + erf(v / M_SQRT2)) : 0.5 * v * erfc(-v / M_SQRT2);
        double rt = v >= -3 ? 0.5 * v * (1.0 + tanh(t)) : v / (1.0 + exp(-2.0 * t));
        ck_assert_msg(fabs(dvl_f32(ys)[i] - rs) <= half_ulp * fabs(rs) + tiny,
                      "silu(%g) = %a, want %a", v, (double)dvl_f32(ys)[i], rs);
        ck_assert_msg(fabs(dvl_f32(ysw)[i] - rsw) <= 2 * half_ulp * fabs(rsw) + tiny,
                      "swiglu(%g, %g) = %a, want %a", v, w, (double)dvl_f32(ysw)[i], rsw);
        ck_assert_msg(fabs(dvl_f32(ye)[i] - re) <= half_ulp * fabs(re) + tiny,
                      "gelu_erf(%g) = %a, want %a", v, (double)dvl_f32(ye)[i], re);
        ck_assert_msg(fabs(dvl_f32(yt)[i] - rt) <= half_ulp * fabs(rt) + tiny,
                      "gelu_tanh(%g) = %a, want %a", v, (double)dvl_f32(yt)[i], rt);
    }
    /* The two gelu forms differ (by up to ~1e-3 near |x| = 2): a kind mix-up shows. */
    ck_assert(tu_max_abs_diff(dvl_f32(ye), dvl_f32(yt), n) > 1e-4);
    /* swiglu is exactly silu(gate) * up, rounded twice as HF's Qwen2MLP does. */
    dvl_tensor *ym = dvl_mul(ctx, ys, u);
    ck_assert(memcmp(dvl_f32(ym), dvl_f32(ysw), (size_t)n * sizeof(float)) == 0);
    /* Saturation: no NaN or inf far out. */
    float big[4] = {-100.0f, 100.0f, -1e30f, 1e30f};
    int64_t s4 = 4;
    dvl_tensor *xb = dvl_wrap(ctx, DVL_F32, 1, &s4, big);
    dvl_tensor *sb = dvl_silu(ctx, xb), *eb = dvl_gelu(ctx, xb, DVL_GELU_ERF);
    dvl_tensor *tb = dvl_gelu(ctx, xb, DVL_GELU_TANH);
    for (int i = 0; i < 4; i++) {
        /* silu(-100) = -3.7e-42 is a denormal, the rest round to 0 or x. */
        float want = i == 0 ? (float)silu_d(-100.0) : big[i] < 0 ? 0.0f : big[i];
        ck_assert_float_eq(dvl_f32(sb)[i], want);
        ck_assert_float_eq(dvl_f32(eb)[i], big[i] < 0 ? 0.0f : big[i]);
        ck_assert_float_eq(dvl_f32(tb)[i], big[i] < 0 ? 0.0f : big[i]);
    }
    dvl_ctx_free(ctx);
}
END_TEST

/* torch 2.11 on CPU, float32: F.silu, F.gelu and F.gelu(approximate='tanh')
 * at x = -1, -0.5, ..., 12.5. torch's float kernels are up to 2 units in
 * the last place off the true values there; ours are rounded once from
 * double, so the two agree within 3. (Below x = -1 torch's 1 + erf and
 * 1 + tanh cancel: 1140 units off at x = -3; no reference taken there.) */
static const float TORCH_SILU[28] = {
    -0x1.136562p-2f, -0x1.829a06p-3f, 0.0f, 0x1.3eb2fep-2f,
    0x1.764d5p-1f, 0x1.39f2d6p+0f, 0x1.c2f7d4p+0f, 0x1.27b9b2p+1f,
    0x1.6dc9dap+1f, 0x1.b2de3ep+1f, 0x1.f6ca82p+1f, 0x1.1cd5f4p+2f,
    0x1.3ddbb8p+2f, 0x1.5e913cp+2f, 0x1.7f0cfp+2f, 0x1.9f602p+2f,
    0x1.bf9784p+2f, 0x1.dfbc12p+2f, 0x1.ffd40cp+2f, 0x1.0ff1d6p+3f,
    0x1.1ff6e8p+3f, 0x1.2ffa2cp+3f, 0x1.3ffc48p+3f, 0x1.4ffda2p+3f,
    0x1.5ffe8p+3f, 0x1.6fff0cp+3f, 0x1.7fff64p+3f, 0x1.8fffap+3f,
};
static const float TORCH_GELU_ERF[28] = {
    -0x1.44ed0cp-3f, -0x1.3bf144p-3f, 0.0f, 0x1.62075ep-2f,
    0x1.aec4bcp-1f, 0x1.665894p+0f, 0x1.f45a18p+0f, 0x1.3e034ep+1f,
    0x1.7f7b48p+1f, 0x1.bfe55p+1f, 0x1.fffbdcp+1f, 0x1.1fffbep+2f,
    0x1.3ffffcp+2f, 0x1.6p+2f, 0x1.8p+2f, 0x1.ap+2f,
    0x1.cp+2f, 0x1.ep+2f, 0x1p+3f, 0x1.1p+3f,
    0x1.2p+3f, 0x1.3p+3f, 0x1.4p+3f, 0x1.5p+3f,
    0x1.6p+3f, 0x1.7p+3f, 0x1.8p+3f, 0x1.9p+3f,
};
static const float TORCH_GELU_TANH[28] = {
    -0x1.453d2p-3f, -0x1.3bfa4cp-3f, 0.0f, 0x1.6202dap-2f,
    0x1.aeb0b8p-1f, 0x1.664a52p+0f, 0x1.f46084p+0f, 0x1.3e11b8p+1f,
    0x1.7f88dp+1f, 0x1.bfebcep+1f, 0x1.fffdb4p+1f, 0x1.1fffeap+2f,
    0x1.3ffffep+2f, 0x1.6p+2f, 0x1.8p+2f, 0x1.ap+2f,
    0x1.cp+2f, 0x1.ep+2f, 0x1p+3f, 0x1.1p+3f,
    0x1.2p+3f, 0x1.3p+3f, 0x1.4p+3f, 0x1.5p+3f,
    0x1.6p+3f, 0x1.7p+3f, 0x1.8p+3f, 0x1.9p+3f,
};

START_TEST(matches_torch)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 1, 28);
    for (int i = 0; i < 28; i++)
        dvl_f32(x)[i] = -1.0f + 0.5f * (float)i;
    dvl_tensor *y[3] = {dvl_silu(ctx, x), dvl_gelu(ctx, x, DVL_GELU_ERF),
                        dvl_gelu(ctx, x, DVL_GELU_TANH)};
    const float *ref[3] = {TORCH_SILU, TORCH_GELU_ERF, TORCH_GELU_TANH};
    const char *name[3] = {"silu", "gelu_erf", "gelu_tanh"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 28; i++)
            ck_assert_msg(tu_ulps(dvl_f32(y[k])[i], ref[k][i]) <= 3, "%s(%g) = %a, torch %a",
                          name[k], (double)dvl_f32(x)[i], (double)dvl_f32(y[k])[i],
                          (double)ref[k][i]);
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(add_mul_scale_exact)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[3] = {2, 3, 5};
    dvl_tensor *a = dvl_new(ctx, DVL_F32, 3, s), *b = dvl_new(ctx, DVL_F32, 3, s);
    tu_randn(a, 31, 1.0f);
    tu_randn(b, 32, 1.0f);
    dvl_tensor *y1 = dvl_add(ctx, a, b), *y2 = dvl_mul(ctx, a, b), *y3 = dvl_scale(ctx, a, 0.3f);
    ck_assert(y1 && y2 && y3);
    ck_assert_int_eq(y1->ndim, 3);
    ck_assert_int_eq(y1->shape[2], 5);
    for (int i = 0; i < 30; i++) {
        ck_assert_float_eq(dvl_f32(y1)[i], dvl_f32(a)[i] + dvl_f32(b)[i]);
        ck_assert_float_eq(dvl_f32(y2)[i], dvl_f32(a)[i] * dvl_f32(b)[i]);
        ck_assert_float_eq(dvl_f32(y3)[i], dvl_f32(a)[i] * 0.3f);
    }
    dvl_ctx_free(ctx);
}
END_TEST

/* The sum accumulates in double: 2^24 followed by a thousand ones is
 * 16778216, where a float accumulator would stay at 2^24. */
START_TEST(sum_double_accumulation)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 1, 1001);
    dvl_f32(x)[0] = 16777216.0f;
    for (int i = 1; i < 1001; i++)
        dvl_f32(x)[i] = 1.0f;
    dvl_tensor *y = dvl_sum(ctx, x);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(dvl_numel(y), 1);
    ck_assert_float_eq(dvl_f32(y)[0], 16778216.0f);
    /* Empty tensor sums to 0. */
    int64_t z[2] = {0, 4};
    dvl_tensor *e = dvl_new(ctx, DVL_F32, 2, z);
    ck_assert_float_eq(dvl_f32(dvl_sum(ctx, e))[0], 0.0f);
    dvl_ctx_free(ctx);
}
END_TEST

/* Several chunks (enough elements for the kernel to go parallel), against a
 * serial double sum, and bit-identical for 1, 2 and 5 threads. */
START_TEST(sum_deterministic)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t n = 9 * 4096 + 37;
    dvl_tensor *x = dvl_new2(ctx, 1, n);
    tu_randn(x, 41, 3.0f);
    double ref = 0;
    for (int64_t i = 0; i < n; i++)
        ref += dvl_f32(x)[i];
    int saved = omp_get_max_threads();
    float got[3];
    int threads[3] = {1, 2, 5};
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(threads[k]);
        got[k] = dvl_f32(dvl_sum(ctx, x))[0];
    }
    omp_set_num_threads(saved);
    ck_assert_msg(fabs(got[0] - ref) <= FLT_EPSILON * fabs(ref), "sum %.9g, want %.9g",
                  (double)got[0], ref);
    ck_assert(memcmp(&got[0], &got[1], sizeof(float)) == 0);
    ck_assert(memcmp(&got[0], &got[2], sizeof(float)) == 0);
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------- autograd semantics */

/* d/dx sum(x * x) = 2x and d/dx sum(x + x) = 2, exactly: both contributions
 * of the input that appears twice must land. */
START_TEST(same_input_twice_accumulates)
{
    tu_pspec s[1] = {{"x", 2, {5, 3}, true}};
    dvl_params *p = tu_make_params(s, 1, 51, 1.0f);
    dvl_tensor *x = tu_param(p, "x");
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ck_assert_int_eq(dvl_backward(ctx, dvl_sum(ctx, dvl_mul(ctx, x, x))), 0);
    for (int i = 0; i < 15; i++)
        ck_assert_float_eq(x->grad[i], 2.0f * dvl_f32(x)[i]);
    dvl_params_zero_grad(p);
    dvl_ctx_reset(ctx);
    ck_assert_int_eq(dvl_backward(ctx, dvl_sum(ctx, dvl_add(ctx, x, x))), 0);
    for (int i = 0; i < 15; i++)
        ck_assert_float_eq(x->grad[i], 2.0f);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* A frozen input gets no gradient buffer, the trainable one the right
 * gradient; gradients flow through ops on frozen tensors to trainable ones. */
START_TEST(frozen_input_gets_no_gradient)
{
    tu_pspec s[2] = {{"frozen", 2, {4, 7}, false}, {"w", 2, {4, 7}, true}};
    dvl_params *p = tu_make_params(s, 2, 61, 1.0f);
    dvl_tensor *f = tu_param(p, "frozen"), *w = tu_param(p, "w");
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    /* Nothing to record for an op on frozen tensors alone. */
    ck_assert(!dvl_silu(ctx, f)->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_tensor *y = dvl_sum(ctx, dvl_mul(ctx, dvl_gelu(ctx, f, DVL_GELU_TANH), w));
    ck_assert_int_eq(dvl_backward(ctx, y), 0);
    ck_assert_ptr_null(f->grad);
    dvl_tensor *g = dvl_gelu(ctx, f, DVL_GELU_TANH);
    for (int i = 0; i < 28; i++)
        ck_assert_float_eq(w->grad[i], dvl_f32(g)[i]);
    /* Grad mode off records nothing. */
    dvl_ctx_reset(ctx);
    dvl_set_grad_enabled(ctx, false);
    ck_assert(!dvl_swiglu(ctx, w, w)->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

START_TEST(errors_name_tensors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *a = dvl_new2(ctx, 3, 4), *b = dvl_new2(ctx, 4, 3);
    a->name = "alpha";
    b->name = "beta";
    dvl_tensor *(*bin[3])(dvl_ctx *, dvl_tensor *, dvl_tensor *) = {dvl_add, dvl_mul, dvl_swiglu};
    for (int k = 0; k < 3; k++) {
        ck_assert_ptr_null(bin[k](ctx, a, b));
        const char *m = dvl_ctx_err(ctx)->msg;
        ck_assert_msg(strstr(m, "alpha") && strstr(m, "beta") && strstr(m, "[3, 4]") &&
                          strstr(m, "[4, 3]"),
                      "message: %s", m);
        dvl_ctx_clear_error(ctx);
    }
    /* Same element count, other shape: still a mismatch (no broadcasting). */
    int64_t s3[3] = {3, 2, 2};
    dvl_tensor *c = dvl_new(ctx, DVL_F32, 3, s3);
    ck_assert_ptr_null(dvl_add(ctx, a, c));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_gelu(ctx, a, (dvl_gelu_kind)7));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "alpha"));
    dvl_ctx_clear_error(ctx);
    dvl_tensor *ints = dvl_new(ctx, DVL_I32, 2, a->shape);
    ints->name = "ids";
    ck_assert_ptr_null(dvl_silu(ctx, ints));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "ids"));
    dvl_ctx_clear_error(ctx);
    /* A NULL input returns NULL and leaves the error state alone. */
    ck_assert_ptr_null(dvl_add(ctx, NULL, b));
    ck_assert_ptr_null(dvl_mul(ctx, a, NULL));
    ck_assert_ptr_null(dvl_scale(ctx, NULL, 2.0f));
    ck_assert_ptr_null(dvl_silu(ctx, NULL));
    ck_assert_ptr_null(dvl_swiglu(ctx, NULL, NULL));
    ck_assert_ptr_null(dvl_gelu(ctx, NULL, DVL_GELU_ERF));
    ck_assert_ptr_null(dvl_sum(ctx, NULL));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("elementwise");
    TCase *tc = tcase_create("elementwise");
    tcase_add_test(tc, gradcheck_binary);
    tcase_add_test(tc, swiglu_cat_gradcheck);
    tcase_add_test(tc, swiglu_cat_equals_swiglu_on_halves);
    tcase_add_test(tc, gradcheck_same_input_twice);
    tcase_add_test(tc, gradcheck_overlapping_views);
    tcase_add_test(tc, gradcheck_unary);
    tcase_add_test(tc, forward_matches_double_formulas);
    tcase_add_test(tc, matches_torch);
    tcase_add_test(tc, add_mul_scale_exact);
    tcase_add_test(tc, sum_double_accumulation);
    tcase_add_test(tc, sum_deterministic);
    tcase_add_test(tc, same_input_twice_accumulates);
    tcase_add_test(tc, frozen_input_gets_no_gradient);
    tcase_add_test(tc, errors_name_tensors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
