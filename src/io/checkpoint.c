/* Training checkpoints: the folder layout, the crash-safe save sequence
 * (tmp folder, fsync, rename, latest, prune) and the all-or-nothing load. */
#include "io/checkpoint.h"
#include "core/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/version.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

#define STATE_FORMAT "dvl-checkpoint"
#define STATE_VERSION 1
#define PATH_MAX_LEN 4096

/* ------------------------------------------------------- file system */

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* mkdir -p. */
static int make_dirs(const char *path, dvl_err *err)
{
    char buf[PATH_MAX_LEN];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return dvl_errf(err, DVL_EINVAL, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", buf, strerror(errno));
            if (!is_dir(buf))
                return dvl_errf(err, DVL_EIO, "%s: exists and is not a folder", buf);
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return DVL_OK;
}

/* fsync a folder so the names in it (renames, new files) are durable. Some
 * file systems refuse fsync on folders; the data is complete either way. */
static void sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf path (no symlinks followed). */
static int remove_tree(const char *path, dvl_err *err)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return dvl_errf(err, DVL_EIO, "%s: cannot remove: %s", path, strerror(errno));
    return DVL_OK;
}

/* The step of a folder named exactly "step-<digits>", else -1. */
static int64_t step_of_name(const char *name)
{
    if (strncmp(name, "step-", 5) != 0 || !name[5])
        return -1;
    int64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A complete checkpoint folder of a root: step-<digits> holding a state.json. */
typedef struct entry {
    int64_t step;
    char name[64];
} entry;

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = ((const entry *)a)->step, y = ((const entry *)b)->step;
    return (x < y) - (x > y);
}

/* The complete checkpoints of root, newest (highest step) first, in *out
 * (malloc'd); their count, or -1 on error. */
static int list_checkpoints(const char *root, entry **out, dvl_err *err)
{
    *out = NULL;
    DIR *d = opendir(root);
    if (!d)
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", root, strerror(errno)), -1;
    entry *list = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = step_of_name(e->d_name);
        char path[PATH_MAX_LEN];
        if (s < 0 || strlen(e->d_name) >= sizeof list->name ||
            snprintf(path, sizeof path, "%s/%s/state.json", root, e->d_name) >= (int)sizeof path ||
            !is_file(path))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            entry *p = realloc(list, (size_t)cap * sizeof *p);
            if (!p) {
                closedir(d);
                free(list);
                return dvl_errf(err, DVL_ENOMEM, "%s: out of memory listing", root), -1;
            }
            list = p;
        }
        list[n].step = s;
        memcpy(list[n].name, e->d_name, strlen(e->d_name) + 1); /* length checked above */
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(list, (size_t)n, sizeof *list, cmp_desc);
    *out = list;
    return n;
}

/* Remove leftovers of interrupted saves and prunes: step-*.tmp folders. */
static int clean_tmp(const char *root, dvl_err *err)
{
    DIR *d = opendir(root);
    if (!d)
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", root, strerror(errno));
    int rc = DVL_OK;
    struct dirent *e;
    while (rc == DVL_OK && (e = readdir(d))) {
        if (strncmp(e->d_name, "step-", 5) != 0 || !ends_with(e->d_name, ".tmp"))
            continue;
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "%s/%s", root, e->d_name);
        rc = remove_tree(path, err);
    }
    closedir(d);
    return rc;
}

static int write_text(const char *path, const char *text, dvl_err *err)
{
    dvl_afile a;
    int rc = dvl_afile_open(&a, path, err);
    if (rc)
        return rc;
    if ((rc = dvl_afile_write(&a, text, strlen(text), err))) {
        dvl_afile_abort(&a);
        return rc;
    }
    return dvl_afile_commit(&a, err);
}

/* The whole file, NUL-terminated, malloc'd. */
static char *read_text(const char *path, dvl_err *err) { return dvl_read_file(path, NULL, err); }

/* ------------------------------------------------------------ saving */

static int save_model(const char *path, const dvl_params *p, dvl_dtype dtype, dvl_err *err)
{
    dvl_st_writer *w = dvl_st_writer_new();
    if (!w)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    int rc = dvl_st_writer_meta(w, "format", "pt", err);
    for (int i = 0; rc == DVL_OK && i < p->n; i++) {
        const dvl_tensor *t = p->t[i];
        rc = dvl_st_writer_add(w, t->name, dtype, t->ndim, t->shape, dvl_f32(t), err);
    }
    if (rc == DVL_OK)
        rc = dvl_st_writer_save(w, path, err);
    dvl_st_writer_free(w);
    return rc;
}

