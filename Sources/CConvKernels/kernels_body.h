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

/// Where tap kw of output column 0 lies in a padded row: kw with width stride 1; with stride 2
/// (rows of even then odd columns, kernels_common.h) kw / 2 among the even ones, or half + kw / 2
/// among the odd ones.
#define TAP(SW, k, half) ((SW) == 1 ? (long)(k) : ((k) & 1) ? (half) + ((k) >> 1) : (long)((k) >> 1))

/// One tile: CB output channels x NV*VL outputs of one output row, from T zero-padded input rows
/// (one per (ci, kd, kh)), packed weights pw[t][kw][CB]. out: CB rows of NV*VL floats, ldc apart
/// (y itself for a whole tile, else the scratch tile). SW: the width stride (half: see TAP).
static inline __attribute__((always_inline)) void fwd_tile(const int CB, const int NV, const int KW, const int SW,
        const float *const *rows, int T, int ow0, long half, const float *pw, const float *bias, int nvalid, float *out, long ldc) {
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
            for (int j = 0; j < NV; j++) xv[j] = vload(r + TAP(SW, k, half) + j * VL);
            for (int c = 0; c < CB; c++) {
                float wv = wt[k * CB + c];
                for (int j = 0; j < NV; j++) acc[c][j] += xv[j] * wv;
            }
        }
    }
    for (int c = 0; c < CB; c++)
        for (int j = 0; j < NV; j++) vstore(out + c * ldc + j * VL, acc[c][j]);
}

typedef void (*fwd_tile_fn)(const float *const *, int, int, long, const float *, const float *, int, float *, long);
#define FWD_TILE(CB, NV, KW, SW) \
    static void fwd_##CB##_##KW##_##SW(const float *const *rows, int T, int ow0, long half, const float *pw, const float *bias, \
                                       int nvalid, float *out, long ldc) { \
        fwd_tile(CB, NV, KW, SW, rows, T, ow0, half, pw, bias, nvalid, out, ldc); }
FWD_TILE(1, 4, 1, 1) FWD_TILE(1, 4, 3, 1) FWD_TILE(2, 4, 1, 1) FWD_TILE(2, 4, 3, 1)
FWD_TILE(4, 2, 1, 1) FWD_TILE(4, 2, 3, 1) FWD_TILE(8, 2, 1, 1) FWD_TILE(8, 2, 3, 1)
FWD_TILE(1, 4, 3, 2) FWD_TILE(2, 4, 3, 2) FWD_TILE(4, 2, 3, 2) FWD_TILE(8, 2, 3, 2)

/// The tile for cb channels, kernel width kw and width stride sw (with k_w 1 both strides read
/// column ow: the stride-1 tile).
static fwd_tile_fn fwd_pick(int cb, int kw, int sw) {
    if (sw == 2 && kw == 3)
        switch (cb) { case 1: return fwd_1_3_2; case 2: return fwd_2_3_2; case 4: return fwd_4_3_2; default: return fwd_8_3_2; }
    switch (cb * 10 + kw) {
    case 11: return fwd_1_1_1; case 13: return fwd_1_3_1; case 21: return fwd_2_1_1; case 23: return fwd_2_3_1;
    case 41: return fwd_4_1_1; case 43: return fwd_4_3_1; case 81: return fwd_8_1_1; default: return fwd_8_3_1;
    }
}

