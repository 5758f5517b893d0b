// What a network is made of: width, and the plugin posterior/prior of its Bayesian layers; the U-Net's shape (UNetConfig).

public struct ModelConfig: Codable, Equatable, Sendable {
    /// Channels at full resolution (the U-Net's `UNetConfig.width` takes it from the same option).
    public var width: Int = 8
    /// false: the same network with deterministic convolutions (the baseline).
    public var bayesian: Bool = true
    public var estimator: String = Estimator.auto.rawValue
    public var posterior: String = "org.flipout3d.normal"
    public var posteriorHyperparameters: [String: Double] = [:]
    public var prior: String = "org.flipout3d.normal"
    public var priorHyperparameters: [String: Double] = [:]
    /// Constrained prior parameter values by slot name (e.g. scale=0.1); unset ones use the plugin's defaults.
    public var priorParameters: [String: Float] = [:]
    public var learnPrior: Bool = false
    /// Which Bayesian layers take `posterior`/`prior`: all, or only the first (e.g. a non-negative
    /// filter bank with a Beta posterior) while the others use a Normal posterior and Normal prior.
    public var customLayers: CustomLayers = .all
    public enum CustomLayers: String, Codable, CaseIterable, Sendable { case all, first }
    /// Monte Carlo samples for a KL without a closed form; `forceMonteCarloKL` ignores closed forms.
    public var klSamples: Int = 1
    public var forceMonteCarloKL: Bool = false

    public init() {}
}

/// The U-Net's shape (`Model/UNet.swift`): levels, width, channels in and classes out, normalisation,
/// and which layers are Bayesian. The posterior/prior of its Bayesian layers come from `ModelConfig`.
public struct UNetConfig: Codable, Equatable, Sendable {
    /// Resolution levels: level l runs at 1/2^l of the patch size with width·2^l channels (capped at `maxChannels`).
    public var levels: Int = 3
    /// Channels at full resolution.
    public var width: Int = 8
    /// C, the input channels (modalities).
    public var inputChannels: Int = 1
    /// K, the classes (background included); the network outputs K logits per voxel.
    public var classCount: Int = 2
    public var normalization: Normalization = .instance
    public var bayesianLayers: BayesianLayers = .all
    /// nnU-Net caps 3D feature maps at 320 channels; on CPU patches we cap lower.
    public var maxChannels: Int = 128

    public enum Normalization: String, Codable, CaseIterable, Sendable {
        /// Instance norm after every convolution but the head (nnU-Net's default for batch sizes of 2).
        case instance
        case none
    }

    public init() {}

    /// Channels at level l.
    public func channels(level l: Int) -> Int { min(width << l, maxChannels) }

    /// Every spatial size must be a multiple of this (each level halves the size once).
    public var sizeMultiple: Int { 1 << (levels - 1) }
}

/// Which U-Net convolutions are Flipout layers (the rest are deterministic convolutions).
/// Parsed from `all`, `none`, `encoder`, `decoder` or `last:N` (the last N convolutions, head included).
public enum BayesianLayers: Codable, Equatable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    case all
    case none
    /// The encoder's convolutions (every level's pair, down to the bottleneck).
    case encoder
    /// The upsampling, decoder and head convolutions.
    case decoder
    /// The last N convolutions in forward order (N = 1: only the 1×1×1 head), as bayesian-torch's
    /// "last-layer Bayesian" setups.
    case last(Int)

    public init?(_ text: String) {
        switch text {
        case "all": self = .all
        case "none": self = .none
        case "encoder": self = .encoder
        case "decoder": self = .decoder
        default:
            guard text.hasPrefix("last:"), let n = Int(text.dropFirst(5)), n >= 1 else { return nil }
            self = .last(n)
        }
    }

    public var description: String {
        switch self {
        case .all: return "all"
        case .none: return "none"
        case .encoder: return "encoder"
        case .decoder: return "decoder"
        case .last(let n): return "last:\(n)"
        }
    }

    public static let choices = "all, none, encoder, decoder, last:N"

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let v = BayesianLayers(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bayesian layers \"\(text)\" is not one of \(Self.choices)"))
        }
        self = v
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// Whether convolution `index` of `count` (forward order), in the encoder or not, is Bayesian.
    public func isBayesian(index: Int, count: Int, inEncoder: Bool) -> Bool {
        switch self {
        case .all: return true
        case .none: return false
        case .encoder: return inEncoder
        case .decoder: return !inEncoder
        case .last(let n): return index >= count - n
        }
    }
}
