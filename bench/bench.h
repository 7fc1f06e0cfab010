/* Entry points of dvl-bench's subcommands and shared timing helpers. */
#ifndef DVL_BENCH_H
#define DVL_BENCH_H

#include <time.h>

int bench_ops(int argc, char **argv);
int bench_tokenizer(int argc, char **argv);
int bench_loader(int argc, char **argv);
int bench_train(int argc, char **argv);
int bench_generate(int argc, char **argv);

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
