/* Typed run configuration over cJSON: the schema check, the strict walk of
 * the file, --set overrides, getters and the resolved dump. */
#include "core/config.h"
#include "core/file.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* Integers travel through JSON as doubles: beyond 2^53 they are not exact. */
#define INT_LIMIT 9007199254740992.0
#define INT_MAX_EXACT 9007199254740992LL

typedef struct slot {
    bool set;
    double f;
    int64_t i;
    bool b;
    char *s;         /* string and enum values */
    int e;           /* enum index */
    const char *src; /* "default", "--set" or the config's name */
} slot;

struct dvl_cfg {
    const dvl_cfg_key *keys;
    int n;
    slot *v;
    char *name; /* the file's name, or "defaults" */
    dvl_err misuse;
};

/* ------------------------------------------------------------ helpers */

static const char *type_name(dvl_cfg_type t)
{
    switch (t) {
    case DVL_CFG_FLOAT: return "float";
    case DVL_CFG_INT: return "int";
    case DVL_CFG_BOOL: return "bool";
    case DVL_CFG_STRING: return "string";
    case DVL_CFG_ENUM: return "enum";
    }
    return "?";
}

/* What the key expects, as in "expected a number". */
static const char *expected(dvl_cfg_type t)
{
    switch (t) {
    case DVL_CFG_FLOAT: return "a number";
    case DVL_CFG_INT: return "an integer";
    case DVL_CFG_BOOL: return "true or false";
    case DVL_CFG_STRING: return "a string";
    case DVL_CFG_ENUM: return "a string";
    }
    return "?";
}

static int find_key(const dvl_cfg_key *keys, int n, const char *path)
{
    for (int i = 0; i < n; i++)
        if (strcmp(keys[i].path, path) == 0)
            return i;
    return -1;
}

/* Whether some key lies below `path` (path is a section). */
static bool is_section(const dvl_cfg_key *keys, int n, const char *path, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strncmp(keys[i].path, path, len) == 0 && keys[i].path[len] == '.')
            return true;
    return false;
}

/* Index of `value` in the enum's "a|b|c", or -1. */
static int choice_index(const char *choices, const char *value)
{
    size_t n = strlen(value);
    int k = 0;
    for (const char *p = choices;; k++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0)
            return k;
        if (!bar)
            return -1;
        p = bar + 1;
    }
}

/* Levenshtein distance, for "did you mean". Paths are short. */
static int edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 128 || nb > 128)
        return 1 << 20;
    int row[129];
    for (size_t j = 0; j <= nb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int sub = diag + (a[i - 1] != b[j - 1]);
            int del = row[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            diag = up;
        }
    }
    return row[nb];
}

static const char *last_segment(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* " (did you mean optim.lr?)" for a near miss (a typo of at most two
 * edits, or the right name in the wrong section), else "". */
static void suggest(const dvl_cfg_key *keys, int n, const char *path, char *buf, size_t size)
{
    int best = -1, best_d = 3;
    for (int i = 0; i < n; i++) {
        int d = edit_distance(path, keys[i].path);
        if (d < best_d) {
            best_d = d;
            best = i;
        }
    }
    for (int i = 0; best < 0 && i < n; i++)
        if (strcmp(last_segment(keys[i].path), last_segment(path)) == 0)
            best = i;
    if (best >= 0)
        snprintf(buf, size, " (did you mean %s?)", keys[best].path);
    else
        buf[0] = '\0';
}

/* The shortest of %.15g..%.17g that reads back as exactly d (cJSON's own
 * printer accepts a 15-digit form that is only approximately equal). */
static void format_double(double d, char *buf, size_t size)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
}

