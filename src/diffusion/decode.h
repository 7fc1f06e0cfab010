/* Block-wise decoding: within a block of n positions, S steps each predict
 * every masked position and commit some of them (low-confidence remasking).
 *
 * References (docs/diffusion.md has the details):
 *   hustvl/DiffusionVL llava_diffusionvl_qwen.py
 *     DiffusionVLQwenForCausalLM.generate_with_bd3lm (remasking strategies
 *     'low_confidence_static' / 'low_confidence_dynamic'),
 *     _sample_with_temperature_topk_topp, _top_k_logits, _top_p_logits,
 *     get_bd3lm_num_transfer_tokens
 *   ML-GSAI/LLaDA generate.py get_num_transfer_tokens; NVlabs/Fast-dLLM
 *     generate.py get_transfer_index (float64 softmax confidence).
 *
 * Randomness: at temperature > 0 each masked position draws one
 * dvl_rng_uniform_f64, in position order; greedy decoding draws nothing. */
#ifndef DVL_DIFFUSION_DECODE_H
#define DVL_DIFFUSION_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "core/rng.h"

/* How many masked positions to commit at each of `steps` steps so that
 * n_masked are committed in all: base = n_masked / steps, and the first
 * n_masked % steps steps commit one more (LLaDA get_num_transfer_tokens).
 * n_masked = 8, steps = 8 -> 1 x 8; 7, 3 -> 3 2 2; 0 -> all 0. LLaDA passes
 * the masks in the block at its start; DiffusionVL passes the block size B
 * (get_bd3lm_num_transfer_tokens(block_size, steps)) and clamps each step's
 * count to the masks left, which commits a partly-prompt block sooner.
 * Returns DVL_EINVAL for steps < 1 or n_masked < 0. */
int dvl_transfer_schedule(int n_masked, int steps, int *out_counts);

typedef enum dvl_remask {
    /* Commit the k most confident masked positions (ties: lower position). */
    DVL_REMASK_STATIC = 0,
    /* Commit every masked position with confidence > tau when at least k are
     * above it, otherwise the k most confident. */
    DVL_REMASK_DYNAMIC = 1
} dvl_remask;

typedef struct dvl_sampler {
    float temperature; /* 0: greedy (argmax of the logits; top_k/top_p unused) */
    int top_k;         /* keep the top_k tempered logits (ties kept); 0: off */
    float top_p;       /* nucleus: smallest prefix with mass > top_p; >= 1: off */
    dvl_remask remask;
    float tau; /* DYNAMIC threshold (DiffusionVL confidence_threshold 0.85) */
} dvl_sampler;

/* temperature 0, top_k 0, top_p 1, static remasking, tau 0.85: DiffusionVL's
 * generate_with_bd3lm defaults. */
void dvl_sampler_default(dvl_sampler *s);

/* Bytes of scratch dvl_sample_token / dvl_sample_dist need for vocab V
 * (8-byte aligned memory, e.g. from malloc). */
size_t dvl_sample_scratch_bytes(int64_t V);

/* The distribution sampled from at temperature > 0: z = logits / T (f32),
 * tokens below the top_k-th largest z dropped (DiffusionVL _top_k_logits:
 * `logits < kth` -> -inf, so ties with the k-th stay), then the top-p
 * filter on the survivors sorted by z descending (ties: lower id first):
 * softmax, cumulative sum, drop a token when the mass BEFORE it already
 * exceeds top_p (_top_p_logits: `cum > p` shifted right by one; the first
 * token always stays). Sets *idx to the kept token ids (sorted as above when
 * top_k or top_p is on, else all V in id order) and *prob to their
 * renormalised probabilities (double); both point into scratch. Returns the
 * number kept. */
int64_t dvl_sample_dist(const float *logits, int64_t V, const dvl_sampler *s, void *scratch,
                        const int32_t **idx, const double **prob);

/* One token for one position: argmax at temperature 0 (first maximum, as
 * torch.argmax), else a draw from dvl_sample_dist. *conf = the softmax
 * probability of the chosen token under the UNtempered, unfiltered logits
 * (DiffusionVL: probs_original; computed in double as Fast-dLLM's
 * float64 softmax). */
int32_t dvl_sample_token(const float *logits, int64_t V, const dvl_sampler *s, dvl_rng *rng,
                         void *scratch, float *conf);

/* Which of n positions to commit this step, given each position's
 * confidence, whether it is still masked, and the scheduled count k:
 * static: the min(k, masked) most confident masked positions;
 * dynamic: all masked with conf > tau if there are >= k of them, else as
 * static. Ties go to the lower position. Writes commit[n] (1/0), returns the
 * number committed. */
int dvl_select_commits(const float *conf, const uint8_t *masked, int n, int k, dvl_remask mode,
                       float tau, uint8_t *commit);

/* Reusable buffers for decoding blocks of up to cap_n positions over a
 * vocabulary of V. */
typedef struct dvl_decoder {
    dvl_sampler s;
    int64_t V;
    int cap_n;
    float *conf;       /* [cap_n] confidence of each position's proposal (0 if not masked) */
    int32_t *proposal; /* [cap_n] proposed token of each masked position */
    uint8_t *masked;   /* [cap_n] */
    uint8_t *commit;   /* [cap_n] what the last step committed */
    void *scratch;
} dvl_decoder;

dvl_decoder *dvl_decoder_new(const dvl_sampler *s, int64_t V, int cap_n, dvl_err *err);
void dvl_decoder_free(dvl_decoder *d);

/* One step on the block x[n] (positions equal to mask_id are masked) from
 * the model's logits [n, V] for the block: proposes a token for every
 * masked position, selects with the decoder's remasking rule and the
 * scheduled count k, and writes the committed tokens into x. Returns the
 * number committed, or -1 if n exceeds the decoder's capacity. */
int dvl_decode_step(dvl_decoder *d, int32_t *x, int n, int32_t mask_id, const float *logits,
                    int k, dvl_rng *rng);

#endif
