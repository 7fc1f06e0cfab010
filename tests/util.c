#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tu_randn(dvl_tensor *t, uint64_t seed, float std)
{
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    dvl_rng_fill_normal(&r, dvl_f32(t), dvl_numel(t), std);
}

dvl_params *tu_make_params(const tu_pspec *s, int n, uint64_t seed, float std)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    for (int i = 0; i < n; i++)
        ck_assert_msg(dvl_params_add(p, s[i].name, s[i].ndim, s[i].shape, s[i].trainable, &err),
                      "%s", err.msg);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    for (int i = 0; i < n; i++)
        tu_randn(p->t[i], seed + (uint64_t)i, std);
    return p;
}

dvl_tensor *tu_param(dvl_params *p, const char *name)
{
    dvl_tensor *t = dvl_params_find(p, name);
    ck_assert_msg(t != NULL, "no parameter %s", name);
    return t;
}

/* sum(out * R) in double, R regenerated from its seed every time. */
static double project(const dvl_tensor *out, uint64_t seed)
{
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    const float *y = dvl_f32(out);
    double s = 0;
    for (int64_t i = 0; i < dvl_numel(out); i++)
        s += (double)y[i] * (double)dvl_rng_normal(&r);
    return s;
}

static double eval(tu_fn f, dvl_ctx *ctx, dvl_params *p, void *user, uint64_t seed)
{
    dvl_ctx_reset(ctx);
    bool prev = dvl_set_grad_enabled(ctx, false);
    dvl_tensor *out = f(ctx, p, user);
    dvl_set_grad_enabled(ctx, prev);
    ck_assert_msg(out != NULL, "op failed: %s", dvl_ctx_err(ctx)->msg);
    return project(out, seed);
}

tu_gradcheck_result tu_gradcheck(tu_fn f, dvl_params *p, void *user, float eps, int64_t max_elems)
{
    const uint64_t proj_seed = 0x5eed;
    tu_gradcheck_result res = {0, 0, "(none)", 0};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    ck_assert(ctx);

    /* Analytic gradients. */
    dvl_params_zero_grad(p);
    dvl_tensor *out = f(ctx, p, user);
    ck_assert_msg(out != NULL, "op failed: %s", dvl_ctx_err(ctx)->msg);
    int64_t n_out = dvl_numel(out);
    float *seed = malloc((size_t)n_out * sizeof *seed);
    dvl_rng r;
    dvl_rng_seed(&r, proj_seed);
    for (int64_t i = 0; i < n_out; i++)
        seed[i] = dvl_rng_normal(&r);
    int rc = dvl_backward_seed(ctx, out, seed);
    ck_assert_msg(rc == 0, "backward failed: %s", dvl_ctx_err(ctx)->msg);
    free(seed);
    float *analytic = malloc((size_t)(p->numel_grad ? p->numel_grad : 1) * sizeof(float));
    if (p->numel_grad)
        memcpy(analytic, p->grad, (size_t)p->numel_grad * sizeof(float));

    dvl_rng pick;
    dvl_rng_seed(&pick, 0xc0ffee);
    for (int k = 0; k < p->n; k++) {
        dvl_tensor *t = p->t[k];
        if (p->grad_off[k] < 0)
            continue;
        int64_t n = dvl_numel(t);
        int64_t m = (max_elems > 0 && max_elems < n) ? max_elems : n;
        double *num = malloc((size_t)m * sizeof *num);
        int64_t *idx = malloc((size_t)m * sizeof *idx);
        double scale = 1e-2;
        for (int64_t e = 0; e < m; e++) {
            idx[e] = (m == n) ? e : (int64_t)(dvl_rng_u64(&pick) % (uint64_t)n);
            float *x = dvl_f32(t) + idx[e];
            float x0 = *x;
            *x = x0 + eps;
            double lp = eval(f, ctx, p, user, proj_seed);
            *x = x0 - eps;
            double lm = eval(f, ctx, p, user, proj_seed);
            *x = x0;
            /* The actual step after rounding x0 +- eps to f32. */
            double h = (double)(x0 + eps) - (double)(x0 - eps);
            num[e] = (lp - lm) / h;
            if (fabs(num[e]) > scale)
                scale = fabs(num[e]);
        }
        for (int64_t e = 0; e < m; e++) {
            double a = analytic[p->grad_off[k] + idx[e]];
            double err = fabs(a - num[e]) / scale;
            if (err > res.max_err || res.checked == 0) {
                if (err >= res.max_err) {
                    res.max_err = err;
                    res.scale = scale;
                    res.worst = t->name;
                }
            }
            res.checked++;
        }
        free(num);
        free(idx);
    }
    free(analytic);
    dvl_ctx_free(ctx);
    return res;
}

void tu_gradcheck_log(const char *what, const tu_gradcheck_result *r, double tol)
{
    if (getenv("TU_VERBOSE"))
        printf("gradcheck %-22s max_err %.3g (scale %.3g) tol %g\n", what, r->max_err, r->scale,
               tol);
}

double tu_max_abs_diff(const float *a, const float *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

int64_t tu_ulps(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t oa = ia < 0 ? (int64_t)INT32_MIN - ia : ia, ob = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return oa > ob ? oa - ob : ob - oa;
}

dvl_tensor *tu_ref_input(dvl_ctx *ctx)
{
    dvl_tensor *x = dvl_new2(ctx, 4, 13);
    ck_assert_ptr_nonnull(x);
    for (int i = 0; i < 52; i++)
        dvl_f32(x)[i] = (float)((i * 53) % 97 - 48) / 8.0f;
    return x;
}

uint32_t tu_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float tu_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void *tu_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    ck_assert_msg(len >= 0, "cannot size %s", path);
    char *buf = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    if (n)
        *n = (size_t)len;
    return buf;
}

void tu_write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_int_eq(fwrite(buf, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

const char *tu_data_path(const char *name, char *buf, size_t n)
{
    const char *dir = getenv("DVL_TEST_DATA");
    snprintf(buf, n, "%s/%s", dir ? dir : "tests/data", name);
    return buf;
}

int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
