// flipout runs OpenMP passive unless the environment chooses: the re-executed process's environment, read from /proc.
import Foundation
import Testing
import TestSupport
import Flipout3D

@Suite struct OpenMPWaitPolicyTests {
    /// The environment a running flipout ended up with: polled from /proc until `until` holds or it exits.
    func environmentOfTraining(_ env: [String: String], until: ([String]) -> Bool) throws -> [String] {
        let (dir, data) = try TinyFolderRun.folder("omp-wait-policy")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: BuildProducts.flipout)
        p.arguments = ["train", "--data", data, "--run", dir.appendingPathComponent("run").path] + TinyFolderRun.options.dropLast(2) + ["--epochs", "4"]
        p.environment = env
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate() }; p.waitUntilExit() }
        var seen: [String] = []
        while p.isRunning {
            if let d = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(p.processIdentifier)/environ")) {
                seen = String(decoding: d, as: UTF8.self).split(separator: "\0").map(String.init)
                if until(seen) { break }
            }
            usleep(2000)
        }
        return seen
    }

    @Test func flipoutRunsOpenMPPassiveUnlessTheEnvironmentChooses() throws {
        var env = FlipoutCLI.hermeticEnvironment
        env["OMP_WAIT_POLICY"] = nil; env["GOMP_SPINCOUNT"] = nil
        let passive = try environmentOfTraining(env) { $0.contains("OMP_WAIT_POLICY=passive") }
        #expect(passive.contains("OMP_WAIT_POLICY=passive"), "\(passive.filter { $0.hasPrefix("OMP") })")
        env["OMP_WAIT_POLICY"] = "active"
        let active = try environmentOfTraining(env) { !$0.isEmpty }
        #expect(active.contains("OMP_WAIT_POLICY=active") && !active.contains("OMP_WAIT_POLICY=passive"))
    }
}
