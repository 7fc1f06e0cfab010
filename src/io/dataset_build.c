/* Building a prepared dataset from LLaVA-format JSON (format: io/dataset.h).
 *
 * The input is indexed first (every record's byte range, each parsed once
 * to check its syntax, so a malformed file fails before anything is
 * written). Shards whose sidecar, settings and checksum agree are kept; the
 * records of the others go to a pool of worker threads, which parse,
 * encode and preprocess them into a ring of result slots. The calling
 * thread is the writer: it takes the slots in record order, so the shard
 * files do not depend on the number of workers or on their timing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <omp.h>

#include "io/atomic_file.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/shard.h"

void dvl_build_opts_default(dvl_build_opts *o)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    *o = (dvl_build_opts){.shard_size = 1000,
                          .image_size = DVL_SIGLIP_SIZE,
                          .threads = cpus > 0 ? (int)cpus : 1,
                          .deflate = 1};
    dvl_chat_opts_default(&o->chat);
}

/* ---- the input file ---- */

typedef struct record {
    int64_t off, len; /* byte range of the record's JSON value */
    int64_t line;     /* 1-based line of its first byte */
} record;

typedef struct input {
    const char *path;
    const char *buf;
    size_t size;
    bool mapped, lines;
    record *rec;
    int64_t n, cap;
    uint64_t fnv;
} input;

static void input_free(input *in)
{
    if (in->mapped)
        munmap((void *)in->buf, in->size);
    else
        free((void *)in->buf);
    free(in->rec);
}

/* Line and column (1-based, in bytes) of offset off. Offsets are asked
 * for in increasing order, so the count of newlines carries over. */
typedef struct cursor {
    int64_t pos, line, line_start;
} cursor;

static void advance(const input *in, cursor *c, int64_t off)
{
    for (; c->pos < off; c->pos++)
        if (in->buf[c->pos] == '\n') {
            c->line++;
            c->line_start = c->pos + 1;
        }
}

static int input_error(const input *in, cursor *c, int64_t off, const char *what, dvl_err *err)
{
    advance(in, c, off);
    return dvl_errf(err, DVL_EINVAL, "%s:%lld:%lld: %s", in->path, (long long)c->line,
                    (long long)(off - c->line_start + 1), what);
}

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

static int add_record(input *in, int64_t off, int64_t len, int64_t line, dvl_err *err)
{
    if (in->n == in->cap) {
        int64_t cap = in->cap ? 2 * in->cap : 1024;
        record *r = realloc(in->rec, sizeof *r * (size_t)cap);
        if (!r)
            return dvl_errf(err, DVL_ENOMEM, "%s: out of memory indexing record %lld", in->path,
                            (long long)in->n);
        in->rec = r;
        in->cap = cap;
    }
    in->rec[in->n++] = (record){off, len, line};
    return DVL_OK;
}

/* Parse the JSON value at off (syntax check only); *end gets its end. */
static int check_value(const input *in, cursor *c, int64_t off, int64_t limit, int64_t *end,
                       dvl_err *err)
{
    const char *stop = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(in->buf + off, (size_t)(limit - off), &stop, 0);
    if (!v) {
        int64_t at = stop ? stop - in->buf : off;
        return input_error(in, c, at < limit ? at : limit, "malformed JSON", err);
    }
    cJSON_Delete(v);
    *end = stop - in->buf;
    return DVL_OK;
}

static int index_lines(input *in, int64_t pos, dvl_err *err)
{
    cursor c = {0, 1, 0};
    int64_t size = (int64_t)in->size, line = 1;
    advance(in, &c, 0);
    /* pos skipped a BOM; lines are counted from the file's start */
    for (int64_t s = 0; s < size; line++) {
        const char *nl = memchr(in->buf + s, '\n', (size_t)(size - s));
        int64_t e = nl ? nl - in->buf : size;
        int64_t a = s < pos ? pos : s, b = e;
        while (a < b && blank(in->buf[a]))
            a++;
        while (b > a && blank(in->buf[b - 1]))
            b--;
        if (a < b) {
            int64_t end = b;
            int rc = check_value(in, &c, a, b, &end, err);
            if (!rc && end != b)
                rc = input_error(in, &c, end, "unexpected characters after the JSON value", err);
            if (!rc)
                rc = add_record(in, a, b - a, line, err);
            if (rc)
                return rc;
        }
        s = e + 1;
    }
    return DVL_OK;
}

static int index_array(input *in, int64_t pos, dvl_err *err)
{
    cursor c = {0, 1, 0};
    int64_t size = (int64_t)in->size;
    pos++; /* '[' */
    for (bool first = true;; first = false) {
        while (pos < size && blank(in->buf[pos]))
            pos++;
        if (first && pos < size && in->buf[pos] == ']') {
            pos++;
            break;
        }
        if (pos >= size)
            return input_error(in, &c, size, "unexpected end of file inside the array", err);
        int64_t end = pos;
        int rc = check_value(in, &c, pos, size, &end, err);
        if (rc)
            return rc;
        advance(in, &c, pos);
        if ((rc = add_record(in, pos, end - pos, c.line, err)))
            return rc;
        pos = end;
        while (pos < size && blank(in->buf[pos]))
            pos++;
        if (pos < size && in->buf[pos] == ',') {
            pos++;
            continue;
        }
        if (pos < size && in->buf[pos] == ']') {
            pos++;
            break;
        }
        return input_error(in, &c, pos, pos < size ? "expected ',' or ']'" :
                                                     "unexpected end of file inside the array",
                           err);
    }
    while (pos < size && blank(in->buf[pos]))
        pos++;
    if (pos < size)
        return input_error(in, &c, pos, "unexpected characters after the array", err);
    return DVL_OK;
}

