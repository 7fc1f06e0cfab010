/* Reading a Hugging Face tokenizer.json (+ tokenizer_config.json) into a
 * dvl_tokenizer. Every field that changes the ids is checked; what dvl does
 * not implement is refused with DVL_EUNSUP naming the field, so a tokenizer
 * never loads and then silently encodes differently. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "text/tokenizer_impl.h"

/* Ids above this are refused: the decode tables are dense over ids. */
#define MAX_ID (1 << 26)

/* GPT-2's pre-tokenizer regex, which a ByteLevel pre-tokenizer with
 * use_regex=true applies (tokenizers' pre_tokenizers/byte_level.rs). */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static char *read_file(const char *path, size_t *len, bool *missing, dvl_err *err)
{
    char *buf = dvl_read_file(path, len, err);
    *missing = !buf && errno == ENOENT;
    return buf;
}

/* Parse a JSON file; NULL with an error naming the file and byte offset. */
static cJSON *parse_json_file(const char *path, bool *missing, dvl_err *err)
{
    size_t len;
    char *buf = read_file(path, &len, missing, err);
    if (!buf)
        return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - buf) : 0;
        dvl_errf(err, DVL_EIO, "%s: malformed JSON near byte %zu", path, at);
    } else if (!cJSON_IsObject(root)) {
        dvl_errf(err, DVL_EIO, "%s: top level is not a JSON object", path);
        cJSON_Delete(root);
        root = NULL;
    }
    free(buf);
    return root;
}

static const char *type_of(const cJSON *o)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* A boolean field: absent or null gives def; anything else not boolean is an error. */
static int get_bool(const cJSON *o, const char *key, bool def, bool *out, const char *path,
                    const char *field, dvl_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return DVL_OK;
    }
    if (!cJSON_IsBool(v))
        return dvl_errf(err, DVL_EINVAL, "%s: %s.%s is not a boolean", path, field, key);
    *out = cJSON_IsTrue(v);
    return DVL_OK;
}

/* An integral id in [0, MAX_ID). */
static int get_id(const cJSON *v, int32_t *id)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_ID) || d != floor(d))
        return -1;
    *id = (int32_t)d;
    return 0;
}

/* ---- model ---- */

/* Unsupported when field key of the model is present and not one of the
 * harmless values (null, "", false, 0). */
static int model_field_off(const cJSON *m, const char *key, const char *path, dvl_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v) ||
        (cJSON_IsString(v) && v->valuestring[0] == '\0') ||
        (cJSON_IsNumber(v) && v->valuedouble == 0))
        return DVL_OK;
    return dvl_errf(err, DVL_EUNSUP, "%s: model.%s is set; dvl's BPE does not support it", path,
                    key);
}

static int load_merges(dvl_tokenizer *tok, const cJSON *merges, const char *path, dvl_err *err)
{
    char what[4200];
    snprintf(what, sizeof what, "%s: model.merges", path);
    dvl_strbuf l = {0}, r = {0};
    int rc = DVL_OK;
    int32_t rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        const char *a = NULL, *b = NULL;
        size_t an = 0, bn = 0;
        if (cJSON_IsString(m)) {
            /* "a b": byte-level text never holds a raw space (it is Ġ), so
             * exactly one space separates the parts. */
            const char *s = m->valuestring, *sp = strchr(s, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = s;
                an = (size_t)(sp - s);
                b = sp + 1;
                bn = strlen(b);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring;
            b = cJSON_GetArrayItem(m, 1)->valuestring;
            an = strlen(a);
            bn = strlen(b);
        }
        if (!a) {
            rc = dvl_errf(err, DVL_EINVAL, "%s[%d] is neither \"a b\" nor [\"a\", \"b\"]", what,
                          rank);
            break;
        }
        l.n = r.n = 0;
        /* A part outside the byte-level alphabet is not a vocabulary entry
         * BPE can reach from bytes, so the merge could never apply. */
        if (dvl_bytelevel_to_bytes(&tok->bl, a, an, &l) &&
            dvl_bytelevel_to_bytes(&tok->bl, b, bn, &r)) {
            rc = dvl_bpe_add_merge(&tok->bpe, l.p, l.n, r.p, r.n, rank, what, err);
            if (rc)
                break;
        }
        rank++;
    }
    dvl_strbuf_free(&l);
    dvl_strbuf_free(&r);
    return rc;
}

