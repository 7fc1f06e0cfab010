/* The generation tests' fixtures, shared by test_generate.c (CPU) and
 * test_cuda.c (the same decoding on the GPU against the CPU). */
#ifndef DVL_TESTS_GEN_FIXTURE_H
#define DVL_TESTS_GEN_FIXTURE_H

#include <stdint.h>

#include "models/model.h"

#define TG_VOCAB 64 /* vocabulary of the tiny generation model */
#define TG_MASK 63  /* its mask token */

/* A tiny random Qwen2 (2 layers, GQA, q/k/v biases). Its weights (std 0.3)
 * make the logits peaked: greedy decoding compares tokens, and two f32
 * computations that differ only in summation order can pick different
 * tokens only where the top two logits are tied to within rounding, which
 * on the seeds the tests use does not happen (a failure names the step; try
 * the seed's neighbours before suspecting the code). */
void tg_tiny_model(dvl_model *m, uint64_t seed);

/* P random ids below TG_MASK (never the mask). */
int32_t *tg_prompt(int64_t P, uint64_t seed);

/* tests/data/ref/vlm (DVL_TEST_DATA) with peaked random LM weights (seed
 * 17), a prompt of 3 ids, the image's placeholders expanded (one per
 * patch), 2 ids (seed 18; the image id appears nowhere else), and one
 * image of uniform [-1, 1] pixels (seed 19). */
typedef struct tg_vlm {
    dvl_model m;
    int32_t *prompt;
    int64_t P;
    float *px;
} tg_vlm;
void tg_vlm_open(tg_vlm *f);
void tg_vlm_free(tg_vlm *f);

#endif
