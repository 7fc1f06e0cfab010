/* The CUDA backend's C interface: device and memory management, cuBLAS
 * matrix products, and the elementwise / normalisation / optimiser kernels.
 * Usable from C11; the .cu files implement it with C linkage.
 *
 * Conventions, as the CPU kernels: raw device pointers and sizes, f32,
 * row-major and contiguous, "rows" = all leading dimensions flattened.
 * Backward kernels ACCUMULATE (+=) into gradients, and a NULL gradient
 * pointer means "that input needs no gradient" (frozen parameters get none).
 *
 * Everything runs on the legacy default stream, so launches are ordered with
 * each other and with the cudaMemcpy calls below. Kernel launches are
 * asynchronous and the kernel functions return void (the CPU signatures):
 * a launch error surfaces at dvl_cuda_check, an execution error at
 * dvl_cuda_sync. Functions that take a dvl_err report with DVL_EDEVICE and
 * a message that names the failing call and the CUDA/cuBLAS error string.
 *
 * Kernels never allocate: where a deterministic reduction needs scratch, the
 * caller passes device memory of the size the matching *_scratch function
 * returns (the op takes it from the context's arena). */
#ifndef DVL_OPS_CUDA_H
#define DVL_OPS_CUDA_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* err.h and dtype.h are C headers without their own linkage guards. */
#include "core/dtype.h"
#include "core/err.h"

/* ---------------------------------------------------------------- device */
/* Number of usable CUDA devices; 0 when there is no driver, no device or
 * any other error (never fails, never aborts). */
int dvl_cuda_device_count(void);
/* The same, with the reason when the answer is 0 because of an error (no
 * driver, driver too old for this runtime, ...) written into err. */
int dvl_cuda_probe(dvl_err *err);
/* Whether this build's CUDA backend is the CPU emulation (meson
 * -Dgpu_emu=true, tools/cuda-emu): tests skip what is too big for it. */
bool dvl_cuda_emulated(void);
/* Select `device` for this thread and create its context. */
int dvl_cuda_init(int device, dvl_err *err);
/* The device this thread uses now (0 unless dvl_cuda_init chose another). */
int dvl_cuda_get_device(int *device, dvl_err *err);
/* "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" into buf. */
int dvl_cuda_describe(int device, char *buf, size_t n, dvl_err *err);
/* The device's PCI bus id ("0000:65:00.0"): the same GPU seen by two
 * processes, whatever CUDA_VISIBLE_DEVICES numbers it. */
int dvl_cuda_pci_bus_id(int device, char *buf, size_t n, dvl_err *err);

/* ---------------------------------------------------------------- memory */
/* Device memory (256-byte aligned); NULL with err set on failure. */
void *dvl_cuda_malloc(size_t bytes, dvl_err *err);
void dvl_cuda_free(void *p); /* NULL is fine */
/* Free and total memory of the current device (cudaMemGetInfo). */
int dvl_cuda_mem_info(size_t *free_bytes, size_t *total_bytes, dvl_err *err);
int dvl_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes, dvl_err *err);
int dvl_cuda_memset_zero(void *p, size_t bytes, dvl_err *err);
/* Wait for all queued work; reports launch and execution errors. `what`
 * names the caller's step for the message (may be NULL). */
int dvl_cuda_sync(const char *what, dvl_err *err);
/* Report (and clear) an error from the last launches without waiting. */
int dvl_cuda_check(const char *what, dvl_err *err);

/* Page-locked (pinned) host memory, the source of asynchronous copies;
 * NULL with err set on failure. */
void *dvl_cuda_malloc_host(size_t bytes, dvl_err *err);
void dvl_cuda_free_host(void *p); /* NULL is fine */
/* Queue a host-to-device copy on the default stream and return at once:
 * src must be pinned (dvl_cuda_malloc_host) and must not change until the
 * copy has run (an event recorded after it has completed, or a sync).
 * Kernels launched later on the default stream see the data. */
