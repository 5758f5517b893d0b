// Kill safety: SIGKILL `flipout train` during checkpoint writes, again and again; the run folder
// always holds a loadable checkpoint, the next start removes the temporaries, --resume finishes the run.
// Disk-full safety: on a full filesystem the error is clear and the previous checkpoint byte-identical.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Mounts a tmpfs of `bytes` at a new folder (needs root: the test is enabled only then, and fails if the mount does).
func smallFilesystem(_ bytes: Int) throws -> URL {
    let dir = try Fixtures.temporaryDirectory("full-disk")
    let r = try Subprocess.run("/usr/bin/env", ["mount", "-t", "tmpfs", "-o", "size=\(bytes)", "tmpfs", dir.path])
    try #require(r.status == 0, "cannot mount a tmpfs as root: \(r.stderr)")
    return dir
}

func fillUp(_ dir: URL) {
    let fd = open(dir.appendingPathComponent("filler").path, O_WRONLY | O_CREAT, 0o600)
    let chunk = [UInt8](repeating: 0xAB, count: 4096)
    while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, 4096) }) > 0 {}
    var small = [UInt8](repeating: 0, count: 1)
    while write(fd, &small, 1) > 0 {}
    close(fd)
}

@Suite(.serialized) struct KillAndDiskFullTests {
    @Test func twentyKillsDuringCheckpointWritesLoseNothing() throws {
        let dir = try Fixtures.temporaryDirectory("kill").appendingPathComponent("run").path
        let checkpoint = dir + "/checkpoint.safetensors"
        let args = ["train", "--data", tinyData, "--epochs", "100000", "--steps-per-epoch", "1", "--patch", "16,16,16", "--levels", "2",
                    "--samples", "1", "--width", "1", "--batch-size", "2", "--quiet"]
        var kills = 0, duringWrite = 0, unloadable = 0, rounds = 0, leftByKills = 0
        var rng = SystemRandomNumberGenerator()
        let registry = try SmallRun.registry()
        while (kills < 20 || duringWrite < 20) && rounds < 60 {
            rounds += 1
            let p = Process()
            p.executableURL = URL(fileURLWithPath: BuildProducts.flipout)
            p.arguments = FileIO.exists(checkpoint) ? ["train", "--resume", checkpoint, "--epochs", "100000", "--quiet"] : args + ["--run", dir, "--overwrite"]
            p.environment = FlipoutCLI.hermeticEnvironment
            let errPath = dir + ".stderr"
            _ = FileManager.default.createFile(atPath: errPath, contents: nil)
            let errHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
            p.standardOutput = FileHandle.nullDevice; p.standardError = errHandle
            let stale = Set(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter(RunFolder.isTemporary))
            try p.run()
            // Wait for a temporary file of a save to appear (the write in progress), then kill after
            // a random 0–500 µs; if none shows within 10 s (the poll can miss a fast save on a busy
            // machine), kill anyway.
            let deadline = Date().addingTimeInterval(10)
            var sawTemporary = false
            while Date() < deadline && p.isRunning {
                // A new temporary (the previous kill's leftovers do not count) of a checkpoint save.
                if ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).contains(where: {
                    RunFolder.isTemporary($0) && $0.hasPrefix(".checkpoint.safetensors.tmp-") && !stale.contains($0) }) {
                    sawTemporary = true; break
                }
            }
            if sawTemporary { usleep(UInt32.random(in: 0...500, using: &rng)) }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            try? errHandle.close()
            guard p.terminationReason == .uncaughtSignal else {
                Issue.record("round \(rounds): flipout exited \(p.terminationStatus) before the kill: \((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")")
                continue
            }
            kills += 1
            if sawTemporary { duringWrite += 1 }
            leftByKills += ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter(RunFolder.isTemporary).count
            if FileIO.exists(checkpoint) {
                do { _ = try TrainedModel.load(checkpoint, registry: registry) } catch { unloadable += 1; Issue.record("unloadable after kill \(kills): \(error)") }
            }
        }
        // A normal start: temporaries removed (with a note), the run continues to a finished epoch count.
        let leftBefore = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter(RunFolder.isTemporary)
        let done = try TrainedModel.load(checkpoint, registry: registry).epochs
        let finish = try FlipoutCLI.run(["train", "--resume", checkpoint, "--epochs", "\(done + 1)", "--quiet"])
        let leftAfter = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter(RunFolder.isTemporary)
        print("kill test: \(kills) SIGKILLs (\(duringWrite) while a save's temporary file existed), \(unloadable) unloadable checkpoints, \(leftByKills) temporaries left by the kills (each removed by the next start), \(leftAfter.count) after the final start")
        #expect(kills >= 20 && duringWrite >= 10)
        #expect(unloadable == 0)
        #expect(finish.status == 0, "\(finish.stderr)")
        #expect(leftAfter.isEmpty)
        #expect(leftBefore.allSatisfy { finish.stderr.contains("removed \(dir)/\($0)") })
        #expect(try TrainedModel.load(checkpoint, registry: registry).epochs == done + 1)
    }

    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root (CI runs as root)"))
    func aFullDiskKeepsThePreviousCheckpointByteIdentical() throws {
        let mount = try smallFilesystem(2 << 20)
        defer { _ = try? Subprocess.run("/usr/bin/env", ["umount", mount.path]) }
        let dir = mount.appendingPathComponent("run").path
        let first = try FlipoutCLI.run(tinyTrain + ["--run", dir])
        #expect(first.status == 0, "\(first.stderr)")
        let checkpoint = dir + "/checkpoint.safetensors"
        let before = try Data(contentsOf: URL(fileURLWithPath: checkpoint))
        fillUp(mount)
        let r = try FlipoutCLI.run(["train", "--resume", checkpoint, "--epochs", "2", "--quiet"])
        #expect(r.status == 74 && r.stderr.contains("cannot write") && r.stderr.contains("No space left on device"), "\(r.status) \(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: checkpoint)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter(RunFolder.isTemporary).isEmpty)
        // The checkpoint writer itself on the full disk: refused, old file identical, no temporary left.
        var c = try Checkpoint.read(checkpoint)
        c.metadata["note"] = String(repeating: "x", count: 100_000)
        #expect { try c.write(to: checkpoint) } throws: { "\($0)".contains("No space left on device") }
        #expect(try Data(contentsOf: URL(fileURLWithPath: checkpoint)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter(RunFolder.isTemporary).isEmpty)
        #expect(try TrainedModel.load(checkpoint, registry: try SmallRun.registry()).epochs == 1)
    }
}
