/* Prepared datasets end to end: dvl_dataset_build (dvl-prep build) on a
 * small LLaVA file with PNG and JPEG images, text-only samples and a table
 * of bad records, then the loader: every sample exactly once per epoch
 * across 1, 2 and 3 ranks, batch contents against the chat encoder and the
 * SigLIP preprocessing done independently here, exact resume, block
 * padding; the build's resume after an interruption, thread-count
 * independence, malformed input files, checksum mismatch on open.
 * Images are 32 px and image slots 16 positions, so the suite stays fast. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hdf5.h>

#include "core/rng.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/loader.h"
#include "io/shard.h"
#include "text/chat.h"
#include "util.h"

enum { SIZE = 32, IMG_TOKENS = 16, SHARD = 4 };

/* ---- the test data ---- */

typedef struct rec {
    const char *json; /* one line */
    const char *id;   /* NULL: bad record */
    const char *kind; /* bad records: the report's kind */
} rec;

/* Good records have an id; bad ones the kind of skip they must get. */
static const rec recs[] = {
    {"{\"id\":\"g0\",\"image\":\"img0.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nWhat is this?\"},{\"from\":\"gpt\",\"value\":\"A square.\"}]}", "g0", NULL},
    {"{\"id\":\"b0\",\"image\":\"nope.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nHi\"},{\"from\":\"gpt\",\"value\":\"Hi\"}]}", NULL, "missing_image"},
    {"{\"id\":\"g1\",\"image\":\"img1.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"Describe <image> please\"},{\"from\":\"gpt\",\"value\":\"Red.\"},{\"from\":\"human\",\"value\":\"More?\"},{\"from\":\"gpt\",\"value\":\"Blue and green.\"}]}", "g1", NULL},
    {"{\"id\":\"g2\",\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"},{\"from\":\"gpt\",\"value\":\"Hello!\"}]}", "g2", NULL},
    {"{\"id\":\"b1\",\"image\":\"broken.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"x\"}]}", NULL, "bad_image"},
    {"{\"id\":\"g3\",\"image\":\"img2.png\",\"conversations\":[{\"from\":\"system\",\"value\":\"Be brief.\"},{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"Ok.\"}]}", "g3", NULL},
    {"{\"id\":\"b2\",\"image\":\"notimage.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"x\"}]}", NULL, "bad_image"},
    {"{\"id\":\"g4\",\"image\":\"gray.jpg\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nGray?\"},{\"from\":\"gpt\",\"value\":\"Yes.\"}]}", "g4", NULL},
    {"{\"id\":\"b3\",\"image\":\"img3.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"human\",\"value\":\"and?\"}]}", NULL, "malformed"},
    {"{\"id\":\"b4\",\"conversations\":{\"from\":\"human\"}}", NULL, "malformed"},
    {"{\"id\":17,\"image\":[\"img3.png\"],\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nCount.\"},{\"from\":\"gpt\",\"value\":\"Three.\"}]}", "17", NULL},
    {"{\"id\":\"b5\",\"conversations\":[{\"from\":3,\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"b6\",\"conversations\":[{\"from\":\"human\",\"value\":4},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"g6\",\"image\":\"img4.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"What shape? <image>\"},{\"from\":\"gpt\",\"value\":\"A circle, small and round.\"}]}", "g6", NULL},
    {"{\"id\":\"b7\",\"conversations\":[{\"from\":\"bing\",\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":{\"a\":1},\"conversations\":[{\"from\":\"human\",\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"g7\",\"conversations\":[{\"from\":\"human\",\"value\":\"2+2?\"},{\"from\":\"gpt\",\"value\":\"4\"},{\"from\":\"human\",\"value\":\"3+3?\"},{\"from\":\"gpt\",\"value\":\"6\"}]}", "g7", NULL},
    {"{\"id\":\"b9\",\"image\":[\"img5.png\",\"img6.png\"],\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"g8\",\"image\":\"img5.png\",\"conversations\":[{\"from\":\"gpt\",\"value\":\"dropped\"},{\"from\":\"human\",\"value\":\"<image>\\nColour?\"},{\"from\":\"gpt\",\"value\":\"Green.\"}]}", "g8", NULL},
    {"{\"id\":\"b10\",\"image\":\"img6.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"no tag\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"[1,2,3]", NULL, "malformed"},
    {"{\"id\":\"g9\",\"image\":\"img6.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nSize?\"},{\"from\":\"gpt\",\"value\":\"Big.\"}]}", "g9", NULL},
    {"{\"image\":\"img7.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"g10\",\"image\":\"img7.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nEdges?\"},{\"from\":\"gpt\",\"value\":\"Four.\"}]}", "g10", NULL},
    {"{\"id\":\"b13\",\"image\":5,\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":\"g11\",\"image\":null,\"conversations\":[{\"from\":\"human\",\"value\":\"Name a colour.\"},{\"from\":\"gpt\",\"value\":\"Teal.\"}]}", "g11", NULL},
    {"{\"id\":\"g12\",\"image\":\"img8.png\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nAnd now?\"},{\"from\":\"gpt\",\"value\":\"Still a square.\"}]}", "g12", NULL},
    /* Numeric ids that are not integers, or too large to convert (found by
     * building under -fsanitize=float-cast-overflow: 1e300 was converted to
     * int64_t, and 0.5 failed the whole build as "out of memory"). */
    {"{\"id\":0.5,\"conversations\":[{\"from\":\"human\",\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
    {"{\"id\":1e300,\"conversations\":[{\"from\":\"human\",\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]}", NULL, "malformed"},
};
#define N_RECS ((int)(sizeof recs / sizeof *recs))

static int n_good(void)
{
    int n = 0;
    for (int i = 0; i < N_RECS; i++)
        n += recs[i].id != NULL;
    return n;
}

static dvl_tokenizer *tok;
static char tok_dir[4096];
static char work[64]; /* the suite's temporary folder */

static void path_in(char *buf, size_t n, const char *dir, const char *name)
{
    int k = snprintf(buf, n, "%s/%s", dir, name);
    ck_assert_msg(k > 0 && (size_t)k < n, "path %s/%s too long", dir, name);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert_int_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static char *read_file(const char *path, size_t *len)
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

/* Images of assorted shapes (non-square, so padding matters), a JPEG from
 * the image fixtures, a truncated PNG and a text file named .png. */
static void make_images(const char *dir)
{
    dvl_rng r;
    dvl_rng_seed(&r, 7);
    const int wh[9][2] = {{24, 17}, {17, 24}, {20, 20}, {40, 9}, {9, 40}, {33, 31}, {5, 5}, {64, 48}, {13, 29}};
    char path[4200];
    for (int i = 0; i < 9; i++) {
        dvl_image img;
        dvl_err err = {0};
        ck_assert_int_eq(dvl_image_alloc(&img, wh[i][0], wh[i][1], &err), 0);
        for (int k = 0; k < 3 * img.w * img.h; k++)
            img.data[k] = (uint8_t)(dvl_rng_u64(&r) >> 56);
        char name[32];
        snprintf(name, sizeof name, "img%d.png", i);
        path_in(path, sizeof path, dir, name);
        ck_assert_msg(dvl_image_write_png(path, &img, &err) == 0, "%s", err.msg);
        dvl_image_free(&img);
    }
    size_t n;
    path_in(path, sizeof path, dir, "img0.png");
    char *png = read_file(path, &n);
    path_in(path, sizeof path, dir, "broken.png");
    write_file(path, png, n / 2);
    free(png);
    path_in(path, sizeof path, dir, "notimage.png");
    write_file(path, "hello", 5);
    char src[4096];
    char *jpg = read_file(tu_data_path("images/gray.jpg", src, sizeof src), &n);
    ck_assert_msg(jpg != NULL, "cannot read %s", src);
    path_in(path, sizeof path, dir, "gray.jpg");
    write_file(path, jpg, n);
    free(jpg);
}

/* The records as a JSON array, one per line (record i on line i + 2). */
static void write_input(const char *path)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("[\n", f);
    for (int i = 0; i < N_RECS; i++)
        fprintf(f, "%s%s\n", recs[i].json, i + 1 < N_RECS ? "," : "");
    fputs("]\n", f);
    fclose(f);
}

static void setup(void)
{
    dvl_err err = {0};
    tu_data_path("qwen-tokenizer", tok_dir, sizeof tok_dir);
    tok = dvl_tokenizer_load(tok_dir, &err);
    if (!tok)
        fprintf(stderr, "test_prep: %s\n", err.msg);
    strcpy(work, "/tmp/dvl_prep_XXXXXX");
    if (!mkdtemp(work))
        perror("mkdtemp");
    char path[4200];
    path_in(path, sizeof path, work, "images");
    mkdir(path, 0777);
    make_images(path);
    path_in(path, sizeof path, work, "data.json");
    write_input(path);
}

static void teardown(void)
{
    nftw(work, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    dvl_tokenizer_free(tok);
    tok = NULL;
}

static void opts_for(dvl_build_opts *o, const char *out, char *json, char *images)
{
    dvl_build_opts_default(o);
    path_in(json, 4200, work, "data.json");
    path_in(images, 4200, work, "images");
    o->json = json;
    o->images = images;
    o->tokenizer = tok_dir;
    o->tok = tok;
    o->out = out;
    o->shard_size = SHARD;
    o->image_size = SIZE;
    o->threads = 2;
    o->chat.image_tokens = IMG_TOKENS;
}

static void build_ok(const dvl_build_opts *o, dvl_build_stats *st)
{
    dvl_err err = {0};
    int rc = dvl_dataset_build(o, st, &err);
    ck_assert_msg(rc == 0, "build: %s", err.msg);
}

static char *fresh_dir(const char *name)
{
    static char bufs[8][4200];
    static int k;
    char *d = bufs[k++ % 8];
    path_in(d, 4200, work, name);
    nftw(d, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return d;
}

/* The test records built with the default options into a fresh folder
 * work/name; the folder. */
static char *built_default(const char *name)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir(name);
    opts_for(&o, out, json, images);
    build_ok(&o, NULL);
    return out;
}

/* ---- checking the loader against an independent encoding ---- */

typedef struct expected {
    char *id;
    dvl_chat_out chat;
    bool image;
    float *pixels; /* [3, SIZE, SIZE] */
} expected;

/* What every good record must become, computed here from the record text
 * with the chat encoder and the image functions directly. */
static expected *expect_all(const dvl_chat_opts *co, int *count)
{
    dvl_err err = {0};
    dvl_chat *chat = dvl_chat_new(tok, co, &err);
    ck_assert_msg(chat != NULL, "%s", err.msg);
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(tok, &err);
    expected *ex = calloc((size_t)N_RECS, sizeof *ex);
    int n = 0;
    for (int i = 0; i < N_RECS; i++) {
        if (!recs[i].id)
            continue;
        expected *e = &ex[n++];
        e->id = strdup(recs[i].id);
        cJSON *j = cJSON_Parse(recs[i].json);
        cJSON *conv = cJSON_GetObjectItem(j, "conversations"), *img = cJSON_GetObjectItem(j, "image");
        if (cJSON_IsArray(img))
            img = cJSON_GetArrayItem(img, 0);
        dvl_chat_turn turns[8];
        int k = 0;
        cJSON *t;
        cJSON_ArrayForEach(t, conv)
        {
            const char *v = cJSON_GetObjectItem(t, "value")->valuestring;
            turns[k++] = (dvl_chat_turn){dvl_chat_role_parse(cJSON_GetObjectItem(t, "from")->valuestring), v, strlen(v)};
        }
        e->image = cJSON_IsString(img);
        ck_assert_int_eq(dvl_chat_encode(chat, st, turns, k, e->image, &e->chat, &err), 0);
        if (e->image) {
            char path[4200], sub[4200];
            path_in(sub, sizeof sub, work, "images");
            path_in(path, sizeof path, sub, img->valuestring);
            dvl_image im, px;
            ck_assert_int_eq(dvl_image_load(path, &im, &err), 0);
            ck_assert_int_eq(dvl_siglip_pixels(&im, SIZE, &px, &err), 0);
            e->pixels = malloc(sizeof *e->pixels * 3 * SIZE * SIZE);
            dvl_image_normalize(px.data, SIZE, SIZE, dvl_siglip_mean, dvl_siglip_std, e->pixels);
            dvl_image_free(&im);
            dvl_image_free(&px);
        }
        cJSON_Delete(j);
    }
    dvl_tokenizer_state_free(st);
    dvl_chat_free(chat);
    *count = n;
    return ex;
}

static void expected_free(expected *ex, int n)
{
    for (int i = 0; i < n; i++) {
        free(ex[i].id);
        free(ex[i].pixels);
        dvl_chat_out_free(&ex[i].chat);
    }
    free(ex);
}

/* Sample ids in global (shard) order, read back from the shards. */
static char **sample_ids(const char *dir, int64_t *n)
{
    dvl_manifest m;
    dvl_err err = {0};
    ck_assert_msg(dvl_manifest_read(dir, &m, &err) == 0, "%s", err.msg);
    char **ids = calloc((size_t)m.samples + 1, sizeof *ids);
    int64_t g = 0;
    for (int64_t k = 0; k < m.n_shards; k++) {
        dvl_shard *s = dvl_shard_open(m.shards[k].file, &err);
        ck_assert_msg(s != NULL, "%s", err.msg);
        for (int64_t i = 0; i < dvl_shard_samples(s); i++)
            ids[g++] = dvl_shard_sample_id(s, i, &err);
        dvl_shard_close(s);
    }
    ck_assert_int_eq(g, m.samples);
    *n = m.samples;
    dvl_manifest_free(&m);
    return ids;
}

static void check_batch(const dvl_batch *b, char **ids, const expected *ex, int n_ex, int32_t pad,
                        int32_t image_id)
{
    for (int64_t i = 0; i < b->n; i++) {
        const expected *e = NULL;
        for (int k = 0; k < n_ex; k++)
            if (!strcmp(ex[k].id, ids[b->sample[i]]))
                e = &ex[k];
        ck_assert_msg(e != NULL, "sample %lld has unknown id %s", (long long)b->sample[i],
                      ids[b->sample[i]]);
        const int32_t *ri = b->ids + i * b->len, *rl = b->labels + i * b->len;
        int64_t slot = e->chat.image_pos, extra = e->image ? IMG_TOKENS - 1 : 0;
        ck_assert_int_eq(b->seq_len[i], e->chat.n + extra);
        ck_assert_int_le(b->seq_len[i], b->len);
        for (int64_t q = 0; q < b->len; q++) {
            int32_t want_id, want_label;
            if (q >= b->seq_len[i]) {
                want_id = pad;
                want_label = DVL_IGNORE_INDEX;
            } else if (e->image && q >= slot && q < slot + IMG_TOKENS) {
                want_id = image_id;
                want_label = DVL_IGNORE_INDEX;
            } else {
                int64_t c = e->image && q >= slot + IMG_TOKENS ? q - extra : q;
                want_id = e->chat.ids[c];
                want_label = e->chat.labels[c];
            }
            ck_assert_msg(ri[q] == want_id && rl[q] == want_label,
                          "%s position %lld: id %d label %d, want %d %d", e->id, (long long)q,
                          ri[q], rl[q], want_id, want_label);
            ck_assert_int_eq(b->valid[i * b->len + q], q < b->seq_len[i]);
            ck_assert_int_eq(b->pos[i * b->len + q], q);
        }
        if (e->image) {
            ck_assert_int_ge(b->image_of[i], 0);
            ck_assert_int_eq(b->image_pos[i], slot);
            const float *px = b->images + (int64_t)b->image_of[i] * 3 * SIZE * SIZE;
            ck_assert_msg(!memcmp(px, e->pixels, sizeof *px * 3 * SIZE * SIZE),
                          "%s: image differs from dvl_siglip_pixels + dvl_image_normalize", e->id);
        } else {
            ck_assert_int_eq(b->image_of[i], -1);
            ck_assert_int_eq(b->image_pos[i], -1);
        }
    }
}

/* ---- tests ---- */

/* Build, then read epochs 0 and 1 with 1, 2 and 3 ranks: each epoch's
 * batches across ranks hold every sample exactly once, with the ids,
 * labels and pixels computed independently here; the two epochs are
 * ordered differently. */
START_TEST(build_and_load_every_sample_once)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir("ds");
    opts_for(&o, out, json, images);
    dvl_build_stats st;
    build_ok(&o, &st);
    int good = n_good();
    ck_assert_int_eq(st.records, N_RECS);
    ck_assert_int_eq(st.samples, good);
    ck_assert_int_eq(st.skipped, N_RECS - good);
    ck_assert_int_eq(st.shards, (N_RECS + SHARD - 1) / SHARD);
    ck_assert_int_eq(st.shards_built, st.shards);

    int n_ex;
    expected *ex = expect_all(&o.chat, &n_ex);
    ck_assert_int_eq(n_ex, good);
    int64_t n_ids;
    char **ids = sample_ids(out, &n_ids);
    int64_t first_order[64];
    for (int world = 1; world <= 3; world++) {
        for (int64_t epoch = 0; epoch < 2; epoch++) {
            int seen[64] = {0};
            int64_t order[64], n_order = 0;
            for (int rank = 0; rank < world; rank++) {
                dvl_loader_opts lo;
                dvl_loader_opts_default(&lo);
                lo.dir = out;
                lo.batch_size = 3;
                lo.rank = rank;
                lo.world = world;
                lo.seed = 42;
                dvl_loader_state start = {42, good, rank, world, epoch, 0};
                lo.start = &start;
                dvl_err err = {0};
                dvl_loader *l = dvl_loader_open(&lo, &err);
                ck_assert_msg(l != NULL, "%s", err.msg);
                int64_t nb = dvl_loader_batches_per_epoch(l, rank);
                ck_assert_int_eq(dvl_loader_share(l), (good - rank + world - 1) / world);
                for (int64_t k = 0; k < nb; k++) {
                    const dvl_batch *b;
                    ck_assert_msg(dvl_loader_next(l, &b, &err) == 0, "%s", err.msg);
                    ck_assert_int_eq(b->epoch, epoch);
                    ck_assert_int_eq(b->last, k == nb - 1);
                    for (int64_t i = 0; i < b->n; i++) {
                        ck_assert_int_lt(b->sample[i], good);
                        seen[b->sample[i]]++;
                        /* rank r holds permutation positions r, r + R, ... */
                        order[rank + (b->position + i) * world] = b->sample[i];
                        n_order++;
                    }
                    check_batch(b, ids, ex, n_ex, dvl_tokenizer_pad_id(tok), 151669);
                }
                /* the next batch starts the next epoch */
                const dvl_batch *b;
                ck_assert_int_eq(dvl_loader_next(l, &b, &err), 0);
                ck_assert_int_eq(b->epoch, epoch + 1);
                ck_assert_int_eq(b->position, 0);
                dvl_loader_free(l);
            }
            ck_assert_int_eq(n_order, good);
            for (int g = 0; g < good; g++)
                ck_assert_msg(seen[g] == 1, "world %d epoch %lld: sample %d seen %d times", world,
                              (long long)epoch, g, seen[g]);
            /* the interleaved ranks give back the epoch's one permutation */
            int64_t perm[64];
            dvl_loader_permutation(42, epoch, good, perm);
            ck_assert(!memcmp(order, perm, sizeof *perm * (size_t)good));
            if (epoch == 0)
                memcpy(first_order, order, sizeof *order * (size_t)good);
            else
                ck_assert(memcmp(first_order, order, sizeof *order * (size_t)good) != 0);
        }
    }
    for (int64_t i = 0; i < n_ids; i++)
        free(ids[i]);
    free(ids);
    expected_free(ex, n_ex);
}
END_TEST

/* The report lists every bad record, in input order, with its kind; the
 * manifest has the counts and the chat settings. */
START_TEST(bad_records_reported)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir("ds_report");
    opts_for(&o, out, json, images);
    o.shard_size = 5;
    dvl_build_stats st;
    build_ok(&o, &st);
    int missing = 0, bad = 0, malformed = 0;
    for (int i = 0; i < N_RECS; i++) {
        if (recs[i].id)
            continue;
        missing += !strcmp(recs[i].kind, "missing_image");
        bad += !strcmp(recs[i].kind, "bad_image");
        malformed += !strcmp(recs[i].kind, "malformed");
    }
    ck_assert_int_eq(st.missing_image, missing);
    ck_assert_int_eq(st.bad_image, bad);
    ck_assert_int_eq(st.malformed, malformed);
    ck_assert_int_eq(st.too_long + st.truncated, 0);

    char path[4200];
    path_in(path, sizeof path, out, "report.jsonl");
    char *text = read_file(path, NULL);
    ck_assert_ptr_nonnull(text);
    char *save, *line = strtok_r(text, "\n", &save);
    for (int i = 0; i < N_RECS; i++) {
        if (recs[i].id)
            continue;
        ck_assert_msg(line != NULL, "report ends before record %d", i);
        cJSON *j = cJSON_Parse(line);
        ck_assert_ptr_nonnull(j);
        ck_assert_int_eq(cJSON_GetObjectItem(j, "record")->valueint, i);
        ck_assert_int_eq(cJSON_GetObjectItem(j, "line")->valueint, i + 2);
        ck_assert_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "skipped");
        ck_assert_msg(!strcmp(cJSON_GetObjectItem(j, "kind")->valuestring, recs[i].kind),
                      "record %d: kind %s, want %s (%s)", i,
                      cJSON_GetObjectItem(j, "kind")->valuestring, recs[i].kind,
                      cJSON_GetObjectItem(j, "reason")->valuestring);
        ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "reason")));
        cJSON_Delete(j);
        line = strtok_r(NULL, "\n", &save);
    }
    ck_assert_ptr_null(line);
    free(text);

    /* a few reasons in words */
    text = read_file(path, NULL);
    ck_assert_ptr_nonnull(strstr(text, "image not found: "));
    ck_assert_ptr_nonnull(strstr(text, "no assistant (gpt) turn"));
    ck_assert_ptr_nonnull(strstr(text, "conversations[0].from \\\"bing\\\" is not human, gpt or system"));
    ck_assert_ptr_nonnull(strstr(text, "field \\\"conversations\\\" is not an array"));
    ck_assert_ptr_nonnull(strstr(text, "conversations[0].value is not a string"));
    ck_assert_ptr_nonnull(strstr(text, "field \\\"id\\\" is missing"));
    ck_assert_ptr_nonnull(strstr(text, "field \\\"id\\\" is not a string or an integer"));
    ck_assert_ptr_nonnull(strstr(text, "0 <image> placeholders for one image"));
    free(text);

    dvl_manifest m;
    dvl_err err = {0};
    ck_assert_msg(dvl_manifest_read(out, &m, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(m.samples, n_good());
    ck_assert_int_eq(m.records, N_RECS);
    ck_assert_int_eq(m.image_size, SIZE);
    ck_assert_int_eq(m.image_tokens, IMG_TOKENS);
    ck_assert_str_eq(m.template_name, "qwen");
    ck_assert_int_eq(m.pad_token_id, 151643);
    ck_assert_int_eq(m.vocab_size, dvl_tokenizer_vocab_size(tok));
    ck_assert_int_eq(m.n_shards, (N_RECS + 4) / 5);
    dvl_manifest_free(&m);
}
END_TEST

/* The shard files, sidecars and manifest are the same bytes whatever the
 * number of worker threads. */
START_TEST(build_independent_of_threads)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *a = fresh_dir("ds_t1"), *b = fresh_dir("ds_t3");
    opts_for(&o, a, json, images);
    o.threads = 1;
    build_ok(&o, NULL);
    o.out = b;
    o.threads = 3;
    build_ok(&o, NULL);
    for (int k = 0; k <= (N_RECS - 1) / SHARD; k++) {
        const char *ext[] = {"h5", "json"};
        for (int e = 0; e < 2; e++) {
            char name[64], pa[4200], pb[4200];
            snprintf(name, sizeof name, "shard-%05d.%s", k, ext[e]);
            path_in(pa, sizeof pa, a, name);
            path_in(pb, sizeof pb, b, name);
            size_t na, nb;
            char *x = read_file(pa, &na), *y = read_file(pb, &nb);
            ck_assert_msg(x && y && na == nb && !memcmp(x, y, na), "%s differs", name);
            free(x);
            free(y);
        }
    }
    char pa[4200], pb[4200];
    path_in(pa, sizeof pa, a, "manifest.json");
    path_in(pb, sizeof pb, b, "manifest.json");
    char *x = read_file(pa, NULL), *y = read_file(pb, NULL);
    ck_assert_str_eq(x, y);
    free(x);
    free(y);
}
END_TEST

