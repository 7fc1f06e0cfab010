/* Model directories: declare, load, save (model.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic_file.h"
#include "models/connector.h"
#include "models/model.h"

int dvl_model_init(dvl_model *m, const dvl_model_config *cfg, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->params = dvl_params_new();
    if (!m->params)
        return dvl_errf(err, DVL_ENOMEM, "out of memory for the parameter store");
    int rc = DVL_OK;
    switch (cfg->arch) {
    case DVL_ARCH_QWEN2:
    case DVL_ARCH_LLADA: rc = dvl_lm_declare(&m->lm, &cfg->lm, m->params, err); break;
    case DVL_ARCH_SIGLIP:
        rc = dvl_siglip_declare(&m->vision, &cfg->vision, m->params, DVL_SIGLIP_PREFIX, err);
        break;
    case DVL_ARCH_VLM: rc = dvl_vlm_declare(&m->vlm, &cfg->vlm, m->params, err); break;
    }
    if (rc) {
        dvl_params_free(m->params);
        m->params = NULL;
    }
    return rc;
}

void dvl_model_free(dvl_model *m)
{
    if (!m)
        return;
    dvl_lm_free(&m->lm);
    dvl_siglip_free(&m->vision);
    dvl_vlm_free(&m->vlm);
    dvl_params_free(m->params);
    m->params = NULL;
}

void dvl_model_init_random(dvl_model *m, uint64_t seed)
{
    switch (m->cfg.arch) {
    case DVL_ARCH_QWEN2:
    case DVL_ARCH_LLADA: dvl_lm_init_random(&m->lm, seed, 0.02f); break;
    case DVL_ARCH_SIGLIP: dvl_siglip_init_random(&m->vision, seed); break;
    case DVL_ARCH_VLM: dvl_vlm_init_random(&m->vlm, seed); break;
    }
}

int dvl_model_load_weights(dvl_model *m, const char *dir, const dvl_model_load_opts *opts,
                           dvl_err *err)
{
    int rc = dvl_params_alloc(m->params, err);
    if (rc) /* the sizes come from dir's config.json */
        return err ? dvl_err_prefix(err, "%s", dir) : rc;
    dvl_st_index *ix = dvl_st_open_dir(dir, err);
    if (!ix)
        return err ? err->code : DVL_EIO;
    switch (m->cfg.arch) {
    case DVL_ARCH_QWEN2:
    case DVL_ARCH_LLADA: rc = dvl_params_load(m->params, ix, dir, "", NULL, 0, err); break;
    case DVL_ARCH_SIGLIP: {
        const char *src[] = {DVL_SIGLIP_PREFIX, ""};
        rc = dvl_params_load(m->params, ix, dir, DVL_SIGLIP_PREFIX, src, 2, err);
        break;
    }
    case DVL_ARCH_VLM: {
        dvl_connector *c = &m->vlm.connector;
        bool fresh = opts && opts->allow_missing_connector && !dvl_ckpt_has(ix, c->w0->name) &&
                     !dvl_ckpt_has(ix, c->b0->name) && !dvl_ckpt_has(ix, c->w2->name) &&
                     !dvl_ckpt_has(ix, c->b2->name);
        size_t cl = strlen(DVL_VLM_CONNECTOR_PREFIX);
        for (int i = 0; i < m->params->n && !rc; i++) {
            dvl_tensor *t = m->params->t[i];
            if (fresh && strncmp(t->name, DVL_VLM_CONNECTOR_PREFIX, cl) == 0)
                continue;
            rc = dvl_param_load(t, ix, dir, &t->name, 1, err);
        }
        if (!rc && fresh)
            dvl_connector_init_random(c, opts->connector_seed);
        break;
    }
    }
    dvl_st_index_close(ix);
    return rc;
}

int dvl_model_open(dvl_model *m, const char *dir, bool trainable, const dvl_model_load_opts *opts,
                   dvl_err *err)
{
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    dvl_model_config cfg;
    int rc = dvl_config_load(path, &cfg, err);
    if (rc)
        return rc;
    if ((rc = dvl_model_init(m, &cfg, err))) /* the shapes at fault are config.json's */
        return err ? dvl_err_prefix(err, "%s", path) : rc;
    if (!trainable)
        dvl_params_set_trainable(m->params, "", false);
    rc = dvl_model_load_weights(m, dir, opts, err);
    if (rc)
        dvl_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- saving */

int dvl_config_set_dtype(cJSON *config, dvl_dtype store)
{
    const char *name = store == DVL_BF16 ? "bfloat16" : store == DVL_F16 ? "float16" : "float32";
    const char *keys[] = {"torch_dtype", "dtype"};
    int set = 0;
    for (int k = 0; k < 2; k++)
        if (cJSON_GetObjectItemCaseSensitive(config, keys[k])) {
            cJSON_ReplaceItemInObjectCaseSensitive(config, keys[k], cJSON_CreateString(name));
            set++;
        }
    if (!set)
        cJSON_AddStringToObject(config, "torch_dtype", name);
    return DVL_OK;
}

int dvl_json_save(const cJSON *j, const char *path, dvl_err *err)
{
    char *s = cJSON_Print(j);
    if (!s)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory printing JSON", path);
    dvl_afile a;
    int rc = dvl_afile_open(&a, path, err);
    if (!rc) {
        rc = dvl_afile_write(&a, s, strlen(s), err);
        if (!rc)
            rc = dvl_afile_write(&a, "\n", 1, err);
        if (rc)
            dvl_afile_abort(&a);
        else
            rc = dvl_afile_commit(&a, err);
    }
    free(s);
    return rc;
}

int dvl_model_save(const dvl_model *m, const char *dir, const cJSON *config, dvl_dtype store,
                   int64_t max_shard_bytes, dvl_err *err)
{
    if (store != DVL_F32 && store != DVL_BF16 && store != DVL_F16)
        return dvl_errf(err, DVL_EINVAL, "%s: weights can be saved as f32, bf16 or f16, not %s",
                        dir, dvl_dtype_name(store));
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", dir, strerror(errno));
    dvl_st_writer *w = dvl_st_writer_new();
    if (!w)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
    int rc = dvl_params_to_writer(m->params, w, store, err);
    if (!rc)
        rc = dvl_st_writer_meta(w, "format", "pt", err);
    if (!rc)
        rc = dvl_st_writer_save_sharded(w, dir, max_shard_bytes ? max_shard_bytes : 5000000000,
                                        err);
    dvl_st_writer_free(w);
    if (rc)
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    return dvl_json_save(config, path, err);
}
