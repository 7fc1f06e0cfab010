/* Writing .safetensors files, one or sharded with an index.
 *
 * The layout is the reference one (safetensors/src/tensor.rs, prepare()):
 * tensors sorted by dtype, widest alignment first, then by name; data
 * offsets contiguous from 0; the JSON header compact, "__metadata__" first,
 * each entry {"dtype","shape","data_offsets"} in that order, padded with
 * spaces to a multiple of 8 bytes so the data buffer starts 8-byte aligned.
 * With the metadata keys sorted (the crate keeps them in a hash map, so their
 * order there is arbitrary) a file is byte-identical to the Python package's
 * save_file of the same tensors. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/safetensors_internal.h"

typedef struct wtensor {
    char *name;
    dvl_st_dtype dtype; /* as stored */
    bool from_f32;      /* src is f32 to convert, else bytes stored as they are */
    int ndim;
    int64_t *shape;
    int64_t numel, nbytes;
    const void *src;
} wtensor;

struct dvl_st_writer {
    int n, cap;
    wtensor *t; /* in the order added */
    int n_meta, cap_meta;
    char **meta_key, **meta_val; /* sorted by key */
};

dvl_st_writer *dvl_st_writer_new(void) { return calloc(1, sizeof(dvl_st_writer)); }

void dvl_st_writer_free(dvl_st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].shape);
    }
    free(w->t);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_key[i]);
        free(w->meta_val[i]);
    }
    free(w->meta_key);
    free(w->meta_val);
    free(w);
}

static bool valid_utf8(const char *s)
{
    size_t n = strlen(s);
    return dvl_st_utf8_valid_prefix((const unsigned char *)s, n) == n;
}

static int add(dvl_st_writer *w, const char *name, dvl_st_dtype dtype, bool from_f32, int ndim,
               const int64_t *shape, const void *src, dvl_err *err)
{
    if (!name)
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor name is NULL");
    if (!valid_utf8(name))
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor name \"%s\" is not valid UTF-8",
                        name);
    if (strcmp(name, "__metadata__") == 0)
        return dvl_errf(err, DVL_EINVAL,
                        "safetensors writer: \"__metadata__\" is reserved, not a tensor name");
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\" added twice", name);
    if (ndim < 0 || (ndim > 0 && !shape))
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\": bad ndim %d or no shape",
                        name, ndim);
    int64_t numel = 1, nbytes;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return dvl_errf(err, DVL_EINVAL,
                            "safetensors writer: tensor \"%s\": shape[%d] is negative (%lld)", name,
                            d, (long long)shape[d]);
        if (__builtin_mul_overflow(numel, shape[d], &numel))
            return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\": shape overflows",
                            name);
    }
    if (__builtin_mul_overflow(numel, (int64_t)(dvl_st_dtype_bits(dtype) / 8), &nbytes))
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\": size overflows", name);
    if (!src && numel > 0)
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\": data is NULL", name);

    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t)
            return dvl_errf(err, DVL_ENOMEM, "safetensors writer: out of memory");
        w->t = t;
        w->cap = cap;
    }
    wtensor t = {.dtype = dtype, .from_f32 = from_f32, .ndim = ndim, .numel = numel,
                 .nbytes = nbytes, .src = src};
    t.name = strdup(name);
    t.shape = malloc((size_t)(ndim ? ndim : 1) * sizeof *t.shape);
    if (!t.name || !t.shape) {
        free(t.name);
        free(t.shape);
        return dvl_errf(err, DVL_ENOMEM, "safetensors writer: out of memory");
    }
    if (ndim)
        memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    w->t[w->n++] = t;
    return DVL_OK;
}

int dvl_st_writer_add(dvl_st_writer *w, const char *name, dvl_dtype store, int ndim,
                      const int64_t *shape, const float *src, dvl_err *err)
{
    if (store != DVL_F32 && store != DVL_BF16 && store != DVL_F16)
        return dvl_errf(err, DVL_EINVAL,
                        "safetensors writer: tensor \"%s\": f32 data can be stored as F32, BF16 or "
                        "F16, not %s",
                        name ? name : "(null)", dvl_dtype_name(store));
    return add(w, name, dvl_st_dtype_from_dvl(store), store != DVL_F32, ndim, shape, src, err);
}

