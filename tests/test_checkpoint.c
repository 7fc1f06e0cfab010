/* Training checkpoints: bit-identical round trips (special float values
 * included), bf16 weights, keep-last-K, `latest` resolution and its
 * fallbacks, interrupted saves (planted leftovers, truncated files, and a
 * writer really killed with SIGKILL at random moments), and a table of load
 * errors that must each name the file and the tensor or key, leaving the
 * caller's state untouched. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "util.h"

/* emb[11,6] blk.w[7,13] blk.frozen[9] (frozen) blk.b[13] norm[5] */
static const tu_pspec SPEC[] = {
    {"emb", 2, {11, 6}, true},      {"blk.w", 2, {7, 13}, true}, {"blk.frozen", 1, {9}, false},
    {"blk.b", 1, {13}, true},       {"norm", 1, {5}, true},
};
#define NSPEC 5

static char root[256];

static void make_root(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/dvl-test-ckpt-XXXXXX", t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(root));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_root(void) { nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static bool exists(const char *fmt, const char *a, const char *b)
{
    char path[512];
    snprintf(path, sizeof path, fmt, a, b);
    struct stat st;
    return stat(path, &st) == 0;
}

/* A model mid-training: parameters, moments and step set, 3 RNG states. */
typedef struct run {
    dvl_params *p;
    dvl_adamw *o;
    dvl_rng rng[3];
} run;

static run make_run(uint64_t seed, const tu_pspec *spec, int n)
{
    run r;
    r.p = tu_make_params(spec, n, seed, 1.0f);
    dvl_err err = {0};
    r.o = dvl_adamw_new(r.p, 0.9f, 0.95f, 1e-8f, 0.1f, &err);
    ck_assert_msg(r.o != NULL, "%s", err.msg);
    dvl_rng g;
    dvl_rng_seed(&g, seed * 7 + 1);
    /* Moments of the parameters' elements; the alignment padding between
     * them stays zero, as in training. */
    for (int i = 0; i < r.p->n; i++)
        for (int64_t k = 0; r.p->grad_off[i] >= 0 && k < dvl_numel(r.p->t[i]); k++) {
            r.o->m[r.p->grad_off[i] + k] = dvl_rng_normal(&g);
            r.o->v[r.p->grad_off[i] + k] = dvl_rng_uniform(&g);
        }
    r.o->step = (int64_t)seed * 3 + 4;
    for (int k = 0; k < 3; k++) {
        dvl_rng_seed(&r.rng[k], seed * 100 + (uint64_t)k);
        for (int j = 0; j < k + 5; j++)
            dvl_rng_u64(&r.rng[k]);
    }
    return r;
}

static void free_run(run *r)
{
    dvl_adamw_free(r->o);
    dvl_params_free(r->p);
}

static int save(run *r, int64_t step, int keep, dvl_err *err)
{
    char ls[64];
    snprintf(ls, sizeof ls, "{\"shard\": 3, \"offset\": %lld}", (long long)step * 10);
    return dvl_ckpt_save(root, step, r->p, r->o, r->rng, 3, ls, "{\"optim\": {\"lr\": 0.001}}",
                         keep, DVL_F32, err);
}

static void save_ok(run *r, int64_t step, int keep)
{
    dvl_err err = {0};
    ck_assert_msg(save(r, step, keep, &err) == DVL_OK, "save %lld: %s", (long long)step, err.msg);
}

/* Bitwise equality of two runs' parameters, moments, step and RNGs. */
static void assert_same(const run *a, const run *b)
{
    for (int i = 0; i < a->p->n; i++) {
        const dvl_tensor *x = a->p->t[i], *y = b->p->t[i];
        ck_assert_msg(memcmp(x->data, y->data, (size_t)dvl_numel(x) * sizeof(float)) == 0,
                      "parameter %s differs", x->name);
        if (a->p->grad_off[i] >= 0) {
            size_t n = (size_t)dvl_numel(x) * sizeof(float);
            ck_assert_msg(memcmp(a->o->m + a->p->grad_off[i], b->o->m + b->p->grad_off[i], n) == 0,
                          "m of %s differs", x->name);
            ck_assert_msg(memcmp(a->o->v + a->p->grad_off[i], b->o->v + b->p->grad_off[i], n) == 0,
                          "v of %s differs", x->name);
        }
    }
    ck_assert_int_eq(a->o->step, b->o->step);
    ck_assert(memcmp(a->rng, b->rng, sizeof a->rng) == 0);
}

static void read_latest(char *out, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/latest", root);
    char *s = tu_read_file(path, NULL);
    snprintf(out, n, "%s", s);
    free(s);
}

START_TEST(round_trip_bit_identical)
{
    make_root();
    run a = make_run(1, SPEC, NSPEC);
    /* Values a lossy path would change: -0, NaN with a payload, denormals, infinities. */
    float *e = dvl_f32(tu_param(a.p, "emb"));
    e[0] = -0.0f;
    e[1] = tu_f32_from_bits(0x7fc01234u);
    e[2] = tu_f32_from_bits(0x00000001u);
    e[3] = -INFINITY;
    e[4] = tu_f32_from_bits(0x3eaaaaabu);
    a.o->m[5] = tu_f32_from_bits(0xffc00001u);
    save_ok(&a, 123, 3);

    ck_assert(exists("%s/step-000123/%s", root, "model.safetensors"));
    ck_assert(exists("%s/step-000123/%s", root, "optimizer.safetensors"));
    ck_assert(exists("%s/step-000123/%s", root, "state.json"));
    ck_assert(exists("%s/step-000123/%s", root, "config.json"));
    ck_assert(!exists("%s/%s", root, "step-000123.tmp"));
    char latest[64];
    read_latest(latest, sizeof latest);
    ck_assert_str_eq(latest, "step-000123\n");

    run b = make_run(2, SPEC, NSPEC);
    int64_t step = -1;
    char *ls = NULL;
    dvl_err err = {0};
    ck_assert_msg(dvl_ckpt_load(root, b.p, b.o, &step, b.rng, 3, &ls, &err) == DVL_OK, "%s",
                  err.msg);
    ck_assert_int_eq(step, 123);
    ck_assert_str_eq(ls, "{\"shard\": 3, \"offset\": 1230}");
    free(ls);
    assert_same(&a, &b);

    /* A folder path works as well as the root, and the config comes back. */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/step-000123", root);
    run c = make_run(3, SPEC, NSPEC);
    ck_assert_int_eq(dvl_ckpt_load(dir, c.p, c.o, NULL, c.rng, 3, NULL, &err), DVL_OK);
    assert_same(&a, &c);
    char *cfg = dvl_ckpt_read_config(root, &err);
    ck_assert_str_eq(cfg, "{\"optim\": {\"lr\": 0.001}}");
    free(cfg);
    char out[512];
    ck_assert_int_eq(dvl_ckpt_resolve(root, out, sizeof out, &err), DVL_OK);
    ck_assert_str_eq(out, dir);

    /* Weights only (an export): loads without an optimizer; no loader state. */
    dvl_rng r0;
    dvl_rng_seed(&r0, 9);
    ck_assert_int_eq(dvl_ckpt_save(root, 200, a.p, NULL, &r0, 1, NULL, NULL, 0, DVL_F32, &err),
                     DVL_OK);
    run d = make_run(4, SPEC, NSPEC);
    ls = (char *)"untouched";
    ck_assert_int_eq(dvl_ckpt_load(root, d.p, NULL, &step, NULL, 0, &ls, &err), DVL_OK);
    ck_assert_ptr_null(ls);
    ck_assert_int_eq(step, 200);
    for (int i = 0; i < NSPEC; i++)
        ck_assert(memcmp(a.p->t[i]->data, d.p->t[i]->data,
                         (size_t)dvl_numel(a.p->t[i]) * sizeof(float)) == 0);
    free_run(&a);
    free_run(&b);
    free_run(&c);
    free_run(&d);
    remove_root();
}
END_TEST

START_TEST(bf16_weights)
{
    make_root();
    run a = make_run(5, SPEC, NSPEC);
    dvl_err err = {0};
    ck_assert_int_eq(dvl_ckpt_save(root, 1, a.p, a.o, a.rng, 3, NULL, "{}", 0, DVL_BF16, &err),
                     DVL_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/step-000001/model.safetensors", root);
    dvl_st_file *f = dvl_st_open(path, &err);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(dvl_st_find(f, "emb", NULL)->dtype, DVL_ST_BF16);
    dvl_st_close(f);
    run b = make_run(6, SPEC, NSPEC);
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_OK);
    for (int i = 0; i < NSPEC; i++) {
        const float *x = dvl_f32(a.p->t[i]), *y = dvl_f32(b.p->t[i]);
        for (int64_t k = 0; k < dvl_numel(a.p->t[i]); k++)
            ck_assert(tu_f32_bits(y[k]) == tu_f32_bits(dvl_bf16_to_f32(dvl_f32_to_bf16(x[k]))));
    }
    /* The moments stay f32: exact. */
    ck_assert(memcmp(a.o->m, b.o->m, (size_t)a.p->numel_grad * sizeof(float)) == 0);
    free_run(&a);
    free_run(&b);
    remove_root();
}
END_TEST

static int count_checkpoints(void)
{
    int n = 0;
    char name[32];
    for (int s = 0; s <= 100; s++) {
        snprintf(name, sizeof name, "step-%06d", s);
        n += exists("%s/%s", root, name);
    }
    return n;
}

START_TEST(keep_last_k)
{
    make_root();
    run a = make_run(7, SPEC, NSPEC);
    for (int s = 10; s <= 40; s += 10)
        save_ok(&a, s, 2);
    ck_assert_int_eq(count_checkpoints(), 2);
    ck_assert(exists("%s/%s", root, "step-000030") && exists("%s/%s", root, "step-000040"));
    char latest[64];
    read_latest(latest, sizeof latest);
    ck_assert_str_eq(latest, "step-000040\n");

    /* A run resumed from an older step: the new save is kept (and is
     * latest), with the newest other one; 30 goes. */
    save_ok(&a, 25, 2);
    ck_assert_int_eq(count_checkpoints(), 2);
    ck_assert(exists("%s/%s", root, "step-000025") && exists("%s/%s", root, "step-000040"));
    read_latest(latest, sizeof latest);
    ck_assert_str_eq(latest, "step-000025\n");

    /* K = 1 keeps only the new one; K = 0 keeps all. */
    save_ok(&a, 26, 1);
    ck_assert_int_eq(count_checkpoints(), 1);
    save_ok(&a, 27, 0);
    save_ok(&a, 28, 0);
    ck_assert_int_eq(count_checkpoints(), 3);

    /* The same step again replaces it. */
    dvl_f32(tu_param(a.p, "norm"))[0] = 42.0f;
    save_ok(&a, 28, 0);
    ck_assert_int_eq(count_checkpoints(), 3);
    run b = make_run(8, SPEC, NSPEC);
    dvl_err err = {0};
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_OK);
    ck_assert(dvl_f32(tu_param(b.p, "norm"))[0] == 42.0f);
    ck_assert(!exists("%s/%s", root, "step-000028.tmp"));
    free_run(&a);
    free_run(&b);
    remove_root();
}
END_TEST

