/* config.json parsing for the decoder LMs, SigLIP and the VLM (config.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/config.h"

const char *dvl_arch_name(dvl_arch a)
{
    switch (a) {
    case DVL_ARCH_QWEN2: return "qwen2";
    case DVL_ARCH_LLADA: return "llada";
    case DVL_ARCH_SIGLIP: return "siglip";
    case DVL_ARCH_VLM: return "vlm";
    }
    return "unknown";
}

int64_t dvl_siglip_patches(const dvl_siglip_config *c)
{
    int64_t g = c->image_size / c->patch_size;
    return g * g;
}

int64_t dvl_siglip_layers_run(const dvl_siglip_config *c) { return c->layers + 1 + c->select_layer; }

/* ------------------------------------------------------------ JSON file */

cJSON *dvl_json_load(const char *path, dvl_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                dvl_errf(err, DVL_ENOMEM, "%s: out of memory reading", path);
                return NULL;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        dvl_errf(err, DVL_EIO, "%s: read error", path);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (!j) {
        long at = end ? (long)(end - buf) : -1;
        free(buf);
        dvl_errf(err, DVL_EINVAL, "%s: malformed JSON near byte %ld", path, at);
        return NULL;
    }
    free(buf);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        dvl_errf(err, DVL_EINVAL, "%s: top level is not a JSON object", path);
        return NULL;
    }
    return j;
}

/* -------------------------------------------------------- typed fields */

/* Where fields are read from, for messages: "PATH: key \"SCOPEkey\" ...". */
typedef struct jsrc {
    const cJSON *j;
    const char *path;
    const char *scope; /* "" or e.g. "vision_config." */
    dvl_err *err;
} jsrc;

static const char *jtype(const cJSON *v)
{
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "null";
}

/* A key holding JSON null counts as absent (HF writes null for unset
 * optional fields). */
