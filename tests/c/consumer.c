/* A C consumer of the gaussskip C ABI, run by tests/c_consumers.rs.
 *
 * usage: consumer DIR VERSION CUDA
 *   DIR      fixture folder written by the Rust test: model.safetensors, meta.txt
 *            ("dim rank batch n_levels"), levels.f64, x.f32, x.f16, x.bf16 and one f64
 *            reference file per operation (ref_<op>.f64), all raw little-endian;
 *   VERSION  the crate version gs_version() must report;
 *   CUDA     "absent" (no NVIDIA device on this machine: GS_DEVICE_CUDA must give
 *            GS_ERR_NO_CUDA) or "present" (GS_OK or GS_ERR_NO_CUDA are both accepted).
 *
 * Checks, in order: library identity, every operation and element type against the f64
 * reference with NaN-poisoned outputs in buffers that end at an inaccessible page, model
 * round trips, then every kind of bad call: its
 * own status, a non-empty message, and an output buffer (or handle) left byte for byte as it
 * was. Prints one line per measured error; exits 0 only when every check passed. */

#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS, pthreads */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* Tolerances of SPEC §5: the CPU path in f32, and f16 input/output rounding on top. bf16 has
 * no SPEC number: 4 units of its 8-bit mantissa rounding (2^-9 each, input and output). */
#define TOL_F32 1e-5
#define TOL_F16 2e-3
#define TOL_BF16 8e-3

static const char *dir;

/* ---------- files ---------- */

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

static void *read_exact(const char *name, size_t want) {
    size_t len;
    void *buf = read_file(name, &len);
    if (len != want) {
        fprintf(stderr, "%s has %zu bytes, expected %zu\n", name, len, want);
        exit(2);
    }
    return buf;
}

static void write_file(const char *name, const void *data, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static void path_in_dir(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

/* ---------- half-precision conversions (round to nearest even) ---------- */

static uint32_t f32_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float v;
    memcpy(&v, &u, 4);
    return v;
}

static uint16_t f32_to_f16(float v) {
    uint32_t u = f32_bits(v);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xFFu;
    uint32_t man = u & 0x7FFFFFu;
    if (exp == 0xFFu) { /* Inf stays Inf; NaN stays a quiet NaN */
        return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0u));
    }
    int e = (int)exp - 127 + 15;
    if (e >= 31) {
        return (uint16_t)(sign | 0x7C00u);
    }
    if (e <= 0) { /* subnormal half (or zero): shift the full significand into place */
        if (e < -10) {
            return sign;
        }
        uint32_t sig = man | 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = sig >> shift;
        uint32_t rest = sig & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rest > mid || (rest == mid && (half & 1u))) {
            half++;
        }
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rest = man & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) {
        half++; /* a carry into the exponent is the correct rounding, up to Inf */
    }
    return (uint16_t)(sign | half);
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1Fu) {
        return bits_f32(sign | 0x7F800000u | (man << 13));
    }
    if (exp == 0) {
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp - 15u + 127u) << 23) | (man << 13));
}

static uint16_t f32_to_bf16(float v) {
    uint32_t u = f32_bits(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (uint16_t)((u >> 16) | 0x40u);
    }
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

/* ---------- typed buffers ---------- */

static const uint32_t DTYPES[3] = {GS_DTYPE_F32, GS_DTYPE_F16, GS_DTYPE_BF16};
static const char *const DTYPE_NAMES[3] = {"f32", "f16", "bf16"};
static const double DTYPE_TOL[3] = {TOL_F32, TOL_F16, TOL_BF16};

static size_t elem_size(uint32_t dtype) { return dtype == GS_DTYPE_F32 ? 4 : 2; }

static void convert(const float *src, size_t n, uint32_t dtype, void *dst) {
    for (size_t i = 0; i < n; i++) {
        if (dtype == GS_DTYPE_F32) {
            ((float *)dst)[i] = src[i];
        } else if (dtype == GS_DTYPE_F16) {
            ((uint16_t *)dst)[i] = f32_to_f16(src[i]);
        } else {
            ((uint16_t *)dst)[i] = f32_to_bf16(src[i]);
        }
    }
}

static void *to_dtype(const float *src, size_t n, uint32_t dtype) {
    void *dst = malloc(n * elem_size(dtype));
    convert(src, n, dtype, dst);
    return dst;
}

/* A buffer that ends exactly where an inaccessible page begins, so that a library reading or
 * writing one element past the end crashes the program (the test then fails on SIGSEGV). */
struct guarded {
    void *map;
    size_t map_len;
    void *ptr;
};

static void *guarded_alloc(size_t bytes, struct guarded *g) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (bytes + page - 1) / page;
    g->map_len = (pages + 1) * page;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    char *guard = (char *)g->map + pages * page;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        perror("mprotect");
        exit(2);
    }
    g->ptr = guard - bytes;
    return g->ptr;
}

static void guarded_free(struct guarded *g) { munmap(g->map, g->map_len); }

