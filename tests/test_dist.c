/* dist on one process (MPI's singleton mode, no mpirun): the hash, bucket
 * boundaries, the order buckets start in whatever order parameters are
 * reported, error paths, and the world-of-one collectives. The 3-rank
 * behaviour is tests/mpi_dist.c (test dist_mpi).
 *
 * MPI may be initialised only once per process, so this suite runs its
 * tests in one process (no fork) between one init and one finalize. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "dist/dist.h"
#include "util.h"

static dvl_dist D;

/* a[5] b[3,7] c[4] (frozen) d[40] e[2,9] f[100]: gradient slots (rounded to
 * 16 floats) a 0..16, b 16..48, d 48..96, e 96..128, f 128..240. */
static const tu_pspec SPEC[] = {
    {"a", 1, {5}, true},      {"b", 2, {3, 7}, true}, {"c", 1, {4}, false},
    {"d", 1, {40}, true},     {"e", 2, {2, 9}, true}, {"f", 1, {100}, true},
};
#define NSPEC 6

START_TEST(init_world_of_one)
{
    ck_assert_int_eq(D.rank, 0);
    ck_assert_int_eq(D.world, 1);
    ck_assert_int_eq(D.local_rank, 0);
    ck_assert_int_eq(D.local_world, 1);
    ck_assert(D.owns_mpi);
    ck_assert(D.comm != MPI_COMM_NULL);
}
END_TEST

/* Reference values from libxxhash 0.8.1 (XXH64) for bytes (i * 131 + 7) mod 256. */
START_TEST(xxh64_reference)
{
    unsigned char b[1000];
    for (int i = 0; i < 1000; i++)
        b[i] = (unsigned char)(i * 131 + 7);
    static const struct {
        size_t n;
        uint64_t seed, h;
    } v[] = {
        {0, 0, 0xef46db3751d8e999ULL},      {3, 0, 0xbed43740ee6332bbULL},
        {32, 0, 0x07f7b8e3bc5d6e25ULL},     {33, 0, 0x09f85eeb4e1cbe9fULL},
        {1000, 0, 0x0bf0bdbcc82eb373ULL},   {0, 12345, 0x95584af7701f808dULL},
        {3, 12345, 0xb6b19aedc2948346ULL},  {32, 12345, 0xf3a05319bc5e3718ULL},
        {33, 12345, 0x16b78ac8c6986979ULL}, {1000, 12345, 0xfbc39d8f021fda77ULL},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        ck_assert_msg(dvl_xxh64(b, v[i].n, v[i].seed) == v[i].h, "n %zu seed %llu", v[i].n,
                      (unsigned long long)v[i].seed);
}
END_TEST

START_TEST(hash_detects_changes)
{
    /* 3.5 MiB: four chunks, the last one partial. */
    size_t n = (size_t)7 << 19;
    unsigned char *b = malloc(n);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 2654435761u >> 13);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    uint64_t h1 = dvl_hash64(b, n);
    omp_set_num_threads(2);
    uint64_t h2 = dvl_hash64(b, n);
    omp_set_num_threads(threads);
    ck_assert_msg(h1 == h2, "hash depends on the thread count");
    /* Any one bit, anywhere. */
    const size_t at[] = {0, 1, 4095, (size_t)1 << 20, ((size_t)3 << 20) + 17, n - 1};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++)
        for (int bit = 0; bit < 8; bit += 7) {
            b[at[k]] ^= (unsigned char)(1 << bit);
            ck_assert_msg(dvl_hash64(b, n) != h1, "flip of bit %d at %zu undetected", bit, at[k]);
            b[at[k]] ^= (unsigned char)(1 << bit);
        }
    /* Two sign flips (a weak word hash cancels them) and swapped chunks. */
    float *f = (float *)b;
    f[3] = -f[3];
    f[1000] = -f[1000];
    ck_assert(dvl_hash64(b, n) != h1);
    f[3] = -f[3];
    f[1000] = -f[1000];
    unsigned char *tmp = malloc((size_t)1 << 20);
    memcpy(tmp, b, (size_t)1 << 20);
    memcpy(b, b + ((size_t)1 << 20), (size_t)1 << 20);
    memcpy(b + ((size_t)1 << 20), tmp, (size_t)1 << 20);
    ck_assert(dvl_hash64(b, n) != h1);
    memcpy(b + ((size_t)1 << 20), b, (size_t)1 << 20);
    memcpy(b, tmp, (size_t)1 << 20);
    ck_assert(dvl_hash64(b, n) == h1);
    /* The length counts: a prefix with the same bytes hashes apart. */
    ck_assert(dvl_hash64(b, n - 1) != h1);
    ck_assert(dvl_hash64(b, 0) != dvl_hash64(b, 1));
    free(tmp);
    free(b);
}
END_TEST

