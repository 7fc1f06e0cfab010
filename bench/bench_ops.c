/* dvl-bench ops: GFLOP/s of linear and attention, forward + backward, at
 * transformer shapes, beside raw cblas_sgemm at the same shapes in the same
 * run (the ceiling linear can reach) and the machine's large-square sgemm.
 *
 * FLOP accounting: linear [T, d] x [d, d]^T: forward 2Td^2, backward 4Td^2
 * (dx and dW). Attention, bidirectional, H query heads of size D: forward
 * 4T^2HD (QK^T and PV), backward 8T^2HD (dV, dP, dQ, dK); recomputing the
 * scores in backward is not counted, so this is useful-work throughput. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "core/rng.h"
#include "ops/ops.h"

static double min_time; /* seconds of repetition per measurement */

/* Seconds per call of body: the fastest of at least three timed calls made
 * over min_time (after one warm-up). The minimum, not the mean, because on a
 * shared machine interference only ever adds time. */
#define TIME_IT(secs, body)                                                                    \
    do {                                                                                      \
        body;                                                                                 \
        double best_ = 1e30, start_ = bench_now();                                            \
        for (int reps_ = 0; reps_ < 3 || bench_now() - start_ < min_time; reps_++) {          \
            double t0_ = bench_now();                                                         \
            body;                                                                             \
            double t_ = bench_now() - t0_;                                                    \
            if (t_ < best_)                                                                   \
                best_ = t_;                                                                   \
        }                                                                                     \
        secs = best_;                                                                         \
    } while (0)

static float *randbuf(int64_t n, uint64_t seed)
{
    float *x = aligned_alloc(64, (size_t)((n + 15) / 16 * 16) * sizeof(float));
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    dvl_rng_fill_normal(&r, x, n, 1.0f);
    return x;
}

static double peak_sgemm(int n)
{
    float *a = randbuf((int64_t)n * n, 1), *b = randbuf((int64_t)n * n, 2),
          *c = randbuf((int64_t)n * n, 3);
    double t;
    TIME_IT(t, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                           0.0f, c, n));
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * (double)n / t / 1e9;
}

static void bench_linear(int64_t T, int64_t d)
{
    float *x = randbuf(T * d, 4), *dy = randbuf(T * d, 5), *y = randbuf(T * d, 6);
    float *dx = randbuf(T * d, 7), *w = randbuf(d * d, 8), *dw = randbuf(d * d, 9);
    /* Raw: the three products linear needs, nothing else. */
    double t_raw;
    TIME_IT(t_raw, {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, d, d, 1.0f, x, d, w, d, 0.0f, y, d);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, d, 1.0f, dy, d, w, d, 1.0f,
                    dx, d);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, T, 1.0f, dy, d, x, d, 1.0f, dw,
                    d);
    });

    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t sw[2] = {d, d}, sb[1] = {d}, sx[2] = {T, d};
    dvl_tensor *W = dvl_params_add(p, "w", 2, sw, true, &err);
    dvl_tensor *B = dvl_params_add(p, "b", 1, sb, true, &err);
    dvl_tensor *X = dvl_params_add(p, "x", 2, sx, true, &err);
    dvl_params_alloc(p, &err);
    memcpy(W->data, w, (size_t)(d * d) * 4);
    memcpy(X->data, x, (size_t)(T * d) * 4);
    memset(B->data, 0, (size_t)d * 4);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    double t_op;
    TIME_IT(t_op, {
        dvl_ctx_reset(ctx);
        dvl_tensor *out = dvl_linear(ctx, X, W, B);
        if (!out || dvl_backward_seed(ctx, out, dy)) {
            fprintf(stderr, "linear failed: %s\n", dvl_ctx_err(ctx)->msg);
            exit(1);
        }
    });
    double flops = 6.0 * T * d * d;
    printf("linear     T=%-5lld d=%-5lld  dvl %7.1f GFLOP/s   raw sgemm %7.1f GFLOP/s   %5.1f%%\n",
           (long long)T, (long long)d, flops / t_op / 1e9, flops / t_raw / 1e9,
           100.0 * t_raw / t_op);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
    free(x), free(dy), free(y), free(dx), free(w), free(dw);
}

