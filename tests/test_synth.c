/* The synthetic shapes dataset (data/synth.c): determinism, splits, the
 * LLaVA JSON, ground truth against the text and the pixels, the BPE
 * tokenizer, argument errors. Images are 64 px so the suite stays fast. */
#include <cJSON.h>
#include <ctype.h>
#include <ftw.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/synth.h"
#include "io/image.h"
#include "util.h"

enum { N = 12, HELD = 5, SIZE = 64 };

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

static char *read_in(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *s = read_text(path, len);
    ck_assert_msg(s != NULL, "cannot read %s", path);
    return s;
}

static cJSON *parse_in(const char *dir, const char *name)
{
    char *s = read_in(dir, name, NULL);
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "%s/%s does not parse near: %.40s", dir, name, cJSON_GetErrorPtr());
    free(s);
    return j;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

static char *make_dir(void)
{
    const char *t = getenv("TMPDIR");
    char *d = malloc(512);
    snprintf(d, 512, "%s/dvl-test-synth-XXXXXX", t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static void remove_dir(char *d)
{
    nftw(d, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static void generate(const char *out, uint64_t seed, int64_t n, int64_t held)
{
    synth_opts o = {.out = out, .n = n, .heldout = held, .seed = seed, .size = SIZE};
    dvl_err err = {0};
    int rc = synth_generate(&o, &err);
    ck_assert_msg(rc == 0, "synth_generate: %s", err.msg);
}

/* Every file of a dataset with N train and HELD held-out samples. */
static int dataset_files(char names[][64])
{
    int k = 0;
    const char *fixed[] = {"train.json",         "heldout.json",
                           "train_meta.jsonl",   "heldout_meta.jsonl",
                           "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"};
    for (int i = 0; i < 6; i++)
        snprintf(names[k++], 64, "%s", fixed[i]);
    for (int i = 0; i < N; i++)
        snprintf(names[k++], 64, "images/train_%06d.png", i);
    for (int i = 0; i < HELD; i++)
        snprintf(names[k++], 64, "images/heldout_%06d.png", i);
    return k;
}

static int same_file(const char *a, const char *b, const char *name)
{
    size_t na, nb;
    char *x = read_in(a, name, &na), *y = read_in(b, name, &nb);
    int same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Same seed, same bytes, whatever the thread count. */
START_TEST(same_seed_same_bytes)
{
    char *a = make_dir(), *b = make_dir();
    generate(a, 5, N, HELD);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    generate(b, 5, N, HELD);
    omp_set_num_threads(threads);
    char names[64][64];
    int k = dataset_files(names);
    for (int i = 0; i < k; i++)
        ck_assert_msg(same_file(a, b, names[i]), "%s differs between two runs", names[i]);
    remove_dir(a);
    remove_dir(b);
}
END_TEST

START_TEST(different_seeds_differ)
{
    char *a = make_dir(), *b = make_dir();
    generate(a, 5, N, HELD);
    generate(b, 6, N, HELD);
    ck_assert(!same_file(a, b, "train_meta.jsonl"));
    ck_assert(!same_file(a, b, "heldout_meta.jsonl"));
    int differ = 0;
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "images/train_%06d.png", i);
        differ += !same_file(a, b, name);
    }
    ck_assert_int_eq(differ, N);
    /* The tokenizer does not depend on the draw. */
    ck_assert(same_file(a, b, "tokenizer/tokenizer.json"));
    remove_dir(a);
    remove_dir(b);
}
END_TEST

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsString(v), "missing string \"%s\"", key);
    return v->valuestring;
}

/* Held-out ids and images are disjoint from training; the training set does
 * not depend on --heldout. */
START_TEST(heldout_disjoint_and_independent)
{
    char *a = make_dir(), *b = make_dir();
    generate(a, 9, N, HELD);
    generate(b, 9, N, 0);
    ck_assert(same_file(a, b, "train.json"));
    ck_assert(same_file(a, b, "train_meta.jsonl"));
    cJSON *tr = parse_in(a, "train.json"), *he = parse_in(a, "heldout.json");
    cJSON *none = parse_in(b, "heldout.json");
    ck_assert_int_eq(cJSON_GetArraySize(none), 0);
    ck_assert_int_eq(cJSON_GetArraySize(tr), N);
    ck_assert_int_eq(cJSON_GetArraySize(he), HELD);
    const cJSON *x, *y;
    cJSON_ArrayForEach(x, tr) cJSON_ArrayForEach(y, he)
    {
        ck_assert_str_ne(str_of(x, "id"), str_of(y, "id"));
        ck_assert_str_ne(str_of(x, "image"), str_of(y, "image"));
    }
    cJSON_Delete(tr);
    cJSON_Delete(he);
    cJSON_Delete(none);
    remove_dir(a);
    remove_dir(b);
}
END_TEST

/* LLaVA format: [{"id", "image", "conversations": [{"from": "human",
 * "value": "<image>\n..."}, {"from": "gpt", "value": "..."}]}], ids unique,
 * each image a SIZE x SIZE PNG that decodes. */
START_TEST(llava_format_and_images)
{
    char *d = make_dir();
    generate(d, 3, N, HELD);
    const char *files[] = {"train.json", "heldout.json"};
    for (int f = 0; f < 2; f++) {
        cJSON *arr = parse_in(d, files[f]);
        ck_assert(cJSON_IsArray(arr));
        const cJSON *it;
        int k = 0;
        cJSON_ArrayForEach(it, arr)
        {
            ck_assert(cJSON_IsObject(it));
            ck_assert_int_eq(cJSON_GetArraySize(it), 3);
            const char *id = str_of(it, "id"), *image = str_of(it, "image");
            ck_assert_ptr_nonnull(strstr(id, f ? "heldout" : "train"));
            const cJSON *other;
            int dup = 0;
            cJSON_ArrayForEach(other, arr) dup += !strcmp(str_of(other, "id"), id);
            ck_assert_int_eq(dup, 1);
            const cJSON *conv = cJSON_GetObjectItemCaseSensitive(it, "conversations");
            ck_assert(cJSON_IsArray(conv));
            ck_assert_int_eq(cJSON_GetArraySize(conv), 2);
            const cJSON *h = cJSON_GetArrayItem(conv, 0), *g = cJSON_GetArrayItem(conv, 1);
            ck_assert_str_eq(str_of(h, "from"), "human");
            ck_assert_str_eq(str_of(g, "from"), "gpt");
            const char *q = str_of(h, "value"), *ans = str_of(g, "value");
            ck_assert_int_eq(strncmp(q, "<image>\n", 8), 0);
            ck_assert_ptr_null(strstr(q + 1, "<image>"));
            ck_assert_ptr_null(strstr(ans, "<image>"));
            ck_assert(strlen(ans) > 1 && ans[strlen(ans) - 1] == '.');
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", d, image);
            dvl_image img;
            dvl_err err = {0};
            ck_assert_msg(dvl_image_load(path, &img, &err) == 0, "%s", err.msg);
            ck_assert_int_eq(img.w, SIZE);
            ck_assert_int_eq(img.h, SIZE);
            dvl_image_free(&img);
            k++;
        }
        ck_assert_int_eq(k, f ? HELD : N);
        cJSON_Delete(arr);
    }
    remove_dir(d);
}
END_TEST

/* --- ground truth -------------------------------------------------- */

static const char *kinds[] = {"circle", "square", "triangle", "star", "diamond"};
static const char *plurals[] = {"circles", "squares", "triangles", "stars", "diamonds"};
static const char *colors[] = {"red", "green", "blue", "yellow", "purple", "orange"};
static const int palette[6][3] = {{220, 30, 30}, {30, 160, 50}, {30, 70, 220},
                                  {235, 200, 20}, {135, 50, 180}, {245, 125, 20}};
static const char *numbers[] = {"zero", "one", "two", "three", "four"};

static int index_of(const char *const *list, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(list[i], s))
            return i;
    ck_abort_msg("unknown word '%s'", s);
    return -1;
}

