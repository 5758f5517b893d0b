// SyntheticCases: the embedded multi-class, multi-channel task (C = 2 channels, K = 3 classes) on RAS grids with varied spacing.
//
// Each case is a pure function of (seed, index): its numbers come from
// RandomStream(seed: seed, layer: 0, step: index, purpose: .syntheticCases), and nothing else.
//
// Anatomy is drawn in millimetres, so a case looks the same whatever its spacing:
//   - a fixed field of view of `fieldOfView` mm (z, y, x), centred on the world origin;
//   - a per-case voxel spacing, each axis uniform in `spacingRange` mm, hence a per-case grid shape;
//   - class 1 ("structureA"): 1–2 randomly oriented ellipsoids;
//   - class 2 ("structureB"): 1–2 ellipsoids drawn after class 1 (they overwrite it where they overlap).
// Intensities, per channel c (scanner-like units, not normalised; preprocessing z-scores them):
//   clean_c = base_c + texture_c + contrast[c][class]          texture: low-frequency cosines, std 1
//   image_c = scale_c · (clean_c · exp(bias_c) + noise)        noise ~ N(0, noiseSigma²)
// The contrasts are chosen so that each channel alone is ambiguous: class 1 and class 2 are
// equally bright in channel 0 and differ only in channel 1, while class 1 and the background
// look alike in channel 1. Telling all three classes apart needs both channels.
//
// `Look.outOfDistribution` (the binary task's OOD look, SyntheticVolumes.Appearance.outOfDistribution):
// the same anatomy drawn with inverted intensities (image_c negated: structures darker than the
// background), noise 0.9 instead of 0.35, finer texture (8 cosines of 2–5 cycles per field of view
// instead of 6 of 0.5–1.5) and a stronger bias field (amplitudes 0.1–0.25 instead of 0.05–0.15).
// Its cases are "synth_ood_000", … on their own sub-stream (layer 2), so they share no draws with
// the in-distribution cases of the same seed.
import Foundation

public struct SyntheticCases: Sendable {
    /// One generated case on its own RAS grid.
    public struct Case: Sendable {
        public init(id: String, image: Tensor, label: Tensor, spacing: [Double], affine: [[Double]]) {
            self.id = id; self.image = image; self.label = label; self.spacing = spacing; self.affine = affine
        }
        /// "synth_000", "synth_001", … (the index, zero-padded to three digits).
        public let id: String
        /// (C, D, H, W) Float intensities, one channel per modality, not normalised.
        public let image: Tensor
        /// (1, D, H, W) class indices 0..<K stored as Float.
        public let label: Tensor
        /// Voxel size in mm along (D, H, W) = (z, y, x) = NIfTI (k, j, i).
        public let spacing: [Double]
        /// 4×4 row-major voxel-to-world matrix in NIfTI's convention: world RAS mm = A · (i, j, k, 1),
        /// with i along W (x, towards Right), j along H (y, Anterior), k along D (z, Superior).
        public let affine: [[Double]]
    }

    /// Channel names in dataset.json order (`channel_names` "0", "1").
    public static let channelNames = ["T1", "T2"]
    /// Class names by index, background first (dataset.json `labels`).
    public static let classNames = ["background", "structureA", "structureB"]
    public static var channelCount: Int { channelNames.count }
    public static var classCount: Int { classNames.count }

    /// Intensity offset of each class over the background, in texture standard deviations:
    /// `contrast[channel][class]`.
    public static let contrast: [[Float]] = [[0, 2.0, 2.0], [0, 0, 2.5]]
    /// Background level and the global intensity scale of each channel (scanner-like units).
    static let base: [Float] = [4, 3]
    static let scale: [Float] = [100, 60]

    public let seed: UInt64
    /// Number of cases (the generator itself takes any index >= 0).
    public let count: Int
    /// Field of view in mm along (z, y, x).
    public let fieldOfView: [Double]
    /// Range of the per-axis voxel spacing in mm.
    public let spacingRange: ClosedRange<Double>
    /// Ellipsoid semi-axis range in mm.
    public let radiusRange: ClosedRange<Double>
    /// Standard deviation of the additive noise (texture std is 1).
    public let noiseSigma: Float
    /// How the anatomy is rendered: the training look, or the out-of-distribution one.
    public let look: Look

    /// The rendering of a case apart from its anatomy.
    public struct Look: Sendable, Equatable {
        /// Cosines in each channel's texture and their frequency range, cycles per field of view.
        public var textureComponents: Int
        public var textureCycles: ClosedRange<Double>
        /// Amplitude range of each of the 3 log-bias cosines.
        public var biasAmplitude: ClosedRange<Double>
        /// Negate every channel (structures darker than the background).
        public var inverted: Bool
        /// Noise standard deviation, replacing `noiseSigma` when set.
        public var noiseSigma: Float?
        /// Case id prefix and the RandomStream layer its cases are drawn on.
        public var idPrefix: String
        var streamLayer: Int

