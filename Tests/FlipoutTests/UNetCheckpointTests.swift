// U-Net checkpoints: every class of doctored file exits 65 through the built binary, and every option combination the tool trains loads back.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// A checkpoint file taken apart without Flipout3D's reader (Foundation's JSON, offsets from the
/// header), and its content digest recomputed from the format's definition with coreutils'
/// `sha256sum`: an oracle independent of `Checkpoint`.
struct RawCheckpoint {
    var header: [String: Any]
    let data: [UInt8]

    init(path: String) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
        header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        data = Array(bytes[(8 + n)...])
    }

    var metadata: [String: String] {
        get { header["__metadata__"] as! [String: String] }
        set { header["__metadata__"] = newValue }
    }

    /// Edits the JSON object stored under metadata `key`.
    mutating func editJSON(_ key: String, _ edit: (inout [String: Any]) -> Void) throws {
        var o = try JSONSerialization.jsonObject(with: Data(metadata[key]!.utf8)) as! [String: Any]
        edit(&o)
        metadata[key] = String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self)
    }

    /// The digest as `Checkpoint.contentDigest` documents it, hashed by `sha256sum`.
    func digest() throws -> String {
        var m = [UInt8]()
        func u64(_ v: Int) { for i in 0..<8 { m.append(UInt8((UInt64(v) >> (8 * UInt64(i))) & 0xFF)) } }
        func string(_ s: String) { u64(s.utf8.count); m += Array(s.utf8) }
        func byBytes(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }
        m += Array("flipout3d-digest-1\n".utf8)
        let meta = metadata.filter { $0.key != Checkpoint.digestKey }
        u64(meta.count)
        for k in meta.keys.sorted(by: byBytes) { string(k); string(meta[k]!) }
        let names = header.keys.filter { $0 != "__metadata__" }.sorted(by: byBytes)
        u64(names.count)
        for name in names {
            let t = header[name] as! [String: Any]
            let shape = t["shape"] as! [Int], offsets = t["data_offsets"] as! [Int]
            string(name); u64(shape.count); shape.forEach(u64)
            u64(offsets[1] - offsets[0]); m += data[offsets[0]..<offsets[1]]
        }
        let file = try Fixtures.temporaryDirectory("digest").appendingPathComponent("message")
        try Data(m).write(to: file)
        let r = try Subprocess.run("/usr/bin/env", ["sha256sum", file.path])
        return String(r.stdout.prefix(64))
    }

    /// Sets the digest to the one of the current content (what an editor who knows the format does).
    mutating func resign() throws { metadata[Checkpoint.digestKey] = try digest() }

    func write(to path: String) throws {
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        for i in 0..<8 { out.append(UInt8((UInt64(json.count) >> (8 * UInt64(i))) & 0xFF)) }
        try Data(out + json + data).write(to: URL(fileURLWithPath: path))
    }
}

/// `flipout ARGS` under a 300 s timeout (a hang shows as exit 124, a crash as 128 + signal).
private func flipout(_ arguments: [String]) throws -> Subprocess.Result {
    try Subprocess.run("/usr/bin/timeout", ["300", BuildProducts.flipout] + arguments, environment: FlipoutCLI.hermeticEnvironment)
}

/// A dataset folder of 3 + 1 synthetic cases and a 1-epoch U-Net trained on it by the binary.
private func trainedRun(_ label: String, _ extra: [String] = []) throws -> (data: String, checkpoint: String, dir: URL) {
    let dir = try Fixtures.temporaryDirectory(label)
    let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
    let export = try flipout(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "1"])
    #expect(export.status == 0, "\(export.stderr)")
    let r = try flipout(["train", "--data", data, "--run", run, "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16,16,16",
                         "--width", "2", "--levels", "2", "--samples", "1", "--quiet"] + extra)
    #expect(r.status == 0, "\(r.stderr)")
    return (data, run + "/checkpoint.safetensors", dir)
}

@Suite struct UNetCheckpointTests {
    @Test func sha256MatchesCoreutilsOneShotAndIncremental() throws {
        #expect(SHA256.hex(Data("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(Data()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let bytes = (0..<10_007).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        let file = try Fixtures.temporaryDirectory("sha").appendingPathComponent("bytes")
        try Data(bytes).write(to: file)
        let reference = String(try Subprocess.run("/usr/bin/env", ["sha256sum", file.path]).stdout.prefix(64))
        #expect(SHA256.hex(Data(bytes)) == reference)
        // Fed in uneven pieces (1, 63, 64, 65 ... bytes), the incremental hasher gives the same digest.
        for piece in [1, 55, 63, 64, 65, 1000] {
            var h = SHA256.Hasher()
            var i = 0
            while i < bytes.count { let j = min(bytes.count, i + piece); h.update(bytes[i..<j]); i = j }
            #expect(SHA256.hex(h.finalize()) == reference, "pieces of \(piece)")
        }
    }

