// Saving and restoring a U-Net run: parameters, Adam state, the configs, the preprocessing plan and patch size, the plugins' fingerprints.
import Foundation

/// A U-Net checkpoint is a Flipout3D checkpoint (format 1, `CheckpointKey`) with these extra
/// metadata keys; `flipout3d.network` = "unet" tells it apart from the built-in binary network's.
public enum UNetCheckpointKey {
    public static let network = "flipout3d.network"
    public static let unet = "flipout3d.unet"
    public static let patchTraining = "flipout3d.patch_training"
    /// The PreprocessingPlan as JSON (`PreprocessingPlan.jsonString()`), replayed by predict.
    public static let plan = "flipout3d.plan"
    /// "d,h,w" of the training patches.
    public static let patchSize = "flipout3d.patch_size"
}

enum UNetCheckpoint {
    static func holdsUNet(_ c: Checkpoint) -> Bool { c.metadata[UNetCheckpointKey.network] == "unet" }

    static func save(trainer t: PatchTrainer, to path: String) throws {
        var c = try ModelCheckpoint.trainingState(t.model.trainable, optimizer: t.optimizer, flipoutLayers: t.model.flipoutLayers,
                                                  seed: t.training.seed, epoch: t.epochsDone, path: path)
        c.metadata[UNetCheckpointKey.network] = "unet"
        c.metadata[CheckpointKey.model] = try ModelCheckpoint.json(t.model.config)
        c.metadata[UNetCheckpointKey.unet] = try ModelCheckpoint.json(t.model.shape)
        c.metadata[CheckpointKey.training] = try ModelCheckpoint.json(t.training)
        c.metadata[UNetCheckpointKey.patchTraining] = try ModelCheckpoint.json(t.patch)
        c.metadata[UNetCheckpointKey.plan] = t.plan.jsonString()
        c.metadata[UNetCheckpointKey.patchSize] = t.patch.patchSize.map(String.init).joined(separator: ",")
        c.metadata[Postprocessing.checkpointKey] = try ModelCheckpoint.json(t.postprocessing)
        try c.write(to: path)
    }

    struct Loaded {
        let trained: TrainedModel
        let model: UNet
        let patch: PatchTrainingConfig
        let checkpoint: Checkpoint
    }

    /// Rebuilds the U-Net from a checkpoint, refusing changed plugins unless allowed.
    static func load(_ c: Checkpoint, path: String, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void) throws -> Loaded {
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        let d = JSONDecoder()
        func decode<T: Decodable>(_ key: String, _ type: T.Type) throws -> T {
            guard let text = c.metadata[key], let v = try? d.decode(T.self, from: Data(text.utf8)) else {
                throw bad("its \(key) metadata is missing or cannot be decoded. Was it written by `flipout train --data`?")
            }
            return v
        }
        guard c.metadata[CheckpointKey.format] == "1", let epoch = c.metadata[CheckpointKey.epoch].flatMap(Int.init) else {
            throw bad("it has no Flipout3D format or epoch metadata")
        }
        let config = try decode(CheckpointKey.model, ModelConfig.self)
        let shape = try decode(UNetCheckpointKey.unet, UNetConfig.self)
        let training = try decode(CheckpointKey.training, TrainingConfig.self)
        let patch = try decode(UNetCheckpointKey.patchTraining, PatchTrainingConfig.self)
        guard let planText = c.metadata[UNetCheckpointKey.plan], let plan = PreprocessingPlan(jsonString: planText) else {
            throw bad("its preprocessing plan (\(UNetCheckpointKey.plan)) is missing or cannot be decoded")
        }
        guard plan.classCount == shape.classCount, plan.channels.count == shape.inputChannels else {
            throw bad("its plan (\(plan.channels.count) channels, \(plan.classCount) classes) does not fit its network (\(shape.inputChannels), \(shape.classCount))")
        }
        if config.bayesian { try ModelCheckpoint.checkPlugins(c, registry: registry, allowPluginChange: allowPluginChange, log: log, path: path) }
        let model = try UNet(config, shape: shape, registry: registry, seed: training.seed)
        try ModelCheckpoint.restoreParameters(model.trainable, from: c, path: path)
        model.parametersChanged()
        let trained = TrainedModel(network: .unet(model), training: training, epochs: epoch, plan: plan, patchSize: patch.patchSize)
        return Loaded(trained: trained, model: model, patch: patch, checkpoint: c)
    }
}