static int save_optimizer(const char *path, const dvl_adamw *o, dvl_err *err)
{
    const dvl_params *p = o->p;
    dvl_st_writer *w = dvl_st_writer_new();
    if (!w)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    char v[64];
    snprintf(v, sizeof v, "%" PRId64, o->step);
    int rc = dvl_st_writer_meta(w, "step", v, err);
    /* The hyperparameters are the config's business; they are kept to read
     * a checkpoint by eye, not restored. */
    const struct { const char *k; float x; } hp[] = {
        {"beta1", o->beta1}, {"beta2", o->beta2}, {"eps", o->eps}, {"weight_decay", o->weight_decay}};
    for (int i = 0; rc == DVL_OK && i < 4; i++) {
        snprintf(v, sizeof v, "%.9g", (double)hp[i].x);
        rc = dvl_st_writer_meta(w, hp[i].k, v, err);
    }
    for (int i = 0; rc == DVL_OK && i < p->n; i++) {
        const dvl_tensor *t = p->t[i];
        if (p->grad_off[i] < 0)
            continue;
        char name[512];
        snprintf(name, sizeof name, "m.%s", t->name);
        rc = dvl_st_writer_add(w, name, DVL_F32, t->ndim, t->shape, o->m + p->grad_off[i], err);
        snprintf(name, sizeof name, "v.%s", t->name);
        if (rc == DVL_OK)
            rc = dvl_st_writer_add(w, name, DVL_F32, t->ndim, t->shape, o->v + p->grad_off[i], err);
    }
    if (rc == DVL_OK)
        rc = dvl_st_writer_save(w, path, err);
    dvl_st_writer_free(w);
    return rc;
}

static int save_state(const char *path, int64_t step, const dvl_rng *rng, int n_rng,
                      const char *loader_state, dvl_err *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = NULL;
    bool ok = root && cJSON_AddStringToObject(root, "format", STATE_FORMAT) &&
              cJSON_AddNumberToObject(root, "version", STATE_VERSION) &&
              cJSON_AddStringToObject(root, "dvl_version", DVL_VERSION) &&
              cJSON_AddNumberToObject(root, "step", (double)step) &&
              (arr = cJSON_AddArrayToObject(root, "rng"));
    /* xoshiro words as hex: exact, unlike JSON numbers beyond 2^53. */
    for (int r = 0; ok && r < n_rng; r++) {
        cJSON *words = cJSON_CreateArray();
        ok = words != NULL;
        for (int k = 0; ok && k < 4; k++) {
            char hex[17];
            snprintf(hex, sizeof hex, "%016" PRIx64, rng[r].s[k]);
            cJSON *s = cJSON_CreateString(hex);
            ok = s && cJSON_AddItemToArray(words, s);
        }
        ok = ok && cJSON_AddItemToArray(arr, words);
        if (!ok && words)
            cJSON_Delete(words);
    }
    ok = ok && (loader_state ? cJSON_AddStringToObject(root, "loader_state", loader_state) != NULL
                             : cJSON_AddNullToObject(root, "loader_state") != NULL);
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    int rc = write_text(path, line, err);
    free(line);
    return rc;
}

/* Put folder tmp in place as final: a plain rename, or an atomic exchange
 * when final exists (the same step saved again), the old one then removed. */
static int install_dir(const char *tmp, const char *final, dvl_err *err)
{
    if (rename(tmp, final) == 0)
        return DVL_OK;
    if (errno != EEXIST && errno != ENOTEMPTY)
        return dvl_errf(err, DVL_EIO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0) {
        /* No exchange on this file system: move the old one aside first.
         * A crash in between leaves only the old one's .tmp copy, and
         * loading falls back to the newest complete folder. */
        char aside[PATH_MAX_LEN + 16];
        snprintf(aside, sizeof aside, "%s.old.tmp", final);
        if (rename(final, aside) != 0 || rename(tmp, final) != 0)
            return dvl_errf(err, DVL_EIO, "%s: cannot replace %s: %s", tmp, final,
                            strerror(errno));
        return remove_tree(aside, err);
    }
    /* tmp now holds the previous folder. */
    return remove_tree(tmp, err);
}

