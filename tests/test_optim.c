/* AdamW and gradient utilities against the torch.optim.AdamW formulas in
 * double precision; ZeRO-1's shard arithmetic and sharded step against the
 * whole step, bit for bit. */
#include <float.h>
#include <malloc.h>
#include <math.h>
#include <string.h>

#include "optim/adamw.h"
#include "util.h"

START_TEST(adamw_matches_reference)
{
    tu_pspec s[3] = {{"lm.w", 2, {7, 5}, true}, {"lm.b", 1, {5}, true},
                     {"vision.f", 1, {3}, false}};
    dvl_params *p = tu_make_params(s, 3, 1, 1.0f);
    dvl_tensor *w = p->t[0], *b = p->t[1], *f = p->t[2];
    dvl_err err = {0};
    float f0[3];
    memcpy(f0, f->data, sizeof f0);

    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    dvl_adamw *o = dvl_adamw_new(p, b1, b2, eps, wd, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(dvl_adamw_set_group(o, "lm.w", 0.5f, true), 1);

    /* Reference state in double. */
    double rw[35], rb[5], mw[35] = {0}, vw[35] = {0}, mb[5] = {0}, vb[5] = {0};
    for (int j = 0; j < 35; j++) rw[j] = dvl_f32(w)[j];
    for (int j = 0; j < 5; j++) rb[j] = dvl_f32(b)[j];
    dvl_rng r;
    dvl_rng_seed(&r, 9);
    for (int step = 1; step <= 5; step++) {
        dvl_rng_fill_normal(&r, w->grad, 35, 1.0f);
        dvl_rng_fill_normal(&r, b->grad, 5, 1.0f);
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        for (int j = 0; j < 35; j++) { /* group lr 0.5 * lr, decayed */
            double plr = 0.5 * lr, g = w->grad[j];
            rw[j] *= 1 - plr * wd;
            mw[j] = b1 * mw[j] + (1 - b1) * g;
            vw[j] = b2 * vw[j] + (1 - b2) * g * g;
            rw[j] -= plr / bc1 * mw[j] / (sqrt(vw[j]) / sqrt(bc2) + eps);
        }
        for (int j = 0; j < 5; j++) { /* 1-D: no decay */
            double g = b->grad[j];
            mb[j] = b1 * mb[j] + (1 - b1) * g;
            vb[j] = b2 * vb[j] + (1 - b2) * g * g;
            rb[j] -= lr / bc1 * mb[j] / (sqrt(vb[j]) / sqrt(bc2) + eps);
        }
        dvl_adamw_step(o, lr, 1.0f);
    }
    for (int j = 0; j < 35; j++)
        ck_assert_double_eq_tol(dvl_f32(w)[j], rw[j], 1e-5);
    for (int j = 0; j < 5; j++)
        ck_assert_double_eq_tol(dvl_f32(b)[j], rb[j], 1e-5);
    ck_assert_mem_eq(f->data, f0, sizeof f0); /* frozen: untouched */
    ck_assert_int_eq(o->step, 5);
    dvl_adamw_free(o);
    dvl_params_free(p);
}
END_TEST

START_TEST(grad_norm_scale_nonfinite)
{
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t s[1] = {10000};
    dvl_tensor *a = dvl_params_add(p, "a", 1, s, true, &err);
    ck_assert_int_eq(dvl_params_alloc(p, &err), 0);
    double ref = 0;
    for (int j = 0; j < 10000; j++) {
        a->grad[j] = (float)((j % 7) - 3) * 0.25f;
        ref += (double)a->grad[j] * a->grad[j];
    }
    ck_assert_double_eq_tol(dvl_grad_norm(p), sqrt(ref), 1e-9);
    dvl_grad_scale(p, 2.0f);
    ck_assert_double_eq_tol(dvl_grad_norm(p), 2 * sqrt(ref), 1e-9);
    ck_assert(!dvl_grad_nonfinite(p));
    a->grad[9999] = NAN;
    ck_assert(dvl_grad_nonfinite(p));
    ck_assert(!isfinite(dvl_grad_norm(p)));
    a->grad[9999] = INFINITY;
    ck_assert(dvl_grad_nonfinite(p));
    ck_assert(!isfinite(dvl_grad_norm(p)));
    /* The trainer skips a step on a non-finite norm alone: the double sum
     * of squares stays finite while every element is, even all at the
     * largest float. */
    for (int j = 0; j < 10000; j++)
        a->grad[j] = j % 2 ? FLT_MAX : -FLT_MAX;
    ck_assert(!dvl_grad_nonfinite(p));
    ck_assert(isfinite(dvl_grad_norm(p)));
    dvl_params_free(p);
}
END_TEST

/* The partition: contiguous, in order, covering [0, n) exactly, every
 * shard but the trailing ones of the same size S, a multiple of 16, the
 * smallest such S with world S >= n. */
START_TEST(zero1_shard_ranges)
{
    const int64_t ns[] = {0, 1, 15, 16, 17, 256, 1000, 143264, 7615616000LL};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
        for (int world = 1; world <= 9; world++) {
            int64_t n = ns[k], prev = 0, s = 0;
            for (int r = 0; r < world; r++) {
                int64_t lo, hi;
                dvl_adamw_shard(n, world, r, &lo, &hi);
                ck_assert_msg(lo == prev && lo <= hi && hi <= n,
                              "n %lld world %d rank %d: [%lld, %lld) after %lld", (long long)n,
                              world, r, (long long)lo, (long long)hi, (long long)prev);
                if (r == 0)
                    s = hi - lo;
                /* Equal sizes until the buffer runs out. */
                ck_assert(hi - lo == s || hi == n);
                ck_assert(lo % 16 == 0 || lo == n);
                prev = hi;
            }
            ck_assert_int_eq(prev, n);
            ck_assert(s % 16 == 0 || s == n);
            ck_assert(s * world >= n && (n == 0 || (s - 16) * world < n));
        }
    /* 256 over 3: S = ceil(256 / 3) = 86 rounded up to 96. */
    int64_t lo, hi;
    dvl_adamw_shard(256, 3, 2, &lo, &hi);
    ck_assert(lo == 192 && hi == 256);
    /* 256 over 5: S = 64, so the fifth shard is empty. */
    dvl_adamw_shard(256, 5, 4, &lo, &hi);
    ck_assert(lo == 256 && hi == 256);
}
END_TEST

/* Gradient slots (16-float rounding): vision.w [0, 35) of 48, lm.b [48, 53)
 * of 16, lm.w [64, 207) of 144, lm.n [208, 241) of 48: numel_grad 256. The
 * frozen parameters sit between trainable ones in the data buffer only. */
static const tu_pspec ZSPEC[] = {
    {"vision.w", 2, {7, 5}, true}, {"frozen.a", 1, {9}, false}, {"lm.b", 1, {5}, true},
    {"frozen.b", 2, {3, 3}, false}, {"lm.w", 2, {13, 11}, true}, {"lm.n", 1, {33}, true},
};
#define NZSPEC 6

static dvl_adamw *zero1_opt(dvl_params *p, int64_t lo, int64_t hi)
{
    dvl_err err = {0};
    dvl_adamw *o = dvl_adamw_new_shard(p, lo, hi, 0.9f, 0.95f, 1e-6f, 0.1f, &err);
    ck_assert_msg(o != NULL, "%s", err.msg);
    /* A group of its own: another lr, decay on although it is 2-D anyway;
     * and decay on for one 1-D parameter. */
    ck_assert_int_eq(dvl_adamw_set_group(o, "vision.", 0.25f, true), 1);
    ck_assert_int_eq(dvl_adamw_set_group(o, "lm.n", 1.0f, true), 1);
    return o;
}

/* Every shard's optimizer stepping its part of a store equals the whole
 * optimizer stepping a twin store, bit for bit (the per-element maths is
 * the same), for the partitions of 1..5 ranks and one with boundaries
 * inside vision.w, lm.b and lm.w (twice); the moments of each shard are the
 * whole optimizer's, the frozen parameters untouched, and a shard
 * allocates only its part. */
START_TEST(zero1_sharded_step_equals_full_step)
{
    const int64_t odd[] = {0, 17, 50, 100, 201, 256};
    for (int world = 1; world <= 6; world++) {
        dvl_params *a = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
        dvl_params *b = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
        ck_assert_int_eq(a->numel_grad, 256);
        ck_assert_mem_eq(a->data, b->data, (size_t)a->numel * sizeof(float));
        float frozen[32];
        memcpy(frozen, dvl_f32(a->t[3]), 9 * sizeof(float));
        dvl_adamw *full = zero1_opt(a, 0, a->numel_grad);
        /* world 6 stands for the odd partition (5 shards). */
        int shards = world == 6 ? 5 : world;
        dvl_adamw *part[6];
        for (int r = 0; r < shards; r++) {
            int64_t lo = odd[r], hi = odd[r + 1];
            if (world < 6)
                dvl_adamw_shard(b->numel_grad, world, r, &lo, &hi);
            part[r] = zero1_opt(b, lo, hi);
            /* The memory saving: m and v of the shard only. */
            size_t want = (size_t)(hi - lo) * sizeof(float);
            ck_assert_uint_eq(dvl_adamw_state_bytes(part[r]), 2 * want);
            ck_assert(malloc_usable_size(part[r]->m) >= want &&
                      malloc_usable_size(part[r]->m) < want + 64);
            ck_assert(malloc_usable_size(part[r]->v) >= want &&
                      malloc_usable_size(part[r]->v) < want + 64);
        }
        dvl_rng rng;
        dvl_rng_seed(&rng, 11);
        for (int step = 1; step <= 4; step++) {
            dvl_rng_fill_normal(&rng, a->grad, a->numel_grad, 1.0f);
            memcpy(b->grad, a->grad, (size_t)a->numel_grad * sizeof(float));
            dvl_adamw_step(full, 1e-2f, 1.0f);
            for (int r = 0; r < shards; r++)
                dvl_adamw_step(part[r], 1e-2f, 1.0f);
        }
        ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0,
                      "world %d: sharded step differs from the whole step", world);
        ck_assert_mem_eq(dvl_f32(b->t[3]), frozen, 9 * sizeof(float));
        for (int r = 0; r < shards; r++) {
            const dvl_adamw *o = part[r];
            size_t bytes = (size_t)(o->hi - o->lo) * sizeof(float);
            ck_assert_int_eq(o->step, 4);
            ck_assert(bytes == 0 || memcmp(o->m, full->m + o->lo, bytes) == 0);
            ck_assert(bytes == 0 || memcmp(o->v, full->v + o->lo, bytes) == 0);
            dvl_adamw_free(part[r]);
        }
        dvl_adamw_free(full);
        dvl_params_free(a);
        dvl_params_free(b);
    }
}
END_TEST

