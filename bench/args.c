/* dvl-bench's command lines (bench.h): each command names its options, so a
 * mistyped one is an error and not a run with the defaults. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const bench_opt *find(const bench_opt *opts, const char *name)
{
    for (; opts->name; opts++)
        if (!strcmp(opts->name, name))
            return opts;
    return NULL;
}

/* Whether v is what kind asks for: an int or a finite number. */
static bool parses(char kind, const char *v)
{
    char *end;
    errno = 0;
    if (kind == 'i') {
        long x = strtol(v, &end, 10);
        if (x < INT_MIN || x > INT_MAX)
            errno = ERANGE;
    } else if (kind == 'f')
        end = isfinite(strtod(v, &end)) ? end : (char *)v;
    else
        return true;
    return !errno && end != v && !*end;
}

bool bench_args_parse(const char *cmd, const char *usage, int argc, char **argv,
                      const bench_opt *opts, bench_args *a, int *exit_code)
{
    a->n = 0;
    *exit_code = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            *exit_code = 0;
            return false;
        }
        const bench_opt *o = find(opts, argv[i]);
        if (!o) {
            fprintf(stderr,
                    "dvl-bench %s: unknown option %s (dvl-bench %s --help lists the options)\n",
                    cmd, argv[i], cmd);
            return false;
        }
        const char *v = NULL;
        if (o->kind && i + 1 >= argc) {
            fprintf(stderr, "dvl-bench %s: %s needs a value\n", cmd, o->name);
            return false;
        }
        if (o->kind && !parses(o->kind, v = argv[++i])) {
            fprintf(stderr, "dvl-bench %s: %s takes %s, not %s\n", cmd, o->name,
                    o->kind == 'i' ? "an int" : "a number", v);
            return false;
        }
        if (a->n == BENCH_MAX_ARGS) {
            fprintf(stderr, "dvl-bench %s: more than %d options\n", cmd, BENCH_MAX_ARGS);
            return false;
        }
        a->name[a->n] = o->name;
        a->value[a->n++] = v;
    }
    return true;
}

/* The last value given for name, or NULL. */
static const char *last(const bench_args *a, const char *name)
{
    for (int k = a->n - 1; k >= 0; k--)
        if (!strcmp(a->name[k], name))
            return a->value[k] ? a->value[k] : "";
    return NULL;
}

const char *bench_str(const bench_args *a, const char *name, const char *def)
{
    const char *v = last(a, name);
    return v ? v : def;
}

int bench_int(const bench_args *a, const char *name, int def)
{
    const char *v = last(a, name);
    return v ? (int)strtol(v, NULL, 10) : def;
}

double bench_num(const bench_args *a, const char *name, double def)
{
    const char *v = last(a, name);
    return v ? strtod(v, NULL) : def;
}

bool bench_flag(const bench_args *a, const char *name)
{
    return last(a, name) != NULL;
}
