/* Cross-entropy and the fused LM-head cross-entropy: values and gradients
 * against double-precision references written here, finite differences,
 * large logits, ignored rows, frozen inputs, thread-count independence,
 * errors, and a realistic vocabulary without an [n, V] buffer. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ------------------------------------------------------------- references */

/* z [n, V] = h W^T, each dot product in double (a plain loop: this suite
 * must not depend on the linear op). */
static void naive_logits(float *z, const float *h, const float *w, int64_t n, int64_t d, int64_t V)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < V; j++) {
            double s = 0;
            for (int64_t k = 0; k < d; k++)
                s += (double)h[i * d + k] * (double)w[j * d + k];
            z[i * V + j] = (float)s;
        }
}

/* loss = sum_i w_i (logsumexp(z_i) - z_i[y_i]) in double; with dz, also
 * dz = g w_i (softmax(z_i) - onehot(y_i)) (zero rows for ignored labels). */
static double ref_xent(double *dz, const float *z, const int32_t *lab, const float *wt, int64_t n,
                       int64_t V, double g)
{
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *zi = z + i * V;
        if (dz)
            for (int64_t j = 0; j < V; j++)
                dz[i * V + j] = 0;
        if (lab[i] == DVL_IGNORE_INDEX)
            continue;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < V; j++)
            m = fmax(m, zi[j]);
        for (int64_t j = 0; j < V; j++)
            s += exp((double)zi[j] - m);
        const double lse = m + log(s), w = wt ? wt[i] : 1.0;
        total += w * (lse - zi[lab[i]]);
        if (dz) {
            for (int64_t j = 0; j < V; j++)
                dz[i * V + j] = g * w * exp((double)zi[j] - lse);
            dz[i * V + lab[i]] -= g * w;
        }
    }
    return total;
}

/* max |a - b| / max(max |b|, 1e-30): error relative to the array's scale. */
static double rel_err(const float *a, const double *b, int64_t n)
{
    double scale = 1e-30, err = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        err = isnan(e) ? INFINITY : fmax(err, e);
    }
    return err / scale;
}

static bool all_finite(const float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return false;
    return true;
}

/* Random labels in [0, V), every `ignore_every`-th row (0: none) ignored,
 * and weights in [0.1, 1.1). */
static void random_labels(int32_t *lab, float *wt, int64_t n, int64_t V, int ignore_every,
                          uint64_t seed)
{
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) {
        lab[i] = (int32_t)(dvl_rng_u64(&r) % (uint64_t)V);
        if (ignore_every && i % ignore_every == 1)
            lab[i] = DVL_IGNORE_INDEX;
        if (wt)
            wt[i] = 0.1f + dvl_rng_uniform(&r);
    }
}

/* ------------------------------------------------- cross-entropy on logits */

static void check_xent_vs_reference(int64_t n, int64_t V, float shift, float std, bool weighted,
                                    uint64_t seed)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *z = dvl_new2(ctx, n, V);
    tu_randn(z, seed, std);
    for (int64_t i = 0; i < n * V; i++)
        dvl_f32(z)[i] += shift;
    z->requires_grad = true;
    int32_t *lab = malloc((size_t)n * sizeof *lab);
    float *wt = weighted ? malloc((size_t)n * sizeof *wt) : NULL;
    random_labels(lab, wt, n, V, 3, seed + 1);
    double *dz = malloc((size_t)(n * V) * sizeof *dz);
    const double g = 0.7;
    const double want = ref_xent(dz, dvl_f32(z), lab, wt, n, V, g);

    dvl_tensor *loss = dvl_cross_entropy(ctx, z, lab, wt);
    ck_assert_msg(loss != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(loss->ndim, 1);
    ck_assert_int_eq(loss->shape[0], 1);
    /* The f32 result is the double total rounded once, so 1e-6 relative
     * holds at any logit scale. */
    const float got = dvl_f32(loss)[0];
    ck_assert_msg(fabs(got - want) <= 1e-6 * fabs(want), "loss %.9g want %.9g", got, want);
    const float gf = (float)g;
    ck_assert_int_eq(dvl_backward_seed(ctx, loss, &gf), 0);
    /* Gradient entries are bounded by g w; 1e-6 of that covers expf and
     * the f32 logsum (a few ulp). */
    const float *gz = dvl_grad(ctx, z);
    ck_assert(all_finite(gz, n * V));
    double err = 0;
    for (int64_t i = 0; i < n * V; i++)
        err = fmax(err, fabs(gz[i] - dz[i]));
    ck_assert_msg(err <= 1e-6, "dlogits off by %g (n=%lld V=%lld shift=%g std=%g)", err,
                  (long long)n, (long long)V, shift, std);
    free(lab);
    free(wt);
    free(dz);
    dvl_ctx_free(ctx);
}

