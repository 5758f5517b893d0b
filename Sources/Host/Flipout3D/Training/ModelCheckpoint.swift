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
    static func fingerprints(_ model: SegmentationNet) -> [PluginFingerprint] {
        guard let layer = model.flipoutLayers.first else { return [] }
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
        if config.bayesian {
            let prints = (try? d.decode([PluginFingerprint].self, from: Data((c.metadata[CheckpointKey.plugins] ?? "[]").utf8))) ?? []
            for p in prints {
                let family = try registry.family(p.id)
                if family.library.sha256 != p.sha256 {
                    let message = "the \(p.role) plugin \(p.id) changed since training: \(family.file) has SHA-256 \(family.library.sha256.prefix(16))…, the checkpoint recorded \(p.sha256.prefix(16))… (\(p.file), version \(p.version))."
                    if !allowPluginChange { throw bad(message + " Load the original plugin with --plugin, or pass --allow-plugin-change to use this one anyway.") }
                    log("warning: " + message + " Continuing because of --allow-plugin-change.")
                }
            }
        }
        let model = try SegmentationNet(config, registry: registry, seed: training.seed)
        for p in model.trainable {
            guard let t = c.tensor(p.name) else { throw bad("it lacks the tensor \(p.name) that this model needs") }
            guard t.shape == p.value.shape else { throw bad("tensor \(p.name) has shape \(t.shape), the model needs \(p.value.shape)") }
            for i in 0..<t.count where !t.data[i].isFinite { throw bad("tensor \(p.name) holds \(t.data[i]) at index \(i)") }
            p.value.data.update(from: t.data, count: t.count)
        }
        model.parametersChanged()
        return Loaded(model: model, training: training, epoch: epoch, checkpoint: c)
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

/// A trained network read back from a checkpoint, with the configuration it was trained under.
public struct TrainedModel {
    public let model: SegmentationNet
    public let training: TrainingConfig
    public let epochs: Int

    /// Refuses a checkpoint whose plugins' SHA-256 changed unless `allowPluginChange`.
    public static func load(_ path: String, registry: PluginRegistry, allowPluginChange: Bool = false,
                            log: (String) -> Void = { _ in }) throws -> TrainedModel {
        let l = try ModelCheckpoint.load(path, registry: registry, allowPluginChange: allowPluginChange, log: log)
        return TrainedModel(model: l.model, training: l.training, epochs: l.epoch)
    }
}