static void bench_attention(int64_t T, int64_t d, int64_t H, int64_t Hkv, dvl_mask_kind kind,
                            const char *kname)
{
    int64_t D = d / H;
    dvl_params *p = dvl_params_new();
    dvl_err err = {0};
    int64_t sq[4] = {1, T, H, D}, skv[4] = {1, T, Hkv, D};
    dvl_tensor *q = dvl_params_add(p, "q", 4, sq, true, &err);
    dvl_tensor *k = dvl_params_add(p, "k", 4, skv, true, &err);
    dvl_tensor *v = dvl_params_add(p, "v", 4, skv, true, &err);
    dvl_params_alloc(p, &err);
    dvl_rng r;
    dvl_rng_seed(&r, 10);
    dvl_rng_fill_normal(&r, p->data, p->numel, 1.0f);
    float *dout = randbuf(T * H * D, 11);
    dvl_ctx *ctx = dvl_ctx_new(DVL_CPU);
    dvl_mask m = {.kind = kind, .block_size = 8, .half = T / 2};
    double t_f, t_fb;
    bool prev = dvl_set_grad_enabled(ctx, false);
    TIME_IT(t_f, {
        dvl_ctx_reset(ctx);
        dvl_attention(ctx, q, k, v, &m, 1.0f / sqrtf((float)D));
    });
    dvl_set_grad_enabled(ctx, prev);
    TIME_IT(t_fb, {
        dvl_ctx_reset(ctx);
        dvl_tensor *o = dvl_attention(ctx, q, k, v, &m, 1.0f / sqrtf((float)D));
        if (!o || dvl_backward_seed(ctx, o, dout)) {
            fprintf(stderr, "attention failed: %s\n", dvl_ctx_err(ctx)->msg);
            exit(1);
        }
    });
    /* Count the visible (query, key) pairs: the work the mask leaves. */
    double pairs = 0;
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < T; j++)
            pairs += dvl_mask_allows(&m, i, j);
    double ff = 4.0 * pairs * H * D;
    printf("attention  T=%-5lld d=%-5lld H=%lld/%lld %-10s fwd %7.1f GFLOP/s  fwd+bwd %7.1f GFLOP/s"
           "  (%.0f ms)\n",
           (long long)T, (long long)d, (long long)H, (long long)Hkv, kname, ff / t_f / 1e9,
           3.0 * ff / t_fb / 1e9, t_fb * 1e3);
    dvl_ctx_free(ctx);
    dvl_params_free(p);
    free(dout);
}

int bench_ops(int argc, char **argv)
{
    min_time = 1.0;
    static const bench_opt opts[] = {{"--quick", 0}, {NULL, 0}};
    bench_args args;
    int code;
    if (!bench_args_parse("ops", "usage: dvl-bench ops [--quick]\n", argc, argv, opts, &args,
                          &code))
        return code;
    bool quick = bench_flag(&args, "--quick");
    if (quick)
        min_time = 0.2;
    printf("threads: %d OpenMP, %d OpenBLAS (%s)\n", omp_get_max_threads(),
           openblas_get_num_threads(), openblas_get_config());
    printf("machine sgemm peak (2048^3 row-major NN): %.1f GFLOP/s\n", peak_sgemm(2048));
    int64_t Ts[2] = {512, 2048}, ds[2] = {896, 3584};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            if (quick && (a || b))
                continue;
            bench_linear(Ts[a], ds[b]);
        }
    /* Qwen2.5-0.5B (d 896: 14/2 heads of 64) and -7B (d 3584: 28/4 heads of 128). */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            if (quick && (a || b))
                continue;
            int64_t H = ds[b] == 896 ? 14 : 28, Hkv = ds[b] == 896 ? 2 : 4;
            bench_attention(Ts[a], ds[b], H, Hkv, DVL_MASK_BIDIR, "bidir");
            bench_attention(Ts[a], ds[b], H, Hkv, DVL_MASK_CAUSAL, "causal");
            bench_attention(Ts[a], ds[b], H, Hkv, DVL_MASK_BLOCK_DIFF, "block-diff");
        }
    return 0;
}