int dvl_st_writer_add_raw(dvl_st_writer *w, const char *name, dvl_dtype dtype, int ndim,
                          const int64_t *shape, const void *data, dvl_err *err)
{
    dvl_st_dtype t = dvl_st_dtype_from_dvl(dtype);
    if (t == DVL_ST_NDTYPES)
        return dvl_errf(err, DVL_EINVAL, "safetensors writer: tensor \"%s\": unknown dtype %d",
                        name ? name : "(null)", (int)dtype);
    return add(w, name, t, false, ndim, shape, data, err);
}

int dvl_st_writer_meta(dvl_st_writer *w, const char *key, const char *value, dvl_err *err)
{
    if (!key || !value || !valid_utf8(key) || !valid_utf8(value))
        return dvl_errf(err, DVL_EINVAL,
                        "safetensors writer: metadata key \"%s\" or its value is NULL or not UTF-8",
                        key ? key : "(null)");
    int i = 0;
    while (i < w->n_meta && strcmp(w->meta_key[i], key) < 0)
        i++;
    char *v = strdup(value);
    if (!v)
        return dvl_errf(err, DVL_ENOMEM, "safetensors writer: out of memory");
    if (i < w->n_meta && strcmp(w->meta_key[i], key) == 0) {
        free(w->meta_val[i]);
        w->meta_val[i] = v;
        return DVL_OK;
    }
    if (w->n_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k2 = realloc(w->meta_key, (size_t)cap * sizeof *k2);
        if (k2)
            w->meta_key = k2;
        char **v2 = k2 ? realloc(w->meta_val, (size_t)cap * sizeof *v2) : NULL;
        if (v2)
            w->meta_val = v2;
        if (!k2 || !v2) {
            free(v);
            return dvl_errf(err, DVL_ENOMEM, "safetensors writer: out of memory");
        }
        w->cap_meta = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return dvl_errf(err, DVL_ENOMEM, "safetensors writer: out of memory");
    }
    memmove(w->meta_key + i + 1, w->meta_key + i, (size_t)(w->n_meta - i) * sizeof(char *));
    memmove(w->meta_val + i + 1, w->meta_val + i, (size_t)(w->n_meta - i) * sizeof(char *));
    w->meta_key[i] = k;
    w->meta_val[i] = v;
    w->n_meta++;
    return DVL_OK;
}

/* ------------------------------------------------------------- one file */

/* File order: descending dtype (the crate's "descending dtype alignment"),
 * then name. */
static int cmp_file_order(const void *a, const void *b)
{
    const wtensor *x = *(const wtensor *const *)a, *y = *(const wtensor *const *)b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const wtensor *const *)a)->name, (*(const wtensor *const *)b)->name);
}

static void header_json(const dvl_st_writer *w, const wtensor *const *ts, int n, dvl_st_buf *b)
{
    dvl_st_buf_puts(b, "{");
    if (w->n_meta > 0) {
        dvl_st_buf_puts(b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i)
                dvl_st_buf_puts(b, ",");
            dvl_st_buf_json_string(b, w->meta_key[i]);
            dvl_st_buf_puts(b, ":");
            dvl_st_buf_json_string(b, w->meta_val[i]);
        }
        dvl_st_buf_puts(b, "}");
        if (n > 0)
            dvl_st_buf_puts(b, ",");
    }
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        const wtensor *t = ts[k];
        if (k)
            dvl_st_buf_puts(b, ",");
        dvl_st_buf_json_string(b, t->name);
        dvl_st_buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", dvl_st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            dvl_st_buf_printf(b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        dvl_st_buf_printf(b, "],\"data_offsets\":[%lld,%lld]}", (long long)off,
                          (long long)(off + t->nbytes));
        off += t->nbytes;
    }
    dvl_st_buf_puts(b, "}");
    while (b->len % 8 != 0 && !b->failed)
        dvl_st_buf_puts(b, " ");
}

/* The tensor's stored bytes, converting f32 to BF16/F16 through buf
 * (cap elements) a block at a time. */
static int write_tensor(dvl_afile *a, const wtensor *t, uint16_t *buf, int64_t cap, dvl_err *err)
{
    if (!t->from_f32)
        return dvl_afile_write(a, t->src, (size_t)t->nbytes, err);
    dvl_dtype dt = t->dtype == DVL_ST_BF16 ? DVL_BF16 : DVL_F16;
    const float *src = t->src;
    for (int64_t i = 0; i < t->numel; i += cap) {
        int64_t n = t->numel - i < cap ? t->numel - i : cap;
        /* Elementwise rounding: the split into blocks cannot change bits. */
        enum { SUB = 16384 };
#pragma omp parallel for schedule(static) if (n > 4 * SUB)
        for (int64_t j = 0; j < n; j += SUB)
            dvl_from_f32(buf + j, dt, src + i + j, n - j < SUB ? n - j : SUB);
        int rc = dvl_afile_write(a, buf, (size_t)n * 2, err);
        if (rc != DVL_OK)
            return rc;
    }
    return DVL_OK;
}

