/* foreign_densities.c -- plain C log densities NOT written against the plugin ABI, for --foreign-prior tests.
 *
 *   cauchy_logpdf(x, loc, scale)  = -log(pi * scale) - log(1 + ((x - loc) / scale)^2); NaN if scale <= 0
 *   logistic_logpdf_f(x, s)       = -x/s - log(s) - 2 log(1 + exp(-x/s))   (float)
 *
 * Build: cc -std=c99 -Wall -Wextra -Werror -shared -fPIC foreign_densities.c -lm -o libforeign.so
 */
#include <math.h>

static const double pi = 3.14159265358979323846; /* M_PI is not in strict C99 */

double cauchy_logpdf(double x, double loc, double scale) {
    if (!(scale > 0)) return NAN;
    double z = (x - loc) / scale;
    return -log(pi * scale) - log1p(z * z);
}

float logistic_logpdf_f(float x, float s) {
    double z = (double)x / (double)s;
    /* -z - 2 log(1 + e^-z), written stably for either sign of z. */
    double a = fabs(z);
    return (float)(-a - 2.0 * log1p(exp(-a)) - log((double)s));
}
