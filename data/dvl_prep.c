/* dvl-prep: data preparation, one subcommand each (dvl-prep COMMAND ...).
 *
 *   tokenize --tokenizer DIR   JSON lines {"text": ...} on stdin ->
 *                              {"text": ..., "ids": [...]} lines on stdout
 *   synth --out DIR --n N      the synthetic shapes dataset (data/synth.h)
 *   build --json F --out DIR   LLaVA conversations + images -> HDF5 shards
 *                              (src/io/dataset.h)
 *
 * Errors go to stderr as one line naming the input line at fault, and the
 * exit status is non-zero (1 for bad data, 2 for bad usage). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/dataset.h"
#include "synth.h"
#include "text/tokenizer.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

/* Bad usage: one line naming the command, exit status 2 (the usage itself
 * only on --help, as for the other programs). */
static int usage_error(const char *cmd, const char *fmt, const char *a)
{
    fprintf(stderr, "dvl-prep %s: ", cmd);
    fprintf(stderr, fmt, a);
    fprintf(stderr, " (dvl-prep %s --help lists the options)\n", cmd);
    return 2;
}

/* ---- tokenize ---- */

static int tokenize_usage(void)
{
    printf("usage: dvl-prep tokenize --tokenizer DIR < in.jsonl > out.jsonl\n"
           "  Reads one JSON object a line with a string field \"text\"; writes\n"
           "  {\"text\": ..., \"ids\": [...]} a line: the ids of the text (no BOS/EOS\n"
           "  added; special tokens written in the text become their ids). Blank\n"
           "  lines are skipped. DIR holds tokenizer.json (Hugging Face format).\n"
           "  A malformed line, a text that is not valid UTF-8 or contains \\u0000\n"
           "  stops the run with one error line naming the line number (exit 1).\n");
    return 0;
}

/* A growable output line. */
typedef struct outbuf {
    char *p;
    size_t n, cap;
} outbuf;

