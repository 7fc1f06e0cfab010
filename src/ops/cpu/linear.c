/* The linear layer on the CPU: three sgemm calls (forward, dx, dW) with the
 * transposes expressed through the BLAS arguments, so neither x nor W is ever
 * copied, plus one pass for the bias. Gradients are accumulated with beta = 1
 * straight into their buffers, which is also how several uses of one weight
 * (tied embeddings, shared layers) add up. */
#include <cblas.h>
#include <string.h>

#include "ops/cpu/linear.h"
#include "ops/cpu/par.h"

/* Columns of dy per bias-gradient task: 32 floats = two cache lines, enough
 * tasks to spread over the threads for any hidden size of interest. */
#define DB_COLS 32

void dvl_cpu_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t rows,
                        int64_t in, int64_t out)
{
    if (rows == 0 || out == 0)
        return;
    /* Broadcast the bias into y first and let sgemm add x W^T onto it
     * (beta = 1): the bias then costs one write pass over y, not a second
     * read-modify-write pass after the product. */
    if (b) {
#pragma omp parallel for schedule(static) if (dvl_par(rows * out))
        for (int64_t i = 0; i < rows; i++)
            memcpy(y + i * out, b, (size_t)out * sizeof(float));
    } else if (in == 0) {
        memset(y, 0, (size_t)(rows * out) * sizeof(float));
    }
    if (in == 0) /* empty product: BLAS rejects a leading dimension of 0 */
        return;
    /* y[i, j] = sum_k x[i, k] W[j, k]: W [out, in] row-major read as W^T. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in, 1.0f, x,
                (int)in, w, (int)in, b ? 1.0f : 0.0f, y, (int)out);
}

void dvl_cpu_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int64_t rows, int64_t in, int64_t out)
{
    if (rows == 0 || out == 0)
        return;
    if (in > 0) {
        /* dx[i, k] += sum_j dy[i, j] W[j, k]. */
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)in, (int)out,
                        1.0f, dy, (int)out, w, (int)in, 1.0f, dx, (int)in);
        /* dW[j, k] += sum_i dy[i, j] x[i, k]: dy [rows, out] read as dy^T. */
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)rows,
                        1.0f, dy, (int)out, x, (int)in, 1.0f, dw, (int)in);
    }
    if (!db)
        return;
    /* db[j] += sum_i dy[i, j]. Each column is summed by one thread over the
     * rows in order, so the result does not depend on the thread count; the
     * sum runs over every token of the step, hence double. */
#pragma omp parallel for schedule(static) if (dvl_par(rows * out))
    for (int64_t j0 = 0; j0 < out; j0 += DB_COLS) {
        int64_t nj = out - j0 < DB_COLS ? out - j0 : DB_COLS;
        double acc[DB_COLS] = {0};
        for (int64_t i = 0; i < rows; i++) {
            const float *r = dy + i * out + j0;
            for (int64_t j = 0; j < nj; j++)
                acc[j] += r[j];
        }
        for (int64_t j = 0; j < nj; j++)
            db[j0 + j] += (float)acc[j];
    }
}
