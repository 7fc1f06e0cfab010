/* Chat templates and label masks (src/text/chat.c) on known conversations.
 * The expected ids are written out by hand from the real Qwen tokenizer's
 * vocabulary (tests/data/qwen-tokenizer): 151644 <|im_start|>, 151645
 * <|im_end|>, 8948 "system", 872 "user", 77091 "assistant", 198 "\n",
 * 271 "\n\n", and the 21 ids of Qwen2.5's default system block, which are
 * the ones Hugging Face's apply_chat_template gives. The LLaDA template is
 * checked on a byte-level tokenizer written by the test (every byte its own
 * id), so each expected id can be read off the text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "text/chat.h"
#include "util.h"

#define IGN DVL_IGNORE_INDEX
#define IMG 151669 /* Qwen3 vocabulary size: the default image slot id */

static dvl_tokenizer *qwen;
static dvl_tokenizer_state *qst;

static void load_qwen(void)
{
    char dir[4096];
    dvl_err err = {0};
    qwen = dvl_tokenizer_load(tu_data_path("qwen-tokenizer", dir, sizeof dir), &err);
    if (!qwen)
        fprintf(stderr, "test_chat: %s\n", err.msg);
    qst = qwen ? dvl_tokenizer_state_new(qwen, &err) : NULL;
}

static void free_qwen(void)
{
    dvl_tokenizer_state_free(qst);
    dvl_tokenizer_free(qwen);
    qwen = NULL;
    qst = NULL;
}

/* "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a
 * helpful assistant.<|im_end|>\n" */
#define QWEN_SYS                                                                                  \
    151644, 8948, 198, 2610, 525, 1207, 16948, 11, 3465, 553, 54364, 14817, 13, 1446, 525, 264,   \
        10950, 17847, 13, 151645, 198
#define QWEN_SYS_LABELS                                                                           \
    IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, \
        IGN, IGN

static dvl_chat *make_chat(const dvl_tokenizer *tok, dvl_chat_opts *o)
{
    dvl_err err = {0};
    dvl_chat *c = dvl_chat_new(tok, o, &err);
    ck_assert_msg(c != NULL, "dvl_chat_new: %s", err.msg);
    return c;
}

static dvl_chat_turn T(dvl_chat_role r, const char *s)
{
    return (dvl_chat_turn){r, s, strlen(s)};
}

static void encode_ok(dvl_chat *c, dvl_tokenizer_state *st, const dvl_chat_turn *t, int n,
                      bool img, dvl_chat_out *o)
{
    dvl_err err = {0};
    int rc = dvl_chat_encode(c, st, t, n, img, o, &err);
    ck_assert_msg(rc == DVL_OK, "encode: %s", err.msg);
}

static void expect(const dvl_chat_out *o, const int32_t *ids, const int32_t *labels, int64_t n)
{
    int64_t k = 0;
    while (k < n && k < o->n && o->ids[k] == ids[k] && o->labels[k] == labels[k])
        k++;
    ck_assert_msg(o->n == n && k == n,
                  "got %lld ids, want %lld; first difference at %lld: id %d label %d, want id %d "
                  "label %d",
                  (long long)o->n, (long long)n, (long long)k, k < o->n ? o->ids[k] : -1,
                  k < o->n ? o->labels[k] : -1, k < n ? ids[k] : -1, k < n ? labels[k] : -1);
}
#define EXPECT(o, IDS, LABELS)                                                                    \
    do {                                                                                          \
        const int32_t i_[] = {IDS}, l_[] = {LABELS};                                              \
        ck_assert_int_eq(sizeof i_, sizeof l_);                                                   \
        expect(o, i_, l_, (int64_t)(sizeof i_ / sizeof *i_));                                     \
    } while (0)
#define L(...) __VA_ARGS__

/* ---- Qwen ---- */

/* One round with an image at the end of the question: the image moves to
 * the front ("<image>\n" + rest), the answer and its "<|im_end|>\n" are
 * supervised, the image slot counts image_tokens positions. */
