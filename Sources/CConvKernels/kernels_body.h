// The kernels, written once: included by each conv_<level>.c with ISA (an FO_ISA_ level), VL
// (floats per vector) and FN(name) (the level's exported name), under that file's target pragma.
// Vectors are clang/GCC vector extensions, so one source compiles to AVX-512, AVX2 or SSE2;
// `acc += x * w` contracts to FMA where the level has it (clang's default -ffp-contract=on).
#include <string.h>

typedef float V __attribute__((vector_size(VL * 4)));
typedef float VU __attribute__((vector_size(VL * 4), aligned(4)));
// Hot loops index raw pointers: every offset below stays inside the padded rows and tiles sized
// by kernels_common.h (the Swift caller checks tensor shapes before calling).
static inline V vload(const float *p) { return *(const VU *)p; }
static inline void vstore(float *p, V v) { *(VU *)p = v; }

// MARK: forward

/// One tile: CB output channels x NV*VL outputs of one output row, from T zero-padded input rows
/// (one per (ci, kd, kh)), packed weights pw[t][kw][CB]. out: (CB, NV*VL).
static inline __attribute__((always_inline)) void fwd_tile(const int CB, const int NV, const int KW,
        const float *const *rows, int T, int ow0, const float *pw, const float *bias, int nvalid, float *out) {
    V acc[8][4];
    for (int c = 0; c < CB; c++) {
        float b0 = (bias && c < nvalid) ? bias[c] : 0.0f;
        for (int j = 0; j < NV; j++) acc[c][j] = (V){0} + b0;
    }
    for (int t = 0; t < T; t++) {
        const float *r = rows[t] + ow0;
        const float *wt = pw + (long)t * KW * CB;
        for (int k = 0; k < KW; k++) {
            V xv[4];
            for (int j = 0; j < NV; j++) xv[j] = vload(r + k + j * VL);
            for (int c = 0; c < CB; c++) {
                float wv = wt[k * CB + c];
                for (int j = 0; j < NV; j++) acc[c][j] += xv[j] * wv;
            }
        }
    }
    for (int c = 0; c < CB; c++)
        for (int j = 0; j < NV; j++) vstore(out + (c * NV + j) * VL, acc[c][j]);
}

typedef void (*fwd_tile_fn)(const float *const *, int, int, const float *, const float *, int, float *);
#define FWD_TILE(CB, NV, KW) \
    static void fwd_##CB##_##KW(const float *const *rows, int T, int ow0, const float *pw, const float *bias, \
                                int nvalid, float *out) { fwd_tile(CB, NV, KW, rows, T, ow0, pw, bias, nvalid, out); }
FWD_TILE(1, 4, 1) FWD_TILE(1, 4, 3) FWD_TILE(2, 4, 1) FWD_TILE(2, 4, 3)
FWD_TILE(4, 2, 1) FWD_TILE(4, 2, 3) FWD_TILE(8, 2, 1) FWD_TILE(8, 2, 3)

static fwd_tile_fn fwd_pick(int cb, int kw) {
    switch (cb * 10 + kw) {
    case 11: return fwd_1_1; case 13: return fwd_1_3; case 21: return fwd_2_1; case 23: return fwd_2_3;
    case 41: return fwd_4_1; case 43: return fwd_4_3; case 81: return fwd_8_1; default: return fwd_8_3;
    }
}