static int input_open(input *in, const char *path, dvl_err *err)
{
    memset(in, 0, sizeof *in);
    in->path = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dvl_errf(err, DVL_EIO, "%s: not a regular file", path);
    }
    in->size = (size_t)sb.st_size;
    if (in->size) {
        void *p = mmap(NULL, in->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return dvl_errf(err, DVL_EIO, "%s: cannot map: %s", path, strerror(errno));
        }
        in->buf = p;
        in->mapped = true;
    } else {
        in->buf = "";
    }
    close(fd);
    in->fnv = dvl_fnv1a64(DVL_FNV1A64_INIT, in->buf, in->size);

    int64_t pos = 0, size = (int64_t)in->size;
    if (size >= 3 && !memcmp(in->buf, "\xEF\xBB\xBF", 3))
        pos = 3;
    while (pos < size && blank(in->buf[pos]))
        pos++;
    if (pos < size && in->buf[pos] == '[')
        return index_array(in, pos, err);
    in->lines = true;
    if (pos < size && in->buf[pos] != '{') {
        cursor c = {0, 1, 0};
        return input_error(in, &c, pos, "expected a JSON array or JSON lines of objects", err);
    }
    return index_lines(in, size >= 3 && !memcmp(in->buf, "\xEF\xBB\xBF", 3) ? 3 : 0, err);
}

/* ---- one record ---- */

enum kind { K_OK, K_MALFORMED, K_MISSING_IMAGE, K_BAD_IMAGE, K_TOO_LONG, K_TRUNCATED };
static const char *kind_name[] = {"ok", "malformed", "missing_image", "bad_image", "too_long",
                                  "truncated"};

typedef struct slot {
    bool done;
    int kind; /* K_OK or K_TRUNCATED: written; others: skipped */
    char *id; /* NULL when the record has none */
    char reason[600];
    bool has_image;
    dvl_chat_out chat;
    uint8_t *pixels;
} slot;

typedef struct build {
    const dvl_build_opts *o;
    const input *in;
    const dvl_tokenizer *tok;
    dvl_chat *chat;
    const char *images;
    /* the work: records todo[0..n_todo) in order */
    int64_t *todo, n_todo;
    /* the ring of slots; guarded by mu */
    slot *slots;
    int64_t n_slots, next, written;
    pthread_mutex_t mu;
    pthread_cond_t space, ready;
    bool stop;
    int fatal;
    dvl_err fatal_err;
} build;

static void set_reason(slot *s, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_reason(slot *s, int kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof s->reason, fmt, ap);
    va_end(ap);
    s->kind = kind;
}

/* cJSON stops a string at an escaped NUL, which would silently cut the
 * text; true when the raw record has \u0000 (after an even number of
 * backslashes). */
static bool has_escaped_nul(const char *s, size_t n)
{
    for (const char *p = memmem(s, n, "\\u0000", 6); p;
         p = memmem(p + 1, n - (size_t)(p + 1 - s), "\\u0000", 6)) {
        size_t k = 0;
        while (p - k > s && p[-(ptrdiff_t)k - 1] == '\\')
            k++;
        if (k % 2 == 0)
            return true;
    }
    return false;
}

/* Whether a record's id is usable: a string, or an integer of magnitude
 * below 9e15 (exact in a double; the range is checked before converting,
 * which is undefined beyond int64_t). */
static bool id_ok(const cJSON *id)
{
    return cJSON_IsString(id) || (cJSON_IsNumber(id) && id->valuedouble > -9.0e15 &&
                                  id->valuedouble < 9.0e15 &&
                                  id->valuedouble == floor(id->valuedouble));
}

/* A usable id as text: a string as is, an integer in decimal; NULL when out
 * of memory. */
static char *id_text(const cJSON *id)
{
    if (cJSON_IsString(id))
        return strdup(id->valuestring);
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)id->valuedouble);
    return strdup(buf);
}

/* Everything for one record, into s. Returns non-zero only for errors that
 * must stop the build (out of memory). */
