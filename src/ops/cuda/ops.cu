/* CUDA kernels of the elementwise, softmax, LayerNorm, embedding / row,
 * rotary and cross-entropy ops, with the CPU kernels' pointer-and-size
 * signatures (ops/cuda/cuda.h). Straightforward first versions: one thread
 * per element, one warp per row, column sums by one thread per column.
 *
 * Determinism: every reduction has an order fixed by the sizes (warp
 * butterflies, shared-memory trees of fixed shape, sequential loops), never
 * atomics, so a rerun gives the same bits. */
#include <math.h>

#include "ops/cuda/common.cuh"

#define GRID_STRIDE(i, n)                                                                     \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                 \
         i += (int64_t)gridDim.x * blockDim.x)

__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Rows per block for the one-warp-per-row kernels. */
#define WROWS 8

static unsigned row_blocks(int64_t rows) { return (unsigned)((rows + WROWS - 1) / WROWS); }

/* ---------------------------------------------------------- elementwise */

__global__ static void add_fwd_k(float *y, const float *a, const float *b, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

/* ga == gb (x + x) gets both contributions from the one thread. */
__global__ static void add_bwd_k(float *ga, float *gb, const float *gy, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        const float g = gy[i];
        if (ga)
            ga[i] += g;
        if (gb)
            gb[i] += g;
    }
}

__global__ static void mul_fwd_k(float *y, const float *a, const float *b, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] * b[i];
}

__global__ static void mul_bwd_k(float *ga, float *gb, const float *gy, const float *a,
                                 const float *b, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        const float g = gy[i];
        if (ga)
            ga[i] += g * b[i];
        if (gb)
            gb[i] += g * a[i];
    }
}

__global__ static void scale_fwd_k(float *y, const float *a, float s, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] * s;
}

__global__ static void scale_bwd_k(float *ga, const float *gy, float s, int64_t n)
{
    GRID_STRIDE(i, n) ga[i] += s * gy[i];
}

extern "C" void dvl_cuda_add_fwd(float *y, const float *a, const float *b, int64_t n)
{
    if (n > 0)
        add_fwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(y, a, b, n);
}

extern "C" void dvl_cuda_add_bwd(float *ga, float *gb, const float *gy, int64_t n)
{
    if (n > 0 && (ga || gb))
        add_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(ga, gb, gy, n);
}

extern "C" void dvl_cuda_mul_fwd(float *y, const float *a, const float *b, int64_t n)
{
    if (n > 0)
        mul_fwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(y, a, b, n);
}

extern "C" void dvl_cuda_mul_bwd(float *ga, float *gb, const float *gy, const float *a,
                                 const float *b, int64_t n)
{
    if (n > 0 && (ga || gb))
        mul_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(ga, gb, gy, a, b, n);
}

extern "C" void dvl_cuda_scale_fwd(float *y, const float *a, float s, int64_t n)
{
    if (n > 0)
        scale_fwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(y, a, s, n);
}

extern "C" void dvl_cuda_scale_bwd(float *ga, const float *gy, float s, int64_t n)
{
    if (n > 0 && ga)
        scale_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(ga, gy, s, n);
}

/* ----------------------------------------------------------------- gelu */
/* The CPU kernels' double-precision formulas (ops/cpu/elementwise.c): erf
 * form through erfc (no cancellation at x << 0), tanh form as x
 * sigmoid(2u). */
#define GELU_BETA 0.79788456080286535588  /* sqrt(2/pi) */
#define GELU_KAPPA 0.044715
#define GELU_PDF 0.39894228040143267794   /* 1/sqrt(2 pi) */
#define GELU_SQRT1_2 0.70710678118654752440

