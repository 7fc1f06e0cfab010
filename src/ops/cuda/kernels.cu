/* CUDA kernels with the CPU kernels' pointer-and-size signatures: column
 * sums, RMSNorm, SiLU / SwiGLU and the fused AdamW update.
 *
 * Determinism: every reduction runs in an order fixed by the sizes alone
 * (warp butterflies, fixed row chunks summed in chunk order), never with
 * atomics, so a rerun gives the same bits. */
#include <math.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"

/* Sum over the 32 lanes of a warp; every lane gets the total. The xor
 * butterfly adds in the same order on every run. */
__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ------------------------------------------------------------ column sums */
/* Pass 1 of the deterministic column sum: for row chunk k (rows
 * [k*CHUNK, (k+1)*CHUNK)) and column c,
 *   partial[k, c] = sum_r a[r, c] * (x ? x[r, c] * rstd[r] : 1).
 * A block covers 32 columns (threadIdx.x, so a warp reads 32 consecutive
 * floats of a row) and COLSUM_LANES rows at a time (threadIdx.y); the lanes'
 * sums meet in shared memory in lane order. */
#define COLSUM_LANES 8
__global__ static void colsum_partial(float *partial, const float *a, const float *x,
                                      const float *rstd, int64_t rows, int64_t cols)
{
    __shared__ float s[COLSUM_LANES][32];
    const int64_t chunk = DVL_CUDA_COLSUM_CHUNK;
    const int64_t nchunks = (rows + chunk - 1) / chunk;
    const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    for (int64_t k = blockIdx.y; k < nchunks; k += gridDim.y) {
        const int64_t r1 = min((k + 1) * chunk, rows);
        float acc = 0.0f;
        if (c < cols)
            for (int64_t r = k * chunk + threadIdx.y; r < r1; r += COLSUM_LANES) {
                float v = a[r * cols + c];
                if (x)
                    v *= x[r * cols + c] * rstd[r];
                acc += v;
            }
        s[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && c < cols) {
            float t = 0.0f;
            for (int l = 0; l < COLSUM_LANES; l++)
                t += s[l][threadIdx.x];
            partial[k * cols + c] = t;
        }
        __syncthreads(); /* s is rewritten by the next chunk */
    }
}

/* Pass 2: out[c] += sum over chunks in order, in double (the chunk count
 * grows with the rows; the cost is one pass over a small array). */
__global__ static void colsum_finish(float *out, const float *partial, int64_t nchunks,
                                     int64_t cols)
{
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x) {
        double t = 0.0;
        for (int64_t k = 0; k < nchunks; k++)
            t += partial[k * cols + c];
        out[c] = (float)((double)out[c] + t);
    }
}

extern "C" int64_t dvl_cuda_colsum_scratch(int64_t rows, int64_t cols)
{
    return (rows + DVL_CUDA_COLSUM_CHUNK - 1) / DVL_CUDA_COLSUM_CHUNK * cols;
}

/* The two passes; x and rstd NULL for a plain column sum. */
static void colsum_launch(float *out, float *scratch, const float *a, const float *x,
                          const float *rstd, int64_t rows, int64_t cols)
{
    if (rows <= 0 || cols <= 0)
        return;
    const int64_t nchunks = (rows + DVL_CUDA_COLSUM_CHUNK - 1) / DVL_CUDA_COLSUM_CHUNK;
    const int64_t tiles = (cols + 31) / 32;
    /* grid.x up to 2^31-1 column tiles; grid.y capped at 65535, the kernel
     * loops over further chunks. */
    dim3 grid((unsigned)tiles, (unsigned)(nchunks < 65535 ? nchunks : 65535));
    colsum_partial<<<grid, dim3(32, COLSUM_LANES)>>>(scratch, a, x, rstd, rows, cols);
    colsum_finish<<<dvl_cu_blocks(cols), DVL_CU_THREADS>>>(out, scratch, nchunks, cols);
}

