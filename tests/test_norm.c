/* RMSNorm and LayerNorm: gradients against central finite differences,
 * forward values against double-precision formulas, frozen weights,
 * thread-count independence of the weight gradients, errors. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const float EPS_NORM = 1e-5f;

static dvl_tensor *f_rmsnorm(dvl_ctx *c, dvl_params *p, void *u)
{
    return dvl_rmsnorm(c, tu_param(p, "x"), tu_param(p, "w"), EPS_NORM);
}

static dvl_tensor *f_layernorm(dvl_ctx *c, dvl_params *p, void *u)
{
    return dvl_layernorm(c, tu_param(p, "x"), tu_param(p, "w"), u ? NULL : tu_param(p, "b"),
                         EPS_NORM);
}

/* ----------------------------------------------------- gradient checks */

/* eps = 1e-2 on unit-variance inputs; the norms are smooth there, truncation
 * ~eps^2 and f32 rounding ~1e-6/eps (seen: 2e-5): tol 2e-4 of the gradient's scale. Odd
 * row lengths (13, 33) and leading dimensions flattened into rows. */
START_TEST(gradcheck_rmsnorm)
{
    tu_pspec s[2] = {{"x", 3, {3, 5, 13}, true}, {"w", 1, {13}, true}};
    dvl_params *p = tu_make_params(s, 2, 101, 1.0f);
    TU_GRADCHECK_NAMED("rmsnorm [3,5,13]", f_rmsnorm, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
    tu_pspec s2[2] = {{"x", 2, {7, 33}, true}, {"w", 1, {33}, true}};
    p = tu_make_params(s2, 2, 102, 1.0f);
    TU_GRADCHECK_NAMED("rmsnorm [7,33]", f_rmsnorm, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

START_TEST(gradcheck_layernorm)
{
    tu_pspec s[3] = {{"x", 3, {3, 5, 13}, true}, {"w", 1, {13}, true}, {"b", 1, {13}, true}};
    dvl_params *p = tu_make_params(s, 3, 111, 1.0f);
    TU_GRADCHECK_NAMED("layernorm [3,5,13]", f_layernorm, p, NULL, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
    tu_pspec s2[3] = {{"x", 2, {7, 33}, true}, {"w", 1, {33}, true}, {"b", 1, {33}, true}};
    p = tu_make_params(s2, 3, 112, 1.0f);
    TU_GRADCHECK_NAMED("layernorm [7,33]", f_layernorm, p, NULL, 1e-2f, 0, 2e-4);
    int no_bias = 1;
    TU_GRADCHECK_NAMED("layernorm no bias", f_layernorm, p, &no_bias, 1e-2f, 0, 2e-4);
    dvl_params_free(p);
}
END_TEST

/* ----------------------------------------------------- forward values */

/* Hugging Face Qwen2RMSNorm in double: w * x / sqrt(mean(x^2) + eps). The
 * float result is a few roundings away: 3 FLT_EPSILON relative. */
START_TEST(rmsnorm_matches_double_formula)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t rows = 6, cols = 33;
    dvl_tensor *x = dvl_new2(ctx, rows, cols), *w = dvl_new2(ctx, 1, cols);
    tu_randn(x, 121, 3.0f);
    tu_randn(w, 122, 1.0f);
    for (int64_t c = 0; c < cols; c++) /* a zero row: y = 0, not NaN */
        dvl_f32(x)[2 * cols + c] = 0.0f;
    int64_t wc = cols;
    dvl_tensor *w1 = dvl_reshape(ctx, w, 1, &wc);
    const float eps = 1e-6f;
    dvl_tensor *y = dvl_rmsnorm(ctx, x, w1, eps);
    ck_assert_ptr_nonnull(y);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = dvl_f32(x) + r * cols;
        double ss = 0;
        for (int64_t c = 0; c < cols; c++)
            ss += (double)xr[c] * xr[c];
        double rs = 1.0 / sqrt(ss / (double)cols + (double)eps);
        for (int64_t c = 0; c < cols; c++) {
            double ref = (double)dvl_f32(w)[c] * xr[c] * rs;
            float got = dvl_f32(y)[r * cols + c];
            ck_assert_msg(fabs(got - ref) <= 3 * FLT_EPSILON * fabs(ref),
                          "rmsnorm[%lld, %lld] = %.9g, want %.9g", (long long)r, (long long)c,
                          (double)got, ref);
        }
    }
    dvl_ctx_free(ctx);
}
END_TEST

/* torch LayerNorm in double with the biased variance. The float kernel
 * subtracts a float mean, so its error is relative to |x| + |mean| (not to
 * |x - mean|), plus the bias: 4 FLT_EPSILON of those. Rows with a large
 * offset check that the variance is not E[x^2] - E[x]^2 (which cancels). */
START_TEST(layernorm_matches_double_formula)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t rows = 5, cols = 13;
    int64_t wc = cols;
    dvl_tensor *x = dvl_new2(ctx, rows, cols);
    dvl_tensor *w = dvl_new(ctx, DVL_F32, 1, &wc), *b = dvl_new(ctx, DVL_F32, 1, &wc);
    tu_randn(x, 131, 2.0f);
    tu_randn(w, 132, 1.0f);
    tu_randn(b, 133, 1.0f);
    for (int64_t c = 0; c < cols; c++)
        dvl_f32(x)[3 * cols + c] += 1000.0f;
    const float eps = 1e-6f;
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        dvl_tensor *y = dvl_layernorm(ctx, x, w, with_bias ? b : NULL, eps);
        ck_assert_ptr_nonnull(y);
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = dvl_f32(x) + r * cols;
            double mu = 0, var = 0;
            for (int64_t c = 0; c < cols; c++)
                mu += xr[c];
            mu /= (double)cols;
            for (int64_t c = 0; c < cols; c++)
                var += (xr[c] - mu) * (xr[c] - mu);
            var /= (double)cols;
            double rs = 1.0 / sqrt(var + (double)eps);
            for (int64_t c = 0; c < cols; c++) {
                double bias = with_bias ? dvl_f32(b)[c] : 0.0;
                double ref = (xr[c] - mu) * rs * dvl_f32(w)[c] + bias;
                double tol = 4 * FLT_EPSILON *
                             ((fabs(xr[c]) + fabs(mu)) * rs * fabs(dvl_f32(w)[c]) + fabs(bias));
                float got = dvl_f32(y)[r * cols + c];
                ck_assert_msg(fabs(got - ref) <= tol, "layernorm[%lld, %lld] = %.9g, want %.9g",
                              (long long)r, (long long)c, (double)got, ref);
            }
        }
    }
    dvl_ctx_free(ctx);
}
END_TEST

