/* Entry points of dvl-bench's subcommands and shared timing helpers. */
#ifndef DVL_BENCH_H
#define DVL_BENCH_H

#include <stdbool.h>
#include <time.h>

int bench_ops(int argc, char **argv);
int bench_tokenizer(int argc, char **argv);
int bench_loader(int argc, char **argv);
int bench_train(int argc, char **argv);
int bench_generate(int argc, char **argv);

/* A command's options: kind 0 a flag, 's' a string value, 'i' an int, 'f' a
 * finite number; a list ends with {NULL}. */
typedef struct bench_opt {
    const char *name;
    char kind;
} bench_opt;

#define BENCH_MAX_ARGS 64
typedef struct bench_args {
    int n;
    const char *name[BENCH_MAX_ARGS], *value[BENCH_MAX_ARGS]; /* value NULL: a flag */
} bench_args;

/* argv[1..] into a: true to run the command. False with *exit_code 0 after
 * printing usage for -h/--help, or 2 after one line "dvl-bench CMD: ..." on
 * stderr for an unknown option, a missing value or one of the wrong kind. */
bool bench_args_parse(const char *cmd, const char *usage, int argc, char **argv,
                      const bench_opt *opts, bench_args *a, int *exit_code);
/* The last value given for name (checked by bench_args_parse), else def. */
const char *bench_str(const bench_args *a, const char *name, const char *def);
int bench_int(const bench_args *a, const char *name, int def);
double bench_num(const bench_args *a, const char *name, double def);
bool bench_flag(const bench_args *a, const char *name);

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
