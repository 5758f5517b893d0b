/* conformance_plugin.c -- a correct Normal(loc, scale) posterior in C99, and the ways to get one wrong.
 *
 * Without flags: family "org.test.cnormal", a posterior (sample, symmetric; one standard normal
 * per scalar) with an analytic KL against itself, which passes every `flipout plugins check`.
 * Each -D flag breaks exactly one promise, and `flipout plugins check` must name it:
 *   -DWRONG_GRADIENT        d log_prob / d scale misses its -1/scale term
 *   -DOVERWRITE             log_prob_vjp writes (=) into its gradient outputs instead of adding (+=)
 *   -DWRITES_NULL           log_prob_vjp writes the scale gradient even when its data is NULL
 *   -DFALSE_SYMMETRY        the family is a shifted exponential, loc + scale * (E - 1) with
 *                           E = -log(u) (one uniform per scalar), and still claims SYMMETRIC
 *   -DUNDER_DECLARED_NOISE  sample reads two normals per scalar while layout() declares one
 *   -DTRAP                  log_prob_vjp executes a trap instruction when scale < 0.01
 *   -DHANG                  sample never returns when scale < 0.01
 *   -DNAN_OK                no parameter check: scale <= 0 gives NaN with status OK
 *   -DNONFINITE_OK          no check of results: log_prob(NaN) is NaN, at scale 1e-40 d log_prob/
 *                           d scale overflows to +inf, a +inf normal gives a +inf sample, all with
 *                           status OK (the valid build answers FLIPOUT_STATUS_DOMAIN_ERROR)
 *   -DREFUSES_TAIL_NOISE    sample refuses (DOMAIN_ERROR) normals beyond +-6, which the host draws
 *   -DKL_UNSUPPORTED        kl and kl_vjp answer FLIPOUT_STATUS_UNSUPPORTED (the host must fall
 *                           back to Monte Carlo)
 *   -DHEADER_MINOR_AT_LEAST_2  built against a header of a future minor (a test generates one):
 *                           flipout_distribution and flipout_library are larger, their unknown
 *                           tails filled with garbage a correct host never reads
 * Build: cc -std=c99 -shared -fPIC -I Sources/PluginABI [-D...] conformance_plugin.c -o lib.so -lm
 */
#include "flipout_plugin.h"
#include <float.h>
#include <math.h>
#include <string.h>

#if defined(NAN_OK) && !defined(NONFINITE_OK)
#define NONFINITE_OK /* NaN from invalid parameters must reach the host with status OK */
#endif

#if defined(__GNUC__)
#define EXPORT __attribute__((visibility("default")))
#else
#define EXPORT
#endif

#ifndef FLIPOUT_SIZE_V1_0_HOST /* a 1.0 header pins no sizes */
#define FLIPOUT_SIZE_V1_0_HOST 40u
#endif

#define LOG_SQRT_2PI 0.91893853320467274178

static void write_error(flipout_error *err, const char *message) {
    size_t n = strlen(message);
    if (n + 1 > err->capacity) n = err->capacity - 1;
    memcpy(err->message, message, n);
    err->message[n] = '\0';
}

/* The header's rule: a result that would not be finite (in float) is FLIPOUT_STATUS_DOMAIN_ERROR,
   never NaN or an infinity with status OK; log_prob alone may be -inf (x outside the support). */
static int not_finite(double v, int minus_infinity_ok, flipout_error *err, const char *what) {
#if defined(NONFINITE_OK)
    (void)v; (void)minus_infinity_ok; (void)err; (void)what;
    return 0;
#else
    if (fabs(v) <= FLT_MAX || (minus_infinity_ok && v == -INFINITY)) return 0;
    write_error(err, what);
    return 1;
#endif
}

static int instance_token;

static flipout_status create(const flipout_distribution *self, const double *hyper,
                             flipout_instance **out, flipout_error *err) {
    (void)self; (void)hyper; (void)err;
    *out = (flipout_instance *)&instance_token;
    return FLIPOUT_STATUS_OK;
}

