/* dvl-convert: build and inspect dvl model directories (config.json +
 * model.safetensors, sharded when large), one subcommand each.
 *
 *   init --out DIR (--lm DIR [--vision DIR] [--connector FILE | --connector-seed S]
 *                   [--image-token-id N] | --random CONFIG.json [--seed S])
 *       (--image-token-id default: dvl-prep build's choice with the LM's
 *       tokenizer, so the dataset and the model agree)
 *        [--dtype f32|bf16]
 *       --lm alone: the LM (Qwen2 or LLaDA) re-saved (dtype conversion).
 *       --lm + --vision: a LLaVA-OneVision style VLM (Qwen2 LM, SigLIP tower
 *       from a SiglipVisionModel / SiglipModel directory, mlp2x_gelu
 *       connector from a safetensors FILE or freshly initialised with seed S,
 *       default 0). --random: every weight random from the seed (default 0),
 *       for any architecture dvl runs; CONFIG.json is copied.
 *       Names and config are Hugging Face's: a Qwen2 output loads in
 *       transformers.
 *   info --model DIR
 *       Load a model directory and print its architecture and size.
 *
 * Errors: one line on stderr, exit 1 (2 for bad usage). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "models/model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

#define PROG "dvl-convert"

static int fail(const char *msg)
{
    fprintf(stderr, PROG ": %s\n", msg);
    return 1;
}

static int usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " init --out DIR (--lm DIR [--vision DIR] [--connector FILE |\n"
            "                   --connector-seed S] [--image-token-id N] |\n"
            "                   --random CONFIG.json [--seed S]) [--dtype f32|bf16]\n"
            "       " PROG " info --model DIR\n"
            "  init   build a model directory from Hugging Face parts or randomly\n"
            "         (--dtype default f32; --image-token-id default: the id dvl-prep\n"
            "         build gives <image> with the LM's tokenizer (its <image>, else its\n"
            "         vocabulary size), -200 (LLaVA's IMAGE_TOKEN_INDEX) when the LM\n"
            "         directory has no tokenizer.json; --seed / --connector-seed default 0)\n"
            "  info   load a model directory, print architecture and parameter count\n");
    return f == stderr ? 2 : 0;
}

/* ------------------------------------------------------------- options */

typedef struct opts {
    const char *out, *lm, *vision, *connector, *random, *model, *dtype;
    const char *seed, *connector_seed, *image_token;
} opts;

