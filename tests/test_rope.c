/* Rotary position embedding: gradients against central finite differences,
 * values against a direct double-precision rotate-half formula and against
 * Hugging Face's float32 rounding of the angle, one position per token,
 * backward as the inverse rotation, errors; dvl_rope_cols (in place on a
 * column range) against dvl_rope of the copied-out columns; the shared
 * tables (dvl_rope_table_make, dvl_rope_with, dvl_rope_cols_with) against
 * the tables each call makes. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/rope.h"
#include "util.h"

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
    tu_pspec s = {"x", 4, {2, 3, 5, 6}, true};
    dvl_params *p = tu_make_params(&s, 1, 301, 1.0f);
    rope_case rc = {pos, 10000.0f};
    TU_GRADCHECK_NAMED("rope [2,3,5,6]", f_rope, p, &rc, 1e-2f, 0, 1e-4);
    dvl_params_free(p);
    tu_pspec s2 = {"x", 4, {1, 3, 7, 2}, true}; /* D = 2: a single pair */
    p = tu_make_params(&s2, 1, 302, 1.0f);
    rope_case rc2 = {pos + 2, 1000000.0f};
    TU_GRADCHECK_NAMED("rope [1,3,7,2]", f_rope, p, &rc2, 1e-2f, 0, 1e-4);
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

/* Hugging Face Qwen2RotaryEmbedding (transformers 5.17, torch 2.11, CPU),
 * head size 64, rope_theta 1e6 (Qwen2.5), positions HF_POS: inv_freq, the
 * cos and sin tables [8, 32] (the second halves repeat the first), and
 * apply_rotary_pos_emb of x[t, d] = ((37 (64t + d)) % 101 - 50) / 16 for
 * tokens 1 and 7. */
