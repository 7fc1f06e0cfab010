/* dvl-train: stage 1 (connector alignment), stage 2 (block diffusion
 * finetuning) and AR finetuning of a model directory on a prepared dataset,
 * as one process or data-parallel under mpirun.
 *
 *   [mpirun -np N] dvl-train --stage 1|2|ar --config configs/X.json
 *                            [--set key=value ...] [--resume DIR|latest]
 *
 * One optimizer step: accumulation = global_batch / (ranks x micro_batch)
 * micro batches per rank, each forward + backward into the flat gradient
 * buffer; the gradients averaged over the ranks (bucketed all-reduce, each
 * bucket started during the last micro batch's backward as soon as its
 * parameters' gradients are complete); NaN/Inf steps skipped; global-norm clip; AdamW at the
 * scheduled learning rate. Rank 0 writes TRAIN.OUT/metrics.jsonl (a line a
 * step), the progress line, the checkpoints TRAIN.OUT/ckpt/step-* and at
 * the end TRAIN.OUT/final (config.json + model.safetensors, Hugging Face
 * names: dvl-generate and transformers load it).
 *
 * eval.path: the stage's loss over a held-out dataset every eval.every
 * steps and at the end, without gradients, into TRAIN.OUT/eval.jsonl
 * (evaluate(): fixed noise, no training state touched).
 *
 * Stage 2 noise: every sample draws from its own stream, seeded by
 * (train.seed, step, its index in the step's global batch), and its noise
 * levels are its row of the antithetic grid over the global batch
 * (diffusion/batch.h dvl_diff_draw), so the noise does not depend on the
 * number of ranks or on the micro batch that holds the sample.
 *
 * Exact resume: the noise is a function of the step, the learning rate
 * too, and the checkpoint holds weights, AdamW moments and every rank's
 * loader position, so a resumed run repeats the uninterrupted one bit for
 * bit.
 *
 * dist.zero1 (ZeRO-1, several ranks): each rank holds the AdamW moments of
 * one contiguous shard of the gradient buffer only (optim/adamw.h
 * dvl_adamw_shard); the buckets are reduced to the shard owners during
 * backward as above, the global grad norm is the sum of the shards' sums
 * of squares, each rank clips and steps its shard, and the updated weights
 * are gathered to every rank (dist/dist.h). Checkpoints keep the same
 * format: rank 0 gathers the whole moments to write them, and a resumed
 * rank takes its shard of them, so a run resumes with or without ZeRO-1.
 *
 * train.device = cuda: each rank takes GPU (local rank mod GPUs on its
 * node); the parameter store moves there in place (the model's tensors
 * follow), with the gradients, the AdamW moments and the step's context;
 * the batch's pixels are uploaded through the context's pinned staging
 * (ids, labels and masks stay host arrays that the ops upload the same
 * way); gradients are averaged with NCCL (or, ranks sharing a GPU, MPI
 * through host memory). Checkpoints and the final export go through a
 * host twin of the store and optimizer (made on first use, then reused).
 *
 * Errors: one line on stderr, exit 1 (2 for bad usage). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "diffusion/noise.h"
#include "dist/dist.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/dataset.h"
#include "optim/adamw.h"
#include "train_cfg.h"
#include "train_step.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

#define PROG "dvl-train"
#define MAX_SETS 256

/* --help: the options and every key, on stdout. */
static int usage(void)
{
    printf("usage: [mpirun -np N] " PROG " --stage 1|2|ar --config FILE.json\n"
           "                 [--set key=value ...] [--resume DIR|latest]\n"
           "  --stage     ar: AR finetuning (LM and connector, the vision tower too with\n"
           "              train.vision_trainable; next-token loss);\n"
           "              1: connector alignment (LM and vision frozen);\n"
           "              2: block diffusion finetuning (BD3-LM objective)\n"
           "              (same as --set train.stage=...)\n"
           "  --config    JSON configuration (keys below; unknown keys are errors)\n"
           "  --set       override keys (one or more key=value), applied after the\n"
           "              file, in order\n"
           "  --resume    continue from a checkpoint folder (or a ckpt root), or\n"
           "              'latest' under TRAIN.OUT/ckpt; the checkpoint's own\n"
           "              configuration is used, with --set applied on top\n"
           "keys:\n");
    dvl_cfg_print_help(TRAIN_KEYS, TRAIN_N_KEYS, stdout);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* mkdir -p */
static int make_dirs(const char *path, dvl_err *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return dvl_errf(err, DVL_EINVAL, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST)
                return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", buf, strerror(errno));
            *p = c;
            if (!c)
                break;
        }
    }
    return DVL_OK;
}

/* ------------------------------------------------------------ schedule */

/* Learning rate of update `step` (0-based) out of `total`, as transformers'
 * get_cosine_schedule_with_warmup / get_linear_schedule_with_warmup
 * (optimization.py): lr * step / W during the W warmup steps (so update 0
 * runs at 0 when W > 0), then cosine 0.5 (1 + cos(pi p)) or linear (1 - p)
 * decay over p = (step - W) / (total - W), floored at min_lr_ratio. W =
 * ceil(warmup_ratio x total) (TrainingArguments.get_warmup_steps). */
static int64_t warmup_steps(const train_cfg *c, int64_t total)
{
    return c->warmup_steps >= 0 ? c->warmup_steps : (int64_t)ceil(c->warmup_ratio * (double)total);
}

static double lr_at(const train_cfg *c, int64_t step, int64_t total)
{
    int64_t W = warmup_steps(c, total);
    if (step < W)
        return c->lr * (double)step / (double)W;
    double p = total > W ? (double)(step - W) / (double)(total - W) : 1.0, f;
    switch (c->schedule) {
    case SCHED_COSINE: f = 0.5 * (1.0 + cos(M_PI * p)); break;
    case SCHED_LINEAR: f = 1.0 - p; break;
    default: f = 1.0; break;
    }
    if (f < 0)
        f = 0;
    return c->lr * (c->min_lr_ratio + (1.0 - c->min_lr_ratio) * f);
}

/* ------------------------------------------------------------ the run */

typedef struct run {
    dvl_dist d;
    dvl_cfg *cfgv;
    train_cfg c;
    char *cfg_json;      /* resolved config (dvl_cfg_dump) */
    cJSON *model_json;   /* the model's config.json, for the final export */
    train_model tm;
    dvl_adamw *opt;
    dvl_loader *loader;
    dvl_ctx *ctx;
    dvl_dist_grad_sync *gs;
    bool zero1; /* dist.zero1 on several ranks: r->opt is this rank's shard */
    int64_t accum, steps_per_epoch, total, step;
    FILE *metrics;
    FILE *eval_log;       /* rank 0, eval.path set: TRAIN.OUT/eval.jsonl */
    int64_t eval_samples; /* in eval.path */
    bool tty;
    /* log.mfu: the ranks' matrix-product peaks summed, GFLOP/s (0: not
     * measured). */
    double peak_gflops;
    /* train.device = cuda: the GPU, and host twins of the device store and
     * optimizer for checkpoints and the export (NULL until needed). */
    int gpu;
    char gpu_name[160];
    bool nccl;
    char no_nccl[300]; /* why not, when the ranks reduce through host memory */
    dvl_params *host_p;
    dvl_adamw *host_opt;
} run;

#ifdef DVL_HAVE_CUDA
/* train.precision's (and train.attention_precision's) GPU arithmetic. */
static dvl_cuda_math prec_math(train_precision p)
{
    return p == PREC_BF16 ? DVL_MATH_BF16 : p == PREC_TF32 ? DVL_MATH_TF32 : DVL_MATH_F32;
}
#endif

static const char *stage_name(train_stage s)
{
    return s == STAGE_1 ? "1" : s == STAGE_2 ? "2" : "ar";
}

