/* Training checkpoints: everything a run needs to continue exactly where it
 * stopped, one folder per save.
 *
 *   ROOT/step-000123/
 *     model.safetensors      every parameter by name (f32; bf16 on request)
 *     optimizer.safetensors  "m.<name>", "v.<name>" per trainable parameter,
 *                            metadata: step (updates done) and the betas/eps/wd
 *     state.json             step, the RNG states as hex words, the data
 *                            loader's state (verbatim text), dvl version
 *     config.json            the resolved configuration (dvl_cfg_dump)
 *   ROOT/latest              "step-000123\n": the newest complete checkpoint
 *
 * Crash safety. A save writes ROOT/step-000123.tmp/, fsyncs every file and
 * the folder, renames the folder to ROOT/step-000123 (atomic), and only then
 * points ROOT/latest at it (tmp + rename) and deletes checkpoints beyond
 * the newest K. Killed at any moment, even mid-save, ROOT still holds the
 * previous complete checkpoint and `latest` names a complete one (or, in a
 * window of a first save, is absent while the new folder is complete:
 * loading then falls back to the newest step-* folder). Folders named
 * step-*.tmp are never loaded and are removed at the start of the next save.
 * Old checkpoints are renamed to step-*.tmp before removal, so a half-deleted
 * one is never mistaken for a checkpoint.
 *
 * Saving the same step twice replaces the folder atomically (Linux
 * renameat2 RENAME_EXCHANGE).
 *
 * Loading restores bit-identical parameters, moments, steps and RNG states
 * (when the model was saved as f32). It checks everything first - every
 * file present and valid, every name and shape matching the store, the RNG
 * count - and writes into the store only when all is well, so a failed load
 * leaves the caller's state untouched. Errors name the file and the tensor
 * or key at fault. */
#ifndef DVL_CHECKPOINT_H
#define DVL_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "optim/adamw.h"
#include "tensor/tensor.h"

/* Save step `step` under root (created if missing).
 *   opt           the optimizer (NULL: no optimizer.safetensors, e.g. an
 *                 export; such a checkpoint loads only with opt NULL)
 *   rng, n_rng    RNG states to restore (e.g. every rank's, gathered)
 *   loader_state  text kept verbatim (JSON recommended), NULL for none
 *   config_json   the resolved configuration (NULL: "{}")
 *   keep_last     keep this many newest checkpoints (by step; the one just
 *                 saved always stays); 0 keeps all
 *   model_dtype   DVL_F32 (exact resume) or DVL_BF16 (half the size; the
 *                 weights then load rounded)
 * Returns DVL_OK or an error code; on failure the previous checkpoints and
 * `latest` are as they were (at most a step-*.tmp folder is left). */
int dvl_ckpt_save(const char *root, int64_t step, const dvl_params *p, const dvl_adamw *opt,
                  const dvl_rng *rng, int n_rng, const char *loader_state,
                  const char *config_json, int keep_last, dvl_dtype model_dtype, dvl_err *err);

/* The checkpoint folder `path` names: path itself when it holds a
 * state.json, else the folder ROOT/latest names under path = ROOT, else the
 * newest complete ROOT/step-* folder. Writes it to out (size n). */
int dvl_ckpt_resolve(const char *path, char *out, size_t n, dvl_err *err);

/* The saved configuration text of the checkpoint at path (resolved as
 * above), malloc'd: a resumed run builds its model from it before loading. */
char *dvl_ckpt_read_config(const char *path, dvl_err *err);

/* Restore the checkpoint at path (resolved as above) into p (allocated,
 * same parameter names and shapes) and opt (NULL to skip the optimizer).
 *   step          the saved step (may be NULL)
 *   rng, n_rng    n_rng must equal the saved count (NULL/0 to skip)
 *   loader_state  malloc'd copy of the saved text, NULL when none was
 *                 saved (may be NULL to skip)
 * On error nothing has been written to p, opt, rng or the outputs. */
int dvl_ckpt_load(const char *path, dvl_params *p, dvl_adamw *opt, int64_t *step, dvl_rng *rng,
                  int n_rng, char **loader_state, dvl_err *err);

#endif
