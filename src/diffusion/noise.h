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
 * Random numbers come from a dvl_rng in a fixed order. dvl_diff_make_batch
 * gives each sample its own stream, seeded by (the step's seed, the sample's
 * index in the global batch) through dvl_diff_sample_seed, so a sample's
 * noise does not depend on which rank or micro batch holds it, and a
 * resumed run draws what the uninterrupted run would. */
#ifndef DVL_DIFFUSION_NOISE_H
#define DVL_DIFFUSION_NOISE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/rng.h"

/* The seed of the stream of sample g (its index in the step's global batch)
 * when the step's noise seed is step_seed: a 64-bit mix of both, so nearby
 * steps and samples get unrelated streams. */
uint64_t dvl_diff_sample_seed(uint64_t step_seed, int64_t g);

/* Row g of the antithetic grid of G rows (samples) by nb cells (blocks):
 * v_b ~ U[0,1) one per cell, drawn in order b = 0..nb-1 (one
 * dvl_rng_uniform_f64 each), then with n = G * nb and i = g * nb + b,
 * u_b = (v_b / n + i / n) mod 1, so u_b lies in [i/n, (i+1)/n): the row
 * holds the stratum [g/G, (g+1)/G) cut into nb equal cells. Drawing rows
 * g = 0..G-1 of equal nb from one stream is exactly the grid of bd3lms
 * Diffusion._sample_t / DiffusionVL _apply_bd3lm_noise_embedding (`_eps_b`,
 * row-major flat index i). Without antithetic sampling u_b = v_b. */
void dvl_diff_sample_u(dvl_rng *rng, int64_t g, int64_t G, int64_t nb, bool antithetic,
                       double *u);

/* t_b = eps_min + (eps_max - eps_min) * u_b over row g's nb cells (u as
 * above), rounded once to f32. */
void dvl_diff_sample_t(dvl_rng *rng, int64_t g, int64_t G, int64_t nb, bool antithetic,
                       double eps_min, double eps_max, float *t);

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