/* Keep the checkpoint just saved and the keep_last - 1 newest others. Each
 * is renamed to step-*.tmp first, so a crash mid-removal leaves nothing that
 * looks like a checkpoint. */
static int prune(const char *root, int64_t saved, int keep_last, dvl_err *err)
{
    entry *list;
    int n = list_checkpoints(root, &list, err);
    if (n < 0)
        return err ? err->code : DVL_EIO;
    int kept = 1, rc = DVL_OK; /* the saved one */
    for (int i = 0; rc == DVL_OK && i < n; i++) {
        if (list[i].step == saved)
            continue;
        if (kept < keep_last) {
            kept++;
            continue;
        }
        char dir[PATH_MAX_LEN], aside[PATH_MAX_LEN + 8];
        snprintf(dir, sizeof dir, "%s/%s", root, list[i].name);
        snprintf(aside, sizeof aside, "%s.tmp", dir);
        if (rename(dir, aside) != 0)
            rc = dvl_errf(err, DVL_EIO, "%s: cannot remove old checkpoint: %s", dir,
                          strerror(errno));
        else
            rc = remove_tree(aside, err);
    }
    free(list);
    return rc;
}

int dvl_ckpt_save(const char *root, int64_t step, const dvl_params *p, const dvl_adamw *opt,
                  const dvl_rng *rng, int n_rng, const char *loader_state,
                  const char *config_json, int keep_last, dvl_dtype model_dtype, dvl_err *err)
{
    if (!p || !p->allocated)
        return dvl_errf(err, DVL_EINVAL, "%s: checkpoint of a parameter store not allocated", root);
    if (opt && opt->p != p)
        return dvl_errf(err, DVL_EINVAL, "%s: the optimizer belongs to another parameter store",
                        root);
    if (opt && (opt->lo != 0 || opt->hi != p->numel_grad))
        return dvl_errf(err, DVL_EINVAL,
                        "%s: the optimizer is a ZeRO-1 shard [%lld, %lld) (gather it first)", root,
                        (long long)opt->lo, (long long)opt->hi);
    if (step < 0 || n_rng < 0 || (n_rng > 0 && !rng) || keep_last < 0)
        return dvl_errf(err, DVL_EINVAL, "%s: bad checkpoint arguments (step %" PRId64
                        ", %d rng states, keep %d)", root, step, n_rng, keep_last);
    if (model_dtype != DVL_F32 && model_dtype != DVL_BF16)
        return dvl_errf(err, DVL_EINVAL, "%s: model dtype %s; F32 or BF16", root,
                        dvl_dtype_name(model_dtype));
    if (!config_json)
        config_json = "{}";
    cJSON *cfg = cJSON_Parse(config_json);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return dvl_errf(err, DVL_EINVAL, "%s: the configuration to save is not a JSON object",
                        root);
    }
    cJSON_Delete(cfg);

    char dir[PATH_MAX_LEN], tmp[PATH_MAX_LEN + 8], file[PATH_MAX_LEN + 64], name[64];
    snprintf(name, sizeof name, "step-%06" PRId64, step);
    if (snprintf(dir, sizeof dir, "%s/%s", root, name) >= (int)sizeof dir - 64)
        return dvl_errf(err, DVL_EINVAL, "%s: path too long", root);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);

    int rc = make_dirs(root, err);
    if (!rc)
        rc = clean_tmp(root, err);
    if (!rc && mkdir(tmp, 0755) != 0)
        rc = dvl_errf(err, DVL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    if (rc)
        return rc;
    /* Each file is written to NAME.tmp, fsynced and renamed (atomic_file). */
    snprintf(file, sizeof file, "%s/model.safetensors", tmp);
    rc = save_model(file, p, model_dtype, err);
    if (!rc && opt) {
        snprintf(file, sizeof file, "%s/optimizer.safetensors", tmp);
        rc = save_optimizer(file, opt, err);
    }
    if (!rc) {
        snprintf(file, sizeof file, "%s/config.json", tmp);
        rc = write_text(file, config_json, err);
    }
    if (!rc) {
        snprintf(file, sizeof file, "%s/state.json", tmp);
        rc = save_state(file, step, rng, n_rng, loader_state, err);
    }
    if (rc)
        return rc; /* the .tmp folder goes at the next save */
    sync_dir(tmp);
    /* The checkpoint appears complete or not at all... */
    if ((rc = install_dir(tmp, dir, err)))
        return rc;
    sync_dir(root);
    /* ...and only then becomes the one to resume from. */
    snprintf(file, sizeof file, "%s/latest", root);
    char line[80];
    snprintf(line, sizeof line, "%s\n", name);
    if ((rc = write_text(file, line, err)))
        return rc;
    if (keep_last > 0 && (rc = prune(root, step, keep_last, err)))
        return rc;
    sync_dir(root);
    return DVL_OK;
}

