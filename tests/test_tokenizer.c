/* The byte-level BPE tokenizer: every line of the Qwen reference encodings
 * (ids produced by an independent implementation of the Hugging Face
 * pipeline), round trips, added/special tokens, invalid UTF-8, load errors,
 * and the fine points of BPE and pre-tokenization on a small synthetic
 * tokenizer.json written by the test. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include "text/tokenizer.h"
#include "util.h"

static dvl_tokenizer *qwen; /* loaded once per suite (unchecked fixture) */

static void load_qwen(void)
{
    char dir[4096];
    dvl_err err = {0};
    qwen = dvl_tokenizer_load(tu_data_path("qwen-tokenizer", dir, sizeof dir), &err);
    if (!qwen)
        fprintf(stderr, "test_tokenizer: %s\n", err.msg);
}

static void free_qwen(void)
{
    dvl_tokenizer_free(qwen);
    qwen = NULL;
}

/* ---- the reference file ---- */

typedef struct ref_line {
    char *text;
    int32_t *ids;
    int64_t n;
} ref_line;

static ref_line *read_refs(int *count)
{
    char path[4096];
    tu_data_path("qwen-tokenizer/reference_encodings.jsonl", path, sizeof path);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f, "cannot open %s", path);
    ref_line *refs = NULL;
    int n = 0;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o, "%s line %d: bad JSON", path, n + 1);
        cJSON *text = cJSON_GetObjectItem(o, "text"), *ids = cJSON_GetObjectItem(o, "ids");
        ck_assert(cJSON_IsString(text) && cJSON_IsArray(ids));
        refs = realloc(refs, sizeof *refs * (size_t)(n + 1));
        ref_line *r = &refs[n++];
        r->text = strdup(text->valuestring);
        r->n = cJSON_GetArraySize(ids);
        r->ids = malloc(sizeof *r->ids * (size_t)(r->n + 1));
        for (int64_t i = 0; i < r->n; i++)
            r->ids[i] = (int32_t)cJSON_GetArrayItem(ids, (int)i)->valueint;
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    *count = n;
    return refs;
}

static void free_refs(ref_line *refs, int n)
{
    for (int i = 0; i < n; i++) {
        free(refs[i].text);
        free(refs[i].ids);
    }
    free(refs);
}

/* First index where two id lists differ (or the shorter length). */
static int64_t first_diff(const int32_t *a, int64_t na, const int32_t *b, int64_t nb)
{
    int64_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    return i;
}

START_TEST(reference_encodings_exact)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    int n;
    ref_line *refs = read_refs(&n);
    ck_assert_int_ge(n, 90);
    int nfc_changed = 0;
    for (int i = 0; i < n; i++) {
        ref_line *r = &refs[i];
        int32_t *ids;
        int64_t m;
        dvl_err err = {0};
        int rc = dvl_tokenizer_encode(qwen, r->text, strlen(r->text), &ids, &m, &err);
        ck_assert_msg(rc == DVL_OK, "line %d: %s", i + 1, err.msg);
        int64_t d = first_diff(ids, m, r->ids, r->n);
        ck_assert_msg(m == r->n && d == m,
                      "line %d: %lld ids, reference %lld; first difference at %lld (%d vs %d)",
                      i + 1, (long long)m, (long long)r->n, (long long)d, d < m ? ids[d] : -1,
                      d < r->n ? r->ids[d] : -1);
        /* decode(encode(text)) is the text, or its NFC form where the
         * normalizer changed it (utf8proc's own NFC as the reference). */
        char *nfc = (char *)utf8proc_NFC((const utf8proc_uint8_t *)r->text);
        ck_assert_ptr_nonnull(nfc);
        nfc_changed += strcmp(nfc, r->text) != 0;
        char *back = dvl_tokenizer_decode(qwen, ids, m);
        ck_assert_ptr_nonnull(back);
        ck_assert_msg(!strcmp(back, nfc), "line %d: decode(encode(text)) differs from NFC(text)",
                      i + 1);
        free(back);
        free(nfc);
        free(ids);
    }
    /* The file has at least one text NFC changes, so that path ran. */
    ck_assert_int_ge(nfc_changed, 1);
    free_refs(refs, n);
}
END_TEST