/// For one or two output channels (an 8->1 layer, or a 1->8 layer's backward-data): R output rows
/// at once, so each loaded input vector feeds up to 3 rows (kh) and 2 * R * CB accumulators hide
/// the FMA latency. planes[ci * kD + kd]: the padded input planes of output plane od (fo_ring_planes),
/// read from row offset rowOff (output row oh); pw as for fwd_tile; out: CB x R rows of 2 * VL
/// floats, channels ldc apart and rows ldr apart.
#define FWD_ROWS (ISA == FO_ISA_AVX512 ? 4 : 2)
static inline __attribute__((always_inline)) void fwd_rows_tile(const int CB, const int KW,
        const float *const *planes, int cin, int kD, long rowOff, long Wr, int ow0,
        const float *pw, const float *bias, int nvalid, float *out, long ldc, long ldr) {
    enum { R = FWD_ROWS, NV = 2, KH = 3 };
    V acc[2][4][2];
    for (int c = 0; c < CB; c++) {
        float b0 = (bias && c < nvalid) ? bias[c] : 0.0f;
        for (int r = 0; r < R; r++)
            for (int v = 0; v < NV; v++) acc[c][r][v] = (V){0} + b0;
    }
    for (int ci = 0; ci < cin; ci++)
        for (int kd = 0; kd < kD; kd++) {
            const float *base = planes[ci * kD + kd] + rowOff + ow0;
            const float *wt = pw + (long)(ci * kD + kd) * KH * KW * CB;
            // The (ci, kd) slice's weights as broadcast vectors, when they fit in the registers
            // beside the accumulators: each FMA then loads nothing but its share of x (else
            // every FMA broadcasts its weight from memory, and loads, not FMAs, bound the tile).
            const int HOIST = CB * KH * 3 + CB * R * NV <= (ISA == FO_ISA_AVX512 ? 30 : 14);
            V wv[3][3][2];
            if (HOIST)
                for (int kh = 0; kh < KH; kh++)
                    for (int k = 0; k < KW; k++)
                        for (int c = 0; c < CB; c++) wv[kh][k][c] = (V){0} + wt[(kh * KW + k) * CB + c];
            for (int j = 0; j < R + KH - 1; j++) {
                const float *row = base + j * Wr;
                for (int k = 0; k < KW; k++)
                    for (int v = 0; v < NV; v++) {
                        const V xv = vload(row + k + v * VL);
                        for (int r = 0; r < R; r++) {
                            const int kh = j - r;
                            if (kh < 0 || kh >= KH) continue;
                            for (int c = 0; c < CB; c++)
                                acc[c][r][v] += xv * (HOIST ? wv[kh][k][c] : (V){0} + wt[(kh * KW + k) * CB + c]);
                        }
                    }
            }
        }
    for (int c = 0; c < CB; c++)
        for (int r = 0; r < R; r++)
            for (int v = 0; v < NV; v++) vstore(out + c * ldc + r * ldr + v * VL, acc[c][r][v]);
}

typedef void (*fwd_rows_fn)(const float *const *, int, int, long, long, int, const float *, const float *, int, float *, long, long);
#define FWD_ROWS_TILE(CB, KW) \
    static void fwd_rows_##CB##_##KW(const float *const *planes, int cin, int kD, long rowOff, long Wr, int ow0, \
                                     const float *pw, const float *bias, int nvalid, float *out, long ldc, long ldr) { \
        fwd_rows_tile(CB, KW, planes, cin, kD, rowOff, Wr, ow0, pw, bias, nvalid, out, ldc, ldr); }
FWD_ROWS_TILE(1, 1) FWD_ROWS_TILE(1, 3) FWD_ROWS_TILE(2, 1) FWD_ROWS_TILE(2, 3)

static fwd_rows_fn fwd_rows_pick(int cb, int kh, int kw) {
    if (kh != 3 || cb > 2) return 0;
    return cb == 1 ? (kw == 1 ? fwd_rows_1_1 : fwd_rows_1_3) : (kw == 1 ? fwd_rows_2_1 : fwd_rows_2_3);
}