__device__ static inline double gelu_d(double x, int kind)
{
    if (kind == 0)
        return 0.5 * x * erfc(-x * GELU_SQRT1_2);
    const double u = GELU_BETA * (x + GELU_KAPPA * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

__device__ static inline double gelu_grad_d(double x, int kind)
{
    if (kind == 0)
        return 0.5 * erfc(-x * GELU_SQRT1_2) + x * GELU_PDF * exp(-0.5 * x * x);
    const double u = GELU_BETA * (x + GELU_KAPPA * x * x * x);
    const double s = 1.0 / (1.0 + exp(-2.0 * u));
    return s + x * 2.0 * s * (1.0 - s) * GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x * x);
}

__global__ static void gelu_fwd_k(float *y, const float *x, int kind, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = (float)gelu_d(x[i], kind);
}

__global__ static void gelu_bwd_k(float *gx, const float *gy, const float *x, int kind, int64_t n)
{
    GRID_STRIDE(i, n) gx[i] += (float)(gy[i] * gelu_grad_d(x[i], kind));
}

extern "C" void dvl_cuda_gelu_fwd(float *y, const float *x, int kind, int64_t n)
{
    if (n > 0)
        gelu_fwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(y, x, kind, n);
}

extern "C" void dvl_cuda_gelu_bwd(float *gx, const float *gy, const float *x, int kind, int64_t n)
{
    if (n > 0 && gx)
        gelu_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(gx, gy, x, kind, n);
}

/* ------------------------------------------------------------------ sum */
/* One block of SUM_THREADS: thread t sums elements t, t + SUM_THREADS, ...
 * in double, then a shared-memory tree of fixed shape. */
#define SUM_THREADS 256

__device__ static double block_sum_d(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = SUM_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

__global__ static void sum_fwd_k(float *y, const float *x, int64_t n)
{
    __shared__ double sh[SUM_THREADS];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += SUM_THREADS)
        s += x[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0)
        y[0] = (float)s;
}

__global__ static void sum_bwd_k(float *gx, const float *gy, int64_t n)
{
    const float g = gy[0];
    GRID_STRIDE(i, n) gx[i] += g;
}

extern "C" void dvl_cuda_sum_fwd(float *y, const float *x, int64_t n)
{
    sum_fwd_k<<<1, SUM_THREADS>>>(y, x, n);
}

extern "C" void dvl_cuda_sum_bwd(float *gx, const float *gy, int64_t n)
{
    if (n > 0 && gx)
        sum_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(gx, gy, n);
}

/* -------------------------------------------------------------- softmax */

__global__ static void softmax_fwd_k(float *y, const float *x, int64_t rows, int64_t cols)
{
    const int64_t row = (int64_t)blockIdx.x * WROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *xr = x + row * cols;
    float *yr = y + row * cols;
    float m = -INFINITY;
    for (int64_t j = lane; j < cols; j += 32)
        m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) {
        const float e = expf(xr[j] - m);
        yr[j] = e;
        s += e;
    }
    s = warp_sum(s);
    const float inv = 1.0f / s;
    for (int64_t j = lane; j < cols; j += 32)
        yr[j] *= inv;
}

/* gx = y (gy - sum_j gy_j y_j). */
__global__ static void softmax_bwd_k(float *gx, const float *gy, const float *y, int64_t rows,
                                     int64_t cols)
{
    const int64_t row = (int64_t)blockIdx.x * WROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *gr = gy + row * cols, *yr = y + row * cols;
    float dot = 0.0f;
    for (int64_t j = lane; j < cols; j += 32)
        dot += gr[j] * yr[j];
    dot = warp_sum(dot);
    float *gxr = gx + row * cols;
    for (int64_t j = lane; j < cols; j += 32)
        gxr[j] += yr[j] * (gr[j] - dot);
}

extern "C" void dvl_cuda_softmax_fwd(float *y, const float *x, int64_t rows, int64_t cols)
{
    if (rows > 0 && cols > 0)
        softmax_fwd_k<<<row_blocks(rows), 32 * WROWS>>>(y, x, rows, cols);
}