/* The caption rebuilt from the shapes by the rules stated in synth.h:
 * groups of equal (kind, colour) in kind-then-colour order, "a" for one
 * ("an" before "orange"),
 * "X.", "X and Y.", "X, Y and Z.". */
static void expected_caption(int ns, const int *kind, const int *color, char *buf, size_t cap)
{
    int count[5][6] = {{0}};
    for (int i = 0; i < ns; i++)
        count[kind[i]][color[i]]++;
    char parts[4][64];
    int g = 0;
    for (int k = 0; k < 5; k++)
        for (int c = 0; c < 6; c++)
            if (count[k][c])
                snprintf(parts[g++], 64, "%s %s %s",
                         count[k][c] > 1 ? numbers[count[k][c]] : c == 5 ? "an" : "a", colors[c],
                         count[k][c] == 1 ? kinds[k] : plurals[k]);
    buf[0] = '\0';
    for (int i = 0; i < g; i++) {
        strncat(buf, i == 0 ? "" : i == g - 1 ? " and " : ", ", cap - strlen(buf) - 1);
        strncat(buf, parts[i], cap - strlen(buf) - 1);
    }
    strncat(buf, ".", cap - strlen(buf) - 1);
}

/* The meta lines match the conversations (same id, image, answer), the
 * answer follows from the listed shapes, and the pixels agree with the
 * shapes: background in the corner, the named colour at each centre. */
