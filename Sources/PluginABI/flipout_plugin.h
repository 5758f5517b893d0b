/*
 * flipout_plugin.h -- the Flipout3D distribution plugin ABI, major version 1.
 *
 * This header IS the ABI. A distribution plugin is a shared library that exports one symbol,
 * FLIPOUT_ENTRY_SYMBOL, and describes one or more probability distribution families over
 * scalars: their parameters, hyperparameters and capabilities, and functions that work on whole
 * buffers of n independent scalars (sample, log_prob, their vector-Jacobian products, the
 * center that Flipout perturbs around, and an optional analytic KL divergence).
 *
 * It depends only on <stddef.h> and <stdint.h>, is valid C99 and C++, and compiles cleanly with
 * -Wall -Wextra -Werror. Plugins may be written in any language that exports C symbols; the
 * bundled ones are Swift (`@_cdecl`) built with the PluginSDK module.
 *
 * ------------------------------------------------------------------------------------------
 * VERSIONING
 *   - The major version is part of the entry symbol's name. A host looks up exactly the symbol
 *     of the major version it speaks; an incompatible ABI is simply a different symbol.
 *   - Within a major version, minor versions only APPEND fields to the end of structs and
 *     functions to the end of function tables. Nothing is ever reordered, retyped or removed.
 *     New capability bits and enum values may be added; readers ignore ones they do not know.
 *   - Every struct that crosses the boundary begins with `uint32_t struct_size`, the sizeof()
 *     the WRITER was compiled with, which may be smaller (an older writer) or larger (a newer
 *     one) than the reader's own sizeof. A reader:
 *       * refuses a struct smaller than that struct's minor-0 size, FLIPOUT_SIZE_V1_0_*
 *         below (pinned forever; never the reader's own sizeof, which grows with each minor);
 *       * copies min(struct_size, its own sizeof) bytes and treats every field past
 *         struct_size as absent (its documented default, usually 0 / NULL): a field added in
 *         minor m is read only if struct_size >= offsetof(field) + sizeof(field);
 *   - Structs that sit in ARRAYS (flipout_parameter_desc, flipout_hyperparameter_desc) NEVER
 *     grow: a 1.0 reader steps through them with its own sizeof, so an appended field would
 *     shift every element after the first. Their struct_size is exactly the minor-0 size and a
 *     reader refuses any other. What a later minor says per parameter goes into a parallel
 *     array appended to flipout_distribution (e.g. parameter_roles, since 1.1).
 *   - A field is appended only where it cannot fall into the previous minor's tail padding
 *     (so that struct_size tells whether it is present).
 *   - flipout_in_array and flipout_out_array carry no struct_size: they never change.
 *   - Write descriptors with C99 designated initializers (`.id = "..."`, or assign fields of a
 *     zeroed static): fields a later header appends then stay 0 / NULL (absent), and the
 *     source keeps compiling with -Wextra -Werror.
 *
 * HOST LIMITS (a host refuses a plugin that exceeds them, naming the plugin)
 *   - FLIPOUT_MAX_PARAMETERS parameters and hyperparameters per family, FLIPOUT_MAX_SLOTS
 *     parameter slots per instance (a count hyperparameter's value included),
 *     FLIPOUT_MAX_NOISE_PER_SCALAR normals and as many uniforms per scalar,
 *     FLIPOUT_MAX_FAMILIES families per library.
 *   - ids, names, versions, parameter and hyperparameter names and kl_families entries are
 *     printable ASCII (0x20-0x7e), at most FLIPOUT_MAX_NAME_LENGTH bytes; descriptions are
 *     UTF-8 without control characters other than newline, at most FLIPOUT_MAX_TEXT_LENGTH.
 *
 * OWNERSHIP
 *   - Nothing allocated by one side is freed by the other. The plugin owns every descriptor it
 *     returns; they must stay valid and unchanged until the process exits (hosts never dlclose
 *     plugins: unloading a Swift library crashes the Swift runtime).
 *   - The host owns every buffer passed into a function, including the error message buffer.
 *     Pointers passed in are valid only for the duration of the call; a plugin keeps none.
 *
 * ERRORS
 *   - Fallible functions return a flipout_status. On failure the plugin writes a NUL-terminated
 *     UTF-8 message, truncated to fit, into the host's flipout_error buffer, and leaves outputs in
 *     an unspecified state (the host discards them).
 *   - A plugin never traps, aborts, raises a signal, throws a C++ exception or unwinds a Swift
 *     error across this boundary. Invalid input is reported as FLIPOUT_STATUS_INVALID_ARGUMENT
 *     or FLIPOUT_STATUS_DOMAIN_ERROR, never by crashing.
 *
 * THREADING (the class is stated per function)
 *   - [any-thread]  may be called from any thread, concurrently with anything.
 *   - [reentrant]   may be called concurrently on one instance; the plugin keeps no mutable state
 *                   per call. The host may split n across threads by calling with sub-ranges.
 *   - [exclusive]   the host guarantees no other call on the same instance runs at the same time.
 *
 * BUFFERS
 *   - All values are float (IEEE-754 binary32). Plugins should compute in double internally.
 *   - Parameters are struct-of-arrays: one flipout_in_array per parameter SLOT. Element i of a
 *     slot is data[i * stride]. Stride 0 broadcasts one value to all n scalars: a prior is the
 *     same family as a posterior, called with broadcast parameters.
 *   - Parameters are always passed in their CONSTRAINED form (a scale is > 0). The host owns the
 *     unconstrained storage and applies the declared flipout_transform and its derivative.
 *   - VJP outputs ADD into gradient buffers (they never overwrite). A gradient slot with stride 0
 *     receives the SUM over all n scalars; a NULL data pointer means "gradient not wanted".
 *     A host splitting n across threads gives each thread private stride-0 gradient cells.
 * ------------------------------------------------------------------------------------------
 */
