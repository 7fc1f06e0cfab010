/* A small Qwen2-shaped transformer built from the ops (embedding, RMSNorm,
 * q/k/v projections with bias, rotary, grouped-query causal attention, SwiGLU
 * MLP, residuals, chunked LM-head cross-entropy), used by the whole-graph
 * gradient test and the determinism test. */
#ifndef DVL_TEST_TOY_H
#define DVL_TEST_TOY_H

#include "util.h"

typedef struct toy_cfg {
    int vocab, dim, layers, heads, kv_heads, ffn, seq, batch;
} toy_cfg;

typedef struct toy_batch {
    int32_t *ids, *labels, *pos;
} toy_batch;

/* Declare and allocate the parameters, filled from seed. */
dvl_params *toy_params(const toy_cfg *c, uint64_t seed);
/* Token ids, next-token labels (a few ignored) and positions from seed. */
toy_batch toy_batch_new(const toy_cfg *c, uint64_t seed);
void toy_batch_free(toy_batch *b);
/* Mean next-token cross-entropy of the batch. */
dvl_tensor *toy_loss(dvl_ctx *ctx, const toy_cfg *c, dvl_params *p, const toy_batch *b);

#endif