/* The clip factor inside the update (dvl_adamw_step's gscale) gives the
 * weights and moments of scaling the gradients first, to the bit, on a
 * whole optimizer and on a shard, and leaves the gradients unscaled. */
START_TEST(adamw_gscale_equals_scaled_gradients)
{
    dvl_params *a = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
    dvl_params *b = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
    dvl_adamw *oa[2] = {zero1_opt(a, 0, a->numel_grad), zero1_opt(a, 17, 201)};
    dvl_adamw *ob[2] = {zero1_opt(b, 0, b->numel_grad), zero1_opt(b, 17, 201)};
    dvl_rng rng;
    dvl_rng_seed(&rng, 5);
    const size_t gbytes = (size_t)a->numel_grad * sizeof(float);
    float *g = malloc(gbytes);
    ck_assert_ptr_nonnull(g);
    for (int step = 1; step <= 3; step++) {
        const float s = step == 2 ? 1.0f : 0.3f + 0.1f * (float)step;
        dvl_rng_fill_normal(&rng, g, a->numel_grad, 2.0f);
        for (int k = 0; k < 2; k++) {
            memcpy(a->grad, g, gbytes);
            memcpy(b->grad, g, gbytes);
            dvl_grad_scale(a, s);
            dvl_adamw_step(oa[k], 1e-2f, 1.0f);
            dvl_adamw_step(ob[k], 1e-2f, s);
            ck_assert_mem_eq(b->grad, g, gbytes);
        }
    }
    ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0,
                  "weights differ");
    for (int k = 0; k < 2; k++) {
        size_t bytes = (size_t)(oa[k]->hi - oa[k]->lo) * sizeof(float);
        ck_assert(memcmp(oa[k]->m, ob[k]->m, bytes) == 0 && memcmp(oa[k]->v, ob[k]->v, bytes) == 0);
        dvl_adamw_free(oa[k]), dvl_adamw_free(ob[k]);
    }
    /* not vacuous: a factor != 1 changes the update */
    dvl_params *c = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
    dvl_adamw *oc = zero1_opt(c, 0, c->numel_grad);
    memcpy(c->grad, g, gbytes);
    dvl_adamw_step(oc, 1e-2f, 1.0f);
    dvl_params *d = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
    dvl_adamw *od = zero1_opt(d, 0, d->numel_grad);
    memcpy(d->grad, g, gbytes);
    dvl_adamw_step(od, 1e-2f, 0.5f);
    ck_assert(memcmp(oc->v, od->v, gbytes) != 0);
    dvl_adamw_free(oc), dvl_adamw_free(od);
    dvl_params_free(c), dvl_params_free(d);
    free(g);
    dvl_params_free(a);
    dvl_params_free(b);
}
END_TEST