#ifndef FLIPOUT_PLUGIN_H
#define FLIPOUT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLIPOUT_ABI_MAJOR 1
#define FLIPOUT_ABI_MINOR 1

/* The minor-0 size of every versioned struct on LP64 (64-bit Linux, macOS): the smallest
   struct_size a reader accepts. Pinned forever; sizeof() of the current structs may be larger. */
#define FLIPOUT_SIZE_V1_0_ERROR 16u
#define FLIPOUT_SIZE_V1_0_HOST 40u
#define FLIPOUT_SIZE_V1_0_PARAMETER_DESC 56u
#define FLIPOUT_SIZE_V1_0_HYPERPARAMETER_DESC 56u
#define FLIPOUT_SIZE_V1_0_DISTRIBUTION 192u
#define FLIPOUT_SIZE_V1_0_LIBRARY 40u

/* Host limits (see HOST LIMITS above). */
#define FLIPOUT_MAX_PARAMETERS 64u
#define FLIPOUT_MAX_SLOTS 1024u
#define FLIPOUT_MAX_NOISE_PER_SCALAR 1024u
#define FLIPOUT_MAX_FAMILIES 256u
#define FLIPOUT_MAX_NAME_LENGTH 128u
#define FLIPOUT_MAX_TEXT_LENGTH 4096u

/* The one symbol a plugin exports: `const flipout_library *flipout_plugin_entry_v1(const flipout_host *)`. */
#define FLIPOUT_ENTRY_SYMBOL "flipout_plugin_entry_v1"

/* ---- Status codes ---------------------------------------------------------------------- */

