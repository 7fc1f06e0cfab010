/* CPU kernels for the cross-entropy losses: over materialised logits, and
 * fused with the LM-head product (logits computed a vocabulary chunk at a
 * time, never all at once).
 *
 * Every kernel writes, per supervised row, the row's maximum logit m and
 * log(sum_j exp(z_j - m)) (so logsumexp = m + logsum). Keeping the two apart
 * instead of one f32 logsumexp keeps the backward probabilities
 * exp((z - m) - logsum) accurate to a few ulp even when logits are ~1e4,
 * where an f32 logsumexp alone would carry an absolute error of ~1e-3. */
#ifndef DVL_CPU_CROSS_ENTROPY_H
#define DVL_CPU_CROSS_ENTROPY_H

#include <stddef.h>
#include <stdint.h>

/* Default vocabulary rows per chunk of the fused kernels. */
#define DVL_XENT_CHUNK 4096
/* Token rows per tile of the fused kernels. A fixed number (not derived from
 * the thread count) so that the order in which tiles add into W's gradient,
 * and so the result, never depends on the machine. */
#define DVL_XENT_TILE 512

/* Materialised logits z [n, V]. Rows whose label is negative are skipped
 * (the op has already checked that negative means DVL_IGNORE_INDEX); weight
 * NULL means 1. Writes loss[0] = sum_i w_i (m_i + logsum_i - z_i[y_i]),
 * summed in double in row order, and rowmax/logsum [n] for supervised rows. */
void dvl_cpu_cross_entropy_fwd(float *loss, float *rowmax, float *logsum, const float *z,
                               const int32_t *labels, const float *weight, int64_t n, int64_t V);
/* dz_i += g w_i (softmax(z_i) - onehot(y_i)) for supervised rows. */
void dvl_cpu_cross_entropy_bwd(float *dz, const float *z, const float *rowmax,
                               const float *logsum, const int32_t *labels, const float *weight,
                               float g, int64_t n, int64_t V);

/* Fused z = h W^T and loss over the n_sup supervised rows only: rows[k] is
 * the row of h of supervised row k, labels[k] its label in [0, V), weight[k]
 * its weight (NULL: 1). h [*, d], W [V, d]. rowmax/logsum are [n_sup].
 * scratch: dvl_cpu_linear_cross_entropy_scratch() bytes, 64-byte aligned,
 * bounded whatever n is: about 4 * min(n_sup, DVL_XENT_TILE) * (chunk + 2d + 3)
 * bytes, ~12 MiB at the default chunk with d = 896 (Qwen2-0.5B), against
 * 4 n V bytes (2.5 GB for 4096 tokens) for materialised logits. The same
 * scratch serves the backward pass. */
size_t dvl_cpu_linear_cross_entropy_scratch(int64_t n_sup, int64_t d, int64_t chunk);
void dvl_cpu_linear_cross_entropy_fwd(float *loss, float *rowmax, float *logsum, void *scratch,
                                      const float *h, const float *w, const int32_t *rows,
                                      const int32_t *labels, const float *weight, int64_t n_sup,
                                      int64_t d, int64_t V, int64_t chunk);
/* dh[rows[k]] += sum_j dZ[k, j] W[j] and dW += dZ^T h with
 * dZ[k, j] = g w_k (exp(z_kj - m_k - logsum_k) - [j == y_k]), the logits
 * recomputed chunk by chunk. dh or dw NULL: that gradient is not computed. */
void dvl_cpu_linear_cross_entropy_bwd(float *dh, float *dw, void *scratch, const float *h,
                                      const float *w, const int32_t *rows, const int32_t *labels,
                                      const float *weight, const float *rowmax,
                                      const float *logsum, float g, int64_t n_sup, int64_t d,
                                      int64_t V, int64_t chunk);

#endif
