// Everything a training run needs besides the model: data, optimizer, ELBO weighting, seed.

public struct TrainingConfig: Codable, Equatable, Sendable {
    public var seed: UInt64 = 1
    public var epochs: Int = 30
    public var batchSize: Int = 4
    public var learningRate: Float = 3e-3
    /// Weight of the KL term; annealed linearly from 0 over `betaAnnealEpochs` epochs (0: no annealing).
    public var beta: Double = 1
    public var betaAnnealEpochs: Int = 0
    /// Monte Carlo forward passes per volume when evaluating.
    public var evaluationSamples: Int = 8
    /// Synthetic data: volume side and volumes per split.
    public var volumeSize: Int = 32
    public var trainVolumes: Int = 48
    public var validationVolumes: Int = 8
    public var testVolumes: Int = 12
    public var oodVolumes: Int = 12
    /// "synthetic" (the embedded default) or "colin27" (Colin27 T1 brain extraction, 2 mm).
    public var dataset: String = "synthetic"
    /// U-Net (--data): the learning-rate multiplier of positive-support (e.g. Beta) posterior
    /// parameters; nil: `PositiveWeightPolicy.learningRateScale`. Optional so older checkpoints decode.
    public var positiveLearningRateScale: Float? = nil

    public init() {}

    /// beta for an epoch (0-based) under linear annealing.
    public func beta(epoch: Int) -> Double {
        betaAnnealEpochs > 0 ? beta * min(1, Double(epoch + 1) / Double(betaAnnealEpochs)) : beta
    }
}

/// The defaults of `flipout train --data` (the U-Net on patches), which differ from the binary
/// trainer's (`TrainingConfig`). Measured on the exported synthetic folder (32 cases, 16 steps per
/// epoch), Normal/Normal, seeds 1-3 (docs/setups.md): 30 epochs at 3e-3 gave test Dice
/// 0.818 ± 0.054 with the Dice loss still falling fast at epoch 30; 60 epochs at 1e-2 give
/// 0.851 ± 0.017.
public enum FolderTrainingDefaults {
    public static let epochs = 60
    public static let learningRate: Float = 1e-2
    /// Steps per epoch whatever the dataset size (nnU-Net: 250 iterations per epoch, 1000 epochs,
    /// on a GPU). CPU-sized: the budget measured above on the synthetic folder (32 cases at batch 2
    /// = 16 steps per epoch, 60 epochs, 960 steps), now fixed, so a one-case dataset gets 960 steps
    /// instead of 60 (one patch per case per epoch starved it: Colin27 reached Dice 0.25).
    public static let stepsPerEpoch = 16
}

/// How fast a positive-support posterior learns. Its parameters are stored as logarithms (Beta's
/// log alpha, log beta), so an Adam step of lr changes a weight's mean by about lr of its size;
/// a Normal location's step of lr is an absolute one, lr / |mu| of its size: about 6.5 % for a
/// first U-Net layer (He-normal sd sqrt(2/54) = 0.19, E|mu| = 0.15) against 1 % for Beta.
/// Measured (docs/positive-weights.md, Beta/Gamma on the first layer of the U-Net, exported
/// synthetic folder, seeds 1-3): test Dice 0.797 ± 0.051 at 1 × lr, 0.829 ± 0.013 at 5 × lr,
/// against 0.851 ± 0.017 for Normal/Normal.
public enum PositiveWeightPolicy {
    public static let learningRateScale: Float = 5

    /// Per parameter of `parameters` (an optimizer's order): `scale` for the posterior parameters
    /// of the positive-support Flipout layers in `layers`, 1 for everything else.
    public static func learningRateScales(_ parameters: [NamedParameter], layers: [ConvLayer], scale: Float) -> [Float] {
        let positive = layers.compactMap { $0 as? FlipoutConv3D }.filter { $0.weights.posterior.family.capabilities.contains(.positiveSupport) }
        let ids = Set(positive.flatMap { $0.weights.parameters.map(ObjectIdentifier.init) })
        return parameters.map { ids.contains(ObjectIdentifier($0.value)) ? scale : 1 }
    }
}

/// What training on a dataset folder adds to `TrainingConfig`: the folder, the patches, the fold, and
/// the scale of the ELBO's KL term. Recorded in the checkpoint beside the preprocessing plan.
public struct PatchTrainingConfig: Codable, Equatable, Sendable {
    /// The dataset folder (nnU-Net v2 / MSD layout).
    public var data: String = ""
    /// (d, h, w) of every training patch, a multiple of 2^(levels − 1) on each axis.
    public var patchSize: [Int] = [32, 32, 32]
    /// Optimizer steps per epoch; each takes `batchSize` patches, one per case in a shuffled cycle
    /// over the training cases. 0 means one pass over the cases: ceil(cases / batch size).
    public var stepsPerEpoch: Int = 0
    /// "all" or a fold index (`FoldSelection`), and the fold count of splits.json.
    public var fold: String = "all"
    public var folds: Int = 5
    /// Case ids trained on and validated on.
    public var trainCases: [String] = []
    public var validationCases: [String] = []
    /// Voxels of all training cases on the prepared grid: the N of the KL scale beta / N (ELBO.swift).
    public var trainingVoxels: Int = 0
    /// MOPED initialisation (`--init-from`): the deterministic checkpoint and delta, if used.
    public var initFrom: String?
    public var mopedDelta: Double?
    /// On-the-fly augmentation (`--augmentation`); nil (runs recorded before it existed): none.
    public var augmentation: AugmentationSettings?
    /// The learning rate per epoch; nil (runs recorded before schedules existed): constant.
    public var learningRateSchedule: LearningRateSchedule?

    public init() {}
}
