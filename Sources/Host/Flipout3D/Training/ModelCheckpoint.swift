// What every run's checkpoint holds and how it is checked: parameters, Adam state, the plugins' ids, versions and SHA-256.
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