/* Decode table entry for id: its bytes are appended to the decode pool. */
static int set_decode(dvl_tokenizer *tok, dvl_strbuf *pool, int32_t id, const char *s, size_t n,
                      dvl_err *err)
{
    tok->dec_off[id] = (int64_t)pool->n;
    tok->dec_len[id] = (int32_t)n;
    if (!dvl_strbuf_append(pool, s, n))
        return dvl_errf(err, DVL_ENOMEM, "tokenizer: out of memory");
    return DVL_OK;
}

/* The bytes a token string decodes to, as tokenizers' ByteLevel decoder
 * does: through the byte-level table when every character is in it,
 * otherwise the string's own UTF-8. */
static int token_text_bytes(const dvl_tokenizer *tok, const char *s, size_t n, dvl_strbuf *out,
                            dvl_err *err)
{
    out->n = 0;
    if (dvl_bytelevel_to_bytes(&tok->bl, s, n, out) || dvl_strbuf_append(out, s, n))
        return DVL_OK;
    return dvl_errf(err, DVL_ENOMEM, "tokenizer: out of memory");
}

static int load_model(dvl_tokenizer *tok, const cJSON *root, const char *path, dvl_err *err)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(m))
        return dvl_errf(err, DVL_EINVAL, "%s: no \"model\" object", path);
    const char *type = type_of(m);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (type ? strcmp(type, "BPE") : !(vocab && merges))
        return dvl_errf(err, DVL_EUNSUP, "%s: model.type '%s' is not supported (only BPE)", path,
                        type ? type : "(none)");
    static const char *off[] = {"dropout", "continuing_subword_prefix", "end_of_word_suffix",
                                "byte_fallback"};
    for (size_t i = 0; i < sizeof off / sizeof *off; i++) {
        int rc = model_field_off(m, off[i], path, err);
        if (rc)
            return rc;
    }
    bool ignore_merges = false;
    int rc = get_bool(m, "ignore_merges", false, &ignore_merges, path, "model", err);
    if (rc)
        return rc;
    if (!cJSON_IsObject(vocab))
        return dvl_errf(err, DVL_EINVAL, "%s: model.vocab is not an object", path);
    if (!cJSON_IsArray(merges))
        return dvl_errf(err, DVL_EINVAL, "%s: model.merges is not an array", path);

    /* Vocabulary tokens to raw bytes. All ids are collected first so the
     * decode table can be sized over vocabulary and added tokens. */
    int64_t nv = cJSON_GetArraySize(vocab);
    int32_t *ids = malloc(sizeof *ids * (size_t)(nv + 1));
    int64_t *offs = malloc(sizeof *offs * (size_t)(nv + 1));
    int32_t *lens = malloc(sizeof *lens * (size_t)(nv + 1));
    dvl_bpe_entry *ent = malloc(sizeof *ent * (size_t)(nv + 1));
    dvl_strbuf raw = {0}, dec = {0}, tmp = {0};
    if (!ids || !offs || !lens || !ent) {
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory for %lld tokens", path, (long long)nv);
        goto done;
    }
    int64_t k = 0, ne = 0;
    int32_t max_id = -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab)
    {
        if (get_id(v, &ids[k])) {
            rc = dvl_errf(err, DVL_EINVAL, "%s: model.vocab[\"%.200s\"] is not an id in [0, %d)",
                          path, v->string, MAX_ID);
            goto done;
        }
        if (ids[k] > max_id)
            max_id = ids[k];
        size_t n = strlen(v->string);
        offs[k] = (int64_t)raw.n;
        if (dvl_bytelevel_to_bytes(&tok->bl, v->string, n, &raw)) {
            lens[k] = (int32_t)(raw.n - (size_t)offs[k]);
            ne++;
        } else {
            /* Not byte-level text: BPE can never produce it, but decode
             * gives its UTF-8 (tokenizers' ByteLevel decoder fallback). */
            if (!dvl_strbuf_append(&raw, v->string, n)) {
                rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            lens[k] = -(int32_t)n - 1;
        }
        k++;
    }
    /* raw is final now, so its pointers are stable. */
    ne = 0;
    for (int64_t i = 0; i < k; i++)
        if (lens[i] >= 0)
            ent[ne++] = (dvl_bpe_entry){raw.p + offs[i], (size_t)lens[i], ids[i]};
    char what[4200];
    snprintf(what, sizeof what, "%s: model.vocab", path);
    rc = dvl_bpe_init(&tok->bpe, ent, ne, cJSON_GetArraySize(merges), what, err);
    if (rc)
        goto done;
    tok->bpe.ignore_merges = ignore_merges;
    rc = dvl_bpe_check_bytes(&tok->bpe, what, err);
    if (rc)
        goto done;
    rc = load_merges(tok, merges, path, err);
    if (rc)
        goto done;

    /* Decode table over vocabulary and added tokens (added ones win, as
     * in tokenizers' decode, which asks the added vocabulary first). */
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].id > max_id)
            max_id = tok->added[i].id;
    tok->vocab_size = (int64_t)max_id + 1;
    tok->dec_off = malloc(sizeof *tok->dec_off * (size_t)(tok->vocab_size + 1));
    tok->dec_len = malloc(sizeof *tok->dec_len * (size_t)(tok->vocab_size + 1));
    tok->special = calloc((size_t)tok->vocab_size + 1, 1);
    if (!tok->dec_off || !tok->dec_len || !tok->special) {
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int64_t i = 0; i < tok->vocab_size; i++)
        tok->dec_len[i] = -1;
    for (int64_t i = 0; i < k && !rc; i++) {
        int32_t n = lens[i] >= 0 ? lens[i] : -lens[i] - 1;
        if (tok->dec_len[ids[i]] >= 0)
            rc = dvl_errf(err, DVL_EINVAL, "%s: model.vocab: id %d is given to two tokens", path,
                          ids[i]);
        else
            rc = set_decode(tok, &dec, ids[i], raw.p + offs[i], (size_t)n, err);
    }
    for (int i = 0; i < tok->n_added && !rc; i++) {
        dvl_added_token *t = &tok->added[i];
        rc = token_text_bytes(tok, t->content, t->len, &tmp, err);
        if (!rc)
            rc = set_decode(tok, &dec, t->id, tmp.p, tmp.n, err);
        tok->special[t->id] = t->special;
    }
    if (!rc) {
        tok->dec_pool = dec.p;
        dec.p = NULL;
    }
