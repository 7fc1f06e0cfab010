#include "core/dtype.h"

#include <math.h>
#include <string.h>

size_t dvl_dtype_size(dvl_dtype t)
{
    switch (t) {
    case DVL_F32: return 4;
    case DVL_BF16: return 2;
    case DVL_F16: return 2;
    case DVL_I32: return 4;
    }
    return 0;
}

const char *dvl_dtype_name(dvl_dtype t)
{
    switch (t) {
    case DVL_F32: return "f32";
    case DVL_BF16: return "bf16";
    case DVL_F16: return "f16";
    case DVL_I32: return "i32";
    }
    return "?";
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float dvl_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t dvl_f32_to_bf16(float f)
{
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* any NaN becomes torch's canonical one */
        return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float dvl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float v = (float)man * 0x1.0p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return float_of(sign | 0x7f800000u | (man << 13));
    return float_of(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t dvl_f32_to_f16(float f)
{
    uint32_t u = bits_of(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f))
        return sign | 0x7e00;
    if (a >= 65520.0f) /* rounds to infinity */
        return sign | 0x7c00;
    if (a < 0x1.0p-14f) { /* subnormal: round a / 2^-24 to nearest even */
        float q = a * 0x1.0p24f;
        return sign | (uint16_t)nearbyintf(q);
    }
    uint32_t e = ((bits_of(a) >> 23) & 0xff) - 112;
    uint32_t m = bits_of(a) & 0x7fffff;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++; /* carry into the exponent is the correct result */
    return sign | (uint16_t)h;
}

void dvl_to_f32(float *dst, const void *src, dvl_dtype t, int64_t n)
{
    const uint16_t *h = src;
    switch (t) {
    case DVL_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DVL_BF16: for (int64_t i = 0; i < n; i++) dst[i] = dvl_bf16_to_f32(h[i]); break;
    case DVL_F16: for (int64_t i = 0; i < n; i++) dst[i] = dvl_f16_to_f32(h[i]); break;
    case DVL_I32: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const int32_t *)src)[i]; break;
    }
}

void dvl_from_f32(void *dst, dvl_dtype t, const float *src, int64_t n)
{
    uint16_t *h = dst;
    switch (t) {
    case DVL_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DVL_BF16: for (int64_t i = 0; i < n; i++) h[i] = dvl_f32_to_bf16(src[i]); break;
    case DVL_F16: for (int64_t i = 0; i < n; i++) h[i] = dvl_f32_to_f16(src[i]); break;
    case DVL_I32: for (int64_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int32_t)src[i]; break;
    }
}