int dvl_cuda_memcpy_h2d_async(void *dst, const void *src, size_t bytes, dvl_err *err);
/* Events (cudaEvent_t, timing disabled) for "the default stream has done
 * everything queued up to here". */
typedef struct dvl_cuda_event dvl_cuda_event;
dvl_cuda_event *dvl_cuda_event_new(dvl_err *err);
void dvl_cuda_event_free(dvl_cuda_event *ev); /* NULL is fine */
/* Mark the point in the default stream's queue reached now. */
int dvl_cuda_event_record(dvl_cuda_event *ev, dvl_err *err);
/* Wait until the work queued before the last record has run. */
int dvl_cuda_event_sync(dvl_cuda_event *ev, dvl_err *err);

/* ------------------------------------------------------------------ blas */
/* A cuBLAS handle on the default stream, with the math mode of the linear
 * layer's products (the context's handle carries it for every op):
 *   DVL_MATH_F32   full f32 FMAs (the default)
 *   DVL_MATH_TF32  f32 products on the tensor cores' TF32 inputs (10-bit
 *                  mantissa, f32 accumulation: about 1e-3 relative error)
 *   DVL_MATH_BF16  the ops call the *_bf16 products below: operands
 *                  rounded to bf16 (8-bit mantissa), f32 accumulation and
 *                  f32 results and gradients (about 4e-3 relative error). */
typedef enum dvl_cuda_math { DVL_MATH_F32 = 0, DVL_MATH_TF32, DVL_MATH_BF16 } dvl_cuda_math;
typedef struct dvl_cublas dvl_cublas;
dvl_cublas *dvl_cublas_new(bool tf32, dvl_err *err);
void dvl_cublas_free(dvl_cublas *h);
int dvl_cublas_set_math(dvl_cublas *h, dvl_cuda_math math, dvl_err *err);
dvl_cuda_math dvl_cublas_math(const dvl_cublas *h);
/* The arithmetic of the tiled attention kernels' products when it should
 * differ from the other products' (train.attention_precision): math is a
 * dvl_cuda_math, or -1 to follow set_math (the default). A bf16 run can
 * so take the TF32 kernels as a baseline in the same process, or fall back
 * to them. attention_math: the mode attention uses now. */
int dvl_cublas_set_attention_math(dvl_cublas *h, int math, dvl_err *err);
dvl_cuda_math dvl_cublas_attention_math(const dvl_cublas *h);
/* set_math(TF32 or F32); whether the mode is TF32. */
int dvl_cublas_set_tf32(dvl_cublas *h, bool tf32, dvl_err *err);
bool dvl_cublas_tf32(const dvl_cublas *h);

/* y = x W^T (+ b): x [rows, in], W [out, in], b [out] or NULL, y [rows, out].
 * Sizes up to INT_MAX (cuBLAS's int). */
int dvl_cuda_linear_fwd(dvl_cublas *h, float *y, const float *x, const float *w,
                        const float *b, int64_t rows, int64_t in, int64_t out, dvl_err *err);
/* dx += dy W, dW += dy^T x, db += sum over rows of dy; each may be NULL.
 * scratch: dvl_cuda_colsum_scratch(rows, out) floats when db is given. */
int dvl_cuda_linear_bwd(dvl_cublas *h, float *dx, float *dw, float *db, float *scratch,
                        const float *dy, const float *x, const float *w, int64_t rows,
                        int64_t in, int64_t out, dvl_err *err);
/* The same two calls with bf16 products (DVL_MATH_BF16): the f32 operands
 * are rounded to bf16 copies in `scratch` (device memory of
 * dvl_cuda_linear_bf16_scratch bytes, forward or backward), multiplied with
 * f32 accumulation by cublasGemmEx, and the f32 results written (y) or
 * accumulated (dx, dW). w16, when not NULL, is W already rounded (the
 * parameter store's copy of a frozen weight, tensor.h): it is used instead
 * of rounding w, which is then not read, and the scratch has no room for
 * W's copy (have_w16). db is the f32 column sum of dy as above, with
 * colsum_scratch as its scratch. Whatever the handle's mode. */
