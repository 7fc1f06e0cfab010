/* The LLaVA-OneVision style VLM: SigLIP tower -> mlp2x_gelu connector ->
 * Qwen2 LM, in one parameter store under the LLaVA checkpoint names
 * (LM names as Qwen2, "model.mm_projector.{0,2}.*",
 * "model.vision_tower.vision_tower.vision_model.*").
 *
 * Token sequences are given EXPANDED: each image occupies G*G consecutive
 * positions holding image_token_index (one per patch, as transformers'
 * LLaVA processors expand "<image>"); dvl_vlm_expand_ids turns the compact
 * form (one placeholder per image, as LLaVA-NeXT's tokenizer_image_token
 * writes) into it. The embedded sequence is the token embeddings with the
 * placeholder rows replaced, in order, by the connector outputs of the
 * images (dvl_scatter_rows): row-major over the batch, the k-th placeholder
 * row gets row k of [image 0 patches; image 1 patches; ...]. A negative
 * image_token_index (LLaVA's IMAGE_TOKEN_INDEX, -200) is allowed: those rows
 * are overwritten before anything reads them. Placeholder positions carry
 * no label. */
#ifndef DVL_MODELS_VLM_H
#define DVL_MODELS_VLM_H

#include "models/connector.h"
#include "models/lm.h"
#include "models/siglip.h"

#define DVL_VLM_VISION_PREFIX "model.vision_tower.vision_tower.vision_model."
#define DVL_VLM_CONNECTOR_PREFIX "model.mm_projector."

typedef struct dvl_vlm {
    dvl_vlm_config cfg;
    dvl_lm lm;
    dvl_siglip vision;
    dvl_connector connector;
} dvl_vlm;

/* Declare LM, connector and tower, in that order, all trainable. Freeze
 * with dvl_params_set_trainable(p, DVL_VLM_VISION_PREFIX, false) etc.
 * before alloc. */
int dvl_vlm_declare(dvl_vlm *m, const dvl_vlm_config *cfg, dvl_params *p, dvl_err *err);
void dvl_vlm_free(dvl_vlm *m);
/* Every part's random initialisation (lm.h, connector.h, siglip.h). */
void dvl_vlm_init_random(dvl_vlm *m, uint64_t seed);

/* Compact -> expanded ids: each image_token_index becomes G*G copies.
 * Returns the expanded length; out (NULL to only count) must hold it. */
int64_t dvl_vlm_expand_ids(const dvl_vlm_config *cfg, const int32_t *ids, int64_t n,
                           int32_t *out);
/* Placeholder rows in expanded ids. */
int64_t dvl_vlm_count_image_tokens(const dvl_vlm_config *cfg, const int32_t *ids, int64_t n);

typedef struct dvl_vlm_input {
    int64_t batch, seq;   /* N sequences of T (expanded) tokens */
    const int32_t *ids;   /* [N*T] */
    dvl_tensor *pixels;   /* [n_img, C, S, S]; NULL when there are no images */
    const int32_t *pos;   /* [N*T]; NULL = 0..T-1 per row */
    const dvl_mask *mask; /* NULL = causal (the pattern Qwen2 was trained with) */
} dvl_vlm_input;

/* The embedded sequence [N*T, d] with image features spliced in. Errors
 * when the number of placeholder rows is not n_img * G*G. */
dvl_tensor *dvl_vlm_embed(dvl_ctx *ctx, const dvl_vlm *m, const dvl_vlm_input *in);
/* Final hidden states [N*T, d] (after the LM's final norm). */
dvl_tensor *dvl_vlm_forward(dvl_ctx *ctx, const dvl_vlm *m, const dvl_vlm_input *in);
/* dvl_lm_loss with the placeholder positions' labels ignored (before any
 * shift, so with shift no position is scored on predicting an image row). */
dvl_tensor *dvl_vlm_loss(dvl_ctx *ctx, const dvl_vlm *m, dvl_tensor *h, const dvl_vlm_input *in,
                         const int32_t *labels, const float *weight, bool shift);

#endif