done:
    free(ids);
    free(offs);
    free(lens);
    free(ent);
    dvl_strbuf_free(&raw);
    dvl_strbuf_free(&dec);
    dvl_strbuf_free(&tmp);
    return rc;
}

/* ---- normalizer, pre-tokenizer, decoder ---- */

static int load_normalizer(dvl_tokenizer *tok, const cJSON *root, const char *path, dvl_err *err)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (!n || cJSON_IsNull(n))
        return DVL_OK;
    const char *type = type_of(n);
    if (type && !strcmp(type, "NFC")) {
        tok->nfc = true;
        return DVL_OK;
    }
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        int i = 0;
        cJSON_ArrayForEach(e, list)
        {
            const char *t = type_of(e);
            if (!t || strcmp(t, "NFC"))
                return dvl_errf(err, DVL_EUNSUP,
                                "%s: normalizer.normalizers[%d].type '%s' is not supported "
                                "(only NFC)",
                                path, i, t ? t : "(none)");
            tok->nfc = true;
            i++;
        }
        return DVL_OK;
    }
    return dvl_errf(err, DVL_EUNSUP, "%s: normalizer.type '%s' is not supported (only NFC)", path,
                    type ? type : "(none)");
}

/* Unicode White_Space: what \s means to the Oniguruma/Rust regexes behind
 * tokenizers (and to JavaScript, except U+FEFF). PCRE2 10.42 in UCP mode
 * also counts U+180E MONGOLIAN VOWEL SEPARATOR, a space before Unicode 6.3,
 * so the pattern's \s and \S are spelled out with this list instead. */