START_TEST(qwen_vocab_and_special_ids)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    ck_assert_int_eq(dvl_tokenizer_vocab_size(qwen), 151669);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "<|endoftext|>"), 151643);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "<|im_start|>"), 151644);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "<|im_end|>"), 151645);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "<|vision_start|>"), 151652);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "<|image_pad|>"), 151655);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "Ċ"), 198); /* "\n" in byte-level form */
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "Ġthe"), 279);
    ck_assert_int_eq(dvl_tokenizer_token_id(qwen, "no such token, surely"), -1);
    ck_assert_int_eq(dvl_tokenizer_eos_id(qwen), 151645);
    ck_assert_int_eq(dvl_tokenizer_pad_id(qwen), 151643);
    ck_assert_int_eq(dvl_tokenizer_bos_id(qwen), -1);
    ck_assert(dvl_tokenizer_is_special(qwen, 151644));
    ck_assert(!dvl_tokenizer_is_special(qwen, 151657)); /* <tool_call> is added, not special */
    ck_assert(!dvl_tokenizer_is_special(qwen, 279));
    size_t len;
    const char *b = dvl_tokenizer_token_bytes(qwen, 279, &len);
    ck_assert(b && len == 4 && !memcmp(b, " the", 4));
    ck_assert_ptr_null(dvl_tokenizer_token_bytes(qwen, -1, &len));
    ck_assert_ptr_null(dvl_tokenizer_token_bytes(qwen, 151669, &len));
}
END_TEST

static void encode_ok(const dvl_tokenizer *tok, const char *text, int32_t **ids, int64_t *n)
{
    dvl_err err = {0};
    int rc = dvl_tokenizer_encode(tok, text, strlen(text), ids, n, &err);
    ck_assert_msg(rc == DVL_OK, "encode \"%s\": %s", text, err.msg);
}

START_TEST(special_tokens_whole)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    const char *text = "<|im_start|>user\nhi<|im_end|>";
    int32_t *ids;
    int64_t n;
    encode_ok(qwen, text, &ids, &n);
    int32_t want[] = {151644, dvl_tokenizer_token_id(qwen, "user"), 198,
                      dvl_tokenizer_token_id(qwen, "hi"), 151645};
    ck_assert_int_eq(n, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(ids[i], want[i]);
    char *back = dvl_tokenizer_decode(qwen, ids, n);
    ck_assert_str_eq(back, text);
    free(back);
    free(ids);
    /* A broken marker is ordinary text; adjacent markers stay whole. */
    encode_ok(qwen, "<|im_start|<|im_end|><|im_end|>", &ids, &n);
    ck_assert_int_gt(n, 3);
    for (int64_t i = 0; i < n - 2; i++)
        ck_assert_int_lt(ids[i], 151643);
    ck_assert_int_eq(ids[n - 2], 151645);
    ck_assert_int_eq(ids[n - 1], 151645);
    free(ids);
}
END_TEST

START_TEST(empty_string)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    int32_t *ids = NULL;
    int64_t n = -1;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_tokenizer_encode(qwen, "", 0, &ids, &n, &err), DVL_OK);
    ck_assert_int_eq(n, 0);
    ck_assert_ptr_nonnull(ids);
    free(ids);
    /* len 0 with a NULL pointer is an empty text too. */
    ck_assert_int_eq(dvl_tokenizer_encode(qwen, NULL, 0, &ids, &n, &err), DVL_OK);
    ck_assert_int_eq(n, 0);
    free(ids);
    char *s = dvl_tokenizer_decode(qwen, NULL, 0);
    ck_assert_str_eq(s, "");
    free(s);
}
END_TEST

START_TEST(invalid_utf8_input_is_an_error)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    static const struct {
        const char *s;
        size_t at;
    } bad[] = {
        {"ab\xff" "cd", 2},       /* never valid */
        {"x\xe4\xbd", 1},         /* truncated at the end */
        {"\xc0\xaf", 0},          /* overlong '/' */
        {"ok \xed\xa0\x80", 3},   /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 0},  /* above U+10FFFF */
        {"a\x80", 1},             /* stray continuation byte */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = (int32_t *)1;
        int64_t n = 7;
        dvl_err err = {0};
        int rc = dvl_tokenizer_encode(qwen, bad[i].s, strlen(bad[i].s), &ids, &n, &err);
        ck_assert_int_eq(rc, DVL_EINVAL);
        ck_assert_ptr_null(ids);
        ck_assert_int_eq(n, 0);
        char want[64];
        snprintf(want, sizeof want, "invalid UTF-8 at byte %zu", bad[i].at);
        ck_assert_msg(strstr(err.msg, want), "case %zu: '%s' lacks '%s'", i, err.msg, want);
    }
    /* An embedded NUL is a valid character, not the end of the text. */
    int32_t *ids;
    int64_t n;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_tokenizer_encode(qwen, "a\0b", 3, &ids, &n, &err), DVL_OK);
    char *back = dvl_tokenizer_decode(qwen, ids, n);
    ck_assert(back[0] == 'a' && back[1] == '\0' && back[2] == 'b');
    free(back);
    free(ids);
}
END_TEST

