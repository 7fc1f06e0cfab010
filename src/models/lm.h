/* The decoder language model: Qwen2 / Qwen2.5 and LLaDA.
 *
 * Both are the LLaMA block (Hugging Face Qwen2DecoderLayer; LLaDA's
 * LLaDALlamaBlock):
 *   h = x + o_proj(attn(rope(q_proj(rmsnorm1(x))), rope(k_proj(.)), v_proj(.)))
 *   x' = h + down(silu(gate(rmsnorm2(h))) * up(rmsnorm2(h)))
 * with grouped-query attention, then a final RMSNorm and the LM head. Qwen2
 * has q/k/v biases and is causal; LLaDA has no biases and attends both
 * ways. One implementation serves both: a name table per architecture maps
 * the parameters to the checkpoint names (config.h's arch).
 *
 * Tied embeddings: the LM head IS the embedding parameter (one tensor; its
 * gradient sums the lookup and the head), and no separate head tensor
 * exists in the store or the checkpoint.
 *
 * KV cache (dvl_kv_cache, inference only): per layer, the rotated keys and
 * the values of the tokens decoded so far, [N, cap, Hkv, D] each, allocated
 * once. A forward pass given a cache runs its T new tokens at cache rows
 * [len, len + T) (rotary positions default to len + t; the mask's q_offset
 * is set to len), attending over the len cached rows followed by its own
 * T rows. With store it also writes its keys and values at those rows and
 * advances len (prefill, finishing a block, an AR step); without, the cache
 * is left as it was (a block denoising step: the block sees the cache and
 * itself, and nothing of it is kept). attend() in lm.c is the one place the
 * cache enters. */
#ifndef DVL_MODELS_LM_H
#define DVL_MODELS_LM_H

#include <stdbool.h>
#include <stdint.h>

#include "models/config.h"
#include "ops/ops.h"

typedef struct dvl_lm_layer {
    dvl_tensor *attn_norm;      /* [d] */
    dvl_tensor *wq, *bq;        /* [Hq*D, d], [Hq*D] (bq NULL without biases) */
    dvl_tensor *wk, *bk;        /* [Hkv*D, d], [Hkv*D] */
    dvl_tensor *wv, *bv;        /* [Hkv*D, d], [Hkv*D] */
    dvl_tensor *wo;             /* [d, Hq*D] */
    dvl_tensor *mlp_norm;       /* [d] */
    dvl_tensor *w_gate, *w_up;  /* [I, d] */
    dvl_tensor *w_down;         /* [d, I] */
} dvl_lm_layer;

typedef struct dvl_lm {
    dvl_lm_config cfg;
    dvl_tensor *embed; /* [V, d] */
    dvl_tensor *norm;  /* [d] */
    dvl_tensor *head;  /* [V, d]; == embed when tied */
    dvl_lm_layer *layer; /* cfg.layers entries */
} dvl_lm;

/* Declare the parameters in p under the architecture's checkpoint names,
 * trainable (change with dvl_params_set_trainable before alloc). The
 * tensors' data exists once p is allocated. */
int dvl_lm_declare(dvl_lm *m, const dvl_lm_config *cfg, dvl_params *p, dvl_err *err);
/* Free the layer table (the parameters belong to the store). */
void dvl_lm_free(dvl_lm *m);
/* Random weights after alloc, as transformers' _init_weights: linear and
 * embedding weights N(0, std^2) (initializer_range, 0.02), biases 0, norm
 * gains 1. */
void dvl_lm_init_random(dvl_lm *m, uint64_t seed, float std);
/* Checkpoint name of the embedding / of layer 0's q_proj weight etc. for
 * this architecture's table: "model.embed_tokens.weight" (Qwen2),
 * "model.transformer.wte.weight" (LLaDA). */
const char *dvl_lm_embed_name(dvl_arch arch);

/* The attention pattern the architecture was trained with: causal for
 * Qwen2, bidirectional for LLaDA. */
dvl_mask dvl_lm_default_mask(const dvl_lm_config *cfg);

/* Keys and values of len tokens per sequence, for every layer. */
typedef struct dvl_kv_cache {
    int64_t layers, batch, cap, kv_heads, head_dim;
    int64_t len;    /* rows filled, the same for every sequence */
    float *k, *v;   /* [layers, N, cap, Hkv, D] (post-rope keys) */
    dvl_device device; /* where k and v live: the model's and the context's device */
} dvl_kv_cache;

/* Allocate a host cache for batch sequences of up to cap tokens (len 0). */
int dvl_kv_cache_init(dvl_kv_cache *c, const dvl_lm_config *cfg, int64_t batch, int64_t cap,
                      dvl_err *err);
/* The same on `device` (DVL_CUDA: device memory, cudaMalloc'd once; the
 * forward pass then copies rows device to device). */
int dvl_kv_cache_init_on(dvl_kv_cache *c, const dvl_lm_config *cfg, int64_t batch, int64_t cap,
                         dvl_device device, dvl_err *err);
void dvl_kv_cache_free(dvl_kv_cache *c);

typedef struct dvl_lm_input {
    int64_t batch, seq;   /* N sequences of T tokens */
    const int32_t *ids;   /* [N*T] token ids in [0, vocab), or NULL ... */
    dvl_tensor *embeds;   /* ... [N*T, d] input embeddings instead (VLM) */
    const int32_t *pos;   /* [N*T] rotary positions; NULL = 0..T-1 per row */
    const dvl_mask *mask; /* NULL = dvl_lm_default_mask; with a cache its q_offset
                             is replaced by cache->len and its key_valid, if
                             any, covers len + T keys per sequence */
    dvl_kv_cache *cache;  /* NULL: no cache. Else grad mode must be off */
    bool cache_store;     /* keep the new keys/values in the cache, len += T */
    bool checkpoint;      /* recompute each layer during backward instead of
                             keeping its activations (dvl_checkpoint) */
    bool separate_projections; /* q, k, v and gate, up as one product each
                                  (the default, dvl_linear_group) or, true,
                                  one product per projection: for comparing
                                  (dvl-bench train --separate) */
} dvl_lm_input;

/* Token embeddings [n, d]. */
dvl_tensor *dvl_lm_embed(dvl_ctx *ctx, const dvl_lm *m, const int32_t *ids, int64_t n);
/* The decoder: final hidden states after the final RMSNorm, [N*T, d]. */
dvl_tensor *dvl_lm_forward(dvl_ctx *ctx, const dvl_lm *m, const dvl_lm_input *in);
/* Logits h head^T, [rows, V]. */
dvl_tensor *dvl_lm_logits(dvl_ctx *ctx, const dvl_lm *m, dvl_tensor *h);

/* Cross-entropy of the LM head over final hidden states h [N*T, d] through
 * dvl_linear_cross_entropy (the [N*T, V] logits never exist). labels
 * [N*T] (DVL_IGNORE_INDEX = not scored).
 *   shift false: position t is scored on labels[t] (LLaDA, and the
 *     unshifted reference loss);
 *   shift true: position t is scored on labels[t+1] within its row and the
 *     last position of each row on nothing (transformers' causal-LM loss).
 * weight [N*T] is per target token (weight[t] goes with labels[t], moved
 * with it by the shift) and is used as given: the loss is
 * sum_t weight * CE. weight NULL: the mean over scored targets. */
dvl_tensor *dvl_lm_loss(dvl_ctx *ctx, const dvl_lm *m, dvl_tensor *h, int64_t batch, int64_t seq,
                        const int32_t *labels, const float *weight, bool shift);

#endif