START_TEST(meta_matches_text_and_pixels)
{
    char *d = make_dir();
    generate(d, 21, 40, 0);
    cJSON *arr = parse_in(d, "train.json");
    char *meta = read_in(d, "train_meta.jsonl", NULL);
    char *line = meta, *next;
    int k = 0, seen_q[4] = {0}, seen_plural = 0;
    for (; *line; line = next, k++) {
        next = strchr(line, '\n');
        ck_assert_ptr_nonnull(next);
        *next++ = '\0';
        cJSON *m = cJSON_Parse(line);
        ck_assert_ptr_nonnull(m);
        const cJSON *item = cJSON_GetArrayItem(arr, k);
        ck_assert_ptr_nonnull(item);
        ck_assert_str_eq(str_of(m, "id"), str_of(item, "id"));
        ck_assert_str_eq(str_of(m, "image"), str_of(item, "image"));
        const cJSON *conv = cJSON_GetObjectItemCaseSensitive(item, "conversations");
        const char *q = str_of(cJSON_GetArrayItem(conv, 0), "value");
        const char *ans = str_of(cJSON_GetArrayItem(conv, 1), "value");
        ck_assert_str_eq(str_of(m, "answer"), ans);

        const cJSON *shapes = cJSON_GetObjectItemCaseSensitive(m, "shapes"), *s;
        int ns = 0, kind[4], color[4];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", d, str_of(m, "image"));
        dvl_image img;
        dvl_err err = {0};
        ck_assert_int_eq(dvl_image_load(path, &img, &err), 0);
        const cJSON *bg = cJSON_GetObjectItemCaseSensitive(m, "background");
        for (int c = 0; c < 3; c++)
            ck_assert_int_eq(img.data[c], cJSON_GetArrayItem(bg, c)->valueint);
        cJSON_ArrayForEach(s, shapes)
        {
            ck_assert_int_lt(ns, 4);
            kind[ns] = index_of(kinds, 5, str_of(s, "kind"));
            color[ns] = index_of(colors, 6, str_of(s, "color"));
            int x = cJSON_GetObjectItemCaseSensitive(s, "x")->valueint;
            int y = cJSON_GetObjectItemCaseSensitive(s, "y")->valueint;
            const uint8_t *p = img.data + ((size_t)y * SIZE + x) * 3;
            for (int c = 0; c < 3; c++) /* colours are jittered by at most 12 */
                ck_assert_msg(abs(p[c] - palette[color[ns]][c]) <= 12,
                              "%s: %s at (%d, %d) has channel %d = %d", str_of(m, "id"),
                              colors[color[ns]], x, y, c, p[c]);
            ns++;
        }
        dvl_image_free(&img);
        ck_assert_int_ge(ns, 1);
        int per_kind[5] = {0};
        for (int i = 0; i < ns; i++)
            per_kind[kind[i]]++;

        const char *qt = str_of(m, "question");
        char want[256];
        if (!strcmp(qt, "caption")) {
            seen_q[0]++;
            ck_assert_str_eq(q, "<image>\nDescribe the image.");
            expected_caption(ns, kind, color, want, sizeof want);
            ck_assert_str_eq(ans, want);
            for (int i = 0; i < 5; i++)
                seen_plural += strstr(ans, plurals[i]) != NULL;
        } else if (!strcmp(qt, "count")) {
            seen_q[1]++;
            int kk = index_of(kinds, 5, str_of(m, "target"));
            snprintf(want, sizeof want, "<image>\nHow many %s are there?", plurals[kk]);
            ck_assert_str_eq(q, want);
            snprintf(want, sizeof want, "%s.", numbers[per_kind[kk]]);
            ck_assert_str_eq(ans, want);
        } else if (!strcmp(qt, "color")) {
            seen_q[2]++;
            int kk = index_of(kinds, 5, str_of(m, "target"));
            ck_assert_int_eq(per_kind[kk], 1);
            snprintf(want, sizeof want, "<image>\nWhat color is the %s?", kinds[kk]);
            ck_assert_str_eq(q, want);
            for (int i = 0; i < ns; i++)
                if (kind[i] == kk)
                    snprintf(want, sizeof want, "%s.", colors[color[i]]);
            ck_assert_str_eq(ans, want);
        } else {
            ck_assert_str_eq(qt, "total");
            seen_q[3]++;
            ck_assert_str_eq(q, "<image>\nHow many shapes are there?");
            snprintf(want, sizeof want, "%s.", numbers[ns]);
            ck_assert_str_eq(ans, want);
        }
        cJSON_Delete(m);
    }
    ck_assert_int_eq(k, 40);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(seen_q[i] > 0, "40 samples and no %d questions", i);
    ck_assert_int_gt(seen_plural, 0);
    free(meta);
    cJSON_Delete(arr);
    remove_dir(d);
}
END_TEST

