// The portable level of the native Conv3D kernels (see kernels_body.h).
#include <string.h>
#include "kernels_common.h"

#define ISA FO_ISA_PORTABLE
#define VL 4
#define FN(name) name##_portable
// Baseline x86-64 (SSE2), or whatever the target's default is elsewhere: no target attribute.
#include "kernels_body.h"