typedef int32_t flipout_status;
enum {
    FLIPOUT_STATUS_OK = 0,
    /* A shape, count, hyperparameter or pointer the function cannot accept. */
    FLIPOUT_STATUS_INVALID_ARGUMENT = 1,
    /* The operation is not provided (e.g. no analytic KL against the named family). Not an error
       the host reports: it falls back (e.g. to a Monte Carlo KL). */
    FLIPOUT_STATUS_UNSUPPORTED = 2,
    /* A value outside the support or parameter space (x < 0 for a Gamma, scale <= 0), or a
       result that would not be finite. */
    FLIPOUT_STATUS_DOMAIN_ERROR = 3,
    /* Anything else that went wrong inside the plugin. */
    FLIPOUT_STATUS_INTERNAL_ERROR = 4
};

/* A host-owned buffer for one error message. The plugin writes at most `capacity` bytes,
   including the terminating NUL; `message` is never NULL and `capacity` is at least 1.
   Threading: one flipout_error per call; never shared between concurrent calls. */
typedef struct flipout_error {
    uint32_t struct_size;
    uint32_t capacity;
    char *message;
} flipout_error;

/* ---- Services the host provides ----------------------------------------------------------- */

enum {
    FLIPOUT_LOG_DEBUG = 0,
    FLIPOUT_LOG_INFO = 1,
    FLIPOUT_LOG_WARNING = 2,
    FLIPOUT_LOG_ERROR = 3
};

typedef struct flipout_host {
    uint32_t struct_size;
    uint32_t abi_major;        /* FLIPOUT_ABI_MAJOR of the host. */
    uint32_t abi_minor;        /* FLIPOUT_ABI_MINOR of the host. */
    const char *host_name;     /* e.g. "flipout 0.1.0"; NUL-terminated, valid for the process. */
    void *host_context;        /* Opaque; pass back to the callbacks below. */

    /* Write one log line. `message` is NUL-terminated UTF-8, copied before return.
       [any-thread]. Never NULL. */
    void (*log)(void *host_context, int32_t level, const char *message);
} flipout_host;

/* ---- Describing a distribution family ----------------------------------------------------- */

/* Maps an unconstrained real u (what the optimizer updates) to the constrained parameter. */
typedef int32_t flipout_transform;
enum {
    FLIPOUT_TRANSFORM_IDENTITY = 0, /* theta = u                                   */
    FLIPOUT_TRANSFORM_SOFTPLUS = 1, /* theta = log(1 + exp(u)) > 0                 */
    FLIPOUT_TRANSFORM_EXP = 2,      /* theta = exp(u) > 0                          */
    FLIPOUT_TRANSFORM_SIGMOID = 3   /* theta = 1 / (1 + exp(-u)), in (0, 1)        */
};

/* Capability flags. Unknown bits must be ignored by hosts. */
typedef uint64_t flipout_capabilities;
/* `sample` / `sample_vjp` are provided: the family can be a posterior. */
#define FLIPOUT_CAP_SAMPLE ((flipout_capabilities)1 << 0)
/* The perturbation x - center(theta) is independent across scalars and symmetric about zero,
   so Flipout's sign flips leave the distribution unchanged (Wen et al. 2018, Observation 1). */
#define FLIPOUT_CAP_SYMMETRIC ((flipout_capabilities)1 << 1)
/* `sample_vjp` uses implicit reparameterization, dx/dtheta = -(dF/dtheta)(x) / p(x)
   (Figurnov et al. 2018), rather than differentiating an explicit transform of the noise. */
#define FLIPOUT_CAP_IMPLICIT_REPARAM ((flipout_capabilities)1 << 2)
/* `sample` consumes uniform noise in (0, 1) (see noise_counts). */
#define FLIPOUT_CAP_UNIFORM_NOISE ((flipout_capabilities)1 << 3)
/* The support is x > 0 (Gamma) or (0, 1) (Beta); weights drawn from it are positive. */
#define FLIPOUT_CAP_POSITIVE_SUPPORT ((flipout_capabilities)1 << 4)
/* Since 1.1. The family IS Normal(loc, scale): parameters (location, scale) in that slot order,
   with roles FLIPOUT_ROLE_LOCATION and FLIPOUT_ROLE_SCALE. A host picks the family it needs
   as "a Gaussian" (the other layers of --custom-layers first, the benchmarks) by this
   declaration, not by an id. */