#define WHITE_SPACE_LIST \
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}" \
    "\\x{205f}\\x{3000}"

/* Copy pattern p[0..n) to out with \s -> [list] and \S -> [^list] outside
 * character classes and \s -> list inside them. \S inside a class has no
 * such spelling and keeps PCRE2's meaning. Escapes, \Q...\E quoting and
 * POSIX [:name:] items are copied as they are. */
static bool spell_out_white_space(const char *p, size_t n, dvl_strbuf *out)
{
    static const char list[] = WHITE_SPACE_LIST;
    bool in_class = false;
    size_t class_start = 0; /* index just past "[" or "[^" */
    bool ok = true;
    for (size_t i = 0; i < n && ok;) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 'Q') { /* literal up to \E */
                const char *e = NULL;
                for (size_t j = i + 2; j + 1 < n; j++)
                    if (p[j] == '\\' && p[j + 1] == 'E') {
                        e = p + j + 2;
                        break;
                    }
                size_t len = e ? (size_t)(e - (p + i)) : n - i;
                ok = dvl_strbuf_append(out, p + i, len);
                i += len;
            } else if (d == 's' && in_class) {
                ok = dvl_strbuf_append(out, list, strlen(list));
                i += 2;
            } else if ((d == 's' || d == 'S') && !in_class) {
                ok = dvl_strbuf_append(out, d == 's' ? "[" : "[^", d == 's' ? 1 : 2) &&
                     dvl_strbuf_append(out, list, strlen(list)) && dvl_strbuf_append(out, "]", 1);
                i += 2;
            } else {
                ok = dvl_strbuf_append(out, p + i, 2);
                i += 2;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = i + 1 < n && p[i + 1] == '^' ? i + 2 : i + 1;
            ok = dvl_strbuf_append(out, p + i, class_start - i);
            i = class_start;
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            const char *e = strstr(p + i + 2, ":]");
            size_t len = e && (size_t)(e - p) + 2 <= n ? (size_t)(e - (p + i)) + 2 : 1;
            ok = dvl_strbuf_append(out, p + i, len);
            i += len;
            continue;
        }
        if (in_class && c == ']' && i != class_start) /* "[]" and "[^]" start with a literal ] */
            in_class = false;
        ok = dvl_strbuf_append(out, &c, 1);
        i++;
    }
    return ok && dvl_strbuf_append(out, "", 1);
}

static pcre2_code *compile_split(const char *pat, size_t len, bool literal, const char *path,
                                 const char *field, dvl_err *err)
{
    int ec;
    PCRE2_SIZE eoff;
    /* UCP makes \s, \w, \d and POSIX classes Unicode-aware, as in the
     * Rust/Oniguruma regexes the pattern was written for. */
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        dvl_errf(err, DVL_EINVAL, "%s: %s: regex error at offset %zu: %s", path, field,
                 (size_t)eoff, (const char *)msg);
    }
    return re;
}

/* Compile a Split pattern (as written first, so errors point into the
 * file's text) and add it to the pre-tokenizer chain. */