    @Test func theDigestCoversMetadataAndMatchesAnIndependentComputation() throws {
        var c = Checkpoint()
        c.tensors = [("b", Tensor(shape: [2, 2], values: [1, 2, 3, 4])), ("a", Tensor(shape: [3], values: [5, 6, 7]))]
        c.metadata = ["k": "v", "é": "ü"]
        let path = try Fixtures.temporaryDirectory("digest-oracle").appendingPathComponent("c.safetensors").path
        try c.write(to: path)
        let raw = try RawCheckpoint(path: path)
        #expect(raw.metadata[Checkpoint.digestKey] == (try raw.digest()))
        #expect(try Checkpoint.read(path).digestVerified)
        // One metadata character changed, digest kept: refused, naming the metadata.
        var edited = raw
        edited.metadata["k"] = "w"
        try edited.write(to: path)
        #expect { _ = try Checkpoint.read(path) } throws: { "\($0)".contains("does not match its SHA-256 digest") && "\($0)".contains("metadata") }
        // Without a digest: refused by `read`, readable only when asked to (other writers' files).
        var unsigned = raw
        unsigned.metadata[Checkpoint.digestKey] = nil
        try unsigned.write(to: path)
        #expect { _ = try Checkpoint.read(path) } throws: { "\($0)".contains("no content digest") }
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(try !Checkpoint.decode(bytes, path: path, requireDigest: false).digestVerified)
    }

