/* host_v1_0.c -- a minimal plugin host compiled against the FROZEN ABI 1.0 header, as an old
 * flipout would be: it proves that plugins built against a newer minor still load and work in a
 * 1.0 host (larger structs, appended fields it has never heard of).
 *
 * Usage: host_v1_0 PLUGIN.so                 print what the plugin declares, then evaluate every
 *                                            family's log_prob and log_prob_vjp at x = 0.3
 *        host_v1_0 PLUGIN.so --bench N R     time log_prob_vjp of the first family over N
 *                                            scalars, R times; prints "ns per scalar: <median>"
 * Build: cc -std=c99 -I Tests/Fixtures/abi-1.0 host_v1_0.c -o host_v1_0 -ldl
 */
#define _POSIX_C_SOURCE 200809L
#include "flipout_plugin.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void log_line(void *context, int32_t level, const char *message) {
    (void)context;
    fprintf(stderr, "plugin log (%d): %s\n", level, message);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: host_v1_0 PLUGIN.so [--bench N R]\n"); return 64; }
    void *handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!handle) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    flipout_entry_fn entry;
    *(void **)&entry = dlsym(handle, FLIPOUT_ENTRY_SYMBOL);
    if (!entry) { fprintf(stderr, "no %s\n", FLIPOUT_ENTRY_SYMBOL); return 1; }
    static flipout_host host;
    host.struct_size = sizeof host;
    host.abi_major = FLIPOUT_ABI_MAJOR;
    host.abi_minor = FLIPOUT_ABI_MINOR;
    host.host_name = "host_v1_0 (ABI 1.0)";
    host.log = log_line;
    const flipout_library *lib = entry(&host);
    if (!lib) { fprintf(stderr, "entry returned NULL\n"); return 1; }
    /* A 1.0 host refuses a struct smaller than ITS sizeof: exactly what it knows. */
    if (lib->struct_size < sizeof *lib || lib->abi_major != FLIPOUT_ABI_MAJOR) { fprintf(stderr, "library struct too small or wrong major\n"); return 1; }
    int bench = argc >= 5 && strcmp(argv[2], "--bench") == 0;
    if (!bench) printf("library %s abi %u.%u struct_size %u\n", lib->name, lib->abi_major, lib->abi_minor, lib->struct_size);
    for (uint32_t f = 0; f < lib->distribution_count; f++) {
        const flipout_distribution *d = lib->distributions[f];
        if (d->struct_size < sizeof *d) { fprintf(stderr, "distribution struct too small\n"); return 1; }
        flipout_instance *inst = NULL;
        char message[256];
        flipout_error err = {sizeof err, sizeof message, message};
        double hyper[64];
        for (uint32_t h = 0; h < d->hyperparameter_count && h < 64; h++) hyper[h] = d->hyperparameters[h].default_value;
        if (d->create(d, hyper, &inst, &err) != FLIPOUT_STATUS_OK) { fprintf(stderr, "create: %s\n", message); return 1; }
        uint32_t slots = 0, normals = 0, uniforms = 0;
        d->layout(inst, &slots, &normals, &uniforms);
        if (!bench) {
            printf("family %s (%s) struct_size %u slots %u normals %u uniforms %u\n", d->id, d->name, d->struct_size, slots, normals, uniforms);
            /* The 1.0 host steps through parameters with ITS sizeof(flipout_parameter_desc). */
            for (uint32_t k = 0; k < d->parameter_count; k++) {
                const flipout_parameter_desc *p = &d->parameters[k];
                printf("  parameter %s transform %d default %g prior %g\n", p->name, p->transform, p->default_value, p->prior_value);
            }
        }
        if (slots > 64) { fprintf(stderr, "too many slots\n"); return 1; }
        size_t n = bench ? (size_t)atol(argv[3]) : 1;
        int rounds = bench ? atoi(argv[4]) : 1;
        float *value = malloc(slots * sizeof(float)), *x = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
        float *out = malloc(n * sizeof(float)), *gx = calloc(n, sizeof(float)), *gp = calloc(slots, sizeof(float));
        flipout_in_array in[64];
        flipout_out_array grad[64];
        uint32_t k = 0;
        for (uint32_t p = 0; p < d->parameter_count; p++) {
            uint32_t count = 1;
            if (d->parameters[p].count_hyperparameter) {
                for (uint32_t h = 0; h < d->hyperparameter_count; h++)
                    if (strcmp(d->hyperparameters[h].name, d->parameters[p].count_hyperparameter) == 0) count = (uint32_t)hyper[h];
            }
            float v = d->parameters[p].prior_value == d->parameters[p].prior_value ? d->parameters[p].prior_value : d->parameters[p].default_value;
            for (uint32_t j = 0; j < count && k < slots; j++, k++) value[k] = v;
        }
        for (uint32_t s = 0; s < slots; s++) { in[s].data = &value[s]; in[s].stride = 0; grad[s].data = &gp[s]; grad[s].stride = 0; }
        for (size_t i = 0; i < n; i++) { x[i] = 0.3f + 0.001f * (float)(i % 100); g[i] = 1; }
        if (d->log_prob(inst, n, in, x, out, &err) != FLIPOUT_STATUS_OK) { fprintf(stderr, "log_prob: %s\n", message); return 1; }
        double *times = malloc((size_t)rounds * sizeof(double));
        for (int r = 0; r < rounds; r++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (d->log_prob_vjp(inst, n, in, x, g, gx, grad, &err) != FLIPOUT_STATUS_OK) { fprintf(stderr, "log_prob_vjp: %s\n", message); return 1; }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            times[r] = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)n;
        }
        if (bench) {
            qsort(times, (size_t)rounds, sizeof(double), compare);
            printf("ns per scalar: %.3f\n", times[rounds / 2]);
            return 0;
        }
        printf("  log_prob(0.3) = %.9g  d/dx = %.9g", out[0], gx[0]);
        for (uint32_t s = 0; s < slots; s++) printf("  d/dslot%u = %.9g", s, gp[s]);
        printf("\n");
        d->destroy(inst);
    }
    return 0;
}