static const cJSON *field(const jsrc *s, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s->j, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int missing(const jsrc *s, const char *key)
{
    return dvl_errf(s->err, DVL_EINVAL, "%s: missing key \"%s%s\"", s->path, s->scope, key);
}

static int wrong(const jsrc *s, const char *key, const char *want, const cJSON *v)
{
    return dvl_errf(s->err, DVL_EINVAL, "%s: key \"%s%s\" must be %s, got %s", s->path, s->scope,
                    key, want, jtype(v));
}

/* Integer in [lo, hi]; `def` when absent unless required. */
static int get_int(const jsrc *s, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out)
{
    const cJSON *v = field(s, key);
    if (!v) {
        if (required)
            return missing(s, key);
        *out = def;
        return DVL_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        fabs(v->valuedouble) > 9007199254740992.0)
        return wrong(s, key, "an integer", v);
    int64_t x = (int64_t)v->valuedouble;
    if (x < lo || x > hi)
        return dvl_errf(s->err, DVL_EINVAL, "%s: key \"%s%s\" is %lld, outside [%lld, %lld]",
                        s->path, s->scope, key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return DVL_OK;
}

/* Positive finite number. */
static int get_pos(const jsrc *s, const char *key, bool required, double def, double *out)
{
    const cJSON *v = field(s, key);
    if (!v) {
        if (required)
            return missing(s, key);
        *out = def;
        return DVL_OK;
    }
    if (!cJSON_IsNumber(v))
        return wrong(s, key, "a number", v);
    if (!(v->valuedouble > 0) || !isfinite(v->valuedouble))
        return dvl_errf(s->err, DVL_EINVAL, "%s: key \"%s%s\" is %g, must be positive", s->path,
                        s->scope, key, v->valuedouble);
    *out = v->valuedouble;
    return DVL_OK;
}

static int get_bool(const jsrc *s, const char *key, bool def, bool *out)
{
    const cJSON *v = field(s, key);
    if (!v) {
        *out = def;
        return DVL_OK;
    }
    if (!cJSON_IsBool(v))
        return wrong(s, key, "a boolean", v);
    *out = cJSON_IsTrue(v);
    return DVL_OK;
}

/* String value or def when absent. */
static int get_str(const jsrc *s, const char *key, const char *def, const char **out)
{
    const cJSON *v = field(s, key);
    if (!v) {
        *out = def;
        return DVL_OK;
    }
    if (!cJSON_IsString(v))
        return wrong(s, key, "a string", v);
    *out = v->valuestring;
    return DVL_OK;
}

/* A key that, when present, must hold `want` (a feature dvl implements);
 * any other value is unsupported. */
static int want_str(const jsrc *s, const char *key, const char *want)
{
    const char *v = NULL;
    int rc = get_str(s, key, want, &v);
    if (rc)
        return rc;
    if (strcmp(v, want) != 0)
        return dvl_errf(s->err, DVL_EUNSUP, "%s: key \"%s%s\" is \"%s\"; dvl supports only \"%s\"",
                        s->path, s->scope, key, v, want);
    return DVL_OK;
}

static int want_bool(const jsrc *s, const char *key, bool want)
{
    bool v = want;
    int rc = get_bool(s, key, want, &v);
    if (rc)
        return rc;
    if (v != want)
        return dvl_errf(s->err, DVL_EUNSUP, "%s: key \"%s%s\" is %s; dvl supports only %s",
                        s->path, s->scope, key, v ? "true" : "false", want ? "true" : "false");
    return DVL_OK;
}

#define TRY(x)                                                                                 \
    do {                                                                                       \
        int rc_ = (x);                                                                         \
        if (rc_)                                                                               \
            return rc_;                                                                        \
    } while (0)

#define BIG ((int64_t)1 << 40)

/* ------------------------------------------------------------ decoder LM */

/* RoPE base: `rope_parameters.rope_theta` (transformers 5.x) or top-level
 * `rope_theta` (4.x, every hub checkpoint, LLaDA). Only the default
 * (unscaled) rotary embedding is implemented. */
static int rope_theta(const jsrc *s, float *out)
{
    const cJSON *rp = field(s, "rope_parameters");
    double theta = 0;
    if (rp) {
        if (!cJSON_IsObject(rp))
            return wrong(s, "rope_parameters", "an object", rp);
        jsrc r = {rp, s->path, "rope_parameters.", s->err};
        TRY(want_str(&r, "rope_type", "default"));
        if (field(&r, "rope_theta"))
            TRY(get_pos(&r, "rope_theta", true, 0, &theta));
    }
    if (theta == 0) {
        if (!field(s, "rope_theta"))
            return dvl_errf(s->err, DVL_EINVAL,
                            "%s: missing key \"%srope_theta\" (also not in rope_parameters)",
                            s->path, s->scope);
        TRY(get_pos(s, "rope_theta", true, 0, &theta));
    }
    const cJSON *rs = field(s, "rope_scaling");
    if (rs) {
        if (!cJSON_IsObject(rs))
            return wrong(s, "rope_scaling", "an object", rs);
        jsrc r = {rs, s->path, "rope_scaling.", s->err};
        const char *t = NULL;
        TRY(get_str(&r, "rope_type", NULL, &t));
        if (!t)
            TRY(get_str(&r, "type", "default", &t));
        if (strcmp(t, "default") != 0)
            return dvl_errf(s->err, DVL_EUNSUP,
                            "%s: key \"%srope_scaling\" asks for \"%s\" rotary scaling; dvl supports "
                            "only the default rotary embedding",
                            s->path, s->scope, t);
    }
    *out = (float)theta;
    return DVL_OK;
}

static int qwen2_parse(const jsrc *s, dvl_lm_config *c)
{
    c->arch = DVL_ARCH_QWEN2;
    c->qkv_bias = true;
    double eps;
    TRY(get_int(s, "hidden_size", true, 0, 1, BIG, &c->hidden));
    TRY(get_int(s, "num_hidden_layers", true, 0, 1, 100000, &c->layers));
    TRY(get_int(s, "num_attention_heads", true, 0, 1, 100000, &c->heads));
    /* Qwen2Config: num_key_value_heads defaults to num_attention_heads. */
    TRY(get_int(s, "num_key_value_heads", false, c->heads, 1, 100000, &c->kv_heads));
    TRY(get_int(s, "intermediate_size", true, 0, 1, BIG, &c->intermediate));
    TRY(get_int(s, "vocab_size", true, 0, 1, INT32_MAX, &c->vocab));
    TRY(get_pos(s, "rms_norm_eps", true, 0, &eps));
    c->rms_eps = (float)eps;
    TRY(rope_theta(s, &c->rope_theta));
    TRY(get_bool(s, "tie_word_embeddings", false, &c->tied));
    TRY(get_int(s, "max_position_embeddings", false, 32768, 1, BIG, &c->max_positions));
    /* Not Qwen2's: dvl-train's stage 2 writes it (-1: none). */
    int64_t mask_id;
    TRY(get_int(s, "mask_token_id", false, -1, -1, INT32_MAX, &mask_id));
    c->mask_token_id = (int32_t)mask_id;
    TRY(get_int(s, "diffusion_block_size", false, 0, 0, 4096, &c->block_size));
    TRY(want_str(s, "hidden_act", "silu"));
    TRY(want_bool(s, "use_sliding_window", false));
    /* transformers 5.x lists each layer's attention kind. */
    const cJSON *lt = field(s, "layer_types");
    if (lt) {
        if (!cJSON_IsArray(lt))
            return wrong(s, "layer_types", "an array", lt);
        const cJSON *e;
        cJSON_ArrayForEach(e, lt)
        {
            if (!cJSON_IsString(e))
                return wrong(s, "layer_types", "an array of strings", lt);
            if (strcmp(e->valuestring, "full_attention") != 0)
                return dvl_errf(s->err, DVL_EUNSUP,
                                "%s: key \"%slayer_types\" holds \"%s\"; dvl supports only "
                                "\"full_attention\"",
                                s->path, s->scope, e->valuestring);
        }
    }
    return DVL_OK;
}

/* LLaDA's config is OLMo's (configuration_llada.py); dvl implements the
 * `block_type: llama` path of modeling_llada.py that LLaDA-8B uses. */
static int llada_parse(const jsrc *s, dvl_lm_config *c)
{
    c->arch = DVL_ARCH_LLADA;
    c->qkv_bias = false;
    double eps;
    TRY(get_int(s, "d_model", true, 0, 1, BIG, &c->hidden));
    TRY(get_int(s, "n_layers", true, 0, 1, 100000, &c->layers));
    TRY(get_int(s, "n_heads", true, 0, 1, 100000, &c->heads));
    TRY(get_int(s, "n_kv_heads", false, c->heads, 1, 100000, &c->kv_heads));
    /* mlp_hidden_size wins; else mlp_ratio * d_model (LLaDALlamaBlock). */
    if (field(s, "mlp_hidden_size")) {
        TRY(get_int(s, "mlp_hidden_size", true, 0, 1, BIG, &c->intermediate));
    } else {
        int64_t ratio;
        if (!field(s, "mlp_ratio"))
            return missing(s, "mlp_hidden_size");
        TRY(get_int(s, "mlp_ratio", true, 0, 1, 1024, &ratio));
        c->intermediate = ratio * c->hidden;
    }
    /* The embedding (and LM head) has embedding_size rows when set, which
     * may exceed vocab_size (padding for efficiency). */
    if (field(s, "embedding_size"))
        TRY(get_int(s, "embedding_size", true, 0, 1, INT32_MAX, &c->vocab));
    else
        TRY(get_int(s, "vocab_size", true, 0, 1, INT32_MAX, &c->vocab));
    TRY(get_pos(s, "rms_norm_eps", true, 0, &eps));
    c->rms_eps = (float)eps;
    TRY(rope_theta(s, &c->rope_theta));
    TRY(get_bool(s, "weight_tying", false, &c->tied));
    TRY(get_int(s, "max_sequence_length", false, 4096, 1, BIG, &c->max_positions));
    int64_t mask_id;
    TRY(get_int(s, "mask_token_id", false, 126336, 0, INT32_MAX, &mask_id));
    c->mask_token_id = (int32_t)mask_id;
    TRY(get_int(s, "diffusion_block_size", false, 0, 0, 4096, &c->block_size));
    /* Variants of the OLMo block that LLaDA does not use. */
    TRY(want_str(s, "block_type", "llama"));
    TRY(want_str(s, "activation_type", "silu"));
    TRY(want_str(s, "layer_norm_type", "rms"));
    TRY(want_bool(s, "include_bias", false));
    TRY(want_bool(s, "include_qkv_bias", false));
    TRY(want_bool(s, "rope", true));
    TRY(want_bool(s, "alibi", false));
    TRY(want_bool(s, "input_emb_norm", false));
    TRY(want_bool(s, "attention_layer_norm", false));
    TRY(want_bool(s, "scale_logits", false));
    TRY(want_bool(s, "layer_norm_with_affine", true));
    return DVL_OK;
}

int dvl_lm_config_parse(const cJSON *j, const char *path, dvl_arch arch, dvl_lm_config *out,
                        dvl_err *err)
{
    jsrc s = {j, path, "", err};
    dvl_lm_config c;
    memset(&c, 0, sizeof c);
    if (arch == DVL_ARCH_QWEN2 || arch == DVL_ARCH_VLM)
        TRY(qwen2_parse(&s, &c));
    else if (arch == DVL_ARCH_LLADA)
        TRY(llada_parse(&s, &c));
    else
        return dvl_errf(err, DVL_EINVAL, "%s: %s is not a decoder LM", path, dvl_arch_name(arch));
    if (c.hidden % c.heads)
        return dvl_errf(err, DVL_EINVAL, "%s: hidden size %lld is not a multiple of %lld heads",
                        path, (long long)c.hidden, (long long)c.heads);
    if (c.heads % c.kv_heads)
        return dvl_errf(err, DVL_EINVAL, "%s: %lld heads are not a multiple of %lld kv heads",
                        path, (long long)c.heads, (long long)c.kv_heads);
    c.head_dim = c.hidden / c.heads;
    if (c.head_dim % 2)
        return dvl_errf(err, DVL_EINVAL, "%s: head dim %lld is odd (rotary needs it even)", path,
                        (long long)c.head_dim);
    *out = c;
    return DVL_OK;
}

/* ---------------------------------------------------------------- SigLIP */

int dvl_siglip_config_parse(const cJSON *j, const char *path, dvl_siglip_config *out,
                            dvl_err *err)
{
    jsrc s = {j, path, "", err};
    /* A full SiglipConfig (vision + text) keeps the tower in vision_config. */
    const cJSON *vc = field(&s, "vision_config");
    if (vc) {
        if (!cJSON_IsObject(vc))
            return wrong(&s, "vision_config", "an object", vc);
        s.j = vc;
        s.scope = "vision_config.";
    }
    dvl_siglip_config c;
    memset(&c, 0, sizeof c);
    double eps;
    const char *act = NULL;
    TRY(get_int(&s, "hidden_size", true, 0, 1, BIG, &c.hidden));
    TRY(get_int(&s, "intermediate_size", true, 0, 1, BIG, &c.intermediate));
    TRY(get_int(&s, "num_hidden_layers", true, 0, 2, 100000, &c.layers));
    TRY(get_int(&s, "num_attention_heads", true, 0, 1, 100000, &c.heads));
    TRY(get_int(&s, "image_size", true, 0, 1, 1 << 16, &c.image_size));
    TRY(get_int(&s, "patch_size", true, 0, 1, 1 << 16, &c.patch_size));
    /* SiglipVisionConfig defaults (google/siglip-so400m-patch14-384's
     * config.json relies on them). */
    TRY(get_int(&s, "num_channels", false, 3, 1, 64, &c.channels));
    TRY(get_pos(&s, "layer_norm_eps", false, 1e-6, &eps));
    c.ln_eps = (float)eps;
    TRY(get_str(&s, "hidden_act", "gelu_pytorch_tanh", &act));
    if (strcmp(act, "gelu_pytorch_tanh") == 0)
        c.act = DVL_GELU_TANH;
    else if (strcmp(act, "gelu") == 0)
        c.act = DVL_GELU_ERF;
    else
        return dvl_errf(err, DVL_EUNSUP,
                        "%s: key \"%shidden_act\" is \"%s\"; dvl supports \"gelu_pytorch_tanh\" "
                        "and \"gelu\"",
                        path, s.scope, act);
    if (c.hidden % c.heads)
        return dvl_errf(err, DVL_EINVAL, "%s: vision hidden size %lld is not a multiple of %lld heads",
                        path, (long long)c.hidden, (long long)c.heads);
    c.head_dim = c.hidden / c.heads;
    /* No divisibility check: the stride-P conv without padding keeps
     * floor(S / P) patches per side and ignores the remaining pixels
     * (so400m-patch14-384: 27 x 27 patches cover 378 of 384 pixels). */
    c.select_layer = -2; /* LLaVA-OneVision's feature: the penultimate layer */
    *out = c;
    return DVL_OK;
}

/* ------------------------------------------------------------------- VLM */

int dvl_vlm_config_parse(const cJSON *j, const char *path, dvl_vlm_config *out, dvl_err *err)
{
    jsrc s = {j, path, "", err};
    dvl_vlm_config c;
    memset(&c, 0, sizeof c);
    TRY(dvl_lm_config_parse(j, path, DVL_ARCH_QWEN2, &c.lm, err));
    TRY(want_str(&s, "mm_projector_type", "mlp2x_gelu"));
    TRY(want_str(&s, "mm_patch_merge_type", "flat"));
    TRY(want_str(&s, "mm_vision_select_feature", "patch"));
    TRY(want_bool(&s, "mm_use_im_start_end", false));
    /* Real LLaVA-OneVision checkpoints only name the tower; dvl needs its
     * shape, so the config must carry a vision_config object. */
    const cJSON *vc = field(&s, "vision_config");
    if (!vc)
        return missing(&s, "vision_config");
    if (!cJSON_IsObject(vc))
        return wrong(&s, "vision_config", "an object", vc);
    {
        /* Parse the tower with messages that say where it sits. */
        char scoped[1024];
        snprintf(scoped, sizeof scoped, "%s (vision_config)", path);
        TRY(dvl_siglip_config_parse(vc, scoped, &c.vision, err));
    }
    int64_t sel, tok;
    TRY(get_int(&s, "mm_vision_select_layer", false, -2, -(c.vision.layers), -1, &sel));
    c.vision.select_layer = (int)sel;
    TRY(get_int(&s, "mm_hidden_size", false, c.vision.hidden, 1, BIG, &c.mm_hidden));
    if (c.mm_hidden != c.vision.hidden)
        return dvl_errf(err, DVL_EINVAL,
                        "%s: mm_hidden_size %lld differs from vision_config.hidden_size %lld", path,
                        (long long)c.mm_hidden, (long long)c.vision.hidden);
    /* A real id (e.g. "<image>" added to the tokenizer) or LLaVA's negative
     * sentinel IMAGE_TOKEN_INDEX = -200. */
    TRY(get_int(&s, "image_token_index", true, 0, INT32_MIN, INT32_MAX, &tok));
    c.image_token_index = (int32_t)tok;
    *out = c;
    return DVL_OK;
}

/* ------------------------------------------------------------- dispatch */

static int detect(const jsrc *s, dvl_arch *out)
{
    static const struct {
        const char *name;
        dvl_arch arch;
    } ARCHS[] = {{"Qwen2ForCausalLM", DVL_ARCH_QWEN2},       {"LLaDAModelLM", DVL_ARCH_LLADA},
                 {"SiglipVisionModel", DVL_ARCH_SIGLIP},     {"SiglipModel", DVL_ARCH_SIGLIP},
                 {"LlavaQwenForCausalLM", DVL_ARCH_VLM}},
      TYPES[] = {{"qwen2", DVL_ARCH_QWEN2},
                 {"llada", DVL_ARCH_LLADA},
                 {"siglip_vision_model", DVL_ARCH_SIGLIP},
                 {"siglip", DVL_ARCH_SIGLIP},
                 {"llava", DVL_ARCH_VLM}};
    const cJSON *a = field(s, "architectures");
    if (a) {
        const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
        if (!a0 || !cJSON_IsString(a0))
            return wrong(s, "architectures", "a non-empty array of strings", a);
        for (size_t i = 0; i < sizeof ARCHS / sizeof *ARCHS; i++)
            if (strcmp(a0->valuestring, ARCHS[i].name) == 0) {
                *out = ARCHS[i].arch;
                return DVL_OK;
            }
        return dvl_errf(s->err, DVL_EUNSUP,
                        "%s: architecture \"%s\" is not supported (Qwen2ForCausalLM, LLaDAModelLM, "
                        "SiglipVisionModel, SiglipModel, LlavaQwenForCausalLM)",
                        s->path, a0->valuestring);
    }
    const char *t = NULL;
    TRY(get_str(s, "model_type", NULL, &t));
    if (!t)
        return dvl_errf(s->err, DVL_EINVAL, "%s: missing key \"architectures\" (and \"model_type\")",
                        s->path);
    for (size_t i = 0; i < sizeof TYPES / sizeof *TYPES; i++)
        if (strcmp(t, TYPES[i].name) == 0) {
            *out = TYPES[i].arch;
            return DVL_OK;
        }
    return dvl_errf(s->err, DVL_EUNSUP, "%s: model_type \"%s\" is not supported", s->path, t);
}

int dvl_config_parse(const cJSON *j, const char *path, dvl_model_config *out, dvl_err *err)
{
    jsrc s = {j, path, "", err};
    dvl_model_config c;
    memset(&c, 0, sizeof c);
    TRY(detect(&s, &c.arch));
    switch (c.arch) {
    case DVL_ARCH_QWEN2:
    case DVL_ARCH_LLADA: TRY(dvl_lm_config_parse(j, path, c.arch, &c.lm, err)); break;
    case DVL_ARCH_SIGLIP: TRY(dvl_siglip_config_parse(j, path, &c.vision, err)); break;
    case DVL_ARCH_VLM:
        TRY(dvl_vlm_config_parse(j, path, &c.vlm, err));
        c.lm = c.vlm.lm;
        c.vision = c.vlm.vision;
        break;
    }
    *out = c;
    return DVL_OK;
}

int dvl_config_load(const char *path, dvl_model_config *out, dvl_err *err)
{
    cJSON *j = dvl_json_load(path, err);
    if (!j)
        return err ? err->code : DVL_EIO;
    int rc = dvl_config_parse(j, path, out, err);
    cJSON_Delete(j);
    return rc;
}