START_TEST(xent_matches_double_reference)
{
    check_xent_vs_reference(13, 33, 0.0f, 3.0f, true, 1);
    check_xent_vs_reference(7, 1, 0.0f, 1.0f, false, 2);
    check_xent_vs_reference(1, 1000, 0.0f, 5.0f, true, 3);
    /* [2, 3, V] logits: all leading dims are rows. */
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t s3[3] = {2, 3, 5};
    dvl_tensor *z = dvl_new(ctx, DVL_F32, 3, s3);
    tu_randn(z, 4, 1.0f);
    int32_t lab[6] = {0, 4, DVL_IGNORE_INDEX, 2, 3, 1};
    dvl_tensor *loss = dvl_cross_entropy(ctx, z, lab, NULL);
    ck_assert_ptr_nonnull(loss);
    double want = ref_xent(NULL, dvl_f32(z), lab, NULL, 6, 5, 1);
    ck_assert(fabs(dvl_f32(loss)[0] - want) <= 1e-6 * want);
    ck_assert_int_eq(dvl_tape_len(ctx), 0); /* nothing required a gradient */
    dvl_ctx_free(ctx);
}
END_TEST

START_TEST(xent_large_logits)
{
    /* Logits of 1e4 scale: exp(z) overflows f32 without the max shift. */
    check_xent_vs_reference(9, 50, 0.0f, 1e4f, true, 10);
    /* Logits near 1e4 but within a few units of each other: the softmax is
     * not saturated, so the backward probabilities must come from z - max
     * (exact here) and not from z - lse with an f32 lse whose ulp (1e-3)
     * would show as a 1e-3 relative error. */
    check_xent_vs_reference(9, 50, 1e4f, 2.0f, true, 11);
    check_xent_vs_reference(9, 50, -1e4f, 2.0f, false, 12);
}
END_TEST

/* ---------------------------------------------- fused against the unfused */

typedef struct xent_case {
    int64_t n, d, V, chunk;
    int ignore_every;
    bool weighted;
    float hstd, wstd;
} xent_case;

/* The fused op against cross_entropy over logits built here, value and both
 * gradients (h and W both activations that require a gradient). */
static void check_fused_vs_unfused(xent_case c, uint64_t seed)
{
    const int64_t n = c.n, d = c.d, V = c.V;
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *h = dvl_new2(ctx, n, d), *w = dvl_new2(ctx, V, d);
    tu_randn(h, seed, c.hstd);
    tu_randn(w, seed + 1, c.wstd);
    h->name = "h";
    w->name = "W";
    h->requires_grad = w->requires_grad = true;
    int32_t *lab = malloc((size_t)n * sizeof *lab);
    float *wt = c.weighted ? malloc((size_t)n * sizeof *wt) : NULL;
    random_labels(lab, wt, n, V, c.ignore_every, seed + 2);
    const float g = 0.75f;

    dvl_tensor *loss = dvl_linear_cross_entropy(ctx, h, w, lab, wt, c.chunk);
    ck_assert_msg(loss != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_backward_seed(ctx, loss, &g), 0);
    const float *gh = dvl_grad(ctx, h), *gw = dvl_grad(ctx, w);

    /* Unfused: logits by hand, then the plain op and its gradient. */
    dvl_ctx *c2 = dvl_ctx_new(DVL_CPU);
    dvl_tensor *z = dvl_new2(c2, n, V);
    naive_logits(dvl_f32(z), dvl_f32(h), dvl_f32(w), n, d, V);
    z->requires_grad = true;
    dvl_tensor *loss2 = dvl_cross_entropy(c2, z, lab, wt);
    ck_assert_ptr_nonnull(loss2);
    ck_assert_int_eq(dvl_backward_seed(c2, loss2, &g), 0);
    const float *dz = dvl_grad(c2, z);
    double *dh = calloc((size_t)(n * d), sizeof *dh), *dw = calloc((size_t)(V * d), sizeof *dw);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < V; j++)
            for (int64_t k = 0; k < d; k++) {
                dh[i * d + k] += (double)dz[i * V + j] * dvl_f32(w)[j * d + k];
                dw[j * d + k] += (double)dz[i * V + j] * dvl_f32(h)[i * d + k];
            }

    /* The fused logits come from sgemm, the unfused ones from a double
     * loop: they differ by an ulp or so, which moves the loss by ~1e-7
     * relative and the gradients by ~1e-7 of their scale (tolerance 2e-6). */
    const float a = dvl_f32(loss)[0], b = dvl_f32(loss2)[0];
    ck_assert_msg(fabs(a - b) <= 1e-6 * fabs(b),
                  "fused loss %.9g unfused %.9g (n=%lld V=%lld chunk=%lld)", a, b, (long long)n,
                  (long long)V, (long long)c.chunk);
    ck_assert(all_finite(gh, n * d) && all_finite(gw, V * d));
    double eh = rel_err(gh, dh, n * d), ew = rel_err(gw, dw, V * d);
    ck_assert_msg(eh <= 2e-6 && ew <= 2e-6, "dh off by %g, dW by %g (n=%lld V=%lld chunk=%lld)", eh,
                  ew, (long long)n, (long long)V, (long long)c.chunk);
    free(lab);
    free(wt);
    free(dh);
    free(dw);
    dvl_ctx_free(c2);
    dvl_ctx_free(ctx);
}

