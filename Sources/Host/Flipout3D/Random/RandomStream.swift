// Counter-based random streams keyed by (seed, layer, step, purpose): the one RNG design of the host.
import Foundation

/// What a stream's numbers are for. Each purpose is an independent sub-stream, so adding a use
/// of randomness in one place never shifts the numbers another place sees.
public enum RandomPurpose: UInt32, Sendable {
    case initialization = 1
    case kernelNoise = 2
    case flipoutSigns = 3
    case klNoise = 4
    case biasNoise = 5
    case data = 6
    case shuffle = 7
    case prediction = 8
    /// The multi-class synthetic cases (`Data/SyntheticCases.swift`), keyed by case index.
    case syntheticCases = 20
    /// Patch positions and foreground choices of the patch sampler (`Training/PatchSampler.swift`).
    case patchSampling = 21
    /// The case permutation of cross-validation folds (`Data/Splits.swift`).
    case folds = 22
    /// Augmentation parameters of one training example (`Augmentation/PatchAugmentation.swift`),
    /// keyed by (global step, example index in the global batch).
    case augmentation = 23
    /// The Gaussian noise fields of augmentation, keyed the same way.
    case augmentationNoise = 24
    case test = 99
}

/// An explicit generator: numbers are a pure function of (seed, layer, step, purpose, index).
/// The same seed gives bit-identical results on any thread count. A stream is a value; drawing
/// advances only this copy's position.
public struct RandomStream: Sendable {
    public let key: (UInt32, UInt32)
    public let step: UInt64
    /// Next 128-bit block to draw.
    public private(set) var block: UInt64 = 0

    public init(seed: UInt64, layer: Int, step: Int, purpose: RandomPurpose) {
        let k = splitMix64(splitMix64(seed) ^ splitMix64(UInt64(UInt32(truncatingIfNeeded: layer)) << 32 | UInt64(purpose.rawValue)))
        key = (UInt32(truncatingIfNeeded: k), UInt32(truncatingIfNeeded: k >> 32))
        self.step = UInt64(bitPattern: Int64(step))
    }

    @inline(__always)
    mutating func nextBlock() -> (UInt32, UInt32, UInt32, UInt32) {
        let c = (UInt32(truncatingIfNeeded: block), UInt32(truncatingIfNeeded: block >> 32),
                 UInt32(truncatingIfNeeded: step), UInt32(truncatingIfNeeded: step >> 32))
        block &+= 1
        return Philox.block(key: key, counter: c)
    }

    /// Moves to the 128-bit block `b` (counter-based: a fill can start at any block, in any order).
    public mutating func seek(toBlock b: UInt64) { block = b }

    /// Uniform in the open interval (0, 1) from 32 random bits.
    @inline(__always) static func unit(_ x: UInt32) -> Double { (Double(x) + 0.5) * (1.0 / 4_294_967_296.0) }

    /// Fill with uniforms in (0, 1), never exactly 0 or 1.
    public mutating func fillUniform(_ out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i < count {
            let b = nextBlock()
            for w in [b.0, b.1, b.2, b.3] where i < count {
                // Clamp after rounding to Float so the open interval survives the conversion.
                out[i] = min(max(Float(Self.unit(w)), .leastNormalMagnitude), 1 - .ulpOfOne / 2)
                i += 1
            }
        }
    }

    /// Fill with standard normals (Box–Muller in Double on pairs of uniforms).
    public mutating func fillNormal(_ out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        // Box-Muller on two pairs of 32-bit words per block: (b.0, b.1), then (b.2, b.3).
        @inline(__always) func pair(_ a: UInt32, _ c: UInt32) {
            let r = (-2 * Foundation.log(Self.unit(a))).squareRoot()
            let t = 2 * Double.pi * Self.unit(c)
            out[i] = Float(r * Foundation.cos(t)); i += 1
            if i < count { out[i] = Float(r * Foundation.sin(t)); i += 1 }
        }
        while i < count {
            let b = nextBlock()
            pair(b.0, b.1)
            if i < count { pair(b.2, b.3) }
        }
    }

    /// Fill with Rademacher signs, +1 or -1 (never 0).
    public mutating func fillSigns(_ out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i < count {
            var bits = nextBlock().0
            for _ in 0..<32 where i < count {
                out[i] = (bits & 1) == 0 ? 1 : -1
                bits >>= 1; i += 1
            }
        }
    }

    /// A uniform integer in 0..<n (for shuffles; n < 2^32).
    public mutating func nextInt(below n: Int) -> Int {
        precondition(n > 0 && n <= Int(UInt32.max), "RandomStream.nextInt: bad bound \(n)")
        return Int((UInt64(nextBlock().0) * UInt64(n)) >> 32)
    }

    public mutating func normals(_ count: Int) -> [Float] {
        var a = [Float](repeating: 0, count: count)
        a.withUnsafeMutableBufferPointer { fillNormal($0.baseAddress!, count: count) }
        return a
    }

    public mutating func uniforms(_ count: Int) -> [Float] {
        var a = [Float](repeating: 0, count: count)
        a.withUnsafeMutableBufferPointer { fillUniform($0.baseAddress!, count: count) }
        return a
    }
}