extern "C" void dvl_cuda_softmax_bwd(float *gx, const float *gy, const float *y, int64_t rows,
                                     int64_t cols)
{
    if (rows > 0 && cols > 0 && gx)
        softmax_bwd_k<<<row_blocks(rows), 32 * WROWS>>>(gx, gy, y, rows, cols);
}

/* ------------------------------------------------------------ layernorm */
/* y = (x - mean) rstd w + b, rstd = 1/sqrt(var + eps), var the biased
 * variance (torch.nn.LayerNorm). Two passes over the row (mean, then the
 * centred squares) as the CPU. */
__global__ static void layernorm_fwd_k(float *y, float *mean, float *rstd, const float *x,
                                       const float *w, const float *b, int64_t rows,
                                       int64_t cols, float eps)
{
    const int64_t row = (int64_t)blockIdx.x * WROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *xr = x + row * cols;
    float s = 0.0f;
    for (int64_t j = lane; j < cols; j += 32)
        s += xr[j];
    const float mu = warp_sum(s) / (float)cols;
    float ss = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) {
        const float c = xr[j] - mu;
        ss += c * c;
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / (float)cols + eps);
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
    float *yr = y + row * cols;
    for (int64_t j = lane; j < cols; j += 32)
        yr[j] = (xr[j] - mu) * r * w[j] + (b ? b[j] : 0.0f);
}

/* With xh = (x - mean) rstd and g = w dy:
 *   dx = rstd (g - mean(g) - xh mean(g xh)). */
__global__ static void layernorm_bwd_dx_k(float *gx, const float *gy, const float *x,
                                          const float *w, const float *mean, const float *rstd,
                                          int64_t rows, int64_t cols)
{
    const int64_t row = (int64_t)blockIdx.x * WROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *xr = x + row * cols, *gr = gy + row * cols;
    const float mu = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) {
        const float g = w[j] * gr[j], xh = (xr[j] - mu) * r;
        sg += g;
        sgx += g * xh;
    }
    sg = warp_sum(sg) / (float)cols;
    sgx = warp_sum(sgx) / (float)cols;
    float *gxr = gx + row * cols;
    for (int64_t j = lane; j < cols; j += 32) {
        const float g = w[j] * gr[j], xh = (xr[j] - mu) * r;
        gxr[j] += r * (g - sg - xh * sgx);
    }
}

/* gw_j += sum_r dy_rj xh_rj, gb_j += sum_r dy_rj: one thread per column,
 * rows in order, in double. */
__global__ static void layernorm_bwd_dw_k(float *gw, float *gb, const float *gy, const float *x,
                                          const float *mean, const float *rstd, int64_t rows,
                                          int64_t cols)
{
    GRID_STRIDE(j, cols)
    {
        double sw = 0.0, sb = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const float g = gy[r * cols + j];
            sw += (double)g * ((x[r * cols + j] - mean[r]) * rstd[r]);
            sb += g;
        }
        if (gw)
            gw[j] = (float)((double)gw[j] + sw);
        if (gb)
            gb[j] = (float)((double)gb[j] + sb);
    }
}

extern "C" void dvl_cuda_layernorm_fwd(float *y, float *mean, float *rstd, const float *x,
                                       const float *w, const float *b, int64_t rows,
                                       int64_t cols, float eps)
{
    if (rows > 0 && cols > 0)
        layernorm_fwd_k<<<row_blocks(rows), 32 * WROWS>>>(y, mean, rstd, x, w, b, rows, cols,
                                                          eps);
}

extern "C" void dvl_cuda_layernorm_bwd(float *gx, float *gw, float *gb, const float *gy,
                                       const float *x, const float *w, const float *mean,
                                       const float *rstd, int64_t rows, int64_t cols)
{
    if (rows <= 0 || cols <= 0)
        return;
    if (gx)
        layernorm_bwd_dx_k<<<row_blocks(rows), 32 * WROWS>>>(gx, gy, x, w, mean, rstd, rows,
                                                             cols);
    if (gw || gb)
        layernorm_bwd_dw_k<<<dvl_cu_blocks(cols), DVL_CU_THREADS>>>(gw, gb, gy, x, mean, rstd,
                                                                    rows, cols);
}