/* --- tokenizer ------------------------------------------------------ */

typedef struct merges {
    const char *l[1024], *r[1024];
    int n;
} merges;

/* Hugging Face BPE on one word of letters (byte-level symbols are the
 * letters themselves, 'Ġ' for the leading space): merge the lowest-ranked
 * pair, leftmost first, until none applies; return the token count. */
static int bpe_tokens(const merges *mg, const char *word, char *last, size_t cap)
{
    char sym[32][64];
    int n = 0;
    for (const char *p = word; *p; p++) {
        if (*p == ' ')
            snprintf(sym[n++], 64, "\xc4\xa0"); /* U+0120 */
        else
            snprintf(sym[n++], 64, "%c", *p);
    }
    for (;;) {
        int best = -1, at = -1;
        for (int i = 0; i + 1 < n; i++)
            for (int r = 0; r < mg->n && (best < 0 || r < best); r++)
                if (!strcmp(mg->l[r], sym[i]) && !strcmp(mg->r[r], sym[i + 1])) {
                    best = r;
                    at = i;
                }
        if (best < 0)
            break;
        size_t la = strlen(sym[at]), lb = strlen(sym[at + 1]);
        ck_assert(la + lb < sizeof sym[0]);
        memmove(sym[at] + la, sym[at + 1], lb + 1);
        memmove(sym[at + 1], sym[at + 2], sizeof sym[0] * (size_t)(n - at - 2));
        n--;
    }
    snprintf(last, cap, "%s", sym[0]);
    return n;
}