START_TEST(qwen_image_round)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    dvl_chat *c = make_chat(qwen, &o);
    ck_assert_int_eq(dvl_chat_image_id(c), IMG);
    dvl_chat_turn t[] = {T(DVL_ROLE_USER, "What is in the picture?\n<image>"),
                         T(DVL_ROLE_ASSISTANT, "A cat.")};
    dvl_chat_out out = {0};
    encode_ok(c, qst, t, 2, true, &out);
    EXPECT(&out,
           L(QWEN_SYS, 151644, 872, 198, IMG, 198, 3838, 374, 304, 279, 6802, 30, 151645, 198,
             151644, 77091, 198, 32, 8251, 13, 151645, 198),
           L(QWEN_SYS_LABELS, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN,
             IGN, IGN, 32, 8251, 13, 151645, 198));
    ck_assert_int_eq(out.image_pos, 24);
    ck_assert_int_eq(out.seq_len, out.n + 728);
    ck_assert(!out.truncated);

    /* The same text without an image: "<image>" is plain text ("<",
     * "image", ">"), as in the reference, and nothing moves. */
    encode_ok(c, qst, t, 2, false, &out);
    EXPECT(&out,
           L(QWEN_SYS, 151644, 872, 198, 3838, 374, 304, 279, 6802, 5267, 27, 1805, 29, 151645,
             198, 151644, 77091, 198, 32, 8251, 13, 151645, 198),
           L(QWEN_SYS_LABELS, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN,
             IGN, IGN, IGN, 32, 8251, 13, 151645, 198));
    ck_assert_int_eq(out.image_pos, -1);
    ck_assert_int_eq(out.seq_len, out.n);
    dvl_chat_out_free(&out);
    dvl_chat_free(c);
}
END_TEST

/* LLaVA-NeXT's own labels: the whole assistant message and every "\n",
 * <|im_start|>, <|im_end|> wherever they are. With its system message "You
 * are a helpful assistant." these are LLaVA-OneVision's exact ids and
 * labels (the image slot aside, which it writes as -200). */
START_TEST(qwen_reference_labels)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    o.labels = DVL_LABELS_REFERENCE;
    o.system = "You are a helpful assistant.";
    dvl_chat *c = make_chat(qwen, &o);
    dvl_chat_turn t[] = {T(DVL_ROLE_USER, "<image>\nWhat is in the picture?"),
                         T(DVL_ROLE_ASSISTANT, "A cat.")};
    dvl_chat_out out = {0};
    encode_ok(c, qst, t, 2, true, &out);
    EXPECT(&out,
           L(151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
             IMG, 198, 3838, 374, 304, 279, 6802, 30, 151645, 198, 151644, 77091, 198, 32, 8251,
             13, 151645, 198),
           L(151644, IGN, 198, IGN, IGN, IGN, IGN, IGN, IGN, 151645, 198, 151644, IGN, 198, IGN,
             198, IGN, IGN, IGN, IGN, IGN, IGN, 151645, 198, 151644, 77091, 198, 32, 8251, 13,
             151645, 198));
    dvl_chat_out_free(&out);
    dvl_chat_free(c);
}
END_TEST

/* System messages: the conversation's own replaces the default; "" means
 * none; a leading gpt turn is dropped (source = source[1:]). */
START_TEST(qwen_system_and_leading_gpt)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    dvl_chat *c = make_chat(qwen, &o);
    dvl_chat_out out = {0};
    dvl_chat_turn t1[] = {T(DVL_ROLE_SYSTEM, "You are a helpful assistant."),
                          T(DVL_ROLE_ASSISTANT, "Hello"), T(DVL_ROLE_USER, "Hi"),
                          T(DVL_ROLE_ASSISTANT, "Yes")};
    encode_ok(c, qst, t1, 4, false, &out);
    EXPECT(&out,
           L(151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
             13048, 151645, 198, 151644, 77091, 198, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN,
             IGN, IGN, IGN, 9454, 151645, 198));
    dvl_chat_free(c);

    o.system = "";
    c = make_chat(qwen, &o);
    encode_ok(c, qst, t1 + 2, 2, false, &out);
    EXPECT(&out, L(151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, 9454, 151645, 198));
    ck_assert_int_eq(out.turns_kept, 2);
    dvl_chat_out_free(&out);
    dvl_chat_free(c);
}
END_TEST