/* Configuration: the file (or, resuming, the checkpoint's own) + --set. */
static int load_config(run *r, const char *config, const char *resume, const char **sets,
                       int n_sets, char *ckpt, size_t ckpt_n, dvl_err *err)
{
    ckpt[0] = 0;
    if (resume) {
        const char *where = resume;
        char root[4096];
        if (strcmp(resume, "latest") == 0) {
            if (!config)
                return dvl_errf(err, DVL_EINVAL, "--resume latest needs --config (for train.out)");
            dvl_cfg *c0 = dvl_cfg_load(TRAIN_KEYS, TRAIN_N_KEYS, config, sets, n_sets, err);
            if (!c0)
                return err->code;
            snprintf(root, sizeof root, "%s/ckpt", dvl_cfg_str(c0, "train.out"));
            dvl_cfg_free(c0);
            where = root;
        }
        if (dvl_ckpt_resolve(where, ckpt, ckpt_n, err))
            return err->code;
        char *text = dvl_ckpt_read_config(ckpt, err);
        if (!text)
            return err->code;
        char name[4200];
        snprintf(name, sizeof name, "%s/config.json", ckpt);
        r->cfgv = dvl_cfg_parse(TRAIN_KEYS, TRAIN_N_KEYS, text, name, sets, n_sets, err);
        free(text);
    } else {
        if (!config)
            return dvl_errf(err, DVL_EINVAL, "--config is required");
        r->cfgv = dvl_cfg_load(TRAIN_KEYS, TRAIN_N_KEYS, config, sets, n_sets, err);
    }
    if (!r->cfgv || train_cfg_resolve(r->cfgv, &r->c, err))
        return err->code ? err->code : DVL_EINVAL;
    r->cfg_json = dvl_cfg_dump(r->cfgv);
    return r->cfg_json ? DVL_OK : dvl_errf(err, DVL_ENOMEM, "config dump: out of memory");
}

/* train.device = cuda: this rank's GPU, chosen from its place on the node
 * (ranks sharing a GPU when there are fewer GPUs than ranks). Before
 * anything is loaded or written. */
static int open_device(run *r, dvl_err *err)
{
    if (r->c.device == TRAIN_CPU)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    dvl_err why = {0, ""};
    int n = dvl_cuda_probe(&why);
    if (n == 0)
        return dvl_errf(err, DVL_EDEVICE, "train.device: cuda, but no CUDA device is usable (%s)",
                        why.code ? why.msg : "no devices");
    r->gpu = r->d.local_rank % n;
    if (dvl_cuda_init(r->gpu, &why) || dvl_cuda_describe(r->gpu, r->gpu_name,
                                                          sizeof r->gpu_name, &why))
        return dvl_errf(err, DVL_EDEVICE, "train.device: %s", why.msg);
    return DVL_OK;
#else
    return dvl_errf(err, DVL_EDEVICE,
                    "train.device: cuda, but dvl-train was built without CUDA (nvcc not found at "
                    "configure time, or -Dcuda=disabled)");
#endif
}

static bool on_gpu(const run *r) { return r->c.device == TRAIN_CUDA; }

/* log.mfu's product: large enough to reach the device's rate. */
static int peak_size(const run *r) { return on_gpu(r) ? 4096 : 1024; }

/* The host twins of a device run's store and optimizer (same layout),
 * made on first use and kept: checkpoints are written from them and read
 * into them. */
static int host_twin(run *r, dvl_err *err)
{
    if (r->host_p)
        return DVL_OK;
    const train_cfg *c = &r->c;
    r->host_p = dvl_params_to_device(r->tm.m.params, DVL_CPU, err);
    if (!r->host_p)
        return err->code;
    r->host_opt = dvl_adamw_new(r->host_p, (float)c->beta1, (float)c->beta2, (float)c->eps,
                                (float)c->weight_decay, err);
    return r->host_opt ? DVL_OK : err->code;
}

/* The model from its config.json: each stage's trainable set, the diffusion
 * settings; the weights come later (load_weights). */
static int open_model(run *r, dvl_err *err)
{
    const train_cfg *c = &r->c;
    train_model *tm = &r->tm;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", c->model_path);
    r->model_json = dvl_json_load(path, err);
    if (!r->model_json)
        return err->code;
    dvl_model_config mc;
    if (dvl_config_parse(r->model_json, path, &mc, err))
        return err->code;
    if (mc.arch == DVL_ARCH_SIGLIP)
        return dvl_errf(err, DVL_EINVAL, "model.path: %s is a vision tower, not a trainable LM/VLM",
                        c->model_path);
    if (dvl_model_init(&tm->m, &mc, err))
        return dvl_err_prefix(err, "%s", path);
    tm->is_vlm = mc.arch == DVL_ARCH_VLM;
    tm->lm = tm->is_vlm ? &tm->m.vlm.lm : &tm->m.lm;
    tm->checkpoint = r->c.checkpoint_layers;
    tm->image_token = tm->is_vlm ? mc.vlm.image_token_index : INT32_MIN;
    tm->patches = tm->is_vlm ? dvl_siglip_patches(&mc.vlm.vision) : 0;
    dvl_params *p = tm->m.params;
    if (c->stage == STAGE_1) {
        if (!tm->is_vlm)
            return dvl_errf(err, DVL_EINVAL,
                            "train.stage: stage 1 trains the connector of a VLM, but %s is %s",
                            c->model_path, dvl_arch_name(mc.arch));
        /* Connector alignment: LM and tower frozen (no gradient slots, no
         * moments; the tower runs without recording). */
        dvl_params_set_trainable(p, "", false);
        dvl_params_set_trainable(p, DVL_VLM_CONNECTOR_PREFIX, true);
    } else if (tm->is_vlm && !c->vision_trainable) {
        dvl_params_set_trainable(p, DVL_VLM_VISION_PREFIX, false);
    }
    if (c->reset_connector && !tm->is_vlm)
        return dvl_errf(err, DVL_EINVAL, "model.reset_connector: %s has no connector",
                        c->model_path);
    if (c->stage == STAGE_2) {
        bool llada = mc.lm.arch == DVL_ARCH_LLADA;
        if (llada)
            dvl_diff_cfg_llada(&tm->diff);
        else
            dvl_diff_cfg_qwen(&tm->diff);
        tm->diff.block_size = (int)c->block_size;
        tm->diff.eps_min = c->eps_min;
        tm->diff.eps_max = c->eps_max;
        tm->diff.antithetic = c->antithetic;
        tm->diff.block_align_eos = c->block_align_eos;
        tm->diff.shift_logits = c->shift_logits;
        if (c->mask_token_id >= 0)
            tm->diff.mask_id = (int32_t)c->mask_token_id;
        if (c->eos_token_id >= 0)
            tm->diff.eos_id = (int32_t)c->eos_token_id;
        if (tm->diff.mask_id >= tm->lm->cfg.vocab)
            return dvl_errf(err, DVL_EINVAL,
                            "diffusion.mask_token_id: %d is not a row of the model's %lld-row "
                            "embedding (set it to the tokenizer's mask token)",
                            tm->diff.mask_id, (long long)tm->lm->cfg.vocab);
        if (c->block_align_eos && tm->diff.eos_id >= tm->lm->cfg.vocab)
            return dvl_errf(err, DVL_EINVAL,
                            "diffusion.eos_token_id: %d is not a row of the model's %lld-row "
                            "embedding (set it to the tokenizer's end-of-turn token)",
                            tm->diff.eos_id, (long long)tm->lm->cfg.vocab);
        /* The exported model names the mask token and block size it was
         * trained with, so dvl-generate needs neither flag. */
        cJSON_DeleteItemFromObjectCaseSensitive(r->model_json, "mask_token_id");
        cJSON_DeleteItemFromObjectCaseSensitive(r->model_json, "diffusion_block_size");
        if (!cJSON_AddNumberToObject(r->model_json, "mask_token_id", tm->diff.mask_id) ||
            !cJSON_AddNumberToObject(r->model_json, "diffusion_block_size", tm->diff.block_size))
            return dvl_errf(err, DVL_ENOMEM, "model config: out of memory");
    }
    return DVL_OK;
}

/* The weights, read after the data has been checked against the model's
 * config (a mismatch is one line at once, not after a 7B load). A resume
 * only allocates them: the checkpoint holds every parameter, and reading
 * model.path's too would double the start-up of a large model. */
static int load_weights(run *r, bool resume, dvl_err *err)
{
    const train_cfg *c = &r->c;
    train_model *tm = &r->tm;
    if (resume)
        return dvl_params_alloc(tm->m.params, err) ? dvl_err_prefix(err, "%s", c->model_path)
                                                   : DVL_OK;
    dvl_model_load_opts lo = {.allow_missing_connector = c->init_connector,
                              .connector_seed = (uint64_t)c->connector_seed};
    if (dvl_model_load_weights(&tm->m, c->model_path, &lo, err))
        return err->code;
    if (c->reset_connector)
        dvl_connector_init_random(&tm->m.vlm.connector, (uint64_t)c->connector_seed);
    return DVL_OK;
}

