/* `dvl-prep synth`: a procedural shapes dataset small enough to train a toy
 * vision-language model end to end. Each image is a light background with
 * 1-4 flat shapes (circle, square, triangle, star, diamond) in six named
 * colours; each sample asks for a caption or a short answer (how many X,
 * what colour is the X, how many shapes) in a small canonical grammar.
 *
 * Output, all deterministic in the seed (same seed, same bytes):
 *   DIR/images/{train,heldout}_NNNNNN.png
 *   DIR/train.json, DIR/heldout.json     LLaVA conversations
 *   DIR/train_meta.jsonl, heldout_meta.jsonl  ground truth, one sample a line
 *   DIR/tokenizer/tokenizer.json, tokenizer_config.json
 *       a Qwen2-format byte-level BPE whose vocabulary is the 256 bytes, one
 *       token per word of the grammar, and the special tokens. */
#ifndef DVL_DATA_SYNTH_H
#define DVL_DATA_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"

typedef struct synth_opts {
    const char *out;   /* output directory (created, with parents) */
    int64_t n;         /* training samples, >= 1 */
    int64_t heldout;   /* held-out samples, >= 0 */
    uint64_t seed;
    int size;          /* image side in pixels */
    int max_shapes;    /* 1..4 shapes an image at most */
    int max_groups;    /* 1..4 distinct (kind, colour) pairs an image at most */
    /* (0 in either: 4, the full grammar) */
    int grid;          /* 0: shapes anywhere; 2..8: centred in cells of a grid x grid lattice */
    int radius_lo, radius_hi; /* grid only: shape radius, % of the cell (0: 30 and 40) */
    bool grey;         /* mid-grey backgrounds instead of light ones */
} synth_opts;

/* Parse `synth --out DIR --n N [--seed S] [--size PX] [--heldout N]
 * [--max-shapes K] [--max-groups G] [--grid G [--radius LO:HI]] [--background light|grey]`;
 * argv[0] is the subcommand name. Defaults: seed 0, size 384, heldout
 * n / 10, 4 shapes, 4 groups, no grid, light. Errors name the option and the bad value. */
int synth_parse_args(int argc, char **argv, synth_opts *o, dvl_err *err);

/* Write the dataset described by o. */
int synth_generate(const synth_opts *o, dvl_err *err);

/* The subcommand: parse, generate, print a one-line summary, or the error
 * and the usage on stderr. Returns the process exit code. */
int prep_synth(int argc, char **argv);

#endif
