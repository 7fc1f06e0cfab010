/* Differentiable ops. Each checks shapes when called (a mismatch is an
 * error naming the tensors and shapes, never a crash in a kernel), computes
 * its output eagerly through the kernels of the tensors' device, and records
 * a tape node when an input needs a gradient.
 *
 * Conventions: tensors are f32 and contiguous; "rows" means all leading
 * dimensions flattened, "cols" the last dimension. Integer inputs (token ids,
 * positions, labels, row indices) are plain int32 arrays, copied into the
 * arena when backward needs them. Any NULL tensor input makes the op return
 * NULL with the first error kept. */
#ifndef DVL_OPS_H
#define DVL_OPS_H

#include "tensor/tensor.h"

/* ---------------------------------------------------------------- linear */
/* y = x W^T (+ b). x [..., in], W [out, in] (Hugging Face layout), b [out]
 * or NULL; y [..., out]. One cblas_sgemm each way, transposes, no copies. */
dvl_tensor *dvl_linear(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, dvl_tensor *b);

/* The n projections of one input side by side, as one product each way:
 * y = x [W_0; ...; W_{n-1}]^T (+ [b_0; ...]), y [..., out_0 + ... ]. Equal
 * to dvl_linear per projection up to the order of the sums (fewer, larger
 * matrix products: x is read once, the dx products of the projections are
 * one). The weights must lie one after the other in memory, as must the
 * biases (b NULL: none; else all n) and, when they train, all their
 * gradients: consecutive parameters of one store (tensor.h), all trainable
 * or all frozen. Anything else is an error naming the pair that is not;
 * dvl_linear_cat_ok says beforehand. 1 <= n <= DVL_LINEAR_CAT_MAX. */
#define DVL_LINEAR_CAT_MAX 3
dvl_tensor *dvl_linear_cat(dvl_ctx *ctx, dvl_tensor *x, int n, dvl_tensor *const *w,
                           dvl_tensor *const *b);
bool dvl_linear_cat_ok(int n, dvl_tensor *const *w, dvl_tensor *const *b);
/* y[k] = x W_k^T (+ b_k) for k < n, as n tensors: one dvl_linear_cat
 * product cut into columns by dvl_slice_cols when dvl_linear_cat_ok, else n
 * dvl_linear products (a layout off the store's alignment, a group partly
 * frozen). NULL entries (with the context's error) on failure. */
void dvl_linear_group(dvl_ctx *ctx, dvl_tensor *x, int n, dvl_tensor *const *w,
                      dvl_tensor *const *b, dvl_tensor **y);

/* ------------------------------------------------------------- embedding */
/* out[i] = W[ids[i]]; W [V, d], out [n, d]. Backward scatter-adds into W.
 * An id outside [0, V) is an error naming it. */
dvl_tensor *dvl_embedding(dvl_ctx *ctx, dvl_tensor *w, const int32_t *ids, int64_t n);

/* ----------------------------------------------------------- elementwise */
dvl_tensor *dvl_add(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b); /* same shape */
dvl_tensor *dvl_mul(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b); /* same shape */
dvl_tensor *dvl_scale(dvl_ctx *ctx, dvl_tensor *a, float s);
dvl_tensor *dvl_silu(dvl_ctx *ctx, dvl_tensor *x);
/* silu(gate) * up, same shapes (the Qwen2/LLaMA MLP). */
dvl_tensor *dvl_swiglu(dvl_ctx *ctx, dvl_tensor *gate, dvl_tensor *up);
/* The same on the two halves of one tensor, gate_up [..., 2 I] = [gate | up]
 * (the output of dvl_linear_cat over the gate and up projections):
 * y [..., I]. Equal to dvl_swiglu on the halves, bit for bit. */
dvl_tensor *dvl_swiglu_cat(dvl_ctx *ctx, dvl_tensor *gate_up);
/* The Qwen2 / LLaMA MLP y = (silu(x Wg^T) * (x Wu^T)) Wd^T, gate_up = {Wg,
 * Wu} one matrix for dvl_linear_cat (consecutive, both trainable or both
 * frozen), no biases: x [..., d], Wg and Wu [I, d], Wd [d_out, I], y
 * [..., d_out]. The three ops dvl_linear(dvl_swiglu_cat(dvl_linear_cat(x,
 * gate_up)), Wd), recorded as such, except on a CUDA context with bf16
 * products and bf16 activations (dvl_ctx_set_bf16_activations), where one
 * op keeps the [gate | up] and SwiGLU outputs in bf16 (ops/mlp.c). */