extern "C" void dvl_cuda_colsum_acc(float *out, float *scratch, const float *a, int64_t rows,
                                    int64_t cols)
{
    colsum_launch(out, scratch, a, NULL, NULL, rows, cols);
}

/* ---------------------------------------------------------------- rmsnorm */
/* One warp per row, ROWS_PER_BLOCK rows per block. Lane l handles columns
 * l, l+32, ...; the row's sums are warp butterflies. */
#define ROWS_PER_BLOCK 8

__global__ static void rmsnorm_fwd_k(float *y, float *rstd, const float *x, const float *w,
                                     int64_t rows, int64_t cols, float eps)
{
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return; /* the whole warp leaves together */
    const float *xr = x + row * cols;
    float ss = 0.0f;
    for (int64_t j = lane; j < cols; j += 32)
        ss += xr[j] * xr[j];
    ss = warp_sum(ss);
    /* IEEE sqrt and division (not rsqrtf's approximation), as the CPU. */
    const float r = 1.0f / sqrtf(ss / (float)cols + eps);
    if (rstd && lane == 0)
        rstd[row] = r;
    float *yr = y + row * cols;
    for (int64_t j = lane; j < cols; j += 32)
        yr[j] = xr[j] * r * w[j];
}

extern "C" void dvl_cuda_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w,
                                     int64_t rows, int64_t cols, float eps)
{
    if (rows <= 0 || cols <= 0)
        return;
    const int64_t blocks = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    rmsnorm_fwd_k<<<(unsigned)blocks, 32 * ROWS_PER_BLOCK>>>(y, rstd, x, w, rows, cols, eps);
}

/* With y_j = w_j x_j r and r = (mean(x^2) + eps)^(-1/2), dr/dx_k = -r^3 x_k / C:
 *   dx_k = r (w_k dy_k - x_k r^2 (1/C) sum_j w_j dy_j x_j). */
__global__ static void rmsnorm_bwd_dx_k(float *dx, const float *dy, const float *x,
                                        const float *w, const float *rstd, int64_t rows,
                                        int64_t cols)
{
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *xr = x + row * cols, *dyr = dy + row * cols;
    float dot = 0.0f;
    for (int64_t j = lane; j < cols; j += 32)
        dot += w[j] * dyr[j] * xr[j];
    dot = warp_sum(dot);
    const float r = rstd[row];
    const float c = r * r * dot / (float)cols;
    float *dxr = dx + row * cols;
    for (int64_t j = lane; j < cols; j += 32)
        dxr[j] += r * (w[j] * dyr[j] - xr[j] * c);
}

extern "C" int64_t dvl_cuda_rmsnorm_bwd_scratch(int64_t rows, int64_t cols)
{
    return dvl_cuda_colsum_scratch(rows, cols);
}

extern "C" void dvl_cuda_rmsnorm_bwd(float *dx, float *dw, float *scratch, const float *dy,
                                     const float *x, const float *w, const float *rstd,
                                     int64_t rows, int64_t cols)
{
    if (rows <= 0 || cols <= 0)
        return;
    if (dx) {
        const int64_t blocks = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
        rmsnorm_bwd_dx_k<<<(unsigned)blocks, 32 * ROWS_PER_BLOCK>>>(dx, dy, x, w, rstd, rows,
                                                                     cols);
    }
    /* dw_j = sum over rows of dy_j x_j r. */
    if (dw)
        colsum_launch(dw, scratch, dy, x, rstd, rows, cols);
}

/* ----------------------------------------------------------- silu, swiglu */
/* sigmoid(x) = 1 / (1 + e^-x): for x << 0, e^-x is inf and the result 0;
 * for x >> 0, e^-x underflows and the result is 1. No NaN either way. */
__device__ static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

#define GRID_STRIDE(i, n)                                                                     \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                 \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ static void silu_fwd_k(float *y, const float *x, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        const float v = x[i];
        y[i] = v * sigmoidf(v);
    }
}

/* d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s)). */
__global__ static void silu_bwd_k(float *dx, const float *dy, const float *x, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        const float v = x[i], s = sigmoidf(v);
        dx[i] += dy[i] * s * (1.0f + v * (1.0f - s));
    }
}

