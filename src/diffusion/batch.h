/* A block diffusion training batch: the model input [x_t ; x_0] (length 2L
 * per sample, position ids [0..L-1, 0..L-1]), the key padding for the
 * attention mask, and the labels and loss weights of the noisy half.
 *
 * The objective (DiffusionVL llava_diffusionvl_qwen.py
 * _compute_bd3lm_loss_embedding, bd3lms diffusion.py _forward_pass_diffusion):
 *
 *   loss = 1/N sum_s 1/n_sup(s) sum_{i masked in s} CE(logits[s,i], x0[s,i]) / t(s, i/B)
 *
 * N the batch size (of this batch; the caller scales a micro batch's loss
 * to the global batch's mean), n_sup(s) the number of supervised tokens of
 * sample s (at least 1), t(s, b) the noise level of block b of sample s. The batch
 * carries it as per-row labels and weights for a weighted cross-entropy
 * (dvl_cross_entropy / dvl_linear_cross_entropy): at masked rows
 * label = x0[s,i], weight = 1 / (t * n_sup(s) * N); elsewhere label =
 * DVL_IGNORE_INDEX, weight 0. Logits are needed for the noisy half only
 * (DiffusionVL slices hidden_states[:, :L] before lm_head).
 *
 * Blocks are counted from sequence position 0: prompt and image positions
 * belong to blocks like any other. */
#ifndef DVL_DIFFUSION_BATCH_H
#define DVL_DIFFUSION_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"
#include "core/rng.h"
#include "ops/ops.h"

/* Token ids of the supported models. */
#define DVL_QWEN_MASK_ID 151671    /* DiffusionVLQwenModel._init_bd3lm_components */
#define DVL_QWEN_IM_END_ID 151645  /* <|im_end|>, config.eos_token_id of Qwen2.5 instruct */
#define DVL_QWEN_PAD_ID 151643     /* <|endoftext|> */
#define DVL_LLADA_MASK_ID 126336   /* LLaDA [MASK] */
#define DVL_LLADA_EOT_ID 126348    /* <|eot_id|>, llava_arch.py block-aligned EOS for LLaDA */
#define DVL_LLADA_PAD_ID 126081    /* <|endoftext|> (LLaDA's EOS) */

typedef struct dvl_diff_cfg {
    int block_size;          /* B (8) */
    double eps_min, eps_max; /* t range (1e-3, 1): bd3lm_sampling_eps_min/max */
    bool antithetic;         /* stratified t over the batch x blocks grid (true) */
    int32_t mask_id;         /* the mask token (Qwen 151671, LLaDA 126336) */
    int32_t pad_id;          /* batch padding token; never attended to, so any id works */
    /* Pad each sequence's end with supervised eos_id up to a multiple of B
     * (bd3lm_block_aligned_eos, default True in DiffusionVL's train.py). */
    bool block_align_eos;
    int32_t eos_id; /* Qwen <|im_end|> 151645, LLaDA <|eot_id|> 126348 */
    /* false (DiffusionVL, BD3-LM): logits[i] are scored against token i.
     * true (Dream-style): logits[i] against token i+1, i.e. row i carries the
     * label of position i+1 when position i+1 is masked; position 0 is then
     * never scored and row L-1 never carries a label. */
    bool shift_logits;
} dvl_diff_cfg;

/* DiffusionVL's values for Qwen2.5 models / for LLaDA. */
void dvl_diff_cfg_qwen(dvl_diff_cfg *c);
void dvl_diff_cfg_llada(dvl_diff_cfg *c);

/* ---------------------------------------------------- block-aligned EOS */
/* len rounded up to a multiple of block_size. */
int64_t dvl_diff_aligned_len(int64_t len, int block_size);

/* Appends eos_id to ids and labels (supervised: label = eos_id) after the
 * last token until *len is a multiple of block_size; buffers hold cap
 * entries. What DiffusionVL does (llava_arch.py
 * prepare_inputs_labels_for_multimodal, `bd3lm_block_aligned_eos`, training
 * only): it pads each sample's END only -- after the whole sequence, images
 * spliced in, i.e. after the last assistant turn's "<|im_end|>\n" -- not
 * after every assistant turn; earlier turns keep their natural positions.
 * Call it on the sequence as the model sees it (image placeholders expanded
 * to one position per image feature). */
int dvl_diff_block_align(int32_t *ids, int32_t *labels, int64_t *len, int64_t cap,
                         int block_size, int32_t eos_id, dvl_err *err);

