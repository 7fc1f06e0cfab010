/* Run configuration: defaults, the file, --set overrides, a table of
 * errors that must each be one exact line naming the source and the key,
 * schema checks, getter misuse, and the resolved dump round trip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/config.h"
#include "util.h"

static const dvl_cfg_key KEYS[] = {
    {"seed", DVL_CFG_INT, .def = "1234", .help = "random seed"},
    {"optim.lr", DVL_CFG_FLOAT, .def = "3e-4", .ranged = true, .min = 0, .max = 1,
     .help = "peak learning rate"},
    {"optim.warmup", DVL_CFG_INT, .def = "100", .ranged = true, .min = 0, .max = 1e9},
    {"optim.schedule", DVL_CFG_ENUM, .def = "cosine", .choices = "cosine|linear|constant"},
    {"model.vision.freeze", DVL_CFG_BOOL, .def = "true"},
    {"data.train", DVL_CFG_STRING, .required = true, .help = "training shards"},
    {"data.val", DVL_CFG_STRING, .help = "optional: validation shards"},
    {"run.name", DVL_CFG_STRING, .def = "dvl"},
};
#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static const char *TRAIN[] = {"data.train=shards/train"};

static dvl_cfg *parse_ok(const char *json, const char *const *sets, int n_sets)
{
    dvl_err err = {0};
    dvl_cfg *c = dvl_cfg_parse(KEYS, NKEYS, json, "configs/x.json", sets, n_sets, &err);
    ck_assert_msg(c != NULL, "unexpected error: %s", err.msg);
    return c;
}

START_TEST(defaults)
{
    dvl_err err = {0};
    dvl_cfg *c = dvl_cfg_load(KEYS, NKEYS, NULL, TRAIN, 1, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_cfg_int(c, "seed"), 1234);
    ck_assert(dvl_cfg_float(c, "optim.lr") == 3e-4);
    ck_assert_int_eq(dvl_cfg_int(c, "optim.warmup"), 100);
    ck_assert_str_eq(dvl_cfg_str(c, "optim.schedule"), "cosine");
    ck_assert_int_eq(dvl_cfg_enum(c, "optim.schedule"), 0);
    ck_assert(dvl_cfg_bool(c, "model.vision.freeze"));
    ck_assert_str_eq(dvl_cfg_str(c, "data.train"), "shards/train");
    ck_assert_ptr_null(dvl_cfg_str(c, "data.val"));
    ck_assert(!dvl_cfg_is_set(c, "data.val"));
    ck_assert(dvl_cfg_is_set(c, "seed"));
    ck_assert_str_eq(dvl_cfg_str(c, "run.name"), "dvl");
    ck_assert_str_eq(dvl_cfg_source(c, "seed"), "default");
    ck_assert_str_eq(dvl_cfg_source(c, "data.train"), "--set");
    ck_assert_int_eq(dvl_cfg_check(c, &err), DVL_OK);
    dvl_cfg_free(c);
}
END_TEST

START_TEST(file_values)
{
    char dir[] = "/tmp/dvl-test-config-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/run.json", dir);
    const char *json = "{\n  \"seed\": -7,\n  \"optim\": {\"lr\": 1, \"schedule\": \"linear\"},\n"
                       "  \"model\": {\"vision\": {\"freeze\": false}},\n"
                       "  \"data\": {\"train\": \"a.bin\", \"val\": \"b.bin\"}\n}\n";
    tu_write_file(path, json, strlen(json));
    dvl_err err = {0};
    dvl_cfg *c = dvl_cfg_load(KEYS, NKEYS, path, NULL, 0, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_cfg_int(c, "seed"), -7);
    ck_assert(dvl_cfg_float(c, "optim.lr") == 1.0); /* an integer is a valid float */
    ck_assert_int_eq(dvl_cfg_enum(c, "optim.schedule"), 1);
    ck_assert(!dvl_cfg_bool(c, "model.vision.freeze"));
    ck_assert_str_eq(dvl_cfg_str(c, "data.val"), "b.bin");
    ck_assert_str_eq(dvl_cfg_source(c, "seed"), path);
    ck_assert_str_eq(dvl_cfg_source(c, "optim.warmup"), "default");
    dvl_cfg_free(c);

    /* A missing file names itself. */
    snprintf(path, sizeof path, "%s/nope.json", dir);
    ck_assert_ptr_null(dvl_cfg_load(KEYS, NKEYS, path, NULL, 0, &err));
    ck_assert_int_eq(err.code, DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "nope.json: cannot open"));
    snprintf(path, sizeof path, "%s/run.json", dir);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(overrides)
{
    const char *json = "{\"optim\": {\"lr\": 0.5}, \"data\": {\"train\": \"file\"}}";
    const char *sets[] = {
        "optim.lr=1e-4",       "optim.lr=2.5e-4", /* the last one wins */
        "seed=-5",             "optim.warmup=0",
        "optim.schedule=constant", "model.vision.freeze=false",
        "run.name=a=b c",      /* everything after the first '=' */
        "data.val=",           /* an empty string is a value */
    };
    dvl_cfg *c = parse_ok(json, sets, 8);
    ck_assert(dvl_cfg_float(c, "optim.lr") == 2.5e-4);
    ck_assert_str_eq(dvl_cfg_source(c, "optim.lr"), "--set");
    ck_assert_int_eq(dvl_cfg_int(c, "seed"), -5);
    ck_assert_int_eq(dvl_cfg_int(c, "optim.warmup"), 0);
    ck_assert_int_eq(dvl_cfg_enum(c, "optim.schedule"), 2);
    ck_assert_str_eq(dvl_cfg_str(c, "optim.schedule"), "constant");
    ck_assert(!dvl_cfg_bool(c, "model.vision.freeze"));
    ck_assert_str_eq(dvl_cfg_str(c, "run.name"), "a=b c");
    ck_assert_str_eq(dvl_cfg_str(c, "data.val"), "");
    ck_assert(dvl_cfg_is_set(c, "data.val"));
    ck_assert_str_eq(dvl_cfg_str(c, "data.train"), "file");
    ck_assert_str_eq(dvl_cfg_source(c, "data.train"), "configs/x.json");
    dvl_cfg_free(c);

    /* A required key can come from --set alone; null unsets an optional string. */
    const char *sets2[] = {"data.train=x"};
    c = parse_ok("{\"data\": {\"val\": null}}", sets2, 1);
    ck_assert_ptr_null(dvl_cfg_str(c, "data.val"));
    dvl_cfg_free(c);
}
END_TEST

