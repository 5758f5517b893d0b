// Sample statistics for sampler tests: moments with their standard errors, the Kolmogorov–Smirnov statistic.
import Foundation

public struct SampleMoments {
    public let n: Int
    public let mean: Double
    public let variance: Double
    /// Standard error of the sample mean, sqrt(var / n).
    public let meanStandardError: Double
    /// Standard error of the sample variance, sqrt((m4 - var^2) / n) (large-sample formula).
    public let varianceStandardError: Double

    public init<S: Sequence>(_ values: S) where S.Element: BinaryFloatingPoint {
        let xs = values.map { Double($0) }
        n = xs.count
        let m = xs.reduce(0, +) / Double(n)
        var m2 = 0.0, m4 = 0.0
        for x in xs { let d = (x - m) * (x - m); m2 += d; m4 += d * d }
        m2 /= Double(n); m4 /= Double(n)
        mean = m
        variance = m2 * Double(n) / Double(n - 1)
        meanStandardError = (m2 / Double(n)).squareRoot()
        varianceStandardError = (max(m4 - m2 * m2, 0) / Double(n)).squareRoot()
    }
}

/// sup_x |F_n(x) - F(x)| of the samples against the CDF `cdf`.
public func kolmogorovSmirnov<S: Sequence>(_ values: S, cdf: (Double) -> Double) -> Double where S.Element: BinaryFloatingPoint {
    let xs = values.map { Double($0) }.sorted()
    let n = Double(xs.count)
    var d = 0.0
    for (i, x) in xs.enumerated() {
        let f = cdf(x)
        d = max(d, f - Double(i) / n, Double(i + 1) / n - f)
    }
    return d
}

/// The 1% critical value of the one-sample KS statistic for n samples (asymptotic, 1.63 / sqrt(n)).
public func ksCritical1Percent(_ n: Int) -> Double { 1.63 / Double(n).squareRoot() }

/// Mean and standard error of per-sample values.
public func meanAndStandardError(_ xs: [Double]) -> (mean: Double, se: Double) {
    let m = SampleMoments(xs)
    return (m.mean, m.meanStandardError)
}
