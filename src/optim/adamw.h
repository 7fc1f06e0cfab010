/* AdamW over the parameter store's flat buffers, fp32 moments.
 *
 * Follows torch.optim.AdamW (decoupled weight decay, Loshchilov & Hutter):
 *   p <- p - lr * wd * p
 *   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
 *   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * Parameter groups: each parameter has a learning-rate multiplier (e.g. the
 * vision tower's own lr in stage 2) and a weight-decay switch (off for norms
 * and biases, i.e. 1-D parameters, by default). */
#ifndef DVL_ADAMW_H
#define DVL_ADAMW_H

#include "tensor/tensor.h"

typedef struct dvl_adamw {
    dvl_params *p;
    float beta1, beta2, eps, weight_decay;
    int64_t step; /* updates done so far */
    float *m, *v; /* numel_grad floats each, same layout as p->grad */
    float *lr_mult; /* per parameter (p->n), 1 by default */
    bool *decay;    /* per parameter, true for tensors of 2+ dims by default */
} dvl_adamw;

/* Moments for the trainable parameters of an allocated store. */
dvl_adamw *dvl_adamw_new(dvl_params *p, float beta1, float beta2, float eps, float weight_decay,
                         dvl_err *err);
void dvl_adamw_free(dvl_adamw *o);
/* Set lr multiplier and decay for parameters whose name starts with prefix;
 * returns how many matched. */
int dvl_adamw_set_group(dvl_adamw *o, const char *prefix, float lr_mult, bool decay);
/* The state of src (step count, m and v) into dst, an optimizer over a
 * store of the same layout (e.g. a host copy of a device store made by
 * dvl_params_to_device), whatever the devices of the two: checkpoints of a
 * device run are written from and read into host twins this way. The
 * hyperparameters and groups of dst stay as they are. */
int dvl_adamw_copy_state(dvl_adamw *dst, const dvl_adamw *src, dvl_err *err);
/* One update with learning rate lr using p->grad. */
void dvl_adamw_step(dvl_adamw *o, float lr);

/* Global L2 norm of all trainable gradients (double accumulation, fixed
 * order: independent of the thread count). */
double dvl_grad_norm(const dvl_params *p);
/* Multiply all gradients by s. */
void dvl_grad_scale(dvl_params *p, float s);
/* Whether any gradient is NaN or Inf. */
bool dvl_grad_nonfinite(const dvl_params *p);

#endif
