/* `dvl-prep synth`: the procedural shapes dataset (see synth.h).
 *
 * Every sample is a pure function of (seed, split, index): its own RNG
 * stream draws the scene and the question, so images render in parallel,
 * the training set does not change when --heldout changes, and the same
 * seed gives the same bytes whatever the thread count. */
#include "synth.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "io/image.h"

/* ------------------------------------------------------------ grammar */

enum { N_KINDS = 5, N_COLORS = 6, MAX_SHAPES = 4 };
enum { CIRCLE, SQUARE, TRIANGLE, STAR, DIAMOND }; /* kind_names order */

static const char *const kind_names[N_KINDS] = {"circle", "square", "triangle", "star", "diamond"};
static const char *const kind_plural[N_KINDS] = {"circles", "squares", "triangles", "stars",
                                                 "diamonds"};
static const char *const color_names[N_COLORS] = {"red",    "green",  "blue",
                                                  "yellow", "purple", "orange"};
/* Saturated enough to tell apart on a light background after the
 * resize to 384 and SigLIP's normalisation. */
static const uint8_t color_rgb[N_COLORS][3] = {
    {220, 30, 30}, {30, 160, 50}, {30, 70, 220}, {235, 200, 20}, {135, 50, 180}, {245, 125, 20},
};
static const char *const number_words[MAX_SHAPES + 1] = {"zero", "one", "two", "three", "four"};

/* The fixed words of the prompts and of Qwen's ChatML system prompt
 * ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>"). BARE:
 * can start a line (no leading space); SPACE: can follow a space. */
enum { BARE = 1, SPACE = 2 };
static const struct {
    const char *word;
    int forms;
} fixed_words[] = {
    {"a", BARE | SPACE}, {"an", BARE | SPACE}, {"and", SPACE},   {"Describe", BARE}, {"the", SPACE},
    {"image", SPACE},    {"How", BARE},    {"many", SPACE},    {"are", SPACE},
    {"there", SPACE},    {"What", BARE},   {"color", SPACE},   {"is", SPACE},
    {"shapes", SPACE},   {"system", BARE}, {"user", BARE},     {"assistant", BARE | SPACE},
    {"You", BARE},       {"helpful", SPACE},
};

static const char *const special_tokens[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                             "<image>", "<|mask|>"};
#define N_SPECIAL ((int)(sizeof special_tokens / sizeof special_tokens[0]))

/* Qwen2's pre-tokenizer regex, copied from Qwen's tokenizer.json. */
static const char qwen2_split_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Qwen2-Instruct's chat template (ChatML with the default system prompt). */
static const char qwen2_chat_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* -------------------------------------------------------------- scenes */

enum { Q_CAPTION, Q_COUNT, Q_COLOR, Q_TOTAL };
static const char *const q_names[] = {"caption", "count", "color", "total"};

typedef struct shape {
    int kind, color;
    int cx, cy, r; /* centre and nominal radius in pixels */
    uint8_t rgb[3];
} shape;

typedef struct scene {
    uint8_t bg[3];
    int n;
    shape s[MAX_SHAPES]; /* canonical order: kind, colour, y, x */
    int q, qkind;        /* question type; kind asked about (or -1) */
    char question[96], answer[192];
} scene;

/* Every drawn shape fits in a circle of BOUND * r around its centre. */
#define BOUND 1.1

static int rand_int(dvl_rng *r, int n) { return (int)(dvl_rng_uniform_f64(r) * n); }

static uint64_t sample_seed(uint64_t seed, int split, int64_t i)
{
    /* splitmix64's finaliser on the seed, then (split, index) in the low
     * bits: distinct samples of one seed get distinct inputs, and
     * dvl_rng_seed mixes each input into an unrelated stream. */
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z ^ ((uint64_t)split << 48) ^ (uint64_t)i;
}

static int shape_cmp(const void *pa, const void *pb)
{
    const shape *a = pa, *b = pb;
    if (a->kind != b->kind)
        return a->kind - b->kind;
    if (a->color != b->color)
        return a->color - b->color;
    if (a->cy != b->cy)
        return a->cy - b->cy;
    return a->cx - b->cx;
}

/* Place shape i without touching the earlier ones: rejection sampling,
 * shrinking the radius range every 100 failures. Returns 0 if it did not
 * fit (practically never: at most four shapes of radius <= 15% of the
 * side). */
static int place(dvl_rng *r, shape *s, int i, int size)
{
    int rmin = size * 8 / 100, rmax = size * 15 / 100, gap = size / 40 + 1;
    for (int attempt = 0; attempt < 1000; attempt++) {
        int hi = rmin + (rmax - rmin) * (10 - attempt / 100) / 10;
        int rad = rmin + rand_int(r, hi - rmin + 1);
        int margin = (int)ceil(BOUND * rad) + 2;
        int cx = margin + rand_int(r, size - 2 * margin);
        int cy = margin + rand_int(r, size - 2 * margin);
        int ok = 1;
        for (int j = 0; j < i && ok; j++) {
            double dx = cx - s[j].cx, dy = cy - s[j].cy;
            double need = BOUND * (rad + s[j].r) + gap;
            ok = dx * dx + dy * dy >= need * need;
        }
        if (ok) {
            s[i].cx = cx;
            s[i].cy = cy;
            s[i].r = rad;
            return 1;
        }
    }
    return 0;
}

/* Place shape i in a free cell of a grid x grid lattice, centred on the
 * cell (jitter of one pixel), radius 30-40% of the cell (--radius): with the model's
 * patch grid equal to the lattice each shape sits inside one patch, which a
 * tiny vision tower learns to read in minutes (free placement cuts shapes
 * across patches at every offset). *used marks the cells taken. */