static void destroy(flipout_instance *instance) { (void)instance; }

static void layout(const flipout_instance *instance, uint32_t *slots, uint32_t *normals, uint32_t *uniforms) {
    (void)instance;
    if (slots) *slots = 2;
#if defined(FALSE_SYMMETRY)
    if (normals) *normals = 0;
    if (uniforms) *uniforms = 1;
#else
    if (normals) *normals = 1;
    if (uniforms) *uniforms = 0;
#endif
}

static double param(const flipout_in_array *p, int k, size_t i) { return p[k].data[i * p[k].stride]; }

/* Adds v into slot k of a gradient output for scalar i (stride 0: into the sum). */
static void add(const flipout_out_array *g, int k, size_t i, double v) {
#if defined(WRITES_NULL)
    if (k == 1 && g[k].data == NULL) { ((volatile float *)g[k].data)[i * g[k].stride] = (float)v; return; }
#endif
    if (!g[k].data) return;
#if defined(OVERWRITE)
    g[k].data[i * g[k].stride] = (float)v;
#else
    g[k].data[i * g[k].stride] += (float)v;
#endif
}

static int invalid(const flipout_in_array *p, size_t n, flipout_error *err) {
#if defined(NAN_OK)
    (void)p; (void)n; (void)err;
    return 0;
#else
    for (size_t i = 0; i < n; i++) {
        double loc = param(p, 0, i), scale = param(p, 1, i);
        if (!(scale > 0) || !isfinite(scale) || !isfinite(loc)) {
            write_error(err, "scale must be finite and > 0, loc finite");
            return 1;
        }
    }
    return 0;
#endif
}

#if defined(FALSE_SYMMETRY)
/* x = loc + scale * (E - 1), E ~ Exponential(1): mean loc, but skewed. */
static double logp(double x, double loc, double s, double *dx, double *dloc, double *ds) {
    double e = (x - loc) / s + 1;
    if (e < 0) { *dx = 0; *dloc = 0; *ds = 0; return -INFINITY; }
    *dx = -1 / s; *dloc = 1 / s; *ds = (x - loc) / (s * s) - 1 / s;
    return -e - log(s);
}
#else
static double logp(double x, double loc, double s, double *dx, double *dloc, double *ds) {
    double z = (x - loc) / s;
    *dx = -z / s;
    *dloc = z / s;
#if defined(WRONG_GRADIENT)
    *ds = z * z / s;
#else
    *ds = (z * z - 1) / s;
#endif
    return -0.5 * z * z - log(s) - LOG_SQRT_2PI;
}
#endif

