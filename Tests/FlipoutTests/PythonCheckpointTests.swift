// A checkpoint read back by Python's `safetensors` (scripts/read-checkpoint.py), tensor for tensor.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// scripts/test installs safetensors and numpy with pip; without them this test cannot run.
private let pythonHasSafetensors: Bool = {
    (try? Subprocess.run("/usr/bin/env", ["python3", "-c", "import safetensors, numpy"]))?.status == 0
}()

@Test(.enabled(if: pythonHasSafetensors, "python3 with safetensors and numpy (scripts/test installs them)"))
func pythonSafetensorsReadsACheckpoint() throws {
    let t = try SmallRun.trainer(epochs: 1, dir: SmallRun.tempDir())
    _ = try t.trainEpoch()
    let script = Fixtures.packageRoot.appendingPathComponent("scripts/read-checkpoint.py").path
    let r = try Subprocess.run("/usr/bin/env", ["python3", script, t.checkpointPath, "--json"])
    #expect(r.status == 0, "\(r.stderr)")
    let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    let tensors = json["tensors"] as! [String: [String: Any]]
    let meta = json["metadata"] as! [String: Any]
    #expect((meta["flipout3d.epoch"] as? Int) == 1)
    #expect(((meta["flipout3d.plugins"] as? [[String: Any]])?.first?["id"] as? String) == "org.flipout3d.normal")
    for p in t.model.trainable {
        let info = try #require(tensors[p.name], "\(p.name) missing in Python's view")
        #expect((info["shape"] as? [Int]) == p.value.shape)
        let mean = p.value.buffer.reduce(0.0) { $0 + Double($1) } / Double(p.value.count)
        #expect(abs((info["mean"] as! Double) - mean) < 1e-5 * max(1, abs(mean)), "\(p.name) mean")
    }
}
