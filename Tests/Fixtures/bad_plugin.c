/* bad_plugin.c -- deliberately broken Flipout3D plugins for the loader's error-path tests.
 *
 * Without flags this is a small valid plugin (one prior-only family, FIXTURE_ID). Each -D flag
 * breaks exactly one thing the host must refuse with a clear message:
 *   -DMISSING_ENTRY   exports no flipout_plugin_entry_v* at all
 *   -DENTRY_V2        exports only flipout_plugin_entry_v2 (a future major version)
 *   -DLIBRARY_MAJOR2  exports _v1, but its flipout_library says abi_major 2
 *   -DSMALL_STRUCT    flipout_distribution.struct_size is 8
 *   -DNULL_LOG_PROB   the required log_prob is NULL
 *   -DDOMAIN_ERROR    log_prob returns FLIPOUT_STATUS_DOMAIN_ERROR "x must be positive" for x <= 0
 *   -DRETURN_NAN      log_prob writes NaN and returns OK
 *   -DHUGE_NOISE      layout() claims 2^32 - 1 normals per scalar
 *   -DUNIFORM_CAP     declares FLIPOUT_CAP_UNIFORM_NOISE while layout() reports 0 uniforms
 *   -DESCAPE_NAME     the family name holds a terminal escape sequence (ESC [ 3 1 m)
 *   -DCOUNT_MINUS_1   the parameter repeats by an integer hyperparameter whose default is -1
 *   -DFIXTURE_ID='"org.test.x"'  the family id (default "org.flipout3d.test.bad")
 * Build: cc -std=c99 -shared -fPIC -I Sources/PluginABI [-D...] bad_plugin.c -o libbad.so
 */
#include "flipout_plugin.h"
#include <math.h>
#include <string.h>

#ifndef FIXTURE_ID
#define FIXTURE_ID "org.flipout3d.test.bad"
#endif

#if defined(__GNUC__)
#define EXPORT __attribute__((visibility("default")))
#define MAYBE_UNUSED __attribute__((unused))
#else
#define EXPORT
#define MAYBE_UNUSED
#endif

MAYBE_UNUSED static void write_error(flipout_error *err, const char *message) {
    size_t n = strlen(message);
    if (n + 1 > err->capacity) n = err->capacity - 1;
    memcpy(err->message, message, n);
    err->message[n] = '\0';
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
#if defined(COUNT_MINUS_1)
    if (slots) *slots = 2;
#else
    if (slots) *slots = 1;
#endif
#if defined(HUGE_NOISE)
    if (normals) *normals = 0xffffffffu;
#else
    if (normals) *normals = 0;
#endif
    if (uniforms) *uniforms = 0;
}

/* log p(x | rate) = log(rate) - rate * x, for x >= 0 (an Exponential). */
MAYBE_UNUSED static flipout_status log_prob(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                               const float *x, float *out, flipout_error *err) {
    (void)instance; (void)err;
    for (size_t i = 0; i < n; i++) {
        double rate = params[0].data[i * params[0].stride];
#if defined(DOMAIN_ERROR)
        if (x[i] <= 0) { write_error(err, "x must be positive"); return FLIPOUT_STATUS_DOMAIN_ERROR; }
#endif
#if defined(RETURN_NAN)
        out[i] = (float)NAN;
        (void)rate; (void)x;
#else
        out[i] = x[i] < 0 ? -INFINITY : (float)(log(rate) - rate * x[i]);
#endif
    }
    return FLIPOUT_STATUS_OK;
}

static flipout_status log_prob_vjp(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                                   const float *x, const float *g, float *grad_x,
                                   const flipout_out_array *grad_params, flipout_error *err) {
    (void)instance; (void)err;
    for (size_t i = 0; i < n; i++) {
        double rate = params[0].data[i * params[0].stride];
        if (grad_x) grad_x[i] += (float)(g[i] * -rate);
        if (grad_params[0].data) grad_params[0].data[i * grad_params[0].stride] += (float)(g[i] * (1 / rate - x[i]));
    }
    return FLIPOUT_STATUS_OK;
}

static const flipout_parameter_desc parameters[1] = {
#if defined(COUNT_MINUS_1)
    {sizeof(flipout_parameter_desc), "rate", "rate, > 0", FLIPOUT_TRANSFORM_SOFTPLUS, 1.0f, 0.0f, "components", NAN},
#else
    {sizeof(flipout_parameter_desc), "rate", "rate, > 0", FLIPOUT_TRANSFORM_SOFTPLUS, 1.0f, 0.0f, NULL, NAN},
#endif
};

/* Two hyperparameters (unused by the math) so `flipout plugins inspect` has ranges to show. */
static const flipout_hyperparameter_desc hyperparameters[2] = {
#if defined(COUNT_MINUS_1)
    {sizeof(flipout_hyperparameter_desc), "components", "an integer hyperparameter", -1.0, -1.0, 8.0, 1},
#else
    {sizeof(flipout_hyperparameter_desc), "components", "an integer hyperparameter", 2.0, 1.0, 8.0, 1},
#endif
    {sizeof(flipout_hyperparameter_desc), "temperature", "a real hyperparameter", 1.0, 0.0, INFINITY, 0},
};

static const flipout_distribution distribution = {
#if defined(SMALL_STRUCT)
    8,
#else
    sizeof(flipout_distribution),
#endif
#if defined(ESCAPE_NAME)
    FIXTURE_ID, "Bad \033[31mfixture", "0.0.1", "A deliberately broken plugin for loader tests.",
#else
    FIXTURE_ID, "Bad fixture", "0.0.1", "A deliberately broken plugin for loader tests.",
#endif
#if defined(UNIFORM_CAP)
    FLIPOUT_CAP_UNIFORM_NOISE,
#else
    0,
#endif
    1, parameters, 2, hyperparameters, NULL,
    "cc", "none",
    create, destroy, layout,
#if defined(NULL_LOG_PROB)
    NULL,
#else
    log_prob,
#endif
    log_prob_vjp,
    NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, /* parameter_roles (1.1): none, the 1.0 rule applies */
};

static const flipout_distribution *const distributions[1] = {&distribution};

static const flipout_library library = {
    sizeof(flipout_library),
#if defined(LIBRARY_MAJOR2)
    2,
#else
    FLIPOUT_ABI_MAJOR,
#endif
    FLIPOUT_ABI_MINOR, "Bad fixture library", 1, distributions,
};

#if defined(MISSING_ENTRY)
EXPORT const flipout_library *not_the_entry_point(const flipout_host *host) { (void)host; return &library; }
#elif defined(ENTRY_V2)
EXPORT const flipout_library *flipout_plugin_entry_v2(const flipout_host *host) { (void)host; return &library; }
#else
EXPORT const flipout_library *flipout_plugin_entry_v1(const flipout_host *host) { (void)host; return &library; }
#endif