/* Two rounds: both answers supervised. An answer starting with "\n" merges
 * with the header's "\n" into one "\n\n" token (271), which spans header
 * and content and so is supervised. */
START_TEST(qwen_multi_round_and_header_token)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    o.system = "";
    dvl_chat *c = make_chat(qwen, &o);
    dvl_chat_out out = {0};
    dvl_chat_turn t[] = {T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "Yes"),
                         T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "\nYes")};
    encode_ok(c, qst, t, 4, false, &out);
    EXPECT(&out,
           L(151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198, 9454, 151645, 198, 151644,
             872, 198, 13048, 151645, 198, 151644, 77091, 271, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, 9454, 151645, 198, IGN, IGN, IGN, IGN,
             IGN, IGN, IGN, IGN, 271, 9454, 151645, 198));
    dvl_chat_out_free(&out);
    dvl_chat_free(c);
}
END_TEST

/* Where "<image>" goes: a tag already at the start stays; one elsewhere is
 * cut, the rest Python-strip()ped (U+3000 is white space there), and put
 * after "<image>\n"; a tag alone becomes "<image>" (the "\n" is stripped). */
START_TEST(qwen_image_placement)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    o.system = "";
    dvl_chat *c = make_chat(qwen, &o);
    dvl_chat_out out = {0}, ref = {0};
    dvl_chat_turn a[] = {T(DVL_ROLE_USER, " \xe3\x80\x80Hi <image> "), T(DVL_ROLE_ASSISTANT, "Yes")};
    dvl_chat_turn b[] = {T(DVL_ROLE_USER, "<image>\nHi"), T(DVL_ROLE_ASSISTANT, "Yes")};
    encode_ok(c, qst, a, 2, true, &out);
    encode_ok(c, qst, b, 2, true, &ref);
    expect(&out, ref.ids, ref.labels, ref.n);
    EXPECT(&ref, L(151644, 872, 198, IMG, 198, 13048, 151645, 198, 151644, 77091, 198, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, 9454, 151645, 198));
    dvl_chat_turn d[] = {T(DVL_ROLE_USER, "<image>"), T(DVL_ROLE_ASSISTANT, "Yes")};
    dvl_chat_turn e[] = {T(DVL_ROLE_USER, "\n<image>\n"), T(DVL_ROLE_ASSISTANT, "Yes")};
    encode_ok(c, qst, d, 2, true, &ref);
    EXPECT(&ref, L(151644, 872, 198, IMG, 151645, 198, 151644, 77091, 198, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, 9454, 151645, 198));
    encode_ok(c, qst, e, 2, true, &out);
    expect(&out, ref.ids, ref.labels, ref.n);
    /* A tag in the middle: "Look: <image> here" -> "<image>\nLook:  here". */
    dvl_chat_turn f[] = {T(DVL_ROLE_USER, "Look: <image> here"), T(DVL_ROLE_ASSISTANT, "Yes")};
    dvl_chat_turn g[] = {T(DVL_ROLE_USER, "<image>\nLook:  here"), T(DVL_ROLE_ASSISTANT, "Yes")};
    encode_ok(c, qst, f, 2, true, &out);
    encode_ok(c, qst, g, 2, true, &ref);
    expect(&out, ref.ids, ref.labels, ref.n);
    ck_assert_int_eq(out.image_pos, 3);
    dvl_chat_out_free(&out);
    dvl_chat_out_free(&ref);
    dvl_chat_free(c);
}
END_TEST