/* Hugging Face Qwen2RMSNorm(13, eps=1e-6) (transformers 5.17) and
 * F.layer_norm(x, (13,), w, b, 1e-5) (torch 2.11), CPU float32, with
 * w[j] = 1 + ((7j) % 11 - 5) / 32 and b[j] = ((5j) % 9 - 4) / 16. */
static const float HF_RMSNORM[52] = {
    -0x1.641e8cp+0f, 0x1.75b498p-3f, -0x1.417f22p+0f, 0x1.1cacf8p-1f,
    -0x1.10091cp+0f, 0x1.6e8fa4p-1f, -0x1.9f78f8p-1f, 0x1.1960d4p+0f,
    -0x1.714f16p-2f, 0x1.8a5072p+0f, -0x1.98e0b4p-4f, -0x1.5cb34p+0f,
    0x1.c07252p-3f, -0x1.24415ap+0f, 0x1.228bd2p-1f, -0x1.efa33ap-1f,
    0x1.f9e466p-1f, -0x1.78003ep-1f, 0x1.1099c6p+0f, -0x1.c3337cp-2f,
    0x1.7ed65ap+0f, -0x1.fe7324p-5f, -0x1.ca9b7p+0f, 0x1.ee7f8ap-3f,
    -0x1.1c9078p+0f, 0x1.35ea7ap-1f, -0x1.b51caep-1f, 0x1.eb7644p-1f,
    -0x1.49919p-1f, 0x1.6bae9p+0f, -0x1.7d9b14p-2f, 0x1.688076p+0f,
    -0x1.4d09acp-5f, -0x1.a04c16p+0f, 0x1.030784p-2f, -0x1.6c4294p+0f,
    0x1.30b4d8p-1f, -0x1.a5803cp-1f, 0x1.ff1ed8p-1f, -0x1.16ac44p-1f,
    0x1.552c72p+0f, -0x1.35a2f6p-2f, 0x1.d2bf98p+0f, 0.0f,
    -0x1.6dd47p+0f, 0x1.73905ap-2f, -0x1.411ac6p+0f, 0x1.20fe7ep-1f,
    -0x1.04e5c2p+0f, 0x1.dfefc8p-1f, -0x1.0730ecp-1f, 0x1.5eebe2p+0f,
};
static const float TORCH_LAYERNORM[52] = {
    -0x1.7e09f8p+0f, 0x1.e7461ap-2f, -0x1.45839cp+0f, 0x1.e17032p-1f,
    -0x1.fba22ep-1f, 0x1.1ceca6p+0f, -0x1.4de4d2p-1f, 0x1.965a96p+0f,
    -0x1.74c90ap-3f, 0x1.8ef4acp+0f, 0x1.566746p-3f, -0x1.6673e2p+0f,
    0x1.26be36p-1f, -0x1.4b2b8cp+0f, 0x1.89f834p-1f, -0x1.0b542p+0f,
    0x1.44921ap+0f, -0x1.77f6a8p-1f, 0x1.604146p+0f, -0x1.748492p-2f,
    0x1.e26cd4p+0f, 0x1.8bcebep-5f, -0x1.eabae4p+0f, 0x1.b738d8p-2f,
    -0x1.336adcp+0f, 0x1.bd7eb2p-1f, -0x1.12e35ep+0f, 0x1.0fba28p+0f,
    -0x1.986d48p-1f, 0x1.969f7ap+0f, -0x1.d7ab68p-2f, 0x1.a12066p+0f,
    -0x1.fffffep-5f, -0x1.574fe4p+0f, 0x1.239932p-2f, -0x1.a25f82p+0f,
    0x1.62d754p-1f, -0x1.f627aap-1f, 0x1.299016p+0f, -0x1.aef3a8p-1f,
    0x1.56ac7ap+0f, -0x1.158f1cp-1f, 0x1.e31d54p+0f, -0x1.749f3p-3f,
    -0x1.4b329ep+0f, 0x1.e9092p-3f, -0x1.0fbac6p+0f, 0x1.08b24p-1f,
    -0x1.54c18cp+0f, 0x1.e54774p-1f, -0x1.7f7246p-1f, 0x1.706fb8p+0f,
};