/* Each row must fail with exactly this message. */
static const struct {
    const char *json;
    const char *set; /* one --set, or NULL */
    const char *msg;
} ERRORS[] = {
    {"{\"optim\": {\"lr\": \"fast\"}}", NULL,
     "configs/x.json: optim.lr: expected a number, got string \"fast\""},
    {"{\"optim\": {\"lrr\": 1}}", NULL,
     "configs/x.json: optim.lrr: unknown key (did you mean optim.lr?)"},
    {"{\"bogus\": 1}", NULL, "configs/x.json: bogus: unknown key"},
    {"{\"lr\": 0.1}", NULL, "configs/x.json: lr: unknown key (did you mean optim.lr?)"},
    {"{\"model\": {\"vision\": {\"freze\": true}}}", NULL,
     "configs/x.json: model.vision.freze: unknown key (did you mean model.vision.freeze?)"},
    {"{\"model\": {\"vision\": {\"freeze\": true, \"extra\": {\"deep\": 1}}}}", NULL,
     "configs/x.json: model.vision.extra: unknown key"},
    {"{\"optim\": 3}", NULL,
     "configs/x.json: optim: expected an object (a section), got number 3"},
    {"{\"optim\": {\"lr\": {}}}", NULL,
     "configs/x.json: optim.lr: expected a number, got an object"},
    {"{\"optim\": {\"lr\": [1]}}", NULL,
     "configs/x.json: optim.lr: expected a number, got an array"},
    {"{\"optim\": {\"lr\": null}}", NULL,
     "configs/x.json: optim.lr: expected a number, got null"},
    {"{\"seed\": 1.5}", NULL, "configs/x.json: seed: expected an integer, got number 1.5"},
    {"{\"seed\": 1e300}", NULL, "configs/x.json: seed: expected an integer, got number 1e+300"},
    {"{\"seed\": true}", NULL, "configs/x.json: seed: expected an integer, got true"},
    {"{\"model\": {\"vision\": {\"freeze\": \"yes\"}}}", NULL,
     "configs/x.json: model.vision.freeze: expected true or false, got string \"yes\""},
    {"{\"model\": {\"vision\": {\"freeze\": 1}}}", NULL,
     "configs/x.json: model.vision.freeze: expected true or false, got number 1"},
    {"{\"optim\": {\"lr\": 2}}", NULL, "configs/x.json: optim.lr: 2 is out of range [0, 1]"},
    {"{\"optim\": {\"lr\": -1e-9}}", NULL,
     "configs/x.json: optim.lr: -1e-09 is out of range [0, 1]"},
    {"{\"optim\": {\"warmup\": -1}}", NULL,
     "configs/x.json: optim.warmup: -1 is out of range [0, 1000000000]"},
    {"{\"optim\": {\"schedule\": \"cosin\"}}", NULL,
     "configs/x.json: optim.schedule: \"cosin\" is not one of cosine|linear|constant"},
    {"{\"optim\": {\"schedule\": 1}}", NULL,
     "configs/x.json: optim.schedule: expected a string, got number 1"},
    {"{\"data\": {\"train\": null}}", NULL,
     "configs/x.json: data.train: expected a string, got null"},
    {"{\"seed\": 1, \"seed\": 2}", NULL, "configs/x.json: seed: duplicate key"},
    {"{\"optim\": {\"lr\": 0.1, \"lr\": 0.2}}", NULL, "configs/x.json: optim.lr: duplicate key"},
    {"{\"optim.lr\": 0.1}", NULL,
     "configs/x.json: \"optim.lr\": a key may not contain '.'; nest objects instead"},
    {"{}", NULL,
     "configs/x.json: data.train: required key missing (give it in the file or with --set "
     "data.train=...)"},
    {"{\"seed\": 1,\n \"optim\": }", NULL, "configs/x.json:2:11: malformed JSON"},
    {"{\"seed\": 1} x", NULL, "configs/x.json:1:13: malformed JSON"},
    {"[1, 2]", NULL, "configs/x.json: the top level must be a JSON object"},
    /* --set */
    {"{}", "optim.lr=fast", "--set optim.lr=fast: expected a number, got \"fast\""},
    {"{}", "optim.lr=", "--set optim.lr=: expected a number, got \"\""},
    {"{}", "optim.lr=nan", "--set optim.lr=nan: expected a number, got \"nan\""},
    {"{}", "optim.lr=inf", "--set optim.lr=inf: expected a number, got \"inf\""},
    {"{}", "optim.lr=1e-3x", "--set optim.lr=1e-3x: expected a number, got \"1e-3x\""},
    {"{}", "optim.lr=2", "--set optim.lr=2: 2 is out of range [0, 1]"},
    {"{}", "optim.lrr=1", "--set optim.lrr=1: unknown key (did you mean optim.lr?)"},
    {"{}", "nothing=1", "--set nothing=1: unknown key"},
    {"{}", "optim=1", "--set optim=1: optim is a section, not a key"},
    {"{}", "optim.lr", "--set optim.lr: expected key=value"},
    {"{}", "=1", "--set =1: expected key=value"},
    {"{}", "seed=1.5", "--set seed=1.5: expected an integer, got \"1.5\""},
    {"{}", "seed=99999999999999999999", "--set seed=99999999999999999999: expected an integer, "
                                        "got \"99999999999999999999\""},
    {"{}", "seed=9007199254740993", "--set seed=9007199254740993: expected an integer, got "
                                    "\"9007199254740993\""},
    {"{}", "optim.schedule=Cosine",
     "--set optim.schedule=Cosine: \"Cosine\" is not one of cosine|linear|constant"},
    {"{}", "model.vision.freeze=1",
     "--set model.vision.freeze=1: expected true or false, got \"1\""},
};

