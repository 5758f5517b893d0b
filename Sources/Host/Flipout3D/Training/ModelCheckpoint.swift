// Saving and restoring a run: parameters, Adam state, configs, and the plugins' ids, versions and SHA-256.
import Foundation

/// Metadata keys of a Flipout3D checkpoint (all values are strings, as safetensors requires).
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

/// The plugin a checkpoint was trained with, for refusing a silently changed `.so`.
public struct PluginFingerprint: Codable, Equatable, Sendable {
    public var role: String
    public var id: String
    public var version: String
    public var sha256: String
    public var file: String
    public var hyperparameters: [Double]
}

enum ModelCheckpoint {
    static func fingerprints(_ model: SegmentationNet) -> [PluginFingerprint] { fingerprints(model.flipoutLayers) }

    static func fingerprints(_ flipoutLayers: [FlipoutConv3D]) -> [PluginFingerprint] {
        guard let layer = flipoutLayers.first else { return [] }
        return [("posterior", layer.weights.posterior), ("prior", layer.weights.prior)].map { role, d in
            PluginFingerprint(role: role, id: d.family.id, version: d.family.version, sha256: d.family.library.sha256,
                              file: d.family.file, hyperparameters: d.hyperparameters)
        }
    }

    static func json<T: Encodable>(_ v: T) throws -> String {
        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
        return String(decoding: try e.encode(v), as: UTF8.self)
    }

    static func save(model: SegmentationNet, optimizer: Adam, training: TrainingConfig, epoch: Int, worldSize: Int = 1, to path: String) throws {
        var c = Checkpoint()
        for p in model.trainable { c.tensors.append((p.name, p.value)) }
        for (k, p) in optimizer.parameters.enumerated() {
            c.tensors.append(("adam.m.\(p.name)", optimizer.m[k]))
            c.tensors.append(("adam.v.\(p.name)", optimizer.v[k]))
        }
        c.metadata[CheckpointKey.format] = "1"
        c.metadata[CheckpointKey.model] = try json(model.config)
        c.metadata[CheckpointKey.training] = try json(training)
        c.metadata[CheckpointKey.epoch] = String(epoch)
        c.metadata[CheckpointKey.adamStep] = String(optimizer.step)
        c.metadata[CheckpointKey.plugins] = try json(fingerprints(model))
        c.metadata[CheckpointKey.estimator] = model.flipoutLayers.first.map { $0.estimator.rawValue } ?? "deterministic"
        c.metadata[CheckpointKey.seed] = String(training.seed)
        c.metadata[CheckpointKey.worldSize] = String(worldSize)
        if model.config.learnPrior, let l = model.flipoutLayers.first {
            c.metadata[CheckpointKey.learnedPrior] = l.weights.priorValues.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        }
        try c.write(to: path)
    }

    struct Loaded {
        let model: SegmentationNet
        let training: TrainingConfig
        let epoch: Int
        let checkpoint: Checkpoint
    }

    /// Rebuilds the model from a checkpoint, refusing changed plugins unless allowed.
    static func load(_ path: String, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void) throws -> Loaded {
        let c = try Checkpoint.read(path)
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        guard !UNetCheckpoint.holdsUNet(c) else {
            throw bad("it holds a U-Net trained on a dataset folder; resume it with `flipout train --resume` (which reads the dataset folder it records)")
        }
        guard c.metadata[CheckpointKey.format] == "1",
              let modelJSON = c.metadata[CheckpointKey.model], let trainingJSON = c.metadata[CheckpointKey.training],
              let epoch = c.metadata[CheckpointKey.epoch].flatMap(Int.init) else {
            throw bad("it has no Flipout3D metadata (format, model, training, epoch). Was it written by `flipout train`?")
        }
        let d = JSONDecoder()
        guard let config = try? d.decode(ModelConfig.self, from: Data(modelJSON.utf8)),
              let training = try? d.decode(TrainingConfig.self, from: Data(trainingJSON.utf8)) else {
            throw bad("its model or training configuration cannot be decoded")
        }
        if config.bayesian { try checkPlugins(c, registry: registry, allowPluginChange: allowPluginChange, log: log, path: path) }
        let model = try SegmentationNet(config, registry: registry, seed: training.seed)
        try restoreParameters(model.trainable, from: c, path: path)
        model.parametersChanged()
        return Loaded(model: model, training: training, epoch: epoch, checkpoint: c)
    }

    /// Refuses plugins whose SHA-256 changed since the checkpoint was written, unless allowed.
    static func checkPlugins(_ c: Checkpoint, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void, path: String) throws {
        let prints = (try? JSONDecoder().decode([PluginFingerprint].self, from: Data((c.metadata[CheckpointKey.plugins] ?? "[]").utf8))) ?? []
        for p in prints {
            let family = try registry.family(p.id)
            if family.library.sha256 != p.sha256 {
                let message = "the \(p.role) plugin \(p.id) changed since training: \(family.file) has SHA-256 \(family.library.sha256.prefix(16))…, the checkpoint recorded \(p.sha256.prefix(16))… (\(p.file), version \(p.version))."
                if !allowPluginChange { throw CheckpointError(path: path, reason: message + " Load the original plugin with --plugin, or pass --allow-plugin-change to use this one anyway.") }
                log("warning: " + message + " Continuing because of --allow-plugin-change.")
            }
        }
    }

