/* A checkpoint as a set of tensors by name, stored in one .safetensors file
 * or sharded over several with an index, the layout transformers and
 * huggingface_hub write:
 *
 *   model.safetensors.index.json  {"metadata": {"total_size": ...},
 *                                  "weight_map": {"tensor": "model-00001-of-00002.safetensors"}}
 *   model-00001-of-00002.safetensors, model-00002-of-00002.safetensors
 *
 * Opening checks the index and that every shard it names exists; a shard is
 * mapped and validated the first time one of its tensors is looked up, so
 * loading part of a large checkpoint touches only the files it needs. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "io/safetensors_internal.h"

typedef struct entry {
    char *name;
    int shard;
} entry;

struct dvl_st_index {
    char *path; /* the index JSON, or the single file */
    bool sharded;
    int n_shards;
    char **shard_name;    /* as written in the weight map, sorted */
    char **shard_path;    /* folder of the index + name */
    dvl_st_file **shard;  /* NULL until first used */
    int n;
    entry *e; /* sorted by name */
};

void dvl_st_index_close(dvl_st_index *ix)
{
    if (!ix)
        return;
    for (int i = 0; i < ix->n; i++)
        free(ix->e[i].name);
    free(ix->e);
    for (int i = 0; i < ix->n_shards; i++) {
        if (ix->shard)
            dvl_st_close(ix->shard[i]);
        if (ix->shard_name)
            free(ix->shard_name[i]);
        if (ix->shard_path)
            free(ix->shard_path[i]);
    }
    free(ix->shard);
    free(ix->shard_name);
    free(ix->shard_path);
    free(ix->path);
    free(ix);
}

