// Which augmentation a run trains with (typed, recorded in the checkpoint), and nnU-Net's default probabilities and ranges.
import Foundation

/// `--augmentation`: none, or nnU-Net v2's default training transforms
/// (`nnUNetTrainer.get_training_transforms`, batchgeneratorsv2), applied on the fly to every patch.
public enum Augmentation: String, Codable, Sendable, CaseIterable {
    case none
    case `default`
}

/// The default pipeline's probabilities and ranges, nnU-Net v2's values, in the order applied:
/// spatial (rotation, scaling), noise, blur, brightness, contrast, low resolution, gamma on the
/// inverted image, gamma, mirroring.
public enum AugmentationDefaults {
    public static let rotationProbability = 0.2
    /// ±30° about each axis; when one axis is much coarser (`anisotropyRatio`), ±180° about it only ("dummy 2D").
    public static let rotationRange = 30.0 * Double.pi / 180
    public static let inPlaneRotationRange = Double.pi
    /// nnU-Net's ANISO_THRESHOLD: an axis whose spacing exceeds 3 × the finest is treated as out of plane.
    public static let anisotropyRatio = 3.0
    public static let scalingProbability = 0.2
    public static let scalingRange = 0.7...1.4
    public static let noiseProbability = 0.1
    /// Variance of the added Gaussian noise, drawn uniformly.
    public static let noiseVarianceRange = 0.0...0.1
    public static let blurProbability = 0.2
    public static let blurChannelProbability = 0.5
    public static let blurSigmaRange = 0.5...1.0
    public static let brightnessProbability = 0.15
    public static let brightnessRange = 0.75...1.25
    public static let contrastProbability = 0.15
    public static let contrastRange = 0.75...1.25
    public static let lowResolutionProbability = 0.25
    public static let lowResolutionChannelProbability = 0.5
    public static let lowResolutionScaleRange = 0.5...1.0
    public static let invertedGammaProbability = 0.1
    public static let gammaProbability = 0.3
    public static let gammaRange = 0.7...1.5
    public static let mirrorProbability = 0.5

    /// batchgeneratorsv2's `BGContrast`: a range around 1 drawn below 1 half of the time and above
    /// it otherwise, so 0.75–1.25 darkens as often as it brightens. `u`, `v` uniforms in (0, 1).
    public static func aroundOne(_ r: ClosedRange<Double>, _ u: Double, _ v: Double) -> Double {
        if u < 0.5 && r.lowerBound < 1 { return r.lowerBound + (1 - r.lowerBound) * v }
        let lo = max(r.lowerBound, 1)
        return lo + (r.upperBound - lo) * v
    }
}

/// What the patch sampler needs to augment: the policy, the axes it may mirror, and how to rotate.
public struct AugmentationSettings: Codable, Sendable, Equatable {
    public var policy: Augmentation
    /// Patch axes (0, 1, 2 = D, H, W) mirrored with probability 1/2 each; prediction mirrors the same ones.
    public var mirrorAxes: [Int]
    /// nil: rotate about all three axes by ±30°; an axis: rotate only about it, by ±180° (its
    /// spacing is over 3 × the finest, nnU-Net's "dummy 2D" augmentation).
    public var inPlaneAxis: Int?

    public init(policy: Augmentation, mirrorAxes: [Int] = [0, 1, 2], inPlaneAxis: Int? = nil) {
        precondition(mirrorAxes.allSatisfy { (0..<3).contains($0) }, "AugmentationSettings: mirror axes \(mirrorAxes)")
        self.policy = policy; self.mirrorAxes = mirrorAxes; self.inPlaneAxis = inPlaneAxis
    }

    public static let none = AugmentationSettings(policy: .none, mirrorAxes: [])

    /// nnU-Net's settings for a plan's spacing (D, H, W): every axis mirrored; in-plane rotation
    /// about the coarse axis when one axis is over `anisotropyRatio` × the finest.
    public init(policy: Augmentation, spacing: [Double]) {
        let finest = spacing.min() ?? 1
        let coarse = spacing.indices.filter { spacing[$0] > AugmentationDefaults.anisotropyRatio * finest }
        self.init(policy: policy, mirrorAxes: policy == .none ? [] : [0, 1, 2], inPlaneAxis: coarse.count == 1 ? coarse[0] : nil)
    }
}
