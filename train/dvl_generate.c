/* dvl-generate: score token ids with a model directory, or generate text.
 *
 *   --score --model DIR --ids FILE.json [--image FILE ... | --pixels FILE.safetensors]
 *           --logits-out FILE.npy [--timing] [--device cpu|cuda]
 *       One forward pass in the model's native attention (causal for Qwen2
 *       and the VLM, bidirectional for LLaDA); the float32 logits [T, V] go
 *       to FILE.npy (NumPy format 1.0, written atomically). FILE.json holds
 *       the ids: a JSON array of integers, or an object with an "ids"
 *       array (a dvl-prep tokenize line). VLM: each image is a PNG/JPEG
 *       (--image, repeatable, SigLIP preprocessing: pad to square, bicubic
 *       resize, normalise) or one preprocessed tensor [n,] 3, S, S
 *       ("pixel_values" or the file's only tensor); the ids hold the image
 *       placeholder (config image_token_index) once per image, or already
 *       expanded to one per patch. T counts the expanded sequence.
 *       --device cuda: the forward pass on GPU 0 (as for generation below),
 *       the logits copied back.
 *
 *   --model DIR [--image FILE] (--prompt TEXT | --prompts FILE.jsonl |
 *           --ids FILE.json) [--mode block|full|ar] [--block-size B]
 *           [--steps S] [--remasking static|dynamic] [--threshold T]
 *           [--temperature T] [--top-k K] [--top-p P] [--max-new-tokens N]
 *           [--seed S] [--mask-id ID] [--tokenizer DIR] [--system TEXT]
 *           [--timing] [--device cpu|cuda]
 *       Generation (diffusion/generate.h): block diffusion with KV cache
 *       (default), diffusion recomputing the whole sequence (full, the
 *       LLaDA-style baseline), or autoregressive with KV cache (ar). A
 *       prompt is wrapped in the model's chat template (system message,
 *       user turn with the image slot when --image is given, assistant
 *       header); the answer streams to stdout block by block and stops at
 *       <|im_end|> (and the tokenizer's eos) or after --max-new-tokens.
 *       --prompts: one JSON object per line, {"prompt": TEXT, "image": FILE
 *       (optional)}; one JSON line out per prompt ({"text", "ids", "tokens",
 *       "forwards", "seconds"}). --batch N: N lines at a time in one batch
 *       (dvl_generate_batch: the same answers as one by one; forwards and
 *       seconds are then the batch's).
 *       --eval DIR/heldout.json --meta DIR/heldout_meta.jsonl [--limit N]:
 *       the synthetic dataset's held-out split (data/synth.h): each
 *       sample's question about its image, the answer scored against the
 *       meta's ground truth (exact answer; and shape, colour and count named
 *       correctly); one JSON line per sample, then a summary line.
 *       --ids: token ids used as given (no template; VLM placeholders as in
 *       --score); the generated ids go to stdout as a JSON array.
 *       Tokenizer: --tokenizer DIR, else MODEL/tokenizer, else MODEL. Mask
 *       id: --mask-id, else config mask_token_id (LLaDA's, or the one a
 *       dvl-train stage-2 export records), else the tokenizer's <|mask|>.
 *       Block size: --block-size, else the export's diffusion_block_size,
 *       else 8. --device cuda: the model is loaded on the host and its
 *       store moved to GPU 0, where generation runs (the same tokens as
 *       the CPU's up to float rounding: f32 on both); a build without CUDA
 *       or a machine without a usable GPU is an error naming --device.
 *       --precision bf16 (with --device cuda; generation and --score): bf16
 *       products with f32 accumulation (linear layers, LM head, attention)
 *       on bf16 copies of the weights kept on the GPU (dvl_params_keep_bf16,
 *       +2 bytes per parameter); tokens may differ from f32's where two
 *       candidates are within bf16 rounding. Default f32.
 *       --attention f32|tf32|bf16 (with --device cuda): the tiled attention
 *       kernels in that arithmetic instead of --precision's (as dvl-train's
 *       train.attention_precision): bf16 products on the TF32 kernels give
 *       the bf16 kernels a baseline, or a fallback, without a rebuild.
 *
 * Each program mode is a row in MODES (generation when none is given) and
 * its options are the rows of OPTS whose mask includes it.
 *
 * Errors: one line on stderr, exit 1 (2 for bad usage). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "diffusion/generate.h"
#include "io/atomic_file.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "models/model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

#define PROG "dvl-generate"
#define MAX_IMAGES 64

/* ------------------------------------------------------------ arguments */

typedef enum mode { MODE_NONE = 0, MODE_SCORE = 1, MODE_GEN = 2 } mode;

typedef struct args {
    mode mode;
    const char *model, *ids, *pixels, *logits_out;
    const char *prompt, *prompts, *eval, *meta, *limit, *batch, *tokenizer, *system, *gen_mode, *remasking;
    const char *block_size, *steps, *threshold, *temperature, *top_k, *top_p, *max_new, *seed,
        *mask_id, *device, *precision, *attention;
    const char *images[MAX_IMAGES];
    int n_images;
    bool timing;
} args;

static const struct {
    const char *flag;
    mode mode;
} MODES[] = {{"--score", MODE_SCORE}};

enum kind { OPT_STR, OPT_LIST, OPT_FLAG };
/* Each option: where it goes and the modes (bit mask) that take it. */
static const struct {
    const char *name;
    enum kind kind;
    size_t off;
    unsigned modes;
} OPTS[] = {
    {"--model", OPT_STR, offsetof(args, model), 1u << MODE_SCORE | 1u << MODE_GEN},
    {"--ids", OPT_STR, offsetof(args, ids), 1u << MODE_SCORE | 1u << MODE_GEN},
    {"--image", OPT_LIST, offsetof(args, images), 1u << MODE_SCORE | 1u << MODE_GEN},
    {"--pixels", OPT_STR, offsetof(args, pixels), 1u << MODE_SCORE},
    {"--logits-out", OPT_STR, offsetof(args, logits_out), 1u << MODE_SCORE},
    {"--timing", OPT_FLAG, offsetof(args, timing), 1u << MODE_SCORE | 1u << MODE_GEN},
    {"--prompt", OPT_STR, offsetof(args, prompt), 1u << MODE_GEN},
    {"--prompts", OPT_STR, offsetof(args, prompts), 1u << MODE_GEN},
    {"--eval", OPT_STR, offsetof(args, eval), 1u << MODE_GEN},
    {"--meta", OPT_STR, offsetof(args, meta), 1u << MODE_GEN},
    {"--limit", OPT_STR, offsetof(args, limit), 1u << MODE_GEN},
    {"--batch", OPT_STR, offsetof(args, batch), 1u << MODE_GEN},
    {"--tokenizer", OPT_STR, offsetof(args, tokenizer), 1u << MODE_GEN},
    {"--system", OPT_STR, offsetof(args, system), 1u << MODE_GEN},
    {"--mode", OPT_STR, offsetof(args, gen_mode), 1u << MODE_GEN},
    {"--remasking", OPT_STR, offsetof(args, remasking), 1u << MODE_GEN},
    {"--block-size", OPT_STR, offsetof(args, block_size), 1u << MODE_GEN},
    {"--steps", OPT_STR, offsetof(args, steps), 1u << MODE_GEN},
    {"--threshold", OPT_STR, offsetof(args, threshold), 1u << MODE_GEN},
    {"--temperature", OPT_STR, offsetof(args, temperature), 1u << MODE_GEN},
    {"--top-k", OPT_STR, offsetof(args, top_k), 1u << MODE_GEN},
    {"--top-p", OPT_STR, offsetof(args, top_p), 1u << MODE_GEN},
    {"--max-new-tokens", OPT_STR, offsetof(args, max_new), 1u << MODE_GEN},
    {"--seed", OPT_STR, offsetof(args, seed), 1u << MODE_GEN},
    {"--mask-id", OPT_STR, offsetof(args, mask_id), 1u << MODE_GEN},
    {"--device", OPT_STR, offsetof(args, device), (1u << MODE_GEN) | (1u << MODE_SCORE)},
    {"--precision", OPT_STR, offsetof(args, precision), (1u << MODE_GEN) | (1u << MODE_SCORE)},
    {"--attention", OPT_STR, offsetof(args, attention), (1u << MODE_GEN) | (1u << MODE_SCORE)},
};
#define N_OPTS (sizeof OPTS / sizeof *OPTS)

