// Native direct Conv3D kernels for narrow layers (few channels per group), plain NCDHW float32,
// any depth and height stride, width stride 1 or 2. One binary holds three instruction-set levels (AVX-512, AVX2+FMA, baseline x86-64);
// the caller picks one per call (fo_isa_best() says what this CPU runs).
//
// Threading: every kernel computes a range [begin, end) of independent work items and writes
// only its own outputs, so callers split the range over threads. Scratch is per call (per thread).
// Outputs are OVERWRITTEN. Shapes are checked by the caller (Swift); these functions trust them.
#ifndef FLIPOUT_CONV_KERNELS_H
#define FLIPOUT_CONV_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// One 3D convolution with `groups` groups of `cin` -> `cout` channels (per group).
/// x (batch, groups * cin, in_d, in_h, in_w); y (batch, groups * cout, out_d, out_h, out_w);
/// w (groups * cout, cin, k_d, k_h, k_w); pad_* are the zeros before each axis; stride_* the
/// step between output voxels, in input voxels (y[o] reads x[o * stride - pad + k]).
typedef struct fo_conv_shape {
    int batch, groups, cin, cout;
    int in_d, in_h, in_w;
    int out_d, out_h, out_w;
    int k_d, k_h, k_w;
    int pad_d, pad_h, pad_w;
    int stride_d, stride_h, stride_w;
} fo_conv_shape;

/// Instruction-set levels, lowest first.
enum { FO_ISA_PORTABLE = 0, FO_ISA_AVX2 = 1, FO_ISA_AVX512 = 2 };

/// The highest level this CPU runs (cpuid via __builtin_cpu_supports).
int fo_isa_best(void);
/// Whether the kernels handle this shape (k_w 1 or 3, 1..128 output and 1..64 input channels per
/// group, width stride 1 or 2, padding below the kernel).
int fo_supports(const fo_conv_shape *s);

/// Every kernel reads x zero-padded, (batch, groups, cin, (out_d - 1) * stride_d + k_d,
/// (out_h - 1) * stride_h + k_h, padded row), but pads only the planes it needs, into a ring in
/// its scratch: x itself is read in place, once per call and range. With width stride 2 a padded
/// row holds its even columns, then its odd ones, so every tap reads whole vectors.

/// Forward: y = conv(x, w) + bias. Items are (n, g, od), count fo_forward_items.
long fo_forward_items(const fo_conv_shape *s);
/// Floats of packed weights (fo_pack_weights) and of one call's scratch.
long fo_packed_weights_floats(int isa, const fo_conv_shape *s);
long fo_forward_scratch_floats(int isa, const fo_conv_shape *s);
/// Packs w (groups * cout, cin, k...) for fo_forward. transposed != 0: w is instead the weights of
/// the convolution this one is the backward-data of, (groups * cin, cout, k...), read flipped.
void fo_pack_weights(int isa, const fo_conv_shape *s, const float *w, int transposed, float *packed);
/// bias (groups * cout) or NULL.
void fo_forward(int isa, const fo_conv_shape *s, const float *x, const float *packed, const float *bias,
                float *y, long begin, long end, float *scratch);

/// Backward-weights: dw (groups * cout, cin, k...) = sum over batch and voxels of dy * shifted x.
/// Items are (g, output-channel block, n, od), count fo_backward_weights_items: each reads its
/// dy plane once for every input channel. A range's call OVERWRITES dw with the sums over its
/// items only (zeros elsewhere): the caller gives each range its own dw and adds them up, in a
/// fixed order, so the result does not depend on the thread count.
long fo_backward_weights_items(int isa, const fo_conv_shape *s);
long fo_backward_weights_scratch_floats(int isa, const fo_conv_shape *s);
void fo_backward_weights(int isa, const fo_conv_shape *s, const float *x, const float *dy, float *dw,
                         long begin, long end, float *scratch);

/// db[c] = sum over n and voxels of dy (batch, channels, voxels), for c in [begin, end).
void fo_bias_gradient(const float *dy, int batch, int channels, long voxels, float *db, int begin, int end);

#ifdef __cplusplus
}
#endif
#endif