static const int32_t HF_POS[8] = {0, 1, 2, 3, 100, 4095, 32767, 131071};
static const float HF_INV_FREQ[32] = {
    0x1p+0f, 0x1.4c7bcp-1f, 0x1.afd136p-2f, 0x1.186a08p-2f, 0x1.6c310ep-3f, 0x1.d8ffacp-4f,
    0x1.33281ap-4f, 0x1.8eec7ep-5f, 0x1.030dc6p-5f, 0x1.507316p-6f, 0x1.b4f7e4p-7f, 0x1.1bc25ap-7f,
    0x1.708938p-8f, 0x1.dea41cp-9f, 0x1.36d21ap-9f, 0x1.93aeb8p-10f, 0x1.0624dep-10f, 0x1.547688p-11f,
    0x1.ba2e4ap-12f, 0x1.1f24e4p-12f, 0x1.74eea6p-13f, 0x1.e459c4p-14f, 0x1.3a8748p-14f, 0x1.987f7cp-15f,
    0x1.094564p-15f, 0x1.58863ap-16f, 0x1.bf749ep-17f, 0x1.2291c6p-17f, 0x1.796182p-18f, 0x1.ea20ep-19f,
    0x1.3e47c8p-19f, 0x1.9d5ef2p-20f,
};
static const float HF_COS[256] = {
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1.14a282p-1f, 0x1.97c954p-1f, 0x1.d3258cp-1f, 0x1.ecec2p-1f,
    0x1.f7ed06p-1f, 0x1.fc9708p-1f, 0x1.fe8fa2p-1f, 0x1.ff649ep-1f, 0x1.ffbe78p-1f, 0x1.ffe45ep-1f,
    0x1.fff458p-1f, 0x1.fffb16p-1f, 0x1.fffdeep-1f, 0x1.ffff2p-1f, 0x1.ffffa2p-1f, 0x1.ffffd8p-1f,
    0x1.fffffp-1f, 0x1.fffffap-1f, 0x1.fffffep-1f, 0x1.fffffep-1f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, -0x1.aa2266p-2f, 0x1.13238cp-2f,
    0x1.547204p-1f, 0x1.b51c78p-1f, 0x1.dff54cp-1f, 0x1.f267c4p-1f, 0x1.fa409ep-1f, 0x1.fd92dap-1f,
    0x1.fef9f2p-1f, 0x1.ff9178p-1f, 0x1.ffd162p-1f, 0x1.ffec58p-1f, 0x1.fff7b6p-1f, 0x1.fffc82p-1f,
    0x1.fffe86p-1f, 0x1.ffff62p-1f, 0x1.ffffbep-1f, 0x1.ffffe4p-1f, 0x1.fffff4p-1f, 0x1.fffffcp-1f,
    0x1.fffffep-1f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    -0x1.fae04cp-1f, -0x1.794cc4p-2f, 0x1.3430c6p-2f, 0x1.5cb9c2p-1f, 0x1.b8da52p-1f, 0x1.e194ecp-1f,
    0x1.f31924p-1f, 0x1.fa8bcap-1f, 0x1.fdb29ep-1f, 0x1.ff075ap-1f, 0x1.ff972p-1f, 0x1.ffd3c6p-1f,
    0x1.ffed5ap-1f, 0x1.fff822p-1f, 0x1.fffcbp-1f, 0x1.fffe9ap-1f, 0x1.ffff6ap-1f, 0x1.ffffcp-1f,
    0x1.ffffe6p-1f, 0x1.fffff4p-1f, 0x1.fffffcp-1f, 0x1.fffffep-1f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f, 0x1p+0f,
    0x1p+0f, 0x1p+0f, 0x1.b981dcp-1f, -0x1.0543ep-1f, -0x1.ea7e72p-3f, -0x1.42346p-1f,
    0x1.ee8d6ap-2f, 0x1.0c987p-1f, 0x1.63f89ep-2f, 0x1.40cbaap-3f, -0x1.ffe3f6p-1f, -0x1.db56b6p-2f,
    0x1.e1645cp-3f, 0x1.4bba52p-1f, 0x1.b1281ap-1f, 0x1.de3d52p-1f, 0x1.f1abep-1f, 0x1.f9f0f8p-1f,
    0x1.fd713p-1f, 0x1.feebbcp-1f, 0x1.ff8b7ap-1f, 0x1.ffcedcp-1f, 0x1.ffeb46p-1f, 0x1.fff742p-1f,
    0x1.fffc5p-1f, 0x1.fffe72p-1f, 0x1.ffff58p-1f, 0x1.ffffbap-1f, 0x1.ffffe2p-1f, 0x1.fffff4p-1f,
    0x1.fffffap-1f, 0x1.fffffep-1f, 0x1p+0f, 0x1p+0f, -0x1.0e3cd8p-4f, 0x1.1e9c8p-3f,
    0x1.081e16p-1f, -0x1.f8fdf6p-1f, 0x1.996982p-1f, -0x1.2cf86cp-4f, 0x1.66c272p-1f, -0x1.3edc22p-4f,
    -0x1.8ae1e8p-1f, -0x1.7d22ccp-1f, -0x1.727432p-2f, -0x1.3cc532p-1f, -0x1.04a0aap-1f, -0x1.75326cp-1f,
    -0x1.eb33f4p-1f, 0x1.ffdde4p-1f, -0x1.28669ep-1f, -0x1.c59422p-1f, -0x1.3e4beep-3f, 0x1.bcdd24p-2f,
    0x1.7e2434p-1f, 0x1.c7d002p-1f, 0x1.e80c6cp-1f, 0x1.f5da8cp-1f, 0x1.fbb69p-1f, 0x1.fe30d6p-1f,
    0x1.ff3c9ep-1f, 0x1.ffad98p-1f, 0x1.ffdd4p-1f, 0x1.fff158p-1f, 0x1.fff9d2p-1f, 0x1.fffd64p-1f,
    0x1.f6eb38p-1f, -0x1.ebc60ap-1f, 0x1.1279f8p-1f, 0x1.a8e9f4p-1f, -0x1.70ed0cp-1f, 0x1.62b9bp-3f,
    0x1.cc692ap-1f, 0x1.ebb174p-1f, 0x1.b69fdp-1f, 0x1.ace484p-1f, -0x1.ecf46ep-1f, 0x1.1188c8p-1f,
    -0x1.d823aap-2f, 0x1.ec9c34p-1f, -0x1.56e0f4p-1f, 0x1.f6772ap-1f, 0x1.be604cp-3f, -0x1.83535ap-1f,
    0x1.4191dep-2f, -0x1.cca0aep-1f, 0x1.cb9e0cp-1f, -0x1.99f972p-1f, -0x1.8cb134p-1f, -0x1.971af4p-6f,
    0x1.04de3ap-1f, 0x1.90665ap-1f, 0x1.cfe51p-1f, 0x1.eb86b8p-1f, 0x1.f7552cp-1f, 0x1.fc56ccp-1f,
    0x1.fe7482p-1f, 0x1.ff592cp-1f, -0x1.a2cebcp-1f, -0x1.fecf48p-1f, 0x1.15b02p-1f, -0x1.ff74ap-1f,
    -0x1.a3a5dcp-1f, 0x1.e104f6p-1f, -0x1.cb13fep-2f, 0x1.1b591cp-1f, -0x1.ed1768p-2f, -0x1.6fef56p-1f,
    0x1.b0c16ep-2f, -0x1.38f8c6p-1f, -0x1.6b88c6p-2f, 0x1.c275acp-2f, -0x1.f5dc58p-1f, 0x1.6cc996p-1f,
    0x1.47d6fp-1f, -0x1.ea4fd8p-1f, 0x1.2909ecp-2f, -0x1.de030ep-3f, -0x1.012b04p-2f, -0x1.ae7762p-1f,
    -0x1.d6bfe6p-1f, 0x1.fd771ap-1f, -0x1.133d36p-1f, -0x1.cd067p-1f, -0x1.68bbf6p-3f, 0x1.b03ccep-2f,
    0x1.7b1b66p-1f, 0x1.c6769p-1f, 0x1.e77782p-1f, 0x1.f59b2ap-1f,
};
static const float HF_SIN[256] = {
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    0.0f, 0.0f, 0x1.aed548p-1f, 0x1.359a74p-1f, 0x1.a321e2p-2f, 0x1.14ec3p-2f,
    0x1.6a4674p-3f, 0x1.d7f2bap-4f, 0x1.32de6cp-4f, 0x1.8ec422p-5f, 0x1.0302b8p-5f, 0x1.506d08p-6f,
    0x1.b4f494p-7f, 0x1.1bc172p-7f, 0x1.7088b8p-8f, 0x1.dea3d6p-9f, 0x1.36d206p-9f, 0x1.93aeaep-10f,
    0x1.0624dcp-10f, 0x1.547686p-11f, 0x1.ba2e4ap-12f, 0x1.1f24e4p-12f, 0x1.74eea6p-13f, 0x1.e459c4p-14f,
    0x1.3a8748p-14f, 0x1.987f7cp-15f, 0x1.094564p-15f, 0x1.58863ap-16f, 0x1.bf749ep-17f, 0x1.2291c6p-17f,
    0x1.796182p-18f, 0x1.ea20ep-19f, 0x1.3e47c8p-19f, 0x1.9d5ef2p-20f, 0x1.d18f6ep-1f, 0x1.ed2c0ap-1f,
    0x1.7e6a24p-1f, 0x1.0a9aaep-1f, 0x1.648fecp-2f, 0x1.d4ce0ep-3f, 0x1.3201a6p-3f, 0x1.8e4b1ep-4f,
    0x1.02e192p-4f, 0x1.505aep-5f, 0x1.b4eaa2p-6f, 0x1.1bbeb8p-6f, 0x1.70873ap-7f, 0x1.dea306p-8f,
    0x1.36d1cep-8f, 0x1.93ae8ep-9f, 0x1.0624d2p-9f, 0x1.547682p-10f, 0x1.ba2e46p-11f, 0x1.1f24e4p-11f,
    0x1.74eea6p-12f, 0x1.e459c4p-13f, 0x1.3a8748p-13f, 0x1.987f7cp-14f, 0x1.094564p-14f, 0x1.58863ap-15f,
    0x1.bf749ep-16f, 0x1.2291c6p-16f, 0x1.796182p-17f, 0x1.ea20ep-18f, 0x1.3e47c8p-18f, 0x1.9d5ef2p-19f,
    0x1.210386p-3f, 0x1.dbfa68p-1f, 0x1.e842c6p-1f, 0x1.76e116p-1f, 0x1.045ed8p-1f, 0x1.5bb20cp-2f,
    0x1.c8dbc4p-3f, 0x1.2a2136p-3f, 0x1.83ff82p-4f, 0x1.f85aeap-5f, 0x1.47a38cp-5f, 0x1.a99746p-6f,
    0x1.14638ep-6f, 0x1.66f93ep-7f, 0x1.d23a26p-8f, 0x1.2ec2c4p-8f, 0x1.893726p-9f, 0x1.feb1b6p-10f,
    0x1.4ba2b2p-10f, 0x1.aeb752p-11f, 0x1.17b2fcp-11f, 0x1.6b4354p-12f, 0x1.d7caecp-13f, 0x1.325f9cp-13f,
    0x1.8de816p-14f, 0x1.0264acp-14f, 0x1.4f9776p-15f, 0x1.b3daa8p-16f, 0x1.1b0922p-16f, 0x1.6f98a8p-17f,
    0x1.dd6bacp-18f, 0x1.360736p-18f, -0x1.03425cp-1f, 0x1.b852bep-1f, -0x1.f1195cp-1f, 0x1.8de79ep-1f,
    -0x1.c0541cp-1f, -0x1.b3e3f4p-1f, 0x1.e0115ep-1f, -0x1.f9ae0cp-1f, -0x1.52e22ep-6f, 0x1.c57e98p-1f,
    0x1.f1a7a4p-1f, 0x1.860036p-1f, 0x1.10fb74p-1f, 0x1.6daec2p-2f, 0x1.e11e4ep-3f, 0x1.3a21c8p-3f,
    0x1.98eaeep-4f, 0x1.09ccc2p-4f, 0x1.5959f4p-5f, 0x1.c09b4ap-6f, 0x1.235684p-6f, 0x1.7a63fap-7f,
    0x1.eb7232p-8f, 0x1.3f2346p-8f, 0x1.9e7c3ep-9f, 0x1.0d28d2p-9f, 0x1.5d9316p-10f, 0x1.c603c2p-11f,
    0x1.26d42cp-11f, 0x1.7ee9bp-12f, 0x1.f15028p-13f, 0x1.42f22ep-13f, -0x1.fee26cp-1f, 0x1.faf61ep-1f,
    -0x1.b69e44p-1f, 0x1.51afecp-3f, -0x1.337346p-1f, 0x1.fe9daep-1f, -0x1.6d49d2p-1f, -0x1.fe723ep-1f,
    -0x1.45e6dp-1f, 0x1.55e056p-1f, -0x1.dd5214p-1f, -0x1.923e94p-1f, -0x1.b8b36cp-1f, 0x1.5e867ep-1f,
    -0x1.20e2ap-2f, 0x1.75c06ep-6f, -0x1.a17b2ep-1f, 0x1.db047ep-2f, 0x1.f9c75p-1f, 0x1.cd28d2p-1f,
    0x1.54c084p-1f, 0x1.d262cap-2f, 0x1.358868p-2f, 0x1.95b26ap-3f, 0x1.087738p-3f, 0x1.5808dp-4f,
    0x1.bf1fbep-5f, 0x1.227006p-5f, 0x1.794162p-6f, 0x1.e9fd92p-7f, 0x1.3e329cp-7f, 0x1.9d4468p-8f,
    0x1.80037p-3f, -0x1.1cf9acp-2f, 0x1.b0361ep-1f, 0x1.1da4bap-1f, 0x1.63048ep-1f, 0x1.f842fp-1f,
    0x1.bff47p-2f, -0x1.1d87a4p-2f, -0x1.081b84p-1f, 0x1.17a246p-1f, -0x1.14b112p-2f, 0x1.b0ceeap-1f,
    0x1.c6544ep-1f, 0x1.1722cap-2f, 0x1.7c3cp-1f, 0x1.8964e8p-3f, 0x1.f3b0dp-1f, 0x1.4ed8f8p-1f,
    0x1.e61956p-1f, 0x1.bf0feep-2f, -0x1.c333c6p-2f, -0x1.32b33ep-1f, 0x1.43b24p-1f, 0x1.ffd788p-1f,
    0x1.b88efep-1f, 0x1.3f1944p-1f, 0x1.b156c2p-2f, 0x1.1ead5ap-2f, 0x1.773cdp-3f, 0x1.e8f1dcp-4f,
    0x1.3df356p-4f, 0x1.9d2ed2p-5f, -0x1.268614p-1f, 0x1.1722bap-4f, -0x1.ae27b2p-1f, -0x1.79aedcp-5f,
    -0x1.25533cp-1f, -0x1.5ecba4p-2f, 0x1.c9a9d8p-1f, -0x1.aa72aep-1f, -0x1.c0bb0cp-1f, 0x1.640b78p-1f,
    0x1.d007e8p-1f, -0x1.9534fap-1f, 0x1.dea61ap-1f, 0x1.cbcca8p-1f, 0x1.958ec4p-3f, 0x1.6744d6p-1f,
    -0x1.894664p-1f, -0x1.26e0c6p-2f, -0x1.e9fc58p-1f, -0x1.f1dbc4p-1f, -0x1.ef9738p-1f, 0x1.15348ap-1f,
    -0x1.92af5cp-2f, 0x1.97125ep-4f, -0x1.afb9e2p-1f, 0x1.bd6b98p-2f, 0x1.f7feb6p-1f, 0x1.d026cep-1f,
    0x1.581ffp-1f, 0x1.d79fbp-2f, 0x1.392d8ep-2f, 0x1.9a9116p-3f,
};
static const float HF_ROPE_T1_T7[128] = {
    0x1.91128ep+0f, 0x1.711606p+0f, -0x1.6fd3ap+1f, 0x1.61138cp-1f, 0x1.36e3b2p+1f, -0x1.017a6ep+0f,
    0x1.fdd14p-1f, -0x1.90e1ap+1f, -0x1.57566ep-1f, 0x1.90e6bcp+0f, -0x1.3b996ep+1f, -0x1.bd79cp-4f,
    0x1.17ae4p+1f, -0x1.d29156p+0f, 0x1.018458p-1f, 0x1.67ca46p+1f, -0x1.2f3f72p+0f, 0x1.201a96p+0f,
    -0x1.70175p+1f, -0x1.1facfep-1f, 0x1.cp+0f, -0x1.2008cp+1f, 0x1.0084b2p-4f, 0x1.2fffp+1f,
    -0x1.a00616p+0f, 0x1.6002dcp-1f, 0x1.7fff74p+1f, -0x1.fffcep-1f, 0x1.50002ap+0f, -0x1.58003ap+1f,
    -0x1.7ffeaep-2f, 0x1.effffcp+0f, -0x1.6098e8p+0f, 0x1.68939ep+0f, 0x1.84f72cp+0f, -0x1.4ca744p+0f,
    0x1.5356dp+0f, -0x1.a19d6cp+1f, -0x1.7adea4p-1f, 0x1.5961bp+0f, -0x1.42e014p+1f, -0x1.3e35fap-3f,
    0x1.0bd0bap+1f, -0x1.e04254p+0f, 0x1.cc96dcp-2f, 0x1.5f2684p+1f, -0x1.3fb212p+0f, 0x1.111bcp+0f,
    -0x1.7826dep+1f, -0x1.3fa03ap-1f, 0x1.afb08ap+0f, -0x1.28050ap+1f, 0x1.4650d2p-12f, 0x1.27f77cp+1f,
    -0x1.afffb2p+0f, 0x1.400f28p-1f, 0x1.77fe5p+1f, -0x1.0fff14p+0f, 0x1.4002ap+0f, -0x1.600048p+1f,
    -0x1.bffe1p-2f, 0x1.dfff5cp+0f, -0x1.100008p+1f, 0x1.80019p-3f, 0x1.99bc14p+1f, 0x1.7cab4cp-3f,
    0x1.a3f01p+0f, 0x1.e0b7eap+0f, -0x1.243012p+0f, 0x1.8b1034p+1f, 0x1.8980e4p+1f, 0x1.82654p-3f,
    0x1.71ac1p+1f, 0x1.ec88bep+0f, 0x1.6b2ecep-1f, 0x1.9bbf8p+1f, 0x1.798abp+0f, 0x1.d1c568p-2f,
    0x1.dffd34p-1f, 0x1.3c6e04p+0f, 0x1.7c0ba8p+1f, 0x1.fb668p-4f, 0x1.47831p-5f, 0x1.3f92f4p+1f,
    -0x1.eafc96p+0f, -0x1.d11df4p+0f, 0x1.6c5c1ep+1f, 0x1.d0b50ap-2f, -0x1.58be06p-1f, 0x1.4c783cp+1f,
    0x1.44f2e6p-1f, -0x1.5385d4p+1f, 0x1.1ffda6p+0f, 0x1.79281cp+0f, -0x1.7c3ceep+1f, 0x1.03813ap-2f,
    -0x1.b14b98p-2f, 0x1.cdd4b8p+0f, -0x1.9e80ap+0f, -0x1.5d4a38p+1f, 0x1.4d5624p-1f, 0x1.2706cp-4f,
    0x1.221b5p-2f, -0x1.4ce528p+0f, 0x1.9f4ccap+0f, 0x1.44ea62p+0f, 0x1.ab4a3p+0f, 0x1.1e2a18p-2f,
    0x1.6333e4p-1f, 0x1.3ee6d2p+1f, -0x1.a00034p+1f, -0x1.7d57d8p-3f, -0x1.830ebap+0f, 0x1.6bfbfep+1f,
    -0x1.6cb66ap+0f, 0x1.0cd5dap+1f, 0x1.a4139ep-1f, 0x1.becb3cp-1f, -0x1.91ce32p+0f, -0x1.663a3ep+0f,
    -0x1.57876p+1f, 0x1.1b9e8ap+1f, 0x1.10e27cp+0f, -0x1.12525p+1f, -0x1.2d771cp+1f, 0x1.1b3e88p-1f,
    0x1.471738p+0f, -0x1.dcabbcp+0f,
};