size_t dvl_cuda_linear_bf16_scratch(int64_t rows, int64_t in, int64_t out, bool backward,
                                    bool have_w16);
int dvl_cuda_linear_fwd_bf16(dvl_cublas *h, float *y, const float *x, const float *w,
                             const uint16_t *w16, const float *b, void *scratch, int64_t rows,
                             int64_t in, int64_t out, dvl_err *err);
int dvl_cuda_linear_bwd_bf16(dvl_cublas *h, float *dx, float *dw, float *db,
                             float *colsum_scratch, void *scratch, const float *dy,
                             const float *x, const float *w, const uint16_t *w16, int64_t rows,
                             int64_t in, int64_t out, dvl_err *err);
/* dst[i] = bf16(src[i]) (round to nearest even), i < n, device arrays: the
 * rounding of the bf16 products' operands (the parameter store's bf16
 * copies, tensor.h). */
int dvl_cuda_to_bf16(uint16_t *dst, const float *src, int64_t n, dvl_err *err);
/* y = x W^T with bf16 x [rows, in] and W [out, in] (raw bf16 bits), f32
 * accumulation, y [rows, out] of ytype DVL_F32 or DVL_BF16. */
int dvl_cuda_matmul_bf16(dvl_cublas *h, void *y, dvl_dtype ytype, const uint16_t *x,
                         const uint16_t *w, int64_t rows, int64_t in, int64_t out, dvl_err *err);
/* Row-major C [m, n] = op(A) op(B) + beta C with bf16 A and B (raw bits),
 * f32 accumulation, C of ctype DVL_F32 or DVL_BF16 (rounded once): op(A)
 * [m, k] is A stored [m, k], or [k, m] transposed (a_t); op(B) [k, n] is B
 * stored [k, n], or [n, k] transposed (b_t). The linear layer's three
 * products: y = x W^T (b_t), dx = dy W, dW = dy^T x (a_t). */
int dvl_cuda_gemm_bf16(dvl_cublas *h, bool a_t, bool b_t, int64_t m, int64_t n, int64_t k,
                       const uint16_t *a, const uint16_t *b, float beta, void *c,
                       dvl_dtype ctype, dvl_err *err);

/* --------------------------------------------------------------- kernels */
/* Column sums, deterministic: out[c] += sum_r a[r, c]. The rows are summed
 * in fixed chunks of DVL_CUDA_COLSUM_CHUNK (partial sums in scratch), then
 * the chunks in order, so the result does not depend on scheduling. */
#define DVL_CUDA_COLSUM_CHUNK 256
int64_t dvl_cuda_colsum_scratch(int64_t rows, int64_t cols); /* floats */
void dvl_cuda_colsum_acc(float *out, float *scratch, const float *a, int64_t rows, int64_t cols);

/* y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps) per row, saved in
 * rstd [rows] (may be NULL when not needed). */
void dvl_cuda_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows,
                          int64_t cols, float eps);
/* dx += rstd * (w dy - x rstd^2 mean(w dy x)), dw += sum over rows of
 * dy x rstd (two passes over row chunks, as colsum). dx or dw may be NULL;
 * scratch: dvl_cuda_rmsnorm_bwd_scratch(rows, cols) floats when dw is given. */
int64_t dvl_cuda_rmsnorm_bwd_scratch(int64_t rows, int64_t cols);
void dvl_cuda_rmsnorm_bwd(float *dx, float *dw, float *scratch, const float *dy, const float *x,
                          const float *w, const float *rstd, int64_t rows, int64_t cols);

