/* The training loader: see loader.h for the order, the batch layout and
 * the threading. */
#include "io/loader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/shard.h"
#include "text/chat.h"

void dvl_loader_opts_default(dvl_loader_opts *o)
{
    *o = (dvl_loader_opts){.batch_size = 1,
                           .rank = 0,
                           .world = 1,
                           .prefetch = 2,
                           .max_open = 64,
                           .pad_id = -1};
}

/* ---- order ---- */

/* Uniform in [0, bound) without modulo bias: reject the lowest
 * 2^64 mod bound values. */
static uint64_t below(dvl_rng *r, uint64_t bound)
{
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t x = dvl_rng_u64(r);
        if (x >= threshold)
            return x % bound;
    }
}

void dvl_loader_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm)
{
    dvl_rng r;
    dvl_rng_seed(&r, seed ^ ((uint64_t)(epoch + 1) * UINT64_C(0x9e3779b97f4a7c15)));
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)below(&r, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---- the loader ---- */

typedef struct buffer {
    dvl_batch b;
    int64_t cap_tok, cap_img;
    int rc;
    dvl_err err;
} buffer;

typedef struct cached {
    int64_t k;
    dvl_shard *s;
    uint64_t used;
} cached;

struct dvl_loader {
    dvl_manifest m;
    int64_t batch, block, image_tokens, share;
    int rank, world, max_open;
    int32_t pad_id, image_id;
    uint64_t seed;
    int64_t *cum; /* [n_shards + 1] samples before shard k */
    float lut[3][256];

    /* producer only */
    cached *cache;
    int n_cache;
    uint64_t tick;
    int64_t *perm, perm_epoch;
    int64_t p_epoch, p_pos;
    uint8_t *px;
    int32_t *tids, *tlabels;
    int64_t cap_t;

    /* shared, under mu */
    buffer *bufs;
    int n_bufs;
    int64_t produced, released;
    bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv_prod, cv_cons;
    pthread_t th;
    bool started;

    /* consumer only */
    int64_t consumed;
    bool held;
    int64_t c_epoch, c_pos;
    int rc;
    dvl_err err;
};

int64_t dvl_loader_samples(const dvl_loader *l)
{
    return l->m.samples;
}

int64_t dvl_loader_share(const dvl_loader *l)
{
    return l->share;
}

static int64_t share_of(int64_t n, int rank, int world)
{
    return n > rank ? (n - rank + world - 1) / world : 0;
}

int64_t dvl_loader_batches_per_epoch(const dvl_loader *l, int rank)
{
    int64_t s = share_of(l->m.samples, rank, l->world);
    return (s + l->batch - 1) / l->batch;
}

dvl_loader_state dvl_loader_tell(const dvl_loader *l)
{
    return (dvl_loader_state){.seed = l->seed,
                              .samples = l->m.samples,
                              .rank = l->rank,
                              .world = l->world,
                              .epoch = l->c_epoch,
                              .position = l->c_pos};
}

/* The open shard k, opening it (and closing the least recently used one)
 * when needed. */
static dvl_shard *get_shard(dvl_loader *l, int64_t k, dvl_err *err)
{
    int slot = -1;
    for (int i = 0; i < l->n_cache; i++)
        if (l->cache[i].k == k) {
            l->cache[i].used = ++l->tick;
            return l->cache[i].s;
        }
    if (l->n_cache < l->max_open) {
        slot = l->n_cache++;
    } else {
        slot = 0;
        for (int i = 1; i < l->n_cache; i++)
            if (l->cache[i].used < l->cache[slot].used)
                slot = i;
        dvl_shard_close(l->cache[slot].s);
    }
    const dvl_manifest_shard *ms = &l->m.shards[k];
    dvl_shard *s = dvl_shard_open(ms->file, err);
    if (s && (dvl_shard_samples(s) != ms->samples || dvl_shard_images(s) != ms->images ||
              dvl_shard_tokens(s) != ms->tokens || dvl_shard_image_size(s) != l->m.image_size)) {
        dvl_errf(err, DVL_EIO,
                 "%s: holds %lld samples, %lld images, %lld tokens of size %d; the manifest says "
                 "%lld, %lld, %lld, %d",
                 ms->file, (long long)dvl_shard_samples(s), (long long)dvl_shard_images(s),
                 (long long)dvl_shard_tokens(s), dvl_shard_image_size(s), (long long)ms->samples,
                 (long long)ms->images, (long long)ms->tokens, l->m.image_size);
        dvl_shard_close(s);
        s = NULL;
    }
    if (!s) {
        /* the slot is free again */
        l->cache[slot] = l->cache[--l->n_cache];
        return NULL;
    }
    l->cache[slot] = (cached){k, s, ++l->tick};
    return s;
}

static int reserve(void **p, int64_t *cap, int64_t need, size_t elem)
{
    if (*cap >= need)
        return 0;
    int64_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* Grow the token arrays for n x len positions and the images for n_img
 * (the per-sample arrays hold batch_size from the start). Lengths only
 * grow, so the steady state allocates nothing. Arrays sharing a capacity
 * grow from the same old value to the same new one. */
static int buffer_reserve(dvl_loader *l, buffer *bf, int64_t n, int64_t len, int64_t n_img,
                          dvl_err *err)
{
    dvl_batch *b = &bf->b;
    int64_t tok = n * len, c1 = bf->cap_tok, c2 = bf->cap_tok, c3 = bf->cap_tok;
    int64_t px = (int64_t)3 * l->m.image_size * l->m.image_size;
    bool ok = !reserve((void **)&b->ids, &c1, tok, sizeof *b->ids) &&
              !reserve((void **)&b->labels, &c2, tok, sizeof *b->labels) &&
              !reserve((void **)&b->valid, &c3, tok, sizeof *b->valid) &&
              !reserve((void **)&b->pos, &bf->cap_tok, tok, sizeof *b->pos) &&
              !reserve((void **)&b->images, &bf->cap_img, n_img * px, sizeof *b->images);
    if (!ok)
        return dvl_errf(err, DVL_ENOMEM, "loader: out of memory for a batch of %lld x %lld",
                        (long long)n, (long long)len);
    return DVL_OK;
}

/* The global sample at position pos of this rank's share of epoch e. */
static int64_t sample_at(dvl_loader *l, int64_t e, int64_t pos)
{
    if (l->perm_epoch != e) {
        dvl_loader_permutation(l->seed, e, l->m.samples, l->perm);
        l->perm_epoch = e;
    }
    return l->perm[l->rank + pos * l->world];
}

/* Shard of global sample g: the last k with cum[k] <= g. */
static int64_t shard_of(const dvl_loader *l, int64_t g)
{
    int64_t lo = 0, hi = l->m.n_shards - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (l->cum[mid] <= g)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Read and collate the batch at (epoch, pos) of this rank into bf. */
static int fill(dvl_loader *l, buffer *bf, int64_t epoch, int64_t pos, dvl_err *err)
{
    dvl_batch *b = &bf->b;
    int64_t n = l->share - pos < l->batch ? l->share - pos : l->batch;
    int64_t extra = l->image_tokens - 1;
    /* Lengths first, to size the batch. */
    int64_t len = 0, n_img = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t g = sample_at(l, epoch, pos + i), k = shard_of(l, g);
        dvl_shard *s = get_shard(l, k, err);
        if (!s)
            return err->code;
        int64_t j = g - l->cum[k], li = dvl_shard_sample_len(s, j);
        bool img = dvl_shard_sample_image(s, j) >= 0;
        li += img ? extra : 0;
        n_img += img;
        len = li > len ? li : len;
        b->sample[i] = g;
    }
    if (l->block > 1)
        len = (len + l->block - 1) / l->block * l->block;
    int rc = buffer_reserve(l, bf, n, len, n_img, err);
    if (rc)
        return rc;
    b->epoch = epoch;
    b->position = pos;
    b->last = pos + n == l->share;
    b->n = n;
    b->len = len;
    b->n_images = 0;
    b->image_size = l->m.image_size;
    int64_t hw = (int64_t)l->m.image_size * l->m.image_size;
    for (int64_t i = 0; i < n; i++) {
        int64_t g = b->sample[i], k = shard_of(l, g), j = g - l->cum[k];
        dvl_shard *s = get_shard(l, k, err);
        if (!s)
            return err->code;
        int64_t li = dvl_shard_sample_len(s, j);
        int32_t row = dvl_shard_sample_image(s, j);
        int64_t slot = dvl_shard_sample_image_pos(s, j);
        int64_t ct = l->cap_t;
        if (reserve((void **)&l->tids, &ct, li, sizeof *l->tids) ||
            reserve((void **)&l->tlabels, &l->cap_t, li, sizeof *l->tlabels))
            return dvl_errf(err, DVL_ENOMEM, "loader: out of memory for %lld ids", (long long)li);
        if ((rc = dvl_shard_read_tokens(s, j, l->tids, l->tlabels, err)))
            return rc;
        int32_t *ids = b->ids + i * len, *labels = b->labels + i * len;
        int64_t t = 0;
        for (int64_t q = 0; q < li; q++) {
            if (q == slot) {
                /* the image's feature rows go here */
                for (int64_t r = 0; r < l->image_tokens; r++, t++) {
                    ids[t] = l->image_id;
                    labels[t] = DVL_IGNORE_INDEX;
                }
                continue;
            }
            ids[t] = l->tids[q];
            labels[t] = l->tlabels[q];
            t++;
        }
        b->seq_len[i] = t;
        for (int64_t q = t; q < len; q++) {
            ids[q] = l->pad_id;
            labels[q] = DVL_IGNORE_INDEX;
        }
        memset(b->valid + i * len, 1, (size_t)t);
        memset(b->valid + i * len + t, 0, (size_t)(len - t));
        for (int64_t q = 0; q < len; q++)
            b->pos[i * len + q] = (int32_t)q;
        b->image_of[i] = -1;
        b->image_pos[i] = -1;
        if (row >= 0) {
            if ((rc = dvl_shard_read_image(s, row, l->px, err)))
                return rc;
            /* HWC uint8 -> CHW float through a table: the value depends
             * only on the byte, so this is exactly dvl_image_normalize. */
            float *o0 = b->images + b->n_images * 3 * hw, *o1 = o0 + hw, *o2 = o1 + hw;
            const uint8_t *p = l->px;
            for (int64_t q = 0; q < hw; q++) {
                o0[q] = l->lut[0][p[3 * q]];
                o1[q] = l->lut[1][p[3 * q + 1]];
                o2[q] = l->lut[2][p[3 * q + 2]];
            }
            b->image_of[i] = (int32_t)b->n_images++;
            b->image_pos[i] = slot;
        }
    }
    return DVL_OK;
}

static void *producer(void *arg)
{
    dvl_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->produced - l->released >= l->n_bufs)
            pthread_cond_wait(&l->cv_prod, &l->mu);
        if (l->stop)
            break;
        buffer *bf = &l->bufs[l->produced % l->n_bufs];
        pthread_mutex_unlock(&l->mu);
        bf->rc = fill(l, bf, l->p_epoch, l->p_pos, &bf->err);
        if (!bf->rc) {
            l->p_pos += bf->b.n;
            if (l->p_pos == l->share) {
                l->p_epoch++;
                l->p_pos = 0;
            }
        }
        pthread_mutex_lock(&l->mu);
        l->produced++;
        pthread_cond_signal(&l->cv_cons);
        if (bf->rc)
            break; /* the consumer gets the error; nothing follows it */
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int dvl_loader_next(dvl_loader *l, const dvl_batch **out, dvl_err *err)
{
    *out = NULL;
    if (l->rc) {
        if (err)
            *err = l->err;
        return l->rc;
    }
    pthread_mutex_lock(&l->mu);
    if (l->held) {
        l->released++;
        l->held = false;
        pthread_cond_signal(&l->cv_prod);
    }
    while (l->produced <= l->consumed)
        pthread_cond_wait(&l->cv_cons, &l->mu);
    pthread_mutex_unlock(&l->mu);
    buffer *bf = &l->bufs[l->consumed % l->n_bufs];
    l->consumed++;
    l->held = true;
    if (bf->rc) {
        l->rc = bf->rc;
        l->err = bf->err;
        if (err)
            *err = l->err;
        return l->rc;
    }
    l->c_pos = bf->b.position + bf->b.n;
    l->c_epoch = bf->b.epoch;
    if (l->c_pos == l->share) {
        l->c_epoch++;
        l->c_pos = 0;
    }
    *out = &bf->b;
    return DVL_OK;
}

void dvl_loader_free(dvl_loader *l)
{
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_broadcast(&l->cv_prod);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->th, NULL);
    }
    pthread_cond_destroy(&l->cv_cons);
    pthread_cond_destroy(&l->cv_prod);
    pthread_mutex_destroy(&l->mu);
    for (int i = 0; l->bufs && i < l->n_bufs; i++) {
        dvl_batch *b = &l->bufs[i].b;
        free(b->ids);
        free(b->labels);
        free(b->valid);
        free(b->pos);
        free(b->seq_len);
        free(b->sample);
        free(b->image_of);
        free(b->image_pos);
        free(b->images);
    }
    free(l->bufs);
    for (int i = 0; i < l->n_cache; i++)
        dvl_shard_close(l->cache[i].s);
    free(l->cache);
    free(l->perm);
    free(l->px);
    free(l->tids);
    free(l->tlabels);
    free(l->cum);
    dvl_manifest_free(&l->m);
    free(l);
}

