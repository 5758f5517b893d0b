// SyntheticVolumes: the embedded default task, deterministic 3D volumes with ellipsoid lesions over texture, bias field and noise.
//
// Each volume is a pure function of (seed, split, index): its numbers come from
// RandomStream(seed: seed, layer: split.rawValue, step: index, purpose: .data), and nothing else.
//
// Image model, per volume (before the final per-volume z-score):
//   clean   = base + texture + contrast · lesion          texture: sum of random low-frequency
//                                                          cosines scaled to std 1; lesion ∈ {0, 1}
//   image   = clean · exp(bias) + noise                    bias: a few cosines below 1 cycle per
//                                                          volume; noise ~ N(0, sigma²)
//   image   = ±(image − mean) / std                        (−) for an inverted contrast
// Lesions are 1–3 randomly oriented ellipsoids; the label is 1 inside any of them.
import Foundation

public struct SyntheticVolumes: Sendable {
    /// The splits; the raw value is the RandomStream `layer` (sub-stream id) of the split.
    public enum Split: Int, Sendable, CaseIterable, CustomStringConvertible {
        case train = 1, validation = 2, test = 3, outOfDistribution = 4
        public var description: String {
            switch self {
            case .train: return "train"
            case .validation: return "validation"
            case .test: return "test"
            case .outOfDistribution: return "ood"
            }
        }
    }

    /// How a split looks. In-distribution splits share one; the OOD split uses another.
    public struct Appearance: Sendable, Equatable {
        /// Lesion intensity above the background, in units of the texture's standard deviation.
        public var lesionContrast: Float
        /// Standard deviation of the additive Gaussian noise (texture std is 1).
        public var noiseSigma: Float
        /// Cosine frequencies of the texture, in cycles per volume edge.
        public var textureFrequencies: ClosedRange<Float>
        /// Number of cosines in the texture.
        public var textureComponents: Int
        /// Standard deviation scale of the log bias field (0 = no bias field).
        public var biasStrength: Float
        /// Negate the final image (lesions become dark).
        public var inverted: Bool

        public init(lesionContrast: Float, noiseSigma: Float, textureFrequencies: ClosedRange<Float>,
                    textureComponents: Int, biasStrength: Float, inverted: Bool) {
            self.lesionContrast = lesionContrast; self.noiseSigma = noiseSigma
            self.textureFrequencies = textureFrequencies; self.textureComponents = textureComponents
            self.biasStrength = biasStrength; self.inverted = inverted
        }

        /// Train / validation / test: bright lesions (+1.5 texture std), moderate noise, smooth texture.
        /// With these, the best global threshold reaches a Dice of about 0.17 on the train split and
        /// a fixed difference-of-box-filters detector about 0.5: learnable, not by threshold alone.
        public static let inDistribution = Appearance(lesionContrast: 1.5, noiseSigma: 0.35, textureFrequencies: 0.5...1.5,
                                                      textureComponents: 6, biasStrength: 0.15, inverted: false)
        /// OOD: inverted intensities (dark lesions), more noise, finer texture, stronger bias.
        public static let outOfDistribution = Appearance(lesionContrast: 1.5, noiseSigma: 0.9, textureFrequencies: 2.0...5.0,
                                                         textureComponents: 8, biasStrength: 0.25, inverted: true)
    }

    public let seed: UInt64
    /// Volume shape (D, H, W).
    public let size: [Int]
    /// Number of volumes per split (the generator itself takes any index >= 0).
    public let counts: [Split: Int]
    public let inDistribution: Appearance
    public let outOfDistribution: Appearance
    /// Ellipsoid semi-axis range in voxels for a 32-voxel edge; scaled by min(size)/32.
    public let radiusRange: ClosedRange<Float>
    public let lesionCount: ClosedRange<Int>

