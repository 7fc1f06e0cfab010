/* Helpers shared by the Check suites. */
#ifndef DVL_TEST_UTIL_H
#define DVL_TEST_UTIL_H

#include <check.h>

#include "core/rng.h"
#include "ops/ops.h"
#include "tensor/tensor.h"

/* Fill a tensor's data with N(0, std^2) drawn from seed. */
void tu_randn(dvl_tensor *t, uint64_t seed, float std);

/* One tensor of a parameter store built by tu_make_params. */
typedef struct tu_pspec {
    const char *name;
    int ndim;
    int64_t shape[4];
    bool trainable;
} tu_pspec;

/* A parameter store holding s[0..n) in that order, tensor i filled with
 * N(0, std^2) drawn from seed + i. Fails the test on any error. */
dvl_params *tu_make_params(const tu_pspec *s, int n, uint64_t seed, float std);

/* The parameter called name; fails the test when there is none. */
dvl_tensor *tu_param(dvl_params *p, const char *name);

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

/* Print a gradcheck's error when TU_VERBOSE is set (to size tolerances). */
void tu_gradcheck_log(const char *what, const tu_gradcheck_result *r, double tol);

/* Assert helpers: gradcheck and require max_err <= tol; what names the check
 * in messages (TU_GRADCHECK uses the function's name). A macro, so a failure
 * reports the line of the check. */
#define TU_GRADCHECK_NAMED(what, f, p, user, eps, max_elems, tol)                              \
    do {                                                                                      \
        tu_gradcheck_result r_ = tu_gradcheck((f), (p), (user), (eps), (max_elems));          \
        tu_gradcheck_log((what), &r_, (tol));                                                 \
        ck_assert_msg(r_.checked > 0, "%s: gradcheck compared no elements", (what));           \
        ck_assert_msg(r_.max_err <= (tol), "%s: gradcheck %s off by %.3g of scale %.3g (tol %g)", \
                      (what), r_.worst, r_.max_err, r_.scale, (double)(tol));                 \
    } while (0)
#define TU_GRADCHECK(f, p, user, eps, max_elems, tol)                                          \
    TU_GRADCHECK_NAMED(#f, f, p, user, eps, max_elems, tol)

/* max |a - b| over n elements. */
double tu_max_abs_diff(const float *a, const float *b, int64_t n);

/* Distance in units in the last place between two finite floats. */
int64_t tu_ulps(float a, float b);

/* x [4, 13] with x[i] = ((53 i) % 97 - 48) / 8, multiples of 1/8 and so
 * exact in float: the input the torch / Hugging Face reference tables in the
 * suites were computed from. */
dvl_tensor *tu_ref_input(dvl_ctx *ctx);

/* The bits of a float, and the float of given bits. */
uint32_t tu_f32_bits(float f);
float tu_f32_from_bits(uint32_t u);

/* The whole file at path, NUL-terminated (malloc'd; *n, when n is given,
 * gets its length without the NUL). Fails the test when it cannot be read. */
void *tu_read_file(const char *path, size_t *n);

/* Write n bytes to path, replacing it; fails the test on any error. */
void tu_write_file(const char *path, const void *buf, size_t n);

/* Path of a file in tests/data (DVL_TEST_DATA, else "tests/data"). */
const char *tu_data_path(const char *name, char *buf, size_t n);

/* Run a suite with CK_NORMAL output and return the process exit code. */
int tu_run(Suite *s);

#endif