dvl_tensor *dvl_swiglu_mlp(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *const *gate_up,
                           dvl_tensor *w_down);
typedef enum dvl_gelu_kind { DVL_GELU_ERF = 0, DVL_GELU_TANH = 1 } dvl_gelu_kind;
dvl_tensor *dvl_gelu(dvl_ctx *ctx, dvl_tensor *x, dvl_gelu_kind kind);
/* Sum of all elements into a 1-element tensor (accumulated in double). */
dvl_tensor *dvl_sum(dvl_ctx *ctx, dvl_tensor *x);

/* ----------------------------------------------------------------- norms */
/* y = x / sqrt(mean(x^2) + eps) * w over the last dim; w [cols]. */
dvl_tensor *dvl_rmsnorm(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, float eps);
/* y = (x - mean) / sqrt(var + eps) * w + b over the last dim (biased var). */
dvl_tensor *dvl_layernorm(dvl_ctx *ctx, dvl_tensor *x, dvl_tensor *w, dvl_tensor *b, float eps);

/* --------------------------------------------------------------- softmax */
dvl_tensor *dvl_softmax(dvl_ctx *ctx, dvl_tensor *x); /* over the last dim */

/* ---------------------------------------------------------------- rotary */
/* Rotary position embedding, rotate-half layout as Hugging Face Qwen2/LLaMA:
 * for head vector x of size D (even), with inv_freq[j] = theta^(-2j/D),
 * angle = pos * inv_freq[j] for j < D/2,
 *   y[j]       = x[j] cos - x[j+D/2] sin
 *   y[j+D/2]   = x[j+D/2] cos + x[j] sin.
 * x [N, T, H, D]; pos [N*T] (one position per token, any values). */
dvl_tensor *dvl_rope(dvl_ctx *ctx, dvl_tensor *x, const int32_t *pos, float theta);
/* The same on columns [start, start + H D) of x [..., C] with N T rows,
 * read in place: y [N, T, H, D] = shape, equal to dvl_rope of that column
 * slice bit for bit (q and k of a dvl_linear_cat q|k|v product, without
 * copying them out first). */
dvl_tensor *dvl_rope_cols(dvl_ctx *ctx, dvl_tensor *x, int64_t start, const int64_t *shape,
                          const int32_t *pos, float theta);
/* The cos and sin of every angle [tokens, D/2], made once for a set of
 * positions and read by each dvl_rope_with / dvl_rope_cols_with over them:
 * a model's layers share one per forward (a GPU's table is made on the
 * host, bit for bit the CPU's, and copied: once per call that was a third of
 * a training step). Arena memory on `device`, valid until the context's
 * reset; NULL with the context's error set on bad input. */
typedef struct dvl_rope_table {
    const float *cos, *sin;
    int64_t tokens, D;
    dvl_device device;
} dvl_rope_table;
const dvl_rope_table *dvl_rope_table_make(dvl_ctx *ctx, dvl_device device, const int32_t *pos,
                                          int64_t tokens, int64_t D, float theta);
/* dvl_rope and dvl_rope_cols on a table; the same bits as making it there. */
dvl_tensor *dvl_rope_with(dvl_ctx *ctx, dvl_tensor *x, const dvl_rope_table *t);
dvl_tensor *dvl_rope_cols_with(dvl_ctx *ctx, dvl_tensor *x, int64_t start, const int64_t *shape,
                               const dvl_rope_table *t);

/* ------------------------------------------------------------------ rows */
/* Rows = first dimension for these (a [n, ...] tensor has n rows). */
dvl_tensor *dvl_concat_rows(dvl_ctx *ctx, dvl_tensor *a, dvl_tensor *b);
/* Rows [start, start+n) as a view (no copy, shares gradient). */
dvl_tensor *dvl_slice_rows(dvl_ctx *ctx, dvl_tensor *x, int64_t start, int64_t n);
/* Columns [start, start + n) of the last dimension, a copy: x [..., C] ->
 * [..., n] (the query, key and value parts of a dvl_linear_cat output). */
dvl_tensor *dvl_slice_cols(dvl_ctx *ctx, dvl_tensor *x, int64_t start, int64_t n);
/* out[i] = x[idx[i]] for i < n (indices may repeat; backward adds). */
dvl_tensor *dvl_gather_rows(dvl_ctx *ctx, dvl_tensor *x, const int32_t *idx, int64_t n);
/* out = dst with out[idx[i]] = src[i] for i < src rows (indices distinct):
 * splices image features into a token sequence. Gradient: to src from the
 * replaced rows, to dst from all others. */
