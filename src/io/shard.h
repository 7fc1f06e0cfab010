/* One shard of a prepared dataset: an HDF5 file holding the token ids,
 * labels and preprocessed images of a run of samples.
 *
 * Layout (all datasets in the root group; no timestamps are stored, so the
 * same samples give the same bytes):
 *
 *   input_ids    int32  [T]            ids of all samples, concatenated
 *   labels       int32  [T]            their labels (-100: no loss)
 *   offsets      int64  [N + 1]        sample i is ids[offsets[i] .. offsets[i+1])
 *   image_index  int32  [N]            row of `images` of sample i, -1 for none
 *   image_pos    int32  [N]            index in sample i's ids of its image
 *                                      slot, -1 for none
 *   sample_id    string [N]            the input's "id" (variable-length UTF-8)
 *   images       uint8  [M, S, S, 3]   RGB, HWC, after pad-to-square and
 *                                      resize (not normalised); chunked one
 *                                      image a chunk, deflate-compressed
 *   attributes on /: format = "dvl-shard", version = 1, samples = N,
 *                    images = M, tokens = T, image_size = S
 *
 * Images are stored as uint8 so the file is 4x smaller than float and the
 * normalisation ((x / 255 - 0.5) / 0.5) happens when loading. The shuffle
 * filter is not used: it reorders the bytes of multi-byte elements and
 * does nothing for uint8.
 *
 * HDF5 (the serial build) is not thread-safe: every function here holds
 * one process-wide lock while it calls the library, so shards may be used
 * from several threads, one call at a time. */
#ifndef DVL_IO_SHARD_H
#define DVL_IO_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define DVL_SHARD_VERSION 1

/* 64-bit FNV-1a (Fowler-Noll-Vo): h = (h ^ byte) * 0x100000001b3 for each
 * byte, from the offset basis 0xcbf29ce484222325. Used as the checksum of
 * shard files and the identity of tokenizer and input files. Pass the
 * previous value to continue a hash over several buffers. */
#define DVL_FNV1A64_INIT UINT64_C(0xcbf29ce484222325)
uint64_t dvl_fnv1a64(uint64_t h, const void *p, size_t n);
/* The FNV-1a of a whole file and its size in bytes. */
int dvl_fnv1a64_file(const char *path, uint64_t *hash, int64_t *bytes, dvl_err *err);

/* ---- writing ---- */

typedef struct dvl_shard_writer dvl_shard_writer;

/* Start PATH.tmp (an old one is replaced); images are size x size and
 * compressed with deflate level 0..9 (0: stored uncompressed). */
dvl_shard_writer *dvl_shard_create(const char *path, int image_size, int deflate, dvl_err *err);
/* Append a sample: n ids and labels, and its size x size x 3 image with
 * the index of its slot in ids (0 <= image_pos < n), or NULL and -1. */
int dvl_shard_add(dvl_shard_writer *w, const char *id, const int32_t *ids, const int32_t *labels,
                  int64_t n, const uint8_t *pixels, int64_t image_pos, dvl_err *err);
/* Write the token datasets, close, fsync, and rename PATH.tmp to PATH.
 * Frees w, also on failure (PATH.tmp is then removed). */
int dvl_shard_finish(dvl_shard_writer *w, dvl_err *err);
/* Give up: close and remove PATH.tmp, free w. */
void dvl_shard_abort(dvl_shard_writer *w);

/* ---- reading ---- */

typedef struct dvl_shard dvl_shard;

/* Open and check the layout (datasets, types, shapes, that the offsets
 * rise from 0 to T and image rows are in range). Offsets and image rows
 * are read into memory; tokens and images are read on demand. */
dvl_shard *dvl_shard_open(const char *path, dvl_err *err);
void dvl_shard_close(dvl_shard *s);

int64_t dvl_shard_samples(const dvl_shard *s);
int64_t dvl_shard_images(const dvl_shard *s);
int64_t dvl_shard_tokens(const dvl_shard *s);
int dvl_shard_image_size(const dvl_shard *s);
/* Token count, image row (-1: none) and image slot index (-1: none) of
 * sample i (0 <= i < samples). */
int64_t dvl_shard_sample_len(const dvl_shard *s, int64_t i);
int32_t dvl_shard_sample_image(const dvl_shard *s, int64_t i);
int32_t dvl_shard_sample_image_pos(const dvl_shard *s, int64_t i);

/* Sample i's ids and labels into ids[len] and labels[len] (either may be NULL). */
int dvl_shard_read_tokens(dvl_shard *s, int64_t i, int32_t *ids, int32_t *labels, dvl_err *err);
/* Image row r as size * size * 3 bytes. */
int dvl_shard_read_image(dvl_shard *s, int64_t r, uint8_t *pixels, dvl_err *err);
/* Sample i's id as a malloc'd string (free() it). */
char *dvl_shard_sample_id(dvl_shard *s, int64_t i, dvl_err *err);

#endif
