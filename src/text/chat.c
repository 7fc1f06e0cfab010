/* Chat templates and labels: see chat.h for the rules and their sources. */
#include "text/chat.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>

#include "text/utf8.h"

#define IMAGE_TAG "<image>"
#define IMAGE_TAG_LEN 7

/* Qwen2.5's default system message (its tokenizer_config chat template). */
static const char qwen_default_system[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

struct dvl_chat {
    const dvl_tokenizer *tok;
    dvl_chat_template tmpl;
    char *system; /* NULL: none */
    int32_t image_id;
    int64_t image_tokens, max_len;
    dvl_chat_overflow overflow;
    dvl_chat_labels labels;
    int32_t unmask[5]; /* DVL_LABELS_REFERENCE's always-supervised tokens */
    int n_unmask;
};

static const char *role_name[] = {"system", "user", "assistant"};

void dvl_chat_opts_default(dvl_chat_opts *o)
{
    *o = (dvl_chat_opts){.tmpl = DVL_CHAT_QWEN,
                         .system = NULL,
                         .image_token_id = -1,
                         .image_tokens = 729,
                         .max_len = 0,
                         .overflow = DVL_OVERFLOW_TRUNCATE,
                         .labels = DVL_LABELS_ASSISTANT};
}

const char *dvl_chat_template_name(dvl_chat_template t)
{
    return t == DVL_CHAT_LLADA ? "llada" : "qwen";
}

int dvl_chat_role_parse(const char *from)
{
    if (!from)
        return -1;
    if (!strcmp(from, "human") || !strcmp(from, "user"))
        return DVL_ROLE_USER;
    if (!strcmp(from, "gpt") || !strcmp(from, "assistant"))
        return DVL_ROLE_ASSISTANT;
    if (!strcmp(from, "system"))
        return DVL_ROLE_SYSTEM;
    return -1;
}

/* The id that text encodes to when it is one token, else -1. */
static int32_t single_id(const dvl_tokenizer *tok, const char *text, dvl_err *err)
{
    int32_t *ids;
    int64_t n;
    if (dvl_tokenizer_encode(tok, text, strlen(text), &ids, &n, err))
        return -2;
    int32_t id = n == 1 ? ids[0] : -1;
    free(ids);
    return id;
}

dvl_chat *dvl_chat_new(const dvl_tokenizer *tok, const dvl_chat_opts *o, dvl_err *err)
{
    dvl_err local;
    if (!err)
        err = &local;
    if (!tok || !o) {
        dvl_errf(err, DVL_EINVAL, "chat: NULL tokenizer or options");
        return NULL;
    }
    if (o->tmpl != DVL_CHAT_QWEN && o->tmpl != DVL_CHAT_LLADA) {
        dvl_errf(err, DVL_EINVAL, "chat: unknown template %d", (int)o->tmpl);
        return NULL;
    }
    if (o->image_tokens < 1 || o->max_len < 0) {
        dvl_errf(err, DVL_EINVAL, "chat: image_tokens %lld must be >= 1 and max_len %lld >= 0",
                 (long long)o->image_tokens, (long long)o->max_len);
        return NULL;
    }
    dvl_chat *c = calloc(1, sizeof *c);
    if (!c) {
        dvl_errf(err, DVL_ENOMEM, "chat: out of memory");
        return NULL;
    }
    c->tok = tok;
    c->tmpl = o->tmpl;
    c->image_tokens = o->image_tokens;
    c->max_len = o->max_len;
    c->overflow = o->overflow;
    c->labels = o->labels;
    const char *sys = o->system ? o->system : o->tmpl == DVL_CHAT_QWEN ? qwen_default_system : "";
    if (*sys && !(c->system = strdup(sys))) {
        dvl_errf(err, DVL_ENOMEM, "chat: out of memory");
        goto fail;
    }

    /* The markers are written into the rendered text; each must come back
     * as one added token, or the template would silently be plain text. */
    static const char *qwen_marks[] = {"<|im_start|>", "<|im_end|>"};
    static const char *llada_marks[] = {"<|startoftext|>", "<|start_header_id|>",
                                        "<|end_header_id|>", "<|eot_id|>"};
    const char **marks = o->tmpl == DVL_CHAT_QWEN ? qwen_marks : llada_marks;
    int n_marks = o->tmpl == DVL_CHAT_QWEN ? 2 : 4;
    for (int i = 0; i < n_marks; i++) {
        int32_t id = single_id(tok, marks[i], err);
        if (id == -2)
            goto fail;
        if (id < 0 || id != dvl_tokenizer_token_id(tok, marks[i])) {
            dvl_errf(err, DVL_EINVAL, "chat: template %s needs the token %s, which the tokenizer lacks",
                     dvl_chat_template_name(o->tmpl), marks[i]);
            goto fail;
        }
        c->unmask[c->n_unmask++] = id;
    }
    if (o->tmpl == DVL_CHAT_QWEN) {
        /* preprocess_qwen: unmask_tokens_idx = [198, im_start, im_end], 198
         * being Qwen's "\n". */
        int32_t nl = single_id(tok, "\n", err);
        if (nl == -2)
            goto fail;
        if (nl >= 0)
            c->unmask[c->n_unmask++] = nl;
    } else {
        /* preprocess_llada: convert_tokens_to_ids("\n\n") looks "\n\n" up
         * as a token string; byte-level vocabularies spell it "ĊĊ", so
         * this is normally -1 and nothing is added. */
        int32_t nn = dvl_tokenizer_token_id(tok, "\n\n");
        if (nn >= 0)
            c->unmask[c->n_unmask++] = nn;
    }

    c->image_id = o->image_token_id >= 0 ? o->image_token_id : dvl_chat_default_image_id(tok);
    return c;
fail:
    dvl_chat_free(c);
    return NULL;
}

void dvl_chat_free(dvl_chat *c)
{
    if (!c)
        return;
    free(c->system);
    free(c);
}

int32_t dvl_chat_default_image_id(const dvl_tokenizer *tok)
{
    int32_t id = dvl_tokenizer_token_id(tok, IMAGE_TAG);
    /* Hugging Face's add_tokens(["<image>"]) would give the next free id,
     * which is the vocabulary size. */
    return id >= 0 ? id : (int32_t)dvl_tokenizer_vocab_size(tok);
}

int32_t dvl_chat_image_id(const dvl_chat *c)
{
    return c->image_id;
}

const char *dvl_chat_system(const dvl_chat *c)
{
    return c->system;
}

void dvl_chat_out_free(dvl_chat_out *o)
{
    free(o->ids);
    free(o->labels);
    free(o->buf);
    free(o->turn_end);
    dvl_ids_free(&o->tmp);
    memset(o, 0, sizeof *o);
}

/* ---- helpers ---- */

static int out_reserve(dvl_chat_out *o, int64_t extra, dvl_err *err)
{
    if (o->cap - o->n >= extra)
        return DVL_OK;
    int64_t cap = o->cap ? o->cap : 256;
    while (cap - o->n < extra)
        cap *= 2;
    int32_t *ids = realloc(o->ids, sizeof *ids * (size_t)cap);
    if (ids)
        o->ids = ids;
    int32_t *labels = ids ? realloc(o->labels, sizeof *labels * (size_t)cap) : NULL;
    if (!labels)
        return dvl_errf(err, DVL_ENOMEM, "chat: out of memory for %lld ids", (long long)cap);
    o->labels = labels;
    o->cap = cap;
    return DVL_OK;
}

static int buf_reserve(dvl_chat_out *o, size_t n, dvl_err *err)
{
    if (o->buf_cap >= n)
        return DVL_OK;
    size_t cap = o->buf_cap ? o->buf_cap : 1024;
    while (cap < n)
        cap *= 2;
    char *p = realloc(o->buf, cap);
    if (!p)
        return dvl_errf(err, DVL_ENOMEM, "chat: out of memory for a %zu-byte message", n);
    o->buf = p;
    o->buf_cap = cap;
    return DVL_OK;
}

static size_t count_tags(const char *s, size_t n)
{
    size_t k = 0;
    for (const char *p = s, *e = s + n; (p = memmem(p, (size_t)(e - p), IMAGE_TAG, IMAGE_TAG_LEN));
         p += IMAGE_TAG_LEN)
        k++;
    return k;
}

/* Python's str.isspace: Unicode White_Space plus U+001C..U+001F (bidi
 * class B or S), which is what str.strip() removes. */
static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decode the UTF-8 character at s[i] (s is valid UTF-8, checked by the
 * caller); *len gets its byte length. */
static uint32_t cp_at(const unsigned char *s, size_t i, size_t *len)
{
    if (s[i] < 0x80) {
        *len = 1;
        return s[i];
    }
    if (s[i] < 0xE0) {
        *len = 2;
        return ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if (s[i] < 0xF0) {
        *len = 3;
        return ((uint32_t)(s[i] & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) |
               (s[i + 2] & 0x3F);
    }
    *len = 4;
    return ((uint32_t)(s[i] & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
           ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
}

/* s[*a..*b) with Python-strip()ped ends. */
static void py_strip(const char *str, size_t *a, size_t *b)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t len;
    while (*a < *b && py_space(cp_at(s, *a, &len)))
        *a += len;
    while (*b > *a) {
        size_t p = *b - 1;
        while (p > *a && (s[p] & 0xC0) == 0x80)
            p--;
        if (!py_space(cp_at(s, p, &len)))
            break;
        *b = p;
    }
}

static bool valid_utf8(const char *s, size_t n, size_t *bad)
{
    *bad = dvl_utf8_valid_prefix(s, n);
    return *bad == n;
}

/* Render one message into o->buf: header, content (with the image moved to
 * its start when move_image), footer. *hlen gets the header's length. */
static int render(const dvl_chat *c, dvl_chat_out *o, dvl_chat_role role, const char *text,
                  size_t len, bool first, bool move_image, size_t *total, size_t *hlen,
                  dvl_err *err)
{
    int rc = buf_reserve(o, len + 96, err);
    if (rc)
        return rc;
    char *b = o->buf;
    size_t k = 0;
    const char *r = role_name[role];
    if (c->tmpl == DVL_CHAT_QWEN) {
        k += (size_t)sprintf(b + k, "<|im_start|>%s\n", r);
    } else {
        if (first)
            k += (size_t)sprintf(b + k, "<|startoftext|>");
        k += (size_t)sprintf(b + k, "<|start_header_id|>%s<|end_header_id|>\n\n", r);
    }
    *hlen = k;
    if (move_image) {
        /* value.replace("<image>", "").strip(); "<image>\n" + value; .strip() */
        const char *p = memmem(text, len, IMAGE_TAG, IMAGE_TAG_LEN);
        size_t cut = (size_t)(p - text);
        size_t m = k + IMAGE_TAG_LEN + 1;
        memcpy(b + m, text, cut);
        memcpy(b + m + cut, p + IMAGE_TAG_LEN, len - cut - IMAGE_TAG_LEN);
        size_t a = m, e = m + len - IMAGE_TAG_LEN;
        py_strip(b, &a, &e);
        memmove(b + k + IMAGE_TAG_LEN + 1, b + a, e - a);
        memcpy(b + k, IMAGE_TAG "\n", IMAGE_TAG_LEN + 1);
        size_t end = k + IMAGE_TAG_LEN + 1 + (e - a);
        if (e == a) /* "<image>\n".strip() */
            end--;
        k = end;
    } else {
        memcpy(b + k, text, len);
        k += len;
    }
    k += (size_t)sprintf(b + k, c->tmpl == DVL_CHAT_QWEN ? "<|im_end|>\n" : "<|eot_id|>");
    *total = k;
    return DVL_OK;
}

/* Encode the rendered message o->buf[0..n) and append ids and labels.
 * Header tokens (ending at or before byte hlen) are unsupervised; the rest
 * is supervised when sup. "<image>" is cut out when images. */
static int encode_message(const dvl_chat *c, dvl_tokenizer_state *st, dvl_chat_out *o, size_t n,
                          size_t hlen, bool sup, bool sup_header, bool images, dvl_err *err)
{
    size_t pos = 0, off = 0; /* off: bytes of the tokens emitted so far */
    bool in_header = true;
    for (;;) {
        const char *p = images ? memmem(o->buf + pos, n - pos, IMAGE_TAG, IMAGE_TAG_LEN) : NULL;
        size_t end = p ? (size_t)(p - o->buf) : n;
        o->tmp.n = 0;
        int rc = dvl_tokenizer_encode_into(c->tok, st, o->buf + pos, end - pos, &o->tmp, err);
        if (rc || (rc = out_reserve(o, o->tmp.n + 1, err)))
            return rc;
        for (int64_t i = 0; i < o->tmp.n; i++) {
            int32_t id = o->tmp.v[i];
            bool header = false;
            if (in_header) {
                size_t tl = 0;
                dvl_tokenizer_token_bytes(c->tok, id, &tl);
                off += tl;
                if (off <= hlen)
                    header = true;
                else
                    in_header = false;
            }
            o->ids[o->n] = id;
            o->labels[o->n] = sup && (sup_header || !header) ? id : DVL_IGNORE_INDEX;
            o->n++;
        }
        in_header = false;
        if (!p)
            return DVL_OK;
        o->image_pos = o->n;
        o->ids[o->n] = c->image_id;
        o->labels[o->n] = DVL_IGNORE_INDEX;
        o->n++;
        pos = end + IMAGE_TAG_LEN;
    }
}

int dvl_chat_encode(const dvl_chat *c, dvl_tokenizer_state *st, const dvl_chat_turn *turns,
                    int n, bool has_image, dvl_chat_out *out, dvl_err *err)
{
    dvl_err local;
    if (!err)
        err = &local;
    if (!c || !st || !out || (n > 0 && !turns) || n < 0)
        return dvl_errf(err, DVL_EINVAL, "chat encode: NULL argument");
    out->n = 0;
    out->seq_len = 0;
    out->image_pos = -1;
    out->turns_kept = 0;
    out->truncated = false;
    out->too_long = false;

    /* The system message: the conversation's leading one, else ours. */
    int first = 0;
    const char *sys = c->system;
    size_t sys_len = sys ? strlen(sys) : 0;
    if (n > 0 && turns[0].role == DVL_ROLE_SYSTEM) {
        sys = turns[0].text;
        sys_len = turns[0].len;
        first = 1;
    }
    /* preprocess_qwen / preprocess_llada: `if roles[source[0]["from"]] !=
     * roles["human"]: source = source[1:]` */
    if (first < n && turns[first].role != DVL_ROLE_USER)
        first++;

    bool any_assistant = false;
    size_t tags = 0;
    for (int i = first; i < n; i++) {
        if (turns[i].role > DVL_ROLE_ASSISTANT)
            return dvl_errf(err, DVL_EINVAL, "turn %d: unknown role %d", i, (int)turns[i].role);
        if (!turns[i].text && turns[i].len)
            return dvl_errf(err, DVL_EINVAL, "turn %d: NULL text", i);
        size_t bad;
        if (!valid_utf8(turns[i].text, turns[i].len, &bad))
            return dvl_errf(err, DVL_EINVAL, "turn %d: invalid UTF-8 at byte %zu", i, bad);
        any_assistant |= turns[i].role == DVL_ROLE_ASSISTANT;
        if (has_image)
            tags += count_tags(turns[i].text, turns[i].len);
    }
    size_t bad;
    if (sys && !valid_utf8(sys, sys_len, &bad))
        return dvl_errf(err, DVL_EINVAL, "system message: invalid UTF-8 at byte %zu", bad);
    if (sys && has_image)
        tags += count_tags(sys, sys_len);
    if (!any_assistant)
        return dvl_errf(err, DVL_EINVAL, "no assistant (gpt) turn");
    if (has_image && tags != 1)
        return dvl_errf(err, DVL_EINVAL, "%zu <image> placeholders for one image", tags);

    int n_msg = (sys ? 1 : 0) + (n - first);
    if (out->turn_cap < n_msg) {
        int64_t *te = realloc(out->turn_end, sizeof *te * (size_t)n_msg);
        if (!te)
            return dvl_errf(err, DVL_ENOMEM, "chat: out of memory");
        out->turn_end = te;
        out->turn_cap = n_msg;
    }
    bool ref = c->labels == DVL_LABELS_REFERENCE;
    for (int m = 0; m < n_msg; m++) {
        bool is_sys = sys && m == 0;
        const dvl_chat_turn *t = is_sys ? NULL : &turns[first + m - (sys ? 1 : 0)];
        dvl_chat_role role = is_sys ? DVL_ROLE_SYSTEM : t->role;
        const char *text = is_sys ? sys : t->text;
        size_t len = is_sys ? sys_len : t->len;
        bool move = has_image && count_tags(text, len) == 1 &&
                    (len < IMAGE_TAG_LEN || memcmp(text, IMAGE_TAG, IMAGE_TAG_LEN));
        size_t total = 0, hlen = 0;
        if (render(c, out, role, text, len, m == 0, move, &total, &hlen, err))
            return err->code;
        bool sup = role == DVL_ROLE_ASSISTANT;
        if (encode_message(c, st, out, total, hlen, sup, ref, has_image, err))
            return dvl_err_prefix(err, "turn %d", is_sys ? 0 : first + m - (sys ? 1 : 0));
        out->turn_end[m] = out->n;
    }
    if (ref) {
        for (int64_t i = 0; i < out->n; i++)
            for (int k = 0; k < c->n_unmask; k++)
                if (out->ids[i] == c->unmask[k] && i != out->image_pos)
                    out->labels[i] = out->ids[i];
    }

    int64_t extra = c->image_tokens - 1;
    int64_t total = out->n + (out->image_pos >= 0 ? extra : 0);
    out->seq_len = total;
    out->turns_kept = n;
    if (c->max_len == 0 || total <= c->max_len)
        return DVL_OK;
    if (c->overflow == DVL_OVERFLOW_TRUNCATE) {
        /* The longest prefix of whole messages that ends with an assistant
         * turn, holds the image slot, and fits. */
        for (int m = n_msg - 1; m >= 0; m--) {
            bool is_sys = sys && m == 0;
            if (is_sys || turns[first + m - (sys ? 1 : 0)].role != DVL_ROLE_ASSISTANT)
                continue;
            int64_t len = out->turn_end[m];
            if (out->image_pos >= 0 && out->image_pos >= len)
                break; /* every shorter prefix loses the image too */
            if (len + (out->image_pos >= 0 ? extra : 0) <= c->max_len) {
                out->n = len;
                out->seq_len = len + (out->image_pos >= 0 ? extra : 0);
                out->truncated = true;
                out->turns_kept = first + m - (sys ? 1 : 0) + 1;
                return DVL_OK;
            }
        }
    }
    out->too_long = true;
    out->n = 0;
    return dvl_errf(err, DVL_EINVAL, "too long: %lld positions > max_len %lld%s", (long long)total,
                    (long long)c->max_len,
                    c->overflow == DVL_OVERFLOW_TRUNCATE ? " (no shorter prefix of whole turns fits)"
                                                         : "");
}