/* The shard-range gradient helpers against the whole-buffer ones, a shard
 * taking its part of a whole optimizer's state (resume), and the errors. */
START_TEST(zero1_ranges_and_state)
{
    dvl_params *p = tu_make_params(ZSPEC, NZSPEC, 5, 0.5f);
    dvl_rng rng;
    dvl_rng_seed(&rng, 3);
    dvl_rng_fill_normal(&rng, p->grad, p->numel_grad, 1.0f);
    double whole = dvl_grad_norm(p), sum = 0;
    for (int r = 0; r < 3; r++) {
        int64_t lo, hi;
        dvl_adamw_shard(p->numel_grad, 3, r, &lo, &hi);
        sum += dvl_grad_sumsq_range(p, lo, hi);
    }
    ck_assert_double_eq_tol(sqrt(sum), whole, 1e-12 * whole);
    ck_assert(dvl_grad_sumsq_range(p, 10, 10) == 0.0);
    float g[256];
    memcpy(g, p->grad, sizeof g);
    dvl_grad_scale_range(p, 17, 100, 0.5f);
    for (int j = 0; j < 256; j++)
        ck_assert(p->grad[j] == (j >= 17 && j < 100 ? g[j] * 0.5f : g[j]));
    p->grad[150] = NAN;
    ck_assert(dvl_grad_nonfinite_range(p, 100, 200));
    ck_assert(!dvl_grad_nonfinite_range(p, 0, 150));
    ck_assert(!dvl_grad_nonfinite_range(p, 151, 256));
    ck_assert(dvl_grad_nonfinite(p));

    /* Resume: a shard takes its slice of a whole optimizer's moments. */
    dvl_err err = {0};
    dvl_adamw *full = zero1_opt(p, 0, 256), *part = zero1_opt(p, 96, 192);
    for (int j = 0; j < 256; j++) {
        full->m[j] = (float)j;
        full->v[j] = (float)(2 * j);
    }
    full->step = 7;
    ck_assert_int_eq(dvl_adamw_copy_state(part, full, &err), DVL_OK);
    ck_assert_int_eq(part->step, 7);
    for (int j = 96; j < 192; j++)
        ck_assert(part->m[j - 96] == (float)j && part->v[j - 96] == (float)(2 * j));
    /* Not the other way: a shard does not hold a whole optimizer's state. */
    ck_assert_int_eq(dvl_adamw_copy_state(full, part, &err), DVL_EINVAL);
    ck_assert_msg(strstr(err.msg, "[0, 256)") && strstr(err.msg, "[96, 192)"), "%s", err.msg);
    ck_assert_ptr_null(dvl_adamw_new_shard(p, 10, 300, 0.9f, 0.999f, 1e-8f, 0, &err));
    ck_assert_msg(strstr(err.msg, "[10, 300)"), "%s", err.msg);
    ck_assert_ptr_null(dvl_adamw_new_shard(p, 20, 10, 0.9f, 0.999f, 1e-8f, 0, &err));
    dvl_adamw_free(full);
    dvl_adamw_free(part);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, adamw_matches_reference);
    tcase_add_test(tc, grad_norm_scale_nonfinite);
    tcase_add_test(tc, zero1_shard_ranges);
    tcase_add_test(tc, zero1_sharded_step_equals_full_step);
    tcase_add_test(tc, zero1_ranges_and_state);
    tcase_add_test(tc, adamw_gscale_equals_scaled_gradients);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