/* ------------------------------------------------------------- batches */
/* One training sequence as the model sees it. labels[i] is ids[i] where the
 * token is supervised and DVL_IGNORE_INDEX elsewhere (LLaVA convention,
 * unshifted); image positions carry their placeholder id and are never
 * supervised. */
typedef struct dvl_diff_seq {
    const int32_t *ids;
    const int32_t *labels;
    int64_t len;
} dvl_diff_seq;

/* Arrays are sized for cap_n samples of cap_L positions per half and reused
 * from step to step (no allocation in dvl_diff_make_batch). Row s*2L + j of
 * the [n, 2L] arrays is position j of the model input of sample s: j < L the
 * noisy half x_t, j >= L the clean half x_0. The [n, L] arrays describe the
 * noisy half. */
typedef struct dvl_diff_batch {
    int64_t cap_n, cap_L;
    int64_t n, L, nblocks; /* this batch: L a multiple of B, nblocks = L / B */
    int32_t *ids;          /* [n, 2L] x_t ; x_0 (pad_id beyond a sample's length) */
    int32_t *pos;          /* [n, 2L] 0..L-1, 0..L-1 */
    uint8_t *key_valid;    /* [n, 2L] 1 at real tokens of both halves, 0 at padding */
    int32_t *labels;       /* [n, L]  target of row (s, i), or DVL_IGNORE_INDEX */
    float *weight;         /* [n, L]  1 / (t * n_sup * n) at labelled rows, else 0 */
    int32_t *noisy_rows;   /* [n * L] s*2L + i: the model rows the labels belong to */
    uint8_t *masked;       /* [n, L]  1 where x_t holds mask_id */
    float *t;              /* [n, nblocks] noise level per (sample, block); 0 at padding blocks */
    int64_t *len;          /* [n] real length (after block alignment) */
    int64_t *n_sup;        /* [n] supervised tokens (after block alignment) */
    int64_t n_masked;      /* masked positions in the batch */
    int64_t n_labelled;    /* rows with a label (n_masked unless shift_logits) */
} dvl_diff_batch;

dvl_diff_batch *dvl_diff_batch_new(int64_t cap_n, int64_t cap_L, dvl_err *err);
void dvl_diff_batch_free(dvl_diff_batch *b);

/* Where a batch's noise comes from. A training step's global batch of G
 * samples may be cut into micro batches and ranks in any way; every sample
 * draws its t's and masks from its own stream, seeded by
 * dvl_diff_sample_seed(seed, g) with g its index in the global batch, and
 * its t's are row g of the G-row antithetic grid. A sample's noise is then
 * a function of (seed, g, G, the sample) alone, so 1 rank and N ranks at
 * the same global batch train on the same noisy inputs. A NULL draw is
 * {0}: seed 0, the batch is the whole global batch. */
typedef struct dvl_diff_draw {
    uint64_t seed;        /* the step's noise seed (dvl-train: train.seed and the step) */
    int64_t global_n;     /* G, samples in the global batch; 0: this batch's n */
    const int64_t *index; /* [n] sample s's g, 0 <= g < G; NULL: g = s */
} dvl_diff_draw;

/* Fills b from n sequences. L = 0 chooses the smallest multiple of B that
 * holds every (aligned) sequence; a nonzero L must be such a multiple and at
 * least that. Sample s (g = draw->index[s]) has nb_s = ceil(len_s / B)
 * blocks of its own (len_s after block alignment); from its stream it draws,
 * in this order, its nb_s t values (dvl_diff_sample_t, row g of G with nb_s
 * cells) and its masks (dvl_diff_mask). Blocks of the batch beyond nb_s are
 * padding: t = 0 there (no token in them is masked or scored), and the
 * padding draws nothing, so a sample's noise does not depend on L.
 * Errors (code returned, message in err): capacities exceeded, bad config,
 * an index outside [0, G), or a supervised label that differs from its
 * token. */
int dvl_diff_make_batch(dvl_diff_batch *b, const dvl_diff_cfg *cfg, const dvl_diff_draw *draw,
                        const dvl_diff_seq *seqs, int64_t n, int64_t L, dvl_err *err);

/* The attention rule for the batch: DVL_MASK_BLOCK_DIFF over [x_t ; x_0]
 * with half L and the batch's key padding (bd3lm_utils.py block_diff_mask
 * AND-ed with the padding mask, as in DiffusionVL _forward_bd3lm). The mask
 * points into b. */
dvl_mask dvl_diff_attn_mask(const dvl_diff_batch *b, int block_size);

#endif
