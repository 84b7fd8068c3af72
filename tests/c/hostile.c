/* Hostile calls to the gaussskip C ABI, run by tests/c_consumers.rs next to consumer.c.
 *
 * usage: hostile DIR
 *   DIR  the fixture folder of consumer.c, plus x_invert.f32 and ref_invert.f64 (a skip from
 *        sigma 1e-4 to 10, an inversion), dup_tensor.safetensors and dup_meta.safetensors
 *        (a key twice in the header), wrapped_shape.safetensors (an item shape whose product
 *        wraps around to the dimension).
 *
 * Every case must come back with its own status, a message, and its output (buffer or
 * handle) exactly as it was; none may crash or abort the process. Groups: sizes whose byte
 * counts overflow, level tables larger than memory, allocation failure, noise levels whose
 * coefficients or outputs leave the f32/f16 range, the precision of an inversion, ill-
 * conditioned inversions, double-precision model parts, hostile model files, context
 * ordinals; then 8 threads x 1000 calls on one model and context, bit for bit against a
 * serial run. Prints a summary line; exits 0 only when every check passed. */

#define _DEFAULT_SOURCE

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gaussskip.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        checks++;                                                        \
        if (!(cond)) {                                                   \
            failures++;                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
        }                                                                \
    } while (0)

static const char *dir;
static size_t dim, rank_, batch;