static int out_reserve(outbuf *b, size_t extra)
{
    if (b->cap - b->n >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->n < extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int out_append(outbuf *b, const char *s, size_t n)
{
    if (out_reserve(b, n))
        return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* Append s as a JSON string literal: quote, backslash and control
 * characters escaped, everything else (UTF-8 included) as is. */
static int out_json_string(outbuf *b, const char *s)
{
    if (out_reserve(b, 6 * strlen(s) + 2))
        return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    return 0;
}

static int out_ids(outbuf *b, const int32_t *ids, int64_t n)
{
    if (out_reserve(b, 12 * (size_t)n + 2))
        return -1;
    char *o = b->p + b->n;
    *o++ = '[';
    for (int64_t i = 0; i < n; i++) {
        if (i)
            *o++ = ',';
        char tmp[12];
        int k = 0;
        uint32_t v = (uint32_t)ids[i]; /* ids are >= 0 */
        do {
            tmp[k++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (k)
            *o++ = tmp[--k];
    }
    *o++ = ']';
    b->n = (size_t)(o - b->p);
    return 0;
}

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

/* cJSON stops a string at an escaped NUL, which would silently cut the
 * text; such lines are refused. True when the raw line has \u0000 (with
 * an unescaped backslash). */
static bool has_escaped_nul(const char *line)
{
    for (const char *p = strstr(line, "\\u0000"); p; p = strstr(p + 1, "\\u0000")) {
        size_t slashes = 0;
        while (p - slashes > line && p[-(ptrdiff_t)slashes - 1] == '\\')
            slashes++;
        if (slashes % 2 == 0)
            return true;
    }
    return false;
}

static int cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return tokenize_usage();
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strncmp(argv[i], "--tokenizer=", 12)) {
            dir = argv[i] + 12;
        } else if (!strcmp(argv[i], "--tokenizer")) {
            return usage_error("tokenize", "%s needs a value", argv[i]);
        } else {
            return usage_error("tokenize", "unknown option %s", argv[i]);
        }
    }
    if (!dir)
        return usage_error("tokenize", "%s is required", "--tokenizer DIR");
    dvl_err err = {0};
    dvl_tokenizer *tok = dvl_tokenizer_load(dir, &err);
    if (!tok) {
        fprintf(stderr, "dvl-prep tokenize: %s\n", err.msg);
        return 1;
    }
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(tok, &err);
    if (!st) {
        fprintf(stderr, "dvl-prep tokenize: %s\n", err.msg);
        dvl_tokenizer_free(tok);
        return 1;
    }
    static char obuf[1 << 20];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int status = 0;
    dvl_ids ids = {0};
    outbuf out = {0};
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (blank(line))
            continue;
        const char *end = NULL;
        cJSON *o = cJSON_ParseWithLengthOpts(line, (size_t)len, &end, 0);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
        const char *why = NULL;
        if (!o)
            why = "malformed JSON";
        else if (!cJSON_IsObject(o))
            why = "not a JSON object";
        else if (!cJSON_IsString(text))
            why = "no string field \"text\"";
        else if (has_escaped_nul(line))
            why = "\"text\" contains \\u0000, which is not supported";
        if (why) {
            fprintf(stderr, "dvl-prep tokenize: line %ld: %s\n", lineno, why);
            cJSON_Delete(o);
            status = 1;
            break;
        }
        ids.n = 0;
        out.n = 0;
        if (dvl_tokenizer_encode_into(tok, st, text->valuestring, strlen(text->valuestring), &ids,
                                      &err)) {
            fprintf(stderr, "dvl-prep tokenize: line %ld: %s\n", lineno, err.msg);
            cJSON_Delete(o);
            status = 1;
            break;
        }
        int bad = out_append(&out, "{\"text\":", 8) || out_json_string(&out, text->valuestring) ||
                  out_append(&out, ",\"ids\":", 7) || out_ids(&out, ids.v, ids.n) ||
                  out_append(&out, "}\n", 2);
        cJSON_Delete(o);
        if (bad) {
            fprintf(stderr, "dvl-prep tokenize: line %ld: out of memory\n", lineno);
            status = 1;
            break;
        }
        if (fwrite(out.p, 1, out.n, stdout) != out.n) {
            fprintf(stderr, "dvl-prep tokenize: write error on stdout at line %ld\n", lineno);
            status = 1;
            break;
        }
    }
    if (fflush(stdout) && !status) {
        fprintf(stderr, "dvl-prep tokenize: write error on stdout\n");
        status = 1;
    }
    free(line);
    free(out.p);
    dvl_ids_free(&ids);
    dvl_tokenizer_state_free(st);
    dvl_tokenizer_free(tok);
    return status;
}

/* ---- build ---- */

static int build_usage(void)
{
    printf("usage: dvl-prep build --json data.json|data.jsonl --images DIR --tokenizer DIR\n"
           "                      --out DIR [options]\n"
           "  Tokenizes LLaVA-format conversations with a chat template, pads and\n"
           "  resizes their images, and writes HDF5 shards, DIR/manifest.json and\n"
           "  DIR/report.jsonl (the records skipped or truncated, and why). A rerun\n"
           "  keeps the shards that are complete and checksum-correct and builds the\n"
           "  rest. Layout and fields: src/io/dataset.h.\n"
           "options:\n"
           "  --shard-size N         input records per shard (default 1000)\n"
           "  --max-len L            longest sequence in positions, an image counting\n"
           "                         --image-tokens (default 0: no limit)\n"
           "  --overflow truncate|skip  over --max-len: drop trailing turns (default)\n"
           "                         or skip the record\n"
           "  --image-size S         stored image side (default 384)\n"
           "  --image-tokens N       positions one image takes in the model (default 729)\n"
           "  --image-token-id ID    id of the image slot (default: the tokenizer's\n"
           "                         <image>, else its vocabulary size)\n"
           "  --template qwen|llada  chat template (default qwen)\n"
           "  --system TEXT          system message when a conversation has none\n"
           "                         (default: qwen: Qwen2.5's; llada: none)\n"
           "  --no-system            no system message\n"
           "  --labels assistant|reference  assistant answers only (default), or\n"
           "                         LLaVA-NeXT's exact masking\n"
           "  --deflate N            image compression level 0-9 (default 1)\n"
           "  --threads T            worker threads (default: all CPUs; the output\n"
           "                         does not depend on it)\n"
           "  --quiet                no progress lines on stderr\n"
           "Exit status: 0 built (records may have been skipped: see the report),\n"
           "1 unreadable or malformed input or an I/O error (one line on stderr), 2 usage.\n");
    return 0;
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end || x < lo || x > hi)
        return false;
    *v = x;
    return true;
}