#define FLIPOUT_CAP_GAUSSIAN ((flipout_capabilities)1 << 5)

/* Since 1.1: what a parameter means, so that host policy keys on a declaration, not a name. */
typedef int32_t flipout_parameter_role;
enum {
    FLIPOUT_ROLE_UNSPECIFIED = 0, /* no policy applies (and what a 1.0 descriptor reads as)       */
    /* A location a weight is centred on (identity transform). A host's convolution layers
       initialise it He-normal, N(0, 2 / fan_in), instead of init_jitter. */
    FLIPOUT_ROLE_LOCATION = 1,
    FLIPOUT_ROLE_SCALE = 2,       /* a spread (> 0)                                                */
    FLIPOUT_ROLE_SHAPE = 3,       /* a shape, degrees of freedom or concentration                  */
    FLIPOUT_ROLE_WEIGHT = 4       /* a mixture weight, probability or logit                         */
};

typedef struct flipout_parameter_desc {
    uint32_t struct_size;
    const char *name;             /* e.g. "loc", "scale". Unique within the family. */
    const char *description;      /* One sentence for `flipout plugins inspect`. */
    flipout_transform transform;  /* From unconstrained storage to this constrained value. */
    float default_value;          /* Constrained default: initial posterior value and prior value. */
    float init_jitter;            /* Std. dev. of N(0, .) noise added in unconstrained space when
                                     a posterior is initialised (TFP: 0.1 for loc and rho). The
                                     host's convolution layers replace it for a parameter with
                                     role FLIPOUT_ROLE_LOCATION (see parameter_roles; without
                                     roles, as in 1.0: one named "loc" with identity transform)
                                     by He-normal sqrt(2 / fan_in). */
    /* NULL: the parameter is one slot. Otherwise the name of an integer hyperparameter whose
       value k makes this parameter k consecutive slots (mixture components). */
    const char *count_hyperparameter;
    /* Constrained value used when the family is a PRIOR and the user sets none (--prior-param),
       e.g. scale 1 for a Normal prior (TFP's default prior) while default_value gives a posterior's
       small initial scale. NaN: use default_value. */
    float prior_value;
    /* Never extended (it sits in an array; see VERSIONING). */
} flipout_parameter_desc;

typedef struct flipout_hyperparameter_desc {
    uint32_t struct_size;
    const char *name;             /* e.g. "components". */
    const char *description;
    double default_value;
    double minimum;               /* Inclusive bounds the host checks before `create`. */
    double maximum;
    uint32_t is_integer;          /* Nonzero: the value must be an integer. */
    /* Never extended (it sits in an array; see VERSIONING). */
} flipout_hyperparameter_desc;

/* One input slot: element i is data[i * stride]; stride 0 broadcasts data[0]. */
typedef struct flipout_in_array {
    const float *data;
    size_t stride;
} flipout_in_array;

/* One gradient slot: the plugin ADDS into data[i * stride]; stride 0 accumulates the sum.
   data == NULL: this gradient is not wanted and must not be written. */
typedef struct flipout_out_array {
    float *data;
    size_t stride;
} flipout_out_array;

typedef struct flipout_instance flipout_instance; /* Opaque, plugin-owned. */
typedef struct flipout_distribution flipout_distribution;

/* Common argument conventions for the compute functions below:
     instance  from create; never NULL.
     n         number of scalars; 0 is valid and does nothing.
     params    parameter_slot_count entries (see noise_counts), constrained values.
     err       host-owned message buffer; never NULL.
   Contiguous buffers (x, out, noise) hold exactly n values (noise: n * count, scalar-major:
   the j-th noise value of scalar i is at [i * count + j]). Output buffers never alias inputs. */

struct flipout_distribution {
    uint32_t struct_size;