/* silu(x) = x sigmoid(x); dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))). */
void dvl_cuda_silu_fwd(float *y, const float *x, int64_t n);
void dvl_cuda_silu_bwd(float *dx, const float *dy, const float *x, int64_t n);
/* y = silu(g) u; dg += dy u silu'(g), du += dy silu(g) (either may be
 * NULL). y, dy [rows, cols]; g, u, dg, du rows ld floats apart (as
 * dvl_cpu_swiglu_fwd: ld = cols, or 2 cols for the halves of one tensor). */
void dvl_cuda_swiglu_fwd(float *y, const float *g, const float *u, int64_t rows, int64_t cols,
                         int64_t ld);
void dvl_cuda_swiglu_bwd(float *dg, float *du, const float *dy, const float *g, const float *u,
                         int64_t rows, int64_t cols, int64_t ld);
/* The fused MLP's SwiGLU on bf16 bits (dvl_swiglu_mlp): gu [rows, 2 cols]
 * the [gate | up] rows, a = bf16(silu(g) u) [rows, cols]; backward writes
 * dgu [rows, 2 cols] = bf16 of the gradients above from da [rows, cols].
 * Each result is computed in f32 from the widened inputs, rounded once. */
void dvl_cuda_swiglu_fwd_bf16(uint16_t *a, const uint16_t *gu, int64_t rows, int64_t cols);
void dvl_cuda_swiglu_bwd_bf16(uint16_t *dgu, const uint16_t *da, const uint16_t *gu,
                              int64_t rows, int64_t cols);

/* One AdamW step as torch.optim.AdamW (decoupled weight decay), step >= 1,
 * on the gradient gscale * g (gscale: the clip factor, 1 for none):
 *   p -= lr wd p
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps) */
void dvl_cuda_adamw(float *p, const float *g, float gscale, float *m, float *v, int64_t n,
                    float lr, float beta1, float beta2, float eps, float wd, int64_t step);

/* The same step for many parameters in one launch (dvl_adamw_step on a
 * device store: one kernel a step instead of one a parameter tensor). A
 * segment is a run of elements with its own lr multiplier and weight decay;
 * the grid is a table of pieces of DVL_CUDA_ADAMW_PIECE elements, one per
 * block, none crossing a segment's end. Both tables live in device memory
 * (dvl_cuda_malloc, dvl_cuda_memcpy_h2d). Element for element the maths and
 * the rounding of dvl_cuda_adamw with lr = lr * lr_mult, wd = the
 * segment's: the same bits. */
#define DVL_CUDA_ADAMW_PIECE 4096
typedef struct dvl_cuda_adamw_seg {
    float *p, *m, *v;
    const float *g;
    int64_t n;
    float lr_mult, wd;
} dvl_cuda_adamw_seg;
typedef struct dvl_cuda_adamw_piece {
    int64_t seg, start; /* elements [start, start + PIECE) of segs[seg], cut at its n */
} dvl_cuda_adamw_piece;
void dvl_cuda_adamw_multi(const dvl_cuda_adamw_seg *segs, const dvl_cuda_adamw_piece *pieces,
                          int64_t npieces, float gscale, float lr, float beta1, float beta2,
                          float eps, int64_t step);

/* Sum of squares of x [n] in double, deterministic (dvl_grad_norm on a
 * device store): x is cut into dvl_cuda_sumsq_parts(n) contiguous ranges of
 * equal size (the last shorter), one block each; a block's threads sum their
 * strided elements in double and the block adds them in a fixed tree, into
 * part[b]. The caller sums part[0..parts) in order on the host. Everything
 * depends only on n, so reruns give the same bits. part: device doubles. */
#define DVL_CUDA_SUMSQ_MAX_PARTS 1024
int64_t dvl_cuda_sumsq_parts(int64_t n);
void dvl_cuda_sumsq_partial(double *part, const float *x, int64_t n);

/* x[i] /= d (a division, as the CPU's mean over ranks, not a product with
 * 1/d, so the result is the correctly rounded quotient). */
void dvl_cuda_div_scalar(float *x, float d, int64_t n);