/* The dataset at `path` (config key `key`) must have been built for this
 * model: one image = `patches` placeholder positions holding the model's
 * image token, images of the tower's size, token ids inside the
 * vocabulary. *pad_id (unless NULL): its pad token id. */
static int check_dataset(run *r, const char *key, const char *path, int32_t *pad_id,
                         dvl_err *err)
{
    dvl_manifest man;
    if (dvl_manifest_read(path, &man, err))
        return dvl_err_prefix(err, "%s", key);
    int rc = DVL_OK;
    const train_model *tm = &r->tm;
    /* A tokenizer with ids past the embedding belongs to another model: its
     * special tokens (the chat template's, which every sample holds) are its
     * last ids, so the first batch would stop at the embedding's id check. */
    if (man.vocab_size > tm->lm->cfg.vocab)
        rc = dvl_errf(err, DVL_EINVAL,
                      "%s: %s was built with a tokenizer of %lld ids, the embedding of %s "
                      "has %lld rows (the tokenizer of another model?)",
                      key, path, (long long)man.vocab_size, r->c.model_path,
                      (long long)tm->lm->cfg.vocab);
    else if (tm->is_vlm && man.images > 0) {
        const dvl_vlm_config *v = &tm->m.cfg.vlm;
        if (man.image_tokens != tm->patches)
            rc = dvl_errf(err, DVL_EINVAL,
                          "%s: %s was built with %lld image tokens, the model takes %lld "
                          "(dvl-prep build --image-tokens)",
                          key, path, (long long)man.image_tokens, (long long)tm->patches);
        else if (man.image_token_id != v->image_token_index)
            rc = dvl_errf(err, DVL_EINVAL,
                          "%s: %s uses image token id %d, the model's image_token_index "
                          "is %d",
                          key, path, man.image_token_id, v->image_token_index);
        else if (man.image_size != v->vision.image_size)
            rc = dvl_errf(err, DVL_EINVAL,
                          "%s: %s holds %d-pixel images, the vision tower takes %lld",
                          key, path, man.image_size, (long long)v->vision.image_size);
        else if (v->vision.channels != 3)
            rc = dvl_errf(err, DVL_EINVAL,
                          "model.path: the vision tower of %s takes %lld channels, the loader's "
                          "images have 3",
                          r->c.model_path, (long long)v->vision.channels);
    } else if (!tm->is_vlm && man.images > 0) {
        rc = dvl_errf(err, DVL_EINVAL, "%s: %s has %lld images but %s is a language model", key,
                      path, (long long)man.images, r->c.model_path);
    }
    if (pad_id)
        *pad_id = man.pad_token_id;
    dvl_manifest_free(&man);
    return rc;
}

/* data.path and eval.path against the model. */
static int check_data(run *r, dvl_err *err)
{
    int32_t pad;
    if (check_dataset(r, "data.path", r->c.data_path, &pad, err) ||
        (r->c.eval_path && check_dataset(r, "eval.path", r->c.eval_path, NULL, err)))
        return err->code;
    /* Padding of the [x_t ; x_0] batch is never attended to, but it is
     * still looked up in the embedding: the training set's pad id, when it
     * is a row. */
    const int64_t vocab = r->tm.lm->cfg.vocab;
    if (pad >= 0 && pad < vocab)
        r->tm.diff.pad_id = pad;
    else if (r->tm.diff.pad_id >= vocab)
        r->tm.diff.pad_id = 0;
    return DVL_OK;
}

/* Every rank's loader position as JSON (all ranks' states gathered). */
static char *loader_states_json(run *r, dvl_err *err)
{
    dvl_loader_state s = dvl_loader_tell(r->loader);
    int64_t mine[6] = {(int64_t)s.seed, s.samples, s.rank, s.world, s.epoch, s.position};
    int64_t *all = calloc((size_t)r->d.world * 6, sizeof *all);
    if (!all) {
        dvl_errf(err, DVL_ENOMEM, "loader state: out of memory");
        return NULL;
    }
    if (MPI_Allgather(mine, 6, MPI_INT64_T, all, 6, MPI_INT64_T, r->d.comm) != MPI_SUCCESS) {
        free(all);
        dvl_errf(err, DVL_EIO, "loader state: MPI_Allgather failed");
        return NULL;
    }
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "ranks");
    for (int k = 0; k < r->d.world; k++) {
        const int64_t *a = all + 6 * k;
        char hex[17];
        dvl_hex64((uint64_t)a[0], hex);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "seed", hex);
        cJSON_AddNumberToObject(o, "samples", (double)a[1]);
        cJSON_AddNumberToObject(o, "rank", (double)a[2]);
        cJSON_AddNumberToObject(o, "world", (double)a[3]);
        cJSON_AddNumberToObject(o, "epoch", (double)a[4]);
        cJSON_AddNumberToObject(o, "position", (double)a[5]);
        cJSON_AddItemToArray(arr, o);
    }
    free(all);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static int parse_loader_state(const char *text, int rank, int world, dvl_loader_state *s,
                              dvl_err *err)
{
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "ranks");
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    int rc = DVL_OK;
    if (n != world) {
        rc = n < 0 ? dvl_errf(err, DVL_EIO, "checkpoint: loader state missing or malformed")
                   : dvl_errf(err, DVL_EINVAL,
                              "--resume: the checkpoint was written by %d rank(s), this run has %d",
                              n, world);
    } else {
        cJSON *o = cJSON_GetArrayItem(arr, rank);
        const char *keys[] = {"samples", "rank", "world", "epoch", "position"};
        /* Bounds before the conversions, which are undefined outside the
         * target type: rank and world are int32_t, the rest int64_t. */
        const double lim[] = {0x1p53, INT32_MAX, INT32_MAX, 0x1p53, 0x1p53};
        double v[5];
        cJSON *seed = cJSON_GetObjectItemCaseSensitive(o, "seed");
        uint64_t sd = 0;
        if (!cJSON_IsString(seed) || !dvl_parse_hex64(seed->valuestring, &sd))
            rc = dvl_errf(err, DVL_EIO, "checkpoint: loader state rank %d: seed", rank);
        for (int k = 0; !rc && k < 5; k++) {
            cJSON *x = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
            if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0 && x->valuedouble <= lim[k]) ||
                x->valuedouble != floor(x->valuedouble))
                rc = dvl_errf(err, DVL_EIO,
                              "checkpoint: loader state rank %d: %s is not an integer in [0, %.0f]",
                              rank, keys[k], lim[k]);
            else
                v[k] = x->valuedouble;
        }
        if (!rc)
            *s = (dvl_loader_state){.seed = sd,
                                    .samples = (int64_t)v[0],
                                    .rank = (int32_t)v[1],
                                    .world = (int32_t)v[2],
                                    .epoch = (int64_t)v[3],
                                    .position = (int64_t)v[4]};
    }
    cJSON_Delete(root);
    return rc;
}

