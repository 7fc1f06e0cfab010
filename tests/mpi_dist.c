/* dist on several ranks (test dist_mpi: mpirun -np 3 mpi_dist): broadcast,
 * the bucketed gradient all-reduce against the exact mean, the same for
 * ZeRO-1's reduce to the shard owners, its all-gather of updated weights
 * and its gather of the optimizer shards, parameter checksums (equal, and a
 * planted difference named), scalar reductions and the any-rank flag.
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

/* zero1: the buckets are reduced to the shard owners, and each rank must
 * hold the exact mean of its own shard [lo, hi) (the rest is undefined). */
static void test_grad_sync(dvl_params *p, size_t bucket_bytes, bool zero1)
{
    dvl_err err = {0};
    dvl_dist_grad_sync *s = zero1 ? dvl_dist_grad_sync_new_zero1(&D, p, bucket_bytes, &err)
                                  : dvl_dist_grad_sync_new(&D, p, bucket_bytes, &err);
    CHECK(s != NULL, "grad_sync_new: %s", err.msg);
    if (!s)
        return;
    int64_t slo, shi, want_lo, want_hi;
    CHECK(dvl_dist_grad_sync_shard(s, &slo, &shi) == zero1, "zero1 flag");
    if (zero1)
        dvl_adamw_shard(p->numel_grad, D.world, D.rank, &want_lo, &want_hi);
    else
        want_lo = 0, want_hi = p->numel_grad;
    CHECK(slo == want_lo && shi == want_hi, "shard [%lld, %lld)", (long long)slo, (long long)shi);
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
                if (g < slo || g >= shi)
                    continue;
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
        CHECK(bad == 0, "step %d, buckets of %zu bytes%s: %lld gradients differ from "
              "sum/world (first at %lld)", step, bucket_bytes, zero1 ? ", ZeRO-1" : "",
              (long long)bad, (long long)first_bad);
        if (!zero1) {
            rc = dvl_dist_check_same(&D, p->grad, (size_t)p->numel_grad * sizeof(float),
                                     "gradients", &err);
            CHECK(rc == DVL_OK, "%s", err.msg);
        }
    }
    dvl_dist_grad_sync_free(s);
}

/* A trainable parameter element's value after a step, by its gradient
 * offset (what the owner of that offset writes). */
static float updated_value(int64_t g) { return (float)(g % 8191) * 0.25f + 1.0f; }

/* ZeRO-1's all-gather: each rank writes new values into the parameter
 * elements of its shard only (stale, rank-dependent junk elsewhere, as
 * after a sharded step); after the gather every rank holds every owner's
 * values, the frozen parameter is untouched, and the checksums agree. */
static void test_zero1_gather_params(dvl_params *p)
{
    dvl_err err = {0};
    dvl_dist_grad_sync *s = dvl_dist_grad_sync_new_zero1(&D, p, 1024, &err);
    CHECK(s != NULL, "grad_sync_new_zero1: %s", err.msg);
    if (!s)
        return;
    int64_t lo, hi;
    dvl_dist_grad_sync_shard(s, &lo, &hi);
    for (int64_t i = 0; i < p->numel; i++)
        p->data[i] = -1.0f - (float)D.rank; /* frozen too: must stay as it is */
    for (int i = 0; i < p->n; i++) {
        int64_t off = p->grad_off[i];
        for (int64_t k = 0; off >= 0 && k < dvl_numel(p->t[i]); k++)
            if (off + k >= lo && off + k < hi)
                dvl_f32(p->t[i])[k] = updated_value(off + k);
    }
    int rc = dvl_dist_grad_sync_gather_params(s, &err);
    CHECK(rc == DVL_OK, "gather_params: %s", err.msg);
    int64_t bad = 0, bad_frozen = 0;
    for (int i = 0; i < p->n; i++) {
        int64_t off = p->grad_off[i];
        for (int64_t k = 0; k < dvl_numel(p->t[i]); k++) {
            float x = dvl_f32(p->t[i])[k];
            if (off < 0)
                bad_frozen += x != -1.0f - (float)D.rank;
            else
                bad += x != updated_value(off + k);
        }
    }
    CHECK(bad == 0 && bad_frozen == 0, "after the gather: %lld trainable, %lld frozen elements "
          "wrong", (long long)bad, (long long)bad_frozen);
    /* The frozen parameter and the padding differ by design: zero all but
     * the trainable parameters, then every rank's buffer is the same. */
    for (int i = 0; i < p->n; i++) {
        float *x = dvl_f32(p->t[i]);
        int64_t n = dvl_numel(p->t[i]), end = i + 1 < p->n ? dvl_f32(p->t[i + 1]) - p->data
                                                          : p->numel;
        memset(x + (p->grad_off[i] < 0 ? 0 : n), 0,
               (size_t)(end - (x - p->data) - (p->grad_off[i] < 0 ? 0 : n)) * sizeof(float));
    }
    rc = dvl_dist_check_params(&D, p, &err);
    CHECK(rc == DVL_OK, "check after the gather: %s", err.msg);
    /* A plain sync has nothing to gather. */
    dvl_dist_grad_sync *plain = dvl_dist_grad_sync_new(&D, p, 1024, &err);
    rc = plain ? dvl_dist_grad_sync_gather_params(plain, &err) : -1;
    CHECK(rc == DVL_EINVAL && strstr(err.msg, "not ZeRO-1"), "plain gather: %d %s", rc, err.msg);
    dvl_dist_grad_sync_free(plain);
    dvl_dist_grad_sync_free(s);
}