START_TEST(fused_matches_unfused)
{
    /* Chunks that divide V, do not divide it, equal it, exceed it, default. */
    const int64_t chunks[] = {8, 37, 100, 1, 0};
    for (int k = 0; k < 5; k++) {
        check_fused_vs_unfused((xent_case){13, 7, 37, chunks[k], 4, true, 1.0f, 0.5f}, 100 + k);
        check_fused_vs_unfused((xent_case){13, 7, 37, chunks[k], 0, false, 1.0f, 0.5f}, 200 + k);
    }
    /* More rows than a tile (DVL_XENT_TILE = 512): three token tiles, the
     * last partial, with ignored rows shifting the tile boundaries. */
    check_fused_vs_unfused((xent_case){1100, 5, 37, 8, 3, true, 1.0f, 0.5f}, 300);
    check_fused_vs_unfused((xent_case){1, 33, 64, 16, 0, true, 1.0f, 0.5f}, 301);
}
END_TEST

START_TEST(fused_large_logits)
{
    /* Logits of ~1e4 (h and W entries ~70, d = 8): the value against the
     * double reference, nothing overflows. The gradients are checked only
     * for being finite: logits this large are themselves uncertain by an
     * ulp of 1e4 between sgemm and the reference. */
    const int64_t n = 11, d = 8, V = 29;
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *h = dvl_new2(ctx, n, d), *w = dvl_new2(ctx, V, d);
    tu_randn(h, 40, 70.0f);
    tu_randn(w, 41, 70.0f);
    h->requires_grad = w->requires_grad = true;
    int32_t lab[11];
    float wt[11];
    random_labels(lab, wt, n, V, 5, 42);
    dvl_tensor *loss = dvl_linear_cross_entropy(ctx, h, w, lab, wt, 8);
    ck_assert_ptr_nonnull(loss);
    float *z = malloc((size_t)(n * V) * sizeof *z);
    naive_logits(z, dvl_f32(h), dvl_f32(w), n, d, V);
    double zmax = 0;
    for (int64_t i = 0; i < n * V; i++)
        zmax = fmax(zmax, fabs(z[i]));
    ck_assert_msg(zmax > 5e3, "test logits only reach %g", zmax);
    const double want = ref_xent(NULL, z, lab, wt, n, V, 1);
    ck_assert_msg(fabs(dvl_f32(loss)[0] - want) <= 1e-6 * fabs(want), "loss %.9g want %.9g",
                  dvl_f32(loss)[0], want);
    ck_assert_int_eq(dvl_backward(ctx, loss), 0);
    ck_assert(all_finite(dvl_grad(ctx, h), n * d));
    ck_assert(all_finite(dvl_grad(ctx, w), V * d));
    free(z);
    dvl_ctx_free(ctx);
}
END_TEST

/* ---------------------------------------------------------- gradchecks */