static int save_ckpt(run *r, dvl_err *err)
{
    char root[4200];
    snprintf(root, sizeof root, "%s/ckpt", r->c.out);
    char *ls = loader_states_json(r, err);
    if (!ls)
        return err->code;
    int rc = DVL_OK;
    /* ZeRO-1: the whole moments on rank 0, gathered from the shards into
     * the host twin's optimizer (GPU) or a whole optimizer over the store
     * made for the save (CPU), so the file is the same as without. */
    dvl_adamw *full = NULL, *tmp = NULL;
    if (r->zero1) {
        const train_cfg *c = &r->c;
        if (r->d.rank == 0 && on_gpu(r)) {
            if (!(rc = host_twin(r, err)))
                full = r->host_opt;
        } else if (r->d.rank == 0) {
            full = tmp = dvl_adamw_new(r->tm.m.params, (float)c->beta1, (float)c->beta2,
                                       (float)c->eps, (float)c->weight_decay, err);
            if (!full)
                rc = err->code;
        }
        /* Collective: rank 0 without `full` fails it everywhere (keeping
         * its own message). */
        dvl_err gerr = {0, ""};
        int grc = dvl_dist_gather_adamw(&r->d, r->opt, full, 0, rc ? &gerr : err);
        if (!rc)
            rc = grc;
    }
    if (r->d.rank == 0 && !rc) {
        const dvl_params *p = r->tm.m.params;
        const dvl_adamw *o = r->zero1 ? full : r->opt;
        if (on_gpu(r)) { /* the device state into the host twins */
            if (!(rc = host_twin(r, err)) &&
                !(rc = dvl_params_data_to_host(r->tm.m.params, r->host_p->data, err)) &&
                !r->zero1)
                rc = dvl_adamw_copy_state(r->host_opt, r->opt, err);
            p = r->host_p;
            o = r->host_opt;
        }
        if (!rc)
            rc = dvl_ckpt_save(root, r->step, p, o, NULL, 0, ls, r->cfg_json, (int)r->c.keep_last,
                               DVL_F32, err);
    }
    dvl_adamw_free(tmp);
    free(ls);
    bool any;
    if (dvl_dist_any(&r->d, rc != DVL_OK, &any, err))
        return err->code;
    if (any && rc == DVL_OK)
        return dvl_errf(err, DVL_EIO, "checkpoint: save failed on rank 0");
    return rc;
}

/* v as a JSON number of `digits` significant digits, or null where it is
 * none (not measured, NaN or Inf: JSON has no such numbers, and "nan"
 * would make the line unreadable to a JSON parser). */
static const char *json_num(char *buf, size_t n, double v, int digits)
{
    if (isfinite(v))
        snprintf(buf, n, "%.*g", digits, v);
    else
        snprintf(buf, n, "null");
    return buf;
}

/* A resumed run's log (metrics.jsonl, eval.jsonl) as its checkpoint left
 * it, before the run appends to it: the lines of later steps (logged before
 * the run stopped, logged again as the resumed run repeats them) and a last
 * line cut short by the stop are dropped, so each step is in the file once,
 * in order. Rewritten atomically; nothing to do where the file is absent
 * (a resume into another train.out). */
static int trim_log(const char *path, int64_t step, dvl_err *err)
{
    if (access(path, F_OK) != 0)
        return DVL_OK;
    size_t n;
    char *text = dvl_read_file(path, &n, err);
    if (!text)
        return err->code;
    dvl_afile a;
    if (dvl_afile_open(&a, path, err)) {
        free(text);
        return err->code;
    }
    int rc = DVL_OK;
    for (char *line = text, *end; rc == DVL_OK && (end = memchr(line, '\n', (size_t)(text + n - line)));
         line = end + 1) {
        cJSON *j = cJSON_ParseWithLength(line, (size_t)(end - line));
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
        if (cJSON_IsNumber(s) && s->valuedouble <= (double)step)
            rc = dvl_afile_write(&a, line, (size_t)(end + 1 - line), err);
        cJSON_Delete(j);
    }
    free(text);
    if (rc) {
        dvl_afile_abort(&a);
        return rc;
    }
    return dvl_afile_commit(&a, err);
}

/* TRAIN.OUT/name, a JSON line per record (rank 0): a fresh run starts it
 * empty, a resumed one goes on from its checkpoint's step (trim_log). */
static FILE *open_log(const run *r, const char *name, bool resumed, dvl_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", r->c.out, name);
    if (resumed && trim_log(path, r->step, err))
        return NULL;
    FILE *f = fopen(path, resumed ? "a" : "w");
    if (!f)
        dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
    return f;
}

/* Progress line on rank 0: in place on a terminal, plain lines otherwise.
 * mfu < 0: not measured. */
static void progress(run *r, double loss, double lr, double tps, double mfu, double elapsed,
                     bool done)
{
    int64_t s = r->step;
    double eta = s > 0 ? elapsed / (double)s * (double)(r->total - s) : 0;
    char line[256], m[32] = "";
    if (mfu >= 0)
        snprintf(m, sizeof m, " | MFU %.1f%%", 100.0 * mfu);
    snprintf(line, sizeof line,
             "step %" PRId64 "/%" PRId64 " | loss %.4f | lr %.3e | %.0f tok/s%s | %.0fs | "
             "ETA %.0fs",
             s, r->total, loss, lr, tps, m, elapsed, eta);
    if (r->tty)
        printf("\r%s\033[K%s", line, done ? "\n" : "");
    else
        printf("%s\n", line);
    fflush(stdout);
}

/* bytes as "12.34 MiB" (under a GiB) or "12.34 GiB" into buf. */
static const char *size_str(char *buf, size_t n, double bytes)
{
    const double mib = 1024.0 * 1024.0;
    if (bytes < 1024.0 * mib)
        snprintf(buf, n, "%.2f MiB", bytes / mib);
    else
        snprintf(buf, n, "%.2f GiB", bytes / (1024.0 * mib));
    return buf;
}

/* After the first step, on rank 0: what a rank holds, for memory plans
 * (the 7B recipe's headroom is a few GiB): the parameter store (weights
 * and gradients), this rank's AdamW moments, the step arena's peak (one
 * micro batch's activations, gradients and scratch) and, on a GPU, the
 * device's own count. */
static void memory_line(run *r)
{
    const dvl_params *p = r->tm.m.params;
    /* Weights: f32, plus the frozen ones' bf16 copies where kept. */
    const double w = (double)p->numel * sizeof(float) + (double)p->numel_bf16 * sizeof(uint16_t),
                 g = (double)p->numel_grad * sizeof(float);
    const double m = (double)dvl_adamw_state_bytes(r->opt), a = (double)dvl_arena_peak(r->ctx);
    char sw[32], sg[32], sm[32], sa[32], st[32], dev[128] = "";
#ifdef DVL_HAVE_CUDA
    size_t free_b, total_b;
    char su[32], sd[32];
    if (on_gpu(r) && dvl_cuda_mem_info(&free_b, &total_b, NULL) == DVL_OK)
        snprintf(dev, sizeof dev, "; the GPU has %s of %s in use",
                 size_str(su, sizeof su, (double)(total_b - free_b)),
                 size_str(sd, sizeof sd, (double)total_b));
#endif
    printf(PROG ": memory per rank: weights %s%s, gradients %s, AdamW moments %s, step arena "
           "peak %s (total %s)%s\n",
           size_str(sw, sizeof sw, w), p->numel_bf16 ? " (with the bf16 copies)" : "",
           size_str(sg, sizeof sg, g), size_str(sm, sizeof sm, m),
           size_str(sa, sizeof sa, a), size_str(st, sizeof st, w + g + m + a), dev);
    fflush(stdout);
}

/* A checkpoint after step s (s >= 1, S steps an epoch, G / R samples of
 * this rank's share a step) has its loader where step s left it: in epoch
 * e = (s - 1) / S (the next step skips an epoch's leftover batches, not
 * this one), at position (s - e S) G / R; or, where step s took the last
 * samples of the rank's share (no leftover), at the start of epoch e + 1.
 * Anything else is a checkpoint whose state.json does not match its step,
 * or a run resumed with another global batch: an exact continuation is
 * impossible either way. */
static int check_resume_position(const run *r, const dvl_loader_state *at, const char *ckpt,
                                 dvl_err *err)
{
    const int64_t s = r->step, S = r->steps_per_epoch, per_rank = r->accum * r->c.micro_batch;
    const int64_t e = s > 0 ? (s - 1) / S : 0, pos = (s - e * S) * per_rank;
    if ((at->epoch == e && at->position == pos) ||
        (at->epoch == e + 1 && at->position == 0 && pos == S * per_rank))
        return DVL_OK;
    return dvl_errf(err, DVL_EINVAL,
                    "%s: its data loader is at epoch %" PRId64 " position %" PRId64
                    " (rank %d), but after step %" PRId64 " it would be at epoch %" PRId64
                    " position %" PRId64 " (%" PRId64 " samples per rank a step, %" PRId64
                    " steps an epoch): state.json does not match its step, or "
                    "train.global_batch or train.micro_batch changed",
                    ckpt, at->epoch, at->position, r->d.rank, s, e, pos, per_rank, S);
}

/* Backward's gradient-ready hook during the last micro batch of a step:
 * the parameter's gradient is final, so its bucket may start reducing while
 * backward runs through the earlier layers. */