void FN(fo_forward)(const fo_conv_shape *s, const float *x, const float *packed, const float *bias,
                    float *y, long begin, long end, float *scratch) {
    const int G = s->groups, cin = s->cin, cout = s->cout, KW = s->k_w;
    const int CB = fo_cb(ISA, cout), NV = fo_nv(CB), OWT = NV * VL, nb = fo_blocks(ISA, cout);
    const int T = cin * s->k_d * s->k_h;
    const long Wp = fo_forward_row_floats(ISA, s);
    const long inPlane = (long)s->in_h * s->in_w, inVol = s->in_d * inPlane;
    const long outPlane = (long)s->out_h * s->out_w, outVol = s->out_d * outPlane;
    float *zero = scratch, *rowbuf = scratch + Wp, *tile = rowbuf + (long)T * Wp;   // tile: (CB, OWT)
    memset(zero, 0, sizeof(float) * Wp);
    const float *rows[T];
    fwd_tile_fn kernel = fwd_pick(CB, KW);
    for (long item = begin; item < end; item++) {
        const int od = (int)(item % s->out_d), g = (int)(item / s->out_d % G), n = (int)(item / s->out_d / G);
        const float *xg = x + ((long)n * G + g) * cin * inVol;
        float *yg = y + ((long)n * G + g) * cout * outVol + od * outPlane;
        const float *pg = packed + (long)g * nb * T * KW * CB;
        const float *bg = bias ? bias + g * cout : 0;
        for (int oh = 0; oh < s->out_h; oh++) {
            // Input rows (ci, kd, kh) for this output row, zero-padded in W; all-zero outside.
            int t = 0;
            for (int ci = 0; ci < cin; ci++)
                for (int kd = 0; kd < s->k_d; kd++)
                    for (int kh = 0; kh < s->k_h; kh++, t++) {
                        const int id = od - s->pad_d + kd, ih = oh - s->pad_h + kh;
                        if (id < 0 || id >= s->in_d || ih < 0 || ih >= s->in_h) { rows[t] = zero; continue; }
                        float *r = rowbuf + t * Wp;
                        memset(r, 0, sizeof(float) * s->pad_w);
                        memcpy(r + s->pad_w, xg + ci * inVol + id * inPlane + (long)ih * s->in_w, sizeof(float) * s->in_w);
                        memset(r + s->pad_w + s->in_w, 0, sizeof(float) * (Wp - s->pad_w - s->in_w));
                        rows[t] = r;
                    }
            for (int ow0 = 0; ow0 < s->out_w; ow0 += OWT) {
                const int width = s->out_w - ow0 < OWT ? s->out_w - ow0 : OWT;
                for (int b = 0; b < nb; b++) {
                    const int nvalid = cout - b * CB < CB ? cout - b * CB : CB;
                    kernel(rows, T, ow0, pg + (long)b * T * KW * CB, bg ? bg + b * CB : 0, nvalid, tile);
                    for (int c = 0; c < nvalid; c++)
                        memcpy(yg + (b * CB + c) * outVol + (long)oh * s->out_w + ow0, tile + c * OWT, sizeof(float) * width);
                }
            }
        }
    }
}

// MARK: backward-weights

/// Adds, over one output plane, dy (CB rows per oh) times x shifted by kw, into CB x KW vector
/// accumulators accp[(c * KW + kw) * VL].
static inline __attribute__((always_inline)) void bw_tile(const int CB, const int KW, float *accp,
        const float *xbase, long Wp, const float *dyp, long oWp, int outH) {
    V acc[8][3];
    for (int c = 0; c < CB; c++)
        for (int k = 0; k < KW; k++) acc[c][k] = vload(accp + (c * KW + k) * VL);
    for (int oh = 0; oh < outH; oh++) {
        const float *xr = xbase + oh * Wp, *dr = dyp + oh * oWp;
        for (long ow0 = 0; ow0 < oWp; ow0 += VL) {
            V xv[3];
            for (int k = 0; k < KW; k++) xv[k] = vload(xr + ow0 + k);
            for (int c = 0; c < CB; c++) {
                V d = vload(dr + c * outH * oWp + ow0);
                for (int k = 0; k < KW; k++) acc[c][k] += d * xv[k];
            }
        }
    }
    for (int c = 0; c < CB; c++)
        for (int k = 0; k < KW; k++) vstore(accp + (c * KW + k) * VL, acc[c][k]);
}

typedef void (*bw_tile_fn)(float *, const float *, long, const float *, long, int);
#define BW_TILE(CB, KW) \
    static void bw_##CB##_##KW(float *accp, const float *xbase, long Wp, const float *dyp, long oWp, int outH) { \
        bw_tile(CB, KW, accp, xbase, Wp, dyp, oWp, outH); }
BW_TILE(1, 1) BW_TILE(1, 3) BW_TILE(2, 1) BW_TILE(2, 3) BW_TILE(4, 1) BW_TILE(4, 3) BW_TILE(8, 1) BW_TILE(8, 3)

static bw_tile_fn bw_pick(int cb, int kw) {
    switch (cb * 10 + kw) {
    case 11: return bw_1_1; case 13: return bw_1_3; case 21: return bw_2_1; case 23: return bw_2_3;
    case 41: return bw_4_1; case 43: return bw_4_3; case 81: return bw_8_1; default: return bw_8_3;
    }
}

