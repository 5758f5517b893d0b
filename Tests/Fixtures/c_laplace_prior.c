/* c_laplace_prior.c -- a complete, correct Flipout3D prior written in plain C99: Laplace(loc, scale).
 *
 * Proves the ABI is C-compatible: it includes only flipout_plugin.h and builds with
 *   cc -std=c99 -Wall -Wextra -Werror -shared -fPIC -I Sources/PluginABI c_laplace_prior.c -lm -o libclaplace.so
 *
 *   log p(x | loc, scale) = -|x - loc| / scale - log(2 scale)
 *   d/dx     = -sign(x - loc) / scale
 *   d/dloc   =  sign(x - loc) / scale
 *   d/dscale =  |x - loc| / scale^2 - 1 / scale
 * Prior only (no FLIPOUT_CAP_SAMPLE); one hyperparameter-free family.
 */
#include "flipout_plugin.h"
#include <math.h>
#include <string.h>

static void write_error(flipout_error *err, const char *message) {
    size_t n = strlen(message);
    if (n + 1 > err->capacity) n = err->capacity - 1;
    memcpy(err->message, message, n);
    err->message[n] = '\0';
}

static double sign(double v) { return v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0); }

/* The instance is stateless: any non-NULL token will do. */
static int instance_token;

static flipout_status create(const flipout_distribution *self, const double *hyper,
                             flipout_instance **out, flipout_error *err) {
    (void)self; (void)hyper;
    if (!out) { write_error(err, "create: NULL output"); return FLIPOUT_STATUS_INVALID_ARGUMENT; }
    *out = (flipout_instance *)&instance_token;
    return FLIPOUT_STATUS_OK;
}

static void destroy(flipout_instance *instance) { (void)instance; }

static void layout(const flipout_instance *instance, uint32_t *slots, uint32_t *normals, uint32_t *uniforms) {
    (void)instance;
    if (slots) *slots = 2;
    if (normals) *normals = 0;
    if (uniforms) *uniforms = 0;
}

static flipout_status log_prob(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                               const float *x, float *out, flipout_error *err) {
    (void)instance;
    for (size_t i = 0; i < n; i++) {
        double loc = params[0].data[i * params[0].stride];
        double scale = params[1].data[i * params[1].stride];
        if (!(scale > 0)) { write_error(err, "Laplace: scale must be > 0"); return FLIPOUT_STATUS_DOMAIN_ERROR; }
        out[i] = (float)(-fabs(x[i] - loc) / scale - log(2 * scale));
    }
    return FLIPOUT_STATUS_OK;
}

static flipout_status log_prob_vjp(const flipout_instance *instance, size_t n, const flipout_in_array *params,
                                   const float *x, const float *g, float *grad_x,
                                   const flipout_out_array *grad_params, flipout_error *err) {
    (void)instance;
    double sums[2] = {0, 0}; /* stride-0 gradient slots receive the sum over all n */
    for (size_t i = 0; i < n; i++) {
        double loc = params[0].data[i * params[0].stride];
        double scale = params[1].data[i * params[1].stride];
        if (!(scale > 0)) { write_error(err, "Laplace: scale must be > 0"); return FLIPOUT_STATUS_DOMAIN_ERROR; }
        double d = x[i] - loc, gi = g[i];
        double partial[2] = {sign(d) / scale, fabs(d) / (scale * scale) - 1 / scale};
        if (grad_x) grad_x[i] += (float)(gi * -sign(d) / scale);
        for (int k = 0; k < 2; k++) {
            if (!grad_params[k].data) continue;
            if (grad_params[k].stride == 0) sums[k] += gi * partial[k];
            else grad_params[k].data[i * grad_params[k].stride] += (float)(gi * partial[k]);
        }
    }
    for (int k = 0; k < 2; k++)
        if (grad_params[k].data && grad_params[k].stride == 0) grad_params[k].data[0] += (float)sums[k];
    return FLIPOUT_STATUS_OK;
}

static const flipout_parameter_desc parameters[2] = {
    {sizeof(flipout_parameter_desc), "loc", "location (median)", FLIPOUT_TRANSFORM_IDENTITY, 0.0f, 0.0f, NULL, NAN},
    {sizeof(flipout_parameter_desc), "scale", "scale b > 0 (variance 2 b^2)", FLIPOUT_TRANSFORM_SOFTPLUS, 1.0f, 0.0f, NULL, NAN},
};

static const flipout_distribution laplace = {
    sizeof(flipout_distribution),
    "org.example.c.laplace", "Laplace (C)", "1.0.0",
    "Laplace(loc, scale) prior written in plain C against flipout_plugin.h.",
    0, /* capabilities: prior only */
    2, parameters, 0, NULL,
    NULL, /* no analytic KL */
    "gcc (C99)", "none",
    create, destroy, layout, log_prob, log_prob_vjp,
    NULL, NULL, NULL, NULL, /* sample, sample_vjp, center, center_vjp */
    NULL, NULL,             /* kl, kl_vjp */
    NULL,                   /* parameter_roles (ABI 1.1): none; "loc" is a location by the 1.0 rule */
};

static const flipout_distribution *const distributions[1] = {&laplace};

static const flipout_library library = {
    sizeof(flipout_library), FLIPOUT_ABI_MAJOR, FLIPOUT_ABI_MINOR, "C Laplace prior", 1, distributions,
};

const flipout_library *flipout_plugin_entry_v1(const flipout_host *host) {
    if (!host || host->abi_major != FLIPOUT_ABI_MAJOR) return NULL;
    return &library;
}
