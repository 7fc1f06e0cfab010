/* Rotary position embedding: gradients against central finite differences,
 * values against a direct double-precision rotate-half formula and against
 * Hugging Face's float32 rounding of the angle, one position per token,
 * backward as the inverse rotation, errors. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static dvl_params *make_param(const char *name, const int64_t *shape4, uint64_t seed)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    ck_assert_msg(dvl_params_add(p, name, 4, shape4, true, &err), "%s", err.msg);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(p->t[0], seed, 1.0f);
    return p;
}

static void gradcheck(const char *what, tu_fn f, dvl_params *p, void *user, float eps, double tol)
{
    tu_gradcheck_result r = tu_gradcheck(f, p, user, eps, 0);
    if (getenv("TU_VERBOSE"))
        printf("gradcheck %-22s max_err %.3g (scale %.3g) tol %g\n", what, r.max_err, r.scale, tol);
    ck_assert_msg(r.checked > 0, "%s: gradcheck compared no elements", what);
    ck_assert_msg(r.max_err <= tol, "%s: gradcheck %s off by %.3g of scale %.3g (tol %g)", what,
                  r.worst, r.max_err, r.scale, tol);
}

typedef struct rope_case {
    const int32_t *pos;
    float theta;
} rope_case;

static dvl_tensor *f_rope(dvl_ctx *c, dvl_params *p, void *u)
{
    rope_case *rc = u;
    return dvl_rope(c, dvl_params_find(p, "x"), rc->pos, rc->theta);
}

/* The reference rotation y = R(angle) x per pair (j, j + D/2), in double,
 * with the angle for (position p, pair j) given by angle(). */
typedef double (*angle_fn)(int32_t p, int64_t j, int64_t D, float theta);

static void rope_ref(double *y, const float *x, const int32_t *pos, int64_t tokens, int64_t H,
                     int64_t D, float theta, angle_fn angle)
{
    int64_t half = D / 2;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *xv = x + (t * H + h) * D;
            double *yv = y + (t * H + h) * D;
            for (int64_t j = 0; j < half; j++) {
                double a = angle(pos[t], j, D, theta), c = cos(a), s = sin(a);
                yv[j] = xv[j] * c - xv[j + half] * s;
                yv[j + half] = xv[j + half] * c + xv[j] * s;
            }
        }
}

/* The formula itself: angle = p theta^(-2j/D), all in double. */
static double angle_double(int32_t p, int64_t j, int64_t D, float theta)
{
    return (double)p * pow((double)theta, -2.0 * (double)j / (double)D);
}

/* Hugging Face's float32 roundings (Qwen2RotaryEmbedding): exponent 2j/D,
 * theta ** exponent and its reciprocal, and the angle pos * inv_freq are
 * each a float32 result; only cos and sin are left exact here. */
static double angle_hf(int32_t p, int64_t j, int64_t D, float theta)
{
    float e = (float)(2 * j) / (float)D;
    float inv = 1.0f / (float)pow((double)theta, (double)e);
    return (double)((float)p * inv);
}

/* Compare y with the reference pair by pair: |y - ref| <= tol(pos) times
 * the pair's magnitude |x_j| + |x_{j+D/2}|. Returns the largest error seen
 * in those units. */
static double compare(const float *y, const double *ref, const float *x, const int32_t *pos,
                      int64_t tokens, int64_t H, int64_t D, double (*tol)(int32_t p, float theta),
                      float theta)
{
    int64_t half = D / 2;
    double worst = 0;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < D; j++) {
                int64_t i = (t * H + h) * D + j, jj = j < half ? j : j - half;
                const float *xv = x + (t * H + h) * D;
                double mag = fabs(xv[jj]) + fabs(xv[jj + half]);
                double err = fabs(y[i] - ref[i]) / mag;
                ck_assert_msg(err <= tol(pos[t], theta),
                              "rope token %lld head %lld dim %lld (pos %d): %.9g, want %.9g",
                              (long long)t, (long long)h, (long long)j, pos[t], (double)y[i],
                              ref[i]);
                worst = fmax(worst, err);
            }
    return worst;
}

/* Against the exact formula the float32 angle is off by up to
 * |pos| (ln theta + 3) 2^-24 (rounded exponent amplified by ln theta through
 * the power, the power, reciprocal and product roundings); on top, the cos/sin
 * and rotation roundings, a few 2^-24. */
static double tol_double(int32_t p, float theta)
{
    return 2.0 * (4.0 + fabs((double)p) * (log(theta) + 3.0)) * 0x1p-24;
}

/* With HF's angle, only cos/sin rounding to float and the rotation's own
 * roundings remain: 4 units of 2^-24 whatever the position. */
static double tol_hf(int32_t p, float theta) { return 4.0 * 0x1p-24; }

