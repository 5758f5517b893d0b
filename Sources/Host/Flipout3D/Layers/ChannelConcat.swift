// Channel concatenation (a U-Net's skip connection), forward and backward side by side.

/// What `ChannelConcat.backward` needs: the channel count of each input.
public struct ChannelConcatSaved {
    let channels: (Int, Int)
}

/// [a, b] along the channel axis: a (N, Ca, D, H, W), b (N, Cb, D, H, W) -> (N, Ca + Cb, D, H, W).
public enum ChannelConcat {
    public static func forward(_ a: Tensor, _ b: Tensor) -> (y: Tensor, saved: ChannelConcatSaved) {
        precondition(a.rank == 5 && b.rank == 5 && a.shape[0] == b.shape[0] && a.shape[2...] == b.shape[2...],
                     "ChannelConcat: shapes \(a.shape) and \(b.shape) differ outside the channel axis")
        let (n, ca, cb) = (a.shape[0], a.shape[1], b.shape[1])
        let v = a.shape[2...].reduce(1, *)
        let y = Tensor(uninitializedShape: [n, ca + cb] + a.shape[2...])
        for e in 0..<n {
            (y.data + e * (ca + cb) * v).update(from: a.data + e * ca * v, count: ca * v)
            (y.data + (e * (ca + cb) + ca) * v).update(from: b.data + e * cb * v, count: cb * v)
        }
        return (y, ChannelConcatSaved(channels: (ca, cb)))
    }

    /// dy (N, Ca + Cb, D, H, W) -> (da, db): the two channel ranges of dy.
    public static func backward(_ dy: Tensor, _ saved: ChannelConcatSaved) -> (Tensor, Tensor) {
        let (ca, cb) = saved.channels
        precondition(dy.rank == 5 && dy.shape[1] == ca + cb, "ChannelConcat.backward: dy \(dy.shape), expected \(ca + cb) channels")
        let n = dy.shape[0], v = dy.shape[2...].reduce(1, *)
        let da = Tensor(uninitializedShape: [n, ca] + dy.shape[2...]), db = Tensor(uninitializedShape: [n, cb] + dy.shape[2...])
        for e in 0..<n {
            (da.data + e * ca * v).update(from: dy.data + e * (ca + cb) * v, count: ca * v)
            (db.data + e * cb * v).update(from: dy.data + (e * (ca + cb) + ca) * v, count: cb * v)
        }
        return (da, db)
    }
}