static void encode_fails(dvl_chat *c, const dvl_chat_turn *t, int n, bool img, const char *what)
{
    dvl_chat_out out = {0};
    dvl_err err = {0};
    int rc = dvl_chat_encode(c, qst, t, n, img, &out, &err);
    ck_assert_int_eq(rc, DVL_EINVAL);
    ck_assert_msg(strstr(err.msg, what) != NULL, "message \"%s\" lacks \"%s\"", err.msg, what);
    dvl_chat_out_free(&out);
}

START_TEST(qwen_errors)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    dvl_chat *c = make_chat(qwen, &o);
    dvl_chat_turn no_gpt[] = {T(DVL_ROLE_USER, "<image>\nHi"), T(DVL_ROLE_USER, "Hi")};
    encode_fails(c, no_gpt, 2, true, "no assistant");
    /* a lone gpt turn is dropped as a leading non-user turn */
    dvl_chat_turn only_gpt[] = {T(DVL_ROLE_ASSISTANT, "Hi")};
    encode_fails(c, only_gpt, 1, false, "no assistant");
    encode_fails(c, NULL, 0, false, "no assistant");
    dvl_chat_turn two[] = {T(DVL_ROLE_USER, "<image><image>"), T(DVL_ROLE_ASSISTANT, "Hi")};
    encode_fails(c, two, 2, true, "2 <image> placeholders");
    dvl_chat_turn none[] = {T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "Hi")};
    encode_fails(c, none, 2, true, "0 <image> placeholders");
    dvl_chat_turn bad[] = {T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "caf\xc3")};
    encode_fails(c, bad, 2, false, "turn 1: invalid UTF-8 at byte 3");
    dvl_chat_free(c);

    ck_assert_int_eq(dvl_chat_role_parse("human"), DVL_ROLE_USER);
    ck_assert_int_eq(dvl_chat_role_parse("gpt"), DVL_ROLE_ASSISTANT);
    ck_assert_int_eq(dvl_chat_role_parse("system"), DVL_ROLE_SYSTEM);
    ck_assert_int_eq(dvl_chat_role_parse("bing"), -1);

    /* The LLaDA markers are not in Qwen's vocabulary. */
    o.tmpl = DVL_CHAT_LLADA;
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_chat_new(qwen, &o, &err));
    ck_assert_msg(strstr(err.msg, "<|startoftext|>") != NULL, "%s", err.msg);
}
END_TEST

/* max_len counts the image slot as image_tokens positions. Truncation keeps
 * whole turns up to an assistant turn; skip mode refuses instead; a prefix
 * that would lose the image is never taken. */
