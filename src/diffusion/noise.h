/* The block diffusion forward process, as DiffusionVL trains it (BD3-LM with
 * the log-linear schedule): one noise level t per (sample, block), drawn
 * antithetically over the batch x blocks grid, and every supervised token of
 * a block replaced by the mask token with probability t.
 *
 * References (docs/diffusion.md has the details):
 *   hustvl/DiffusionVL train/llava/model/language_model/llava_diffusionvl_qwen.py
 *     DiffusionVLQwenForCausalLM._apply_bd3lm_noise_embedding
 *   kuleshov-group/bd3lms diffusion.py Diffusion._sample_t, Diffusion.q_xt
 *   DiffusionVL bd3lm_utils.py LogLinearNoise: move chance p = t, loss
 *     scale -1/t.
 *
 * Random numbers come from a dvl_rng in a fixed order, so a run is
 * deterministic and a resumed one (state restored from the checkpoint) draws
 * what the uninterrupted run would. */
#ifndef DVL_DIFFUSION_NOISE_H
#define DVL_DIFFUSION_NOISE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/rng.h"

/* n stratified uniforms: v_i ~ U[0,1) one per cell, drawn in order i = 0..n-1
 * (one dvl_rng_uniform_f64 each), then u_i = (v_i / n + i / n) mod 1, so u_i
 * lies in [i/n, (i+1)/n): every interval of width 1/n holds exactly one u.
 * Without antithetic sampling u_i = v_i. (bd3lms Diffusion._sample_t;
 * DiffusionVL _apply_bd3lm_noise_embedding, `_eps_b`.) */
void dvl_diff_sample_u(dvl_rng *rng, int64_t n, bool antithetic, double *u);

/* t_i = eps_min + (eps_max - eps_min) * u_i over n cells (u as above),
 * rounded once to f32. For block diffusion the cells are the batch x blocks
 * grid in row-major order (cell s * nblocks + b). */
void dvl_diff_sample_t(dvl_rng *rng, int64_t n, bool antithetic, double eps_min, double eps_max,
                       float *t);

/* q(x_t | x_0) for one sequence of len tokens: each supervised position
 * (labels[i] != DVL_IGNORE_INDEX) draws r ~ U[0,1) (dvl_rng_uniform, in
 * position order; unsupervised positions draw nothing) and is masked when
 * r <= t[i / block_size] (`<=` as in bd3lms q_xt and DiffusionVL's
 * `move_probabilities <= move_chance`). xt[i] = mask_id where masked, x0[i]
 * elsewhere; masked[i] = 1 / 0. xt may equal x0. Returns the number masked. */
int64_t dvl_diff_mask(dvl_rng *rng, const int32_t *x0, const int32_t *labels, int64_t len,
                      const float *t, int block_size, int32_t mask_id, int32_t *xt,
                      uint8_t *masked);

#endif