    /* -- Identity ------------------------------------------------------------------------ */
    const char *id;           /* Reverse-DNS, unique across all loaded plugins, e.g.
                                 "org.flipout3d.normal". The id also fixes the meaning and order
                                 of the parameters, which other plugins rely on for KL. */
    const char *name;         /* Human name, e.g. "Normal". */
    const char *version;      /* Semantic version of this family's implementation. */
    const char *description;  /* One paragraph for `flipout plugins inspect`. */

    /* -- Family ----------------------------------------------------------------------------- */
    flipout_capabilities capabilities;
    uint32_t parameter_count;
    const flipout_parameter_desc *parameters;
    uint32_t hyperparameter_count;
    const flipout_hyperparameter_desc *hyperparameters;
    /* NULL-terminated list of posterior family ids q for which `kl` computes KL(q || this)
       analytically. NULL or empty: no analytic KL (the host uses Monte Carlo). */
    const char *const *kl_families;

    /* -- Build information ------------------------------------------------------------------ */
    const char *build_toolchain;  /* e.g. "Swift 6.3.1", "gcc 12.2". */
    const char *build_stdlib;     /* "dynamic", "static" or "none" (C). */

    /* -- Functions (append-only) -------------------------------------------------------------- */

    /* Create an instance. `hyperparameters` holds hyperparameter_count values in declared order,
       already range-checked by the host (the plugin may still refuse combinations).
       On success stores a non-NULL instance in *out. Ownership: the caller owns the instance
       and releases it with `destroy`. [any-thread]. Required. */
    flipout_status (*create)(const flipout_distribution *self, const double *hyperparameters,
                             flipout_instance **out, flipout_error *err);

    /* Release an instance from `create`. NULL is a no-op. [exclusive]. Required. */
    void (*destroy)(flipout_instance *instance);

    /* Per-instance layout: the number of parameter slots (the sum over parameters of their
       counts) and the noise one sample of one scalar consumes: standard normals and uniforms
       in (0, 1). The host owns all randomness and provides exactly that much. Any pointer may be
       NULL if not wanted. [reentrant]. Required. */
    void (*layout)(const flipout_instance *instance, uint32_t *parameter_slot_count,
                   uint32_t *normals_per_scalar, uint32_t *uniforms_per_scalar);

    /* out[i] = log p(x[i] | theta_i). DOMAIN_ERROR if a parameter is outside its space;
       x outside the support gives -INFINITY (not an error). [reentrant]. Required. */
    flipout_status (*log_prob)(const flipout_instance *instance, size_t n,
                               const flipout_in_array *params, const float *x, float *out,
                               flipout_error *err);

    /* VJP of log_prob: given upstream g[i] = dL/d out[i], ADD g[i] * d out[i]/d x[i] into
       grad_x[i] (grad_x may be NULL) and g[i] * d out[i]/d theta_{k,i} into grad_params[k].
       [reentrant]. Required. */
    flipout_status (*log_prob_vjp)(const flipout_instance *instance, size_t n,
                                   const flipout_in_array *params, const float *x, const float *g,
                                   float *grad_x, const flipout_out_array *grad_params,
                                   flipout_error *err);

    /* x[i] = T(noise_i; theta_i), a reparameterized sample. Deterministic in its inputs.
       [reentrant]. Required with FLIPOUT_CAP_SAMPLE, else NULL. */
    flipout_status (*sample)(const flipout_instance *instance, size_t n,
                             const flipout_in_array *params, const float *normals,
                             const float *uniforms, float *x, flipout_error *err);

    /* VJP of sample: given the sample x (as returned by `sample` with the same noise) and
       g[i] = dL/dx[i], ADD g[i] * dx[i]/dtheta_{k,i} into grad_params[k]. With
       FLIPOUT_CAP_IMPLICIT_REPARAM, dx/dtheta = -(dF/dtheta)(x) / p(x).
       [reentrant]. Required with FLIPOUT_CAP_SAMPLE, else NULL. */
    flipout_status (*sample_vjp)(const flipout_instance *instance, size_t n,
                                 const flipout_in_array *params, const float *normals,
                                 const float *uniforms, const float *x, const float *g,
                                 const flipout_out_array *grad_params, flipout_error *err);