static int process(build *b, dvl_tokenizer_state *st, dvl_chat_turn **turns, int *turn_cap,
                   const record *r, slot *s, dvl_err *err)
{
    const char *text = b->in->buf + r->off;
    s->kind = K_OK;
    s->reason[0] = '\0';
    s->has_image = false;
    free(s->id);
    s->id = NULL;
    cJSON *root = cJSON_ParseWithLength(text, (size_t)r->len);
    if (!root)
        return dvl_errf(err, DVL_ENOMEM, "%s:%lld: cannot parse the record again (out of memory?)",
                        b->in->path, (long long)r->line);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *image = cJSON_GetObjectItemCaseSensitive(root, "image");
    const cJSON *conv = cJSON_GetObjectItemCaseSensitive(root, "conversations");
    const char *image_name = NULL;
    if (!cJSON_IsObject(root)) {
        set_reason(s, K_MALFORMED, "the record is not a JSON object");
        goto done;
    }
    if (id && !cJSON_IsNull(id)) {
        if (!id_ok(id)) {
            set_reason(s, K_MALFORMED,
                       "field \"id\" is not a string or an integer (of magnitude below 9e15)");
            goto done;
        }
        if (!(s->id = id_text(id)))
            return cJSON_Delete(root), dvl_errf(err, DVL_ENOMEM, "out of memory");
    }
    if (!s->id) {
        set_reason(s, K_MALFORMED, "field \"id\" is missing");
        goto done;
    }
    if (has_escaped_nul(text, (size_t)r->len)) {
        set_reason(s, K_MALFORMED, "a string contains \\u0000, which is not supported");
        goto done;
    }
    if (cJSON_IsArray(image) && cJSON_GetArraySize(image) == 1)
        image = cJSON_GetArrayItem(image, 0);
    if (cJSON_IsArray(image)) {
        set_reason(s, K_MALFORMED, "field \"image\" lists %d images; one per sample is supported",
                   cJSON_GetArraySize(image));
        goto done;
    }
    if (image && !cJSON_IsNull(image)) {
        if (!cJSON_IsString(image) || !image->valuestring[0]) {
            set_reason(s, K_MALFORMED, "field \"image\" is not a file name");
            goto done;
        }
        image_name = image->valuestring;
    }
    if (!cJSON_IsArray(conv)) {
        set_reason(s, K_MALFORMED, "field \"conversations\" is %s",
                   conv ? "not an array" : "missing");
        goto done;
    }
    int n = cJSON_GetArraySize(conv);
    if (n > *turn_cap) {
        dvl_chat_turn *t = realloc(*turns, sizeof *t * (size_t)n);
        if (!t)
            return cJSON_Delete(root), dvl_errf(err, DVL_ENOMEM, "out of memory for %d turns", n);
        *turns = t;
        *turn_cap = n;
    }
    int k = 0;
    const cJSON *turn;
    cJSON_ArrayForEach(turn, conv)
    {
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(turn, "from");
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(turn, "value");
        int role = dvl_chat_role_parse(cJSON_IsString(from) ? from->valuestring : NULL);
        if (!cJSON_IsObject(turn)) {
            set_reason(s, K_MALFORMED, "conversations[%d] is not an object", k);
            goto done;
        }
        if (!cJSON_IsString(from)) {
            set_reason(s, K_MALFORMED, "conversations[%d].from is not a string", k);
            goto done;
        }
        if (role < 0) {
            set_reason(s, K_MALFORMED, "conversations[%d].from \"%.40s\" is not human, gpt or system",
                       k, from->valuestring);
            goto done;
        }
        if (!cJSON_IsString(value)) {
            set_reason(s, K_MALFORMED, "conversations[%d].value is not a string", k);
            goto done;
        }
        (*turns)[k++] = (dvl_chat_turn){(dvl_chat_role)role, value->valuestring,
                                        strlen(value->valuestring)};
    }
    dvl_err e = {0};
    if (dvl_chat_encode(b->chat, st, *turns, k, image_name != NULL, &s->chat, &e)) {
        if (e.code == DVL_ENOMEM)
            return cJSON_Delete(root), dvl_errf(err, DVL_ENOMEM, "%s", e.msg);
        set_reason(s, s->chat.too_long ? K_TOO_LONG : K_MALFORMED, "conversation: %s", e.msg);
        goto done;
    }
    if (s->chat.truncated)
        set_reason(s, K_TRUNCATED, "kept %d of %d turns: %lld positions > max_len %lld",
                   s->chat.turns_kept, k, (long long)s->chat.seq_len, (long long)b->o->chat.max_len);
    if (image_name) {
        char path[4096];
        if (image_name[0] == '/')
            snprintf(path, sizeof path, "%s", image_name);
        else
            snprintf(path, sizeof path, "%s%s%s", b->images,
                     b->images[0] && b->images[strlen(b->images) - 1] != '/' ? "/" : "", image_name);
        dvl_image img = {0}, px = {0};
        if (access(path, F_OK) && errno == ENOENT) {
            set_reason(s, K_MISSING_IMAGE, "image not found: %s", path);
            goto done;
        }
        if (dvl_image_load(path, &img, &e) ||
            dvl_siglip_pixels(&img, b->o->image_size, &px, &e)) {
            dvl_image_free(&img);
            if (e.code == DVL_ENOMEM)
                return cJSON_Delete(root), dvl_errf(err, DVL_ENOMEM, "%s", e.msg);
            set_reason(s, K_BAD_IMAGE, "%s", e.msg);
            goto done;
        }
        memcpy(s->pixels, px.data, (size_t)b->o->image_size * (size_t)b->o->image_size * 3);
        dvl_image_free(&img);
        dvl_image_free(&px);
        s->has_image = true;
    }
done:
    cJSON_Delete(root);
    return DVL_OK;
}

