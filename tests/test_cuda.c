/* The CUDA backend against straightforward CPU references (double precision)
 * written here: cuBLAS linear forward/backward (f32, TF32, bf16), RMSNorm,
 * SiLU/SwiGLU and AdamW, on odd sizes, plus a GEMM throughput print. Then
 * the op layer on a CUDA context against the same ops on a CPU context
 * (every op, forward and input gradients, every attention mask with GQA and
 * key padding; the fused LM-head loss chunked over the vocabulary, also at
 * V = 151936 with its arena use bounded), the CUDA context itself, and the
 * toy 2-layer model's training step on both devices (plus its timing).
 * Then what dvl-train's device runs rest on: SigLIP patch extraction and a
 * tower's forward on the device, moving a parameter store in place, the
 * context's pinned staging uploads, copying AdamW state between devices
 * (checkpoints), and NCCL on a communicator of one rank
 * (train/test_train_cuda.sh runs dvl-train itself). Last, generation on
 * the device (dvl-generate --device cuda): the KV cache in device memory
 * against the forward without it, and greedy decoding in every mode giving
 * the CPU's tokens, batch = singles, cache = recompute, a VLM included.
 *
 * Without a CUDA build or without a device every GPU test prints
 * "test_cuda: no CUDA device, skipped" and passes; set DVL_REQUIRE_CUDA=1 to
 * make a missing device a failure instead (for runs on a GPU machine, so a
 * broken driver cannot pass as a skip).
 *
 * Every CUDA call happens inside a test body: Check forks a child per test,
 * and a CUDA context made in the parent before fork() is unusable in the
 * child.
 *
 * Error metrics (stated per check):
 *   scale_err = max_i |got_i - ref_i| / max_i |ref_i|  (relative to the
 *               tensor's scale: for products and reductions, whose
 *               elements can cancel to near zero)
 *   elem_err  = max_i |got_i - ref_i| / max(|ref_i|, 1)  (per element,
 *               for elementwise maps) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diffusion/generate.h"
#include "models/siglip.h"
#include "optim/adamw.h"
#include "gen_fixture.h"
#include "toy.h"
#include "util.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif
#ifdef DVL_HAVE_NCCL
#include "dist/nccl.h"
#endif

#define SKIP_MSG "test_cuda: no CUDA device, skipped"

#ifdef DVL_HAVE_CUDA

/* ------------------------------------------------------------- helpers */

/* Whether this test can use the GPU (device 0 initialised); prints the skip
 * line (with the reason) when not. */
static bool gpu_or_skip(void)
{
    dvl_err err = {0, ""};
    int n = dvl_cuda_probe(&err);
    if (n == 0) {
        const char *req = getenv("DVL_REQUIRE_CUDA");
        ck_assert_msg(!(req && req[0] && strcmp(req, "0") != 0),
                      "DVL_REQUIRE_CUDA is set but no CUDA device is usable: %s",
                      err.code ? err.msg : "0 devices");
        printf(SKIP_MSG " (%s)\n", err.code ? err.msg : "0 devices");
        fflush(stdout);
        return false;
    }
    ck_assert_msg(dvl_cuda_init(0, &err) == DVL_OK, "dvl_cuda_init: %s", err.msg);
    return true;
}

/* gpu_or_skip for the cases too big for the CPU emulation of the backend
 * (tools/cuda-emu: each GPU thread a fiber): they skip there, saying so. */
static bool big_gpu_or_skip(const char *name)
{
    if (!gpu_or_skip())
        return false;
    if (dvl_cuda_emulated()) {
        printf("test_cuda: %s skipped under cuda-emu (too big to emulate)\n", name);
        fflush(stdout);
        return false;
    }
    return true;
}

static void *dev_alloc(size_t bytes)
{
    dvl_err err = {0, ""};
    void *p = dvl_cuda_malloc(bytes, &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    return p;
}

/* A device copy of n host floats. */
static float *upload(const float *h, int64_t n)
{
    dvl_err err = {0, ""};
    float *d = dev_alloc((size_t)n * sizeof(float));
    ck_assert_msg(dvl_cuda_memcpy_h2d(d, h, (size_t)n * sizeof(float), &err) == DVL_OK, "%s",
                  err.msg);
    return d;
}

/* Wait for the GPU and copy n floats back into a new host array. */
static float *download(const float *d, int64_t n)
{
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_cuda_sync("test", &err) == DVL_OK, "%s", err.msg);
    float *h = malloc((size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(h);
    ck_assert_msg(dvl_cuda_memcpy_d2h(h, d, (size_t)n * sizeof(float), &err) == DVL_OK, "%s",
                  err.msg);
    return h;
}

static float *host_randn(int64_t n, uint64_t seed, float std)
{
    float *h = malloc((size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(h);
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    dvl_rng_fill_normal(&r, h, n, std);
    return h;
}

static double *dzeros(int64_t n)
{
    double *d = calloc((size_t)n, sizeof(double));
    ck_assert_ptr_nonnull(d);
    return d;
}

static double scale_err(const float *got, const double *ref, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)got[i] - ref[i]));
        mr = fmax(mr, fabs(ref[i]));
    }
    ck_assert_msg(mr > 0, "reference is all zeros: the check would be vacuous");
    return md / mr;
}

static double elem_err(const float *got, const double *ref, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert_msg(isfinite(got[i]), "element %lld is %g", (long long)i, (double)got[i]);
        m = fmax(m, fabs((double)got[i] - ref[i]) / fmax(fabs(ref[i]), 1.0));
    }
    return m;
}

#define CHECK_ERR(what, e, tol)                                                                \
    do {                                                                                       \
        double e_ = (e);                                                                       \
        ck_assert_msg(e_ <= (tol), "%s: error %.3g > tolerance %g", (what), e_, (double)(tol)); \
    } while (0)

/* Reference linear layer in double: y = x W^T + b; and the accumulating
 * backward dx = dx0 + dy W, dW = dW0 + dy^T x, db = db0 + colsum(dy). */
static void ref_linear_fwd(double *y, const float *x, const float *w, const float *b,
                           int64_t rows, int64_t in, int64_t out)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = b ? b[o] : 0.0;
            for (int64_t k = 0; k < in; k++)
                s += (double)x[r * in + k] * w[o * in + k];
            y[r * out + o] = s;
        }
}

static void ref_linear_bwd(double *dx, double *dw, double *db, const float *dx0,
                           const float *dw0, const float *db0, const float *dy, const float *x,
                           const float *w, int64_t rows, int64_t in, int64_t out)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < in; k++) {
            double s = dx0[r * in + k];
            for (int64_t o = 0; o < out; o++)
                s += (double)dy[r * out + o] * w[o * in + k];
            dx[r * in + k] = s;
        }
    for (int64_t o = 0; o < out; o++)
        for (int64_t k = 0; k < in; k++) {
            double s = dw0[o * in + k];
            for (int64_t r = 0; r < rows; r++)
                s += (double)dy[r * out + o] * x[r * in + k];
            dw[o * in + k] = s;
        }
    for (int64_t o = 0; o < out; o++) {
        double s = db0[o];
        for (int64_t r = 0; r < rows; r++)
            s += dy[r * out + o];
        db[o] = s;
    }
}

/* One linear forward + backward on the GPU against the reference. The
 * gradients start from random values so that accumulation (+=) is checked.
 * tol applies to all of y, dx, dW (scale_err); db is a plain f32 sum and is
 * held to 1e-5 whatever the product's precision. Also checks that db is
 * bitwise identical when recomputed (deterministic column sum). */
static void check_linear(dvl_cublas *h, int64_t rows, int64_t in, int64_t out, bool bias,
                         double tol, const char *label)
{
    char what[128];
    float *x = host_randn(rows * in, 1, 1.0f), *w = host_randn(out * in, 2, 0.5f);
    float *b = host_randn(out, 3, 1.0f), *dy = host_randn(rows * out, 4, 1.0f);
    float *dx0 = host_randn(rows * in, 5, 1.0f), *dw0 = host_randn(out * in, 6, 1.0f);
    float *db0 = host_randn(out, 7, 1.0f);
    float *d_x = upload(x, rows * in), *d_w = upload(w, out * in), *d_b = upload(b, out);
    float *d_dy = upload(dy, rows * out), *d_dx = upload(dx0, rows * in);
    float *d_dw = upload(dw0, out * in), *d_db = upload(db0, out), *d_db2 = upload(db0, out);
    float *d_y = dev_alloc((size_t)(rows * out) * sizeof(float));
    float *d_scr = dev_alloc((size_t)dvl_cuda_colsum_scratch(rows, out) * sizeof(float));
    dvl_err err = {0, ""};

    ck_assert_msg(dvl_cuda_linear_fwd(h, d_y, d_x, d_w, bias ? d_b : NULL, rows, in, out, &err) ==
                      DVL_OK,
                  "%s", err.msg);
    ck_assert_msg(dvl_cuda_linear_bwd(h, d_dx, d_dw, d_db, d_scr, d_dy, d_x, d_w, rows, in, out,
                                      &err) == DVL_OK,
                  "%s", err.msg);
    /* db again, alone (dx, dW NULL: those must be skipped). */
    ck_assert_msg(dvl_cuda_linear_bwd(h, NULL, NULL, d_db2, d_scr, d_dy, d_x, d_w, rows, in, out,
                                      &err) == DVL_OK,
                  "%s", err.msg);
    float *y = download(d_y, rows * out), *gx = download(d_dx, rows * in);
    float *gw = download(d_dw, out * in), *gb = download(d_db, out), *gb2 = download(d_db2, out);

    double *ry = dzeros(rows * out), *rdx = dzeros(rows * in), *rdw = dzeros(out * in);
    double *rdb = dzeros(out);
    ref_linear_fwd(ry, x, w, bias ? b : NULL, rows, in, out);
    ref_linear_bwd(rdx, rdw, rdb, dx0, dw0, db0, dy, x, w, rows, in, out);
    snprintf(what, sizeof what, "%s [%lld,%lld]x[%lld,%lld]^T y", label, (long long)rows,
             (long long)in, (long long)out, (long long)in);
    CHECK_ERR(what, scale_err(y, ry, rows * out), tol);
    snprintf(what, sizeof what, "%s rows=%lld dx", label, (long long)rows);
    CHECK_ERR(what, scale_err(gx, rdx, rows * in), tol);
    snprintf(what, sizeof what, "%s rows=%lld dW", label, (long long)rows);
    CHECK_ERR(what, scale_err(gw, rdw, out * in), tol);
    snprintf(what, sizeof what, "%s rows=%lld db", label, (long long)rows);
    CHECK_ERR(what, scale_err(gb, rdb, out), 1e-5);
    ck_assert_msg(memcmp(gb, gb2, (size_t)out * sizeof(float)) == 0,
                  "%s: db differs between two identical runs", label);

    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0);
    free(y), free(gx), free(gw), free(gb), free(gb2);
    free(ry), free(rdx), free(rdw), free(rdb);
    dvl_cuda_free(d_x), dvl_cuda_free(d_w), dvl_cuda_free(d_b), dvl_cuda_free(d_dy);
    dvl_cuda_free(d_dx), dvl_cuda_free(d_dw), dvl_cuda_free(d_db), dvl_cuda_free(d_db2);
    dvl_cuda_free(d_y), dvl_cuda_free(d_scr);
}

/* Host bf16 round trip: the values a bf16 GEMM actually multiplies. */
static uint16_t *to_bf16(const float *x, int64_t n)
{
    uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
    ck_assert_ptr_nonnull(h);
    dvl_from_f32(h, DVL_BF16, x, n);
    return h;
}

static uint16_t *upload16(const uint16_t *h, int64_t n)
{
    dvl_err err = {0, ""};
    uint16_t *d = dev_alloc((size_t)n * sizeof(uint16_t));
    ck_assert_msg(dvl_cuda_memcpy_h2d(d, h, (size_t)n * sizeof(uint16_t), &err) == DVL_OK, "%s",
                  err.msg);
    return d;
}

#endif /* DVL_HAVE_CUDA */

/* --------------------------------------------------------------- tests */

/* Runs with or without a GPU: the availability query answers cleanly, and
 * without a device the entry points fail with a message instead of
 * crashing. */
START_TEST(availability_query_is_clean)
{
#ifdef DVL_HAVE_CUDA
    int n = dvl_cuda_device_count();
    ck_assert_int_ge(n, 0);
    ck_assert_int_eq(dvl_cuda_device_count(), n); /* stable, no lasting error state */
    dvl_err err = {0, ""};
    ck_assert_int_eq(dvl_cuda_probe(&err), n);
    if (n == 0) {
        printf("test_cuda: availability: 0 devices (%s)\n", err.code ? err.msg : "no error");
        err.code = 0;
        ck_assert_int_eq(dvl_cuda_init(0, &err), DVL_EDEVICE);
        ck_assert_ptr_nonnull(strstr(err.msg, "device 0"));
        err.code = 0;
        ck_assert_ptr_null(dvl_cuda_malloc(64, &err));
        ck_assert_int_eq(err.code, DVL_EDEVICE);
        ck_assert_ptr_nonnull(strstr(err.msg, "cudaMalloc"));
        dvl_cuda_free(NULL);
        err.code = 0;
        ck_assert_ptr_null(dvl_cublas_new(false, &err));
        ck_assert_int_eq(err.code, DVL_EDEVICE);
        printf(SKIP_MSG " (GPU paths)\n");
        return;
    }
    /* With a device: out-of-range device, impossible allocation and a round
     * trip through device memory. */
    ck_assert_int_eq(dvl_cuda_init(n, &err), DVL_EDEVICE);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    ck_assert_msg(dvl_cuda_init(0, &err) == DVL_OK, "%s", err.msg);
    char desc[256];
    ck_assert_msg(dvl_cuda_describe(0, desc, sizeof desc, &err) == DVL_OK, "%s", err.msg);
    printf("test_cuda: %d device(s); device 0: %s\n", n, desc);
    err.code = 0;
    ck_assert_ptr_null(dvl_cuda_malloc((size_t)1 << 56, &err));
    ck_assert_int_eq(err.code, DVL_EDEVICE);
    ck_assert_ptr_nonnull(strstr(err.msg, "cudaMalloc"));
    /* The failed allocation must not poison later calls. */
    ck_assert_msg(dvl_cuda_sync("after failed malloc", &err) == DVL_OK, "%s", err.msg);
    float h[5] = {1, -2, 3.5f, 1e-30f, 7}, back[5] = {0};
    float *d = upload(h, 5);
    ck_assert_msg(dvl_cuda_memcpy_d2h(back, d, sizeof h, &err) == DVL_OK, "%s", err.msg);
    ck_assert_mem_eq(back, h, sizeof h);
    ck_assert_msg(dvl_cuda_memset_zero(d, sizeof h, &err) == DVL_OK, "%s", err.msg);
    ck_assert_msg(dvl_cuda_memcpy_d2h(back, d, sizeof h, &err) == DVL_OK, "%s", err.msg);
    for (int i = 0; i < 5; i++)
        ck_assert_float_eq(back[i], 0.0f);
    dvl_cuda_free(d);
#else
    /* No CUDA build: asking for a CUDA context fails cleanly. */
    printf(SKIP_MSG " (built without CUDA)\n");
    ck_assert_ptr_null(dvl_ctx_new(DVL_CUDA));
#endif
}
END_TEST

/* f32 cuBLAS against the double reference: scale_err <= 1e-5 (k <= 700 f32
 * products accumulate ~1e-6). Shapes: odd sizes, and rows=600 (three column-
 * sum chunks of 256 for db), with and without bias. */