typedef struct gc_user {
    const int32_t *lab;
    const float *wt;
    int64_t chunk;
} gc_user;

static dvl_tensor *gc_xent(dvl_ctx *ctx, dvl_params *p, void *user)
{
    gc_user *u = user;
    return dvl_cross_entropy(ctx, dvl_params_find(p, "logits"), u->lab, u->wt);
}

static dvl_tensor *gc_fused(dvl_ctx *ctx, dvl_params *p, void *user)
{
    gc_user *u = user;
    return dvl_linear_cross_entropy(ctx, dvl_params_find(p, "h"), dvl_params_find(p, "W"), u->lab,
                                    u->wt, u->chunk);
}

/* Central differences with eps = 1e-2 on an f32 loss of ~20: the rounding
 * of the loss (~2e-6) over 2 eps gives ~1e-4 of noise, the eps^2 term less,
 * against gradients of scale ~1..4 (measured: below 1e-4 of the scale):
 * tolerance 5e-4 of the scale. */
START_TEST(xent_gradcheck)
{
    tu_pspec s = {"logits", 2, {7, 13}, true};
    dvl_params *p = tu_make_params(&s, 1, 50, 2.0f);
    int32_t lab[7];
    float wt[7];
    random_labels(lab, wt, 7, 13, 3, 51);
    gc_user u = {lab, wt, 0};
    TU_GRADCHECK(gc_xent, p, &u, 1e-2f, 0, 5e-4);
    u.wt = NULL;
    TU_GRADCHECK(gc_xent, p, &u, 1e-2f, 0, 5e-4);
    dvl_params_free(p);
}
END_TEST

START_TEST(fused_gradcheck)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t sh[2] = {9, 6}, sw[2] = {13, 6};
    dvl_tensor *h = dvl_params_add(p, "h", 2, sh, true, &err);
    dvl_tensor *w = dvl_params_add(p, "W", 2, sw, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(h, 60, 1.0f);
    tu_randn(w, 61, 0.7f);
    int32_t lab[9];
    float wt[9];
    random_labels(lab, wt, 9, 13, 4, 62);
    /* Chunks of 5 over V = 13: 5, 5, 3. */
    gc_user u = {lab, wt, 5};
    TU_GRADCHECK(gc_fused, p, &u, 1e-2f, 0, 5e-4);
    u.chunk = 0;
    u.wt = NULL;
    TU_GRADCHECK(gc_fused, p, &u, 1e-2f, 0, 5e-4);
    dvl_params_free(p);
}
END_TEST

/* ------------------------------------------------------ frozen, ignored */

/* Gradients with h and/or W trainable; a frozen one never gets a buffer and
 * the trainable one's gradient is unchanged. Running two steps without
 * zeroing doubles the gradients: the backward pass adds, never overwrites. */
START_TEST(fused_frozen_inputs_and_accumulation)
{
    const int64_t n = 10, d = 6, V = 23;
    int32_t lab[10];
    float wt[10];
    random_labels(lab, wt, n, V, 4, 70);
    float ref_h[60], ref_w[23 * 6];
    for (int mode = 0; mode < 3; mode++) { /* 0: both, 1: W frozen, 2: h frozen */
        dvl_params *p = dvl_params_new();
        dvl_err err = {0};
        int64_t sh[2] = {n, d}, sw[2] = {V, d};
        dvl_tensor *h = dvl_params_add(p, "h", 2, sh, mode != 2, &err);
        dvl_tensor *w = dvl_params_add(p, "lm_head.weight", 2, sw, mode != 1, &err);
        ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
        tu_randn(h, 71, 1.0f);
        tu_randn(w, 72, 0.5f);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        for (int step = 0; step < 2; step++) {
            dvl_ctx_reset(ctx);
            dvl_tensor *loss = dvl_linear_cross_entropy(ctx, h, w, lab, wt, 7);
            ck_assert_ptr_nonnull(loss);
            ck_assert_int_eq(dvl_backward(ctx, loss), 0);
            if (step == 0 && mode == 0) {
                memcpy(ref_h, h->grad, sizeof ref_h);
                memcpy(ref_w, w->grad, sizeof ref_w);
            }
        }
        if (mode == 1)
            ck_assert_ptr_null(w->grad);
        else
            for (int64_t i = 0; i < V * d; i++)
                ck_assert_float_eq_tol(w->grad[i], 2 * ref_w[i], 1e-6f);
        if (mode == 2)
            ck_assert_ptr_null(h->grad);
        else
            for (int64_t i = 0; i < n * d; i++)
                ck_assert_float_eq_tol(h->grad[i], 2 * ref_h[i], 1e-6f);
        /* With grad mode off nothing is recorded. */
        dvl_ctx_reset(ctx);
        bool prev = dvl_set_grad_enabled(ctx, false);
        ck_assert_ptr_nonnull(dvl_linear_cross_entropy(ctx, h, w, lab, wt, 7));
        ck_assert_int_eq(dvl_tape_len(ctx), 0);
        dvl_set_grad_enabled(ctx, prev);
        dvl_ctx_free(ctx);
        dvl_params_free(p);
    }
}
END_TEST