/* Element i of y is column i % cols of row i / cols; its gate and up sit
 * at j = row ld + column. */
__global__ static void swiglu_fwd_k(float *y, const float *g, const float *u, int64_t rows,
                                    int64_t cols, int64_t ld)
{
    GRID_STRIDE(i, rows * cols)
    {
        const int64_t r = i / cols, j = r * ld + (i - r * cols);
        const float v = g[j];
        y[i] = v * sigmoidf(v) * u[j];
    }
}

__global__ static void swiglu_bwd_k(float *dg, float *du, const float *dy, const float *g,
                                    const float *u, int64_t rows, int64_t cols, int64_t ld)
{
    GRID_STRIDE(i, rows * cols)
    {
        const int64_t r = i / cols, j = r * ld + (i - r * cols);
        const float v = g[j], s = sigmoidf(v);
        if (dg)
            dg[j] += dy[i] * u[j] * s * (1.0f + v * (1.0f - s));
        if (du)
            du[j] += dy[i] * v * s;
    }
}

/* The same on the bf16 [gate | up] rows of the fused MLP (dvl_swiglu_mlp):
 * gu [rows, 2 cols], a and da [rows, cols], dgu [rows, 2 cols], all bf16
 * bits. Each value is widened, the maths above done in f32, the result
 * rounded once (nearest even): a = bf16(silu(g) u); dgu is written, not
 * accumulated (the products after it accumulate into f32). */
__global__ static void swiglu_fwd_bf16_k(uint16_t *a, const uint16_t *gu, int64_t rows,
                                         int64_t cols)
{
    GRID_STRIDE(i, rows * cols)
    {
        const int64_t r = i / cols, j = r * 2 * cols + (i - r * cols);
        const float v = bf16_float(gu[j]);
        a[i] = bf16_bits(v * sigmoidf(v) * bf16_float(gu[j + cols]));
    }
}

__global__ static void swiglu_bwd_bf16_k(uint16_t *dgu, const uint16_t *da, const uint16_t *gu,
                                         int64_t rows, int64_t cols)
{
    GRID_STRIDE(i, rows * cols)
    {
        const int64_t r = i / cols, j = r * 2 * cols + (i - r * cols);
        const float v = bf16_float(gu[j]), u = bf16_float(gu[j + cols]), s = sigmoidf(v);
        const float d = bf16_float(da[i]);
        dgu[j] = bf16_bits(d * u * s * (1.0f + v * (1.0f - s)));
        dgu[j + cols] = bf16_bits(d * v * s);
    }
}

extern "C" void dvl_cuda_silu_fwd(float *y, const float *x, int64_t n)
{
    if (n > 0)
        silu_fwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(y, x, n);
}

extern "C" void dvl_cuda_silu_bwd(float *dx, const float *dy, const float *x, int64_t n)
{
    if (n > 0 && dx)
        silu_bwd_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(dx, dy, x, n);
}

extern "C" void dvl_cuda_swiglu_fwd(float *y, const float *g, const float *u, int64_t rows,
                                    int64_t cols, int64_t ld)
{
    if (rows * cols > 0)
        swiglu_fwd_k<<<dvl_cu_blocks(rows * cols), DVL_CU_THREADS>>>(y, g, u, rows, cols, ld);
}

extern "C" void dvl_cuda_swiglu_bwd(float *dg, float *du, const float *dy, const float *g,
                                    const float *u, int64_t rows, int64_t cols, int64_t ld)
{
    if (rows * cols > 0 && (dg || du))
        swiglu_bwd_k<<<dvl_cu_blocks(rows * cols), DVL_CU_THREADS>>>(dg, du, dy, g, u, rows,
                                                                     cols, ld);
}

extern "C" void dvl_cuda_swiglu_fwd_bf16(uint16_t *a, const uint16_t *gu, int64_t rows,
                                         int64_t cols)
{
    if (rows * cols > 0)
        swiglu_fwd_bf16_k<<<dvl_cu_blocks(rows * cols), DVL_CU_THREADS>>>(a, gu, rows, cols);
}

