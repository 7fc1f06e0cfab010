/* dist on several ranks (test dist_mpi: mpirun -np 3 mpi_dist): broadcast,
 * the bucketed gradient all-reduce against the exact mean, parameter
 * checksums (equal, and a planted difference named), scalar reductions and
 * the any-rank flag.
 *
 * Gradients are small integers, so their float sums are exact whatever
 * order MPI adds them in, and the mean must equal sum / world (one correctly
 * rounded division) bit for bit. Each rank reports its parameters to the
 * sync in its own order and grouping: the buckets must still start in the
 * same order everywhere, or MPI would pair up the wrong collectives.
 *
 * Rank 0 prints "N passed, M failed" over all ranks; every rank exits
 * non-zero when any check failed anywhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "dist/dist.h"

static dvl_dist D;
static int passed, failed;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (cond) {                                                                            \
            passed++;                                                                          \
        } else {                                                                               \
            failed++;                                                                          \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", D.rank, __FILE__, __LINE__,  \
                    #cond);                                                                    \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

/* A store: odd sizes, a frozen parameter in the middle, and one of 2M floats
 * (8 MiB: larger than the buckets, and than any eager MPI message). */
static dvl_params *make_store(void)
{
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[2];
        bool trainable;
    } spec[] = {
        {"embed", 2, {33, 7}, true}, {"l0.w", 2, {13, 13}, true}, {"l0.frozen", 1, {50}, false},
        {"l0.b", 1, {13}, true},     {"l1.w", 2, {1024, 2048}, true}, {"l1.b", 1, {5}, true},
        {"norm", 1, {1}, true},      {"head", 2, {7, 33}, true},
    };
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++)
        if (!dvl_params_add(p, spec[i].name, spec[i].ndim, spec[i].shape, spec[i].trainable, &err))
            return NULL;
    if (dvl_params_alloc(p, &err))
        return NULL;
    return p;
}

/* Rank r's gradient element i: an integer in [-500, 500]. */
static float grad_value(int r, int64_t i, int step)
{
    return (float)((i * 7 + r * 131 + step * 17) % 1001 - 500);
}

static void test_bcast_and_checksum(dvl_params *p)
{
    dvl_err err = {0};
    for (int64_t i = 0; i < p->numel; i++)
        p->data[i] = (float)(D.rank * 1000000 + i % 9973) * 0.5f;
    /* Before the broadcast the ranks differ, and the check says which. */
    int rc = dvl_dist_check_params(&D, p, &err);
    CHECK(rc == DVL_EINVAL, "check of differing params returned %d", rc);
    CHECK(strstr(err.msg, "parameters differ across ranks: 2 of 3 ranks (1, 2) differ from rank 0") !=
              NULL, "message: %s", err.msg);
    rc = dvl_dist_bcast_params(&D, p, &err);
    CHECK(rc == DVL_OK, "bcast: %s", err.msg);
    int bad = 0;
    for (int64_t i = 0; i < p->numel; i++)
        bad += p->data[i] != (float)(i % 9973) * 0.5f;
    CHECK(bad == 0, "%d elements differ from rank 0's after the broadcast", bad);
    rc = dvl_dist_check_params(&D, p, &err);
    CHECK(rc == DVL_OK, "check after bcast: %s", err.msg);
    /* One flipped bit on rank 2 only is caught, and named, on every rank. */
    if (D.rank == 2)
        p->data[p->numel / 2] = -p->data[p->numel / 2];
    rc = dvl_dist_check_params(&D, p, &err);
    CHECK(rc == DVL_EINVAL && strstr(err.msg, "1 of 3 ranks (2) differ from rank 0"),
          "planted difference: rc %d: %s", rc, err.msg);
    if (D.rank == 2)
        p->data[p->numel / 2] = -p->data[p->numel / 2];
    rc = dvl_dist_check_params(&D, p, &err);
    CHECK(rc == DVL_OK, "check after restoring: %s", err.msg);
    /* Bytes from another root. */
    char buf[16];
    snprintf(buf, sizeof buf, "from rank %d", D.rank);
    rc = dvl_dist_bcast(&D, buf, sizeof buf, 1, &err);
    CHECK(rc == DVL_OK && strcmp(buf, "from rank 1") == 0, "bcast from rank 1: %s", buf);
}

