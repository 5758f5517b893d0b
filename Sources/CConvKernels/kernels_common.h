// Block sizes and scratch sizes shared by the dispatcher and every instruction-set level.
#ifndef FLIPOUT_KERNELS_COMMON_H
#define FLIPOUT_KERNELS_COMMON_H
#include <string.h>
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
/// Forward scratch before the ring: one output tile, (CB, NV * VL) or (CB, R, 2 * VL).
static inline long fo_tile_floats(int isa) { return 8L * 4 * fo_vl(isa); }
static inline long fo_round_up(long v, long m) { return (v + m - 1) / m * m; }
static inline int fo_blocks(int isa, int cout) { int cb = fo_cb(isa, cout); return (cout + cb - 1) / cb; }

/// The zero-padded input the kernels read: (batch, groups, cin, padded_d, padded_h, padded_w), each
/// row exactly out_w + k_w - 1 long. It is never stored whole: each call pads the planes it
/// needs into a ring in its scratch (fo_ring_planes), so the input is read once, from where it
/// lies, and the padded planes stay in cache (a whole padded copy of a 96^3 layer's input is
/// written to and read back from DRAM).
static inline long fo_padded_d(const fo_conv_shape *s) { return (long)(s->out_d - 1) * s->stride_d + s->k_d; }
static inline long fo_padded_h(const fo_conv_shape *s) { return (long)(s->out_h - 1) * s->stride_h + s->k_h; }
/// Width stride 2: a padded row is its even columns (padded column 2m at m), then its odd ones
/// (2m + 1 at fo_half_w + m), fo_half_w = out_w + (k_w - 1) / 2 each: tap kw of output ow reads
/// column ow + fo_tap_offset(kw), so every tap is a contiguous vector load.
static inline long fo_half_w(const fo_conv_shape *s) { return s->out_w + (s->k_w - 1) / 2; }
static inline long fo_padded_w(const fo_conv_shape *s) {
    return s->stride_w == 2 ? 2 * fo_half_w(s) : s->out_w + s->k_w - 1;
}
/// One padded plane in the ring: padded_h rows, then a zero tail, so a tile reading past the end
/// of the last row (at most 4 vectors of 16 floats, plus k_w - 1) stays inside the buffer and
/// reads zeros (backward-weights multiplies them by dy's zero tail: they must be finite).
static inline long fo_plane_tail(const fo_conv_shape *s) { return 4L * 16 + s->k_w; }
static inline long fo_plane_floats(const fo_conv_shape *s) { return fo_padded_h(s) * fo_padded_w(s) + fo_plane_tail(s); }
/// The ring: (cin, k_d) padded planes, the k_d planes a output plane reads for each input channel.
static inline long fo_ring_floats(const fo_conv_shape *s) { return (long)s->cin * s->k_d * fo_plane_floats(s); }

/// Zero tails, nothing held (held: k_d entries).
static inline void fo_ring_init(const fo_conv_shape *s, float *ring, long *held) {
    const long pf = fo_plane_floats(s), body = fo_padded_h(s) * fo_padded_w(s);
    for (long i = 0; i < (long)s->cin * s->k_d; i++) memset(ring + i * pf + body, 0, sizeof(float) * fo_plane_tail(s));
    for (int kd = 0; kd < s->k_d; kd++) held[kd] = -1;
}

/// Padded plane zd (padded depth) of input channel `channel` = (n * groups + g) * cin + ci of x
/// (batch, groups * cin, in_d, in_h, in_w) into dst (padded_h rows of padded_w floats).
static inline void fo_pad_plane(const fo_conv_shape *s, const float *x, long channel, long zd, float *dst) {
    const long Hp = fo_padded_h(s), Wr = fo_padded_w(s), inPlane = (long)s->in_h * s->in_w;
    const long id = zd - s->pad_d;
    if (id < 0 || id >= s->in_d) { memset(dst, 0, sizeof(float) * Hp * Wr); return; }
    const float *src = x + (channel * s->in_d + id) * inPlane;
    for (long zh = 0; zh < Hp; zh++) {
        float *r = dst + zh * Wr;
        const long ih = zh - s->pad_h;
        if (ih < 0 || ih >= s->in_h) { memset(r, 0, sizeof(float) * Wr); continue; }
        if (s->stride_w == 2) {   // even padded columns, then odd ones
            const float *in = src + ih * s->in_w;
            const long half = fo_half_w(s);
            for (long m = 0; m < Wr; m++) {
                const long iw = (m < half ? 2 * m : 2 * (m - half) + 1) - s->pad_w;
                r[m] = iw >= 0 && iw < s->in_w ? in[iw] : 0.0f;
            }
            continue;
        }
        memset(r, 0, sizeof(float) * s->pad_w);
        memcpy(r + s->pad_w, src + ih * s->in_w, sizeof(float) * s->in_w);
        memset(r + s->pad_w + s->in_w, 0, sizeof(float) * (Wr - s->pad_w - s->in_w));
    }
}

/// planes[ci * k_d + kd] = padded plane od * stride_d + kd of input channels (ng * cin + ci), ng = n * groups + g.
/// Slot zd % k_d of each channel holds padded plane zd (the k_d planes one output plane reads are
/// consecutive, so distinct slots); planes still held from the previous output plane (od - 1 of
/// the same ng) are reused, so a run of consecutive planes pads each input plane once.
static inline void fo_ring_planes(const fo_conv_shape *s, const float *x, float *ring, long *held, long ng, long od,
                                  const float **planes) {
    const int kD = s->k_d;
    const long pf = fo_plane_floats(s), Dp = fo_padded_d(s);
    for (int kd = 0; kd < kD; kd++) {
        const long zd = (long)od * s->stride_d + kd, slot = zd % kD, key = ng * Dp + zd;
        if (held[slot] != key) {
            for (int ci = 0; ci < s->cin; ci++) fo_pad_plane(s, x, ng * s->cin + ci, zd, ring + (ci * kD + slot) * pf);
            held[slot] = key;
        }
        for (int ci = 0; ci < s->cin; ci++) planes[ci * kD + kd] = ring + (ci * kD + slot) * pf;
    }
}
/// Backward-weights: one dy row, zero-padded to whole vectors.
static inline long fo_bw_dy_row_floats(int isa, const fo_conv_shape *s) { return fo_round_up(s->out_w, fo_vl(isa)); }
#endif
