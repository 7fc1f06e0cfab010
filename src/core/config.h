/* Typed run configuration: a schema the program declares, a JSON file, and
 * `--set a.b=value` overrides on the command line.
 *
 * The program declares every key it reads as a dotted path into nested JSON
 * objects ("optim.lr" is {"optim": {"lr": ...}}), with a type, a default,
 * a range or the allowed values, and a help line:
 *
 *   static const dvl_cfg_key KEYS[] = {
 *       {"optim.lr", DVL_CFG_FLOAT, .def = "3e-4", .ranged = true, .min = 0, .max = 1,
 *        .help = "peak learning rate"},
 *       {"optim.schedule", DVL_CFG_ENUM, .def = "cosine", .choices = "cosine|linear|constant"},
 *       {"data.train", DVL_CFG_STRING, .required = true, .help = "training shards"},
 *   };
 *   dvl_cfg *c = dvl_cfg_load(KEYS, n, "configs/x.json", sets, n_sets, &err);
 *   double lr = dvl_cfg_float(c, "optim.lr");
 *
 * Loading is strict, because a typo in a config silently training with a
 * default is the expensive kind of bug: a key the schema does not declare
 * (anywhere in the file, however deeply nested), a value of the wrong type,
 * a number out of range, an enum value not listed, a duplicated key or a
 * missing required key are all errors, reported as one line naming the
 * source and the key:
 *
 *   configs/x.json: optim.lr: expected a number, got string "fast"
 *   --set optim.lrr=1: unknown key (did you mean optim.lr?)
 *
 * Values given with --set are written as on a command line (1e-4, true,
 * cosine, any text for strings) and parsed per the key's type; they are
 * applied after the file, in order, and validated like the file's values.
 *
 * The resolved configuration (every key, defaults included) dumps as JSON
 * that loads back to the same values; checkpoints keep it so a resumed run
 * uses exactly the configuration it started with. */
#ifndef DVL_CONFIG_H
#define DVL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

typedef enum dvl_cfg_type {
    DVL_CFG_FLOAT = 0, /* JSON number (double; integers accepted) */
    DVL_CFG_INT,       /* JSON number without a fraction, |v| <= 2^53 */
    DVL_CFG_BOOL,      /* JSON true / false; --set true / false */
    DVL_CFG_STRING,    /* JSON string; --set takes the text after '=' as is */
    DVL_CFG_ENUM       /* JSON string, one of `choices` */
} dvl_cfg_type;

/* One key of the schema. Write tables with designated initialisers; the
 * zeroed fields mean "no default, optional, no range". */
typedef struct dvl_cfg_key {
    const char *path; /* dotted: "optim.lr"; segments are [A-Za-z0-9_-]+ */
    dvl_cfg_type type;
    /* Default, written as for --set ("3e-4", "true", "cosine"); NULL for
     * none. A key with neither a default nor `required` is unset until
     * given; only strings may be like that (dvl_cfg_str returns NULL). */
    const char *def;
    bool required; /* must come from the file or --set; def must be NULL */
    bool ranged;   /* float, int: min <= value <= max */
    double min, max;
    const char *choices; /* enum: "a|b|c" */
    const char *help;
} dvl_cfg_key;

typedef struct dvl_cfg dvl_cfg;

/* Check the schema, then read the JSON file at `path` (NULL: defaults
 * only), apply the n_sets overrides "a.b=value" in order, and validate.
 * NULL on any error with one line in err naming the source (the file,
 * "--set a.b=value" or "config schema") and the key. The key table must
 * outlive the returned configuration. */
dvl_cfg *dvl_cfg_load(const dvl_cfg_key *keys, int n_keys, const char *path,
                      const char *const *sets, int n_sets, dvl_err *err);
/* The same from JSON text in memory; `name` stands for the file in
 * messages (e.g. "ckpt/step-000100/config.json"). */
dvl_cfg *dvl_cfg_parse(const dvl_cfg_key *keys, int n_keys, const char *json, const char *name,
                       const char *const *sets, int n_sets, dvl_err *err);
void dvl_cfg_free(dvl_cfg *c);

/* Typed getters. Asking for a key the schema lacks, or with the wrong
 * getter, is a bug in the program: the getter returns 0 / false / NULL and
 * the first such misuse is kept for dvl_cfg_check, so a program reads all
 * its keys and checks once. dvl_cfg_str serves strings and enums. */
double dvl_cfg_float(dvl_cfg *c, const char *key);
int64_t dvl_cfg_int(dvl_cfg *c, const char *key);
bool dvl_cfg_bool(dvl_cfg *c, const char *key);
const char *dvl_cfg_str(dvl_cfg *c, const char *key);
/* An enum's value as its index in `choices` (-1 on misuse). */
int dvl_cfg_enum(dvl_cfg *c, const char *key);
/* Whether the key has a value (false only for an unset optional string). */
bool dvl_cfg_is_set(dvl_cfg *c, const char *key);
/* Where the value came from: the file's name, "--set" or "default". */
const char *dvl_cfg_source(dvl_cfg *c, const char *key);
/* DVL_OK, or the first getter misuse (an undeclared key, a wrong type). */
int dvl_cfg_check(const dvl_cfg *c, dvl_err *err);

/* The resolved configuration as nested JSON (every set key; numbers printed
 * so that they parse back to the same double), malloc'd, NULL when out of
 * memory. Loading it with the same schema gives the same values. */
char *dvl_cfg_dump(const dvl_cfg *c);

/* Every key with its type, default or "required", range or choices and
 * help, one per line, for --help. */
void dvl_cfg_print_help(const dvl_cfg_key *keys, int n_keys, FILE *f);

#endif
