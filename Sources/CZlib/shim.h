// zlib's C API (Debian zlib1g-dev), with the init macros wrapped as functions Swift can call.
#include <zlib.h>

/// inflateInit2 with automatic zlib/gzip header detection (windowBits 15 + 32).
static inline int czlib_inflate_init_auto(z_stream *strm) { return inflateInit2(strm, 15 + 32); }

/// deflateInit2 writing a gzip wrapper (windowBits 15 + 16), memLevel 8, default strategy.
static inline int czlib_deflate_init_gzip(z_stream *strm, int level) {
    return deflateInit2(strm, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
