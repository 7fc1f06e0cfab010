/* Embedding lookup on the CPU: the forward pass copies table rows, the
 * backward pass scatter-adds the output gradient back into them. */
#include <string.h>

#include "ops/cpu/embedding.h"
#include "ops/cpu/par.h"

/* Columns per backward task: 32 floats = two cache lines, so tasks never
 * share a line and d = 896 already gives 28 of them. */
#define EMB_COLS 32

void dvl_cpu_embedding_fwd(float *out, const float *w, const int32_t *ids, int64_t n, int64_t d)
{
#pragma omp parallel for schedule(static) if (dvl_par(n * d))
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * d, w + (int64_t)ids[i] * d, (size_t)d * sizeof(float));
}

void dvl_cpu_embedding_bwd(float *dw, const float *dout, const int32_t *ids, int64_t n, int64_t d)
{
    /* Parallel over column blocks, tokens sequential inside a block: two
     * tokens with the same id touch the same row, but never from two
     * threads, and each element adds its tokens in order 0..n-1 (as a
     * sequential loop would), so no atomics and a deterministic result. */
#pragma omp parallel for schedule(static) if (dvl_par(n * d))
    for (int64_t j0 = 0; j0 < d; j0 += EMB_COLS) {
        int64_t nj = d - j0 < EMB_COLS ? d - j0 : EMB_COLS;
        for (int64_t i = 0; i < n; i++) {
            float *dst = dw + (int64_t)ids[i] * d + j0;
            const float *src = dout + i * d + j0;
            for (int64_t j = 0; j < nj; j++)
                dst[j] += src[j];
        }
    }
}
