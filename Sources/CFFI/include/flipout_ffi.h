/* flipout_ffi.h -- the libffi shim: hands out libffi's ffi_type globals and ABI constant to Swift.
 *
 * Swift 6 refuses libffi's mutable `ffi_type_*` globals (and cannot see the macros that alias
 * some of them), so these functions return their addresses instead. Everything else in <ffi.h>
 * (ffi_prep_cif, ffi_call, ffi_closure_alloc, ffi_prep_closure_loc, ...) is used directly through
 * this module; the typed Swift wrapper is Sources/Host/Flipout3D/Plugins/Foreign/FFI.swift.
 * The returned descriptors are libffi's own, valid for the process, and never written.
 */
#ifndef FLIPOUT_FFI_H
#define FLIPOUT_FFI_H

#include <ffi.h>

#ifdef __cplusplus
extern "C" {
#endif

ffi_type *flipout_ffi_void(void);
ffi_type *flipout_ffi_float(void);
ffi_type *flipout_ffi_double(void);
ffi_type *flipout_ffi_pointer(void);
ffi_type *flipout_ffi_sint32(void);
ffi_type *flipout_ffi_uint32(void);
ffi_type *flipout_ffi_uint64(void);
/* The ffi_type of size_t on this platform (uint64 on LP64). */
ffi_type *flipout_ffi_size_t(void);
/* FFI_DEFAULT_ABI, the calling convention of ordinary C functions on this platform. */
ffi_abi flipout_ffi_default_abi(void);
/* sizeof(ffi_closure): what ffi_closure_alloc must be asked for. */
size_t flipout_ffi_closure_size(void);

#ifdef __cplusplus
}
#endif

#endif /* FLIPOUT_FFI_H */