static int usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --score --model DIR --ids FILE.json\n"
               "           [--image FILE ... | --pixels FILE.safetensors]\n"
               "           --logits-out FILE.npy [--timing] [--device cpu|cuda]\n"
               "           [--precision f32|bf16 (cuda)] [--attention f32|tf32|bf16 (cuda)]\n"
               "  --score  one forward pass in the model's native attention; float32 logits\n"
               "           [T, V] to FILE.npy (--timing: forward time on stderr)\n"
               "       " PROG " --model DIR [--image FILE] (--prompt TEXT | --prompts FILE.jsonl |\n"
               "           --ids FILE.json) [--mode block|full|ar] [--block-size B] [--steps S]\n"
               "           [--remasking static|dynamic] [--threshold T] [--temperature T]\n"
               "           [--top-k K] [--top-p P] [--max-new-tokens N] [--seed S]\n"
               "           [--mask-id ID] [--tokenizer DIR] [--system TEXT] [--timing]\n"
               "           [--batch N (with --prompts)] [--device cpu|cuda]\n"
               "           [--precision f32|bf16 (cuda: bf16 products on bf16 weight copies)]\n"
               "           [--attention f32|tf32|bf16 (cuda: attention's kernels, default as\n"
               "           --precision)]\n"
               "       " PROG " --model DIR --eval DIR/heldout.json --meta DIR/heldout_meta.jsonl\n"
               "           [--limit N] [decoding options]\n"
               "  generate: block diffusion with KV cache (default), full recompute, or AR\n");
    return f == stderr ? 2 : 0;
}

static int bad_usage(const char *fmt, const char *a)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    return 2;
}

/* Returns 0, or an exit code after printing one line. */
static int parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        size_t m = 0;
        while (m < sizeof MODES / sizeof *MODES && strcmp(argv[i], MODES[m].flag))
            m++;
        if (m < sizeof MODES / sizeof *MODES) {
            if (a->mode)
                return bad_usage("give one mode (%s is a second)", argv[i]);
            a->mode = MODES[m].mode;
            continue;
        }
        size_t k = 0;
        while (k < N_OPTS && strcmp(argv[i], OPTS[k].name))
            k++;
        if (k == N_OPTS)
            return bad_usage("unknown option %s", argv[i]);
        char *dst = (char *)a + OPTS[k].off;
        if (OPTS[k].kind == OPT_FLAG) {
            *(bool *)dst = true;
            continue;
        }
        if (i + 1 >= argc)
            return bad_usage("%s needs a value", argv[i]);
        const char *v = argv[++i];
        if (OPTS[k].kind == OPT_LIST) {
            if (a->n_images == MAX_IMAGES)
                return bad_usage("too many %s (at most 64)", OPTS[k].name);
            a->images[a->n_images++] = v;
        } else {
            if (*(const char **)dst)
                return bad_usage("%s given twice", OPTS[k].name);
            *(const char **)dst = v;
        }
    }
    if (!a->mode)
        a->mode = MODE_GEN;
    /* Options given must belong to the mode. */
    for (size_t k = 0; k < N_OPTS; k++) {
        const char *dst = (const char *)a + OPTS[k].off;
        bool given = OPTS[k].kind == OPT_FLAG   ? *(const bool *)dst
                     : OPTS[k].kind == OPT_LIST ? a->n_images > 0
                                                : *(const char *const *)dst != NULL;
        if (given && !(OPTS[k].modes & (1u << a->mode)))
            return bad_usage("%s does not apply to this mode", OPTS[k].name);
    }
    if (a->mode == MODE_GEN) {
        if (!a->model)
            return bad_usage("%s", "--model DIR is required");
        int given = !!a->prompt + !!a->prompts + !!a->ids + !!a->eval;
        if (given != 1)
            return bad_usage("%s", "give one of --prompt TEXT, --prompts FILE.jsonl, --ids FILE.json, "
                                   "--eval FILE.json");
        if (!a->eval != !a->meta)
            return bad_usage("%s", "--eval FILE.json and --meta FILE.jsonl go together");
        if (a->eval && a->n_images)
            return bad_usage("%s", "--eval names its images per sample; drop --image");
        if (a->n_images > 1)
            return bad_usage("%s", "generation takes at most one --image");
        if (a->prompts && a->n_images)
            return bad_usage("%s", "--prompts names its images per line (\"image\"); drop --image");
    }
    if (a->mode == MODE_SCORE) {
        if (!a->model)
            return bad_usage("%s --model DIR is required", "--score:");
        if (!a->ids)
            return bad_usage("%s --ids FILE.json is required", "--score:");
        if (!a->logits_out)
            return bad_usage("%s --logits-out FILE.npy is required", "--score:");
        if (a->pixels && a->n_images)
            return bad_usage("%s give --image or --pixels, not both", "--score:");
    }
    return 0;
}

/* --------------------------------------------------------------- inputs */

/* Ids from a JSON array, or the "ids" array of an object. */
static int32_t *load_ids(const char *path, int64_t *n, dvl_err *err)
{
    cJSON *j = NULL;
    /* dvl_json_load wants an object; an array is read here directly. */
    FILE *f = fopen(path, "rb");
    if (!f) {
        dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)len) {
        free(buf);
        dvl_errf(err, DVL_EIO, "%s: cannot read", path);
        return NULL;
    }
    buf[len] = 0;
    j = cJSON_ParseWithLength(buf, (size_t)len);
    free(buf);
    if (!j) {
        dvl_errf(err, DVL_EINVAL, "%s: malformed JSON", path);
        return NULL;
    }
    const cJSON *arr = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "ids") : j;
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0) {
        cJSON_Delete(j);
        dvl_errf(err, DVL_EINVAL, "%s: want a non-empty JSON array of token ids (or {\"ids\": [...]})",
                 path);
        return NULL;
    }
    int64_t m = cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = malloc((size_t)m * sizeof *ids);
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= INT32_MAX) ||
            v->valuedouble != floor(v->valuedouble)) {
            dvl_errf(err, DVL_EINVAL, "%s: id %lld is not a 32-bit integer", path, (long long)i);
            free(ids);
            cJSON_Delete(j);
            return NULL;
        }
        ids[i++] = (int32_t)v->valuedouble;
    }
    cJSON_Delete(j);
    *n = m;
    return ids;
}