START_TEST(error_table)
{
    int n = (int)(sizeof ERRORS / sizeof ERRORS[0]);
    for (int i = 0; i < n; i++) {
        /* data.train is given first so the row's own fault is the first one. */
        const char *sets[2] = {"data.train=t", ERRORS[i].set};
        bool needs_train = strstr(ERRORS[i].msg, "data.train") == NULL;
        const char *const *s = needs_train ? sets : sets + 1;
        int ns = (needs_train ? 1 : 0) + (ERRORS[i].set ? 1 : 0);
        dvl_err err = {0};
        dvl_cfg *c = dvl_cfg_parse(KEYS, NKEYS, ERRORS[i].json, "configs/x.json", s, ns, &err);
        ck_assert_msg(c == NULL, "row %d (%s %s) loaded", i, ERRORS[i].json,
                      ERRORS[i].set ? ERRORS[i].set : "");
        ck_assert_int_eq(err.code, DVL_EINVAL);
        ck_assert_msg(strcmp(err.msg, ERRORS[i].msg) == 0, "row %d:\n  got      %s\n  expected %s",
                      i, err.msg, ERRORS[i].msg);
    }
}
END_TEST

START_TEST(schema_errors)
{
    static const struct {
        dvl_cfg_key k[2];
        int n;
        const char *msg;
    } rows[] = {
        {{{"a", DVL_CFG_INT, .def = "1"}, {"a", DVL_CFG_INT, .def = "2"}}, 2,
         "config schema: a: declared twice"},
        {{{"a", DVL_CFG_INT, .def = "1"}, {"a.b", DVL_CFG_INT, .def = "2"}}, 2,
         "config schema: a is both a key and a section"},
        {{{"a..b", DVL_CFG_INT, .def = "1"}}, 1, "config schema: key 0: bad path \"a..b\""},
        {{{"a b", DVL_CFG_INT, .def = "1"}}, 1, "config schema: key 0: bad path \"a b\""},
        {{{"e", DVL_CFG_ENUM, .def = "x"}}, 1, "config schema: e: enum needs choices \"a|b|c\""},
        {{{"e", DVL_CFG_ENUM, .def = "x", .choices = "x||y"}}, 1,
         "config schema: e: enum needs choices \"a|b|c\""},
        {{{"e", DVL_CFG_ENUM, .def = "z", .choices = "x|y"}}, 1,
         "config schema: e: default: \"z\" is not one of x|y"},
        {{{"r", DVL_CFG_STRING, .def = "x", .required = true}}, 1,
         "config schema: r: required and has a default"},
        {{{"i", DVL_CFG_INT, .def = NULL}}, 1,
         "config schema: i: needs a default or required = true (only strings may be left unset)"},
        {{{"f", DVL_CFG_FLOAT, .def = "x"}}, 1,
         "config schema: f: default: expected a number, got \"x\""},
        {{{"f", DVL_CFG_FLOAT, .def = "2", .ranged = true, .min = 0, .max = 1}}, 1,
         "config schema: f: default: 2 is out of range [0, 1]"},
        {{{"f", DVL_CFG_FLOAT, .def = "0", .ranged = true, .min = 1, .max = 0}}, 1,
         "config schema: f: empty range [1, 0]"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        dvl_err err = {0};
        ck_assert_ptr_null(dvl_cfg_parse(rows[i].k, rows[i].n, "{}", "x", NULL, 0, &err));
        ck_assert_msg(strcmp(err.msg, rows[i].msg) == 0, "row %zu:\n  got      %s\n  expected %s",
                      i, err.msg, rows[i].msg);
    }
}
END_TEST

START_TEST(getter_misuse)
{
    dvl_cfg *c = parse_ok("{}", TRAIN, 1);
    dvl_err err = {0};
    ck_assert(dvl_cfg_float(c, "seed") == 0.0); /* an int read as a float */
    ck_assert_int_eq(dvl_cfg_int(c, "optim.lr"), 0);
    ck_assert_int_eq(dvl_cfg_check(c, &err), DVL_EINVAL);
    /* The first misuse is the one kept. */
    ck_assert_str_eq(err.msg, "config: dvl_cfg_float(seed): the key is of type int");
    dvl_cfg_free(c);

    c = parse_ok("{}", TRAIN, 1);
    ck_assert(!dvl_cfg_bool(c, "no.such"));
    ck_assert_int_eq(dvl_cfg_enum(c, "run.name"), -1);
    ck_assert_int_eq(dvl_cfg_check(c, &err), DVL_EINVAL);
    ck_assert_str_eq(err.msg, "config: dvl_cfg_bool(no.such): key not in the schema");
    dvl_cfg_free(c);

    /* dvl_cfg_str reads enums too. */
    c = parse_ok("{}", TRAIN, 1);
    ck_assert_str_eq(dvl_cfg_str(c, "optim.schedule"), "cosine");
    ck_assert_int_eq(dvl_cfg_check(c, &err), DVL_OK);
    dvl_cfg_free(c);
}
END_TEST

/* The dump loads back to bit-identical values and dumps to the same text. */
START_TEST(dump_round_trip)
{
    const char *sets[] = {
        "optim.lr=0.30000000000000004", /* needs 17 digits; cJSON's printer would say 0.3 */
        "seed=9007199254740992",        /* 2^53 */
        "run.name=quote \" backslash \\ tab \t unicode \xc3\xa9",
        "optim.schedule=linear",
        "model.vision.freeze=false",
        "data.train=t",
    };
    dvl_cfg *a = parse_ok("{\"optim\": {\"warmup\": 7}}", sets, 6);
    char *dump = dvl_cfg_dump(a);
    ck_assert_ptr_nonnull(dump);
    /* Nested, with every set key, and nothing for the unset optional one. */
    cJSON *j = cJSON_Parse(dump);
    ck_assert_ptr_nonnull(j);
    cJSON *optim = cJSON_GetObjectItemCaseSensitive(j, "optim");
    ck_assert(cJSON_IsObject(optim));
    ck_assert(cJSON_GetObjectItemCaseSensitive(optim, "warmup")->valuedouble == 7);
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "data"),
                                                        "val"));
    cJSON_Delete(j);

    dvl_cfg *b = parse_ok(dump, NULL, 0);
    ck_assert(dvl_cfg_float(b, "optim.lr") == 0.30000000000000004);
    ck_assert(dvl_cfg_float(b, "optim.lr") != 0.3);
    ck_assert_int_eq(dvl_cfg_int(b, "seed"), 9007199254740992LL);
    ck_assert_int_eq(dvl_cfg_int(b, "optim.warmup"), 7);
    ck_assert_str_eq(dvl_cfg_str(b, "run.name"), "quote \" backslash \\ tab \t unicode \xc3\xa9");
    ck_assert_int_eq(dvl_cfg_enum(b, "optim.schedule"), 1);
    ck_assert(!dvl_cfg_bool(b, "model.vision.freeze"));
    ck_assert(!dvl_cfg_is_set(b, "data.val"));
    for (int i = 0; i < NKEYS; i++)
        if (KEYS[i].type == DVL_CFG_FLOAT)
            ck_assert(dvl_cfg_float(a, KEYS[i].path) == dvl_cfg_float(b, KEYS[i].path));
    char *dump2 = dvl_cfg_dump(b);
    ck_assert_str_eq(dump, dump2);
    free(dump);
    free(dump2);
    dvl_cfg_free(a);
    dvl_cfg_free(b);

    /* Awkward doubles survive too. */
    const double vals[] = {1e-300, 5e-324, 0.1, 1.0 / 3.0, 0.9999999999999999, 2.5e-4};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        char set[64];
        snprintf(set, sizeof set, "optim.lr=%.17g", vals[i]);
        const char *s2[] = {set, "data.train=t"};
        dvl_cfg *x = parse_ok("{}", s2, 2);
        char *d = dvl_cfg_dump(x);
        dvl_cfg *y = parse_ok(d, NULL, 0);
        ck_assert_msg(dvl_cfg_float(y, "optim.lr") == vals[i], "%.17g", vals[i]);
        free(d);
        dvl_cfg_free(x);
        dvl_cfg_free(y);
    }
}
END_TEST

START_TEST(help_text)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    dvl_cfg_print_help(KEYS, NKEYS, f);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "optim.lr"));
    ck_assert_ptr_nonnull(strstr(buf, "= 3e-4 in [0, 1]  peak learning rate"));
    ck_assert_ptr_nonnull(strstr(buf, "{cosine|linear|constant}"));
    ck_assert_ptr_nonnull(strstr(buf, "required  training shards"));
    free(buf);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, file_values);
    tcase_add_test(tc, overrides);
    tcase_add_test(tc, error_table);
    tcase_add_test(tc, schema_errors);
    tcase_add_test(tc, getter_misuse);
    tcase_add_test(tc, dump_round_trip);
    tcase_add_test(tc, help_text);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
