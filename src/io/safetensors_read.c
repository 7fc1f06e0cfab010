/* Reading one .safetensors file: map it, validate the header completely,
 * then serve tensors by name straight from the mapping.
 *
 * Validation follows the reference Rust crate (safetensors/src/tensor.rs,
 * SafeTensors::read_metadata and Metadata::validate): the header length is
 * at most 100 MB and fits the file, the header is UTF-8 JSON (trailing
 * whitespace allowed: the writer pads with spaces), every tensor has a known
 * dtype, a shape of non-negative integers and data_offsets whose span is
 * exactly numel * dtype size, and the tensors sorted by offset tile the data
 * buffer with no gap, no overlap and nothing left over. Beyond the crate, a
 * duplicate key is an error here (serde would let the last one win or fail
 * on the offsets). Each rule gives one message naming the file and the
 * tensor or key. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; dvl reads it in place on little-endian hosts only"
#endif

struct dvl_st_file {
    char *path;
    const unsigned char *map;
    size_t size;
    int n;
    dvl_st_tensor *t; /* sorted by name; names and shapes owned */
    int n_meta;
    char **meta_key, **meta_val; /* sorted by key */
};

/* An error "path: message". Always returns code. */
static int st_fail(const char *path, dvl_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int st_fail(const char *path, dvl_err *err, int code, const char *fmt, ...)
{
    char msg[448];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dvl_errf(err, code, "%s: %s", path, msg);
}

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

/* ------------------------------------------------------------- parsing */

/* Fill t from one header entry. The entry's own fields: dtype, shape,
 * data_offsets; unknown fields are ignored, as serde does. */
static int parse_entry(const char *path, const cJSON *e, dvl_st_tensor *t, int64_t off[2],
                       dvl_err *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": entry is not a JSON object", name);
    const char *dup = dvl_st_json_duplicate_key(e);
    if (dup)
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": duplicate key \"%s\" in its entry", name,
                       dup);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!dt)
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": missing \"dtype\"", name);
    if (!sh)
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": missing \"shape\"", name);
    if (!of)
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": missing \"data_offsets\"", name);

    if (!cJSON_IsString(dt))
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": dtype is not a string", name);
    if (!dvl_st_dtype_parse(dt->valuestring, &t->dtype))
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": unknown dtype \"%s\"", name,
                       dt->valuestring);

    if (!cJSON_IsArray(sh))
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": shape is not an array", name);
    int ndim = cJSON_GetArraySize(sh);
    int64_t *shape = malloc((size_t)(ndim ? ndim : 1) * sizeof *shape);
    if (!shape)
        return st_fail(path, err, DVL_ENOMEM, "tensor \"%s\": out of memory", name);
    t->shape = shape;
    t->ndim = ndim;
    int64_t numel = 1;
    int d = 0;
    for (const cJSON *v = sh->child; v; v = v->next, d++) {
        if (!dvl_st_json_uint(v, &shape[d]))
            return st_fail(path, err, DVL_EIO,
                           "tensor \"%s\": shape[%d] is not a non-negative integer", name, d);
        if (__builtin_mul_overflow(numel, shape[d], &numel))
            return st_fail(path, err, DVL_EIO,
                           "tensor \"%s\": shape has more elements than fit in 64 bits", name);
    }
    t->numel = numel;
    int64_t bits;
    if (__builtin_mul_overflow(numel, (int64_t)dvl_st_dtype_bits(t->dtype), &bits))
        return st_fail(path, err, DVL_EIO, "tensor \"%s\": byte size overflows 64 bits", name);
    if (bits % 8 != 0)
        return st_fail(path, err, DVL_EIO,
                       "tensor \"%s\": %lld elements of %s are not a whole number of bytes", name,
                       (long long)numel, dvl_st_dtype_name(t->dtype));
    t->nbytes = bits / 8;

    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || !dvl_st_json_uint(of->child, &off[0]) ||
        !dvl_st_json_uint(of->child->next, &off[1]))
        return st_fail(path, err, DVL_EIO,
                       "tensor \"%s\": data_offsets is not a pair of non-negative integers", name);
    return DVL_OK;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const dvl_st_tensor *)a)->name, ((const dvl_st_tensor *)b)->name);
}