static void shape_str(const int64_t *shape, int nd, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < nd && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

/* Preprocessed pixels [n, C, S, S] from --pixels or the --image files. */
static float *load_pixels(const args *a, const dvl_siglip_config *vc, int64_t *n_img, dvl_err *err)
{
    int64_t C = vc->channels, S = vc->image_size, per = C * S * S;
    if (a->pixels) {
        dvl_st_file *f = dvl_st_open(a->pixels, err);
        if (!f)
            return NULL;
        const dvl_st_tensor *t = dvl_st_find(f, "pixel_values", NULL);
        if (!t && dvl_st_count(f) == 1)
            t = dvl_st_tensor_at(f, 0);
        if (!t) {
            dvl_errf(err, DVL_EINVAL, "%s: no tensor \"pixel_values\" (and not exactly one tensor)",
                     a->pixels);
            dvl_st_close(f);
            return NULL;
        }
        bool ok = (t->ndim == 3 || t->ndim == 4) && t->shape[t->ndim - 3] == C &&
                  t->shape[t->ndim - 2] == S && t->shape[t->ndim - 1] == S &&
                  (t->ndim == 3 || t->shape[0] >= 1);
        if (!ok) {
            char s[128];
            shape_str(t->shape, t->ndim, s, sizeof s);
            dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" has shape %s; the model wants [n,] %lld, %lld, %lld",
                     a->pixels, t->name, s, (long long)C, (long long)S, (long long)S);
            dvl_st_close(f);
            return NULL;
        }
        *n_img = t->ndim == 4 ? t->shape[0] : 1;
        float *px = malloc((size_t)t->numel * sizeof *px);
        int rc = px ? dvl_st_tensor_read_f32(t, px, t->numel, err)
                    : dvl_errf(err, DVL_ENOMEM, "out of memory");
        dvl_st_close(f);
        if (rc) {
            free(px);
            return NULL;
        }
        return px;
    }
    if (C != 3) {
        dvl_errf(err, DVL_EUNSUP, "--image: the tower takes %lld channels, images have 3", (long long)C);
        return NULL;
    }
    float *px = malloc((size_t)(a->n_images * per) * sizeof *px);
    if (!px) {
        dvl_errf(err, DVL_ENOMEM, "out of memory");
        return NULL;
    }
    for (int i = 0; i < a->n_images; i++) {
        dvl_image img = {0};
        int rc = dvl_image_load(a->images[i], &img, err);
        if (!rc)
            rc = dvl_siglip_preprocess(&img, (int)S, px + i * per, err);
        dvl_image_free(&img);
        if (rc) {
            free(px);
            return NULL;
        }
    }
    *n_img = a->n_images;
    return px;
}

/* -------------------------------------------------------------- output */

/* NumPy format 1.0: magic, version, little-endian u16 header length, the
 * header dict padded with spaces and ended by '\n' so the data starts on a
 * 64-byte boundary, then the data (little-endian f32, C order). */
static int write_npy(const char *path, const float *x, int64_t rows, int64_t cols, dvl_err *err)
{
    char dict[256];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    size_t total = 10 + (size_t)n + 1; /* magic..len, dict, '\n' */
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    unsigned char head[10 + 256];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)n);
    memset(head + 10 + n, ' ', pad);
    head[10 + n + pad] = '\n';
    dvl_afile f;
    int rc = dvl_afile_open(&f, path, err);
    if (rc)
        return rc;
    rc = dvl_afile_write(&f, head, 10 + hlen, err);
    if (!rc)
        rc = dvl_afile_write(&f, x, (size_t)(rows * cols) * sizeof *x, err);
    if (rc) {
        dvl_afile_abort(&f);
        return rc;
    }
    return dvl_afile_commit(&f, err);
}

/* ---------------------------------------------------------------- score */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int open_device(const char *name, bool *cuda, dvl_err *err);
static int parse_precision(const args *a, bool cuda, bool *bf16, int *attention, dvl_err *err);
static int place_model(dvl_model *m, bool cuda, bool bf16, dvl_err *err);

