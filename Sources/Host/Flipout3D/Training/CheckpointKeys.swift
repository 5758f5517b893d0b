// The metadata keys of a Flipout3D checkpoint and the plugin fingerprints it pins.

/// Metadata keys of a Flipout3D checkpoint (all values are strings, as safetensors requires).
/// `Checkpoint.digestKey` and `Checkpoint.checksumKey` hold its integrity data.
public enum CheckpointKey {
    public static let format = "flipout3d.format"
    public static let model = "flipout3d.model"
    public static let training = "flipout3d.training"
    public static let epoch = "flipout3d.epoch"
    public static let adamStep = "flipout3d.adam_step"
    public static let plugins = "flipout3d.plugins"
    public static let estimator = "flipout3d.estimator"
    public static let seed = "flipout3d.seed"
    public static let learnedPrior = "flipout3d.learned_prior"
    /// Ranks that trained it (data-parallel; results depend on it only through summation order).
    public static let worldSize = "flipout3d.world_size"
}

/// The U-Net checkpoint's own metadata keys, beside `CheckpointKey`'s; `flipout3d.network` = "unet".
public enum UNetCheckpointKey {
    public static let network = "flipout3d.network"
    public static let unet = "flipout3d.unet"
    public static let patchTraining = "flipout3d.patch_training"
    /// The PreprocessingPlan as JSON (`PreprocessingPlan.jsonString()`), replayed by predict.
    public static let plan = "flipout3d.plan"
    /// "d,h,w" of the training patches.
    public static let patchSize = "flipout3d.patch_size"
}

/// The plugin a checkpoint was trained with, for refusing a silently changed `.so`.
public struct PluginFingerprint: Codable, Equatable, Sendable {
    public var role: String
    public var id: String
    public var version: String
    public var sha256: String
    public var file: String
    public var hyperparameters: [Double]
}