static int add_split(dvl_tokenizer *tok, const char *pat, size_t len, bool literal,
                     const char *path, const char *field, dvl_err *err)
{
    if (tok->n_splits >= DVL_TOK_MAX_SPLITS)
        return dvl_errf(err, DVL_EUNSUP, "%s: %s: more than %d Split pre-tokenizers", path, field,
                        DVL_TOK_MAX_SPLITS);
    pcre2_code *re = compile_split(pat, len, literal, path, field, err);
    if (!re)
        return err->code;
    if (!literal) {
        pcre2_code_free(re);
        dvl_strbuf spelled = {0};
        if (!spell_out_white_space(pat, len, &spelled)) {
            dvl_strbuf_free(&spelled);
            return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        }
        re = compile_split(spelled.p, spelled.n - 1, false, path, field, err);
        dvl_strbuf_free(&spelled);
        if (!re)
            return err->code;
    }
    /* JIT is an optional speed-up; without it pcre2_match interprets. */
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    tok->splits[tok->n_splits++] = re;
    return DVL_OK;
}

/* One pre-tokenizer of the chain; *byte_level is set by ByteLevel, which
 * must come last since later splits would see byte-level characters. */
static int load_pretok_one(dvl_tokenizer *tok, const cJSON *p, const char *field,
                           bool *byte_level, const char *path, dvl_err *err)
{
    const char *type = type_of(p);
    if (*byte_level)
        return dvl_errf(err, DVL_EUNSUP,
                        "%s: %s follows ByteLevel; only Splits before one ByteLevel are "
                        "supported",
                        path, field);
    if (type && !strcmp(type, "ByteLevel")) {
        bool prefix = false, use_regex = false;
        int rc = get_bool(p, "add_prefix_space", true, &prefix, path, field, err);
        if (!rc)
            rc = get_bool(p, "use_regex", true, &use_regex, path, field, err);
        if (rc)
            return rc;
        if (prefix)
            return dvl_errf(err, DVL_EUNSUP, "%s: %s.add_prefix_space true is not supported",
                            path, field);
        *byte_level = true;
        return use_regex ? add_split(tok, gpt2_regex, strlen(gpt2_regex), false, path, field, err)
                         : DVL_OK;
    }
    if (type && !strcmp(type, "Split")) {
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated"))
            return dvl_errf(err, DVL_EUNSUP, "%s: %s.behavior '%s' is not supported (only Isolated)",
                            path, field, cJSON_IsString(beh) ? beh->valuestring : "(none)");
        bool invert = false;
        int rc = get_bool(p, "invert", false, &invert, path, field, err);
        if (rc)
            return rc;
        if (invert)
            return dvl_errf(err, DVL_EUNSUP, "%s: %s.invert true is not supported", path, field);
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        char f[300];
        snprintf(f, sizeof f, "%s.pattern", field);
        if (cJSON_IsString(re))
            return add_split(tok, re->valuestring, strlen(re->valuestring), false, path, f, err);
        if (cJSON_IsString(lit) && lit->valuestring[0])
            return add_split(tok, lit->valuestring, strlen(lit->valuestring), true, path, f, err);
        return dvl_errf(err, DVL_EINVAL, "%s: %s has no Regex or String", path, f);
    }
    return dvl_errf(err, DVL_EUNSUP,
                    "%s: %s.type '%s' is not supported (only Split, ByteLevel, Sequence)", path,
                    field, type ? type : "(none)");
}

static int load_pre_tokenizer(dvl_tokenizer *tok, const cJSON *root, const char *path,
                              dvl_err *err)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!cJSON_IsObject(p))
        return dvl_errf(err, DVL_EUNSUP, "%s: pre_tokenizer is missing (need ByteLevel)", path);
    bool byte_level = false;
    const char *type = type_of(p);
    int rc;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        int i = 0;
        cJSON_ArrayForEach(e, list)
        {
            char field[64];
            snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%d]", i++);
            rc = load_pretok_one(tok, e, field, &byte_level, path, err);
            if (rc)
                return rc;
        }
    } else {
        rc = load_pretok_one(tok, p, "pre_tokenizer", &byte_level, path, err);
        if (rc)
            return rc;
    }
    if (!byte_level)
        return dvl_errf(err, DVL_EUNSUP, "%s: pre_tokenizer has no ByteLevel step", path);
    return DVL_OK;
}