    /* out[i] = the center that Flipout perturbs around (the location for symmetric families,
       the mean otherwise) and that deterministic prediction uses. [reentrant].
       Required with FLIPOUT_CAP_SAMPLE, else may be NULL. */
    flipout_status (*center)(const flipout_instance *instance, size_t n,
                             const flipout_in_array *params, float *out, flipout_error *err);

    /* VJP of center: ADD g[i] * d out[i]/d theta_{k,i} into grad_params[k]. [reentrant].
       Required with FLIPOUT_CAP_SAMPLE, else may be NULL. */
    flipout_status (*center_vjp)(const flipout_instance *instance, size_t n,
                                 const flipout_in_array *params, const float *g,
                                 const flipout_out_array *grad_params, flipout_error *err);

    /* out[i] = KL(q_i || p_i) where p is THIS family (the prior) with `p_params` and q is the
       family `q_family` (one of kl_families) with `q_params` in q's declared slot order and the
       q family's default hyperparameters. UNSUPPORTED for any other family: the host falls back
       to Monte Carlo. [reentrant]. Optional (NULL: never analytic). */
    flipout_status (*kl)(const flipout_instance *instance, size_t n, const char *q_family,
                         const flipout_in_array *q_params, const flipout_in_array *p_params,
                         float *out, flipout_error *err);

    /* VJP of kl: ADD g[i] * d out[i]/d q_{k,i} into grad_q[k] and g[i] * d out[i]/d p_{k,i}
       into grad_p[k] (either may hold NULL data pointers). [reentrant].
       Required when `kl` is provided. */
    flipout_status (*kl_vjp)(const flipout_instance *instance, size_t n, const char *q_family,
                             const flipout_in_array *q_params, const flipout_in_array *p_params,
                             const float *g, const flipout_out_array *grad_q,
                             const flipout_out_array *grad_p, flipout_error *err);

    /* ---- 1.0 ends here (FLIPOUT_SIZE_V1_0_DISTRIBUTION). ---- */

    /* Since 1.1: parameter_count roles (FLIPOUT_ROLE_*), one per parameter in declared order,
       owned by the plugin like the parameters. NULL (or absent, struct_size < 200): no roles
       declared; a host then applies the 1.0 rule (a parameter named "loc" with identity
       transform is a location). Optional. */
    const flipout_parameter_role *parameter_roles;

    /* ---- Minor 2 and later append here. ---- */
};

/* What the entry symbol returns: the library's families. */
typedef struct flipout_library {
    uint32_t struct_size;
    uint32_t abi_major;            /* Must equal the host's FLIPOUT_ABI_MAJOR. */
    uint32_t abi_minor;            /* The minor the plugin was built against. */
    const char *name;              /* e.g. "Flipout3D Normal". */
    uint32_t distribution_count;   /* At least 1. */
    const flipout_distribution *const *distributions;
} flipout_library;

/* The entry point. Called once per process, from the thread that loads the plugin, before any
   other function. `host` and its strings stay valid for the life of the process; the plugin may
   keep the pointer and call `host->log` from any function. Returns the library (plugin-owned,
   valid forever), or NULL after logging the reason through host->log (or, when the host
   table is too small to hold `log`, to stderr). A plugin accepts any host of its major
   version whose struct_size is at least FLIPOUT_SIZE_V1_0_HOST, whatever its minor.
   [exclusive]. */
typedef const flipout_library *(*flipout_entry_fn)(const flipout_host *host);

#ifdef __cplusplus
}
#endif

#endif /* FLIPOUT_PLUGIN_H */