/* SigLIP's patch extraction (models/siglip.c patchify): pixels
 * [n, C, S, S] -> cols [n G G, C P P] with G = S / P; row (i, gy, gx) holds
 * patch (gy, gx) of image i, channel-major, then ky, then kx. */
void dvl_cuda_patchify(float *cols, const float *px, int64_t n, int64_t C, int64_t S, int64_t P);

/* ------------------------------------------- op kernels (ops.cu, attention.cu)
 * The CUDA side of the CPU kernels in ops/cpu/, same arguments, all device
 * pointers (index arrays too: the ops copy the callers' host arrays to the
 * device arena). Reductions run in an order fixed by the sizes (no atomics),
 * so reruns give the same bits. */
void dvl_cuda_add_fwd(float *y, const float *a, const float *b, int64_t n);
/* ga += gy, gb += gy (either NULL; equal pointers get both). */
void dvl_cuda_add_bwd(float *ga, float *gb, const float *gy, int64_t n);
void dvl_cuda_mul_fwd(float *y, const float *a, const float *b, int64_t n);
void dvl_cuda_mul_bwd(float *ga, float *gb, const float *gy, const float *a, const float *b,
                      int64_t n);
void dvl_cuda_scale_fwd(float *y, const float *a, float s, int64_t n);
void dvl_cuda_scale_bwd(float *ga, const float *gy, float s, int64_t n);
/* kind 0 erf, 1 tanh; evaluated in double as the CPU kernels. */
void dvl_cuda_gelu_fwd(float *y, const float *x, int kind, int64_t n);
void dvl_cuda_gelu_bwd(float *gx, const float *gy, const float *x, int kind, int64_t n);
/* y[0] = sum of x in double (one block, fixed tree). gx += gy[0]. */
void dvl_cuda_sum_fwd(float *y, const float *x, int64_t n);
void dvl_cuda_sum_bwd(float *gx, const float *gy, int64_t n);

/* Softmax over the last dimension, one warp per row. */
void dvl_cuda_softmax_fwd(float *y, const float *x, int64_t rows, int64_t cols);
void dvl_cuda_softmax_bwd(float *gx, const float *gy, const float *y, int64_t rows,
                          int64_t cols);

/* LayerNorm (b may be NULL); mean, rstd [rows] saved. Backward: gx, gw, gb
 * each may be NULL; gw and gb are column sums in row order (double). */
void dvl_cuda_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                            const float *b, int64_t rows, int64_t cols, float eps);
void dvl_cuda_layernorm_bwd(float *gx, float *gw, float *gb, const float *gy, const float *x,
                            const float *w, const float *mean, const float *rstd, int64_t rows,
                            int64_t cols);

/* out[i] = w[ids[i]] (rows of d floats). */
void dvl_cuda_embedding_fwd(float *out, const float *w, const int32_t *ids, int64_t n, int64_t d);
/* Deterministic scatter-add dw[uid[k]] += dout[pos[j]] for j in
 * [off[k], off[k+1]) in increasing j: the caller groups the token positions
 * by id (ascending positions within an id, as dvl_cuda_group_ids on the
 * host), so every element adds its tokens in order 0..n-1 like the CPU. */
void dvl_cuda_embedding_bwd(float *dw, const float *dout, const int32_t *uid, const int32_t *off,
                            const int32_t *pos, int64_t nuniq, int64_t d);

/* Rows: out = [a; b]; ga += gout[:na], gb += gout[na:]. */
void dvl_cuda_concat_rows_fwd(float *out, const float *a, const float *b, int64_t na, int64_t nb,
                              int64_t row);
void dvl_cuda_concat_rows_bwd(float *ga, float *gb, const float *gout, int64_t na, int64_t nb,
                              int64_t row);
/* As dvl_cpu_scatter_rows_fwd/bwd (inv on the device). */
void dvl_cuda_scatter_rows_fwd(float *out, const float *dst, const float *src, const int32_t *inv,
                               int64_t n, int64_t row);