static void write_bytes(const char *path, const char *text) { tu_write_file(path, text, strlen(text)); }

static void truncate_half(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size / 2), 0);
}

/* Load root into a fresh run and return the step it came from. */
static int64_t load_step(const char *path)
{
    run b = make_run(50, SPEC, NSPEC);
    int64_t step = -1;
    dvl_err err = {0};
    int rc = dvl_ckpt_load(path, b.p, b.o, &step, b.rng, 3, NULL, &err);
    ck_assert_msg(rc == DVL_OK, "load %s: %s", path, err.msg);
    free_run(&b);
    return step;
}

START_TEST(interrupted_saves)
{
    make_root();
    run a = make_run(9, SPEC, NSPEC);
    save_ok(&a, 10, 0);
    char path[512];

    /* A save killed while writing: a partial step-*.tmp folder. Ignored,
     * and removed by the next save. */
    snprintf(path, sizeof path, "%s/step-000020.tmp", root);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/step-000020.tmp/model.safetensors", root);
    write_bytes(path, "\x40\x00\x00\x00\x00\x00\x00\x00{\"emb\": {\"dtype\"");
    snprintf(path, sizeof path, "%s/step-000020.tmp/state.json", root);
    write_bytes(path, "{\"format\": \"dvl-checkpoint\", \"version\": 1, \"step\": 20, \"rng\": []}");
    ck_assert_int_eq(load_step(root), 10);
    /* Killed inside a safetensors write inside the folder. */
    snprintf(path, sizeof path, "%s/step-000020.tmp/optimizer.safetensors.tmp", root);
    write_bytes(path, "partial");
    save_ok(&a, 20, 0);
    ck_assert(!exists("%s/%s", root, "step-000020.tmp"));
    ck_assert(!exists("%s/%s", root, "step-000020/optimizer.safetensors.tmp"));
    ck_assert_int_eq(load_step(root), 20);

    /* Killed after the folder rename, before latest moved: latest wins. */
    snprintf(path, sizeof path, "%s/latest", root);
    write_bytes(path, "step-000010\n");
    ck_assert_int_eq(load_step(root), 10);
    /* A first save killed before latest existed: the newest complete folder. */
    unlink(path);
    ck_assert_int_eq(load_step(root), 20);
    /* latest naming a folder that is gone, or garbage: the same fallback. */
    write_bytes(path, "step-000099\n");
    ck_assert_int_eq(load_step(root), 20);
    write_bytes(path, "../../etc\n");
    ck_assert_int_eq(load_step(root), 20);
    /* A half-removed folder (no state.json) is not a checkpoint. */
    snprintf(path, sizeof path, "%s/step-000030", root);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    ck_assert_int_eq(load_step(root), 20);

    /* A truncated file in an old checkpoint: the newest still loads, the
     * old one fails naming the file, and the caller's state is untouched. */
    snprintf(path, sizeof path, "%s/latest", root);
    write_bytes(path, "step-000020\n");
    snprintf(path, sizeof path, "%s/step-000010/model.safetensors", root);
    truncate_half(path);
    ck_assert_int_eq(load_step(root), 20);
    run b = make_run(51, SPEC, NSPEC);
    run before = make_run(51, SPEC, NSPEC);
    dvl_err err = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/step-000010", root);
    ck_assert_int_ne(dvl_ckpt_load(dir, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_OK);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "message: %s", err.msg);
    assert_same(&before, &b);
    snprintf(path, sizeof path, "%s/step-000020/optimizer.safetensors", root);
    truncate_half(path);
    ck_assert_int_ne(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_OK);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "message: %s", err.msg);
    assert_same(&before, &b);
    snprintf(path, sizeof path, "%s/step-000020/state.json", root);
    truncate_half(path);
    ck_assert_int_ne(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_OK);
    ck_assert_str_eq(err.msg + strlen(err.msg) - strlen("state.json: not a JSON object (truncated or corrupt)"),
                     "state.json: not a JSON object (truncated or corrupt)");
    assert_same(&before, &b);
    free_run(&a);
    free_run(&b);
    free_run(&before);
    remove_root();
}
END_TEST