START_TEST(linear_f32_matches_reference)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_cublas *h = dvl_cublas_new(false, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    ck_assert(!dvl_cublas_tf32(h));
    check_linear(h, 37, 61, 29, true, 1e-5, "f32");
    check_linear(h, 600, 45, 33, false, 1e-5, "f32");
    check_linear(h, 1, 7, 3, true, 1e-5, "f32");
    dvl_cublas_free(h);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* TF32 inputs (10-bit mantissa, rounding error 2^-11 per input) with f32
 * accumulation: scale_err <= 1e-2. */
START_TEST(linear_tf32_within_1e_2)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_cublas *h = dvl_cublas_new(true, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    ck_assert(dvl_cublas_tf32(h));
    check_linear(h, 37, 61, 29, true, 1e-2, "tf32");
    check_linear(h, 600, 45, 33, true, 1e-2, "tf32");
    /* Switching back to full f32 on the same handle. */
    ck_assert_msg(dvl_cublas_set_tf32(h, false, &err) == DVL_OK, "%s", err.msg);
    check_linear(h, 37, 61, 29, true, 1e-5, "f32 after tf32");
    dvl_cublas_free(h);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* bf16 x and W, f32 accumulation. Against the reference computed from the
 * bf16-rounded inputs only accumulation error remains: scale_err <= 1e-4
 * for f32 output. Against the unrounded f32 inputs (what a caller compares
 * with): <= 1e-2. With bf16 output (rounding 2^-9 relative): <= 1e-2. */
START_TEST(matmul_bf16_within_tolerance)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const int64_t rows = 37, in = 61, out = 29;
    dvl_err err = {0, ""};
    dvl_cublas *h = dvl_cublas_new(false, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    float *x = host_randn(rows * in, 11, 1.0f), *w = host_randn(out * in, 12, 0.5f);
    uint16_t *xb = to_bf16(x, rows * in), *wb = to_bf16(w, out * in);
    float *xr = malloc((size_t)(rows * in) * sizeof(float));
    float *wr = malloc((size_t)(out * in) * sizeof(float));
    ck_assert(xr && wr);
    dvl_to_f32(xr, xb, DVL_BF16, rows * in);
    dvl_to_f32(wr, wb, DVL_BF16, out * in);
    double *ref_rounded = dzeros(rows * out), *ref_exact = dzeros(rows * out);
    ref_linear_fwd(ref_rounded, xr, wr, NULL, rows, in, out);
    ref_linear_fwd(ref_exact, x, w, NULL, rows, in, out);

    uint16_t *d_x = upload16(xb, rows * in), *d_w = upload16(wb, out * in);
    float *d_y = dev_alloc((size_t)(rows * out) * sizeof(float));
    uint16_t *d_yb = dev_alloc((size_t)(rows * out) * sizeof(uint16_t));
    ck_assert_msg(dvl_cuda_matmul_bf16(h, d_y, DVL_F32, d_x, d_w, rows, in, out, &err) == DVL_OK,
                  "%s", err.msg);
    ck_assert_msg(dvl_cuda_matmul_bf16(h, d_yb, DVL_BF16, d_x, d_w, rows, in, out, &err) ==
                      DVL_OK,
                  "%s", err.msg);
    float *y = download(d_y, rows * out);
    uint16_t *yb = malloc((size_t)(rows * out) * sizeof(uint16_t));
    float *ybf = malloc((size_t)(rows * out) * sizeof(float));
    ck_assert(yb && ybf);
    ck_assert_msg(dvl_cuda_memcpy_d2h(yb, d_yb, (size_t)(rows * out) * sizeof(uint16_t), &err) ==
                      DVL_OK,
                  "%s", err.msg);
    dvl_to_f32(ybf, yb, DVL_BF16, rows * out);
    CHECK_ERR("bf16 gemm, f32 out, vs rounded inputs", scale_err(y, ref_rounded, rows * out), 1e-4);
    CHECK_ERR("bf16 gemm, f32 out, vs f32 inputs", scale_err(y, ref_exact, rows * out), 1e-2);
    CHECK_ERR("bf16 gemm, bf16 out, vs rounded inputs", scale_err(ybf, ref_rounded, rows * out),
              1e-2);
    /* An output dtype the product cannot write is an error naming it. */
    ck_assert_int_eq(dvl_cuda_matmul_bf16(h, d_y, DVL_I32, d_x, d_w, rows, in, out, &err),
                     DVL_EUNSUP);
    ck_assert_ptr_nonnull(strstr(err.msg, "i32"));

    free(x), free(w), free(xb), free(wb), free(xr), free(wr), free(ref_rounded), free(ref_exact);
    free(y), free(yb), free(ybf);
    dvl_cuda_free(d_x), dvl_cuda_free(d_w), dvl_cuda_free(d_y), dvl_cuda_free(d_yb);
    dvl_cublas_free(h);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* A host copy of x rounded to bf16 and back (what a bf16 product sees). */
static float *bf16_round(const float *x, int64_t n)
{
    uint16_t *b = to_bf16(x, n);
    float *r = malloc((size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(r);
    dvl_to_f32(r, b, DVL_BF16, n);
    free(b);
    return r;
}

/* dvl_cuda_linear_fwd_bf16 / _bwd_bf16 on one shape against the double
 * reference of check_linear, computed twice: from the bf16-rounded
 * operands (x, W, dy), where only f32 accumulation error remains:
 * scale_err <= 1e-4 for y, dx, dW; and from the f32 operands, the error a
 * caller sees: <= 1e-2. db (an f32 column sum of the unrounded dy): 1e-5.
 * Gradients start random (accumulation checked). */
static void check_linear_bf16(dvl_cublas *h, int64_t rows, int64_t in, int64_t out, bool bias)
{
    char what[128];
    float *x = host_randn(rows * in, 1, 1.0f), *w = host_randn(out * in, 2, 0.5f);
    float *b = host_randn(out, 3, 1.0f), *dy = host_randn(rows * out, 4, 1.0f);
    float *dx0 = host_randn(rows * in, 5, 1.0f), *dw0 = host_randn(out * in, 6, 1.0f);
    float *db0 = host_randn(out, 7, 1.0f);
    float *xr = bf16_round(x, rows * in), *wr = bf16_round(w, out * in);
    float *dyr = bf16_round(dy, rows * out);
    float *d_x = upload(x, rows * in), *d_w = upload(w, out * in), *d_b = upload(b, out);
    float *d_dy = upload(dy, rows * out), *d_dx = upload(dx0, rows * in);
    float *d_dw = upload(dw0, out * in), *d_db = upload(db0, out);
    float *d_y = dev_alloc((size_t)(rows * out) * sizeof(float));
    float *d_cs = dev_alloc((size_t)dvl_cuda_colsum_scratch(rows, out) * sizeof(float));
    void *d_f = dev_alloc(dvl_cuda_linear_bf16_scratch(rows, in, out, false, false));
    void *d_s = dev_alloc(dvl_cuda_linear_bf16_scratch(rows, in, out, true, false));
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_cuda_linear_fwd_bf16(h, d_y, d_x, d_w, NULL, bias ? d_b : NULL, d_f, rows,
                                           in, out, &err) == DVL_OK,
                  "%s", err.msg);
    ck_assert_msg(dvl_cuda_linear_bwd_bf16(h, d_dx, d_dw, d_db, d_cs, d_s, d_dy, d_x, d_w, NULL,
                                           rows, in, out, &err) == DVL_OK,
                  "%s", err.msg);
    float *y = download(d_y, rows * out), *gx = download(d_dx, rows * in);
    /* With W rounded beforehand (a frozen weight's store copy, w16) and no
     * f32 W at all: the same bits of y and dx, in the smaller scratch. */
    uint16_t *d_w16 = dev_alloc((size_t)(out * in) * sizeof(uint16_t));
    ck_assert_msg(dvl_cuda_to_bf16(d_w16, d_w, out * in, &err) == DVL_OK, "%s", err.msg);
    float *d_y2 = dev_alloc((size_t)(rows * out) * sizeof(float)), *d_dx2 = upload(dx0, rows * in);
    void *d_f2 = dev_alloc(dvl_cuda_linear_bf16_scratch(rows, in, out, false, true));
    void *d_s2 = dev_alloc(dvl_cuda_linear_bf16_scratch(rows, in, out, true, true));
    ck_assert_msg(dvl_cuda_linear_fwd_bf16(h, d_y2, d_x, NULL, d_w16, bias ? d_b : NULL, d_f2,
                                           rows, in, out, &err) == DVL_OK,
                  "%s", err.msg);
    ck_assert_msg(dvl_cuda_linear_bwd_bf16(h, d_dx2, NULL, NULL, NULL, d_s2, d_dy, d_x, NULL,
                                           d_w16, rows, in, out, &err) == DVL_OK,
                  "%s", err.msg);
    float *y2 = download(d_y2, rows * out), *gx2 = download(d_dx2, rows * in);
    ck_assert_msg(memcmp(y, y2, (size_t)(rows * out) * sizeof(float)) == 0,
                  "bf16 linear [%lld,%lld,%lld]: y with W's kept copy differs", (long long)rows,
                  (long long)in, (long long)out);
    ck_assert_msg(memcmp(gx, gx2, (size_t)(rows * in) * sizeof(float)) == 0,
                  "bf16 linear [%lld,%lld,%lld]: dx with W's kept copy differs", (long long)rows,
                  (long long)in, (long long)out);
    free(y2), free(gx2);
    dvl_cuda_free(d_w16), dvl_cuda_free(d_y2), dvl_cuda_free(d_dx2), dvl_cuda_free(d_f2);
    dvl_cuda_free(d_s2);
    float *gw = download(d_dw, out * in), *gb = download(d_db, out);
    for (int exact = 0; exact < 2; exact++) {
        double *ry = dzeros(rows * out), *rdx = dzeros(rows * in), *rdw = dzeros(out * in);
        double *rdb = dzeros(out), *rdb_f32 = dzeros(out);
        double *tdx = dzeros(rows * in), *tdw = dzeros(out * in);
        ref_linear_fwd(ry, exact ? x : xr, exact ? w : wr, bias ? b : NULL, rows, in, out);
        /* dx, dW from this pass's operands; db from the unrounded dy. */
        ref_linear_bwd(rdx, rdw, rdb, dx0, dw0, db0, exact ? dy : dyr, exact ? x : xr,
                       exact ? w : wr, rows, in, out);
        ref_linear_bwd(tdx, tdw, rdb_f32, dx0, dw0, db0, dy, x, w, rows, in, out);
        const double tol = exact ? 1e-2 : 1e-4;
        const char *vs = exact ? "vs f32 operands" : "vs bf16-rounded operands";
        snprintf(what, sizeof what, "linear bf16 [%lld,%lld]x[%lld,%lld]^T y %s", (long long)rows,
                 (long long)in, (long long)out, (long long)in, vs);
        CHECK_ERR(what, scale_err(y, ry, rows * out), tol);
        snprintf(what, sizeof what, "linear bf16 rows=%lld dx %s", (long long)rows, vs);
        CHECK_ERR(what, scale_err(gx, rdx, rows * in), tol);
        snprintf(what, sizeof what, "linear bf16 rows=%lld dW %s", (long long)rows, vs);
        CHECK_ERR(what, scale_err(gw, rdw, out * in), tol);
        snprintf(what, sizeof what, "linear bf16 rows=%lld db", (long long)rows);
        CHECK_ERR(what, scale_err(gb, rdb_f32, out), 1e-5);
        free(ry), free(rdx), free(rdw), free(rdb), free(rdb_f32), free(tdx), free(tdw);
    }
    /* Not vacuous: the products really were bf16 (f32 would be ~1e-7
     * from the f32 reference, bf16 is ~1e-3). */
    double *ry = dzeros(rows * out);
    ref_linear_fwd(ry, x, w, bias ? b : NULL, rows, in, out);
    const double e32 = scale_err(y, ry, rows * out);
    ck_assert_msg(e32 > 1e-5, "bf16 linear is %.2e from the f32 reference: not bf16?", e32);
    free(ry);
    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0), free(xr), free(wr);
    free(dyr), free(y), free(gx), free(gw), free(gb);
    dvl_cuda_free(d_x), dvl_cuda_free(d_w), dvl_cuda_free(d_b), dvl_cuda_free(d_dy);
    dvl_cuda_free(d_dx), dvl_cuda_free(d_dw), dvl_cuda_free(d_db), dvl_cuda_free(d_y);
    dvl_cuda_free(d_cs), dvl_cuda_free(d_f), dvl_cuda_free(d_s);
}
#endif

/* The bf16 linear layer (DVL_MATH_BF16) on odd shapes, with and without
 * bias, rows = 600 (three column-sum chunks for db); tolerances in
 * check_linear_bf16. The handle's math mode round trip. */
START_TEST(linear_bf16_matches_reference)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_cublas *h = dvl_cublas_new(false, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_math(h), DVL_MATH_F32);
    ck_assert_msg(dvl_cublas_set_math(h, DVL_MATH_BF16, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_math(h), DVL_MATH_BF16);
    ck_assert(!dvl_cublas_tf32(h));
    check_linear_bf16(h, 37, 61, 29, true);
    check_linear_bf16(h, 600, 45, 33, false);
    check_linear_bf16(h, 1, 7, 3, true);
    check_linear_bf16(h, 256, 896, 128, true); /* tensor-core-friendly sizes */
    ck_assert_int_eq(dvl_cublas_set_math(h, (dvl_cuda_math)7, &err), DVL_EINVAL);
    ck_assert_msg(dvl_cublas_set_math(h, DVL_MATH_F32, &err) == DVL_OK, "%s", err.msg);
    check_linear(h, 37, 61, 29, true, 1e-5, "f32 after bf16");
    dvl_cublas_free(h);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* RMSNorm forward and accumulating backward on one shape. */
static void check_rmsnorm(int64_t rows, int64_t cols)
{
    const float eps = 1e-6f;
    char what[128];
    float *x = host_randn(rows * cols, 21, 1.5f), *w = host_randn(cols, 22, 1.0f);
    float *dy = host_randn(rows * cols, 23, 1.0f), *dx0 = host_randn(rows * cols, 24, 1.0f);
    float *dw0 = host_randn(cols, 25, 1.0f);
    /* Reference in double. */
    double *ry = dzeros(rows * cols), *rr = dzeros(rows), *rdx = dzeros(rows * cols);
    double *rdw = dzeros(cols);
    for (int64_t j = 0; j < cols; j++)
        rdw[j] = dw0[j];
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols, *dyr = dy + r * cols;
        double ss = 0, dot = 0;
        for (int64_t j = 0; j < cols; j++)
            ss += (double)xr[j] * xr[j];
        const double rs = 1.0 / sqrt(ss / (double)cols + eps);
        rr[r] = rs;
        for (int64_t j = 0; j < cols; j++) {
            ry[r * cols + j] = xr[j] * rs * w[j];
            dot += (double)w[j] * dyr[j] * xr[j];
        }
        for (int64_t j = 0; j < cols; j++) {
            rdx[r * cols + j] =
                dx0[r * cols + j] + rs * (w[j] * (double)dyr[j] - xr[j] * rs * rs * dot / cols);
            rdw[j] += (double)dyr[j] * xr[j] * rs;
        }
    }
    /* GPU. */
    float *d_x = upload(x, rows * cols), *d_w = upload(w, cols), *d_dy = upload(dy, rows * cols);
    float *d_dx = upload(dx0, rows * cols), *d_dw = upload(dw0, cols), *d_dw2 = upload(dw0, cols);
    float *d_dx2 = upload(dx0, rows * cols);
    float *d_y = dev_alloc((size_t)(rows * cols) * sizeof(float));
    float *d_rstd = dev_alloc((size_t)rows * sizeof(float));
    float *d_scr = dev_alloc((size_t)dvl_cuda_rmsnorm_bwd_scratch(rows, cols) * sizeof(float));
    dvl_cuda_rmsnorm_fwd(d_y, d_rstd, d_x, d_w, rows, cols, eps);
    dvl_cuda_rmsnorm_bwd(d_dx, d_dw, d_scr, d_dy, d_x, d_w, d_rstd, rows, cols);
    /* The same backward once more: dw alone, then dx alone (NULL skips). */
    dvl_cuda_rmsnorm_bwd(NULL, d_dw2, d_scr, d_dy, d_x, d_w, d_rstd, rows, cols);
    dvl_cuda_rmsnorm_bwd(d_dx2, NULL, NULL, d_dy, d_x, d_w, d_rstd, rows, cols);
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_cuda_check("rmsnorm", &err) == DVL_OK, "%s", err.msg);
    float *y = download(d_y, rows * cols), *rs = download(d_rstd, rows);
    float *gx = download(d_dx, rows * cols), *gw = download(d_dw, cols);
    float *gx2 = download(d_dx2, rows * cols), *gw2 = download(d_dw2, cols);

    snprintf(what, sizeof what, "rmsnorm [%lld,%lld] y", (long long)rows, (long long)cols);
    CHECK_ERR(what, scale_err(y, ry, rows * cols), 1e-5);
    snprintf(what, sizeof what, "rmsnorm [%lld,%lld] rstd", (long long)rows, (long long)cols);
    CHECK_ERR(what, elem_err(rs, rr, rows), 1e-5);
    snprintf(what, sizeof what, "rmsnorm [%lld,%lld] dx", (long long)rows, (long long)cols);
    CHECK_ERR(what, scale_err(gx, rdx, rows * cols), 1e-5);
    snprintf(what, sizeof what, "rmsnorm [%lld,%lld] dw", (long long)rows, (long long)cols);
    CHECK_ERR(what, scale_err(gw, rdw, cols), 1e-5);
    ck_assert_msg(memcmp(gw, gw2, (size_t)cols * sizeof(float)) == 0,
                  "rmsnorm dw differs between two identical runs");
    ck_assert_msg(memcmp(gx, gx2, (size_t)(rows * cols) * sizeof(float)) == 0,
                  "rmsnorm dx differs between two identical runs");

    free(x), free(w), free(dy), free(dx0), free(dw0);
    free(ry), free(rr), free(rdx), free(rdw);
    free(y), free(rs), free(gx), free(gw), free(gx2), free(gw2);
    dvl_cuda_free(d_x), dvl_cuda_free(d_w), dvl_cuda_free(d_dy), dvl_cuda_free(d_dx);
    dvl_cuda_free(d_dw), dvl_cuda_free(d_dw2), dvl_cuda_free(d_dx2), dvl_cuda_free(d_y);
    dvl_cuda_free(d_rstd), dvl_cuda_free(d_scr);
}
#endif

/* y and dx, dw: scale_err <= 1e-5; rstd: elem_err <= 1e-5. Shapes: odd, a
 * row shorter than a warp, and 700 rows (three dw chunks of 256). dw and dx
 * must be bitwise identical across runs (deterministic reductions). */
START_TEST(rmsnorm_matches_reference)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    check_rmsnorm(37, 61);
    check_rmsnorm(13, 7);
    check_rmsnorm(700, 129);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* elem_err <= 1e-5 for silu/swiglu forward and backward (accumulating onto
 * random gradients) over n = 1001 values of std 3 plus saturating values
 * (+-30, +-100), which must come out finite. */
START_TEST(silu_swiglu_match_reference)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const int64_t n = 1001;
    float *g = host_randn(n, 31, 3.0f), *u = host_randn(n, 32, 1.0f);
    float *dy = host_randn(n, 33, 1.0f), *d0 = host_randn(n, 34, 1.0f);
    float *e0 = host_randn(n, 35, 1.0f);
    g[0] = 30, g[1] = -30, g[2] = 100, g[3] = -100, g[4] = 0;
    double *ry = dzeros(n), *rdx = dzeros(n), *rsy = dzeros(n), *rdg = dzeros(n);
    double *rdu = dzeros(n);
    for (int64_t i = 0; i < n; i++) {
        const double v = g[i], s = 1.0 / (1.0 + exp(-v)), ds = s * (1.0 + v * (1.0 - s));
        ry[i] = v * s;
        rdx[i] = d0[i] + (double)dy[i] * ds;
        rsy[i] = v * s * u[i];
        rdg[i] = d0[i] + (double)dy[i] * u[i] * ds;
        rdu[i] = e0[i] + (double)dy[i] * v * s;
    }
    float *d_g = upload(g, n), *d_u = upload(u, n), *d_dy = upload(dy, n);
    float *d_dx = upload(d0, n), *d_dg = upload(d0, n), *d_du = upload(e0, n);
    float *d_du2 = upload(e0, n);
    float *d_y = dev_alloc((size_t)n * sizeof(float)), *d_sy = dev_alloc((size_t)n * sizeof(float));
    dvl_cuda_silu_fwd(d_y, d_g, n);
    dvl_cuda_silu_bwd(d_dx, d_dy, d_g, n);
    dvl_cuda_swiglu_fwd(d_sy, d_g, d_u, 1, n, n);
    dvl_cuda_swiglu_bwd(d_dg, d_du, d_dy, d_g, d_u, 1, n, n);
    dvl_cuda_swiglu_bwd(NULL, d_du2, d_dy, d_g, d_u, 1, n, n); /* gate frozen */
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_cuda_check("silu/swiglu", &err) == DVL_OK, "%s", err.msg);
    float *y = download(d_y, n), *gx = download(d_dx, n), *sy = download(d_sy, n);
    float *gg = download(d_dg, n), *gu = download(d_du, n), *gu2 = download(d_du2, n);
    CHECK_ERR("silu y", elem_err(y, ry, n), 1e-5);
    CHECK_ERR("silu dx", elem_err(gx, rdx, n), 1e-5);
    CHECK_ERR("swiglu y", elem_err(sy, rsy, n), 1e-5);
    CHECK_ERR("swiglu dgate", elem_err(gg, rdg, n), 1e-5);
    CHECK_ERR("swiglu dup", elem_err(gu, rdu, n), 1e-5);
    ck_assert_mem_eq(gu, gu2, (size_t)n * sizeof(float));
    free(g), free(u), free(dy), free(d0), free(e0);
    free(ry), free(rdx), free(rsy), free(rdg), free(rdu);
    free(y), free(gx), free(sy), free(gg), free(gu), free(gu2);
    dvl_cuda_free(d_g), dvl_cuda_free(d_u), dvl_cuda_free(d_dy), dvl_cuda_free(d_dx);
    dvl_cuda_free(d_dg), dvl_cuda_free(d_du), dvl_cuda_free(d_du2), dvl_cuda_free(d_y);
    dvl_cuda_free(d_sy);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Four AdamW steps from m = v = 0 against torch.optim.AdamW's formula in
 * double. lr 0.1 and wd 0.1 make every term visible at f32 precision
 * (weight decay alone moves p by 1%); grads of std 0.05 next to eps 1e-2
 * make the placement of eps (outside the square root, after the bias
 * correction) matter. p: elem_err <= 1e-5; m, v: scale_err <= 1e-5. */
START_TEST(adamw_matches_torch_formula)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const int64_t n = 1001;
    const float lr = 0.1f, b1 = 0.9f, b2 = 0.95f, eps = 1e-2f, wd = 0.1f;
    float *p = host_randn(n, 41, 1.0f);
    float *zero = calloc((size_t)n, sizeof(float));
    ck_assert_ptr_nonnull(zero);
    double *rp = dzeros(n), *rm = dzeros(n), *rv = dzeros(n);
    for (int64_t i = 0; i < n; i++)
        rp[i] = p[i];
    float *d_p = upload(p, n), *d_m = upload(zero, n), *d_v = upload(zero, n);
    for (int64_t t = 1; t <= 4; t++) {
        float *g = host_randn(n, 100 + (uint64_t)t, 0.05f);
        float *d_g = upload(g, n);
        dvl_cuda_adamw(d_p, d_g, 1.0f, d_m, d_v, n, lr, b1, b2, eps, wd, t);
        const double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
        for (int64_t i = 0; i < n; i++) {
            rp[i] *= 1.0 - (double)lr * wd;
            rm[i] = b1 * rm[i] + (1.0 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1.0 - b2) * (double)g[i] * g[i];
            rp[i] -= lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + eps);
        }
        dvl_err err = {0, ""};
        ck_assert_msg(dvl_cuda_sync("adamw", &err) == DVL_OK, "%s", err.msg);
        dvl_cuda_free(d_g);
        free(g);
    }
    float *gp = download(d_p, n), *gm = download(d_m, n), *gv = download(d_v, n);
    CHECK_ERR("adamw p", elem_err(gp, rp, n), 1e-5);
    CHECK_ERR("adamw m", scale_err(gm, rm, n), 1e-5);
    CHECK_ERR("adamw v", scale_err(gv, rv, n), 1e-5);
    /* The check is not vacuous: p moved by far more than the tolerance. */
    double moved = 0;
    for (int64_t i = 0; i < n; i++)
        moved = fmax(moved, fabs((double)gp[i] - p[i]));
    ck_assert_msg(moved > 0.1, "adamw moved p by only %g", moved);
    free(p), free(zero), free(rp), free(rm), free(rv), free(gp), free(gm), free(gv);
    dvl_cuda_free(d_p), dvl_cuda_free(d_m), dvl_cuda_free(d_v);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

/* Not an assertion: cuBLAS throughput at 4096^3 (2 * 4096^3 flops per
 * product; mean of 20 after 3 warm-ups, random data), for the record. */