static int score(const args *a, dvl_err *err)
{
    dvl_model m;
    bool cuda = false;
    dvl_gen_opts prec; /* only its products' and attention's arithmetic */
    dvl_gen_opts_default(&prec);
    int rc = open_device(a->device, &cuda, err);
    if (rc || (rc = parse_precision(a, cuda, &prec.bf16, &prec.attention, err)) ||
        (rc = dvl_model_open(&m, a->model, false, NULL, err)))
        return rc;
    int32_t *ids = NULL, *expanded = NULL;
    float *px = NULL, *host_logits = NULL;
    dvl_ctx *ctx = NULL;
    int64_t n = 0, n_img = 0;
    if (m.cfg.arch == DVL_ARCH_SIGLIP) {
        rc = dvl_errf(err, DVL_EINVAL, "%s is a vision tower (siglip); --score needs a language model",
                      a->model);
        goto done;
    }
    if (!(ids = load_ids(a->ids, &n, err))) {
        rc = err->code;
        goto done;
    }
    if (m.cfg.arch != DVL_ARCH_VLM && (a->pixels || a->n_images)) {
        rc = dvl_errf(err, DVL_EINVAL, "%s is a %s model without a vision tower; drop --image/--pixels",
                      a->model, dvl_arch_name(m.cfg.arch));
        goto done;
    }
    if (m.cfg.arch == DVL_ARCH_VLM) {
        if ((a->pixels || a->n_images) && !(px = load_pixels(a, &m.cfg.vision, &n_img, err))) {
            rc = err->code;
            goto done;
        }
        const dvl_vlm_config *vc = &m.cfg.vlm;
        int64_t k = dvl_vlm_count_image_tokens(vc, ids, n), P = dvl_siglip_patches(&vc->vision);
        if (k != n_img * P) {
            if (k != n_img) {
                rc = dvl_errf(err, DVL_EINVAL,
                              "%s: %lld image placeholder ids (%d) for %lld image(s): want one per "
                              "image, or %lld per image",
                              a->ids, (long long)k, vc->image_token_index, (long long)n_img,
                              (long long)P);
                goto done;
            }
            int64_t ne = dvl_vlm_expand_ids(vc, ids, n, NULL);
            expanded = malloc((size_t)ne * sizeof *expanded);
            if (!expanded) {
                rc = dvl_errf(err, DVL_ENOMEM, "out of memory");
                goto done;
            }
            dvl_vlm_expand_ids(vc, ids, n, expanded);
            free(ids);
            ids = expanded;
            expanded = NULL;
            n = ne;
        }
    }
    if ((rc = place_model(&m, cuda, prec.bf16, err)))
        goto done;
    if (!(ctx = dvl_ctx_new_err(cuda ? DVL_CUDA : DVL_CPU, err))) {
        rc = err->code;
        goto done;
    }
    if ((rc = dvl_gen_set_precision(ctx, &prec, err)))
        goto done;
    dvl_set_grad_enabled(ctx, false);
    double t0 = now();
    dvl_tensor *h, *logits;
    if (m.cfg.arch == DVL_ARCH_VLM) {
        int64_t s4[4] = {n_img, m.cfg.vision.channels, m.cfg.vision.image_size,
                         m.cfg.vision.image_size};
        dvl_vlm_input in = {.batch = 1,
                            .seq = n,
                            .ids = ids,
                            .pixels = !n_img ? NULL
                                      : cuda ? dvl_from_host(ctx, DVL_F32, 4, s4, px)
                                             : dvl_wrap(ctx, DVL_F32, 4, s4, px)};
        h = dvl_vlm_forward(ctx, &m.vlm, &in);
        logits = dvl_lm_logits(ctx, &m.vlm.lm, h);
    } else {
        dvl_lm_input in = {.batch = 1, .seq = n, .ids = ids};
        h = dvl_lm_forward(ctx, &m.lm, &in);
        logits = dvl_lm_logits(ctx, &m.lm, h);
    }
    if (!logits) {
        rc = dvl_errf(err, dvl_ctx_err(ctx)->code ? dvl_ctx_err(ctx)->code : DVL_EINVAL, "%s",
                      dvl_ctx_err(ctx)->msg);
        goto done;
    }
    const float *out = dvl_f32(logits);
    if (cuda) { /* to the host (waits for the GPU, so before the clock stops) */
        host_logits = malloc((size_t)dvl_numel(logits) * sizeof(float));
        if (!host_logits) {
            rc = dvl_errf(err, DVL_ENOMEM, "out of memory");
            goto done;
        }
        if ((rc = dvl_tensor_to_host(ctx, logits, host_logits))) {
            rc = dvl_errf(err, rc, "%s", dvl_ctx_err(ctx)->msg);
            goto done;
        }
        out = host_logits;
    }
    double dt = now() - t0;
    if (a->timing)
        fprintf(stderr, "forward: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)n, dt,
                (double)n / dt);
    rc = write_npy(a->logits_out, out, logits->shape[0], logits->shape[1], err);
done:
    free(host_logits);
    dvl_ctx_free(ctx);
    free(ids);
    free(expanded);
    free(px);
    dvl_model_free(&m);
    return rc;
}

/* ------------------------------------------------------------ generate */

static int opt_int(const char *flag, const char *v, int64_t lo, int64_t *out, dvl_err *err)
{
    if (!v)
        return DVL_OK;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo)
        return dvl_errf(err, DVL_EINVAL, "%s must be an integer >= %lld (got %s)", flag,
                        (long long)lo, v);
    *out = x;
    return DVL_OK;
}

static int opt_float(const char *flag, const char *v, double lo, double hi, float *out,
                     dvl_err *err)
{
    if (!v)
        return DVL_OK;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi))
        return dvl_errf(err, DVL_EINVAL, "%s must be a number in [%g, %g] (got %s)", flag, lo, hi,
                        v);
    *out = (float)x;
    return DVL_OK;
}

/* The decoding options from the arguments (model-independent checks). */
static int gen_opts(const args *a, dvl_gen_opts *o, dvl_err *err)
{
    dvl_gen_opts_default(o);
    if (a->gen_mode) {
        if (!strcmp(a->gen_mode, "block"))
            o->mode = DVL_GEN_BLOCK;
        else if (!strcmp(a->gen_mode, "full"))
            o->mode = DVL_GEN_FULL;
        else if (!strcmp(a->gen_mode, "ar"))
            o->mode = DVL_GEN_AR;
        else
            return dvl_errf(err, DVL_EINVAL, "--mode must be block, full or ar (got %s)",
                            a->gen_mode);
    }
    if (a->remasking) {
        if (!strcmp(a->remasking, "static"))
            o->sampler.remask = DVL_REMASK_STATIC;
        else if (!strcmp(a->remasking, "dynamic"))
            o->sampler.remask = DVL_REMASK_DYNAMIC;
        else
            return dvl_errf(err, DVL_EINVAL, "--remasking must be static or dynamic (got %s)",
                            a->remasking);
    }
    int64_t B = o->block_size, S = -1, k = 0, seed = 0, mask = -1;
    int rc = opt_int("--block-size", a->block_size, 1, &B, err);
    if (!rc)
        rc = opt_int("--steps", a->steps, 1, &S, err);
    if (!rc && (B > 4096 || S > B))
        rc = S > B ? dvl_errf(err, DVL_EINVAL, "--steps %lld exceeds the block size %lld",
                              (long long)S, (long long)B)
                   : dvl_errf(err, DVL_EINVAL, "--block-size %lld is too large (at most 4096)",
                              (long long)B);
    if (!rc)
        rc = opt_int("--top-k", a->top_k, 0, &k, err);
    if (!rc)
        rc = opt_int("--max-new-tokens", a->max_new, 1, &o->max_new, err);
    if (!rc)
        rc = opt_int("--seed", a->seed, 0, &seed, err);
    if (!rc)
        rc = opt_int("--mask-id", a->mask_id, 0, &mask, err);
    if (!rc)
        rc = opt_float("--threshold", a->threshold, 0, 1, &o->sampler.tau, err);
    if (!rc)
        rc = opt_float("--temperature", a->temperature, 0, 1e6, &o->sampler.temperature, err);
    if (!rc)
        rc = opt_float("--top-p", a->top_p, 0, 1, &o->sampler.top_p, err);
    if (!rc && mask > INT32_MAX)
        rc = dvl_errf(err, DVL_EINVAL, "--mask-id %lld is out of range", (long long)mask);
    if (rc)
        return rc;
    o->block_size = (int)B;
    o->steps = S > 0 ? (int)S : (int)B; /* DiffusionVL: steps = block size */
    o->sampler.top_k = (int)(k > INT32_MAX ? INT32_MAX : k);
    o->seed = (uint64_t)seed;
    o->mask_id = (int32_t)mask;
    return DVL_OK;
}

static bool is_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* Everything one generation run shares across prompts. */
typedef struct genrun {
    const args *a;
    dvl_model m;
    bool m_open;
    dvl_tokenizer *tok;
    dvl_tokenizer_state *st;
    dvl_chat *chat;
    dvl_chat_out co;
    dvl_gen_opts o;
    int32_t stop[3];
    bool stream; /* write each block's text to stdout as it finishes */
} genrun;

static void stream_tokens(void *user, int seq, const int32_t *ids, int64_t n)
{
    (void)seq;
    genrun *g = user;
    if (!g->stream)
        return;
    /* Raw token bytes: a character split across blocks is completed by the
     * next write. */
    for (int64_t i = 0; i < n; i++) {
        size_t len;
        const char *b = dvl_tokenizer_token_bytes(g->tok, ids[i], &len);
        if (b)
            fwrite(b, 1, len, stdout);
    }
    fflush(stdout);
}

