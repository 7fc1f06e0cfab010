/* dvl-bench: benchmarks that print figures (never tests). */
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *what;
} entry;

static const entry benches[] = {
#ifdef HAVE_BENCH_OPS
    {"ops", bench_ops, "GFLOP/s of linear and attention forward+backward beside raw sgemm"},
#endif
#ifdef HAVE_BENCH_TOKENIZER
    {"tokenizer", bench_tokenizer, "MB/s of tokenizer encoding"},
#endif
#ifdef HAVE_BENCH_LOADER
    {"loader", bench_loader, "samples/s of the shard loader"},
#endif
#ifdef HAVE_BENCH_TRAIN
    {"train", bench_train, "tokens/s and GFLOP/s of a training step"},
#endif
#ifdef HAVE_BENCH_GENERATE
    {"generate", bench_generate, "decoding speed of each generation mode"},
#endif
    {NULL, NULL, NULL}};

static int usage(FILE *f)
{
    fprintf(f, "usage: dvl-bench COMMAND [options]\ncommands:\n");
    for (const entry *e = benches; e->name; e++)
        fprintf(f, "  %-10s %s\n", e->name, e->what);
    return f == stderr ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))
        return usage(stdout);
    for (const entry *e = benches; e->name; e++)
        if (!strcmp(argv[1], e->name))
            return e->run(argc - 1, argv + 1);
    fprintf(stderr, "dvl-bench: unknown command '%s' (dvl-bench --help lists them)\n", argv[1]);
    return 2;
}
