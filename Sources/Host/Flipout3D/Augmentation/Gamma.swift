// Gamma (batchgeneratorsv2 GammaTransform, retain_stats): one channel rescaled to [0, 1], raised to gamma, rescaled back, its mean and sd restored; optionally on the inverted image.
import Foundation

public enum Gamma {
    /// x ← ((x − min) / (range + 1e-7))^gamma · range + min, then shifted and scaled back to the
    /// channel's former mean and sd. `inverted`: the same on −x, negated back (so dark regions are
    /// stretched where plain gamma stretches bright ones).
    public static func apply(_ x: UnsafeMutablePointer<Float>, count: Int, gamma: Double, inverted: Bool) {
        guard count > 0 else { return }
        let sign: Double = inverted ? -1 : 1
        var v = (0..<count).map { sign * Double(x[$0]) }
        func stats(_ a: [Double]) -> (Double, Double) {
            let m = a.reduce(0, +) / Double(a.count)
            return (m, (a.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(a.count)).squareRoot())
        }
        let (mean, sd) = stats(v)
        let lo = v.min()!, range = v.max()! - lo
        for i in 0..<count { v[i] = pow(max((v[i] - lo) / (range + 1e-7), 0), gamma) * range + lo }
        let (m2, s2) = stats(v)
        for i in 0..<count { x[i] = Float(sign * ((v[i] - m2) / (s2 + 1e-7) * sd + mean)) }
    }
}
