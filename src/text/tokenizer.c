/* Encoding and decoding with a loaded tokenizer (see tokenizer.h for the
 * pipeline). The per-thread state holds everything that is written while
 * encoding, so the tokenizer itself stays read-only. */
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer_impl.h"

/* The word cache: pre-token bytes -> ids. Text repeats its words, and the
 * hash lookup is far cheaper than a fresh BPE. Words longer than
 * CACHE_MAX_WORD bytes are rare and not cached. The table starts small
 * (cheap for a one-off short encode), doubles up to CACHE_MAX_SLOTS, and
 * once that is half full it is emptied and refills with the words in use. */
#define CACHE_MAX_WORD 128
#define CACHE_MIN_SLOTS 1024u
#define CACHE_MAX_SLOTS (1u << 17)
#define BIG_WORD (1u << 16)

typedef struct cache_slot {
    uint64_t h;
    uint32_t koff, ioff; /* into the key bytes / ids pools */
    uint16_t klen, nids; /* nids 0 marks a free slot */
} cache_slot;

struct dvl_tokenizer_state {
    const dvl_tokenizer *tok;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    dvl_bpe_scratch bpe;
    dvl_strbuf norm;     /* NFC of the piece being encoded */
    cache_slot *slots;
    uint32_t nslots, used;
    dvl_strbuf keys;
    dvl_ids vals;
};

void dvl_ids_free(dvl_ids *ids)
{
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

static bool ids_reserve(dvl_ids *ids, int64_t extra)
{
    if (ids->cap - ids->n >= extra)
        return true;
    int64_t cap = ids->cap ? ids->cap : 256;
    while (cap - ids->n < extra)
        cap *= 2;
    int32_t *v = realloc(ids->v, sizeof *v * (size_t)cap);
    if (!v)
        return false;
    ids->v = v;
    ids->cap = cap;
    return true;
}

dvl_tokenizer_state *dvl_tokenizer_state_new(const dvl_tokenizer *tok, dvl_err *err)
{
    dvl_tokenizer_state *st = calloc(1, sizeof *st);
    if (!st)
        goto oom;
    st->tok = tok;
    /* Only the whole match (ovector pair 0) is read. */
    st->md = pcre2_match_data_create(1, NULL);
    st->mctx = pcre2_match_context_create(NULL);
    /* A long whitespace run backtracks through \s+(?!\S); give the JIT more
     * stack than its 32 KiB default. */
    st->jit = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    st->slots = calloc(CACHE_MIN_SLOTS, sizeof *st->slots);
    if (!st->md || !st->mctx || !st->jit || !st->slots)
        goto oom;
    st->nslots = CACHE_MIN_SLOTS;
    pcre2_jit_stack_assign(st->mctx, NULL, st->jit);
    return st;
oom:
    dvl_tokenizer_state_free(st);
    dvl_errf(err, DVL_ENOMEM, "tokenizer: out of memory for encoding state");
    return NULL;
}

void dvl_tokenizer_state_free(dvl_tokenizer_state *st)
{
    if (!st)
        return;
    pcre2_match_data_free(st->md);
    pcre2_match_context_free(st->mctx);
    pcre2_jit_stack_free(st->jit);
    dvl_bpe_scratch_free(&st->bpe);
    dvl_strbuf_free(&st->norm);
    free(st->slots);
    dvl_strbuf_free(&st->keys);
    dvl_ids_free(&st->vals);
    free(st);
}

/* ---- word cache ---- */

static cache_slot *cache_find(dvl_tokenizer_state *st, uint64_t h, const char *w, size_t n)
{
    uint32_t mask = st->nslots - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        cache_slot *s = &st->slots[i];
        if (!s->nids || (s->h == h && s->klen == n && !memcmp(st->keys.p + s->koff, w, n)))
            return s;
    }
}

/* Double the table, or empty it when it is at its largest. */
static bool cache_make_room(dvl_tokenizer_state *st)
{
    if (st->nslots >= CACHE_MAX_SLOTS) {
        memset(st->slots, 0, sizeof *st->slots * st->nslots);
        st->used = 0;
        st->keys.n = 0;
        st->vals.n = 0;
        return true;
    }
    uint32_t n = st->nslots * 2;
    cache_slot *old = st->slots, *slots = calloc(n, sizeof *slots);
    if (!slots)
        return false;
    for (uint32_t i = 0; i < st->nslots; i++) {
        if (!old[i].nids)
            continue;
        uint32_t j = (uint32_t)old[i].h & (n - 1);
        while (slots[j].nids)
            j = (j + 1) & (n - 1);
        slots[j] = old[i];
    }
    free(old);
    st->slots = slots;
    st->nslots = n;
    return true;
}

/* ---- encoding ---- */

typedef struct enc {
    const dvl_tokenizer *tok;
    dvl_tokenizer_state *st;
    dvl_ids *out;
    dvl_err *err;
} enc;

static int oom(enc *e)
{
    return dvl_errf(e->err, DVL_ENOMEM, "tokenizer: out of memory while encoding");
}