/* A JSON value as it reads in messages: string "fast", number 3.5, ... */
static void describe_json(const cJSON *v, char *buf, size_t size)
{
    if (cJSON_IsString(v)) {
        size_t len = strlen(v->valuestring);
        snprintf(buf, size, "string \"%.60s%s\"", v->valuestring, len > 60 ? "..." : "");
    } else if (cJSON_IsNumber(v)) {
        char num[40];
        format_double(v->valuedouble, num, sizeof num);
        snprintf(buf, size, "number %s", num);
    } else if (cJSON_IsBool(v)) {
        snprintf(buf, size, "%s", cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNull(v)) {
        snprintf(buf, size, "null");
    } else if (cJSON_IsArray(v)) {
        snprintf(buf, size, "an array");
    } else {
        snprintf(buf, size, "an object");
    }
}

/* Store a string (copied) in the slot. */
static int set_string(slot *s, const char *text)
{
    char *copy = strdup(text);
    if (!copy)
        return -1;
    free(s->s);
    s->s = copy;
    return 0;
}

/* Range and choice checks shared by every source; why gets the reason. */
static int check_value(const dvl_cfg_key *k, const slot *s, char *why, size_t size)
{
    if (!k->ranged)
        return 0;
    double v = k->type == DVL_CFG_INT ? (double)s->i : s->f;
    if ((k->type == DVL_CFG_FLOAT || k->type == DVL_CFG_INT) && !(v >= k->min && v <= k->max)) {
        char a[40], lo[40], hi[40];
        format_double(v, a, sizeof a);
        format_double(k->min, lo, sizeof lo);
        format_double(k->max, hi, sizeof hi);
        snprintf(why, size, "%s is out of range [%s, %s]", a, lo, hi);
        return -1;
    }
    return 0;
}

/* Parse a value written as on a command line (a default or a --set). */
static int parse_text(const dvl_cfg_key *k, const char *text, slot *s, char *why, size_t size)
{
    char *end;
    switch (k->type) {
    case DVL_CFG_FLOAT: {
        errno = 0;
        double d = strtod(text, &end);
        if (end == text || *end != '\0' || !isfinite(d)) {
            snprintf(why, size, "expected a number, got \"%.60s\"", text);
            return -1;
        }
        s->f = d;
        break;
    }
    case DVL_CFG_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || errno == ERANGE || v > INT_MAX_EXACT ||
            v < -INT_MAX_EXACT) {
            snprintf(why, size, "expected an integer, got \"%.60s\"", text);
            return -1;
        }
        s->i = v;
        break;
    }
    case DVL_CFG_BOOL:
        if (strcmp(text, "true") == 0)
            s->b = true;
        else if (strcmp(text, "false") == 0)
            s->b = false;
        else {
            snprintf(why, size, "expected true or false, got \"%.60s\"", text);
            return -1;
        }
        break;
    case DVL_CFG_ENUM: {
        int e = choice_index(k->choices, text);
        if (e < 0) {
            snprintf(why, size, "\"%.60s\" is not one of %s", text, k->choices);
            return -1;
        }
        s->e = e;
        if (set_string(s, text)) {
            snprintf(why, size, "out of memory");
            return -1;
        }
        break;
    }
    case DVL_CFG_STRING:
        if (set_string(s, text)) {
            snprintf(why, size, "out of memory");
            return -1;
        }
        break;
    }
    s->set = true;
    return check_value(k, s, why, size);
}

/* Parse a value from the file. */
static int parse_json(const dvl_cfg_key *k, const cJSON *v, slot *s, char *why, size_t size)
{
    char got[96];
    describe_json(v, got, sizeof got);
    switch (k->type) {
    case DVL_CFG_FLOAT:
        if (!cJSON_IsNumber(v))
            goto wrong_type;
        s->f = v->valuedouble;
        break;
    case DVL_CFG_INT: {
        if (!cJSON_IsNumber(v))
            goto wrong_type;
        double d = v->valuedouble;
        if (d != floor(d) || fabs(d) > INT_LIMIT)
            goto wrong_type;
        s->i = (int64_t)d;
        break;
    }
    case DVL_CFG_BOOL:
        if (!cJSON_IsBool(v))
            goto wrong_type;
        s->b = cJSON_IsTrue(v);
        break;
    case DVL_CFG_STRING:
    case DVL_CFG_ENUM:
        /* null leaves an optional string (no default, not required) unset. */
        if (cJSON_IsNull(v) && k->type == DVL_CFG_STRING && !k->def && !k->required) {
            free(s->s);
            s->s = NULL;
            s->set = false;
            return 0;
        }
        if (!cJSON_IsString(v))
            goto wrong_type;
        return parse_text(k, v->valuestring, s, why, size);
    }
    s->set = true;
    return check_value(k, s, why, size);
wrong_type:
    snprintf(why, size, "expected %s, got %s", expected(k->type), got);
    return -1;
}

/* ------------------------------------------------------------- schema */

static bool valid_path(const char *p)
{
    if (!p || !*p)
        return false;
    bool seg_empty = true;
    for (; *p; p++) {
        if (*p == '.') {
            if (seg_empty)
                return false;
            seg_empty = true;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '_' || *p == '-') {
            seg_empty = false;
        } else {
            return false;
        }
    }
    return !seg_empty;
}

