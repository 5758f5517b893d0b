// The one set of rules for model and training settings: the CLI checks its options with them, and
// a checkpoint's stored configuration is checked with them before anything is built from it.

/// A setting outside what Flipout3D accepts: the field (and its command-line option), the value,
/// and what is allowed.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// The configuration's field name, as stored in a checkpoint (e.g. `volumeSize`).
    public let field: String
    /// The command-line option that sets it (e.g. `--volume-size`).
    public let option: String
    public let value: String
    /// What is allowed, as a phrase: "an even number from 8 to 256".
    public let allowed: String

    /// For the command line: "--volume-size must be an even number from 8 to 256 (got 7)."
    public var description: String { "\(option) must be \(allowed) (got \(value))." }
    /// For a stored configuration: "volumeSize is 7; it must be ...".
    public var storedDescription: String { "\(field) is \(value); it must be \(allowed) (as \(option) on the command line)" }
}

/// Bounds on settings, each with the reason for its limit.
public enum ConfigLimits {
    /// Widest network: 64 channels already needs ~2 GiB of activations for a batch of 4 volumes of 64³.
    public static let width = 1...64
    public static let klSamples = 1...1000
    public static let epochs = 0...100_000
    public static let batchSize = 1...1024
    /// Synthetic volume edge (or Colin27 patch): even, from the smallest the encoder-decoder
    /// handles to 256³ (64 MiB per Float volume).
    public static let volumeSize = 8...256
    public static let volumes = 1...100_000
    public static let samples = 1...10_000
    public static let betaAnneal = 0...100_000
    public static let beta = 0.0...1e6
    /// All synthetic volumes are held in memory (image and label, 8 bytes per voxel): at most 2³⁰
    /// voxels (8 GiB) in all splits together.
    public static let datasetVoxels = 1 << 30
}

/// Range checks that produce `ConfigError`s.
public enum Check {
    public static func range(_ v: Int, _ r: ClosedRange<Int>, field: String, option: String, _ extra: String = "") throws {
        guard r.contains(v) else { throw ConfigError(field: field, option: option, value: "\(v)", allowed: "an integer from \(r.lowerBound) to \(r.upperBound)\(extra)") }
    }

    public static func range(_ v: Double, _ r: ClosedRange<Double>, field: String, option: String) throws {
        guard v.isFinite, r.contains(v) else { throw ConfigError(field: field, option: option, value: "\(v)", allowed: "a number from \(r.lowerBound) to \(r.upperBound)") }
    }

    public static func finite(_ values: [String: Double], field: String, option: String) throws {
        for (k, v) in values.sorted(by: { $0.key < $1.key }) where !v.isFinite {
            throw ConfigError(field: "\(field).\(k)", option: option, value: "\(k)=\(v)", allowed: "a finite number")
        }
    }

    /// Plugin ids: printable ASCII without spaces, at most 200 characters.
    public static func identifier(_ s: String, field: String, option: String) throws {
        guard !s.isEmpty, s.utf8.count <= 200, s.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigError(field: field, option: option, value: "\"\(StrictJSON.printable(s))\"", allowed: "a plugin id or short name of printable ASCII without spaces")
        }
    }
}

extension ModelConfig {
    /// Throws the first setting outside `ConfigLimits` (the CLI and checkpoint loading both call this).
    public func validate() throws {
        try Check.range(width, ConfigLimits.width, field: "width", option: "--width")
        try Check.range(klSamples, ConfigLimits.klSamples, field: "klSamples", option: "--kl-samples")
        guard Estimator(rawValue: estimator) != nil else {
            throw ConfigError(field: "estimator", option: "--estimator", value: StrictJSON.printable(estimator),
                              allowed: "one of " + Estimator.allCases.map(\.rawValue).joined(separator: ", "))
        }
        try Check.identifier(posterior, field: "posterior", option: "--posterior")
        try Check.identifier(prior, field: "prior", option: "--prior")
        try Check.finite(posteriorHyperparameters, field: "posteriorHyperparameters", option: "--posterior-hyper")
        try Check.finite(priorHyperparameters, field: "priorHyperparameters", option: "--prior-hyper")
        try Check.finite(priorParameters.mapValues(Double.init), field: "priorParameters", option: "--prior-param")
    }
}

extension TrainingConfig {
    /// Throws the first setting outside `ConfigLimits` (the CLI and checkpoint loading both call this).
    public func validate() throws {
        try Check.range(epochs, ConfigLimits.epochs, field: "epochs", option: "--epochs")
        try Check.range(batchSize, ConfigLimits.batchSize, field: "batchSize", option: "--batch-size")
        guard learningRate.isFinite, learningRate > 0, learningRate <= 1 else {
            throw ConfigError(field: "learningRate", option: "--lr", value: "\(learningRate)", allowed: "a number above 0 and at most 1")
        }
        if let s = positiveLearningRateScale, !(s.isFinite && s > 0 && s * learningRate <= 1) {
            throw ConfigError(field: "positiveLearningRateScale", option: "--positive-lr-scale", value: "\(s)", allowed: "a number above 0 with scale * --lr at most 1")
        }
        try Check.range(beta, ConfigLimits.beta, field: "beta", option: "--beta")
        try Check.range(betaAnnealEpochs, ConfigLimits.betaAnneal, field: "betaAnnealEpochs", option: "--beta-anneal")
        try Check.range(evaluationSamples, ConfigLimits.samples, field: "evaluationSamples", option: "--samples")
        guard ConfigLimits.volumeSize.contains(volumeSize), volumeSize % 2 == 0 else {
            throw ConfigError(field: "volumeSize", option: "--volume-size", value: "\(volumeSize)",
                              allowed: "an even number from \(ConfigLimits.volumeSize.lowerBound) to \(ConfigLimits.volumeSize.upperBound)")
        }
        try Check.range(trainVolumes, ConfigLimits.volumes, field: "trainVolumes", option: "--train-volumes")
        try Check.range(testVolumes, ConfigLimits.volumes, field: "testVolumes", option: "--test-volumes")
        try Check.range(validationVolumes, 0...ConfigLimits.volumes.upperBound, field: "validationVolumes", option: "--test-volumes")
        try Check.range(oodVolumes, 0...ConfigLimits.volumes.upperBound, field: "oodVolumes", option: "--test-volumes")
        let datasets = ["synthetic", "colin27"]
        guard datasets.contains(dataset) else {
            throw ConfigError(field: "dataset", option: "--dataset", value: StrictJSON.printable(dataset), allowed: "one of " + datasets.joined(separator: ", "))
        }
        // Bounded above, so no overflow: 4 × 100 000 volumes × 256³ voxels < 2⁶³.
        let voxels = (trainVolumes + validationVolumes + testVolumes + oodVolumes) * volumeSize * volumeSize * volumeSize
        guard voxels <= ConfigLimits.datasetVoxels else {
            throw ConfigError(field: "trainVolumes", option: "--train-volumes", value: "\(trainVolumes) (with --test-volumes \(testVolumes) and --volume-size \(volumeSize): \(voxels) voxels in memory)",
                              allowed: "small enough that all splits hold at most \(ConfigLimits.datasetVoxels) voxels")
        }
    }
}