/* Qwen2's layout; byte tokens first in GPT-2 order; every word of every
 * conversation (and of ChatML's system prompt) one token after BPE, with
 * its leading space; special tokens after the vocabulary. */
START_TEST(tokenizer_words_are_single_tokens)
{
    char *d = make_dir();
    generate(d, 4, N, HELD);
    cJSON *tj = parse_in(d, "tokenizer/tokenizer.json");
    cJSON *cfg = parse_in(d, "tokenizer/tokenizer_config.json");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    ck_assert_str_eq(str_of(model, "type"), "BPE");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *mj = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int nv = cJSON_GetArraySize(vocab);
    ck_assert_int_gt(nv, 256);
    ck_assert_int_lt(nv, 1000);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(vocab, "!")->valueint, 0);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(vocab, "0")->valueint, 15);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\xa0")->valueint, 220);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\x8a")->valueint, 198);
    /* The pre-tokenizer is Qwen2's regex Split followed by ByteLevel. */
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    const cJSON *split = cJSON_GetArrayItem(seq, 0);
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex"),
                     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(tj, "normalizer"), "type"), "NFC");
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(tj, "decoder"), "type"), "ByteLevel");

    merges mg = {.n = cJSON_GetArraySize(mj)};
    ck_assert_int_le(mg.n, 1024);
    ck_assert_int_eq(mg.n, nv - 256); /* each merge adds one token */
    for (int i = 0; i < mg.n; i++) {
        const cJSON *p = cJSON_GetArrayItem(mj, i);
        mg.l[i] = cJSON_GetArrayItem(p, 0)->valuestring;
        mg.r[i] = cJSON_GetArrayItem(p, 1)->valuestring;
    }
    /* Special tokens: ids nv.. in order, also in the config. */
    const char *spec[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<|mask|>"};
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    for (int i = 0; i < 5; i++) {
        const cJSON *a = cJSON_GetArrayItem(added, i);
        ck_assert_str_eq(str_of(a, "content"), spec[i]);
        ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(a, "id")->valueint, nv + i);
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special")));
        char key[16];
        snprintf(key, sizeof key, "%d", nv + i);
        ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(dec, key), "content"), spec[i]);
    }
    ck_assert_str_eq(str_of(cfg, "eos_token"), "<|im_end|>");
    ck_assert_str_eq(str_of(cfg, "pad_token"), "<|endoftext|>");
    ck_assert_str_eq(str_of(cfg, "mask_token"), "<|mask|>");
    ck_assert_ptr_nonnull(strstr(str_of(cfg, "chat_template"), "<|im_start|>"));

    /* Words as the pre-tokenizer cuts them: letters with the one space
     * before them, if any. */
    char texts[2 * (N + HELD) + 2][256];
    int nt = 0;
    snprintf(texts[nt++], 256, "system\nYou are a helpful assistant.");
    snprintf(texts[nt++], 256, "user\nassistant\n");
    const char *files[] = {"train.json", "heldout.json"};
    for (int f = 0; f < 2; f++) {
        cJSON *arr = parse_in(d, files[f]);
        const cJSON *it, *m;
        cJSON_ArrayForEach(it, arr)
        {
            cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(it, "conversations"))
            {
                const char *v = str_of(m, "value");
                /* <image> is a special token, split off before the regex. */
                snprintf(texts[nt++], 256, "%s", strncmp(v, "<image>", 7) ? v : v + 7);
            }
        }
        cJSON_Delete(arr);
    }
    int words = 0;
    for (int t = 0; t < nt; t++) {
        const char *text = texts[t];
        for (const char *p = text; *p;) {
            if (!isalpha((unsigned char)*p)) {
                p++;
                continue;
            }
            const char *s = p > text && p[-1] == ' ' ? p - 1 : p;
            while (isalpha((unsigned char)*p))
                p++;
            char w[64], tok[256];
            snprintf(w, sizeof w, "%.*s", (int)(p - s), s);
            ck_assert_msg(bpe_tokens(&mg, w, tok, sizeof tok) == 1, "'%s' is not one token", w);
            ck_assert_msg(cJSON_GetObjectItemCaseSensitive(vocab, tok) != NULL, "%s", tok);
            words++;
        }
    }
    ck_assert_int_gt(words, 3 * (N + HELD));
    cJSON_Delete(tj);
    cJSON_Delete(cfg);
    remove_dir(d);
}
END_TEST