/* ----------------------------------------------------------- loading */

int dvl_ckpt_resolve(const char *path, char *out, size_t n, dvl_err *err)
{
    char buf[PATH_MAX_LEN];
    snprintf(buf, sizeof buf, "%s/state.json", path);
    if (is_file(buf)) {
        if (snprintf(out, n, "%s", path) >= (int)n)
            return dvl_errf(err, DVL_EINVAL, "%s: path too long", path);
        return DVL_OK;
    }
    if (!is_dir(path))
        return dvl_errf(err, DVL_EIO, "%s: no such checkpoint folder", path);
    /* ROOT/latest names the folder, when it is there and complete. */
    snprintf(buf, sizeof buf, "%s/latest", path);
    if (is_file(buf)) {
        char *text = read_text(buf, err);
        if (!text)
            return err ? err->code : DVL_EIO;
        size_t len = strcspn(text, "\r\n");
        text[len] = '\0';
        char dir[PATH_MAX_LEN];
        bool ok = step_of_name(text) >= 0 &&
                  snprintf(dir, sizeof dir, "%s/%s/state.json", path, text) < (int)sizeof dir &&
                  is_file(dir);
        if (ok) {
            int w = snprintf(out, n, "%s/%s", path, text);
            free(text);
            if (w >= (int)n)
                return dvl_errf(err, DVL_EINVAL, "%s: path too long", path);
            return DVL_OK;
        }
        free(text);
    }
    /* No usable latest (a first save interrupted before writing it): the
     * newest complete folder. */
    entry *list;
    int k = list_checkpoints(path, &list, err);
    if (k < 0)
        return err ? err->code : DVL_EIO;
    int rc = k == 0 ? dvl_errf(err, DVL_EIO,
                               "%s: no checkpoint here (no state.json, latest or step-* folder)",
                               path)
         : snprintf(out, n, "%s/%s", path, list[0].name) >= (int)n
             ? dvl_errf(err, DVL_EINVAL, "%s: path too long", path)
             : DVL_OK;
    free(list);
    return rc;
}

char *dvl_ckpt_read_config(const char *path, dvl_err *err)
{
    char dir[PATH_MAX_LEN], file[PATH_MAX_LEN + 16];
    if (dvl_ckpt_resolve(path, dir, sizeof dir, err))
        return NULL;
    snprintf(file, sizeof file, "%s/config.json", dir);
    return read_text(file, err);
}

/* What state.json holds. */
typedef struct saved_state {
    int64_t step;
    int n_rng;
    dvl_rng *rng;
    char *loader_state; /* NULL when none was saved */
} saved_state;

