// What a network is made of: architecture, width, and the plugin posterior/prior of its Bayesian layers.

public struct ModelConfig: Codable, Equatable, Sendable {
    public enum Architecture: String, Codable, CaseIterable, Sendable {
        /// conv(1->w) | conv(w->2w, stride 2) | conv(2w->2w) | up x2 | conv(2w->w) + skip | conv(w->1)
        case encoderDecoder = "encoder-decoder"
        /// conv(1->w) ReLU conv(w->w) ReLU conv(w->1): the W3 benchmark network.
        case stack
    }
    public var architecture: Architecture = .encoderDecoder
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
    /// What follows each positive-support (e.g. Beta) layer other than the head; nil: the
    /// documented positive-weight recipe (`PositiveLayerOutput.recipe`). Optional so older
    /// checkpoints, written before it existed, still decode (as nil).
    public var afterPositive: PositiveLayerOutput? = nil
    /// Monte Carlo samples for a KL without a closed form; `forceMonteCarloKL` ignores closed forms.
    public var klSamples: Int = 1
    public var forceMonteCarloKL: Bool = false

    public init() {}

    /// Spatial sizes must be divisible by this (the encoder halves them once).
    public var sizeMultiple: Int { architecture == .encoderDecoder ? 2 : 1 }
}