static int check_schema(const dvl_cfg_key *keys, int n, dvl_err *err)
{
    for (int i = 0; i < n; i++) {
        const dvl_cfg_key *k = &keys[i];
        if (!valid_path(k->path))
            return dvl_errf(err, DVL_EINVAL, "config schema: key %d: bad path \"%s\"", i,
                            k->path ? k->path : "(null)");
        if ((unsigned)k->type > DVL_CFG_ENUM)
            return dvl_errf(err, DVL_EINVAL, "config schema: %s: bad type %d", k->path, k->type);
        if (find_key(keys, i, k->path) >= 0)
            return dvl_errf(err, DVL_EINVAL, "config schema: %s: declared twice", k->path);
        if (is_section(keys, n, k->path, strlen(k->path)))
            return dvl_errf(err, DVL_EINVAL, "config schema: %s is both a key and a section",
                            k->path);
        if (k->type == DVL_CFG_ENUM) {
            if (!k->choices || !*k->choices || strstr(k->choices, "||") ||
                k->choices[strlen(k->choices) - 1] == '|' || k->choices[0] == '|')
                return dvl_errf(err, DVL_EINVAL, "config schema: %s: enum needs choices \"a|b|c\"",
                                k->path);
        }
        if (k->ranged && (k->type == DVL_CFG_FLOAT || k->type == DVL_CFG_INT) &&
            !(k->min <= k->max))
            return dvl_errf(err, DVL_EINVAL, "config schema: %s: empty range [%g, %g]", k->path,
                            k->min, k->max);
        if (k->required && k->def)
            return dvl_errf(err, DVL_EINVAL, "config schema: %s: required and has a default",
                            k->path);
        if (!k->required && !k->def && k->type != DVL_CFG_STRING)
            return dvl_errf(err, DVL_EINVAL,
                            "config schema: %s: needs a default or required = true (only strings "
                            "may be left unset)", k->path);
        if (k->def) {
            slot s = {0};
            char why[256];
            int bad = parse_text(k, k->def, &s, why, sizeof why);
            free(s.s);
            if (bad)
                return dvl_errf(err, DVL_EINVAL, "config schema: %s: default: %s", k->path, why);
        }
    }
    return DVL_OK;
}

/* ------------------------------------------------------------ loading */

/* Check every member of object `o` (at dotted `prefix`, "" at the top)
 * against the schema and store the leaves' values. */
static int walk(dvl_cfg *c, const cJSON *o, const char *prefix, dvl_err *err)
{
    for (const cJSON *it = o->child; it; it = it->next) {
        char path[512], why[320];
        int len = prefix[0] ? snprintf(path, sizeof path, "%s.%s", prefix, it->string)
                            : snprintf(path, sizeof path, "%s", it->string);
        if (len < 0 || (size_t)len >= sizeof path)
            return dvl_errf(err, DVL_EINVAL, "%s: %.200s...: key path too long", c->name, path);
        if (strchr(it->string, '.'))
            return dvl_errf(err, DVL_EINVAL,
                            "%s: \"%s\": a key may not contain '.'; nest objects instead", c->name,
                            path);
        for (const cJSON *prev = o->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0)
                return dvl_errf(err, DVL_EINVAL, "%s: %s: duplicate key", c->name, path);
        int k = find_key(c->keys, c->n, path);
        if (k >= 0) {
            if (parse_json(&c->keys[k], it, &c->v[k], why, sizeof why))
                return dvl_errf(err, DVL_EINVAL, "%s: %s: %s", c->name, path, why);
            c->v[k].src = c->name;
        } else if (is_section(c->keys, c->n, path, strlen(path))) {
            if (!cJSON_IsObject(it)) {
                char got[96];
                describe_json(it, got, sizeof got);
                return dvl_errf(err, DVL_EINVAL, "%s: %s: expected an object (a section), got %s",
                                c->name, path, got);
            }
            int rc = walk(c, it, path, err);
            if (rc)
                return rc;
        } else {
            char hint[160];
            suggest(c->keys, c->n, path, hint, sizeof hint);
            return dvl_errf(err, DVL_EINVAL, "%s: %s: unknown key%s", c->name, path, hint);
        }
    }
    return DVL_OK;
}