static void expect_bucket(dvl_dist_grad_sync *s, int b, int first, int last, int64_t off,
                          int64_t count)
{
    int f, l;
    int64_t o, c;
    dvl_dist_grad_sync_bucket(s, b, &f, &l, &o, &c);
    ck_assert_msg(f == first && l == last && o == off && c == count,
                  "bucket %d: params %d..%d, grad [%lld, +%lld); expected %d..%d [%lld, +%lld)", b,
                  f, l, (long long)o, (long long)c, first, last, (long long)off, (long long)count);
}

START_TEST(bucket_boundaries)
{
    dvl_params *p = tu_make_params(SPEC, NSPEC, 1, 1.0f);
    ck_assert_int_eq(p->numel_grad, 240);
    dvl_err err = {0};
    /* 64 floats a bucket: f alone (larger than a bucket), e, d, then a+b. */
    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new(&D, p, 64 * sizeof(float), &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_dist_grad_sync_buckets(s), 4);
    expect_bucket(s, 0, 5, 5, 128, 112);
    expect_bucket(s, 1, 4, 4, 96, 32);
    expect_bucket(s, 2, 3, 3, 48, 48);
    expect_bucket(s, 3, 0, 1, 0, 48);
    dvl_dist_grad_sync_free(s);
    /* 80 floats: e+f would be 144, so f alone; then d+e (80) fits exactly. */
    s = dvl_dist_grad_sync_new(&D, p, 80 * sizeof(float), &err);
    ck_assert_int_eq(dvl_dist_grad_sync_buckets(s), 3);
    expect_bucket(s, 0, 5, 5, 128, 112);
    expect_bucket(s, 1, 3, 4, 48, 80);
    expect_bucket(s, 2, 0, 1, 0, 48);
    dvl_dist_grad_sync_free(s);
    /* 25 MiB: one bucket over everything, the frozen c skipped. */
    s = dvl_dist_grad_sync_new(&D, p, 25 << 20, &err);
    ck_assert_int_eq(dvl_dist_grad_sync_buckets(s), 1);
    expect_bucket(s, 0, 0, 5, 0, 240);
    dvl_dist_grad_sync_free(s);
    dvl_params_free(p);
}
END_TEST

START_TEST(buckets_start_in_order)
{
    dvl_params *p = tu_make_params(SPEC, NSPEC, 2, 1.0f);
    dvl_err err = {0};
    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new(&D, p, 64 * sizeof(float), &err);
    for (int64_t i = 0; i < p->numel_grad; i++)
        p->grad[i] = (float)i * 0.25f - 7.0f;
    float *before = malloc((size_t)p->numel_grad * sizeof(float));
    memcpy(before, p->grad, (size_t)p->numel_grad * sizeof(float));
    dvl_tensor *a = tu_param(p, "a"), *b = tu_param(p, "b"), *d = tu_param(p, "d"),
               *e = tu_param(p, "e"), *f = tu_param(p, "f");
    for (int step = 0; step < 2; step++) {
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 0);
        ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &f, 1, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 1); /* bucket 0 = f */
        ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &a, 1, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 1); /* bucket 3 still lacks b */
        /* d completes bucket 2, which must wait for bucket 1. */
        ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &d, 1, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 1);
        dvl_tensor *both[2] = {e, f}; /* f again: harmless */
        ck_assert_int_eq(dvl_dist_grad_sync_ready(s, both, 2, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 3);
        /* A view of b counts as b. */
        int64_t flat[1] = {21};
        dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
        dvl_tensor *bv = dvl_reshape(ctx, b, 1, flat);
        ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &bv, 1, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 4);
        dvl_ctx_free(ctx);
        ck_assert_int_eq(dvl_dist_grad_sync_finish(s, &err), DVL_OK);
        ck_assert_int_eq(dvl_dist_grad_sync_started(s), 0);
        /* A world of one: the mean is the gradient itself, bit for bit. */
        ck_assert(memcmp(before, p->grad, (size_t)p->numel_grad * sizeof(float)) == 0);
    }
    /* finish alone starts everything. */
    ck_assert_int_eq(dvl_dist_grad_sync_finish(s, &err), DVL_OK);
    ck_assert(memcmp(before, p->grad, (size_t)p->numel_grad * sizeof(float)) == 0);
    free(before);
    dvl_dist_grad_sync_free(s);
    dvl_params_free(p);
}
END_TEST