/* Id of the single-byte token for byte b. */
static int32_t byte_token(const dvl_tokenizer *tok, unsigned b)
{
    /* GPT-2 bytes_to_unicode, written out independently of the library. */
    unsigned cp = b, extra = 0;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        for (unsigned c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
                extra++;
        cp = 256 + extra;
    }
    char s[3] = {0};
    if (cp < 0x80) {
        s[0] = (char)cp;
    } else {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
    }
    return dvl_tokenizer_token_id(tok, s);
}

START_TEST(decode_invalid_bytes_gives_replacement)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    /* "你" is E4 BD A0. Its first two bytes alone are one maximal subpart
     * -> one U+FFFD; a lone 0xFF -> one U+FFFD; ids outside the vocabulary
     * are skipped. */
    int32_t ids[] = {byte_token(qwen, 0xE4), byte_token(qwen, 0xBD), byte_token(qwen, 'a'),
                     byte_token(qwen, 0xFF), -5, 99999999, byte_token(qwen, 0xE4),
                     byte_token(qwen, 0xBD), byte_token(qwen, 0xA0)};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++)
        if (i != 4 && i != 5)
            ck_assert_int_ge(ids[i], 0);
    char *s = dvl_tokenizer_decode(qwen, ids, 9);
    ck_assert_str_eq(s, "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD" "你");
    free(s);
    /* A character split over two tokens decodes whole once both are there. */
    int32_t *e;
    int64_t n;
    encode_ok(qwen, "汉字 and 🦀 emoji", &e, &n);
    s = dvl_tokenizer_decode(qwen, e, n);
    ck_assert_str_eq(s, "汉字 and 🦀 emoji");
    free(s);
    /* Cut anywhere, it still decodes to valid UTF-8 without crashing. */
    for (int64_t k = 0; k <= n; k++) {
        s = dvl_tokenizer_decode(qwen, e, k);
        ck_assert_ptr_nonnull(s);
        utf8proc_uint8_t *m = NULL;
        ck_assert_int_ge(utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)strlen(s), &m,
                                      UTF8PROC_STABLE),
                         0);
        free(m);
        free(s);
    }
    free(e);
}
END_TEST

START_TEST(long_runs_round_trip)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    /* Pre-tokens far longer than the word cache's limit, and whitespace
     * runs that make \s+(?!\S) backtrack. */
    size_t n = 20000;
    char *s = malloc(4 * n + 16);
    memset(s, ' ', n);
    memset(s + n, 'a', n);
    memset(s + 2 * n, '\n', n / 2);
    memcpy(s + 2 * n + n / 2, "x\t\t", 3);
    s[2 * n + n / 2 + 3] = '\0';
    int32_t *ids;
    int64_t m;
    encode_ok(qwen, s, &ids, &m);
    ck_assert_int_lt(m, (int64_t)n);
    char *back = dvl_tokenizer_decode(qwen, ids, m);
    ck_assert_str_eq(back, s);
    free(back);
    free(ids);
    free(s);
}
END_TEST

/* The same text encoded in one call with one state (so the word cache
 * fills, is emptied and refills) and in chunks with fresh states. 90000
 * distinct words exceed the cache's capacity. */
