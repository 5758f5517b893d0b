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

    // The U-Net (`flipout train --data`) and what its checkpoint records.
    /// Resolution levels: 6 halves a 128-voxel patch down to 4 voxels at the bottleneck.
    public static let levels = 1...6
    /// nnU-Net caps 3D feature maps at 320 channels.
    public static let maxChannels = 1...320
    /// Input channels (modalities): MSD and BraTS cases have at most 4; 64 leaves room for multi-echo series.
    public static let inputChannels = 1...64
    /// Classes, background included: TotalSegmentator's 118 fit with room to spare.
    public static let classCount = 2...1000
    /// `last:N`: the U-Net has at most 4 × 6 − 1 = 23 convolutions; N beyond that means all of them.
    public static let lastLayers = 1...100
    /// A patch edge in voxels: the default plan caps patches at 128 (PatchSizePlan); 512³ floats
    /// are already 512 MiB per channel.
    public static let patchEdge = 1...512
    public static let stepsPerEpoch = 0...1_000_000
    public static let folds = 2...1000
    /// Voxels of all training cases (the N of the KL scale beta / N): at least one, at most 2⁴⁰.
    public static let trainingVoxels = 1...(1 << 40)
    /// Target spacing in mm: from high-resolution MRI (0.2 mm) to thick CT slices (10 mm), with margin.
    public static let spacing = 0.05...50.0
    /// Case ids and the dataset folder's path, in bytes.
    public static let textBytes = 1...4096
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
        let datasets = ["synthetic", "colin27", "folder"]
        guard datasets.contains(dataset) else {
            throw ConfigError(field: "dataset", option: "--dataset", value: StrictJSON.printable(dataset), allowed: "one of " + datasets.joined(separator: ", "))
        }
        // The built-in datasets' volumes; a dataset folder ("folder") has its own cases.
        guard dataset != "folder" else { return }
        guard ConfigLimits.volumeSize.contains(volumeSize), volumeSize % 2 == 0 else {
            throw ConfigError(field: "volumeSize", option: "--volume-size", value: "\(volumeSize)",
                              allowed: "an even number from \(ConfigLimits.volumeSize.lowerBound) to \(ConfigLimits.volumeSize.upperBound)")
        }
        try Check.range(trainVolumes, ConfigLimits.volumes, field: "trainVolumes", option: "--train-volumes")
        try Check.range(testVolumes, ConfigLimits.volumes, field: "testVolumes", option: "--test-volumes")
        try Check.range(validationVolumes, 0...ConfigLimits.volumes.upperBound, field: "validationVolumes", option: "--test-volumes")
        try Check.range(oodVolumes, 0...ConfigLimits.volumes.upperBound, field: "oodVolumes", option: "--test-volumes")
        // Bounded above, so no overflow: 4 × 100 000 volumes × 256³ voxels < 2⁶³.
        let voxels = (trainVolumes + validationVolumes + testVolumes + oodVolumes) * volumeSize * volumeSize * volumeSize
        guard voxels <= ConfigLimits.datasetVoxels else {
            throw ConfigError(field: "trainVolumes", option: "--train-volumes", value: "\(trainVolumes) (with --test-volumes \(testVolumes) and --volume-size \(volumeSize): \(voxels) voxels in memory)",
                              allowed: "small enough that all splits hold at most \(ConfigLimits.datasetVoxels) voxels")
        }
    }
}

extension UNetConfig {
    /// Throws the first setting outside `ConfigLimits` (`UNet.init` and checkpoint loading call this).
    public func validate() throws {
        try Check.range(levels, ConfigLimits.levels, field: "levels", option: "--levels")
        try Check.range(width, ConfigLimits.width, field: "width", option: "--width")
        try Check.range(maxChannels, ConfigLimits.maxChannels, field: "maxChannels", option: "(the channel cap)")
        try Check.range(inputChannels, ConfigLimits.inputChannels, field: "inputChannels", option: "(the dataset's channels)")
        try Check.range(classCount, ConfigLimits.classCount, field: "classCount", option: "(the dataset's classes)")
        if case .last(let n) = bayesianLayers {
            try Check.range(n, ConfigLimits.lastLayers, field: "bayesianLayers", option: "--bayesian-layers last:N")
        }
    }
}

