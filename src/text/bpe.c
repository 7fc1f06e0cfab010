#include "text/bpe.h"

#include <stdlib.h>

/* A symbol of the word being merged: a doubly linked list over the initial
 * byte positions, so merging never moves memory. */
typedef struct dvl_bpe_sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;      /* 0 once merged into its left neighbour */
} dvl_bpe_sym;

/* A candidate merge of the symbol at pos (id left) with its right
 * neighbour (id right) into id. */
typedef struct dvl_bpe_cand {
    int32_t rank, pos, id, left, right;
} dvl_bpe_cand;

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

void dvl_bpe_free(dvl_bpe *b)
{
    free(b->pool);
    free(b->off);
    free(b->len);
    free(b->slots);
    free(b->slot_h);
    free(b->merges);
    memset(b, 0, sizeof *b);
}

int32_t dvl_bpe_lookup(const dvl_bpe *b, const char *s, size_t n)
{
    uint64_t h = dvl_text_hash(s, n);
    for (uint64_t i = h & b->smask;; i = (i + 1) & b->smask) {
        int32_t id = b->slots[i];
        if (id < 0)
            return -1;
        if (b->slot_h[i] == (uint32_t)h && (size_t)b->len[id] == n &&
            !memcmp(b->pool + b->off[id], s, n))
            return id;
    }
}

int dvl_bpe_init(dvl_bpe *b, const dvl_bpe_entry *e, int64_t n, int64_t max_merges,
                 const char *what, dvl_err *err)
{
    memset(b, 0, sizeof *b);
    int64_t bytes = 0;
    int32_t max_id = -1;
    for (int64_t i = 0; i < n; i++) {
        bytes += (int64_t)e[i].len;
        if (e[i].id > max_id)
            max_id = e[i].id;
    }
    b->n_ids = max_id + 1;
    /* Load factor <= 1/2 keeps linear probing short. */
    uint64_t nslots = pow2_at_least(2 * (uint64_t)n + 1);
    uint64_t nm = pow2_at_least(2 * (uint64_t)max_merges + 1);
    b->pool = malloc((size_t)bytes + 1);
    b->off = malloc(sizeof *b->off * (size_t)(b->n_ids + 1));
    b->len = malloc(sizeof *b->len * (size_t)(b->n_ids + 1));
    b->slots = malloc(sizeof *b->slots * nslots);
    b->slot_h = malloc(sizeof *b->slot_h * nslots);
    b->merges = malloc(sizeof *b->merges * nm);
    if (!b->pool || !b->off || !b->len || !b->slots || !b->slot_h || !b->merges) {
        dvl_bpe_free(b);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory for %lld tokens", what, (long long)n);
    }
    b->smask = nslots - 1;
    b->mmask = nm - 1;
    for (int32_t id = 0; id < b->n_ids; id++)
        b->len[id] = -1;
    memset(b->slots, 0xFF, sizeof *b->slots * nslots);
    for (uint64_t i = 0; i < nm; i++)
        b->merges[i].key = UINT64_MAX;
    int64_t pos = 0;
    for (int64_t k = 0; k < n; k++) {
        int32_t id = e[k].id;
        if (b->len[id] >= 0) {
            int rc = dvl_errf(err, DVL_EINVAL, "%s: id %d is given to two tokens", what, id);
            dvl_bpe_free(b);
            return rc;
        }
        if (dvl_bpe_lookup(b, e[k].bytes, e[k].len) >= 0) {
            int rc = dvl_errf(err, DVL_EINVAL, "%s: token of id %d (%zu bytes) is listed twice",
                              what, id, e[k].len);
            dvl_bpe_free(b);
            return rc;
        }
        memcpy(b->pool + pos, e[k].bytes, e[k].len);
        b->off[id] = pos;
        b->len[id] = (int32_t)e[k].len;
        pos += (int64_t)e[k].len;
        uint64_t h = dvl_text_hash(e[k].bytes, e[k].len);
        uint64_t i = h & b->smask;
        while (b->slots[i] >= 0)
            i = (i + 1) & b->smask;
        b->slots[i] = id;
        b->slot_h[i] = (uint32_t)h;
    }
    return DVL_OK;
}

/* The merge slot holding key, or the free slot where it belongs. */
static dvl_bpe_merge *merge_slot(const dvl_bpe *b, uint64_t key)
{
    for (uint64_t i = mix64(key) & b->mmask;; i = (i + 1) & b->mmask) {
        dvl_bpe_merge *m = &b->merges[i];
        if (m->key == key || m->key == UINT64_MAX)
            return m;
    }
}