static dvl_st_index *ix_fail(dvl_st_index *ix, dvl_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static dvl_st_index *ix_fail(dvl_st_index *ix, dvl_err *err, int code, const char *fmt, ...)
{
    char msg[448];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dvl_errf(err, code, "%s: %s", ix->path, msg);
    dvl_st_index_close(ix);
    return NULL;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static dvl_st_index *new_index(const char *path, dvl_err *err)
{
    dvl_st_index *ix = calloc(1, sizeof *ix);
    if (ix)
        ix->path = strdup(path);
    if (!ix || !ix->path) {
        free(ix);
        dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    return ix;
}

/* A single file seen as a one-shard checkpoint. */
static dvl_st_index *open_single(const char *path, dvl_err *err)
{
    dvl_st_file *f = dvl_st_open(path, err);
    if (!f)
        return NULL;
    dvl_st_index *ix = new_index(path, err);
    if (!ix) {
        dvl_st_close(f);
        return NULL;
    }
    ix->n_shards = 1;
    ix->shard = calloc(1, sizeof *ix->shard);
    ix->shard_name = calloc(1, sizeof(char *));
    ix->shard_path = calloc(1, sizeof(char *));
    if (!ix->shard || !ix->shard_name || !ix->shard_path) {
        dvl_st_close(f);
        return ix_fail(ix, err, DVL_ENOMEM, "out of memory");
    }
    ix->shard[0] = f;
    const char *slash = strrchr(path, '/');
    ix->shard_name[0] = strdup(slash ? slash + 1 : path);
    ix->shard_path[0] = strdup(path);
    int n = dvl_st_count(f);
    ix->e = calloc((size_t)(n ? n : 1), sizeof *ix->e);
    if (!ix->shard_name[0] || !ix->shard_path[0] || !ix->e)
        return ix_fail(ix, err, DVL_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) { /* already sorted by name */
        if (!(ix->e[i].name = strdup(dvl_st_tensor_at(f, i)->name)))
            return ix_fail(ix, err, DVL_ENOMEM, "out of memory");
        ix->n++;
    }
    return ix;
}


/* A shard named by the index must be a plain file name in the index's folder:
 * anything else could point outside it. */
static bool plain_file_name(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static dvl_st_index *open_json(const char *path, dvl_err *err)
{
    dvl_st_index *ix = new_index(path, err);
    if (!ix)
        return NULL;
    size_t len;
    char *text = dvl_read_file(path, &len, err);
    if (!text) {
        dvl_st_index_close(ix);
        return NULL;
    }
    ix->sharded = true;
    cJSON *root = NULL;
    char **names = NULL, **uniq = NULL, *dir = NULL; /* shard of each entry, distinct shards */
    char msg[400];
    int code = DVL_EIO;
    const char *dup;

    if (dvl_st_utf8_valid_prefix((const unsigned char *)text, len) < len) {
        snprintf(msg, sizeof msg, "not valid UTF-8");
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        snprintf(msg, sizeof msg, "not valid JSON (near byte %lld)",
                 end ? (long long)(end - text) : 0LL);
        goto fail;
    }
    for (const char *q = end; q < text + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            snprintf(msg, sizeof msg, "not valid JSON: data after the object at byte %lld",
                     (long long)(q - text));
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        snprintf(msg, sizeof msg, "not a JSON object");
        goto fail;
    }
    if ((dup = dvl_st_json_duplicate_key(root))) {
        snprintf(msg, sizeof msg, "duplicate key \"%s\"", dup);
        goto fail;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        snprintf(msg, sizeof msg, "missing \"weight_map\" object");
        goto fail;
    }
    if ((dup = dvl_st_json_duplicate_key(wm))) {
        snprintf(msg, sizeof msg, "duplicate tensor \"%s\" in the weight map", dup);
        goto fail;
    }

    int n = cJSON_GetArraySize(wm);
    code = DVL_ENOMEM;
    snprintf(msg, sizeof msg, "out of memory");
    ix->e = calloc((size_t)(n ? n : 1), sizeof *ix->e);
    names = calloc((size_t)(n ? n : 1), sizeof *names);
    uniq = calloc((size_t)(n ? n : 1), sizeof *uniq);
    if (!ix->e || !names || !uniq)
        goto fail;
    for (const cJSON *v = wm->child; v; v = v->next) {
        if (!cJSON_IsString(v) || !plain_file_name(v->valuestring)) {
            code = DVL_EIO;
            snprintf(msg, sizeof msg,
                     "weight map entry \"%s\" is not the file name of a shard in the index's "
                     "folder",
                     v->string);
            goto fail;
        }
        names[ix->n] = v->valuestring;
        if (!(ix->e[ix->n++].name = strdup(v->string)))
            goto fail;
    }

    /* The distinct shard names, sorted; each entry points at one. */
    memcpy(uniq, names, (size_t)n * sizeof *uniq);
    qsort(uniq, (size_t)n, sizeof *uniq, cmp_str);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (k == 0 || strcmp(uniq[k - 1], uniq[i]) != 0)
            uniq[k++] = uniq[i];
    ix->shard_name = calloc((size_t)(k ? k : 1), sizeof(char *));
    ix->shard_path = calloc((size_t)(k ? k : 1), sizeof(char *));
    ix->shard = calloc((size_t)(k ? k : 1), sizeof *ix->shard);
    const char *slash = strrchr(path, '/');
    dir = slash ? strndup(path, (size_t)(slash - path + 1)) : strdup("");
    if (!ix->shard_name || !ix->shard_path || !ix->shard || !dir)
        goto fail;
    for (int i = 0; i < k; i++) {
        ix->n_shards++;
        ix->shard_name[i] = strdup(uniq[i]);
        ix->shard_path[i] = dvl_st_join(dir, uniq[i]);
        if (!ix->shard_name[i] || !ix->shard_path[i])
            goto fail;
    }
    for (int i = 0; i < ix->n; i++) {
        char **hit = bsearch(&names[i], uniq, (size_t)k, sizeof *uniq, cmp_str);
        ix->e[i].shard = (int)(hit - uniq);
    }

    /* Every shard must exist now: a missing file is the usual result of a
     * partial download and is best reported before any loading starts. */
    code = DVL_EIO;
    for (int s = 0; s < ix->n_shards; s++) {
        struct stat st;
        int rc = stat(ix->shard_path[s], &st);
        int e = errno;
        if (rc == 0 && S_ISREG(st.st_mode))
            continue;
        int count = 0;
        const char *first = "?";
        for (int i = 0; i < ix->n; i++)
            if (ix->e[i].shard == s && count++ == 0)
                first = ix->e[i].name;
        snprintf(msg, sizeof msg, "shard %s (holding \"%s\" and %d more tensors) is missing: %s",
                 ix->shard_name[s], first, count - 1,
                 rc == 0 ? "not a regular file" : strerror(e));
        goto fail;
    }
    qsort(ix->e, (size_t)ix->n, sizeof *ix->e, cmp_entry);
    free(dir);
    free(uniq);
    free(names);
    cJSON_Delete(root);
    free(text);
    return ix;

fail:
    free(dir);
    free(uniq);
    free(names);
    cJSON_Delete(root);
    free(text);
    dvl_errf(err, code, "%s: %s", path, msg);
    dvl_st_index_close(ix);
    return NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

dvl_st_index *dvl_st_index_open(const char *path, dvl_err *err)
{
    if (!path) {
        dvl_errf(err, DVL_EINVAL, "safetensors: checkpoint path is NULL");
        return NULL;
    }
    return ends_with(path, ".json") ? open_json(path, err) : open_single(path, err);
}

dvl_st_index *dvl_st_open_dir(const char *dir, dvl_err *err)
{
    if (!dir) {
        dvl_errf(err, DVL_EINVAL, "safetensors: checkpoint folder is NULL");
        return NULL;
    }
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json"};
    for (int i = 0; i < 2; i++) {
        char *p = dvl_st_join(dir, names[i]);
        if (!p) {
            dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
            return NULL;
        }
        struct stat st;
        if (stat(p, &st) == 0) {
            dvl_st_index *ix = dvl_st_index_open(p, err);
            free(p);
            return ix;
        }
        free(p);
    }
    dvl_errf(err, DVL_EIO, "%s: no model.safetensors or model.safetensors.index.json in this folder",
             dir);
    return NULL;
}

bool dvl_st_index_is_sharded(const dvl_st_index *ix) { return ix->sharded; }
int dvl_st_index_count(const dvl_st_index *ix) { return ix->n; }

const char *dvl_st_index_name(const dvl_st_index *ix, int i)
{
    return i >= 0 && i < ix->n ? ix->e[i].name : NULL;
}

static const entry *lookup(const dvl_st_index *ix, const char *name)
{
    entry key = {.name = (char *)name};
    return bsearch(&key, ix->e, (size_t)ix->n, sizeof *ix->e, cmp_entry);
}

const char *dvl_st_index_file_of(const dvl_st_index *ix, const char *name)
{
    const entry *e = lookup(ix, name);
    return e ? ix->shard_path[e->shard] : NULL;
}

/* The tensor `name` in *out, mapping its shard on first use. */
static int index_find(dvl_st_index *ix, const char *name, const dvl_st_tensor **out, dvl_err *err)
{
    *out = NULL;
    const entry *e = lookup(ix, name);
    if (!e)
        return dvl_errf(err, DVL_EINVAL, "%s: no tensor named \"%s\"", ix->path, name);
    int s = e->shard;
    if (!ix->shard[s]) {
        dvl_err e2 = {0};
        if (!(ix->shard[s] = dvl_st_open(ix->shard_path[s], &e2)))
            return dvl_errf(err, e2.code, "%s", e2.msg); /* names the shard and the fault */
    }
    if (!(*out = dvl_st_find(ix->shard[s], name, NULL)))
        return dvl_errf(err, DVL_EIO,
                        "%s: tensor \"%s\" is listed for shard %s, but the shard has no such "
                        "tensor",
                        ix->path, name, ix->shard_name[s]);
    return DVL_OK;
}

const dvl_st_tensor *dvl_st_index_find(dvl_st_index *ix, const char *name, dvl_err *err)
{
    const dvl_st_tensor *t;
    index_find(ix, name, &t, err);
    return t;
}

int dvl_st_index_read_f32(dvl_st_index *ix, const char *name, float *dst, int64_t numel,
                          dvl_err *err)
{
    const dvl_st_tensor *t;
    int rc = index_find(ix, name, &t, err);
    return rc != DVL_OK ? rc : dvl_st_tensor_read_f32(t, dst, numel, err);
}

int dvl_st_index_verify(dvl_st_index *ix, dvl_err *err)
{
    const dvl_st_tensor *t;
    for (int i = 0; i < ix->n; i++) {
        int rc = index_find(ix, ix->e[i].name, &t, err);
        if (rc != DVL_OK)
            return rc;
    }
    return DVL_OK;
}