static void test_grad_sync(dvl_params *p, size_t bucket_bytes)
{
    dvl_err err = {0};
    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new(&D, p, bucket_bytes, &err);
    CHECK(s != NULL, "grad_sync_new: %s", err.msg);
    if (!s)
        return;
    int nb = dvl_dist_grad_sync_buckets(s);
    /* Bucket boundaries are the same on every rank. */
    uint64_t h = 0;
    for (int b = 0; b < nb; b++) {
        int64_t off, count;
        dvl_dist_grad_sync_bucket(s, b, NULL, NULL, &off, &count);
        h = h * 1000003u + (uint64_t)off * 31u + (uint64_t)count;
    }
    int64_t layout[2] = {nb, (int64_t)(h >> 1)};
    int64_t lo[2] = {layout[0], layout[1]}, hi[2] = {layout[0], layout[1]};
    dvl_dist_allreduce_i64(&D, lo, 2, DVL_DIST_MIN, &err);
    dvl_dist_allreduce_i64(&D, hi, 2, DVL_DIST_MAX, &err);
    CHECK(lo[0] == hi[0] && lo[1] == hi[1], "bucket layouts differ across ranks");

    /* Trainable parameters, reported in a rank-dependent order and grouping. */
    dvl_tensor *tr[16];
    int nt = 0;
    for (int i = 0; i < p->n; i++)
        if (p->t[i]->requires_grad)
            tr[nt++] = p->t[i];
    dvl_rng rng;
    dvl_rng_seed(&rng, 1000 + (uint64_t)D.rank);
    for (int step = 0; step < 3; step++) {
        /* Padding in the gradient buffer stays zero, as the store keeps it. */
        memset(p->grad, 0, (size_t)p->numel_grad * sizeof(float));
        for (int i = 0; i < p->n; i++) {
            if (p->grad_off[i] < 0)
                continue;
            int64_t n = dvl_numel(p->t[i]);
            for (int64_t k = 0; k < n; k++)
                p->t[i]->grad[k] = grad_value(D.rank, p->grad_off[i] + k, step);
        }
        for (int i = nt - 1; i > 0; i--) { /* shuffle */
            int j = (int)(dvl_rng_u64(&rng) % (uint64_t)(i + 1));
            dvl_tensor *t = tr[i];
            tr[i] = tr[j];
            tr[j] = t;
        }
        for (int i = 0; i < nt;) {
            int k = 1 + (int)(dvl_rng_u64(&rng) % 3);
            if (i + k > nt)
                k = nt - i;
            int rc = dvl_dist_grad_sync_ready(s, tr + i, k, &err);
            CHECK(rc == DVL_OK, "ready: %s", err.msg);
            i += k;
        }
        CHECK(dvl_dist_grad_sync_started(s) == nb, "%d of %d buckets started after all reports",
              dvl_dist_grad_sync_started(s), nb);
        int rc = dvl_dist_grad_sync_finish(s, &err);
        CHECK(rc == DVL_OK, "finish: %s", err.msg);
        int64_t bad = 0, first_bad = -1;
        for (int i = 0; i < p->n; i++) {
            if (p->grad_off[i] < 0)
                continue;
            int64_t n = dvl_numel(p->t[i]);
            for (int64_t k = 0; k < n; k++) {
                int64_t g = p->grad_off[i] + k;
                float sum = 0;
                for (int r = 0; r < D.world; r++)
                    sum += grad_value(r, g, step);
                float want = sum / (float)D.world;
                if (p->t[i]->grad[k] != want) {
                    if (bad++ == 0)
                        first_bad = g;
                }
            }
        }
        CHECK(bad == 0, "step %d, buckets of %zu bytes: %lld gradients differ from sum/world "
              "(first at %lld)", step, bucket_bytes, (long long)bad, (long long)first_bad);
        rc = dvl_dist_check_same(&D, p->grad, (size_t)p->numel_grad * sizeof(float), "gradients",
                                 &err);
        CHECK(rc == DVL_OK, "%s", err.msg);
    }
    dvl_dist_grad_sync_free(s);
}

static void test_scalars(void)
{
    dvl_err err = {0};
    double x[3] = {D.rank + 0.5, (double)D.rank, 1e15 * (D.rank + 1)};
    int rc = dvl_dist_allreduce_f64(&D, x, 3, DVL_DIST_SUM, &err);
    CHECK(rc == DVL_OK && x[0] == 4.5 && x[1] == 3.0 && x[2] == 6e15, "sum: %g %g %g", x[0], x[1],
          x[2]);
    double y[1] = {(double)D.rank * -2.0};
    dvl_dist_allreduce_f64(&D, y, 1, DVL_DIST_MIN, &err);
    CHECK(y[0] == -4.0, "min: %g", y[0]);
    y[0] = (double)D.rank * -2.0;
    dvl_dist_allreduce_f64(&D, y, 1, DVL_DIST_MAX, &err);
    CHECK(y[0] == 0.0, "max: %g", y[0]);
    /* Token counts: exact integers beyond 2^53. */
    int64_t t[2] = {(INT64_C(1) << 60) + D.rank, -D.rank};
    rc = dvl_dist_allreduce_i64(&D, t, 2, DVL_DIST_SUM, &err);
    CHECK(rc == DVL_OK && t[0] == 3 * (INT64_C(1) << 60) + 3 && t[1] == -3, "i64 sum: %lld %lld",
          (long long)t[0], (long long)t[1]);
    bool any = false;
    rc = dvl_dist_any(&D, D.rank == 1, &any, &err);
    CHECK(rc == DVL_OK && any, "NaN on rank 1 only: any = %d", any);
    rc = dvl_dist_any(&D, false, &any, &err);
    CHECK(rc == DVL_OK && !any, "no NaN anywhere: any = %d", any);
}

int main(int argc, char **argv)
{
    dvl_err err = {0};
    if (dvl_dist_init(&argc, &argv, &D, &err)) {
        fprintf(stderr, "dvl_dist_init: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    CHECK(D.world == 3, "world %d, expected 3 (run under mpirun -np 3)", D.world);
    CHECK(D.local_world == D.world && D.local_rank == D.rank, "local rank %d of %d",
          D.local_rank, D.local_world);
    if (D.world == 3) {
        dvl_params *p = make_store();
        CHECK(p != NULL, "store");
        if (p) {
            test_bcast_and_checksum(p);
            test_grad_sync(p, 1024);           /* many buckets, l1.w alone */
            test_grad_sync(p, (size_t)25 << 20); /* one bucket of 8 MiB */
            test_grad_sync(p, 4);              /* one parameter a bucket */
            dvl_params_free(p);
        }
        test_scalars();
    }
    /* Totals over every rank. */
    int64_t tot[2] = {passed, failed};
    if (dvl_dist_allreduce_i64(&D, tot, 2, DVL_DIST_SUM, &err))
        tot[1]++;
    if (D.rank == 0)
        printf("%lld passed, %lld failed\n", (long long)tot[0], (long long)tot[1]);
    if (dvl_dist_finalize(&D, &err)) {
        fprintf(stderr, "dvl_dist_finalize: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    return tot[1] ? EXIT_FAILURE : EXIT_SUCCESS;
}
