/* Minimal use of the gaussskip C ABI: load a model, jump a batch of pure-noise rows from the
 * EDM level sigma = 80 straight to sigma = 2.5, where a sampler would take over.
 *
 * Build and run (after `cargo build --release`):
 *   cc -std=c11 -Wall -Iinclude examples/c/skip_example.c -Ltarget/release -lgaussskip \
 *      -o skip_example
 *   ln -sf libgaussskip.so target/release/libgaussskip.so.1   # the library's SONAME
 *   LD_LIBRARY_PATH=target/release ./skip_example model.safetensors
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gaussskip.h"

/* Reports a failed call: the fixed text of its status and this thread's detailed message. */
static int report(const char *what, gs_status status) {
    fprintf(stderr, "%s: %s (%s)\n", what, gs_status_message(status), gs_last_error_message());
    return 1;
}

/* A stand-in for the sampler's N(0, 1) draws (Irwin-Hall: sum of 12 uniforms minus 6). */
static float normal(uint64_t *state) {
    float sum = 0.0f;
    for (int i = 0; i < 12; i++) {
        *state = *state * 6364136223846793005u + 1442695040888963407u;
        sum += (float)(*state >> 40) / (float)(1u << 24);
    }
    return sum - 6.0f;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.safetensors\n", argv[0]);
        return 2;
    }
    gs_model *model = NULL;
    gs_status status = gs_model_load(argv[1], &model);
    if (status != GS_OK) {
        return report("gs_model_load", status);
    }
    gs_context *ctx = NULL;
    status = gs_context_create(GS_DEVICE_CPU, 0, &ctx);
    if (status != GS_OK) {
        gs_model_free(model);
        return report("gs_context_create", status);
    }

    const size_t batch = 4, dim = gs_model_dim(model);
    float *x = malloc(batch * dim * sizeof *x);
    float *out = malloc(batch * dim * sizeof *out);
    int rc = 1;
    if (x && out) {
        uint64_t state = 42;
        for (size_t i = 0; i < batch * dim; i++) {
            x[i] = 80.0f * normal(&state); /* x_T = sigma_max * eps */
        }
        /* One call replaces every solver step between sigma = 80 and sigma = 2.5. */
        status = gs_skip(ctx, model, GS_DTYPE_F32, x, out, batch, gs_noise_edm(80.0),
                         gs_noise_edm(2.5), NULL);
        if (status == GS_OK) {
            printf("skipped %zu rows of dim %zu from sigma 80 to 2.5; out[0] = %g\n", batch, dim,
                   out[0]);
            rc = 0;
        } else {
            report("gs_skip", status);
        }
    }
    free(x);
    free(out);
    gs_context_free(ctx);
    gs_model_free(model);
    return rc;
}