static int place_grid(dvl_rng *r, shape *s, int i, int size, const synth_opts *o, unsigned *used)
{
    int grid = o->grid;
    int free_cells[64], nf = 0;
    for (int c = 0; c < grid * grid; c++)
        if (!(*used >> c & 1u))
            free_cells[nf++] = c;
    if (nf == 0)
        return 0;
    int c = free_cells[rand_int(r, nf)];
    double cell = (double)size / grid;
    /* (lo / 100.0 is the double nearest lo%, the same as the literal 0.30) */
    int rmin = (int)(cell * ((o->radius_lo ? o->radius_lo : 30) / 100.0));
    int rmax = (int)(cell * ((o->radius_hi ? o->radius_hi : 40) / 100.0));
    /* The drawn shape (BOUND r) plus the jitter stays inside its cell. */
    int fit = (int)((cell / 2 - 1) / BOUND);
    rmax = rmax < fit ? rmax : fit;
    rmin = rmin < rmax ? rmin : rmax;
    s[i].r = rmin + rand_int(r, rmax - rmin + 1);
    s[i].cx = (int)((c % grid + 0.5) * cell) + rand_int(r, 3) - 1;
    s[i].cy = (int)((c / grid + 0.5) * cell) + rand_int(r, 3) - 1;
    *used |= 1u << c;
    return 1;
}

static void caption(const scene *sc, char *buf, size_t cap)
{
    /* Groups of equal (kind, colour) are adjacent in canonical order. */
    int start[MAX_SHAPES], count[MAX_SHAPES], g = 0;
    for (int i = 0; i < sc->n; i++) {
        if (i > 0 && sc->s[i].kind == sc->s[i - 1].kind && sc->s[i].color == sc->s[i - 1].color) {
            count[g - 1]++;
        } else {
            start[g] = i;
            count[g++] = 1;
        }
    }
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < g; k++) {
        const shape *s = &sc->s[start[k]];
        const char *sep = k == 0 ? "" : k == g - 1 ? " and " : ", ";
        const char *color = color_names[s->color];
        const char *article = strchr("aeiou", color[0]) ? "an" : "a";
        len += (size_t)snprintf(buf + len, cap - len, "%s%s %s %s", sep,
                                count[k] == 1 ? article : number_words[count[k]], color,
                                count[k] == 1 ? kind_names[s->kind] : kind_plural[s->kind]);
    }
    snprintf(buf + len, cap - len, ".");
}

