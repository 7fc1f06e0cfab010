/* dvl-bench tokenizer [--tokenizer DIR] [--mb N]: single-threaded encoding
 * speed on an English + code text of N MB (default 8): the reference
 * file's texts (many scripts, emoji, chat markup) followed by generated
 * English-like prose and C-like code, so the word cache sees both repeats
 * and a long tail of identifiers and numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include "bench.h"
#include "core/rng.h"
#include "text/tokenizer.h"

typedef struct text {
    char *p;
    size_t n, cap;
} text;

static void put(text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->n + n + 1 > t->cap) {
        t->cap = 2 * (t->n + n + 1);
        t->p = realloc(t->p, t->cap);
        if (!t->p) {
            fprintf(stderr, "dvl-bench tokenizer: out of memory\n");
            exit(1);
        }
    }
    memcpy(t->p + t->n, s, n + 1);
    t->n += n;
}

static const char *words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "model", "training",
    "diffusion", "image", "language", "token", "sequence", "attention", "gradient", "layer",
    "network", "parameter", "distribution", "sample", "noise", "schedule", "license", "software",
    "program", "library", "function", "memory", "performance", "results", "between", "during",
    "without", "against", "however", "therefore", "although", "university", "government",
    "history", "important", "different", "following", "information", "development", "system",
    "example", "experiment", "evaluation", "benchmark", "throughput", "accuracy", "Lorem",
    "Meanwhile", "Paris", "Einstein", "Python", "GitHub", "October", "Tuesday", "CUDA", "GPU"};
#define NWORDS (sizeof words / sizeof *words)

static const char *pick(dvl_rng *r)
{
    return words[dvl_rng_u64(r) % NWORDS];
}

static void prose(text *t, dvl_rng *r)
{
    char buf[64];
    int sentences = 3 + (int)(dvl_rng_u64(r) % 5);
    for (int s = 0; s < sentences; s++) {
        int n = 6 + (int)(dvl_rng_u64(r) % 18);
        for (int w = 0; w < n; w++) {
            const char *word = pick(r);
            uint64_t x = dvl_rng_u64(r) % 100;
            if (w == 0) {
                snprintf(buf, sizeof buf, "%c%s", word[0] >= 'a' ? word[0] - 32 : word[0], word + 1);
            } else if (x < 4) {
                snprintf(buf, sizeof buf, " %llu", (unsigned long long)(dvl_rng_u64(r) % 100000));
            } else if (x < 8) {
                snprintf(buf, sizeof buf, " (%s)", word);
            } else if (x < 14) {
                snprintf(buf, sizeof buf, " %s,", word);
            } else if (x < 16) {
                snprintf(buf, sizeof buf, " \"%s\"", word);
            } else {
                snprintf(buf, sizeof buf, " %s", word);
            }
            put(t, buf);
        }
        put(t, dvl_rng_u64(r) % 6 ? ". " : "? ");
    }
    put(t, "\n\n");
}

static void code(text *t, dvl_rng *r)
{
    char buf[256];
    const char *types[] = {"int", "float", "size_t", "int64_t", "const char *", "double"};
    snprintf(buf, sizeof buf, "static %s %s_%s(%s *%s, int64_t n)\n{\n", types[dvl_rng_u64(r) % 6],
             pick(r), pick(r), types[dvl_rng_u64(r) % 6], pick(r));
    put(t, buf);
    int lines = 3 + (int)(dvl_rng_u64(r) % 10);
    for (int l = 0; l < lines; l++) {
        const char *a = pick(r), *b = pick(r);
        switch (dvl_rng_u64(r) % 6) {
        case 0:
            snprintf(buf, sizeof buf, "    for (int64_t i = 0; i < n; i++)\n        %s[i] += %s_%s[i] * %.3f;\n",
                     a, b, pick(r), dvl_rng_uniform_f64(r));
            break;
        case 1:
            snprintf(buf, sizeof buf, "    /* %s %s %s: see eq. (%d). */\n", a, pick(r), b,
                     (int)(dvl_rng_u64(r) % 40));
            break;
        case 2:
            snprintf(buf, sizeof buf, "    if (!%s_%s)\n        return dvl_fail(ctx, \"%s: %%s\", %s);\n",
                     a, b, a, b);
            break;
        case 3:
            snprintf(buf, sizeof buf, "    %s->%s = (%s + %s) >> %d;\n", a, b, pick(r), pick(r),
                     (int)(dvl_rng_u64(r) % 8));
            break;
        case 4:
            snprintf(buf, sizeof buf, "    float %s_%s = %s[%d] - 0x%llx;\n", a, b, pick(r),
                     (int)(dvl_rng_u64(r) % 1024), (unsigned long long)(dvl_rng_u64(r) % 65536));
            break;
        default:
            snprintf(buf, sizeof buf, "\tprintf(\"%s=%%d %s\\n\", %s);\n", a, b, pick(r));
            break;
        }
        put(t, buf);
    }
    put(t, "    return 0;\n}\n\n");
}