/* Parameters and moments of step s: every element a function of s, so a
 * loaded checkpoint shows whether its files all come from one save. */
static void fill_step(run *r, int64_t s)
{
    for (int64_t i = 0; i < r->p->numel; i++)
        r->p->data[i] = (float)(s * 4099 + i % 4093);
    for (int64_t i = 0; i < r->p->numel_grad; i++) {
        r->o->m[i] = (float)(s * 17 + i % 31);
        r->o->v[i] = (float)(s * 5 + i % 7);
    }
    r->o->step = s;
    for (int k = 0; k < 3; k++)
        dvl_rng_seed(&r->rng[k], (uint64_t)s * 3 + (uint64_t)k);
}

/* A big enough model that a save takes a while (~1 MiB of weights). */
static const tu_pspec BIG[] = {
    {"a", 2, {256, 512}, true}, {"b", 2, {300, 301}, true}, {"c", 1, {1000}, false},
};

START_TEST(killed_mid_save)
{
    make_root();
    run a = make_run(10, BIG, 3);
    fill_step(&a, 1);
    save_ok(&a, 1, 2);
    unsigned seed = 12345; /* the kill times vary with the machine anyway */
    /* Each round: a child saves steps in a loop; it is killed after a random
     * delay; what is on disk must load, and be one consistent save. */
    int64_t last = 1;
    for (int round = 0; round < 8; round++) {
        int64_t base = (round + 1) * 1000;
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            for (int64_t s = base;; s++) {
                fill_step(&a, s);
                dvl_err err = {0};
                if (save(&a, s, 2, &err) != DVL_OK) {
                    fprintf(stderr, "child save %lld: %s\n", (long long)s, err.msg);
                    _exit(1);
                }
            }
        }
        usleep(2000 + (unsigned)(rand_r(&seed) % 150000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        ck_assert_msg(WIFSIGNALED(status), "the saving child stopped by itself (status %d)", status);

        run b = make_run(11, BIG, 3);
        int64_t step = -1;
        dvl_err err = {0};
        int rc = dvl_ckpt_load(root, b.p, b.o, &step, b.rng, 3, NULL, &err);
        ck_assert_msg(rc == DVL_OK, "round %d: %s", round, err.msg);
        ck_assert_msg(step == last || step >= base, "round %d: step %lld (previous %lld)", round,
                      (long long)step, (long long)last);
        run want = make_run(11, BIG, 3);
        fill_step(&want, step);
        assert_same(&want, &b);
        free_run(&b);
        free_run(&want);
        last = step;
        /* Not only the one latest names: every folder called step-N is
         * complete (a save writes under step-N.tmp and renames). */
        DIR *d = opendir(root);
        struct dirent *de;
        int complete = 0;
        while ((de = readdir(d))) {
            if (strncmp(de->d_name, "step-", 5) != 0 || strchr(de->d_name, '.'))
                continue;
            char dir[600];
            snprintf(dir, sizeof dir, "%s/%s", root, de->d_name);
            run c = make_run(12, BIG, 3);
            rc = dvl_ckpt_load(dir, c.p, c.o, &step, c.rng, 3, NULL, &err);
            ck_assert_msg(rc == DVL_OK, "round %d: %s", round, err.msg);
            ck_assert_int_eq(strtoll(de->d_name + 5, NULL, 10), step);
            run want2 = make_run(12, BIG, 3);
            fill_step(&want2, step);
            assert_same(&want2, &c);
            free_run(&c);
            free_run(&want2);
            complete++;
        }
        closedir(d);
        ck_assert_int_ge(complete, 1);
        if (getenv("TU_VERBOSE"))
            fprintf(stderr, "killed_mid_save round %d: resumed from step %lld, %d complete\n",
                    round, (long long)last, complete);
    }
    free_run(&a);
    remove_root();
}
END_TEST

START_TEST(load_errors)
{
    make_root();
    run a = make_run(12, SPEC, NSPEC);
    save_ok(&a, 5, 0);
    dvl_err err = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/step-000005", root);

    /* Each case: a store (maybe of another shape), and the message's tail. */
    const tu_pspec renamed[] = {
        {"emb", 2, {11, 6}, true}, {"blk.W", 2, {7, 13}, true}, {"blk.frozen", 1, {9}, false},
        {"blk.b", 1, {13}, true},  {"norm", 1, {5}, true},
    };
    const tu_pspec missing[] = {
        {"emb", 2, {11, 6}, true}, {"blk.w", 2, {7, 13}, true}, {"blk.frozen", 1, {9}, false},
        {"blk.b", 1, {13}, true},
    };
    const tu_pspec reshaped[] = {
        {"emb", 2, {11, 6}, true}, {"blk.w", 2, {13, 7}, true}, {"blk.frozen", 1, {9}, false},
        {"blk.b", 1, {13}, true},  {"norm", 1, {5}, true},
    };
    const tu_pspec now_frozen[] = {
        {"emb", 2, {11, 6}, true}, {"blk.w", 2, {7, 13}, false}, {"blk.frozen", 1, {9}, false},
        {"blk.b", 1, {13}, true},  {"norm", 1, {5}, true},
    };
    const tu_pspec now_trainable[] = {
        {"emb", 2, {11, 6}, true}, {"blk.w", 2, {7, 13}, true}, {"blk.frozen", 1, {9}, true},
        {"blk.b", 1, {13}, true},  {"norm", 1, {5}, true},
    };
    const struct {
        const tu_pspec *spec;
        int n;
        const char *file, *msg;
    } rows[] = {
        {renamed, 5, "model.safetensors", ": tensor \"blk.W\" is missing"},
        {missing, 4, "model.safetensors", ": tensor \"norm\" is not a parameter of the model"},
        {reshaped, 5, "model.safetensors",
         ": tensor \"blk.w\" has shape [7, 13] but the model's is [13, 7]"},
        {now_frozen, 5, "optimizer.safetensors",
         ": tensor \"m.blk.w\" is a moment of blk.w, which is frozen"},
        {now_trainable, 5, "optimizer.safetensors", ": tensor \"m.blk.frozen\" is missing"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        run b = make_run(20 + i, rows[i].spec, rows[i].n);
        run before = make_run(20 + i, rows[i].spec, rows[i].n);
        char want[600];
        snprintf(want, sizeof want, "%s/%s%s", dir, rows[i].file, rows[i].msg);
        ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_EINVAL);
        ck_assert_msg(strcmp(err.msg, want) == 0, "row %zu:\n  got      %s\n  expected %s", i,
                      err.msg, want);
        assert_same(&before, &b);
        free_run(&b);
        free_run(&before);
    }

    run b = make_run(30, SPEC, NSPEC);
    char want[700];
    /* A ZeRO-1 shard of the optimizer (its moments cover part of the
     * gradient buffer only): neither saved nor loaded, nothing touched. */
    {
        dvl_adamw *shard = dvl_adamw_new_shard(b.p, 16, b.p->numel_grad, 0.9f, 0.95f, 1e-8f, 0.1f,
                                               &err);
        ck_assert_ptr_nonnull(shard);
        run before = make_run(30, SPEC, NSPEC);
        ck_assert_int_eq(dvl_ckpt_load(root, b.p, shard, NULL, b.rng, 3, NULL, &err), DVL_EINVAL);
        ck_assert_ptr_nonnull(strstr(err.msg, "the optimizer is a ZeRO-1 shard [16, "));
        assert_same(&before, &b);
        ck_assert_int_eq(dvl_ckpt_save(root, 9, b.p, shard, b.rng, 3, NULL, "{}", 0, DVL_F32, &err),
                         DVL_EINVAL);
        ck_assert_ptr_nonnull(strstr(err.msg, "(gather it first)"));
        ck_assert(!exists("%s/%s", root, "step-000009"));
        dvl_adamw_free(shard);
        free_run(&before);
    }
    /* The RNG count (another world size). */
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 2, NULL, &err), DVL_EINVAL);
    snprintf(want, sizeof want, "%s/state.json: rng: 3 states saved, 2 expected (another world size?)",
             dir);
    ck_assert_str_eq(err.msg, want);
    /* A missing file. */
    char path[600];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    char moved[620];
    snprintf(moved, sizeof moved, "%s.away", path);
    ck_assert_int_eq(rename(path, moved), 0);
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_EIO);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0 && strstr(err.msg, "cannot open"),
                  "%s", err.msg);
    /* Without an optimizer to restore the file is not needed. */
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, NULL, NULL, b.rng, 3, NULL, &err), DVL_OK);
    ck_assert_int_eq(rename(moved, path), 0);
    /* A corrupt RNG word. */
    snprintf(path, sizeof path, "%s/state.json", dir);
    char *state = tu_read_file(path, NULL);
    char *w = strstr(state, "\"rng\"");
    ck_assert_ptr_nonnull(w);
    w = strchr(w, '"' );
    w = strstr(w + 6, "\"");
    w[1] = 'x'; /* the first hex digit of rng[0][0] */
    tu_write_file(path, state, strlen(state));
    free(state);
    ck_assert_int_eq(dvl_ckpt_load(root, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_EIO);
    snprintf(want, sizeof want, "%s: rng[0]: not 4 words of 16 hex digits", path);
    ck_assert_str_eq(err.msg, want);
    /* Nothing there at all. */
    char empty[300];
    snprintf(empty, sizeof empty, "%s/empty", root);
    ck_assert_int_eq(mkdir(empty, 0755), 0);
    ck_assert_int_eq(dvl_ckpt_load(empty, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_EIO);
    snprintf(want, sizeof want, "%s: no checkpoint here (no state.json, latest or step-* folder)",
             empty);
    ck_assert_str_eq(err.msg, want);
    snprintf(empty, sizeof empty, "%s/nope", root);
    ck_assert_int_eq(dvl_ckpt_load(empty, b.p, b.o, NULL, b.rng, 3, NULL, &err), DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "nope: no such checkpoint folder"));
    ck_assert_ptr_null(dvl_ckpt_read_config(empty, &err));

    /* Save errors. */
    ck_assert_int_eq(dvl_ckpt_save(root, 6, b.p, a.o, NULL, 0, NULL, "{}", 0, DVL_F32, &err),
                     DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "the optimizer belongs to another parameter store"));
    ck_assert_int_eq(dvl_ckpt_save(root, 6, b.p, b.o, NULL, 0, NULL, "{", 0, DVL_F32, &err),
                     DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "the configuration to save is not a JSON object"));
    ck_assert_int_eq(dvl_ckpt_save(root, 6, b.p, b.o, NULL, 0, NULL, "{}", 0, DVL_F16, &err),
                     DVL_EINVAL);
    ck_assert_int_eq(dvl_ckpt_save(root, -1, b.p, b.o, NULL, 0, NULL, "{}", 0, DVL_F32, &err),
                     DVL_EINVAL);
    snprintf(path, sizeof path, "%s/latest/sub", root);
    ck_assert_int_eq(dvl_ckpt_save(path, 6, b.p, b.o, NULL, 0, NULL, "{}", 0, DVL_F32, &err),
                     DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "latest"));
    free_run(&a);
    free_run(&b);
    remove_root();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_test(tc, round_trip_bit_identical);
    tcase_add_test(tc, bf16_weights);
    tcase_add_test(tc, keep_last_k);
    tcase_add_test(tc, interrupted_saves);
    tcase_add_test(tc, killed_mid_save);
    tcase_add_test(tc, load_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