typedef struct ready_ctx {
    dvl_dist_grad_sync *gs;
    dvl_err err;
} ready_ctx;

static void on_grad_ready(void *user, dvl_tensor *param)
{
    ready_ctx *rc = user;
    if (rc->err.code == DVL_OK)
        dvl_dist_grad_sync_ready(rc->gs, &param, 1, &rc->err);
}

/* Where micro batch b's samples sit in the step's global batch. The loader
 * deals the epoch's permutation out round robin (rank r of R takes
 * positions r, r + R, ...), and the step's G = R x accumulation x micro
 * batch samples are permutation positions [k G, (k+1) G), k the step within
 * the epoch; the sample at offset j of this rank's share of the step is
 * position k G + r + R j. Its global index g = r + R j is thus the same for
 * every rank count: the permutation does not depend on R. */
static int noise_draw(run *r, const dvl_batch *b, dvl_diff_draw *draw, dvl_err *err)
{
    const int64_t R = r->d.world, m = r->c.micro_batch, per_rank = r->accum * m;
    const int64_t k = r->step - b->epoch * r->steps_per_epoch;
    const int64_t j0 = b->position - k * per_rank;
    if (k < 0 || j0 < 0 || j0 + b->n > per_rank)
        return dvl_errf(err, DVL_EINVAL,
                        "step %" PRId64 ": batch at epoch %" PRId64 " position %" PRId64
                        " is not in the step's share (%" PRId64 " samples per rank)",
                        r->step + 1, b->epoch, b->position, per_rank);
    int64_t *index = dvl_alloc(r->ctx, (size_t)b->n * sizeof *index);
    if (!index)
        return dvl_errf(err, DVL_ENOMEM, "noise: out of memory for %" PRId64 " indices", b->n);
    for (int64_t s = 0; s < b->n; s++)
        index[s] = r->d.rank + R * (j0 + s);
    /* The step's seed, mixed from train.seed and the step like a sample's
     * from the step's. */
    uint64_t sd = dvl_diff_sample_seed((uint64_t)r->c.seed, r->step);
    *draw = (dvl_diff_draw){.seed = sd, .global_n = r->c.global_batch, .index = index};
    return DVL_OK;
}

/* The batch as the step's context needs it: on the GPU the pixels in
 * device memory, copied through the context's pinned staging (the ids,
 * labels and masks stay host arrays: the step reads them on the host and
 * the ops upload them the same way). *tmp holds the device view. */
static const dvl_batch *batch_for_ctx(run *r, const dvl_batch *b, dvl_batch *tmp, dvl_err *err)
{
    if (dvl_ctx_device(r->ctx) == DVL_CPU || b->n_images == 0)
        return b;
    size_t bytes = (size_t)b->n_images * 3 * (size_t)b->image_size * (size_t)b->image_size *
                   sizeof(float);
    float *px = dvl_alloc_dev(r->ctx, bytes);
    if (!px || dvl_ctx_memcpy_h2d(r->ctx, px, b->images, bytes)) {
        const dvl_err *e = dvl_ctx_err(r->ctx);
        dvl_errf(err, e->code ? e->code : DVL_EDEVICE, "uploading the batch: %s", e->msg);
        return NULL;
    }
    *tmp = *b;
    tmp->images = px;
    return tmp;
}

/* The loss value (a device tensor on the GPU: this waits for it). */
static int read_loss(run *r, const dvl_tensor *loss, double *out, dvl_err *err)
{
    float v = 0;
    if (dvl_tensor_to_host(r->ctx, loss, &v)) {
        const dvl_err *e = dvl_ctx_err(r->ctx);
        return dvl_errf(err, e->code ? e->code : DVL_EDEVICE, "reading the loss: %s", e->msg);
    }
    *out = v;
    return DVL_OK;
}

/* The loader of eval.path for this rank, at the start of epoch 0 (every
 * evaluation reads the same batches: the same weights give the same
 * bits). */
static dvl_loader *eval_loader(const run *r, bool verify, dvl_err *err)
{
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = r->c.eval_path;
    lo.batch_size = r->c.eval_micro_batch;
    lo.rank = r->d.rank;
    lo.world = r->d.world;
    lo.block = r->c.stage == STAGE_2 ? r->c.block_size : 0;
    lo.prefetch = r->c.prefetch;
    lo.skip_verify = !verify;
    return dvl_loader_open(&lo, err);
}

/* eval.path: the stage's training loss (train_step.h: the mean over
 * samples of each sample's loss) over the whole held-out set at the
 * current weights, without gradients; every rank takes its share, the sums
 * are all-reduced. Stage 2 noise: sample i (its index in the set) draws
 * from its own stream seeded by (eval.seed, i) and takes row i of the
 * antithetic grid over the N samples, so it is the same at every
 * evaluation and for any number of ranks or micro batch: the figures of a
 * run compare with each other. The training state (weights, moments,
 * loader, noise) is not touched: a run with evaluation trains to the same
 * bits as one without. */
static int evaluate(run *r, dvl_err *err)
{
    double t0 = now_s();
    dvl_loader *l = eval_loader(r, false, err);
    if (!l)
        return err->code;
    const bool grad = dvl_set_grad_enabled(r->ctx, false);
    const dvl_diff_draw draw0 = {.seed = (uint64_t)r->c.eval_seed, .global_n = r->eval_samples};
    double sums[3] = {0, 0, 0}; /* loss x samples, samples, tokens */
    int rc = DVL_OK;
    for (int64_t left = dvl_loader_share(l); left > 0 && rc == DVL_OK;) {
        const dvl_batch *b;
        dvl_batch bdev;
        if ((rc = dvl_loader_next(l, &b, err)))
            break;
        left -= b->n;
        dvl_ctx_reset(r->ctx);
        dvl_diff_draw draw = draw0;
        draw.index = b->sample;
        dvl_tensor *loss = NULL;
        double v = 0;
        if (!(b = batch_for_ctx(r, b, &bdev, err)) ||
            !(loss = train_forward(r->ctx, &r->tm, &r->c, b, 1.0f, &draw, NULL, err)) ||
            read_loss(r, loss, &v, err)) {
            rc = err->code;
            break;
        }
        sums[0] += v * (double)b->n;
        sums[1] += (double)b->n;
        for (int64_t s = 0; s < b->n; s++)
            sums[2] += (double)b->seq_len[s];
    }
    dvl_set_grad_enabled(r->ctx, grad);
    dvl_ctx_reset(r->ctx);
    dvl_loader_free(l);
    if (rc)
        return dvl_err_prefix(err, "eval.path");
    if (r->d.world > 1 && dvl_dist_allreduce_f64(&r->d, sums, 3, DVL_DIST_SUM, err))
        return err->code;
    if (r->d.rank == 0) {
        const double loss = sums[0] / sums[1], secs = now_s() - t0;
        char ls[32];
        fprintf(r->eval_log,
                "{\"step\": %" PRId64 ", \"eval_loss\": %s, \"samples\": %.0f, \"tokens\": %.0f, "
                "\"seconds\": %.6g}\n",
                r->step, json_num(ls, sizeof ls, loss, 9), sums[1], sums[2], secs);
        fflush(r->eval_log);
        printf("%s" PROG ": step %" PRId64 ": eval loss %.4f over %.0f held-out samples (%.1fs)\n",
               r->tty && r->step > 0 && r->step < r->total ? "\n" : "", r->step, loss, sums[1],
               secs);
        fflush(stdout);
    }
    return DVL_OK;
}

static bool eval_due(const run *r)
{
    return r->c.eval_path &&
           ((r->c.eval_every > 0 && r->step % r->c.eval_every == 0) || r->step == r->total);
}

