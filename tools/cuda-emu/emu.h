// Minimal CUDA block emulator: each thread of a block is a fiber; warp-wide
// steps rendezvous per warp, barriers per block (emu.cpp: the schedule). Dev-only tool.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <climits>
struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
extern emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
extern float *emu_smem;
int emu_barrier(int kind, int pred, const void *val, void *out, int xor_off, size_t sz);
static inline void emu_sync() { emu_barrier(1, 0, nullptr, nullptr, 0, 0); }
static inline int emu_sync_or(int p) { return emu_barrier(2, p != 0, nullptr, nullptr, 0, 0); }
// Barrier rounds the scheduler has completed: a number that every thread
// leaving one barrier sees alike and no later barrier repeats.
extern unsigned long emu_rounds;
// Blocks the emulator has started: a number that names the running block.
extern unsigned long emu_blocks;
// Every lane of the warp hands in sz bytes (at most 64); each gets all 32
// lanes' in lane order (32 sz bytes), to read where they lie until its next
// warp-wide step or barrier: the warp-wide step of mma.sync and ldmatrix.
static inline const void *emu_warp_gather(const void *mine, size_t sz)
{
    if (sz > 64) { fprintf(stderr, "warp gather of %zu bytes\n", sz); abort(); }
    const void *all;
    emu_barrier(4, 0, mine, &all, 0, sz);
    return all;
}
template <class T> static inline T emu_shfl(unsigned mask, T v, int o)
{
    if (mask != 0xffffffffu) { fprintf(stderr, "partial shuffle mask\n"); abort(); }
    T out;
    emu_barrier(3, 0, &v, &out, o, sizeof(T));
    return out;
}
#define DVL_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
// Static shared arrays live in one section, which emu_run_block3 fills with
// 0xff bytes (NaN as float or double, -1 as an integer) before each block:
// on a GPU their contents at a block's start are undefined, so a read before
// the block's own write (a missing barrier, a stale value of an earlier
// block) shows here as the dynamic shared memory's NaN fill shows it.
#define __shared__ static __attribute__((section("emu_shared")))
#define __launch_bounds__(x)
#define __align__(x)
#define __syncthreads() emu_sync()
#define __syncthreads_or(x) emu_sync_or(x)
#define __shfl_xor_sync(m, v, o) emu_shfl(m, v, o)
#define __fmul_rn(a, b) ((a) * (b))
#define __fadd_rn(a, b) ((a) + (b))
#define __fsub_rn(a, b) ((a) - (b))
#define __dmul_rn(a, b) ((double)(a) * (double)(b))
struct float4 { float x, y, z, w; };
struct uint2 { uint32_t x, y; };
struct uint4 { uint32_t x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
// Run fn as `threads` fibers for one block.
void emu_run_block(unsigned block, unsigned threads, const std::function<void()> &fn);
// The same for block index `block` of a grid of blocks of `dim` threads
// (threadIdx from the linear thread number, x fastest, as CUDA numbers
// them; warps are 32 consecutive numbers). gridDim is the caller's to set.
void emu_run_block3(emu_dim3 block, emu_dim3 dim, const std::function<void()> &fn);
