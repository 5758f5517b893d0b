/* faulty_plugin.c -- a Normal(loc, scale) plugin in C that misbehaves on purpose, for the isolation tests.
 *
 * The fault is chosen by the library's FILE NAME (so one build, copied under several names, covers
 * a whole test matrix, and the copies' SHA-256 stay identical for --resume):
 *
 *     libfaulty-<fault>-<function>[-<k>].so     libfaulty.so (or any other name): no fault
 *
 *   fault     trap (__builtin_trap), segv (write through NULL), abort, hang (spins forever),
 *             exit0 (exit(0)), nan (returns NaN with FLIPOUT_STATUS_OK; at entry: a NaN default),
 *             write (fopen a file for writing), socket (opens a TCP socket) -- the last two then
 *             carry on normally when the call succeeds (that is, without a sandbox); count logs
 *             "org.fixture.faulty: <function> call <k>" on every call instead of failing.
 *   function  entry, log_prob, log_prob_vjp, sample, sample_vjp, center, kl (kl and kl_vjp)
 *
 * The fault fires on the k-th call (default the first) of that function in the process (nan: on
 * every call from the k-th on). Family id org.fixture.faulty,
 * samplable and symmetric, with an analytic KL against itself and org.flipout3d.normal.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flipout_plugin.h"

static const flipout_host *the_host;
static char fault[32] = "", where[32] = "";
static long fire_at = 1, calls = 0;

static void read_fault_from_file_name(void) {
    Dl_info info;
    if (!dladdr((void *)read_fault_from_file_name, &info) || !info.dli_fname) return;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    if (strncmp(base, "libfaulty-", 10) != 0) return;
    const char *f = base + 10, *dash = strchr(f, '-'), *dot = strrchr(f, '.');
    if (!dash || !dot || dot < dash || (size_t)(dash - f) >= sizeof fault || (size_t)(dot - dash - 1) >= sizeof where) return;
    memcpy(fault, f, (size_t)(dash - f)); fault[dash - f] = 0;
    memcpy(where, dash + 1, (size_t)(dot - dash - 1)); where[dot - dash - 1] = 0;
    char *k = strchr(where, '-');
    if (k) { *k = 0; fire_at = atol(k + 1); }
}

/* Runs the fault if it is this function's; returns 1 when the caller must poison its output. */
static int strike(const char *function) {
    if (strcmp(where, function) != 0) return 0;
    if (!strcmp(fault, "count")) {
        char line[96];
        snprintf(line, sizeof line, "org.fixture.faulty: %s call %ld", function, ++calls);
        if (the_host) the_host->log(the_host->host_context, FLIPOUT_LOG_INFO, line);
        return 0;
    }
    if (++calls < fire_at) return 0;
    if (!strcmp(fault, "nan")) return 1; /* every call from the k-th on */
    where[0] = 0; /* only once */
    if (!strcmp(fault, "trap")) __builtin_trap();
    if (!strcmp(fault, "segv")) { volatile int *p = NULL; *p = 1; }
    if (!strcmp(fault, "abort")) abort();
    if (!strcmp(fault, "hang")) { volatile unsigned long spin = 0; for (;;) spin++; }
    if (!strcmp(fault, "exit0")) exit(0);
    if (!strcmp(fault, "write")) {
        FILE *f = fopen("/tmp/flipout-faulty-plugin-wrote-here", "w");
        if (f) { fputs("a plugin wrote this\n", f); fclose(f); }
    }
    if (!strcmp(fault, "socket")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s >= 0) close(s);
    }
    return !strcmp(fault, "nan");
}

#define AT(a, i) ((a).data[(i) * (a).stride])
static void add(const flipout_out_array *o, size_t i, double v) { if (o->data) o->data[i * o->stride] += (float)v; }

/* DOMAIN_ERROR unless every scalar's loc is finite and scale > 0 (finite). */
static int outside(const flipout_in_array *p, size_t n, flipout_error *err) {
    for (size_t i = 0; i < n; i++) {
        float m = AT(p[0], i), s = AT(p[1], i);
        if (!isfinite(m) || !isfinite(s) || !(s > 0)) { snprintf(err->message, err->capacity, "loc must be finite and scale > 0"); return 1; }
    }
    return 0;
}
#define CHECK(p) do { if (outside((p), n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR; } while (0)

/* The header's rule: a result that would not be finite is DOMAIN_ERROR, never OK (the fault-free
 * build must pass `plugins check`'s extremes probe; the nan fault breaks the rule on purpose). */