/* Byte offset -> "line L, column C" of the text, for JSON syntax errors. */
static void locate(const char *text, size_t at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int apply_set(dvl_cfg *c, const char *set, dvl_err *err)
{
    const char *eq = strchr(set, '=');
    if (!eq || eq == set)
        return dvl_errf(err, DVL_EINVAL, "--set %s: expected key=value", set);
    char path[512];
    size_t len = (size_t)(eq - set);
    if (len >= sizeof path)
        return dvl_errf(err, DVL_EINVAL, "--set %.200s...: key too long", set);
    memcpy(path, set, len);
    path[len] = '\0';
    int k = find_key(c->keys, c->n, path);
    if (k < 0) {
        if (is_section(c->keys, c->n, path, len))
            return dvl_errf(err, DVL_EINVAL, "--set %s: %s is a section, not a key", set, path);
        char hint[160];
        suggest(c->keys, c->n, path, hint, sizeof hint);
        return dvl_errf(err, DVL_EINVAL, "--set %s: unknown key%s", set, hint);
    }
    char why[320];
    if (parse_text(&c->keys[k], eq + 1, &c->v[k], why, sizeof why))
        return dvl_errf(err, DVL_EINVAL, "--set %s: %s", set, why);
    c->v[k].src = "--set";
    return DVL_OK;
}

dvl_cfg *dvl_cfg_parse(const dvl_cfg_key *keys, int n_keys, const char *json, const char *name,
                       const char *const *sets, int n_sets, dvl_err *err)
{
    if (n_keys < 0 || (n_keys > 0 && !keys)) {
        dvl_errf(err, DVL_EINVAL, "config schema: no keys");
        return NULL;
    }
    if (check_schema(keys, n_keys, err))
        return NULL;
    dvl_cfg *c = calloc(1, sizeof *c);
    if (!c || !(c->v = calloc((size_t)(n_keys ? n_keys : 1), sizeof *c->v)) ||
        !(c->name = strdup(name ? name : "defaults"))) {
        dvl_cfg_free(c);
        dvl_errf(err, DVL_ENOMEM, "config: out of memory");
        return NULL;
    }
    c->keys = keys;
    c->n = n_keys;
    for (int i = 0; i < n_keys; i++) {
        char why[320];
        if (keys[i].def && parse_text(&keys[i], keys[i].def, &c->v[i], why, sizeof why)) {
            dvl_errf(err, DVL_ENOMEM, "config: %s: default: %s", keys[i].path, why);
            goto fail;
        }
        c->v[i].src = "default";
    }
    if (json) {
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
        if (!root) {
            int line, col;
            locate(json, end ? (size_t)(end - json) : 0, &line, &col);
            dvl_errf(err, DVL_EINVAL, "%s:%d:%d: malformed JSON", c->name, line, col);
            goto fail;
        }
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            dvl_errf(err, DVL_EINVAL, "%s: the top level must be a JSON object", c->name);
            goto fail;
        }
        int rc = walk(c, root, "", err);
        cJSON_Delete(root);
        if (rc)
            goto fail;
    }
    for (int i = 0; i < n_sets; i++)
        if (apply_set(c, sets[i], err))
            goto fail;
    for (int i = 0; i < n_keys; i++)
        if (keys[i].required && !c->v[i].set) {
            dvl_errf(err, DVL_EINVAL, "%s: %s: required key missing (give it in the file or with --set %s=...)",
                     c->name, keys[i].path, keys[i].path);
            goto fail;
        }
    return c;
fail:
    dvl_cfg_free(c);
    return NULL;
}

dvl_cfg *dvl_cfg_load(const dvl_cfg_key *keys, int n_keys, const char *path,
                      const char *const *sets, int n_sets, dvl_err *err)
{
    if (!path)
        return dvl_cfg_parse(keys, n_keys, NULL, NULL, sets, n_sets, err);
    size_t n = 0;
    char *buf = dvl_read_file(path, &n, err);
    if (!buf)
        return NULL;
    if (strlen(buf) != n) {
        free(buf);
        dvl_errf(err, DVL_EINVAL, "%s: contains a NUL byte", path);
        return NULL;
    }
    dvl_cfg *c = dvl_cfg_parse(keys, n_keys, buf, path, sets, n_sets, err);
    free(buf);
    return c;
}

void dvl_cfg_free(dvl_cfg *c)
{
    if (!c)
        return;
    if (c->v)
        for (int i = 0; i < c->n; i++)
            free(c->v[i].s);
    free(c->v);
    free(c->name);
    free(c);
}

/* ------------------------------------------------------------ getters */

/* The slot of key with type t (STRING also accepts ENUM), or NULL after
 * recording the misuse. */
static slot *get(dvl_cfg *c, const char *key, dvl_cfg_type t, const char *getter)
{
    int k = find_key(c->keys, c->n, key);
    if (k < 0) {
        if (c->misuse.code == DVL_OK)
            dvl_errf(&c->misuse, DVL_EINVAL, "config: %s(%s): key not in the schema", getter, key);
        return NULL;
    }
    dvl_cfg_type kt = c->keys[k].type;
    if (kt != t && !(t == DVL_CFG_STRING && kt == DVL_CFG_ENUM)) {
        if (c->misuse.code == DVL_OK)
            dvl_errf(&c->misuse, DVL_EINVAL, "config: %s(%s): the key is of type %s", getter, key,
                     type_name(kt));
        return NULL;
    }
    return &c->v[k];
}

