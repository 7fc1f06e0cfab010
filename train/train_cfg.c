/* dvl-train's key table and its resolution into train_cfg. */
#include "train_cfg.h"

#define BIG 9007199254740992.0 /* 2^53: "no upper bound" for int keys */

/* Defaults are the DiffusionVL-Qwen stage-2 recipe where one exists
 * (train.py / the paper's appendix): AdamW(0.9, 0.999, 1e-8), warmup 3%,
 * cosine to 0, clip 1.0, block size 8, t in [1e-3, 1], antithetic t,
 * block-aligned EOS, unshifted logits. */
const dvl_cfg_key TRAIN_KEYS[] = {
    {"model.path", DVL_CFG_STRING, .required = true,
     .help = "model directory (config.json + model.safetensors) to start from"},
    {"model.init_connector", DVL_CFG_BOOL, .def = "false",
     .help = "the checkpoint may lack model.mm_projector.* (fresh stage 1): initialise it"},
    {"model.reset_connector", DVL_CFG_BOOL, .def = "false",
     .help = "re-initialise the connector after loading (stage 1 on a trained VLM)"},
    {"model.connector_seed", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "seed of a freshly initialised connector"},
    {"data.path", DVL_CFG_STRING, .required = true, .help = "prepared dataset (dvl-prep build)"},
    {"data.seed", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "shuffle seed of the loader"},
    {"data.prefetch", DVL_CFG_INT, .def = "2", .ranged = true, .min = 1, .max = 64,
     .help = "batches the loader prepares ahead"},
    {"train.stage", DVL_CFG_ENUM, .def = "ar", .choices = "ar|1|2",
     .help = "ar: AR finetuning; 1: connector alignment; 2: block diffusion (--stage)"},
    {"train.out", DVL_CFG_STRING, .def = "out/train",
     .help = "run folder: metrics.jsonl, ckpt/step-*, final/ (a model directory)"},
    {"train.epochs", DVL_CFG_INT, .def = "1", .ranged = true, .min = 1, .max = 1000000,
     .help = "passes over the data"},
    {"train.max_steps", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "stop after this many optimizer steps (0: train.epochs decides)"},
    {"train.micro_batch", DVL_CFG_INT, .def = "1", .ranged = true, .min = 1, .max = 65536,
     .help = "samples per forward/backward on one rank"},
    {"train.global_batch", DVL_CFG_INT, .def = "1", .ranged = true, .min = 1, .max = 1 << 24,
     .help = "samples per optimizer step over all ranks (= ranks x micro_batch x accumulation)"},
    {"train.seed", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "seed of the diffusion noise (t and masks)"},
    {"train.device", DVL_CFG_ENUM, .def = "cpu", .choices = "cpu|cuda",
     .help = "where the step runs; cuda: one GPU per rank (local rank mod GPUs on the node)"},
    {"train.precision", DVL_CFG_ENUM, .def = "f32", .choices = "f32|tf32|bf16",
     .help = "GPU matrix products: f32, TF32 tensor cores, or bf16 operands with f32 "
             "accumulation, attention's products too (tf32: wmma kernels; bf16: mma.sync "
             "kernels); f32 weights, moments and gradients; cpu: f32 only"},
    {"train.attention_precision", DVL_CFG_ENUM, .def = "auto", .choices = "auto|f32|tf32|bf16",
     .help = "the tiled attention kernels' products when they should differ from "
             "train.precision's (auto: the same): e.g. bf16 products with the TF32 attention "
             "kernels, as a baseline for the bf16 ones or a fallback; cpu: auto or f32"},
    {"train.bf16_weight_copies", DVL_CFG_ENUM, .def = "frozen", .choices = "none|frozen|all",
     .help = "with train.precision bf16: bf16 copies of weights kept on the GPU, read by the "
             "products instead of rounding the f32 weight in each: of the frozen weights (the "
             "LM in stage 1, a frozen tower; 2 bytes each), of all (trainable ones made again "
             "after each optimizer step; 2 bytes per parameter), or none; same results"},
    {"train.bf16_activations", DVL_CFG_BOOL, .def = "true",
     .help = "with train.precision bf16: keep the MLP's [gate | up] and SwiGLU outputs (and "
             "their gradients) in bf16, half the bytes of f32 (one op, dvl_swiglu_mlp); false: "
             "f32 activations, bf16 only as product operands"},
    {"optim.lr", DVL_CFG_FLOAT, .def = "1e-5", .ranged = true, .min = 0, .max = 10,
     .help = "peak learning rate (LM and connector)"},
    {"optim.vision_lr", DVL_CFG_FLOAT, .def = "2e-6", .ranged = true, .min = 0, .max = 10,
     .help = "peak learning rate of the vision tower when train.vision_trainable"},
    {"optim.weight_decay", DVL_CFG_FLOAT, .def = "0", .ranged = true, .min = 0, .max = 10,
     .help = "decoupled weight decay (not on norms and biases)"},
    {"optim.beta1", DVL_CFG_FLOAT, .def = "0.9", .ranged = true, .min = 0, .max = 0.999999},
    {"optim.beta2", DVL_CFG_FLOAT, .def = "0.999", .ranged = true, .min = 0, .max = 0.999999999},
    {"optim.eps", DVL_CFG_FLOAT, .def = "1e-8", .ranged = true, .min = 0, .max = 1},
    {"optim.warmup_ratio", DVL_CFG_FLOAT, .def = "0.03", .ranged = true, .min = 0, .max = 1,
     .help = "linear warmup over ceil(ratio x steps) steps"},
    {"optim.warmup_steps", DVL_CFG_INT, .def = "-1", .ranged = true, .min = -1, .max = BIG,
     .help = "warmup steps; >= 0 overrides optim.warmup_ratio"},
    {"optim.schedule", DVL_CFG_ENUM, .def = "cosine", .choices = "cosine|linear|constant",
     .help = "decay after warmup"},
    {"optim.min_lr_ratio", DVL_CFG_FLOAT, .def = "0", .ranged = true, .min = 0, .max = 1,
     .help = "floor of the decay as a fraction of the peak"},
    {"optim.clip", DVL_CFG_FLOAT, .def = "1.0", .ranged = true, .min = 0, .max = 1e6,
     .help = "global gradient-norm clip (0: none)"},
    {"optim.max_bad_steps", DVL_CFG_INT, .def = "5", .ranged = true, .min = 0, .max = 1000000,
     .help = "abort after more than this many consecutive NaN/Inf steps"},
    {"train.vision_trainable", DVL_CFG_BOOL, .def = "false",
     .help = "stages 2 and ar: train the vision tower (at optim.vision_lr)"},
    {"train.checkpoint_layers", DVL_CFG_BOOL, .def = "false",
     .help = "activation checkpointing: keep the input only of each LM layer and of each "
             "layer of a trainable vision tower, and recompute the layer during backward "
             "(same gradients, less memory, one more forward)"},
    {"diffusion.block_size", DVL_CFG_INT, .def = "8", .ranged = true, .min = 1, .max = 4096,
     .help = "block size B of block diffusion"},
    {"diffusion.mask_token_id", DVL_CFG_INT, .def = "-1", .ranged = true, .min = -1,
     .max = 2147483647.0,
     .help = "mask token (-1: Qwen 151671, LLaDA 126336; the synthetic tokenizer's <|mask|>)"},
    {"diffusion.eos_token_id", DVL_CFG_INT, .def = "-1", .ranged = true, .min = -1,
     .max = 2147483647.0,
     .help = "block-aligned EOS token (-1: Qwen <|im_end|> 151645, LLaDA <|eot_id|> 126348)"},
    {"diffusion.eps_min", DVL_CFG_FLOAT, .def = "1e-3", .ranged = true, .min = 0, .max = 1,
     .help = "smallest noise level t"},
    {"diffusion.eps_max", DVL_CFG_FLOAT, .def = "1", .ranged = true, .min = 0, .max = 1,
     .help = "largest noise level t"},
    {"diffusion.antithetic", DVL_CFG_BOOL, .def = "true",
     .help = "stratified t over the batch x blocks grid"},
    {"diffusion.block_align_eos", DVL_CFG_BOOL, .def = "true",
     .help = "pad each answer with supervised EOS to a block boundary"},
    {"diffusion.shift_logits", DVL_CFG_BOOL, .def = "false",
     .help = "score logits[i] against token i+1 (Dream-style conversions)"},
    {"eval.path", DVL_CFG_STRING,
     .help = "held-out dataset (dvl-prep build, built like data.path): the stage's training "
             "loss over all of it, without gradients, every eval.every steps and at the end, "
             "into TRAIN.OUT/eval.jsonl (unset: no evaluation)"},
    {"eval.every", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "evaluate every N steps (0: at the end only)"},
    {"eval.at_start", DVL_CFG_BOOL, .def = "false",
     .help = "also evaluate the starting weights (step 0) of a fresh run"},
    {"eval.micro_batch", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = 65536,
     .help = "samples per forward on one rank (0: train.micro_batch)"},
    {"eval.seed", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "stage 2: seed of the held-out samples' noise (t and masks), the same at every "
             "evaluation"},
    {"ckpt.every", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "checkpoint every N steps (0: only at the end)"},
    {"ckpt.keep_last", DVL_CFG_INT, .def = "3", .ranged = true, .min = 0, .max = 1000000,
     .help = "checkpoints kept (0: all)"},
    {"log.every", DVL_CFG_INT, .def = "1", .ranged = true, .min = 1, .max = BIG,
     .help = "progress line every N steps (metrics.jsonl gets every step)"},
    {"log.mfu", DVL_CFG_BOOL, .def = "true",
     .help = "measure each rank's matrix-product peak at start (one product in the run's "
             "arithmetic) and report model FLOPs per second as a fraction of it (MFU)"},
    {"dist.bucket_mb", DVL_CFG_INT, .def = "25", .ranged = true, .min = 1, .max = 4096,
     .help = "gradient all-reduce bucket size in MiB"},
    {"dist.check_every", DVL_CFG_INT, .def = "100", .ranged = true, .min = 0, .max = BIG,
     .help = "compare the ranks' weights (checksum) every N steps (0: never)"},
    {"dist.nccl", DVL_CFG_BOOL, .def = "true",
     .help = "cuda: all-reduce gradients with NCCL when every rank has a GPU of its own, or "
             "an NCCL_HOSTID of its own (false, or ranks sharing a GPU: MPI through host "
             "memory)"},
    {"dist.zero1", DVL_CFG_BOOL, .def = "false",
     .help = "ZeRO-1: each rank keeps the AdamW moments of a 1/ranks shard of the trainable "
             "parameters only (gradients reduced to the shard owners, updated weights "
             "gathered); no effect on one rank"},
    {"debug.nonfinite_from", DVL_CFG_INT, .def = "-1", .ranged = true, .min = -1, .max = BIG,
     .help = "testing: poison the gradient with NaN from this step (1-based; -1: never)"},
    {"debug.nonfinite_steps", DVL_CFG_INT, .def = "0", .ranged = true, .min = 0, .max = BIG,
     .help = "testing: for this many steps"},
};
const int TRAIN_N_KEYS = (int)(sizeof TRAIN_KEYS / sizeof *TRAIN_KEYS);

