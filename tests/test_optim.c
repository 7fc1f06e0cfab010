/* AdamW and gradient utilities against the torch.optim.AdamW formulas in
 * double precision. */
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
        dvl_adamw_step(o, lr);
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
    a->grad[9999] = INFINITY;
    ck_assert(dvl_grad_nonfinite(p));
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, adamw_matches_reference);
    tcase_add_test(tc, grad_norm_scale_nonfinite);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
