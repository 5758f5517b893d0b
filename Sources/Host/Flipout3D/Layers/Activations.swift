// Parameter-free layers: ReLU, its forward returning what its backward needs.

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

