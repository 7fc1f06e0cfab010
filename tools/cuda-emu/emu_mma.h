// ops/cuda/mma.cuh for the emulator: bf16 rounding, widening, the m16n8k16 bf16
// product, ldmatrix and cp.async. Each emulated lane hands its fragments to a warp-wide rendezvous
// (emu_warp_gather), rebuilds the warp's whole A [16 x 16] and B [16 x 8]
// from them by the PTX ISA's fragment layout (written out again here from
// the ISA's tables, not from mma.cuh), and computes its own four elements
// of D in f32. A kernel that puts an operand in the wrong lane or half of
// a register gets a wrong product here as on the GPU.
#pragma once
#include "emu.h"
#include <vector>

static inline uint16_t bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}

static inline float emu_bf16_float(uint32_t b)
{
    const uint32_t u = (b & 0xffffu) << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline float bf16_float(uint16_t b) { return emu_bf16_float(b); }

static inline uint32_t pack_bf16(float lo, float hi)
{
    return (uint32_t)bf16_bits(lo) | ((uint32_t)bf16_bits(hi) << 16);
}

struct emu_mma_frag { uint32_t a[4], b[2]; };

static inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    emu_mma_frag mine;
    memcpy(mine.a, a, sizeof mine.a);
    memcpy(mine.b, b, sizeof mine.b);
    const emu_mma_frag *all = (const emu_mma_frag *)emu_warp_gather(&mine, sizeof mine);
    // The warp's A and B are the same for its 32 lanes: the first lane to
    // leave the gather rebuilds them, the others read them (keyed by the
    // barrier round and the warp; the 32 x redundant rebuild was most of a
    // bf16 kernel's emulated time).
    static struct { unsigned long round; unsigned warp; float A[16][16], B[16][8]; } cache[32];
    const unsigned warp = (threadIdx.x + threadIdx.y * blockDim.x) / 32;
    auto &c = cache[warp % 32];
    float (&A)[16][16] = c.A;
    float (&B)[16][8] = c.B;
    const bool fresh = c.round == emu_rounds + 1 && c.warp == warp;
    c.round = emu_rounds + 1;
    c.warp = warp;
    for (int l = 0; l < 32 && !fresh; l++) {
        const int g = l >> 2, t = l & 3;
        // A: a_i (i = 0..7, two per register) at row g for i in {0,1,4,5},
        // g + 8 otherwise; column 2t + (i & 1), + 8 for i >= 4.
        for (int i = 0; i < 8; i++) {
            const uint32_t w = all[l].a[i / 2];
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = emu_bf16_float(i & 1 ? w >> 16 : w);
        }
        // B: b_i (i = 0..3) at row 2t + (i & 1), + 8 for i >= 2; column g.
        for (int i = 0; i < 4; i++) {
            const uint32_t w = all[l].b[i / 2];
            B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = emu_bf16_float(i & 1 ? w >> 16 : w);
        }
    }
    // D: c_i at row g + 8 (i >= 2), column 2t + (i & 1). Each c_i sums over
    // k in order; the four sums advance side by side in registers, so the
    // CPU overlaps their additions (one after another they were a quarter
    // of a bf16 training run's emulated time).
    const int lane = (int)(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
    const float *a0 = A[g], *a1 = A[g + 8];
    const int c0 = 2 * t, c1 = 2 * t + 1;
    float s0 = d[0], s1 = d[1], s2 = d[2], s3 = d[3];
    for (int k = 0; k < 16; k++) {
        s0 += a0[k] * B[k][c0];
        s1 += a0[k] * B[k][c1];
        s2 += a1[k] * B[k][c0];
        s3 += a1[k] * B[k][c1];
    }
    d[0] = s0, d[1] = s1, d[2] = s2, d[3] = s3;
}

// ldmatrix .x4 (.trans): each lane hands the warp its row address; lane l
// then reads its two values of each matrix M_j from the rows that lanes
// 8 j .. 8 j + 7 gave (PTX ISA's ldmatrix fragment table, again from the ISA):
// as stored, row g of M_j at columns 2t, 2t + 1; transposed, rows 2t and
// 2t + 1 at column g. A row address that is not 16-byte aligned stops the
// run, as the instruction faults on the GPU.
static inline void emu_ldsm(uint32_t (&r)[4], const uint16_t *row, bool trans)
{
    if ((uintptr_t)row % 16) {
        fprintf(stderr, "ldmatrix: row address %p is not 16-byte aligned\n", (const void *)row);
        abort();
    }
    const uint16_t *const *all = (const uint16_t *const *)emu_warp_gather(&row, sizeof row);
    const int lane = (int)(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
    for (int j = 0; j < 4; j++) {
        const uint16_t lo = trans ? all[8 * j + 2 * t][g] : all[8 * j + g][2 * t];
        const uint16_t hi = trans ? all[8 * j + 2 * t + 1][g] : all[8 * j + g][2 * t + 1];
        r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
}

static inline void ldsm_x4(uint32_t (&r)[4], const uint16_t *row) { emu_ldsm(r, row, false); }
static inline void ldsm_x4_trans(uint32_t (&r)[4], const uint16_t *row) { emu_ldsm(r, row, true); }

// cp.async: each emulated thread queues its copies; a commit closes them
// into a group and cp_async_wait<N> carries out the oldest groups until N
// are left. A copy nobody waits for never lands (on a GPU it lands at some
// unknown time), so a tile read before its wait sees the NaN fill of shared
// memory, or the previous tile. Queues belong to one block (emu_blocks).
// CUDA_EMU_CP=eager lands each copy when it is issued instead, the other
// end of what a GPU may do: a copy into a buffer that another warp still
// reads, without the barrier between, then shows.
struct emu_cp { uint16_t *dst; const uint16_t *src; bool valid; };
struct emu_cp_queue { unsigned long block; std::vector<emu_cp> open; std::vector<std::vector<emu_cp>> groups; };
static inline emu_cp_queue &emu_cp_mine()
{
    static std::vector<emu_cp_queue> q(1024);
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    emu_cp_queue &m = q[t];
    if (m.block != emu_blocks) m.block = emu_blocks, m.open.clear(), m.groups.clear();
    return m;
}
static inline void cp_async16(uint16_t *smem, const uint16_t *gmem, bool valid)
{
    if ((uintptr_t)smem % 16 || (uintptr_t)gmem % 16) {
        fprintf(stderr, "cp.async: %p <- %p is not 16-byte aligned\n", (void *)smem, (const void *)gmem);
        abort();
    }
    static const int eager = [] {
        const char *e = getenv("CUDA_EMU_CP");
        if (e && *e && strcmp(e, "eager") && strcmp(e, "wait")) {
            fprintf(stderr, "EMU: CUDA_EMU_CP must be wait or eager, not '%s'\n", e);
            abort();
        }
        return e && !strcmp(e, "eager");
    }();
    if (eager)
        for (int i = 0; i < 8; i++) smem[i] = valid ? gmem[i] : 0;
    emu_cp_mine().open.push_back({smem, gmem, valid});
}
static inline void cp_async_commit()
{
    emu_cp_queue &m = emu_cp_mine();
    m.groups.push_back(m.open);
    m.open.clear();
}
template <int N> static inline void cp_async_wait()
{
    emu_cp_queue &m = emu_cp_mine();
    while (m.groups.size() > (size_t)N) {
        for (const emu_cp &c : m.groups.front())
            for (int i = 0; i < 8; i++) c.dst[i] = c.valid ? c.src[i] : 0;
        m.groups.erase(m.groups.begin());
    }
}
