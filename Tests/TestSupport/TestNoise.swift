// Seeded noise for sampler tests: a SplitMix64 generator, uniforms in (0, 1) and Box–Muller normals.
import Foundation

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, seedable, good enough for Monte Carlo tests.
public struct SplitMix64 {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in the open interval (0, 1), exactly representable as a Float: (k + 0.5) / 2^24.
    public mutating func uniform() -> Float { Float((Double(next() >> 40) + 0.5) / 16_777_216.0) }
    /// Uniform in (0, 1) with 53 bits, for Box–Muller.
    public mutating func uniformDouble() -> Double { (Double(next() >> 11) + 0.5) / 9_007_199_254_740_992.0 }
}

public enum TestNoise {
    /// n uniforms in (0, 1).
    public static func uniforms(_ n: Int, seed: UInt64) -> [Float] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in g.uniform() }
    }

    /// n standard normals by Box–Muller.
    public static func normals(_ n: Int, seed: UInt64) -> [Float] {
        var g = SplitMix64(seed: seed)
        var out: [Float] = []
        out.reserveCapacity(n + 1)
        while out.count < n {
            let r = (-2 * log(g.uniformDouble())).squareRoot(), t = 2 * Double.pi * g.uniformDouble()
            out.append(Float(r * cos(t)))
            out.append(Float(r * sin(t)))
        }
        return Array(out.prefix(n))
    }
}
