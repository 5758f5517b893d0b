// A U-Net checkpoint read back by Python's `safetensors` (scripts/read-checkpoint.py), tensor for tensor, digest checked by hashlib.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// scripts/test installs safetensors and numpy with pip; without them this test cannot run.
private let pythonHasSafetensors: Bool = {
    (try? Subprocess.run("/usr/bin/env", ["python3", "-c", "import safetensors, numpy"]))?.status == 0
}()

/// A 1-epoch U-Net run on two synthetic cases (the checkpoint `flipout train --data` writes).
private func unetRun() throws -> PatchTrainer {
    var u = UNetConfig(); u.levels = 2; u.width = 2; u.inputChannels = 2; u.classCount = 3
    var t = TrainingConfig(); t.seed = 3; t.epochs = 1; t.batchSize = 1; t.evaluationSamples = 1; t.dataset = "folder"
    var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 1; p.data = "(in memory)"
    let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["T1", "T2"], channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                 labels: ["background": 0, "a": 1, "b": 2], classCount: 3)
    let trainer = try PatchTrainer(model: try UNet(ModelConfig(), shape: u, registry: try SmallRun.registry(), seed: 3), training: t, patch: p,
                                   plan: plan, train: SyntheticCases(seed: 1, count: 2).prepared(), validation: [], runDirectory: try Fixtures.temporaryDirectory("py-ckpt").path)
    trainer.showProgress = false
    try trainer.run()
    return trainer
}

@Test(.enabled(if: pythonHasSafetensors, "python3 with safetensors and numpy (scripts/test installs them)"))
func pythonSafetensorsReadsACheckpoint() throws {
    let t = try unetRun()
    let script = Fixtures.packageRoot.appendingPathComponent("scripts/read-checkpoint.py").path
    let r = try Subprocess.run("/usr/bin/env", ["python3", script, t.checkpointPath, "--json"])
    #expect(r.status == 0, "\(r.stderr)")
    let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    let tensors = json["tensors"] as! [String: [String: Any]]
    let meta = json["metadata"] as! [String: Any]
    #expect(json["digest"] as? String == "ok")
    #expect((meta["flipout3d.epoch"] as? Int) == 1)
    #expect(((meta["flipout3d.plugins"] as? [[String: Any]])?.first?["id"] as? String) == "org.flipout3d.normal")
    #expect(((meta["flipout3d.plan"] as? [String: Any])?["channelNames"] as? [String]) == ["T1", "T2"])
    for p in t.model.trainable {
        let info = try #require(tensors[p.name], "\(p.name) missing in Python's view")
        #expect((info["shape"] as? [Int]) == p.value.shape)
        let mean = p.value.buffer.reduce(0.0) { $0 + Double($1) } / Double(p.value.count)
        #expect(abs((info["mean"] as! Double) - mean) < 1e-5 * max(1, abs(mean)), "\(p.name) mean")
    }
    // hashlib sees an edited metadata entry that kept the old digest.
    var raw = try RawCheckpoint(path: t.checkpointPath)
    raw.metadata[CheckpointKey.epoch] = "0"
    let edited = t.runDirectory + "/edited.safetensors"
    try raw.write(to: edited)
    let bad = try Subprocess.run("/usr/bin/env", ["python3", script, edited])
    #expect(bad.status == 1 && bad.stderr.contains("mismatch"), "\(bad.status) \(bad.stderr)")
}

/// Another writer (Python's `safetensors.numpy.save_file`, its own header layout) with the digest
/// of the documented definition: flipout loads it and gets the same network.
@Test(.enabled(if: pythonHasSafetensors, "python3 with safetensors and numpy (scripts/test installs them)"))
func aCheckpointWrittenByPythonLoads() throws {
    let t = try unetRun()
    let scripts = Fixtures.packageRoot.appendingPathComponent("scripts").path
    let out = t.runDirectory + "/python.safetensors"
    let program = """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("rc", sys.argv[1] + "/read-checkpoint.py")
    rc = importlib.util.module_from_spec(spec); spec.loader.exec_module(rc)
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(sys.argv[2], framework="numpy") as f:
        meta = dict(f.metadata()); tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["flipout3d.digest"]
    meta["flipout3d.digest"] = rc.content_digest(meta, {k: (list(v.shape), v.astype("<f4").tobytes()) for k, v in tensors.items()})
    save_file(tensors, sys.argv[3], metadata=meta)
    """
    let r = try Subprocess.run("/usr/bin/env", ["python3", "-c", program, scripts, t.checkpointPath, out])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try Data(contentsOf: URL(fileURLWithPath: out)) != (try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath))), "Python wrote the same bytes; the test shows nothing about another layout")
    let loaded = try TrainedModel.load(out, registry: try SmallRun.registry())
    let x = Tensor(shape: [1, 2, 16, 16, 16], values: testValues(2 * 4096, seed: 8))
    let ctx = StepContext(seed: 1, step: -1)
    #expect(try loaded.probabilities(x, ctx).array == (try t.model.probabilities(x, ctx)).array)
}