static flipout_status log_prob(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                               const float *x, float *out, flipout_error *err) {
    (void)instance;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (size_t i = 0; i < n; i++) {
        double a, b, c, v = logp(x[i], param(params, 0, i), param(params, 1, i), &a, &b, &c);
        if (not_finite(v, 1, err, "log_prob is not finite (is x NaN?)")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        out[i] = (float)v;
    }
    return FLIPOUT_STATUS_OK;
}

static flipout_status log_prob_vjp(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                                   const float *x, const float *g, float *grad_x,
                                   const flipout_out_array *grad_params, flipout_error *err) {
    (void)instance;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    double sums[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        double dx, dloc, ds, s = param(params, 1, i);
#if defined(TRAP)
        if (s < 0.01) __builtin_trap();
#endif
        logp(x[i], param(params, 0, i), s, &dx, &dloc, &ds);
        double d[2] = {g[i] * dloc, g[i] * ds};
        if ((grad_x && not_finite(g[i] * dx, 0, err, "g * d log_prob/dx is not finite")) ||
            (grad_params[0].data && not_finite(d[0], 0, err, "g * d log_prob/d loc is not finite")) ||
            (grad_params[1].data && not_finite(d[1], 0, err, "g * d log_prob/d scale is not finite")))
            return FLIPOUT_STATUS_DOMAIN_ERROR;
        if (grad_x) grad_x[i] += (float)(g[i] * dx);
        for (int k = 0; k < 2; k++) {
            if (grad_params[k].stride == 0 && grad_params[k].data) sums[k] += d[k]; else add(grad_params, k, i, d[k]);
        }
    }
    for (int k = 0; k < 2; k++)
        if (grad_params[k].stride == 0 && grad_params[k].data && not_finite(sums[k], 0, err, "a broadcast gradient sum is not finite"))
            return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (int k = 0; k < 2; k++) if (grad_params[k].stride == 0 && grad_params[k].data) add(grad_params, k, 0, sums[k]);
#if defined(WRITES_NULL)
    if (n > 0 && !grad_params[1].data) add(grad_params, 1, 0, 0);
#endif
    return FLIPOUT_STATUS_OK;
}

/* The noise one scalar's sample is made of. */
static double noise_term(const float *normals, const float *uniforms, size_t i) {
#if defined(FALSE_SYMMETRY)
    (void)normals;
    return -log(uniforms[i]) - 1;
#elif defined(UNDER_DECLARED_NOISE)
    (void)uniforms;
    return (normals[2 * i] + normals[2 * i + 1]) / sqrt(2.0);
#else
    (void)uniforms;
    return normals[i];
#endif
}

static flipout_status sample(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                             const float *normals, const float *uniforms, float *x, flipout_error *err) {
    (void)instance;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (size_t i = 0; i < n; i++) {
#if defined(HANG)
        if (param(params, 1, i) < 0.01) { for (volatile int spin = 1; spin;) {} }
#endif
#if defined(REFUSES_TAIL_NOISE)
        if (fabs(noise_term(normals, uniforms, i)) > 6) { write_error(err, "noise beyond 6"); return FLIPOUT_STATUS_DOMAIN_ERROR; }
#endif
        double v = param(params, 0, i) + param(params, 1, i) * noise_term(normals, uniforms, i);
        if (not_finite(v, 0, err, "sample is not finite (noise not finite?)")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        x[i] = (float)v;
    }
    return FLIPOUT_STATUS_OK;
}

static flipout_status sample_vjp(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                                 const float *normals, const float *uniforms, const float *x, const float *g,
                                 const flipout_out_array *grad_params, flipout_error *err) {
    (void)instance; (void)x;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    double sums[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        double d[2] = {g[i], g[i] * noise_term(normals, uniforms, i)};
        for (int k = 0; k < 2; k++)
            if (grad_params[k].data && not_finite(d[k], 0, err, "g * d sample/d parameter is not finite")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        for (int k = 0; k < 2; k++) {
            if (grad_params[k].stride == 0 && grad_params[k].data) sums[k] += d[k]; else if (grad_params[k].data) grad_params[k].data[i * grad_params[k].stride] += (float)d[k];
        }
    }
    for (int k = 0; k < 2; k++)
        if (grad_params[k].stride == 0 && grad_params[k].data && not_finite(sums[k], 0, err, "a broadcast gradient sum is not finite"))
            return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (int k = 0; k < 2; k++) if (grad_params[k].stride == 0 && grad_params[k].data) grad_params[k].data[0] += (float)sums[k];
    return FLIPOUT_STATUS_OK;
}

static flipout_status center(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                             float *out, flipout_error *err) {
    (void)instance;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (size_t i = 0; i < n; i++) out[i] = (float)param(params, 0, i);
    return FLIPOUT_STATUS_OK;
}

static flipout_status center_vjp(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                                 const float *g, const flipout_out_array *grad_params, flipout_error *err) {
    (void)instance;
    if (invalid(params, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (grad_params[0].data && not_finite(g[i], 0, err, "g * d center/d loc is not finite")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        if (grad_params[0].stride == 0) sum += g[i]; else if (grad_params[0].data) grad_params[0].data[i * grad_params[0].stride] += g[i];
    }
    if (grad_params[0].stride == 0 && grad_params[0].data) {
        if (not_finite(sum, 0, err, "a broadcast gradient sum is not finite")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        grad_params[0].data[0] += (float)sum;
    }
    return FLIPOUT_STATUS_OK;
}

/* KL(N(mu, s^2) || N(m, t^2)) = log(t/s) + (s^2 + (mu - m)^2) / (2 t^2) - 1/2 */
static flipout_status kl(const flipout_instance *instance, size_t n, const char *q_family,
                         const flipout_in_array *q, const flipout_in_array *p, float *out, flipout_error *err) {
    (void)instance;
#if defined(KL_UNSUPPORTED)
    (void)n; (void)q_family; (void)q; (void)p; (void)out;
    write_error(err, "no analytic KL in this build");
    return FLIPOUT_STATUS_UNSUPPORTED;
#else
    if (strcmp(q_family, "org.test.cnormal") != 0) { write_error(err, "no analytic KL for this family"); return FLIPOUT_STATUS_UNSUPPORTED; }
    if (invalid(q, n, err) || invalid(p, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (size_t i = 0; i < n; i++) {
        double mu = param(q, 0, i), s = param(q, 1, i), m = param(p, 0, i), t = param(p, 1, i), d = mu - m;
        double v = log(t / s) + (s * s + d * d) / (2 * t * t) - 0.5;
        if (not_finite(v, 0, err, "KL is not finite")) return FLIPOUT_STATUS_DOMAIN_ERROR;
        out[i] = (float)v;
    }
    return FLIPOUT_STATUS_OK;
#endif
}

static flipout_status kl_vjp(const flipout_instance *instance, size_t n, const char *q_family,
                             const flipout_in_array *q, const flipout_in_array *p, const float *g,
                             const flipout_out_array *gq, const flipout_out_array *gp, flipout_error *err) {
    (void)instance;
#if defined(KL_UNSUPPORTED)
    (void)n; (void)q_family; (void)q; (void)p; (void)g; (void)gq; (void)gp;
    write_error(err, "no analytic KL in this build");
    return FLIPOUT_STATUS_UNSUPPORTED;
#else
    if (strcmp(q_family, "org.test.cnormal") != 0) { write_error(err, "no analytic KL for this family"); return FLIPOUT_STATUS_UNSUPPORTED; }
    if (invalid(q, n, err) || invalid(p, n, err)) return FLIPOUT_STATUS_DOMAIN_ERROR;
    double sq[2] = {0, 0}, sp[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        double mu = param(q, 0, i), s = param(q, 1, i), m = param(p, 0, i), t = param(p, 1, i), d = mu - m, t2 = t * t;
        double dq[2] = {g[i] * d / t2, g[i] * (-1 / s + s / t2)};
        double dp[2] = {-g[i] * d / t2, g[i] * (1 / t - (s * s + d * d) / (t2 * t))};
        for (int k = 0; k < 2; k++)
            if ((gq[k].data && not_finite(dq[k], 0, err, "g * dKL/dq is not finite")) || (gp[k].data && not_finite(dp[k], 0, err, "g * dKL/dp is not finite")))
                return FLIPOUT_STATUS_DOMAIN_ERROR;
        for (int k = 0; k < 2; k++) {
            if (gq[k].data) { if (gq[k].stride == 0) sq[k] += dq[k]; else gq[k].data[i * gq[k].stride] += (float)dq[k]; }
            if (gp[k].data) { if (gp[k].stride == 0) sp[k] += dp[k]; else gp[k].data[i * gp[k].stride] += (float)dp[k]; }
        }
    }
    for (int k = 0; k < 2; k++)
        if ((gq[k].data && gq[k].stride == 0 && not_finite(sq[k], 0, err, "a broadcast gradient sum is not finite")) ||
            (gp[k].data && gp[k].stride == 0 && not_finite(sp[k], 0, err, "a broadcast gradient sum is not finite")))
            return FLIPOUT_STATUS_DOMAIN_ERROR;
    for (int k = 0; k < 2; k++) {
        if (gq[k].data && gq[k].stride == 0) gq[k].data[0] += (float)sq[k];
        if (gp[k].data && gp[k].stride == 0) gp[k].data[0] += (float)sp[k];
    }
    return FLIPOUT_STATUS_OK;
#endif
}

static flipout_parameter_desc parameters[2] = {
    {sizeof(flipout_parameter_desc), "loc", "location (mean)", FLIPOUT_TRANSFORM_IDENTITY, 0.0f, 0.1f, NULL, NAN},
    {sizeof(flipout_parameter_desc), "scale", "standard deviation, > 0", FLIPOUT_TRANSFORM_SOFTPLUS, 0.05f, 0.1f, NULL, 1.0f},
};

#if FLIPOUT_ABI_MINOR >= 1
static const flipout_parameter_role roles[2] = {FLIPOUT_ROLE_LOCATION, FLIPOUT_ROLE_SCALE};
#endif

static const char *const kl_families[] = {"org.test.cnormal", NULL};

static flipout_distribution family;
static const flipout_distribution *families[1] = {&family};
static flipout_library library;

#if defined(HEADER_MINOR_AT_LEAST_2)
/* Everything past this reader's knowledge: garbage a correct host never reads. */
static void fill_tail(void *s, size_t known, size_t size) { memset((char *)s + known, 0xA5, size - known); }
#endif

EXPORT const flipout_library *flipout_plugin_entry_v1(const flipout_host *host) {
    if (!host || host->struct_size < FLIPOUT_SIZE_V1_0_HOST || host->abi_major != FLIPOUT_ABI_MAJOR) return NULL;
    family.struct_size = sizeof family;
#if defined(FALSE_SYMMETRY)
    family.id = "org.test.cexponential";
    family.name = "Shifted exponential that claims symmetry";
    family.capabilities = FLIPOUT_CAP_SAMPLE | FLIPOUT_CAP_SYMMETRIC | FLIPOUT_CAP_UNIFORM_NOISE;
    family.kl_families = NULL; /* kl is there but lists no family: never called */
    (void)kl_families;
    family.kl = kl;
    family.kl_vjp = kl_vjp;
#else
    family.id = "org.test.cnormal";
    family.name = "C Normal";
    family.capabilities = FLIPOUT_CAP_SAMPLE | FLIPOUT_CAP_SYMMETRIC;
    family.kl_families = kl_families;
    family.kl = kl;
    family.kl_vjp = kl_vjp;
#endif
    family.version = "1.0.0";
    family.description = "Normal(loc, scale) in plain C, the conformance suite's reference fixture.";
    family.parameter_count = 2;
    family.parameters = parameters;
    family.hyperparameter_count = 0;
    family.hyperparameters = NULL;
    family.build_toolchain = "cc";
    family.build_stdlib = "none";
    family.create = create;
    family.destroy = destroy;
    family.layout = layout;
    family.log_prob = log_prob;
    family.log_prob_vjp = log_prob_vjp;
    family.sample = sample;
    family.sample_vjp = sample_vjp;
    family.center = center;
    family.center_vjp = center_vjp;
#if FLIPOUT_ABI_MINOR >= 1
    family.parameter_roles = roles;
#endif
    library.struct_size = sizeof library;
    library.abi_major = FLIPOUT_ABI_MAJOR;
    library.abi_minor = FLIPOUT_ABI_MINOR;
    library.name = "C conformance fixture";
    library.distribution_count = 1;
    library.distributions = families;
#if defined(HEADER_MINOR_AT_LEAST_2)
    fill_tail(&family, offsetof(flipout_distribution, parameter_roles) + sizeof family.parameter_roles, sizeof family);
    fill_tail(&library, FLIPOUT_SIZE_V1_0_LIBRARY, sizeof library);
#endif
    return &library;
}