START_TEST(all_rows_ignored)
{
    const int64_t n = 5, d = 4, V = 9;
    int32_t lab[5] = {DVL_IGNORE_INDEX, DVL_IGNORE_INDEX, DVL_IGNORE_INDEX, DVL_IGNORE_INDEX,
                      DVL_IGNORE_INDEX};
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *h = dvl_new2(ctx, n, d), *w = dvl_new2(ctx, V, d), *z = dvl_new2(ctx, n, V);
    tu_randn(h, 80, 1.0f);
    tu_randn(w, 81, 1.0f);
    tu_randn(z, 82, 1.0f);
    h->requires_grad = w->requires_grad = z->requires_grad = true;
    dvl_tensor *l1 = dvl_linear_cross_entropy(ctx, h, w, lab, NULL, 0);
    dvl_tensor *l2 = dvl_cross_entropy(ctx, z, lab, NULL);
    ck_assert(l1 && l2);
    ck_assert(dvl_f32(l1)[0] == 0.0f && dvl_f32(l2)[0] == 0.0f);
    ck_assert_int_eq(dvl_backward(ctx, l1), 0);
    ck_assert_int_eq(dvl_backward(ctx, l2), 0);
    const float *gs[3] = {dvl_grad(ctx, h), dvl_grad(ctx, w), dvl_grad(ctx, z)};
    const int64_t ns[3] = {n * d, V * d, n * V};
    for (int t = 0; t < 3; t++)
        for (int64_t i = 0; i < ns[t]; i++)
            ck_assert(gs[t][i] == 0.0f);
    /* No rows at all. */
    dvl_tensor *e = dvl_new2(ctx, 0, d);
    dvl_tensor *l3 = dvl_linear_cross_entropy(ctx, e, w, lab, NULL, 0);
    ck_assert(l3 && dvl_f32(l3)[0] == 0.0f);
    dvl_ctx_free(ctx);
}
END_TEST

/* -------------------------------------------------------- determinism */

/* Loss and gradients bit for bit the same with 1 and 3 OpenMP threads (the
 * BLAS thread count is left alone). Large enough that the per-row loops run
 * on a team (ops/cpu/par.h): 600 supervised rows give a full first tile of
 * 512, whose chunks of 20 and 17 logits are above DVL_PAR_MIN. d stays small
 * so that each sgemm stays on one thread: the OpenMP build of OpenBLAS
 * follows the OpenMP thread count, and its rounding would then differ. */