/* --max-shapes, --max-groups, --grid, --background: every image of the
 * simple world has 1..K shapes of one kind and colour, centred (within a
 * pixel) in distinct cells of the lattice, on a mid-grey background; the
 * default options still draw up to four shapes of several kinds. */
START_TEST(simple_world_options)
{
    char *d = make_dir();
    synth_opts o = {.out = d, .n = 60, .heldout = 0, .seed = 5, .size = SIZE,
                    .max_shapes = 3, .max_groups = 1, .grid = 4, .grey = true};
    dvl_err err = {0};
    ck_assert_msg(synth_generate(&o, &err) == 0, "synth_generate: %s", err.msg);
    char *meta = read_in(d, "train_meta.jsonl", NULL);
    int counts[4] = {0};
    double cell = (double)SIZE / 4;
    for (char *line = meta, *next; *line; line = next) {
        next = strchr(line, '\n');
        ck_assert_ptr_nonnull(next);
        *next++ = '\0';
        cJSON *m = cJSON_Parse(line);
        ck_assert_ptr_nonnull(m);
        const cJSON *bg = cJSON_GetObjectItemCaseSensitive(m, "background"), *sh;
        for (int c = 0; c < 3; c++) {
            int v = cJSON_GetArrayItem(bg, c)->valueint;
            ck_assert_msg(v >= 114 && v <= 140, "grey background channel %d = %d", c, v);
        }
        const cJSON *shapes = cJSON_GetObjectItemCaseSensitive(m, "shapes");
        int n = cJSON_GetArraySize(shapes), cells = 0;
        ck_assert_int_ge(n, 1);
        ck_assert_int_le(n, 3);
        counts[n]++;
        const char *kind0 = str_of(cJSON_GetArrayItem(shapes, 0), "kind");
        const char *color0 = str_of(cJSON_GetArrayItem(shapes, 0), "color");
        cJSON_ArrayForEach(sh, shapes)
        {
            ck_assert_str_eq(str_of(sh, "kind"), kind0);
            ck_assert_str_eq(str_of(sh, "color"), color0);
            int x = cJSON_GetObjectItemCaseSensitive(sh, "x")->valueint;
            int y = cJSON_GetObjectItemCaseSensitive(sh, "y")->valueint;
            int r = cJSON_GetObjectItemCaseSensitive(sh, "r")->valueint;
            int cx = (int)(x / cell), cy = (int)(y / cell);
            ck_assert_msg(fabs(x - (cx + 0.5) * cell) <= 1.5 && fabs(y - (cy + 0.5) * cell) <= 1.5,
                          "shape at (%d, %d) is not centred in its cell", x, y);
            ck_assert_msg(1.1 * r + 1 <= cell / 2, "radius %d overflows a %.0f px cell", r, cell);
            ck_assert_msg(!(cells >> (cy * 4 + cx) & 1), "two shapes in cell (%d, %d)", cx, cy);
            cells |= 1 << (cy * 4 + cx);
        }
        cJSON_Delete(m);
    }
    for (int k = 1; k <= 3; k++)
        ck_assert_msg(counts[k] > 0, "no image with %d shapes in 60", k);
    free(meta);
    remove_dir(d);
}
END_TEST