/* BPE of one pre-token, through the cache. */
static int encode_word(enc *e, const char *w, size_t n)
{
    dvl_tokenizer_state *st = e->st;
    if (!ids_reserve(e->out, (int64_t)n))
        return oom(e);
    int32_t *dst = e->out->v + e->out->n;
    if (n > CACHE_MAX_WORD) {
        int64_t k = dvl_bpe_word(&e->tok->bpe, &st->bpe, w, n, dst);
        /* BPE scratch is ~80 bytes a byte of the word: do not keep
         * megabytes of it for the rest of the state's life. */
        if (n > BIG_WORD)
            dvl_bpe_scratch_free(&st->bpe);
        if (k < 0)
            return oom(e);
        e->out->n += k;
        return DVL_OK;
    }
    uint64_t h = dvl_text_hash(w, n);
    cache_slot *s = cache_find(st, h, w, n);
    if (s->nids) {
        memcpy(dst, st->vals.v + s->ioff, sizeof *dst * s->nids);
        e->out->n += s->nids;
        return DVL_OK;
    }
    int64_t k = dvl_bpe_word(&e->tok->bpe, &st->bpe, w, n, dst);
    if (k < 0)
        return oom(e);
    e->out->n += k;
    if (2 * (st->used + 1) > st->nslots) {
        if (!cache_make_room(st))
            return oom(e);
        s = cache_find(st, h, w, n);
    }
    uint32_t koff = (uint32_t)st->keys.n, ioff = (uint32_t)st->vals.n;
    if (!dvl_strbuf_append(&st->keys, w, n) || !ids_reserve(&st->vals, k))
        return oom(e);
    memcpy(st->vals.v + ioff, dst, sizeof *dst * (size_t)k);
    st->vals.n += k;
    *s = (cache_slot){h, koff, ioff, (uint16_t)n, (uint16_t)k};
    st->used++;
    return DVL_OK;
}

/* Split pre-tokenizer k ("Isolated"): each regex match is a piece and so is
 * each stretch of text between matches; the pieces go to splitter k+1, and
 * after the last splitter to BPE. The regex sees the whole piece it splits,
 * so lookaheads such as \s+(?!\S) look past the current match. */
static int pretokenize(enc *e, int k, const char *s, size_t n)
{
    if (n == 0)
        return DVL_OK;
    if (k == e->tok->n_splits)
        return encode_word(e, s, n);
    pcre2_code *re = e->tok->splits[k];
    size_t last = 0, off = 0;
    int rc;
    while (off < n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, e->st->md, e->st->mctx);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return dvl_errf(e->err, DVL_EINVAL, "tokenizer: pre-tokenizer regex %d failed at byte %zu: %s",
                            k, off, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->st->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* An empty match splits nothing; step one character on. */
            off = ms + 1;
            while (off < n && ((unsigned char)s[off] & 0xC0) == 0x80)
                off++;
            continue;
        }
        if (ms > last && (rc = pretokenize(e, k + 1, s + last, ms - last)))
            return rc;
        if ((rc = pretokenize(e, k + 1, s + ms, me - ms)))
            return rc;
        last = off = me;
    }
    return pretokenize(e, k + 1, s + last, n - last);
}

/* Code point at s[i] (valid UTF-8) and its length. */
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

/* Unicode White_Space, which is what Rust's char::is_whitespace tests and
 * so what lstrip/rstrip of an added token strip. */
static bool is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* The leftmost match of an added token in s[from..n), longest at that
 * position (the LeftmostLongest Aho-Corasick of tokenizers'
 * AddedVocabulary), widened by lstrip/rstrip over white space but never
 * before from. Returns the index in tok->added, or -1. */
static int find_added(const dvl_tokenizer *tok, const dvl_added_set *set, const char *str,
                      size_t n, size_t from, size_t *ms, size_t *me)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = from; i < n; i++) {
        for (int32_t k = set->first[s[i]]; k < set->first[s[i] + 1]; k++) {
            const dvl_added_token *t = &tok->added[set->order[k]];
            if (t->len > n - i || memcmp(s + i, t->content, t->len))
                continue;
            size_t a = i, b = i + t->len, len;
            if (t->lstrip) {
                while (a > from) {
                    size_t p = a - 1;
                    while (p > from && (s[p] & 0xC0) == 0x80)
                        p--;
                    if (!is_white_space(cp_at(s, p, &len)))
                        break;
                    a = p;
                }
            }
            if (t->rstrip)
                while (b < n && is_white_space(cp_at(s, b, &len)))
                    b += len;
            *ms = a;
            *me = b;
            return set->order[k];
        }
    }
    return -1;
}

/* Cut the added tokens of set out of s; the text between goes to next. */
static int split_added(enc *e, const dvl_added_set *set, const char *s, size_t n,
                       int (*next)(enc *, const char *, size_t))
{
    size_t pos = 0, ms, me;
    int a, rc;
    while (set->n && (a = find_added(e->tok, set, s, n, pos, &ms, &me)) >= 0) {
        if ((rc = next(e, s + pos, ms - pos)))
            return rc;
        if (!ids_reserve(e->out, 1))
            return oom(e);
        e->out->v[e->out->n++] = e->tok->added[a].id;
        pos = me;
    }
    return next(e, s + pos, n - pos);
}