static int train(run *r, dvl_err *err)
{
    const train_cfg *c = &r->c;
    dvl_params *p = r->tm.m.params;
    double t0 = now_s(), tokens_total = 0, flops_total = 0;
    int64_t bad_run = 0, first = r->step;
    float scale = 1.0f / (float)r->accum;
    /* The gradient elements this rank holds the mean of after the sync:
     * all of them, or its ZeRO-1 shard. */
    int64_t lo = 0, hi = p->numel_grad;
    if (r->zero1)
        dvl_dist_grad_sync_shard(r->gs, &lo, &hi);
    if (r->c.eval_path && r->c.eval_at_start && r->step == 0 && evaluate(r, err))
        return err->code;
    while (r->step < r->total) {
        double ts = now_s();
        /* Epoch e is steps [e S, (e + 1) S): leave the previous epoch's
         * leftover batches (fewer than a step's worth) unread. */
        int64_t epoch = r->step / r->steps_per_epoch;
        while (dvl_loader_tell(r->loader).epoch < epoch) {
            const dvl_batch *b;
            if (dvl_loader_next(r->loader, &b, err))
                return err->code;
        }
        dvl_params_zero_grad(p);
        double sums[3] = {0, 0, 0}; /* loss, tokens, model FLOPs */
        for (int64_t a = 0; a < r->accum; a++) {
            const dvl_batch *b;
            dvl_batch bdev;
            if (dvl_loader_next(r->loader, &b, err))
                return err->code;
            dvl_ctx_reset(r->ctx);
            if (!(b = batch_for_ctx(r, b, &bdev, err)))
                return err->code;
            dvl_diff_draw draw;
            if (noise_draw(r, b, &draw, err))
                return err->code;
            double flops = 0;
            dvl_tensor *loss = train_forward(r->ctx, &r->tm, c, b, scale, &draw, &flops, err);
            if (!loss)
                return err->code;
            sums[2] += flops;
            for (int64_t s = 0; s < b->n; s++)
                sums[1] += (double)b->seq_len[s];
            ready_ctx rc = {.gs = r->gs};
            bool overlap = r->gs && a == r->accum - 1;
            if (overlap)
                dvl_set_grad_ready_hook(r->ctx, on_grad_ready, &rc);
            int brc = dvl_backward(r->ctx, loss);
            if (overlap)
                dvl_set_grad_ready_hook(r->ctx, NULL, NULL);
            if (brc) {
                const dvl_err *e = dvl_ctx_err(r->ctx);
                return dvl_errf(err, e->code ? e->code : DVL_EINVAL, "backward: %s", e->msg);
            }
            if (rc.err.code) {
                *err = rc.err;
                return err->code;
            }
            /* Read once backward is queued: on the GPU this waits for it. */
            double l = 0;
            if (read_loss(r, loss, &l, err))
                return err->code;
            sums[0] += l;
        }
        /* Mean gradient over the ranks: the buckets not started during the
         * last backward (parameters this batch did not use) start now. */
        if (r->d.world > 1) {
            if (dvl_dist_grad_sync_finish(r->gs, err) ||
                dvl_dist_allreduce_f64(&r->d, sums, 3, DVL_DIST_SUM, err))
                return err->code;
            sums[0] /= r->d.world;
        }
        if (c->nonfinite_from >= 0 && r->step + 1 >= c->nonfinite_from &&
            r->step + 1 < c->nonfinite_from + c->nonfinite_steps) {
            /* Element 0: in rank 0's shard under ZeRO-1. p->grad may be
             * device memory. */
            const float nan = NAN;
            if (dvl_ctx_memcpy_h2d(r->ctx, p->grad, &nan, sizeof nan))
                return dvl_errf(err, DVL_EDEVICE, "%s", dvl_ctx_err(r->ctx)->msg);
        }
        double loss = sums[0], gnorm, lr = lr_at(c, r->step, r->total);
        /* The sum of squares is taken in double: a finite float squared is
         * at most ~1.2e77 and no count of them overflows, so the norm is
         * finite exactly when every gradient element is (a NaN or Inf in
         * any shard makes the all-reduced sum NaN or Inf): no second pass
         * looks for them. */
        if (r->zero1) {
            /* The global norm from the shards' sums of squares (each in
             * double, fixed order): every rank gets the same sum, so every
             * rank takes the same decision. */
            double ss = dvl_grad_sumsq_range(p, lo, hi);
            if (dvl_dist_allreduce_f64(&r->d, &ss, 1, DVL_DIST_SUM, err))
                return err->code;
            gnorm = sqrt(ss);
        } else {
            /* Every rank holds the same averaged gradient and loss, so
             * every rank takes the same decision. */
            gnorm = dvl_grad_norm(p);
        }
        const bool bad = !isfinite(loss) || !isfinite(gnorm);
        if (bad) {
            bad_run++;
            if (r->d.rank == 0)
                fprintf(stderr, PROG ": step %" PRId64 ": non-finite loss %g / grad norm %g: skipped"
                        " (%" PRId64 " in a row)\n", r->step + 1, loss, gnorm, bad_run);
            if (bad_run > c->max_bad_steps)
                return dvl_errf(err, DVL_EINVAL,
                                "step %" PRId64 ": %" PRId64 " non-finite steps in a row (more "
                                "than optim.max_bad_steps = %" PRId64 "); the last checkpoint is "
                                "intact",
                                r->step + 1, bad_run, c->max_bad_steps);
        } else {
            bad_run = 0;
            /* torch clip_grad_norm_'s factor, applied inside the update */
            float clip = c->clip > 0 && gnorm > c->clip ? (float)(c->clip / (gnorm + 1e-6)) : 1.0f;
            dvl_adamw_step(r->opt, (float)lr, clip); /* this rank's shard under ZeRO-1 */
            if ((r->zero1 && dvl_dist_grad_sync_gather_params(r->gs, err)) ||
                dvl_params_refresh_bf16(p, err))
                return err->code;
        }
        r->step++;
        double te = now_s();
        tokens_total += sums[1];
        flops_total += sums[2];
        double tps = sums[1] / (te - ts), elapsed = te - t0;
        /* MFU: the step's model FLOPs over its time, against the summed
         * peaks of the ranks (the progress line: the run so far). */
        const double peak = r->peak_gflops * 1e9;
        const double mfu = peak > 0 ? sums[2] / (te - ts) / peak : -1;
        if (r->d.rank == 0) {
            char ls[32], gs[32], mf[32];
            fprintf(r->metrics,
                    "{\"step\": %" PRId64 ", \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, "
                    "\"tokens\": %.0f, \"tokens_per_s\": %.6g, \"model_flops\": %.6g, "
                    "\"mfu\": %s, \"elapsed\": %.6g, \"skipped\": %s}\n",
                    r->step, json_num(ls, sizeof ls, loss, 9), lr,
                    json_num(gs, sizeof gs, gnorm, 9), sums[1], tps, sums[2],
                    json_num(mf, sizeof mf, mfu >= 0 ? mfu : NAN, 6), elapsed,
                    bad ? "true" : "false");
            fflush(r->metrics);
            if ((r->step - first) % c->log_every == 0 || r->step == r->total)
                progress(r, loss, lr, tokens_total / elapsed,
                         peak > 0 ? flops_total / elapsed / peak : -1, elapsed,
                         r->step == r->total);
            if (r->step == first + 1)
                memory_line(r);
        }
        if (r->d.world > 1 && c->check_every > 0 &&
            (r->step % c->check_every == 0 || r->step == r->total)) {
            if (dvl_dist_check_params(&r->d, p, err))
                return err->code;
        }
        if (eval_due(r) && evaluate(r, err))
            return err->code;
        if ((c->ckpt_every > 0 && r->step % c->ckpt_every == 0) || r->step == r->total) {
            if (save_ckpt(r, err))
                return err->code;
        }
    }
    return DVL_OK;
}