dvl_tensor *dvl_scatter_rows(dvl_ctx *ctx, dvl_tensor *dst, dvl_tensor *src, const int32_t *idx);

/* ------------------------------------------------------------- attention */
typedef enum dvl_mask_kind {
    DVL_MASK_BIDIR = 0, /* every query sees every (valid) key */
    DVL_MASK_CAUSAL,    /* key position <= query position */
    /* Block diffusion training over [x_t ; x_0], both halves of length L
     * (Tq = Tk = 2L); with b(i) = (i mod L) / B:
     *   noisy q -> noisy k iff b(k) == b(q)
     *   noisy q -> clean k iff b(k) <  b(q)
     *   clean q -> clean k iff b(k) <= b(q)
     *   clean q -> noisy k never. */
    DVL_MASK_BLOCK_DIFF,
    /* Block-causal (inference with KV cache): key position's block <= query
     * position's block, positions absolute from 0, b(p) = p / B. */
    DVL_MASK_BLOCK_CAUSAL
} dvl_mask_kind;

typedef struct dvl_mask {
    dvl_mask_kind kind;
    int block_size; /* B, for the block rules */
    int64_t half;   /* L, for BLOCK_DIFF (Tq = Tk = 2L) */
    /* Absolute position of query row 0 (keys start at 0): queries of a KV
     * cache step sit after the cached keys. 0 for training. */
    int64_t q_offset;
    /* Key padding: key_valid[n * Tk + j] != 0 when key j of sequence n is a
     * real token; NULL means all keys are valid. A query with no visible key
     * outputs zeros. Copied into the arena when recorded. */
    const uint8_t *key_valid;
} dvl_mask;

/* Whether query i may attend to key j of a sequence (Tq, Tk its lengths)
 * under the rule, ignoring padding: the one definition that kernels and
 * tests share. */
bool dvl_mask_allows(const dvl_mask *m, int64_t i, int64_t j);
/* The (query, key) pairs the rule allows over tq queries and tk keys,
 * padding ignored: what attention's products cost (4 D per pair and head
 * forward). O(tq). */
int64_t dvl_mask_pairs(const dvl_mask *m, int64_t tq, int64_t tk);

/* Scaled dot-product attention with grouped-query heads (mask NULL: every
 * query sees every key): q [N, Tq, Hq, D],
 * k and v [N, Tk, Hkv, D], Hq a multiple of Hkv (query head h reads kv head
 * h / (Hq/Hkv), indexed, never copied); out [N, Tq, Hq, D].
 * softmax(q k^T * scale + mask) v. */
dvl_tensor *dvl_attention(dvl_ctx *ctx, dvl_tensor *q, dvl_tensor *k, dvl_tensor *v,
                          const dvl_mask *mask, float scale);

/* ------------------------------------------------------------------ peak */
/* The machine's matrix-product rate in GFLOP/s, measured now: one n x n x n
 * product (2 n^3 FLOPs) in the context's arithmetic, the best of three
 * after a warm-up: cblas_sgemm on a CPU context; on a CUDA context cuBLAS
 * in the handle's math mode (f32, TF32, or bf16 operands with f32
 * accumulation). The denominator of an MFU. Its buffers are its own (the
 * context's arena is not touched). */
int dvl_matmul_peak(dvl_ctx *ctx, int n, double *gflops, dvl_err *err);

/* --------------------------------------------------------- cross-entropy */
#define DVL_IGNORE_INDEX (-100)

/* loss = sum_i weight[i] * (logsumexp(z_i) - z_i[label_i]) over rows i whose
 * label is not DVL_IGNORE_INDEX; logits [n, V]; weight NULL means 1 for
 * every row. Callers choose the normalisation through the weights (1/count
 * for a mean, 1/(t * n_sup * batch) for the diffusion loss). */
dvl_tensor *dvl_cross_entropy(dvl_ctx *ctx, dvl_tensor *logits, const int32_t *labels,
                              const float *weight);

/* The same loss with z = h W^T computed chunk by chunk over the vocabulary
 * (an online logsumexp in the forward pass, the chunk recomputed in the
 * backward pass), so the [n, V] logits never exist: h [n, d], W [V, d].
 * chunk = vocabulary rows per chunk (0 chooses a default). */
dvl_tensor *dvl_linear_cross_entropy(dvl_ctx *ctx, dvl_tensor *h, dvl_tensor *w,
                                     const int32_t *labels, const float *weight, int64_t chunk);

#endif