static bool parse_hex64(const char *s, uint64_t *out)
{
    if (strlen(s) != 16)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

static int read_state(const char *path, saved_state *s, dvl_err *err)
{
    memset(s, 0, sizeof *s);
    char *text = read_text(path, err);
    if (!text)
        return err ? err->code : DVL_EIO;
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = DVL_OK;
    if (!root || !cJSON_IsObject(root)) {
        rc = dvl_errf(err, DVL_EIO, "%s: not a JSON object (truncated or corrupt)", path);
        goto done;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng");
    const cJSON *ls = cJSON_GetObjectItemCaseSensitive(root, "loader_state");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, STATE_FORMAT) != 0) {
        rc = dvl_errf(err, DVL_EIO, "%s: format: not \"%s\"", path, STATE_FORMAT);
        goto done;
    }
    if (!cJSON_IsNumber(ver) || ver->valuedouble != STATE_VERSION) {
        rc = dvl_errf(err, DVL_EUNSUP, "%s: version: %g, this dvl reads version %d", path,
                      cJSON_IsNumber(ver) ? ver->valuedouble : -1.0, STATE_VERSION);
        goto done;
    }
    if (!cJSON_IsNumber(step) || step->valuedouble < 0 || step->valuedouble > 9007199254740992.0 ||
        step->valuedouble != (double)(int64_t)step->valuedouble) {
        rc = dvl_errf(err, DVL_EIO, "%s: step: not a non-negative integer", path);
        goto done;
    }
    s->step = (int64_t)step->valuedouble;
    if (!cJSON_IsArray(rng)) {
        rc = dvl_errf(err, DVL_EIO, "%s: rng: not an array", path);
        goto done;
    }
    s->n_rng = cJSON_GetArraySize(rng);
    s->rng = calloc((size_t)(s->n_rng ? s->n_rng : 1), sizeof *s->rng);
    if (!s->rng) {
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    int r = 0;
    for (const cJSON *w = rng->child; w; w = w->next, r++) {
        bool ok = cJSON_IsArray(w) && cJSON_GetArraySize(w) == 4;
        int k = 0;
        for (const cJSON *x = ok ? w->child : NULL; ok && x; x = x->next, k++)
            ok = cJSON_IsString(x) && parse_hex64(x->valuestring, &s->rng[r].s[k]);
        if (!ok) {
            rc = dvl_errf(err, DVL_EIO, "%s: rng[%d]: not 4 words of 16 hex digits", path, r);
            goto done;
        }
    }
    if (cJSON_IsString(ls)) {
        if (!(s->loader_state = strdup(ls->valuestring)))
            rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    } else if (ls && !cJSON_IsNull(ls)) {
        rc = dvl_errf(err, DVL_EIO, "%s: loader_state: not a string", path);
    }
done:
    cJSON_Delete(root);
    if (rc) {
        free(s->rng);
        free(s->loader_state);
        memset(s, 0, sizeof *s);
    }
    return rc;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < n)
        snprintf(buf + len, n - len, "]");
}

/* Tensor `name` of f with the shape of t and a dtype in `dtypes` (an
 * F32-only file or one also allowing BF16/F16), else an error. */
static int check_tensor(const dvl_st_file *f, const char *name, const dvl_tensor *t,
                        bool f32_only, dvl_err *err)
{
    const dvl_st_tensor *st = dvl_st_find(f, name, NULL);
    if (!st)
        return dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" is missing", dvl_st_path(f), name);
    bool shape_ok = st->ndim == t->ndim;
    for (int i = 0; shape_ok && i < t->ndim; i++)
        shape_ok = st->shape[i] == t->shape[i];
    if (!shape_ok) {
        char a[128], b[128];
        shape_text(st->ndim, st->shape, a, sizeof a);
        shape_text(t->ndim, t->shape, b, sizeof b);
        return dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" has shape %s but the model's is %s",
                        dvl_st_path(f), name, a, b);
    }
    bool dtype_ok = st->dtype == DVL_ST_F32 ||
                    (!f32_only && (st->dtype == DVL_ST_BF16 || st->dtype == DVL_ST_F16));
    if (!dtype_ok)
        return dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" has dtype %s, expected %s",
                        dvl_st_path(f), name, dvl_st_dtype_name(st->dtype),
                        f32_only ? "F32" : "F32, BF16 or F16");
    return DVL_OK;
}

/* Every tensor of f must be one the model expects: a parameter's name in
 * model.safetensors, "m."/"v." + a trainable parameter's name in
 * optimizer.safetensors. The first stray one is an error (another model's
 * checkpoint, or parameters frozen differently). */
static int check_no_strays(const dvl_st_file *f, const dvl_params *p, bool moments, dvl_err *err)
{
    for (int i = 0; i < dvl_st_count(f); i++) {
        const char *name = dvl_st_tensor_at(f, i)->name;
        const dvl_tensor *t = NULL;
        if (!moments)
            t = dvl_params_find(p, name);
        else if ((name[0] == 'm' || name[0] == 'v') && name[1] == '.')
            t = dvl_params_find(p, name + 2);
        if (!t)
            return dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" is not %s of the model",
                            dvl_st_path(f), name, moments ? "a moment of a parameter" : "a parameter");
        if (moments && !t->requires_grad)
            return dvl_errf(err, DVL_EINVAL, "%s: tensor \"%s\" is a moment of %s, which is frozen",
                            dvl_st_path(f), name, t->name);
    }
    return DVL_OK;
}