START_TEST(qwen_truncation)
{
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    o.system = "";
    o.image_tokens = 10;
    dvl_chat_turn t[] = {T(DVL_ROLE_USER, "<image>\nHi"), T(DVL_ROLE_ASSISTANT, "Yes"),
                         T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "Yes")};
    dvl_chat_out out = {0};
    /* 26 ids, 35 positions; the first round alone 14 ids, 23 positions */
    o.max_len = 35;
    dvl_chat *c = make_chat(qwen, &o);
    encode_ok(c, qst, t, 4, true, &out);
    ck_assert(!out.truncated);
    ck_assert_int_eq(out.n, 26);
    ck_assert_int_eq(out.seq_len, 35);
    ck_assert_int_eq(out.turns_kept, 4);
    dvl_chat_free(c);

    o.max_len = 34;
    c = make_chat(qwen, &o);
    encode_ok(c, qst, t, 4, true, &out);
    ck_assert(out.truncated);
    ck_assert_int_eq(out.turns_kept, 2);
    ck_assert_int_eq(out.seq_len, 14 + 9);
    EXPECT(&out, L(151644, 872, 198, IMG, 198, 13048, 151645, 198, 151644, 77091, 198, 9454, 151645, 198),
           L(IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, IGN, 9454, 151645, 198));
    dvl_chat_free(c);

    o.max_len = 22; /* not even the first round */
    c = make_chat(qwen, &o);
    dvl_err err = {0};
    ck_assert_int_eq(dvl_chat_encode(c, qst, t, 4, true, &out, &err), DVL_EINVAL);
    ck_assert(out.too_long);
    ck_assert_msg(strstr(err.msg, "too long: 35 positions > max_len 22"), "%s", err.msg);
    dvl_chat_free(c);

    o.max_len = 34;
    o.overflow = DVL_OVERFLOW_SKIP;
    c = make_chat(qwen, &o);
    ck_assert_int_eq(dvl_chat_encode(c, qst, t, 4, true, &out, &err), DVL_EINVAL);
    ck_assert(out.too_long);
    dvl_chat_free(c);

    /* The image in the second round: dropping that round would drop it. */
    o.overflow = DVL_OVERFLOW_TRUNCATE;
    c = make_chat(qwen, &o);
    dvl_chat_turn late[] = {T(DVL_ROLE_USER, "Hi"), T(DVL_ROLE_ASSISTANT, "Yes"),
                            T(DVL_ROLE_USER, "<image>\nHi"), T(DVL_ROLE_ASSISTANT, "Yes")};
    ck_assert_int_eq(dvl_chat_encode(c, qst, late, 4, true, &out, &err), DVL_EINVAL);
    ck_assert(out.too_long);
    /* Without an image the same prefix is fine. */
    encode_ok(c, qst, t + 2, 2, false, &out);
    ck_assert(!out.truncated);
    dvl_chat_free(c);
    dvl_chat_out_free(&out);
}
END_TEST

/* ---- LLaDA, on a byte-level tokenizer ---- */

enum { BOS = 300, SH = 301, EH = 302, EOT = 303 };

/* GPT-2's byte-to-unicode table for one byte, as UTF-8. */
static void byte_level(unsigned b, char *out)
{
    unsigned cp = b, extra = 0;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        for (unsigned c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
                extra++;
        cp = 256 + extra;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = '\0';
    }
}