static void *worker(void *arg)
{
    build *b = arg;
    /* The workers are the parallelism: the image code's OpenMP loops run
     * on one thread each here (this setting is per thread). */
    omp_set_num_threads(1);
    dvl_err err = {0};
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(b->tok, &err);
    dvl_chat_turn *turns = NULL;
    int turn_cap = 0;
    int rc = st ? DVL_OK : err.code;
    pthread_mutex_lock(&b->mu);
    while (!rc) {
        while (!b->stop && b->next < b->n_todo && b->next >= b->written + b->n_slots)
            pthread_cond_wait(&b->space, &b->mu);
        if (b->stop || b->next >= b->n_todo)
            break;
        int64_t q = b->next++;
        slot *s = &b->slots[q % b->n_slots];
        pthread_mutex_unlock(&b->mu);
        rc = process(b, st, &turns, &turn_cap, &b->in->rec[b->todo[q]], s, &err);
        pthread_mutex_lock(&b->mu);
        s->done = true;
        pthread_cond_broadcast(&b->ready);
    }
    if (rc && !b->fatal) {
        b->fatal = rc;
        b->fatal_err = err;
        b->stop = true;
        pthread_cond_broadcast(&b->ready);
        pthread_cond_broadcast(&b->space);
    }
    pthread_mutex_unlock(&b->mu);
    free(turns);
    dvl_tokenizer_state_free(st);
    return NULL;
}

/* ---- shards and sidecars ---- */

static void shard_name(char *buf, size_t n, const char *out, int64_t k, const char *ext)
{
    snprintf(buf, n, "%s/shard-%05lld.%s", out, (long long)k, ext);
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? 2 * cap : 8192;
            char *p = realloc(buf, cap);
            if (!p)
                break;
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (!r)
            break;
    }
    fclose(f);
    cJSON *j = buf ? cJSON_ParseWithLength(buf, n) : NULL;
    free(buf);
    return j;
}

static int64_t json_int(const cJSON *o, const char *key)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    /* -1 for anything but an integer of at most 2^53 (a damaged sidecar):
     * the caller then rebuilds the shard. */
    if (!cJSON_IsNumber(x) || !(fabs(x->valuedouble) <= 9007199254740992.0) ||
        x->valuedouble != floor(x->valuedouble))
        return -1;
    return (int64_t)x->valuedouble;
}

/* Whether shard k from an earlier run can be kept: its sidecar names the
 * same settings and records, and the file has the recorded size and hash. */
static bool shard_valid(const char *out, int64_t k, const char *settings, int64_t first,
                        int64_t count)
{
    char path[4096], h5[4096];
    shard_name(path, sizeof path, out, k, "json");
    shard_name(h5, sizeof h5, out, k, "h5");
    cJSON *j = read_json(path);
    if (!j)
        return false;
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(j, "settings");
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(j, "fnv1a64");
    uint64_t want, got;
    int64_t bytes;
    bool ok = cJSON_IsString(set) && !strcmp(set->valuestring, settings) &&
              json_int(j, "first_record") == first && json_int(j, "records") == count &&
              cJSON_IsString(hash) && dvl_parse_hex64(hash->valuestring, &want) &&
              !dvl_fnv1a64_file(h5, &got, &bytes, NULL) && got == want &&
              bytes == json_int(j, "bytes");
    cJSON_Delete(j);
    return ok;
}

static int write_json(const char *path, cJSON *j, bool lines_of_array, dvl_err *err)
{
    dvl_afile a;
    int rc = dvl_afile_open(&a, path, err);
    if (rc)
        return rc;
    if (lines_of_array) {
        const cJSON *e;
        cJSON_ArrayForEach(e, j)
        {
            char *s = cJSON_PrintUnformatted(e);
            if (!s) {
                dvl_afile_abort(&a);
                return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
            }
            rc = dvl_afile_write(&a, s, strlen(s), err);
            if (!rc)
                rc = dvl_afile_write(&a, "\n", 1, err);
            free(s);
            if (rc) {
                dvl_afile_abort(&a);
                return rc;
            }
        }
    } else {
        char *s = cJSON_Print(j);
        if (!s) {
            dvl_afile_abort(&a);
            return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        }
        rc = dvl_afile_write(&a, s, strlen(s), err);
        if (!rc)
            rc = dvl_afile_write(&a, "\n", 1, err);
        free(s);
        if (rc) {
            dvl_afile_abort(&a);
            return rc;
        }
    }
    return dvl_afile_commit(&a, err);
}

static void add_hex(cJSON *o, const char *key, uint64_t v)
{
    char h[17];
    dvl_hex64(v, h);
    cJSON_AddStringToObject(o, key, h);
}

/* The shard being written. */
typedef struct open_shard {
    int64_t k, first, count;
    dvl_shard_writer *w;
    int64_t samples, images, tokens, counts[6];
    cJSON *report;
} open_shard;

static int shard_begin(build *b, open_shard *sh, int64_t k, dvl_err *err)
{
    char path[4096];
    shard_name(path, sizeof path, b->o->out, k, "h5");
    memset(sh, 0, sizeof *sh);
    sh->k = k;
    sh->first = k * b->o->shard_size;
    sh->count = b->in->n - sh->first < b->o->shard_size ? b->in->n - sh->first : b->o->shard_size;
    sh->report = cJSON_CreateArray();
    if (!sh->report)
        return dvl_errf(err, DVL_ENOMEM, "out of memory");
    sh->w = dvl_shard_create(path, b->o->image_size, b->o->deflate, err);
    if (!sh->w) {
        cJSON_Delete(sh->report);
        sh->report = NULL;
        return err->code;
    }
    return DVL_OK;
}