START_TEST(word_cache_does_not_change_ids)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    dvl_rng rng;
    dvl_rng_seed(&rng, 7);
    const int words = 90000, chunk = 3000;
    char *text = malloc((size_t)words * 12 + 1);
    size_t len = 0, *cut = malloc(sizeof *cut * (size_t)(words / chunk + 2));
    int ncut = 0;
    for (int w = 0; w < words; w++) {
        if (w % chunk == 0)
            cut[ncut++] = len;
        text[len++] = ' ';
        int wl = 3 + (int)(dvl_rng_u64(&rng) % 7);
        for (int k = 0; k < wl; k++)
            text[len++] = (char)('a' + dvl_rng_u64(&rng) % 26);
    }
    cut[ncut] = len;
    dvl_err err = {0};
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(qwen, &err);
    ck_assert_ptr_nonnull(st);
    dvl_ids all = {0};
    ck_assert_int_eq(dvl_tokenizer_encode_into(qwen, st, text, len, &all, &err), DVL_OK);
    /* Pieces start at a space, where the pre-tokenizer splits anyway. */
    int64_t at = 0;
    for (int c = 0; c < ncut; c++) {
        int32_t *ids;
        int64_t n;
        ck_assert_int_eq(dvl_tokenizer_encode(qwen, text + cut[c], cut[c + 1] - cut[c], &ids, &n,
                                              &err),
                         DVL_OK);
        ck_assert_int_le(at + n, all.n);
        ck_assert_msg(!memcmp(all.v + at, ids, sizeof *ids * (size_t)n), "chunk %d differs", c);
        at += n;
        free(ids);
    }
    ck_assert_int_eq(at, all.n);
    /* encode_into appends; a failed call leaves the list as it was. */
    int64_t before = all.n;
    ck_assert_int_eq(dvl_tokenizer_encode_into(qwen, st, "\xff", 1, &all, &err), DVL_EINVAL);
    ck_assert_int_eq(all.n, before);
    ck_assert_int_eq(dvl_tokenizer_encode_into(qwen, st, " hello", 6, &all, &err), DVL_OK);
    ck_assert_int_eq(all.n, before + 1);
    ck_assert_int_eq(all.v[before], dvl_tokenizer_token_id(qwen, "Ġhello"));
    dvl_ids_free(&all);
    dvl_tokenizer_state_free(st);
    free(cut);
    free(text);
}
END_TEST

typedef struct thread_job {
    ref_line *refs;
    int n, first, fails;
} thread_job;

static void *encode_all(void *arg)
{
    thread_job *j = arg;
    dvl_err err = {0};
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(qwen, &err);
    dvl_ids ids = {0};
    for (int rep = 0; rep < 20; rep++) {
        for (int k = 0; k < j->n; k++) {
            ref_line *r = &j->refs[(k + j->first) % j->n];
            ids.n = 0;
            if (dvl_tokenizer_encode_into(qwen, st, r->text, strlen(r->text), &ids, &err) ||
                ids.n != r->n || memcmp(ids.v, r->ids, sizeof *ids.v * (size_t)r->n))
                j->fails++;
        }
    }
    dvl_ids_free(&ids);
    dvl_tokenizer_state_free(st);
    return NULL;
}