void FN(fo_forward)(const fo_conv_shape *s, const float *x, const float *packed, const float *bias,
                    float *y, long begin, long end, float *scratch) {
    const int G = s->groups, cin = s->cin, cout = s->cout, KW = s->k_w;
    const int CB = fo_cb(ISA, cout), NV = fo_nv(CB), OWT = NV * VL, nb = fo_blocks(ISA, cout);
    const int T = cin * s->k_d * s->k_h;
    const long Wr = fo_padded_w(s), half = fo_half_w(s), SH = s->stride_h;
    const long outPlane = (long)s->out_h * s->out_w, outVol = s->out_d * outPlane;
    float *tile = scratch;   // (CB, OWT), or (CB, R, 2 * VL) for the row-blocked tile
    float *ring = scratch + fo_tile_floats(ISA);
    long held[s->k_d];
    const float *planes[cin * s->k_d];
    fo_ring_init(s, ring, held);
    const float *rows[T];
    fwd_tile_fn kernel = fwd_pick(CB, KW, s->stride_w);
    // The row-blocked tile shares input rows between consecutive output rows: stride 1 only.
    const int unitStride = s->stride_h == 1 && s->stride_w == 1;
    fwd_rows_fn rowsKernel = nb == 1 && unitStride ? fwd_rows_pick(CB, s->k_h, KW) : 0;
    const int R = FWD_ROWS, RW = 2 * VL;
    for (long item = begin; item < end; item++) {
        const int od = (int)(item % s->out_d), g = (int)(item / s->out_d % G), n = (int)(item / s->out_d / G);
        fo_ring_planes(s, x, ring, held, (long)n * G + g, od, planes);
        float *yg = y + ((long)n * G + g) * cout * outVol + od * outPlane;
        const float *pg = packed + (long)g * nb * T * KW * CB;
        const float *bg = bias ? bias + g * cout : 0;
        int oh = 0;
        if (rowsKernel)
            for (; oh + R <= s->out_h; oh += R)
                for (int ow0 = 0; ow0 < s->out_w; ow0 += RW) {
                    const int width = s->out_w - ow0 < RW ? s->out_w - ow0 : RW;
                    float *yt = yg + (long)oh * s->out_w + ow0;
                    if (width == RW) {   // a whole tile: straight into y
                        rowsKernel(planes, cin, s->k_d, oh * Wr, Wr, ow0, pg, bg, cout, yt, outVol, s->out_w);
                        continue;
                    }
                    rowsKernel(planes, cin, s->k_d, oh * Wr, Wr, ow0, pg, bg, cout, tile, R * RW, RW);
                    for (int c = 0; c < cout; c++)
                        for (int r = 0; r < R; r++)
                            memcpy(yt + c * outVol + (long)r * s->out_w, tile + (c * R + r) * RW, sizeof(float) * width);
                }
        for (; oh < s->out_h; oh++) {
            // The padded input rows (ci, kd, kh) this output row reads. A tile past the row's end
            // reads into the next row (or the plane's zero tail): those columns are not stored.
            int t = 0;
            for (int ci = 0; ci < cin; ci++)
                for (int kd = 0; kd < s->k_d; kd++)
                    for (int kh = 0; kh < s->k_h; kh++, t++)
                        rows[t] = planes[ci * s->k_d + kd] + (oh * SH + kh) * Wr;
            for (int ow0 = 0; ow0 < s->out_w; ow0 += OWT) {
                const int width = s->out_w - ow0 < OWT ? s->out_w - ow0 : OWT;
                for (int b = 0; b < nb; b++) {
                    const int nvalid = cout - b * CB < CB ? cout - b * CB : CB;
                    float *yt = yg + (b * CB) * outVol + (long)oh * s->out_w + ow0;
                    if (width == OWT && nvalid == CB) {   // a whole tile: straight into y
                        kernel(rows, T, ow0, half, pg + (long)b * T * KW * CB, bg ? bg + b * CB : 0, nvalid, yt, outVol);
                        continue;
                    }
                    kernel(rows, T, ow0, half, pg + (long)b * T * KW * CB, bg ? bg + b * CB : 0, nvalid, tile, OWT);
                    for (int c = 0; c < nvalid; c++)
                        memcpy(yt + c * outVol, tile + c * OWT, sizeof(float) * width);
                }
            }
        }
    }
}

// MARK: backward-weights

/// Adds, over one output plane, dy (CB channels ldc apart, rows of oWp floats, whole vectors)
/// times x shifted by (kh, kw) for KH kernel rows starting at xbase, into CB x KH x KW vector
/// accumulators accp[((c * KH + kh) * KW + kw) * VL]. Output row oh reads padded rows
/// oh * SH + kh (SH: the height stride); SW, half: the width stride (TAP).
static inline __attribute__((always_inline)) void bw_tile(const int CB, const int KH, const int KW, const int SW, float *accp,
        const float *xbase, long Wr, long SH, long half, const float *dyp, long oWp, long ldc, int outH) {
    V acc[8][3][3];
    for (int c = 0; c < CB; c++)
        for (int h = 0; h < KH; h++)
            for (int k = 0; k < KW; k++) acc[c][h][k] = vload(accp + ((c * KH + h) * KW + k) * VL);
    for (int oh = 0; oh < outH; oh++) {
        const float *dr = dyp + oh * oWp;
        for (long ow0 = 0; ow0 < oWp; ow0 += VL) {
            V d[8];
            for (int c = 0; c < CB; c++) d[c] = vload(dr + c * ldc + ow0);
            for (int h = 0; h < KH; h++) {
                const float *xr = xbase + (oh * SH + h) * Wr + ow0;
                for (int k = 0; k < KW; k++) {
                    const V xv = vload(xr + TAP(SW, k, half));
                    for (int c = 0; c < CB; c++) acc[c][h][k] += d[c] * xv;
                }
            }
        }
    }
    for (int c = 0; c < CB; c++)
        for (int h = 0; h < KH; h++)
            for (int k = 0; k < KW; k++) vstore(accp + ((c * KH + h) * KW + k) * VL, acc[c][h][k]);
}

