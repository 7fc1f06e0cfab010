// nvcuda::wmma for the emulator, TF32 16x16x8 only (what attention.cu
// uses). Each emulated thread holds the whole tile in its fragment
// (num_elements = rows x cols) and does the whole product: code that treats
// fragments as opaque (load, store, mma, element-wise maps) gets the warp's
// result, and the layout rules of the real API are checked: row strides a
// multiple of 4 floats, tile pointers 32-byte aligned relative to shared
// memory.
#pragma once
#include <type_traits>
#include "emu.h"
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static constexpr int R = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int C = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = R * C;
    float x[R * C];
};
static inline void emu_wmma_check(const float *p, unsigned ldm)
{
    if (ldm % 4 != 0) { fprintf(stderr, "wmma: row stride %u not a multiple of 4\n", ldm); abort(); }
    const long off = (long)(p - emu_smem);
    if (off >= 0 && off < (1L << 20) && off % 8 != 0) {
        fprintf(stderr, "wmma: tile at shared float %ld, not 32-byte aligned\n", off); abort();
    }
}
template <class Use, int M, int N, int K, class T, class L>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const float *p, unsigned ldm)
{
    emu_wmma_check(p, ldm);
    using F = fragment<Use, M, N, K, T, L>;
    for (int r = 0; r < F::R; r++)
        for (int c = 0; c < F::C; c++)
            f.x[r * F::C + c] = std::is_same<L, col_major>::value ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                                     unsigned ldm, layout_t layout)
{
    emu_wmma_check(p, ldm);
    if (layout != mem_row_major) abort();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            p[r * ldm + c] = f.x[r * N + c];
}
template <int M, int N, int K>
static inline void fill_fragment(fragment<accumulator, M, N, K, float> &f, float v)
{
    for (int i = 0; i < M * N; i++) f.x[i] = v;
}
template <int M, int N, int K, class LA, class LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                            const fragment<matrix_a, M, N, K, precision::tf32, LA> &a,
                            const fragment<matrix_b, M, N, K, precision::tf32, LB> &b,
                            const fragment<accumulator, M, N, K, float> &c)
{
    float t[M * N];
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float s = c.x[m * N + n];
            for (int k = 0; k < K; k++) s += a.x[m * K + k] * b.x[k * N + n];
            t[m * N + n] = s;
        }
    memcpy(d.x, t, sizeof t);
}
// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits.
static inline float __float_to_tf32(float x)
{
    if (!std::isfinite(x)) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}
} // namespace wmma
} // namespace nvcuda
