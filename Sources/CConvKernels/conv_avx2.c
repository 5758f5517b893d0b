// The avx2 level of the native Conv3D kernels (see kernels_body.h).
#include <string.h>
#include "kernels_common.h"

#define ISA FO_ISA_AVX2
#define VL 8
#define FN(name) name##_avx2
#if defined(__x86_64__)
#pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to = function)
#include "kernels_body.h"
#pragma clang attribute pop
#endif
