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
        for c in 0..<nc { for z in 0..<2 * d { for yy in 0..<2 * h {
            let src = x.data + ((c * d + z / 2) * h + yy / 2) * w
            let dst = y.data + ((c * 2 * d + z) * 2 * h + yy) * 2 * w
            for xx in 0..<2 * w { dst[xx] = src[xx / 2] }
        } } }
        return (y, Upsample2xSaved(inputShape: x.shape))
    }

    /// dy (N, C, 2D, 2H, 2W) -> dx (N, C, D, H, W): dx sums the 8 upsampled copies' gradients.
    public static func backward(_ dy: Tensor, _ saved: Upsample2xSaved) -> Tensor {
        let s = saved.inputShape
        dy.checkShape([s[0], s[1], 2 * s[2], 2 * s[3], 2 * s[4]], "Upsample2x.backward dy")
        let (n, c, d, h, w) = (s[0], s[1], s[2], s[3], s[4])
        let dx = Tensor(shape: [n, c, d, h, w])
        for k in 0..<n * c { for z in 0..<2 * d { for yy in 0..<2 * h {
            let src = dy.data + ((k * 2 * d + z) * 2 * h + yy) * 2 * w
            let dst = dx.data + ((k * d + z / 2) * h + yy / 2) * w
            for xx in 0..<2 * w { dst[xx / 2] += src[xx] }
        } } }
        return dx
    }
}