/* Prompt ids for text (chat template: system, user turn with the image
 * slot, assistant header), expanded for the VLM. */
static int32_t *prompt_ids(genrun *g, const char *text, bool image, int64_t *n, dvl_err *err)
{
    char *t = NULL;
    if (image && !strstr(text, "<image>")) {
        size_t len = strlen(text);
        t = malloc(len + 9);
        if (!t) {
            dvl_errf(err, DVL_ENOMEM, "out of memory");
            return NULL;
        }
        memcpy(t, "<image>\n", 8);
        memcpy(t + 8, text, len + 1);
        text = t;
    }
    /* An empty assistant turn: its first supervised token (the closing
     * marker) is where the answer starts. */
    dvl_chat_turn turns[2] = {{DVL_ROLE_USER, text, strlen(text)}, {DVL_ROLE_ASSISTANT, "", 0}};
    int rc = dvl_chat_encode(g->chat, g->st, turns, 2, image, &g->co, err);
    free(t);
    if (rc)
        return NULL;
    int64_t cut = g->co.n;
    for (int64_t i = g->co.n - 1; i >= 0 && g->co.labels[i] != DVL_IGNORE_INDEX; i--)
        cut = i;
    if (g->co.image_pos >= 0 && g->m.cfg.arch == DVL_ARCH_VLM)
        g->co.ids[g->co.image_pos] = g->m.cfg.vlm.image_token_index;
    int64_t ne = g->m.cfg.arch == DVL_ARCH_VLM ? dvl_vlm_expand_ids(&g->m.cfg.vlm, g->co.ids, cut, NULL)
                                               : cut;
    int32_t *ids = malloc((size_t)ne * sizeof *ids);
    if (!ids) {
        dvl_errf(err, DVL_ENOMEM, "out of memory");
        return NULL;
    }
    if (g->m.cfg.arch == DVL_ARCH_VLM)
        dvl_vlm_expand_ids(&g->m.cfg.vlm, g->co.ids, cut, ids);
    else
        memcpy(ids, g->co.ids, (size_t)cut * sizeof *ids);
    *n = ne;
    return ids;
}

static void print_timing(const dvl_gen_result *r)
{
    double n = r->n > 0 ? (double)r->n : 1.0;
    fprintf(stderr,
            "%lld tokens in %.3f s (%.1f tokens/s), %lld forwards (%.3f per token, %.2f tokens per "
            "forward)%s\n",
            (long long)r->n, r->seconds, (double)r->n / (r->seconds > 0 ? r->seconds : 1e-9),
            (long long)r->forwards, (double)r->forwards / n, n / (double)(r->forwards ? r->forwards : 1),
            r->stopped ? ", stopped" : "");
}

/* One prompt: text (with the template) or ids (as given), image or NULL.
 * Writes the answer to stdout in the form the input mode asks. */
static int prep_one(genrun *g, const char *text, const int32_t *given, int64_t n_given,
                    const char *image, int32_t **ids_out, int64_t *n_out, float **px_out,
                    dvl_err *err)
{
    int32_t *ids = NULL;
    float *px = NULL;
    int64_t n = 0, n_img = 0;
    int rc = DVL_OK;
    if (image && g->m.cfg.arch != DVL_ARCH_VLM) {
        rc = dvl_errf(err, DVL_EINVAL, "%s is a %s model without a vision tower; drop the image",
                      g->a->model, dvl_arch_name(g->m.cfg.arch));
        goto done;
    }
    if (image) {
        args one = {0};
        one.images[0] = image;
        one.n_images = 1;
        if (!(px = load_pixels(&one, &g->m.cfg.vision, &n_img, err))) {
            rc = err->code;
            goto done;
        }
    }
    if (text) {
        if (!(ids = prompt_ids(g, text, image != NULL, &n, err))) {
            rc = err->code;
            goto done;
        }
    } else {
        const dvl_vlm_config *vc = &g->m.cfg.vlm;
        bool vlm = g->m.cfg.arch == DVL_ARCH_VLM;
        int64_t k = vlm ? dvl_vlm_count_image_tokens(vc, given, n_given) : 0;
        int64_t P = vlm ? dvl_siglip_patches(&vc->vision) : 1;
        if (vlm && k != n_img * P && k != n_img) {
            rc = dvl_errf(err, DVL_EINVAL,
                          "%s: %lld image placeholder ids (%d) for %lld image(s): want one per "
                          "image, or %lld per image",
                          g->a->ids, (long long)k, vc->image_token_index, (long long)n_img,
                          (long long)P);
            goto done;
        }
        bool expand = vlm && k == n_img && k != n_img * P;
        n = expand ? dvl_vlm_expand_ids(vc, given, n_given, NULL) : n_given;
        if (!(ids = malloc((size_t)n * sizeof *ids))) {
            rc = dvl_errf(err, DVL_ENOMEM, "out of memory");
            goto done;
        }
        if (expand)
            dvl_vlm_expand_ids(vc, given, n_given, ids);
        else
            memcpy(ids, given, (size_t)n * sizeof *ids);
    }
    *ids_out = ids;
    *n_out = n;
    *px_out = px;
    return DVL_OK;
done:
    free(ids);
    free(px);
    return rc;
}

/* The answer in the form the input mode asks: streamed text (already
 * written) and a newline, a JSON line (--prompts), or a JSON array (--ids). */
static void print_result(genrun *g, const dvl_gen_result *r)
{
    if (g->a->prompt) {
        printf("\n");
    } else {
        char *txt = g->tok && g->a->prompts ? dvl_tokenizer_decode(g->tok, r->ids, r->n) : NULL;
        cJSON *j = g->a->prompts ? cJSON_CreateObject() : NULL;
        cJSON *arr = cJSON_CreateArray();
        for (int64_t i = 0; i < r->n; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(r->ids[i]));
        if (j) {
            cJSON_AddStringToObject(j, "text", txt ? txt : "");
            cJSON_AddItemToObject(j, "ids", arr);
            cJSON_AddNumberToObject(j, "tokens", (double)r->n);
            cJSON_AddNumberToObject(j, "forwards", (double)r->forwards);
            cJSON_AddNumberToObject(j, "seconds", r->seconds);
            cJSON_AddBoolToObject(j, "stopped", r->stopped);
        }
        char *s = cJSON_PrintUnformatted(j ? j : arr);
        if (s)
            printf("%s\n", s);
        fflush(stdout);
        free(s);
        cJSON_Delete(j ? j : arr);
        free(txt);
    }
    if (g->a->timing)
        print_timing(r);
}

/* One prompt: text (with the template) or ids (as given), image or NULL;
 * the result to keep, or printed when keep is NULL. */