START_TEST(gemm_throughput_4096_print)
{
#ifdef DVL_HAVE_CUDA
    if (!big_gpu_or_skip("gemm_throughput_4096_print"))
        return;
    const int64_t N = 4096, nn = N * N, iters = 20;
    dvl_err err = {0, ""};
    float *a = host_randn(nn, 51, 1.0f);
    uint16_t *ab = to_bf16(a, nn);
    float *d_a = upload(a, nn), *d_b = upload(a, nn);
    float *d_c = dev_alloc((size_t)nn * sizeof(float));
    uint16_t *d_ab = upload16(ab, nn), *d_bb = upload16(ab, nn);
    uint16_t *d_cb = dev_alloc((size_t)nn * sizeof(uint16_t));
    dvl_cublas *h = dvl_cublas_new(false, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    char desc[256] = "?";
    dvl_cuda_describe(0, desc, sizeof desc, &err);
    const char *names[4] = {"sgemm f32", "sgemm tf32", "bf16 gemm (f32 out)",
                            "bf16 gemm (bf16 out)"};
    for (int kind = 0; kind < 4; kind++) {
        ck_assert_msg(dvl_cublas_set_tf32(h, kind == 1, &err) == DVL_OK, "%s", err.msg);
        double t0 = 0;
        for (int64_t it = 0; it < 3 + iters; it++) {
            if (it == 3) {
                ck_assert_msg(dvl_cuda_sync("gemm warm-up", &err) == DVL_OK, "%s", err.msg);
                t0 = now_s();
            }
            int rc = kind < 2
                         ? dvl_cuda_linear_fwd(h, d_c, d_a, d_b, NULL, N, N, N, &err)
                         : dvl_cuda_matmul_bf16(h, kind == 2 ? (void *)d_c : (void *)d_cb,
                                                kind == 2 ? DVL_F32 : DVL_BF16, d_ab, d_bb, N, N,
                                                N, &err);
            ck_assert_msg(rc == DVL_OK, "%s", err.msg);
        }
        ck_assert_msg(dvl_cuda_sync("gemm timing", &err) == DVL_OK, "%s", err.msg);
        const double dt = (now_s() - t0) / (double)iters;
        printf("test_cuda: %s 4096^3: %.1f GFLOP/s (%.3f ms) on %s\n", names[kind],
               2.0 * (double)N * N * N / dt * 1e-9, dt * 1e3, desc);
    }
    fflush(stdout);
    dvl_cublas_free(h);
    free(a), free(ab);
    dvl_cuda_free(d_a), dvl_cuda_free(d_b), dvl_cuda_free(d_c);
    dvl_cuda_free(d_ab), dvl_cuda_free(d_bb), dvl_cuda_free(d_cb);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* ======================================================================
 * The op layer on a CUDA context against the same ops on a CPU context:
 * every op through the autograd API (dvl_from_host inputs, the op, then
 * dvl_backward_seed with one random seed), comparing the output and every
 * input gradient. Error metric: rel_err = max_i |cuda_i - cpu_i| /
 * max_i |cpu_i| (relative to the tensor's scale). Tolerances, stated per
 * case: 1e-5 for elementwise maps, 1e-4 for reductions, products,
 * normalisations, cross-entropy and attention (different summation orders
 * in f32; cuBLAS in full f32, not TF32). Inputs that do not require a
 * gradient must not get a gradient buffer on the GPU either.
 * ====================================================================== */
#ifdef DVL_HAVE_CUDA

#define MAX_IN 4

typedef struct op_case op_case;
struct op_case {
    const char *name;
    int n_in;
    int ndim[MAX_IN];
    int64_t shape[MAX_IN][DVL_MAX_DIMS];
    bool grad[MAX_IN]; /* requires_grad */
    float std[MAX_IN]; /* of the random input; 0 means 1 */
    dvl_tensor *(*run)(dvl_ctx *ctx, dvl_tensor **in, const op_case *c);
    /* op arguments */
    const int32_t *idx, *idx2;
    int64_t n_idx;
    const float *wts;
    dvl_mask mask;
    float f;
    int kind;
    dvl_cuda_math math; /* of the CUDA context's products (default f32) */
    double fwd_tol, grad_tol;
    /* Inputs whose gradient is zero in exact arithmetic (dq and dk of
     * attention where every query sees one key: softmax of one score is
     * constant), so
     * both devices return rounding noise: their largest |entry| is checked
     * against this instead of a relative error. */
    bool grad_zero[MAX_IN];
    double zero_tol;
};

typedef struct dev_out {
    float *y;
    int64_t ny;
    float *g[MAX_IN];
    bool had_grad[MAX_IN];
} dev_out;

static double rel_err(const float *got, const float *ref, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert_msg(isfinite(got[i]) || !isfinite(ref[i]), "element %lld is %g (reference %g)",
                      (long long)i, (double)got[i], (double)ref[i]);
        if (!isfinite(ref[i]))
            continue;
        md = fmax(md, fabs((double)got[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return mr > 0 ? md / mr : md;
}

static double max_abs(const float *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i]));
    return m;
}

static int64_t shape_numel(int ndim, const int64_t *s)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= s[i];
    return n;
}

static void run_on(const op_case *c, dvl_device dev, float *const *host_in, dev_out *r)
{
    static const char *names[MAX_IN] = {"in0", "in1", "in2", "in3"};
    const char *dn = dev == DVL_CUDA ? "cuda" : "cpu";
    dvl_err err = {0, ""};
    dvl_ctx *ctx = dvl_ctx_new_err(dev, &err);
    ck_assert_msg(ctx != NULL, "%s: context on %s: %s", c->name, dn, err.msg);
    if (dev == DVL_CUDA)
        ck_assert_msg(dvl_cublas_set_math(dvl_ctx_cublas(ctx), c->math, &err) == DVL_OK, "%s",
                      err.msg);
    dvl_tensor *in[MAX_IN] = {0};
    bool any_grad = false;
    for (int k = 0; k < c->n_in; k++) {
        in[k] = dvl_from_host(ctx, DVL_F32, c->ndim[k], c->shape[k], host_in[k]);
        ck_assert_msg(in[k] != NULL, "%s: input %d on %s: %s", c->name, k, dn,
                      dvl_ctx_err(ctx)->msg);
        ck_assert_int_eq(in[k]->device, dev);
        in[k]->requires_grad = c->grad[k];
        in[k]->name = names[k];
        any_grad |= c->grad[k];
    }
    dvl_tensor *y = c->run(ctx, in, c);
    ck_assert_msg(y != NULL, "%s on %s: %s", c->name, dn, dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(y->device, dev);
    r->ny = dvl_numel(y);
    r->y = malloc((size_t)r->ny * sizeof(float));
    ck_assert_ptr_nonnull(r->y);
    ck_assert_msg(dvl_tensor_to_host(ctx, y, r->y) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    if (any_grad) {
        float *seed = host_randn(r->ny, 99, 1.0f);
        ck_assert_msg(dvl_backward_seed(ctx, y, seed) == DVL_OK, "%s backward on %s: %s",
                      c->name, dn, dvl_ctx_err(ctx)->msg);
        free(seed);
    }
    for (int k = 0; k < c->n_in; k++) {
        r->had_grad[k] = dvl_has_grad(in[k]);
        r->g[k] = NULL;
        if (c->grad[k]) {
            int64_t n = dvl_numel(in[k]);
            r->g[k] = malloc((size_t)n * sizeof(float));
            ck_assert_ptr_nonnull(r->g[k]);
            ck_assert_msg(dvl_tensor_grad_to_host(ctx, in[k], r->g[k]) == DVL_OK, "%s",
                          dvl_ctx_err(ctx)->msg);
        }
    }
    if (dev == DVL_CUDA)
        ck_assert_msg(dvl_cuda_sync(c->name, &err) == DVL_OK, "%s", err.msg);
    ck_assert_msg(dvl_ctx_ok(ctx), "%s on %s: %s", c->name, dn, dvl_ctx_err(ctx)->msg);
    dvl_ctx_free(ctx);
}

/* One case on both devices; prints the errors. */
static void check_case(const op_case *c)
{
    float *host[MAX_IN];
    for (int k = 0; k < c->n_in; k++)
        host[k] = host_randn(shape_numel(c->ndim[k], c->shape[k]), 1000 + (uint64_t)k,
                             c->std[k] > 0 ? c->std[k] : 1.0f);
    dev_out cpu, gpu;
    run_on(c, DVL_CPU, host, &cpu);
    run_on(c, DVL_CUDA, host, &gpu);
    ck_assert_int_eq(cpu.ny, gpu.ny);
    char what[160];
    double e = rel_err(gpu.y, cpu.y, cpu.ny);
    printf("test_cuda: %-34s forward rel_err %.2e (tol %.0e)", c->name, e, c->fwd_tol);
    snprintf(what, sizeof what, "%s forward", c->name);
    CHECK_ERR(what, e, c->fwd_tol);
    for (int k = 0; k < c->n_in; k++) {
        if (!c->grad[k]) {
            ck_assert_msg(!gpu.had_grad[k], "%s: frozen input %d got a gradient on the GPU",
                          c->name, k);
            continue;
        }
        const int64_t n = shape_numel(c->ndim[k], c->shape[k]);
        if (c->grad_zero[k]) {
            e = fmax(max_abs(gpu.g[k], n), max_abs(cpu.g[k], n));
            printf(", d%d max|.| %.2e (zero in exact arithmetic, tol %.0e)", k, e, c->zero_tol);
            snprintf(what, sizeof what, "%s gradient of input %d (zero)", c->name, k);
            CHECK_ERR(what, e, c->zero_tol);
            free(cpu.g[k]), free(gpu.g[k]);
            continue;
        }
        e = rel_err(gpu.g[k], cpu.g[k], n);
        printf(", d%d %.2e", k, e);
        snprintf(what, sizeof what, "%s gradient of input %d", c->name, k);
        CHECK_ERR(what, e, c->grad_tol);
        free(cpu.g[k]), free(gpu.g[k]);
    }
    printf("\n");
    fflush(stdout);
    for (int k = 0; k < c->n_in; k++)
        free(host[k]);
    free(cpu.y), free(gpu.y);
}

static dvl_tensor *r_add(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_add(x, in[0], in[1]);
}
static dvl_tensor *r_add_self(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_add(x, in[0], in[0]);
}
static dvl_tensor *r_mul(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_mul(x, in[0], in[1]);
}
static dvl_tensor *r_scale(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_scale(x, in[0], c->f);
}
static dvl_tensor *r_silu(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_silu(x, in[0]);
}
static dvl_tensor *r_swiglu(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_swiglu(x, in[0], in[1]);
}
static dvl_tensor *r_gelu(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_gelu(x, in[0], (dvl_gelu_kind)c->kind);
}
static dvl_tensor *r_sum(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_sum(x, in[0]);
}
static dvl_tensor *r_softmax(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_softmax(x, in[0]);
}
static dvl_tensor *r_rmsnorm(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_rmsnorm(x, in[0], in[1], c->f);
}
static dvl_tensor *r_layernorm(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_layernorm(x, in[0], in[1], c->n_in > 2 ? in[2] : NULL, c->f);
}
static dvl_tensor *r_linear(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_linear(x, in[0], in[1], c->n_in > 2 ? in[2] : NULL);
}
/* linear_cat over three consecutive views of in[1] [out rows, in] (rows
 * c->kind, then (out - kind) / 2 twice: q, k, v) with the same views of the
 * bias in[2] when given. */
static dvl_tensor *r_linear_cat(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    const int64_t out = in[1]->shape[0], cols = in[1]->shape[1], q = c->kind;
    const int64_t rows[3] = {q, (out - q) / 2, (out - q) / 2};
    dvl_tensor *w[3], *b[3];
    for (int k = 0, at = 0; k < 3; at += (int)rows[k], k++) {
        const int64_t ws[2] = {rows[k], cols}, bs[1] = {rows[k]};
        w[k] = dvl_view(x, in[1], 2, ws, at * cols);
        b[k] = c->n_in > 2 ? dvl_view(x, in[2], 1, bs, at) : NULL;
    }
    return dvl_linear_cat(x, in[0], 3, w, c->n_in > 2 ? b : NULL);
}
/* dvl_swiglu_mlp with gate and up the two halves of in[1] [2 I, d] (views:
 * one matrix) and down in[2] [d_out, I]; bf16 activations on the CUDA
 * context unless c->kind is 1 (then f32 ones: the three-op form). */
static dvl_tensor *r_swiglu_mlp(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    const int64_t I = in[1]->shape[0] / 2, d = in[1]->shape[1], ws[2] = {I, d};
    dvl_tensor *gu[2] = {dvl_view(x, in[1], 2, ws, 0), dvl_view(x, in[1], 2, ws, I * d)};
    dvl_ctx_set_bf16_activations(x, c->kind != 1);
    return dvl_swiglu_mlp(x, in[0], gu, in[2]);
}
/* The middle columns, scaled (a gradient that is not all ones). */
static dvl_tensor *r_slice_cols(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_scale(x, dvl_slice_cols(x, in[0], 3, dvl_cols(in[0]) - 5), c->f);
}
static dvl_tensor *r_swiglu_cat(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_swiglu_cat(x, in[0]);
}
static dvl_tensor *r_embedding(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_embedding(x, in[0], c->idx, c->n_idx);
}
static dvl_tensor *r_rope(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_rope(x, in[0], c->idx, c->f);
}
/* Two heads of 8 from column 4 of in[0] [10, 28] (N 2, T 5), in place. */
static dvl_tensor *r_rope_cols(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    const int64_t s[4] = {2, 5, 2, 8};
    return dvl_rope_cols(x, in[0], 4, s, c->idx, c->f);
}
/* One table on in[0]'s device for two reads of it, columns 4.. and 12..
 * (overlapping: their gradients add), as a model's q and k share one. */
static dvl_tensor *r_rope_with(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    const int64_t s[4] = {2, 5, 2, 8};
    const dvl_rope_table *t = dvl_rope_table_make(x, in[0]->device, c->idx, 10, 8, c->f);
    return dvl_add(x, dvl_rope_cols_with(x, in[0], 4, s, t),
                   dvl_rope_cols_with(x, in[0], 12, s, t));
}
static dvl_tensor *r_concat(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    (void)c;
    return dvl_concat_rows(x, in[0], in[1]);
}
/* A slice is a view: scaled so that the output is a new tensor whose
 * gradient reaches x through the shared gradient buffer. */
static dvl_tensor *r_slice(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_scale(x, dvl_slice_rows(x, in[0], 2, 3), c->f);
}
static dvl_tensor *r_gather(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_gather_rows(x, in[0], c->idx, c->n_idx);
}
static dvl_tensor *r_scatter(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_scatter_rows(x, in[0], in[1], c->idx);
}
static dvl_tensor *r_xent(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_cross_entropy(x, in[0], c->idx, c->wts);
}
static dvl_tensor *r_lxent(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_linear_cross_entropy(x, in[0], in[1], c->idx, c->wts, 5);
}
/* The fused op with chunk c->kind (0: DVL_XENT_CHUNK, which is >= V here,
 * so one chunk of the whole vocabulary). */
static dvl_tensor *r_lxent_chunk(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_linear_cross_entropy(x, in[0], in[1], c->idx, c->wts, c->kind);
}
static dvl_tensor *r_attention(dvl_ctx *x, dvl_tensor **in, const op_case *c)
{
    return dvl_attention(x, in[0], in[1], in[2], &c->mask, c->f);
}

#define S1(a) {a}
#define S2(a, b) {a, b}

#endif /* DVL_HAVE_CUDA */

START_TEST(elementwise_ops_match_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const op_case cases[] = {
        {.name = "add [7,13]", .n_in = 2, .ndim = {2, 2}, .shape = {S2(7, 13), S2(7, 13)},
         .grad = {true, true}, .run = r_add, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "add a+a", .n_in = 1, .ndim = {2}, .shape = {S2(7, 13)}, .grad = {true},
         .run = r_add_self, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "add, b frozen", .n_in = 2, .ndim = {1, 1}, .shape = {S1(33), S1(33)},
         .grad = {true, false}, .run = r_add, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "mul [7,13]", .n_in = 2, .ndim = {2, 2}, .shape = {S2(7, 13), S2(7, 13)},
         .grad = {true, true}, .run = r_mul, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "scale 0.7", .n_in = 1, .ndim = {1}, .shape = {S1(1001)}, .grad = {true},
         .run = r_scale, .f = 0.7f, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "silu std 3", .n_in = 1, .ndim = {1}, .shape = {S1(1001)}, .grad = {true},
         .std = {3}, .run = r_silu, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "swiglu", .n_in = 2, .ndim = {1, 1}, .shape = {S1(1001), S1(1001)},
         .grad = {true, true}, .std = {3, 1}, .run = r_swiglu, .fwd_tol = 1e-5,
         .grad_tol = 1e-5},
        {.name = "gelu erf std 3", .n_in = 1, .ndim = {1}, .shape = {S1(1001)}, .grad = {true},
         .std = {3}, .run = r_gelu, .kind = DVL_GELU_ERF, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "gelu tanh std 3", .n_in = 1, .ndim = {1}, .shape = {S1(1001)},
         .grad = {true}, .std = {3}, .run = r_gelu, .kind = DVL_GELU_TANH, .fwd_tol = 1e-5,
         .grad_tol = 1e-5},
        {.name = "sum [1001] (reduction)", .n_in = 1, .ndim = {1}, .shape = {S1(1001)},
         .grad = {true}, .run = r_sum, .fwd_tol = 1e-4, .grad_tol = 1e-5},
        {.name = "softmax [7,33]", .n_in = 1, .ndim = {2}, .shape = {S2(7, 33)},
         .grad = {true}, .std = {3}, .run = r_softmax, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "softmax [40,70]", .n_in = 1, .ndim = {2}, .shape = {S2(40, 70)},
         .grad = {true}, .std = {3}, .run = r_softmax, .fwd_tol = 1e-5, .grad_tol = 1e-4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

START_TEST(norm_linear_ops_match_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const op_case cases[] = {
        {.name = "rmsnorm [13,33]", .n_in = 2, .ndim = {2, 1}, .shape = {S2(13, 33), S1(33)},
         .grad = {true, true}, .run = r_rmsnorm, .f = 1e-6f, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "rmsnorm [300,7], w frozen", .n_in = 2, .ndim = {2, 1},
         .shape = {S2(300, 7), S1(7)}, .grad = {true, false}, .run = r_rmsnorm, .f = 1e-6f,
         .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "layernorm [13,33] with bias", .n_in = 3, .ndim = {2, 1, 1},
         .shape = {S2(13, 33), S1(33), S1(33)}, .grad = {true, true, true},
         .run = r_layernorm, .f = 1e-5f, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "layernorm [9,7] no bias", .n_in = 2, .ndim = {2, 1},
         .shape = {S2(9, 7), S1(7)}, .grad = {true, true}, .run = r_layernorm, .f = 1e-5f,
         .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear [2,7,13]x[9,13]^T + b", .n_in = 3, .ndim = {3, 2, 1},
         .shape = {{2, 7, 13}, S2(9, 13), S1(9)}, .grad = {true, true, true},
         .run = r_linear, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear, W frozen", .n_in = 2, .ndim = {2, 2}, .shape = {S2(5, 13), S2(9, 13)},
         .grad = {true, false}, .run = r_linear, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear_cat q 8, k 4, v 4 + b", .n_in = 3, .ndim = {3, 2, 1},
         .shape = {{2, 7, 13}, S2(16, 13), S1(16)}, .grad = {true, true, true},
         .run = r_linear_cat, .kind = 8, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear_cat [300,96], W frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(300, 96), S2(160, 96)}, .grad = {true, false}, .run = r_linear_cat,
         .kind = 128, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "swiglu_cat [7,2x33]", .n_in = 1, .ndim = {2}, .shape = {S2(7, 66)},
         .grad = {true}, .std = {3}, .run = r_swiglu_cat, .fwd_tol = 1e-5, .grad_tol = 1e-5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

START_TEST(index_ops_match_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    /* Repeated ids/indices: the scatter-add backward must add them all. */
    static const int32_t ids[15] = {3, 0, 10, 3, 3, 7, 1, 0, 9, 10, 2, 3, 5, 5, 4};
    static const int32_t gidx[9] = {6, 0, 6, 2, 2, 2, 5, 1, 6};
    static const int32_t sidx[3] = {6, 1, 3};
    /* Positions of two sequences, the second far out (large float angles). */
    static const int32_t pos[10] = {0, 1, 2, 3, 4, 1000, 1001, 1002, 4093, 4094};
    const op_case cases[] = {
        {.name = "embedding [11,6] x 15 ids", .n_in = 1, .ndim = {2}, .shape = {S2(11, 6)},
         .grad = {true}, .run = r_embedding, .idx = ids, .n_idx = 15, .fwd_tol = 0,
         .grad_tol = 1e-5},
        {.name = "rope [2,5,3,8]", .n_in = 1, .ndim = {4}, .shape = {{2, 5, 3, 8}},
         .grad = {true}, .run = r_rope, .idx = pos, .f = 10000.0f, .fwd_tol = 1e-5,
         .grad_tol = 1e-5},
        {.name = "rope_cols 2x8 at column 4 of [10,28]", .n_in = 1, .ndim = {2},
         .shape = {S2(10, 28)}, .grad = {true}, .run = r_rope_cols, .idx = pos, .f = 10000.0f,
         .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "rope_cols_with one table, columns 4 and 12", .n_in = 1, .ndim = {2},
         .shape = {S2(10, 28)}, .grad = {true}, .run = r_rope_with, .idx = pos, .f = 10000.0f,
         .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "concat_rows [3,5];[4,5]", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(3, 5), S2(4, 5)}, .grad = {true, true}, .run = r_concat, .fwd_tol = 0,
         .grad_tol = 0},
        {.name = "slice_rows 2..5 of [7,5]", .n_in = 1, .ndim = {2}, .shape = {S2(7, 5)},
         .grad = {true}, .run = r_slice, .f = 1.5f, .fwd_tol = 1e-5, .grad_tol = 1e-5},
        {.name = "slice_cols 3..10 of [4,3,12]", .n_in = 1, .ndim = {3}, .shape = {{4, 3, 12}},
         .grad = {true}, .run = r_slice_cols, .f = 1.5f, .fwd_tol = 0, .grad_tol = 0},
        {.name = "gather_rows [7,5] x 9", .n_in = 1, .ndim = {2}, .shape = {S2(7, 5)},
         .grad = {true}, .run = r_gather, .idx = gidx, .n_idx = 9, .fwd_tol = 0,
         .grad_tol = 1e-5},
        {.name = "scatter_rows [8,5] <- [3,5]", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(8, 5), S2(3, 5)}, .grad = {true, true}, .run = r_scatter, .idx = sidx,
         .fwd_tol = 0, .grad_tol = 0},
        {.name = "scatter_rows, dst frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(8, 5), S2(3, 5)}, .grad = {false, true}, .run = r_scatter, .idx = sidx,
         .fwd_tol = 0, .grad_tol = 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* The fused op's chunked CUDA path (vocabulary chunks of C logits, online
 * log-sum-exp, backward recomputing each chunk) against the CPU op at odd
 * sizes: 1, 7 and 33 supervised rows among ignored ones, V not a multiple
 * of C, C = V, C = 1, labels all in the first or all in the last chunk,
 * weighted and not, h or W frozen. Tolerances: the loss within rel_err
 * 1e-5 and dh, dW within 1e-4 (f32 products in another order: cuBLAS
 * against OpenBLAS; the chunk kernels follow the CPU's formulas, which
 * tools/cuda-emu checks to float rounding). */
static void lxent_chunked_cases(void)
{
    enum { N = 40 };
    int32_t one[3] = {DVL_IGNORE_INDEX, 12, DVL_IGNORE_INDEX}; /* in the last chunk of C=5 */
    int32_t seven[N], first[N], last[N], many[N];
    float wts[N];
    for (int i = 0; i < N; i++) {
        seven[i] = i < 7 ? (int32_t)((i * 37 + 11) % 100) : DVL_IGNORE_INDEX;
        /* 33 of 40 rows supervised, every 6th ignored. */
        const bool sup = i % 6 != 5;
        first[i] = sup ? (int32_t)((i * 53) % 256) : DVL_IGNORE_INDEX;       /* [0, 256) */
        last[i] = sup ? (int32_t)(768 + (i * 29) % 232) : DVL_IGNORE_INDEX;  /* [768, 1000) */
        many[i] = sup ? (int32_t)((i * 7919) % 1000) : DVL_IGNORE_INDEX;
        wts[i] = 0.25f + (float)(i % 5) * 0.375f;
    }
    seven[0] = 0, seven[6] = 99; /* the first and the last column */
    const op_case cases[] = {
        {.name = "lxent n_sup 1 V 13 C 5", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(3, 16), S2(13, 16)}, .grad = {true, true}, .run = r_lxent_chunk,
         .idx = one, .wts = wts, .kind = 5, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "lxent n_sup 7 V 100 C = V", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 8), S2(100, 8)}, .grad = {true, true}, .run = r_lxent_chunk,
         .idx = seven, .kind = 0, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "lxent n_sup 7 V 100 C 1", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 8), S2(100, 8)}, .grad = {true, true}, .run = r_lxent_chunk,
         .idx = seven, .wts = wts, .kind = 1, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "lxent n_sup 33 V 1000 C 256 weighted", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 24), S2(1000, 24)}, .grad = {true, true}, .std = {1, 0.5f},
         .run = r_lxent_chunk, .idx = many, .wts = wts, .kind = 256, .fwd_tol = 1e-5,
         .grad_tol = 1e-4},
        {.name = "lxent n_sup 33 labels first chunk", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 24), S2(1000, 24)}, .grad = {true, true}, .std = {1, 0.5f},
         .run = r_lxent_chunk, .idx = first, .kind = 256, .fwd_tol = 1e-5, .grad_tol = 1e-4},
        {.name = "lxent n_sup 33 labels last chunk", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 24), S2(1000, 24)}, .grad = {true, true}, .std = {1, 0.5f},
         .run = r_lxent_chunk, .idx = last, .wts = wts, .kind = 300, .fwd_tol = 1e-5,
         .grad_tol = 1e-4},
        {.name = "lxent n_sup 33, h frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 24), S2(1000, 24)}, .grad = {false, true}, .std = {1, 0.5f},
         .run = r_lxent_chunk, .idx = many, .wts = wts, .kind = 300, .fwd_tol = 1e-5,
         .grad_tol = 1e-4},
        {.name = "lxent n_sup 33, W frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(N, 24), S2(1000, 24)}, .grad = {true, false}, .std = {1, 0.5f},
         .run = r_lxent_chunk, .idx = many, .kind = 300, .fwd_tol = 1e-5, .grad_tol = 1e-4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
}
#endif