/* A tokenizer whose ids are the bytes (no merges), with LLaDA's markers. */
static char *write_byte_tokenizer(void)
{
    static char dir[64];
    strcpy(dir, "/tmp/dvl_chat_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    cJSON *root = cJSON_CreateObject();
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    const char *marks[] = {"<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"};
    for (int i = 0; i < 4; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", BOS + i);
        cJSON_AddStringToObject(a, "content", marks[i]);
        cJSON_AddBoolToObject(a, "single_word", false);
        cJSON_AddBoolToObject(a, "lstrip", false);
        cJSON_AddBoolToObject(a, "rstrip", false);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddBoolToObject(a, "special", true);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", false);
    cJSON_AddBoolToObject(pre, "use_regex", false);
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    char bl[4];
    for (unsigned b = 0; b < 256; b++) {
        byte_level(b, bl);
        cJSON_AddNumberToObject(vocab, bl, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    char *json = cJSON_Print(root);
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    fclose(f);
    free(json);
    cJSON_Delete(root);
    return dir;
}

static void remove_tokenizer(const char *dir)
{
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
}

/* Append the bytes of s as ids, with label lab (or the byte itself). */
static int64_t bytes(int32_t *ids, int32_t *labels, int64_t k, const char *s, bool sup)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, k++) {
        ids[k] = *p;
        labels[k] = sup ? *p : IGN;
    }
    return k;
}

static int64_t one(int32_t *ids, int32_t *labels, int64_t k, int32_t id, bool sup)
{
    ids[k] = id;
    labels[k] = sup ? id : IGN;
    return k + 1;
}

/* <|startoftext|><|start_header_id|>user<|end_header_id|>\n\n<image>\nHi?
 * <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nOk.<|eot_id|>
 * with no system message by default, and with one when asked. */
START_TEST(llada_template)
{
    char *dir = write_byte_tokenizer();
    dvl_err err = {0};
    dvl_tokenizer *tok = dvl_tokenizer_load(dir, &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(tok, &err);
    dvl_chat_opts o;
    dvl_chat_opts_default(&o);
    o.tmpl = DVL_CHAT_LLADA;
    o.image_token_id = 299;
    dvl_chat *c = make_chat(tok, &o);
    ck_assert_ptr_null(dvl_chat_system(c));
    dvl_chat_turn t[] = {T(DVL_ROLE_USER, "Hi? <image>"), T(DVL_ROLE_ASSISTANT, "Ok.")};
    dvl_chat_out out = {0};
    encode_ok(c, st, t, 2, true, &out);
    int32_t ids[128], labels[128];
    int64_t k = 0;
    k = one(ids, labels, k, BOS, false);
    k = one(ids, labels, k, SH, false);
    k = bytes(ids, labels, k, "user", false);
    k = one(ids, labels, k, EH, false);
    k = bytes(ids, labels, k, "\n\n", false);
    k = one(ids, labels, k, 299, false);
    k = bytes(ids, labels, k, "\nHi?", false);
    k = one(ids, labels, k, EOT, false);
    int64_t round1 = k;
    k = one(ids, labels, k, SH, false);
    k = bytes(ids, labels, k, "assistant", false);
    k = one(ids, labels, k, EH, false);
    k = bytes(ids, labels, k, "\n\n", false);
    k = bytes(ids, labels, k, "Ok.", true);
    k = one(ids, labels, k, EOT, true);
    expect(&out, ids, labels, k);
    ck_assert_int_eq(out.image_pos, 9);

    /* Reference labels: the whole assistant message and every marker. */
    dvl_chat_free(c);
    o.labels = DVL_LABELS_REFERENCE;
    c = make_chat(tok, &o);
    encode_ok(c, st, t, 2, true, &out);
    for (int64_t i = 0; i < k; i++)
        labels[i] = i >= round1 || ids[i] >= BOS ? ids[i] : IGN;
    expect(&out, ids, labels, k);
    dvl_chat_free(c);

    /* A system message takes the <|startoftext|>. */
    o.labels = DVL_LABELS_ASSISTANT;
    o.system = "S";
    c = make_chat(tok, &o);
    encode_ok(c, st, t, 2, false, &out);
    k = 0;
    k = one(ids, labels, k, BOS, false);
    k = one(ids, labels, k, SH, false);
    k = bytes(ids, labels, k, "system", false);
    k = one(ids, labels, k, EH, false);
    k = bytes(ids, labels, k, "\n\nS", false);
    k = one(ids, labels, k, EOT, false);
    k = one(ids, labels, k, SH, false);
    k = bytes(ids, labels, k, "user", false);
    k = one(ids, labels, k, EH, false);
    k = bytes(ids, labels, k, "\n\nHi? <image>", false);
    k = one(ids, labels, k, EOT, false);
    k = one(ids, labels, k, SH, false);
    k = bytes(ids, labels, k, "assistant", false);
    k = one(ids, labels, k, EH, false);
    k = bytes(ids, labels, k, "\n\n", false);
    k = bytes(ids, labels, k, "Ok.", true);
    k = one(ids, labels, k, EOT, true);
    expect(&out, ids, labels, k);
    dvl_chat_free(c);

    dvl_chat_out_free(&out);
    dvl_tokenizer_state_free(st);
    dvl_tokenizer_free(tok);
    remove_tokenizer(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("chat");
    TCase *q = tcase_create("qwen");
    tcase_add_unchecked_fixture(q, load_qwen, free_qwen);
    tcase_add_test(q, qwen_image_round);
    tcase_add_test(q, qwen_reference_labels);
    tcase_add_test(q, qwen_system_and_leading_gpt);
    tcase_add_test(q, qwen_multi_round_and_header_token);
    tcase_add_test(q, qwen_image_placement);
    tcase_add_test(q, qwen_errors);
    tcase_add_test(q, qwen_truncation);
    suite_add_tcase(s, q);
    TCase *l = tcase_create("llada");
    tcase_add_test(l, llada_template);
    suite_add_tcase(s, l);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
