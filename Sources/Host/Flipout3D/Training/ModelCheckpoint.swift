// Saving and restoring a run: parameters, Adam state, configs, and the plugins' ids, versions and SHA-256.
import Foundation

// CheckpointKey and PluginFingerprint: Training/CheckpointKeys.swift.

enum ModelCheckpoint {

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

    /// Writes the run's state beside the previous checkpoint and renames it over (atomic). Refuses
    /// (keeping the previous checkpoint) when any weight or optimizer value is not finite.
    static func save(model: SegmentationNet, optimizer: Adam, training: TrainingConfig, epoch: Int, worldSize: Int = 1, to path: String) throws {
        var c = try trainingState(model.trainable, optimizer: optimizer, flipoutLayers: model.flipoutLayers,
                                  seed: training.seed, epoch: epoch, path: path)
        c.metadata[CheckpointKey.model] = try json(model.config)
        c.metadata[CheckpointKey.training] = try json(training)
        c.metadata[CheckpointKey.worldSize] = String(worldSize)
        if model.config.learnPrior, let l = model.flipoutLayers.first {
            c.metadata[CheckpointKey.learnedPrior] = l.weights.priorValues.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        }
        try c.write(to: path)
    }

    /// What every run's checkpoint holds, whatever the network: its parameters and Adam state (refused
    /// when not finite, so the previous epoch's checkpoint is kept), format, epoch, Adam step, plugin
    /// pins, estimator and seed. Callers add their configs and write it.
    static func trainingState(_ trainable: [NamedParameter], optimizer: Adam, flipoutLayers: [FlipoutConv3D],
                              seed: UInt64, epoch: Int, path: String) throws -> Checkpoint {
        for p in trainable {
            if let i = p.value.buffer.firstIndex(where: { !$0.isFinite }) {
                throw LayerError.nonFinite("epoch \(epoch): parameter \(p.name) became \(p.value.data[i]) at index \(i); the checkpoint \(path) of the previous epoch is kept. Lower --lr or check the prior's parameters.")
            }
        }
        for (k, p) in optimizer.parameters.enumerated() {
            for (kind, t) in [("m", optimizer.m[k]), ("v", optimizer.v[k])] where !t.buffer.allSatisfy(\.isFinite) {
                throw LayerError.nonFinite("epoch \(epoch): Adam state \(kind) of \(p.name) is not finite; the checkpoint \(path) of the previous epoch is kept. Lower --lr.")
            }
        }
        var c = Checkpoint()
        for p in trainable { c.tensors.append((p.name, p.value)) }
        for (k, p) in optimizer.parameters.enumerated() {
            c.tensors.append(("adam.m.\(p.name)", optimizer.m[k]))
            c.tensors.append(("adam.v.\(p.name)", optimizer.v[k]))
        }
        c.metadata[CheckpointKey.format] = "1"
        c.metadata[CheckpointKey.epoch] = String(epoch)
        c.metadata[CheckpointKey.adamStep] = String(optimizer.step)
        c.metadata[CheckpointKey.plugins] = try json(fingerprints(flipoutLayers))
        c.metadata[CheckpointKey.estimator] = flipoutLayers.first.map { $0.estimator.rawValue } ?? "deterministic"
        c.metadata[CheckpointKey.seed] = String(seed)
        return c
    }

    struct Loaded {
        let model: SegmentationNet
        let training: TrainingConfig
        let epoch: Int
        let checkpoint: Checkpoint
    }

    /// Rebuilds the model from a checkpoint: the file is read by the safetensors rules and its
    /// checksums verified (`Checkpoint.read`), its model and training configuration checked by the
    /// same rules as the command line (`validate()`), and its plugin pins compared with the loaded
    /// plugins. Missing or unreadable pins, or a changed plugin, are refused unless `allowPluginChange`.
    static func load(_ path: String, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void) throws -> Loaded {
        let c = try Checkpoint.read(path)
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        guard !UNetCheckpoint.holdsUNet(c) else {
            throw bad("it holds a U-Net trained on a dataset folder; resume it with `flipout train --resume` (which reads the dataset folder it records)")
        }
        guard c.metadata[CheckpointKey.format] == "1",
              let modelJSON = c.metadata[CheckpointKey.model], let trainingJSON = c.metadata[CheckpointKey.training],
              let epochText = c.metadata[CheckpointKey.epoch] else {
            throw bad("it has no Flipout3D metadata (format, model, training, epoch). Was it written by `flipout train`?")
        }
        guard c.hasChecksums else {
            throw bad("it has no tensor checksums (metadata \(Checkpoint.checksumKey)), so damaged weights could not be detected. Was it written by `flipout train`?")
        }
        let d = JSONDecoder()
        func decode<T: Decodable>(_ type: T.Type, _ text: String, _ key: String) throws -> T {
            // Strict first: duplicate keys, a BOM or trailing bytes are refused, as in the file header.
            do { _ = try StrictJSON.parse(Array(text.utf8)) } catch { throw bad("metadata \(key) is not valid JSON: \(error)") }
            do { return try d.decode(T.self, from: Data(text.utf8)) } catch { throw bad("metadata \(key) cannot be decoded: \(error)") }
        }
        let config = try decode(ModelConfig.self, modelJSON, CheckpointKey.model)
        let training = try decode(TrainingConfig.self, trainingJSON, CheckpointKey.training)
        do { try config.validate(); try training.validate() } catch let e as ConfigError {
            throw bad("its stored configuration is invalid: \(e.storedDescription)")
        }
        guard let epoch = Int(epochText), (0...training.epochs).contains(epoch) else {
            throw bad("metadata \(CheckpointKey.epoch) is \"\(StrictJSON.printable(epochText))\"; it must be a whole number from 0 to the run's \(training.epochs) epochs")
        }
        if config.bayesian {
            try checkPlugins(c.metadata[CheckpointKey.plugins], registry: registry, allowPluginChange: allowPluginChange, bad: bad, log: log)
        }
        let model: SegmentationNet
        do { model = try SegmentationNet(config, registry: registry, seed: training.seed) } catch let e as LayerError {
            throw bad("its model configuration cannot be built: \(e)")
        }
        try restoreParameters(model.trainable, from: c, path: path)
        model.parametersChanged()
        return Loaded(model: model, training: training, epoch: epoch, checkpoint: c)
    }