static void snapshot(const char *dir, char **files, size_t *sizes, int n)
{
    for (int k = 0; k < n; k++) {
        char name[64], p[4200];
        snprintf(name, sizeof name, "shard-%05d.h5", k);
        path_in(p, sizeof p, dir, name);
        files[k] = read_file(p, &sizes[k]);
        ck_assert_ptr_nonnull(files[k]);
    }
}

/* An interrupted build: shard 1 missing, shard 2's sidecar missing, a
 * leftover .tmp, shard 0 corrupted (one byte changed), no manifest. The
 * rerun builds exactly those three again, keeps the rest, and ends with
 * the same bytes as an uninterrupted build. */
START_TEST(build_resumes)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir("ds_resume");
    opts_for(&o, out, json, images);
    dvl_build_stats st;
    build_ok(&o, &st);
    int n = (int)st.shards;
    char *before[16];
    size_t sizes[16];
    snapshot(out, before, sizes, n);

    char p[4200];
    path_in(p, sizeof p, out, "shard-00001.h5");
    ck_assert_int_eq(unlink(p), 0);
    path_in(p, sizeof p, out, "shard-00002.json");
    ck_assert_int_eq(unlink(p), 0);
    path_in(p, sizeof p, out, "shard-00003.h5.tmp");
    write_file(p, "partial", 7);
    path_in(p, sizeof p, out, "manifest.json");
    ck_assert_int_eq(unlink(p), 0);
    path_in(p, sizeof p, out, "shard-00000.h5");
    int fd = open(p, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    char c = 0x5a;
    ck_assert_int_eq(pwrite(fd, &c, 1, (off_t)sizes[0] / 2), 1);
    close(fd);

    build_ok(&o, &st);
    ck_assert_int_eq(st.shards_built, 3);
    ck_assert_int_eq(st.shards_kept, n - 3);
    ck_assert_int_eq(st.samples, n_good());
    char *after[16];
    size_t sizes2[16];
    snapshot(out, after, sizes2, n);
    for (int k = 0; k < n; k++) {
        ck_assert_msg(sizes[k] == sizes2[k] && !memcmp(before[k], after[k], sizes[k]),
                      "shard %d differs after the resumed build", k);
        free(before[k]);
        free(after[k]);
    }
    path_in(p, sizeof p, out, "shard-00003.h5.tmp");
    ck_assert_int_ne(access(p, F_OK), 0);
    path_in(p, sizeof p, out, "manifest.json");
    ck_assert_int_eq(access(p, F_OK), 0);

    /* Nothing to do the third time; other settings rebuild everything. */
    build_ok(&o, &st);
    ck_assert_int_eq(st.shards_built, 0);
    o.chat.image_tokens = IMG_TOKENS + 1;
    build_ok(&o, &st);
    ck_assert_int_eq(st.shards_built, n);
}
END_TEST

