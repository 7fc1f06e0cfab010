/* Model configurations, read from a Hugging Face style config.json.
 *
 * One struct per architecture, holding only what the computation needs:
 *   - dvl_lm_config: the decoder LM, shared by Qwen2 / Qwen2.5
 *     (`Qwen2ForCausalLM`) and LLaDA (`LLaDAModelLM`): the two compute the
 *     same blocks (RMSNorm, RoPE, GQA attention, SwiGLU) and differ in
 *     names, q/k/v biases and the default attention pattern;
 *   - dvl_siglip_config: the SigLIP vision tower;
 *   - dvl_vlm_config: a LLaVA-OneVision style VLM (`LlavaQwenForCausalLM`):
 *     Qwen2 fields at top level, mm_* fields, vision tower in
 *     `vision_config`.
 *
 * Unknown keys are ignored. A missing required key or a value of the wrong
 * type is an error naming the file and the key; a value dvl cannot run
 * (e.g. rope scaling, sliding-window attention, a non-SiLU MLP) is
 * DVL_EUNSUP naming the key and value. */
#ifndef DVL_MODELS_CONFIG_H
#define DVL_MODELS_CONFIG_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"
#include "ops/ops.h"

typedef enum dvl_arch {
    DVL_ARCH_QWEN2 = 0, /* Qwen2ForCausalLM (Qwen2, Qwen2.5) */
    DVL_ARCH_LLADA,     /* LLaDAModelLM */
    DVL_ARCH_SIGLIP,    /* SiglipVisionModel / SiglipModel (vision part) */
    DVL_ARCH_VLM        /* LlavaQwenForCausalLM: SigLIP + mlp2x_gelu + Qwen2 */
} dvl_arch;

const char *dvl_arch_name(dvl_arch a); /* "qwen2", "llada", "siglip", "vlm" */

typedef struct dvl_lm_config {
    dvl_arch arch;         /* DVL_ARCH_QWEN2 or DVL_ARCH_LLADA: names and defaults */
    int64_t hidden;        /* hidden_size | d_model */
    int64_t layers;        /* num_hidden_layers | n_layers */
    int64_t heads;         /* num_attention_heads | n_heads */
    int64_t kv_heads;      /* num_key_value_heads | n_kv_heads (absent: = heads) */
    int64_t head_dim;      /* hidden / heads */
    int64_t intermediate;  /* intermediate_size | mlp_hidden_size */
    int64_t vocab;         /* embedding rows = LM head rows: vocab_size |
                              embedding_size (spare rows past the tokenizer
                              are real rows) */
    float rms_eps;         /* rms_norm_eps */
    float rope_theta;      /* rope_theta or rope_parameters.rope_theta */
    bool tied;             /* tie_word_embeddings | weight_tying */
    bool qkv_bias;         /* Qwen2: q/k/v projections have biases */
    int64_t max_positions; /* max_position_embeddings | max_sequence_length */
    int32_t mask_token_id; /* LLaDA's [MASK] (default 126336); Qwen2: -1 unless a
                            * dvl stage-2 export wrote it */
    int64_t block_size;    /* "diffusion_block_size" of a stage-2 export; 0: none */
} dvl_lm_config;

typedef struct dvl_siglip_config {
    int64_t hidden;       /* hidden_size */
    int64_t intermediate; /* intermediate_size */
    int64_t layers;       /* num_hidden_layers of the full tower */
    int64_t heads;        /* num_attention_heads */
    int64_t head_dim;     /* hidden / heads */
    int64_t image_size;   /* image_size (square) */
    int64_t patch_size;   /* patch_size */
    int64_t channels;     /* num_channels (default 3) */
    float ln_eps;         /* layer_norm_eps (default 1e-6) */
    dvl_gelu_kind act;    /* hidden_act: gelu_pytorch_tanh (default) | gelu */
    /* Which hidden state is the feature, as LLaVA's mm_vision_select_layer:
     * -2 = output of the penultimate layer (hidden_states[-2]); layers after
     * it are neither run nor loaded. */
    int select_layer;
} dvl_siglip_config;

/* Patches per image (floor(image_size / patch_size)^2: the conv drops the
 * pixels past the last whole patch) and encoder layers run
 * (layers + 1 + select_layer). */
int64_t dvl_siglip_patches(const dvl_siglip_config *c);
int64_t dvl_siglip_layers_run(const dvl_siglip_config *c);

typedef struct dvl_vlm_config {
    dvl_lm_config lm;          /* Qwen2 fields at top level */
    dvl_siglip_config vision;  /* vision_config (select_layer from mm_vision_select_layer) */
    int64_t mm_hidden;         /* mm_hidden_size = vision.hidden */
    int32_t image_token_index; /* placeholder id in the token sequence */
} dvl_vlm_config;

/* Any of the above, as a model directory holds it. */
typedef struct dvl_model_config {
    dvl_arch arch;
    dvl_lm_config lm;         /* QWEN2, LLADA, VLM (= vlm.lm) */
    dvl_siglip_config vision; /* SIGLIP, VLM (= vlm.vision) */
    dvl_vlm_config vlm;       /* VLM */
} dvl_model_config;

/* Read and parse a config file (path is used in messages); the architecture
 * comes from `architectures[0]`, else `model_type`. */
int dvl_config_load(const char *path, dvl_model_config *out, dvl_err *err);
/* The same from parsed JSON. */
int dvl_config_parse(const cJSON *j, const char *path, dvl_model_config *out, dvl_err *err);

/* Per architecture, from the object holding the fields (`path` for
 * messages). dvl_siglip_config_parse accepts a SiglipVisionConfig or a full
 * SiglipConfig (it then reads its `vision_config`). */
int dvl_lm_config_parse(const cJSON *j, const char *path, dvl_arch arch, dvl_lm_config *out,
                        dvl_err *err);
int dvl_siglip_config_parse(const cJSON *j, const char *path, dvl_siglip_config *out,
                            dvl_err *err);
int dvl_vlm_config_parse(const cJSON *j, const char *path, dvl_vlm_config *out, dvl_err *err);

/* Read a whole JSON file; NULL with a message naming the file on error.
 * Free with cJSON_Delete. */
cJSON *dvl_json_load(const char *path, dvl_err *err);

#endif