static int unfinite(const float *a, size_t n, size_t stride) {
    if (!a) return 0;
    for (size_t i = 0; i < n; i++) if (!isfinite(a[i * stride])) return 1;
    return 0;
}
#define FINITE(poison, a, count, stride) do { if (!(poison) && unfinite((a), (count), (stride))) { \
    snprintf(err->message, err->capacity, "a result is not finite"); return FLIPOUT_STATUS_DOMAIN_ERROR; } } while (0)

typedef struct flipout_instance { int unused; } inst_t;
static inst_t the_instance;

static flipout_status create(const flipout_distribution *self, const double *h, flipout_instance **out, flipout_error *err) {
    (void)self; (void)h; (void)err; *out = &the_instance; return FLIPOUT_STATUS_OK;
}
static void destroy(flipout_instance *i) { (void)i; }
static void layout(const flipout_instance *i, uint32_t *slots, uint32_t *normals, uint32_t *uniforms) {
    (void)i; if (slots) *slots = 2; if (normals) *normals = 1; if (uniforms) *uniforms = 0;
}

static flipout_status log_prob(const flipout_instance *inst, size_t n, const flipout_in_array *p, const float *x, float *out, flipout_error *err) {
    (void)inst;
    CHECK(p);
    int poison = strike("log_prob");
    for (size_t i = 0; i < n; i++) {
        double m = AT(p[0], i), s = AT(p[1], i), z = (x[i] - m) / s;
        out[i] = (float)(-0.5 * z * z - log(s) - 0.5 * log(2 * M_PI));
    }
    if (poison && n > 0) out[n / 2] = NAN;
    FINITE(poison, out, n, 1);
    return FLIPOUT_STATUS_OK;
}

static flipout_status log_prob_vjp(const flipout_instance *inst, size_t n, const flipout_in_array *p, const float *x, const float *g,
                                   float *gx, const flipout_out_array *gp, flipout_error *err) {
    (void)inst;
    CHECK(p);
    int poison = strike("log_prob_vjp");
    for (size_t i = 0; i < n; i++) {
        double m = AT(p[0], i), s = AT(p[1], i), d = x[i] - m;
        if (gx) gx[i] += (float)(g[i] * (-d / (s * s)));
        add(&gp[0], i, g[i] * d / (s * s));
        add(&gp[1], i, g[i] * (-1 / s + d * d / (s * s * s)));
    }
    if (poison && n > 0) { if (gx) gx[0] = NAN; else if (gp[0].data) gp[0].data[0] = NAN; else if (gp[1].data) gp[1].data[0] = NAN; }
    FINITE(poison, gx, n, 1); FINITE(poison, gp[0].data, n, gp[0].stride); FINITE(poison, gp[1].data, n, gp[1].stride);
    return FLIPOUT_STATUS_OK;
}

static flipout_status sample(const flipout_instance *inst, size_t n, const flipout_in_array *p, const float *normals, const float *uniforms,
                             float *x, flipout_error *err) {
    (void)inst; (void)uniforms;
    CHECK(p);
    int poison = strike("sample");
    for (size_t i = 0; i < n; i++) x[i] = (float)(AT(p[0], i) + AT(p[1], i) * (double)normals[i]);
    if (poison && n > 0) x[0] = INFINITY;
    FINITE(poison, x, n, 1);
    return FLIPOUT_STATUS_OK;
}

static flipout_status sample_vjp(const flipout_instance *inst, size_t n, const flipout_in_array *p, const float *normals, const float *uniforms,
                                 const float *x, const float *g, const flipout_out_array *gp, flipout_error *err) {
    (void)inst; (void)uniforms; (void)x;
    CHECK(p);
    int poison = strike("sample_vjp");
    for (size_t i = 0; i < n; i++) { add(&gp[0], i, g[i]); add(&gp[1], i, (double)g[i] * normals[i]); }
    if (poison && n > 0 && gp[1].data) gp[1].data[0] = NAN;
    FINITE(poison, gp[0].data, n, gp[0].stride); FINITE(poison, gp[1].data, n, gp[1].stride);
    return FLIPOUT_STATUS_OK;
}

static flipout_status center(const flipout_instance *inst, size_t n, const flipout_in_array *p, float *out, flipout_error *err) {
    (void)inst;
    CHECK(p);
    int poison = strike("center");
    for (size_t i = 0; i < n; i++) out[i] = AT(p[0], i);
    if (poison && n > 0) out[0] = NAN;
    FINITE(poison, out, n, 1);
    return FLIPOUT_STATUS_OK;
}

static flipout_status center_vjp(const flipout_instance *inst, size_t n, const flipout_in_array *p, const float *g, const flipout_out_array *gp,
                                 flipout_error *err) {
    (void)inst;
    CHECK(p);
    for (size_t i = 0; i < n; i++) add(&gp[0], i, g[i]);
    FINITE(0, gp[0].data, n, gp[0].stride);
    return FLIPOUT_STATUS_OK;
}