static void copy_batch(dvl_batch *dst, const dvl_batch *b)
{
    *dst = *b;
    size_t t = (size_t)(b->n * b->len), n = (size_t)b->n;
    size_t px = (size_t)b->n_images * 3 * (size_t)b->image_size * (size_t)b->image_size;
    dst->ids = malloc(t * sizeof *dst->ids);
    memcpy(dst->ids, b->ids, t * sizeof *dst->ids);
    dst->labels = malloc(t * sizeof *dst->labels);
    memcpy(dst->labels, b->labels, t * sizeof *dst->labels);
    dst->valid = malloc(t);
    memcpy(dst->valid, b->valid, t);
    dst->pos = malloc(t * sizeof *dst->pos);
    memcpy(dst->pos, b->pos, t * sizeof *dst->pos);
    dst->sample = malloc(n * sizeof *dst->sample);
    memcpy(dst->sample, b->sample, n * sizeof *dst->sample);
    dst->image_of = malloc(n * sizeof *dst->image_of);
    memcpy(dst->image_of, b->image_of, n * sizeof *dst->image_of);
    dst->images = malloc(px * sizeof *dst->images + 1);
    if (px)
        memcpy(dst->images, b->images, px * sizeof *dst->images);
}

static void free_copy(dvl_batch *b)
{
    free(b->ids);
    free(b->labels);
    free(b->valid);
    free(b->pos);
    free(b->sample);
    free(b->image_of);
    free(b->images);
}

