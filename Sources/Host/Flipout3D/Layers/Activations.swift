// Parameter-free layers: ReLU and nearest-neighbour 2x upsampling, each forward returning what its backward needs.

/// What ReLU's backward needs: where x was positive.
public struct ReLUSaved {
    /// 1 where x > 0, else 0; x's shape.
    let mask: Tensor
}

/// y = max(x, 0); backward passes dy where x > 0.
public enum ReLU {
    public static func forward(_ x: Tensor) -> (y: Tensor, saved: ReLUSaved) {   // any shape
        // Every element written (branch-free, vectorisable): y = v if v > 0 else +0 (also for NaN), m = 1 or 0.
        let y = Tensor(uninitializedShape: x.shape), m = Tensor(uninitializedShape: x.shape)
        let xs = x.data, ys = y.data, ms = m.data
        // Memory-bound: split over the kernels' threads (a 96^3 activation is far past the caches).
        Parallel.ranges(x.count) { begin, end in
            for i in begin..<end { let v = xs[i]; let on = v > 0; ys[i] = on ? v : 0; ms[i] = on ? 1 : 0 }
        }
        withExtendedLifetime((x, y, m)) {}
        return (y, ReLUSaved(mask: m))
    }

    public static func backward(_ dy: Tensor, _ saved: ReLUSaved) -> Tensor {
        let m = saved.mask
        dy.checkShape(m.shape, "ReLU.backward dy")
        let dx = Tensor(uninitializedShape: dy.shape)
        let gs = dy.data, ms = m.data, ds = dx.data
        Parallel.ranges(dy.count) { begin, end in
            for i in begin..<end { ds[i] = gs[i] * ms[i] }
        }
        withExtendedLifetime((dy, m, dx)) {}
        return dx
    }
}

/// What upsampling's backward needs: the input's shape.
public struct Upsample2xSaved {
    /// (N, C, D, H, W)
    let inputShape: [Int]
}

/// Nearest-neighbour upsampling by 2 on every spatial axis: (N, C, D, H, W) -> (N, C, 2D, 2H, 2W).
public enum Upsample2x {
    public static func forward(_ x: Tensor) -> (y: Tensor, saved: Upsample2xSaved) {
        precondition(x.rank == 5, "Upsample2x: input shape \(x.shape), expected (N, C, D, H, W)")
        let (nc, d, h, w) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3], x.shape[4])
        let y = Tensor(uninitializedShape: [x.shape[0], x.shape[1], 2 * d, 2 * h, 2 * w])
        x.withUnsafeValues { xv in y.withUnsafeMutableValues { yv in
            let (xs, ys) = (xv.baseAddress!, yv.baseAddress!)
            // One (example, channel) plane per work item: each output row is written by one thread.
            Parallel.items(nc, elementsPerItem: 8 * d * h * w) { begin, end in
                for c in begin..<end { for z in 0..<2 * d { for yy in 0..<2 * h {
                    let src = xs + ((c * d + z / 2) * h + yy / 2) * w
                    let dst = ys + ((c * 2 * d + z) * 2 * h + yy) * 2 * w
                    for xx in 0..<w { let v = src[xx]; dst[2 * xx] = v; dst[2 * xx + 1] = v }
                } } }
            }
        } }
        return (y, Upsample2xSaved(inputShape: x.shape))
    }

    /// dy (N, C, 2D, 2H, 2W) -> dx (N, C, D, H, W): dx sums the 8 upsampled copies' gradients.
    public static func backward(_ dy: Tensor, _ saved: Upsample2xSaved) -> Tensor {
        let s = saved.inputShape
        dy.checkShape([s[0], s[1], 2 * s[2], 2 * s[3], 2 * s[4]], "Upsample2x.backward dy")
        let (n, c, d, h, w) = (s[0], s[1], s[2], s[3], s[4])
        let dx = Tensor(uninitializedShape: [n, c, d, h, w])
        dy.withUnsafeValues { gv in dx.withUnsafeMutableValues { dv in
            let (gs, ds) = (gv.baseAddress!, dv.baseAddress!)
            // Each dx element sums its 8 copies in a fixed order (z, then y, then x), one plane per work item.
            Parallel.items(n * c, elementsPerItem: 8 * d * h * w) { begin, end in
                for k in begin..<end { for z in 0..<d { for yy in 0..<h {
                    let r00 = gs + ((k * 2 * d + 2 * z) * 2 * h + 2 * yy) * 2 * w
                    let r01 = r00 + 2 * w, r10 = r00 + 4 * h * w, r11 = r10 + 2 * w
                    let dst = ds + ((k * d + z) * h + yy) * w
                    for xx in 0..<w {
                        let a = 2 * xx, b = 2 * xx + 1
                        var s = 0 + r00[a]   // from 0, as an accumulation (a -0 sums to +0)
                        s += r00[b]
                        s += r01[a]; s += r01[b]; s += r10[a]; s += r10[b]; s += r11[a]; s += r11[b]
                        dst[xx] = s
                    }
                } } }
            }
        } }
        return dx
    }
}
