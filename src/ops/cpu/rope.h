/* CPU kernels for rotary position embedding, rotate-half layout (Hugging
 * Face Qwen2/LLaMA apply_rotary_pos_emb) over x [tokens, H, D]. */
#ifndef DVL_CPU_ROPE_H
#define DVL_CPU_ROPE_H

#include <stdint.h>

/* inv_freq [D/2] and the cos/sin tables [tokens, D/2] for positions pos:
 * inv_freq[j] = 1 / theta^(2j/D), cos[t, j] = cos(pos[t] * inv_freq[j]),
 * rounded as Hugging Face computes them in float32 (see rope.c). */
void dvl_cpu_rope_table(float *cos_t, float *sin_t, float *inv_freq, const int32_t *pos,
                        int64_t tokens, int64_t D, float theta);
/* y[j] = x[j] cos - x[j+D/2] sin, y[j+D/2] = x[j+D/2] cos + x[j] sin;
 * y [tokens, H, D] dense, x's tokens ld floats apart (ld = H D: dense too;
 * larger: the H heads are columns of a wider row, as q and k of a fused
 * q|k|v product). */
void dvl_cpu_rope_fwd(float *y, const float *x, const float *cos_t, const float *sin_t,
                      int64_t tokens, int64_t H, int64_t D, int64_t ld);
/* The transpose (inverse) rotation, accumulated: gx[j] += g[j] cos +
 * g[j+D/2] sin, gx[j+D/2] += g[j+D/2] cos - g[j] sin; gy dense, gx's
 * tokens ld floats apart. */
void dvl_cpu_rope_bwd(float *gx, const float *gy, const float *cos_t, const float *sin_t,
                      int64_t tokens, int64_t H, int64_t D, int64_t ld);

#endif
