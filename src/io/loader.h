/* The training loader: batches of a prepared dataset (io/dataset.h).
 *
 * Order. Epoch e visits all N samples in the order of a permutation drawn
 * by Fisher-Yates from dvl_rng seeded with seed ^ (e + 1) * 0x9e3779b97f4a7c15
 * (a fresh stream per epoch; the same for every rank). Rank r of R takes
 * the permutation's positions r, r + R, r + 2R, ...: the ranks' samples are
 * disjoint and together are the epoch. A rank's share is cut into batches
 * of batch_size in order; the last batch of an epoch may be smaller (ranks'
 * shares differ by at most one sample, so their batch counts by at most
 * one), and a batch never spans two epochs. No MPI is called: rank and
 * world are plain numbers.
 *
 * Batches. Each sample's image slot is expanded to image_tokens positions
 * (ids: the image token id; labels: -100), where the model puts the image's
 * feature rows. Sequences are padded to the longest one in the batch, or up
 * to a multiple of block (block diffusion, stage 2): pad id, label -100,
 * valid 0. Images are normalised at load, (x / 255 - 0.5) / 0.5 in the
 * float32 arithmetic of transformers' SigLIP processor, into CHW floats.
 *
 * Threads. A background thread reads and decodes up to `prefetch` batches
 * ahead into a bounded queue; dvl_loader_free stops and joins it. A batch
 * from dvl_loader_next stays valid until the next call to dvl_loader_next
 * or dvl_loader_free.
 *
 * Resuming. dvl_loader_tell gives the position of the next batch the caller
 * will get (not of the prefetching); a loader opened with that state as
 * opts.start yields exactly the batches the first one would have. */
#ifndef DVL_IO_LOADER_H
#define DVL_IO_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"

/* Where a loader is: epoch, and samples of this rank's share of it already
 * handed out. seed, rank, world and samples are checked when resuming. */
typedef struct dvl_loader_state {
    uint64_t seed;
    int64_t samples;
    int32_t rank, world;
    int64_t epoch, position;
} dvl_loader_state;

typedef struct dvl_loader_opts {
    const char *dir;           /* the prepared dataset */
    int64_t batch_size;        /* samples per batch on this rank (>= 1) */
    int rank, world;           /* 0 <= rank < world */
    uint64_t seed;
    int64_t block;             /* pad lengths to a multiple of this; <= 1: none */
    bool skip_verify;          /* check shard sizes only at open, not checksums */
    int prefetch;              /* batches prepared ahead (>= 1) */
    int max_open;              /* shard files kept open at once (>= 1) */
    int32_t pad_id;            /* < 0: the manifest's pad_token_id */
    int64_t image_tokens;      /* positions per image; 0: the manifest's */
    const dvl_loader_state *start; /* resume here; NULL: epoch 0, position 0 */
} dvl_loader_opts;

/* batch_size 1, rank 0 of 1, seed 0, no block, verify, prefetch 2,
 * max_open 64, manifest pad id and image tokens, start at the beginning. */
void dvl_loader_opts_default(dvl_loader_opts *o);

typedef struct dvl_batch {
    int64_t epoch, position; /* where the batch starts in this rank's share */
    bool last;               /* the last batch of this rank's epoch */
    int64_t n, len;          /* samples, padded sequence length */
    int32_t *ids;            /* [n, len] */
    int32_t *labels;         /* [n, len], -100 where no loss */
    uint8_t *valid;          /* [n, len], 1 for real tokens (dvl_mask.key_valid) */
    int32_t *pos;            /* [n, len], position of each token: 0, 1, ... */
    int64_t *seq_len;        /* [n] real length (image slot expanded) */
    int64_t *sample;         /* [n] global sample index (shard order) */
    int32_t *image_of;       /* [n] row in images, -1 for none */
    int64_t *image_pos;      /* [n] first position of the image rows, -1 for none */
    int64_t n_images;
    int image_size;
    float *images;           /* [n_images, 3, image_size, image_size] */
} dvl_batch;

typedef struct dvl_loader dvl_loader;

/* Read the manifest, check the shards' sizes and checksums (sizes only with
 * skip_verify), start the prefetch thread. */
dvl_loader *dvl_loader_open(const dvl_loader_opts *o, dvl_err *err);
void dvl_loader_free(dvl_loader *l);

/* The next batch (*out points into the loader), or an error (a shard that
 * cannot be read), after which the loader only returns that error. */
int dvl_loader_next(dvl_loader *l, const dvl_batch **out, dvl_err *err);

dvl_loader_state dvl_loader_tell(const dvl_loader *l);

/* Samples in the dataset; in this rank's share of an epoch; and batches
 * per epoch for any rank (to agree on a step count across ranks). */
int64_t dvl_loader_samples(const dvl_loader *l);
int64_t dvl_loader_share(const dvl_loader *l);
int64_t dvl_loader_batches_per_epoch(const dvl_loader *l, int rank);

/* The permutation of epoch `epoch` for n samples and seed, into perm[n]
 * (what the loader uses; exposed for tests and tools). */
void dvl_loader_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm);

#endif