static int gen_one(genrun *g, const char *text, const int32_t *given, int64_t n_given,
                   const char *image, dvl_gen_result *keep, dvl_err *err)
{
    int32_t *ids = NULL;
    float *px = NULL;
    int64_t n = 0;
    dvl_gen_result r = {0};
    int rc = prep_one(g, text, given, n_given, image, &ids, &n, &px, err);
    if (rc)
        return rc;
    g->stream = g->a->prompt != NULL;
    rc = dvl_generate(&g->m, ids, n, px, px ? 1 : 0, &g->o, &r, err);
    if (!rc && keep) {
        *keep = r;
        r.ids = NULL;
    } else if (!rc) {
        print_result(g, &r);
    }
    dvl_gen_result_free(&r);
    free(ids);
    free(px);
    return rc;
}

/* Prompts [0, k) as one batch (dvl_generate_batch), printed in order. */
static int gen_batch(genrun *g, char **texts, char **images, int k, dvl_err *err)
{
    int32_t *ids[MAX_IMAGES] = {0};
    float *px[MAX_IMAGES] = {0};
    int64_t n[MAX_IMAGES] = {0};
    dvl_gen_result r[MAX_IMAGES];
    int rc = DVL_OK;
    for (int i = 0; i < k && !rc; i++)
        rc = prep_one(g, texts[i], NULL, 0, images[i], &ids[i], &n[i], &px[i], err);
    g->stream = false;
    if (!rc)
        rc = dvl_generate_batch(&g->m, k, (const int32_t *const *)ids, n,
                                (const float *const *)px, &g->o, r, err);
    for (int i = 0; i < k; i++) {
        if (!rc) {
            print_result(g, &r[i]);
            dvl_gen_result_free(&r[i]);
        }
        free(ids[i]);
        free(px[i]);
    }
    return rc;
}

/* --prompts FILE.jsonl: {"prompt": TEXT, "image": FILE} per line, --batch
 * lines at a time. */