static int shard_take(build *b, open_shard *sh, int64_t rec, slot *s, dvl_err *err)
{
    sh->counts[s->kind]++;
    if (s->kind == K_OK || s->kind == K_TRUNCATED) {
        int rc = dvl_shard_add(sh->w, s->id, s->chat.ids, s->chat.labels, s->chat.n,
                               s->has_image ? s->pixels : NULL, s->has_image ? s->chat.image_pos : -1,
                               err);
        if (rc)
            return rc;
        sh->samples++;
        sh->images += s->has_image;
        sh->tokens += s->chat.n;
        if (s->kind == K_OK)
            return DVL_OK;
    }
    cJSON *e = cJSON_CreateObject();
    if (!e)
        return dvl_errf(err, DVL_ENOMEM, "out of memory");
    cJSON_AddItemToArray(sh->report, e);
    cJSON_AddNumberToObject(e, "record", (double)rec);
    cJSON_AddNumberToObject(e, "line", (double)b->in->rec[rec].line);
    if (s->id)
        cJSON_AddStringToObject(e, "id", s->id);
    else
        cJSON_AddNullToObject(e, "id");
    cJSON_AddStringToObject(e, "status", s->kind == K_TRUNCATED ? "truncated" : "skipped");
    cJSON_AddStringToObject(e, "kind", kind_name[s->kind]);
    cJSON_AddStringToObject(e, "reason", s->reason);
    return DVL_OK;
}

static int shard_end(build *b, open_shard *sh, const char *settings, dvl_err *err)
{
    char h5[4096], side[4096];
    shard_name(h5, sizeof h5, b->o->out, sh->k, "h5");
    shard_name(side, sizeof side, b->o->out, sh->k, "json");
    dvl_shard_writer *w = sh->w;
    sh->w = NULL;
    int rc = dvl_shard_finish(w, err);
    uint64_t hash = 0;
    int64_t bytes = 0;
    if (!rc)
        rc = dvl_fnv1a64_file(h5, &hash, &bytes, err);
    if (rc) {
        cJSON_Delete(sh->report);
        sh->report = NULL;
        return rc;
    }
    cJSON *j = cJSON_CreateObject();
    if (!j) {
        cJSON_Delete(sh->report);
        return dvl_errf(err, DVL_ENOMEM, "out of memory");
    }
    char name[64];
    snprintf(name, sizeof name, "shard-%05lld.h5", (long long)sh->k);
    cJSON_AddStringToObject(j, "file", name);
    cJSON_AddStringToObject(j, "settings", settings);
    cJSON_AddNumberToObject(j, "first_record", (double)sh->first);
    cJSON_AddNumberToObject(j, "records", (double)sh->count);
    cJSON_AddNumberToObject(j, "samples", (double)sh->samples);
    cJSON_AddNumberToObject(j, "images", (double)sh->images);
    cJSON_AddNumberToObject(j, "tokens", (double)sh->tokens);
    cJSON_AddNumberToObject(j, "bytes", (double)bytes);
    add_hex(j, "fnv1a64", hash);
    cJSON *c = cJSON_AddObjectToObject(j, "counts");
    for (int i = K_MALFORMED; i <= K_TRUNCATED; i++)
        cJSON_AddNumberToObject(c, kind_name[i], (double)sh->counts[i]);
    cJSON_AddItemToObject(j, "report", sh->report);
    sh->report = NULL;
    rc = write_json(side, j, false, err);
    cJSON_Delete(j);
    return rc;
}

/* Remove what an earlier run may have left: temporary files, and shards
 * past the current count (from a run with another shard size). */
static void tidy(const char *out, int64_t n_shards)
{
    DIR *d = opendir(out);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long k;
        int used = 0;
        char ext[16] = "";
        if (sscanf(e->d_name, "shard-%5lld.%15[a-z0-9.]%n", &k, ext, &used) != 2 ||
            (size_t)used != strlen(e->d_name))
            continue;
        bool tmp = !strcmp(ext, "h5.tmp") || !strcmp(ext, "json.tmp");
        bool ours = !strcmp(ext, "h5") || !strcmp(ext, "json");
        if (tmp || (ours && k >= n_shards)) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", out, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static int mkdirs(const char *path, dvl_err *err)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) && errno != EEXIST)
            return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST)
        return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", buf, strerror(errno));
    return DVL_OK;
}

/* ---- the manifest ---- */

