/* flipout_ffi.c -- returns the addresses of libffi's ffi_type globals (see include/flipout_ffi.h). */
#include "flipout_ffi.h"
#include <stdint.h>

ffi_type *flipout_ffi_void(void) { return &ffi_type_void; }
ffi_type *flipout_ffi_float(void) { return &ffi_type_float; }
ffi_type *flipout_ffi_double(void) { return &ffi_type_double; }
ffi_type *flipout_ffi_pointer(void) { return &ffi_type_pointer; }
ffi_type *flipout_ffi_sint32(void) { return &ffi_type_sint32; }
ffi_type *flipout_ffi_uint32(void) { return &ffi_type_uint32; }
ffi_type *flipout_ffi_uint64(void) { return &ffi_type_uint64; }
ffi_type *flipout_ffi_size_t(void) { return sizeof(size_t) == 8 ? &ffi_type_uint64 : &ffi_type_uint32; }
ffi_abi flipout_ffi_default_abi(void) { return FFI_DEFAULT_ABI; }
size_t flipout_ffi_closure_size(void) { return sizeof(ffi_closure); }
