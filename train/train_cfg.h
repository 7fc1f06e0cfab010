/* dvl-train's configuration: the schema of every key (core/config.h does
 * the strict parsing: unknown keys, wrong types and out-of-range values are
 * errors naming the key) and the resolved values in one struct.
 *
 * A config file is nested JSON:
 *   {"model": {"path": "out/ar-vlm"}, "data": {"path": "out/data"},
 *    "train": {"stage": "2", "micro_batch": 4, "global_batch": 8},
 *    "optim": {"lr": 1e-5}, "diffusion": {"block_size": 8}, ...}
 * `dvl-train --help` prints every key with its type, default and range. */
#ifndef DVL_TRAIN_CFG_H
#define DVL_TRAIN_CFG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "tensor/tensor.h"

typedef enum train_stage { STAGE_AR = 0, STAGE_1, STAGE_2 } train_stage;
typedef enum train_sched { SCHED_COSINE = 0, SCHED_LINEAR, SCHED_CONSTANT } train_sched;
typedef enum train_device { TRAIN_CPU = 0, TRAIN_CUDA } train_device;
typedef enum train_precision { PREC_F32 = 0, PREC_TF32, PREC_BF16 } train_precision;

typedef struct train_cfg {
    /* model */
    const char *model_path;
    bool init_connector; /* the checkpoint may lack the connector (fresh stage 1) */
    bool reset_connector; /* re-initialise it after loading (stage 1 on a trained VLM) */
    int64_t connector_seed;
    /* data */
    const char *data_path;
    int64_t data_seed;
    int prefetch;
    /* run */
    train_stage stage;
    const char *out;  /* run folder: metrics.jsonl, ckpt/, final/ */
    int64_t epochs, max_steps;
    int64_t micro_batch, global_batch;
    int64_t seed;
    train_device device; /* cuda: one GPU per rank, chosen by the rank's place on its node */
    train_precision precision; /* of the GPU's matrix products (dvl_cuda_math) */
    int attention_precision;   /* a train_precision for attention's kernels; -1: precision's */
    dvl_bf16_copies bf16_copies; /* bf16 precision: dvl_params_keep_bf16's mode */
    bool bf16_activations;       /* bf16 precision: dvl_ctx_set_bf16_activations */
    /* optimiser and schedule */
    double lr, vision_lr, weight_decay, beta1, beta2, eps;
    double warmup_ratio;
    int64_t warmup_steps; /* >= 0 overrides warmup_ratio */
    train_sched schedule;
    double min_lr_ratio;
    double clip;          /* global grad-norm clip; 0: none */
    int64_t max_bad_steps; /* consecutive NaN/Inf steps before aborting */
    bool vision_trainable; /* stage 2 (and ar): train the tower with vision_lr */
    bool checkpoint_layers; /* recompute each LM layer during backward */
    /* block diffusion (stage 2) */
    int64_t block_size;
    int64_t mask_token_id; /* -1: the model's default (Qwen 151671, LLaDA 126336) */
    int64_t eos_token_id;  /* -1: Qwen <|im_end|> 151645, LLaDA <|eot_id|> 126348 */
    double eps_min, eps_max;
    bool antithetic, block_align_eos, shift_logits;
    /* held-out evaluation (eval.path NULL: none) */
    const char *eval_path;
    int64_t eval_every;       /* steps between evaluations; 0: at the end only */
    bool eval_at_start;       /* also the starting weights (step 0) of a fresh run */
    int64_t eval_micro_batch; /* 0: micro_batch */
    int64_t eval_seed;        /* stage 2: the held-out set's noise */
    /* checkpoints, logging, dist */
    int64_t ckpt_every, keep_last;
    int64_t log_every;
    bool log_mfu; /* measure the peak, report MFU */
    int64_t bucket_mb;
    int64_t check_every;
    bool nccl; /* cuda, several ranks: NCCL all-reduce when every rank has a GPU of its own */
    bool zero1; /* several ranks: optimizer state partitioned over the ranks (ZeRO-1) */
    /* testing the NaN path: steps [from, from + steps) get a NaN gradient */
    int64_t nonfinite_from, nonfinite_steps;
} train_cfg;

extern const dvl_cfg_key TRAIN_KEYS[];
extern const int TRAIN_N_KEYS;

/* Read every key of c into out (strings point into c). */
int train_cfg_resolve(dvl_cfg *c, train_cfg *out, dvl_err *err);

#endif