typedef void (*bw_tile_fn)(float *, const float *, long, long, long, const float *, long, long, int);
#define BW_TILE(CB, KH, KW, SW) \
    static void bw_##CB##_##KH##_##KW##_##SW(float *accp, const float *xbase, long Wr, long SH, long half, const float *dyp, \
                                             long oWp, long ldc, int outH) { \
        bw_tile(CB, KH, KW, SW, accp, xbase, Wr, SH, half, dyp, oWp, ldc, outH); }
BW_TILE(1, 1, 1, 1) BW_TILE(1, 1, 3, 1) BW_TILE(2, 1, 1, 1) BW_TILE(2, 1, 3, 1) BW_TILE(4, 1, 1, 1) BW_TILE(4, 1, 3, 1)
BW_TILE(8, 1, 1, 1) BW_TILE(8, 1, 3, 1)
BW_TILE(1, 3, 1, 1) BW_TILE(1, 3, 3, 1) BW_TILE(2, 3, 1, 1) BW_TILE(2, 3, 3, 1) BW_TILE(4, 3, 1, 1) BW_TILE(4, 3, 3, 1)
BW_TILE(1, 1, 3, 2) BW_TILE(2, 1, 3, 2) BW_TILE(4, 1, 3, 2) BW_TILE(8, 1, 3, 2)
BW_TILE(1, 3, 3, 2) BW_TILE(2, 3, 3, 2) BW_TILE(4, 3, 3, 2)

/// Kernel rows per backward-weights tile: all 3 when the accumulators fit in the registers
/// (32 with AVX-512, 16 otherwise, leaving room for dy and x), else one at a time.
static int bw_rows(int cb, int kh, int kw) {
    const int budget = ISA == FO_ISA_AVX512 ? 24 : 12;
    return kh == 3 && cb <= 4 && cb * 3 * kw <= budget ? 3 : 1;
}

/// The tile for cb channels, kh kernel rows at once, kernel width kw and width stride sw (with
/// k_w 1 both strides read column ow: the stride-1 tile).
static bw_tile_fn bw_pick(int cb, int kh, int kw, int sw) {
    if (sw == 2 && kw == 3)
        switch (cb * 10 + kh) {
        case 11: return bw_1_1_3_2; case 21: return bw_2_1_3_2; case 41: return bw_4_1_3_2; case 81: return bw_8_1_3_2;
        case 13: return bw_1_3_3_2; case 23: return bw_2_3_3_2; case 43: return bw_4_3_3_2; default: return bw_8_1_3_2;
        }
    switch (cb * 100 + kh * 10 + kw) {
    case 111: return bw_1_1_1_1; case 113: return bw_1_1_3_1; case 211: return bw_2_1_1_1; case 213: return bw_2_1_3_1;
    case 411: return bw_4_1_1_1; case 413: return bw_4_1_3_1; case 811: return bw_8_1_1_1; case 813: return bw_8_1_3_1;
    case 131: return bw_1_3_1_1; case 133: return bw_1_3_3_1; case 231: return bw_2_3_1_1; case 233: return bw_2_3_3_1;
    case 431: return bw_4_3_1_1; case 433: return bw_4_3_3_1; default: return bw_8_1_3_1;
    }
}