/* Write the tensors ts[0..n) (any order; sorted here) to path, atomically. */
static int save_subset(const dvl_st_writer *w, const wtensor **ts, int n, const char *path,
                       dvl_err *err)
{
    qsort(ts, (size_t)n, sizeof *ts, cmp_file_order);
    dvl_st_buf hdr = {0};
    header_json(w, ts, n, &hdr);
    if (hdr.failed) {
        dvl_st_buf_free(&hdr);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory for the header", path);
    }
    if (hdr.len > DVL_ST_MAX_HEADER) {
        size_t len = hdr.len;
        dvl_st_buf_free(&hdr);
        return dvl_errf(err, DVL_EINVAL, "%s: header of %zu bytes exceeds the format's limit of %llu",
                        path, len, DVL_ST_MAX_HEADER);
    }
    enum { CAP = 1 << 20 }; /* conversion block, elements */
    bool convert = false;
    for (int k = 0; k < n; k++)
        convert |= ts[k]->from_f32;
    uint16_t *buf = convert ? malloc(CAP * sizeof *buf) : NULL;
    if (convert && !buf) {
        dvl_st_buf_free(&hdr);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    }
    dvl_afile a;
    int rc = dvl_afile_open(&a, path, err);
    if (rc == DVL_OK) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)hdr.len >> (8 * i));
        rc = dvl_afile_write(&a, len8, 8, err);
        if (rc == DVL_OK)
            rc = dvl_afile_write(&a, hdr.s, hdr.len, err);
        for (int k = 0; k < n && rc == DVL_OK; k++)
            rc = write_tensor(&a, ts[k], buf, CAP, err);
        if (rc == DVL_OK)
            rc = dvl_afile_commit(&a, err);
        else
            dvl_afile_abort(&a);
    }
    free(buf);
    dvl_st_buf_free(&hdr);
    return rc;
}

int dvl_st_writer_save(const dvl_st_writer *w, const char *path, dvl_err *err)
{
    const wtensor **ts = malloc((size_t)(w->n ? w->n : 1) * sizeof *ts);
    if (!ts)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < w->n; i++)
        ts[i] = &w->t[i];
    int rc = save_subset(w, ts, w->n, path, err);
    free(ts);
    return rc;
}

/* -------------------------------------------------------------- sharded */

static const char *const SINGLE = "model.safetensors";
static const char *const INDEX = "model.safetensors.index.json";

/* Whether s is a shard file name, "model-00001-of-00002.safetensors". */
static bool is_shard_name(const char *s)
{
    static const char pat[] = "model-#####-of-#####.safetensors";
    if (strlen(s) != sizeof pat - 1)
        return false;
    for (size_t i = 0; pat[i]; i++)
        if (pat[i] == '#' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
            return false;
    return true;
}

/* After a successful save, remove what an earlier save into the same folder
 * left that would shadow or confuse this one: model.safetensors (which
 * loaders prefer over an index), a stale index, and shard files that are
 * not part of this checkpoint. Only these exact names are touched. */
static void remove_stale(const char *dir, bool sharded, int n_shards)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *s = de->d_name;
        bool stale = false;
        if (strcmp(s, SINGLE) == 0)
            stale = sharded;
        else if (strcmp(s, INDEX) == 0)
            stale = !sharded;
        else if (is_shard_name(s)) {
            int k = atoi(s + 6);
            char mine[40];
            snprintf(mine, sizeof mine, "model-%05d-of-%05d.safetensors", k, n_shards);
            stale = !sharded || k < 1 || k > n_shards || strcmp(s, mine) != 0;
        }
        if (!stale)
            continue;
        char *p = dvl_st_join(dir, s);
        struct stat st;
        if (p && lstat(p, &st) == 0 && S_ISREG(st.st_mode))
            unlink(p);
        free(p);
    }
    closedir(d);
}

/* The split huggingface_hub makes (split_state_dict_into_shards_factory):
 * walk the tensors in order; one larger than the limit becomes a shard of
 * its own at once; otherwise start a new shard when adding the tensor would
 * pass the limit. Shard ids go to shard[i]; returns the number of shards. */