extern "C" void dvl_cuda_swiglu_bwd_bf16(uint16_t *dgu, const uint16_t *da, const uint16_t *gu,
                                         int64_t rows, int64_t cols)
{
    if (rows * cols > 0)
        swiglu_bwd_bf16_k<<<dvl_cu_blocks(rows * cols), DVL_CU_THREADS>>>(dgu, da, gu, rows,
                                                                          cols);
}

/* ------------------------------------------------------------------ adamw */
/* torch.optim.AdamW's single-tensor step (foreach=False), in its order,
 * with g = gscale * the stored gradient (the clip factor, applied as the
 * gradient is read: the same floats as scaling it in place first, one pass
 * over the gradients fewer):
 *   p *= 1 - lr wd
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   denom = sqrt(v) / sqrt(bc2) + eps
 *   p -= (lr / bc1) * m / denom
 * with bc1 = 1 - beta1^t and bc2 = 1 - beta2^t computed once on the host. */
/* Element i of the update, every product and sum rounded on its own
 * (__fmul_rn, __fadd_rn: never contracted into a fused multiply-add).
 * Inlining one function into both kernels was not enough: on an H200 nvcc
 * fused differently in the two, and their weights differed in the last bit
 * (test_cuda adamw_one_launch_equals_per_parameter, 2026-11-29). Division
 * and sqrtf are IEEE-rounded (nvcc's default -prec-div, -prec-sqrt). */
__device__ static inline void adamw_elem(float *p, const float *g, float *m, float *v, int64_t i,
                                         float gscale, float decay, float beta1, float beta2,
                                         float eps, float step_size, float bc2_sqrt)
{
    const float gi = __fmul_rn(g[i], gscale);
    const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(1.0f - beta1, gi));
    const float vi =
        __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(1.0f - beta2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(sqrtf(vi) / bc2_sqrt, eps);
    p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(step_size, mi / denom));
}

__global__ static void adamw_k(float *p, const float *g, float *m, float *v, int64_t n,
                               float gscale, float decay, float beta1, float beta2, float eps,
                               float step_size, float bc2_sqrt)
{
    GRID_STRIDE(i, n)
    adamw_elem(p, g, m, v, i, gscale, decay, beta1, beta2, eps, step_size, bc2_sqrt);
}

extern "C" void dvl_cuda_adamw(float *p, const float *g, float gscale, float *m, float *v,
                               int64_t n, float lr, float beta1, float beta2, float eps, float wd,
                               int64_t step)
{
    if (n <= 0)
        return;
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    adamw_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(p, g, m, v, n, gscale, (float)(1.0 - (double)lr * wd),
                                                  beta1, beta2, eps, (float)(lr / bc1),
                                                  (float)sqrt(bc2));
}

/* One block a piece of one segment: adamw_elem with the segment's scalars,
 * computed as dvl_cuda_adamw computes them on the host (the same correctly
 * rounded double operations; __dmul_rn keeps 1 - lr wd from becoming a
 * fused multiply-add, which the host does not do). */
__global__ static void adamw_multi_k(const dvl_cuda_adamw_seg *segs,
                                     const dvl_cuda_adamw_piece *pieces, float gscale, float lr,
                                     float beta1, float beta2, float eps, double bc1,
                                     float bc2_sqrt)
{
    const dvl_cuda_adamw_piece pc = pieces[blockIdx.x];
    const dvl_cuda_adamw_seg sg = segs[pc.seg];
    const float lr_s = lr * sg.lr_mult;
    const float decay = (float)(1.0 - __dmul_rn((double)lr_s, (double)sg.wd));
    const float step_size = (float)(lr_s / bc1);
    const int64_t end = pc.start + DVL_CUDA_ADAMW_PIECE < sg.n ? pc.start + DVL_CUDA_ADAMW_PIECE
                                                               : sg.n;
    for (int64_t i = pc.start + threadIdx.x; i < end; i += blockDim.x)
        adamw_elem(sg.p, sg.g, sg.m, sg.v, i, gscale, decay, beta1, beta2, eps, step_size,
                   bc2_sqrt);
}