START_TEST(grad_sync_errors)
{
    dvl_params *p = tu_make_params(SPEC, NSPEC, 3, 1.0f);
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_dist_grad_sync_new(&D, p, 0, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "bucket size 0"));
    dvl_params *q = dvl_params_new();
    ck_assert_ptr_null(dvl_dist_grad_sync_new(&D, q, 1024, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "not allocated"));
    dvl_params_free(q);

    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new(&D, p, 64 * sizeof(float), &err);
    /* A frozen parameter, a parameter of another store, an activation. */
    dvl_tensor *c = tu_param(p, "c");
    ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &c, 1, &err), DVL_EINVAL);
    ck_assert_str_eq(err.msg, "dvl_dist_grad_sync_ready: c is not a trainable parameter of the store");
    dvl_params *other = tu_make_params(SPEC, NSPEC, 4, 1.0f);
    dvl_tensor *oa = tu_param(other, "a");
    ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &oa, 1, &err), DVL_EINVAL);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_tensor *act = dvl_new2(ctx, 2, 2);
    ck_assert_int_eq(dvl_dist_grad_sync_ready(s, &act, 1, &err), DVL_EINVAL);
    dvl_ctx_free(ctx);
    dvl_params_free(other);
    /* Out of order. */
    ck_assert_int_eq(dvl_dist_grad_sync_start(s, 1, &err), DVL_EINVAL);
    ck_assert_str_eq(err.msg,
                     "dvl_dist_grad_sync_start: bucket 1 started out of order (next is 0 of 4)");
    ck_assert_int_eq(dvl_dist_grad_sync_start(s, 0, &err), DVL_OK);
    ck_assert_int_eq(dvl_dist_grad_sync_start(s, 0, &err), DVL_EINVAL);
    ck_assert_int_eq(dvl_dist_grad_sync_finish(s, &err), DVL_OK);
    dvl_dist_grad_sync_free(s);
    dvl_params_free(p);
}
END_TEST

START_TEST(collectives_world_of_one)
{
    dvl_params *p = tu_make_params(SPEC, NSPEC, 5, 1.0f);
    dvl_err err = {0};
    float *copy = malloc((size_t)p->numel * sizeof(float));
    memcpy(copy, p->data, (size_t)p->numel * sizeof(float));
    ck_assert_int_eq(dvl_dist_bcast_params(&D, p, &err), DVL_OK);
    ck_assert(memcmp(copy, p->data, (size_t)p->numel * sizeof(float)) == 0);
    ck_assert_int_eq(dvl_dist_check_params(&D, p, &err), DVL_OK);
    free(copy);
    dvl_params_free(p);

    double x[3] = {1.5, -2.0, 1e300};
    for (int op = DVL_DIST_SUM; op <= DVL_DIST_MIN; op++) {
        ck_assert_int_eq(dvl_dist_allreduce_f64(&D, x, 3, (dvl_dist_op)op, &err), DVL_OK);
        ck_assert(x[0] == 1.5 && x[1] == -2.0 && x[2] == 1e300);
    }
    int64_t y[2] = {INT64_C(1) << 60, -3};
    ck_assert_int_eq(dvl_dist_allreduce_i64(&D, y, 2, DVL_DIST_SUM, &err), DVL_OK);
    ck_assert(y[0] == INT64_C(1) << 60 && y[1] == -3);
    bool any = false;
    ck_assert_int_eq(dvl_dist_any(&D, true, &any, &err), DVL_OK);
    ck_assert(any);
    ck_assert_int_eq(dvl_dist_any(&D, false, &any, &err), DVL_OK);
    ck_assert(!any);
    ck_assert_int_eq(dvl_dist_barrier(&D, &err), DVL_OK);
    char buf[5] = "abcd";
    ck_assert_int_eq(dvl_dist_bcast(&D, buf, 4, 0, &err), DVL_OK);
    ck_assert_str_eq(buf, "abcd");
}
END_TEST