    /// The plugin pins of checkpoint `c` (see the overload below), for callers holding a path.
    static func checkPlugins(_ c: Checkpoint, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void, path: String) throws {
        try checkPlugins(c.metadata[CheckpointKey.plugins], registry: registry, allowPluginChange: allowPluginChange,
                         bad: { CheckpointError(path: path, reason: $0) }, log: log)
    }

    /// Copies every parameter's values from the checkpoint, refusing missing or misshapen tensors
    /// (non-finite values were refused when the file was read).
    static func restoreParameters(_ parameters: [NamedParameter], from c: Checkpoint, path: String) throws {
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        for p in parameters {
            guard let t = c.tensor(p.name) else { throw bad("it lacks the tensor \(p.name) that this model needs") }
            guard t.shape == p.value.shape else { throw bad("tensor \(p.name) has shape \(t.shape), the model needs \(p.value.shape)") }
            p.value.data.update(from: t.data, count: t.count)
        }
    }

    /// The plugin pins (`flipout3d.plugins`): required, a JSON list naming the posterior and the
    /// prior, each matching the loaded plugin's SHA-256, unless `allowPluginChange`.
    static func checkPlugins(_ text: String?, registry: PluginRegistry, allowPluginChange: Bool,
                             bad: (String) -> CheckpointError, log: (String) -> Void) throws {
        func refuse(_ message: String) throws {
            if !allowPluginChange { throw bad(message + " Pass --allow-plugin-change to use the plugins loaded now anyway.") }
            log("warning: " + message + " Continuing because of --allow-plugin-change.")
        }
        guard let text, !text.isEmpty else {
            return try refuse("it has no plugin pins (metadata \(CheckpointKey.plugins)), so the plugins it was trained with cannot be checked.")
        }
        let prints: [PluginFingerprint]
        do {
            _ = try StrictJSON.parse(Array(text.utf8))
            prints = try JSONDecoder().decode([PluginFingerprint].self, from: Data(text.utf8))
        } catch {
            return try refuse("its plugin pins (metadata \(CheckpointKey.plugins)) are not a valid list of plugin fingerprints.")
        }
        guard Set(prints.map(\.role)) == ["posterior", "prior"], prints.count == 2 else {
            return try refuse("its plugin pins (metadata \(CheckpointKey.plugins)) do not name one posterior and one prior.")
        }
        for p in prints {
            let family = try registry.family(p.id)
            if family.library.sha256 != p.sha256 {
                try refuse("the \(p.role) plugin \(StrictJSON.printable(p.id)) changed since training: \(family.file) has SHA-256 \(family.library.sha256.prefix(16))…, the checkpoint recorded \(StrictJSON.printable(String(p.sha256.prefix(16))))… (\(StrictJSON.printable(p.file)), version \(StrictJSON.printable(p.version))). Load the original plugin with --plugin, or")
            }
        }
    }

    static func restoreOptimizer(_ optimizer: Adam, from c: Checkpoint, path: String) throws {
        for (k, p) in optimizer.parameters.enumerated() {
            guard let m = c.tensor("adam.m.\(p.name)"), let v = c.tensor("adam.v.\(p.name)"), m.shape == p.value.shape, v.shape == p.value.shape else {
                throw CheckpointError(path: path, reason: "it lacks Adam state for \(p.name) of shape \(p.value.shape), so the run cannot be resumed exactly")
            }
            if let i = v.buffer.firstIndex(where: { $0 < 0 }) {
                throw CheckpointError(path: path, reason: "tensor adam.v.\(p.name) holds \(v.data[i]) at index \(i); Adam's second moments cannot be negative")
            }
            optimizer.m[k].data.update(from: m.data, count: m.count)
            optimizer.v[k].data.update(from: v.data, count: v.count)
        }
        guard let text = c.metadata[CheckpointKey.adamStep], let step = Int(text), step >= 0 else {
            throw CheckpointError(path: path, reason: "metadata \(CheckpointKey.adamStep) is \(c.metadata[CheckpointKey.adamStep].map { "\"\(StrictJSON.printable($0))\"" } ?? "missing"); it must be the optimizer's step count, so the run cannot be resumed exactly")
        }
        optimizer.step = step
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