extern "C" void dvl_cuda_adamw_multi(const dvl_cuda_adamw_seg *segs,
                                     const dvl_cuda_adamw_piece *pieces, int64_t npieces,
                                     float gscale, float lr, float beta1, float beta2, float eps,
                                     int64_t step)
{
    if (npieces <= 0)
        return;
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    adamw_multi_k<<<(unsigned)npieces, DVL_CU_THREADS>>>(segs, pieces, gscale, lr, beta1, beta2,
                                                         eps, bc1, (float)sqrt(bc2));
}

/* ------------------------------------------------------------------ sumsq */
/* Per-block sums of squares for the global gradient norm. The ranges and
 * the reduction tree depend only on n and the fixed block size, never on
 * scheduling; squares of floats are exact in double and a double sum of
 * up to 2^63 of them cannot overflow, so an Inf or NaN in x (and only that)
 * makes the sum non-finite. */
#define SUMSQ_THREADS 256
#define SUMSQ_MIN_RANGE 4096

extern "C" int64_t dvl_cuda_sumsq_parts(int64_t n)
{
    int64_t p = (n + SUMSQ_MIN_RANGE - 1) / SUMSQ_MIN_RANGE;
    if (p > DVL_CUDA_SUMSQ_MAX_PARTS)
        p = DVL_CUDA_SUMSQ_MAX_PARTS;
    return p < 1 ? 1 : p;
}

__global__ static void sumsq_k(double *part, const float *x, int64_t n, int64_t range)
{
    __shared__ double s[SUMSQ_THREADS];
    const int64_t lo = (int64_t)blockIdx.x * range;
    const int64_t hi = lo + range < n ? lo + range : n;
    double acc = 0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += SUMSQ_THREADS) {
        const double xi = (double)x[i];
        acc += xi * xi;
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = SUMSQ_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w)
            s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        part[blockIdx.x] = s[0];
}

extern "C" void dvl_cuda_sumsq_partial(double *part, const float *x, int64_t n)
{
    const int64_t parts = dvl_cuda_sumsq_parts(n);
    const int64_t range = (n + parts - 1) / parts;
    sumsq_k<<<(unsigned)parts, SUMSQ_THREADS>>>(part, x, n < 0 ? 0 : n, range);
}

/* ------------------------------------------------------- mean over ranks */
__global__ static void div_scalar_k(float *x, float d, int64_t n)
{
    GRID_STRIDE(i, n) x[i] = x[i] / d;
}

extern "C" void dvl_cuda_div_scalar(float *x, float d, int64_t n)
{
    if (n > 0)
        div_scalar_k<<<dvl_cu_blocks(n), DVL_CU_THREADS>>>(x, d, n);
}

/* --------------------------------------------------------------- patchify */
/* One thread per element of cols [n G G, K], K = C P P: a gather, so each
 * element is written once and the result is the CPU's bit for bit. */
__global__ static void patchify_k(float *cols, const float *px, int64_t n, int64_t C, int64_t S,
                                  int64_t P)
{
    const int64_t G = S / P, K = C * P * P, total = n * G * G * K;
    GRID_STRIDE(e, total)
    {
        const int64_t row = e / K, k = e % K;
        const int64_t i = row / (G * G), gy = (row / G) % G, gx = row % G;
        const int64_t c = k / (P * P), ky = (k / P) % P, kx = k % P;
        cols[e] = px[((i * C + c) * S + gy * P + ky) * S + gx * P + kx];
    }
}

extern "C" void dvl_cuda_patchify(float *cols, const float *px, int64_t n, int64_t C, int64_t S,
                                  int64_t P)
{
    const int64_t G = P > 0 ? S / P : 0, total = n * G * G * C * P * P;
    if (total > 0)
        patchify_k<<<dvl_cu_blocks(total), DVL_CU_THREADS>>>(cols, px, n, C, S, P);
}