void FN(fo_backward_weights)(const fo_conv_shape *s, const float *x, const float *dy, float *dw,
                             long begin, long end, float *scratch) {
    const int G = s->groups, cin = s->cin, cout = s->cout, KW = s->k_w;
    const int CB = fo_cb(ISA, cout), nb = fo_blocks(ISA, cout);
    const int Dp = s->out_d + s->k_d - 1, Hp = s->out_h + s->k_h - 1;
    const long Wp = fo_bw_x_row_floats(ISA, s), oWp = fo_bw_dy_row_floats(ISA, s);
    const long inPlane = (long)s->in_h * s->in_w, inVol = s->in_d * inPlane;
    const long outPlane = (long)s->out_h * s->out_w, outVol = s->out_d * outPlane;
    const int K = s->k_d * s->k_h * s->k_w;
    float *xp = scratch;                                   // (Dp, Hp, Wp) padded x of one channel
    float *dyp = xp + (long)Dp * Hp * Wp;                  // (CB, out_h, oWp) one dy plane
    float *acc = dyp + (long)CB * s->out_h * oWp;          // (k_d, k_h, CB, KW, VL)
    const long accFloats = (long)s->k_d * s->k_h * CB * KW * VL;
    bw_tile_fn kernel = bw_pick(CB, KW);
    for (long u = begin; u < end; u++) {
        const int ci = (int)(u % cin), b = (int)(u / cin % nb), g = (int)(u / cin / nb);
        const int nvalid = cout - b * CB < CB ? cout - b * CB : CB;
        memset(acc, 0, sizeof(float) * accFloats);
        for (int n = 0; n < s->batch; n++) {
            const float *xc = x + (((long)n * G + g) * cin + ci) * inVol;
            for (int zd = 0; zd < Dp; zd++)
                for (int zh = 0; zh < Hp; zh++) {
                    float *r = xp + ((long)zd * Hp + zh) * Wp;
                    const int id = zd - s->pad_d, ih = zh - s->pad_h;
                    if (id < 0 || id >= s->in_d || ih < 0 || ih >= s->in_h) { memset(r, 0, sizeof(float) * Wp); continue; }
                    memset(r, 0, sizeof(float) * s->pad_w);
                    memcpy(r + s->pad_w, xc + id * inPlane + (long)ih * s->in_w, sizeof(float) * s->in_w);
                    memset(r + s->pad_w + s->in_w, 0, sizeof(float) * (Wp - s->pad_w - s->in_w));
                }
            const float *dyb = dy + (((long)n * G + g) * cout + b * CB) * outVol;
            for (int od = 0; od < s->out_d; od++) {
                for (int c = 0; c < CB; c++)
                    for (int oh = 0; oh < s->out_h; oh++) {
                        float *r = dyp + ((long)c * s->out_h + oh) * oWp;
                        if (c >= nvalid) { memset(r, 0, sizeof(float) * oWp); continue; }
                        memcpy(r, dyb + c * outVol + od * outPlane + (long)oh * s->out_w, sizeof(float) * s->out_w);
                        memset(r + s->out_w, 0, sizeof(float) * (oWp - s->out_w));
                    }
                for (int kd = 0; kd < s->k_d; kd++)
                    for (int kh = 0; kh < s->k_h; kh++)
                        kernel(acc + (long)(kd * s->k_h + kh) * CB * KW * VL, xp + ((long)(od + kd) * Hp + kh) * Wp, Wp,
                               dyp, oWp, s->out_h);
            }
        }
        for (int c = 0; c < nvalid; c++)
            for (int kd = 0; kd < s->k_d; kd++)
                for (int kh = 0; kh < s->k_h; kh++)
                    for (int k = 0; k < KW; k++) {
                        const float *a = acc + ((((long)kd * s->k_h + kh) * CB + c) * KW + k) * VL;
                        float sum = 0;
                        for (int l = 0; l < VL; l++) sum += a[l];
                        dw[(((long)g * cout + b * CB + c) * cin + ci) * K + (kd * s->k_h + kh) * s->k_w + k] = sum;
                    }
    }
}
