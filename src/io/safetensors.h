/* Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
 *
 *   8 bytes   N, little-endian u64: the header length
 *   N bytes   UTF-8 JSON object {"NAME": {"dtype": "F32", "shape": [2, 3],
 *             "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
 *   rest      the data buffer; offsets are relative to its start
 *
 * Reading memory-maps the file (read-only, pages load on first touch) and
 * validates the whole header up front with the rules of the reference Rust
 * crate, so a file that opens can be read without further bounds checks.
 * Sharded checkpoints (model.safetensors.index.json + model-0000k-of-0000n
 * files) are read through dvl_st_index, which also wraps a single file, so
 * loaders need one code path. Writing is atomic per file (tmp + fsync +
 * rename) and produces the same bytes as the Python package.
 *
 * Handles are not thread-safe (an index opens shards lazily); tensor data
 * pointers stay valid until their file or index is closed. As with any
 * mapping, a file truncated by another process while open makes reads of
 * the lost pages fault (SIGBUS): replace checkpoints by rename, as the
 * writer does, never by rewriting them in place. */
#ifndef DVL_SAFETENSORS_H
#define DVL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/err.h"

/* Every dtype the format defines, in the reference crate's declaration order
 * (which is increasing alignment; the writer sorts by it). dvl computes in
 * f32 and reads F32, BF16 and F16 as f32; the others can be listed and
 * accessed raw. */
typedef enum dvl_st_dtype {
    DVL_ST_BOOL = 0,
    DVL_ST_F4,
    DVL_ST_F6_E2M3,
    DVL_ST_F6_E3M2,
    DVL_ST_U8,
    DVL_ST_I8,
    DVL_ST_F8_E5M2,
    DVL_ST_F8_E4M3,
    DVL_ST_F8_E8M0,
    DVL_ST_F8_E4M3FNUZ,
    DVL_ST_F8_E5M2FNUZ,
    DVL_ST_I16,
    DVL_ST_U16,
    DVL_ST_F16,
    DVL_ST_BF16,
    DVL_ST_I32,
    DVL_ST_U32,
    DVL_ST_F32,
    DVL_ST_C64,
    DVL_ST_F64,
    DVL_ST_I64,
    DVL_ST_U64,
    DVL_ST_NDTYPES
} dvl_st_dtype;

/* "F32", "BF16", ... as written in headers. */
const char *dvl_st_dtype_name(dvl_st_dtype t);
/* Bits per element (4 and 6 for the packed float types). */
int dvl_st_dtype_bits(dvl_st_dtype t);
/* The dvl dtype with the same storage (F32, BF16, F16, I32); false if none. */
bool dvl_st_dtype_to_dvl(dvl_st_dtype t, dvl_dtype *out);

/* One tensor of an open file. All fields are read-only. */
typedef struct dvl_st_tensor {
    const char *name;
    dvl_st_dtype dtype;
    int ndim;             /* 0 for a scalar */
    const int64_t *shape; /* ndim entries */
    int64_t numel;        /* product of shape, 1 for a scalar */
    int64_t nbytes;
    /* The tensor's bytes inside the mapping (little-endian, row-major). Not
     * necessarily aligned to the element size: a writer other than the
     * reference one may leave the data buffer at any offset. */
    const void *data;
    const char *path; /* the file it lives in, for messages */
} dvl_st_tensor;

/* ------------------------------------------------------------ one file */
typedef struct dvl_st_file dvl_st_file;

/* Map and validate path. NULL on any error, with one line in err naming the
 * file and the tensor or key at fault. */
dvl_st_file *dvl_st_open(const char *path, dvl_err *err);
void dvl_st_close(dvl_st_file *f);
const char *dvl_st_path(const dvl_st_file *f);

/* Tensors sorted by name. */
int dvl_st_count(const dvl_st_file *f);
const dvl_st_tensor *dvl_st_tensor_at(const dvl_st_file *f, int i);
/* NULL when there is no such tensor (err may be NULL; otherwise it names the
 * file and the tensor). */
const dvl_st_tensor *dvl_st_find(const dvl_st_file *f, const char *name, dvl_err *err);
/* The raw bytes of tensor `name` (see dvl_st_tensor.data); NULL if absent. */
const void *dvl_st_raw(const dvl_st_file *f, const char *name, int64_t *nbytes, dvl_err *err);

/* Copy tensor `name` into dst as f32, converting from F32, BF16 or F16 (the
 * conversions are exact). numel is the caller's element count and must equal
 * the tensor's. Returns DVL_OK or an error code. */