int dvl_bpe_add_merge(dvl_bpe *b, const char *l, size_t ln, const char *r, size_t rn,
                      int32_t rank, const char *what, dvl_err *err)
{
    int32_t a = dvl_bpe_lookup(b, l, ln), c = dvl_bpe_lookup(b, r, rn);
    if (a < 0 || c < 0)
        return dvl_errf(err, DVL_EINVAL, "%s[%d]: %s part is not in the vocabulary", what, rank,
                        a < 0 ? "left" : "right");
    char stack[256];
    char *cat = ln + rn <= sizeof stack ? stack : malloc(ln + rn);
    if (!cat)
        return dvl_errf(err, DVL_ENOMEM, "%s[%d]: out of memory", what, rank);
    memcpy(cat, l, ln);
    memcpy(cat + ln, r, rn);
    int32_t id = dvl_bpe_lookup(b, cat, ln + rn);
    if (cat != stack)
        free(cat);
    if (id < 0)
        return dvl_errf(err, DVL_EINVAL, "%s[%d]: merged token is not in the vocabulary", what,
                        rank);
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)c;
    dvl_bpe_merge *m = merge_slot(b, key);
    if (m->key == UINT64_MAX) {
        if ((uint64_t)b->n_merges * 2 + 2 > b->mmask + 1)
            return dvl_errf(err, DVL_EINVAL, "%s[%d]: more merges than reserved", what, rank);
        b->n_merges++;
    }
    m->key = key;
    m->rank = rank;
    m->id = id;
    return DVL_OK;
}

int dvl_bpe_check_bytes(dvl_bpe *b, const char *what, dvl_err *err)
{
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        b->byte_id[c] = dvl_bpe_lookup(b, &ch, 1);
        if (b->byte_id[c] < 0)
            return dvl_errf(err, DVL_EINVAL,
                            "%s: no token for the single byte 0x%02x (not a byte-level vocabulary)",
                            what, c);
    }
    return DVL_OK;
}

static const dvl_bpe_merge *find_merge(const dvl_bpe *b, int32_t left, int32_t right)
{
    const dvl_bpe_merge *m = merge_slot(b, ((uint64_t)(uint32_t)left << 32) | (uint32_t)right);
    return m->key == UINT64_MAX ? NULL : m;
}

/* Min-heap on (rank, pos): the lowest-rank merge first and, among equal
 * ranks, the leftmost -- the order of the Merge ordering in Hugging Face
 * tokenizers' Word::merge_all, so that "aaa" under merge "a a" gives
 * ["aa", "a"]. */
static bool cand_less(const dvl_bpe_cand *x, const dvl_bpe_cand *y)
{
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(dvl_bpe_cand *h, size_t *n, dvl_bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static dvl_bpe_cand heap_pop(dvl_bpe_cand *h, size_t *n)
{
    dvl_bpe_cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c]))
            c++;
        if (!cand_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void push_pair(const dvl_bpe *b, dvl_bpe_cand *h, size_t *nh, const dvl_bpe_sym *sym,
                      int32_t pos)
{
    int32_t next = sym[pos].next;
    if (next < 0)
        return;
    const dvl_bpe_merge *m = find_merge(b, sym[pos].id, sym[next].id);
    if (m)
        heap_push(h, nh, (dvl_bpe_cand){m->rank, pos, m->id, sym[pos].id, sym[next].id});
}

void dvl_bpe_scratch_free(dvl_bpe_scratch *sc)
{
    free(sc->sym);
    free(sc->heap);
    memset(sc, 0, sizeof *sc);
}

int64_t dvl_bpe_word(const dvl_bpe *b, dvl_bpe_scratch *sc, const char *w, size_t n, int32_t *out)
{
    if (n == 0)
        return 0;
    if (n == 1) {
        out[0] = b->byte_id[(unsigned char)w[0]];
        return 1;
    }
    if (b->ignore_merges) {
        int32_t id = dvl_bpe_lookup(b, w, n);
        if (id >= 0) {
            out[0] = id;
            return 1;
        }
    }
    /* The heap holds the n-1 initial pairs plus at most two new pairs per
     * merge, and there are at most n-1 merges. */
    if (sc->cap < n) {
        size_t cap = n < 64 ? 64 : n;
        dvl_bpe_sym *s = realloc(sc->sym, sizeof *s * cap);
        if (s)
            sc->sym = s;
        dvl_bpe_cand *h = realloc(sc->heap, sizeof *h * 3 * cap);
        if (h)
            sc->heap = h;
        if (!s || !h)
            return -1;
        sc->cap = cap;
    }
    dvl_bpe_sym *sym = sc->sym;
    dvl_bpe_cand *heap = sc->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++)
        sym[i] = (dvl_bpe_sym){b->byte_id[(unsigned char)w[i]], (int32_t)i - 1,
                               i + 1 < n ? (int32_t)i + 1 : -1, 1};
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(b, heap, &nh, sym, (int32_t)i);
    while (nh > 0) {
        dvl_bpe_cand c = heap_pop(heap, &nh);
        dvl_bpe_sym *s = &sym[c.pos];
        /* A candidate is stale when either side has merged since it was
         * pushed. Symbols only grow, so the pair at pos is still the one
         * pushed exactly when both ids are unchanged (tokenizers checks
         * that the pair now at pos maps to the same merged id, which is
         * the same condition). */
        if (!s->alive || s->next < 0 || s->id != c.left || sym[s->next].id != c.right)
            continue;
        dvl_bpe_sym *r = &sym[s->next];
        s->id = c.id;
        r->alive = 0;
        s->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = c.pos;
        if (s->prev >= 0)
            push_pair(b, heap, &nh, sym, s->prev);
        push_pair(b, heap, &nh, sym, c.pos);
    }
    int64_t k = 0;
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        out[k++] = sym[i].id;
    return k;
}