/* For sorting tensors by data offsets, the order Metadata::validate walks. */
typedef struct span {
    int64_t begin, end;
    const char *name;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The offsets of every tensor against the data buffer of buf_len bytes;
 * on success sets each tensor's data pointer. */
static int check_layout(dvl_st_file *f, int64_t (*off)[2], int64_t buf_len, dvl_err *err)
{
    char sb[160];
    for (int i = 0; i < f->n; i++) {
        const dvl_st_tensor *t = &f->t[i];
        long long b = (long long)off[i][0], e = (long long)off[i][1];
        if (b > e)
            return st_fail(f->path, err, DVL_EIO,
                           "tensor \"%s\": data_offsets [%lld, %lld] end before they begin",
                           t->name, b, e);
        if (e > buf_len)
            return st_fail(f->path, err, DVL_EIO,
                           "tensor \"%s\": data_offsets [%lld, %lld] run past the end of the "
                           "%lld-byte data buffer (truncated file?)",
                           t->name, b, e, (long long)buf_len);
        if (e - b != t->nbytes)
            return st_fail(f->path, err, DVL_EIO,
                           "tensor \"%s\": size mismatch: %s %s needs %lld bytes but "
                           "data_offsets [%lld, %lld] hold %lld",
                           t->name, dvl_st_dtype_name(t->dtype),
                           shape_str(t->shape, t->ndim, sb, sizeof sb), (long long)t->nbytes, b, e,
                           e - b);
    }
    span *s = malloc((f->n > 0 ? (size_t)f->n : 1) * sizeof *s);
    if (!s)
        return st_fail(f->path, err, DVL_ENOMEM, "out of memory");
    for (int i = 0; i < f->n; i++)
        s[i] = (span){off[i][0], off[i][1], f->t[i].name};
    qsort(s, (size_t)f->n, sizeof *s, cmp_span);
    int64_t pos = 0;
    int rc = DVL_OK;
    for (int i = 0; i < f->n && rc == DVL_OK; i++) {
        if (s[i].begin < pos)
            rc = st_fail(f->path, err, DVL_EIO,
                         "tensors \"%s\" [%lld, %lld] and \"%s\" [%lld, %lld] overlap", s[i - 1].name,
                         (long long)s[i - 1].begin, (long long)s[i - 1].end, s[i].name,
                         (long long)s[i].begin, (long long)s[i].end);
        else if (s[i].begin > pos)
            rc = st_fail(f->path, err, DVL_EIO,
                         "gap in the data buffer: bytes [%lld, %lld) before tensor \"%s\" "
                         "belong to no tensor",
                         (long long)pos, (long long)s[i].begin, s[i].name);
        pos = s[i].end;
    }
    free(s);
    if (rc != DVL_OK)
        return rc;
    if (pos != buf_len)
        return st_fail(f->path, err, DVL_EIO,
                       "%lld trailing bytes after the last tensor: the data buffer is %lld bytes "
                       "but the tensors cover %lld",
                       (long long)(buf_len - pos), (long long)buf_len, (long long)pos);
    return DVL_OK;
}

static int parse_metadata(dvl_st_file *f, const cJSON *m, dvl_err *err)
{
    if (cJSON_IsNull(m)) /* serde reads null as "no metadata" */
        return DVL_OK;
    if (!cJSON_IsObject(m))
        return st_fail(f->path, err, DVL_EIO, "\"__metadata__\" is not an object of strings");
    const char *dup = dvl_st_json_duplicate_key(m);
    if (dup)
        return st_fail(f->path, err, DVL_EIO, "\"__metadata__\" has the key \"%s\" twice", dup);
    int n = cJSON_GetArraySize(m);
    f->meta_key = calloc((size_t)(n ? n : 1), sizeof(char *));
    f->meta_val = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (!f->meta_key || !f->meta_val)
        return st_fail(f->path, err, DVL_ENOMEM, "out of memory");
    for (const cJSON *v = m->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return st_fail(f->path, err, DVL_EIO, "\"__metadata__\" value of \"%s\" is not a string",
                           v->string);
        int i = f->n_meta;
        f->meta_key[i] = strdup(v->string);
        f->meta_val[i] = strdup(v->valuestring);
        f->n_meta++;
        if (!f->meta_key[i] || !f->meta_val[i])
            return st_fail(f->path, err, DVL_ENOMEM, "out of memory");
    }
    /* Insertion sort by key: metadata holds a handful of entries. */
    for (int i = 1; i < f->n_meta; i++)
        for (int j = i; j > 0 && strcmp(f->meta_key[j - 1], f->meta_key[j]) > 0; j--) {
            char *k = f->meta_key[j], *v = f->meta_val[j];
            f->meta_key[j] = f->meta_key[j - 1];
            f->meta_val[j] = f->meta_val[j - 1];
            f->meta_key[j - 1] = k;
            f->meta_val[j - 1] = v;
        }
    return DVL_OK;
}

static int parse_json(dvl_st_file *f, const cJSON *root, int64_t buf_len, dvl_err *err)
{
    if (!cJSON_IsObject(root))
        return st_fail(f->path, err, DVL_EIO, "header is not a JSON object");
    const char *dup = dvl_st_json_duplicate_key(root);
    if (dup)
        return st_fail(f->path, err, DVL_EIO, "duplicate key \"%s\" in the header", dup);

    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        n += strcmp(e->string, "__metadata__") != 0;
    f->t = calloc((size_t)(n ? n : 1), sizeof *f->t);
    int64_t (*off)[2] = malloc((size_t)(n ? n : 1) * sizeof *off);
    if (!f->t || !off) {
        free(off);
        return st_fail(f->path, err, DVL_ENOMEM, "out of memory for %d tensors", n);
    }
    int rc = DVL_OK;
    for (const cJSON *e = root->child; e && rc == DVL_OK; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            rc = parse_metadata(f, e, err);
            continue;
        }
        dvl_st_tensor *t = &f->t[f->n];
        t->path = f->path;
        if (!(t->name = strdup(e->string))) {
            rc = st_fail(f->path, err, DVL_ENOMEM, "out of memory");
            break;
        }
        f->n++; /* counted now so close frees the name even if parsing fails */
        rc = parse_entry(f->path, e, t, off[f->n - 1], err);
    }
    if (rc == DVL_OK)
        rc = check_layout(f, off, buf_len, err);
    if (rc == DVL_OK) {
        const unsigned char *buf = f->map + (f->size - (size_t)buf_len);
        for (int i = 0; i < f->n; i++)
            f->t[i].data = buf + off[i][0];
        qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_tensor_name);
    }
    free(off);
    return rc;
}