/* ------------------------------------------------------ embedding, rows */

__global__ static void gather_k(float *out, const float *w, const int32_t *ids, int64_t n,
                                int64_t d)
{
    GRID_STRIDE(i, n * d)
    {
        const int64_t r = i / d, c = i % d;
        out[i] = w[(int64_t)ids[r] * d + c];
    }
}

/* Block k (grid stride) owns table row uid[k]; its threads take columns and
 * add that row's tokens in increasing position. */
__global__ static void embedding_bwd_k(float *dw, const float *dout, const int32_t *uid,
                                       const int32_t *off, const int32_t *pos, int64_t nuniq,
                                       int64_t d)
{
    for (int64_t k = blockIdx.x; k < nuniq; k += gridDim.x) {
        float *dst = dw + (int64_t)uid[k] * d;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
            float acc = dst[c];
            for (int32_t j = off[k]; j < off[k + 1]; j++)
                acc += dout[(int64_t)pos[j] * d + c];
            dst[c] = acc;
        }
    }
}

extern "C" void dvl_cuda_embedding_fwd(float *out, const float *w, const int32_t *ids, int64_t n,
                                       int64_t d)
{
    if (n > 0 && d > 0)
        gather_k<<<dvl_cu_blocks(n * d), DVL_CU_THREADS>>>(out, w, ids, n, d);
}

extern "C" void dvl_cuda_embedding_bwd(float *dw, const float *dout, const int32_t *uid,
                                       const int32_t *off, const int32_t *pos, int64_t nuniq,
                                       int64_t d)
{
    if (nuniq > 0 && d > 0 && dw)
        embedding_bwd_k<<<(unsigned)(nuniq < 65535 ? nuniq : 65535), 128>>>(dw, dout, uid, off,
                                                                           pos, nuniq, d);
}

__global__ static void copy_k(float *dst, const float *src, int64_t n)
{
    GRID_STRIDE(i, n) dst[i] = src[i];
}

extern "C" void dvl_cuda_concat_rows_fwd(float *out, const float *a, const float *b, int64_t na,
                                         int64_t nb, int64_t row)
{
    if (na * row > 0)
        copy_k<<<dvl_cu_blocks(na * row), DVL_CU_THREADS>>>(out, a, na * row);
    if (nb * row > 0)
        copy_k<<<dvl_cu_blocks(nb * row), DVL_CU_THREADS>>>(out + na * row, b, nb * row);
}

/* Two launches in order: ga and gb may overlap (a tensor concatenated with
 * itself), and the default stream serialises them. */
extern "C" void dvl_cuda_concat_rows_bwd(float *ga, float *gb, const float *gout, int64_t na,
                                         int64_t nb, int64_t row)
{
    dvl_cuda_add_bwd(ga, NULL, gout, na * row);
    dvl_cuda_add_bwd(gb, NULL, gout + na * row, nb * row);
}

/* Element i of y [rows, n] is column start + i % n of row i / n of x. */
__global__ static void slice_cols_fwd_k(float *y, const float *x, int64_t rows, int64_t cols,
                                        int64_t start, int64_t n)
{
    GRID_STRIDE(i, rows * n)
    {
        const int64_t r = i / n;
        y[i] = x[r * cols + start + (i - r * n)];
    }
}

__global__ static void slice_cols_bwd_k(float *gx, const float *gy, int64_t rows, int64_t cols,
                                        int64_t start, int64_t n)
{
    GRID_STRIDE(i, rows * n)
    {
        const int64_t r = i / n;
        gx[r * cols + start + (i - r * n)] += gy[i];
    }
}

