// Run-time dispatch of the native Conv3D kernels: cpuid says which levels this CPU (and OS) runs.
#include <string.h>
#include "kernels_common.h"

void fo_forward_avx512(const fo_conv_shape *, const float *, const float *, const float *, float *, long, long, float *);
void fo_forward_avx2(const fo_conv_shape *, const float *, const float *, const float *, float *, long, long, float *);
void fo_forward_portable(const fo_conv_shape *, const float *, const float *, const float *, float *, long, long, float *);
void fo_backward_weights_avx512(const fo_conv_shape *, const float *, const float *, float *, long, long, float *);
void fo_backward_weights_avx2(const fo_conv_shape *, const float *, const float *, float *, long, long, float *);
void fo_backward_weights_portable(const fo_conv_shape *, const float *, const float *, float *, long, long, float *);

#if defined(__x86_64__)
#include <cpuid.h>
static unsigned long long xgetbv0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

int fo_isa_best(void) {
#if defined(__x86_64__)
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return FO_ISA_PORTABLE;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!(fma && osxsave && avx)) return FO_ISA_PORTABLE;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return FO_ISA_PORTABLE;               // the OS saves xmm and ymm state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return FO_ISA_PORTABLE;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512vl = (b >> 31) & 1;
    if (!avx2) return FO_ISA_PORTABLE;
    if (avx512f && avx512vl && (xcr0 & 0xe0) == 0xe0) return FO_ISA_AVX512;   // and opmask/zmm state
    return FO_ISA_AVX2;
#else
    return FO_ISA_PORTABLE;
#endif
}

int fo_supports(const fo_conv_shape *s) {
    return (s->k_w == 1 || s->k_w == 3) && s->cout >= 1 && s->cout <= 128 && s->cin >= 1 && s->cin <= 64
        && s->pad_d >= 0 && s->pad_h >= 0 && s->pad_w >= 0
        && s->pad_d < s->k_d && s->pad_h < s->k_h && s->pad_w < s->k_w
        && s->stride_d >= 1 && s->stride_h >= 1 && (s->stride_w == 1 || s->stride_w == 2)
        // with width stride 1 a padded row holds the whole input row (it is copied whole)
        && (s->stride_w == 2 || s->out_w + s->k_w - 1 >= s->pad_w + s->in_w);
}

long fo_forward_items(const fo_conv_shape *s) { return (long)s->batch * s->groups * s->out_d; }

long fo_packed_weights_floats(int isa, const fo_conv_shape *s) {
    const int cb = fo_cb(isa, s->cout);
    return (long)s->groups * fo_blocks(isa, s->cout) * s->cin * s->k_d * s->k_h * s->k_w * cb;
}

long fo_forward_scratch_floats(int isa, const fo_conv_shape *s) { return fo_tile_floats(isa) + fo_ring_floats(s); }

void fo_pack_weights(int isa, const fo_conv_shape *s, const float *w, int transposed, float *packed) {
    const int cb = fo_cb(isa, s->cout), nb = fo_blocks(isa, s->cout);
    const int K = s->k_d * s->k_h * s->k_w, T = s->cin * s->k_d * s->k_h;
    long p = 0;
    for (int g = 0; g < s->groups; g++)
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < T; t++)
                for (int kw = 0; kw < s->k_w; kw++)
                    for (int c = 0; c < cb; c++, p++) {
                        const int o = b * cb + c;
                        if (o >= s->cout) { packed[p] = 0; continue; }
                        const int i = t / (s->k_d * s->k_h), tap = (t % (s->k_d * s->k_h)) * s->k_w + kw;
                        // transposed: w is (groups * cin, cout, k...), read with the kernel flipped.
                        packed[p] = transposed ? w[(((long)g * s->cin + i) * s->cout + o) * K + (K - 1 - tap)]
                                               : w[(((long)g * s->cout + o) * s->cin + i) * K + tap];
                    }
}

void fo_forward(int isa, const fo_conv_shape *s, const float *x, const float *packed, const float *bias,
                float *y, long begin, long end, float *scratch) {
#if defined(__x86_64__)
    if (isa == FO_ISA_AVX512) { fo_forward_avx512(s, x, packed, bias, y, begin, end, scratch); return; }
    if (isa == FO_ISA_AVX2) { fo_forward_avx2(s, x, packed, bias, y, begin, end, scratch); return; }
#endif
    fo_forward_portable(s, x, packed, bias, y, begin, end, scratch);
}

long fo_backward_weights_items(int isa, const fo_conv_shape *s) {
    return (long)s->groups * fo_blocks(isa, s->cout) * s->batch * s->out_d;
}

long fo_backward_weights_scratch_floats(int isa, const fo_conv_shape *s) {
    const int cb = fo_cb(isa, s->cout);
    return (long)cb * s->out_h * fo_bw_dy_row_floats(isa, s) + (long)s->cin * s->k_d * s->k_h * cb * s->k_w * fo_vl(isa)
        + fo_ring_floats(s);
}

void fo_backward_weights(int isa, const fo_conv_shape *s, const float *x, const float *dy, float *dw,
                         long begin, long end, float *scratch) {
#if defined(__x86_64__)
    if (isa == FO_ISA_AVX512) { fo_backward_weights_avx512(s, x, dy, dw, begin, end, scratch); return; }
    if (isa == FO_ISA_AVX2) { fo_backward_weights_avx2(s, x, dy, dw, begin, end, scratch); return; }
#endif
    fo_backward_weights_portable(s, x, dy, dw, begin, end, scratch);
}

void fo_bias_gradient(const float *dy, int batch, int channels, long voxels, float *db, int begin, int end) {
    for (int c = begin; c < end; c++) {
        double sum = 0;
        for (int n = 0; n < batch; n++) {
            const float *p = dy + ((long)n * channels + c) * voxels;
            float lanes[16] = {0};   // independent partial sums: vectorised without reassociation
            long i = 0;
            for (; i + 16 <= voxels; i += 16)
                for (int l = 0; l < 16; l++) lanes[l] += p[i + l];
            for (; i < voxels; i++) lanes[0] += p[i];
            for (int l = 0; l < 16; l++) sum += lanes[l];
        }
        db[c] = (float)sum;
    }
}
