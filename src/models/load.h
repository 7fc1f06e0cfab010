/* Parameters <-> safetensors checkpoints, by name.
 *
 * Loading converts each tensor (F32, BF16 or F16) straight into its slice of
 * the store's flat f32 buffer, a few MiB at a time, and after each piece
 * drops the pages of the read-only mapping it came from (madvise
 * MADV_DONTNEED), so a bf16 checkpoint costs little more than the f32
 * parameters themselves in resident memory. */
#ifndef DVL_MODELS_LOAD_H
#define DVL_MODELS_LOAD_H

#include <stdbool.h>

#include "io/safetensors.h"
#include "tensor/tensor.h"

/* Read every parameter of p whose name starts with `prefix` from checkpoint
 * ix (`ckpt` names it in messages). A parameter named prefix + REST is read
 * from the first of src[0] + REST, ..., src[n_src-1] + REST that the
 * checkpoint has; n_src 0 means its own name. Tensors of the checkpoint that
 * no parameter asks for are ignored. Errors: a missing tensor (naming the
 * first candidate name and the checkpoint), a shape differing from the
 * parameter's (naming the tensor and both shapes), a dtype other than
 * F32/BF16/F16. */
int dvl_params_load(dvl_params *p, dvl_st_index *ix, const char *ckpt, const char *prefix,
                    const char *const *src, int n_src, dvl_err *err);

/* Load one parameter from the first of names[0..n_names) that the
 * checkpoint lists (errors as above, naming names[0] when none is). */
int dvl_param_load(dvl_tensor *par, dvl_st_index *ix, const char *ckpt, const char *const *names,
                   int n_names, dvl_err *err);

/* Whether the checkpoint lists tensor `name`. */
bool dvl_ckpt_has(const dvl_st_index *ix, const char *name);

/* Convert one checkpoint tensor into dst (numel elements) piece by piece,
 * releasing the source pages after each piece. */
int dvl_ckpt_read_release(const dvl_st_tensor *t, float *dst, int64_t numel, dvl_err *err);

/* Add every parameter of p to writer w under its own name, stored as
 * `store` (DVL_F32 or DVL_BF16 / DVL_F16, rounded to nearest even). The
 * writer reads the parameter data when saving. */
int dvl_params_to_writer(const dvl_params *p, dvl_st_writer *w, dvl_dtype store, dvl_err *err);

#endif