START_TEST(thread_count_independent)
{
    const int64_t n = 900, d = 9, V = 37;
    int32_t *lab = malloc((size_t)n * sizeof *lab);
    float *wt = malloc((size_t)n * sizeof *wt);
    random_labels(lab, wt, n, V, 3, 90);
    float loss[2][2], *grads[2][3];
    const int threads[2] = {1, 3};
    const int saved = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(threads[t]);
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *h = dvl_new2(ctx, n, d), *w = dvl_new2(ctx, V, d), *z = dvl_new2(ctx, n, V);
        tu_randn(h, 91, 1.0f);
        tu_randn(w, 92, 0.5f);
        tu_randn(z, 93, 2.0f);
        h->requires_grad = w->requires_grad = z->requires_grad = true;
        dvl_tensor *l1 = dvl_linear_cross_entropy(ctx, h, w, lab, wt, 20);
        ck_assert_int_eq(dvl_backward(ctx, l1), 0);
        dvl_tensor *l2 = dvl_cross_entropy(ctx, z, lab, wt);
        ck_assert_int_eq(dvl_backward(ctx, l2), 0);
        loss[t][0] = dvl_f32(l1)[0];
        loss[t][1] = dvl_f32(l2)[0];
        const float *src[3] = {dvl_grad(ctx, h), dvl_grad(ctx, w), dvl_grad(ctx, z)};
        const int64_t ns[3] = {n * d, V * d, n * V};
        for (int k = 0; k < 3; k++) {
            grads[t][k] = malloc((size_t)ns[k] * sizeof(float));
            memcpy(grads[t][k], src[k], (size_t)ns[k] * sizeof(float));
        }
        dvl_ctx_free(ctx);
    }
    omp_set_num_threads(saved);
    ck_assert(memcmp(loss[0], loss[1], sizeof loss[0]) == 0);
    const int64_t ns[3] = {n * d, V * d, n * V};
    for (int k = 0; k < 3; k++) {
        ck_assert_msg(memcmp(grads[0][k], grads[1][k], (size_t)ns[k] * sizeof(float)) == 0,
                      "gradient %d differs between 1 and 3 threads", k);
        free(grads[0][k]);
        free(grads[1][k]);
    }
    free(lab);
    free(wt);
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(errors_name_the_culprit)
{
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *h = dvl_new2(ctx, 4, 5), *w = dvl_new2(ctx, 7, 5), *z = dvl_new2(ctx, 4, 7);
    tu_randn(h, 1, 1.0f);
    tu_randn(w, 2, 1.0f);
    tu_randn(z, 3, 1.0f);
    h->name = "hidden";
    w->name = "lm_head.weight";
    z->name = "logits";
    int32_t bad[4] = {0, 1, 2, 7}, neg[4] = {0, -1, 2, 3}, ok[4] = {0, 1, 2, 3};

    ck_assert_ptr_null(dvl_cross_entropy(ctx, z, bad, NULL));
    const char *msg = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(msg, "label 7") && strstr(msg, "row 3") && strstr(msg, "logits"), "%s",
                  msg);
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_cross_entropy(ctx, z, neg, NULL));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "label -1 at row 1"));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, h, w, bad, NULL, 0));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "label 7 at row 3"));
    dvl_ctx_clear_error(ctx);

    /* h has 5 columns, W 6. */
    dvl_tensor *w6 = dvl_new2(ctx, 7, 6);
    w6->name = "lm_head.weight";
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, h, w6, ok, NULL, 0));
    msg = dvl_ctx_err(ctx)->msg;
    ck_assert_msg(strstr(msg, "hidden") && strstr(msg, "lm_head.weight") && strstr(msg, "[7, 6]"),
                  "%s", msg);
    dvl_ctx_clear_error(ctx);
    int64_t s1[1] = {5};
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, h, dvl_new(ctx, DVL_F32, 1, s1), ok, NULL, 0));
    ck_assert(!dvl_ctx_ok(ctx));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, h, w, ok, NULL, -1));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "chunk"));
    dvl_ctx_clear_error(ctx);
    ck_assert_ptr_null(dvl_cross_entropy(ctx, z, NULL, NULL));
    ck_assert_ptr_nonnull(strstr(dvl_ctx_err(ctx)->msg, "labels"));
    dvl_ctx_clear_error(ctx);

    /* A NULL input passes through without a message of its own. */
    ck_assert_ptr_null(dvl_cross_entropy(ctx, NULL, ok, NULL));
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, NULL, w, ok, NULL, 0));
    ck_assert_ptr_null(dvl_linear_cross_entropy(ctx, h, NULL, ok, NULL, 0));
    ck_assert(dvl_ctx_ok(ctx));
    dvl_ctx_free(ctx);
}
END_TEST

/* ------------------------------------------------------ realistic vocab */

/* Qwen2's vocabulary with the default chunk: the value and dh against a
 * double reference, some rows of dW, and the arena never holds anything
 * near the n x V logits. */