START_TEST(cross_entropy_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    static const int32_t labels[9] = {3, DVL_IGNORE_INDEX, 12, 0, 7, 7, DVL_IGNORE_INDEX, 1, 5};
    static const float wts[9] = {0.5f, 1, 0.25f, 1, 2, 0.125f, 1, 1, 0.75f};
    const op_case cases[] = {
        {.name = "cross_entropy [9,13] weighted", .n_in = 1, .ndim = {2},
         .shape = {S2(9, 13)}, .grad = {true}, .std = {3}, .run = r_xent, .idx = labels,
         .wts = wts, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "cross_entropy [9,13] unweighted", .n_in = 1, .ndim = {2},
         .shape = {S2(9, 13)}, .grad = {true}, .std = {3}, .run = r_xent, .idx = labels,
         .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear_cross_entropy h[9,16] W[13,16]", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(9, 16), S2(13, 16)}, .grad = {true, true}, .run = r_lxent,
         .idx = labels, .wts = wts, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "cross_entropy [5,100] (V > 32 lanes)", .n_in = 1, .ndim = {2},
         .shape = {S2(5, 100)}, .grad = {true}, .std = {3}, .run = r_xent, .idx = labels,
         .wts = wts, .fwd_tol = 1e-4, .grad_tol = 1e-4},
        {.name = "linear_cross_entropy, W frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(9, 16), S2(13, 16)}, .grad = {true, false}, .run = r_lxent,
         .idx = labels, .fwd_tol = 1e-4, .grad_tol = 1e-4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
    lxent_chunked_cases();
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The linear op and the LM-head product of linear_cross_entropy on a
 * context in DVL_MATH_BF16 against the f32 CPU ops. Operands rounded to
 * bf16 (relative error 2^-9 each) with f32 accumulation: the linear
 * output and gradients within rel_err 1e-2 (db is an f32 column sum). The
 * cross-entropy loss within 1e-2 and its gradients within 2e-2 (the
 * logits' rounding error passes through softmax before the backward
 * products round again); W of std 0.25 keeps the logits O(1). */
START_TEST(bf16_ops_match_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    static const int32_t labels[9] = {3, DVL_IGNORE_INDEX, 12, 0, 7, 7, DVL_IGNORE_INDEX, 1, 5};
    static const float wts[9] = {0.5f, 1, 0.25f, 1, 2, 0.125f, 1, 1, 0.75f};
    const op_case cases[] = {
        {.name = "bf16 linear [2,7,13]x[9,13]^T + b", .n_in = 3, .ndim = {3, 2, 1},
         .shape = {{2, 7, 13}, S2(9, 13), S1(9)}, .grad = {true, true, true}, .run = r_linear,
         .math = DVL_MATH_BF16, .fwd_tol = 1e-2, .grad_tol = 1e-2},
        {.name = "bf16 linear [300,96]x[40,96]^T, W frozen", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(300, 96), S2(40, 96)}, .grad = {true, false}, .run = r_linear,
         .math = DVL_MATH_BF16, .fwd_tol = 1e-2, .grad_tol = 1e-2},
        {.name = "bf16 linear_cat q 64, k 32, v 32 + b", .n_in = 3, .ndim = {2, 2, 1},
         .shape = {S2(300, 96), S2(128, 96), S1(128)}, .grad = {true, true, true},
         .run = r_linear_cat, .kind = 64, .math = DVL_MATH_BF16, .fwd_tol = 1e-2,
         .grad_tol = 1e-2},
        /* The fused MLP (bf16 [gate | up] and SwiGLU outputs, dA and dGU):
         * each rounded once more than in the three-op form, 2e-2 / 3e-2;
         * trainable, frozen (stage 1), x without gradient, d_out != d, and
         * the three-op form (bf16 activations off) at the linear's 1e-2. */
        {.name = "bf16 swiglu_mlp [2,75,64] I 96", .n_in = 3, .ndim = {3, 2, 2},
         .shape = {{2, 75, 64}, S2(192, 64), S2(64, 96)}, .grad = {true, true, true},
         .std = {1, 0.2f, 0.2f}, .run = r_swiglu_mlp, .math = DVL_MATH_BF16, .fwd_tol = 2e-2,
         .grad_tol = 3e-2},
        {.name = "bf16 swiglu_mlp, weights frozen", .n_in = 3, .ndim = {2, 2, 2},
         .shape = {S2(150, 64), S2(192, 64), S2(64, 96)}, .grad = {true, false, false},
         .std = {1, 0.2f, 0.2f}, .run = r_swiglu_mlp, .math = DVL_MATH_BF16, .fwd_tol = 2e-2,
         .grad_tol = 3e-2},
        {.name = "bf16 swiglu_mlp, x frozen, d_out 40", .n_in = 3, .ndim = {2, 2, 2},
         .shape = {S2(33, 64), S2(96, 64), S2(40, 48)}, .grad = {false, true, true},
         .std = {1, 0.2f, 0.2f}, .run = r_swiglu_mlp, .math = DVL_MATH_BF16, .fwd_tol = 2e-2,
         .grad_tol = 3e-2},
        {.name = "bf16 swiglu_mlp, f32 activations", .n_in = 3, .ndim = {2, 2, 2},
         .shape = {S2(150, 64), S2(192, 64), S2(64, 96)}, .grad = {true, true, true},
         .std = {1, 0.2f, 0.2f}, .run = r_swiglu_mlp, .kind = 1, .math = DVL_MATH_BF16,
         .fwd_tol = 1e-2, .grad_tol = 1e-2},
        {.name = "bf16 linear_cross_entropy h[9,16] W[13,16]", .n_in = 2, .ndim = {2, 2},
         .shape = {S2(9, 16), S2(13, 16)}, .grad = {true, true}, .std = {1, 0.25f},
         .run = r_lxent, .idx = labels, .wts = wts, .math = DVL_MATH_BF16, .fwd_tol = 1e-2,
         .grad_tol = 2e-2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(&cases[i]);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Every mask rule with GQA (4 query heads on 2 kv heads) and key padding
 * (including a key 0 padded out, so causal query 0 sees nothing and must
 * output zeros), forward and dq, dk, dv within 1e-4 of the CPU. */
START_TEST(attention_matches_cpu_all_masks)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    enum { N = 2, T = 12, HQ = 4, HKV = 2, D = 8 };
    uint8_t pad[N * T], pad_kv[N * 13];
    for (int i = 0; i < N * T; i++)
        pad[i] = !(i == 5 || i == T + 0 || i == T + 11); /* seq 1 loses key 0 */
    for (int i = 0; i < N * 13; i++)
        pad_kv[i] = !(i == 2 || i == 13 + 12);
    const float sc = 1.0f / sqrtf((float)D);
    struct {
        const char *name;
        dvl_mask m;
        int64_t tq, tk;
    } masks[] = {
        {"attention BIDIR", {.kind = DVL_MASK_BIDIR}, T, T},
        {"attention BIDIR padded", {.kind = DVL_MASK_BIDIR, .key_valid = pad}, T, T},
        {"attention CAUSAL", {.kind = DVL_MASK_CAUSAL}, T, T},
        {"attention CAUSAL padded", {.kind = DVL_MASK_CAUSAL, .key_valid = pad}, T, T},
        {"attention BLOCK_DIFF L=6 B=4",
         {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 4, .half = 6}, T, T},
        {"attention BLOCK_DIFF padded",
         {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 4, .half = 6, .key_valid = pad}, T, T},
        {"attention BLOCK_CAUSAL B=3", {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 3}, T, T},
        {"attention BLOCK_CAUSAL kv cache",
         {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 4, .q_offset = 8, .key_valid = pad_kv},
         5, 13},
        {"attention CAUSAL kv cache", {.kind = DVL_MASK_CAUSAL, .q_offset = 8}, 5, 13},
    };
    for (size_t i = 0; i < sizeof masks / sizeof *masks; i++) {
        op_case c = {.name = masks[i].name, .n_in = 3, .ndim = {4, 4, 4},
                     .shape = {{N, masks[i].tq, HQ, D}, {N, masks[i].tk, HKV, D},
                               {N, masks[i].tk, HKV, D}},
                     .grad = {true, true, true}, .run = r_attention, .mask = masks[i].m,
                     .f = sc, .fwd_tol = 1e-4, .grad_tol = 1e-4};
        check_case(&c);
    }
    /* More keys than threads per block (128) and a longer head: the
     * kernels' strided loops. */
    uint8_t pad150[150];
    for (int i = 0; i < 150; i++)
        pad150[i] = i % 17 != 3;
    const dvl_mask long_masks[2] = {{.kind = DVL_MASK_CAUSAL, .key_valid = pad150},
                                    {.kind = DVL_MASK_BIDIR}};
    for (int i = 0; i < 2; i++) {
        op_case c = {.name = i ? "attention BIDIR T=150 D=40" : "attention CAUSAL T=150 padded",
                     .n_in = 3, .ndim = {4, 4, 4},
                     .shape = {{1, 150, 2, 40}, {1, 150, 1, 40}, {1, 150, 1, 40}},
                     .grad = {true, true, true}, .run = r_attention, .mask = long_masks[i],
                     .f = 1.0f / sqrtf(40.0f), .fwd_tol = 1e-4, .grad_tol = 1e-4};
        check_case(&c);
    }
    /* A frozen k (v, q trainable). */
    op_case c = {.name = "attention CAUSAL, k frozen", .n_in = 3, .ndim = {4, 4, 4},
                 .shape = {{N, T, HQ, D}, {N, T, HKV, D}, {N, T, HKV, D}},
                 .grad = {true, false, true}, .run = r_attention,
                 .mask = {.kind = DVL_MASK_CAUSAL}, .f = sc, .fwd_tol = 1e-4, .grad_tol = 1e-4};
    check_case(&c);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* Key padding for check_attention_sizes: every 11th key of the [N, tk]
 * layout and key 0 of sequence 1 (so its causal query 0 sees nothing). */
static void pad_pattern(uint8_t *pad, int64_t n, int64_t tk)
{
    for (int64_t i = 0; i < n * tk; i++)
        pad[i] = !(i % 11 == 3 || i == tk);
}
#endif

/* The tiled kernel (the op's path for heads up to DVL_CUDA_ATTN_MAX_D)
 * against the CPU op on odd sizes: T = 1, 7, 33, 130, 257 (one key tile,
 * partial tiles, several tiles, a skipped tile), head sizes 5, 64 and 128
 * (padded to 32, 64, 128 inside) rotating over the rules so every rule
 * meets every head size, GQA 2:1, 4:1 and 3:1 and plain multi-head, key
 * padding, rows that see no key (causal query 0 of a sequence whose key 0
 * is padding). Then heads of 160, past the tiled kernel, through the
 * reference kernel. Forward and dq, dk, dv: rel_err <= 1e-4 (f32 sums in
 * other orders than the CPU's; the tiled kernel is ~5e-7 from a double
 * reference on these shapes). Where every row sees one key (T = 1, block
 * diffusion with L = 1) dq and dk are zero in exact arithmetic and both
 * devices return the rounding of dP - D: |.| <= 1e-4. */
#ifdef DVL_HAVE_CUDA
/* Whether no query row of N sequences sees more than one key (mask rule and
 * key padding): the output row is then that key's v whatever the scores, so
 * dq and dk are zero in exact arithmetic (T = 1, or block diffusion with
 * L = 1, where each half is one block of one token). */
static bool one_key_per_row(const dvl_mask *m, int64_t N, int64_t tq, int64_t tk)
{
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < tq; i++) {
            int seen = 0;
            for (int64_t j = 0; j < tk; j++)
                seen += dvl_mask_allows(m, i, j) && (!m->key_valid || m->key_valid[n * tk + j]);
            if (seen > 1)
                return false;
        }
    return true;
}

/* rel_err bounds of the tiled attention against an f32 reference, by the
 * products' arithmetic (dvl_cuda_math): f32; TF32 (operands rounded to 10
 * mantissa bits, 5e-4 relative); bf16 (Q, K, V, dO, P, dS rounded to 7
 * mantissa bits, 4e-3 relative each). */
static const double att_tol[3] = {1e-4, 1e-2, 3e-2};

/* The sizes x rules table below, with the context's products in `math`
 * (TF32 and bf16 put attention's products on tensor cores) and relative
 * tolerance tol; `zero_tol` bounds the rounding noise of gradients that are
 * zero in exact arithmetic. */
static void attention_sizes(dvl_cuda_math math, double tol, double zero_tol)
{
    static const int64_t Ts[5] = {1, 7, 33, 130, 257};
    static const int64_t Ds[3] = {5, 64, 128};
    static uint8_t pad[2 * 600];
    char name[128];
    const char *mn = math == DVL_MATH_F32 ? "" : math == DVL_MATH_TF32 ? " tf32" : " bf16";
    for (int t = 0; t < 5; t++) {
        const int64_t T = Ts[t], L = (T + 1) / 2, tq = T < 5 ? T : 5;
        struct {
            const char *rule;
            dvl_mask m;
            int64_t N, tq, tk, hq, hkv;
            bool padded;
        } cs[7] = {
            {"BIDIR", {.kind = DVL_MASK_BIDIR}, 2, T, T, 4, 2, false},
            {"CAUSAL padded", {.kind = DVL_MASK_CAUSAL}, 2, T, T, 4, 1, true},
            {"BLOCK_DIFF B=4", {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 4, .half = L}, 2,
             2 * L, 2 * L, 4, 2, false},
            {"BLOCK_DIFF B=8 padded", {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = L},
             2, 2 * L, 2 * L, 2, 2, true},
            {"BLOCK_CAUSAL B=3", {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 3}, 1, T, T, 6, 2,
             false},
            {"BLOCK_CAUSAL cache padded",
             {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 4, .q_offset = T}, 2, tq, T + tq, 4, 2,
             true},
            {"CAUSAL cache", {.kind = DVL_MASK_CAUSAL, .q_offset = T}, 1, tq, T + tq, 4, 4, false},
        };
        for (int r = 0; r < 7; r++) {
            const int64_t D = Ds[(t + r) % 3];
            ck_assert_int_le(cs[r].N * cs[r].tk, (int64_t)sizeof pad);
            if (cs[r].padded) {
                pad_pattern(pad, cs[r].N, cs[r].tk);
                cs[r].m.key_valid = pad;
            }
            snprintf(name, sizeof name, "attention%s %s Tq=%lld Tk=%lld D=%lld", mn, cs[r].rule,
                     (long long)cs[r].tq, (long long)cs[r].tk, (long long)D);
            op_case c = {.name = name, .n_in = 3, .ndim = {4, 4, 4},
                         .shape = {{cs[r].N, cs[r].tq, cs[r].hq, D},
                                   {cs[r].N, cs[r].tk, cs[r].hkv, D},
                                   {cs[r].N, cs[r].tk, cs[r].hkv, D}},
                         .grad = {true, true, true}, .run = r_attention, .mask = cs[r].m,
                         .f = 1.0f / sqrtf((float)D), .math = math, .fwd_tol = tol,
                         .grad_tol = tol,
                         .zero_tol = zero_tol};
            c.grad_zero[0] = c.grad_zero[1] = one_key_per_row(&cs[r].m, cs[r].N, cs[r].tq,
                                                              cs[r].tk);
            check_case(&c);
        }
    }
}
#endif

START_TEST(attention_tiled_matches_cpu_sizes)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    attention_sizes(DVL_MATH_F32, 1e-4, 1e-4);
    static uint8_t pad[2 * 600];
    char name[128];
    static const int64_t Ds[3] = {5, 64, 128};
    /* The training rule at T = 258 with every head size. */
    for (int d = 0; d < 3; d++) {
        snprintf(name, sizeof name, "attention BLOCK_DIFF B=8 T=258 D=%lld", (long long)Ds[d]);
        op_case c = {.name = name, .n_in = 3, .ndim = {4, 4, 4},
                     .shape = {{1, 258, 4, Ds[d]}, {1, 258, 2, Ds[d]}, {1, 258, 2, Ds[d]}},
                     .grad = {true, true, true}, .run = r_attention,
                     .mask = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = 129},
                     .f = 1.0f / sqrtf((float)Ds[d]), .fwd_tol = 1e-4, .grad_tol = 1e-4};
        check_case(&c);
    }
    /* Heads past DVL_CUDA_ATTN_MAX_D: the reference kernel. */
    ck_assert(dvl_cuda_attention_tiled(128) && !dvl_cuda_attention_tiled(160));
    pad_pattern(pad, 2, 34);
    const dvl_mask long_heads[2] = {{.kind = DVL_MASK_BLOCK_DIFF, .block_size = 4, .half = 17},
                                    {.kind = DVL_MASK_CAUSAL, .key_valid = pad}};
    for (int i = 0; i < 2; i++) {
        op_case c = {.name = i ? "attention CAUSAL padded D=160 (reference kernel)"
                               : "attention BLOCK_DIFF D=160 (reference kernel)",
                     .n_in = 3, .ndim = {4, 4, 4},
                     .shape = {{2, 34, 4, 160}, {2, 34, 2, 160}, {2, 34, 2, 160}},
                     .grad = {true, true, true}, .run = r_attention, .mask = long_heads[i],
                     .f = 1.0f / sqrtf(160.0f), .fwd_tol = 1e-4, .grad_tol = 1e-4};
        check_case(&c);
    }
    /* Only dv wanted (q, k frozen): the dQ kernel is not launched, the kv
     * kernel writes dv alone. */
    op_case c = {.name = "attention BLOCK_DIFF, q and k frozen", .n_in = 3, .ndim = {4, 4, 4},
                 .shape = {{2, 130, 4, 64}, {2, 130, 2, 64}, {2, 130, 2, 64}},
                 .grad = {false, false, true}, .run = r_attention,
                 .mask = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = 65},
                 .f = 0.125f, .fwd_tol = 1e-4, .grad_tol = 1e-4};
    check_case(&c);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The tensor-core variant of the tiled kernels (the op's path in contexts
 * whose products are TF32 or bf16) against the CPU op on the same sizes x
 * rules table. TF32 rounds each product operand to 10 mantissa bits (5e-4
 * relative): rel_err <= 1e-2; the gradients that are zero in exact
 * arithmetic (one key per query) hold the difference of dP = dO . V in TF32
 * and D = dO . O (~1e-2 at D = 128), |.| <= 1e-1 where real gradients of
 * these random inputs reach ~1. */
START_TEST(attention_tc_matches_cpu_sizes)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    attention_sizes(DVL_MATH_TF32, 1e-2, 1e-1);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The bf16 tensor-core kernels (ops/cuda/attention_bf16.cu, the op's path
 * in contexts whose products are bf16) against the CPU op on the same
 * table. Q, K, V, dO, P and dS are rounded to bf16 (8 significant bits,
 * 4e-3 relative) before they multiply: rel_err <= 3e-2; the gradients that
 * are zero in exact arithmetic (one key per query) hold the difference of
 * dP in bf16 and D = dO . O in f32, |.| <= 2e-1. */
START_TEST(attention_bf16_matches_cpu_sizes)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    attention_sizes(DVL_MATH_BF16, att_tol[DVL_MATH_BF16], 2e-1);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* A device tensor's data or gradient into a new host array. */
static float *tensor_host(dvl_ctx *ctx, const dvl_tensor *t, bool grad)
{
    float *h = malloc((size_t)dvl_numel(t) * sizeof(float));
    ck_assert_ptr_nonnull(h);
    int rc = grad ? dvl_tensor_grad_to_host(ctx, t, h) : dvl_tensor_to_host(ctx, t, h);
    ck_assert_msg(rc == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    return h;
}
#endif

#ifdef DVL_HAVE_CUDA
/* One attention op, forward and backward, on a fresh context whose products
 * are `math` and whose attention kernels are `attention` (-1: math's):
 * out, dq, dk, dv one after another in a new host array of 2 (nq + nk). */
static float *attention_in(dvl_cuda_math math, int attention, int64_t nq, int64_t nk)
{
    enum { T = 70, HQ = 4, HKV = 2, D = 64 };
    ck_assert_int_eq(nq, T * HQ * D);
    ck_assert_int_eq(nk, T * HKV * D);
    dvl_err err = {0, ""};
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(ctx != NULL, "%s", err.msg);
    dvl_cublas *h = dvl_ctx_cublas(ctx);
    ck_assert_msg(dvl_cublas_set_math(h, math, &err) == DVL_OK, "%s", err.msg);
    ck_assert_msg(dvl_cublas_set_attention_math(h, attention, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq((int)dvl_cublas_attention_math(h), attention < 0 ? (int)math : attention);
    const int64_t sq[4] = {1, T, HQ, D}, sk[4] = {1, T, HKV, D};
    float *hq = host_randn(nq, 91, 1.0f), *hk = host_randn(nk, 92, 1.0f);
    float *hv = host_randn(nk, 93, 1.0f), *seed = host_randn(nq, 94, 1.0f);
    dvl_tensor *q = dvl_from_host(ctx, DVL_F32, 4, sq, hq);
    dvl_tensor *k = dvl_from_host(ctx, DVL_F32, 4, sk, hk);
    dvl_tensor *v = dvl_from_host(ctx, DVL_F32, 4, sk, hv);
    ck_assert(q && k && v);
    q->requires_grad = k->requires_grad = v->requires_grad = true;
    const dvl_mask m = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = T / 2};
    dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, 0.125f);
    ck_assert_msg(o != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_msg(dvl_backward_seed(ctx, o, seed) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    float *all = malloc((size_t)(2 * (nq + nk)) * sizeof(float));
    ck_assert_ptr_nonnull(all);
    const dvl_tensor *src[4] = {o, q, k, v};
    float *at = all;
    for (int i = 0; i < 4; i++) {
        float *x = tensor_host(ctx, src[i], i > 0);
        memcpy(at, x, (size_t)dvl_numel(src[i]) * sizeof(float));
        at += dvl_numel(src[i]);
        free(x);
    }
    free(hq), free(hk), free(hv), free(seed);
    dvl_ctx_free(ctx);
    return all;
}
#endif

/* dvl_cublas_set_attention_math (train.attention_precision): bf16 products
 * with TF32 attention give the TF32 kernels' output and gradients to the
 * bit, and not the bf16 kernels'; naming the products' own mode is the
 * default; -1 goes back to following the products; an unknown mode is
 * refused. BLOCK_DIFF over 70 positions (two tiles), D = 64. */
START_TEST(attention_precision_override)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    const int64_t nq = 70 * 4 * 64, nk = 70 * 2 * 64;
    const size_t bytes = (size_t)(2 * (nq + nk)) * sizeof(float);
    float *tf32 = attention_in(DVL_MATH_TF32, -1, nq, nk);
    float *bf16 = attention_in(DVL_MATH_BF16, -1, nq, nk);
    float *bf16_tf32 = attention_in(DVL_MATH_BF16, DVL_MATH_TF32, nq, nk);
    float *bf16_bf16 = attention_in(DVL_MATH_BF16, DVL_MATH_BF16, nq, nk);
    float *f32_bf16 = attention_in(DVL_MATH_F32, DVL_MATH_BF16, nq, nk);
    ck_assert_msg(memcmp(bf16_tf32, tf32, bytes) == 0,
                  "bf16 products with TF32 attention differ from a TF32 run's attention");
    ck_assert_msg(memcmp(bf16, tf32, bytes) != 0, "bf16 and TF32 attention gave the same bits");
    ck_assert_msg(memcmp(bf16_bf16, bf16, bytes) == 0, "naming bf16 attention changed bf16's");
    ck_assert_msg(memcmp(f32_bf16, bf16, bytes) == 0,
                  "f32 products with bf16 attention differ from a bf16 run's attention");
    dvl_err err = {0, ""};
    dvl_cublas *h = dvl_cublas_new(false, &err);
    ck_assert_msg(h != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_attention_math(h), DVL_MATH_F32);
    ck_assert_msg(dvl_cublas_set_attention_math(h, DVL_MATH_TF32, &err) == DVL_OK, "%s", err.msg);
    ck_assert_msg(dvl_cublas_set_math(h, DVL_MATH_BF16, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_attention_math(h), DVL_MATH_TF32);
    ck_assert_int_eq(dvl_cublas_set_attention_math(h, 3, &err), DVL_EINVAL);
    ck_assert_msg(strstr(err.msg, "attention math mode 3") != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_attention_math(h), DVL_MATH_TF32);
    ck_assert_msg(dvl_cublas_set_attention_math(h, -1, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(dvl_cublas_attention_math(h), DVL_MATH_BF16);
    dvl_cublas_free(h);
    free(tf32), free(bf16), free(bf16_tf32), free(bf16_bf16), free(f32_bf16);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Rows that see no key (every key of sequence 0 padded; key 0 of sequence
 * 1 padded under the causal rule, so its query 0 sees nothing) output
 * exactly zero and get exactly zero dq, as the CPU; padded keys get exactly
 * zero dk and dv; nothing is NaN. T = 70 spans two key tiles, D = 64. */
START_TEST(attention_tiled_masked_rows_are_zero)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    enum { N = 2, T = 70, HQ = 4, HKV = 2, D = 64 };
    uint8_t pad[N * T];
    for (int j = 0; j < T; j++) {
        pad[j] = 0;                    /* sequence 0: no key at all */
        pad[T + j] = j != 0 && j < 64; /* sequence 1: key 0 and keys 64.. padded */
    }
    const dvl_mask m = {.kind = DVL_MASK_CAUSAL, .key_valid = pad};
    dvl_err err = {0, ""};
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(ctx != NULL, "%s", err.msg);
    const int64_t sq[4] = {N, T, HQ, D}, sk[4] = {N, T, HKV, D};
    float *hq = host_randn(N * T * HQ * D, 81, 1.0f), *hk = host_randn(N * T * HKV * D, 82, 1.0f);
    float *hv = host_randn(N * T * HKV * D, 83, 1.0f), *seed = host_randn(N * T * HQ * D, 84, 1.0f);
    dvl_tensor *q = dvl_from_host(ctx, DVL_F32, 4, sq, hq);
    dvl_tensor *k = dvl_from_host(ctx, DVL_F32, 4, sk, hk);
    dvl_tensor *v = dvl_from_host(ctx, DVL_F32, 4, sk, hv);
    ck_assert(q && k && v);
    q->requires_grad = k->requires_grad = v->requires_grad = true;
    dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, 0.125f);
    ck_assert_msg(o != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_msg(dvl_backward_seed(ctx, o, seed) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    float *ho = tensor_host(ctx, o, false), *gq = tensor_host(ctx, q, true);
    float *gk = tensor_host(ctx, k, true), *gv = tensor_host(ctx, v, true);
    int64_t nonzero = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < T; i++)
            for (int64_t h = 0; h < HQ; h++)
                for (int64_t d = 0; d < D; d++) {
                    const int64_t x = ((n * T + i) * HQ + h) * D + d;
                    ck_assert_msg(isfinite(ho[x]) && isfinite(gq[x]), "out or dq [%lld] not finite",
                                  (long long)x);
                    const bool empty = n == 0 || i == 0;
                    if (empty)
                        ck_assert_msg(ho[x] == 0.0f && gq[x] == 0.0f,
                                      "row (n %lld, i %lld, h %lld) sees no key but out %g, dq %g",
                                      (long long)n, (long long)i, (long long)h, (double)ho[x],
                                      (double)gq[x]);
                    else
                        nonzero += ho[x] != 0.0f;
                }
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < T; j++)
            for (int64_t d = 0; d < HKV * D; d++) {
                const int64_t x = (n * T + j) * HKV * D + d;
                ck_assert_msg(isfinite(gk[x]) && isfinite(gv[x]), "dk or dv [%lld] not finite",
                              (long long)x);
                if (!pad[n * T + j])
                    ck_assert_msg(gk[x] == 0.0f && gv[x] == 0.0f,
                                  "padded key (n %lld, j %lld) got dk %g, dv %g", (long long)n,
                                  (long long)j, (double)gk[x], (double)gv[x]);
            }
    ck_assert_msg(nonzero > (int64_t)(T - 1) * HQ * D / 2, "only %lld visible outputs nonzero",
                  (long long)nonzero);
    free(hq), free(hk), free(hv), free(seed), free(ho), free(gq), free(gk), free(gv);
    dvl_ctx_free(ctx);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* One attention problem on raw device buffers for the kernel-level tests. */
typedef struct att_bufs {
    float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv, *scratch;
} att_bufs;

static void att_bufs_new(att_bufs *b, const float *q, const float *k, const float *v,
                         const float *dout, int64_t nq, int64_t nk, int64_t rows,
                         int64_t scratch_floats)
{
    dvl_err err = {0, ""};
    b->q = upload(q, nq), b->k = upload(k, nk), b->v = upload(v, nk), b->dout = upload(dout, nq);
    b->out = dev_alloc((size_t)nq * sizeof(float));
    b->lse = dev_alloc((size_t)rows * sizeof(float));
    b->dq = dev_alloc((size_t)nq * sizeof(float));
    b->dk = dev_alloc((size_t)nk * sizeof(float));
    b->dv = dev_alloc((size_t)nk * sizeof(float));
    b->scratch = dev_alloc((size_t)(scratch_floats > 0 ? scratch_floats : 1) * sizeof(float));
    ck_assert_msg(dvl_cuda_memset_zero(b->dq, (size_t)nq * sizeof(float), &err) == DVL_OK &&
                      dvl_cuda_memset_zero(b->dk, (size_t)nk * sizeof(float), &err) == DVL_OK &&
                      dvl_cuda_memset_zero(b->dv, (size_t)nk * sizeof(float), &err) == DVL_OK,
                  "%s", err.msg);
}

static void att_bufs_free(att_bufs *b)
{
    float *p[10] = {b->q, b->k, b->v, b->dout, b->out, b->lse, b->dq, b->dk, b->dv, b->scratch};
    for (int i = 0; i < 10; i++)
        dvl_cuda_free(p[i]);
}

/* Which products an attention run used, for the printed lines. */
static const char *math_label(dvl_cuda_math math)
{
    return math == DVL_MATH_BF16   ? " (bf16 tensor cores)"
           : math == DVL_MATH_TF32 ? " (TF32 tensor cores)"
                                   : "";
}

/* The tiled kernels (math: their products' arithmetic) against the reference
 * kernel on the same device buffers (out, lse, dq, dk, dv: rel_err <= tol;
 * lse +inf in the same places), and a second tiled run bitwise equal to the
 * first (sums in an order fixed by the sizes). */
static void check_tiled_vs_ref(const char *name, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                               int64_t Hkv, int64_t D, const dvl_mask *m, dvl_cuda_math math,
                               double tol)
{
    const int64_t nq = N * Tq * Hq * D, nk = N * Tk * Hkv * D, rows = N * Hq * Tq;
    const float scale = 1.0f / sqrtf((float)D);
    float *hq = host_randn(nq, 91, 1.0f), *hk = host_randn(nk, 92, 1.0f);
    float *hv = host_randn(nk, 93, 1.0f), *hdo = host_randn(nq, 94, 1.0f);
    uint8_t *kv = NULL;
    dvl_err err = {0, ""};
    if (m->key_valid) {
        kv = dev_alloc((size_t)(N * Tk));
        ck_assert_msg(dvl_cuda_memcpy_h2d(kv, m->key_valid, (size_t)(N * Tk), &err) == DVL_OK,
                      "%s", err.msg);
    }
    att_bufs t[2], r;
    for (int run = 0; run < 2; run++) {
        att_bufs_new(&t[run], hq, hk, hv, hdo, nq, nk, rows,
                     dvl_cuda_attention_scratch(N, Tq, Tk, Hq, Hkv, D, true, math));
        ck_assert_msg(dvl_cuda_attention_fwd(t[run].out, t[run].lse, t[run].scratch, t[run].q,
                                             t[run].k,
                                             t[run].v, N, Tq, Tk, Hq, Hkv, D, (int)m->kind,
                                             m->block_size, m->half, m->q_offset, kv, scale,
                                             math, &err) == DVL_OK,
                      "%s forward: %s", name, err.msg);
        ck_assert_msg(dvl_cuda_attention_bwd(t[run].dq, t[run].dk, t[run].dv, t[run].scratch,
                                             t[run].dout, t[run].out, t[run].lse, t[run].q,
                                             t[run].k, t[run].v, N, Tq, Tk, Hq, Hkv, D,
                                             (int)m->kind, m->block_size, m->half, m->q_offset,
                                             kv, scale, math, &err) == DVL_OK,
                      "%s backward: %s", name, err.msg);
    }
    att_bufs_new(&r, hq, hk, hv, hdo, nq, nk, rows,
                 2 * dvl_cuda_attention_ref_scratch(N, Tq, Tk, Hq));
    dvl_cuda_attention_ref_fwd(r.out, r.lse, r.scratch, r.q, r.k, r.v, N, Tq, Tk, Hq, Hkv, D,
                               (int)m->kind, m->block_size, m->half, m->q_offset, kv, scale);
    dvl_cuda_attention_ref_bwd(r.dq, r.dk, r.dv, r.scratch, r.dout, r.out, r.lse, r.q, r.k, r.v,
                               N, Tq, Tk, Hq, Hkv, D, (int)m->kind, m->block_size, m->half,
                               m->q_offset, kv, scale);
    ck_assert_msg(dvl_cuda_check(name, &err) == DVL_OK, "%s", err.msg);
    const char *what[5] = {"out", "lse", "dq", "dk", "dv"};
    const int64_t len[5] = {nq, rows, nq, nk, nk};
    printf("test_cuda: %-44s tiled%s vs reference kernel:", name, math_label(math));
    float *dev[3][5] = {{t[0].out, t[0].lse, t[0].dq, t[0].dk, t[0].dv},
                        {t[1].out, t[1].lse, t[1].dq, t[1].dk, t[1].dv},
                        {r.out, r.lse, r.dq, r.dk, r.dv}};
    for (int x = 0; x < 5; x++) {
        float *pt[2] = {download(dev[0][x], len[x]), download(dev[1][x], len[x])};
        float *pr = download(dev[2][x], len[x]);
        ck_assert_msg(memcmp(pt[0], pt[1], (size_t)len[x] * sizeof(float)) == 0,
                      "%s: tiled %s differs between two identical runs", name, what[x]);
        for (int64_t i = 0; x == 1 && i < len[x]; i++)
            ck_assert_msg(isinf(pt[0][i]) == isinf(pr[i]),
                          "%s: lse[%lld] tiled %g, reference %g", name, (long long)i,
                          (double)pt[0][i], (double)pr[i]);
        const double e = rel_err(pt[0], pr, len[x]); /* skips +inf reference entries */
        printf(" %s %.2e", what[x], e);
        char msg[160];
        snprintf(msg, sizeof msg, "%s: tiled %s vs reference kernel", name, what[x]);
        CHECK_ERR(msg, e, tol);
        free(pt[0]), free(pt[1]), free(pr);
    }
    printf("\n");
    fflush(stdout);
    att_bufs_free(&t[0]), att_bufs_free(&t[1]), att_bufs_free(&r);
    dvl_cuda_free(kv);
    free(hq), free(hk), free(hv), free(hdo);
}
#endif

/* Kernel level: the tiled kernels against the old one-row-per-block kernel
 * (kept as the reference), and rerun determinism. Qwen2.5-0.5B heads (14 on
 * 2 kv heads of 64) under block diffusion; 128-float heads, causal with
 * padding; a KV-cache step. Tolerances in check_tiled_vs_ref. */
START_TEST(attention_tiled_matches_reference_kernel)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    static uint8_t pad[2 * 300];
    const dvl_mask bd = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = 96};
    for (int mi = 0; mi < 3; mi++) { /* f32, TF32 tensor cores, bf16 tensor cores */
        const dvl_cuda_math tc = (dvl_cuda_math)mi;
        const double tol = att_tol[mi];
        check_tiled_vs_ref("BLOCK_DIFF L=96 B=8 14/2 heads D=64", 1, 192, 192, 14, 2, 64, &bd, tc,
                           tol);
        pad_pattern(pad, 2, 257);
        const dvl_mask cp = {.kind = DVL_MASK_CAUSAL, .key_valid = pad};
        check_tiled_vs_ref("CAUSAL padded T=257 4/2 heads D=128", 2, 257, 257, 4, 2, 128, &cp, tc,
                           tol);
        pad_pattern(pad, 2, 261);
        const dvl_mask kc = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = 4, .q_offset = 256,
                             .key_valid = pad};
        check_tiled_vs_ref("BLOCK_CAUSAL cache 5 on 261 keys D=40", 2, 5, 261, 6, 3, 40, &kc, tc,
                           tol);
    }
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The long-sequence case the tiled kernel exists for: a stage-2 step's
 * attention at L = 2048 (T = 2L = 4096 under block diffusion, B = 8), 14
 * query heads on 2 kv heads of 64 (Qwen2.5-0.5B), forward and backward
 * through the op. The op's device arena grows by less than 128 MiB and the
 * device's free memory drops by less than 512 MiB (arena chunks may
 * overshoot), where the [N, Hq, T, T] scores alone take 0.94 GB (the
 * reference kernel's forward scratch; backward needs twice that). Against
 * the CPU op: rel_err <= 2e-4 (sums over up to 4096 keys and, for dk, dv,
 * 7 heads x 4096 queries). */
START_TEST(attention_tiled_long_sequence_bounded_memory)
{
#ifdef DVL_HAVE_CUDA
    if (!big_gpu_or_skip("attention_tiled_long_sequence_bounded_memory"))
        return;
    const int64_t L = 2048, T = 2 * L, HQ = 14, HKV = 2, D = 64;
    const dvl_mask m = {.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = L};
    const int64_t sq[4] = {1, T, HQ, D}, sk[4] = {1, T, HKV, D};
    const int64_t nq = T * HQ * D, nk = T * HKV * D;
    float *hin[3] = {host_randn(nq, 71, 1.0f), host_randn(nk, 72, 1.0f), host_randn(nk, 73, 1.0f)};
    float *seed = host_randn(nq, 74, 1.0f);
    float *res[2][4]; /* [cpu, cuda][out, dq, dk, dv] */
    size_t free0 = 0, free1 = 0, total = 0, used0 = 0, used1 = 0;
    for (int dev = 0; dev < 2; dev++) {
        dvl_err err = {0, ""};
        dvl_ctx *ctx = dvl_ctx_new_err(dev ? DVL_CUDA : DVL_CPU, &err);
        ck_assert_msg(ctx != NULL, "%s", err.msg);
        dvl_tensor *t[3];
        for (int i = 0; i < 3; i++) {
            t[i] = dvl_from_host(ctx, DVL_F32, 4, i ? sk : sq, hin[i]);
            ck_assert_ptr_nonnull(t[i]);
            t[i]->requires_grad = true;
        }
        if (dev) {
            ck_assert_msg(dvl_cuda_sync("long attention inputs", &err) == DVL_OK, "%s", err.msg);
            ck_assert_msg(dvl_cuda_mem_info(&free0, &total, &err) == DVL_OK, "%s", err.msg);
            used0 = dvl_arena_used(ctx);
        }
        const double t0 = now_s();
        dvl_tensor *o = dvl_attention(ctx, t[0], t[1], t[2], &m, 0.125f);
        ck_assert_msg(o != NULL, "%s", dvl_ctx_err(ctx)->msg);
        ck_assert_msg(dvl_backward_seed(ctx, o, seed) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
        if (dev) {
            ck_assert_msg(dvl_cuda_sync("long attention", &err) == DVL_OK, "%s", err.msg);
            ck_assert_msg(dvl_cuda_mem_info(&free1, &total, &err) == DVL_OK, "%s", err.msg);
            used1 = dvl_arena_used(ctx);
        }
        printf("test_cuda: attention BLOCK_DIFF T=4096 14/2 heads D=64 forward + backward on %s: "
               "%.1f ms (first call)\n",
               dev ? "cuda" : "cpu", (now_s() - t0) * 1e3);
        res[dev][0] = tensor_host(ctx, o, false);
        for (int i = 0; i < 3; i++)
            res[dev][1 + i] = tensor_host(ctx, t[i], true);
        dvl_ctx_free(ctx);
    }
    const double scores = (double)HQ * T * T * sizeof(float);
    const double grew = (double)(used1 - used0), dropped = (double)free0 - (double)free1;
    printf("test_cuda: long attention: arena +%.1f MiB, device free memory -%.1f MiB "
           "(scores would be %.1f MiB)\n",
           grew / 1048576.0, dropped / 1048576.0, scores / 1048576.0);
    ck_assert_msg(grew < 128.0 * 1048576.0, "arena grew by %.1f MiB", grew / 1048576.0);
    ck_assert_msg(dropped < 512.0 * 1048576.0, "free device memory dropped by %.1f MiB",
                  dropped / 1048576.0);
    const char *what[4] = {"out", "dq", "dk", "dv"};
    const int64_t len[4] = {nq, nq, nk, nk};
    for (int x = 0; x < 4; x++) {
        const double e = rel_err(res[1][x], res[0][x], len[x]);
        printf("test_cuda: long attention %s rel_err %.2e (tol 2e-4)\n", what[x], e);
        char msg[64];
        snprintf(msg, sizeof msg, "long attention %s", what[x]);
        CHECK_ERR(msg, e, 2e-4);
        free(res[0][x]), free(res[1][x]);
    }
    fflush(stdout);
    free(hin[0]), free(hin[1]), free(hin[2]), free(seed);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The fused LM-head loss at Qwen2's vocabulary, V = 151936, d = 64, 512 of
 * 640 rows supervised (every 5th ignored), weighted, labels including the
 * first and the last column, the default chunk (4096: 38 chunks, the last
 * of 384 columns). Materialised, the [n_sup, V] logits alone would take
 * 297 MiB; the chunked path holds one [n_sup, C] chunk (8 MiB) plus h_s and
 * dh_s (128 KiB each). The arena has no high-water accessor, but it only
 * grows within a step (nothing is freed before dvl_ctx_reset), so
 * dvl_arena_used after the backward pass is the step's high-water mark; h's
 * and W's gradient buffers are made before the first reading, so the growth
 * is the op's own: below 16 MiB in f32, below 24 MiB in bf16 (adds the
 * operand copies, 2 (n_sup d + C d + n_sup C) bytes = 4.6 MiB).
 * Against the CPU op: f32 loss within rel_err 1e-5, dh and dW within 1e-4
 * (products over d = 64 and sums over 151936 columns in another order);
 * bf16 (DVL_MATH_BF16) loss within 1e-2, dh and dW within 2e-2, as
 * bf16_ops_match_cpu. A second f32 run gives the same bits (no atomics). */
START_TEST(linear_cross_entropy_large_vocab_bounded_memory)
{
#ifdef DVL_HAVE_CUDA
    if (!big_gpu_or_skip("linear_cross_entropy_large_vocab_bounded_memory"))
        return;
    enum { CPU = 0, F32, F32_AGAIN, BF16, RUNS };
    static const char *run_name[RUNS] = {"cpu", "cuda f32", "cuda f32 rerun", "cuda bf16"};
    const int64_t n = 640, d = 64, V = 151936;
    const int64_t sh[2] = {n, d}, sw[2] = {V, d};
    int32_t *labels = malloc((size_t)n * sizeof *labels);
    float *wts = malloc((size_t)n * sizeof *wts);
    ck_assert(labels && wts);
    int64_t n_sup = 0;
    for (int64_t i = 0; i < n; i++) {
        labels[i] = i % 5 == 2 ? DVL_IGNORE_INDEX : (int32_t)((i * 104729 + 17) % V);
        wts[i] = 0.5f + (float)(i % 4) * 0.25f;
    }
    labels[0] = 0, labels[1] = (int32_t)(V - 1);
    for (int64_t i = 0; i < n; i++)
        n_sup += labels[i] != DVL_IGNORE_INDEX;
    ck_assert_int_eq(n_sup, 512);
    float *hh = host_randn(n * d, 81, 1.0f), *hw = host_randn(V * d, 82, 0.125f);
    const float seed = 0.5f;
    float loss[RUNS], *gh[RUNS], *gw[RUNS];
    double grew[RUNS], ms[RUNS];
    for (int run = 0; run < RUNS; run++) {
        const bool dev = run != CPU;
        dvl_err err = {0, ""};
        dvl_ctx *ctx = dvl_ctx_new_err(dev ? DVL_CUDA : DVL_CPU, &err);
        ck_assert_msg(ctx != NULL, "%s", err.msg);
        if (run == BF16)
            ck_assert_msg(dvl_cublas_set_math(dvl_ctx_cublas(ctx), DVL_MATH_BF16, &err) == DVL_OK,
                          "%s", err.msg);
        dvl_tensor *h = dvl_from_host(ctx, DVL_F32, 2, sh, hh);
        dvl_tensor *w = dvl_from_host(ctx, DVL_F32, 2, sw, hw);
        ck_assert_msg(h && w, "%s", dvl_ctx_err(ctx)->msg);
        h->requires_grad = w->requires_grad = true;
        ck_assert_msg(dvl_grad(ctx, h) && dvl_grad(ctx, w), "%s", dvl_ctx_err(ctx)->msg);
        if (dev)
            ck_assert_msg(dvl_cuda_sync("lxent inputs", &err) == DVL_OK, "%s", err.msg);
        const size_t used0 = dvl_arena_used(ctx);
        const double t0 = now_s();
        dvl_tensor *l = dvl_linear_cross_entropy(ctx, h, w, labels, wts, 0);
        ck_assert_msg(l != NULL, "%s: %s", run_name[run], dvl_ctx_err(ctx)->msg);
        ck_assert_msg(dvl_backward_seed(ctx, l, &seed) == DVL_OK, "%s: %s", run_name[run],
                      dvl_ctx_err(ctx)->msg);
        if (dev)
            ck_assert_msg(dvl_cuda_sync("lxent", &err) == DVL_OK, "%s", err.msg);
        ms[run] = (now_s() - t0) * 1e3;
        grew[run] = (double)(dvl_arena_used(ctx) - used0);
        float *lh = tensor_host(ctx, l, false);
        loss[run] = lh[0];
        free(lh);
        gh[run] = tensor_host(ctx, h, true);
        gw[run] = tensor_host(ctx, w, true);
        ck_assert_msg(dvl_ctx_ok(ctx), "%s: %s", run_name[run], dvl_ctx_err(ctx)->msg);
        dvl_ctx_free(ctx);
    }
    const double logits = (double)n_sup * (double)V * sizeof(float);
    for (int run = 0; run < RUNS; run++)
        printf("test_cuda: lxent n_sup 512 V 151936 d 64 on %s: loss %.6f, forward + backward "
               "%.1f ms (first call), arena +%.2f MiB (logits would be %.1f MiB)\n",
               run_name[run], (double)loss[run], ms[run], grew[run] / 1048576.0,
               logits / 1048576.0);
    ck_assert_msg(grew[F32] < 16.0 * 1048576.0, "f32: arena grew by %.2f MiB",
                  grew[F32] / 1048576.0);
    ck_assert_msg(grew[BF16] < 24.0 * 1048576.0, "bf16: arena grew by %.2f MiB",
                  grew[BF16] / 1048576.0);
    ck_assert_msg(loss[F32] == loss[F32_AGAIN] &&
                      memcmp(gh[F32], gh[F32_AGAIN], (size_t)(n * d) * sizeof(float)) == 0 &&
                      memcmp(gw[F32], gw[F32_AGAIN], (size_t)(V * d) * sizeof(float)) == 0,
                  "two f32 runs on the GPU differ");
    const double tol[RUNS][3] = {{0}, {1e-5, 1e-4, 1e-4}, {1e-5, 1e-4, 1e-4}, {1e-2, 2e-2, 2e-2}};
    for (int run = F32; run < RUNS; run++) {
        const double el = fabs((double)loss[run] - loss[CPU]) / fabs((double)loss[CPU]);
        const double eh = rel_err(gh[run], gh[CPU], n * d);
        const double ew = rel_err(gw[run], gw[CPU], V * d);
        printf("test_cuda: lxent large vocab %s vs cpu: loss %.2e (tol %.0e), dh %.2e, dW %.2e "
               "(tol %.0e)\n",
               run_name[run], el, tol[run][0], eh, ew, tol[run][1]);
        char what[96];
        snprintf(what, sizeof what, "lxent large vocab %s loss", run_name[run]);
        CHECK_ERR(what, el, tol[run][0]);
        snprintf(what, sizeof what, "lxent large vocab %s dh", run_name[run]);
        CHECK_ERR(what, eh, tol[run][1]);
        snprintf(what, sizeof what, "lxent large vocab %s dW", run_name[run]);
        CHECK_ERR(what, ew, tol[run][2]);
    }
    fflush(stdout);
    for (int run = 0; run < RUNS; run++)
        free(gh[run]), free(gw[run]);
    free(hh), free(hw), free(labels), free(wts);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Not an assertion: tiled attention forward and forward + backward at
 * T = 4096 (Qwen2.5-0.5B heads, 14 on 2 of 64), under block diffusion
 * (L = 2048, B = 8) and causal, mean of 5 after a warm-up; the reference
 * kernel once for comparison. Useful FLOPs: 4 D Hq per allowed (query,
 * key) pair forward, 2.5 times that backward (FlashAttention's count). */
START_TEST(attention_timing_print)
{
#ifdef DVL_HAVE_CUDA
    if (!big_gpu_or_skip("attention_timing_print"))
        return;
    const int64_t T = 4096, HQ = 14, HKV = 2, D = 64, nq = T * HQ * D, nk = T * HKV * D;
    const dvl_mask masks[2] = {{.kind = DVL_MASK_BLOCK_DIFF, .block_size = 8, .half = T / 2},
                               {.kind = DVL_MASK_CAUSAL}};
    float *hq = host_randn(nq, 1, 1.0f), *hk = host_randn(nk, 2, 1.0f);
    float *hv = host_randn(nk, 3, 1.0f), *hdo = host_randn(nq, 4, 1.0f);
    dvl_err err = {0, ""};
    for (int mi = 0; mi < 2; mi++) {
        const dvl_mask *m = &masks[mi];
        double pairs = 0;
        for (int64_t i = 0; i < T; i++)
            for (int64_t j = 0; j < T; j++)
                pairs += dvl_mask_allows(m, i, j);
        const double fwd_flops = 4.0 * D * HQ * pairs;
        float *res[3][4]; /* [math][out, dq, dk, dv] after the 6 runs (grads summed) */
        for (int tc = 0; tc < 3; tc++) { /* dvl_cuda_math: f32, TF32, bf16 */
            att_bufs b;
            att_bufs_new(&b, hq, hk, hv, hdo, nq, nk, HQ * T,
                         dvl_cuda_attention_scratch(1, T, T, HQ, HKV, D, true,
                                                    (dvl_cuda_math)tc));
            double tf = 0, tb = 0;
            for (int it = 0; it < 6; it++) {
                ck_assert_msg(dvl_cuda_sync("attention timing", &err) == DVL_OK, "%s", err.msg);
                const double t0 = now_s();
                ck_assert_msg(dvl_cuda_attention_fwd(b.out, b.lse, b.scratch, b.q, b.k, b.v, 1, T, T, HQ,
                                                     HKV, D, (int)m->kind, m->block_size, m->half,
                                                     0, NULL, 0.125f, (dvl_cuda_math)tc,
                                                     &err) == DVL_OK,
                              "%s", err.msg);
                ck_assert_msg(dvl_cuda_sync("attention timing", &err) == DVL_OK, "%s", err.msg);
                const double t1 = now_s();
                ck_assert_msg(dvl_cuda_attention_bwd(b.dq, b.dk, b.dv, b.scratch, b.dout, b.out,
                                                     b.lse, b.q, b.k, b.v, 1, T, T, HQ, HKV, D,
                                                     (int)m->kind, m->block_size, m->half, 0, NULL,
                                                     0.125f, (dvl_cuda_math)tc,
                                                     &err) == DVL_OK,
                              "%s", err.msg);
                ck_assert_msg(dvl_cuda_sync("attention timing", &err) == DVL_OK, "%s", err.msg);
                if (it > 0)
                    tf += (t1 - t0) / 5, tb += (now_s() - t1) / 5;
            }
            printf("test_cuda: tiled attention%s %s T=4096 14/2 heads D=64: forward %.2f ms (%.1f "
                   "TFLOP/s), backward %.2f ms (%.1f TFLOP/s)\n",
                   math_label((dvl_cuda_math)tc), mi ? "CAUSAL" : "BLOCK_DIFF", tf * 1e3,
                   fwd_flops / tf * 1e-12, tb * 1e3, 2.5 * fwd_flops / tb * 1e-12);
            const float *dev[4] = {b.out, b.dq, b.dk, b.dv};
            for (int x = 0; x < 4; x++)
                res[tc][x] = download(dev[x], x < 2 ? nq : nk);
            /* The backward's two kernels apart (after the copies above: the
             * gradients accumulate): dK dV alone (dq NULL), dQ alone (dk, dv
             * NULL); each call also runs the D = rowsum(dO O) kernel. */
            double part_s[2] = {0, 0};
            for (int it = 0; it < 4; it++)
                for (int part = 0; part < 2; part++) {
                    ck_assert_msg(dvl_cuda_sync("attention timing", &err) == DVL_OK, "%s",
                                  err.msg);
                    const double t2 = now_s();
                    ck_assert_msg(dvl_cuda_attention_bwd(part ? b.dq : NULL, part ? NULL : b.dk,
                                                         part ? NULL : b.dv, b.scratch, b.dout,
                                                         b.out, b.lse, b.q, b.k, b.v, 1, T, T, HQ,
                                                         HKV, D, (int)m->kind, m->block_size,
                                                         m->half, 0, NULL, 0.125f,
                                                         (dvl_cuda_math)tc, &err) == DVL_OK,
                                  "%s", err.msg);
                    ck_assert_msg(dvl_cuda_sync("attention timing", &err) == DVL_OK, "%s",
                                  err.msg);
                    if (it > 0)
                        part_s[part] += (now_s() - t2) / 3;
                }
            printf("test_cuda: tiled attention%s %s backward alone: dK dV %.2f ms, dQ %.2f ms\n",
                   math_label((dvl_cuda_math)tc), mi ? "CAUSAL" : "BLOCK_DIFF",
                   part_s[0] * 1e3, part_s[1] * 1e3);
            att_bufs_free(&b);
        }
        /* The tensor-core variants at this size: within their rounding of f32. */
        static const char *what[4] = {"out", "dq", "dk", "dv"};
        for (int tc = 1; tc < 3; tc++) {
            printf("test_cuda: tiled attention %s T=4096,%s vs f32:",
                   mi ? "CAUSAL" : "BLOCK_DIFF", math_label((dvl_cuda_math)tc));
            for (int x = 0; x < 4; x++) {
                const double e = rel_err(res[tc][x], res[0][x], x < 2 ? nq : nk);
                printf(" %s %.2e", what[x], e);
                CHECK_ERR(what[x], e, att_tol[tc]);
            }
            printf(" (tol %.0e)\n", att_tol[tc]);
        }
        for (int tc = 0; tc < 3; tc++)
            for (int x = 0; x < 4; x++)
                free(res[tc][x]);
        if (mi == 0) { /* the reference kernel, once after a warm-up */
            att_bufs r;
            att_bufs_new(&r, hq, hk, hv, hdo, nq, nk, HQ * T,
                         2 * dvl_cuda_attention_ref_scratch(1, T, T, HQ));
            double t0 = 0;
            for (int it = 0; it < 2; it++) {
                ck_assert_msg(dvl_cuda_sync("reference timing", &err) == DVL_OK, "%s", err.msg);
                t0 = now_s();
                dvl_cuda_attention_ref_fwd(r.out, r.lse, r.scratch, r.q, r.k, r.v, 1, T, T, HQ,
                                           HKV, D, (int)m->kind, m->block_size, m->half, 0,
                                           NULL, 0.125f);
                dvl_cuda_attention_ref_bwd(r.dq, r.dk, r.dv, r.scratch, r.dout, r.out, r.lse,
                                           r.q, r.k, r.v, 1, T, T, HQ, HKV, D, (int)m->kind,
                                           m->block_size, m->half, 0, NULL, 0.125f);
            }
            ck_assert_msg(dvl_cuda_sync("reference timing", &err) == DVL_OK, "%s", err.msg);
            printf("test_cuda: reference attention BLOCK_DIFF T=4096: forward + backward %.2f "
                   "ms\n",
                   (now_s() - t0) * 1e3);
            att_bufs_free(&r);
        }
    }
    fflush(stdout);
    free(hq), free(hk), free(hv), free(hdo);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The CUDA context itself: device tensors, zeros, host round trips, the
 * arena's steady state (a reset after growth consolidates; the next
 * identical step allocates nothing), a device parameter store. Without a
 * GPU: dvl_ctx_new_err(DVL_CUDA) is NULL with a reason. */
START_TEST(cuda_context_basics)
{
#ifdef DVL_HAVE_CUDA
    if (dvl_cuda_device_count() == 0) {
        dvl_err err = {0, ""};
        ck_assert_ptr_null(dvl_ctx_new_err(DVL_CUDA, &err));
        ck_assert_int_eq(err.code, DVL_EDEVICE);
        printf("test_cuda: CUDA context refused as expected: %s\n", err.msg);
        ck_assert_ptr_null(dvl_ctx_new(DVL_CUDA));
    }
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(ctx != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_ctx_device(ctx), DVL_CUDA);
    ck_assert_ptr_nonnull(dvl_ctx_cublas(ctx));
    int64_t s[2] = {3, 5};
    float h[15], back[15];
    for (int i = 0; i < 15; i++)
        h[i] = (float)i - 7.5f;
    dvl_tensor *z = dvl_zeros(ctx, DVL_F32, 2, s);
    ck_assert_ptr_nonnull(z);
    ck_assert_int_eq(z->device, DVL_CUDA);
    ck_assert_int_eq(dvl_tensor_to_host(ctx, z, back), DVL_OK);
    for (int i = 0; i < 15; i++)
        ck_assert_float_eq(back[i], 0.0f);
    dvl_tensor *t = dvl_from_host(ctx, DVL_F32, 2, s, h);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(dvl_tensor_to_host(ctx, t, back), DVL_OK);
    ck_assert_mem_eq(back, h, sizeof h);
    /* A lazily made gradient is zero on the device. */
    t->requires_grad = true;
    ck_assert_ptr_nonnull(dvl_grad(ctx, t));
    ck_assert_int_eq(dvl_tensor_grad_to_host(ctx, t, back), DVL_OK);
    for (int i = 0; i < 15; i++)
        ck_assert_float_eq(back[i], 0.0f);
    /* Steady state: 3 MiB of device tensors overflow the first chunk. */
    for (int step = 0; step < 3; step++) {
        dvl_ctx_reset(ctx);
        int64_t before = dvl_arena_mallocs(ctx);
        int64_t big[1] = {(int64_t)1 << 18};
        for (int i = 0; i < 3; i++)
            ck_assert_ptr_nonnull(dvl_zeros(ctx, DVL_F32, 1, big));
        if (step == 2)
            ck_assert_int_eq(dvl_arena_mallocs(ctx), before);
    }
    ck_assert_msg(dvl_ctx_ok(ctx), "%s", dvl_ctx_err(ctx)->msg);
    /* A CPU tensor given to an op with a CUDA tensor: an error naming both. */
    dvl_ctx *cpu = dvl_ctx_new(DVL_CPU);
    dvl_tensor *hc = dvl_from_host(cpu, DVL_F32, 2, s, h);
    dvl_tensor *hg = dvl_from_host(ctx, DVL_F32, 2, s, h);
    ck_assert(hc && hg);
    hc->name = "host_t";
    hg->name = "dev_t";
    ck_assert_ptr_null(dvl_add(ctx, hg, hc));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "different devices") &&
                      strstr(dvl_ctx_err(ctx)->msg, "host_t"),
                  "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_clear_error(ctx);
    dvl_ctx_free(cpu);
    dvl_ctx_free(ctx);

    /* A device parameter store round trip. */
    dvl_params *p = dvl_params_new();
    int64_t ps[2] = {4, 3};
    ck_assert_ptr_nonnull(dvl_params_add(p, "a", 2, ps, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(p, "frozen", 1, ps, false, &err));
    ck_assert_int_eq(dvl_params_alloc(p, &err), DVL_OK);
    for (int64_t i = 0; i < p->numel; i++)
        p->data[i] = (float)i * 0.5f;
    dvl_params *d = dvl_params_to_device(p, DVL_CUDA, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert_int_eq(d->device, DVL_CUDA);
    ck_assert_int_eq(d->numel, p->numel);
    ck_assert_int_eq(d->numel_grad, p->numel_grad);
    ck_assert_int_eq(dvl_params_find(d, "a")->device, DVL_CUDA);
    ck_assert_ptr_null(dvl_params_find(d, "frozen")->grad);
    float *hd = malloc((size_t)p->numel * sizeof(float));
    ck_assert_int_eq(dvl_params_data_to_host(d, hd, &err), DVL_OK);
    ck_assert_mem_eq(hd, p->data, (size_t)p->numel * sizeof(float));
    ck_assert_int_eq(dvl_params_grad_to_host(d, hd, &err), DVL_OK);
    for (int64_t i = 0; i < d->numel_grad; i++)
        ck_assert_float_eq(hd[i], 0.0f);
    dvl_params_zero_grad(d);
    free(hd);
    dvl_params_free(d);
    dvl_params_free(p);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
static const toy_cfg TOY = {.vocab = 37, .dim = 32, .layers = 2, .heads = 4, .kv_heads = 2,
                            .ffn = 48, .seq = 11, .batch = 2};

/* One training step's loss and flat gradient on a device. */
static float toy_step(dvl_ctx *ctx, dvl_params *p, const toy_batch *b, float *grad)
{
    dvl_err err = {0, ""};
    dvl_params_zero_grad(p);
    dvl_tensor *loss = toy_loss(ctx, &TOY, p, b);
    ck_assert_msg(loss != NULL, "toy_loss: %s", dvl_ctx_err(ctx)->msg);
    float l;
    ck_assert_int_eq(dvl_tensor_to_host(ctx, loss, &l), DVL_OK);
    ck_assert_msg(dvl_backward(ctx, loss) == DVL_OK, "backward: %s", dvl_ctx_err(ctx)->msg);
    if (grad)
        ck_assert_msg(dvl_params_grad_to_host(p, grad, &err) == DVL_OK, "%s", err.msg);
    dvl_ctx_reset(ctx);
    return l;
}
#endif

/* tests/toy.c's 2-layer Qwen2-shaped model (GQA, rope, causal attention,
 * SwiGLU, fused LM-head cross-entropy) on both devices: loss within 1e-5
 * relative, every parameter's gradient within 1e-4 (rel_err per tensor);
 * a second GPU step gives the same bits (determinism) and allocates
 * nothing (steady-state arena); the op profile records the CPU's ops. */
START_TEST(toy_model_step_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = toy_params(&TOY, 7);
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    toy_batch b = toy_batch_new(&TOY, 8);
    dvl_ctx *cc = dvl_ctx_new(DVL_CPU), *cg = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(cg != NULL, "%s", err.msg);
    float *gc = malloc((size_t)pc->numel_grad * sizeof(float));
    float *gg = malloc((size_t)pg->numel_grad * sizeof(float));
    float *gg2 = malloc((size_t)pg->numel_grad * sizeof(float));
    ck_assert(gc && gg && gg2);
    float lc = toy_step(cc, pc, &b, gc);
    float lg = toy_step(cg, pg, &b, gg);
    double e = fabs((double)lg - lc) / fabs((double)lc);
    printf("test_cuda: toy model loss cpu %.7f cuda %.7f rel_err %.2e (tol 1e-5)\n", lc, lg, e);
    CHECK_ERR("toy model loss", e, 1e-5);
    double worst = 0;
    for (int i = 0; i < pc->n; i++) {
        if (pc->grad_off[i] < 0)
            continue;
        int64_t n = dvl_numel(pc->t[i]);
        double ei = rel_err(gg + pg->grad_off[i], gc + pc->grad_off[i], n);
        char what[96];
        snprintf(what, sizeof what, "toy model gradient of %s", pc->t[i]->name);
        CHECK_ERR(what, ei, 1e-4);
        worst = fmax(worst, ei);
    }
    printf("test_cuda: toy model worst parameter gradient rel_err %.2e (tol 1e-4)\n", worst);
    int64_t m0 = dvl_arena_mallocs(cg);
    float lg2 = toy_step(cg, pg, &b, gg2);
    int64_t m1 = dvl_arena_mallocs(cg);
    float lg3 = toy_step(cg, pg, &b, gg2);
    ck_assert_msg(memcmp(&lg, &lg2, sizeof lg) == 0 && memcmp(&lg2, &lg3, sizeof lg) == 0,
                  "GPU loss differs between identical steps: %.9g %.9g %.9g", lg, lg2, lg3);
    ck_assert_msg(memcmp(gg, gg2, (size_t)pg->numel_grad * sizeof(float)) == 0,
                  "GPU gradients differ between identical steps");
    ck_assert_msg(dvl_arena_mallocs(cg) == m1,
                  "a steady-state GPU step allocated (%lld mallocs after step 2, %lld after 3; "
                  "%lld after step 1)",
                  (long long)m1, (long long)dvl_arena_mallocs(cg), (long long)m0);
    /* The op profile (dvl_ctx_profile) on the device: the CPU's ops, in the
     * same order, with the same calls forward and backward. */
    dvl_ctx_profile(cc, true), dvl_ctx_profile(cg, true);
    toy_step(cc, pc, &b, gc), toy_step(cg, pg, &b, gg2);
    const dvl_op_time *rc, *rg;
    const int nc = dvl_ctx_profile_rows(cc, &rc), ng = dvl_ctx_profile_rows(cg, &rg);
    ck_assert_int_eq(nc, ng);
    ck_assert_int_ge(nc, 4);
    for (int i = 0; i < nc; i++) {
        ck_assert_str_eq(rc[i].op, rg[i].op);
        ck_assert(rc[i].fwd_n == rg[i].fwd_n && rc[i].bwd_n == rg[i].bwd_n);
        ck_assert(rc[i].fwd_flops == rg[i].fwd_flops && rc[i].bwd_flops == rg[i].bwd_flops);
        ck_assert(isfinite(rg[i].fwd_s) && rg[i].fwd_s >= 0 && isfinite(rg[i].bwd_s) &&
                  rg[i].bwd_s >= 0);
    }
    free(gc), free(gg), free(gg2);
    dvl_ctx_free(cc), dvl_ctx_free(cg);
    toy_batch_free(&b);
    dvl_params_free(pc), dvl_params_free(pg);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* A CUDA context whose products run in bf16 (DVL_MATH_BF16). */
static dvl_ctx *bf16_ctx(void)
{
    dvl_err err = {0, ""};
    dvl_ctx *c = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_msg(dvl_cublas_set_math(dvl_ctx_cublas(c), DVL_MATH_BF16, &err) == DVL_OK, "%s",
                  err.msg);
    return c;
}
#endif

/* The toy model's training step on a context in DVL_MATH_BF16 (every
 * linear layer and the LM head with bf16 products) against the f32 CPU
 * step: loss within 1e-2 relative, every parameter's gradient within
 * rel_err 1e-1 (bf16 rounding, ~4e-3 per product, compounded through two
 * layers, attention and the loss); a wrong layout would be O(1) off. */
START_TEST(toy_model_step_bf16_close_to_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = toy_params(&TOY, 7);
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    toy_batch b = toy_batch_new(&TOY, 8);
    dvl_ctx *cc = dvl_ctx_new(DVL_CPU), *cg = bf16_ctx();
    float *gc = malloc((size_t)pc->numel_grad * sizeof(float));
    float *gg = malloc((size_t)pg->numel_grad * sizeof(float));
    ck_assert(gc && gg);
    float lc = toy_step(cc, pc, &b, gc);
    float lg = toy_step(cg, pg, &b, gg);
    double e = fabs((double)lg - lc) / fabs((double)lc), worst = 0;
    printf("test_cuda: toy model bf16 loss cpu %.7f cuda %.7f rel_err %.2e (tol 1e-2)\n", lc, lg,
           e);
    CHECK_ERR("toy model bf16 loss", e, 1e-2);
    for (int i = 0; i < pc->n; i++) {
        if (pc->grad_off[i] < 0)
            continue;
        double ei = rel_err(gg + pg->grad_off[i], gc + pc->grad_off[i], dvl_numel(pc->t[i]));
        char what[96];
        snprintf(what, sizeof what, "toy model bf16 gradient of %s", pc->t[i]->name);
        CHECK_ERR(what, ei, 1e-1);
        worst = fmax(worst, ei);
    }
    printf("test_cuda: toy model bf16 worst parameter gradient rel_err %.2e (tol 1e-1)\n", worst);
    free(gc), free(gg);
    dvl_ctx_free(cc), dvl_ctx_free(cg);
    toy_batch_free(&b);
    dvl_params_free(pc), dvl_params_free(pg);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* A device store like src (names, shapes, data) with the parameters whose
 * names start with one of `frozen` (NULL-terminated) frozen. The data's
 * layout does not depend on trainability, so src's buffer copies as is. */
static dvl_params *frozen_twin_on_gpu(const dvl_params *src, const char *const *frozen)
{
    dvl_err err = {0, ""};
    dvl_params *q = dvl_params_new();
    for (int i = 0; i < src->n; i++) {
        const dvl_tensor *t = src->t[i];
        bool fr = false;
        for (const char *const *f = frozen; *f; f++)
            fr |= strncmp(t->name, *f, strlen(*f)) == 0;
        ck_assert_ptr_nonnull(dvl_params_add(q, t->name, t->ndim, t->shape, !fr, &err));
    }
    ck_assert_int_eq(dvl_params_alloc(q, &err), DVL_OK);
    ck_assert_int_eq(q->numel, src->numel);
    memcpy(q->data, src->data, (size_t)src->numel * sizeof(float));
    ck_assert_msg(dvl_params_move(q, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    return q;
}

/* Overwrite a device tensor's f32 data with other (finite) values, behind
 * its store's back (its bf16 copy, if any, is left as it was). */
static void clobber(dvl_tensor *t)
{
    const int64_t n = dvl_numel(t);
    float *junk = malloc((size_t)n * sizeof *junk);
    ck_assert_ptr_nonnull(junk);
    for (int64_t i = 0; i < n; i++)
        junk[i] = 0.25f - 0.05f * (float)(i % 7);
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_cuda_memcpy_h2d(t->data, junk, (size_t)n * sizeof *junk, &err) == DVL_OK,
                  "%s", err.msg);
    free(junk);
}

/* y = linear_cat(x, [a; b; c], [a_b; b_b; c_b]) on the device; y and dx of
 * sum(y) into the host arrays. */
static void cat_step(dvl_ctx *ctx, dvl_params *p, const float *xh, int64_t rows, float *y,
                     float *dx)
{
    dvl_tensor *w[3] = {dvl_params_find(p, "a.w"), dvl_params_find(p, "b.w"),
                        dvl_params_find(p, "c.w")};
    dvl_tensor *b[3] = {dvl_params_find(p, "a.b"), dvl_params_find(p, "b.b"),
                        dvl_params_find(p, "c.b")};
    int64_t sx[2] = {rows, 24};
    dvl_tensor *x = dvl_from_host(ctx, DVL_F32, 2, sx, xh);
    ck_assert_ptr_nonnull(x);
    x->requires_grad = true;
    dvl_tensor *out = dvl_linear_cat(ctx, x, 3, w, b);
    ck_assert_msg(out != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_msg(dvl_backward(ctx, dvl_sum(ctx, out)) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_tensor_to_host(ctx, out, y), DVL_OK);
    ck_assert_int_eq(dvl_tensor_grad_to_host(ctx, x, dx), DVL_OK);
    dvl_ctx_reset(ctx);
}
#endif

/* dvl_params_keep_bf16 on the device. The copies are bit for bit the
 * host's dvl_f32_to_bf16 of the weights. A bf16 training step of the toy
 * model with layer 0, the embedding and the LM head frozen gives the same
 * loss and gradient bits with them as without (each product rounding W
 * itself): they change nothing. They are really what the products read:
 * with the frozen linear weights' f32 values overwritten behind the store's
 * back the step still gives those bits; made again from the overwritten
 * values, the loss changes; dvl_params_data_from_host makes them again from
 * the good values. dvl_linear_cat over three frozen consecutive weights
 * (and biases) reads their copies as one matrix, likewise. */
START_TEST(bf16_copies_of_frozen_weights)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = toy_params(&TOY, 7);
    const char *frozen[] = {"l0.", "embed", "head", NULL};
    dvl_params *pg = frozen_twin_on_gpu(pc, frozen);
    toy_batch b = toy_batch_new(&TOY, 8);
    dvl_ctx *cg = bf16_ctx();
    const size_t gbytes = (size_t)pg->numel_grad * sizeof(float);
    float *g0 = malloc(gbytes), *g1 = malloc(gbytes);
    ck_assert(g0 && g1);
    const float l0 = toy_step(cg, pg, &b, g0);

    ck_assert_msg(dvl_params_keep_bf16(pg, DVL_BF16_FROZEN, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_gt(pg->numel_bf16, 0);
    uint16_t *c16 = malloc((size_t)pg->numel_bf16 * sizeof *c16);
    ck_assert_ptr_nonnull(c16);
    ck_assert_int_eq(dvl_cuda_memcpy_d2h(c16, pg->bf16, (size_t)pg->numel_bf16 * sizeof *c16, &err),
                     DVL_OK);
    int64_t checked = 0;
    for (int i = 0; i < pg->n; i++) {
        const dvl_tensor *t = pg->t[i], *h = pc->t[i];
        if (t->requires_grad) {
            ck_assert_ptr_null(t->bf16);
            continue;
        }
        ck_assert_ptr_nonnull(t->bf16);
        const uint16_t *c = c16 + (t->bf16 - pg->bf16);
        for (int64_t k = 0; k < dvl_numel(t); k++, checked++)
            ck_assert_msg(c[k] == dvl_f32_to_bf16(dvl_f32(h)[k]), "%s[%lld]: device copy %04x",
                          t->name, (long long)k, c[k]);
    }
    ck_assert_int_gt(checked, 1000);
    free(c16);

    float l1 = toy_step(cg, pg, &b, g1);
    ck_assert_msg(memcmp(&l0, &l1, sizeof l0) == 0 && memcmp(g0, g1, gbytes) == 0,
                  "bf16 step with the frozen weights' copies: loss %.9g vs %.9g without", l1, l0);
    const char *linear_w[] = {"l0.q.w", "l0.k.w",    "l0.v.w",  "l0.o.w",
                              "l0.gate.w", "l0.up.w", "l0.down.w", "head"};
    for (size_t k = 0; k < sizeof linear_w / sizeof *linear_w; k++)
        clobber(dvl_params_find(pg, linear_w[k]));
    l1 = toy_step(cg, pg, &b, g1);
    ck_assert_msg(memcmp(&l0, &l1, sizeof l0) == 0 && memcmp(g0, g1, gbytes) == 0,
                  "bf16 step read a frozen weight's f32 values, not its copy: loss %.9g vs %.9g",
                  l1, l0);
    ck_assert_msg(dvl_params_keep_bf16(pg, DVL_BF16_FROZEN, &err) == DVL_OK, "%s", err.msg);
    l1 = toy_step(cg, pg, &b, NULL);
    ck_assert_msg(isfinite(l1) && fabsf(l1 - l0) > 1e-3f * fabsf(l0),
                  "copies made from overwritten weights: loss %.9g (before %.9g)", l1, l0);
    ck_assert_msg(dvl_params_data_from_host(pg, pc->data, &err) == DVL_OK, "%s", err.msg);
    l1 = toy_step(cg, pg, &b, g1);
    ck_assert_msg(memcmp(&l0, &l1, sizeof l0) == 0 && memcmp(g0, g1, gbytes) == 0,
                  "after dvl_params_data_from_host: loss %.9g vs %.9g", l1, l0);
    dvl_params_drop_bf16(pg);
    ck_assert_ptr_null(dvl_bf16_copy(dvl_params_find(pg, "head")));
    l1 = toy_step(cg, pg, &b, g1);
    ck_assert_msg(memcmp(&l0, &l1, sizeof l0) == 0 && memcmp(g0, g1, gbytes) == 0,
                  "after dvl_params_drop_bf16: loss %.9g vs %.9g", l1, l0);
    printf("test_cuda: bf16 copies of frozen weights (%lld elements): toy step loss %.7f with and "
           "without, gradients equal bit for bit\n",
           (long long)checked, l0);

    /* dvl_linear_cat: q|k|v-like frozen weights and biases, one matrix. */
    dvl_params *q = dvl_params_new();
    const char *cn[] = {"a.w", "b.w", "c.w", "a.b", "b.b", "c.b"};
    const int64_t cs[][2] = {{32, 24}, {16, 24}, {16, 24}, {32, 1}, {16, 1}, {16, 1}};
    for (int i = 0; i < 6; i++)
        ck_assert_ptr_nonnull(dvl_params_add(q, cn[i], i < 3 ? 2 : 1, cs[i], false, &err));
    ck_assert_int_eq(dvl_params_alloc(q, &err), DVL_OK);
    for (int i = 0; i < 6; i++)
        tu_randn(q->t[i], 40 + (uint64_t)i, 0.3f);
    ck_assert_msg(dvl_params_move(q, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    const int64_t rows = 9;
    float *xh = host_randn(rows * 24, 50, 1.0f);
    float *y0 = malloc(rows * 64 * sizeof(float)), *y1 = malloc(rows * 64 * sizeof(float));
    float *d0 = malloc(rows * 24 * sizeof(float)), *d1 = malloc(rows * 24 * sizeof(float));
    ck_assert(y0 && y1 && d0 && d1);
    cat_step(cg, q, xh, rows, y0, d0);
    ck_assert_msg(dvl_params_keep_bf16(q, DVL_BF16_FROZEN, &err) == DVL_OK, "%s", err.msg);
    ck_assert_ptr_eq(dvl_bf16_copy(q->t[1]), dvl_bf16_copy(q->t[0]) + 32 * 24);
    ck_assert_ptr_eq(dvl_bf16_copy(q->t[2]), dvl_bf16_copy(q->t[1]) + 16 * 24);
    for (int i = 0; i < 3; i++)
        clobber(q->t[i]);
    cat_step(cg, q, xh, rows, y1, d1);
    ck_assert_msg(memcmp(y0, y1, rows * 64 * sizeof(float)) == 0 &&
                      memcmp(d0, d1, rows * 24 * sizeof(float)) == 0,
                  "linear_cat over frozen weights did not read their copies as one matrix");
    free(xh), free(y0), free(y1), free(d0), free(d1);
    dvl_params_free(q);
    free(g0), free(g1);
    dvl_ctx_free(cg);
    toy_batch_free(&b);
    dvl_params_free(pc), dvl_params_free(pg);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* `steps` bf16 training steps (AdamW, lr 1e-2) of the toy model on a device
 * copy of pc; copies: the store's bf16 copies mode, made again after each
 * update when refresh is set. The losses into l[steps], the final weights
 * into w (numel floats) unless w is NULL. */
static void toy_train_bf16(const dvl_params *pc, const toy_batch *b, dvl_bf16_copies copies,
                           bool refresh, int steps, float *l, float *w)
{
    dvl_err err = {0, ""};
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    ck_assert_msg(dvl_params_keep_bf16(pg, copies, &err) == DVL_OK, "%s", err.msg);
    dvl_ctx *cg = bf16_ctx();
    dvl_adamw *o = dvl_adamw_new(pg, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(o != NULL, "%s", err.msg);
    for (int k = 0; k < steps; k++) {
        l[k] = toy_step(cg, pg, b, NULL);
        dvl_adamw_step(o, 1e-2f, 1.0f);
        if (refresh)
            ck_assert_msg(dvl_params_refresh_bf16(pg, &err) == DVL_OK, "%s", err.msg);
    }
    if (w)
        ck_assert_msg(dvl_params_data_to_host(pg, w, &err) == DVL_OK, "%s", err.msg);
    dvl_adamw_free(o);
    dvl_ctx_free(cg);
    dvl_params_free(pg);
}
#endif

/* DVL_BF16_ALL on the device: three bf16 AdamW steps of the toy model with
 * a bf16 copy of every weight, the trainable ones made again after each
 * update (dvl_params_refresh_bf16), give the losses and weights of the same
 * steps without copies, bit for bit; and without the refresh they do not
 * (the products would read the first step's weights): the copies are read
 * and the refresh is what keeps them current. */
START_TEST(bf16_copies_of_all_weights_follow_updates)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_params *pc = toy_params(&TOY, 7);
    toy_batch b = toy_batch_new(&TOY, 8);
    float l0[3], l1[3];
    const size_t wbytes = (size_t)pc->numel * sizeof(float);
    float *w0 = malloc(wbytes), *w1 = malloc(wbytes);
    ck_assert(w0 && w1);
    toy_train_bf16(pc, &b, DVL_BF16_NONE, true, 3, l0, w0);
    toy_train_bf16(pc, &b, DVL_BF16_ALL, true, 3, l1, w1);
    printf("test_cuda: toy bf16 AdamW losses without copies %.7f %.7f %.7f, with all copies "
           "%.7f %.7f %.7f\n", l0[0], l0[1], l0[2], l1[0], l1[1], l1[2]);
    ck_assert_msg(memcmp(l0, l1, sizeof l0) == 0, "losses differ with bf16 copies of all weights");
    ck_assert_msg(memcmp(w0, w1, wbytes) == 0,
                  "weights differ with bf16 copies of all weights");
    /* Stale copies (kept, never refreshed) change the second step on. */
    float ls[2];
    toy_train_bf16(pc, &b, DVL_BF16_ALL, false, 2, ls, NULL);
    ck_assert_msg(memcmp(&ls[0], &l0[0], sizeof *ls) == 0 && memcmp(&ls[1], &l0[1], sizeof *ls),
                  "without the refresh step 2 gave %.9g, the refreshed run's %.9g", ls[1], l0[1]);
    free(w0), free(w1);
    toy_batch_free(&b);
    dvl_params_free(pc);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* dvl_swiglu_mlp on ctx with x [rows, 64] from xh (requires_grad) and the
 * store's gate, up, down: y and dx (when x needs one: grad) to the host. */
static void mlp_run(dvl_ctx *ctx, dvl_params *p, const float *xh, int64_t rows, bool grad,
                    float *y, float *dx)
{
    const int64_t sx[2] = {rows, 64};
    dvl_tensor *x = dvl_from_host(ctx, DVL_F32, 2, sx, xh);
    ck_assert_ptr_nonnull(x);
    x->requires_grad = grad;
    dvl_tensor *gu[2] = {dvl_params_find(p, "gate"), dvl_params_find(p, "up")};
    dvl_tensor *out = dvl_swiglu_mlp(ctx, x, gu, dvl_params_find(p, "down"));
    ck_assert_msg(out != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(dvl_tensor_to_host(ctx, out, y), DVL_OK);
    if (grad) {
        float *seed = host_randn(rows * 64, 98, 1.0f);
        ck_assert_msg(dvl_backward_seed(ctx, out, seed) == DVL_OK, "%s", dvl_ctx_err(ctx)->msg);
        ck_assert_int_eq(dvl_tensor_grad_to_host(ctx, x, dx), DVL_OK);
        free(seed);
    }
    ck_assert_msg(dvl_ctx_ok(ctx), "%s", dvl_ctx_err(ctx)->msg);
    dvl_ctx_reset(ctx);
}
#endif

/* The bf16 form of dvl_swiglu_mlp really runs, and is stable: with bf16
 * activations the output and dx differ from the three-op form's (bf16
 * [gate | up] and SwiGLU outputs round once more) yet stay within 2e-2 /
 * 3e-2 of them; the frozen weights' bf16 copies (stage 1's store) give the
 * same bits as rounding W in the op; and a forward without a gradient (no
 * record, the kept activations given back) gives the same y bits. */
START_TEST(swiglu_mlp_bf16_activations)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *p = dvl_params_new();
    const char *names[3] = {"gate", "up", "down"};
    const int64_t shapes[3][2] = {{160, 64}, {160, 64}, {64, 160}};
    for (int k = 0; k < 3; k++)
        ck_assert_ptr_nonnull(dvl_params_add(p, names[k], 2, shapes[k], false, &err));
    ck_assert_int_eq(dvl_params_alloc(p, &err), DVL_OK);
    for (int k = 0; k < 3; k++)
        tu_randn(p->t[k], 60 + (uint64_t)k, 0.15f);
    ck_assert_msg(dvl_params_move(p, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    const int64_t rows = 211, n = rows * 64;
    float *xh = host_randn(n, 61, 1.0f);
    float *y[4], *dx[3];
    for (int k = 0; k < 4; k++)
        ck_assert_ptr_nonnull(y[k] = malloc((size_t)n * sizeof(float)));
    for (int k = 0; k < 3; k++)
        ck_assert_ptr_nonnull(dx[k] = malloc((size_t)n * sizeof(float)));
    dvl_ctx *ctx = bf16_ctx();
    mlp_run(ctx, p, xh, rows, true, y[0], dx[0]); /* bf16 activations (the default) */
    dvl_ctx_set_bf16_activations(ctx, false);
    mlp_run(ctx, p, xh, rows, true, y[1], dx[1]); /* the three ops */
    dvl_ctx_set_bf16_activations(ctx, true);
    const double ey = rel_err(y[0], y[1], n), ed = rel_err(dx[0], dx[1], n);
    printf("test_cuda: swiglu_mlp bf16 vs f32 activations: y rel_err %.2e, dx %.2e\n", ey, ed);
    ck_assert_msg(memcmp(y[0], y[1], (size_t)n * sizeof(float)) != 0 &&
                      memcmp(dx[0], dx[1], (size_t)n * sizeof(float)) != 0,
                  "bf16 activations gave the three-op form's bits: the fused form did not run");
    CHECK_ERR("swiglu_mlp bf16 vs f32 activations, y", ey, 2e-2);
    CHECK_ERR("swiglu_mlp bf16 vs f32 activations, dx", ed, 3e-2);
    ck_assert_msg(dvl_params_keep_bf16(p, DVL_BF16_FROZEN, &err) == DVL_OK, "%s", err.msg);
    mlp_run(ctx, p, xh, rows, true, y[2], dx[2]);
    ck_assert_msg(memcmp(y[0], y[2], (size_t)n * sizeof(float)) == 0 &&
                      memcmp(dx[0], dx[2], (size_t)n * sizeof(float)) == 0,
                  "swiglu_mlp with the weights' bf16 copies differs from rounding them per call");
    mlp_run(ctx, p, xh, rows, false, y[3], NULL);
    ck_assert_msg(memcmp(y[0], y[3], (size_t)n * sizeof(float)) == 0,
                  "swiglu_mlp without a gradient gives other bits");
    /* Its model FLOPs in the profile (dvl_node_flops): forward [G|U] and
     * y, 2 rows I (2 d + d_out); the weights frozen, backward dA and dx,
     * 2 rows I (d_out + 2 d) again. */
    dvl_ctx_profile(ctx, true);
    mlp_run(ctx, p, xh, rows, true, y[3], dx[2]);
    const dvl_op_time *pr;
    int found = 0;
    for (int i = 0; i < dvl_ctx_profile_rows(ctx, &pr); i++)
        if (!strcmp(pr[i].op, "swiglu_mlp")) {
            found++;
            const double f = 2.0 * rows * 160 * (2 * 64 + 64);
            ck_assert_msg(pr[i].fwd_flops == f && pr[i].bwd_flops == f,
                          "swiglu_mlp reports %g / %g FLOPs, want %g / %g", pr[i].fwd_flops,
                          pr[i].bwd_flops, f, f);
        }
    ck_assert_int_eq(found, 1);
    dvl_ctx_profile(ctx, false);
    for (int k = 0; k < 4; k++)
        free(y[k]);
    for (int k = 0; k < 3; k++)
        free(dx[k]);
    free(xh);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Not an assertion: one toy-model training step (forward + backward) on
 * the CPU and on the GPU, mean of 10 after 2 warm-ups, for the record. The
 * toy model is tiny, so the GPU time is launch latency, not throughput. */
START_TEST(toy_model_step_timing_print)
{
#ifdef DVL_HAVE_CUDA
    if (!big_gpu_or_skip("toy_model_step_timing_print"))
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = toy_params(&TOY, 7);
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    toy_batch b = toy_batch_new(&TOY, 8);
    dvl_ctx *ctx[2] = {dvl_ctx_new(DVL_CPU), dvl_ctx_new_err(DVL_CUDA, &err)};
    ck_assert_msg(ctx[1] != NULL, "%s", err.msg);
    dvl_params *ps[2] = {pc, pg};
    const char *names[2] = {"cpu", "cuda"};
    for (int dv = 0; dv < 2; dv++) {
        double t0 = 0;
        for (int it = 0; it < 12; it++) {
            if (it == 2)
                t0 = now_s();
            toy_step(ctx[dv], ps[dv], &b, NULL); /* the loss read back syncs */
        }
        printf("test_cuda: toy model step (batch %d x seq %d, dim %d, 2 layers) on %s: %.3f ms\n",
               TOY.batch, TOY.seq, TOY.dim, names[dv], (now_s() - t0) / 10 * 1e3);
    }
    fflush(stdout);
    dvl_ctx_free(ctx[0]), dvl_ctx_free(ctx[1]);
    toy_batch_free(&b);
    dvl_params_free(pc), dvl_params_free(pg);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* optim/adamw.c on a device parameter store against the same calls on
 * the host store: three steps with fresh gradients each (weight decay on the
 * 2-D tensor, none on the 1-D one, an lr multiplier group, a frozen tensor
 * that must not move), then dvl_grad_norm (double on both: rel <= 1e-12,
 * only the summation split differs), dvl_grad_scale and dvl_grad_nonfinite
 * (NaN, Inf). Parameters: rel_err <= 1e-6 (float rounding of the same
 * formula: the kernel folds decay and update into one expression). */
START_TEST(adamw_device_store_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = dvl_params_new();
    int64_t s2[2] = {33, 129}, s1[1] = {7}, s3[2] = {13, 5};
    ck_assert_ptr_nonnull(dvl_params_add(pc, "w", 2, s2, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "frozen", 2, s3, false, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "norm", 1, s1, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "vis.w", 2, s3, true, &err));
    ck_assert_int_eq(dvl_params_alloc(pc, &err), DVL_OK);
    float *init = host_randn(pc->numel, 61, 1.0f);
    memcpy(pc->data, init, (size_t)pc->numel * sizeof(float));
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    dvl_adamw *oc = dvl_adamw_new(pc, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    dvl_adamw *og = dvl_adamw_new(pg, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(oc && og, "%s", err.msg);
    ck_assert_int_eq(dvl_adamw_set_group(oc, "vis.", 0.5f, false), 1);
    ck_assert_int_eq(dvl_adamw_set_group(og, "vis.", 0.5f, false), 1);
    const int64_t ng = pc->numel_grad;
    float *hg = malloc((size_t)pc->numel * sizeof(float));
    ck_assert_ptr_nonnull(hg);
    for (int t = 1; t <= 3; t++) {
        float *g = host_randn(ng, 70 + (uint64_t)t, 0.05f);
        memcpy(pc->grad, g, (size_t)ng * sizeof(float));
        ck_assert_int_eq(dvl_cuda_memcpy_h2d(pg->grad, g, (size_t)ng * sizeof(float), &err),
                         DVL_OK);
        double nc = dvl_grad_norm(pc), ngpu = dvl_grad_norm(pg);
        double e = fabs(ngpu - nc) / nc;
        printf("test_cuda: grad norm step %d cpu %.17g cuda %.17g rel %.2e (tol 1e-12)\n", t, nc,
               ngpu, e);
        CHECK_ERR("device grad norm", e, 1e-12);
        /* step 2 with a clip factor (applied inside the update) */
        dvl_adamw_step(oc, 1e-2f, t == 2 ? 0.5f : 1.0f);
        dvl_adamw_step(og, 1e-2f, t == 2 ? 0.5f : 1.0f);
        free(g);
    }
    ck_assert_int_eq(dvl_params_data_to_host(pg, hg, &err), DVL_OK);
    for (int i = 0; i < pc->n; i++) {
        int64_t off = dvl_f32(pc->t[i]) - pc->data, n = dvl_numel(pc->t[i]);
        double e = rel_err(hg + off, pc->data + off, n);
        char what[96];
        snprintf(what, sizeof what, "adamw on device: parameter %s", pc->t[i]->name);
        CHECK_ERR(what, e, 1e-6);
    }
    /* Not vacuous: the trainable parameters moved, the frozen one did not. */
    ck_assert_mem_eq(hg + (dvl_f32(dvl_params_find(pc, "frozen")) - pc->data),
                     init + (dvl_f32(dvl_params_find(pc, "frozen")) - pc->data),
                     13 * 5 * sizeof(float));
    ck_assert_msg(fabs((double)hg[0] - init[0]) > 1e-3, "adamw moved w[0] by only %g",
                  fabs((double)hg[0] - init[0]));

    /* Scale, then non-finite detection. */
    dvl_grad_scale(pc, 0.25f);
    dvl_grad_scale(pg, 0.25f);
    ck_assert_int_eq(dvl_params_grad_to_host(pg, hg, &err), DVL_OK);
    ck_assert_mem_eq(hg, pc->grad, (size_t)ng * sizeof(float));
    ck_assert(!dvl_grad_nonfinite(pc) && !dvl_grad_nonfinite(pg));
    const float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        float *gk = malloc((size_t)ng * sizeof(float));
        ck_assert_ptr_nonnull(gk);
        memcpy(gk, pc->grad, (size_t)ng * sizeof(float));
        gk[ng - 3] = bad[k];
        ck_assert_int_eq(dvl_cuda_memcpy_h2d(pg->grad, gk, (size_t)ng * sizeof(float), &err),
                         DVL_OK);
        ck_assert_msg(dvl_grad_nonfinite(pg), "device grad with %g not flagged", (double)bad[k]);
        free(gk);
    }
    dvl_adamw_free(oc), dvl_adamw_free(og);
    dvl_params_free(pc), dvl_params_free(pg);
    free(init), free(hg);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* dvl_adamw_step on a device store launches once for all parameters
 * (dvl_cuda_adamw_multi); the same steps as one dvl_cuda_adamw launch per
 * parameter part, the loop it replaces, written out here, must give the
 * same bits in weights and moments. A ZeRO-1 shard that cuts two
 * parameters (one of them 3 pieces long), a frozen one between them, an lr
 * group without decay, a clip factor, and a group change after step 2 (the
 * tables are made again). */
START_TEST(adamw_one_launch_equals_per_parameter)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = dvl_params_new();
    int64_t s2[2] = {33, 129}, s1[1] = {7}, s3[2] = {13, 5}, sb[2] = {3, 3001};
    ck_assert_ptr_nonnull(dvl_params_add(pc, "w", 2, s2, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "frozen", 2, s3, false, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "norm", 1, s1, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "vis.w", 2, s3, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "big", 2, sb, true, &err));
    ck_assert_int_eq(dvl_params_alloc(pc, &err), DVL_OK);
    float *init = host_randn(pc->numel, 62, 1.0f);
    memcpy(pc->data, init, (size_t)pc->numel * sizeof(float));
    dvl_params *pa = dvl_params_to_device(pc, DVL_CUDA, &err);
    dvl_params *pb = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pa && pb, "%s", err.msg);
    const int64_t ng = pc->numel_grad, lo = 100, hi = ng - 50;
    dvl_adamw *o = dvl_adamw_new_shard(pa, lo, hi, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    dvl_adamw *r = dvl_adamw_new_shard(pb, lo, hi, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(o && r, "%s", err.msg);
    ck_assert_int_eq(dvl_adamw_set_group(o, "vis.", 0.5f, false), 1);
    ck_assert_int_eq(dvl_adamw_set_group(r, "vis.", 0.5f, false), 1);
    for (int t = 1; t <= 3; t++) {
        if (t == 3) {
            ck_assert_int_eq(dvl_adamw_set_group(o, "norm", 2.0f, true), 1);
            ck_assert_int_eq(dvl_adamw_set_group(r, "norm", 2.0f, true), 1);
        }
        float *g = host_randn(ng, 80 + (uint64_t)t, 0.05f);
        ck_assert_int_eq(dvl_cuda_memcpy_h2d(pa->grad, g, (size_t)ng * sizeof(float), &err),
                         DVL_OK);
        ck_assert_int_eq(dvl_cuda_memcpy_h2d(pb->grad, g, (size_t)ng * sizeof(float), &err),
                         DVL_OK);
        const float lr = 1e-2f, gscale = t == 2 ? 0.5f : 1.0f;
        dvl_adamw_step(o, lr, gscale);
        ck_assert_msg(o->tables != NULL, "the one-launch step fell back to per-parameter launches");
        r->step++;
        for (int i = 0; i < pb->n; i++) { /* adamw.c's per-parameter loop */
            const int64_t off = pb->grad_off[i];
            if (off < 0)
                continue;
            const int64_t end = off + dvl_numel(pb->t[i]);
            const int64_t a = off > lo ? off : lo, b = end < hi ? end : hi;
            if (a >= b)
                continue;
            dvl_cuda_adamw(dvl_f32(pb->t[i]) + (a - off), pb->grad + a, gscale, r->m + (a - lo),
                           r->v + (a - lo), b - a, lr * r->lr_mult[i], r->beta1, r->beta2, r->eps,
                           r->decay[i] ? r->weight_decay : 0.0f, r->step);
        }
        free(g);
    }
    const size_t nb = (size_t)pc->numel * sizeof(float), mb = (size_t)(hi - lo) * sizeof(float);
    float *ha = malloc(nb), *hb = malloc(nb), *ma = malloc(mb), *mr = malloc(mb);
    ck_assert(ha && hb && ma && mr);
    ck_assert_int_eq(dvl_params_data_to_host(pa, ha, &err), DVL_OK);
    ck_assert_int_eq(dvl_params_data_to_host(pb, hb, &err), DVL_OK);
    ck_assert_mem_eq(ha, hb, nb);
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(dvl_cuda_memcpy_d2h(ma, k ? o->v : o->m, mb, &err), DVL_OK);
        ck_assert_int_eq(dvl_cuda_memcpy_d2h(mr, k ? r->v : r->m, mb, &err), DVL_OK);
        ck_assert_mem_eq(ma, mr, mb);
    }
    /* Not vacuous: w moved inside the shard and not before it; big's
     * elements past the shard did not move. */
    ck_assert_msg(ha[lo] != init[lo] && ha[lo - 1] == init[lo - 1], "w[%d]: %g -> %g", (int)lo,
                  (double)init[lo], (double)ha[lo]);
    const int64_t last = pc->numel - 1;
    ck_assert(ha[last] == init[last] && ha[last - 60] != init[last - 60]);
    dvl_adamw_free(o), dvl_adamw_free(r);
    dvl_params_free(pa), dvl_params_free(pb), dvl_params_free(pc);
    free(init), free(ha), free(hb), free(ma), free(mr);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST


/* SigLIP's patch extraction on the device against the layout written out
 * here (exact: a gather), on an image side that is not a multiple of the
 * patch (the last pixels are dropped); then a 1-layer tower's forward on a
 * CUDA context against the CPU's (scale_err <= 1e-4: f32 on both, only the
 * summation orders differ; a layout error would be O(1)), its store moved
 * to the device in place with dvl_params_move (the tower's tensors follow). */
START_TEST(siglip_on_device_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    const int64_t n = 2, C = 3, S = 11, P = 4, G = 2, K = C * P * P, rows = n * G * G;
    float *px = host_randn(n * C * S * S, 91, 1.0f);
    float *ref = malloc((size_t)(rows * K) * sizeof(float));
    ck_assert_ptr_nonnull(ref);
    for (int64_t i = 0; i < n; i++)
        for (int64_t gy = 0; gy < G; gy++)
            for (int64_t gx = 0; gx < G; gx++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t ky = 0; ky < P; ky++)
                        for (int64_t kx = 0; kx < P; kx++)
                            ref[((i * G + gy) * G + gx) * K + (c * P + ky) * P + kx] =
                                px[((i * C + c) * S + gy * P + ky) * S + gx * P + kx];
    float *pd = upload(px, n * C * S * S), *cols = dev_alloc((size_t)(rows * K) * sizeof(float));
    dvl_cuda_patchify(cols, pd, n, C, S, P);
    float *got = download(cols, rows * K);
    ck_assert_mem_eq(got, ref, (size_t)(rows * K) * sizeof(float));
    free(got);
    dvl_cuda_free(cols);
    dvl_cuda_free(pd);
    free(ref);

    dvl_siglip_config c = {.hidden = 8, .intermediate = 12, .layers = 1, .heads = 2,
                           .head_dim = 4, .image_size = S, .patch_size = P, .channels = C,
                           .ln_eps = 1e-6f, .act = DVL_GELU_TANH, .select_layer = -1};
    dvl_params *p = dvl_params_new();
    dvl_siglip m;
    ck_assert_msg(dvl_siglip_declare(&m, &c, p, "v.", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(m.n_layers, 1);
    ck_assert_int_eq(dvl_params_alloc(p, &err), DVL_OK);
    for (int i = 0; i < p->n; i++)
        tu_randn(p->t[i], 100 + (uint64_t)i, 0.3f);
    int64_t s4[4] = {n, C, S, S};
    dvl_ctx *cc = dvl_ctx_new(DVL_CPU);
    dvl_tensor *fc = dvl_siglip_forward(cc, &m, dvl_from_host(cc, DVL_F32, 4, s4, px), false);
    ck_assert_msg(fc != NULL, "%s", dvl_ctx_err(cc)->msg);
    double *fref = dzeros(dvl_numel(fc));
    for (int64_t i = 0; i < dvl_numel(fc); i++)
        fref[i] = dvl_f32(fc)[i];
    ck_assert_msg(dvl_params_move(p, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(m.patch_w->device, DVL_CUDA);
    dvl_ctx *cg = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(cg != NULL, "%s", err.msg);
    /* Host pixels on a CUDA context: refused, naming the tensor. */
    dvl_tensor *hpx = dvl_from_host(cc, DVL_F32, 4, s4, px);
    hpx->name = "host_pixels";
    ck_assert_ptr_null(dvl_siglip_forward(cg, &m, hpx, false));
    ck_assert_msg(strstr(dvl_ctx_err(cg)->msg, "host_pixels"), "%s", dvl_ctx_err(cg)->msg);
    dvl_ctx_clear_error(cg);
    dvl_tensor *fg = dvl_siglip_forward(cg, &m, dvl_from_host(cg, DVL_F32, 4, s4, px), false);
    ck_assert_msg(fg != NULL, "%s", dvl_ctx_err(cg)->msg);
    ck_assert_int_eq(dvl_numel(fg), dvl_numel(fc));
    float *hg = malloc((size_t)dvl_numel(fg) * sizeof(float));
    ck_assert_ptr_nonnull(hg);
    ck_assert_int_eq(dvl_tensor_to_host(cg, fg, hg), DVL_OK);
    double e = scale_err(hg, fref, dvl_numel(fg));
    printf("test_cuda: siglip forward cuda vs cpu scale_err %.2e (tol 1e-4)\n", e);
    CHECK_ERR("siglip forward on the device", e, 1e-4);
    free(hg), free(fref), free(px);
    dvl_ctx_free(cc), dvl_ctx_free(cg);
    dvl_siglip_free(&m);
    dvl_params_free(p);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* dvl_params_move: host -> device -> host in place, data and gradients
 * bit for bit, frozen tensors without a gradient, the device grad norm
 * against the host's (rel <= 1e-12: double sums split differently) and
 * the same bits when asked again (its scratch is preallocated); data
 * written with dvl_params_data_from_host comes back. */
START_TEST(params_move_round_trip)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *p = dvl_params_new();
    int64_t sa[2] = {5, 7}, sf[1] = {3}, sb[1] = {13};
    dvl_tensor *a = dvl_params_add(p, "a", 2, sa, true, &err);
    dvl_tensor *f = dvl_params_add(p, "f", 1, sf, false, &err);
    dvl_tensor *b = dvl_params_add(p, "b", 1, sb, true, &err);
    ck_assert(a && f && b);
    ck_assert_int_eq(dvl_params_alloc(p, &err), DVL_OK);
    float *d0 = host_randn(p->numel, 5, 1.0f), *g0 = host_randn(p->numel_grad, 6, 1.0f);
    memcpy(p->data, d0, (size_t)p->numel * sizeof(float));
    memcpy(p->grad, g0, (size_t)p->numel_grad * sizeof(float));
    const double nc = dvl_grad_norm(p);
    const int64_t off_b = dvl_f32(b) - p->data;
    ck_assert_int_eq(dvl_params_move(p, DVL_CUDA, &err), DVL_OK);
    ck_assert_int_eq(dvl_params_move(p, DVL_CUDA, &err), DVL_OK); /* already there */
    ck_assert_int_eq(p->device, DVL_CUDA);
    ck_assert(a->device == DVL_CUDA && f->device == DVL_CUDA && b->device == DVL_CUDA);
    ck_assert_ptr_eq(dvl_params_find(p, "a"), a);
    ck_assert_ptr_null(f->grad);
    ck_assert_int_eq(dvl_f32(b) - p->data, off_b);
    float *h = malloc((size_t)p->numel * sizeof(float));
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(dvl_params_data_to_host(p, h, &err), DVL_OK);
    ck_assert_mem_eq(h, d0, (size_t)p->numel * sizeof(float));
    ck_assert_int_eq(dvl_params_grad_to_host(p, h, &err), DVL_OK);
    ck_assert_mem_eq(h, g0, (size_t)p->numel_grad * sizeof(float));
    const double ng1 = dvl_grad_norm(p), ng2 = dvl_grad_norm(p);
    printf("test_cuda: moved store grad norm cpu %.17g cuda %.17g (tol 1e-12)\n", nc, ng1);
    CHECK_ERR("grad norm after the move", fabs(ng1 - nc) / nc, 1e-12);
    ck_assert_msg(memcmp(&ng1, &ng2, sizeof ng1) == 0, "grad norm differs between calls");
    for (int64_t i = 0; i < p->numel; i++)
        d0[i] = 0.5f * d0[i] + 1.0f;
    ck_assert_int_eq(dvl_params_data_from_host(p, d0, &err), DVL_OK);
    ck_assert_int_eq(dvl_params_move(p, DVL_CPU, &err), DVL_OK);
    ck_assert(p->device == DVL_CPU && a->device == DVL_CPU && p->norm_scratch == NULL);
    ck_assert_mem_eq(p->data, d0, (size_t)p->numel * sizeof(float));
    ck_assert_mem_eq(p->grad, g0, (size_t)p->numel_grad * sizeof(float));
    ck_assert_ptr_eq(dvl_f32(b), p->data + off_b);
    free(h), free(d0), free(g0);
    dvl_params_free(p);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* The CUDA context's h2d copies go through pinned staging: the source may
 * be overwritten as soon as the call returns (each of 40 copies of 64 KiB
 * reuses one host buffer, 2.5 MiB in all, so the staging arena grows past
 * its first chunk), every destination holds what was copied; after a reset
 * the same step allocates nothing (staging consolidated like the arenas). */
START_TEST(staged_uploads_survive_source_reuse)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(ctx != NULL, "%s", err.msg);
    enum { N = 40, E = 16384 };
    int32_t *src = malloc(E * sizeof(int32_t)), *back = malloc(E * sizeof(int32_t));
    ck_assert(src && back);
    int32_t *dst[N];
    for (int step = 0; step < 3; step++) {
        dvl_ctx_reset(ctx);
        int64_t before = dvl_arena_mallocs(ctx);
        for (int k = 0; k < N; k++) {
            for (int i = 0; i < E; i++)
                src[i] = step * 1000003 + k * 65537 + i;
            dst[k] = dvl_alloc_dev(ctx, E * sizeof(int32_t));
            ck_assert_ptr_nonnull(dst[k]);
            ck_assert_int_eq(dvl_ctx_memcpy_h2d(ctx, dst[k], src, E * sizeof(int32_t)), DVL_OK);
            memset(src, 0xab, E * sizeof(int32_t)); /* the copy must not see this */
        }
        for (int k = 0; k < N; k++) {
            ck_assert_int_eq(dvl_ctx_memcpy_d2h(ctx, back, dst[k], E * sizeof(int32_t)), DVL_OK);
            for (int i = 0; i < E; i++)
                ck_assert_msg(back[i] == step * 1000003 + k * 65537 + i,
                              "step %d copy %d element %d: %d", step, k, i, (int)back[i]);
        }
        if (step == 2)
            ck_assert_int_eq(dvl_arena_mallocs(ctx), before);
    }
    ck_assert_msg(dvl_ctx_ok(ctx), "%s", dvl_ctx_err(ctx)->msg);
    free(src), free(back);
    dvl_ctx_free(ctx);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* A device run's checkpoint path: AdamW state copied from a device
 * optimizer to a host twin (dvl_params_to_device(.., DVL_CPU)) and from
 * there into a fresh device optimizer over a fresh device store; one more
 * step on the original and on the restored pair gives the same bits (what
 * makes a resumed GPU run repeat the uninterrupted one). */
START_TEST(adamw_state_copy_resumes_exactly)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_params *pc = dvl_params_new();
    int64_t s2[2] = {17, 9}, s1[1] = {5};
    ck_assert_ptr_nonnull(dvl_params_add(pc, "w", 2, s2, true, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "frozen", 1, s1, false, &err));
    ck_assert_ptr_nonnull(dvl_params_add(pc, "n", 1, s1, true, &err));
    ck_assert_int_eq(dvl_params_alloc(pc, &err), DVL_OK);
    float *init = host_randn(pc->numel, 31, 1.0f);
    memcpy(pc->data, init, (size_t)pc->numel * sizeof(float));
    dvl_params *pg = dvl_params_to_device(pc, DVL_CUDA, &err);
    ck_assert_msg(pg != NULL, "%s", err.msg);
    dvl_adamw *og = dvl_adamw_new(pg, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(og != NULL, "%s", err.msg);
    const int64_t ng = pc->numel_grad;
    float *g[3];
    for (int t = 0; t < 3; t++)
        g[t] = host_randn(ng, 40 + (uint64_t)t, 0.1f);
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(dvl_cuda_memcpy_h2d(pg->grad, g[t], (size_t)ng * 4, &err), DVL_OK);
        dvl_adamw_step(og, 1e-2f, 1.0f);
    }
    /* Save: device -> host twin. */
    dvl_params *ph = dvl_params_to_device(pg, DVL_CPU, &err);
    ck_assert_msg(ph != NULL, "%s", err.msg);
    dvl_adamw *oh = dvl_adamw_new(ph, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(oh != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_adamw_copy_state(oh, og, &err), DVL_OK);
    ck_assert_int_eq(oh->step, 2);
    float *hm = malloc((size_t)ng * 4);
    ck_assert_ptr_nonnull(hm);
    ck_assert_int_eq(dvl_cuda_memcpy_d2h(hm, og->m, (size_t)ng * 4, &err), DVL_OK);
    ck_assert_mem_eq(hm, oh->m, (size_t)ng * 4);
    ck_assert_int_eq(dvl_cuda_memcpy_d2h(hm, og->v, (size_t)ng * 4, &err), DVL_OK);
    ck_assert_mem_eq(hm, oh->v, (size_t)ng * 4);
    /* Load: host twin -> a fresh device store and optimizer. */
    dvl_params *pg2 = dvl_params_to_device(ph, DVL_CUDA, &err);
    ck_assert_msg(pg2 != NULL, "%s", err.msg);
    dvl_adamw *og2 = dvl_adamw_new(pg2, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(og2 != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_adamw_copy_state(og2, oh, &err), DVL_OK);
    ck_assert_int_eq(og2->step, 2);
    ck_assert_int_eq(dvl_cuda_memcpy_h2d(pg->grad, g[2], (size_t)ng * 4, &err), DVL_OK);
    ck_assert_int_eq(dvl_cuda_memcpy_h2d(pg2->grad, g[2], (size_t)ng * 4, &err), DVL_OK);
    dvl_adamw_step(og, 1e-2f, 1.0f);
    dvl_adamw_step(og2, 1e-2f, 1.0f);
    float *h1 = malloc((size_t)pc->numel * 4), *h2 = malloc((size_t)pc->numel * 4);
    ck_assert(h1 && h2);
    ck_assert_int_eq(dvl_params_data_to_host(pg, h1, &err), DVL_OK);
    ck_assert_int_eq(dvl_params_data_to_host(pg2, h2, &err), DVL_OK);
    ck_assert_mem_eq(h1, h2, (size_t)pc->numel * 4);
    ck_assert_msg(fabs((double)h1[0] - init[0]) > 1e-3, "adamw moved w[0] by only %g",
                  fabs((double)h1[0] - init[0]));
    /* Another layout: refused. */
    dvl_params *other = dvl_params_new();
    ck_assert_ptr_nonnull(dvl_params_add(other, "x", 1, s1, true, &err));
    ck_assert_int_eq(dvl_params_alloc(other, &err), DVL_OK);
    dvl_adamw *oo = dvl_adamw_new(other, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_ptr_nonnull(oo);
    ck_assert_int_eq(dvl_adamw_copy_state(oo, og, &err), DVL_EINVAL);
    dvl_adamw_free(oo), dvl_adamw_free(og), dvl_adamw_free(oh), dvl_adamw_free(og2);
    dvl_params_free(other), dvl_params_free(pc), dvl_params_free(pg), dvl_params_free(ph),
        dvl_params_free(pg2);
    for (int t = 0; t < 3; t++)
        free(g[t]);
    free(init), free(hm), free(h1), free(h2);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

#ifdef DVL_HAVE_CUDA
/* ------------------------------------------------- generation on the GPU */

/* The models and prompts are test_generate.c's (gen_fixture.h). */

/* The decoding modes compared, greedy throughout. */
typedef struct gen_case {
    const char *name;
    dvl_gen_mode mode;
    dvl_remask remask;
    dvl_mask_kind full;
    int steps;
} gen_case;

static const gen_case GEN_CASES[] = {
    {"block static", DVL_GEN_BLOCK, DVL_REMASK_STATIC, DVL_MASK_BIDIR, 4},
    {"block dynamic", DVL_GEN_BLOCK, DVL_REMASK_DYNAMIC, DVL_MASK_BIDIR, 2},
    {"full bidir", DVL_GEN_FULL, DVL_REMASK_STATIC, DVL_MASK_BIDIR, 4},
    {"full block-causal", DVL_GEN_FULL, DVL_REMASK_STATIC, DVL_MASK_BLOCK_CAUSAL, 4},
    {"ar", DVL_GEN_AR, DVL_REMASK_STATIC, DVL_MASK_BIDIR, 4}};
#define N_GEN_CASES ((int)(sizeof GEN_CASES / sizeof *GEN_CASES))

static void gen_case_opts(dvl_gen_opts *o, const gen_case *c, int64_t max_new)
{
    dvl_gen_opts_default(o);
    o->mode = c->mode;
    o->full_mask = c->full;
    o->block_size = 4;
    o->steps = c->steps;
    o->sampler.remask = c->remask;
    o->sampler.tau = 0.5f;
    o->max_new = max_new;
    o->mask_id = TG_MASK;
}

/* n prompts in one dvl_generate_batch (n 1: what dvl_generate runs). */
static void gen_run(const dvl_model *m, int n, const int32_t *const *p, const int64_t *lens,
                    const float *const *px, const dvl_gen_opts *o, dvl_gen_result *out)
{
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_generate_batch(m, n, p, lens, px, o, out, &err) == DVL_OK, "%s", err.msg);
}

static void gen_same(const char *what, const char *mode, int seq, const dvl_gen_result *a,
                     const dvl_gen_result *b)
{
    ck_assert_msg(a->n == b->n && a->stopped == b->stopped, "%s, %s, seq %d: %lld vs %lld tokens",
                  what, mode, seq, (long long)a->n, (long long)b->n);
    for (int64_t t = 0; t < a->n; t++)
        ck_assert_msg(a->ids[t] == b->ids[t], "%s, %s, seq %d token %lld: %d vs %d", what, mode,
                      seq, (long long)t, a->ids[t], b->ids[t]);
}

/* max |got - ref| / max |ref| over n floats (f32 both). */
static double gen_scale_err(const float *got, const float *ref, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)got[i] - (double)ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    ck_assert_msg(mr > 0, "reference is all zeros: the check would be vacuous");
    return md / mr;
}

static float *gen_logits_host(dvl_ctx *ctx, const dvl_tensor *z)
{
    ck_assert_msg(z != NULL, "%s", dvl_ctx_err(ctx)->msg);
    float *h = malloc((size_t)dvl_numel(z) * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(dvl_tensor_to_host(ctx, z, h), DVL_OK);
    return h;
}
#endif

/* The KV cache in device memory, at the LM level on a CUDA context (the
 * rows copied device to device): two sequences prefilled with rows [0, 8),
 * then a block's rows [8, 12) without storing (twice: the cache is left as
 * it was) give the logits of one forward over [0, 12) without cache under
 * the block-causal rule; one token at a time with storing gives the causal
 * forward's. scale_err <= 1e-4 (the same f32 sums split into cached and new
 * keys, maybe through another attention kernel: rounding, ~1e-6 on the
 * CPU; a row or layout error in the cache copies is O(1)). A host cache
 * on a CUDA context is an error naming the devices. */
START_TEST(kv_cache_on_device_matches_forward)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    dvl_model m;
    tg_tiny_model(&m, 1);
    ck_assert_msg(dvl_params_move(m.params, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    const int64_t N = 2, B = 4, c = 8, T = c + B;
    int32_t *ids = tg_prompt(N * T, 2);
    int32_t pre_ids[2 * 8], blk_ids[2 * 4];
    for (int64_t n = 0; n < N; n++) {
        memcpy(pre_ids + n * c, ids + n * T, (size_t)c * sizeof *ids);
        memcpy(blk_ids + n * B, ids + n * T + c, (size_t)B * sizeof *ids);
    }
    dvl_ctx *ctx = dvl_ctx_new_err(DVL_CUDA, &err);
    ck_assert_msg(ctx != NULL, "%s", err.msg);
    dvl_set_grad_enabled(ctx, false);
    dvl_mask bc = {.kind = DVL_MASK_BLOCK_CAUSAL, .block_size = (int)B};
    dvl_lm_input full = {.batch = N, .seq = T, .ids = ids, .mask = &bc};
    float *zf = gen_logits_host(ctx, dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &full)));
    dvl_kv_cache kv;
    ck_assert_msg(dvl_kv_cache_init_on(&kv, &m.lm.cfg, N, T, DVL_CUDA, &err) == DVL_OK, "%s",
                  err.msg);
    ck_assert_int_eq(kv.device, DVL_CUDA);
    dvl_lm_input pre = {.batch = N, .seq = c, .ids = pre_ids, .mask = &bc, .cache = &kv,
                        .cache_store = true};
    ck_assert_msg(dvl_lm_forward(ctx, &m.lm, &pre) != NULL, "%s", dvl_ctx_err(ctx)->msg);
    ck_assert_int_eq(kv.len, c);
    for (int rep = 0; rep < 2; rep++) {
        dvl_lm_input blk = {.batch = N, .seq = B, .ids = blk_ids, .mask = &bc, .cache = &kv};
        float *zb = gen_logits_host(ctx, dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &blk)));
        ck_assert_int_eq(kv.len, c);
        for (int64_t n = 0; n < N; n++) {
            double e = gen_scale_err(zb + n * B * TG_VOCAB, zf + (n * T + c) * TG_VOCAB, B * TG_VOCAB);
            CHECK_ERR("cached block logits on the device", e, 1e-4);
        }
        free(zb);
    }
    free(zf);
    dvl_ctx_reset(ctx);
    /* Causal AR steps against the causal forward. */
    dvl_mask causal = {.kind = DVL_MASK_CAUSAL};
    full.mask = &causal;
    zf = gen_logits_host(ctx, dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &full)));
    kv.len = 0;
    for (int64_t t = 0; t < T; t++) {
        int32_t one_ids[2] = {ids[t], ids[T + t]};
        dvl_lm_input one = {.batch = N, .seq = 1, .ids = one_ids, .mask = &causal, .cache = &kv,
                            .cache_store = true};
        float *z = gen_logits_host(ctx, dvl_lm_logits(ctx, &m.lm, dvl_lm_forward(ctx, &m.lm, &one)));
        for (int64_t n = 0; n < N; n++) {
            double e = gen_scale_err(z + n * TG_VOCAB, zf + (n * T + t) * TG_VOCAB, TG_VOCAB);
            CHECK_ERR("AR step logits on the device", e, 1e-4);
        }
        free(z);
        dvl_ctx_reset(ctx);
    }
    free(zf);
    ck_assert_int_eq(kv.len, T);
    /* A host cache on a CUDA context. */
    dvl_kv_cache hk;
    ck_assert_int_eq(dvl_kv_cache_init(&hk, &m.lm.cfg, N, T, &err), DVL_OK);
    dvl_lm_input wrong = {.batch = N, .seq = 1, .ids = ids, .mask = &causal, .cache = &hk};
    ck_assert_ptr_null(dvl_lm_forward(ctx, &m.lm, &wrong));
    ck_assert_msg(strstr(dvl_ctx_err(ctx)->msg, "KV cache is on device"), "%s",
                  dvl_ctx_err(ctx)->msg);
    dvl_kv_cache_free(&hk);
    dvl_kv_cache_free(&kv);
    dvl_ctx_free(ctx);
    free(ids);
    dvl_model_free(&m);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* Generation on the GPU (the model's store moved with dvl_params_move, as
 * dvl-generate --device cuda does) against the CPU: three prompts (lengths
 * 5, 13, 8: block multiples and not) through block static / dynamic
 * remasking with the KV cache, full recompute (bidirectional and
 * block-causal) and AR, greedy: the same tokens, forwards included. Then
 * on the GPU: block decoding with the cache equals the block-causal
 * recompute without it, and the three prompts as one batch equal each run
 * alone. (Tokens, not logits: see gen_model on ties.) */
START_TEST(generate_cuda_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    /* test_generate.c's batch_equals_singles model and prompts, whose CPU
     * runs already agree across cache and recompute. */
    dvl_model m;
    tg_tiny_model(&m, 23);
    enum { NP = 3 };
    const int64_t lens[NP] = {5, 13, 8}, G = 17;
    int32_t *p[NP];
    for (int i = 0; i < NP; i++)
        p[i] = tg_prompt(lens[i], 30 + (uint64_t)i);
    dvl_gen_result cpu[N_GEN_CASES][NP], gpu[N_GEN_CASES][NP];
    for (int c = 0; c < N_GEN_CASES; c++)
        for (int i = 0; i < NP; i++) {
            dvl_gen_opts o;
            gen_case_opts(&o, &GEN_CASES[c], G);
            const int32_t *pi = p[i];
            gen_run(&m, 1, &pi, &lens[i], NULL, &o, &cpu[c][i]);
            ck_assert_int_eq(cpu[c][i].n, G);
        }
    ck_assert_msg(dvl_params_move(m.params, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(m.lm.embed->device, DVL_CUDA);
    for (int c = 0; c < N_GEN_CASES; c++) {
        dvl_gen_opts o;
        gen_case_opts(&o, &GEN_CASES[c], G);
        for (int i = 0; i < NP; i++) {
            const int32_t *pi = p[i];
            gen_run(&m, 1, &pi, &lens[i], NULL, &o, &gpu[c][i]);
            gen_same("cuda vs cpu", GEN_CASES[c].name, i, &gpu[c][i], &cpu[c][i]);
            ck_assert_int_eq(gpu[c][i].forwards, cpu[c][i].forwards);
        }
        dvl_gen_result all[NP];
        const int32_t *pp[NP] = {p[0], p[1], p[2]};
        gen_run(&m, NP, pp, lens, NULL, &o, all);
        for (int i = 0; i < NP; i++) {
            gen_same("cuda batch vs cuda single", GEN_CASES[c].name, i, &all[i], &gpu[c][i]);
            dvl_gen_result_free(&all[i]);
        }
    }
    /* GEN_CASES[0] (block, cache) against [3] (full block-causal, none). */
    for (int i = 0; i < NP; i++)
        gen_same("cuda cache vs recompute", "block static", i, &gpu[0][i], &gpu[3][i]);
    for (int c = 0; c < N_GEN_CASES; c++)
        for (int i = 0; i < NP; i++) {
            dvl_gen_result_free(&cpu[c][i]);
            dvl_gen_result_free(&gpu[c][i]);
        }
    for (int i = 0; i < NP; i++)
        free(p[i]);
    dvl_model_free(&m);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* A VLM on the GPU: the host image uploaded, the tower and connector run
 * there, the prompt embeddings (image rows spliced in) brought back once
 * and their rows uploaded into each pass. The tests/data/ref/vlm fixture
 * with peaked random LM weights, prompt and image as in test_generate's
 * VLM test (B 4, 11 tokens, whose CPU cache = recompute holds): block
 * decoding on the GPU gives the CPU's tokens, and the block-causal
 * recompute's. */
START_TEST(generate_vlm_cuda_matches_cpu)
{
#ifdef DVL_HAVE_CUDA
    if (!gpu_or_skip())
        return;
    tg_vlm f;
    tg_vlm_open(&f);
    dvl_model *m = &f.m;
    dvl_err err = {0, ""};
    dvl_gen_opts o;
    dvl_gen_opts_default(&o);
    o.block_size = 4;
    o.steps = 4;
    o.max_new = 11;
    o.mask_id = (int32_t)m->cfg.vlm.lm.vocab - 1;
    dvl_gen_result a, b, r;
    ck_assert_msg(dvl_generate(m, f.prompt, f.P, f.px, 1, &o, &a, &err) == 0, "%s", err.msg);
    ck_assert_msg(dvl_params_move(m->params, DVL_CUDA, &err) == DVL_OK, "%s", err.msg);
    ck_assert_msg(dvl_generate(m, f.prompt, f.P, f.px, 1, &o, &b, &err) == 0, "%s", err.msg);
    gen_same("cuda vs cpu", "vlm block", 0, &b, &a);
    o.mode = DVL_GEN_FULL;
    o.full_mask = DVL_MASK_BLOCK_CAUSAL;
    ck_assert_msg(dvl_generate(m, f.prompt, f.P, f.px, 1, &o, &r, &err) == 0, "%s", err.msg);
    gen_same("cuda cache vs recompute", "vlm block", 0, &b, &r);
    dvl_gen_result_free(&a), dvl_gen_result_free(&b), dvl_gen_result_free(&r);
    tg_vlm_free(&f);
#else
    printf(SKIP_MSG "\n");
#endif
}
END_TEST

/* NCCL on a communicator of one rank (all a one-GPU machine can make: NCCL
 * refuses two ranks on one GPU): the id, the communicator, two bucket
 * all-reduces on its stream ordered after the kernel that wrote the buffer,
 * the join and the division, as dist.c uses them. A sum over one rank is
 * the identity, so the result is exact; the division by 3 matches the
 * host's correctly rounded quotient bit for bit. libnccl.so.2 is loaded at
 * run time: where it cannot be, the test says so and passes, unless
 * DVL_REQUIRE_NCCL=1. */
START_TEST(nccl_one_rank_allreduce)
{
#if defined(DVL_HAVE_CUDA) && defined(DVL_HAVE_NCCL)
    if (!gpu_or_skip())
        return;
    dvl_err err = {0, ""};
    if (dvl_nccl_probe(&err) != DVL_OK) {
        const char *req = getenv("DVL_REQUIRE_NCCL");
        ck_assert_msg(!(req && req[0] && strcmp(req, "0") != 0),
                      "DVL_REQUIRE_NCCL is set: %s", err.msg);
        printf("test_cuda: NCCL test skipped: %s\n", err.msg);
        return;
    }
    unsigned char id[DVL_NCCL_ID_BYTES];
    ck_assert_msg(dvl_nccl_unique_id(id, &err) == DVL_OK, "%s", err.msg);
    dvl_nccl *c = dvl_nccl_new(id, 1, 0, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    const int64_t n = 1000;
    float *h = host_randn(n, 77, 1.0f), *x = upload(h, n);
    dvl_cuda_scale_fwd(x, x, 2.0f, n); /* queued on the default stream first */
    ck_assert_int_eq(dvl_nccl_allreduce_sum(c, x, 600, &err), DVL_OK);
    ck_assert_int_eq(dvl_nccl_allreduce_sum(c, x + 600, n - 600, &err), DVL_OK);
    ck_assert_int_eq(dvl_nccl_join(c, &err), DVL_OK);
    dvl_cuda_div_scalar(x, 3.0f, n);
    float *got = download(x, n);
    for (int64_t i = 0; i < n; i++) {
        float want = (h[i] * 2.0f) / 3.0f;
        ck_assert_msg(memcmp(&got[i], &want, sizeof want) == 0, "element %lld: %.9g, want %.9g",
                      (long long)i, (double)got[i], (double)want);
    }
    free(got), free(h);
    dvl_cuda_free(x);
    dvl_nccl_free(c);
#else
    printf(SKIP_MSG " (no NCCL in this build)\n");
#endif
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("cuda");
    tcase_add_test(tc, availability_query_is_clean);
    tcase_add_test(tc, linear_f32_matches_reference);
    tcase_add_test(tc, linear_tf32_within_1e_2);
    tcase_add_test(tc, matmul_bf16_within_tolerance);
    tcase_add_test(tc, linear_bf16_matches_reference);
    tcase_add_test(tc, rmsnorm_matches_reference);
    tcase_add_test(tc, silu_swiglu_match_reference);
    tcase_add_test(tc, adamw_matches_torch_formula);
    tcase_add_test(tc, cuda_context_basics);
    tcase_add_test(tc, elementwise_ops_match_cpu);
    tcase_add_test(tc, norm_linear_ops_match_cpu);
    tcase_add_test(tc, index_ops_match_cpu);
    tcase_add_test(tc, cross_entropy_matches_cpu);
    tcase_add_test(tc, bf16_ops_match_cpu);
    tcase_add_test(tc, attention_matches_cpu_all_masks);
    tcase_add_test(tc, attention_tiled_matches_cpu_sizes);
    tcase_add_test(tc, attention_tc_matches_cpu_sizes);
    tcase_add_test(tc, attention_bf16_matches_cpu_sizes);
    tcase_add_test(tc, attention_precision_override);
    tcase_add_test(tc, attention_tiled_masked_rows_are_zero);
    tcase_add_test(tc, attention_tiled_matches_reference_kernel);
    tcase_add_test(tc, attention_tiled_long_sequence_bounded_memory);
    tcase_add_test(tc, linear_cross_entropy_large_vocab_bounded_memory);
    tcase_add_test(tc, toy_model_step_matches_cpu);
    tcase_add_test(tc, toy_model_step_bf16_close_to_cpu);
    tcase_add_test(tc, bf16_copies_of_frozen_weights);
    tcase_add_test(tc, bf16_copies_of_all_weights_follow_updates);
    tcase_add_test(tc, swiglu_mlp_bf16_activations);
    tcase_add_test(tc, adamw_device_store_matches_cpu);
    tcase_add_test(tc, adamw_one_launch_equals_per_parameter);
    tcase_add_test(tc, siglip_on_device_matches_cpu);
    tcase_add_test(tc, params_move_round_trip);
    tcase_add_test(tc, staged_uploads_survive_source_reuse);
    tcase_add_test(tc, adamw_state_copy_resumes_exactly);
    tcase_add_test(tc, nccl_one_rank_allreduce);
    tcase_add_test(tc, kv_cache_on_device_matches_forward);
    tcase_add_test(tc, generate_cuda_matches_cpu);
    tcase_add_test(tc, generate_vlm_cuda_matches_cpu);
    /* Each test creates CUDA contexts and cuBLAS handles in a fresh child
     * process (seconds on a cold GPU): more than Check's 4 s default when
     * the binary is run outside meson (which sets CK_DEFAULT_TIMEOUT). */
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    /* Its own case, so CK_RUN_CASE=cuda runs the checks without it (under
     * compute-sanitizer, say). */
    TCase *timing = tcase_create("timing");
    tcase_add_test(timing, gemm_throughput_4096_print);
    tcase_add_test(timing, toy_model_step_timing_print);
    tcase_add_test(timing, attention_timing_print);
    tcase_set_timeout(timing, 300);
    suite_add_tcase(s, timing);
    return s;
}

int main(void) { return tu_run(suite()); }