static double get_elem(const void *buf, size_t i, uint32_t dtype) {
    if (dtype == GS_DTYPE_F32) {
        return ((const float *)buf)[i];
    }
    if (dtype == GS_DTYPE_F16) {
        return f16_to_f32(((const uint16_t *)buf)[i]);
    }
    return bf16_to_f32(((const uint16_t *)buf)[i]);
}

static void fill_nan(void *buf, size_t n, uint32_t dtype) {
    for (size_t i = 0; i < n; i++) {
        if (dtype == GS_DTYPE_F32) {
            ((float *)buf)[i] = NAN;
        } else {
            ((uint16_t *)buf)[i] = dtype == GS_DTYPE_F16 ? 0x7E00u : 0x7FC0u;
        }
    }
}

/* ‖out − ref‖ / ‖ref‖; any NaN or Inf (an unwritten poisoned element) gives Inf. */
static double rel_error(const void *out, const double *ref, size_t n, uint32_t dtype) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = get_elem(out, i, dtype);
        if (!isfinite(v)) {
            return INFINITY;
        }
        num += (v - ref[i]) * (v - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* ---------- the fixture ---------- */

struct fixture {
    size_t dim, rank, batch, n_levels;
    gs_noise from, to, at;
    gs_noise *from_rows, *to_rows, *at_rows, *levels;
    float *x;
};

enum op { OP_SKIP, OP_DENOISE, OP_SKIP_ROWS, OP_DENOISE_ROWS, OP_SKIP_TRAJ, OP_X0_TRAJ, N_OPS };
static const char *const OP_NAMES[N_OPS] = {"skip", "denoise", "skip_rows", "denoise_rows",
                                           "skip_trajectory", "x0_trajectory"};

static size_t slabs(const struct fixture *fx, enum op op) {
    return op == OP_SKIP_TRAJ || op == OP_X0_TRAJ ? fx->n_levels : 1;
}

static gs_status run(const struct fixture *fx, enum op op, gs_context *c, const gs_model *m,
                     uint32_t dtype, const void *x, void *out, size_t batch) {
    switch (op) {
    case OP_SKIP:
        return gs_skip(c, m, dtype, x, out, batch, fx->from, fx->to, NULL);
    case OP_DENOISE:
        return gs_denoise(c, m, dtype, x, out, batch, fx->at, NULL);
    case OP_SKIP_ROWS:
        return gs_skip_rows(c, m, dtype, x, out, batch, fx->from_rows, fx->to_rows, NULL);
    case OP_DENOISE_ROWS:
        return gs_denoise_rows(c, m, dtype, x, out, batch, fx->at_rows, NULL);
    case OP_SKIP_TRAJ:
        return gs_skip_trajectory(c, m, dtype, x, out, batch, fx->from, fx->levels, fx->n_levels,
                                  NULL);
    case OP_X0_TRAJ:
        return gs_x0_trajectory(c, m, dtype, x, out, batch, fx->from, fx->levels, fx->n_levels,
                                NULL);
    default:
        return GS_ERR_INTERNAL;
    }
}

static void load_fixture(struct fixture *fx) {
    size_t len;
    char *meta = read_file("meta.txt", &len);
    char *text = malloc(len + 1);
    memcpy(text, meta, len);
    text[len] = '\0';
    if (sscanf(text, "%zu %zu %zu %zu", &fx->dim, &fx->rank, &fx->batch, &fx->n_levels) != 4) {
        fprintf(stderr, "meta.txt: expected \"dim rank batch n_levels\"\n");
        exit(2);
    }
    free(text);
    free(meta);
    /* levels.f64: from, to, at, from_rows[batch], to_rows[batch], at_rows[batch],
     * levels[n_levels]; each an (alpha, sigma) pair. gs_noise is two doubles. */
    size_t n = 3 + 3 * fx->batch + fx->n_levels;
    gs_noise *l = read_exact("levels.f64", n * sizeof(gs_noise));
    fx->from = l[0];
    fx->to = l[1];
    fx->at = l[2];
    fx->from_rows = l + 3;
    fx->to_rows = fx->from_rows + fx->batch;
    fx->at_rows = fx->to_rows + fx->batch;
    fx->levels = fx->at_rows + fx->batch;
    fx->x = read_exact("x.f32", fx->batch * fx->dim * sizeof(float));
}

/* ---------- check groups ---------- */

static void check_identity(const char *want_version) {
    CHECK(gs_abi_version() == GS_ABI_VERSION, "gs_abi_version() = %u, header says %u",
          gs_abi_version(), (unsigned)GS_ABI_VERSION);
    CHECK(strcmp(gs_version(), want_version) == 0, "gs_version() = \"%s\", crate is \"%s\"",
          gs_version(), want_version);
    const char *known[GS_ERR_CALLBACK + 1];
    for (uint32_t s = 0; s <= GS_ERR_CALLBACK; s++) {
        known[s] = gs_status_message(s);
        CHECK(known[s] != NULL && known[s][0] != '\0', "gs_status_message(%u) is empty", s);
        for (uint32_t t = 0; t < s; t++) {
            CHECK(strcmp(known[s], known[t]) != 0, "status %u and %u share the message \"%s\"", s,
                  t, known[s]);
        }
    }
    const char *unknown = gs_status_message(GS_ERR_CALLBACK + 1);
    CHECK(unknown != NULL && unknown[0] != '\0', "unknown status has no message");
    CHECK(strcmp(unknown, gs_status_message(0xFFFFFFFFu)) == 0,
          "two unknown codes give different messages");
    for (uint32_t s = 0; s <= GS_ERR_CALLBACK; s++) {
        CHECK(strcmp(unknown, known[s]) != 0, "unknown code reads like status %u", s);
    }
    gs_noise e = gs_noise_edm(3.5), v = gs_noise_vp(0.36), f = gs_noise_flow(0.25);
    CHECK(e.alpha == 1.0 && e.sigma == 3.5, "gs_noise_edm(3.5) = (%g, %g)", e.alpha, e.sigma);
    CHECK(fabs(v.alpha - 0.6) < 1e-15 && fabs(v.sigma - 0.8) < 1e-15,
          "gs_noise_vp(0.36) = (%g, %g)", v.alpha, v.sigma);
    CHECK(f.alpha == 0.75 && f.sigma == 0.25, "gs_noise_flow(0.25) = (%g, %g)", f.alpha, f.sigma);
    /* Freeing NULL and asking NULL handles for their sizes are defined no-ops. */
    gs_model_free(NULL);
    gs_context_free(NULL);
    CHECK(gs_model_dim(NULL) == 0 && gs_model_rank(NULL) == 0, "NULL model has a size");
    CHECK(gs_context_device(NULL) == 0, "NULL context has a device");
}

/* The C conversions must round exactly like the library's (Rust `half`) conversions. */
static void check_half_conversions(const struct fixture *fx) {
    size_t n = fx->batch * fx->dim;
    uint16_t *want16 = read_exact("x.f16", n * 2), *wantb = read_exact("x.bf16", n * 2);
    size_t bad16 = 0, badb = 0;
    for (size_t i = 0; i < n; i++) {
        bad16 += f32_to_f16(fx->x[i]) != want16[i];
        badb += f32_to_bf16(fx->x[i]) != wantb[i];
        bad16 += f32_to_f16(f16_to_f32(want16[i])) != want16[i]; /* widening is exact */
        badb += f32_to_bf16(bf16_to_f32(wantb[i])) != wantb[i];
    }
    CHECK(bad16 == 0, "%zu f16 conversions differ from the library's", bad16);
    CHECK(badb == 0, "%zu bf16 conversions differ from the library's", badb);
    /* Edge cases: halfway cases round to even, overflow to Inf, subnormals, NaN stays NaN. */
    CHECK(f32_to_f16(1.0f + 0x1p-11f) == 0x3C00u, "1 + 2^-11 must round down to even");
    CHECK(f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02u, "1 + 3*2^-11 must round up to even");
    CHECK(f32_to_f16(70000.0f) == 0x7C00u, "70000 must overflow to Inf");
    CHECK(f32_to_f16(0x1p-24f) == 0x0001u && f16_to_f32(0x0001u) == 0x1p-24f,
          "smallest subnormal");
    CHECK(f32_to_f16(-0x1p-26f) == 0x8000u, "tiny negative must round to -0");
    CHECK(isnan(f16_to_f32(f32_to_f16(NAN))) && isnan(bf16_to_f32(f32_to_bf16(NAN))),
          "NaN must survive conversion");
    free(want16);
    free(wantb);
}

/* Every operation and element type against the f64 reference, outputs poisoned with NaN. */
static void check_operations(const struct fixture *fx, gs_context *ctx, const gs_model *m,
                             const char *label) {
    size_t n_in = fx->batch * fx->dim;
    for (int op = 0; op < N_OPS; op++) {
        char name[64];
        snprintf(name, sizeof name, "ref_%s.f64", OP_NAMES[op]);
        size_t n_out = slabs(fx, (enum op)op) * n_in;
        double *ref = read_exact(name, n_out * sizeof(double));
        for (int t = 0; t < 3; t++) {
            uint32_t dtype = DTYPES[t];
            struct guarded gx, gout;
            void *x = guarded_alloc(n_in * elem_size(dtype), &gx);
            void *out = guarded_alloc(n_out * elem_size(dtype), &gout);
            convert(fx->x, n_in, dtype, x);
            fill_nan(out, n_out, dtype);
            gs_status s = run(fx, (enum op)op, ctx, m, dtype, x, out, fx->batch);
            CHECK(s == GS_OK, "%s %s %s: status %u (%s)", label, OP_NAMES[op], DTYPE_NAMES[t], s,
                  gs_last_error_message());
            CHECK(strcmp(gs_last_error_message(), "") == 0,
                  "message after a success is \"%s\", not empty", gs_last_error_message());
            double err = rel_error(out, ref, n_out, dtype);
            printf("%s %-15s %-4s rel_err = %.3e (tol %.0e)\n", label, OP_NAMES[op],
                   DTYPE_NAMES[t], err, DTYPE_TOL[t]);
            CHECK(err <= DTYPE_TOL[t], "%s %s %s: relative error %.3e > %.0e", label, OP_NAMES[op],
                  DTYPE_NAMES[t], err, DTYPE_TOL[t]);
            guarded_free(&gx);
            guarded_free(&gout);
        }
        free(ref);
    }
}

/* The model read from the file equals the parts rebuilt through gs_model_from_parts, and a
 * saved copy reads back with the same parts. */
static void check_model_round_trips(const struct fixture *fx, gs_context *ctx, const gs_model *m) {
    size_t d = fx->dim, r = fx->rank;
    CHECK(gs_model_dim(m) == d && gs_model_rank(m) == r, "model is %zu x %zu, fixture %zu x %zu",
          gs_model_rank(m), gs_model_dim(m), r, d);
    float *mean = malloc(d * 4), *vecs = malloc(r * d * 4), *vals32 = malloc(r * 4);
    double *vals = malloc(r * 8), resid = -1.0;
    CHECK(gs_model_get_parts(m, mean, vals, vecs, &resid) == GS_OK, "gs_model_get_parts failed");
    for (size_t k = 0; k < r; k++) {
        vals32[k] = (float)vals[k];
    }
    gs_model *rebuilt = NULL;
    gs_status s = gs_model_from_parts(d, r, mean, vals32, vecs, (float)resid, &rebuilt);
    CHECK(s == GS_OK && rebuilt != NULL, "gs_model_from_parts on the model's own parts: %u (%s)",
          s, gs_last_error_message());
    if (rebuilt) {
        /* eigvals pass through f32 here, so this copy meets the f32 tolerance, not bit equality */
        check_operations(fx, ctx, rebuilt, "from_parts");
    }

    char path[4096];
    path_in_dir(path, sizeof path, "resaved.safetensors");
    CHECK(gs_model_save(m, path) == GS_OK, "gs_model_save: %s", gs_last_error_message());
    gs_model *again = NULL;
    CHECK(gs_model_load(path, &again) == GS_OK, "reloading the saved model: %s",
          gs_last_error_message());
    if (again) {
        float *mean2 = malloc(d * 4), *vecs2 = malloc(r * d * 4);
        double *vals2 = malloc(r * 8), resid2 = -2.0;
        CHECK(gs_model_get_parts(again, mean2, vals2, vecs2, &resid2) == GS_OK, "get_parts");
        CHECK(memcmp(mean, mean2, d * 4) == 0 && memcmp(vecs, vecs2, r * d * 4) == 0 &&
                  memcmp(vals, vals2, r * 8) == 0 && resid == resid2,
              "saved and reloaded model differs from the original");
        free(mean2);
        free(vecs2);
        free(vals2);
    }
    /* NULL destinations are skipped, not written. */
    CHECK(gs_model_get_parts(m, NULL, NULL, NULL, NULL) == GS_OK, "get_parts with all NULL");
    gs_model_free(again);
    gs_model_free(rebuilt);
    free(mean);
    free(vecs);
    free(vals);
    free(vals32);
}

/* A bad call: its own status, a message, and `len` bytes at `buf` as they were in `saved`. */
static void expect_fail(const char *what, gs_status got, gs_status want, const void *buf,
                        const void *saved, size_t len) {
    CHECK(got == want, "%s: got status %u (%s), want %u (%s)", what, got, gs_status_message(got),
          want, gs_status_message(want));
    const char *msg = gs_last_error_message();
    CHECK(msg != NULL && msg[0] != '\0', "%s: empty gs_last_error_message()", what);
    if (buf) {
        CHECK(memcmp(buf, saved, len) == 0, "%s: output was written by a failing call", what);
    }
}

static void expect_message_has(const char *what, const char *part) {
    CHECK(strstr(gs_last_error_message(), part) != NULL, "%s: message \"%s\" does not name \"%s\"",
          what, gs_last_error_message(), part);
}

static void check_bad_operation_calls(const struct fixture *fx, gs_context *ctx,
                                      const gs_model *m) {
    size_t n_in = fx->batch * fx->dim;
    size_t n_out = fx->n_levels * n_in; /* large enough for every operation */
    size_t bytes = n_out * 4;
    float *out = malloc(bytes);
    unsigned char *saved = malloc(bytes);
    memset(out, 0xA5, bytes); /* a sentinel pattern no successful call would leave */
    memcpy(saved, out, bytes);
    const float *x = fx->x;
    size_t b = fx->batch;
#define FAIL_SKIP(what, want, call) expect_fail(what, call, want, out, saved, bytes)

    FAIL_SKIP("ctx NULL", GS_ERR_NULL_POINTER,
              gs_skip(NULL, m, GS_DTYPE_F32, x, out, b, fx->from, fx->to, NULL));
    expect_message_has("ctx NULL", "ctx");
    FAIL_SKIP("model NULL", GS_ERR_NULL_POINTER,
              gs_skip(ctx, NULL, GS_DTYPE_F32, x, out, b, fx->from, fx->to, NULL));
    expect_message_has("model NULL", "model");
    FAIL_SKIP("x NULL", GS_ERR_NULL_POINTER,
              gs_skip(ctx, m, GS_DTYPE_F32, NULL, out, b, fx->from, fx->to, NULL));
    expect_message_has("x NULL", "`x`");
    expect_fail("out NULL", gs_skip(ctx, m, GS_DTYPE_F32, x, NULL, b, fx->from, fx->to, NULL),
                GS_ERR_NULL_POINTER, NULL, NULL, 0);
    expect_message_has("out NULL", "out");
    FAIL_SKIP("denoise ctx NULL", GS_ERR_NULL_POINTER,
              gs_denoise(NULL, m, GS_DTYPE_F32, x, out, b, fx->at, NULL));
    FAIL_SKIP("batch 0", GS_ERR_INVALID_ARGUMENT,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, 0, fx->from, fx->to, NULL));
    expect_message_has("batch 0", "batch");
    FAIL_SKIP("denoise batch 0", GS_ERR_INVALID_ARGUMENT,
              gs_denoise(ctx, m, GS_DTYPE_F32, x, out, 0, fx->at, NULL));
    FAIL_SKIP("dtype 3", GS_ERR_UNSUPPORTED_DTYPE,
              gs_skip(ctx, m, 3, x, out, b, fx->from, fx->to, NULL));
    FAIL_SKIP("dtype 0xFFFFFFFF", GS_ERR_UNSUPPORTED_DTYPE,
              gs_denoise(ctx, m, 0xFFFFFFFFu, x, out, b, fx->at, NULL));

    /* Non-finite inputs, at the last element so that a partial scan would miss them. */
    float *bad_x = malloc(n_in * 4);
    const float poisons[3] = {NAN, INFINITY, -INFINITY};
    for (int p = 0; p < 3; p++) {
        memcpy(bad_x, x, n_in * 4);
        bad_x[n_in - 1] = poisons[p];
        FAIL_SKIP("non-finite x (f32)", GS_ERR_NON_FINITE,
                  gs_skip(ctx, m, GS_DTYPE_F32, bad_x, out, b, fx->from, fx->to, NULL));
        expect_message_has("non-finite x", "non-finite");
        FAIL_SKIP("non-finite x (f32 denoise)", GS_ERR_NON_FINITE,
                  gs_denoise(ctx, m, GS_DTYPE_F32, bad_x, out, b, fx->at, NULL));
    }
    uint16_t *bad_h = to_dtype(x, n_in, GS_DTYPE_F16);
    bad_h[n_in / 2] = 0x7E00u;
    FAIL_SKIP("NaN x (f16)", GS_ERR_NON_FINITE,
              gs_skip(ctx, m, GS_DTYPE_F16, bad_h, out, b, fx->from, fx->to, NULL));
    bad_h[n_in / 2] = 0xFC00u;
    FAIL_SKIP("-Inf x (f16)", GS_ERR_NON_FINITE,
              gs_x0_trajectory(ctx, m, GS_DTYPE_F16, bad_h, out, b, fx->from, fx->levels,
                               fx->n_levels, NULL));
    free(bad_h);
    free(bad_x);

    /* Noise levels. */
    const gs_noise sigma0 = {1.0, 0.0}, neg_sigma = {1.0, -0.5}, neg_alpha = {-1.0, 1.0};
    const gs_noise nan_alpha = {NAN, 1.0}, inf_sigma = {1.0, INFINITY}, zero = {0.0, 0.0};
    FAIL_SKIP("from sigma 0", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, sigma0, fx->to, NULL));
    expect_message_has("from sigma 0", "from");
    FAIL_SKIP("from negative sigma", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, neg_sigma, fx->to, NULL));
    FAIL_SKIP("to negative sigma", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, neg_sigma, NULL));
    expect_message_has("to negative sigma", "to");
    FAIL_SKIP("to negative alpha", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, neg_alpha, NULL));
    FAIL_SKIP("from alpha NaN", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, nan_alpha, fx->to, NULL));
    FAIL_SKIP("to alpha NaN", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, nan_alpha, NULL));
    FAIL_SKIP("to sigma Inf", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, inf_sigma, NULL));
    FAIL_SKIP("to alpha = sigma = 0", GS_ERR_INVALID_NOISE,
              gs_skip(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, zero, NULL));
    FAIL_SKIP("denoise negative sigma", GS_ERR_INVALID_NOISE,
              gs_denoise(ctx, m, GS_DTYPE_F32, x, out, b, neg_sigma, NULL));
    FAIL_SKIP("denoise alpha NaN", GS_ERR_INVALID_NOISE,
              gs_denoise(ctx, m, GS_DTYPE_F32, x, out, b, nan_alpha, NULL));

    /* Per-row and trajectory level tables. */
    gs_noise *rows = malloc(b * sizeof(gs_noise));
    memcpy(rows, fx->from_rows, b * sizeof(gs_noise));
    rows[b - 1] = sigma0;
    FAIL_SKIP("skip_rows one row from sigma 0", GS_ERR_INVALID_NOISE,
              gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, b, rows, fx->to_rows, NULL));
    memcpy(rows, fx->at_rows, b * sizeof(gs_noise));
    rows[0] = nan_alpha;
    FAIL_SKIP("denoise_rows one row alpha NaN", GS_ERR_INVALID_NOISE,
              gs_denoise_rows(ctx, m, GS_DTYPE_F32, x, out, b, rows, NULL));
    FAIL_SKIP("skip_rows from NULL", GS_ERR_NULL_POINTER,
              gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, b, NULL, fx->to_rows, NULL));
    FAIL_SKIP("skip_rows to NULL", GS_ERR_NULL_POINTER,
              gs_skip_rows(ctx, m, GS_DTYPE_F32, x, out, b, fx->from_rows, NULL, NULL));
    FAIL_SKIP("denoise_rows at NULL", GS_ERR_NULL_POINTER,
              gs_denoise_rows(ctx, m, GS_DTYPE_F32, x, out, b, NULL, NULL));
    FAIL_SKIP("trajectory levels NULL", GS_ERR_NULL_POINTER,
              gs_skip_trajectory(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, NULL, fx->n_levels,
                                 NULL));
    FAIL_SKIP("trajectory 0 levels", GS_ERR_INVALID_ARGUMENT,
              gs_x0_trajectory(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, fx->levels, 0, NULL));
    gs_noise *lv = malloc(fx->n_levels * sizeof(gs_noise));
    memcpy(lv, fx->levels, fx->n_levels * sizeof(gs_noise));
    lv[fx->n_levels - 1] = neg_sigma;
    FAIL_SKIP("trajectory negative level", GS_ERR_INVALID_NOISE,
              gs_skip_trajectory(ctx, m, GS_DTYPE_F32, x, out, b, fx->from, lv, fx->n_levels,
                                 NULL));
    FAIL_SKIP("trajectory from sigma 0", GS_ERR_INVALID_NOISE,
              gs_x0_trajectory(ctx, m, GS_DTYPE_F32, x, out, b, sigma0, fx->levels, fx->n_levels,
                               NULL));
    free(lv);
    free(rows);