/* RMSNorm matches HF bit for bit: same float operation order (x * rstd,
 * then * w) and the same rounded mean of squares (exact here). torch's
 * LayerNorm takes mean and variance in float (Welford), ours in double, so
 * rstd and mean may differ in their last bit: within 4 units of torch. */
START_TEST(matches_hf_and_torch)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = tu_ref_input(ctx);
    int64_t c13 = 13;
    dvl_tensor *w = dvl_new(ctx, DVL_F32, 1, &c13), *b = dvl_new(ctx, DVL_F32, 1, &c13);
    for (int j = 0; j < 13; j++) {
        dvl_f32(w)[j] = 1.0f + (float)((j * 7) % 11 - 5) / 32.0f;
        dvl_f32(b)[j] = (float)((j * 5) % 9 - 4) / 16.0f;
    }
    dvl_tensor *yr = dvl_rmsnorm(ctx, x, w, 1e-6f), *yl = dvl_layernorm(ctx, x, w, b, 1e-5f);
    ck_assert(yr && yl);
    for (int i = 0; i < 52; i++) {
        ck_assert_msg(dvl_f32(yr)[i] == HF_RMSNORM[i], "rmsnorm[%d] = %a, HF %a", i,
                      (double)dvl_f32(yr)[i], (double)HF_RMSNORM[i]);
        ck_assert_msg(tu_ulps(dvl_f32(yl)[i], TORCH_LAYERNORM[i]) <= 4,
                      "layernorm[%d] = %a, torch %a", i, (double)dvl_f32(yl)[i],
                      (double)TORCH_LAYERNORM[i]);
    }
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------- autograd semantics */

/* Backward from sum(y * R), R fixed, through the norm of p's x, w (and b);
 * the parameters' gradients land in p->grad. */
static void run_backward(dvl_ctx *ctx, dvl_params *p, bool layer)
{
    dvl_tensor *x = tu_param(p, "x"), *w = tu_param(p, "w");
    dvl_tensor *y = layer ? dvl_layernorm(ctx, x, w, tu_param(p, "b"), EPS_NORM)
                          : dvl_rmsnorm(ctx, x, w, EPS_NORM);
    ck_assert_ptr_nonnull(y);
    float *seed = malloc((size_t)dvl_numel(y) * sizeof *seed);
    dvl_rng r;
    dvl_rng_seed(&r, 7);
    for (int64_t i = 0; i < dvl_numel(y); i++)
        seed[i] = dvl_rng_normal(&r);
    ck_assert_int_eq(dvl_backward_seed(ctx, y, seed), 0);
    free(seed);
}

/* A frozen weight (and bias) gets no gradient buffer, and the input's
 * gradient is the same as with a trainable weight. A frozen input with a
 * trainable weight: only the weight gets a gradient. */