static int load_decoder(const cJSON *root, const char *path, dvl_err *err)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const char *type = d ? type_of(d) : NULL;
    if (type && !strcmp(type, "ByteLevel"))
        return DVL_OK;
    return dvl_errf(err, DVL_EUNSUP, "%s: decoder.type '%s' is not supported (only ByteLevel)",
                    path, type ? type : "(none)");
}

/* ---- added tokens ---- */

static int cmp_added(const void *x, const void *y, void *ctx)
{
    const dvl_added_token *a = (const dvl_added_token *)ctx + *(const int32_t *)x;
    const dvl_added_token *b = (const dvl_added_token *)ctx + *(const int32_t *)y;
    unsigned ca = (unsigned char)a->content[0], cb = (unsigned char)b->content[0];
    if (ca != cb)
        return ca < cb ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1; /* longest first */
    return 0;
}

static int build_set(dvl_tokenizer *tok, dvl_added_set *set, bool normalized)
{
    set->order = malloc(sizeof *set->order * (size_t)(tok->n_added + 1));
    if (!set->order)
        return -1;
    set->n = 0;
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized)
            set->order[set->n++] = i;
    qsort_r(set->order, (size_t)set->n, sizeof *set->order, cmp_added, tok->added);
    int k = 0;
    for (int c = 0; c <= 256; c++) {
        while (k < set->n && (unsigned char)tok->added[set->order[k]].content[0] < c)
            k++;
        set->first[c] = k;
    }
    return 0;
}

static int load_added(dvl_tokenizer *tok, const cJSON *list, const char *path, dvl_err *err)
{
    if (!list || cJSON_IsNull(list))
        list = NULL;
    else if (!cJSON_IsArray(list))
        return dvl_errf(err, DVL_EINVAL, "%s: added_tokens is not an array", path);
    int n = list ? cJSON_GetArraySize(list) : 0;
    tok->added = calloc((size_t)n + 1, sizeof *tok->added);
    if (!tok->added)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    const cJSON *a;
    int i = 0;
    cJSON_ArrayForEach(a, list)
    {
        char field[64];
        snprintf(field, sizeof field, "added_tokens[%d]", i);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        dvl_added_token *t = &tok->added[i];
        if (!cJSON_IsString(content) || !content->valuestring[0])
            return dvl_errf(err, DVL_EINVAL, "%s: %s.content is not a non-empty string", path,
                            field);
        if (get_id(cJSON_GetObjectItemCaseSensitive(a, "id"), &t->id))
            return dvl_errf(err, DVL_EINVAL, "%s: %s.id is not an id in [0, %d)", path, field,
                            MAX_ID);
        t->len = strlen(content->valuestring);
        if (dvl_utf8_valid_prefix(content->valuestring, t->len) != t->len)
            return dvl_errf(err, DVL_EINVAL, "%s: %s.content is not valid UTF-8", path, field);
        bool single_word = false;
        int rc = get_bool(a, "special", false, &t->special, path, field, err);
        /* tokenizers' AddedToken default: normalized = !special. */
        if (!rc)
            rc = get_bool(a, "normalized", !t->special, &t->normalized, path, field, err);
        if (rc)
            return rc;
        /* A normalized token is matched in normalised text, so in its own
         * normalised form (tokenizers' AddedVocabulary::refresh_added_tokens). */
        dvl_strbuf c = {0};
        if (t->normalized && tok->nfc ? dvl_utf8_nfc(&c, content->valuestring, t->len)
                                      : !dvl_strbuf_append(&c, content->valuestring, t->len)) {
            dvl_strbuf_free(&c);
            return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        }
        if (!dvl_strbuf_append(&c, "", 1)) {
            dvl_strbuf_free(&c);
            return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        }
        t->content = c.p;
        t->len = c.n - 1;
        tok->n_added = ++i;
        if (!rc)
            rc = get_bool(a, "lstrip", false, &t->lstrip, path, field, err);
        if (!rc)
            rc = get_bool(a, "rstrip", false, &t->rstrip, path, field, err);
        if (!rc)
            rc = get_bool(a, "single_word", false, &single_word, path, field, err);
        if (rc)
            return rc;
        if (single_word)
            return dvl_errf(err, DVL_EUNSUP, "%s: %s.single_word true is not supported", path,
                            field);
        for (int j = 0; j < i - 1; j++)
            if (tok->added[j].id == t->id || !strcmp(tok->added[j].content, t->content))
                return dvl_errf(err, DVL_EINVAL, "%s: %s ('%s', id %d) repeats added_tokens[%d]",
                                path, field, t->content, t->id, j);
    }
    if (build_set(tok, &tok->raw, false) || build_set(tok, &tok->norm, true))
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    return DVL_OK;
}