    /// Each class of doctored checkpoint, through `flipout predict` (and `train --resume` for the
    /// epoch count): exit 65 with a message naming what failed; no crash, no hang.
    @Test func everyClassOfDoctoredCheckpointExits65NamingWhatFailed() throws {
        let (data, checkpoint, dir) = try trainedRun("doctored")
        let good = try RawCheckpoint(path: checkpoint)
        #expect(good.metadata[Checkpoint.digestKey] == (try good.digest()), "the writer's digest differs from the documented one")
        let control = try flipout(["predict", "--checkpoint", checkpoint, "--input", data, "--output", dir.appendingPathComponent("p").path, "--samples", "1"])
        #expect(control.status == 0, "\(control.stderr)")

        func doctored(_ name: String, resign: Bool, _ edit: (inout RawCheckpoint) throws -> Void) throws -> String {
            var raw = good
            try edit(&raw)
            if resign { try raw.resign() }
            let path = dir.appendingPathComponent(name + ".safetensors").path
            try raw.write(to: path)
            return path
        }
        let cases: [(String, Bool, (inout RawCheckpoint) throws -> Void, [String])] = [
            ("metadata-edit", false, { try $0.editJSON(UNetCheckpointKey.plan) { $0["spacing"] = [1.25, 1, 1] } }, ["does not match its SHA-256 digest"]),
            ("missing-digest", false, { $0.metadata[Checkpoint.digestKey] = nil }, ["no content digest", Checkpoint.digestKey]),
            ("spacing-0", true, { try $0.editJSON(UNetCheckpointKey.plan) { $0["spacing"] = [0, 1, 1] } }, ["plan.spacing", "[0.0, 1.0, 1.0]"]),
            ("spacing-2", true, { try $0.editJSON(UNetCheckpointKey.plan) { $0["spacing"] = [1, 1] } }, ["plan.spacing"]),
            ("maxChannels--1", true, { try $0.editJSON(UNetCheckpointKey.unet) { $0["maxChannels"] = -1 } }, ["maxChannels is -1"]),
            ("width-2^62", true, { try $0.editJSON(UNetCheckpointKey.unet) { $0["width"] = 1 << 62 } }, ["width is 4611686018427387904"]),
            ("classes-huge", true, { try $0.editJSON(UNetCheckpointKey.unet) { $0["classCount"] = 1 << 40 } }, ["classCount is 1099511627776"]),
            ("patch-2", true, { raw in
                try raw.editJSON(UNetCheckpointKey.patchTraining) { $0["patchSize"] = [16, 16] }
                raw.metadata[UNetCheckpointKey.patchSize] = "16,16" }, ["patchSize is [16, 16]"]),
            ("patch-huge", true, { raw in
                try raw.editJSON(UNetCheckpointKey.patchTraining) { $0["patchSize"] = [16, 16, 1 << 40] }
                raw.metadata[UNetCheckpointKey.patchSize] = "16,16,\(1 << 40)" }, ["patchSize is [16, 16, 1099511627776]"]),
            ("epochs-1e12", true, { try $0.editJSON(CheckpointKey.training) { $0["epochs"] = 1_000_000_000_000 } }, ["epochs is 1000000000000"]),
            ("epoch-past-epochs", true, { $0.metadata[CheckpointKey.epoch] = "7" }, [CheckpointKey.epoch, "\"7\""]),
            ("posterior-not-pinned", true, { try $0.editJSON(CheckpointKey.model) { $0["posterior"] = "org.flipout3d.laplace" } },
             ["names the posterior \"org.flipout3d.laplace\"", "record \"org.flipout3d.normal\""]),
            ("pin-not-configured", true, { raw in
                raw.metadata[CheckpointKey.plugins] = raw.metadata[CheckpointKey.plugins]!.replacingOccurrences(
                    of: "\"id\":\"org.flipout3d.normal\",\"role\":\"prior\"", with: "\"id\":\"org.flipout3d.laplace\",\"role\":\"prior\"")
                #expect(raw.metadata[CheckpointKey.plugins]!.contains("laplace")) }, ["names the prior \"org.flipout3d.normal\""]),
        ]
        for (name, resign, edit, expected) in cases {
            let path = try doctored(name, resign: resign, edit)
            let r = try flipout(["predict", "--checkpoint", path, "--input", data, "--output", dir.appendingPathComponent("p-" + name).path, "--samples", "1"])
            #expect(r.status == 65 && expected.allSatisfy(r.stderr.contains) && r.stderr.contains(path), "\(name): exit \(r.status): \(r.stderr)")
        }
        // A resume of the doctored epoch count is refused at once (it used to run 10^12 epochs).
        let resumed = try flipout(["train", "--resume", dir.appendingPathComponent("epochs-1e12.safetensors").path, "--quiet"])
        #expect(resumed.status == 65 && resumed.stderr.contains("epochs is 1000000000000"), "exit \(resumed.status): \(resumed.stderr)")
    }

    /// `--bayesian-layers none` and `--deterministic` pin no plugins; `last:2` pins the pair.
    @Test func theBinaryLoadsItsCheckpointsOfDeterministicAndPartlyBayesianRuns() throws {
        for extra in [["--bayesian-layers", "none"], ["--deterministic"], ["--bayesian-layers", "last:2"]] {
            let (data, checkpoint, dir) = try trainedRun("load-own", extra)
            let r = try flipout(["predict", "--checkpoint", checkpoint, "--input", data, "--output", dir.appendingPathComponent("p").path, "--samples", "1"])
            #expect(r.status == 0, "\(extra): \(r.stderr)")
            let pins = try RawCheckpoint(path: checkpoint).metadata[CheckpointKey.plugins]
            #expect((pins == "[]") == (extra != ["--bayesian-layers", "last:2"]), "\(extra): pins \(pins ?? "nil")")
        }
    }

    /// Every posterior/prior pair of docs/setups.md, the positive recipe and partial Bayesian layers:
    /// each run's checkpoint loads (every check passes) and the loaded network gives the trained
    /// network's probabilities, bit for bit.
    @Test func everyOptionCombinationLoadsWhatItWrote() throws {
        let registry = try SmallRun.registry()
        struct Setup { var posterior = "org.flipout3d.normal", prior = "org.flipout3d.normal", layers = BayesianLayers.all
                       var bayesian = true, custom = ModelConfig.CustomLayers.all, norm = UNetConfig.Normalization.instance }
        var setups: [Setup] = [Setup(), Setup(bayesian: false), Setup(layers: .none), Setup(layers: .last(2)), Setup(layers: .encoder),
                               Setup(norm: .none)]
        for (post, prior) in [("org.flipout3d.gaussian-mixture", "org.flipout3d.normal"), ("org.flipout3d.normal", "org.flipout3d.laplace"),
                              ("org.flipout3d.laplace", "org.flipout3d.laplace"), ("org.flipout3d.normal", "org.flipout3d.student-t"),
                              ("org.flipout3d.normal", "org.flipout3d.scale-mixture")] {
            setups.append(Setup(posterior: post, prior: prior))
        }
        setups.append(Setup(posterior: "org.flipout3d.beta", prior: "org.flipout3d.gamma", custom: .first))
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: SyntheticCases.channelNames,
                                     channels: [.zScore(mean: 0, std: 1), .ct(clipLow: -1, clipHigh: 1, mean: 0, std: 1)],
                                     labels: ["background": 0, "structureA": 1, "structureB": 2], classCount: 3)
        let cases = SyntheticCases(seed: 1, count: 2).prepared()
        for s in setups {
            var m = ModelConfig(); m.bayesian = s.bayesian; m.posterior = s.posterior; m.prior = s.prior; m.customLayers = s.custom
            var u = UNetConfig(); u.levels = 2; u.width = 2; u.inputChannels = 2; u.classCount = 3; u.bayesianLayers = s.layers; u.normalization = s.norm
            var t = TrainingConfig(); t.seed = 4; t.epochs = 1; t.batchSize = 1; t.evaluationSamples = 1; t.dataset = "folder"
            var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 1; p.data = "(in memory)"
            let dir = try Fixtures.temporaryDirectory("matrix").path
            let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: registry, seed: 4), training: t, patch: p, plan: plan,
                                           train: cases, validation: [], runDirectory: dir)
            trainer.showProgress = false
            try trainer.run()
            let what = "\(s.posterior)/\(s.prior) \(s.bayesian ? "\(s.layers)" : "deterministic") \(s.custom) \(s.norm)"
            do {
                let loaded = try TrainedModel.load(trainer.checkpointPath, registry: registry)
                let x = Tensor(shape: [1, 2, 16, 16, 16], values: testValues(2 * 4096, seed: 5))
                let ctx = StepContext(seed: 3, step: -1)
                #expect(loaded.epochs == 1 && loaded.plan == plan, "\(what)")
                #expect(try loaded.probabilities(x, ctx).array == (try trainer.model.probabilities(x, ctx)).array, "\(what)")
            } catch { Issue.record("\(what): \(error)") }
        }
    }

    /// The checks `load` makes on a checkpoint whose digest is right (rewritten by `Checkpoint.write`).
    @Test func storedConfigurationsPinsAndTensorsAreChecked() throws {
        let registry = try SmallRun.registry()
        let dir = try Fixtures.temporaryDirectory("unet-checks").path
        var m = ModelConfig(); m.bayesian = true
        var u = UNetConfig(); u.levels = 2; u.width = 2; u.inputChannels = 2; u.classCount = 3
        var t = TrainingConfig(); t.seed = 2; t.epochs = 1; t.batchSize = 1; t.evaluationSamples = 1; t.dataset = "folder"
        var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 1; p.data = "(in memory)"
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["a", "b"], channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "x": 1, "y": 2], classCount: 3)
        let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: registry, seed: 2), training: t, patch: p, plan: plan,
                                       train: SyntheticCases(seed: 1, count: 1).prepared(), validation: [], runDirectory: dir)
        trainer.showProgress = false
        try trainer.run()
        let good = try Checkpoint.read(trainer.checkpointPath)
        func load(_ edit: (inout Checkpoint) -> Void, allow: Bool = false) -> String {
            var c = good
            edit(&c)
            let path = dir + "/edited.safetensors"
            do {
                try c.write(to: path)
                _ = try TrainedModel.load(path, registry: registry, allowPluginChange: allow)
                return "accepted"
            } catch { return "\(error)" }
        }
        #expect(load { _ in } == "accepted")
        // Plugin pins: missing, empty, not JSON, incomplete; each refused, each accepted with the flag.
        for value in [nil, "", "not json", "[]", #"[{"role":"prior"}]"#] as [String?] {
            let msg = load { $0.metadata[CheckpointKey.plugins] = value }
            #expect(msg.contains(CheckpointKey.plugins) && msg.contains("--allow-plugin-change"), "pins \(value ?? "nil"): \(msg)")
            #expect(load({ $0.metadata[CheckpointKey.plugins] = value }, allow: true) == "accepted")
        }
        // A changed plugin file (its recorded SHA-256 differs): refused, accepted with the flag.
        let sha = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).sha256
        let changed: (inout Checkpoint) -> Void = { $0.metadata[CheckpointKey.plugins] = $0.metadata[CheckpointKey.plugins]!.replacingOccurrences(of: sha, with: String(repeating: "0", count: 64)) }
        #expect(load(changed).contains("changed since training"))
        #expect(load(changed, allow: true) == "accepted")
        func json(_ key: String, _ from: String, _ to: String) -> (inout Checkpoint) -> Void {
            { c in
                let before = c.metadata[key]!
                c.metadata[key] = before.replacingOccurrences(of: from, with: to)
                precondition(c.metadata[key] != before, "edit \(from) -> \(to) of \(key) changed nothing")
            }
        }
        for (edit, expected) in [
            (json(CheckpointKey.training, "\"batchSize\":1", "\"batchSize\":-1"), "batchSize is -1"),
            (json(CheckpointKey.training, "\"dataset\":\"folder\"", "\"dataset\":\"elsewhere\""), "dataset is elsewhere"),
            (json(CheckpointKey.model, "\"klSamples\":1", "\"klSamples\":0"), "klSamples is 0"),
            (json(CheckpointKey.model, "\"width\":8", "\"width\":100000"), "width is 100000"),
            (json(CheckpointKey.model, "{", "{\"klSamples\":1,"), "duplicate key \"klSamples\""),
            (json(UNetCheckpointKey.unet, "\"levels\":2", "\"levels\":9"), "levels is 9"),
            (json(UNetCheckpointKey.unet, "\"bayesianLayers\":\"all\"", "\"bayesianLayers\":\"last:100000\""), "bayesianLayers is 100000"),
            (json(UNetCheckpointKey.unet, "\"inputChannels\":2", "\"inputChannels\":3"), "does not fit its network"),
            (json(UNetCheckpointKey.patchTraining, "\"stepsPerEpoch\":1", "\"stepsPerEpoch\":-5"), "stepsPerEpoch is -5"),
            (json(UNetCheckpointKey.patchTraining, "\"trainingVoxels\":", "\"trainingVoxels\":0,\"x\":"), "trainingVoxels is 0"),
            (json(UNetCheckpointKey.plan, "\"std\":1", "\"std\":0"), "plan.channels"),
            (json(UNetCheckpointKey.plan, "\"x\":1", "\"x\":7"), "plan.labels"),
            (json(UNetCheckpointKey.plan, "\"RAS\"", "\"LPS\""), "plan.orientation"),
            (json(UNetCheckpointKey.patchSize, "16,16,16", "16,16,32"), "differs from the patch size"),
            (json(CheckpointKey.seed, "2", "3"), "differs from the training seed"),
            (json(CheckpointKey.format, "2", "1"), "checkpoint format \"1\""),
            (json(CheckpointKey.adamStep, "1", "-1"), CheckpointKey.adamStep),
            ({ c in c.tensors.removeAll { $0.name.hasPrefix("adam.m.") } }, "lacks the tensor adam.m."),
            ({ c in c.tensors.append(("extra", Tensor(shape: [1]))) }, "tensor extra that its network does not have"),
            ({ c in let i = c.tensors.firstIndex { $0.name.hasPrefix("adam.v.") }!
                    c.tensors[i].tensor = Tensor(shape: c.tensors[i].tensor.shape, values: [Float](repeating: -1, count: c.tensors[i].tensor.count)) },
             "second moments cannot be negative"),
            ({ c in let i = c.tensors.firstIndex { !$0.name.hasPrefix("adam.") }!
                    c.tensors[i].tensor = Tensor(shape: [1] + c.tensors[i].tensor.shape) }, "its network needs"),
        ] as [((inout Checkpoint) -> Void, String)] {
            let msg = load(edit)
            #expect(msg.contains(expected), "expected \(expected): \(msg)")
        }
    }

    @Test func aRunThatGoesNonFiniteKeepsThePreviousCheckpoint() throws {
        let registry = try SmallRun.registry()
        let dir = try Fixtures.temporaryDirectory("unet-nonfinite").path
        var u = UNetConfig(); u.levels = 2; u.width = 2; u.inputChannels = 2; u.classCount = 3
        var t = TrainingConfig(); t.seed = 2; t.epochs = 2; t.batchSize = 1; t.evaluationSamples = 1; t.dataset = "folder"
        var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 1; p.data = "(in memory)"
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["a", "b"], channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "x": 1, "y": 2], classCount: 3)
        let trainer = try PatchTrainer(model: try UNet(ModelConfig(), shape: u, registry: registry, seed: 2), training: t, patch: p, plan: plan,
                                       train: SyntheticCases(seed: 1, count: 1).prepared(), validation: [], runDirectory: dir)
        trainer.showProgress = false
        _ = try trainer.trainEpoch()
        let before = try Data(contentsOf: URL(fileURLWithPath: trainer.checkpointPath))
        trainer.model.trainable[0].value.withUnsafeMutableValues { $0[0] = .infinity }
        trainer.model.parametersChanged()
        #expect(throws: (any Error).self) { _ = try trainer.trainEpoch() }
        #expect(try Data(contentsOf: URL(fileURLWithPath: trainer.checkpointPath)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter(RunFolder.isTemporary).isEmpty)
    }
}