    public init(seed: UInt64, size: [Int] = [32, 32, 32],
                counts: [Split: Int] = [.train: 64, .validation: 16, .test: 16, .outOfDistribution: 16],
                inDistribution: Appearance = .inDistribution, outOfDistribution: Appearance = .outOfDistribution,
                radiusRange: ClosedRange<Float> = 3.0...6.5, lesionCount: ClosedRange<Int> = 1...3) {
        precondition(size.count == 3 && size.allSatisfy { $0 >= 8 }, "SyntheticVolumes: size must be (D, H, W), each >= 8, got \(size)")
        precondition(radiusRange.lowerBound > 0 && lesionCount.lowerBound >= 1, "SyntheticVolumes: bad lesion ranges")
        self.seed = seed; self.size = size; self.counts = counts
        self.inDistribution = inDistribution; self.outOfDistribution = outOfDistribution
        self.radiusRange = radiusRange; self.lesionCount = lesionCount
    }

    public func count(_ split: Split) -> Int { counts[split] ?? 0 }

    public func appearance(_ split: Split) -> Appearance {
        split == .outOfDistribution ? outOfDistribution : inDistribution
    }

    /// One volume: image and label, each (1, D, H, W). Pure function of (seed, split, index).
    public func volume(split: Split, index: Int) -> (image: Tensor, label: Tensor) {
        let image = Tensor(shape: [1] + size) // (1, D, H, W)
        let label = Tensor(shape: [1] + size) // (1, D, H, W)
        render(split: split, index: index, image: image.data, label: label.data)
        return (image, label)
    }

    /// A batch: x and y, each (N, 1, D, H, W), volume n being `volume(split:index: indices[n])`.
    public func batch(split: Split, indices: [Int]) -> (x: Tensor, y: Tensor) {
        let per = size.reduce(1, *)
        let x = Tensor(shape: [indices.count, 1] + size) // (N, 1, D, H, W)
        let y = Tensor(shape: [indices.count, 1] + size) // (N, 1, D, H, W)
        for (n, index) in indices.enumerated() {
            render(split: split, index: index, image: x.data + n * per, label: y.data + n * per)
        }
        return (x, y)
    }

    /// All volumes of a split, (count, 1, D, H, W) each.
    public func all(_ split: Split) -> (x: Tensor, y: Tensor) { batch(split: split, indices: Array(0..<count(split))) }

    // MARK: - Rendering

    struct Cosine { var f: (Float, Float, Float); var phase: Float; var amplitude: Float }
    struct Ellipsoid { var center: (Float, Float, Float); var inverseRadii: (Float, Float, Float); var rotation: [Float] }

