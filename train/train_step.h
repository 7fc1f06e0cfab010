/* One micro-batch of dvl-train: the forward pass and the loss of a stage on a
 * loader batch, ready for dvl_backward.
 *
 * Loss scaling. Every stage's loss is a mean over SAMPLES of a per-sample
 * quantity, so that it does not depend on how the global batch is cut into
 * micro batches and ranks (1 rank = N ranks at the same global batch):
 *   ar, 1: per sample, the mean next-token cross-entropy over its
 *          supervised targets (transformers' causal-LM loss per sample);
 *   2:     per sample, sum over masked tokens of CE / t divided by the
 *          sample's supervised count (DiffusionVL's BD3-LM loss).
 * A micro batch of m samples contributes sum_s loss_s * scale / m with
 * scale = 1 / accumulation steps, so the gradients summed over the micro
 * batches of a step, then averaged over ranks, are the gradient of the
 * global-batch mean. */
#ifndef DVL_TRAIN_STEP_H
#define DVL_TRAIN_STEP_H

#include <stdint.h>

#include "diffusion/batch.h"
#include "io/loader.h"
#include "models/model.h"
#include "train_cfg.h"

typedef struct train_model {
    dvl_model m;
    bool is_vlm;
    const dvl_lm *lm;
    int64_t patches;      /* image feature rows per image (VLM) */
    int32_t image_token;  /* placeholder id (VLM), else INT32_MIN */
    dvl_diff_cfg diff;    /* stage 2 */
    dvl_diff_batch *db;   /* stage 2 batch buffers, grown as needed */
    bool checkpoint;      /* train.checkpoint_layers: recompute layers in backward */
} train_model;

/* The loss tensor (scalar) of batch b under stage cfg->stage, with grad mode
 * as set by the caller; draw says where the diffusion noise of b's samples
 * comes from (stage 2; diffusion/batch.h). *flops (unless NULL): the model
 * FLOPs of the batch's forward and backward (train_step.c: the products and
 * attention that ran, 2 per multiply-add), for MFU. NULL on error (message
 * in err). */
dvl_tensor *train_forward(dvl_ctx *ctx, train_model *tm, const train_cfg *cfg,
                          const dvl_batch *b, float scale, const dvl_diff_draw *draw,
                          double *flops, dvl_err *err);

#endif