/* --name VALUE pairs into the fields of o; every option takes a value. */
static int parse(int argc, char **argv, opts *o, char *msg, size_t n)
{
    struct {
        const char *name;
        const char **dst;
    } tab[] = {{"--out", &o->out},
               {"--lm", &o->lm},
               {"--vision", &o->vision},
               {"--connector", &o->connector},
               {"--connector-seed", &o->connector_seed},
               {"--image-token-id", &o->image_token},
               {"--random", &o->random},
               {"--seed", &o->seed},
               {"--dtype", &o->dtype},
               {"--model", &o->model}};
    for (int i = 0; i < argc; i++) {
        size_t k = 0;
        while (k < sizeof tab / sizeof *tab && strcmp(argv[i], tab[k].name) != 0)
            k++;
        if (k == sizeof tab / sizeof *tab) {
            snprintf(msg, n, "unknown option %s", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            snprintf(msg, n, "%s needs a value", argv[i]);
            return -1;
        }
        if (*tab[k].dst) {
            snprintf(msg, n, "%s given twice", argv[i]);
            return -1;
        }
        *tab[k].dst = argv[++i];
    }
    return 0;
}

/* A whole decimal integer in [lo, hi]. */
static int parse_i64(const char *s, const char *what, int64_t lo, int64_t hi, int64_t *out,
                     char *msg, size_t n)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        snprintf(msg, n, "%s must be an integer in [%lld, %lld], got \"%s\"", what,
                 (long long)lo, (long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* ----------------------------------------------------------------- init */

static char *join(const char *dir, const char *file)
{
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static cJSON *load_config(const char *dir, dvl_model_config *cfg, dvl_err *err)
{
    char *path = join(dir, "config.json");
    if (!path) {
        dvl_errf(err, DVL_ENOMEM, "out of memory");
        return NULL;
    }
    cJSON *j = dvl_json_load(path, err);
    if (j && dvl_config_parse(j, path, cfg, err)) {
        cJSON_Delete(j);
        j = NULL;
    }
    free(path);
    return j;
}

static void set(cJSON *j, const char *key, cJSON *v)
{
    if (cJSON_GetObjectItemCaseSensitive(j, key))
        cJSON_ReplaceItemInObjectCaseSensitive(j, key, v);
    else
        cJSON_AddItemToObject(j, key, v);
}

/* The LLaVA-OneVision config: the Qwen2 LM's fields at top level (with a
 * top-level rope_theta, which the LLaVA-NeXT code's 4.x Qwen2Config reads),
 * the mm_* fields of llava_qwen, and the tower's SiglipVisionConfig as
 * vision_config so the directory is self-contained. */
static cJSON *vlm_config(const cJSON *lm, const cJSON *vision, const char *vision_dir,
                         int64_t hidden_v, int64_t image_token)
{
    cJSON *j = cJSON_Duplicate(lm, 1);
    const char *arch[] = {"LlavaQwenForCausalLM"};
    set(j, "architectures", cJSON_CreateStringArray(arch, 1));
    set(j, "model_type", cJSON_CreateString("llava"));
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
    const cJSON *th = rp ? cJSON_GetObjectItemCaseSensitive(rp, "rope_theta") : NULL;
    if (th && !cJSON_GetObjectItemCaseSensitive(j, "rope_theta"))
        set(j, "rope_theta", cJSON_CreateNumber(th->valuedouble));
    set(j, "mm_projector_type", cJSON_CreateString("mlp2x_gelu"));
    set(j, "mm_hidden_size", cJSON_CreateNumber((double)hidden_v));
    set(j, "mm_vision_tower", cJSON_CreateString(vision_dir));
    set(j, "mm_vision_select_layer", cJSON_CreateNumber(-2));
    set(j, "mm_vision_select_feature", cJSON_CreateString("patch"));
    set(j, "mm_patch_merge_type", cJSON_CreateString("flat"));
    /* dvl's preprocessing is LLaVA's "pad" (expand2square, then resize). */
    set(j, "image_aspect_ratio", cJSON_CreateString("pad"));
    set(j, "mm_use_im_start_end", cJSON_CreateFalse());
    set(j, "mm_use_im_patch_token", cJSON_CreateFalse());
    set(j, "image_token_index", cJSON_CreateNumber((double)image_token));
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(vision, "vision_config");
    cJSON *v = cJSON_Duplicate(vc ? vc : vision, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(v, "architectures");
    set(v, "model_type", cJSON_CreateString("siglip_vision_model"));
    set(j, "vision_config", v);
    return j;
}

/* Is `name` a VLM parameter of the connector or the tower? */
static bool vlm_part(const char *name, const char *prefix)
{
    return strncmp(name, prefix, strlen(prefix)) == 0;
}

static int load_vlm_parts(dvl_model *m, const opts *o, uint64_t connector_seed, dvl_err *err)
{
    dvl_st_index *lm = dvl_st_open_dir(o->lm, err);
    if (!lm)
        return err->code;
    int rc = DVL_OK;
    for (int i = 0; i < m->params->n && !rc; i++) {
        dvl_tensor *t = m->params->t[i];
        if (!vlm_part(t->name, DVL_VLM_CONNECTOR_PREFIX) &&
            !vlm_part(t->name, "model.vision_tower."))
            rc = dvl_param_load(t, lm, o->lm, &t->name, 1, err);
    }
    dvl_st_index_close(lm);
    if (rc)
        return rc;
    dvl_st_index *vis = dvl_st_open_dir(o->vision, err);
    if (!vis)
        return err->code;
    const char *vsrc[] = {DVL_SIGLIP_PREFIX, ""};
    rc = dvl_params_load(m->params, vis, o->vision, DVL_VLM_VISION_PREFIX, vsrc, 2, err);
    dvl_st_index_close(vis);
    if (rc)
        return rc;
    if (!o->connector) {
        dvl_connector_init_random(&m->vlm.connector, connector_seed);
        return DVL_OK;
    }
    dvl_st_index *c = dvl_st_index_open(o->connector, err);
    if (!c)
        return err->code;
    /* As LLaVA saves it (mm_projector.bin's keys in a safetensors file),
     * without "model.", or bare nn.Sequential names. */
    const char *csrc[] = {DVL_VLM_CONNECTOR_PREFIX, "mm_projector.", ""};
    rc = dvl_params_load(m->params, c, o->connector, DVL_VLM_CONNECTOR_PREFIX, csrc, 3, err);
    dvl_st_index_close(c);
    return rc;
}

static int cmd_init(int argc, char **argv)
{
    opts o = {0};
    char msg[600];
    if (parse(argc, argv, &o, msg, sizeof msg))
        return fprintf(stderr, PROG " init: %s\n", msg), 2;
    if (o.model)
        return fprintf(stderr, PROG " init: --model belongs to info\n"), 2;
    if (!o.out)
        return fprintf(stderr, PROG " init: --out DIR is required\n"), 2;
    if (!o.lm == !o.random)
        return fprintf(stderr, PROG " init: give exactly one of --lm DIR and --random CONFIG.json\n"),
               2;
    if (o.random && (o.vision || o.connector || o.connector_seed || o.image_token))
        return fprintf(stderr, PROG " init: --random takes no --vision/--connector/"
                               "--connector-seed/--image-token-id (the config says it all)\n"),
               2;
    if (o.lm && o.seed)
        return fprintf(stderr, PROG " init: --seed goes with --random\n"), 2;
    if (!o.vision && (o.connector || o.connector_seed || o.image_token))
        return fprintf(stderr, PROG " init: --connector, --connector-seed and --image-token-id "
                               "need --vision\n"),
               2;
    if (o.connector && o.connector_seed)
        return fprintf(stderr, PROG " init: give --connector FILE or --connector-seed S, not both\n"),
               2;
    dvl_dtype store = DVL_F32;
    if (o.dtype) {
        if (!strcmp(o.dtype, "bf16"))
            store = DVL_BF16;
        else if (strcmp(o.dtype, "f32") != 0)
            return fprintf(stderr, PROG " init: --dtype must be f32 or bf16, got \"%s\"\n",
                           o.dtype),
                   2;
    }
    int64_t seed = 0, cseed = 0, image_token = -200;
    if ((o.seed && parse_i64(o.seed, "--seed", 0, INT64_MAX, &seed, msg, sizeof msg)) ||
        (o.connector_seed &&
         parse_i64(o.connector_seed, "--connector-seed", 0, INT64_MAX, &cseed, msg, sizeof msg)) ||
        (o.image_token &&
         parse_i64(o.image_token, "--image-token-id", INT32_MIN, INT32_MAX, &image_token, msg,
                   sizeof msg)))
        return fprintf(stderr, PROG " init: %s\n", msg), 2;

    dvl_err err = {0};
    if (o.vision && !o.image_token) {
        /* The slot id dvl-prep build writes with this LM's tokenizer, so
         * that the pair agrees without flags. */
        char tj[4200];
        snprintf(tj, sizeof tj, "%s/tokenizer.json", o.lm);
        FILE *f = fopen(tj, "rb");
        if (f) {
            fclose(f);
            dvl_tokenizer *tok = dvl_tokenizer_load(o.lm, &err);
            if (!tok)
                return fprintf(stderr, PROG " init: %s\n", err.msg), 1;
            image_token = dvl_chat_default_image_id(tok);
            dvl_tokenizer_free(tok);
        }
    }
    dvl_model m;
    memset(&m, 0, sizeof m);
    cJSON *cfg = NULL;
    dvl_model_config mc;
    int rc;
    if (o.random) {
        cfg = dvl_json_load(o.random, &err);
        rc = cfg ? dvl_config_parse(cfg, o.random, &mc, &err) : err.code;
        if (!rc && dvl_model_init(&m, &mc, &err))
            rc = dvl_err_prefix(&err, "%s", o.random);
        if (!rc) {
            dvl_params_set_trainable(m.params, "", false);
            rc = dvl_params_alloc(m.params, &err);
        }
        if (!rc)
            dvl_model_init_random(&m, (uint64_t)seed);
    } else if (!o.vision) {
        cfg = load_config(o.lm, &mc, &err);
        rc = cfg ? DVL_OK : err.code;
        if (!rc && mc.arch != DVL_ARCH_QWEN2 && mc.arch != DVL_ARCH_LLADA)
            rc = dvl_errf(&err, DVL_EINVAL, "--lm %s holds a %s model, not a language model",
                          o.lm, dvl_arch_name(mc.arch));
        if (!rc && dvl_model_init(&m, &mc, &err))
            rc = dvl_err_prefix(&err, "--lm %s", o.lm);
        if (!rc) {
            dvl_params_set_trainable(m.params, "", false);
            rc = dvl_model_load_weights(&m, o.lm, NULL, &err);
        }
    } else {
        dvl_model_config lc, vc;
        cJSON *lj = load_config(o.lm, &lc, &err), *vj = NULL;
        rc = lj ? DVL_OK : err.code;
        if (!rc && lc.arch != DVL_ARCH_QWEN2)
            rc = dvl_errf(&err, DVL_EUNSUP, "--lm %s holds a %s model; the VLM takes a Qwen2 LM",
                          o.lm, dvl_arch_name(lc.arch));
        if (!rc) {
            vj = load_config(o.vision, &vc, &err);
            rc = vj ? DVL_OK : err.code;
        }
        if (!rc && vc.arch != DVL_ARCH_SIGLIP)
            rc = dvl_errf(&err, DVL_EUNSUP, "--vision %s holds a %s model, not a SigLIP tower",
                          o.vision, dvl_arch_name(vc.arch));
        if (!rc) {
            cfg = vlm_config(lj, vj, o.vision, vc.vision.hidden, image_token);
            rc = dvl_config_parse(cfg, "assembled VLM config", &mc, &err);
        }
        if (!rc && dvl_model_init(&m, &mc, &err))
            rc = dvl_err_prefix(&err, "--lm %s with --vision %s", o.lm, o.vision);
        if (!rc) {
            dvl_params_set_trainable(m.params, "", false);
            rc = dvl_params_alloc(m.params, &err);
        }
        if (!rc)
            rc = load_vlm_parts(&m, &o, (uint64_t)cseed, &err);
        cJSON_Delete(lj);
        cJSON_Delete(vj);
    }
    if (!rc) {
        dvl_config_set_dtype(cfg, store);
        rc = dvl_model_save(&m, o.out, cfg, store, 0, &err);
    }
    if (!rc)
        printf("%s: %s, %lld parameters, %s\n", o.out, dvl_arch_name(mc.arch),
               (long long)m.params->numel, store == DVL_BF16 ? "bf16" : "f32");
    cJSON_Delete(cfg);
    dvl_model_free(&m);
    return rc ? fail(err.msg) : 0;
}

/* ----------------------------------------------------------------- info */

static int cmd_info(int argc, char **argv)
{
    opts o = {0};
    char msg[600];
    if (parse(argc, argv, &o, msg, sizeof msg))
        return fprintf(stderr, PROG " info: %s\n", msg), 2;
    if (!o.model || o.out || o.lm || o.vision || o.connector || o.random || o.dtype || o.seed ||
        o.connector_seed || o.image_token)
        return fprintf(stderr, PROG " info: takes --model DIR only\n"), 2;
    dvl_err err = {0};
    dvl_model m;
    if (dvl_model_open(&m, o.model, false, NULL, &err))
        return fail(err.msg);
    int64_t n = 0;
    for (int i = 0; i < m.params->n; i++)
        n += dvl_numel(m.params->t[i]);
    printf("architecture %s\ntensors %d\nparameters %lld\nf32 bytes %lld\n",
           dvl_arch_name(m.cfg.arch), m.params->n, (long long)n, (long long)m.params->numel * 4);
    if (m.cfg.arch != DVL_ARCH_SIGLIP) {
        const dvl_lm_config *c = &m.cfg.lm;
        printf("lm hidden %lld layers %lld heads %lld/%lld intermediate %lld vocab %lld tied %d\n",
               (long long)c->hidden, (long long)c->layers, (long long)c->heads,
               (long long)c->kv_heads, (long long)c->intermediate, (long long)c->vocab, c->tied);
    }
    if (m.cfg.arch == DVL_ARCH_SIGLIP || m.cfg.arch == DVL_ARCH_VLM) {
        const dvl_siglip_config *c = &m.cfg.vision;
        printf("vision hidden %lld layers %lld of %lld image %lld patch %lld patches %lld\n",
               (long long)c->hidden, (long long)dvl_siglip_layers_run(c), (long long)c->layers,
               (long long)c->image_size, (long long)c->patch_size,
               (long long)dvl_siglip_patches(c));
    }
    dvl_model_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))
        return usage(stdout);
    bool init = !strcmp(argv[1], "init"), info = !strcmp(argv[1], "info");
    /* `dvl-convert init --help`: the usage, as for dvl-prep's commands. */
    for (int i = 2; (init || info) && i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return usage(stdout);
    if (init)
        return cmd_init(argc - 2, argv + 2);
    if (info)
        return cmd_info(argc - 2, argv + 2);
    fprintf(stderr, PROG ": unknown command \"%s\" (init, info)\n", argv[1]);
    return 2;
}
