/* Deterministic random numbers: xoshiro256** seeded through splitmix64.
 * The whole state is four words, so it is saved in checkpoints as is and a
 * resumed run draws exactly the numbers the uninterrupted run would. */
#ifndef DVL_RNG_H
#define DVL_RNG_H

#include <stdint.h>

typedef struct dvl_rng {
    uint64_t s[4];
} dvl_rng;

void dvl_rng_seed(dvl_rng *r, uint64_t seed);
uint64_t dvl_rng_u64(dvl_rng *r);
/* Uniform in [0, 1) with 24 random bits (exactly representable in f32). */
float dvl_rng_uniform(dvl_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double dvl_rng_uniform_f64(dvl_rng *r);
/* Standard normal (Box-Muller, one value per call). */
float dvl_rng_normal(dvl_rng *r);
/* Fill with N(0, std^2) / U(lo, hi). */
void dvl_rng_fill_normal(dvl_rng *r, float *x, int64_t n, float std);
void dvl_rng_fill_uniform(dvl_rng *r, float *x, int64_t n, float lo, float hi);

#endif
