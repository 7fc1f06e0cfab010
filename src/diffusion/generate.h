/* Generation from a model: block diffusion with a KV cache (DiffusionVL's
 * generate_with_bd3lm), LLaDA-style diffusion without a cache, and ordinary
 * autoregressive decoding with a cache.
 *
 * DVL_GEN_BLOCK (docs/diffusion.md, "Decoding"): blocks of B positions
 * aligned to absolute position 0. The complete prompt blocks (floor(P/B) B
 * tokens, image rows included) are run once under the block-causal rule and
 * kept in the cache; the prompt's tail sits, unmasked, at the start of the
 * first decode block. Each block starts as mask tokens (plus that tail); each
 * step forwards the block against the cache (attention inside the block both
 * ways, to every cached row; its own keys/values not kept), predicts every
 * masked position and commits by the remasking rule with the step's count
 * from dvl_transfer_schedule(B, S) (clamped to the masks left; the mask
 * token itself is never proposed, so every step commits); once no mask
 * is left one more forward of the finished block stores it in the cache.
 *
 * DVL_GEN_FULL: no cache. The sequence prompt + generation region (up to the
 * block boundary at or after P + max_new) starts masked and is recomputed
 * whole at every step; the same blocks, schedule and remasking decide what
 * to commit, block by block (LLaDA's semi-autoregressive sampling). The
 * attention is opts.full_mask: BIDIR (LLaDA, the baseline without cache) or
 * BLOCK_CAUSAL (then it computes exactly what DVL_GEN_BLOCK computes, without
 * the cache: the reference the cache is tested against).
 *
 * DVL_GEN_AR: the prompt under the causal rule into the cache, then one token
 * per forward (dvl_sample_token with the sampler's temperature/top-k/top-p).
 *
 * Stopping: after each block (after each token in AR mode) the output is cut
 * at the first stop id among the new tokens, which ends generation; it also
 * ends once max_new tokens exist (the output is cut to max_new).
 *
 * Batches (dvl_generate_batch): the prompts run in step, one forward pass
 * for all. Each sequence keeps its own positions from 0; shorter prompts
 * are padded in front by whole blocks (diffusion: the complete prompt
 * blocks end on the same row for all, so the first decode blocks share
 * rows; AR: the prompts end on the same row), the padding rows masked out
 * as keys (pad is not mask). Each sequence draws from its own generator
 * seeded with opts.seed, so a batch gives exactly what each prompt gives
 * alone (tested); sequences that stop early ride along undecoded. */
#ifndef DVL_DIFFUSION_GENERATE_H
#define DVL_DIFFUSION_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "diffusion/decode.h"
#include "models/model.h"

typedef enum dvl_gen_mode { DVL_GEN_BLOCK = 0, DVL_GEN_FULL = 1, DVL_GEN_AR = 2 } dvl_gen_mode;

typedef struct dvl_gen_opts {
    dvl_gen_mode mode;
    int block_size;  /* B (diffusion modes) */
    int steps;       /* S per block, 1..B */
    dvl_sampler sampler;
    int64_t max_new; /* >= 1 */
    int32_t mask_id; /* diffusion modes: the mask token */
    const int32_t *stop_ids;
    int n_stop;
    uint64_t seed;
    dvl_mask_kind full_mask; /* DVL_GEN_FULL attention: DVL_MASK_BIDIR or _BLOCK_CAUSAL */
    /* bf16 products with f32 accumulation (DVL_MATH_BF16: the linear layers,
     * the LM head and attention), for a model on a CUDA device (an error on
     * the CPU). Weights with bf16 copies in their store (dvl_params_keep_bf16)
     * are read from those; others are rounded at every product. */
    bool bf16;
    /* The tiled attention kernels' arithmetic when it should differ from the
     * other products' (a CUDA context only): -1 follows bf16 (the default),
     * else a dvl_cuda_math (0 f32, 1 TF32, 2 bf16; dvl_cublas_set_attention_math),
     * e.g. bf16 products on the TF32 attention kernels. */
    int attention;
    /* Called with sequence seq's tokens that became final (already cut at a
     * stop id), block by block (token by token in AR mode); may be NULL. */
    void (*on_tokens)(void *user, int seq, const int32_t *ids, int64_t n);
    void *user;
} dvl_gen_opts;

/* B 8, S 8, dvl_sampler_default, max_new 128, no mask id, no stop ids,
 * seed 0, full_mask BIDIR, f32 products, attention following them. */
void dvl_gen_opts_default(dvl_gen_opts *o);

/* Give ctx o->bf16's products and o->attention's attention arithmetic, as
 * dvl_generate does before its first pass; for callers that run the model
 * themselves (dvl-generate --score). Nothing to do with f32 products and
 * attention following them; otherwise ctx must be a CUDA context
 * (DVL_EINVAL on the CPU, or for an attention value outside -1..2). */
int dvl_gen_set_precision(dvl_ctx *ctx, const dvl_gen_opts *o, dvl_err *err);

typedef struct dvl_gen_result {
    int32_t *ids;  /* generated tokens (malloc), stop token excluded */
    int64_t n;
    bool stopped;  /* a stop id ended generation */
    int64_t forwards;       /* model forward passes (of the whole batch) */
    int64_t forward_tokens; /* token rows those passes computed (whole batch) */
    double seconds;         /* wall time of the whole generation (whole batch) */
} dvl_gen_result;

void dvl_gen_result_free(dvl_gen_result *r);

/* Generate after prompt[0..P) (expanded ids: a VLM's image occupies G*G
 * placeholder positions; pixels [n_img, C, S, S] or NULL) with a language
 * model or VLM directory's model. */
int dvl_generate(const dvl_model *m, const int32_t *prompt, int64_t P, const float *pixels,
                 int64_t n_img, const dvl_gen_opts *o, dvl_gen_result *out, dvl_err *err);
/* n prompts at once: prompts[i][0..lens[i]), pixels[i] one image [C, S, S]
 * or NULL (pixels NULL: no images); out[n]. */
int dvl_generate_batch(const dvl_model *m, int n, const int32_t *const *prompts,
                       const int64_t *lens, const float *const *pixels, const dvl_gen_opts *o,
                       dvl_gen_result *out, dvl_err *err);

#endif
