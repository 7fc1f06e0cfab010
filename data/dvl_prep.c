/* dvl-prep: data preparation, one subcommand each (dvl-prep COMMAND ...).
 *
 *   tokenize --tokenizer DIR   JSON lines {"text": ...} on stdin ->
 *                              {"text": ..., "ids": [...]} lines on stdout
 *   synth --out DIR --n N      the synthetic shapes dataset (data/synth.h)
 *
 * Errors go to stderr as one line naming the input line at fault, and the
 * exit status is non-zero (1 for bad data, 2 for bad usage). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "synth.h"
#include "text/tokenizer.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

/* ---- tokenize ---- */

static int tokenize_usage(FILE *f)
{
    fprintf(f, "usage: dvl-prep tokenize --tokenizer DIR < in.jsonl > out.jsonl\n"
               "  Reads one JSON object a line with a string field \"text\"; writes\n"
               "  {\"text\": ..., \"ids\": [...]} a line: the ids of the text (no BOS/EOS\n"
               "  added; special tokens written in the text become their ids). Blank\n"
               "  lines are skipped. DIR holds tokenizer.json (Hugging Face format).\n"
               "  A malformed line, a text that is not valid UTF-8 or contains \\u0000\n"
               "  stops the run with one error line naming the line number (exit 1).\n");
    return f == stderr ? 2 : 0;
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
            return tokenize_usage(stdout);
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strncmp(argv[i], "--tokenizer=", 12)) {
            dir = argv[i] + 12;
        } else {
            fprintf(stderr, "dvl-prep tokenize: unknown argument '%s'\n", argv[i]);
            return tokenize_usage(stderr);
        }
    }
    if (!dir) {
        fprintf(stderr, "dvl-prep tokenize: --tokenizer DIR is required\n");
        return tokenize_usage(stderr);
    }
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

/* ---- dispatch ---- */

static const command commands[] = {
    {"tokenize", cmd_tokenize, "JSON lines {\"text\"} on stdin -> {\"text\", \"ids\"} on stdout"},
    {"synth", prep_synth, "draw the synthetic shapes dataset (images, conversations, tokenizer)"},
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
    fprintf(stderr, "dvl-prep: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