    /// Copies every parameter's values from the checkpoint, refusing missing, misshapen or non-finite tensors.
    static func restoreParameters(_ parameters: [NamedParameter], from c: Checkpoint, path: String) throws {
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        for p in parameters {
            guard let t = c.tensor(p.name) else { throw bad("it lacks the tensor \(p.name) that this model needs") }
            guard t.shape == p.value.shape else { throw bad("tensor \(p.name) has shape \(t.shape), the model needs \(p.value.shape)") }
            for i in 0..<t.count where !t.data[i].isFinite { throw bad("tensor \(p.name) holds \(t.data[i]) at index \(i)") }
            p.value.data.update(from: t.data, count: t.count)
        }
    }

    static func restoreOptimizer(_ optimizer: Adam, from c: Checkpoint, path: String) throws {
        for (k, p) in optimizer.parameters.enumerated() {
            guard let m = c.tensor("adam.m.\(p.name)"), let v = c.tensor("adam.v.\(p.name)"), m.count == p.value.count, v.count == p.value.count else {
                throw CheckpointError(path: path, reason: "it lacks Adam state for \(p.name), so the run cannot be resumed exactly")
            }
            optimizer.m[k].data.update(from: m.data, count: m.count)
            optimizer.v[k].data.update(from: v.data, count: v.count)
        }
        optimizer.step = c.metadata[CheckpointKey.adamStep].flatMap(Int.init) ?? 0
    }
}

/// A trained network read back from a checkpoint, with the configuration it was trained under
/// and the preprocessing its inputs need (contract C3).
public struct TrainedModel {
    public enum Network {
        /// The built-in binary network (sigmoid output; K = 2 through `probabilities`).
        case binary(SegmentationNet)
        /// A U-Net trained on a dataset folder (`flipout train --data`).
        case unet(UNet)
    }
    public let network: Network
    public let training: TrainingConfig
    public let epochs: Int
    /// What preprocessing turns a source case into the network's input. For built-in binary
    /// checkpoints: one channel, already normalised, classes background/foreground, 1 mm.
    public let plan: PreprocessingPlan
    /// (d, h, w) of the training patches (the binary model's training volumes).
    public let patchSize: [Int]

    /// The built-in binary network; a U-Net checkpoint is refused with what to do instead.
    public func binaryModel() throws -> SegmentationNet {
        guard case .binary(let m) = network else {
            throw LayerError.invalidConfiguration("this checkpoint holds a \(plan.classCount)-class U-Net trained on a dataset folder; this path takes the built-in binary network (a checkpoint of `flipout train` without --data).")
        }
        return m
    }

    /// x (N, C, D, H, W) -> softmax probabilities (N, K, D, H, W); one Monte Carlo draw per call (ctx keys it).
    /// The binary network's sigmoid σ(z) gives K = 2: (1 − σ(z), σ(z)).
    public func probabilities(_ x: Tensor, _ ctx: StepContext) throws -> Tensor {
        switch network {
        case .unet(let u):
            return try u.probabilities(x, ctx)
        case .binary(let m):
            let z = try m.forward(x, ctx).logits // (N, 1, D, H, W)
            let v = z.count / z.shape[0]
            let p = Tensor(uninitializedShape: [z.shape[0], 2] + z.shape[2...])
            for n in 0..<z.shape[0] { for i in 0..<v {
                let s = ELBO.sigmoid(z.data[n * v + i])
                p.data[2 * n * v + i] = 1 - s
                p.data[(2 * n + 1) * v + i] = s
            } }
            return p
        }
    }

    /// Refuses a checkpoint whose plugins' SHA-256 changed unless `allowPluginChange`.
    public static func load(_ path: String, registry: PluginRegistry, allowPluginChange: Bool = false,
                            log: (String) -> Void = { _ in }) throws -> TrainedModel {
        let c = try Checkpoint.read(path)
        if UNetCheckpoint.holdsUNet(c) { return try UNetCheckpoint.load(c, path: path, registry: registry, allowPluginChange: allowPluginChange, log: log).trained }
        let l = try ModelCheckpoint.load(path, registry: registry, allowPluginChange: allowPluginChange, log: log)
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["image"], channels: [.zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "foreground": 1], classCount: 2)
        return TrainedModel(network: .binary(l.model), training: l.training, epochs: l.epoch, plan: plan,
                            patchSize: [l.training.volumeSize, l.training.volumeSize, l.training.volumeSize])
    }
}