/* The optimizer shards gathered into a whole optimizer on rank 1 (a root
 * other than 0), and a rank holding the wrong range failing everywhere. */
static void test_zero1_gather_adamw(dvl_params *p)
{
    dvl_err err = {0};
    int64_t lo, hi;
    dvl_adamw_shard(p->numel_grad, D.world, D.rank, &lo, &hi);
    dvl_adamw *shard = dvl_adamw_new_shard(p, lo, hi, 0.9f, 0.999f, 1e-8f, 0, &err);
    dvl_adamw *full = D.rank == 1 ? dvl_adamw_new(p, 0.9f, 0.999f, 1e-8f, 0, &err) : NULL;
    CHECK(shard && (D.rank != 1 || full), "optimizers: %s", err.msg);
    if (!shard || (D.rank == 1 && !full))
        return;
    for (int64_t j = lo; j < hi; j++) {
        shard->m[j - lo] = (float)(j % 10007);
        shard->v[j - lo] = (float)(j % 10009) + 0.5f;
    }
    shard->step = 42;
    int rc = dvl_dist_gather_adamw(&D, shard, full, 1, &err);
    CHECK(rc == DVL_OK, "gather_adamw: %s", err.msg);
    if (D.rank == 1 && rc == DVL_OK) {
        int64_t bad = 0;
        for (int64_t j = 0; j < p->numel_grad; j++)
            bad += full->m[j] != (float)(j % 10007) || full->v[j] != (float)(j % 10009) + 0.5f;
        CHECK(bad == 0 && full->step == 42, "gathered moments: %lld wrong, step %lld",
              (long long)bad, (long long)full->step);
    }
    /* Rank 2 passes a whole optimizer as its shard: every rank fails. */
    dvl_adamw *wrong = D.rank == 2 ? dvl_adamw_new(p, 0.9f, 0.999f, 1e-8f, 0, &err) : shard;
    rc = dvl_dist_gather_adamw(&D, wrong, full, 1, &err);
    CHECK(rc == DVL_EINVAL, "wrong shard on rank 2: rc %d", rc);
    CHECK(D.rank != 2 || strstr(err.msg, "rank 2's optimizer holds [0, "), "%s", err.msg);
    if (wrong != shard)
        dvl_adamw_free(wrong);
    dvl_adamw_free(shard);
    dvl_adamw_free(full);
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
            for (int z = 0; z < 2; z++) {
                test_grad_sync(p, 1024, z);              /* many buckets, l1.w alone */
                test_grad_sync(p, (size_t)25 << 20, z);  /* one bucket of 8 MiB */
                test_grad_sync(p, 4, z);                 /* one parameter a bucket */
            }
            test_zero1_gather_params(p);
            test_zero1_gather_adamw(p);
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
