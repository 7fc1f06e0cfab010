/* Helpers shared by the Check suites. */
#ifndef DVL_TEST_UTIL_H
#define DVL_TEST_UTIL_H

#include <check.h>

#include "core/rng.h"
#include "ops/ops.h"
#include "tensor/tensor.h"

/* Fill a tensor's data with N(0, std^2) drawn from seed. */
void tu_randn(dvl_tensor *t, uint64_t seed, float std);

/* A computation under test: builds its output from the parameters in p
 * (looked up by the caller however it likes) inside ctx. */
typedef dvl_tensor *(*tu_fn)(dvl_ctx *ctx, dvl_params *p, void *user);

typedef struct tu_gradcheck_result {
    double max_err;   /* max over checked elements of |analytic - numeric| / scale */
    double scale;     /* max |numeric| over the checked elements of that tensor, at least 1e-2 */
    const char *worst; /* name of the parameter where max_err occurred */
    int64_t checked;  /* elements compared */
} tu_gradcheck_result;

/* Central finite-difference check of d(sum(out * R))/d(param) for every
 * trainable parameter in p, R a fixed random projection. The projection is
 * summed in double; each parameter element is perturbed by +-eps (at most
 * max_elems elements per parameter, chosen at random, 0 = all). The error is
 * relative to the largest numeric gradient of the parameter, so the stated
 * tolerance reads "fraction of the gradient's scale". Fails the test with a
 * message on any op error. */
tu_gradcheck_result tu_gradcheck(tu_fn f, dvl_params *p, void *user, float eps,
                                 int64_t max_elems);

/* Assert helper: gradcheck and require max_err <= tol. */
#define TU_GRADCHECK(f, p, user, eps, max_elems, tol)                                          \
    do {                                                                                      \
        tu_gradcheck_result r_ = tu_gradcheck((f), (p), (user), (eps), (max_elems));          \
        ck_assert_msg(r_.checked > 0, "gradcheck compared no elements");                       \
        ck_assert_msg(r_.max_err <= (tol), "gradcheck: %s off by %.3g of scale %.3g (tol %g)", \
                      r_.worst, r_.max_err, r_.scale, (double)(tol));                         \
    } while (0)

/* max |a - b| over n elements. */
double tu_max_abs_diff(const float *a, const float *b, int64_t n);

/* Path of a file in tests/data (DVL_TEST_DATA, else "tests/data"). */
const char *tu_data_path(const char *name, char *buf, size_t n);

/* Run a suite with CK_NORMAL output and return the process exit code. */
int tu_run(Suite *s);

#endif