static int write_outputs(build *b, const char *settings, uint64_t tok_hash, int64_t tok_bytes,
                         int64_t n_shards, dvl_build_stats *st, dvl_err *err)
{
    const dvl_build_opts *o = b->o;
    cJSON *m = cJSON_CreateObject(), *files = NULL, *report = cJSON_CreateArray();
    if (!m || !report) {
        cJSON_Delete(m);
        cJSON_Delete(report);
        return dvl_errf(err, DVL_ENOMEM, "out of memory");
    }
    int rc = DVL_OK;
    int64_t tot[6] = {0};
    cJSON_AddStringToObject(m, "format", "dvl-dataset");
    cJSON_AddNumberToObject(m, "version", DVL_DATASET_VERSION);
    cJSON *counts[5];
    const char *count_names[] = {"samples", "images", "tokens", "records", "shards"};
    for (int i = 0; i < 5; i++)
        counts[i] = cJSON_AddNumberToObject(m, count_names[i], 0);
    cJSON *skipped = cJSON_AddObjectToObject(m, "skipped");
    cJSON *truncated = cJSON_AddNumberToObject(m, "truncated", 0);
    cJSON *src = cJSON_AddObjectToObject(m, "source");
    cJSON_AddStringToObject(src, "file", o->json);
    cJSON_AddStringToObject(src, "format", b->in->lines ? "jsonl" : "json");
    cJSON_AddNumberToObject(src, "bytes", (double)b->in->size);
    add_hex(src, "fnv1a64", b->in->fnv);
    cJSON *tk = cJSON_AddObjectToObject(m, "tokenizer");
    cJSON_AddStringToObject(tk, "dir", o->tokenizer);
    cJSON_AddStringToObject(tk, "file", "tokenizer.json");
    cJSON_AddNumberToObject(tk, "bytes", (double)tok_bytes);
    add_hex(tk, "fnv1a64", tok_hash);
    cJSON_AddNumberToObject(tk, "vocab_size", (double)dvl_tokenizer_vocab_size(b->tok));
    int32_t pad = dvl_tokenizer_pad_id(b->tok), eos = dvl_tokenizer_eos_id(b->tok);
    cJSON_AddNumberToObject(tk, "pad_token_id", pad >= 0 ? pad : eos >= 0 ? eos : 0);
    cJSON_AddNumberToObject(tk, "eos_token_id", eos);
    cJSON *tm = cJSON_AddObjectToObject(m, "template");
    cJSON_AddStringToObject(tm, "name", dvl_chat_template_name(o->chat.tmpl));
    if (dvl_chat_system(b->chat))
        cJSON_AddStringToObject(tm, "system", dvl_chat_system(b->chat));
    else
        cJSON_AddNullToObject(tm, "system");
    cJSON_AddStringToObject(tm, "labels",
                            o->chat.labels == DVL_LABELS_REFERENCE ? "reference" : "assistant");
    cJSON_AddNumberToObject(tm, "image_token_id", dvl_chat_image_id(b->chat));
    cJSON_AddNumberToObject(tm, "image_tokens", (double)o->chat.image_tokens);
    cJSON_AddNumberToObject(tm, "max_len", (double)o->chat.max_len);
    cJSON_AddStringToObject(tm, "overflow",
                            o->chat.overflow == DVL_OVERFLOW_SKIP ? "skip" : "truncate");
    cJSON *im = cJSON_AddObjectToObject(m, "image");
    cJSON_AddNumberToObject(im, "size", o->image_size);
    cJSON_AddStringToObject(im, "layout", "uint8 [images, size, size, 3] RGB");
    cJSON_AddStringToObject(im, "pad", "expand2square (LLaVA), image centred");
    const int bg[3] = {127, 127, 127};
    cJSON_AddItemToObject(im, "background", cJSON_CreateIntArray(bg, 3));
    cJSON_AddStringToObject(im, "resize", "bicubic, PIL Image.resize exact");
    cJSON *nm = cJSON_AddObjectToObject(im, "normalize");
    const double half[3] = {0.5, 0.5, 0.5};
    cJSON_AddItemToObject(nm, "mean", cJSON_CreateDoubleArray(half, 3));
    cJSON_AddItemToObject(nm, "std", cJSON_CreateDoubleArray(half, 3));
    cJSON_AddNumberToObject(im, "deflate", o->deflate);
    cJSON_AddNumberToObject(m, "shard_size", (double)o->shard_size);
    cJSON_AddStringToObject(m, "settings_fnv1a64", settings);
    cJSON_AddStringToObject(m, "checksum",
                            "FNV-1a 64-bit of the whole shard file: h = 0xcbf29ce484222325; for "
                            "each byte h = (h ^ byte) * 0x100000001b3 mod 2^64");
    files = cJSON_AddArrayToObject(m, "shard_files");
    int64_t samples = 0, images = 0, tokens = 0;
    for (int64_t k = 0; k < n_shards && !rc; k++) {
        char side[4096];
        shard_name(side, sizeof side, o->out, k, "json");
        cJSON *j = read_json(side);
        const cJSON *rep = cJSON_GetObjectItemCaseSensitive(j, "report");
        const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(j, "counts");
        if (!j || !cJSON_IsArray(rep) || !cJSON_IsObject(cnt)) {
            cJSON_Delete(j);
            rc = dvl_errf(err, DVL_EIO, "%s: cannot read back the shard's sidecar", side);
            break;
        }
        cJSON *f = cJSON_CreateObject();
        cJSON_AddItemToArray(files, f);
        const char *keys[] = {"first_record", "records", "samples", "images", "tokens", "bytes"};
        cJSON_AddItemToObject(f, "file",
                              cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "file"), 0));
        for (int i = 0; i < 6; i++)
            cJSON_AddNumberToObject(f, keys[i], (double)json_int(j, keys[i]));
        cJSON_AddItemToObject(f, "fnv1a64",
                              cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "fnv1a64"), 0));
        samples += json_int(j, "samples");
        images += json_int(j, "images");
        tokens += json_int(j, "tokens");
        for (int i = K_MALFORMED; i <= K_TRUNCATED; i++)
            tot[i] += json_int(cnt, kind_name[i]);
        const cJSON *e;
        cJSON_ArrayForEach(e, rep)
        cJSON_AddItemToArray(report, cJSON_Duplicate(e, 1));
        cJSON_Delete(j);
    }
    int64_t skip = tot[K_MALFORMED] + tot[K_MISSING_IMAGE] + tot[K_BAD_IMAGE] + tot[K_TOO_LONG];
    cJSON_SetNumberValue(counts[0], (double)samples);
    cJSON_SetNumberValue(counts[1], (double)images);
    cJSON_SetNumberValue(counts[2], (double)tokens);
    cJSON_SetNumberValue(counts[3], (double)b->in->n);
    cJSON_SetNumberValue(counts[4], (double)n_shards);
    cJSON_SetNumberValue(truncated, (double)tot[K_TRUNCATED]);
    cJSON_AddNumberToObject(skipped, "total", (double)skip);
    for (int i = K_MALFORMED; i <= K_TOO_LONG; i++)
        cJSON_AddNumberToObject(skipped, kind_name[i], (double)tot[i]);
    char path[4096];
    if (!rc) {
        snprintf(path, sizeof path, "%s/report.jsonl", o->out);
        rc = write_json(path, report, true, err);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/manifest.json", o->out);
        rc = write_json(path, m, false, err);
    }
    if (!rc && st) {
        st->samples = samples;
        st->images = images;
        st->tokens = tokens;
        st->truncated = tot[K_TRUNCATED];
        st->skipped = skip;
        st->malformed = tot[K_MALFORMED];
        st->missing_image = tot[K_MISSING_IMAGE];
        st->bad_image = tot[K_BAD_IMAGE];
        st->too_long = tot[K_TOO_LONG];
    }
    cJSON_Delete(m);
    cJSON_Delete(report);
    return rc;
}