int dvl_ckpt_load(const char *path, dvl_params *p, dvl_adamw *opt, int64_t *step, dvl_rng *rng,
                  int n_rng, char **loader_state, dvl_err *err)
{
    if (!p || !p->allocated)
        return dvl_errf(err, DVL_EINVAL, "%s: loading into a parameter store not allocated", path);
    if (opt && opt->p != p)
        return dvl_errf(err, DVL_EINVAL, "%s: the optimizer belongs to another parameter store",
                        path);
    if (opt && (opt->lo != 0 || opt->hi != p->numel_grad))
        return dvl_errf(err, DVL_EINVAL,
                        "%s: the optimizer is a ZeRO-1 shard [%lld, %lld) (gather it first)", path,
                        (long long)opt->lo, (long long)opt->hi);
    char dir[PATH_MAX_LEN], file[PATH_MAX_LEN + 32];
    int rc = dvl_ckpt_resolve(path, dir, sizeof dir, err);
    if (rc)
        return rc;

    saved_state s;
    snprintf(file, sizeof file, "%s/state.json", dir);
    if ((rc = read_state(file, &s, err)))
        return rc;
    dvl_st_file *mf = NULL, *of = NULL;
    char *ls_copy = NULL;
    if (rng && n_rng != s.n_rng) {
        rc = dvl_errf(err, DVL_EINVAL, "%s: rng: %d states saved, %d expected (another world size?)",
                      file, s.n_rng, n_rng);
        goto done;
    }

    /* Check everything before writing anything. */
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    if (!(mf = dvl_st_open(file, err))) {
        rc = err ? err->code : DVL_EIO;
        goto done;
    }
    for (int i = 0; i < p->n && rc == DVL_OK; i++)
        rc = check_tensor(mf, p->t[i]->name, p->t[i], false, err);
    if (rc || (rc = check_no_strays(mf, p, false, err)))
        goto done;
    int64_t opt_step = 0;
    if (opt) {
        snprintf(file, sizeof file, "%s/optimizer.safetensors", dir);
        if (!(of = dvl_st_open(file, err))) {
            rc = err ? err->code : DVL_EIO;
            goto done;
        }
        for (int i = 0; i < p->n && rc == DVL_OK; i++) {
            if (p->grad_off[i] < 0)
                continue;
            char name[512];
            snprintf(name, sizeof name, "m.%s", p->t[i]->name);
            rc = check_tensor(of, name, p->t[i], true, err);
            snprintf(name, sizeof name, "v.%s", p->t[i]->name);
            if (rc == DVL_OK)
                rc = check_tensor(of, name, p->t[i], true, err);
        }
        if (rc || (rc = check_no_strays(of, p, true, err)))
            goto done;
        const char *st = dvl_st_meta(of, "step");
        char *end = NULL;
        long long v = st ? strtoll(st, &end, 10) : -1;
        if (!st || *end != '\0' || v < 0) {
            rc = dvl_errf(err, DVL_EIO, "%s: metadata \"step\" missing or not a count", file);
            goto done;
        }
        opt_step = v;
    }
    if (loader_state && s.loader_state && !(ls_copy = strdup(s.loader_state))) {
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
        goto done;
    }

    /* All checked: restore. The reads cannot fail on validated tensors
     * short of the files changing underneath. */
    for (int i = 0; i < p->n && rc == DVL_OK; i++)
        rc = dvl_st_read_f32(mf, p->t[i]->name, dvl_f32(p->t[i]), dvl_numel(p->t[i]), err);
    for (int i = 0; opt && i < p->n && rc == DVL_OK; i++) {
        if (p->grad_off[i] < 0)
            continue;
        char name[512];
        int64_t n = dvl_numel(p->t[i]);
        snprintf(name, sizeof name, "m.%s", p->t[i]->name);
        rc = dvl_st_read_f32(of, name, opt->m + p->grad_off[i], n, err);
        snprintf(name, sizeof name, "v.%s", p->t[i]->name);
        if (rc == DVL_OK)
            rc = dvl_st_read_f32(of, name, opt->v + p->grad_off[i], n, err);
    }
    if (rc)
        goto done;
    if (opt)
        opt->step = opt_step;
    if (rng)
        memcpy(rng, s.rng, (size_t)n_rng * sizeof *rng);
    if (step)
        *step = s.step;
    if (loader_state) {
        *loader_state = ls_copy;
        ls_copy = NULL;
    }
done:
    free(ls_copy);
    dvl_st_close(mf);
    dvl_st_close(of);
    free(s.rng);
    free(s.loader_state);
    return rc;
}
