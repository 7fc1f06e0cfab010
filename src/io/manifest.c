/* Reading a prepared dataset's manifest.json (format: io/dataset.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "io/dataset.h"
#include "io/shard.h"

void dvl_hex64(uint64_t v, char buf[17])
{
    snprintf(buf, 17, "%016llx", (unsigned long long)v);
}

bool dvl_parse_hex64(const char *s, uint64_t *v)
{
    if (!s || strlen(s) != 16)
        return false;
    uint64_t x = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return true;
}

void dvl_manifest_free(dvl_manifest *m)
{
    if (!m)
        return;
    for (int64_t i = 0; i < m->n_shards; i++)
        free(m->shards[i].file);
    free(m->shards);
    free(m->template_name);
    memset(m, 0, sizeof *m);
}

/* An integer field (a JSON number with no fraction, in range). */
static bool get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    /* The range first: converting a double outside int64_t (1e300, inf) is
     * undefined (C11 6.3.1.4). */
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= (double)lo && x->valuedouble <= (double)hi) ||
        x->valuedouble != floor(x->valuedouble))
        return false;
    *v = (int64_t)x->valuedouble;
    return true;
}


int dvl_manifest_read(const char *dir, dvl_manifest *m, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    size_t len;
    char *text = dvl_read_file(path, &len, err);
    if (!text)
        return err ? err->code : DVL_EIO;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return dvl_errf(err, DVL_EIO, "%s: malformed JSON", path);
    int rc = DVL_OK;
    const char *bad = NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(root, "template");
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(root, "image");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "shard_files");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(tmpl, "name");
    int64_t version = 0, size = 0, itok = 0, iid = 0, pad = 0;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "dvl-dataset"))
        bad = "format (not \"dvl-dataset\")";
    else if (!get_int(root, "version", 0, INT32_MAX, &version) || version != DVL_DATASET_VERSION)
        bad = "version";
    else if (!get_int(root, "samples", 0, INT64_MAX / 2, &m->samples))
        bad = "samples";
    else if (!get_int(root, "images", 0, INT64_MAX / 2, &m->images))
        bad = "images";
    else if (!get_int(root, "tokens", 0, INT64_MAX / 2, &m->tokens))
        bad = "tokens";
    else if (!get_int(root, "records", 0, INT64_MAX / 2, &m->records))
        bad = "records";
    else if (!get_int(img, "size", 1, 16384, &size))
        bad = "image.size";
    else if (!get_int(tmpl, "image_tokens", 1, INT32_MAX, &itok))
        bad = "template.image_tokens";
    else if (!get_int(tmpl, "image_token_id", 0, INT32_MAX, &iid))
        bad = "template.image_token_id";
    else if (!cJSON_IsString(name))
        bad = "template.name";
    else if (!get_int(tok, "pad_token_id", -1, INT32_MAX, &pad))
        bad = "tokenizer.pad_token_id";
    else if (!get_int(tok, "vocab_size", 1, INT32_MAX, &m->vocab_size))
        bad = "tokenizer.vocab_size";
    else if (!cJSON_IsArray(files))
        bad = "shard_files";
    if (bad) {
        rc = dvl_errf(err, DVL_EIO, "%s: field %s is missing or invalid", path, bad);
        goto done;
    }
    m->image_size = (int)size;
    m->image_tokens = itok;
    m->image_token_id = (int32_t)iid;
    m->pad_token_id = (int32_t)pad;
    m->n_shards = cJSON_GetArraySize(files);
    m->template_name = strdup(name->valuestring);
    m->shards = calloc((size_t)m->n_shards + 1, sizeof *m->shards);
    if (!m->template_name || !m->shards) {
        int64_t n = m->n_shards;
        m->n_shards = 0;
        rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory for %lld shards", path, (long long)n);
        goto done;
    }
    int64_t samples = 0, images = 0, tokens = 0, records = 0, k = 0;
    const cJSON *f;
    cJSON_ArrayForEach(f, files)
    {
        dvl_manifest_shard *s = &m->shards[k];
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(f, "file");
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(f, "fnv1a64");
        const char *what = NULL;
        if (!cJSON_IsString(file) || strchr(file->valuestring, '/'))
            what = "file";
        else if (!get_int(f, "first_record", 0, INT64_MAX / 2, &s->first_record) ||
                 s->first_record != records)
            what = "first_record";
        else if (!get_int(f, "records", 0, INT64_MAX / 2, &s->records))
            what = "records";
        else if (!get_int(f, "samples", 0, s->records, &s->samples))
            what = "samples";
        else if (!get_int(f, "images", 0, s->samples, &s->images))
            what = "images";
        else if (!get_int(f, "tokens", 0, INT64_MAX / 2, &s->tokens))
            what = "tokens";
        else if (!get_int(f, "bytes", 0, INT64_MAX / 2, &s->bytes))
            what = "bytes";
        else if (!cJSON_IsString(hash) || !dvl_parse_hex64(hash->valuestring, &s->fnv1a64))
            what = "fnv1a64";
        if (what) {
            rc = dvl_errf(err, DVL_EIO, "%s: shard_files[%lld].%s is missing or invalid", path,
                          (long long)k, what);
            goto done;
        }
        size_t need = strlen(dir) + strlen(file->valuestring) + 2;
        if (!(s->file = malloc(need))) {
            rc = dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        snprintf(s->file, need, "%s/%s", dir, file->valuestring);
        samples += s->samples;
        images += s->images;
        tokens += s->tokens;
        records += s->records;
        k++;
    }
    if (samples != m->samples || images != m->images || tokens != m->tokens ||
        records != m->records)
        rc = dvl_errf(err, DVL_EIO,
                      "%s: the shards hold %lld samples, %lld images, %lld tokens, %lld records; "
                      "the totals say %lld, %lld, %lld, %lld",
                      path, (long long)samples, (long long)images, (long long)tokens,
                      (long long)records, (long long)m->samples, (long long)m->images,
                      (long long)m->tokens, (long long)m->records);
done:
    cJSON_Delete(root);
    if (rc)
        dvl_manifest_free(m);
    return rc;
}

int dvl_manifest_verify(const dvl_manifest *m, dvl_err *err)
{
    for (int64_t i = 0; i < m->n_shards; i++) {
        const dvl_manifest_shard *s = &m->shards[i];
        uint64_t h;
        int64_t bytes;
        int rc = dvl_fnv1a64_file(s->file, &h, &bytes, err);
        if (rc)
            return rc;
        if (bytes != s->bytes || h != s->fnv1a64) {
            char want[17], got[17];
            dvl_hex64(s->fnv1a64, want);
            dvl_hex64(h, got);
            return dvl_errf(err, DVL_EIO,
                            "%s: checksum mismatch: %lld bytes with FNV-1a %s; the manifest says "
                            "%lld bytes, %s",
                            s->file, (long long)bytes, got, (long long)s->bytes, want);
        }
    }
    return DVL_OK;
}

int dvl_manifest_verify_sizes(const dvl_manifest *m, dvl_err *err)
{
    for (int64_t i = 0; i < m->n_shards; i++) {
        const dvl_manifest_shard *s = &m->shards[i];
        struct stat st;
        if (stat(s->file, &st) != 0)
            return dvl_errf(err, DVL_EIO, "%s: %s (a shard of the manifest)", s->file,
                            strerror(errno));
        if ((int64_t)st.st_size != s->bytes)
            return dvl_errf(err, DVL_EIO,
                            "%s: %lld bytes; the manifest says %lld (changed since dvl-prep "
                            "build)",
                            s->file, (long long)st.st_size, (long long)s->bytes);
    }
    return DVL_OK;
}