/* ---- the build ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Everything the shard files depend on, hashed: a shard from an earlier
 * run is reused only if this matches. */
static void settings_fingerprint(const build *b, uint64_t tok_hash, char out[17])
{
    const dvl_build_opts *o = b->o;
    const char *sys = dvl_chat_system(b->chat);
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "dvl-dataset %d shard %d|tokenizer %016llx|input %016llx|template %s|labels "
                     "%d|image id %d|image tokens %lld|max_len %lld|overflow %d|size %d|deflate "
                     "%d|shard_size %lld|system ",
                     DVL_DATASET_VERSION, DVL_SHARD_VERSION, (unsigned long long)tok_hash,
                     (unsigned long long)b->in->fnv, dvl_chat_template_name(o->chat.tmpl),
                     (int)o->chat.labels, dvl_chat_image_id(b->chat),
                     (long long)o->chat.image_tokens, (long long)o->chat.max_len,
                     (int)o->chat.overflow, o->image_size, o->deflate, (long long)o->shard_size);
    uint64_t h = dvl_fnv1a64(DVL_FNV1A64_INIT, buf, (size_t)n);
    h = dvl_fnv1a64(h, sys ? "1" : "0", 1);
    if (sys)
        h = dvl_fnv1a64(h, sys, strlen(sys));
    dvl_hex64(h, out);
}