/* ----------------------------------------------------- gradient checks */

/* rope is linear in x: a central difference has no truncation error, only
 * f32 rounding of the outputs: eps = 1e-2, tol 1e-4 of the gradient's
 * scale. Odd N, T, H, arbitrary positions (negative, large). */
START_TEST(gradcheck_rope)
{
    int32_t pos[6] = {0, 5, 17, -3, 1000, 32767};
    int64_t s[4] = {2, 3, 5, 6};
    dvl_params *p = make_param("x", s, 301);
    rope_case rc = {pos, 10000.0f};
    gradcheck("rope [2,3,5,6]", f_rope, p, &rc, 1e-2f, 1e-4);
    dvl_params_free(p);
    int64_t s2[4] = {1, 3, 7, 2}; /* D = 2: a single pair */
    p = make_param("x", s2, 302);
    rope_case rc2 = {pos + 2, 1000000.0f};
    gradcheck("rope [1,3,7,2]", f_rope, p, &rc2, 1e-2f, 1e-4);
    dvl_params_free(p);
}
END_TEST

/* ----------------------------------------------------- forward values */

START_TEST(matches_double_formula)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[4] = {2, 4, 3, 16};
    int32_t pos[8] = {0, 1, 2, 3, 7, 100, 4095, -12};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, s);
    tu_randn(x, 311, 1.0f);
    double *ref = malloc((size_t)dvl_numel(x) * sizeof *ref);
    float thetas[2] = {10000.0f, 1000000.0f};
    for (int k = 0; k < 2; k++) {
        dvl_tensor *y = dvl_rope(ctx, x, pos, thetas[k]);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 4);
        ck_assert_int_eq(y->shape[3], 16);
        rope_ref(ref, dvl_f32(x), pos, 8, 3, 16, thetas[k], angle_double);
        compare(dvl_f32(y), ref, dvl_f32(x), pos, 8, 3, 16, tol_double, thetas[k]);
        rope_ref(ref, dvl_f32(x), pos, 8, 3, 16, thetas[k], angle_hf);
        compare(dvl_f32(y), ref, dvl_f32(x), pos, 8, 3, 16, tol_hf, thetas[k]);
    }
    free(ref);
    dvl_ctx_free(ctx);
}
END_TEST

/* At long positions the float32 angle differs visibly from the exact one;
 * the output must follow HF's float32 angle (Qwen2: D = 128, theta = 1e6). */
START_TEST(follows_hf_float32_angle_at_long_positions)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[4] = {1, 4, 2, 128};
    int32_t pos[4] = {4097, 12345, 32767, 131071};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, s);
    tu_randn(x, 321, 1.0f);
    dvl_tensor *y = dvl_rope(ctx, x, pos, 1000000.0f);
    ck_assert_ptr_nonnull(y);
    double *ref = malloc((size_t)dvl_numel(x) * sizeof *ref);
    rope_ref(ref, dvl_f32(x), pos, 4, 2, 128, 1000000.0f, angle_hf);
    double e_hf = compare(dvl_f32(y), ref, dvl_f32(x), pos, 4, 2, 128, tol_hf, 1e6f);
    rope_ref(ref, dvl_f32(x), pos, 4, 2, 128, 1000000.0f, angle_double);
    double e_exact = compare(dvl_f32(y), ref, dvl_f32(x), pos, 4, 2, 128, tol_double, 1e6f);
    if (getenv("TU_VERBOSE"))
        printf("long positions: error vs HF angle %.3g, vs exact angle %.3g\n", e_hf, e_exact);
    ck_assert_msg(e_exact > 100 * e_hf, "vs HF %.3g, vs exact %.3g", e_hf, e_exact);
    free(ref);
    dvl_ctx_free(ctx);
}
END_TEST

/* Position 0 is the identity, bit for bit (cos 0 = 1, sin 0 = 0). */
START_TEST(position_zero_is_identity)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[4] = {1, 1, 3, 10};
    int32_t pos[1] = {0};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, s);
    tu_randn(x, 331, 1.0f);
    dvl_tensor *y = dvl_rope(ctx, x, pos, 10000.0f);
    ck_assert(memcmp(dvl_f32(x), dvl_f32(y), 30 * sizeof(float)) == 0);
    dvl_ctx_free(ctx);
}
END_TEST

/* Token (n, t) uses pos[n * T + t] for all its heads: rotating a batch
 * equals rotating each token alone with its position, bit for bit. */