int dvl_st_read_f32(const dvl_st_file *f, const char *name, float *dst, int64_t numel,
                    dvl_err *err);
int dvl_st_tensor_read_f32(const dvl_st_tensor *t, float *dst, int64_t numel, dvl_err *err);

/* The "__metadata__" strings, sorted by key. dvl_st_meta returns NULL when
 * the key is absent. */
int dvl_st_meta_count(const dvl_st_file *f);
void dvl_st_meta_at(const dvl_st_file *f, int i, const char **key, const char **value);
const char *dvl_st_meta(const dvl_st_file *f, const char *key);

/* ------------------------------------------- a checkpoint: one file or shards */
typedef struct dvl_st_index dvl_st_index;

/* Open a checkpoint from a path that is either an index JSON
 * ({"metadata": {...}, "weight_map": {"tensor": "shard file name"}}; the
 * shards sit in the same folder) or a single .safetensors file. Shards are
 * checked to exist now and mapped on first use. */
dvl_st_index *dvl_st_index_open(const char *path, dvl_err *err);
/* Open the checkpoint in dir: model.safetensors if present, else
 * model.safetensors.index.json (the order transformers uses). */
dvl_st_index *dvl_st_open_dir(const char *dir, dvl_err *err);
void dvl_st_index_close(dvl_st_index *ix);
/* Whether the checkpoint came from an index (else it is one file). */
bool dvl_st_index_is_sharded(const dvl_st_index *ix);

/* Tensor names, sorted. */
int dvl_st_index_count(const dvl_st_index *ix);
const char *dvl_st_index_name(const dvl_st_index *ix, int i);
/* Path of the file holding tensor `name`, NULL if none. */
const char *dvl_st_index_file_of(const dvl_st_index *ix, const char *name);
/* Look a tensor up by name, mapping its shard on first use. NULL with a
 * message naming the index, the shard file and the tensor when the name is
 * not listed, the shard is missing or invalid, or the shard lacks it. */
const dvl_st_tensor *dvl_st_index_find(dvl_st_index *ix, const char *name, dvl_err *err);
int dvl_st_index_read_f32(dvl_st_index *ix, const char *name, float *dst, int64_t numel,
                          dvl_err *err);
/* Open every shard and check that each listed tensor is in its shard. */
int dvl_st_index_verify(dvl_st_index *ix, dvl_err *err);

/* ------------------------------------------------------------- writing */
typedef struct dvl_st_writer dvl_st_writer;

dvl_st_writer *dvl_st_writer_new(void);
void dvl_st_writer_free(dvl_st_writer *w);

/* Add tensor `name` with f32 source data, stored as `store` (F32, BF16 or
 * F16; rounding is to nearest even). The name and shape are copied; `src` is
 * NOT copied and must stay valid until the last save. ndim 0 is a scalar. */
int dvl_st_writer_add(dvl_st_writer *w, const char *name, dvl_dtype store, int ndim,
                      const int64_t *shape, const float *src, dvl_err *err);
/* Add a tensor whose bytes are already in dtype `dtype` (F32, BF16, F16 or
 * I32), stored unchanged. `data` is not copied either. */
int dvl_st_writer_add_raw(dvl_st_writer *w, const char *name, dvl_dtype dtype, int ndim,
                          const int64_t *shape, const void *data, dvl_err *err);
/* Set a "__metadata__" string (a repeated key replaces the value). */
int dvl_st_writer_meta(dvl_st_writer *w, const char *key, const char *value, dvl_err *err);

/* Write one file, atomically: path.tmp is written, fsynced and renamed over
 * path; on failure path is untouched and path.tmp is removed. The layout is
 * the reference one: tensors sorted by dtype (widest first) then name, data
 * contiguous, header padded with spaces so the data starts 8-byte aligned. */
int dvl_st_writer_save(const dvl_st_writer *w, const char *path, dvl_err *err);

/* Write into folder dir in shards of at most max_shard_bytes of tensor data
 * (a larger tensor gets a shard of its own), split in the order tensors were
 * added exactly as huggingface_hub does: model-00001-of-0000n.safetensors ...
 * and then model.safetensors.index.json with metadata.total_size (the bytes
 * of all tensors) and the weight map. When everything fits in one shard the
 * result is a plain model.safetensors and no index, as in transformers.
 * Every file is replaced atomically and the index is written last, so the
 * checkpoint is complete once the index is in place. */
int dvl_st_writer_save_sharded(const dvl_st_writer *w, const char *dir, int64_t max_shard_bytes,
                               dvl_err *err);

#endif