extern "C" void dvl_cuda_slice_cols_fwd(float *y, const float *x, int64_t rows, int64_t cols,
                                        int64_t start, int64_t n)
{
    if (rows * n > 0)
        slice_cols_fwd_k<<<dvl_cu_blocks(rows * n), DVL_CU_THREADS>>>(y, x, rows, cols, start, n);
}

extern "C" void dvl_cuda_slice_cols_bwd(float *gx, const float *gy, int64_t rows, int64_t cols,
                                        int64_t start, int64_t n)
{
    if (rows * n > 0)
        slice_cols_bwd_k<<<dvl_cu_blocks(rows * n), DVL_CU_THREADS>>>(gx, gy, rows, cols, start,
                                                                      n);
}

__global__ static void scatter_fwd_k(float *out, const float *dst, const float *src,
                                     const int32_t *inv, int64_t n, int64_t row)
{
    GRID_STRIDE(i, n * row)
    {
        const int64_t r = i / row, c = i % row;
        out[i] = inv[r] >= 0 ? src[(int64_t)inv[r] * row + c] : dst[i];
    }
}

/* which 0: gdst[r] += gout[r] for kept rows; 1: gsrc[inv[r]] += gout[r] for
 * replaced ones (inv injective there). Separate launches since gdst and
 * gsrc may overlap. */
__global__ static void scatter_bwd_k(float *g, const float *gout, const int32_t *inv, int64_t n,
                                     int64_t row, int which)
{
    GRID_STRIDE(i, n * row)
    {
        const int64_t r = i / row, c = i % row;
        if (which == 0 && inv[r] < 0)
            g[i] += gout[i];
        else if (which == 1 && inv[r] >= 0)
            g[(int64_t)inv[r] * row + c] += gout[i];
    }
}

extern "C" void dvl_cuda_scatter_rows_fwd(float *out, const float *dst, const float *src,
                                          const int32_t *inv, int64_t n, int64_t row)
{
    if (n * row > 0)
        scatter_fwd_k<<<dvl_cu_blocks(n * row), DVL_CU_THREADS>>>(out, dst, src, inv, n, row);
}

extern "C" void dvl_cuda_scatter_rows_bwd(float *gdst, float *gsrc, const float *gout,
                                          const int32_t *inv, int64_t n, int64_t row)
{
    if (n * row <= 0)
        return;
    if (gdst)
        scatter_bwd_k<<<dvl_cu_blocks(n * row), DVL_CU_THREADS>>>(gdst, gout, inv, n, row, 0);
    if (gsrc)
        scatter_bwd_k<<<dvl_cu_blocks(n * row), DVL_CU_THREADS>>>(gsrc, gout, inv, n, row, 1);
}

__global__ static void scatter_add_k(float *dst, const float *src, const int32_t *rows, int64_t n,
                                     int64_t row)
{
    GRID_STRIDE(i, n * row)
    {
        const int64_t r = i / row, c = i % row;
        dst[(int64_t)rows[r] * row + c] += src[i];
    }
}

extern "C" void dvl_cuda_scatter_add_rows(float *dst, const float *src, const int32_t *rows,
                                          int64_t n, int64_t row)
{
    if (n * row > 0)
        scatter_add_k<<<dvl_cu_blocks(n * row), DVL_CU_THREADS>>>(dst, src, rows, n, row);
}

/* ----------------------------------------------------------------- rope */
/* As ops/cpu/rope.c: each product rounded, then the sum (no fma: nvcc would
 * contract a * b - c * d, so the products go through __fmul_rn). The dense
 * side (y forward, gy backward) is [tokens, H, D]; the other (x forward, gx
 * backward) has its tokens ld floats apart. */