void FN(fo_backward_weights)(const fo_conv_shape *s, const float *x, const float *dy, float *dw,
                             long begin, long end, float *scratch) {
    const int G = s->groups, cin = s->cin, cout = s->cout, KW = s->k_w, kD = s->k_d;
    const int CB = fo_cb(ISA, cout), nb = fo_blocks(ISA, cout), KH = bw_rows(CB, s->k_h, KW);
    const long Wr = fo_padded_w(s), half = fo_half_w(s);
    const long oWp = fo_bw_dy_row_floats(ISA, s);
    const long outPlane = (long)s->out_h * s->out_w, outVol = s->out_d * outPlane;
    const int K = s->k_d * s->k_h * s->k_w;
    const long accFloats = (long)s->k_d * s->k_h * CB * KW * VL;   // per ci: (k_d, k_h, CB, KW, VL) by tiles of KH rows
    float *dyp = scratch;                                          // (CB, out_h, oWp) one dy plane, zero tails
    float *acc = dyp + (long)CB * s->out_h * oWp;                  // (cin) of the above
    float *ring = acc + cin * accFloats;
    long held[kD];
    const float *planes[cin * kD];
    fo_ring_init(s, ring, held);
    memset(dw, 0, sizeof(float) * (long)G * cout * cin * K);
    bw_tile_fn kernel = bw_pick(CB, KH, KW, s->stride_w);
    // Adds the accumulators of block (g, b) into dw, lanes summed; acc holds tiles of KH kernel
    // rows: (ci)(kd, kh0, c, h, kw) with kh = kh0 + h.
    #define BW_FLUSH(g, b) do { \
        const int nvalid_ = cout - (b) * CB < CB ? cout - (b) * CB : CB; \
        for (int ci = 0; ci < cin; ci++) \
            for (int c = 0; c < nvalid_; c++) \
                for (int kd = 0; kd < kD; kd++) \
                    for (int kh = 0; kh < s->k_h; kh++) \
                        for (int k = 0; k < KW; k++) { \
                            const int kh0 = kh / KH * KH, h = kh - kh0; \
                            const float *a = acc + ci * accFloats + (long)(kd * s->k_h + kh0) * CB * KW * VL \
                                + ((c * KH + h) * KW + k) * VL; \
                            float sum = 0; \
                            for (int l = 0; l < VL; l++) sum += a[l]; \
                            dw[(((long)(g) * cout + (b) * CB + c) * cin + ci) * K + (kd * s->k_h + kh) * s->k_w + k] += sum; \
                        } \
    } while (0)
    long block = -1;
    for (long u = begin; u < end; u++) {
        const int od = (int)(u % s->out_d), n = (int)(u / s->out_d % s->batch);
        const long gb = u / s->out_d / s->batch;   // g * nb + b
        const int b = (int)(gb % nb), g = (int)(gb / nb);
        if (gb != block) {
            if (block >= 0) BW_FLUSH((int)(block / nb), (int)(block % nb));
            memset(acc, 0, sizeof(float) * cin * accFloats);
            block = gb;
        }
        const int nvalid = cout - b * CB < CB ? cout - b * CB : CB;
        // This output plane of dy for the block's channels, read once for every input channel:
        // in place when its rows are whole vectors and the block has all CB channels, else
        // copied with zero tails (and zero rows for the missing channels).
        const float *dyb = dy + (((long)n * G + g) * cout + b * CB) * outVol + od * outPlane;
        const float *dplane = dyb;
        long ldc = outVol;
        if (oWp != s->out_w || nvalid != CB) {
            for (int c = 0; c < CB; c++)
                for (int oh = 0; oh < s->out_h; oh++) {
                    float *r = dyp + ((long)c * s->out_h + oh) * oWp;
                    if (c >= nvalid) { memset(r, 0, sizeof(float) * oWp); continue; }
                    memcpy(r, dyb + c * outVol + (long)oh * s->out_w, sizeof(float) * s->out_w);
                    memset(r + s->out_w, 0, sizeof(float) * (oWp - s->out_w));
                }
            dplane = dyp;
            ldc = (long)s->out_h * oWp;
        }
        fo_ring_planes(s, x, ring, held, (long)n * G + g, od, planes);
        for (int ci = 0; ci < cin; ci++)
            for (int kd = 0; kd < kD; kd++)
                for (int kh = 0; kh < s->k_h; kh += KH)
                    kernel(acc + ci * accFloats + (long)(kd * s->k_h + kh) * CB * KW * VL, planes[ci * kD + kd] + kh * Wr, Wr,
                           s->stride_h, half, dplane, oWp, ldc, s->out_h);
    }
    if (block >= 0) BW_FLUSH((int)(block / nb), (int)(block % nb));
    #undef BW_FLUSH
}
