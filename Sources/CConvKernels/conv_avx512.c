// The avx512 level of the native Conv3D kernels (see kernels_body.h).
#include <string.h>
#include "kernels_common.h"

#define ISA FO_ISA_AVX512
#define VL 16
#define FN(name) name##_avx512
#if defined(__x86_64__)
#pragma clang attribute push (__attribute__((target("avx512f,avx512vl,avx2,fma"))), apply_to = function)
#include "kernels_body.h"
#pragma clang attribute pop
#endif