static void reference_texts(text *t, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/reference_encodings.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "text");
        if (cJSON_IsString(s)) {
            put(t, s->valuestring);
            put(t, "\n");
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
}

int bench_tokenizer(int argc, char **argv)
{
    char def[4096];
    const char *env = getenv("DVL_TEST_DATA");
    snprintf(def, sizeof def, "%s/qwen-tokenizer", env ? env : "tests/data");
    static const bench_opt opts[] = {{"--tokenizer", 's'}, {"--mb", 'f'}, {NULL, 0}};
    bench_args args;
    int exit_code;
    if (!bench_args_parse("tokenizer", "usage: dvl-bench tokenizer [--tokenizer DIR] [--mb N]\n",
                          argc, argv, opts, &args, &exit_code))
        return exit_code;
    const char *dir = bench_str(&args, "--tokenizer", def);
    double mb = bench_num(&args, "--mb", 8);
    if (!(mb > 0)) {
        fprintf(stderr, "dvl-bench tokenizer: --mb must be positive\n");
        return 2;
    }
    dvl_err err = {0};
    double t0 = bench_now();
    dvl_tokenizer *tok = dvl_tokenizer_load(dir, &err);
    if (!tok) {
        fprintf(stderr, "dvl-bench tokenizer: %s\n", err.msg);
        return 1;
    }
    double t_load = bench_now() - t0;

    text t = {0};
    reference_texts(&t, dir);
    dvl_rng r;
    dvl_rng_seed(&r, 1234);
    while ((double)t.n < mb * 1e6) {
        if (dvl_rng_u64(&r) % 5 < 3)
            prose(&t, &r);
        else
            code(&t, &r);
    }
    printf("tokenizer %s: %lld ids, loaded in %.3f s\n", dir,
           (long long)dvl_tokenizer_vocab_size(tok), t_load);
    printf("text: %.2f MB (reference texts + generated English-like prose and C-like code)\n",
           (double)t.n / 1e6);

    /* One call on the whole text: includes making the state and filling
     * the word cache from empty. */
    int32_t *ids;
    int64_t n;
    t0 = bench_now();
    if (dvl_tokenizer_encode(tok, t.p, t.n, &ids, &n, &err)) {
        fprintf(stderr, "dvl-bench tokenizer: %s\n", err.msg);
        return 1;
    }
    double t_cold = bench_now() - t0;

    /* The same with a state whose cache is already warm. */
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(tok, &err);
    dvl_ids out = {0};
    dvl_tokenizer_encode_into(tok, st, t.p, t.n, &out, &err);
    out.n = 0;
    t0 = bench_now();
    dvl_tokenizer_encode_into(tok, st, t.p, t.n, &out, &err);
    double t_warm = bench_now() - t0;
    int same = out.n == n && !memcmp(out.v, ids, sizeof *ids * (size_t)n);

    /* About 1 KiB documents cut at line ends, one call each on a reused
     * state: how dvl-prep tokenize runs. */
    dvl_tokenizer_state_free(st);
    st = dvl_tokenizer_state_new(tok, &err);
    out.n = 0;
    int64_t docs = 0;
    t0 = bench_now();
    for (size_t a = 0; a < t.n;) {
        size_t b = a + 1024 < t.n ? a + 1024 : t.n;
        while (b < t.n && t.p[b - 1] != '\n')
            b++;
        dvl_tokenizer_encode_into(tok, st, t.p + a, b - a, &out, &err);
        docs++;
        a = b;
    }
    double t_docs = bench_now() - t0;

    t0 = bench_now();
    char *back = dvl_tokenizer_decode(tok, ids, n);
    double t_dec = bench_now() - t0;
    char *nfc = (char *)utf8proc_NFC((const utf8proc_uint8_t *)t.p);
    int round_trip = back && nfc && !strcmp(back, nfc);

    double MB = (double)t.n / 1e6;
    printf("ids: %lld (%.2f bytes/id); same ids with a warm cache: %s; decode round trip: %s\n",
           (long long)n, (double)t.n / (double)n, same ? "yes" : "NO", round_trip ? "yes" : "NO");
    printf("encode, one call, cold cache      : %7.2f MB/s (%.3f s)\n", MB / t_cold, t_cold);
    printf("encode, one call, warm cache      : %7.2f MB/s (%.3f s)\n", MB / t_warm, t_warm);
    printf("encode, %lld docs of ~1 KiB, reused state: %7.2f MB/s (%.3f s)\n", (long long)docs,
           MB / t_docs, t_docs);
    printf("decode                            : %7.2f MB/s (%.3f s)\n", MB / t_dec, t_dec);
    free(back);
    free(nfc);
    free(ids);
    dvl_ids_free(&out);
    dvl_tokenizer_state_free(st);
    dvl_tokenizer_free(tok);
    free(t.p);
    return same && round_trip ? 0 : 1;
}