dvl_loader *dvl_loader_open(const dvl_loader_opts *o, dvl_err *err)
{
    dvl_err local;
    if (!err)
        err = &local;
    if (!o || !o->dir) {
        dvl_errf(err, DVL_EINVAL, "loader: no dataset folder");
        return NULL;
    }
    if (o->batch_size < 1 || o->world < 1 || o->rank < 0 || o->rank >= o->world ||
        o->prefetch < 1 || o->max_open < 1 || o->image_tokens < 0) {
        dvl_errf(err, DVL_EINVAL,
                 "loader: batch size %lld, rank %d of %d, prefetch %d, max_open %d or "
                 "image_tokens %lld out of range",
                 (long long)o->batch_size, o->rank, o->world, o->prefetch, o->max_open,
                 (long long)o->image_tokens);
        return NULL;
    }
    dvl_loader *l = calloc(1, sizeof *l);
    if (!l) {
        dvl_errf(err, DVL_ENOMEM, "loader: out of memory");
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_prod, NULL);
    pthread_cond_init(&l->cv_cons, NULL);
    if (dvl_manifest_read(o->dir, &l->m, err) ||
        (o->skip_verify ? dvl_manifest_verify_sizes(&l->m, err) : dvl_manifest_verify(&l->m, err)))
        goto fail;
    l->batch = o->batch_size;
    l->block = o->block;
    l->rank = o->rank;
    l->world = o->world;
    l->seed = o->seed;
    l->max_open = o->max_open;
    l->image_tokens = o->image_tokens ? o->image_tokens : l->m.image_tokens;
    l->pad_id = o->pad_id >= 0 ? o->pad_id : l->m.pad_token_id;
    l->image_id = l->m.image_token_id;
    l->share = share_of(l->m.samples, l->rank, l->world);
    if (l->share == 0) {
        dvl_errf(err, DVL_EINVAL, "loader %s: rank %d of %d gets none of the %lld samples", o->dir,
                 l->rank, l->world, (long long)l->m.samples);
        goto fail;
    }
    if (o->start) {
        const dvl_loader_state *s = o->start;
        if (s->seed != l->seed || s->samples != l->m.samples || s->rank != l->rank ||
            s->world != l->world || s->epoch < 0 || s->position < 0 || s->position >= l->share) {
            dvl_errf(err, DVL_EINVAL,
                     "loader %s: the saved state (seed %llu, %lld samples, rank %d of %d, epoch "
                     "%lld, position %lld) does not fit this loader (seed %llu, %lld samples, "
                     "rank %d of %d, %lld samples a rank)",
                     o->dir, (unsigned long long)s->seed, (long long)s->samples, s->rank,
                     s->world, (long long)s->epoch, (long long)s->position,
                     (unsigned long long)l->seed, (long long)l->m.samples, l->rank, l->world,
                     (long long)l->share);
            goto fail;
        }
        l->p_epoch = l->c_epoch = s->epoch;
        l->p_pos = l->c_pos = s->position;
    }
    l->cum = malloc(sizeof *l->cum * (size_t)(l->m.n_shards + 1));
    l->perm = malloc(sizeof *l->perm * (size_t)l->m.samples);
    l->cache = calloc((size_t)l->max_open, sizeof *l->cache);
    l->px = malloc((size_t)3 * (size_t)l->m.image_size * (size_t)l->m.image_size);
    l->n_bufs = o->prefetch + 1;
    l->bufs = calloc((size_t)l->n_bufs, sizeof *l->bufs);
    bool ok = l->cum && l->perm && l->cache && l->px && l->bufs;
    for (int i = 0; ok && i < l->n_bufs; i++) {
        dvl_batch *b = &l->bufs[i].b;
        size_t n = (size_t)l->batch;
        ok = (b->seq_len = malloc(n * sizeof *b->seq_len)) && (b->sample = malloc(n * sizeof *b->sample)) &&
             (b->image_of = malloc(n * sizeof *b->image_of)) &&
             (b->image_pos = malloc(n * sizeof *b->image_pos));
    }
    if (!ok) {
        dvl_errf(err, DVL_ENOMEM, "loader: out of memory for %lld samples", (long long)l->m.samples);
        goto fail;
    }
    l->cum[0] = 0;
    for (int64_t k = 0; k < l->m.n_shards; k++)
        l->cum[k + 1] = l->cum[k] + l->m.shards[k].samples;
    l->perm_epoch = -1;
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = (float)(v * (1.0 / 255.0));
            l->lut[c][v] = (x - dvl_siglip_mean[c]) / dvl_siglip_std[c];
        }
    if (pthread_create(&l->th, NULL, producer, l)) {
        dvl_errf(err, DVL_EIO, "loader: cannot start the prefetch thread");
        goto fail;
    }
    l->started = true;
    return l;
fail:
    dvl_loader_free(l);
    return NULL;
}