/* inv_freq matches HF bit for bit. Our cos and sin are the correctly
 * rounded values of HF's float32 angle; torch's float cos/sin (SLEEF, 1 unit
 * accuracy) is off by one unit in 16 of these 512 entries, so: within one
 * unit, and the rotation follows to within 2^-23 of the pair's magnitude. */
START_TEST(matches_hf)
{
    float inv[32], cos_t[256], sin_t[256];
    dvl_cpu_rope_table(cos_t, sin_t, inv, HF_POS, 8, 64, 1000000.0f);
    ck_assert(memcmp(inv, HF_INV_FREQ, sizeof inv) == 0);
    int exact = 0;
    for (int i = 0; i < 256; i++) {
        ck_assert_msg(tu_ulps(cos_t[i], HF_COS[i]) <= 1, "cos[%d] = %a, HF %a", i,
                      (double)cos_t[i], (double)HF_COS[i]);
        ck_assert_msg(tu_ulps(sin_t[i], HF_SIN[i]) <= 1, "sin[%d] = %a, HF %a", i,
                      (double)sin_t[i], (double)HF_SIN[i]);
        exact += (cos_t[i] == HF_COS[i]) + (sin_t[i] == HF_SIN[i]);
    }
    if (getenv("TU_VERBOSE"))
        printf("rope tables: %d of 512 entries equal HF's\n", exact);

    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s[4] = {1, 8, 1, 64};
    dvl_tensor *x = dvl_new(ctx, DVL_F32, 4, s);
    for (int i = 0; i < 512; i++)
        dvl_f32(x)[i] = (float)((i * 37) % 101 - 50) / 16.0f;
    dvl_tensor *y = dvl_rope(ctx, x, HF_POS, 1000000.0f);
    ck_assert_ptr_nonnull(y);
    const int tok[2] = {1, 7};
    for (int k = 0; k < 2; k++)
        for (int d = 0; d < 64; d++) {
            const float *xv = dvl_f32(x) + tok[k] * 64;
            int j = d % 32;
            float got = dvl_f32(y)[tok[k] * 64 + d], want = HF_ROPE_T1_T7[k * 64 + d];
            ck_assert_msg(fabs(got - want) <= 0x1p-23 * (fabs(xv[j]) + fabs(xv[j + 32])),
                          "rope token %d dim %d = %a, HF %a", tok[k], d, (double)got, (double)want);
        }
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
    tu_pspec s = {"x", 4, {1, 3, 2, 8}, true};
    int32_t pos[3] = {3, 777, 32000};
    dvl_params *p = tu_make_params(&s, 1, 351, 1.0f);
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

/* ------------------------------------------------------------ rope_cols */

/* q [2, 3, 2 heads, 8] and k [2, 3, 1 head, 8] read in place from a
 * [6, 40] q|k|v-like tensor (q at column 0, k at 16, 8 more columns after)
 * equal dvl_rope of the copied-out columns bit for bit, forward and
 * backward, with a table per call or one shared table; columns it does not
 * read get no gradient. */
START_TEST(rope_cols_equals_rope_of_slice)
{
    static const int32_t pos[6] = {0, 5, 77, 3, 4095, 1};
    tu_pspec s[1] = {{"qkv", 2, {6, 40}, true}};
    dvl_params *p = tu_make_params(s, 1, 21, 1.0f), *p2 = tu_make_params(s, 1, 21, 1.0f);
    const int64_t sq[4] = {2, 3, 2, 8}, sk[4] = {2, 3, 1, 8};
    float seed_q[96], seed_k[48];
    for (int i = 0; i < 96; i++)
        seed_q[i] = (float)((i * 37) % 11) * 0.25f - 1.0f;
    for (int i = 0; i < 48; i++)
        seed_k[i] = (float)((i * 13) % 7) * 0.5f - 1.5f;
    float yq[96], yk[48];
    /* ways 0, 2: in place, a table per call or one shared; 1, 3: copied
     * out, likewise. */
    dvl_params *p3 = tu_make_params(s, 1, 21, 1.0f), *p4 = tu_make_params(s, 1, 21, 1.0f);
    dvl_params *ps[4] = {p, p2, p3, p4};
    for (int way = 0; way < 4; way++) {
        dvl_params *pp = ps[way];
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *x = pp->t[0], *q, *k;
        const dvl_rope_table *t = way >= 2 ? dvl_rope_table_make(ctx, DVL_CPU, pos, 6, 8, 1e4f)
                                           : NULL;
        ck_assert(way < 2 || t);
        if (way == 0) {
            q = dvl_rope_cols(ctx, x, 0, sq, pos, 1e4f);
            k = dvl_rope_cols(ctx, x, 16, sk, pos, 1e4f);
        } else if (way == 1) {
            q = dvl_rope(ctx, dvl_reshape(ctx, dvl_slice_cols(ctx, x, 0, 16), 4, sq), pos, 1e4f);
            k = dvl_rope(ctx, dvl_reshape(ctx, dvl_slice_cols(ctx, x, 16, 8), 4, sk), pos, 1e4f);
        } else if (way == 2) {
            q = dvl_rope_cols_with(ctx, x, 0, sq, t);
            k = dvl_rope_cols_with(ctx, x, 16, sk, t);
        } else {
            q = dvl_rope_with(ctx, dvl_reshape(ctx, dvl_slice_cols(ctx, x, 0, 16), 4, sq), t);
            k = dvl_rope_with(ctx, dvl_reshape(ctx, dvl_slice_cols(ctx, x, 16, 8), 4, sk), t);
        }
        ck_assert_msg(q && k, "%s", dvl_ctx_err(ctx)->msg);
        ck_assert_int_eq(q->ndim, 4);
        ck_assert_int_eq(k->shape[2], 1);
        if (way == 0) {
            memcpy(yq, q->data, sizeof yq);
            memcpy(yk, k->data, sizeof yk);
        } else {
            ck_assert_mem_eq(yq, q->data, sizeof yq);
            ck_assert_mem_eq(yk, k->data, sizeof yk);
        }
        dvl_tensor *rq = dvl_wrap(ctx, DVL_F32, 4, sq, seed_q);
        dvl_tensor *rk = dvl_wrap(ctx, DVL_F32, 4, sk, seed_k);
        dvl_tensor *l = dvl_add(ctx, dvl_sum(ctx, dvl_mul(ctx, q, rq)),
                                dvl_sum(ctx, dvl_mul(ctx, k, rk)));
        ck_assert_int_eq(dvl_backward(ctx, l), 0);
        dvl_ctx_free(ctx);
    }
    for (int way = 1; way < 4; way++)
        ck_assert_mem_eq(p->t[0]->grad, ps[way]->t[0]->grad, 6 * 40 * sizeof(float));
    for (int r = 0; r < 6; r++)
        for (int c = 24; c < 40; c++)
            ck_assert_float_eq(p->t[0]->grad[r * 40 + c], 0.0f);
    dvl_params_free(p4);
    dvl_params_free(p3);
    dvl_params_free(p2);
    dvl_params_free(p);
}
END_TEST

static dvl_tensor *f_rope_cols(dvl_ctx *c, dvl_params *p, void *u)
{
    rope_case *rc = u;
    const int64_t s[4] = {1, 4, 2, 6};
    return dvl_rope_cols(c, dvl_params_find(p, "x"), 3, s, rc->pos, rc->theta);
}

START_TEST(rope_cols_gradcheck)
{
    static const int32_t pos[4] = {0, 9, 2, 300};
    tu_pspec s[1] = {{"x", 2, {4, 17}, true}};
    dvl_params *p = tu_make_params(s, 1, 22, 1.0f);
    rope_case rc = {pos, 1e4f};
    TU_GRADCHECK(f_rope_cols, p, &rc, 1e-2f, 0, 1e-4);
    dvl_params_free(p);
}
END_TEST

/* The shared-table forms under central differences (their backward is the
 * per-call forms', fed the table's cos and sin). */
static dvl_tensor *f_rope_with(dvl_ctx *c, dvl_params *p, void *u)
{
    rope_case *rc = u;
    const int64_t s[4] = {1, 4, 2, 6};
    dvl_tensor *x = dvl_params_find(p, "x");
    const dvl_rope_table *t = dvl_rope_table_make(c, DVL_CPU, rc->pos, 4, 6, rc->theta);
    dvl_tensor *a = dvl_rope_cols_with(c, x, 3, s, t);
    dvl_tensor *b = dvl_rope_with(c, dvl_reshape(c, dvl_slice_cols(c, x, 0, 12), 4, s), t);
    return dvl_add(c, a, dvl_scale(c, b, 0.5f));
}

START_TEST(rope_with_table_gradcheck)
{
    static const int32_t pos[4] = {3, 0, 1000, 41};
    tu_pspec s[1] = {{"x", 2, {4, 17}, true}};
    dvl_params *p = tu_make_params(s, 1, 23, 1.0f);
    rope_case rc = {pos, 1e4f};
    TU_GRADCHECK(f_rope_with, p, &rc, 1e-2f, 0, 1e-4);
    dvl_params_free(p);
}
END_TEST

/* A table that does not fit x (tokens, head size), none, and bad tables. */
START_TEST(rope_table_errors)
{
    static const int32_t pos[4] = {0, 1, 2, 3};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 4, 20);
    x->name = "qkv";
    const int64_t s[4] = {1, 4, 2, 8}, s4[4] = {1, 4, 1, 4}, s3[4] = {1, 3, 2, 8};
    const dvl_rope_table *t3 = dvl_rope_table_make(ctx, DVL_CPU, pos, 3, 8, 1e4f);
    const dvl_rope_table *t8 = dvl_rope_table_make(ctx, DVL_CPU, pos, 4, 8, 1e4f);
    ck_assert(t3 && t8);
    ck_assert_ptr_null(dvl_rope_cols_with(ctx, x, 0, s3, t8));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "want 3 rows"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    dvl_tensor *x3 = dvl_new2(ctx, 3, 20);
    x3->name = "x3";
    ck_assert_ptr_nonnull(dvl_rope_cols_with(ctx, x3, 0, s3, t3));
    ck_assert_ptr_null(dvl_rope_cols_with(ctx, x, 0, s, t3));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg,
                         "rope_cols: x qkv (4 tokens, head size 8, cpu) does not fit its table "
                         "(3 tokens, head size 8, cpu)"),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_cols_with(ctx, x, 0, s4, t8));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "head size 4, cpu) does not fit its table"),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    dvl_tensor *x4 = dvl_reshape(ctx, dvl_new2(ctx, 4, 16), 4, s);
    ck_assert_ptr_nonnull(dvl_rope_with(ctx, x4, t8));
    ck_assert_ptr_null(dvl_rope_with(ctx, x4, t3));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "does not fit its table (3 tokens"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_with(ctx, x4, NULL));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope: no table for x"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_cols_with(ctx, x, 0, s, NULL));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope_cols: no table for x qkv"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_table_make(ctx, DVL_CPU, pos, 4, 7, 1e4f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope table: 4 tokens of head size 7"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_table_make(ctx, DVL_CPU, NULL, 4, 8, 1e4f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope table: positions are NULL"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_table_make(ctx, DVL_CPU, pos, 4, 8, -1.0f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope table: theta -1 must be positive"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(rope_cols_errors)
{
    static const int32_t pos[4] = {0, 1, 2, 3};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *x = dvl_new2(ctx, 4, 20);
    x->name = "qkv";
    const int64_t s[4] = {1, 4, 2, 8}, odd[4] = {1, 4, 2, 7}, rows[4] = {1, 3, 2, 8};
    ck_assert_ptr_null(dvl_rope_cols(ctx, x, 5, s, pos, 1e4f)); /* 5 + 16 > 20 */
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "from column 5 does not fit x qkv [4, 20]"),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_cols(ctx, x, 0, rows, pos, 1e4f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "want 3 rows"), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_cols(ctx, x, 0, odd, pos, 1e4f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "head size 7 is odd"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_rope_cols(ctx, x, 0, s, NULL, 1e4f));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "rope_cols: positions for x qkv are NULL"), "%s",
                  dvl_ctx_err(ctx)->msg);
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
    tcase_add_test(tc, matches_hf);
    tcase_add_test(tc, position_zero_is_identity);
    tcase_add_test(tc, one_position_per_token);
    tcase_add_test(tc, backward_is_inverse_rotation);
    tcase_add_test(tc, frozen_input_records_nothing);
    tcase_add_test(tc, rope_cols_equals_rope_of_slice);
    tcase_add_test(tc, rope_cols_gradcheck);
    tcase_add_test(tc, rope_cols_errors);
    tcase_add_test(tc, rope_with_table_gradcheck);
    tcase_add_test(tc, rope_table_errors);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
