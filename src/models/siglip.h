/* The SigLIP vision tower, as LLaVA-OneVision uses it.
 *
 * Transformers' SiglipVisionTransformer up to the selected hidden state:
 *   patches: the [C, S, S] image cut into G x G patches of P x P pixels
 *     (G = floor(S / P); a stride-P conv without padding ignores the last
 *     S - G*P rows and columns), patch (gy, gx) at sequence index gy*G + gx, each
 *     flattened in (c, ky, kx) order, the layout of the conv weight
 *     [hidden, C, P, P], so the stride-P conv is one linear layer;
 *   x = patches W^T + b + position_embedding[index] (no CLS token);
 *   per pre-LN encoder layer:
 *     x += out_proj(attn(layer_norm1(x)))    (bidirectional, q/k/v biases)
 *     x += fc2(gelu_tanh(fc1(layer_norm2(x))))
 *   features = x after layer (layers + select_layer), i.e. with the default
 *   select_layer -2 the penultimate layer's output: later layers,
 *   post_layernorm and the pooling head are neither declared nor run, so
 *   checkpoints that hold them and ones that dropped them both load.
 *
 * When none of the tower's parameters is trainable the forward pass runs
 * with grad mode off: pixels never carry a gradient, so a frozen tower
 * records nothing and costs no backward pass. */
#ifndef DVL_MODELS_SIGLIP_H
#define DVL_MODELS_SIGLIP_H

#include "models/config.h"
#include "ops/ops.h"

typedef struct dvl_siglip_layer {
    dvl_tensor *ln1_w, *ln1_b;      /* [d] */
    dvl_tensor *wq, *bq, *wk, *bk;  /* [d, d], [d] */
    dvl_tensor *wv, *bv, *wo, *bo;  /* [d, d], [d] */
    dvl_tensor *ln2_w, *ln2_b;      /* [d] */
    dvl_tensor *fc1_w, *fc1_b;      /* [I, d], [I] */
    dvl_tensor *fc2_w, *fc2_b;      /* [d, I], [d] */
} dvl_siglip_layer;

typedef struct dvl_siglip {
    dvl_siglip_config cfg;
    int64_t n_layers;      /* layers run = dvl_siglip_layers_run(&cfg) */
    dvl_tensor *patch_w;   /* [d, C, P, P] */
    dvl_tensor *patch_b;   /* [d] */
    dvl_tensor *pos_emb;   /* [G*G, d] */
    dvl_siglip_layer *layer;
} dvl_siglip;

/* Declare the parameters in p as `prefix` + the transformers name below
 * vision_model (e.g. prefix "vision_model." gives
 * "vision_model.embeddings.patch_embedding.weight"). */
int dvl_siglip_declare(dvl_siglip *m, const dvl_siglip_config *cfg, dvl_params *p,
                       const char *prefix, dvl_err *err);
void dvl_siglip_free(dvl_siglip *m);
/* Random weights after alloc: patch conv N(0, 1/fan_in) (LeCun normal),
 * position embedding N(0, 1/d), projections Xavier-uniform, biases 0,
 * LayerNorm 1 / 0 (after transformers' SiglipPreTrainedModel). */
void dvl_siglip_init_random(dvl_siglip *m, uint64_t seed);
/* Whether any parameter of the tower is trainable. */
bool dvl_siglip_trainable(const dvl_siglip *m);

/* pixels [n, C, S, S] (or [C, S, S] for one image), preprocessed (SigLIP:
 * scaled to [-1, 1]); features [n * G*G, d], image i's patches at rows
 * [i*G*G, (i+1)*G*G). checkpoint: recompute each encoder layer during
 * backward instead of keeping its activations (dvl_checkpoint; the same
 * gradients to the bit; nothing changes for a frozen tower, which records
 * nothing). */
dvl_tensor *dvl_siglip_forward(dvl_ctx *ctx, const dvl_siglip *m, dvl_tensor *pixels,
                               bool checkpoint);

#endif