double dvl_cfg_float(dvl_cfg *c, const char *key)
{
    slot *s = get(c, key, DVL_CFG_FLOAT, "dvl_cfg_float");
    return s ? s->f : 0.0;
}

int64_t dvl_cfg_int(dvl_cfg *c, const char *key)
{
    slot *s = get(c, key, DVL_CFG_INT, "dvl_cfg_int");
    return s ? s->i : 0;
}

bool dvl_cfg_bool(dvl_cfg *c, const char *key)
{
    slot *s = get(c, key, DVL_CFG_BOOL, "dvl_cfg_bool");
    return s ? s->b : false;
}

const char *dvl_cfg_str(dvl_cfg *c, const char *key)
{
    slot *s = get(c, key, DVL_CFG_STRING, "dvl_cfg_str");
    return s && s->set ? s->s : NULL;
}

int dvl_cfg_enum(dvl_cfg *c, const char *key)
{
    slot *s = get(c, key, DVL_CFG_ENUM, "dvl_cfg_enum");
    return s ? s->e : -1;
}

bool dvl_cfg_is_set(dvl_cfg *c, const char *key)
{
    int k = find_key(c->keys, c->n, key);
    if (k < 0) {
        if (c->misuse.code == DVL_OK)
            dvl_errf(&c->misuse, DVL_EINVAL, "config: dvl_cfg_is_set(%s): key not in the schema",
                     key);
        return false;
    }
    return c->v[k].set;
}

const char *dvl_cfg_source(dvl_cfg *c, const char *key)
{
    int k = find_key(c->keys, c->n, key);
    return k >= 0 ? c->v[k].src : NULL;
}

int dvl_cfg_check(const dvl_cfg *c, dvl_err *err)
{
    if (c->misuse.code == DVL_OK)
        return DVL_OK;
    return dvl_errf(err, c->misuse.code, "%s", c->misuse.msg);
}

/* --------------------------------------------------------------- dump */

char *dvl_cfg_dump(const dvl_cfg *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    for (int i = 0; i < c->n; i++) {
        const dvl_cfg_key *k = &c->keys[i];
        const slot *s = &c->v[i];
        if (!s->set)
            continue;
        /* Walk/create the sections of the dotted path. */
        cJSON *o = root;
        const char *p = k->path;
        for (const char *dot; (dot = strchr(p, '.')); p = dot + 1) {
            char seg[256];
            size_t len = (size_t)(dot - p);
            if (len >= sizeof seg)
                goto oom;
            memcpy(seg, p, len);
            seg[len] = '\0';
            cJSON *sub = cJSON_GetObjectItemCaseSensitive(o, seg);
            if (!sub && !(sub = cJSON_AddObjectToObject(o, seg)))
                goto oom;
            o = sub;
        }
        cJSON *v = NULL;
        char num[40];
        switch (k->type) {
        case DVL_CFG_FLOAT:
            format_double(s->f, num, sizeof num);
            v = cJSON_CreateRaw(num);
            break;
        case DVL_CFG_INT:
            snprintf(num, sizeof num, "%lld", (long long)s->i);
            v = cJSON_CreateRaw(num);
            break;
        case DVL_CFG_BOOL: v = cJSON_CreateBool(s->b); break;
        case DVL_CFG_STRING:
        case DVL_CFG_ENUM: v = cJSON_CreateString(s->s); break;
        }
        if (!v)
            goto oom;
        cJSON_AddItemToObject(o, p, v);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
oom:
    cJSON_Delete(root);
    return NULL;
}

void dvl_cfg_print_help(const dvl_cfg_key *keys, int n_keys, FILE *f)
{
    for (int i = 0; i < n_keys; i++) {
        const dvl_cfg_key *k = &keys[i];
        fprintf(f, "  %-32s %-6s", k->path, type_name(k->type));
        if (k->required)
            fprintf(f, " required");
        else if (k->def)
            fprintf(f, " = %s", k->def);
        if (k->type == DVL_CFG_ENUM)
            fprintf(f, " {%s}", k->choices);
        if (k->ranged && (k->type == DVL_CFG_FLOAT || k->type == DVL_CFG_INT))
            fprintf(f, " in [%g, %g]", k->min, k->max);
        if (k->help)
            fprintf(f, "  %s", k->help);
        fputc('\n', f);
    }
}