static void *read_file(const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void path_in_dir(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

/* A refused call: its status, a message naming `part`, and `len` bytes at `buf` as in `saved`. */
static void refused(const char *what, gs_status got, gs_status want, const char *part,
                    const void *buf, const void *saved, size_t len) {
    const char *msg = gs_last_error_message();
    CHECK(got == want, "%s: status %u (%s: %s), want %u", what, got, gs_status_message(got), msg,
          want);
    CHECK(msg[0] != '\0', "%s: empty message", what);
    if (part) {
        CHECK(strstr(msg, part) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, part);
    }
    if (buf) {
        CHECK(memcmp(buf, saved, len) == 0, "%s: a refused call wrote its output", what);
    }
}

static double rel_error(const float *out, const double *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) {
            return INFINITY;
        }
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* ---------- sizes ---------- */

static void check_sizes(gs_context *ctx, const gs_model *m, const float *x) {
    size_t n = batch * dim;
    float *out = malloc(n * 4 * 4);
    unsigned char *saved = malloc(n * 4 * 4);
    memset(out, 0x5A, n * 16);
    memcpy(saved, out, n * 16);
    gs_noise from = gs_noise_edm(80.0), to = gs_noise_edm(10.0);

    /* batch * dim fits in size_t, batch * dim * 4 does not: the byte count used to wrap. */
    size_t wrap = (SIZE_MAX / 4) / dim + 1;
    refused("f32 byte count wraps", gs_skip(ctx, m, GS_DTYPE_F32, x, out, wrap, from, to, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    CHECK(strstr(gs_last_error_message(), "overlap") == NULL, "size error reads as overlap: %s",
          gs_last_error_message());
    size_t wrap16 = (SIZE_MAX / 2) / dim + 1;
    refused("f16 byte count wraps", gs_denoise(ctx, m, GS_DTYPE_F16, x, out, wrap16, to, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    /* 2^61 / dim rows of f32: 2^63 bytes, beyond the address space. */
    size_t huge = ((size_t)1 << 61) / dim;
    refused("2^63 bytes", gs_skip(ctx, m, GS_DTYPE_F32, x, out, huge, from, to, NULL),
            GS_ERR_INVALID_ARGUMENT, "larger than any address space", out, saved, n * 16);
    CHECK(strstr(gs_last_error_message(), "overlap") == NULL, "size error reads as overlap: %s",
          gs_last_error_message());

    /* Per-row level tables sized by batch: refused before they are read or copied. */
    gs_noise rows[8];
    for (int i = 0; i < 8; i++) {
        rows[i] = gs_noise_edm(5.0 + i);
    }
    refused("skip_rows batch SIZE_MAX",
            gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, SIZE_MAX, rows, rows, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    refused("skip_rows batch 2^59",
            gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, (size_t)1 << 59, rows, rows, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    refused("denoise_rows batch SIZE_MAX",
            gs_denoise_rows(ctx, m, GS_DTYPE_BF16, x, out, SIZE_MAX, rows, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    refused("skip_trajectory n_levels SIZE_MAX",
            gs_skip_trajectory(ctx, m, GS_DTYPE_F32, x, out, batch, from, rows, SIZE_MAX, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    refused("x0_trajectory n_levels SIZE_MAX / 2",
            gs_x0_trajectory(ctx, m, GS_DTYPE_F32, x, out, batch, from, rows, SIZE_MAX / 2, NULL),
            GS_ERR_INVALID_ARGUMENT, "batch", out, saved, n * 16);
    /* A level table that is not aligned for doubles. */
    unsigned char *raw = malloc(sizeof rows + 8);
    memcpy(raw + 1, rows, sizeof rows);
    refused("misaligned level table",
            gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, batch, (const gs_noise *)(void *)(raw + 1),
                         rows, NULL),
            GS_ERR_INVALID_ARGUMENT, "aligned", out, saved, n * 16);
    free(raw);

    /* Allocation failure: 2^40 doubles. */
    static int marker;
    gs_moments *const sentinel = (gs_moments *)(void *)&marker;
    gs_moments *mo = sentinel;
    refused("moments of dim 2^20", gs_moments_create((size_t)1 << 20, &mo), GS_ERR_OUT_OF_MEMORY,
            "out of memory", NULL, NULL, 0);
    CHECK(mo == sentinel, "moments of dim 2^20: handle written");
    CHECK(gs_moments_create(dim, &mo) == GS_OK, "moments: %s", gs_last_error_message());
    refused("add_rows rows SIZE_MAX", gs_moments_add_rows(mo, x, SIZE_MAX),
            GS_ERR_INVALID_ARGUMENT, "rows", NULL, NULL, 0);
    CHECK(gs_moments_count(mo) == 0, "a refused add_rows counted rows");
    gs_moments_free(mo);

    gs_model *mm = (gs_model *)(void *)&marker;
    const float f[4] = {0};
    const double d[2] = {1.0, 0.5};
    refused("from_parts rank x dim overflows",
            gs_model_from_parts(SIZE_MAX, 2, f, f, f, 0.0f, &mm), GS_ERR_INVALID_ARGUMENT, "dim",
            NULL, NULL, 0);
    refused("from_parts_f64 mean larger than memory",
            gs_model_from_parts_f64(SIZE_MAX / 2, 1, f, d, f, 0.0, &mm), GS_ERR_INVALID_ARGUMENT,
            "address space", NULL, NULL, 0);
    CHECK(mm == (gs_model *)(void *)&marker, "a refused from_parts wrote the handle");
    free(out);
    free(saved);
}

/* ---------- levels ---------- */

static void check_levels(gs_context *ctx, const gs_model *m, const float *x) {
    size_t n = batch * dim;
    float *out = malloc(n * 4);
    unsigned char *saved = malloc(n * 4);
    memset(out, 0x5A, n * 4);
    memcpy(saved, out, n * 4);
    const gs_noise alpha_huge = {1e200, 1.0};

    refused("from sigma 1e-200", gs_skip(ctx, m, GS_DTYPE_F32, x, out, batch,
                                         gs_noise_edm(1e-200), gs_noise_edm(10.0), NULL),
            GS_ERR_INVALID_NOISE, "f32 range", out, saved, n * 4);
    refused("to sigma 1e39", gs_skip(ctx, m, GS_DTYPE_F32, x, out, batch, gs_noise_edm(1.0),
                                     gs_noise_edm(1e39), NULL),
            GS_ERR_INVALID_NOISE, "f32 range", out, saved, n * 4);
    refused("to alpha 1e200", gs_skip(ctx, m, GS_DTYPE_F32, x, out, batch, gs_noise_edm(1.0),
                                      alpha_huge, NULL),
            GS_ERR_INVALID_NOISE, "`to`", out, saved, n * 4);
    refused("from alpha 1e200", gs_skip(ctx, m, GS_DTYPE_F32, x, out, batch, alpha_huge,
                                        gs_noise_edm(1.0), NULL),
            GS_ERR_INVALID_NOISE, "`from`", out, saved, n * 4);
    refused("denoise alpha 1e200", gs_denoise(ctx, m, GS_DTYPE_F32, x, out, batch, alpha_huge, NULL),
            GS_ERR_INVALID_NOISE, "`at`", out, saved, n * 4);
    const gs_noise tiny = {1e-45, 1e-45};
    refused("to alpha = sigma = 1e-45", gs_skip(ctx, m, GS_DTYPE_F32, x, out, batch,
                                                gs_noise_edm(1.0), tiny, NULL),
            GS_ERR_INVALID_NOISE, "underflow", out, saved, n * 4);
    gs_noise traj[2] = {gs_noise_edm(2.0), gs_noise_edm(1e39)};
    float *out2 = malloc(2 * n * 4);
    memset(out2, 0x5A, 2 * n * 4);
    unsigned char *saved2 = malloc(2 * n * 4);
    memcpy(saved2, out2, 2 * n * 4);
    refused("trajectory level 1e39", gs_skip_trajectory(ctx, m, GS_DTYPE_F32, x, out2, batch,
                                                        gs_noise_edm(1.0), traj, 2, NULL),
            GS_ERR_INVALID_NOISE, "`levels`", out2, saved2, 2 * n * 4);
    free(out2);
    free(saved2);

    /* Representable gains whose output overflows for these inputs. */
    float *big = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        big[i] = x[i] * 1e35f;
    }
    refused("f32 output overflows", gs_skip(ctx, m, GS_DTYPE_F32, big, out, batch,
                                            gs_noise_edm(1.0), gs_noise_edm(1e4), NULL),
            GS_ERR_INVALID_NOISE, "overflow f32", out, saved, n * 4);
    free(big);
    uint16_t *xh = malloc(n * 2), *oh = malloc(n * 2), *ohs = malloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        xh[i] = 0x5640u; /* 100.0 in f16 */
    }
    memset(oh, 0x5A, n * 2);
    memcpy(ohs, oh, n * 2);
    refused("f16 output overflows", gs_skip(ctx, m, GS_DTYPE_F16, xh, oh, batch,
                                            gs_noise_edm(1.0), gs_noise_edm(2000.0), NULL),
            GS_ERR_INVALID_NOISE, "overflow f16", oh, ohs, n * 2);
    free(xh);
    free(oh);
    free(ohs);

    /* The inversion sigma 1e-4 -> 10 meets the precision contract. */
    size_t len;
    float *xi = read_file("x_invert.f32", &len);
    double *ref = read_file("ref_invert.f64", &len);
    float *oi = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        oi[i] = NAN;
    }
    gs_status s = gs_skip(ctx, m, GS_DTYPE_F32, xi, oi, batch, gs_noise_edm(1e-4),
                          gs_noise_edm(10.0), NULL);
    CHECK(s == GS_OK, "inversion 1e-4 -> 10: %s", gs_last_error_message());
    double err = rel_error(oi, ref, n);
    printf("inversion sigma 1e-4 -> 10: rel_err = %.3e (tol 1e-5)\n", err);
    CHECK(err <= 1e-5, "inversion 1e-4 -> 10: relative error %.3e", err);
    /* Beyond what f64 can carry: a gain of 1e15 off the modes against 1e3 and 1e5 on them,
     * for a row with little weight on the high-gain mode. Refused with the reason. */
    const float mean2[2] = {0.0f, 0.0f}, eye[4] = {1.0f, 0.0f, 0.0f, 1.0f};
    const double vals2[2] = {1.0, 1e-4};
    gs_model *small = NULL;
    CHECK(gs_model_from_parts_f64(2, 2, mean2, vals2, eye, 0.0, &small) == GS_OK, "small model");
    const float x2[2] = {0.7f, -0.01f};
    float o2[2] = {-3.0f, -3.0f};
    const float o2_saved[2] = {-3.0f, -3.0f};
    refused("inversion 1e-12 -> 1e3", gs_skip(ctx, small, GS_DTYPE_F32, x2, o2, 1,
                                              gs_noise_edm(1e-12), gs_noise_edm(1e3), NULL),
            GS_ERR_INVALID_NOISE, "precision", o2, o2_saved, sizeof o2);
    gs_model_free(small);
    free(xi);
    free(ref);
    free(oi);
    free(out);
    free(saved);
}

/* ---------- models and contexts ---------- */

static void check_models_and_contexts(void) {
    /* Double-precision variances are kept exactly. */
    const float mean[2] = {0.0f, 0.0f}, vecs[4] = {1.0f, 0.0f, 0.0f, 1.0f};
    const double vals[2] = {0.1, 1e-50};
    gs_model *m = NULL;
    CHECK(gs_model_from_parts_f64(2, 2, mean, vals, vecs, 1e39, &m) == GS_OK,
          "from_parts_f64: %s", gs_last_error_message());
    double got[2] = {0}, resid = 0;
    CHECK(gs_model_get_parts(m, NULL, got, NULL, &resid) == GS_OK, "get_parts");
    CHECK(got[0] == 0.1 && got[1] == 1e-50 && resid == 1e39,
          "from_parts_f64 stored %.17g, %.17g, %.17g", got[0], got[1], resid);
    gs_model_free(m);

    static int marker;
    gs_model *const sentinel = (gs_model *)(void *)&marker;
    const char *files[3][2] = {{"dup_tensor.safetensors", "more than once"},
                               {"dup_meta.safetensors", "more than once"},
                               {"wrapped_shape.safetensors", "item shape"}};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        path_in_dir(path, sizeof path, files[i][0]);
        m = sentinel;
        refused(files[i][0], gs_model_load(path, &m), GS_ERR_FILE_FORMAT, files[i][1], NULL, NULL,
                0);
        CHECK(m == sentinel, "%s: handle written", files[i][0]);
    }

    gs_context *const csent = (gs_context *)(void *)&marker;
    gs_context *c = csent;
    refused("CPU ordinal 7", gs_context_create(GS_DEVICE_CPU, 7, &c), GS_ERR_INVALID_ARGUMENT,
            "ordinal", NULL, NULL, 0);
    refused("AUTO ordinal 1", gs_context_create(GS_DEVICE_AUTO, 1, &c), GS_ERR_INVALID_ARGUMENT,
            "ordinal", NULL, NULL, 0);
    CHECK(c == csent, "a refused context wrote the handle");
}

/* ---------- threads ---------- */

#define THREADS 8
#define CALLS 1000

struct job {
    gs_context *ctx;
    const gs_model *m;
    const float *x;
    const float *want_skip, *want_denoise;
    int mismatches, errors;
};

static void *worker(void *arg) {
    struct job *j = arg;
    size_t n = batch * dim;
    float *out = malloc(n * 4);
    for (int k = 0; k < CALLS; k++) {
        gs_status s;
        const float *want;
        if (k % 2 == 0) {
            s = gs_skip(j->ctx, j->m, GS_DTYPE_F32, j->x, out, batch, gs_noise_edm(80.0),
                        gs_noise_edm(7.0), NULL);
            want = j->want_skip;
        } else {
            s = gs_denoise(j->ctx, j->m, GS_DTYPE_F32, j->x, out, batch, gs_noise_edm(3.0), NULL);
            want = j->want_denoise;
        }
        j->errors += s != GS_OK;
        j->mismatches += memcmp(out, want, n * 4) != 0;
    }
    free(out);
    return NULL;
}

static void check_threads(gs_context *ctx, const gs_model *m, const float *x) {
    size_t n = batch * dim;
    float *skip = malloc(n * 4), *den = malloc(n * 4);
    CHECK(gs_skip(ctx, m, GS_DTYPE_F32, x, skip, batch, gs_noise_edm(80.0), gs_noise_edm(7.0),
                  NULL) == GS_OK,
          "serial skip");
    CHECK(gs_denoise(ctx, m, GS_DTYPE_F32, x, den, batch, gs_noise_edm(3.0), NULL) == GS_OK,
          "serial denoise");
    struct job jobs[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct job){ctx, m, x, skip, den, 0, 0};
        CHECK(pthread_create(&t[i], NULL, worker, &jobs[i]) == 0, "pthread_create");
    }
    int mismatches = 0, errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        mismatches += jobs[i].mismatches;
        errors += jobs[i].errors;
    }
    printf("threads: %d x %d calls on one model and context, %d errors, %d differ from serial\n",
           THREADS, CALLS, errors, mismatches);
    CHECK(errors == 0 && mismatches == 0, "threaded calls: %d errors, %d mismatches", errors,
          mismatches);
    free(skip);
    free(den);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    size_t len;
    char *meta = read_file("meta.txt", &len);
    char *text = calloc(len + 1, 1);
    memcpy(text, meta, len);
    size_t n_levels;
    if (sscanf(text, "%zu %zu %zu %zu", &dim, &rank_, &batch, &n_levels) != 4) {
        fprintf(stderr, "meta.txt: expected \"dim rank batch n_levels\"\n");
        return 2;
    }
    free(text);
    free(meta);
    float *x = read_file("x.f32", &len);

    char path[4096];
    path_in_dir(path, sizeof path, "model.safetensors");
    gs_model *model = NULL;
    gs_context *ctx = NULL;
    if (gs_model_load(path, &model) != GS_OK || gs_context_create(GS_DEVICE_CPU, 0, &ctx) != GS_OK) {
        fprintf(stderr, "setup: %s\n", gs_last_error_message());
        return 1;
    }
    check_sizes(ctx, model, x);
    check_levels(ctx, model, x);
    check_models_and_contexts();
    check_threads(ctx, model, x);

    gs_context_free(ctx);
    gs_model_free(model);
    free(x);
    printf("%d hostile checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
