/* CPU kernels of the embedding lookup (a row gather from a table). */
#ifndef DVL_CPU_EMBEDDING_H
#define DVL_CPU_EMBEDDING_H

#include <stdint.h>

/* out[i, :] = w[ids[i], :] for i < n; w [V, d], out [n, d]; ids in range. */
void dvl_cpu_embedding_fwd(float *out, const float *w, const int32_t *ids, int64_t n, int64_t d);

/* dw[ids[i], :] += dout[i, :] for i < n, in token order for every element, so
 * repeated ids give the same sum whatever the thread count. */
void dvl_cpu_embedding_bwd(float *dw, const float *dout, const int32_t *ids, int64_t n, int64_t d);

#endif