/* --radius LO:HI sets the radius range in % of the cell, clamped to what
 * fits inside the cell. */
START_TEST(grid_radius)
{
    const int range[3][2] = {{20, 20}, {35, 45}, {50, 50}};
    for (int t = 0; t < 3; t++) {
        char *d = make_dir();
        synth_opts o = {.out = d, .n = 20, .heldout = 0, .seed = 5, .size = SIZE, .grid = 4,
                        .radius_lo = range[t][0], .radius_hi = range[t][1]};
        dvl_err err = {0};
        ck_assert_msg(synth_generate(&o, &err) == 0, "synth_generate: %s", err.msg);
        char *meta = read_in(d, "train_meta.jsonl", NULL);
        double cell = (double)SIZE / 4;
        int fit = (int)((cell / 2 - 1) / 1.1), lo = (int)(cell * range[t][0] / 100.0);
        int hi = (int)(cell * range[t][1] / 100.0);
        hi = hi < fit ? hi : fit, lo = lo < hi ? lo : hi;
        int seen_lo = 1 << 30, seen_hi = 0;
        for (char *line = meta, *next; *line; line = next) {
            next = strchr(line, '\n');
            *next++ = '\0';
            cJSON *m = cJSON_Parse(line), *sh;
            cJSON_ArrayForEach(sh, cJSON_GetObjectItemCaseSensitive(m, "shapes"))
            {
                int r = cJSON_GetObjectItemCaseSensitive(sh, "r")->valueint;
                ck_assert_msg(r >= lo && r <= hi, "radius %d outside %d..%d", r, lo, hi);
                seen_lo = r < seen_lo ? r : seen_lo, seen_hi = r > seen_hi ? r : seen_hi;
            }
            cJSON_Delete(m);
        }
        ck_assert_int_eq(seen_lo, lo);
        ck_assert_int_eq(seen_hi, hi);
        free(meta);
        remove_dir(d);
    }
}
END_TEST

/* --- arguments -------------------------------------------------------- */

/* synth_parse_args on {"synth", ...} must fail with want in the message. */
#define BAD_ARGS(want, ...)                                                                     \
    do {                                                                                       \
        char *argv_[] = {"synth", __VA_ARGS__};                                                \
        synth_opts o_;                                                                         \
        dvl_err e_ = {0};                                                                      \
        ck_assert_int_eq(synth_parse_args((int)(sizeof argv_ / sizeof argv_[0]), argv_, &o_,   \
                                          &e_),                                                \
                         DVL_EINVAL);                                                          \
        ck_assert_msg(strstr(e_.msg, want) != NULL, "expected \"%s\", got \"%s\"", want, e_.msg); \
    } while (0)