/* ---- tokenizer_config.json ---- */

/* bos_token etc.: a string, an AddedToken object {"content": ...}, or null. */
static int config_token(const dvl_tokenizer *tok, const cJSON *cfg, const char *key,
                        int32_t *id, const char *path, dvl_err *err)
{
    *id = -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!v || cJSON_IsNull(v))
        return DVL_OK;
    if (!cJSON_IsString(v))
        return dvl_errf(err, DVL_EINVAL, "%s: %s is not a string", path, key);
    *id = dvl_tokenizer_token_id(tok, v->valuestring);
    if (*id < 0)
        return dvl_errf(err, DVL_EINVAL, "%s: %s '%.200s' is not a token of the vocabulary", path,
                        key, v->valuestring);
    return DVL_OK;
}

static int load_config(dvl_tokenizer *tok, const char *dir, dvl_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    bool missing;
    cJSON *cfg = parse_json_file(path, &missing, err);
    if (!cfg)
        return missing ? DVL_OK : err->code;
    int rc = config_token(tok, cfg, "bos_token", &tok->bos_id, path, err);
    if (!rc)
        rc = config_token(tok, cfg, "eos_token", &tok->eos_id, path, err);
    if (!rc)
        rc = config_token(tok, cfg, "pad_token", &tok->pad_id, path, err);
    cJSON_Delete(cfg);
    return rc;
}

dvl_tokenizer *dvl_tokenizer_load(const char *dir, dvl_err *err)
{
    dvl_err local = {0};
    if (!err)
        err = &local;
    if (!dir) {
        dvl_errf(err, DVL_EINVAL, "tokenizer: directory is NULL");
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool missing;
    cJSON *root = parse_json_file(path, &missing, err);
    if (!root)
        return NULL;
    dvl_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        dvl_errf(err, DVL_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    tok->bos_id = tok->eos_id = tok->pad_id = -1;
    dvl_bytelevel_init(&tok->bl);
    /* The normalizer first: normalized added tokens are matched in their
     * normalised form; added tokens before the model, whose decode table
     * covers their ids. */
    int rc = load_normalizer(tok, root, path, err);
    if (!rc)
        rc = load_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, err);
    if (!rc)
        rc = load_model(tok, root, path, err);
    if (!rc)
        rc = load_pre_tokenizer(tok, root, path, err);
    if (!rc)
        rc = load_decoder(root, path, err);
    cJSON_Delete(root);
    if (!rc)
        rc = load_config(tok, dir, err);
    if (rc) {
        dvl_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void dvl_tokenizer_free(dvl_tokenizer *tok)
{
    if (!tok)
        return;
    dvl_bpe_free(&tok->bpe);
    for (int i = 0; i < tok->n_splits; i++)
        pcre2_code_free(tok->splits[i]);
    for (int i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    free(tok->raw.order);
    free(tok->norm.order);
    free(tok->dec_pool);
    free(tok->dec_off);
    free(tok->dec_len);
    free(tok->special);
    free(tok);
}