static int setup(run *r, const char *ckpt, dvl_err *err)
{
    const train_cfg *c = &r->c;
    if (open_device(r, err) || open_model(r, err) || check_data(r, err) ||
        load_weights(r, ckpt[0] != 0, err))
        return err->code;
    dvl_params *p = r->tm.m.params;
    if (p->numel_grad == 0)
        return dvl_errf(err, DVL_EINVAL, "train.stage %s: nothing to train", stage_name(c->stage));
    /* Rank 0's weights everywhere (a freshly initialised connector, say,
     * is the same on every rank only by construction; this makes sure). A
     * resume reads the same checkpoint on every rank instead. */
    if (!ckpt[0] && dvl_dist_bcast_params(&r->d, p, err))
        return err->code;
    if (on_gpu(r) && dvl_params_move(p, DVL_CUDA, err))
        return err->code;
    /* ZeRO-1 only pays with several ranks; on one it would be the plain
     * optimizer with extra copies. */
    r->zero1 = c->zero1 && r->d.world > 1;
    int64_t shard_lo = 0, shard_hi = p->numel_grad;
    if (r->zero1)
        dvl_adamw_shard(p->numel_grad, r->d.world, r->d.rank, &shard_lo, &shard_hi);
    r->opt = dvl_adamw_new_shard(p, shard_lo, shard_hi, (float)c->beta1, (float)c->beta2,
                                 (float)c->eps, (float)c->weight_decay, err);
    if (!r->opt)
        return err->code;
    /* The tower's own learning rate as a multiplier of the peak; its decay
     * switch stays as the default (none on norms and biases). */
    if (r->tm.is_vlm && c->vision_trainable && c->stage != STAGE_1) {
        float mult = c->lr > 0 ? (float)(c->vision_lr / c->lr) : 0.0f;
        size_t n = strlen(DVL_VLM_VISION_PREFIX);
        for (int i = 0; i < p->n; i++)
            if (strncmp(p->t[i]->name, DVL_VLM_VISION_PREFIX, n) == 0)
                r->opt->lr_mult[i] = mult;
    }
    if (r->d.world > 1) {
        if (on_gpu(r) &&
            dvl_dist_nccl_init(&r->d, c->nccl, &r->nccl, r->no_nccl, sizeof r->no_nccl, err))
            return err->code;
        r->gs = r->zero1 ? dvl_dist_grad_sync_new_zero1(&r->d, p, (size_t)c->bucket_mb << 20, err)
                         : dvl_dist_grad_sync_new(&r->d, p, (size_t)c->bucket_mb << 20, err);
        if (!r->gs)
            return err->code;
    }
    int64_t per_step = c->global_batch / c->micro_batch;
    if (per_step % r->d.world)
        return dvl_errf(err, DVL_EINVAL,
                        "train.global_batch: %lld = %lld micro batches of %lld, not a multiple "
                        "of the %d ranks",
                        (long long)c->global_batch, (long long)per_step,
                        (long long)c->micro_batch, r->d.world);
    r->accum = per_step / r->d.world;
    dvl_loader_state start;
    char *ls = NULL;
    if (ckpt[0]) {
        int64_t step = 0;
        if (on_gpu(r)) { /* into the host twins, then up */
            if (host_twin(r, err) ||
                dvl_ckpt_load(ckpt, r->host_p, r->host_opt, &step, NULL, 0, &ls, err) ||
                dvl_params_data_from_host(p, r->host_p->data, err) ||
                dvl_adamw_copy_state(r->opt, r->host_opt, err)) {
                free(ls);
                return err->code;
            }
            if (r->d.rank != 0) { /* only rank 0 writes checkpoints */
                dvl_adamw_free(r->host_opt);
                dvl_params_free(r->host_p);
                r->host_opt = NULL;
                r->host_p = NULL;
            }
        } else if (r->zero1) { /* the whole moments, then this rank's shard of them */
            dvl_adamw *full = dvl_adamw_new(p, (float)c->beta1, (float)c->beta2, (float)c->eps,
                                            (float)c->weight_decay, err);
            int rc = full ? dvl_ckpt_load(ckpt, p, full, &step, NULL, 0, &ls, err) : err->code;
            if (!rc)
                rc = dvl_adamw_copy_state(r->opt, full, err);
            dvl_adamw_free(full);
            if (rc) {
                free(ls);
                return rc;
            }
        } else if (dvl_ckpt_load(ckpt, p, r->opt, &step, NULL, 0, &ls, err)) {
            return err->code;
        }
        r->step = step;
        int rc = parse_loader_state(ls, r->d.rank, r->d.world, &start, err);
        free(ls);
        if (rc)
            return rc;
    }
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = c->data_path;
    lo.batch_size = c->micro_batch;
    lo.rank = r->d.rank;
    lo.world = r->d.world;
    lo.seed = (uint64_t)c->data_seed;
    lo.block = c->stage == STAGE_2 ? c->block_size : 0;
    lo.prefetch = c->prefetch;
    /* A resume checks the shards' sizes, not their checksums (a pass over
     * the whole dataset, done when the run started). */
    lo.skip_verify = ckpt[0] != 0;
    lo.start = ckpt[0] ? &start : NULL;
    r->loader = dvl_loader_open(&lo, err);
    if (!r->loader)
        return err->code;
    /* floor(N / G) steps per epoch, whatever the number of ranks R: each
     * rank's share has at least floor(N / R) >= floor(N / G) G / R samples,
     * so every rank runs every step, and 1 rank and R ranks see the same
     * epochs. */
    int64_t N = dvl_loader_samples(r->loader);
    r->steps_per_epoch = N / c->global_batch;
    if (r->steps_per_epoch < 1)
        return dvl_errf(err, DVL_EINVAL,
                        "train.global_batch: %lld is more than the %lld samples of %s",
                        (long long)c->global_batch, (long long)N, c->data_path);
    r->total = c->max_steps > 0 ? c->max_steps : c->epochs * r->steps_per_epoch;
    /* The held-out set's shards checked as the training set's are (sizes
     * only on a resume), and its size. */
    if (c->eval_path) {
        dvl_loader *el = eval_loader(r, !ckpt[0], err);
        if (!el)
            return dvl_err_prefix(err, "eval.path");
        r->eval_samples = dvl_loader_samples(el);
        dvl_loader_free(el);
        if (r->eval_samples < r->d.world)
            return dvl_errf(err, DVL_EINVAL,
                            "eval.path: %s has %" PRId64 " samples, fewer than the %d ranks",
                            c->eval_path, r->eval_samples, r->d.world);
    }
    if (ckpt[0] && check_resume_position(r, &start, ckpt, err))
        return err->code;
    r->ctx = dvl_ctx_new_err(on_gpu(r) ? DVL_CUDA : DVL_CPU, err);
    if (!r->ctx)
        return err->code ? err->code : dvl_errf(err, DVL_ENOMEM, "context: out of memory");
#ifdef DVL_HAVE_CUDA
    /* train.precision: the math mode of every product on the context's
     * cuBLAS handle (the config allows non-f32 on cuda only). */
    if (on_gpu(r) && c->precision != PREC_F32 &&
        dvl_cublas_set_math(dvl_ctx_cublas(r->ctx), prec_math(c->precision), err))
        return err->code;
    /* train.attention_precision: attention's kernels in another arithmetic. */
    if (on_gpu(r) && c->attention_precision >= 0 &&
        dvl_cublas_set_attention_math(dvl_ctx_cublas(r->ctx),
                                      (int)prec_math((train_precision)c->attention_precision),
                                      err))
        return err->code;
    dvl_ctx_set_bf16_activations(r->ctx, c->bf16_activations);
    /* The weights' bf16 copies, from the weights as they now are
     * (broadcast, moved, resumed); nothing writes a frozen weight later,
     * the trainable ones' copies are made again after each update. */
    if (on_gpu(r) && c->precision == PREC_BF16 && dvl_params_keep_bf16(p, c->bf16_copies, err))
        return err->code;
#endif
    /* log.mfu: each rank times one product of its device in the run's
     * arithmetic, the sum is the run's peak. A report, not the job: if
     * a rank cannot measure (its operands do not fit beside the model),
     * the run goes on without MFU, and says why. */
    if (c->log_mfu) {
        double v[2] = {0, 0}; /* GFLOP/s, ranks that failed */
        dvl_err pe = {0, ""};
        if (dvl_matmul_peak(r->ctx, peak_size(r), &v[0], &pe))
            v[1] = 1;
        if (dvl_dist_allreduce_f64(&r->d, v, 2, DVL_DIST_SUM, err))
            return err->code;
        r->peak_gflops = v[1] > 0 ? 0 : v[0];
        if (v[1] > 0 && r->d.rank == 0)
            fprintf(stderr, PROG ": log.mfu: no MFU in this run: %s\n",
                    pe.code ? pe.msg : "another rank could not measure its peak");
    }
    if (r->d.rank == 0) {
        if (make_dirs(c->out, err))
            return err->code;
        if (!(r->metrics = open_log(r, "metrics.jsonl", ckpt[0] != 0, err)) ||
            (c->eval_path && !(r->eval_log = open_log(r, "eval.jsonl", ckpt[0] != 0, err))))
            return err->code;
        /* mpirun hands its ranks a pseudo-terminal whatever its own stdout
         * is, so under MPI the line is plain. */
        r->tty = isatty(STDOUT_FILENO) && r->d.world == 1;
        printf(PROG ": stage %s, %s (%" PRId64 " parameters, %" PRId64 " trainable), %" PRId64
               " samples, %d rank(s) x micro batch %" PRId64 " x %" PRId64
               " accumulation = global batch %" PRId64 ", %" PRId64 " steps (%" PRId64
               " per epoch)%s\n",
               stage_name(c->stage), c->model_path, p->numel, p->numel_grad, N, r->d.world,
               c->micro_batch, r->accum, c->global_batch, r->total, r->steps_per_epoch,
               ckpt[0] ? ", resumed" : "");
        if (c->eval_path) {
            char when[64] = "";
            if (c->eval_every > 0)
                snprintf(when, sizeof when, "every %" PRId64 " steps and ", c->eval_every);
            printf(PROG ": held-out evaluation of %s (%" PRId64 " samples) %s%sat the end, into "
                   "%s/eval.jsonl\n",
                   c->eval_path, r->eval_samples, c->eval_at_start && !ckpt[0] ? "at the start, " : "",
                   when, c->out);
        }
        if (on_gpu(r))
            printf(PROG ": device cuda:%d %s, %s products%s%s%s%s%s\n", r->gpu, r->gpu_name,
                   c->precision == PREC_BF16   ? "bf16 (f32 accumulation)"
                   : c->precision == PREC_TF32 ? "TF32"
                                               : "f32",
                   c->attention_precision < 0 || c->attention_precision == (int)c->precision
                       ? ""
                   : c->attention_precision == PREC_BF16 ? ", attention's in bf16"
                   : c->attention_precision == PREC_TF32 ? ", attention's in TF32"
                                                         : ", attention's in f32",
                   c->precision == PREC_BF16 && c->bf16_activations
                       ? ", bf16 MLP activations (train.bf16_activations)"
                       : "",
                   r->d.world == 1 ? ""
                   : r->nccl     ? ", gradients all-reduced with NCCL"
                                 : ", gradients all-reduced with MPI through host memory (NCCL: ",
                   r->d.world > 1 && !r->nccl ? r->no_nccl : "",
                   r->d.world > 1 && !r->nccl ? ")" : "");
        if (p->numel_bf16)
            printf(PROG ": bf16 copies of the %s weights: %.2f MiB per rank "
                   "(train.bf16_weight_copies)\n",
                   p->bf16_mode == DVL_BF16_ALL ? "trainable and frozen" : "frozen",
                   (double)p->numel_bf16 * 2 / (1 << 20));
        if (r->peak_gflops > 0)
            printf(PROG ": MFU against the matrix-product peak measured now: %.1f GFLOP/s over "
                   "%d rank(s) (%s of %d^3%s; log.mfu)\n",
                   r->peak_gflops, r->d.world,
                   !on_gpu(r)                  ? "OpenBLAS sgemm"
                   : c->precision == PREC_BF16 ? "cuBLAS bf16 GEMM"
                   : c->precision == PREC_TF32 ? "cuBLAS TF32 GEMM"
                                               : "cuBLAS f32 GEMM",
                   peak_size(r), r->d.world > 1 ? " on each" : "");
        /* The optimizer state of one rank (rank 0's shard is the largest). */
        double mib = (double)dvl_adamw_state_bytes(r->opt) / (1 << 20);
        double full_mib = 2.0 * (double)p->numel_grad * sizeof(float) / (1 << 20);
        if (r->zero1)
            printf(PROG ": ZeRO-1 on: AdamW moments of %" PRId64 " of %" PRId64
                   " trainable elements per rank, %.2f MiB (unsharded %.2f MiB)\n",
                   r->opt->hi - r->opt->lo, p->numel_grad, mib, full_mib);
        else
            printf(PROG ": ZeRO-1 off%s: AdamW moments %.2f MiB per rank\n",
                   c->zero1 ? " (one rank)" : "", mib);
        if (ckpt[0])
            printf(PROG ": resumed from %s at step %" PRId64 "\n", ckpt, r->step);
        fflush(stdout);
    }
    return DVL_OK;
}