#undef FAIL_SKIP

    /* Overlapping x and out: the whole shared buffer must come back unchanged. */
    size_t span = 2 * n_in + fx->dim;
    float *shared = malloc(span * 4), *shared_saved = malloc(span * 4);
    memcpy(shared, x, n_in * 4);
    memset(shared + n_in, 0xA5, (span - n_in) * 4);
    memcpy(shared_saved, shared, span * 4);
    expect_fail("out == x",
                gs_skip(ctx, m, GS_DTYPE_F32, shared, shared, b, fx->from, fx->to, NULL),
                GS_ERR_INVALID_ARGUMENT, shared, shared_saved, span * 4);
    expect_message_has("out == x", "overlap");
    expect_fail("out overlaps the end of x",
                gs_skip(ctx, m, GS_DTYPE_F32, shared, shared + n_in - 1, b, fx->from, fx->to, NULL),
                GS_ERR_INVALID_ARGUMENT, shared, shared_saved, span * 4);
    expect_fail("x overlaps the end of out",
                gs_denoise(ctx, m, GS_DTYPE_F32, shared + fx->dim, shared, b, fx->at, NULL),
                GS_ERR_INVALID_ARGUMENT, shared, shared_saved, span * 4);
    /* Adjacent but disjoint is fine (and proves the overlap test is not over-eager). */
    CHECK(gs_skip(ctx, m, GS_DTYPE_F32, shared, shared + n_in, b, fx->from, fx->to, NULL) == GS_OK,
          "adjacent x and out rejected: %s", gs_last_error_message());
    free(shared);
    free(shared_saved);
    free(out);
    free(saved);
}

