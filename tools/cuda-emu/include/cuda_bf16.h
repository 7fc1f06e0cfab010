// bf16 for the emulated backend: the type as its 16 bits, the conversions
// src/ops/cuda/ uses (rounding as emu_mma.h's bf16_bits: nearest, ties to even).
#pragma once
#include "emu_mma.h"
struct __nv_bfloat16 {
    uint16_t x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {bf16_bits(f)}; }
static inline float __bfloat162float(__nv_bfloat16 b) { return emu_bf16_float(b.x); }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {(uint16_t)u}; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