static int split(const dvl_st_writer *w, int64_t max_bytes, int *shard, int *cur)
{
    int n_shards = 0, n_cur = 0;
    int64_t cur_bytes = 0;
    for (int i = 0; i < w->n; i++) {
        int64_t b = w->t[i].nbytes;
        if (b > max_bytes) {
            shard[i] = n_shards++;
            continue;
        }
        if (cur_bytes + b > max_bytes) { /* the current shard is not empty here */
            for (int k = 0; k < n_cur; k++)
                shard[cur[k]] = n_shards;
            n_shards++;
            n_cur = 0;
            cur_bytes = 0;
        }
        cur[n_cur++] = i;
        cur_bytes += b;
    }
    if (n_cur > 0) {
        for (int k = 0; k < n_cur; k++)
            shard[cur[k]] = n_shards;
        n_shards++;
    }
    return n_shards;
}

static int write_index(const dvl_st_writer *w, const int *shard, int n_shards, const char *path,
                       dvl_err *err)
{
    const wtensor **order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    if (!order)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    int64_t total = 0;
    for (int i = 0; i < w->n; i++) {
        order[i] = &w->t[i];
        total += w->t[i].nbytes;
    }
    qsort(order, (size_t)w->n, sizeof *order, cmp_name);
    /* json.dumps(index, indent=2, sort_keys=True) + "\n", as transformers. */
    dvl_st_buf b = {0};
    dvl_st_buf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %lld\n  },\n", (long long)total);
    dvl_st_buf_puts(&b, "  \"weight_map\": {");
    for (int k = 0; k < w->n; k++) {
        char file[40];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors",
                 shard[order[k] - w->t] + 1, n_shards);
        dvl_st_buf_puts(&b, k ? ",\n    " : "\n    ");
        dvl_st_buf_json_string(&b, order[k]->name);
        dvl_st_buf_puts(&b, ": ");
        dvl_st_buf_json_string(&b, file);
    }
    dvl_st_buf_puts(&b, w->n ? "\n  }\n}\n" : "}\n}\n");
    free(order);
    if (b.failed) {
        dvl_st_buf_free(&b);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    }
    dvl_afile a;
    int rc = dvl_afile_open(&a, path, err);
    if (rc == DVL_OK) {
        rc = dvl_afile_write(&a, b.s, b.len, err);
        if (rc == DVL_OK)
            rc = dvl_afile_commit(&a, err);
        else
            dvl_afile_abort(&a);
    }
    dvl_st_buf_free(&b);
    return rc;
}

int dvl_st_writer_save_sharded(const dvl_st_writer *w, const char *dir, int64_t max_shard_bytes,
                               dvl_err *err)
{
    if (max_shard_bytes <= 0)
        return dvl_errf(err, DVL_EINVAL, "%s: max shard size %lld is not positive", dir,
                        (long long)max_shard_bytes);
    size_t m = (size_t)(w->n ? w->n : 1);
    int *shard = malloc(m * sizeof *shard), *work = malloc(m * sizeof *work);
    const wtensor **ts = malloc(m * sizeof *ts);
    char *path = NULL;
    int rc = DVL_OK;
    if (!shard || !work || !ts) {
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    int n_shards = split(w, max_shard_bytes, shard, work);
    if (n_shards > 99999) {
        rc = dvl_errf(err, DVL_EINVAL, "%s: %d shards is more than the 5-digit names allow", dir,
                      n_shards);
        goto done;
    }
    if (n_shards <= 1) { /* one file and no index, as transformers does */
        if (!(path = dvl_st_join(dir, SINGLE))) {
            rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
            goto done;
        }
        if ((rc = dvl_st_writer_save(w, path, err)) == DVL_OK)
            remove_stale(dir, false, 0);
        goto done;
    }
    for (int s = 0; s < n_shards && rc == DVL_OK; s++) {
        char file[40];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        free(path);
        if (!(path = dvl_st_join(dir, file))) {
            rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
            break;
        }
        int n = 0;
        for (int i = 0; i < w->n; i++)
            if (shard[i] == s)
                ts[n++] = &w->t[i];
        rc = save_subset(w, ts, n, path, err);
    }
    if (rc == DVL_OK) {
        free(path);
        if (!(path = dvl_st_join(dir, INDEX)))
            rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", dir);
        else
            rc = write_index(w, shard, n_shards, path, err);
    }
    if (rc == DVL_OK)
        remove_stale(dir, true, n_shards);
done:
    free(path);
    free(shard);
    free(work);
    free(ts);
    return rc;
}