void dvl_cuda_scatter_rows_bwd(float *gdst, float *gsrc, const float *gout, const int32_t *inv,
                               int64_t n, int64_t row);
/* Columns: y [rows, n] = x[:, start, start + n) of x [rows, cols];
 * gx[:, start + j] += gy[:, j]. */
void dvl_cuda_slice_cols_fwd(float *y, const float *x, int64_t rows, int64_t cols, int64_t start,
                             int64_t n);
void dvl_cuda_slice_cols_bwd(float *gx, const float *gy, int64_t rows, int64_t cols,
                             int64_t start, int64_t n);
/* dst[rows[k]] += src[k] for k < n (rows distinct). */
void dvl_cuda_scatter_add_rows(float *dst, const float *src, const int32_t *rows, int64_t n,
                               int64_t row);

/* Rotary embedding with precomputed cos/sin tables [tokens, D/2] (the op
 * builds them on the host with dvl_cpu_rope_table, bit for bit the CPU's).
 * As dvl_cpu_rope_fwd/bwd: y and gy dense, x and gx tokens ld floats apart. */
void dvl_cuda_rope_fwd(float *y, const float *x, const float *cos_t, const float *sin_t,
                       int64_t tokens, int64_t H, int64_t D, int64_t ld);
void dvl_cuda_rope_bwd(float *gx, const float *gy, const float *cos_t, const float *sin_t,
                       int64_t tokens, int64_t H, int64_t D, int64_t ld);

/* Cross-entropy over z [n, V] (rows with a negative label skipped): rowmax,
 * logsum [n] as the CPU kernel, rowloss [n] scratch, loss[0] = sum_i w_i
 * (m_i + logsum_i - z_i[y_i]) in double (fixed tree). weight NULL: 1. */
void dvl_cuda_cross_entropy_fwd(float *loss, float *rowloss, float *rowmax, float *logsum,
                                const float *z, const int32_t *labels, const float *weight,
                                int64_t n, int64_t V);
/* dz_i += g w_i (softmax(z_i) - onehot(y_i)) for supervised rows; g = g[0]
 * in device memory (the loss's upstream gradient: no host round trip). */
void dvl_cuda_cross_entropy_bwd(float *dz, const float *z, const float *rowmax,
                                const float *logsum, const int32_t *labels, const float *weight,
                                const float *g, int64_t n, int64_t V);

/* The fused LM-head cross-entropy, chunked over the vocabulary (the CUDA
 * side of dvl_cpu_linear_cross_entropy_*; the op computes each chunk's
 * logits z [n, C] = columns c0 .. c0+C of h_s W^T by cuBLAS and calls
 * these). Row r of the n supervised rows has label labels[r] in [0, V).
 *   chunk_lse: fold the chunk into the running maximum rowmax [n] and sum
 *              [n] (double) of exp(z - rowmax), online; chunk c0 == 0
 *              starts them afresh. A row whose label is in the chunk keeps
 *              its logit in zy [n].
 *   finish:    after the last chunk, logsum [n] = log(sum) and loss[0] =
 *              sum_r w_r (rowmax_r + log sum_r - zy_r) in double, one
 *              block's fixed tree (weight NULL: 1).
 *   chunk_dz:  z becomes dZ = g w_r (softmax - onehot) in place, from the
 *              rowmax and logsum of the forward pass; g = g[0] in device
 *              memory (the loss's upstream gradient, not read back). */
void dvl_cuda_lxent_chunk_lse(float *rowmax, double *sum, float *zy, const float *z,
                              const int32_t *labels, int64_t n, int64_t C, int64_t c0);
void dvl_cuda_lxent_finish(float *loss, float *logsum, const float *rowmax, const double *sum,
                           const float *zy, const float *weight, int64_t n);