__global__ static void rope_k(float *y, const float *x, const float *cos_t, const float *sin_t,
                              int64_t tokens, int64_t H, int64_t D, int64_t ld, int bwd)
{
    const int64_t half = D / 2;
    GRID_STRIDE(e, tokens * H * half)
    {
        const int64_t th = e / half, j = e % half, t = th / H;
        const int64_t dense = th * D, strided = t * ld + (th - t * H) * D;
        const int64_t xi = bwd ? dense : strided, yi = bwd ? strided : dense;
        const float c = cos_t[t * half + j], s = sin_t[t * half + j];
        const float x1 = x[xi + j], x2 = x[xi + half + j];
        if (!bwd) {
            y[yi + j] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            y[yi + half + j] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        } else { /* x is gy, y is gx: gx += R^T gy */
            y[yi + j] += __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            y[yi + half + j] += __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        }
    }
}

extern "C" void dvl_cuda_rope_fwd(float *y, const float *x, const float *cos_t,
                                  const float *sin_t, int64_t tokens, int64_t H, int64_t D,
                                  int64_t ld)
{
    if (tokens * H * (D / 2) > 0)
        rope_k<<<dvl_cu_blocks(tokens * H * (D / 2)), DVL_CU_THREADS>>>(y, x, cos_t, sin_t,
                                                                        tokens, H, D, ld, 0);
}

extern "C" void dvl_cuda_rope_bwd(float *gx, const float *gy, const float *cos_t,
                                  const float *sin_t, int64_t tokens, int64_t H, int64_t D,
                                  int64_t ld)
{
    if (tokens * H * (D / 2) > 0 && gx)
        rope_k<<<dvl_cu_blocks(tokens * H * (D / 2)), DVL_CU_THREADS>>>(gx, gy, cos_t, sin_t,
                                                                        tokens, H, D, ld, 1);
}

/* -------------------------------------------------------- cross-entropy */
/* One warp per row: m = max z, logsum = log sum exp(z - m) (sum in float
 * over the lanes, as a warp tree), rowloss = w (m + logsum - z[y]). */
__global__ static void ce_fwd_k(float *rowloss, float *rowmax, float *logsum, const float *z,
                                const int32_t *labels, const float *weight, int64_t n, int64_t V)
{
    const int64_t row = (int64_t)blockIdx.x * WROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n)
        return;
    if (labels[row] < 0) {
        if (lane == 0)
            rowloss[row] = 0.0f;
        return;
    }
    const float *zr = z + row * V;
    float m = -INFINITY;
    for (int64_t j = lane; j < V; j += 32)
        m = fmaxf(m, zr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int64_t j = lane; j < V; j += 32)
        s += expf(zr[j] - m);
    s = warp_sum(s);
    if (lane == 0) {
        const float ls = logf(s);
        rowmax[row] = m;
        logsum[row] = ls;
        const double w = weight ? (double)weight[row] : 1.0;
        rowloss[row] = (float)(w * (((double)m + ls) - zr[labels[row]]));
    }
}

__global__ static void rowsum_k(float *loss, const float *rowloss, int64_t n)
{
    __shared__ double sh[SUM_THREADS];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += SUM_THREADS)
        s += rowloss[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0)
        loss[0] = (float)s;
}

__global__ static void ce_bwd_k(float *dz, const float *z, const float *rowmax,
                                const float *logsum, const int32_t *labels, const float *weight,
                                const float *g, int64_t n, int64_t V)
{
    GRID_STRIDE(e, n * V)
    {
        const int64_t i = e / V, j = e % V;
        const int32_t y = labels[i];
        if (y < 0)
            continue;
        const float gw = g[0] * (weight ? weight[i] : 1.0f);
        const float p = expf((z[e] - rowmax[i]) - logsum[i]);
        dz[e] += gw * (p - (j == y ? 1.0f : 0.0f));
    }
}

extern "C" void dvl_cuda_cross_entropy_fwd(float *loss, float *rowloss, float *rowmax,
                                           float *logsum, const float *z, const int32_t *labels,
                                           const float *weight, int64_t n, int64_t V)
{
    if (n > 0 && V > 0)
        ce_fwd_k<<<row_blocks(n), 32 * WROWS>>>(rowloss, rowmax, logsum, z, labels, weight, n, V);
    rowsum_k<<<1, SUM_THREADS>>>(loss, rowloss, n > 0 && V > 0 ? n : 0);
}