static int cmd_build(int argc, char **argv)
{
    dvl_build_opts o;
    dvl_build_opts_default(&o);
    o.log = stderr;
    const char *images = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t x = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return build_usage();
        if (!strcmp(a, "--quiet")) {
            o.log = NULL;
            continue;
        }
        if (!strcmp(a, "--no-system")) {
            o.chat.system = "";
            continue;
        }
        /* The options that take a value (the others are flags, above). */
        static const char *const with_value[] = {
            "--json",         "--images",         "--tokenizer",  "--out",
            "--system",       "--shard-size",     "--max-len",    "--image-tokens",
            "--image-token-id", "--image-size",   "--deflate",    "--threads",
            "--template",     "--overflow",       "--labels"};
        size_t k = 0, n_with = sizeof with_value / sizeof *with_value;
        while (k < n_with && strcmp(a, with_value[k]))
            k++;
        if (k == n_with)
            return usage_error("build", "unknown option %s", a);
        if (!v)
            return usage_error("build", "%s needs a value", a);
        i++;
        bool ok = true;
        if (!strcmp(a, "--json"))
            o.json = v;
        else if (!strcmp(a, "--images"))
            images = v;
        else if (!strcmp(a, "--tokenizer"))
            o.tokenizer = v;
        else if (!strcmp(a, "--out"))
            o.out = v;
        else if (!strcmp(a, "--system"))
            o.chat.system = v;
        else if (!strcmp(a, "--shard-size"))
            ok = parse_i64(v, 1, INT64_C(1) << 40, &o.shard_size);
        else if (!strcmp(a, "--max-len"))
            ok = parse_i64(v, 0, INT64_C(1) << 40, &o.chat.max_len);
        else if (!strcmp(a, "--image-tokens"))
            ok = parse_i64(v, 1, INT32_MAX, &o.chat.image_tokens);
        else if (!strcmp(a, "--image-token-id"))
            o.chat.image_token_id = (ok = parse_i64(v, 0, INT32_MAX, &x)) ? (int32_t)x : 0;
        else if (!strcmp(a, "--image-size"))
            o.image_size = (ok = parse_i64(v, 1, 16384, &x)) ? (int)x : 0;
        else if (!strcmp(a, "--deflate"))
            o.deflate = (ok = parse_i64(v, 0, 9, &x)) ? (int)x : 0;
        else if (!strcmp(a, "--threads"))
            o.threads = (ok = parse_i64(v, 1, 1024, &x)) ? (int)x : 0;
        else if (!strcmp(a, "--template")) {
            ok = !strcmp(v, "qwen") || !strcmp(v, "llada");
            o.chat.tmpl = !strcmp(v, "llada") ? DVL_CHAT_LLADA : DVL_CHAT_QWEN;
        } else if (!strcmp(a, "--overflow")) {
            ok = !strcmp(v, "truncate") || !strcmp(v, "skip");
            o.chat.overflow = !strcmp(v, "skip") ? DVL_OVERFLOW_SKIP : DVL_OVERFLOW_TRUNCATE;
        } else if (!strcmp(a, "--labels")) {
            ok = !strcmp(v, "assistant") || !strcmp(v, "reference");
            o.chat.labels = !strcmp(v, "reference") ? DVL_LABELS_REFERENCE : DVL_LABELS_ASSISTANT;
        }
        if (!ok) {
            char what[200];
            snprintf(what, sizeof what, "bad value '%.80s' for %s", v, a);
            return usage_error("build", "%s", what);
        }
    }
    if (!o.json || !o.tokenizer || !o.out || !images)
        return usage_error("build", "%s", "--json, --images, --tokenizer and --out are required");
    o.images = images;
    dvl_build_stats st;
    dvl_err err = {0};
    if (dvl_dataset_build(&o, &st, &err)) {
        fprintf(stderr, "dvl-prep build: %s\n", err.msg);
        return 1;
    }
    printf("%s: %lld samples (%lld images, %lld tokens) from %lld records in %lld shards "
           "(%lld built, %lld kept); skipped %lld (malformed %lld, missing image %lld, bad image "
           "%lld, too long %lld), truncated %lld; see %s/report.jsonl\n",
           o.out, (long long)st.samples, (long long)st.images, (long long)st.tokens,
           (long long)st.records, (long long)st.shards, (long long)st.shards_built,
           (long long)st.shards_kept, (long long)st.skipped, (long long)st.malformed,
           (long long)st.missing_image, (long long)st.bad_image, (long long)st.too_long,
           (long long)st.truncated, o.out);
    return 0;
}

/* ---- dispatch ---- */

static const command commands[] = {
    {"tokenize", cmd_tokenize, "JSON lines {\"text\"} on stdin -> {\"text\", \"ids\"} on stdout"},
    {"synth", prep_synth, "draw the synthetic shapes dataset (images, conversations, tokenizer)"},
    {"build", cmd_build, "LLaVA conversations + images -> HDF5 shards for training"},
    {NULL, NULL, NULL}};

static int usage(FILE *f)
{
    fprintf(f, "usage: dvl-prep COMMAND [options]   (dvl-prep COMMAND --help for its options)\n"
               "commands:\n");
    for (const command *c = commands; c->name; c++)
        fprintf(f, "  %-10s %s\n", c->name, c->what);
    return f == stderr ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
        return usage(stdout);
    for (const command *c = commands; c->name; c++)
        if (!strcmp(argv[1], c->name))
            return c->run(argc - 1, argv + 1);
    fprintf(stderr, "dvl-prep: unknown command '%s' (tokenize, synth, build; dvl-prep --help)\n",
            argv[1]);
    return 2;
}