/* ZeRO-1 on one rank: one shard, the whole buffer; the sync leaves the
 * gradient as it is (the mean of one), the gather leaves the weights, and
 * the optimizer gather copies the one shard. */
START_TEST(zero1_world_of_one)
{
    dvl_params *p = tu_make_params(SPEC, NSPEC, 6, 1.0f);
    dvl_err err = {0};
    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new_zero1(&D, p, 64, &err);
    ck_assert_ptr_nonnull(s);
    int64_t lo, hi;
    ck_assert(dvl_dist_grad_sync_shard(s, &lo, &hi));
    ck_assert(lo == 0 && hi == p->numel_grad);
    for (int64_t j = 0; j < p->numel_grad; j++)
        p->grad[j] = (float)j - 7.5f;
    ck_assert_int_eq(dvl_dist_grad_sync_finish(s, &err), DVL_OK);
    for (int64_t j = 0; j < p->numel_grad; j++)
        ck_assert(p->grad[j] == (float)j - 7.5f);
    float *copy = malloc((size_t)p->numel * sizeof(float));
    memcpy(copy, p->data, (size_t)p->numel * sizeof(float));
    ck_assert_int_eq(dvl_dist_grad_sync_gather_params(s, &err), DVL_OK);
    ck_assert(memcmp(copy, p->data, (size_t)p->numel * sizeof(float)) == 0);
    free(copy);
    dvl_adamw *shard = dvl_adamw_new_shard(p, lo, hi, 0.9f, 0.999f, 1e-8f, 0, &err);
    dvl_adamw *full = dvl_adamw_new(p, 0.9f, 0.999f, 1e-8f, 0, &err);
    for (int64_t j = 0; j < p->numel_grad; j++)
        shard->m[j] = (float)j, shard->v[j] = (float)-j;
    shard->step = 3;
    ck_assert_int_eq(dvl_dist_gather_adamw(&D, shard, full, 0, &err), DVL_OK);
    ck_assert(memcmp(full->m, shard->m, (size_t)p->numel_grad * sizeof(float)) == 0);
    ck_assert(memcmp(full->v, shard->v, (size_t)p->numel_grad * sizeof(float)) == 0);
    ck_assert_int_eq(full->step, 3);
    /* The root must bring a whole host optimizer. */
    ck_assert_int_eq(dvl_dist_gather_adamw(&D, shard, NULL, 0, &err), DVL_EINVAL);
    ck_assert_msg(strstr(err.msg, "whole host optimizer"), "%s", err.msg);
    dvl_adamw_free(shard);
    dvl_adamw_free(full);
    dvl_dist_grad_sync_free(s);
    dvl_params_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("dist");
    tcase_add_test(tc, init_world_of_one);
    tcase_add_test(tc, xxh64_reference);
    tcase_add_test(tc, hash_detects_changes);
    tcase_add_test(tc, bucket_boundaries);
    tcase_add_test(tc, buckets_start_in_order);
    tcase_add_test(tc, grad_sync_errors);
    tcase_add_test(tc, collectives_world_of_one);
    tcase_add_test(tc, zero1_world_of_one);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    dvl_err err = {0};
    if (dvl_dist_init(&argc, &argv, &D, &err)) {
        fprintf(stderr, "dvl_dist_init: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (dvl_dist_finalize(&D, &err)) {
        fprintf(stderr, "dvl_dist_finalize: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
