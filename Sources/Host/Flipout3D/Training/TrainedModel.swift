// A trained U-Net read back from a checkpoint, with its training configuration, preprocessing plan and patch size (contract C3).

/// A trained network read back from a checkpoint, with the configuration it was trained under
/// and the preprocessing its inputs need (contract C3).
public struct TrainedModel {
    public enum Network {
        /// A U-Net trained on a dataset folder (`flipout train`), the one network the tool trains.
        case unet(UNet)
    }
    public let network: Network
    public let training: TrainingConfig
    public let epochs: Int
    /// What preprocessing turns a source case into the network's input.
    public let plan: PreprocessingPlan
    /// (d, h, w) of the training patches.
    public let patchSize: [Int]

    public var model: UNet {
        switch network { case .unet(let u): return u }
    }

    /// x (N, C, D, H, W) -> softmax probabilities (N, K, D, H, W), or one sigmoid per region for a
    /// region-based plan (N, R, D, H, W); one Monte Carlo draw per call (ctx keys it).
    public func probabilities(_ x: Tensor, _ ctx: StepContext) throws -> Tensor {
        try plan.activation.probabilities(model, x, ctx)
    }

    /// Refuses a checkpoint whose plugins' SHA-256 changed unless `allowPluginChange`.
    public static func load(_ path: String, registry: PluginRegistry, allowPluginChange: Bool = false,
                            log: (String) -> Void = { _ in }) throws -> TrainedModel {
        let c = try Checkpoint.read(path)
        guard UNetCheckpoint.holdsUNet(c) else {
            throw CheckpointError(path: path, reason: "it holds no U-Net (metadata \(UNetCheckpointKey.network) is not \"unet\"); Flipout3D reads the checkpoints of `flipout train`")
        }
        return try UNetCheckpoint.load(c, path: path, registry: registry, allowPluginChange: allowPluginChange, log: log).trained
    }
}