static void sample_scene(const synth_opts *o, int split, int64_t index, scene *sc)
{
    dvl_rng r;
    int size = o->size;
    dvl_rng_seed(&r, sample_seed(o->seed, split, index));
    memset(sc, 0, sizeof *sc);
    /* Light (232-248) or mid-grey (119-135) backgrounds: on grey, SigLIP's
     * normalisation maps the background near 0, so the shapes are most of
     * a patch's signal (a light background is a large common component
     * every image shares, which a tiny model takes long to see past). */
    int base = (o->grey ? 119 : 232) + rand_int(&r, 17);
    for (int c = 0; c < 3; c++) {
        int v = base + rand_int(&r, 11) - 5;
        sc->bg[c] = (uint8_t)(v > 255 ? 255 : v);
    }
    int want = 1 + rand_int(&r, o->max_shapes), groups = 0;
    unsigned used = 0;
    for (int i = 0; i < want; i++) {
        shape *s = &sc->s[sc->n];
        /* Half the time repeat an earlier shape's kind and colour, so
         * plurals and counts above one are common; always once max_groups
         * distinct (kind, colour) pairs are drawn. With the defaults
         * (groups <= i < 4) the draws are those of the full grammar. */
        if (i > 0 && (groups >= o->max_groups || rand_int(&r, 2))) {
            const shape *prev = &sc->s[rand_int(&r, sc->n)];
            s->kind = prev->kind;
            s->color = prev->color;
        } else {
            s->kind = rand_int(&r, N_KINDS);
            s->color = rand_int(&r, N_COLORS);
            /* a fresh draw may repeat an earlier pair by chance */
            int fresh = 1;
            for (int j = 0; j < sc->n; j++)
                fresh &= sc->s[j].kind != s->kind || sc->s[j].color != s->color;
            groups += fresh;
        }
        for (int c = 0; c < 3; c++) {
            int v = color_rgb[s->color][c] + rand_int(&r, 25) - 12;
            s->rgb[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        if (o->grid ? place_grid(&r, sc->s, sc->n, size, o, &used)
                    : place(&r, sc->s, sc->n, size))
            sc->n++;
    }
    qsort(sc->s, (size_t)sc->n, sizeof(shape), shape_cmp);

    int per_kind[N_KINDS] = {0};
    for (int i = 0; i < sc->n; i++)
        per_kind[sc->s[i].kind]++;
    int u = rand_int(&r, 20);
    sc->q = u < 10 ? Q_CAPTION : u < 14 ? Q_COUNT : u < 17 ? Q_COLOR : Q_TOTAL;
    sc->qkind = -1;
    if (sc->q == Q_COLOR) {
        /* Only kinds that appear once have "the" colour. */
        int unique[N_KINDS], nu = 0;
        for (int k = 0; k < N_KINDS; k++)
            if (per_kind[k] == 1)
                unique[nu++] = k;
        if (nu == 0)
            sc->q = Q_CAPTION;
        else
            sc->qkind = unique[rand_int(&r, nu)];
    }
    if (sc->q == Q_COUNT) /* mostly kinds in the image, sometimes absent ones ("zero.") */
        sc->qkind = rand_int(&r, 10) < 7 ? sc->s[rand_int(&r, sc->n)].kind : rand_int(&r, N_KINDS);

    switch (sc->q) {
    case Q_CAPTION:
        snprintf(sc->question, sizeof sc->question, "<image>\nDescribe the image.");
        caption(sc, sc->answer, sizeof sc->answer);
        break;
    case Q_COUNT:
        snprintf(sc->question, sizeof sc->question, "<image>\nHow many %s are there?",
                 kind_plural[sc->qkind]);
        snprintf(sc->answer, sizeof sc->answer, "%s.", number_words[per_kind[sc->qkind]]);
        break;
    case Q_COLOR:
        snprintf(sc->question, sizeof sc->question, "<image>\nWhat color is the %s?",
                 kind_names[sc->qkind]);
        for (int i = 0; i < sc->n; i++)
            if (sc->s[i].kind == sc->qkind)
                snprintf(sc->answer, sizeof sc->answer, "%s.", color_names[sc->s[i].color]);
        break;
    default:
        snprintf(sc->question, sizeof sc->question, "<image>\nHow many shapes are there?");
        snprintf(sc->answer, sizeof sc->answer, "%s.", number_words[sc->n]);
    }
}

/* ----------------------------------------------------------- rendering */

typedef struct outline {
    int kind;
    double r;              /* circle radius, square half-side or diamond half-diagonal */
    double vx[10], vy[10]; /* polygon (triangle, star) relative to the centre */
    int nv;
} outline;

static outline make_outline(const shape *s)
{
    outline o = {.kind = s->kind, .nv = 0};
    double r = s->r;
    switch (s->kind) {
    case CIRCLE: o.r = r; break;
    case SQUARE: o.r = 0.77 * r; break; /* corners at 1.09 r */
    case DIAMOND: o.r = 1.05 * r; break;
    case TRIANGLE: /* point up, centroid at the centre */
        o.nv = 3;
        for (int k = 0; k < 3; k++) {
            double a = -M_PI / 2 + k * 2 * M_PI / 3;
            o.vx[k] = BOUND * r * cos(a);
            o.vy[k] = BOUND * r * sin(a);
        }
        break;
    default: /* STAR: five points, one up */
        o.nv = 10;
        for (int k = 0; k < 10; k++) {
            double a = -M_PI / 2 + k * M_PI / 5, rr = (k % 2 ? 0.45 : 1.0) * BOUND * r;
            o.vx[k] = rr * cos(a);
            o.vy[k] = rr * sin(a);
        }
    }
    return o;
}

static int inside(const outline *o, double x, double y)
{
    switch (o->kind) {
    case CIRCLE: return x * x + y * y <= o->r * o->r;
    case SQUARE: return fabs(x) <= o->r && fabs(y) <= o->r;
    case DIAMOND: return fabs(x) + fabs(y) <= o->r;
    default: {
        /* Polygons: even-odd crossing test. */
        int in = 0;
        for (int i = 0, j = o->nv - 1; i < o->nv; j = i++)
            if ((o->vy[i] > y) != (o->vy[j] > y) &&
                x < (o->vx[j] - o->vx[i]) * (y - o->vy[i]) / (o->vy[j] - o->vy[i]) + o->vx[i])
                in = !in;
        return in;
    }
    }
}

/* Flat shapes with 4x4 supersampled edges, blended in integers. */
static void render(const scene *sc, dvl_image *img)
{
    int size = img->w;
    for (int64_t i = 0; i < (int64_t)size * size; i++)
        memcpy(img->data + 3 * i, sc->bg, 3);
    for (int k = 0; k < sc->n; k++) {
        const shape *s = &sc->s[k];
        outline o = make_outline(s);
        int ext = (int)ceil(BOUND * s->r) + 1;
        int x0 = s->cx - ext, x1 = s->cx + ext, y0 = s->cy - ext, y1 = s->cy + ext;
        x0 = x0 < 0 ? 0 : x0;
        y0 = y0 < 0 ? 0 : y0;
        x1 = x1 >= size ? size - 1 : x1;
        y1 = y1 >= size ? size - 1 : y1;
        for (int y = y0; y <= y1; y++)
            for (int x = x0; x <= x1; x++) {
                int cover = 0;
                for (int sy = 0; sy < 4; sy++)
                    for (int sx = 0; sx < 4; sx++)
                        cover += inside(&o, x + (sx + 0.5) / 4 - s->cx,
                                        y + (sy + 0.5) / 4 - s->cy);
                if (!cover)
                    continue;
                uint8_t *p = img->data + ((size_t)y * size + x) * 3;
                for (int c = 0; c < 3; c++)
                    p[c] = (uint8_t)((p[c] * (16 - cover) + s->rgb[c] * cover + 8) / 16);
            }
    }
}

/* ------------------------------------------------------------- files */

static int mkdir_p(const char *path, dvl_err *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return dvl_errf(err, DVL_EINVAL, "synth: path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return dvl_errf(err, DVL_EIO, "%s: cannot create directory: %s", buf,
                                strerror(errno));
            struct stat st;
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
                return dvl_errf(err, DVL_EIO, "%s: exists and is not a directory", buf);
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return DVL_OK;
}

/* A file written under a temporary name and renamed into place when
 * complete, so an interrupted run never leaves a truncated JSON. */
typedef struct afile {
    char path[4096], tmp[4200];
    FILE *f;
} afile;

static int afile_open(afile *a, const char *dir, const char *name, dvl_err *err)
{
    if (snprintf(a->path, sizeof a->path, "%s/%s", dir, name) >= (int)sizeof a->path)
        return dvl_errf(err, DVL_EINVAL, "synth: path too long: %s/%s", dir, name);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp%ld", a->path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f)
        return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", a->tmp, strerror(errno));
    return DVL_OK;
}

static int afile_commit(afile *a, dvl_err *err)
{
    int bad = ferror(a->f);
    bad |= fclose(a->f) != 0;
    a->f = NULL;
    if (bad) {
        unlink(a->tmp);
        return dvl_errf(err, DVL_EIO, "%s: write failed: %s", a->path, strerror(errno));
    }
    if (rename(a->tmp, a->path) != 0) {
        int e = errno;
        unlink(a->tmp);
        return dvl_errf(err, DVL_EIO, "%s: rename failed: %s", a->path, strerror(e));
    }
    return DVL_OK;
}

static void afile_abort(afile *a)
{
    if (a->f) {
        fclose(a->f);
        a->f = NULL;
        unlink(a->tmp);
    }
}

/* Print j unformatted on one line of f and free it. */
static int put_json(FILE *f, cJSON *j, const char *prefix, const char *what, dvl_err *err)
{
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return dvl_errf(err, DVL_ENOMEM, "synth: out of memory building %s", what);
    fputs(prefix, f);
    fputs(s, f);
    free(s);
    return DVL_OK;
}

/* cJSON's Add* return NULL when out of memory; one flag collects them. */
static void need(int *ok, const void *p) { *ok &= p != NULL; }

static cJSON *llava_item(const char *id, const char *image, const scene *sc)
{
    int ok = 1;
    cJSON *o = cJSON_CreateObject();
    need(&ok, o);
    need(&ok, cJSON_AddStringToObject(o, "id", id));
    need(&ok, cJSON_AddStringToObject(o, "image", image));
    cJSON *conv = cJSON_AddArrayToObject(o, "conversations");
    need(&ok, conv);
    const char *from[2] = {"human", "gpt"}, *value[2] = {sc->question, sc->answer};
    for (int t = 0; t < 2 && ok; t++) {
        cJSON *m = cJSON_CreateObject();
        need(&ok, m);
        need(&ok, cJSON_AddStringToObject(m, "from", from[t]));
        need(&ok, cJSON_AddStringToObject(m, "value", value[t]));
        ok &= cJSON_AddItemToArray(conv, m);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *meta_item(const char *id, const char *image, int size, const scene *sc)
{
    int ok = 1;
    cJSON *o = cJSON_CreateObject();
    need(&ok, o);
    need(&ok, cJSON_AddStringToObject(o, "id", id));
    need(&ok, cJSON_AddStringToObject(o, "image", image));
    need(&ok, cJSON_AddNumberToObject(o, "width", size));
    need(&ok, cJSON_AddNumberToObject(o, "height", size));
    int bg[3] = {sc->bg[0], sc->bg[1], sc->bg[2]};
    cJSON *b = cJSON_CreateIntArray(bg, 3);
    need(&ok, b);
    ok &= cJSON_AddItemToObject(o, "background", b);
    cJSON *arr = cJSON_AddArrayToObject(o, "shapes");
    need(&ok, arr);
    for (int i = 0; i < sc->n && ok; i++) {
        const shape *s = &sc->s[i];
        cJSON *m = cJSON_CreateObject();
        need(&ok, m);
        need(&ok, cJSON_AddStringToObject(m, "kind", kind_names[s->kind]));
        need(&ok, cJSON_AddStringToObject(m, "color", color_names[s->color]));
        need(&ok, cJSON_AddNumberToObject(m, "x", s->cx));
        need(&ok, cJSON_AddNumberToObject(m, "y", s->cy));
        need(&ok, cJSON_AddNumberToObject(m, "r", s->r));
        ok &= cJSON_AddItemToArray(arr, m);
    }
    need(&ok, cJSON_AddStringToObject(o, "question", q_names[sc->q]));
    if (sc->qkind >= 0)
        need(&ok, cJSON_AddStringToObject(o, "target", kind_names[sc->qkind]));
    else
        need(&ok, cJSON_AddNullToObject(o, "target"));
    need(&ok, cJSON_AddStringToObject(o, "answer", sc->answer));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* One split: images rendered in parallel a chunk at a time, then the
 * chunk's JSON lines appended in index order. */
static int write_split(const synth_opts *o, int split, int64_t n, dvl_err *err)
{
    const char *name = split == 0 ? "train" : "heldout";
    char fname[64];
    afile js = {0}, meta = {0};
    int rc;
    snprintf(fname, sizeof fname, "%s.json", name);
    if ((rc = afile_open(&js, o->out, fname, err)))
        return rc;
    snprintf(fname, sizeof fname, "%s_meta.jsonl", name);
    if ((rc = afile_open(&meta, o->out, fname, err))) {
        afile_abort(&js);
        return rc;
    }
    enum { CHUNK = 256 };
    scene *sc = malloc(sizeof(scene) * CHUNK);
    if (!sc) {
        rc = dvl_errf(err, DVL_ENOMEM, "synth: out of memory");
        goto fail;
    }
    fputs("[", js.f);
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
        int m = (int)(n - c0 < CHUNK ? n - c0 : CHUNK);
        for (int i = 0; i < m; i++)
            sample_scene(o, split, c0 + i, &sc[i]);
        int bad = -1;
        dvl_err first = {0};
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < m; i++) {
            char path[4300];
            dvl_err e = {0};
            dvl_image img;
            snprintf(path, sizeof path, "%s/images/%s_%06" PRId64 ".png", o->out, name, c0 + i);
            int r = dvl_image_alloc(&img, o->size, o->size, &e);
            if (!r) {
                render(&sc[i], &img);
                r = dvl_image_write_png(path, &img, &e);
                dvl_image_free(&img);
            }
            if (r) {
#pragma omp critical(synth_err)
                if (bad < 0 || i < bad) {
                    bad = i;
                    first = e;
                }
            }
        }
        if (bad >= 0) {
            *err = first;
            rc = first.code;
            goto fail;
        }
        for (int i = 0; i < m; i++) {
            char id[64], image[96];
            int64_t k = c0 + i;
            snprintf(id, sizeof id, "synth-%s-%06" PRId64, name, k);
            snprintf(image, sizeof image, "images/%s_%06" PRId64 ".png", name, k);
            const char *sep = k ? ",\n" : "\n";
            if ((rc = put_json(js.f, llava_item(id, image, &sc[i]), sep, fname, err)) ||
                (rc = put_json(meta.f, meta_item(id, image, o->size, &sc[i]), "", fname, err)))
                goto fail;
            fputc('\n', meta.f);
        }
    }
    fputs("\n]\n", js.f);
    free(sc);
    sc = NULL;
    if ((rc = afile_commit(&js, err))) {
        afile_abort(&meta);
        return rc;
    }
    return afile_commit(&meta, err);
fail:
    free(sc);
    afile_abort(&js);
    afile_abort(&meta);
    return rc;
}

/* ----------------------------------------------------------- tokenizer */

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the
 * others are moved to U+0100 upwards (space -> U+0120 'Ġ', newline ->
 * U+010A 'Ċ'). order[k] is the byte with token id k, as in Qwen's
 * vocabulary ('!' = 0, ..., '0' = 15). */
static void byte_alphabet(int cp[256], int order[256])
{
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        cp[b] = -1;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            cp[b] = b;
            order[k++] = b;
        }
    for (int b = 0; b < 256; b++)
        if (cp[b] < 0) {
            cp[b] = 256 + extra++;
            order[k++] = b;
        }
}

typedef struct bpe {
    char **tok; /* id -> token text (UTF-8 of the byte-level symbols) */
    int ntok, tcap;
    int (*merge)[3]; /* rank -> (left id, right id, merged id) */
    int nmerge, mcap;
} bpe;

static void bpe_free(bpe *b)
{
    for (int i = 0; i < b->ntok; i++)
        free(b->tok[i]);
    free(b->tok);
    free(b->merge);
}

static int bpe_find(const bpe *b, const char *s)
{
    for (int i = 0; i < b->ntok; i++)
        if (!strcmp(b->tok[i], s))
            return i;
    return -1;
}

static int bpe_add(bpe *b, char *s) /* takes s */
{
    if (!s)
        return -1;
    if (b->ntok == b->tcap) {
        int cap = b->tcap ? 2 * b->tcap : 512;
        char **t = realloc(b->tok, sizeof(char *) * cap);
        if (!t) {
            free(s);
            return -1;
        }
        b->tok = t;
        b->tcap = cap;
    }
    b->tok[b->ntok] = s;
    return b->ntok++;
}

static int bpe_rank(const bpe *b, int l, int r)
{
    for (int i = 0; i < b->nmerge; i++)
        if (b->merge[i][0] == l && b->merge[i][1] == r)
            return i;
    return -1;
}

/* Hugging Face's BPE on one pre-token: repeatedly merge the pair of lowest
 * rank, leftmost first, until no pair has a merge. */
static int bpe_apply(const bpe *b, int *ids, int n)
{
    for (;;) {
        int best = -1, at = -1;
        for (int i = 0; i + 1 < n; i++) {
            int r = bpe_rank(b, ids[i], ids[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) {
                best = r;
                at = i;
            }
        }
        if (best < 0)
            return n;
        ids[at] = b->merge[best][2];
        memmove(ids + at + 1, ids + at + 2, sizeof(int) * (n - at - 2));
        n--;
    }
}

/* Give the pre-token text (ASCII) one token: encode it with the merges so
 * far and, while it is still several tokens, append the merge of the first
 * two. A merge appended last has the highest rank, so it never fires
 * before any older merge and cannot change how earlier words encode (they
 * end as a single token, where no merge applies). */
static int bpe_learn_word(bpe *b, const char *text, const int byte_id[256])
{
    int ids[64], n = (int)strlen(text);
    if (n >= 64)
        return -1;
    for (;;) {
        for (int i = 0; i < n; i++)
            ids[i] = byte_id[(unsigned char)text[i]];
        int m = bpe_apply(b, ids, n);
        if (m == 1)
            return 0;
        size_t la = strlen(b->tok[ids[0]]), lb = strlen(b->tok[ids[1]]);
        char *s = malloc(la + lb + 1);
        if (!s)
            return -1;
        memcpy(s, b->tok[ids[0]], la);
        memcpy(s + la, b->tok[ids[1]], lb + 1);
        int id = bpe_find(b, s);
        if (id >= 0)
            free(s);
        else if ((id = bpe_add(b, s)) < 0)
            return -1;
        if (b->nmerge == b->mcap) {
            int cap = b->mcap ? 2 * b->mcap : 512;
            int(*t)[3] = realloc(b->merge, sizeof(int[3]) * cap);
            if (!t)
                return -1;
            b->merge = t;
            b->mcap = cap;
        }
        b->merge[b->nmerge][0] = ids[0];
        b->merge[b->nmerge][1] = ids[1];
        b->merge[b->nmerge][2] = id;
        b->nmerge++;
    }
}

static char *utf8(int c)
{
    char *s = malloc(4);
    if (!s)
        return NULL;
    if (c < 0x80) {
        s[0] = (char)c;
        s[1] = 0;
    } else { /* the alphabet stays below U+0800 */
        s[0] = (char)(0xC0 | (c >> 6));
        s[1] = (char)(0x80 | (c & 0x3F));
        s[2] = 0;
    }
    return s;
}

static int bpe_build(bpe *b)
{
    int cp[256], order[256], byte_id[256];
    byte_alphabet(cp, order);
    for (int k = 0; k < 256; k++) {
        byte_id[order[k]] = k;
        if (bpe_add(b, utf8(cp[order[k]])) < 0)
            return -1;
    }
    /* Every word of the grammar, as it can occur: after a space and/or at
     * the start of a line. */
    const char *words[64];
    int forms[64], nw = 0;
    for (int k = 0; k < N_KINDS; k++) {
        words[nw] = kind_names[k], forms[nw++] = SPACE;
        words[nw] = kind_plural[k], forms[nw++] = SPACE;
    }
    for (int c = 0; c < N_COLORS; c++)
        words[nw] = color_names[c], forms[nw++] = BARE | SPACE;
    for (int c = 0; c <= MAX_SHAPES; c++)
        words[nw] = number_words[c], forms[nw++] = BARE | SPACE;
    for (size_t i = 0; i < sizeof fixed_words / sizeof fixed_words[0]; i++)
        words[nw] = fixed_words[i].word, forms[nw++] = fixed_words[i].forms;
    for (int i = 0; i < nw; i++) {
        char buf[64];
        if ((forms[i] & BARE) && bpe_learn_word(b, words[i], byte_id))
            return -1;
        snprintf(buf, sizeof buf, " %s", words[i]);
        if ((forms[i] & SPACE) && bpe_learn_word(b, buf, byte_id))
            return -1;
    }
    return 0;
}

static cJSON *special_entry(int id, const char *content, int with_id)
{
    int ok = 1;
    cJSON *t = cJSON_CreateObject();
    need(&ok, t);
    if (with_id)
        need(&ok, cJSON_AddNumberToObject(t, "id", id));
    need(&ok, cJSON_AddStringToObject(t, "content", content));
    need(&ok, cJSON_AddFalseToObject(t, "single_word"));
    need(&ok, cJSON_AddFalseToObject(t, "lstrip"));
    need(&ok, cJSON_AddFalseToObject(t, "rstrip"));
    need(&ok, cJSON_AddFalseToObject(t, "normalized"));
    need(&ok, cJSON_AddTrueToObject(t, "special"));
    if (!ok) {
        cJSON_Delete(t);
        return NULL;
    }
    return t;
}

static cJSON *byte_level(void)
{
    int ok = 1;
    cJSON *o = cJSON_CreateObject();
    need(&ok, o);
    need(&ok, cJSON_AddStringToObject(o, "type", "ByteLevel"));
    need(&ok, cJSON_AddFalseToObject(o, "add_prefix_space"));
    need(&ok, cJSON_AddFalseToObject(o, "trim_offsets"));
    need(&ok, cJSON_AddFalseToObject(o, "use_regex"));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* tokenizer.json in the layout of Qwen2's: NFC, regex Split + ByteLevel,
 * BPE without unk/byte fallback, ByteLevel decoder. */
static cJSON *tokenizer_json(const bpe *b)
{
    int ok = 1;
    cJSON *root = cJSON_CreateObject();
    need(&ok, root);
    need(&ok, cJSON_AddStringToObject(root, "version", "1.0"));
    need(&ok, cJSON_AddNullToObject(root, "truncation"));
    need(&ok, cJSON_AddNullToObject(root, "padding"));
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    need(&ok, added);
    for (int i = 0; i < N_SPECIAL; i++)
        ok &= cJSON_AddItemToArray(added, special_entry(b->ntok + i, special_tokens[i], 1));
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    need(&ok, norm);
    need(&ok, cJSON_AddStringToObject(norm, "type", "NFC"));

    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    need(&ok, pre);
    need(&ok, cJSON_AddStringToObject(pre, "type", "Sequence"));
    cJSON *seq = cJSON_AddArrayToObject(pre, "pretokenizers");
    need(&ok, seq);
    cJSON *split = cJSON_CreateObject();
    need(&ok, split);
    need(&ok, cJSON_AddStringToObject(split, "type", "Split"));
    cJSON *pat = cJSON_AddObjectToObject(split, "pattern");
    need(&ok, pat);
    need(&ok, cJSON_AddStringToObject(pat, "Regex", qwen2_split_regex));
    need(&ok, cJSON_AddStringToObject(split, "behavior", "Isolated"));
    need(&ok, cJSON_AddFalseToObject(split, "invert"));
    ok &= cJSON_AddItemToArray(seq, split);
    ok &= cJSON_AddItemToArray(seq, byte_level());
    ok &= cJSON_AddItemToObject(root, "post_processor", byte_level());
    ok &= cJSON_AddItemToObject(root, "decoder", byte_level());

    cJSON *model = cJSON_AddObjectToObject(root, "model");
    need(&ok, model);
    need(&ok, cJSON_AddStringToObject(model, "type", "BPE"));
    need(&ok, cJSON_AddNullToObject(model, "dropout"));
    need(&ok, cJSON_AddNullToObject(model, "unk_token"));
    need(&ok, cJSON_AddStringToObject(model, "continuing_subword_prefix", ""));
    need(&ok, cJSON_AddStringToObject(model, "end_of_word_suffix", ""));
    need(&ok, cJSON_AddFalseToObject(model, "fuse_unk"));
    need(&ok, cJSON_AddFalseToObject(model, "byte_fallback"));
    need(&ok, cJSON_AddFalseToObject(model, "ignore_merges"));
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    need(&ok, vocab);
    for (int i = 0; i < b->ntok && ok; i++)
        need(&ok, cJSON_AddNumberToObject(vocab, b->tok[i], i));
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    need(&ok, merges);
    for (int i = 0; i < b->nmerge && ok; i++) {
        const char *pair[2] = {b->tok[b->merge[i][0]], b->tok[b->merge[i][1]]};
        cJSON *p = cJSON_CreateStringArray(pair, 2);
        need(&ok, p);
        ok &= cJSON_AddItemToArray(merges, p);
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static cJSON *tokenizer_config_json(const bpe *b)
{
    int ok = 1;
    cJSON *root = cJSON_CreateObject();
    need(&ok, root);
    need(&ok, cJSON_AddFalseToObject(root, "add_bos_token"));
    need(&ok, cJSON_AddFalseToObject(root, "add_prefix_space"));
    cJSON *dec = cJSON_AddObjectToObject(root, "added_tokens_decoder");
    need(&ok, dec);
    for (int i = 0; i < N_SPECIAL; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", b->ntok + i);
        ok &= cJSON_AddItemToObject(dec, key, special_entry(0, special_tokens[i], 0));
    }
    const char *extra[] = {"<|im_start|>", "<|im_end|>", "<image>", "<|mask|>"};
    cJSON *add = cJSON_CreateStringArray(extra, 4);
    need(&ok, add);
    ok &= cJSON_AddItemToObject(root, "additional_special_tokens", add);
    need(&ok, cJSON_AddNullToObject(root, "bos_token"));
    need(&ok, cJSON_AddStringToObject(root, "chat_template", qwen2_chat_template));
    need(&ok, cJSON_AddFalseToObject(root, "clean_up_tokenization_spaces"));
    need(&ok, cJSON_AddStringToObject(root, "eos_token", "<|im_end|>"));
    need(&ok, cJSON_AddStringToObject(root, "errors", "replace"));
    need(&ok, cJSON_AddStringToObject(root, "mask_token", "<|mask|>"));
    need(&ok, cJSON_AddNumberToObject(root, "model_max_length", 32768));
    need(&ok, cJSON_AddStringToObject(root, "pad_token", "<|endoftext|>"));
    need(&ok, cJSON_AddFalseToObject(root, "split_special_tokens"));
    need(&ok, cJSON_AddStringToObject(root, "tokenizer_class", "Qwen2Tokenizer"));
    need(&ok, cJSON_AddNullToObject(root, "unk_token"));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static int write_json_file(const char *dir, const char *name, cJSON *j, dvl_err *err)
{
    afile a = {0};
    char *s = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return dvl_errf(err, DVL_ENOMEM, "synth: out of memory building %s", name);
    int rc = afile_open(&a, dir, name, err);
    if (!rc) {
        fputs(s, a.f);
        fputc('\n', a.f);
        rc = afile_commit(&a, err);
    }
    free(s);
    return rc;
}

static int write_tokenizer(const char *out, dvl_err *err)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tokenizer", out);
    int rc = mkdir_p(dir, err);
    if (rc)
        return rc;
    bpe b = {0};
    if (bpe_build(&b)) {
        bpe_free(&b);
        return dvl_errf(err, DVL_ENOMEM, "synth: out of memory building the tokenizer");
    }
    rc = write_json_file(dir, "tokenizer.json", tokenizer_json(&b), err);
    if (!rc)
        rc = write_json_file(dir, "tokenizer_config.json", tokenizer_config_json(&b), err);
    bpe_free(&b);
    return rc;
}

/* ---------------------------------------------------------- the command */

static const char usage[] =
    "usage: dvl-prep synth --out DIR --n N [--seed S] [--size PX] [--heldout N]\n"
    "           [--max-shapes K] [--max-groups G] [--grid G [--radius LO:HI]]\n"
    "           [--background light|grey]\n"
    "  --out DIR     output directory (created)\n"
    "  --n N         training samples (>= 1)\n"
    "  --seed S      random seed (default 0)\n"
    "  --size PX     image side, 64..4096 (default 384)\n"
    "  --heldout N   held-out samples (default N / 10)\n"
    "  --max-shapes K  at most K shapes an image, 1..4 (default 4)\n"
    "  --max-groups G  at most G distinct (kind, colour) pairs an image, 1..4\n"
    "                (default 4; 1: every shape of an image alike, \"two red circles.\")\n"
    "  --grid G      shapes centred in the cells of a G x G lattice, 2..8 (default 0:\n"
    "                anywhere); G = the model's patches per side puts one shape in a patch\n"
    "  --radius LO:HI  with --grid: shape radius LO..HI % of the cell, 10..50, at most\n"
    "                what fits inside the cell (default 30:40)\n"
    "  --background light|grey  (default light)\n";

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *v,
                     dvl_err *err)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return dvl_errf(err, DVL_EINVAL, "synth: %s '%s' is not an integer", opt, s);
    if (x < lo || x > hi)
        return dvl_errf(err, DVL_EINVAL, "synth: %s %lld out of range [%lld, %lld]", opt, x,
                        (long long)lo, (long long)hi);
    *v = x;
    return DVL_OK;
}

int synth_parse_args(int argc, char **argv, synth_opts *o, dvl_err *err)
{
    *o = (synth_opts){.out = NULL, .n = -1, .heldout = -1, .seed = 0, .size = 384,
                      .max_shapes = MAX_SHAPES, .max_groups = MAX_SHAPES};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--out") && strcmp(a, "--n") && strcmp(a, "--seed") &&
            strcmp(a, "--size") && strcmp(a, "--heldout") && strcmp(a, "--max-shapes") &&
            strcmp(a, "--max-groups") && strcmp(a, "--grid") && strcmp(a, "--background") &&
            strcmp(a, "--radius"))
            return dvl_errf(err, DVL_EINVAL, "synth: unknown option %s", a);
        if (i + 1 >= argc)
            return dvl_errf(err, DVL_EINVAL, "synth: %s needs a value", a);
        const char *v = argv[++i];
        int64_t x;
        int rc = DVL_OK;
        if (!strcmp(a, "--out")) {
            if (!*v)
                return dvl_errf(err, DVL_EINVAL, "synth: --out is empty");
            o->out = v;
        } else if (!strcmp(a, "--n")) {
            rc = parse_i64(a, v, 1, 100000000, &o->n, err);
        } else if (!strcmp(a, "--heldout")) {
            rc = parse_i64(a, v, 0, 100000000, &o->heldout, err);
        } else if (!strcmp(a, "--max-shapes") || !strcmp(a, "--max-groups")) {
            if (!(rc = parse_i64(a, v, 1, MAX_SHAPES, &x, err)))
                *(a[6] == 's' ? &o->max_shapes : &o->max_groups) = (int)x;
        } else if (!strcmp(a, "--grid")) {
            if (!(rc = parse_i64(a, v, 2, 8, &x, err)))
                o->grid = (int)x;
        } else if (!strcmp(a, "--radius")) {
            int lo, hi, k = 0;
            if (sscanf(v, "%d:%d%n", &lo, &hi, &k) != 2 || v[k] || lo < 10 || hi > 50 || lo > hi)
                return dvl_errf(err, DVL_EINVAL,
                                "synth: --radius '%s' is not LO:HI with 10 <= LO <= HI <= 50", v);
            o->radius_lo = lo, o->radius_hi = hi;
        } else if (!strcmp(a, "--background")) {
            if (strcmp(v, "light") && strcmp(v, "grey"))
                return dvl_errf(err, DVL_EINVAL, "synth: --background '%s' is not light or grey", v);
            o->grey = !strcmp(v, "grey");
        } else if (!strcmp(a, "--size")) {
            if (!(rc = parse_i64(a, v, 64, 4096, &x, err)))
                o->size = (int)x;
        } else {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-')
                return dvl_errf(err, DVL_EINVAL, "synth: --seed '%s' is not a non-negative integer",
                                v);
            o->seed = s;
        }
        if (rc)
            return rc;
    }
    if (!o->out)
        return dvl_errf(err, DVL_EINVAL, "synth: --out DIR is required");
    if (o->n < 0)
        return dvl_errf(err, DVL_EINVAL, "synth: --n N is required");
    if (o->heldout < 0)
        o->heldout = o->n / 10;
    return DVL_OK;
}

int synth_generate(const synth_opts *given, dvl_err *err)
{
    synth_opts d = *given, *o = &d;
    if (!o->max_shapes)
        o->max_shapes = MAX_SHAPES;
    if (!o->max_groups)
        o->max_groups = MAX_SHAPES;
    if (!o->out || o->n < 1 || o->heldout < 0 || o->size < 64 || o->size > 4096 ||
        o->max_shapes < 1 || o->max_shapes > MAX_SHAPES || o->max_groups < 1 ||
        o->max_groups > MAX_SHAPES || (o->grid && (o->grid < 2 || o->grid > 8)) ||
        (o->grid && o->grid * o->grid < o->max_shapes) || (o->grid && o->size / o->grid < 12) ||
        ((o->radius_lo || o->radius_hi) &&
         (!o->grid || o->radius_lo < 10 || o->radius_hi > 50 || o->radius_lo > o->radius_hi)))
        return dvl_errf(err, DVL_EINVAL,
                        "synth: bad options (out %s, n %lld, heldout %lld, size %d, max shapes %d, "
                        "max groups %d, grid %d, radius %d:%d)",
                        o->out ? o->out : "(none)", (long long)o->n, (long long)o->heldout,
                        o->size, o->max_shapes, o->max_groups, o->grid, o->radius_lo, o->radius_hi);
    char images[4200];
    snprintf(images, sizeof images, "%s/images", o->out);
    int rc;
    if ((rc = mkdir_p(images, err)) || (rc = write_tokenizer(o->out, err)) ||
        (rc = write_split(o, 0, o->n, err)) || (rc = write_split(o, 1, o->heldout, err)))
        return rc;
    return DVL_OK;
}

static const char *unprefixed(const char *msg)
{
    return strncmp(msg, "synth: ", 7) ? msg : msg + 7;
}

int prep_synth(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            return 0;
        }
    synth_opts o;
    dvl_err err = {0};
    /* One line for bad usage or a failure, "dvl-prep synth: ..." as the
     * other commands' (without the library's own "synth: ", when given). */
    if (synth_parse_args(argc, argv, &o, &err)) {
        fprintf(stderr, "dvl-prep synth: %s (dvl-prep synth --help lists the options)\n",
                unprefixed(err.msg));
        return 2;
    }
    if (synth_generate(&o, &err)) {
        fprintf(stderr, "dvl-prep synth: %s\n", unprefixed(err.msg));
        return 1;
    }
    printf("synth: %lld train + %lld held-out samples (%dx%d) in %s\n", (long long)o.n,
           (long long)o.heldout, o.size, o.size, o.out);
    return 0;
}