START_TEST(frozen_weight_gets_no_gradient)
{
    for (int layer = 0; layer < 2; layer++) {
        tu_pspec tr[3] = {{"x", 2, {5, 13}, true}, {"w", 1, {13}, true}, {"b", 1, {13}, true}};
        tu_pspec fr[3] = {{"x", 2, {5, 13}, true}, {"w", 1, {13}, false}, {"b", 1, {13}, false}};
        dvl_params *pt = tu_make_params(tr, 3, 141, 1.0f);
        dvl_params *pf = tu_make_params(fr, 3, 141, 1.0f);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        run_backward(ctx, pt, layer);
        dvl_ctx_reset(ctx);
        run_backward(ctx, pf, layer);
        ck_assert_ptr_null(tu_param(pf, "w")->grad);
        ck_assert_ptr_null(tu_param(pf, "b")->grad);
        ck_assert_int_eq(pf->numel_grad, 80); /* x alone: 65 rounded to 80 */
        ck_assert(memcmp(tu_param(pt, "x")->grad, tu_param(pf, "x")->grad,
                         65 * sizeof(float)) == 0);

        tu_pspec fx[3] = {{"x", 2, {5, 13}, false}, {"w", 1, {13}, true}, {"b", 1, {13}, true}};
        dvl_params *px = tu_make_params(fx, 3, 141, 1.0f);
        dvl_ctx_reset(ctx);
        run_backward(ctx, px, layer);
        ck_assert_ptr_null(tu_param(px, "x")->grad);
        ck_assert(memcmp(tu_param(pt, "w")->grad, tu_param(px, "w")->grad,
                         13 * sizeof(float)) == 0);
        dvl_ctx_free(ctx);
        dvl_params_free(pt);
        dvl_params_free(pf);
        dvl_params_free(px);
    }
}
END_TEST

/* Weight and bias gradients sum over rows: the result must be bit-identical
 * for 1, 2 and 3 threads (enough rows for the kernels to go parallel, cols
 * not a multiple of the column block). */
START_TEST(gradients_independent_of_thread_count)
{
    int saved = omp_get_max_threads();
    for (int layer = 0; layer < 2; layer++) {
        tu_pspec s[3] = {{"x", 2, {601, 67}, true}, {"w", 1, {67}, true}, {"b", 1, {67}, true}};
        dvl_params *p = tu_make_params(s, 3, 151, 1.0f);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        float *ref = malloc((size_t)p->numel_grad * sizeof *ref);
        int threads[3] = {1, 2, 3};
        for (int k = 0; k < 3; k++) {
            omp_set_num_threads(threads[k]);
            dvl_params_zero_grad(p);
            dvl_ctx_reset(ctx);
            run_backward(ctx, p, layer);
            if (k == 0)
                memcpy(ref, p->grad, (size_t)p->numel_grad * sizeof *ref);
            else
                ck_assert_msg(memcmp(ref, p->grad, (size_t)p->numel_grad * sizeof *ref) == 0,
                              "%s gradients differ with %d threads", layer ? "layernorm" : "rmsnorm",
                              threads[k]);
        }
        free(ref);
        dvl_ctx_free(ctx);
        dvl_params_free(p);
    }
    omp_set_num_threads(saved);
}
END_TEST

START_TEST(errors_name_tensors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s12 = 12, s13 = 13;
    dvl_tensor *x = dvl_new2(ctx, 4, 13), *w = dvl_new(ctx, DVL_F32, 1, &s12);
    dvl_tensor *w13 = dvl_new(ctx, DVL_F32, 1, &s13), *b = dvl_new(ctx, DVL_F32, 1, &s12);
    x->name = "hidden";
    w->name = "norm.weight";
    b->name = "norm.bias";
    ck_assert_ptr_null(dvl_rmsnorm(ctx, x, w, 1e-6f));
    const char *m = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(m, "rmsnorm") && strstr(m, "hidden") && strstr(m, "norm.weight") &&
                      strstr(m, "[4, 13]") && strstr(m, "[12]"),
                  "message: %s", m);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_layernorm(ctx, x, w13, b, 1e-6f));
    m = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(m, "layernorm") && strstr(m, "hidden") && strstr(m, "norm.bias"),
                  "message: %s", m);
    dvl_ctx_clear_error(ctx);
    /* A [1, 13] weight is not a [13] weight. */
    dvl_tensor *w2 = dvl_new2(ctx, 1, 13);
    ck_assert_ptr_null(dvl_rmsnorm(ctx, x, w2, 1e-6f));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rmsnorm(ctx, NULL, w13, 1e-6f));
    ck_assert_ptr_null(dvl_rmsnorm(ctx, x, NULL, 1e-6f));
    ck_assert_ptr_null(dvl_layernorm(ctx, NULL, w13, NULL, 1e-6f));
    ck_assert_ptr_null(dvl_layernorm(ctx, x, NULL, NULL, 1e-6f));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("norm");
    TCase *tc = tcase_create("norm");
    tcase_add_test(tc, gradcheck_rmsnorm);
    tcase_add_test(tc, gradcheck_layernorm);
    tcase_add_test(tc, rmsnorm_matches_double_formula);
    tcase_add_test(tc, layernorm_matches_double_formula);
    tcase_add_test(tc, matches_hf_and_torch);
    tcase_add_test(tc, frozen_weight_gets_no_gradient);
    tcase_add_test(tc, gradients_independent_of_thread_count);
    tcase_add_test(tc, errors_name_tensors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