/* The trained model as a model directory (config.json + weights). */
static int export_final(run *r, dvl_err *err)
{
    if (r->d.rank != 0)
        return DVL_OK;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/final", r->c.out);
    dvl_params *p = r->tm.m.params;
    if (on_gpu(r)) { /* saved from the host twin, the model's store lent to it */
        if (host_twin(r, err) || dvl_params_data_to_host(p, r->host_p->data, err))
            return err->code;
        r->tm.m.params = r->host_p;
    }
    int rc = dvl_model_save(&r->tm.m, dir, r->model_json, DVL_F32, 0, err);
    r->tm.m.params = p;
    if (rc)
        return rc;
    printf(PROG ": wrote %s\n", dir);
    return DVL_OK;
}

static void run_free(run *r)
{
    dvl_loader_free(r->loader);
    dvl_dist_grad_sync_free(r->gs);
    dvl_adamw_free(r->host_opt);
    dvl_params_free(r->host_p);
    dvl_adamw_free(r->opt);
    dvl_diff_batch_free(r->tm.db);
    if (r->tm.m.params)
        dvl_model_free(&r->tm.m);
    dvl_ctx_free(r->ctx);
    if (r->metrics)
        fclose(r->metrics);
    if (r->eval_log)
        fclose(r->eval_log);
    cJSON_Delete(r->model_json);
    free(r->cfg_json);
    dvl_cfg_free(r->cfgv);
}

int main(int argc, char **argv)
{
    const char *config = NULL, *resume = NULL;
    const char *sets[MAX_SETS];
    int n_sets = 0;
    char stage_set[64] = {0};
    /* A bad command line is one line on stderr, as any bad input; the
     * options and keys are --help's. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return usage();
        if (strcmp(a, "--config") && strcmp(a, "--resume") && strcmp(a, "--stage") &&
            strcmp(a, "--set")) {
            fprintf(stderr, PROG ": unknown option %s (" PROG " --help lists them)\n", a);
            return 2;
        }
        if (i + 1 >= argc || (strcmp(a, "--set") == 0 && !strchr(argv[i + 1], '='))) {
            fprintf(stderr, PROG ": %s needs a value%s\n", a,
                    strcmp(a, "--set") ? "" : " (key=value)");
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0)
            config = v;
        else if (strcmp(a, "--resume") == 0)
            resume = v;
        else if (strcmp(a, "--stage") == 0)
            snprintf(stage_set, sizeof stage_set, "train.stage=%s", v);
        else /* --set key=value [key=value ...]: up to the next option */
            for (;; v = argv[++i]) {
                if (n_sets == MAX_SETS - 1) { /* one slot stays for --stage */
                    fprintf(stderr, PROG ": more than %d --set overrides\n", MAX_SETS - 1);
                    return 2;
                }
                sets[n_sets++] = v;
                if (i + 1 >= argc || argv[i + 1][0] == '-' || !strchr(argv[i + 1], '='))
                    break;
            }
    }
    /* --stage wins over the file and comes before the --set overrides. */
    if (stage_set[0]) {
        memmove(sets + 1, sets, (size_t)n_sets * sizeof *sets);
        sets[0] = stage_set;
        n_sets++;
    }
    run r;
    memset(&r, 0, sizeof r);
    dvl_err err = {0};
    if (dvl_dist_init(&argc, &argv, &r.d, &err)) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        return 1;
    }
    char ckpt[4096];
    int rc = load_config(&r, config, resume, sets, n_sets, ckpt, sizeof ckpt, &err);
    if (!rc)
        rc = setup(&r, ckpt, &err);
    if (!rc)
        rc = train(&r, &err);
    if (!rc)
        rc = export_final(&r, &err);
    if (rc) {
        /* Config errors happen on every rank alike: rank 0 speaks. Others
         * (a shard unreadable on one node) stop the whole job, since the
         * other ranks would wait in a collective forever. */
        if (r.d.rank == 0 || r.d.world == 1)
            fprintf(stderr, PROG ": %s\n", err.msg);
        else
            fprintf(stderr, PROG ": rank %d: %s\n", r.d.rank, err.msg);
        if (r.d.world > 1)
            MPI_Abort(r.d.comm, 1);
    }
    run_free(&r);
    dvl_dist_finalize(&r.d, &err);
    return rc ? 1 : 0;
}