static void same_batch(const dvl_batch *a, const dvl_batch *b, int k)
{
    ck_assert_msg(a->epoch == b->epoch && a->position == b->position && a->n == b->n &&
                      a->len == b->len && a->n_images == b->n_images && a->last == b->last,
                  "batch %d: epoch/position/shape differ", k);
    size_t t = (size_t)(a->n * a->len), n = (size_t)a->n;
    size_t px = (size_t)a->n_images * 3 * (size_t)a->image_size * (size_t)a->image_size;
    ck_assert_msg(!memcmp(a->ids, b->ids, t * 4) && !memcmp(a->labels, b->labels, t * 4) &&
                      !memcmp(a->valid, b->valid, t) && !memcmp(a->pos, b->pos, t * 4) &&
                      !memcmp(a->sample, b->sample, n * 8) &&
                      !memcmp(a->image_of, b->image_of, n * 4) &&
                      (px == 0 || !memcmp(a->images, b->images, px * 4)),
                  "batch %d differs", k);
}

/* The state after k batches, given to a new loader, yields exactly the
 * batches the first loader goes on with, across an epoch boundary, for
 * several ranks, whatever the prefetch depth. */
START_TEST(loader_resumes_exactly)
{
    char *out = built_default("ds_load");
    for (int rank = 0; rank < 2; rank++) {
        for (int k = 0; k < 5; k++) {
            dvl_loader_opts lo;
            dvl_loader_opts_default(&lo);
            lo.dir = out;
            lo.batch_size = 2;
            lo.seed = 1234;
            lo.rank = rank;
            lo.world = 2;
            lo.max_open = 2; /* shards are closed and reopened */
            dvl_err err = {0};
            dvl_loader *a = dvl_loader_open(&lo, &err);
            ck_assert_msg(a != NULL, "%s", err.msg);
            const dvl_batch *b;
            for (int i = 0; i < k; i++)
                ck_assert_int_eq(dvl_loader_next(a, &b, &err), 0);
            dvl_loader_state s = dvl_loader_tell(a);
            enum { M = 9 }; /* more than an epoch of this rank's batches */
            dvl_batch want[M];
            for (int i = 0; i < M; i++) {
                ck_assert_int_eq(dvl_loader_next(a, &b, &err), 0);
                copy_batch(&want[i], b);
            }
            ck_assert_int_gt(want[M - 1].epoch, want[0].epoch);
            dvl_loader_free(a);

            lo.start = &s;
            lo.prefetch = 1 + k % 3;
            dvl_loader *c = dvl_loader_open(&lo, &err);
            ck_assert_msg(c != NULL, "%s", err.msg);
            for (int i = 0; i < M; i++) {
                ck_assert_int_eq(dvl_loader_next(c, &b, &err), 0);
                same_batch(&want[i], b, i);
                free_copy(&want[i]);
            }
            dvl_loader_free(c);
        }
    }
    /* A state from another seed or world is refused. */
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = out;
    dvl_loader_state s = {99, n_good(), 0, 1, 0, 0};
    lo.start = &s;
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_loader_open(&lo, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "saved state"));
}
END_TEST

