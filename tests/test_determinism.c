/* Determinism: the same seed gives bit-identical losses, gradients and
 * weights; the thread count changes nothing beyond BLAS rounding; a
 * steady-state training step performs no allocation. */
#include <math.h>
#include <omp.h>
#include <cblas.h>

#include "optim/adamw.h"
#include "toy.h"

/* Every allocation from code linked statically into this test (libdvl and
 * the test itself; not shared libraries like OpenBLAS) goes through these
 * wrappers (-Wl,--wrap=...), which count them. */
static long n_allocs;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t s);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n) { n_allocs++; return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t s) { n_allocs++; return __real_calloc(n, s); }
void *__wrap_realloc(void *p, size_t n) { n_allocs++; return __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { n_allocs++; return __real_aligned_alloc(a, n); }
int __wrap_posix_memalign(void **p, size_t a, size_t n) { n_allocs++; return __real_posix_memalign(p, a, n); }
char *__wrap_strdup(const char *s) { n_allocs++; return __real_strdup(s); }

static const toy_cfg CFG = {.vocab = 31, .dim = 32, .layers = 2, .heads = 4, .kv_heads = 2,
                            .ffn = 48, .seq = 16, .batch = 3};

/* Three AdamW steps from seed; returns the parameter store. */
static dvl_params *train(uint64_t seed, float *losses, int64_t *mallocs_after_warmup,
                         long *allocs_after_warmup)
{
    dvl_params *p = toy_params(&CFG, seed);
    toy_batch b = toy_batch_new(&CFG, seed + 1);
    dvl_err err = {0};
    dvl_adamw *o = dvl_adamw_new(p, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    int64_t warm = 0;
    long warm_allocs = 0;
    for (int step = 0; step < 4; step++) {
        if (step == 1) {
            warm = dvl_arena_mallocs(ctx);
            warm_allocs = n_allocs;
        }
        dvl_ctx_reset(ctx);
        dvl_params_zero_grad(p);
        /* No ck_assert inside the loop: Check allocates in its assertions. */
        dvl_tensor *l = toy_loss(ctx, &CFG, p, &b);
        if (!l || dvl_backward(ctx, l))
            break;
        losses[step] = dvl_f32(l)[0];
        dvl_adamw_step(o, 1e-2f, 1.0f);
    }
    long allocs = n_allocs - warm_allocs;
    ck_assert_msg(dvl_ctx_ok(ctx), "%s", dvl_ctx_err(ctx)->msg);
    if (mallocs_after_warmup)
        *mallocs_after_warmup = dvl_arena_mallocs(ctx) - warm;
    if (allocs_after_warmup)
        *allocs_after_warmup = allocs;
    dvl_ctx_free(ctx);
    dvl_adamw_free(o);
    toy_batch_free(&b);
    return p;
}

START_TEST(same_seed_bit_identical)
{
    float la[4], lb[4];
    dvl_params *a = train(5, la, NULL, NULL);
    dvl_params *b = train(5, lb, NULL, NULL);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_mem_eq(a->data, b->data, (size_t)a->numel * sizeof(float));
    ck_assert_mem_eq(a->grad, b->grad, (size_t)a->numel_grad * sizeof(float));
    /* And the run actually trains: the loss moved. */
    ck_assert_float_ne(la[0], la[3]);
    dvl_params_free(a);
    dvl_params_free(b);
}
END_TEST

START_TEST(thread_count_does_not_matter)
{
    float l1[4], l2[4];
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    dvl_params *a = train(7, l1, NULL, NULL);
    omp_set_num_threads(2);
    openblas_set_num_threads(2);
    dvl_params *b = train(7, l2, NULL, NULL);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(l1[i], l2[i], 1e-5f * fabsf(l1[i]));
    ck_assert_double_le(tu_max_abs_diff(a->data, b->data, a->numel), 1e-5);
    dvl_params_free(a);
    dvl_params_free(b);
}
END_TEST

START_TEST(steady_state_step_allocates_nothing)
{
    float l[4];
    int64_t extra = -1;
    long allocs = -1;
    long before = n_allocs;
    dvl_params *p = train(3, l, &extra, &allocs);
    /* The wrappers do see libdvl's allocations (the store, the first step)... */
    ck_assert_int_gt(n_allocs - before, 10);
    /* ...and steps 2-4 (forward, backward, AdamW) make none. */
    ck_assert_int_eq(extra, 0);
    ck_assert_int_eq(allocs, 0);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("determinism");
    TCase *tc = tcase_create("determinism");
    tcase_add_test(tc, same_seed_bit_identical);
    tcase_add_test(tc, thread_count_does_not_matter);
    tcase_add_test(tc, steady_state_step_allocates_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
