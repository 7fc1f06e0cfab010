/* Seeded parameter initialisation.
 *
 * Each parameter draws from its own stream, seeded by (seed, its name) and
 * split in fixed 1 Mi-element pieces with their own streams, so a value
 * depends only on the seed, the name and its index: not on the declaration
 * order, other parameters or the thread count. */
#ifndef DVL_MODELS_INIT_H
#define DVL_MODELS_INIT_H

#include <stdint.h>

#include "tensor/tensor.h"

/* N(0, std^2). */
void dvl_init_normal(dvl_tensor *t, uint64_t seed, float std);
/* U(-bound, bound). */
void dvl_init_uniform(dvl_tensor *t, uint64_t seed, float bound);
void dvl_init_const(dvl_tensor *t, float v);

/* torch.nn.Linear's default initialisation (reset_parameters): weight
 * kaiming_uniform_(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)), and bias
 * U(-1/sqrt(in), 1/sqrt(in)); w is [out, in], b may be NULL. */
void dvl_init_linear_torch(dvl_tensor *w, dvl_tensor *b, uint64_t seed);

#endif