        public static let inDistribution = Look(textureComponents: 6, textureCycles: 0.5...1.5, biasAmplitude: 0.05...0.15,
                                                inverted: false, noiseSigma: nil, idPrefix: "synth_", streamLayer: 0)
        public static let outOfDistribution = Look(textureComponents: 8, textureCycles: 2.0...5.0, biasAmplitude: 0.1...0.25,
                                                   inverted: true, noiseSigma: 0.9, idPrefix: "synth_ood_", streamLayer: 2)
    }

    public init(seed: UInt64, count: Int = 32, fieldOfView: [Double] = [40, 40, 40],
                spacingRange: ClosedRange<Double> = 0.9...1.4, radiusRange: ClosedRange<Double> = 4...8,
                noiseSigma: Float = 0.35, look: Look = .inDistribution) {
        precondition(count >= 0, "SyntheticCases: negative count \(count)")
        precondition(fieldOfView.count == 3 && fieldOfView.allSatisfy { $0 > 0 }, "SyntheticCases: field of view must be 3 positive mm sizes, got \(fieldOfView)")
        precondition(spacingRange.lowerBound > 0, "SyntheticCases: spacing must be positive")
        precondition(fieldOfView.allSatisfy { $0 / spacingRange.upperBound >= 8 }, "SyntheticCases: fewer than 8 voxels per axis")
        precondition(radiusRange.lowerBound > 0 && 2 * radiusRange.upperBound < fieldOfView.min()!, "SyntheticCases: radii must fit in the field of view")
        self.seed = seed; self.count = count; self.fieldOfView = fieldOfView
        self.spacingRange = spacingRange; self.radiusRange = radiusRange
        self.noiseSigma = look.noiseSigma ?? noiseSigma; self.look = look
    }

    /// Every case, in index order.
    public func all() -> [Case] { (0..<count).map { self.case($0) } }