void dvl_cuda_lxent_chunk_dz(float *z, const float *rowmax, const float *logsum,
                             const int32_t *labels, const float *weight, const float *g,
                             int64_t n, int64_t C, int64_t c0);

/* Attention (layouts of ops/cpu/attention.h), tiled flash-attention
 * kernels (ops/cuda/attention.cu): the score matrix never exists in
 * memory, key tiles that the mask rule hides from a whole query tile are
 * skipped, and the sums run in an order fixed by the sizes (no atomics).
 * Heads of up to DVL_CUDA_ATTN_MAX_D floats; longer ones go to the
 * reference kernel below (dvl_cuda_attention_tiled says which).
 * mask_kind, block, half, q_offset as dvl_mask; key_valid [N, Tk] device
 * bytes or NULL. lse [N, Hq, Tq] (+inf for a row that sees no key; its
 * output and gradient are zero); lse may be NULL in the forward pass when
 * no backward follows. scratch: dvl_cuda_attention_scratch floats of device
 * memory, 16-byte aligned (none for the tiled forward pass; N Hq Tq for its
 * backward pass, plus 2 N Tk Hq D with grouped heads, Hq > Hkv; in BF16
 * math also bf16 copies of q, k, v, and dout in backward). math: the arithmetic
 * of the tiled kernels' products, the context's (dvl_dev_attention_math):
 * F32 on CUDA cores; TF32 on tensor cores (wmma, TF32 inputs, f32
 * accumulation; ~1e-3 relative error, as TF32 GEMMs); BF16 on tensor cores
 * (mma.sync with bf16 Q, K, V, dO, P and dS, f32 accumulation, softmax and
 * sums in f32, as FlashAttention-2 in bf16; ~1e-2 relative error).
 * Errors (launch, shared-memory opt-in, grid size) go into err. */
#define DVL_CUDA_ATTN_MAX_D 128
bool dvl_cuda_attention_tiled(int64_t D);
int64_t dvl_cuda_attention_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv,
                                   int64_t D, bool backward, dvl_cuda_math math);
int dvl_cuda_attention_fwd(float *out, float *lse, float *scratch, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, int mask_kind, int64_t block, int64_t half,
                           int64_t q_offset, const uint8_t *key_valid, float scale,
                           dvl_cuda_math math, dvl_err *err);
/* Accumulates into dq, dk, dv (each may be NULL). dK and dV are summed per
 * key over each query head's rows, then over the group's heads, in order. */
int dvl_cuda_attention_bwd(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int64_t N, int64_t Tq, int64_t Tk, int64_t Hq,
                           int64_t Hkv, int64_t D, int mask_kind, int64_t block, int64_t half,
                           int64_t q_offset, const uint8_t *key_valid, float scale,
                           dvl_cuda_math math, dvl_err *err);

/* The reference kernel (ops/cuda/attention_ref.cu), same arguments: one
 * block per (n, h, query row) with its scores in global scratch of
 * dvl_cuda_attention_ref_scratch floats (forward: once, backward: twice),
 * any D. Launch errors surface at dvl_cuda_check. */
int64_t dvl_cuda_attention_ref_scratch(int64_t N, int64_t Tq, int64_t Tk, int64_t Hq);
void dvl_cuda_attention_ref_fwd(float *out, float *lse, float *scratch, const float *q,
                                const float *k, const float *v, int64_t N, int64_t Tq, int64_t Tk,
                                int64_t Hq, int64_t Hkv, int64_t D, int mask_kind, int64_t block,
                                int64_t half, int64_t q_offset, const uint8_t *key_valid,
                                float scale);
void dvl_cuda_attention_ref_bwd(float *dq, float *dk, float *dv, float *scratch,
                                const float *dout, const float *out, const float *lse,
                                const float *q, const float *k, const float *v, int64_t N,
                                int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D,
                                int mask_kind, int64_t block, int64_t half, int64_t q_offset,
                                const uint8_t *key_valid, float scale);

#ifdef __cplusplus
}
#endif

#endif
