// One training example's augmentation: every parameter drawn from its keyed stream, then the transforms applied in nnU-Net's order.
import Foundation

/// The parameters of nnU-Net's default pipeline for one example (nil or false: not applied).
///
/// Keys: RandomStream(seed, layer: example, step: step, purpose: .augmentation), where `step` is
/// the global optimizer step and `example` the example's index in the global batch, so the same
/// seed gives the same patches whatever the number of threads or MPI ranks. Every parameter has a
/// fixed slot among the stream's uniforms (drawn whether or not its transform fires), so one
/// transform's decision never shifts another's numbers:
///   0 rotate?, 1–3 angles (D, H, W), 4 scale?, 5 scale, 6 noise?, 7 noise variance, 8 blur?,
///   9 brightness?, 10 contrast?, 11 low resolution?, 12 inverted gamma?, 13 gamma?, 14–16 mirror (D, H, W);
///   channel c at 32 + 16c: 0 blur this channel?, 1–3 sigmas, 4–5 brightness, 6–7 contrast,
///   8 low resolution this channel?, 9 its scale, 10–11 inverted gamma, 12–13 gamma.
/// The noise field comes from purpose `.augmentationNoise` with the same keys.
public struct PatchAugmentation: Equatable, Sendable {
    public var spatial: SpatialTransform?
    public var noiseSD: Double?
    /// Per channel.
    public var blurSigmas: [[Double]?]
    public var brightness: [Double?]
    public var contrast: [Double?]
    public var lowResolution: [Double?]
    public var invertedGamma: [Double?]
    public var gamma: [Double?]
    public var mirrorAxes: [Int]

    public init(spatial: SpatialTransform?, noiseSD: Double?, blurSigmas: [[Double]?], brightness: [Double?], contrast: [Double?],
                lowResolution: [Double?], invertedGamma: [Double?], gamma: [Double?], mirrorAxes: [Int]) {
        self.spatial = spatial; self.noiseSD = noiseSD; self.blurSigmas = blurSigmas; self.brightness = brightness
        self.contrast = contrast; self.lowResolution = lowResolution; self.invertedGamma = invertedGamma; self.gamma = gamma
        self.mirrorAxes = mirrorAxes
    }

    /// Nothing applied (`--augmentation none`).
    public static func identity(channels: Int) -> PatchAugmentation {
        let none = [Double?](repeating: nil, count: channels)
        return PatchAugmentation(spatial: nil, noiseSD: nil, blurSigmas: [[Double]?](repeating: nil, count: channels),
                                 brightness: none, contrast: none, lowResolution: none, invertedGamma: none, gamma: none, mirrorAxes: [])
    }

    /// Draws the parameters of example `example` at `step`.
    public init(settings: AugmentationSettings, channels: Int, seed: UInt64, step: Int, example: Int) {
        self = .identity(channels: channels)
        guard settings.policy == .default else { return }
        typealias D = AugmentationDefaults
        var rng = RandomStream(seed: seed, layer: example, step: step, purpose: .augmentation)
        let u = rng.uniforms(32 + 16 * channels).map(Double.init)
        func within(_ r: ClosedRange<Double>, _ v: Double) -> Double { r.lowerBound + (r.upperBound - r.lowerBound) * v }
        let rotate = u[0] < D.rotationProbability, scale = u[4] < D.scalingProbability
        if rotate || scale {
            var angles = [0.0, 0, 0]
            if rotate {
                if let a = settings.inPlaneAxis {
                    angles[a] = within(-D.inPlaneRotationRange...D.inPlaneRotationRange, u[1 + a])
                } else {
                    for a in 0..<3 { angles[a] = within(-D.rotationRange...D.rotationRange, u[1 + a]) }
                }
            }
            spatial = SpatialTransform(angles: angles, scale: scale ? within(D.scalingRange, u[5]) : 1)
        }
        if u[6] < D.noiseProbability { noiseSD = within(D.noiseVarianceRange, u[7]).squareRoot() }
        for c in 0..<channels {
            let v = Array(u[(32 + 16 * c)..<(48 + 16 * c)])
            if u[8] < D.blurProbability && v[0] < D.blurChannelProbability { blurSigmas[c] = (1...3).map { within(D.blurSigmaRange, v[$0]) } }
            if u[9] < D.brightnessProbability { brightness[c] = D.aroundOne(D.brightnessRange, v[4], v[5]) }
            if u[10] < D.contrastProbability { contrast[c] = D.aroundOne(D.contrastRange, v[6], v[7]) }
            if u[11] < D.lowResolutionProbability && v[8] < D.lowResolutionChannelProbability { lowResolution[c] = within(D.lowResolutionScaleRange, v[9]) }
            if u[12] < D.invertedGammaProbability { invertedGamma[c] = D.aroundOne(D.gammaRange, v[10], v[11]) }
            if u[13] < D.gammaProbability { gamma[c] = D.aroundOne(D.gammaRange, v[12], v[13]) }
        }
        mirrorAxes = settings.mirrorAxes.filter { u[14 + $0] < D.mirrorProbability }
    }

    /// Cuts the augmented patch of `image` (C, D, H, W) and `label` (1, D, H, W) whose unaugmented
    /// crop would start at `start`: x into `out` (C, size), y into `outLabel` (1, size). The
    /// spatial transform turns about the patch centre; intensities follow in nnU-Net's order.
    /// `noise` keys the noise field (seed, step, example as in `init`).
    public func cut(image: Tensor, label: Tensor?, start: [Int], size: [Int], into out: UnsafeMutablePointer<Float>,
                    labelInto outLabel: UnsafeMutablePointer<Float>?, seed: UInt64, step: Int, example: Int) {
        let c = image.shape[0], pv = size.reduce(1, *)
        if let spatial {
            let centre = (0..<3).map { Double(start[$0]) + Double(size[$0] - 1) / 2 }
            spatial.sample(image: image, label: label, centre: centre, size: size, into: out, labelInto: outLabel)
        } else {
            PatchSampler.crop(image, start: start, size: size, into: out)
            if let label, let outLabel { PatchSampler.crop(label, start: start, size: size, into: outLabel) }
        }
        if let noiseSD {
            var rng = RandomStream(seed: seed, layer: example, step: step, purpose: .augmentationNoise)
            GaussianNoise.apply(out, count: c * pv, sd: noiseSD, rng: &rng)
        }
        for ch in 0..<c {
            let x = out + ch * pv
            if let s = blurSigmas[ch] { GaussianBlur.apply(x, shape: size, sigmas: s) }
            if let f = brightness[ch] { MultiplicativeBrightness.apply(x, count: pv, factor: f) }
            if let f = contrast[ch] { Contrast.apply(x, count: pv, factor: f) }
            if let s = lowResolution[ch] { LowResolution.apply(x, shape: size, scale: s) }
            if let g = invertedGamma[ch] { Gamma.apply(x, count: pv, gamma: g, inverted: true) }
            if let g = gamma[ch] { Gamma.apply(x, count: pv, gamma: g, inverted: false) }
        }
        if !mirrorAxes.isEmpty {
            Mirror.apply(out, shape: [c] + size, axes: mirrorAxes)
            if let outLabel { Mirror.apply(outLabel, shape: [1] + size, axes: mirrorAxes) }
        }
    }
}