static int encode_normalized(enc *e, const char *s, size_t n)
{
    return pretokenize(e, 0, s, n);
}

/* A stretch of raw text between added tokens: normalise, then cut out the
 * normalized added tokens, then pre-tokenize. */
static int encode_piece(enc *e, const char *s, size_t n)
{
    if (n == 0)
        return DVL_OK;
    if (e->tok->nfc) {
        e->st->norm.n = 0;
        if (dvl_utf8_nfc(&e->st->norm, s, n))
            return oom(e); /* s is valid UTF-8, so only memory can fail */
        s = e->st->norm.p;
        n = e->st->norm.n;
    }
    return split_added(e, &e->tok->norm, s, n, encode_normalized);
}

int dvl_tokenizer_encode_into(const dvl_tokenizer *tok, dvl_tokenizer_state *st,
                              const char *text, size_t len, dvl_ids *out, dvl_err *err)
{
    if (!tok || !st || !out || (!text && len))
        return dvl_errf(err, DVL_EINVAL, "tokenizer encode: NULL argument");
    if (st->tok != tok)
        return dvl_errf(err, DVL_EINVAL, "tokenizer encode: state belongs to another tokenizer");
    size_t ok = dvl_utf8_valid_prefix(text, len);
    if (ok < len)
        return dvl_errf(err, DVL_EINVAL,
                        "tokenizer encode: invalid UTF-8 at byte %zu of %zu (byte 0x%02x)", ok, len,
                        (unsigned char)text[ok]);
    if (len == 0)
        return DVL_OK;
    int64_t n0 = out->n;
    enc e = {tok, st, out, err};
    int rc = split_added(&e, &tok->raw, text, len, encode_piece);
    if (rc)
        out->n = n0;
    return rc;
}

int dvl_tokenizer_encode(const dvl_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                         int64_t *n, dvl_err *err)
{
    *ids = NULL;
    *n = 0;
    dvl_tokenizer_state *st = dvl_tokenizer_state_new(tok, err);
    if (!st)
        return err ? err->code : DVL_ENOMEM;
    dvl_ids out = {0};
    int rc = dvl_tokenizer_encode_into(tok, st, text, len, &out, err);
    if (!rc && !out.v && !ids_reserve(&out, 1))
        rc = dvl_errf(err, DVL_ENOMEM, "tokenizer encode: out of memory");
    dvl_tokenizer_state_free(st);
    if (rc) {
        dvl_ids_free(&out);
        return rc;
    }
    *ids = out.v;
    *n = out.n;
    return DVL_OK;
}

/* ---- decoding and lookups ---- */

char *dvl_tokenizer_decode(const dvl_tokenizer *tok, const int32_t *ids, int64_t n)
{
    dvl_strbuf raw = {0}, out = {0};
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size || tok->dec_len[id] < 0)
            continue;
        if (!dvl_strbuf_append(&raw, tok->dec_pool + tok->dec_off[id], (size_t)tok->dec_len[id]))
            goto oom;
    }
    /* Tokens split characters freely (one Chinese character is often two
     * tokens), so only the joined bytes can be checked for UTF-8. */
    if (dvl_utf8_valid_prefix(raw.p, raw.n) == raw.n) {
        if (!dvl_strbuf_append(&raw, "", 1))
            goto oom;
        return raw.p;
    }
    if (!dvl_utf8_lossy(&out, raw.p, raw.n) || !dvl_strbuf_append(&out, "", 1))
        goto oom;
    dvl_strbuf_free(&raw);
    return out.p;
oom:
    dvl_strbuf_free(&raw);
    dvl_strbuf_free(&out);
    return NULL;
}

int32_t dvl_tokenizer_token_id(const dvl_tokenizer *tok, const char *token)
{
    if (!token)
        return -1;
    size_t n = strlen(token);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, token, n))
            return tok->added[i].id;
    dvl_strbuf raw = {0};
    int32_t id = -1;
    if (dvl_bytelevel_to_bytes(&tok->bl, token, n, &raw))
        id = dvl_bpe_lookup(&tok->bpe, raw.p ? raw.p : "", raw.n);
    dvl_strbuf_free(&raw);
    return id;
}

const char *dvl_tokenizer_token_bytes(const dvl_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok->vocab_size || tok->dec_len[id] < 0)
        return NULL;
    *len = (size_t)tok->dec_len[id];
    return tok->dec_pool + tok->dec_off[id];
}

int64_t dvl_tokenizer_vocab_size(const dvl_tokenizer *tok)
{
    return tok->vocab_size;
}

bool dvl_tokenizer_is_special(const dvl_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->vocab_size && tok->special[id];
}

int32_t dvl_tokenizer_bos_id(const dvl_tokenizer *tok)
{
    return tok->bos_id;
}

int32_t dvl_tokenizer_eos_id(const dvl_tokenizer *tok)
{
    return tok->eos_id;
}

int32_t dvl_tokenizer_pad_id(const dvl_tokenizer *tok)
{
    return tok->pad_id;
}
