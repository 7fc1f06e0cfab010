/* A model directory: config.json + model.safetensors (or shards with
 * model.safetensors.index.json), any architecture of config.h, in one
 * parameter store under the checkpoint's own names.
 *
 *   dvl_model m;
 *   dvl_model_init(&m, &cfg, &err);                    // declare
 *   dvl_params_set_trainable(m.params, PREFIX, false);  // optional
 *   dvl_model_load_weights(&m, dir, NULL, &err);        // allocate + read
 *   ...
 *   dvl_model_free(&m);
 *
 * or dvl_model_open(dir, trainable, NULL, &err) for all of it. */
#ifndef DVL_MODELS_MODEL_H
#define DVL_MODELS_MODEL_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "io/safetensors.h"
#include "models/config.h"
#include "models/load.h"
#include "models/lm.h"
#include "models/siglip.h"
#include "models/vlm.h"

typedef struct dvl_model {
    dvl_model_config cfg;
    dvl_params *params;
    /* The part in use: lm (QWEN2, LLADA), vision (SIGLIP), vlm (VLM). */
    dvl_lm lm;
    dvl_siglip vision;
    dvl_vlm vlm;
} dvl_model;

/* Standalone SigLIP checkpoints name the tower "vision_model.*" (hub, 4.x);
 * transformers 5.x's SiglipVisionModel saves it without the prefix. Both
 * load; dvl declares and saves the prefixed names. */
#define DVL_SIGLIP_PREFIX "vision_model."

typedef struct dvl_model_load_opts {
    /* VLM checkpoints without "model.mm_projector.*" (a fresh stage 1):
     * the connector gets dvl_connector_init_random(connector_seed) if
     * allow_missing_connector, else it is a missing-tensor error. */
    bool allow_missing_connector;
    uint64_t connector_seed;
} dvl_model_load_opts;

/* Declare cfg's parameters (all trainable) in a new store. */
int dvl_model_init(dvl_model *m, const dvl_model_config *cfg, dvl_err *err);
/* Allocate the store (gradient slots for the trainable parameters only)
 * and read every parameter from the checkpoint in dir. opts NULL: all
 * tensors required. */
int dvl_model_load_weights(dvl_model *m, const char *dir, const dvl_model_load_opts *opts,
                           dvl_err *err);
/* Config + init + load; trainable false freezes everything (inference: no
 * gradient buffer at all). */
int dvl_model_open(dvl_model *m, const char *dir, bool trainable, const dvl_model_load_opts *opts,
                   dvl_err *err);
/* Random weights (each architecture's init) into an allocated store. */
void dvl_model_init_random(dvl_model *m, uint64_t seed);
void dvl_model_free(dvl_model *m);

/* Write dir/config.json (the JSON given, e.g. the source config with
 * dvl_config_set_dtype applied) and the weights as `store` (DVL_F32 or
 * DVL_BF16), sharded above max_shard_bytes (0: 5 GB, transformers' classic
 * default) with metadata {"format": "pt"}. dir is created if needed; each
 * file is replaced atomically. */
int dvl_model_save(const dvl_model *m, const char *dir, const cJSON *config, dvl_dtype store,
                   int64_t max_shard_bytes, dvl_err *err);
/* Set the dtype keys a config carries ("torch_dtype" of 4.x, "dtype" of
 * 5.x; "torch_dtype" when it has neither) to "bfloat16" / "float32". */
int dvl_config_set_dtype(cJSON *config, dvl_dtype store);
/* Write a JSON value to path atomically (pretty-printed, newline-ended). */
int dvl_json_save(const cJSON *j, const char *path, dvl_err *err);

#endif