static flipout_status kl(const flipout_instance *inst, size_t n, const char *q_family, const flipout_in_array *q, const flipout_in_array *p,
                         float *out, flipout_error *err) {
    (void)inst;
    if (strcmp(q_family, "org.fixture.faulty") && strcmp(q_family, "org.flipout3d.normal")) {
        snprintf(err->message, err->capacity, "no KL from %s", q_family); return FLIPOUT_STATUS_UNSUPPORTED;
    }
    CHECK(q); CHECK(p);
    int poison = strike("kl");
    for (size_t i = 0; i < n; i++) {
        double mq = AT(q[0], i), sq = AT(q[1], i), mp = AT(p[0], i), sp = AT(p[1], i), d = mq - mp;
        out[i] = (float)(log(sp / sq) + (sq * sq + d * d) / (2 * sp * sp) - 0.5);
    }
    if (poison && n > 0) out[0] = NAN;
    FINITE(poison, out, n, 1);
    return FLIPOUT_STATUS_OK;
}

static flipout_status kl_vjp(const flipout_instance *inst, size_t n, const char *q_family, const flipout_in_array *q, const flipout_in_array *p,
                             const float *g, const flipout_out_array *gq, const flipout_out_array *gp, flipout_error *err) {
    (void)inst; (void)q_family;
    CHECK(q); CHECK(p);
    for (size_t i = 0; i < n; i++) {
        double mq = AT(q[0], i), sq = AT(q[1], i), mp = AT(p[0], i), sp = AT(p[1], i), d = mq - mp;
        add(&gq[0], i, g[i] * d / (sp * sp));
        add(&gq[1], i, g[i] * (-1 / sq + sq / (sp * sp)));
        add(&gp[0], i, g[i] * (-d / (sp * sp)));
        add(&gp[1], i, g[i] * (1 / sp - (sq * sq + d * d) / (sp * sp * sp)));
    }
    FINITE(0, gq[0].data, n, gq[0].stride); FINITE(0, gq[1].data, n, gq[1].stride);
    FINITE(0, gp[0].data, n, gp[0].stride); FINITE(0, gp[1].data, n, gp[1].stride);
    return FLIPOUT_STATUS_OK;
}

static flipout_parameter_desc params[2];
static const flipout_parameter_role roles[2] = {FLIPOUT_ROLE_LOCATION, FLIPOUT_ROLE_SCALE};
static const char *const kl_families[] = {"org.fixture.faulty", "org.flipout3d.normal", NULL};
static flipout_distribution dist;
static const flipout_distribution *dists[1] = {&dist};
static flipout_library lib;

const flipout_library *flipout_plugin_entry_v1(const flipout_host *host) {
    the_host = host;
    read_fault_from_file_name();
    int poison = strike("entry");
    params[0] = (flipout_parameter_desc){.struct_size = sizeof(flipout_parameter_desc), .name = "loc", .description = "Mean.",
        .transform = FLIPOUT_TRANSFORM_IDENTITY, .default_value = 0, .init_jitter = 0.1f, .prior_value = NAN};
    params[1] = (flipout_parameter_desc){.struct_size = sizeof(flipout_parameter_desc), .name = "scale", .description = "Standard deviation.",
        .transform = FLIPOUT_TRANSFORM_SOFTPLUS, .default_value = poison ? NAN : 0.05f, .init_jitter = 0.1f, .prior_value = 1};
    dist = (flipout_distribution){
        .struct_size = sizeof(flipout_distribution), .id = "org.fixture.faulty", .name = "Faulty Normal", .version = "1.0.0",
        .description = "A Normal that crashes, hangs, exits or lies when its file name says so (tests only).",
        .capabilities = FLIPOUT_CAP_SAMPLE | FLIPOUT_CAP_SYMMETRIC, .parameter_count = 2, .parameters = params,
        .kl_families = kl_families, .build_toolchain = "cc", .build_stdlib = "none",
        .create = create, .destroy = destroy, .layout = layout, .log_prob = log_prob, .log_prob_vjp = log_prob_vjp,
        .sample = sample, .sample_vjp = sample_vjp, .center = center, .center_vjp = center_vjp, .kl = kl, .kl_vjp = kl_vjp,
        .parameter_roles = roles};
    lib = (flipout_library){.struct_size = sizeof(flipout_library), .abi_major = FLIPOUT_ABI_MAJOR, .abi_minor = FLIPOUT_ABI_MINOR,
        .name = "faulty fixture", .distribution_count = 1, .distributions = dists};
    return &lib;
}