/* Padding to a multiple of the block size: pad id, label -100, invalid. */
START_TEST(loader_block_padding)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir("ds_block");
    opts_for(&o, out, json, images);
    build_ok(&o, NULL);
    int n_ex;
    expected *ex = expect_all(&o.chat, &n_ex);
    int64_t n_ids;
    char **ids = sample_ids(out, &n_ids);
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = out;
    lo.batch_size = 4;
    lo.block = 32;
    lo.pad_id = 7;
    lo.skip_verify = true;
    dvl_err err = {0};
    dvl_loader *l = dvl_loader_open(&lo, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    for (int k = 0; k < 4; k++) {
        const dvl_batch *b;
        ck_assert_int_eq(dvl_loader_next(l, &b, &err), 0);
        ck_assert_int_eq(b->len % 32, 0);
        int64_t longest = 0;
        for (int64_t i = 0; i < b->n; i++)
            longest = b->seq_len[i] > longest ? b->seq_len[i] : longest;
        ck_assert_int_lt(b->len - longest, 32);
        check_batch(b, ids, ex, n_ex, 7, 151669);
    }
    dvl_loader_free(l);
    for (int64_t i = 0; i < n_ids; i++)
        free(ids[i]);
    free(ids);
    expected_free(ex, n_ex);
}
END_TEST