int dvl_dataset_build(const dvl_build_opts *o, dvl_build_stats *st, dvl_err *err)
{
    dvl_err local;
    if (!err)
        err = &local;
    if (!o || !o->json || !o->tokenizer || !o->out)
        return dvl_errf(err, DVL_EINVAL, "build: json, tokenizer and out are required");
    if (o->shard_size < 1 || o->image_size < 1 || o->image_size > 16384 || o->threads < 1 ||
        o->deflate < 0 || o->deflate > 9)
        return dvl_errf(err, DVL_EINVAL,
                        "build: shard size %lld, image size %d, threads %d or deflate %d out of "
                        "range",
                        (long long)o->shard_size, o->image_size, o->threads, o->deflate);
    if (st)
        memset(st, 0, sizeof *st);
    build b = {.o = o};
    input in;
    char images_dir[4096];
    if (o->images) {
        b.images = o->images;
    } else {
        snprintf(images_dir, sizeof images_dir, "%s", o->json);
        char *slash = strrchr(images_dir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(images_dir, ".");
        b.images = images_dir;
    }
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", o->tokenizer);
    uint64_t tok_hash;
    int64_t tok_bytes;
    int rc = dvl_fnv1a64_file(tok_path, &tok_hash, &tok_bytes, err);
    if (rc)
        return rc;
    /* The input first: a malformed file fails before the slow part. */
    double t0 = now();
    if ((rc = input_open(&in, o->json, err))) {
        input_free(&in);
        return rc;
    }
    dvl_tokenizer *own = NULL;
    b.tok = o->tok;
    if (!b.tok && !(b.tok = own = dvl_tokenizer_load(o->tokenizer, err))) {
        input_free(&in);
        return err->code;
    }
    if (!(b.chat = dvl_chat_new(b.tok, &o->chat, err))) {
        input_free(&in);
        dvl_tokenizer_free(own);
        return err->code;
    }
    b.in = &in;
    int64_t n_shards = (in.n + o->shard_size - 1) / o->shard_size;
    char settings[17];
    settings_fingerprint(&b, tok_hash, settings);
    if (o->log)
        fprintf(o->log, "%s: %lld records (%.1f s to index), %lld shards of %lld\n", o->json,
                (long long)in.n, now() - t0, (long long)n_shards, (long long)o->shard_size);
    pthread_t *th = NULL;
    int started = 0;
    open_shard sh = {0};
    if ((rc = mkdirs(o->out, err)))
        goto done;
    tidy(o->out, n_shards);
    /* The manifest marks a finished build; until this one finishes there
     * is none (an interrupted run must not leave a stale one behind). */
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", o->out);
    unlink(mpath);

    /* Which shards to (re)build. */
    b.todo = malloc(sizeof *b.todo * (size_t)(in.n + 1));
    if (!b.todo) {
        rc = dvl_errf(err, DVL_ENOMEM, "out of memory for %lld records", (long long)in.n);
        goto done;
    }
    int64_t kept = 0;
    for (int64_t k = 0; k < n_shards; k++) {
        int64_t first = k * o->shard_size;
        int64_t count = in.n - first < o->shard_size ? in.n - first : o->shard_size;
        if (shard_valid(o->out, k, settings, first, count)) {
            kept++;
            continue;
        }
        for (int64_t r = first; r < first + count; r++)
            b.todo[b.n_todo++] = r;
    }
    if (o->log && kept)
        fprintf(o->log, "keeping %lld shards from an earlier run, building %lld\n",
                (long long)kept, (long long)(n_shards - kept));

    b.n_slots = 4 * (int64_t)o->threads + 4;
    b.slots = calloc((size_t)b.n_slots, sizeof *b.slots);
    size_t px = (size_t)o->image_size * (size_t)o->image_size * 3;
    for (int64_t i = 0; b.slots && i < b.n_slots; i++)
        if (!(b.slots[i].pixels = malloc(px)))
            break;
    if (!b.slots || !b.slots[b.n_slots - 1].pixels) {
        rc = dvl_errf(err, DVL_ENOMEM, "out of memory for %lld image buffers",
                      (long long)b.n_slots);
        goto done;
    }
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.space, NULL);
    pthread_cond_init(&b.ready, NULL);
    th = calloc((size_t)o->threads, sizeof *th);
    if (!th) {
        rc = dvl_errf(err, DVL_ENOMEM, "out of memory");
        goto done_sync;
    }
    for (; started < o->threads && b.n_todo; started++)
        if (pthread_create(&th[started], NULL, worker, &b)) {
            rc = dvl_errf(err, DVL_EIO, "cannot start worker thread %d", started);
            break;
        }

    /* The writer: records in order, a shard opened at its first record
     * and finished after its last. */
    double ts = now();
    for (int64_t q = 0; q < b.n_todo && !rc; q++) {
        int64_t rec = b.todo[q], k = rec / o->shard_size;
        if (!sh.w && (rc = shard_begin(&b, &sh, k, err)))
            break;
        slot *s = &b.slots[q % b.n_slots];
        pthread_mutex_lock(&b.mu);
        while (!s->done && !b.fatal)
            pthread_cond_wait(&b.ready, &b.mu);
        if (b.fatal) {
            *err = b.fatal_err;
            rc = b.fatal;
        }
        pthread_mutex_unlock(&b.mu);
        if (rc)
            break;
        rc = shard_take(&b, &sh, rec, s, err);
        pthread_mutex_lock(&b.mu);
        s->done = false;
        b.written = q + 1;
        pthread_cond_broadcast(&b.space);
        pthread_mutex_unlock(&b.mu);
        if (!rc && rec == sh.first + sh.count - 1) {
            int64_t done_samples = sh.samples;
            rc = shard_end(&b, &sh, settings, err);
            if (!rc && st)
                st->shards_built++;
            if (!rc && o->log)
                fprintf(o->log, "shard %lld/%lld: %lld samples of %lld records (%.1f records/s)\n",
                        (long long)k + 1, (long long)n_shards, (long long)done_samples,
                        (long long)sh.count, (double)(q + 1) / (now() - ts));
        }
    }
    pthread_mutex_lock(&b.mu);
    b.stop = true;
    pthread_cond_broadcast(&b.space);
    pthread_mutex_unlock(&b.mu);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (sh.w) {
        dvl_shard_abort(sh.w);
        cJSON_Delete(sh.report);
    }
    if (!rc) {
        rc = write_outputs(&b, settings, tok_hash, tok_bytes, n_shards, st, err);
        if (st) {
            st->records = in.n;
            st->shards = n_shards;
            st->shards_kept = kept;
        }
    }
done_sync:
    pthread_cond_destroy(&b.ready);
    pthread_cond_destroy(&b.space);
    pthread_mutex_destroy(&b.mu);
done:
    free(th);
    for (int64_t i = 0; b.slots && i < b.n_slots; i++) {
        free(b.slots[i].pixels);
        free(b.slots[i].id);
        dvl_chat_out_free(&b.slots[i].chat);
    }
    free(b.slots);
    free(b.todo);
    input_free(&in);
    dvl_chat_free(b.chat);
    dvl_tokenizer_free(own);
    return rc;
}