extension PatchTrainingConfig {
    /// Throws the first setting outside `ConfigLimits` or unfit for `shape` (checkpoint loading and
    /// saving call this; the CLI checks the patch with `UNet.checkPatch`, the same rule).
    public func validate(shape: UNetConfig) throws {
        func text(_ s: String, field: String, option: String) throws {
            guard ConfigLimits.textBytes.contains(s.utf8.count), !s.utf8.contains(0) else {
                throw ConfigError(field: field, option: option, value: "\"\(StrictJSON.printable(String(s.prefix(80))))\"",
                                  allowed: "a non-empty text of at most \(ConfigLimits.textBytes.upperBound) bytes without NUL")
            }
        }
        try text(data, field: "data", option: "--data")
        do { try UNet.checkPatch(patchSize, shape: shape) } catch let e as LayerError {
            throw ConfigError(field: "patchSize", option: "--patch", value: "\(patchSize)", allowed: "three sizes, each a multiple of \(shape.sizeMultiple) from \(shape.sizeMultiple) to \(ConfigLimits.patchEdge.upperBound) (\(e))")
        }
        try Check.range(stepsPerEpoch, ConfigLimits.stepsPerEpoch, field: "stepsPerEpoch", option: "--steps-per-epoch")
        try Check.range(folds, ConfigLimits.folds, field: "folds", option: "--folds")
        guard let selection = FoldSelection(fold) else {
            throw ConfigError(field: "fold", option: "--fold", value: "\"\(StrictJSON.printable(fold))\"", allowed: "all or a fold index")
        }
        if case .fold(let k) = selection { try Check.range(k, 0...(folds - 1), field: "fold", option: "--fold") }
        guard !trainCases.isEmpty else {
            throw ConfigError(field: "trainCases", option: "--data", value: "[]", allowed: "at least one training case")
        }
        for id in trainCases + validationCases { try text(id, field: "trainCases", option: "--data") }
        try Check.range(trainingVoxels, ConfigLimits.trainingVoxels, field: "trainingVoxels", option: "--data")
        if let initFrom { try text(initFrom, field: "initFrom", option: "--init-from") }
        if let d = mopedDelta, !(d.isFinite && d > 0 && d <= 1e6) {
            throw ConfigError(field: "mopedDelta", option: "--moped-delta", value: "\(d)", allowed: "a positive number up to 1e6")
        }
    }
}

extension PreprocessingPlan {
    /// Throws the first entry outside `ConfigLimits` or inconsistent with the others (checkpoint
    /// loading and saving call this; `--spacing` takes the same range).
    public func validate() throws {
        guard orientation == "RAS" else {
            throw ConfigError(field: "plan.orientation", option: "(the plan)", value: "\"\(StrictJSON.printable(orientation))\"", allowed: "RAS")
        }
        guard spacing.count == 3, spacing.allSatisfy({ $0.isFinite && ConfigLimits.spacing.contains($0) }) else {
            throw ConfigError(field: "plan.spacing", option: "--spacing", value: "\(spacing)",
                              allowed: "three spacings in mm, each from \(ConfigLimits.spacing.lowerBound) to \(ConfigLimits.spacing.upperBound)")
        }
        try Check.range(channels.count, ConfigLimits.inputChannels, field: "plan.channels", option: "(the dataset's channels)")
        guard channelNames.count == channels.count else {
            throw ConfigError(field: "plan.channelNames", option: "(the dataset's channels)", value: "\(channelNames.count) names",
                              allowed: "one name per channel (\(channels.count))")
        }
        for (name, n) in zip(channelNames, channels) {
            let (values, std): ([Double], Double)
            switch n {
            case .zScore(let mean, let s): (values, std) = ([mean, s], s)
            case .ct(let lo, let hi, let mean, let s):
                (values, std) = ([lo, hi, mean, s], s)
                guard lo <= hi else {
                    throw ConfigError(field: "plan.channels", option: "(the plan)", value: "clip [\(lo), \(hi)] of channel \(StrictJSON.printable(name))", allowed: "a clip range with low <= high")
                }
            case .zScorePerImage: continue   // statistics come from each image
            }
            guard values.allSatisfy({ $0.isFinite && abs($0) <= 1e12 }), std > 0 else {
                throw ConfigError(field: "plan.channels", option: "(the plan)", value: "\(values) for channel \(StrictJSON.printable(name))",
                                  allowed: "finite statistics (|x| <= 1e12) with a positive standard deviation")
            }
        }
        try Check.range(classCount, ConfigLimits.classCount, field: "plan.classCount", option: "(the dataset's classes)")
        for (name, index) in labels.sorted(by: { $0.key < $1.key }) where !(0..<classCount).contains(index) {
            throw ConfigError(field: "plan.labels", option: "(the dataset's labels)", value: "\(StrictJSON.printable(name))=\(index)", allowed: "class indices from 0 to \(classCount - 1)")
        }
        try validateLabelScheme()
    }
}
