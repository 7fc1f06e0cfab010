/* dvl-generate: run a model directory on token ids.
 *
 *   --score --model DIR --ids FILE.json [--image FILE ... | --pixels FILE.safetensors]
 *           --logits-out FILE.npy [--timing]
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
 *
 * Decoding modes come later; each mode is a row in MODES and its options
 * are the rows of OPTS whose mask includes it.
 *
 * Errors: one line on stderr, exit 1 (2 for bad usage). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "io/atomic_file.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "models/model.h"

#define PROG "dvl-generate"
#define MAX_IMAGES 64

/* ------------------------------------------------------------ arguments */

typedef enum mode { MODE_NONE = 0, MODE_SCORE = 1 } mode;

typedef struct args {
    mode mode;
    const char *model, *ids, *pixels, *logits_out;
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
    {"--model", OPT_STR, offsetof(args, model), 1u << MODE_SCORE},
    {"--ids", OPT_STR, offsetof(args, ids), 1u << MODE_SCORE},
    {"--image", OPT_LIST, offsetof(args, images), 1u << MODE_SCORE},
    {"--pixels", OPT_STR, offsetof(args, pixels), 1u << MODE_SCORE},
    {"--logits-out", OPT_STR, offsetof(args, logits_out), 1u << MODE_SCORE},
    {"--timing", OPT_FLAG, offsetof(args, timing), 1u << MODE_SCORE},
};
#define N_OPTS (sizeof OPTS / sizeof *OPTS)

static int usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --score --model DIR --ids FILE.json\n"
               "           [--image FILE ... | --pixels FILE.safetensors]\n"
               "           --logits-out FILE.npy [--timing]\n"
               "  --score  one forward pass in the model's native attention; float32 logits\n"
               "           [T, V] to FILE.npy (--timing: forward time on stderr)\n");
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
        return bad_usage("choose a mode: %s", "--score");
    /* Options given must belong to the mode. */
    for (size_t k = 0; k < N_OPTS; k++) {
        const char *dst = (const char *)a + OPTS[k].off;
        bool given = OPTS[k].kind == OPT_FLAG   ? *(const bool *)dst
                     : OPTS[k].kind == OPT_LIST ? a->n_images > 0
                                                : *(const char *const *)dst != NULL;
        if (given && !(OPTS[k].modes & (1u << a->mode)))
            return bad_usage("%s does not apply to this mode", OPTS[k].name);
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
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int32_t)v->valuedouble) {
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

static int score(const args *a, dvl_err *err)
{
    dvl_model m;
    int rc = dvl_model_open(&m, a->model, false, NULL, err);
    if (rc)
        return rc;
    int32_t *ids = NULL, *expanded = NULL;
    float *px = NULL;
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
    ctx = dvl_ctx_new(DVL_CPU);
    if (!ctx) {
        rc = dvl_errf(err, DVL_ENOMEM, "out of memory");
        goto done;
    }
    dvl_set_grad_enabled(ctx, false);
    double t0 = now();
    dvl_tensor *h, *logits;
    if (m.cfg.arch == DVL_ARCH_VLM) {
        int64_t s4[4] = {n_img, m.cfg.vision.channels, m.cfg.vision.image_size,
                         m.cfg.vision.image_size};
        dvl_vlm_input in = {.batch = 1,
                            .seq = n,
                            .ids = ids,
                            .pixels = n_img ? dvl_wrap(ctx, DVL_F32, 4, s4, px) : NULL};
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
    double dt = now() - t0;
    if (a->timing)
        fprintf(stderr, "forward: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)n, dt,
                (double)n / dt);
    rc = write_npy(a->logits_out, dvl_f32(logits), logits->shape[0], logits->shape[1], err);
done:
    dvl_ctx_free(ctx);
    free(ids);
    free(expanded);
    free(px);
    dvl_model_free(&m);
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
    default: rc = dvl_errf(&err, DVL_EINVAL, "no mode");
    }
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        return 1;
    }
    return 0;
}