START_TEST(fused_realistic_vocab)
{
    const int64_t n = 16, d = 32, V = 151936;
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t sh[2] = {n, d}, sw[2] = {V, d};
    dvl_tensor *h = dvl_params_add(p, "h", 2, sh, true, &err);
    dvl_tensor *w = dvl_params_add(p, "lm_head.weight", 2, sw, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    tu_randn(h, 100, 1.0f);
    tu_randn(w, 101, 0.3f);
    int32_t lab[16];
    float wt[16];
    random_labels(lab, wt, n, V, 5, 102);
    lab[0] = (int32_t)(V - 1); /* the last, partial chunk */

    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    const size_t before = dvl_arena_used(ctx);
    dvl_tensor *loss = dvl_linear_cross_entropy(ctx, h, w, lab, wt, 0);
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(dvl_backward(ctx, loss), 0);
    const size_t used = dvl_arena_used(ctx) - before, logits_bytes = (size_t)(n * V) * 4;
    ck_assert_msg(used * 16 < logits_bytes, "arena grew by %zu bytes (logits would be %zu)", used,
                  logits_bytes);

    /* Per row: logits in double, lse, then dh_i = sum_j dz_ij W_j. */
    const float *H = dvl_f32(h), *W = dvl_f32(w);
    double *zi = malloc((size_t)V * sizeof *zi), *lse = calloc((size_t)n, sizeof *lse);
    double *dh = calloc((size_t)(n * d), sizeof *dh);
    double want = 0;
    for (int64_t i = 0; i < n; i++) {
        if (lab[i] == DVL_IGNORE_INDEX)
            continue;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < V; j++) {
            double a = 0;
            for (int64_t k = 0; k < d; k++)
                a += (double)H[i * d + k] * W[j * d + k];
            zi[j] = a;
            m = fmax(m, a);
        }
        for (int64_t j = 0; j < V; j++)
            s += exp(zi[j] - m);
        lse[i] = m + log(s);
        want += wt[i] * (lse[i] - zi[lab[i]]);
        for (int64_t j = 0; j < V; j++) {
            const double dz = wt[i] * (exp(zi[j] - lse[i]) - (j == lab[i]));
            for (int64_t k = 0; k < d; k++)
                dh[i * d + k] += dz * W[j * d + k];
        }
    }
    const float got = dvl_f32(loss)[0];
    ck_assert_msg(fabs(got - want) <= 1e-6 * want, "loss %.9g want %.9g", got, want);
    ck_assert_msg(rel_err(h->grad, dh, n * d) <= 1e-5, "dh off by %g",
                  rel_err(h->grad, dh, n * d));
    /* dW rows: every label row plus a few others, dW_j = sum_i dz_ij h_i. */
    int32_t rows[24];
    int nr = 0;
    for (int64_t i = 0; i < n; i++)
        if (lab[i] != DVL_IGNORE_INDEX)
            rows[nr++] = lab[i];
    rows[nr++] = 0;
    rows[nr++] = 4095;
    rows[nr++] = 4096;
    rows[nr++] = 77777;
    for (int r = 0; r < nr; r++) {
        const int64_t j = rows[r];
        double ref[32] = {0}, scale = 0;
        for (int64_t i = 0; i < n; i++) {
            if (lab[i] == DVL_IGNORE_INDEX)
                continue;
            double a = 0;
            for (int64_t k = 0; k < d; k++)
                a += (double)H[i * d + k] * W[j * d + k];
            const double dz = wt[i] * (exp(a - lse[i]) - (j == lab[i]));
            for (int64_t k = 0; k < d; k++)
                ref[k] += dz * H[i * d + k];
        }
        for (int64_t k = 0; k < d; k++)
            scale = fmax(scale, fabs(ref[k]));
        for (int64_t k = 0; k < d; k++)
            ck_assert_msg(fabs(w->grad[j * d + k] - ref[k]) <= 1e-5 * scale + 1e-9,
                          "dW[%lld][%lld] = %g want %g", (long long)j, (long long)k,
                          w->grad[j * d + k], ref[k]);
    }
    free(zi);
    free(lse);
    free(dh);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cross_entropy");
    TCase *tc = tcase_create("cross_entropy");
    tcase_add_test(tc, xent_matches_double_reference);
    tcase_add_test(tc, xent_large_logits);
    tcase_add_test(tc, fused_matches_unfused);
    tcase_add_test(tc, fused_large_logits);
    tcase_add_test(tc, xent_gradcheck);
    tcase_add_test(tc, fused_gradcheck);
    tcase_add_test(tc, fused_frozen_inputs_and_accumulation);
    tcase_add_test(tc, all_rows_ignored);
    tcase_add_test(tc, thread_count_independent);
    tcase_add_test(tc, errors_name_the_culprit);
    tcase_add_test(tc, fused_realistic_vocab);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
