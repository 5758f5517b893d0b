// Block sizes and scratch sizes shared by the dispatcher and every instruction-set level.
#ifndef FLIPOUT_KERNELS_COMMON_H
#define FLIPOUT_KERNELS_COMMON_H
#include "conv_kernels.h"

/// Floats per vector: 16 (AVX-512), 8 (AVX2), 4 (SSE2, baseline x86-64).
static inline int fo_vl(int isa) { return isa == FO_ISA_AVX512 ? 16 : isa == FO_ISA_AVX2 ? 8 : 4; }
/// Output channels per register block: a power of two up to 8 (AVX-512: 32 registers) or 4
/// (16 registers), and no bigger than the layer's channels (an 8->1 layer computes one, not 8).
static inline int fo_cb(int isa, int cout) {
    int cap = isa == FO_ISA_AVX512 ? 8 : 4, cb = 1;
    while (cb * 2 <= cout && cb * 2 <= cap) cb *= 2;
    return cb;
}
/// Vectors along the output row per forward tile: enough independent accumulators to hide the
/// FMA latency when the channel block is small.
static inline int fo_nv(int cb) { return cb >= 4 ? 2 : 4; }
static inline long fo_round_up(long v, long m) { return (v + m - 1) / m * m; }
static inline int fo_blocks(int isa, int cout) { int cb = fo_cb(isa, cout); return (cout + cb - 1) / cb; }

/// The zero-padded input (fo_pad_input): (batch, groups, cin, padded_d, padded_h, padded_w), each
/// row exactly out_w + k_w - 1 long, then a zero tail for tiles that read past the last row.
static inline long fo_padded_d(const fo_conv_shape *s) { return s->out_d + s->k_d - 1; }
static inline long fo_padded_h(const fo_conv_shape *s) { return s->out_h + s->k_h - 1; }
static inline long fo_padded_w(const fo_conv_shape *s) { return s->out_w + s->k_w - 1; }
/// Backward-weights: one dy row, zero-padded to whole vectors.
static inline long fo_bw_dy_row_floats(int isa, const fo_conv_shape *s) { return fo_round_up(s->out_w, fo_vl(isa)); }
#endif