extern "C" void dvl_cuda_cross_entropy_bwd(float *dz, const float *z, const float *rowmax,
                                           const float *logsum, const int32_t *labels,
                                           const float *weight, const float *g, int64_t n,
                                           int64_t V)
{
    if (n * V > 0 && dz)
        ce_bwd_k<<<dvl_cu_blocks(n * V), DVL_CU_THREADS>>>(dz, z, rowmax, logsum, labels, weight,
                                                           g, n, V);
}

/* ------------------------------------------- fused cross-entropy: kernels
 * The CUDA side of dvl_cpu_linear_cross_entropy_fwd/bwd (ops/cpu/
 * cross_entropy.c). The op (ops/cross_entropy.c) computes the logits of one
 * vocabulary chunk, z [n, C] = columns c0 .. c0+C of h_s W^T, by cuBLAS; the
 * kernels below fold it into each row's online log-sum-exp (forward) or turn
 * it into dZ in place (backward), with the CPU kernel's formulas so that the
 * two agree to float rounding. tools/cuda-emu runs this part of the file on
 * the CPU (everything from the heading above to the launchers' heading), so
 * it uses nothing defined elsewhere in this file but GRID_STRIDE. */

/* Threads of the per-row blocks (one block per supervised row: a chunk is
 * thousands of logits, a warp per row would leave most of the GPU idle at a
 * few hundred rows). */
#define XENT_THREADS 256

/* The kernels' two reductions: a float max and a double sum. */
struct xent_max {
    __device__ float operator()(float v, float u) const { return u > v ? u : v; }
};
struct xent_add {
    __device__ double operator()(double v, double u) const { return v + u; }
};

template <typename T, typename Op> __device__ static inline T xent_warp(T v, Op op)
{
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide reduction of a fixed shape: a warp butterfly, then every warp
 * reduces the warps' results the same way (so all threads hold the same
 * bits; max and addition are commutative, so the butterfly's partners
 * agree). sh: XENT_THREADS / 32 values of shared memory, free again on
 * return; none: the identity (-inf for the max, 0 for the sum). */
template <typename T, typename Op>
__device__ static T xent_block(T v, T *sh, T none, Op op)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = xent_warp(v, op);
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = xent_warp(lane < XENT_THREADS / 32 ? sh[lane] : none, op);
    __syncthreads();
    return v;
}

/* Block r folds row r of the chunk z [n, C] (vocabulary c0 .. c0+C) into the
 * row's running maximum m[r] and sum s[r] = sum exp(z - m[r]) (Milakov &
 * Gimelshein 2018), as the CPU's lse_update: the chunk's maximum first (a NaN
 * logit is skipped there and poisons the sum), then the chunk's terms
 * expf(z - m_new) summed in double, the old sum rescaled by exp(m_old -
 * m_new). The first chunk (c0 == 0) starts from m = -inf, s = 0. The row
 * whose label falls in the chunk keeps its logit in zy[r]. */
__global__ static void __launch_bounds__(XENT_THREADS)
    xent_lse_chunk_k(float *m, double *s, float *zy, const float *z, const int32_t *labels,
                     int64_t n, int64_t C, int64_t c0)
{
    __shared__ float shm[XENT_THREADS / 32];
    __shared__ double shs[XENT_THREADS / 32];
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float *zr = z + r * C;
        float mc = -INFINITY;
        for (int64_t j = threadIdx.x; j < C; j += XENT_THREADS)
            mc = zr[j] > mc ? zr[j] : mc;
        mc = xent_block(mc, shm, -INFINITY, xent_max());
        const float mo = c0 == 0 ? -INFINITY : m[r];
        const float mn = mc > mo ? mc : mo;
        double sc = 0.0;
        for (int64_t j = threadIdx.x; j < C; j += XENT_THREADS)
            sc += expf(zr[j] - mn);
        sc = xent_block(sc, shs, 0.0, xent_add());
        if (threadIdx.x == 0) {
            s[r] = (mo == -INFINITY ? 0.0 : s[r] * exp((double)mo - (double)mn)) + sc;
            m[r] = mn;
            const int64_t y = labels[r];
            if (y >= c0 && y < c0 + C)
                zy[r] = zr[y - c0];
        }
    }
}