static int parse_header(dvl_st_file *f, dvl_err *err)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->map[i];
    if (n > DVL_ST_MAX_HEADER)
        return st_fail(f->path, err, DVL_EIO,
                       "header length %llu exceeds the format's limit of %llu bytes",
                       (unsigned long long)n, DVL_ST_MAX_HEADER);
    if (n > f->size - 8)
        return st_fail(f->path, err, DVL_EIO,
                       "header length %llu exceeds the %llu bytes after the length field "
                       "(truncated file?)",
                       (unsigned long long)n, (unsigned long long)(f->size - 8));
    const unsigned char *h = f->map + 8;
    size_t good = dvl_st_utf8_valid_prefix(h, n);
    if (good < n)
        return st_fail(f->path, err, DVL_EIO, "header is not valid UTF-8 (byte %zu of the header)",
                       good);
    /* JSON allows no raw control characters; rejecting them also keeps a NUL
     * from cutting a name short once cJSON has turned it into a C string. */
    for (size_t i = 0; i < n; i++)
        if (h[i] < 0x20 && h[i] != ' ' && h[i] != '\t' && h[i] != '\n' && h[i] != '\r')
            return st_fail(f->path, err, DVL_EIO,
                           "header is not valid JSON: control byte 0x%02x at byte %zu", h[i], i);

    /* Parse a NUL-terminated copy so no scan can run past the header. */
    char *text = malloc(n + 1);
    if (!text)
        return st_fail(f->path, err, DVL_ENOMEM, "out of memory for a %llu-byte header",
                       (unsigned long long)n);
    memcpy(text, h, n);
    text[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    int rc = DVL_OK;
    if (!root) {
        rc = st_fail(f->path, err, DVL_EIO, "header is not valid JSON (near byte %lld)",
                     end ? (long long)(end - text) : 0LL);
    } else {
        /* serde_json accepts trailing whitespace and nothing else. */
        for (const char *p = end; p < text + n; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                rc = st_fail(f->path, err, DVL_EIO,
                             "header is not valid JSON: data after the object at byte %lld",
                             (long long)(p - text));
                break;
            }
    }
    if (rc == DVL_OK)
        rc = parse_json(f, root, (int64_t)(f->size - 8 - n), err);
    cJSON_Delete(root);
    free(text);
    return rc;
}

/* ---------------------------------------------------------------- API */

