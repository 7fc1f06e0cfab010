/* Model FLOPs of a forward and backward pass, for MFU (dvl-train's log):
 * the matrix work that runs, counted from shapes, as PaLM's appendix B and
 * llm.c count it. */
#ifndef DVL_MODELS_FLOPS_H
#define DVL_MODELS_FLOPS_H

#include <stdint.h>

#include "models/model.h"
#include "ops/ops.h"

/* What one (micro) batch runs through the model, padding left out (the
 * tokens a run processes, as tokens/s counts them: work on padding is
 * waste, and an MFU should show it). */
typedef struct dvl_flops_work {
    int64_t n;            /* LM sequences */
    const int64_t *len;   /* [n] their real lengths; BLOCK_DIFF: of each half */
    const dvl_mask *mask; /* the LM's attention rule (BLOCK_DIFF: half = len[s]) */
    int64_t head_rows;    /* rows scored through the LM head */
    int64_t images;       /* images through the vision tower and connector (VLM) */
} dvl_flops_work;

/* 2 FLOPs per multiply-add of every matrix product, forward; backward 2
 * more for a product's input gradient when anything before it needs a
 * gradient (a frozen LM in stage 1 passes it on to the connector) and 2
 * more for its weight's when that trains (the store's requires_grad).
 * Attention: 4 x heads x head_dim per allowed (query, key) pair forward
 * (QK^T, PV; dvl_mask_pairs over each sequence's real positions, [x_t ;
 * x_0] of 2 len[s] under BLOCK_DIFF; the tower's bidirectional over its
 * patches), 3 times that when a gradient passes through it. Not
 * counted: norms, softmax, activations, embeddings, and recomputation
 * under checkpointing (model FLOPs, not hardware FLOPs). A language model
 * (QWEN2, LLADA) or a VLM; a lone SigLIP tower counts 0. */
double dvl_model_flops(const dvl_model *m, const dvl_flops_work *w);

#endif
