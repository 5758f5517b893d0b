// Saving and loading a U-Net run: one writer and one loader with one set of checks (digest, configs, plan, pins, tensors).
import Foundation

/// The U-Net checkpoint: a `Checkpoint` (safetensors, content digest) whose metadata holds
/// `CheckpointKey.format` = `formatVersion`, the epoch, Adam's step, the seed, the plugin pins, the
/// model, U-Net, training and patch-training configurations, the preprocessing plan and the patch
/// size; its tensors are every trainable parameter and Adam's two moments of each (`adam.m.NAME`,
/// `adam.v.NAME`).
///
/// `load` is the only way a checkpoint becomes a network, for every command (predict, evaluate,
/// bench, train --resume, --init-from). It refuses, with a `CheckpointError` (exit 65) naming what
/// failed: a file without a matching content digest (`Checkpoint.decode`); metadata that is
/// missing, not strict JSON or not decodable; any configuration or plan value outside the rules
/// the command line uses (`ConfigValidation.swift`); an epoch outside 0...epochs; a plan that does
/// not fit the network; plugin pins that are not exactly the configuration's posterior and prior
/// (none for a network without Flipout layers); a plugin whose SHA-256 changed (unless
/// `allowPluginChange`); a missing, extra or misshapen tensor; negative second moments. `save`
/// runs the same checks on what it is about to write, so every checkpoint the tool writes loads.
public enum UNetCheckpoint {
    /// `CheckpointKey.format` of this layout.
    public static let formatVersion = "2"
    /// Largest Adam step count accepted (100 000 epochs of 1 000 000 steps, `ConfigLimits`).
    static let maxAdamStep = 100_000 * 1_000_000

    static func holdsUNet(_ c: Checkpoint) -> Bool { c.metadata[UNetCheckpointKey.network] == "unet" }

    static func json<T: Encodable>(_ v: T) throws -> String {
        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
        return String(decoding: try e.encode(v), as: UTF8.self)
    }

    /// The posterior and prior of the first Flipout layer (every other one uses them or Normal/Normal).
    static func fingerprints(_ flipoutLayers: [FlipoutConv3D]) -> [PluginFingerprint] {
        guard let layer = flipoutLayers.first else { return [] }
        return [("posterior", layer.weights.posterior), ("prior", layer.weights.prior)].map { role, d in
            PluginFingerprint(role: role, id: d.family.id, version: d.family.version, sha256: d.family.library.sha256,
                              file: d.family.file, hyperparameters: d.hyperparameters)
        }
    }

    /// Writes the trainer's state atomically to `path` (the previous checkpoint stays until the new
    /// one is complete). Refuses, keeping the previous checkpoint, when any weight or optimizer
    /// value is not finite or the state would not pass `load`'s checks. `extraMetadata` adds keys
    /// (e.g. `CheckpointKey.worldSize`); it cannot replace the keys written here.
    static func save(trainer t: PatchTrainer, to path: String, extraMetadata: [String: String] = [:]) throws {
        var extra = extraMetadata
        // The post-processing decided on the validation cases (nil before the last epoch), applied by predict.
        extra[Postprocessing.checkpointKey] = try json(t.postprocessing)
        let c = try checkpoint(model: t.model, optimizer: t.optimizer, training: t.training, patch: t.patch, plan: t.plan,
                               epoch: t.epochsDone, path: path, extraMetadata: extra)
        try c.write(to: path)
    }

