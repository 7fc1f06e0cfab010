/* CPU kernels for the elementwise ops and the full sum: plain loops over n
 * contiguous floats. Backward kernels accumulate (+=) into gradient buffers;
 * a NULL gradient pointer skips that input. Two gradient pointers of one
 * call may be equal (an op applied to the same tensor twice: every index is
 * updated by one iteration, so both contributions land), but must not
 * otherwise overlap; the op splits such calls. */
#ifndef DVL_CPU_ELEMENTWISE_H
#define DVL_CPU_ELEMENTWISE_H

#include <stdint.h>

void dvl_cpu_add_fwd(float *y, const float *a, const float *b, int64_t n);
/* ga += gy, gb += gy. */
void dvl_cpu_add_bwd(float *ga, float *gb, const float *gy, int64_t n);

void dvl_cpu_mul_fwd(float *y, const float *a, const float *b, int64_t n);
/* ga += gy * b, gb += gy * a. */
void dvl_cpu_mul_bwd(float *ga, float *gb, const float *gy, const float *a, const float *b,
                     int64_t n);

void dvl_cpu_scale_fwd(float *y, const float *a, float s, int64_t n);
/* ga += s * gy. */
void dvl_cpu_scale_bwd(float *ga, const float *gy, float s, int64_t n);

/* silu(x) = x sigmoid(x) = x / (1 + exp(-x)), as torch.nn.functional.silu.
 * The activations are evaluated in double and rounded once to float. */
void dvl_cpu_silu_fwd(float *y, const float *x, int64_t n);
void dvl_cpu_silu_bwd(float *gx, const float *gy, const float *x, int64_t n);

/* y = silu(gate) * up (Qwen2MLP: act_fn(gate_proj(x)) * up_proj(x)),
 * y and gy [rows, cols]; gate, up and their gradients have rows `ld` floats
 * apart: ld = cols for two tensors (rows 1, cols n will do), ld = 2 cols for
 * the two halves of one [rows, 2 cols] tensor (up = gate + cols). The
 * backward adds into ggate and gup (either may be NULL). */
void dvl_cpu_swiglu_fwd(float *y, const float *gate, const float *up, int64_t rows,
                        int64_t cols, int64_t ld);
void dvl_cpu_swiglu_bwd(float *ggate, float *gup, const float *gy, const float *gate,
                        const float *up, int64_t rows, int64_t cols, int64_t ld);

/* kind 0: 0.5 x (1 + erf(x / sqrt 2)); kind 1 (torch approximate='tanh'):
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void dvl_cpu_gelu_fwd(float *y, const float *x, int kind, int64_t n);
void dvl_cpu_gelu_bwd(float *gx, const float *gy, const float *x, int kind, int64_t n);

/* The sum of n floats accumulated in double: fixed chunks of DVL_SUM_CHUNK
 * elements are summed in parallel into partial[], then the partials in
 * order, so the result does not depend on the thread count. partial holds
 * dvl_cpu_sum_partials(n) doubles. */
#define DVL_SUM_CHUNK 4096
int64_t dvl_cpu_sum_partials(int64_t n);
void dvl_cpu_sum_fwd(float *y, double *partial, const float *x, int64_t n);
/* gx += gy[0] (gy a pointer so that a device gradient need not be read). */
void dvl_cpu_sum_bwd(float *gx, const float *gy, int64_t n);

#endif