static int gen_jsonl(genrun *g, dvl_err *err)
{
    int64_t bs = 1;
    int rc = opt_int("--batch", g->a->batch, 1, &bs, err);
    if (!rc && bs > MAX_IMAGES)
        rc = dvl_errf(err, DVL_EINVAL, "--batch %lld is too large (at most %d)", (long long)bs,
                      MAX_IMAGES);
    if (rc)
        return rc;
    FILE *f = fopen(g->a->prompts, "rb");
    if (!f)
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", g->a->prompts, strerror(errno));
    char *line = NULL, *texts[MAX_IMAGES], *images[MAX_IMAGES];
    size_t cap = 0;
    int k = 0;
    int64_t lineno = 0;
    bool eof = false;
    while (!rc && !eof) {
        eof = getline(&line, &cap, f) <= 0;
        if (!eof) {
            lineno++;
            if (strspn(line, " \t\r\n") == strlen(line))
                continue;
            cJSON *j = cJSON_Parse(line);
            const cJSON *p = j ? cJSON_GetObjectItemCaseSensitive(j, "prompt") : NULL;
            const cJSON *im = j ? cJSON_GetObjectItemCaseSensitive(j, "image") : NULL;
            if (!cJSON_IsString(p) || (im && !cJSON_IsString(im) && !cJSON_IsNull(im))) {
                rc = dvl_errf(err, DVL_EINVAL,
                              "%s:%lld: want {\"prompt\": TEXT, \"image\": FILE (optional)}",
                              g->a->prompts, (long long)lineno);
            } else {
                texts[k] = strdup(p->valuestring);
                images[k] = cJSON_IsString(im) ? strdup(im->valuestring) : NULL;
                k++;
            }
            cJSON_Delete(j);
        }
        if (!rc && k > 0 && (k == bs || eof))
            rc = gen_batch(g, texts, images, k, err);
        if (rc || k == bs || eof) {
            for (int i = 0; i < k; i++) {
                free(texts[i]);
                free(images[i]);
            }
            k = 0;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

/* ----------------------------------------------------------------- eval */

/* The synthetic grammar's words (data/synth.c). */
static const char *const KINDS[] = {"circle", "square", "triangle", "star", "diamond"};
static const char *const COLOURS[] = {"red", "green", "blue", "yellow", "purple", "orange"};
static const char *const COUNTS[] = {"a", "an", "one", "two", "three", "four", "zero"};
static const int COUNT_VAL[] = {1, 1, 1, 2, 3, 4, 0};

/* What a text names: kinds and colours (bit sets) and the count words in
 * order (as values). */
typedef struct named {
    unsigned kinds, colours;
    int counts[16];
    int n_counts;
} named;

static named parse_named(const char *s)
{
    named n = {0};
    char w[32];
    while (*s) {
        size_t k = 0;
        while (*s && !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
            s++;
        while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')) {
            if (k + 1 < sizeof w)
                w[k++] = (char)(*s | 0x20);
            s++;
        }
        w[k] = 0;
        if (!k)
            continue;
        for (size_t i = 0; i < sizeof KINDS / sizeof *KINDS; i++) {
            size_t l = strlen(KINDS[i]);
            if (!strncmp(w, KINDS[i], l) && (w[l] == 0 || !strcmp(w + l, "s")))
                n.kinds |= 1u << i;
        }
        for (size_t i = 0; i < sizeof COLOURS / sizeof *COLOURS; i++)
            if (!strcmp(w, COLOURS[i]))
                n.colours |= 1u << i;
        for (size_t i = 0; i < sizeof COUNTS / sizeof *COUNTS; i++)
            if (!strcmp(w, COUNTS[i]) && n.n_counts < 16)
                n.counts[n.n_counts++] = COUNT_VAL[i];
    }
    return n;
}

/* Lowercased, surrounding white space dropped. */
static void norm(const char *s, char *out, size_t cap)
{
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
        s++;
    size_t k = 0;
    for (; *s && k + 1 < cap; s++)
        out[k++] = (char)((*s >= 'A' && *s <= 'Z') ? *s | 0x20 : *s);
    while (k && (out[k - 1] == ' ' || out[k - 1] == '\n' || out[k - 1] == '\t' || out[k - 1] == '\r'))
        k--;
    out[k] = 0;
}

static cJSON *load_json_file(const char *path, dvl_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    cJSON *j = buf && got == (size_t)len ? cJSON_ParseWithLength(buf, (size_t)len) : NULL;
    free(buf);
    if (!j)
        dvl_errf(err, DVL_EINVAL, "%s: cannot read or malformed JSON", path);
    return j;
}

/* --eval: the held-out conversations, scored against the meta lines (by
 * "id"). Shape and colour are judged on the questions that name them
 * (caption: the set of kinds and of colours; color: the colour), count on
 * caption (the count words in order), count and total questions. */
static int gen_eval(genrun *g, dvl_err *err)
{
    int64_t limit = INT64_MAX;
    int rc = opt_int("--limit", g->a->limit, 1, &limit, err);
    if (rc)
        return rc;
    cJSON *data = load_json_file(g->a->eval, err);
    if (!data)
        return err->code;
    FILE *mf = fopen(g->a->meta, "rb");
    if (!mf) {
        cJSON_Delete(data);
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", g->a->meta, strerror(errno));
    }
    /* Images are relative to the data file's directory. */
    char base[4096];
    snprintf(base, sizeof base, "%s", g->a->eval);
    char *slash = strrchr(base, '/');
    if (slash)
        slash[1] = 0;
    else
        base[0] = 0;
    char *line = NULL;
    size_t cap = 0;
    int64_t n = 0, exact = 0, tok = 0, fwd = 0;
    int64_t score[3] = {0}, asked[3] = {0}; /* shape, colour, count */
    double sec = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, data)
    {
        if (n >= limit || rc)
            break;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(s, "image");
        const cJSON *conv = cJSON_GetObjectItemCaseSensitive(s, "conversations");
        const cJSON *q = cJSON_GetArrayItem(conv, 0);
        q = cJSON_GetObjectItemCaseSensitive(q, "value");
        cJSON *meta = NULL;
        if (getline(&line, &cap, mf) > 0)
            meta = cJSON_Parse(line);
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(meta, "id");
        const cJSON *ans = cJSON_GetObjectItemCaseSensitive(meta, "answer");
        const cJSON *qt = cJSON_GetObjectItemCaseSensitive(meta, "question");
        if (!cJSON_IsString(id) || !cJSON_IsString(img) || !cJSON_IsString(q) ||
            !cJSON_IsString(mid) || strcmp(mid->valuestring, id->valuestring) ||
            !cJSON_IsString(ans) || !cJSON_IsString(qt)) {
            rc = dvl_errf(err, DVL_EINVAL,
                          "%s / %s: sample %lld: want id, image, conversations and a meta line "
                          "with the same id, answer and question",
                          g->a->eval, g->a->meta, (long long)n);
            cJSON_Delete(meta);
            break;
        }
        char path[8192];
        snprintf(path, sizeof path, "%s%s", img->valuestring[0] == '/' ? "" : base,
                 img->valuestring);
        dvl_gen_result r = {0};
        rc = gen_one(g, q->valuestring, NULL, 0, path, &r, err);
        if (rc) {
            cJSON_Delete(meta);
            break;
        }
        char *txt = dvl_tokenizer_decode(g->tok, r.ids, r.n);
        char a1[512], a2[512];
        norm(txt ? txt : "", a1, sizeof a1);
        norm(ans->valuestring, a2, sizeof a2);
        bool ok = !strcmp(a1, a2);
        named got = parse_named(a1), want = parse_named(a2);
        const char *qs = qt->valuestring;
        bool cap_q = !strcmp(qs, "caption");
        int res[3] = {-1, -1, -1};
        if (cap_q)
            res[0] = got.kinds == want.kinds;
        if (cap_q || !strcmp(qs, "color"))
            res[1] = got.colours == want.colours;
        if (cap_q || !strcmp(qs, "count") || !strcmp(qs, "total"))
            res[2] = got.n_counts == want.n_counts &&
                     !memcmp(got.counts, want.counts, (size_t)got.n_counts * sizeof(int));
        for (int k = 0; k < 3; k++)
            if (res[k] >= 0) {
                asked[k]++;
                score[k] += res[k];
            }
        exact += ok;
        tok += r.n;
        fwd += r.forwards;
        sec += r.seconds;
        n++;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", id->valuestring);
        cJSON_AddStringToObject(o, "question", qs);
        cJSON_AddStringToObject(o, "answer", ans->valuestring);
        cJSON_AddStringToObject(o, "text", txt ? txt : "");
        cJSON_AddBoolToObject(o, "exact", ok);
        char *js = cJSON_PrintUnformatted(o);
        if (js)
            printf("%s\n", js);
        fflush(stdout);
        free(js);
        cJSON_Delete(o);
        free(txt);
        dvl_gen_result_free(&r);
        cJSON_Delete(meta);
    }
    free(line);
    fclose(mf);
    cJSON_Delete(data);
    if (rc)
        return rc;
    if (!n)
        return dvl_errf(err, DVL_EINVAL, "%s: no samples", g->a->eval);
#define PCT(a, b) ((b) ? 100.0 * (double)(a) / (double)(b) : 0.0)
    printf("accuracy %.1f%% exact (%lld/%lld); shape %.1f%% (%lld), colour %.1f%% (%lld), count "
           "%.1f%% (%lld); %.1f tokens/s, %.3f forwards/token\n",
           PCT(exact, n), (long long)exact, (long long)n, PCT(score[0], asked[0]),
           (long long)asked[0], PCT(score[1], asked[1]), (long long)asked[1],
           PCT(score[2], asked[2]), (long long)asked[2], sec > 0 ? (double)tok / sec : 0.0,
           tok ? (double)fwd / (double)tok : 0.0);
#undef PCT
    return DVL_OK;
}

/* --device: cpu (the default) or cuda, whose GPU 0 is made ready here,
 * before the model is read. */
static int open_device(const char *name, bool *cuda, dvl_err *err)
{
    *cuda = name && !strcmp(name, "cuda");
    if (!name || !strcmp(name, "cpu"))
        return DVL_OK;
    if (!*cuda)
        return dvl_errf(err, DVL_EINVAL, "--device must be cpu or cuda (got %s)", name);
#ifdef DVL_HAVE_CUDA
    dvl_err why = {0, ""};
    if (dvl_cuda_probe(&why) == 0)
        return dvl_errf(err, DVL_EDEVICE, "--device cuda: no CUDA device is usable (%s)",
                        why.code ? why.msg : "no devices");
    if (dvl_cuda_init(0, &why))
        return dvl_errf(err, DVL_EDEVICE, "--device cuda: %s", why.msg);
    return DVL_OK;
#else
    return dvl_errf(err, DVL_EDEVICE,
                    "--device cuda: " PROG " was built without CUDA (nvcc not found at configure "
                    "time, or -Dcuda=disabled)");
#endif
}

/* --precision: f32 (default) or bf16 (bf16 products, f32 accumulation;
 * --device cuda only). --attention: -1 (not given: as --precision) or the
 * dvl_cuda_math of the attention kernels, 0 f32, 1 TF32, 2 bf16 (tf32 and
 * bf16 with --device cuda only; f32 is the CPU's own). */
static int parse_precision(const args *a, bool cuda, bool *bf16, int *attention, dvl_err *err)
{
    *bf16 = a->precision && !strcmp(a->precision, "bf16");
    if (a->precision && !*bf16 && strcmp(a->precision, "f32"))
        return dvl_errf(err, DVL_EINVAL, "--precision must be f32 or bf16 (got %s)", a->precision);
    if (*bf16 && !cuda)
        return dvl_errf(err, DVL_EINVAL,
                        "--precision bf16 needs --device cuda (the CPU computes in f32)");
    static const char *const modes[] = {"f32", "tf32", "bf16"}; /* dvl_cuda_math order */
    *attention = -1;
    if (!a->attention)
        return DVL_OK;
    for (int i = 0; i < 3; i++)
        if (!strcmp(a->attention, modes[i]))
            *attention = i;
    if (*attention < 0)
        return dvl_errf(err, DVL_EINVAL, "--attention must be f32, tf32 or bf16 (got %s)",
                        a->attention);
    if (!cuda && *attention == 0)
        *attention = -1; /* f32: what the CPU does anyway */
    else if (!cuda)
        return dvl_errf(err, DVL_EINVAL,
                        "--attention %s needs --device cuda (the CPU's attention is f32)",
                        a->attention);
    return DVL_OK;
}

/* The model loaded on the host, then (--device cuda) its store moved as a
 * whole, as dvl-train does: the model's tensors follow, and the forward
 * passes run on their device. With bf16 products, bf16 copies of the
 * weights (all frozen here), so that no product rounds a weight again: a
 * decoding step reads 2 bytes per weight instead of 4 (plus a rounding
 * pass of 6). */
static int place_model(dvl_model *m, bool cuda, bool bf16, dvl_err *err)
{
    int rc = cuda ? dvl_params_move(m->params, DVL_CUDA, err) : DVL_OK;
    return rc || !bf16 ? rc : dvl_params_keep_bf16(m->params, DVL_BF16_ALL, err);
}

static int generate(const args *a, dvl_err *err)
{
    genrun g = {.a = a};
    bool cuda = false;
    int rc = gen_opts(a, &g.o, err);
    if (rc || (rc = open_device(a->device, &cuda, err)) ||
        (rc = parse_precision(a, cuda, &g.o.bf16, &g.o.attention, err)))
        return rc;
    /* The config and the tokenizer first, so that a mismatch is one line
     * before the weights are read. */
    char dir[4096], path[4200];
    snprintf(path, sizeof path, "%s/config.json", a->model);
    dvl_model_config mc;
    if ((rc = dvl_config_load(path, &mc, err)))
        return rc;
    if (mc.arch == DVL_ARCH_SIGLIP)
        return dvl_errf(err, DVL_EINVAL,
                        "%s is a vision tower (siglip); generation needs a language model", a->model);
    const dvl_lm_config *lc = mc.arch == DVL_ARCH_VLM ? &mc.vlm.lm : &mc.lm;
    int32_t *given = NULL;
    int64_t n_given = 0;
    /* Tokenizer: --tokenizer, MODEL/tokenizer, MODEL. */
    snprintf(dir, sizeof dir, "%s/tokenizer", a->model);
    const char *tdir = a->tokenizer;
    if (!tdir) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        tdir = is_file(path) ? dir : NULL;
    }
    if (!tdir) {
        snprintf(path, sizeof path, "%s/tokenizer.json", a->model);
        tdir = is_file(path) ? a->model : NULL;
    }
    if (tdir && !(g.tok = dvl_tokenizer_load(tdir, err))) {
        rc = err->code;
        goto done;
    }
    if (!g.tok && !a->ids) {
        rc = dvl_errf(err, DVL_EINVAL, "no tokenizer in %s/tokenizer or %s; give --tokenizer DIR",
                      a->model, a->model);
        goto done;
    }
    /* As in dvl-train: ids past the embedding mean another model's tokenizer
     * (the chat template's tokens are its last ids). */
    if (g.tok && dvl_tokenizer_vocab_size(g.tok) > lc->vocab) {
        rc = dvl_errf(err, DVL_EINVAL,
                      "tokenizer %s has %lld ids, the embedding of %s has %lld rows (the tokenizer "
                      "of another model? give --tokenizer DIR)",
                      tdir, (long long)dvl_tokenizer_vocab_size(g.tok), a->model,
                      (long long)lc->vocab);
        goto done;
    }
    if (g.o.mask_id < 0 && lc->mask_token_id >= 0)
        g.o.mask_id = lc->mask_token_id;
    /* A stage-2 export names its block size: the default when none is given. */
    if (!a->block_size && lc->block_size > 0) {
        g.o.block_size = (int)lc->block_size;
        if (!a->steps)
            g.o.steps = g.o.block_size;
        else if (g.o.steps > g.o.block_size) {
            rc = dvl_errf(err, DVL_EINVAL, "--steps %d exceeds the model's block size %d",
                          g.o.steps, g.o.block_size);
            goto done;
        }
    }
    if (g.o.mask_id < 0 && g.tok)
        g.o.mask_id = dvl_tokenizer_token_id(g.tok, "<|mask|>");
    if (g.o.mode != DVL_GEN_AR && g.o.mask_id < 0) {
        rc = dvl_errf(err, DVL_EINVAL,
                      "no mask token: the config has no mask_token_id and the tokenizer no "
                      "<|mask|>; give --mask-id ID or --mode ar");
        goto done;
    }
    if (g.tok) {
        int32_t c[3] = {dvl_tokenizer_token_id(g.tok, "<|im_end|>"),
                        dvl_tokenizer_token_id(g.tok, "<|eot_id|>"), dvl_tokenizer_eos_id(g.tok)};
        for (int i = 0; i < 3; i++) {
            bool dup = c[i] < 0;
            for (int k = 0; k < g.o.n_stop; k++)
                dup |= g.stop[k] == c[i];
            if (!dup)
                g.stop[g.o.n_stop++] = c[i];
        }
        g.o.stop_ids = g.stop;
    }
    g.o.on_tokens = stream_tokens;
    g.o.user = &g;
    if (a->prompt || a->prompts || a->eval) {
        dvl_chat_opts co;
        dvl_chat_opts_default(&co);
        co.tmpl = lc->arch == DVL_ARCH_LLADA ? DVL_CHAT_LLADA : DVL_CHAT_QWEN;
        co.system = a->system;
        co.image_tokens = 1; /* expanded afterwards */
        if (!(g.chat = dvl_chat_new(g.tok, &co, err)) ||
            !(g.st = dvl_tokenizer_state_new(g.tok, err))) {
            rc = err->code;
            goto done;
        }
    }
    /* Every option checked: now the weights. */
    if ((rc = dvl_model_open(&g.m, a->model, false, NULL, err)))
        goto done;
    g.m_open = true;
    if ((rc = place_model(&g.m, cuda, g.o.bf16, err)))
        goto done;
    if (a->ids) {
        if (!(given = load_ids(a->ids, &n_given, err))) {
            rc = err->code;
            goto done;
        }
        rc = gen_one(&g, NULL, given, n_given, a->n_images ? a->images[0] : NULL, NULL, err);
    } else if (a->prompt) {
        rc = gen_one(&g, a->prompt, NULL, 0, a->n_images ? a->images[0] : NULL, NULL, err);
    } else if (a->eval) {
        rc = gen_eval(&g, err);
    } else {
        rc = gen_jsonl(&g, err);
    }
done:
    free(given);
    dvl_chat_out_free(&g.co);
    dvl_chat_free(g.chat);
    dvl_tokenizer_state_free(g.st);
    dvl_tokenizer_free(g.tok);
    if (g.m_open)
        dvl_model_free(&g.m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))
        return usage(stdout);
    if (argc < 2)
        return usage(stderr);
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc;
    dvl_err err = {0};
    switch (a.mode) {
    case MODE_SCORE: rc = score(&a, &err); break;
    case MODE_GEN: rc = generate(&a, &err); break;
    default: rc = dvl_errf(&err, DVL_EINVAL, "no mode");
    }
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        return 1;
    }
    return 0;
}
