/* AdamW over the parameter store's flat buffers, fp32 moments.
 *
 * Follows torch.optim.AdamW (decoupled weight decay, Loshchilov & Hutter):
 *   p <- p - lr * wd * p
 *   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
 *   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * Parameter groups: each parameter has a learning-rate multiplier (e.g. the
 * vision tower's own lr in stage 2) and a weight-decay switch (off for norms
 * and biases, i.e. 1-D parameters, by default).
 *
 * ZeRO-1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
 * Training Trillion Parameter Models", stage 1: optimizer state
 * partitioning): the flat gradient buffer p->grad is cut into `world`
 * contiguous shards (dvl_adamw_shard) and rank r's optimizer holds m and v
 * for shard r only (dvl_adamw_new_shard), a world-th of the moments. Its
 * step updates only the parameter elements whose gradient slot lies in the
 * shard, the per-parameter lr multiplier and decay switch applied element
 * by element, so the shards' steps together are the full step bit for bit;
 * the data-parallel trainer then all-gathers the updated weights
 * (dist/dist.h). An unsharded optimizer is the shard [0, numel_grad). */
#ifndef DVL_ADAMW_H
#define DVL_ADAMW_H

#include "tensor/tensor.h"

typedef struct dvl_adamw {
    dvl_params *p;
    float beta1, beta2, eps, weight_decay;
    int64_t step; /* updates done so far */
    /* The gradient elements [lo, hi) of p->grad the moments cover:
     * [0, numel_grad) unless sharded (ZeRO-1). */
    int64_t lo, hi;
    float *m, *v; /* hi - lo floats each: m[j - lo] belongs to p->grad[j] */
    float *lr_mult; /* per parameter (p->n), 1 by default */
    bool *decay;    /* per parameter, true for tensors of 2+ dims by default */
    /* Device store: the tables of the one-launch step (dvl_cuda_adamw_multi),
     * in device memory, made at the first step and again whenever what they
     * were made from (the groups, the buffers' addresses) has changed. */
    struct adamw_tables *tables;
} dvl_adamw;

/* Moments for the trainable parameters of an allocated store. */
dvl_adamw *dvl_adamw_new(dvl_params *p, float beta1, float beta2, float eps, float weight_decay,
                         dvl_err *err);
/* ZeRO-1: moments for the gradient elements [lo, hi) only (0 <= lo <= hi
 * <= p->numel_grad; an empty shard is allowed). */
dvl_adamw *dvl_adamw_new_shard(dvl_params *p, int64_t lo, int64_t hi, float beta1, float beta2,
                               float eps, float weight_decay, dvl_err *err);
/* Shard `rank` of `world` of a gradient buffer of n floats, [*lo, *hi):
 * S = ceil(n / world) rounded up to 16 floats (64 bytes, like the store's
 * slots), rank r taking [r S, (r + 1) S) clipped to n, so every shard but
 * the last ones has S elements and the last may be shorter (or, for tiny n,
 * empty). A shard boundary may cut a parameter. */
void dvl_adamw_shard(int64_t n, int world, int rank, int64_t *lo, int64_t *hi);
/* Bytes of moment memory the optimizer holds (m and v: 2 (hi - lo) floats). */
size_t dvl_adamw_state_bytes(const dvl_adamw *o);
void dvl_adamw_free(dvl_adamw *o);
/* Set lr multiplier and decay for parameters whose name starts with prefix;
 * returns how many matched. */
int dvl_adamw_set_group(dvl_adamw *o, const char *prefix, float lr_mult, bool decay);
/* The state of src (step count, m and v) into dst, an optimizer over a
 * store of the same layout (e.g. a host copy of a device store made by
 * dvl_params_to_device), whatever the devices of the two: checkpoints of a
 * device run are written from and read into host twins this way. dst takes
 * the moments of its own range [lo, hi), which src's must contain (a ZeRO-1
 * shard takes its part of a whole optimizer read from a checkpoint). The
 * hyperparameters and groups of dst stay as they are. */
int dvl_adamw_copy_state(dvl_adamw *dst, const dvl_adamw *src, dvl_err *err);
/* One update with learning rate lr using gscale * p->grad[lo, hi): the
 * parameter elements of the optimizer's range (all trainable ones unless
 * sharded). gscale is the gradient clip's factor (1 for none), applied as
 * each gradient is read: the same result, to the bit, as
 * dvl_grad_scale_range(gscale) first, without that pass over the gradients
 * (which stay unscaled). */
void dvl_adamw_step(dvl_adamw *o, float lr, float gscale);

/* Global L2 norm of all trainable gradients (double accumulation, fixed
 * order: independent of the thread count). */
double dvl_grad_norm(const dvl_params *p);
/* Multiply all gradients by s. */
void dvl_grad_scale(dvl_params *p, float s);
/* Whether any gradient is NaN or Inf. */
bool dvl_grad_nonfinite(const dvl_params *p);

/* The same over the gradient elements [lo, hi) only (a ZeRO-1 shard): the
 * sum of squares (double, fixed 4096-element chunks from lo in order; the
 * ranks' sums added give the global norm), scaling, the NaN/Inf test. On a
 * device store NaN stands for a device error, as in dvl_grad_norm. */
double dvl_grad_sumsq_range(const dvl_params *p, int64_t lo, int64_t hi);
void dvl_grad_scale_range(dvl_params *p, int64_t lo, int64_t hi, float s);
bool dvl_grad_nonfinite_range(const dvl_params *p, int64_t lo, int64_t hi);

#endif