static void check_bad_handles(const struct fixture *fx, const char *cuda) {
    /* A handle pointer that must survive a failing call untouched. */
    static int marker;
    gs_model *const model_sentinel = (gs_model *)(void *)&marker;
    gs_context *const ctx_sentinel = (gs_context *)(void *)&marker;
    char path[4096];

    gs_model *m = model_sentinel;
    path_in_dir(path, sizeof path, "does-not-exist.safetensors");
    expect_fail("load missing file", gs_model_load(path, &m), GS_ERR_IO, NULL, NULL, 0);
    expect_message_has("load missing file", "does-not-exist.safetensors");
    CHECK(m == model_sentinel, "load missing file: handle written");

    static const char garbage[] = "this is not a safetensors file, just some text\n";
    write_file("garbage.safetensors", garbage, sizeof garbage);
    path_in_dir(path, sizeof path, "garbage.safetensors");
    expect_fail("load garbage", gs_model_load(path, &m), GS_ERR_FILE_FORMAT, NULL, NULL, 0);
    CHECK(m == model_sentinel, "load garbage: handle written");

    size_t len;
    unsigned char *file = read_file("model.safetensors", &len);
    write_file("truncated.safetensors", file, len / 2);
    free(file);
    path_in_dir(path, sizeof path, "truncated.safetensors");
    expect_fail("load truncated", gs_model_load(path, &m), GS_ERR_FILE_FORMAT, NULL, NULL, 0);
    CHECK(m == model_sentinel, "load truncated: handle written");

    expect_fail("load path NULL", gs_model_load(NULL, &m), GS_ERR_NULL_POINTER, NULL, NULL, 0);
    CHECK(m == model_sentinel, "load path NULL: handle written");
    path_in_dir(path, sizeof path, "model.safetensors");
    expect_fail("load out NULL", gs_model_load(path, NULL), GS_ERR_NULL_POINTER, NULL, NULL, 0);

    /* from_parts: a small valid 3-dim, rank-2 model, then one defect at a time. */
    const float mean[3] = {0.5f, -1.0f, 2.0f}, vals[2] = {4.0f, 1.0f};
    const float vecs[6] = {1.0f, 0.0f, 0.0f, 0.0f, 0.6f, 0.8f};
    const float skewed[6] = {1.0f, 0.0f, 0.0f, 0.6f, 0.8f, 0.0f}; /* unit rows, not orthogonal */
    const float long_rows[6] = {1.1f, 0.0f, 0.0f, 0.0f, 0.66f, 0.88f};
    const float neg_vals[2] = {4.0f, -1.0f}, rising[2] = {1.0f, 4.0f};
    const float nan_mean[3] = {0.5f, NAN, 2.0f};
    gs_model *ok = NULL;
    CHECK(gs_model_from_parts(3, 2, mean, vals, vecs, 0.25f, &ok) == GS_OK && ok != NULL,
          "valid small model rejected: %s", gs_last_error_message());
    CHECK(strcmp(gs_last_error_message(), "") == 0, "message not cleared by a success");
    gs_model_free(ok);
    m = model_sentinel;
    expect_fail("from_parts non-orthogonal",
                gs_model_from_parts(3, 2, mean, vals, skewed, 0.25f, &m), GS_ERR_INVALID_MODEL,
                NULL, NULL, 0);
    expect_message_has("from_parts non-orthogonal", "orthogonal");
    expect_fail("from_parts non-unit", gs_model_from_parts(3, 2, mean, vals, long_rows, 0.25f, &m),
                GS_ERR_INVALID_MODEL, NULL, NULL, 0);
    expect_fail("from_parts negative eigval",
                gs_model_from_parts(3, 2, mean, neg_vals, vecs, 0.25f, &m), GS_ERR_INVALID_MODEL,
                NULL, NULL, 0);
    expect_fail("from_parts increasing eigvals",
                gs_model_from_parts(3, 2, mean, rising, vecs, 0.25f, &m), GS_ERR_INVALID_MODEL,
                NULL, NULL, 0);
    expect_fail("from_parts negative residual_var",
                gs_model_from_parts(3, 2, mean, vals, vecs, -0.25f, &m), GS_ERR_INVALID_MODEL,
                NULL, NULL, 0);
    expect_fail("from_parts NaN mean", gs_model_from_parts(3, 2, nan_mean, vals, vecs, 0.25f, &m),
                GS_ERR_NON_FINITE, NULL, NULL, 0);
    expect_fail("from_parts rank > dim", gs_model_from_parts(2, 3, mean, vals, vecs, 0.25f, &m),
                GS_ERR_INVALID_ARGUMENT, NULL, NULL, 0);
    expect_message_has("from_parts rank > dim", "rank");
    expect_fail("from_parts rank 0", gs_model_from_parts(3, 0, mean, vals, vecs, 0.25f, &m),
                GS_ERR_INVALID_ARGUMENT, NULL, NULL, 0);
    expect_fail("from_parts eigvecs NULL", gs_model_from_parts(3, 2, mean, vals, NULL, 0.25f, &m),
                GS_ERR_NULL_POINTER, NULL, NULL, 0);
    CHECK(m == model_sentinel, "a failing gs_model_from_parts wrote the handle");
    expect_fail("from_parts out NULL", gs_model_from_parts(3, 2, mean, vals, vecs, 0.25f, NULL),
                GS_ERR_NULL_POINTER, NULL, NULL, 0);

    /* save */
    path_in_dir(path, sizeof path, "no-such-folder/model.safetensors");
    gs_model *real = NULL;
    CHECK(gs_model_from_parts(3, 2, mean, vals, vecs, 0.25f, &real) == GS_OK, "small model");
    expect_fail("save into a missing folder", gs_model_save(real, path), GS_ERR_IO, NULL, NULL, 0);
    expect_fail("save model NULL", gs_model_save(NULL, path), GS_ERR_NULL_POINTER, NULL, NULL, 0);
    expect_fail("save path NULL", gs_model_save(real, NULL), GS_ERR_NULL_POINTER, NULL, NULL, 0);
    gs_model_free(real);

    /* contexts */
    gs_context *c = ctx_sentinel;
    expect_fail("unknown device code", gs_context_create(7, 0, &c), GS_ERR_INVALID_ARGUMENT, NULL,
                NULL, 0);
    expect_message_has("unknown device code", "device");
    CHECK(c == ctx_sentinel, "unknown device code: handle written");
    expect_fail("context out NULL", gs_context_create(GS_DEVICE_CPU, 0, NULL), GS_ERR_NULL_POINTER,
                NULL, NULL, 0);
    gs_status s = gs_context_create(GS_DEVICE_CUDA, 0, &c);
    if (strcmp(cuda, "absent") == 0) {
        expect_fail("CUDA context without a device", s, GS_ERR_NO_CUDA, NULL, NULL, 0);
        CHECK(c == ctx_sentinel, "CUDA context without a device: handle written");
        printf("GS_DEVICE_CUDA: %s (%s)\n", gs_status_message(s), gs_last_error_message());
    } else {
        CHECK(s == GS_OK || s == GS_ERR_NO_CUDA, "CUDA context: status %u (%s)", s,
              gs_last_error_message());
        if (s == GS_OK) {
            CHECK(gs_context_device(c) == GS_DEVICE_CUDA, "CUDA context reports another device");
            gs_context_free(c);
        } else {
            CHECK(c == ctx_sentinel, "failed CUDA context: handle written");
        }
        printf("GS_DEVICE_CUDA with a device present: %s\n", gs_status_message(s));
    }
    gs_context *a = NULL;
    CHECK(gs_context_create(GS_DEVICE_AUTO, 0, &a) == GS_OK && a != NULL, "AUTO context: %s",
          gs_last_error_message());
    uint32_t dev = gs_context_device(a);
    CHECK(dev == GS_DEVICE_CPU || (dev == GS_DEVICE_CUDA && strcmp(cuda, "present") == 0),
          "AUTO context runs on device %u", dev);
    gs_context_free(a);
    (void)fx;
}