    /// Draws a volume's parameters, then its voxels, into `image` and `label` (D·H·W each).
    func render(split: Split, index: Int, image: UnsafeMutablePointer<Float>, label: UnsafeMutablePointer<Float>) {
        precondition(index >= 0, "SyntheticVolumes: negative index \(index)")
        let look = appearance(split)
        var rng = RandomStream(seed: seed, layer: split.rawValue, step: index, purpose: .data)
        let (d, h, w) = (size[0], size[1], size[2])
        let n = d * h * w
        func uniform(_ r: ClosedRange<Float>) -> Float {
            var u: Float = 0; rng.fillUniform(&u, count: 1); return r.lowerBound + u * (r.upperBound - r.lowerBound)
        }
        func normal() -> Float { var z: Float = 0; rng.fillNormal(&z, count: 1); return z }
        func randomCosine(_ freqs: ClosedRange<Float>) -> Cosine {
            // A direction uniform on the sphere, a magnitude in `freqs` (cycles per edge).
            var v = (normal(), normal(), normal())
            let norm = max((v.0 * v.0 + v.1 * v.1 + v.2 * v.2).squareRoot(), 1e-6)
            let m = uniform(freqs) * 2 * .pi / norm
            v = (v.0 * m / Float(d), v.1 * m / Float(h), v.2 * m / Float(w))
            return Cosine(f: v, phase: uniform(0...(2 * .pi)), amplitude: uniform(0.5...1.0))
        }

        // 1. Parameters, in a fixed order.
        let texture = (0..<look.textureComponents).map { _ in randomCosine(look.textureFrequencies) }
        let bias = (0..<3).map { _ in randomCosine(0.2...0.9) }
        let scale = Float(min(d, h, w)) / 32
        let lesions = (0..<(lesionCount.lowerBound + rng.uniformIndex(below: lesionCount.count))).map { _ -> Ellipsoid in
            let radii = (uniform(radiusRange) * scale, uniform(radiusRange) * scale, uniform(radiusRange) * scale)
            let margin = Float(2) * scale + max(radii.0, radii.1, radii.2) * 0.6
            func coordinate(_ e: Int) -> Float { uniform(margin...max(margin, Float(e - 1) - margin)) }
            let center = (coordinate(d), coordinate(h), coordinate(w))
            // A uniformly random rotation from a random unit quaternion.
            var q = (normal(), normal(), normal(), normal())
            let qn = max((q.0 * q.0 + q.1 * q.1 + q.2 * q.2 + q.3 * q.3).squareRoot(), 1e-6)
            q = (q.0 / qn, q.1 / qn, q.2 / qn, q.3 / qn)
            let (a, b, c, e) = q
            let r: [Float] = [
                a * a + b * b - c * c - e * e, 2 * (b * c - a * e), 2 * (b * e + a * c),
                2 * (b * c + a * e), a * a - b * b + c * c - e * e, 2 * (c * e - a * b),
                2 * (b * e - a * c), 2 * (c * e + a * b), a * a - b * b - c * c + e * e,
            ]
            return Ellipsoid(center: center, inverseRadii: (1 / radii.0, 1 / radii.1, 1 / radii.2), rotation: r)
        }

        // 2. Texture, standardised to mean 0, std 1 over the volume.
        var i = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            var t: Float = 0
            for c in texture { t += c.amplitude * cos(c.f.0 * Float(z) + c.f.1 * Float(y) + c.f.2 * Float(x) + c.phase) }
            image[i] = t; i += 1
        } } }
        Self.standardise(image, count: n)

        // 3. Lesions (label) and clean intensity, bias field, noise.
        let base: Float = 3
        i = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            var inside = false
            for e in lesions {
                let p = (Float(z) - e.center.0, Float(y) - e.center.1, Float(x) - e.center.2)
                let r = e.rotation
                // Coordinates in the ellipsoid's frame: Rᵀ p.
                let u = (r[0] * p.0 + r[3] * p.1 + r[6] * p.2) * e.inverseRadii.0
                let v = (r[1] * p.0 + r[4] * p.1 + r[7] * p.2) * e.inverseRadii.1
                let s = (r[2] * p.0 + r[5] * p.1 + r[8] * p.2) * e.inverseRadii.2
                if u * u + v * v + s * s <= 1 { inside = true; break }
            }
            label[i] = inside ? 1 : 0
            var logBias: Float = 0
            for c in bias { logBias += c.amplitude * cos(c.f.0 * Float(z) + c.f.1 * Float(y) + c.f.2 * Float(x) + c.phase) }
            image[i] = (base + image[i] + (inside ? look.lesionContrast : 0)) * exp(look.biasStrength * logBias)
            i += 1
        } } }
        var noise = [Float](repeating: 0, count: n)
        noise.withUnsafeMutableBufferPointer { rng.fillNormal($0.baseAddress!, count: n) }
        for j in 0..<n { image[j] += look.noiseSigma * noise[j] }

        // 4. Per-volume z-score (and inversion for the OOD contrast).
        Self.standardise(image, count: n)
        if look.inverted { for j in 0..<n { image[j] = -image[j] } }
    }

    /// In place: subtract the mean, divide by the standard deviation (Double sums).
    static func standardise(_ p: UnsafeMutablePointer<Float>, count n: Int) {
        var s = 0.0, s2 = 0.0
        for j in 0..<n { s += Double(p[j]); s2 += Double(p[j]) * Double(p[j]) }
        let mean = s / Double(n)
        let sd = max((s2 / Double(n) - mean * mean).squareRoot(), 1e-12)
        let m = Float(mean), inv = Float(1 / sd)
        for j in 0..<n { p[j] = (p[j] - m) * inv }
    }
}

extension RandomStream {
    /// A uniform integer in 0..<n from one uniform draw (n well below 2^24). The data code uses
    /// this rather than `nextInt(below:)` so the data stays fixed whatever `nextInt` does (it
    /// returned 0 for every n before e5e609e fixed its `a * b >> 32` precedence).
    mutating func uniformIndex(below n: Int) -> Int {
        precondition(n > 0 && n < 1 << 24, "uniformIndex: bad bound \(n)")
        var u: Float = 0
        fillUniform(&u, count: 1)
        return min(Int(Double(u) * Double(n)), n - 1)
    }
}