/* One changed byte in a shard: opening the loader fails naming the file;
 * skip_verify (sizes only) opens it anyway, but not a shorter or a missing
 * shard. */
START_TEST(checksum_mismatch_on_open)
{
    char *out = built_default("ds_sum");
    char p[4200];
    path_in(p, sizeof p, out, "shard-00002.h5");
    size_t n;
    char *data = read_file(p, &n);
    data[n - 10] ^= 1;
    write_file(p, data, n);
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = out;
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_loader_open(&lo, &err));
    ck_assert_msg(strstr(err.msg, "shard-00002.h5: checksum mismatch") != NULL, "%s", err.msg);
    lo.skip_verify = true;
    dvl_loader *l = dvl_loader_open(&lo, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    dvl_loader_free(l);
    char msg[4300];
    write_file(p, data, n - 1);
    ck_assert_ptr_null(dvl_loader_open(&lo, &err));
    snprintf(msg, sizeof msg, "%s: %zu bytes; the manifest says %zu", p, n - 1, n);
    ck_assert_msg(strstr(err.msg, msg) != NULL, "%s", err.msg);
    unlink(p);
    ck_assert_ptr_null(dvl_loader_open(&lo, &err));
    ck_assert_msg(strstr(err.msg, "shard-00002.h5: No such file or directory") != NULL, "%s",
                  err.msg);
    free(data);
    /* No manifest: the error names it. */
    path_in(p, sizeof p, out, "manifest.json");
    unlink(p);
    ck_assert_ptr_null(dvl_loader_open(&lo, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "manifest.json"));
}
END_TEST

/* Write root to path as JSON, and free it. */
static void write_json(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    write_file(path, text, strlen(text));
    free(text);
    cJSON_Delete(root);
}

/* Numbers in manifest.json that no integer field can hold (1e300, 0.5, a
 * negative count) are errors naming the field, not conversions out of range
 * (undefined in C; caught by -fsanitize=float-cast-overflow in the sanitizer
 * build). */
START_TEST(manifest_bad_numbers)
{
    char *out = built_default("ds_numbers");
    char p[4200];
    path_in(p, sizeof p, out, "manifest.json");
    char *orig = read_file(p, NULL);
    static const struct {
        const char *object, *key, *field;
        double v;
    } cases[] = {
        {NULL, "samples", "samples", 1e300},
        {NULL, "tokens", "tokens", -1},
        {NULL, "records", "records", 0.5},
        {"tokenizer", "vocab_size", "tokenizer.vocab_size", 1e300},
        {"tokenizer", "vocab_size", "tokenizer.vocab_size", 0},
        {"template", "image_token_id", "template.image_token_id", -1e300},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *root = cJSON_Parse(orig);
        cJSON *obj = cases[i].object ? cJSON_GetObjectItemCaseSensitive(root, cases[i].object) : root;
        ck_assert_ptr_nonnull(cJSON_GetObjectItemCaseSensitive(obj, cases[i].key));
        cJSON_ReplaceItemInObjectCaseSensitive(obj, cases[i].key, cJSON_CreateNumber(cases[i].v));
        write_json(p, root);
        dvl_manifest m;
        dvl_err err = {0};
        ck_assert_int_ne(dvl_manifest_read(out, &m, &err), 0);
        char want[128];
        snprintf(want, sizeof want, "field %s is missing or invalid", cases[i].field);
        ck_assert_msg(strstr(err.msg, want) != NULL, "%g for %s: %s", cases[i].v, cases[i].field,
                      err.msg);
    }
    /* Removing the tokenizer's vocab_size is an error too (dvl-train checks
     * it against the model's embedding). */
    cJSON *root = cJSON_Parse(orig);
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "tokenizer"),
                                            "vocab_size");
    write_json(p, root);
    dvl_manifest m;
    dvl_err err = {0};
    ck_assert_int_ne(dvl_manifest_read(out, &m, &err), 0);
    ck_assert_msg(strstr(err.msg, "field tokenizer.vocab_size is missing or invalid") != NULL, "%s",
                  err.msg);
    free(orig);
}
END_TEST