/* The error message is per thread: a failure on one thread is not seen on another. */
static void *other_thread(void *arg) {
    const char **seen = arg;
    seen[0] = strcmp(gs_last_error_message(), "") == 0 ? "empty" : "not empty";
    gs_context_create(99, 0, NULL); /* a NULL-pointer failure, different from main's */
    seen[1] = strstr(gs_last_error_message(), "out") ? "own" : "foreign";
    return NULL;
}

static void check_thread_local_message(void) {
    gs_model *m = NULL;
    gs_model_load(NULL, &m); /* main thread: "path" is NULL */
    char before[512];
    snprintf(before, sizeof before, "%s", gs_last_error_message());
    const char *seen[2] = {NULL, NULL};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread, seen) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(seen[0] && strcmp(seen[0], "empty") == 0, "a new thread sees another thread's error");
    CHECK(seen[1] && strcmp(seen[1], "own") == 0, "the thread's own error is not reported");
    CHECK(strcmp(before, gs_last_error_message()) == 0,
          "main thread's message changed to \"%s\" by another thread", gs_last_error_message());
    CHECK(strstr(before, "path") != NULL, "main thread's message \"%s\" does not name path",
          before);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DIR VERSION absent|present\n", argv[0]);
        return 2;
    }
    const uint16_t probe = 1;
    unsigned char first;
    memcpy(&first, &probe, 1);
    if (first != 1) {
        fprintf(stderr, "the fixture files are little-endian; this host is not\n");
        return 2;
    }
    dir = argv[1];
    struct fixture fx;
    load_fixture(&fx);

    check_identity(argv[2]);
    check_half_conversions(&fx);

    char path[4096];
    path_in_dir(path, sizeof path, "model.safetensors");
    gs_model *model = NULL;
    gs_status s = gs_model_load(path, &model);
    CHECK(s == GS_OK && model != NULL, "gs_model_load(%s): %u (%s)", path, s,
          gs_last_error_message());
    gs_context *ctx = NULL;
    s = gs_context_create(GS_DEVICE_CPU, 0, &ctx);
    CHECK(s == GS_OK && ctx != NULL, "CPU context: %u (%s)", s, gs_last_error_message());
    if (!model || !ctx) {
        fprintf(stderr, "cannot go on without a model and a context\n");
        return 1;
    }
    CHECK(gs_context_device(ctx) == GS_DEVICE_CPU, "CPU context reports device %u",
          gs_context_device(ctx));

    check_operations(&fx, ctx, model, "loaded");
    check_model_round_trips(&fx, ctx, model);
    check_bad_operation_calls(&fx, ctx, model);
    check_bad_handles(&fx, argv[3]);
    check_thread_local_message();

    /* After all those failures the model and context still work. */
    check_operations(&fx, ctx, model, "after-errors");

    gs_context_free(ctx);
    gs_model_free(model);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