    /// The checkpoint of a U-Net run's state, checked as `load` checks it.
    static func checkpoint(model: UNet, optimizer: Adam, training: TrainingConfig, patch: PatchTrainingConfig, plan: PreprocessingPlan,
                           epoch: Int, path: String, extraMetadata: [String: String] = [:]) throws -> Checkpoint {
        let trainable = model.trainable
        for p in trainable {
            if let i = p.value.buffer.firstIndex(where: { !$0.isFinite }) {
                throw LayerError.nonFinite("epoch \(epoch): parameter \(p.name) became \(p.value.buffer[i]) at index \(i); the checkpoint \(path) of the previous epoch is kept. Lower --lr or check the prior's parameters.")
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
        let flipout = model.flipoutLayers
        var config = model.config
        // Record the plugins by id (the command line may have named them by short name), so the
        // pins and the configuration name the same plugins.
        if let first = flipout.first {
            config.posterior = first.weights.posterior.family.id
            config.prior = first.weights.prior.family.id
        }
        c.metadata = extraMetadata
        c.metadata[CheckpointKey.format] = formatVersion
        c.metadata[UNetCheckpointKey.network] = "unet"
        c.metadata[CheckpointKey.epoch] = String(epoch)
        c.metadata[CheckpointKey.adamStep] = String(optimizer.step)
        c.metadata[CheckpointKey.plugins] = try json(fingerprints(flipout))
        c.metadata[CheckpointKey.estimator] = flipout.first.map { $0.estimator.rawValue } ?? "deterministic"
        c.metadata[CheckpointKey.seed] = String(training.seed)
        c.metadata[CheckpointKey.model] = try json(config)
        c.metadata[UNetCheckpointKey.unet] = try json(model.shape)
        c.metadata[CheckpointKey.training] = try json(training)
        c.metadata[UNetCheckpointKey.patchTraining] = try json(patch)
        c.metadata[UNetCheckpointKey.plan] = plan.jsonString()
        c.metadata[UNetCheckpointKey.patchSize] = patch.patchSize.map(String.init).joined(separator: ",")
        // The same rules as `load`: a run whose state would be refused stops here, with the reason.
        _ = try Stored(c, path: path)
        return c
    }

    struct Loaded {
        let trained: TrainedModel
        let model: UNet
        let patch: PatchTrainingConfig
        let checkpoint: Checkpoint
    }

    /// Reads `path` and loads it (`load(_:path:...)`).
    static func load(path: String, registry: PluginRegistry, allowPluginChange: Bool = false, log: (String) -> Void = { _ in }) throws -> Loaded {
        try load(try Checkpoint.read(path), path: path, registry: registry, allowPluginChange: allowPluginChange, log: log)
    }

    /// Rebuilds the U-Net run of checkpoint `c` (read from `path`) after every check of the type's
    /// documentation. The one loader of U-Net checkpoints.
    static func load(_ c: Checkpoint, path: String, registry: PluginRegistry, allowPluginChange: Bool, log: (String) -> Void) throws -> Loaded {
        func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
        guard c.digestVerified else {
            throw bad("its content digest (metadata \(Checkpoint.digestKey)) was not verified; read checkpoints with Checkpoint.read")
        }
        let s = try Stored(c, path: path)
        try checkPins(s, registry: registry, allowPluginChange: allowPluginChange, bad: bad, log: log)
        let model: UNet
        do { model = try UNet(s.config, shape: s.shape, registry: registry, seed: s.training.seed) } catch let e as LayerError {
            throw bad("its network cannot be built: \(e)")
        }
        try checkTensors(c, model: model, bad: bad)
        for p in model.trainable {
            let t = c.tensor(p.name)!
            p.value.withUnsafeMutableValues { dst in t.withUnsafeValues { src in _ = dst.update(fromContentsOf: src) } }
        }
        model.parametersChanged()
        let trained = TrainedModel(network: .unet(model), training: s.training, epochs: s.epoch, plan: s.plan, patchSize: s.patch.patchSize)
        return Loaded(trained: trained, model: model, patch: s.patch, checkpoint: c)
    }

    /// Copies Adam's moments and step count from a checkpoint that `load` accepted into `optimizer`
    /// (built over the loaded model's parameters).
    static func restoreOptimizer(_ optimizer: Adam, from c: Checkpoint, path: String) throws {
        for (k, p) in optimizer.parameters.enumerated() {
            guard let m = c.tensor("adam.m.\(p.name)"), let v = c.tensor("adam.v.\(p.name)"), m.shape == p.value.shape, v.shape == p.value.shape else {
                throw CheckpointError(path: path, reason: "it lacks Adam state for \(p.name) of shape \(p.value.shape), so the run cannot be resumed exactly")
            }
            optimizer.m[k].withUnsafeMutableValues { dst in m.withUnsafeValues { _ = dst.update(fromContentsOf: $0) } }
            optimizer.v[k].withUnsafeMutableValues { dst in v.withUnsafeValues { _ = dst.update(fromContentsOf: $0) } }
        }
        guard let step = c.metadata[CheckpointKey.adamStep].flatMap(Int.init), (0...maxAdamStep).contains(step) else {
            throw CheckpointError(path: path, reason: "metadata \(CheckpointKey.adamStep) is not the optimizer's step count")
        }
        optimizer.step = step
    }

    /// The metadata of a U-Net checkpoint, decoded strictly and validated by the command line's rules.
    struct Stored {
        let config: ModelConfig
        let shape: UNetConfig
        let training: TrainingConfig
        let patch: PatchTrainingConfig
        let plan: PreprocessingPlan
        let epoch: Int
        let adamStep: Int
        let pins: [PluginFingerprint]?

        init(_ c: Checkpoint, path: String) throws {
            func bad(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
            func text(_ key: String) throws -> String {
                guard let t = c.metadata[key] else { throw bad("it has no \(key) metadata. Was it written by `flipout train --data`?") }
                return t
            }
            func decode<T: Decodable>(_ key: String, _ type: T.Type) throws -> T {
                let t = try text(key)
                // Strict first: duplicate keys, a byte-order mark or trailing bytes are refused, as in the header.
                do { _ = try StrictJSON.parse(Array(t.utf8)) } catch { throw bad("metadata \(key) is not valid JSON: \(error)") }
                do { return try JSONDecoder().decode(T.self, from: Data(t.utf8)) } catch {
                    throw bad("metadata \(key) cannot be decoded as \(T.self): \(Self.describe(error))")
                }
            }
            func integer(_ key: String, _ range: ClosedRange<Int>, _ what: String) throws -> Int {
                let t = try text(key)
                guard let v = Int(t), range.contains(v) else {
                    throw bad("metadata \(key) is \"\(StrictJSON.printable(String(t.prefix(80))))\"; it must be \(what), a whole number from \(range.lowerBound) to \(range.upperBound)")
                }
                return v
            }
            guard c.metadata[UNetCheckpointKey.network] == "unet" else {
                throw bad("it does not hold a U-Net (metadata \(UNetCheckpointKey.network) is \(c.metadata[UNetCheckpointKey.network].map { "\"\(StrictJSON.printable($0))\"" } ?? "missing")). Was it written by `flipout train --data`?")
            }
            let format = try text(CheckpointKey.format)
            guard format == formatVersion else {
                throw bad("it has checkpoint format \"\(StrictJSON.printable(String(format.prefix(20))))\"; this flipout reads format \(formatVersion). Train again with this version")
            }
            config = try decode(CheckpointKey.model, ModelConfig.self)
            shape = try decode(UNetCheckpointKey.unet, UNetConfig.self)
            training = try decode(CheckpointKey.training, TrainingConfig.self)
            patch = try decode(UNetCheckpointKey.patchTraining, PatchTrainingConfig.self)
            plan = try decode(UNetCheckpointKey.plan, PreprocessingPlan.self)
            do {
                try config.validate(); try shape.validate(); try training.validate()
                try patch.validate(shape: shape); try plan.validate()
            } catch let e as ConfigError {
                throw bad("its stored configuration is invalid: \(e.storedDescription)")
            }
            guard plan.outputCount == shape.classCount, plan.channels.count == shape.inputChannels else {
                throw bad("its plan (\(plan.channels.count) channels, \(plan.outputCount) \(plan.regions == nil ? "classes" : "regions")) does not fit its network (\(shape.inputChannels), \(shape.classCount))")
            }
            let patchText = try text(UNetCheckpointKey.patchSize)
            guard patchText == patch.patchSize.map(String.init).joined(separator: ",") else {
                throw bad("metadata \(UNetCheckpointKey.patchSize) \"\(StrictJSON.printable(String(patchText.prefix(80))))\" differs from the patch size \(patch.patchSize) of \(UNetCheckpointKey.patchTraining)")
            }
            epoch = try integer(CheckpointKey.epoch, 0...training.epochs, "the epochs done (at most the run's \(training.epochs))")
            adamStep = try integer(CheckpointKey.adamStep, 0...maxAdamStep, "Adam's step count")
            let seed = try text(CheckpointKey.seed)
            guard UInt64(seed) == training.seed else {
                throw bad("metadata \(CheckpointKey.seed) \"\(StrictJSON.printable(String(seed.prefix(40))))\" differs from the training seed \(training.seed)")
            }
            if let t = c.metadata[CheckpointKey.plugins], !t.isEmpty, (try? StrictJSON.parse(Array(t.utf8))) != nil {
                pins = try? JSONDecoder().decode([PluginFingerprint].self, from: Data(t.utf8))
            } else {
                pins = nil
            }
        }

        /// A decoding error as one line (which key, what was wrong), not Foundation's dump.
        static func describe(_ error: Error) -> String {
            guard let e = error as? DecodingError else { return "\(error)" }
            func path(_ c: DecodingError.Context) -> String {
                c.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            }
            switch e {
            case .keyNotFound(let key, let c): return "key \(path(c).isEmpty ? "" : path(c) + ".")\(key.stringValue) is missing"
            case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c): return "\(path(c)): \(c.debugDescription)"
            @unknown default: return "\(e)"
            }
        }
    }

