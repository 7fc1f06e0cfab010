/* The warp-level tensor-core product of the bf16 attention kernels, and
 * bf16 rounding and widening (C++ only). tools/cuda-emu/emu_mma.h is its CPU twin for
 * the emulator; the two must keep the same names and meaning.
 *
 * mma_bf16: D += A B on one m16n8k16 tile (PTX ISA, "Matrix Fragments for
 * mma.m16n8k16 with floating point type"), A [16 x 16] and B [16 x 8] in
 * bf16, D [16 x 8] in f32. Lane l holds, with g = l / 4 and t = l % 4,
 * each 32-bit register two bf16, the lower index in the low half:
 *   a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
 *   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
 *   b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
 *   d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
 * Every lane of the warp must call it (mma.sync.aligned). */
#ifndef DVL_OPS_CUDA_MMA_CUH
#define DVL_OPS_CUDA_MMA_CUH

#include <stdint.h>

#include <cuda_bf16.h>

/* x rounded to bf16 (nearest, ties to even), as its 16 bits. */
__device__ static inline uint16_t bf16_bits(float x)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

/* The float a bf16's 16 bits stand for (exact). */
__device__ static inline float bf16_float(uint16_t b)
{
    return __bfloat162float(__ushort_as_bfloat16(b));
}

/* Two values rounded to bf16, lo in the low half of the word. */
__device__ static inline uint32_t pack_bf16(float lo, float hi)
{
    return (uint32_t)bf16_bits(lo) | ((uint32_t)bf16_bits(hi) << 16);
}

__device__ static inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): four
 * 8 x 8 matrices of 16-bit values from shared memory in one instruction.
 * Lanes 8 j .. 8 j + 7 give the addresses of rows 0 .. 7 of matrix M_j (8
 * values, 16 bytes, 16-byte aligned); lane l receives in r[j], with
 * g = l / 4, t = l % 4, the lower index in the low half:
 *   ldsm_x4        M_j[g][2t], M_j[g][2t+1]    (as stored)
 *   ldsm_x4_trans  M_j[2t][g], M_j[2t+1][g]    (transposed)
 * which are the fragments mma_bf16 takes: a warp loads A or two B operands
 * with one instruction instead of four or eight 32-bit loads, and a B
 * operand stored with k along the rows needs no transposed copy. Every lane
 * must call (.sync.aligned). Like CUTLASS's, the asm is volatile without a
 * memory clobber: the __syncthreads that publish a tile order it. */
__device__ static inline void ldsm_x4(uint32_t (&r)[4], const uint16_t *row)
{
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ static inline void ldsm_x4_trans(uint32_t (&r)[4], const uint16_t *row)
{
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* cp.async (PTX ISA, "cp.async", sm_80+): 16 bytes from global to shared
 * memory without passing through registers, so a block can load its next
 * tile while its warps multiply the current one. valid false writes 16
 * zero bytes and reads nothing (src-size 0; gmem must still be a valid
 * address). cp_async_commit closes the copies this thread has issued into
 * a group; cp_async_wait<N> waits until at most N of its groups are still
 * in flight. Other threads see the data after the wait and a barrier. */
__device__ static inline void cp_async16(uint16_t *smem, const uint16_t *gmem, bool valid)
{
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(valid ? 16 : 0));
}

__device__ static inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ static inline void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif
