/* A prepared dataset: LLaVA-format conversations and images turned into
 * token ids, labels and preprocessed pixels in HDF5 shards, built once
 * (dvl-prep build) and read by the loader (io/loader.h) every epoch.
 *
 * Directory DIR:
 *   shard-NNNNN.h5    the samples of input records [k * S, (k + 1) * S),
 *                     S = shard_size, in input order; skipped records leave
 *                     gaps, so a shard holds at most S samples (layout:
 *                     io/shard.h)
 *   shard-NNNNN.json  written after the shard: its record range, counts,
 *                     size and FNV-1a checksum, the settings fingerprint
 *                     (a hash of tokenizer.json, the input file and every
 *                     option that changes the shards; not the thread
 *                     count), and the records it skipped or truncated. A
 *                     rerun keeps a shard whose sidecar, settings and
 *                     checksum all agree, and builds the others again;
 *                     it removes *.tmp leftovers and a stale manifest.
 *   report.jsonl      one line per skipped or truncated record, in input
 *                     order: {"record", "line", "id", "status": "skipped" |
 *                     "truncated", "kind", "reason"} (record: 0-based index
 *                     in the input; line: its first line in the file; kind:
 *                     malformed | missing_image | bad_image | too_long |
 *                     truncated)
 *   manifest.json     written last (atomically), so its presence means the
 *                     build is complete:
 *     format "dvl-dataset", version 1
 *     samples, images, tokens, records, shards    totals
 *     skipped {total, malformed, missing_image, bad_image, too_long}, truncated
 *     source {file, format "json" | "jsonl", bytes, fnv1a64}
 *     tokenizer {dir, file "tokenizer.json", bytes, fnv1a64, vocab_size,
 *                pad_token_id, eos_token_id}
 *     template {name "qwen" | "llada", system (string or null), labels
 *               "assistant" | "reference", image_token_id, image_tokens,
 *               max_len (0: none), overflow "truncate" | "skip"}
 *     image {size, layout, pad, background, resize, normalize {mean, std},
 *            deflate}
 *     shard_size, settings_fnv1a64, checksum (the algorithm, in words)
 *     shard_files [{file, first_record, records, samples, images, tokens,
 *                   bytes, fnv1a64}]
 *   64-bit values (fnv1a64, settings_fnv1a64) are 16 lowercase hex digits.
 *
 * Input: a JSON array of records (.json) or one record a line (.jsonl),
 * told apart by the first non-blank character ('[' or '{'). A record is
 *   {"id": string or integer, "image": "relative/path.jpg" (optional; a
 *    one-element list is accepted; null or absent: text only),
 *    "conversations": [{"from": "human" | "gpt" | "system", "value": str}]}
 * Images are looked up as os.path.join(images_dir, image). A record that
 * cannot be used is skipped and reported; only an unreadable or
 * syntactically malformed input file fails the build, with an error naming
 * the file, line and column. */
#ifndef DVL_IO_DATASET_H
#define DVL_IO_DATASET_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"
#include "text/chat.h"

#define DVL_DATASET_VERSION 1

typedef struct dvl_build_opts {
    const char *json;      /* input .json / .jsonl */
    const char *images;    /* image folder; NULL: the input file's folder */
    const char *tokenizer; /* folder with tokenizer.json */
    const dvl_tokenizer *tok; /* that tokenizer already loaded, or NULL: load it */
    const char *out;       /* output folder (created) */
    int64_t shard_size;    /* input records per shard (>= 1) */
    int image_size;        /* side of the stored images (SigLIP: 384) */
    int threads;           /* worker threads (>= 1); the output does not depend on it */
    int deflate;           /* 0..9 */
    dvl_chat_opts chat;
    FILE *log;             /* progress lines, or NULL */
} dvl_build_opts;

/* shard_size 1000, image_size 384, threads = online CPUs, deflate 1,
 * dvl_chat_opts_default; paths NULL. */
void dvl_build_opts_default(dvl_build_opts *o);

typedef struct dvl_build_stats {
    int64_t records, samples, images, tokens, truncated;
    int64_t skipped, malformed, missing_image, bad_image, too_long;
    int64_t shards, shards_built, shards_kept;
} dvl_build_stats;

/* Build (or finish building) the dataset. st may be NULL. */
int dvl_dataset_build(const dvl_build_opts *o, dvl_build_stats *st, dvl_err *err);

/* ---- reading the manifest ---- */

typedef struct dvl_manifest_shard {
    char *file; /* path: DIR/shard-NNNNN.h5 */
    int64_t first_record, records, samples, images, tokens, bytes;
    uint64_t fnv1a64;
} dvl_manifest_shard;

typedef struct dvl_manifest {
    int64_t samples, images, tokens, records;
    int image_size;
    int64_t image_tokens;
    int32_t image_token_id, pad_token_id;
    int64_t vocab_size; /* tokenizer.vocab_size: one past the tokenizer's largest id */
    char *template_name;
    int64_t n_shards;
    dvl_manifest_shard *shards;
} dvl_manifest;

/* Read and check DIR/manifest.json (fields present, totals add up). */
int dvl_manifest_read(const char *dir, dvl_manifest *m, dvl_err *err);
void dvl_manifest_free(dvl_manifest *m);

/* Compare every shard file's size and FNV-1a with the manifest; the error
 * names the first file that differs. */
int dvl_manifest_verify(const dvl_manifest *m, dvl_err *err);
/* The same for the sizes alone (a stat per shard, no reading): a missing or
 * truncated shard found at once, where the checksums would cost a pass
 * over the whole dataset. */
int dvl_manifest_verify_sizes(const dvl_manifest *m, dvl_err *err);

/* "%016llx" of v into buf[17]; and back (false when s is not 16 hex digits). */
void dvl_hex64(uint64_t v, char buf[17]);
bool dvl_parse_hex64(const char *s, uint64_t *v);

#endif