dvl_st_file *dvl_st_open(const char *path, dvl_err *err)
{
    if (!path) {
        dvl_errf(err, DVL_EINVAL, "safetensors: path is NULL");
        return NULL;
    }
    dvl_st_file *f = calloc(1, sizeof *f);
    if (f)
        f->path = strdup(path);
    if (!f || !f->path) {
        free(f);
        dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_fail(path, err, DVL_EIO, "cannot open: %s", strerror(errno));
        dvl_st_close(f);
        return NULL;
    }
    struct stat st;
    int rc = DVL_OK;
    if (fstat(fd, &st) != 0)
        rc = st_fail(path, err, DVL_EIO, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = st_fail(path, err, DVL_EIO, "not a regular file");
    else if (st.st_size < 8)
        rc = st_fail(path, err, DVL_EIO,
                     "file is %lld bytes, too short for the 8-byte header length (truncated file?)",
                     (long long)st.st_size);
    if (rc == DVL_OK) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = st_fail(path, err, DVL_EIO, "cannot map: %s", strerror(errno));
        } else {
            f->map = m;
            f->size = (size_t)st.st_size;
        }
    }
    close(fd); /* the mapping keeps the file */
    if (rc == DVL_OK)
        rc = parse_header(f, err);
    if (rc != DVL_OK) {
        dvl_st_close(f);
        return NULL;
    }
    return f;
}

void dvl_st_close(dvl_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++) {
        free((char *)f->t[i].name);
        free((int64_t *)f->t[i].shape);
    }
    free(f->t);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    free(f->meta_key);
    free(f->meta_val);
    if (f->map)
        munmap((void *)f->map, f->size);
    free(f->path);
    free(f);
}

const char *dvl_st_path(const dvl_st_file *f) { return f->path; }
int dvl_st_count(const dvl_st_file *f) { return f->n; }

const dvl_st_tensor *dvl_st_tensor_at(const dvl_st_file *f, int i)
{
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const dvl_st_tensor *dvl_st_find(const dvl_st_file *f, const char *name, dvl_err *err)
{
    dvl_st_tensor key = {.name = name};
    const dvl_st_tensor *t = bsearch(&key, f->t, (size_t)f->n, sizeof *f->t, cmp_tensor_name);
    if (!t)
        st_fail(f->path, err, DVL_EINVAL, "no tensor named \"%s\"", name);
    return t;
}

const void *dvl_st_raw(const dvl_st_file *f, const char *name, int64_t *nbytes, dvl_err *err)
{
    const dvl_st_tensor *t = dvl_st_find(f, name, err);
    if (!t)
        return NULL;
    if (nbytes)
        *nbytes = t->nbytes;
    return t->data;
}

int dvl_st_tensor_read_f32(const dvl_st_tensor *t, float *dst, int64_t numel, dvl_err *err)
{
    dvl_dtype dt;
    if (!dvl_st_dtype_to_dvl(t->dtype, &dt) || dt == DVL_I32)
        return st_fail(t->path, err, DVL_EUNSUP,
                       "tensor \"%s\" has dtype %s; only F32, BF16 and F16 read as f32", t->name,
                       dvl_st_dtype_name(t->dtype));
    if (numel != t->numel) {
        char sb[160];
        return st_fail(t->path, err, DVL_EINVAL,
                       "tensor \"%s\" %s has %lld elements but the caller expects %lld", t->name,
                       shape_str(t->shape, t->ndim, sb, sizeof sb), (long long)t->numel,
                       (long long)numel);
    }
    /* Convert in blocks, in parallel (page faults on the mapping overlap
     * too). Data need not be aligned to its element size: a misaligned block
     * is copied to an aligned buffer first, since reading a uint16_t through
     * a misaligned pointer is undefined behaviour. */
    enum { BLOCK = 8192 };
    const unsigned char *src = t->data;
    size_t es = dvl_dtype_size(dt);
    int misaligned = ((uintptr_t)src % es) != 0;
    int64_t nblk = (numel + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (nblk > 16)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t i0 = b * BLOCK;
        int64_t n = numel - i0 < BLOCK ? numel - i0 : BLOCK;
        if (misaligned) {
            uint32_t tmp[BLOCK];
            memcpy(tmp, src + (size_t)i0 * es, (size_t)n * es);
            dvl_to_f32(dst + i0, tmp, dt, n);
        } else {
            dvl_to_f32(dst + i0, src + (size_t)i0 * es, dt, n);
        }
    }
    return DVL_OK;
}

int dvl_st_read_f32(const dvl_st_file *f, const char *name, float *dst, int64_t numel,
                    dvl_err *err)
{
    const dvl_st_tensor *t = dvl_st_find(f, name, err);
    return t ? dvl_st_tensor_read_f32(t, dst, numel, err) : DVL_EINVAL;
}

int dvl_st_meta_count(const dvl_st_file *f) { return f->n_meta; }

void dvl_st_meta_at(const dvl_st_file *f, int i, const char **key, const char **value)
{
    bool ok = i >= 0 && i < f->n_meta;
    if (key)
        *key = ok ? f->meta_key[i] : NULL;
    if (value)
        *value = ok ? f->meta_val[i] : NULL;
}

const char *dvl_st_meta(const dvl_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0)
            return f->meta_val[i];
    return NULL;
}