    /// The plugin pins: none for a network without Flipout layers; otherwise exactly one posterior
    /// and one prior, the ones the configuration names, each with the SHA-256 of the plugin loaded
    /// now (a changed file is accepted only with `allowPluginChange`, with a warning). Missing or
    /// unreadable pins of a Bayesian network are refused unless `allowPluginChange`.
    static func checkPins(_ s: Stored, registry: PluginRegistry, allowPluginChange: Bool, bad: (String) -> CheckpointError, log: (String) -> Void) throws {
        func refuse(_ message: String) throws {
            if !allowPluginChange { throw bad(message + " Pass --allow-plugin-change to use the plugins loaded now anyway.") }
            log("warning: " + message + " Continuing because of --allow-plugin-change.")
        }
        let key = CheckpointKey.plugins
        guard s.shape.flipoutLayerCount(bayesian: s.config.bayesian) > 0 else {
            if let pins = s.pins, !pins.isEmpty {
                throw bad("its plugin pins (metadata \(key)) name \(pins.map { StrictJSON.printable($0.id) }.joined(separator: ", ")), but its network has no Flipout layers")
            }
            return
        }
        guard let pins = s.pins else {
            return try refuse("it has no plugin pins (metadata \(key)) or they are not a list of plugin fingerprints, so the plugins it was trained with cannot be checked.")
        }
        guard pins.count == 2, let post = pins.first(where: { $0.role == "posterior" }), let prior = pins.first(where: { $0.role == "prior" }) else {
            return try refuse("its plugin pins (metadata \(key)) do not name one posterior and one prior.")
        }
        for (role, named, pin) in [("posterior", s.config.posterior, post), ("prior", s.config.prior, prior)] {
            guard named == pin.id else {
                throw bad("its configuration names the \(role) \"\(StrictJSON.printable(named))\", but its plugin pins (metadata \(key)) record \"\(StrictJSON.printable(pin.id))\"")
            }
        }
        for p in [post, prior] {
            let family = try registry.family(p.id)
            if family.library.sha256 != p.sha256 {
                try refuse("the \(p.role) plugin \(StrictJSON.printable(p.id)) changed since training: \(family.file) has SHA-256 \(family.library.sha256.prefix(16))…, the checkpoint recorded \(StrictJSON.printable(String(p.sha256.prefix(16))))… (\(StrictJSON.printable(p.file)), version \(StrictJSON.printable(p.version))). Load the original plugin with --plugin, or")
            }
        }
    }

    /// The tensors are exactly the model's parameters and their Adam moments, each of the
    /// parameter's shape, with non-negative second moments (values are finite: `Checkpoint.decode`).
    static func checkTensors(_ c: Checkpoint, model: UNet, bad: (String) -> CheckpointError) throws {
        var expected: [String: [Int]] = [:]
        for p in model.trainable {
            expected[p.name] = p.value.shape
            expected["adam.m.\(p.name)"] = p.value.shape
            expected["adam.v.\(p.name)"] = p.value.shape
        }
        for (name, t) in c.tensors {
            guard let shape = expected.removeValue(forKey: name) else {
                throw bad("it holds a tensor \(StrictJSON.printable(name)) that its network does not have")
            }
            guard t.shape == shape else { throw bad("tensor \(StrictJSON.printable(name)) has shape \(t.shape), its network needs \(shape)") }
            if name.hasPrefix("adam.v."), let i = t.buffer.firstIndex(where: { $0 < 0 }) {
                throw bad("tensor \(StrictJSON.printable(name)) holds \(t.buffer[i]) at index \(i); Adam's second moments cannot be negative")
            }
        }
        if let missing = expected.keys.sorted().first {
            throw bad("it lacks the tensor \(missing) that its network needs")
        }
    }
}