START_TEST(arguments)
{
    synth_opts o;
    dvl_err err = {0};
    char *ok[] = {"synth", "--out", "x", "--n", "50", "--seed", "7", "--size", "96"};
    ck_assert_int_eq(synth_parse_args(9, ok, &o, &err), 0);
    ck_assert_str_eq(o.out, "x");
    ck_assert_int_eq(o.n, 50);
    ck_assert_int_eq(o.heldout, 5); /* default n / 10 */
    ck_assert_int_eq(o.seed, 7);
    ck_assert_int_eq(o.size, 96);
    char *defaults[] = {"synth", "--n", "3", "--out", "y"};
    ck_assert_int_eq(synth_parse_args(5, defaults, &o, &err), 0);
    ck_assert_int_eq(o.size, 384);
    ck_assert_int_eq(o.max_shapes, 4);
    ck_assert_int_eq(o.max_groups, 4);
    ck_assert_int_eq(o.grid, 0);
    ck_assert(!o.grey);
    ck_assert_int_eq(o.heldout, 0);

    BAD_ARGS("--n 0 out of range", "--out", "x", "--n", "0");
    BAD_ARGS("--out DIR is required", "--n", "4");
    BAD_ARGS("--n N is required", "--out", "x");
    BAD_ARGS("--n '4x' is not an integer", "--out", "x", "--n", "4x");
    BAD_ARGS("unknown option --bogus", "--out", "x", "--n", "4", "--bogus");
    BAD_ARGS("--seed needs a value", "--out", "x", "--n", "4", "--seed");
    BAD_ARGS("--seed '-1'", "--out", "x", "--n", "4", "--seed", "-1");
    BAD_ARGS("--size 32 out of range", "--out", "x", "--n", "4", "--size", "32");
    BAD_ARGS("--heldout -2 out of range", "--out", "x", "--n", "4", "--heldout", "-2");
    BAD_ARGS("--out is empty", "--out", "", "--n", "4");
    BAD_ARGS("--max-shapes 5 out of range", "--out", "x", "--n", "4", "--max-shapes", "5");
    BAD_ARGS("--max-groups 0 out of range", "--out", "x", "--n", "4", "--max-groups", "0");
    BAD_ARGS("--grid 1 out of range", "--out", "x", "--n", "4", "--grid", "1");
    BAD_ARGS("--background 'dark' is not light or grey", "--out", "x", "--n", "4",
             "--background", "dark");
    BAD_ARGS("--radius '30' is not LO:HI", "--out", "x", "--n", "4", "--radius", "30");
    BAD_ARGS("--radius '40:30' is not LO:HI", "--out", "x", "--n", "4", "--radius", "40:30");
    BAD_ARGS("--radius '5:30' is not LO:HI", "--out", "x", "--n", "4", "--radius", "5:30");
    BAD_ARGS("--radius '30:51' is not LO:HI", "--out", "x", "--n", "4", "--radius", "30:51");
    BAD_ARGS("--radius '30:40x' is not LO:HI", "--out", "x", "--n", "4", "--radius", "30:40x");
    char *simple[] = {"synth", "--out", "x", "--n", "4", "--max-shapes", "2", "--max-groups", "1",
                      "--grid", "3", "--background", "grey", "--radius", "35:45"};
    ck_assert_int_eq(synth_parse_args(15, simple, &o, &err), 0);
    ck_assert_int_eq(o.radius_lo, 35);
    ck_assert_int_eq(o.radius_hi, 45);
    ck_assert_int_eq(o.max_shapes, 2);
    ck_assert_int_eq(o.max_groups, 1);
    ck_assert_int_eq(o.grid, 3);
    ck_assert(o.grey);
    /* a lattice with fewer cells than shapes, or cells too small */
    synth_opts crowded = {.out = "x", .n = 1, .size = 64, .grid = 8};
    ck_assert_int_eq(synth_generate(&crowded, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "grid 8"));
    /* a radius without a lattice */
    synth_opts loose = {.out = "x", .n = 1, .size = 64, .radius_lo = 30, .radius_hi = 30};
    ck_assert_int_eq(synth_generate(&loose, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "radius 30:30"));

    /* n = 0 passed straight to the generator, and an unwritable output. */
    synth_opts zero = {.out = "x", .n = 0, .size = 64};
    ck_assert_int_eq(synth_generate(&zero, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "n 0"));
    synth_opts bad = {.out = "/dev/null/sub", .n = 1, .size = 64};
    ck_assert_int_eq(synth_generate(&bad, &err), DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "/dev/null"));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("synth");
    TCase *tc = tcase_create("synth");
    tcase_add_test(tc, same_seed_same_bytes);
    tcase_add_test(tc, different_seeds_differ);
    tcase_add_test(tc, heldout_disjoint_and_independent);
    tcase_add_test(tc, llava_format_and_images);
    tcase_add_test(tc, meta_matches_text_and_pixels);
    tcase_add_test(tc, tokenizer_words_are_single_tokens);
    tcase_add_test(tc, simple_world_options);
    tcase_add_test(tc, grid_radius);
    tcase_add_test(tc, arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