int train_cfg_resolve(dvl_cfg *c, train_cfg *o, dvl_err *err)
{
    o->model_path = dvl_cfg_str(c, "model.path");
    o->init_connector = dvl_cfg_bool(c, "model.init_connector");
    o->reset_connector = dvl_cfg_bool(c, "model.reset_connector");
    o->connector_seed = dvl_cfg_int(c, "model.connector_seed");
    o->data_path = dvl_cfg_str(c, "data.path");
    o->data_seed = dvl_cfg_int(c, "data.seed");
    o->prefetch = (int)dvl_cfg_int(c, "data.prefetch");
    o->stage = (train_stage)dvl_cfg_enum(c, "train.stage");
    o->out = dvl_cfg_str(c, "train.out");
    o->epochs = dvl_cfg_int(c, "train.epochs");
    o->max_steps = dvl_cfg_int(c, "train.max_steps");
    o->micro_batch = dvl_cfg_int(c, "train.micro_batch");
    o->global_batch = dvl_cfg_int(c, "train.global_batch");
    o->seed = dvl_cfg_int(c, "train.seed");
    o->device = (train_device)dvl_cfg_enum(c, "train.device");
    o->precision = (train_precision)dvl_cfg_enum(c, "train.precision");
    o->attention_precision = dvl_cfg_enum(c, "train.attention_precision") - 1; /* auto: -1 */
    o->bf16_copies = (dvl_bf16_copies)dvl_cfg_enum(c, "train.bf16_weight_copies");
    o->bf16_activations = dvl_cfg_bool(c, "train.bf16_activations");
    o->lr = dvl_cfg_float(c, "optim.lr");
    o->vision_lr = dvl_cfg_float(c, "optim.vision_lr");
    o->weight_decay = dvl_cfg_float(c, "optim.weight_decay");
    o->beta1 = dvl_cfg_float(c, "optim.beta1");
    o->beta2 = dvl_cfg_float(c, "optim.beta2");
    o->eps = dvl_cfg_float(c, "optim.eps");
    o->warmup_ratio = dvl_cfg_float(c, "optim.warmup_ratio");
    o->warmup_steps = dvl_cfg_int(c, "optim.warmup_steps");
    o->schedule = (train_sched)dvl_cfg_enum(c, "optim.schedule");
    o->min_lr_ratio = dvl_cfg_float(c, "optim.min_lr_ratio");
    o->clip = dvl_cfg_float(c, "optim.clip");
    o->max_bad_steps = dvl_cfg_int(c, "optim.max_bad_steps");
    o->vision_trainable = dvl_cfg_bool(c, "train.vision_trainable");
    o->checkpoint_layers = dvl_cfg_bool(c, "train.checkpoint_layers");
    o->block_size = dvl_cfg_int(c, "diffusion.block_size");
    o->mask_token_id = dvl_cfg_int(c, "diffusion.mask_token_id");
    o->eos_token_id = dvl_cfg_int(c, "diffusion.eos_token_id");
    o->eps_min = dvl_cfg_float(c, "diffusion.eps_min");
    o->eps_max = dvl_cfg_float(c, "diffusion.eps_max");
    o->antithetic = dvl_cfg_bool(c, "diffusion.antithetic");
    o->block_align_eos = dvl_cfg_bool(c, "diffusion.block_align_eos");
    o->shift_logits = dvl_cfg_bool(c, "diffusion.shift_logits");
    o->eval_path = dvl_cfg_str(c, "eval.path");
    o->eval_every = dvl_cfg_int(c, "eval.every");
    o->eval_at_start = dvl_cfg_bool(c, "eval.at_start");
    o->eval_micro_batch = dvl_cfg_int(c, "eval.micro_batch");
    o->eval_seed = dvl_cfg_int(c, "eval.seed");
    o->ckpt_every = dvl_cfg_int(c, "ckpt.every");
    o->keep_last = dvl_cfg_int(c, "ckpt.keep_last");
    o->log_every = dvl_cfg_int(c, "log.every");
    o->log_mfu = dvl_cfg_bool(c, "log.mfu");
    o->bucket_mb = dvl_cfg_int(c, "dist.bucket_mb");
    o->check_every = dvl_cfg_int(c, "dist.check_every");
    o->nccl = dvl_cfg_bool(c, "dist.nccl");
    o->zero1 = dvl_cfg_bool(c, "dist.zero1");
    o->nonfinite_from = dvl_cfg_int(c, "debug.nonfinite_from");
    o->nonfinite_steps = dvl_cfg_int(c, "debug.nonfinite_steps");
    if (dvl_cfg_check(c, err))
        return err->code;
    /* Relations between keys (each key's own range is the schema's). */
    if (o->eps_min > o->eps_max)
        return dvl_errf(err, DVL_EINVAL,
                        "diffusion.eps_min: %g is above diffusion.eps_max %g", o->eps_min,
                        o->eps_max);
    if (o->precision != PREC_F32 && o->device != TRAIN_CUDA)
        return dvl_errf(err, DVL_EINVAL,
                        "train.precision: %s needs train.device cuda (the CPU computes in f32)",
                        o->precision == PREC_TF32 ? "tf32" : "bf16");
    if (o->attention_precision > PREC_F32 && o->device != TRAIN_CUDA)
        return dvl_errf(err, DVL_EINVAL,
                        "train.attention_precision: %s needs train.device cuda (the CPU computes "
                        "in f32)",
                        o->attention_precision == PREC_TF32 ? "tf32" : "bf16");
    if (o->eval_path && !o->eval_path[0])
        o->eval_path = NULL; /* "" as unset: --set eval.path= turns evaluation off */
    if (!o->eval_path && (o->eval_every > 0 || o->eval_at_start))
        return dvl_errf(err, DVL_EINVAL, "%s: set, but eval.path (the held-out dataset) is not",
                        o->eval_every > 0 ? "eval.every" : "eval.at_start");
    if (o->eval_micro_batch == 0)
        o->eval_micro_batch = o->micro_batch;
    if (o->global_batch % o->micro_batch)
        return dvl_errf(err, DVL_EINVAL,
                        "train.global_batch: %lld is not a multiple of train.micro_batch %lld",
                        (long long)o->global_batch, (long long)o->micro_batch);
    return DVL_OK;
}