/* After the last chunk, one block: logsum[r] = log s[r] and the loss
 * sum_r w_r ((m_r - zy_r) + log s_r) (the CPU's row_loss: m - zy exact in
 * double), each thread summing its rows r = t, t + XENT_THREADS, ... in
 * double, then the block's fixed tree: no atomics, the same bits every run. */
__global__ static void __launch_bounds__(XENT_THREADS)
    xent_finish_k(float *loss, float *logsum, const float *m, const double *s, const float *zy,
                  const float *weight, int64_t n)
{
    __shared__ double sh[XENT_THREADS / 32];
    double t = 0.0;
    for (int64_t r = threadIdx.x; r < n; r += XENT_THREADS) {
        const double log_s = log(s[r]);
        logsum[r] = (float)log_s;
        const double w = weight ? (double)weight[r] : 1.0;
        t += w * (((double)m[r] - (double)zy[r]) + log_s);
    }
    t = xent_block(t, sh, 0.0, xent_add());
    if (threadIdx.x == 0)
        loss[0] = (float)t;
}

/* z [n, C] (chunk c0 of the logits) becomes dZ = g w_r (p - [c0 + j == y_r])
 * in place, p = exp((z - m_r) - logsum_r); the label's entry as c (p - 1),
 * not c p - c, as the CPU kernel. g is read from device memory (the loss's
 * upstream gradient where backward left it), so the host never waits for
 * the forward pass to finish before queueing backward. */
__global__ static void xent_dz_chunk_k(float *z, const float *m, const float *logsum,
                                       const int32_t *labels, const float *weight, const float *g,
                                       int64_t n, int64_t C, int64_t c0)
{
    GRID_STRIDE(e, n * C)
    {
        const int64_t r = e / C, j = e % C;
        const float c = g[0] * (weight ? weight[r] : 1.0f);
        const float p = expf((z[e] - m[r]) - logsum[r]);
        z[e] = (int64_t)labels[r] - c0 == j ? c * (p - 1.0f) : c * p;
    }
}

/* ----------------------------------------- fused cross-entropy: launchers */

/* Grid of the per-row kernels: one block per row up to the grid cap, then
 * the blocks loop over rows. */
static unsigned xent_row_blocks(int64_t n) { return (unsigned)(n < 65536 * 16 ? n : 65536 * 16); }

extern "C" void dvl_cuda_lxent_chunk_lse(float *rowmax, double *sum, float *zy, const float *z,
                                         const int32_t *labels, int64_t n, int64_t C, int64_t c0)
{
    if (n > 0 && C > 0)
        xent_lse_chunk_k<<<xent_row_blocks(n), XENT_THREADS>>>(rowmax, sum, zy, z, labels, n, C,
                                                               c0);
}

extern "C" void dvl_cuda_lxent_finish(float *loss, float *logsum, const float *rowmax,
                                      const double *sum, const float *zy, const float *weight,
                                      int64_t n)
{
    xent_finish_k<<<1, XENT_THREADS>>>(loss, logsum, rowmax, sum, zy, weight, n > 0 ? n : 0);
}

extern "C" void dvl_cuda_lxent_chunk_dz(float *z, const float *rowmax, const float *logsum,
                                        const int32_t *labels, const float *weight,
                                        const float *g, int64_t n, int64_t C, int64_t c0)
{
    if (n * C > 0)
        xent_dz_chunk_k<<<dvl_cu_blocks(n * C), DVL_CU_THREADS>>>(z, rowmax, logsum, labels,
                                                                   weight, g, n, C, c0);
}
