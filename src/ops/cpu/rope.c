/* Rotary position embedding CPU kernels.
 *
 * Rounding follows Hugging Face (Qwen2RotaryEmbedding, default rope type) so
 * the tables match it bit for bit:
 *   inv_freq = 1.0 / (base ** (arange(0, D, 2).float() / D))   all float32:
 *     the exponent 2j/D is a float32 quotient, the power a float32 result,
 *     the reciprocal a float32 division;
 *   freqs = inv_freq @ position_ids.float()   a K=1 product, so each angle
 *     is the float32 product (float)pos * inv_freq[j];
 *   cos = freqs.cos(), sin = freqs.sin()   float32 of that float32 angle.
 * We evaluate pow, cos and sin in double and round once to float32, i.e. the
 * correctly rounded float32 result, which torch's float32 functions (<= 1 ulp)
 * return too up to their last-bit error. Angles are never formed in double:
 * for positions in the thousands, a double angle would give a visibly
 * different cos/sin from HF's float32 angle. */
#include <math.h>

#include "ops/cpu/rope.h"
#include "ops/cpu/par.h"

void dvl_cpu_rope_table(float *cos_t, float *sin_t, float *inv_freq, const int32_t *pos,
                        int64_t tokens, int64_t D, float theta)
{
    int64_t half = D / 2;
    for (int64_t j = 0; j < half; j++) {
        float e = (float)(2 * j) / (float)D;
        float p = (float)pow((double)theta, (double)e);
        inv_freq[j] = 1.0f / p;
    }
#pragma omp parallel for schedule(static) if (dvl_par(tokens * half * DVL_WORK_TRIG))
    for (int64_t t = 0; t < tokens; t++) {
        float fp = (float)pos[t];
        for (int64_t j = 0; j < half; j++) {
            float angle = fp * inv_freq[j];
            cos_t[t * half + j] = (float)cos((double)angle);
            sin_t[t * half + j] = (float)sin((double)angle);
        }
    }
}

/* q * cos + rotate_half(q) * sin with rotate_half(x) = cat(-x2, x1): every
 * product is rounded, then the sum, as torch does it (no fma). */
void dvl_cpu_rope_fwd(float *y, const float *x, const float *cos_t, const float *sin_t,
                      int64_t tokens, int64_t H, int64_t D, int64_t ld)
{
    int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (dvl_par(tokens * H * D))
    for (int64_t th = 0; th < tokens * H; th++) {
        const int64_t t = th / H;
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        const float *x1 = x + t * ld + (th - t * H) * D, *x2 = x1 + half;
        float *y1 = y + th * D, *y2 = y1 + half;
        for (int64_t j = 0; j < half; j++) {
            y1[j] = x1[j] * c[j] - x2[j] * s[j];
            y2[j] = x2[j] * c[j] + x1[j] * s[j];
        }
    }
}

/* The forward is y = R x with R = [[c, -s], [s, c]] per pair (j, j+D/2), so
 * the exact gradient of the computed map is R^T g. */
void dvl_cpu_rope_bwd(float *gx, const float *gy, const float *cos_t, const float *sin_t,
                      int64_t tokens, int64_t H, int64_t D, int64_t ld)
{
    int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (dvl_par(tokens * H * D))
    for (int64_t th = 0; th < tokens * H; th++) {
        const int64_t t = th / H;
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        const float *g1 = gy + th * D, *g2 = g1 + half;
        float *gx1 = gx + t * ld + (th - t * H) * D, *gx2 = gx1 + half;
        for (int64_t j = 0; j < half; j++) {
            gx1[j] += g1[j] * c[j] + g2[j] * s[j];
            gx2[j] += g2[j] * c[j] - g1[j] * s[j];
        }
    }
}