START_TEST(concurrent_encoding)
{
    ck_assert_msg(qwen, "Qwen tokenizer did not load");
    int n;
    ref_line *refs = read_refs(&n);
    pthread_t th[4];
    thread_job jobs[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (thread_job){refs, n, t * 17, 0};
        ck_assert_int_eq(pthread_create(&th[t], NULL, encode_all, &jobs[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        ck_assert_int_eq(jobs[t].fails, 0);
    }
    free_refs(refs, n);
}
END_TEST

/* ---- a synthetic tokenizer.json ---- */

/* Byte-level text of raw bytes (GPT-2 table, as in byte_token). */
static void to_byte_level(const char *raw, char *out)
{
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        unsigned b = *p, cp = b, extra = 0;
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            for (unsigned c = 0; c < b; c++)
                if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
                    extra++;
            cp = 256 + extra;
        }
        if (cp < 0x80) {
            out[k++] = (char)cp;
        } else {
            out[k++] = (char)(0xC0 | (cp >> 6));
            out[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[k] = '\0';
}

/* Merges (raw text, left and right parts); the merged tokens get ids 256+. */
static const char *syn_merges[][2] = {
    {"a", "a"},   /* 256 "aa" */
    {"b", "c"},   /* 257 "bc": lower rank than "a b" */
    {"a", "b"},   /* 258 "ab" */
    {"aa", "a"},  /* 259 "aaa" */
    {"!", "!"},   /* 260 "!!" */
    {" ", "x"},   /* 261 " x" */
    {"\x8e", "!"}, /* 262: last byte of U+180E, then "!" */
};

typedef struct syn_opts {
    const char *model_type;
    const char *pretok_type;
    const char *behavior;
    const char *normalizer;
    const char *decoder;
    const char *bad_merge; /* a merge whose part is not in the vocabulary */
    int drop_byte;         /* leave this byte's token out of the vocabulary (or -1) */
} syn_opts;

static const syn_opts syn_default = {"BPE", "Split", "Isolated", "NFC", "ByteLevel", NULL, -1};

static void add_added(cJSON *list, int id, const char *content, bool special, bool lstrip,
                      bool rstrip, bool normalized)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", false);
    cJSON_AddBoolToObject(a, "lstrip", lstrip);
    cJSON_AddBoolToObject(a, "rstrip", rstrip);
    cJSON_AddBoolToObject(a, "normalized", normalized);
    cJSON_AddBoolToObject(a, "special", special);
    cJSON_AddItemToArray(list, a);
}

/* Write DIR/tokenizer.json; returns DIR (static buffer per call site). */
static void write_synthetic(char *dir, const syn_opts *o)
{
    strcpy(dir, "/tmp/dvl_tok_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    add_added(added, 300, "<a>", true, false, false, false);
    add_added(added, 301, "<a><b>", true, false, false, false);
    add_added(added, 302, "[L]", false, true, false, false);
    add_added(added, 303, "[R]", false, false, true, false);
    add_added(added, 304, "e\xcc\x81", false, false, false, true); /* e + U+0301 */
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", o->normalizer);
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *list = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", o->pretok_type);
    cJSON *pat = cJSON_AddObjectToObject(split, "pattern");
    /* "!" matches nothing: runs of it are the text between matches. */
    cJSON_AddStringToObject(pat, "Regex", " ?[a-z]+|[0-9]|\\s+");
    cJSON_AddStringToObject(split, "behavior", o->behavior);
    cJSON_AddBoolToObject(split, "invert", false);
    cJSON_AddItemToArray(list, split);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", false);
    cJSON_AddBoolToObject(bl, "trim_offsets", false);
    cJSON_AddBoolToObject(bl, "use_regex", false);
    cJSON_AddItemToArray(list, bl);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", o->decoder);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", o->model_type);
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
    cJSON_AddStringToObject(model, "end_of_word_suffix", "");
    cJSON_AddBoolToObject(model, "fuse_unk", false);
    cJSON_AddBoolToObject(model, "byte_fallback", false);
    cJSON_AddBoolToObject(model, "ignore_merges", false);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    char bl_text[64], bl_a[64], bl_b[64], raw[4];
    for (int b = 0; b < 256; b++) {
        if (b == o->drop_byte || b == 0)
            continue;
        raw[0] = (char)b;
        raw[1] = '\0';
        to_byte_level(raw, bl_text);
        cJSON_AddNumberToObject(vocab, bl_text, b);
    }
    if (o->drop_byte != 0)
        cJSON_AddNumberToObject(vocab, "Ā", 0); /* byte 0 is U+0100 */
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    size_t nm = sizeof syn_merges / sizeof *syn_merges;
    for (size_t i = 0; i < nm; i++) {
        char cat[16];
        snprintf(cat, sizeof cat, "%s%s", syn_merges[i][0], syn_merges[i][1]);
        to_byte_level(cat, bl_text);
        cJSON_AddNumberToObject(vocab, bl_text, 256 + (double)i);
        to_byte_level(syn_merges[i][0], bl_a);
        to_byte_level(syn_merges[i][1], bl_b);
        if (i % 2 == 0) { /* both spellings of a merge */
            char m[160];
            snprintf(m, sizeof m, "%s %s", bl_a, bl_b);
            cJSON_AddItemToArray(merges, cJSON_CreateString(m));
        } else {
            const char *pair[2] = {bl_a, bl_b};
            cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
        }
    }
    if (o->bad_merge)
        cJSON_AddItemToArray(merges, cJSON_CreateString(o->bad_merge));
    char *json = cJSON_Print(root);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    fclose(f);
    free(json);
    cJSON_Delete(root);
}

static void remove_dir(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}

static void expect_ids(const dvl_tokenizer *tok, const char *text, const int32_t *want, int64_t n)
{
    int32_t *ids;
    int64_t m;
    encode_ok(tok, text, &ids, &m);
    int64_t d = first_diff(ids, m, want, n);
    ck_assert_msg(m == n && d == n, "\"%s\": %lld ids, want %lld; first difference at %lld (%d)",
                  text, (long long)m, (long long)n, (long long)d, d < m ? ids[d] : -1);
    free(ids);
}
#define EXPECT(tok, text, ...)                                                                     \
    do {                                                                                          \
        const int32_t w_[] = {__VA_ARGS__};                                                       \
        expect_ids(tok, text, w_, (int64_t)(sizeof w_ / sizeof *w_));                             \
    } while (0)

START_TEST(synthetic_bpe_and_added_tokens)
{
    char dir[64];
    write_synthetic(dir, &syn_default);
    dvl_err err = {0};
    dvl_tokenizer *t = dvl_tokenizer_load(dir, &err);
    ck_assert_msg(t, "%s", err.msg);
    ck_assert_int_eq(dvl_tokenizer_vocab_size(t), 305);
    ck_assert_int_eq(dvl_tokenizer_token_id(t, "Ġx"), 261);
    /* Equal ranks: the leftmost pair merges first ("aaa" -> "aa" "a"), and
     * the result then merges by its own rank ("aa"+"a" is rank 3). */
    EXPECT(t, "a", 'a');
    EXPECT(t, "aa", 256);
    EXPECT(t, "aaa", 259);
    EXPECT(t, "aaaa", 256, 256);
    EXPECT(t, "aaaaa", 256, 259); /* aa aa a, then (aa a) -> aa aaa */
    /* Lowest rank first: "bc" (rank 1) beats "ab" (rank 2). */
    EXPECT(t, "abc", 'a', 257);
    EXPECT(t, "abd", 258, 'd');
    /* Isolated split: matches and the unmatched stretch "!!!" are pieces;
     * the space goes with the word (" ?[a-z]+"). */
    EXPECT(t, "x!!!x", 'x', 260, '!', 'x');
    EXPECT(t, "ab x", 258, 261);
    /* \s is Unicode White_Space, as in tokenizers' regex engine: U+180E
     * (E1 A0 8E) is not white space (PCRE2 alone would say it is), so
     * "\u180E!" is one unmatched stretch and its last two bytes merge. */
    EXPECT(t, "\xe1\xa0\x8e!", 0xE1, 0xA0, 262);
    EXPECT(t, "\xe2\x80\x83!", 0xE2, 0x80, 0x83, '!'); /* U+2003 EM SPACE is */
    /* Added tokens: leftmost, and longest at a position. */
    EXPECT(t, "x<a><b>y<a><a>", 'x', 301, 'y', 300, 300);
    EXPECT(t, "<a<a>", '<', 'a', 300);
    /* lstrip eats white space before, rstrip after. */
    EXPECT(t, "b  [L]c", 'b', 302, 'c');
    EXPECT(t, "b[R] \t c", 'b', 303, 'c');
    /* A normalized added token is matched after NFC, in either spelling. */
    EXPECT(t, "x\xc3\xa9y", 'x', 304, 'y');
    EXPECT(t, "xe\xcc\x81y", 'x', 304, 'y');
    char *s = dvl_tokenizer_decode(t, (int32_t[]){300, 'a', 302, 261}, 4);
    ck_assert_str_eq(s, "<a>a[L] x");
    free(s);
    dvl_tokenizer_free(t);
    remove_dir(dir);
}
END_TEST

/* Load must fail with code and a message holding every string in want. */
static void expect_load_error(const syn_opts *o, int code, const char *want1, const char *want2)
{
    char dir[64];
    write_synthetic(dir, o);
    dvl_err err = {0};
    dvl_tokenizer *t = dvl_tokenizer_load(dir, &err);
    ck_assert_msg(!t, "loaded a tokenizer that should fail (%s)", want1);
    ck_assert_int_eq(err.code, code);
    ck_assert_msg(strstr(err.msg, "tokenizer.json"), "'%s' does not name the file", err.msg);
    ck_assert_msg(strstr(err.msg, want1), "'%s' lacks '%s'", err.msg, want1);
    ck_assert_msg(!want2 || strstr(err.msg, want2), "'%s' lacks '%s'", err.msg, want2);
    remove_dir(dir);
}

START_TEST(unsupported_and_bad_files)
{
    syn_opts o = syn_default;
    o.model_type = "WordPiece";
    expect_load_error(&o, DVL_EUNSUP, "model.type", "WordPiece");
    o = syn_default;
    o.pretok_type = "Whitespace";
    expect_load_error(&o, DVL_EUNSUP, "pre_tokenizer.pretokenizers[0].type", "Whitespace");
    o = syn_default;
    o.behavior = "Removed";
    expect_load_error(&o, DVL_EUNSUP, "pre_tokenizer.pretokenizers[0].behavior", "Removed");
    o = syn_default;
    o.normalizer = "NFKC";
    expect_load_error(&o, DVL_EUNSUP, "normalizer.type", "NFKC");
    o = syn_default;
    o.decoder = "WordPiece";
    expect_load_error(&o, DVL_EUNSUP, "decoder.type", "WordPiece");
    o = syn_default;
    o.bad_merge = "a zz";
    expect_load_error(&o, DVL_EINVAL, "model.merges[7]", "right part");
    o = syn_default;
    o.drop_byte = 'q';
    expect_load_error(&o, DVL_EINVAL, "0x71", NULL);
}
END_TEST

START_TEST(missing_and_malformed_files)
{
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_tokenizer_load("/nonexistent/dvl-tok", &err));
    ck_assert_int_eq(err.code, DVL_EIO);
    ck_assert_msg(strstr(err.msg, "/nonexistent/dvl-tok/tokenizer.json"), "%s", err.msg);

    char dir[64], path[200];
    strcpy(dir, "/tmp/dvl_tok_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}", f);
    fclose(f);
    ck_assert_ptr_null(dvl_tokenizer_load(dir, &err));
    ck_assert_int_eq(err.code, DVL_EIO);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "malformed JSON"), "%s", err.msg);
    remove_dir(dir);

    /* A malformed tokenizer_config.json beside a good tokenizer.json. */
    write_synthetic(dir, &syn_default);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"eos_token\": ", f);
    fclose(f);
    ck_assert_ptr_null(dvl_tokenizer_load(dir, &err));
    ck_assert_msg(strstr(err.msg, "tokenizer_config.json"), "%s", err.msg);
    /* ... and one naming a token that does not exist. */
    f = fopen(path, "w");
    fputs("{\"eos_token\": {\"content\": \"<nope>\"}, \"pad_token\": \"<a>\"}", f);
    fclose(f);
    ck_assert_ptr_null(dvl_tokenizer_load(dir, &err));
    ck_assert_msg(strstr(err.msg, "eos_token") && strstr(err.msg, "<nope>"), "%s", err.msg);
    f = fopen(path, "w");
    fputs("{\"eos_token\": {\"content\": \"<a><b>\"}, \"pad_token\": \"<a>\", \"bos_token\": null}",
          f);
    fclose(f);
    dvl_tokenizer *t = dvl_tokenizer_load(dir, &err);
    ck_assert_msg(t, "%s", err.msg);
    ck_assert_int_eq(dvl_tokenizer_eos_id(t), 301);
    ck_assert_int_eq(dvl_tokenizer_pad_id(t), 300);
    ck_assert_int_eq(dvl_tokenizer_bos_id(t), -1);
    dvl_tokenizer_free(t);
    remove_dir(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *q = tcase_create("qwen");
    tcase_add_unchecked_fixture(q, load_qwen, free_qwen);
    tcase_add_test(q, reference_encodings_exact);
    tcase_add_test(q, qwen_vocab_and_special_ids);
    tcase_add_test(q, special_tokens_whole);
    tcase_add_test(q, empty_string);
    tcase_add_test(q, invalid_utf8_input_is_an_error);
    tcase_add_test(q, decode_invalid_bytes_gives_replacement);
    tcase_add_test(q, long_runs_round_trip);
    tcase_add_test(q, word_cache_does_not_change_ids);
    tcase_add_test(q, concurrent_encoding);
    suite_add_tcase(s, q);
    TCase *y = tcase_create("synthetic");
    tcase_add_test(y, synthetic_bpe_and_added_tokens);
    tcase_add_test(y, unsupported_and_bad_files);
    tcase_add_test(y, missing_and_malformed_files);
    suite_add_tcase(s, y);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