    /// Case `index`: a pure function of (seed, index).
    public func `case`(_ index: Int) -> Case {
        precondition(index >= 0, "SyntheticCases: negative index \(index)")
        var rng = RandomStream(seed: seed, layer: look.streamLayer, step: index, purpose: .syntheticCases)
        func uniform(_ r: ClosedRange<Double>) -> Double {
            var u: Float = 0; rng.fillUniform(&u, count: 1)
            return r.lowerBound + Double(u) * (r.upperBound - r.lowerBound)
        }
        func normal() -> Double { var z: Float = 0; rng.fillNormal(&z, count: 1); return Double(z) }

        // 1. Grid: spacing per axis, shape covering the field of view, centred on the origin.
        let spacing = (0..<3).map { _ in (uniform(spacingRange) * 100).rounded() / 100 }
        let shape = (0..<3).map { max(8, Int((fieldOfView[$0] / spacing[$0]).rounded())) } // (D, H, W)
        let origin = (0..<3).map { -Double(shape[$0] - 1) * spacing[$0] / 2 }              // (z, y, x) of voxel 0
        // 2. Parameters, in a fixed order: textures and bias fields per channel, then the ellipsoids.
        func randomCosine(_ cyclesPerFieldOfView: ClosedRange<Double>, amplitude: ClosedRange<Double>) -> Cosine {
            var v = (normal(), normal(), normal())
            let norm = max((v.0 * v.0 + v.1 * v.1 + v.2 * v.2).squareRoot(), 1e-6)
            let m = uniform(cyclesPerFieldOfView) * 2 * .pi / norm
            v = (v.0 * m / fieldOfView[0], v.1 * m / fieldOfView[1], v.2 * m / fieldOfView[2]) // radians per mm
            return Cosine(f: v, phase: uniform(0...(2 * .pi)), amplitude: uniform(amplitude))
        }
        let channels = Self.channelCount
        let textures = (0..<channels).map { _ in (0..<look.textureComponents).map { _ in randomCosine(look.textureCycles, amplitude: 0.5...1.0) } }
        let biases = (0..<channels).map { _ in (0..<3).map { _ in randomCosine(0.2...0.9, amplitude: look.biasAmplitude) } }
        func ellipsoid(label: Int) -> Ellipsoid {
            let radii = (uniform(radiusRange), uniform(radiusRange), uniform(radiusRange))
            let margin = 2 + max(radii.0, radii.1, radii.2) * 0.6
            func coordinate(_ axis: Int) -> Double { let half = fieldOfView[axis] / 2 - margin; return uniform(-half...half) }
            let center = (coordinate(0), coordinate(1), coordinate(2))
            var q = (normal(), normal(), normal(), normal())
            let qn = max((q.0 * q.0 + q.1 * q.1 + q.2 * q.2 + q.3 * q.3).squareRoot(), 1e-6)
            q = (q.0 / qn, q.1 / qn, q.2 / qn, q.3 / qn)
            let (a, b, c, e) = q
            let r = [a * a + b * b - c * c - e * e, 2 * (b * c - a * e), 2 * (b * e + a * c),
                     2 * (b * c + a * e), a * a - b * b + c * c - e * e, 2 * (c * e - a * b),
                     2 * (b * e - a * c), 2 * (c * e + a * b), a * a - b * b - c * c + e * e]
            return Ellipsoid(label: label, center: center, inverseRadii: (1 / radii.0, 1 / radii.1, 1 / radii.2), rotation: r)
        }
        var structures: [Ellipsoid] = []
        for label in 1..<Self.classCount {
            let n = 1 + rng.uniformIndex(below: 2)
            for _ in 0..<n { structures.append(ellipsoid(label: label)) }
        }

        // 3. Voxels: label, then per channel texture (standardised), clean intensity, bias, noise.
        let (d, h, w) = (shape[0], shape[1], shape[2])
        let n = d * h * w
        let image = Tensor(shape: [channels, d, h, w]) // (C, D, H, W)
        let label = Tensor(shape: [1, d, h, w])        // (1, D, H, W)
        func world(_ z: Int, _ y: Int, _ x: Int) -> (Double, Double, Double) {
            (origin[0] + Double(z) * spacing[0], origin[1] + Double(y) * spacing[1], origin[2] + Double(x) * spacing[2])
        }
        var i = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            let p = world(z, y, x)
            var cls = 0
            for e in structures where e.contains(p) { cls = max(cls, e.label) }
            label.data[i] = Float(cls); i += 1
        } } }
        var noise = [Float](repeating: 0, count: n)
        for c in 0..<channels {
            let out = image.data + c * n
            i = 0
            for z in 0..<d { for y in 0..<h { for x in 0..<w {
                out[i] = Float(textures[c].reduce(0) { $0 + $1.value(world(z, y, x)) }); i += 1
            } } }
            SyntheticVolumes.standardise(out, count: n)
            noise.withUnsafeMutableBufferPointer { rng.fillNormal($0.baseAddress!, count: n) }
            i = 0
            for z in 0..<d { for y in 0..<h { for x in 0..<w {
                let logBias = biases[c].reduce(0) { $0 + $1.value(world(z, y, x)) }
                let clean = Self.base[c] + out[i] + Self.contrast[c][Int(label.data[i])]
                let v = Self.scale[c] * (clean * Float(Foundation.exp(logBias)) + noiseSigma * noise[i])
                out[i] = look.inverted ? -v : v
                i += 1
            } } }
        }
        let affine: [[Double]] = [[spacing[2], 0, 0, origin[2]],
                                  [0, spacing[1], 0, origin[1]],
                                  [0, 0, spacing[0], origin[0]],
                                  [0, 0, 0, 1]]
        return Case(id: look.idPrefix + Self.indexSuffix(index), image: image, label: label, spacing: spacing, affine: affine)
    }

    public static func caseID(_ index: Int) -> String { Look.inDistribution.idPrefix + indexSuffix(index) }

    static func indexSuffix(_ index: Int) -> String { String(repeating: "0", count: max(0, 3 - String(index).count)) + String(index) }

    // MARK: - Rendering pieces (world coordinates in mm, ordered (z, y, x))

    struct Cosine {
        var f: (Double, Double, Double); var phase: Double; var amplitude: Double
        func value(_ p: (Double, Double, Double)) -> Double { amplitude * cos(f.0 * p.0 + f.1 * p.1 + f.2 * p.2 + phase) }
    }

    struct Ellipsoid {
        var label: Int
        var center: (Double, Double, Double)
        var inverseRadii: (Double, Double, Double)
        /// Row-major rotation R; the ellipsoid's frame coordinates are Rᵀ (p − center).
        var rotation: [Double]
        func contains(_ q: (Double, Double, Double)) -> Bool {
            let p = (q.0 - center.0, q.1 - center.1, q.2 - center.2), r = rotation
            let u = (r[0] * p.0 + r[3] * p.1 + r[6] * p.2) * inverseRadii.0
            let v = (r[1] * p.0 + r[4] * p.1 + r[7] * p.2) * inverseRadii.1
            let s = (r[2] * p.0 + r[5] * p.1 + r[8] * p.2) * inverseRadii.2
            return u * u + v * v + s * s <= 1
        }
    }
}

extension SyntheticCases {
    /// Every case prepared in memory, without a dataset folder: each channel z-scored over its
    /// voxels, on its own grid (an identity source geometry). For tests, the MPI probe and benches.
    public func prepared() -> [PreparedCase] {
        all().map { c in
            let image = c.image.copy(), shape = Array(c.image.shape.dropFirst()), v = shape.reduce(1, *)
            image.withUnsafeMutableValues { values in
                for ch in 0..<image.shape[0] {
                    let p = values.baseAddress! + ch * v
                    let mean = (0..<v).reduce(0.0) { $0 + Double(p[$1]) } / Double(v)
                    let sd = ((0..<v).reduce(0.0) { $0 + (Double(p[$1]) - mean) * (Double(p[$1]) - mean) } / Double(v)).squareRoot()
                    for i in 0..<v { p[i] = Float((Double(p[i]) - mean) / sd) }
                }
            }
            let a = Affine(c.affine)
            return PreparedCase(id: c.id, image: image, label: c.label,
                                geometry: CaseGeometry(sourceShape: shape, sourceAffine: a, preparedShape: shape, preparedAffine: a))
        }
    }
}