START_TEST(one_position_per_token)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const int64_t N = 2, T = 3, H = 2, D = 8;
    int64_t s[4] = {N, T, H, D}, s1[4] = {1, 1, H, D};
    int32_t pos[6] = {9, 0, 31, 5, 5, 200};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, s);
    tu_randn(x, 341, 1.0f);
    dvl_tensor *y = dvl_rope(ctx, x, pos, 10000.0f);
    for (int64_t t = 0; t < N * T; t++) {
        dvl_tensor *xt = dvl_view(ctx, x, 4, s1, t * H * D);
        dvl_tensor *yt = dvl_rope(ctx, xt, &pos[t], 10000.0f);
        ck_assert_msg(memcmp(dvl_f32(yt), dvl_f32(y) + t * H * D, (size_t)(H * D) * sizeof(float)) ==
                          0,
                      "token %lld", (long long)t);
    }
    /* Same positions, same outputs: tokens 3 and 4 share position 5. */
    dvl_tensor *x2 = dvl_new(ctx, DVL_F32, 4, s);
    for (int64_t t = 0; t < N * T; t++)
        memcpy(dvl_f32(x2) + t * H * D, dvl_f32(x), (size_t)(H * D) * sizeof(float));
    dvl_tensor *y2 = dvl_rope(ctx, x2, pos, 10000.0f);
    ck_assert(memcmp(dvl_f32(y2) + 3 * H * D, dvl_f32(y2) + 4 * H * D,
                     (size_t)(H * D) * sizeof(float)) == 0);
    ck_assert(memcmp(dvl_f32(y2), dvl_f32(y2) + 2 * H * D, (size_t)(H * D) * sizeof(float)) != 0);
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------- autograd semantics */

/* The backward applies R^T = R^-1: seeding the gradient with y = R x gives
 * back x (up to the f32 roundings of cos^2 + sin^2 = 1). */
START_TEST(backward_is_inverse_rotation)
{
    int64_t s[4] = {1, 3, 2, 8};
    int32_t pos[3] = {3, 777, 32000};
    dvl_params *p = make_param("x", s, 351);
    dvl_tensor *x = p->t[0];
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *y = dvl_rope(ctx, x, pos, 10000.0f);
    ck_assert_int_eq(dvl_tape_len(ctx), 1);
    ck_assert_int_eq(dvl_backward_seed(ctx, y, dvl_f32(y)), 0);
    for (int i = 0; i < 48; i++)
        ck_assert_msg(fabs(x->grad[i] - dvl_f32(x)[i]) <= 8 * FLT_EPSILON * (1 + fabs(dvl_f32(x)[i])),
                      "grad[%d] = %.9g, x = %.9g", i, (double)x->grad[i], (double)dvl_f32(x)[i]);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

/* An input that needs no gradient records nothing. */
START_TEST(frozen_input_records_nothing)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[4] = {1, 2, 1, 4};
    int32_t pos[2] = {1, 2};
    dvl_tensor *x = dvl_zeros(ctx, DVL_F32, 4, s);
    dvl_tensor *y = dvl_rope(ctx, x, pos, 10000.0f);
    ck_assert_ptr_nonnull(y);
    ck_assert(!y->requires_grad);
    ck_assert_int_eq(dvl_tape_len(ctx), 0);
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(errors)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int32_t pos[6] = {0, 1, 2, 3, 4, 5};
    int64_t odd[4] = {1, 2, 3, 5}, s3[3] = {2, 3, 8}, ok[4] = {1, 2, 3, 8};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, odd);
    x->name = "q_proj";
    ck_assert_ptr_null(dvl_rope(ctx, x, pos, 10000.0f));
    const char *m = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(m, "q_proj") && strstr(m, "odd") && strstr(m, "[1, 2, 3, 5]"),
                  "message: %s", m);
    dvl_ctx_clear_error(ctx);
    dvl_tensor *x3 = dvl_new(ctx, DVL_F32, 3, s3);
    x3->name = "k3";
    ck_assert_ptr_null(dvl_rope(ctx, x3, pos, 10000.0f));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "k3"));
    dvl_ctx_clear_error(ctx);
    dvl_tensor *xo = dvl_new(ctx, DVL_F32, 4, ok);
    xo->name = "k_proj";
    ck_assert_ptr_null(dvl_rope(ctx, xo, NULL, 10000.0f));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "k_proj"));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope(ctx, xo, pos, 0.0f));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "theta"));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope(ctx, NULL, pos, 10000.0f));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("rope");
    TCase *tc = tcase_create("rope");
    tcase_add_test(tc, gradcheck_rope);
    tcase_add_test(tc, matches_double_formula);
    tcase_add_test(tc, follows_hf_float32_angle_at_long_positions);
    tcase_add_test(tc, position_zero_is_identity);
    tcase_add_test(tc, one_position_per_token);
    tcase_add_test(tc, backward_is_inverse_rotation);
    tcase_add_test(tc, frozen_input_records_nothing);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