/* A shard whose count attributes lie (found by fuzzing past the checksum:
 * samples = INT64_MAX overflowed the offsets' size): opening it fails with
 * one message naming the file, for a huge count and for one that disagrees
 * with the datasets' shapes. */
/* Write the int64 attribute `name` of the HDF5 file at path; its old value
 * into *was. */
static void set_attr_i64(const char *path, const char *name, int64_t v, int64_t *was)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = f >= 0 ? H5Aopen(f, name, H5P_DEFAULT) : -1;
    ck_assert_int_ge(a, 0);
    ck_assert_int_ge(H5Aread(a, H5T_NATIVE_INT64, was), 0);
    ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_INT64, &v), 0);
    H5Aclose(a);
    H5Fclose(f);
}

START_TEST(shard_bad_counts)
{
    char *out = built_default("ds_counts");
    char p[4200];
    path_in(p, sizeof p, out, "shard-00000.h5");
    const char *attr[] = {"samples", "samples", "samples", "tokens"};
    const int64_t lie[] = {INT64_MAX, ((int64_t)1 << 40) + 1, 0, 1};
    for (int k = 0; k < 4; k++) {
        int64_t was, lied;
        set_attr_i64(p, attr[k], lie[k], &was);
        dvl_err err = {0};
        dvl_shard *s = dvl_shard_open(p, &err);
        ck_assert_msg(s == NULL, "%s = %lld opened", attr[k], (long long)lie[k]);
        ck_assert_msg(strstr(err.msg, p) == err.msg && !strchr(err.msg, '\n'), "%s", err.msg);
        if (k < 2) /* beyond the bound: refused before anything is sized from it */
            ck_assert_msg(strstr(err.msg, "bad attributes") != NULL, "%s", err.msg);
        set_attr_i64(p, attr[k], was, &lied);
        ck_assert_int_eq(lied, lie[k]);
    }
    /* Restored: the shard opens again (so each refusal above was its lie's). */
    dvl_err err = {0};
    dvl_shard *s = dvl_shard_open(p, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    dvl_shard_close(s);
}
END_TEST

/* Over max_len: truncation keeps whole rounds (reported as truncated),
 * skip mode drops the record (too_long). */
START_TEST(overflow_truncate_and_skip)
{
    char json[4200], images[4200];
    dvl_build_opts o;
    char *out = fresh_dir("ds_len");
    opts_for(&o, out, json, images);
    /* g1: two rounds with an image; the first round alone is shorter. */
    o.chat.max_len = 60;
    dvl_build_stats st;
    build_ok(&o, &st);
    ck_assert_int_gt(st.truncated, 0);
    char p[4200];
    path_in(p, sizeof p, out, "report.jsonl");
    char *text = read_file(p, NULL);
    ck_assert_ptr_nonnull(strstr(text, "\"id\":\"g1\",\"status\":\"truncated\""));
    free(text);
    int64_t trunc = st.truncated, samples = st.samples;

    o.chat.overflow = DVL_OVERFLOW_SKIP;
    build_ok(&o, &st);
    ck_assert_int_eq(st.truncated, 0);
    ck_assert_int_eq(st.too_long, trunc);
    ck_assert_int_eq(st.samples, samples - trunc);

    /* every sample the loader gives fits */
    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = out;
    lo.batch_size = 5;
    dvl_err err = {0};
    dvl_loader *l = dvl_loader_open(&lo, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    for (int64_t k = 0; k < dvl_loader_batches_per_epoch(l, 0); k++) {
        const dvl_batch *b;
        ck_assert_int_eq(dvl_loader_next(l, &b, &err), 0);
        ck_assert_int_le(b->len, 60);
    }
    dvl_loader_free(l);
}
END_TEST

static void build_fails(const char *json_path, const char *what)
{
    dvl_build_opts o;
    char json[4200], images[4200];
    opts_for(&o, fresh_dir("ds_bad"), json, images);
    o.json = json_path;
    dvl_err err = {0};
    int rc = dvl_dataset_build(&o, NULL, &err);
    ck_assert_int_ne(rc, 0);
    ck_assert_msg(strstr(err.msg, what) != NULL, "\"%s\" lacks \"%s\"", err.msg, what);
}

/* Input files that stop the build, each with one message naming the file
 * and the position. */
START_TEST(malformed_input_files)
{
    char p[4200], msg[4400];
    path_in(p, sizeof p, work, "absent.json");
    snprintf(msg, sizeof msg, "%s: cannot open", p);
    build_fails(p, msg);

    path_in(p, sizeof p, work, "bad.jsonl");
    const char *lines = "{\"id\":\"a\",\"conversations\":[]}\n\n{\"id\": oops}\n{\"id\":\"c\"}\n";
    write_file(p, lines, strlen(lines));
    snprintf(msg, sizeof msg, "%s:3:8: malformed JSON", p);
    build_fails(p, msg);

    path_in(p, sizeof p, work, "bad_comma.json");
    const char *arr = "[\n{\"id\":\"a\"},\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n]\n";
    write_file(p, arr, strlen(arr));
    snprintf(msg, sizeof msg, "%s:4:1: expected ',' or ']'", p);
    build_fails(p, msg);

    path_in(p, sizeof p, work, "cut.json");
    const char *cut = "[\n{\"id\":\"a\"},\n{\"id\":\"b\",\"conversations\":[";
    write_file(p, cut, strlen(cut));
    snprintf(msg, sizeof msg, "%s:3:", p);
    build_fails(p, msg);

    path_in(p, sizeof p, work, "trail.json");
    const char *trail = "[{\"id\":\"a\"}] x";
    write_file(p, trail, strlen(trail));
    snprintf(msg, sizeof msg, "%s:1:14: unexpected characters after the array", p);
    build_fails(p, msg);

    path_in(p, sizeof p, work, "scalar.json");
    write_file(p, "42\n", 3);
    snprintf(msg, sizeof msg, "%s:1:1: expected a JSON array or JSON lines", p);
    build_fails(p, msg);

    /* An empty array is a valid, empty dataset. */
    path_in(p, sizeof p, work, "empty.json");
    write_file(p, "[ ]", 3);
    dvl_build_opts o;
    char json[4200], images[4200];
    opts_for(&o, fresh_dir("ds_empty"), json, images);
    o.json = p;
    dvl_build_stats st;
    build_ok(&o, &st);
    ck_assert_int_eq(st.samples + st.records + st.shards, 0);
}
END_TEST

/* The dvl-prep program beside this test (build/data/dvl-prep). */
static void prep_path(char *buf, size_t n)
{
    char self[4096];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(k, 0);
    self[k] = '\0';
    snprintf(buf, n, "%s/../data/dvl-prep", dirname(self));
}

/* Run dvl-prep with args; returns the exit status, stderr in err. */
static int run_prep(char *const args[], char *err, size_t n)
{
    char exe[4200], errpath[4200];
    prep_path(exe, sizeof exe);
    path_in(errpath, sizeof errpath, work, "stderr.txt");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        dup2(nul, 1);
        execv(exe, args);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    char *text = read_file(errpath, NULL);
    snprintf(err, n, "%s", text ? text : "");
    free(text);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The command line: a malformed file is exit 1 with one line on stderr; a
 * good one builds; bad usage is exit 2. */
START_TEST(cli_build)
{
    char bad[4200], json[4200], images[4200], err[2048];
    char *out = fresh_dir("ds_cli");
    path_in(bad, sizeof bad, work, "cli_bad.jsonl");
    const char *lines = "{\"id\":\"a\"}\n{\"id\":\"b\"\n";
    write_file(bad, lines, strlen(lines));
    char *a1[] = {"dvl-prep", "build", "--json", bad, "--images", work, "--tokenizer", tok_dir,
                  "--out", out, "--quiet", NULL};
    ck_assert_int_eq(run_prep(a1, err, sizeof err), 1);
    char want[4400];
    snprintf(want, sizeof want, "dvl-prep build: %s:2:", bad);
    ck_assert_msg(!strncmp(err, want, strlen(want)), "stderr: %s", err);
    ck_assert_msg(strchr(err, '\n') == err + strlen(err) - 1, "more than one line: %s", err);

    path_in(json, sizeof json, work, "data.json");
    path_in(images, sizeof images, work, "images");
    char *a2[] = {"dvl-prep", "build", "--json", json, "--images", images, "--tokenizer", tok_dir,
                  "--out", out, "--image-size", "32", "--shard-size", "8", "--threads", "2",
                  "--template", "qwen", "--max-len", "4096", "--quiet", NULL};
    ck_assert_int_eq(run_prep(a2, err, sizeof err), 0);
    dvl_manifest m;
    dvl_err e = {0};
    ck_assert_msg(dvl_manifest_read(out, &m, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(m.samples, n_good());
    ck_assert_int_eq(m.image_tokens, 729);
    dvl_manifest_free(&m);

    char *a3[] = {"dvl-prep", "build", "--json", json, "--template", "gpt", NULL};
    ck_assert_int_eq(run_prep(a3, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "dvl-prep build: bad value 'gpt' for --template") == err, "%s", err);
}
END_TEST

/* Bad usage of each command is one line naming it, exit 2 (no usage dump:
 * that is --help's, on stdout, exit 0). */
START_TEST(cli_usage)
{
    static const struct {
        const char *args[6], *want;
        int rc;
    } cases[] = {
        {{"build", "--json", "x.json", "--frob", "1"}, "dvl-prep build: unknown option --frob (", 2},
        {{"build", "--out"}, "dvl-prep build: --out needs a value (", 2},
        {{"build", "--quiet"}, "dvl-prep build: --json, --images, --tokenizer and --out are required", 2},
        {{"synth", "--out", "x", "--n", "2", "--frob"}, "dvl-prep synth: unknown option --frob (", 2},
        {{"synth", "--out", "x", "--n", "0"}, "dvl-prep synth: --n 0 out of range", 2},
        {{"synth", "--out", "/dev/null/x", "--n", "2"}, "dvl-prep synth: /dev/null", 1},
        {{"tokenize", "--frob"}, "dvl-prep tokenize: unknown option --frob (", 2},
        {{"tokenize"}, "dvl-prep tokenize: --tokenizer DIR is required", 2},
        {{"frob"}, "dvl-prep: unknown command 'frob'", 2},
        {{"build", "--help"}, "", 0},
        {{"synth", "--help"}, "", 0},
        {{"tokenize", "-h"}, "", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *argv[8] = {"dvl-prep"}, err[2048];
        for (int k = 0; k < 6 && cases[i].args[k]; k++)
            argv[k + 1] = (char *)cases[i].args[k];
        int rc = run_prep(argv, err, sizeof err);
        ck_assert_msg(rc == cases[i].rc, "%s %s: exit %d: %s", argv[1], argv[2], rc, err);
        if (!cases[i].rc) {
            ck_assert_msg(!err[0], "%s --help wrote to stderr: %s", argv[1], err);
            continue;
        }
        ck_assert_msg(strstr(err, cases[i].want) == err, "%s %s: %s", argv[1], argv[2], err);
        ck_assert_msg(strchr(err, '\n') == err + strlen(err) - 1, "more than one line: %s", err);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("prep");
    TCase *t = tcase_create("prep");
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 600);
    tcase_add_test(t, build_and_load_every_sample_once);
    tcase_add_test(t, bad_records_reported);
    tcase_add_test(t, build_independent_of_threads);
    tcase_add_test(t, build_resumes);
    tcase_add_test(t, loader_resumes_exactly);
    tcase_add_test(t, loader_block_padding);
    tcase_add_test(t, checksum_mismatch_on_open);
    tcase_add_test(t, manifest_bad_numbers);
    tcase_add_test(t, shard_bad_counts);
    tcase_add_test(t, overflow_truncate_and_skip);
    tcase_add_test(t, malformed_input_files);
    tcase_add_test(t, cli_build);
    tcase_add_test(t, cli_usage);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
