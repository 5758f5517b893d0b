// Out-of-process plugins through the built binary: the fault matrix under train --data, the sandbox, bit-identity, settings.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// Tests/Fixtures/faulty_plugin.c built once; copies named libfaulty-<fault>-<function>[-<k>].so choose the fault.
enum FaultyFixture {
    static let built: Result<URL, Error> = Result {
        let dir = try Fixtures.temporaryDirectory("flipout-faulty")
        return try Fixtures.compileC([Fixtures.source("faulty_plugin.c")], output: dir.appendingPathComponent("libfaulty.so"))
    }

    /// A byte-identical copy of the fixture whose name selects `fault` in `function` (on its k-th call).
    static func copy(_ fault: String, _ function: String, k: Int = 1) throws -> String {
        let base = try built.get()
        let name = "libfaulty-\(fault)-\(function)" + (k == 1 ? "" : "-\(k)") + ".so"
        let url = base.deletingLastPathComponent().appendingPathComponent(name)
        if !FileManager.default.fileExists(atPath: url.path) { try FileManager.default.copyItem(at: base, to: url) }
        return url.path
    }
}

/// The tiny U-Net run of the matrix: one step per epoch on a two-case synthetic folder.
private func train(_ data: String, run: String, epochs: Int, plugin: String, role: [String], extra: [String] = []) throws -> Subprocess.Result {
    try FlipoutCLI.run(["train", "--data", data, "--run", run, "--steps-per-epoch", "1", "--patch", "16,16,16", "--width", "2", "--levels", "2",
                        "--samples", "1", "--quiet", "--epochs", String(epochs), "--plugin", plugin] + role + extra)
}

@Suite(.serialized) struct PluginIsolationTests {
    /// The three ways the fixture is used: as the posterior (Normal prior, Monte Carlo KL, which
    /// calls its log_prob, log_prob_vjp, sample, sample_vjp and center), as the prior with a
    /// Monte Carlo KL (its log_prob and log_prob_vjp), and as the prior with its analytic KL.
    struct Role {
        let name: String
        let options: [String]
        /// A function the role calls every epoch, to stop the base run inside epoch 2.
        let probe: String
        /// Functions the role never calls: a fault there leaves valid output (exit 0).
        let unused: Set<String>
    }
    static let roles = [
        Role(name: "posterior", options: ["--posterior", "org.fixture.faulty"], probe: "sample", unused: ["kl"]),
        Role(name: "prior-mc", options: ["--prior", "org.fixture.faulty", "--mc-kl"], probe: "log_prob", unused: ["sample", "sample_vjp", "center", "kl"]),
        Role(name: "prior-analytic", options: ["--prior", "org.fixture.faulty"], probe: "kl", unused: ["sample", "sample_vjp", "center", "log_prob", "log_prob_vjp"]),
    ]
    static let faults = ["trap", "segv", "abort", "hang", "exit0", "nan"]
    static let functions = ["entry", "log_prob", "log_prob_vjp", "sample", "sample_vjp", "center", "kl"]
    static let watchdog = 2.0

    /// A run folder stopped inside epoch 2 (checkpoint of epoch 1, which records 2 epochs): the
    /// fixture crashes at the first `probe` call after the calls up to the end of epoch 1, counted
    /// first (the calls printed before the "epoch 1:" line: after it the run decides its
    /// post-processing, which predicts the training cases).
    static func baseRun(_ role: Role, data: String, dir: URL) throws -> URL {
        let counted = try train(data, run: dir.appendingPathComponent("\(role.name)-count").path, epochs: 1,
                                plugin: try FaultyFixture.copy("count", role.probe), role: role.options)
        #expect(counted.status == 0, "\(counted.stderr)")
        let throughEpoch1 = counted.stderr.components(separatedBy: "epoch 1:").first ?? ""
        let perEpoch = throughEpoch1.components(separatedBy: "org.fixture.faulty: \(role.probe) call ").count - 1
        #expect(perEpoch > 0, "\(role.name): no \(role.probe) calls in an epoch")
        let run = dir.appendingPathComponent("\(role.name)-base")
        let r = try train(data, run: run.path, epochs: 2, plugin: try FaultyFixture.copy("segv", role.probe, k: perEpoch + 1), role: role.options)
        #expect(r.status == 1 && r.stderr.contains("epoch 1:") && !r.stderr.contains("epoch 2:"), "\(role.name) base: \(r.status) \(r.stderr)")
        return run
    }

    @Test func everyFaultInEveryFunctionIsAnErrorNamingThePluginAndKeepsTheCheckpoint() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-matrix")
        struct Cell { let name: String; let role: Role; let function: String; let run: URL; let plugin: String; let checkpoint: Data }
        var cells: [Cell] = []
        for role in Self.roles {
            let base = try Self.baseRun(role, data: data, dir: dir)
            let checkpoint = try Data(contentsOf: base.appendingPathComponent("checkpoint.safetensors"))
            for function in Self.functions {
                // The analytic-KL prior exists for the kl column; the Monte Carlo prior covers the rest.
                if role.name == "prior-analytic" && function != "kl" { continue }
                if role.name == "prior-mc" && function == "kl" { continue }
                for fault in Self.faults {
                    let run = dir.appendingPathComponent("\(role.name)-\(fault)-\(function)")
                    try FileManager.default.copyItem(at: base, to: run)
                    cells.append(Cell(name: "\(role.name) \(fault) in \(function)", role: role, function: function, run: run,
                                      plugin: try FaultyFixture.copy(fault, function), checkpoint: checkpoint))
                }
            }
        }
        // Cells are independent processes and folders: two at a time (the machine's 2 cores).
        let lock = NSLock()
        var failures: [String] = []
        var slowest = (seconds: 0.0, cell: "")
        DispatchQueue.concurrentPerform(iterations: 2) { lane in
            for cell in stride(from: lane, to: cells.count, by: 2).map({ cells[$0] }) {
                var problems: [String] = []
                let start = Date()
                let r: Subprocess.Result
                do {
                    r = try FlipoutCLI.run(["train", "--resume", cell.run.appendingPathComponent("checkpoint.safetensors").path, "--quiet",
                                            "--plugin", cell.plugin, "--plugin-timeout", String(Self.watchdog)])
                } catch { lock.withLock { failures.append("\(cell.name): \(error)") }; continue }
                let seconds = Date().timeIntervalSince(start)
                let after = try? Data(contentsOf: cell.run.appendingPathComponent("checkpoint.safetensors"))
                let file = (cell.plugin as NSString).lastPathComponent
                if seconds > Self.watchdog + 15 { problems.append("took \(seconds) s") }
                if cell.role.unused.contains(cell.function) {
                    // Never called in this role: the run finishes epoch 2 and writes its checkpoint.
                    if r.status != 0 || after == cell.checkpoint { problems.append("expected a finished epoch 2, got \(r.status): \(r.stderr)") }
                } else {
                    if r.status != 1 { problems.append("exit \(r.status), expected 1: \(r.stderr)") }
                    if cell.function == "entry" {
                        if !(r.stderr.contains(file) && (r.stderr.contains("flipout_plugin_entry_v1") || r.stderr.contains("org.fixture.faulty"))) {
                            problems.append("message does not name the plugin and its entry point: \(r.stderr)")
                        }
                    } else {
                        if !(r.stderr.contains(file) && r.stderr.contains("org.fixture.faulty") && r.stderr.contains("function \(cell.function)")) {
                            problems.append("message does not name plugin, family and function: \(r.stderr)")
                        }
                        if !r.stderr.contains(" at ") { problems.append("no parameter point: \(r.stderr)") }
                    }
                    if after != cell.checkpoint { problems.append("the checkpoint changed") }
                }
                lock.withLock {
                    failures += problems.map { "\(cell.name): \($0)" }
                    if seconds > slowest.seconds { slowest = (seconds, cell.name) }
                }
            }
        }
        print("isolation matrix: \(cells.count) cells, slowest \(String(format: "%.1f", slowest.seconds)) s (\(slowest.cell)), watchdog \(Self.watchdog) s")
        #expect(cells.count == 84)
        #expect(failures.isEmpty, "\(failures.count) cells failed:\n\(failures.joined(separator: "\n"))")
    }

    @Test func theSandboxRefusesFileWritesAndSocketsAndTheHostSaysSo() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-sandbox")
        let marker = "/tmp/flipout-faulty-plugin-wrote-here"
        try? FileManager.default.removeItem(atPath: marker)
        let options = ["--posterior", "org.fixture.faulty"]
        let write = try train(data, run: dir.appendingPathComponent("write").path, epochs: 1, plugin: try FaultyFixture.copy("write", "sample"), role: options)
        #expect(write.status == 1 && write.stderr.contains("sandbox refused the system call openat") && write.stderr.contains("opening a file for writing")
                && write.stderr.contains("function sample") && write.stderr.contains("libfaulty-write-sample.so"), "\(write.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        let socket = try train(data, run: dir.appendingPathComponent("socket").path, epochs: 1, plugin: try FaultyFixture.copy("socket", "sample"), role: options)
        #expect(socket.status == 1 && socket.stderr.contains("sandbox refused the system call socket") && socket.stderr.contains("network"), "\(socket.stderr)")
        // In-process nothing stops it: the refusal above is the sandbox's.
        let inProcess = try train(data, run: dir.appendingPathComponent("write-none").path, epochs: 1, plugin: try FaultyFixture.copy("write", "sample"),
                                  role: options, extra: ["--isolate-plugins", "none"])
        #expect(inProcess.status == 0 && FileManager.default.fileExists(atPath: marker), "\(inProcess.stderr)")
        try? FileManager.default.removeItem(atPath: marker)
    }

    @Test func isolatedAndInProcessTrainingAreBitIdentical() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-identical")
        // A third-party copy of the bundled Normal, and the C fixture as the prior. Width 8: the
        // 16-channel layers hold more than 4096 weights, so calls are split into sub-ranges over
        // threads, in-process and in the child.
        let copy = dir.appendingPathComponent("third-party/libThirdPartyNormal.so")
        try FileManager.default.createDirectory(at: copy.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: BuildProducts.plugin("FlipoutNormal"), toPath: copy.path)
        let fixture = try FaultyFixture.built.get().path
        var checkpoints: [Data] = []
        for isolation in ["none", "third-party", "all"] {
            let run = dir.appendingPathComponent("run-\(isolation)").path
            let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--steps-per-epoch", "2", "--patch", "16,16,16", "--width", "8", "--levels", "2",
                                        "--samples", "1", "--quiet", "--epochs", "2", "--no-bundled", "--plugin", copy.path, "--plugin", fixture,
                                        "--prior", "org.fixture.faulty", "--isolate-plugins", isolation])
            #expect(r.status == 0, "\(isolation): \(r.stderr)")
            checkpoints.append(try Data(contentsOf: URL(fileURLWithPath: run).appendingPathComponent("checkpoint.safetensors")))
        }
        // Isolated with stats (the default: neither side spins, so replies go through a kernel
        // wake-up), then with spinning budgets, the channel's other path.
        for spin in [nil, "1000,1000"] {
            let run = dir.appendingPathComponent("run-spin-\(spin ?? "none")").path
            var env = FlipoutCLI.hermeticEnvironment
            env["FLIPOUT_ISOLATION_SPIN_US"] = spin
            env["FLIPOUT_ISOLATION_STATS"] = "1"
            let r = try Subprocess.run(BuildProducts.flipout, ["train", "--data", data, "--run", run, "--steps-per-epoch", "2", "--patch", "16,16,16", "--width", "8",
                                                               "--levels", "2", "--samples", "1", "--quiet", "--epochs", "2", "--no-bundled", "--plugin", copy.path,
                                                               "--plugin", fixture, "--prior", "org.fixture.faulty", "--isolate-plugins", "third-party"], environment: env)
            #expect(r.status == 0, "spin \(spin ?? "default"): \(r.stderr)")
            checkpoints.append(try Data(contentsOf: URL(fileURLWithPath: run).appendingPathComponent("checkpoint.safetensors")))
            let stats = r.stderr.components(separatedBy: "\n").first { $0.contains("isolation stats:") } ?? ""
            let words = stats.split(separator: " ")
            let woken = words.indices.first { words[$0] == "woke" && $0 + 2 < words.count && words[$0 + 2].hasPrefix("host") }.flatMap { Int(words[$0 - 1]) }
            #expect(woken != nil, "no stats line: \(r.stderr)")
            if spin == nil { #expect((woken ?? 0) > 0, "no reply went through the sleeping path: \(stats)") }
            // Round trips of a training step (counts, not times): 7 Flipout layers, the posterior
            // (the Normal copy) and the prior (the fixture) in two children. Before the forward pass
            // every layer's center and sample (posterior's child) and analytic KL values (prior's
            // child) are drawn in one batch per child; the VJPs are posted, then collected in one
            // batch per child: 4. Synchronous calls were 6 per layer (42), then 2 per layer (16).
            let perStep = r.stderr.components(separatedBy: "\n").first { $0.contains("training step after the first took a median") }
                .flatMap { $0.components(separatedBy: "median ").last?.split(separator: " ").first }.flatMap { Double($0) }
            #expect(perStep != nil && perStep! <= 4, "round trips per step: \(r.stderr)")
            #expect(stats.contains("calls posted without waiting: ") && !stats.contains("calls posted without waiting: none"), "\(stats)")
        }
        #expect(Set(checkpoints).count == 1, "isolated and in-process checkpoints differ")
        // An isolated posterior (the fixture) with the bundled Normal as an in-process prior and a
        // Monte Carlo KL: the prior's in-process VJPs and the posterior's synchronous log_prob_vjp
        // add into gradients the posterior's posted VJPs add into, so those are collected first.
        var mixed: [Data] = []
        for isolation in ["none", "third-party"] {
            let run = dir.appendingPathComponent("run-mixed-\(isolation)").path
            let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--steps-per-epoch", "3", "--patch", "16,16,16", "--width", "8", "--levels", "2",
                                        "--samples", "1", "--quiet", "--epochs", "1", "--plugin", fixture, "--posterior", "org.fixture.faulty",
                                        "--prior", "org.flipout3d.normal", "--mc-kl", "--isolate-plugins", isolation])
            #expect(r.status == 0, "mixed \(isolation): \(r.stderr)")
            mixed.append(try Data(contentsOf: URL(fileURLWithPath: run).appendingPathComponent("checkpoint.safetensors")))
        }
        #expect(mixed[0] == mixed[1], "an isolated posterior with an in-process prior trains differently from in-process")
    }

    /// A fault in a posted call (sample_vjp of the second step, whose VJPs are posted and run in
    /// one batch when the step collects them) is reported there, naming the plugin, family,
    /// function and parameter point, before any optimizer step: a NaN gradient (checked in the
    /// child), a crash (the batch's call index names the call), and a hang (the per-call watchdog).
    @Test func aFaultInAPostedCallIsReportedWhenTheStepCollectsIt() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-posted")
        // 7 Flipout layers at width 2, levels 2: the 9th sample_vjp is the second step's third.
        for fault in ["nan", "segv", "hang"] {
            let plugin = try FaultyFixture.copy(fault, "sample_vjp", k: 9)
            let run = dir.appendingPathComponent("run-\(fault)")
            var env = FlipoutCLI.hermeticEnvironment
            env["FLIPOUT_ISOLATION_STATS"] = "1"
            let start = Date()
            let r = try Subprocess.run(BuildProducts.flipout, ["train", "--data", data, "--run", run.path, "--steps-per-epoch", "3", "--patch", "16,16,16",
                                                               "--width", "2", "--levels", "2", "--samples", "1", "--quiet", "--epochs", "1",
                                                               "--plugin", plugin, "--posterior", "org.fixture.faulty", "--prior", "org.fixture.faulty",
                                                               "--plugin-timeout", String(Self.watchdog)], environment: env)
            let file = (plugin as NSString).lastPathComponent
            #expect(r.status == 1, "\(fault): exit \(r.status): \(r.stderr)")
            #expect(r.stderr.contains(file) && r.stderr.contains("family org.fixture.faulty, function sample_vjp") && r.stderr.contains(" at "),
                    "\(fault): \(r.stderr)")
            #expect(r.stderr.contains("collected before the optimizer step"), "\(fault): not reported at the collect: \(r.stderr)")
            #expect(r.stderr.contains(fault == "nan" ? "non-finite result" : fault == "segv" ? "SIGSEGV" : "no answer within"), "\(fault): \(r.stderr)")
            #expect(r.stderr.contains("calls posted without waiting: ") && !r.stderr.contains("calls posted without waiting: none"), "\(fault): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: run.appendingPathComponent("checkpoint.safetensors").path))
            #expect(Date().timeIntervalSince(start) < Self.watchdog + 60)
        }
    }

    @Test func foreignPriorsRunIsolatedWithTheSameResults() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-foreign")
        let spec = try ForeignFixture.cauchySpec()
        var checkpoints: [Data] = []
        for isolation in ["none", "third-party"] {
            let run = dir.appendingPathComponent("run-\(isolation)").path
            let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--steps-per-epoch", "1", "--patch", "16,16,16", "--width", "2", "--levels", "2",
                                        "--samples", "1", "--quiet", "--epochs", "1", "--foreign-prior", spec, "--prior", "org.example.cauchy",
                                        "--isolate-plugins", isolation])
            #expect(r.status == 0, "\(isolation): \(r.stderr)")
            checkpoints.append(try Data(contentsOf: URL(fileURLWithPath: run).appendingPathComponent("checkpoint.safetensors")))
        }
        #expect(checkpoints[0] == checkpoints[1])
        let inspect = try FlipoutCLI.run(["plugins", "inspect", "org.example.cauchy", "--foreign-prior", spec])
        #expect(inspect.status == 0 && inspect.stdout.contains("foreign: cauchy_logpdf"), "\(inspect.stderr)")
    }

    @Test func inProcessCrashesNameThePluginAndFunction() throws {
        let (dir, data) = try TinyFolderRun.folder("isolation-crash-guard")
        let r = try train(data, run: dir.appendingPathComponent("run").path, epochs: 1, plugin: try FaultyFixture.copy("segv", "log_prob"),
                          role: ["--posterior", "org.fixture.faulty"], extra: ["--isolate-plugins", "none"])
        #expect(r.status != 0 && r.status != 1, "an in-process crash still kills the host")
        #expect(r.stderr.contains("the process died inside a plugin call: plugin ") && r.stderr.contains("libfaulty-segv-log_prob.so")
                && r.stderr.contains("family org.fixture.faulty, function log_prob (SIGSEGV)"), "\(r.stderr)")
        let entry = try FlipoutCLI.run(["plugins", "list", "--plugin", try FaultyFixture.copy("abort", "entry"), "--isolate-plugins", "none"])
        #expect(entry.stderr.contains("function flipout_plugin_entry_v1 (the entry point) (SIGABRT)"), "\(entry.stderr)")
    }

    @Test func listAndInspectSurviveAPluginThatDiesWhileLoading() throws {
        for command in [["plugins", "list"], ["plugins", "inspect", "org.fixture.faulty"]] {
            let r = try FlipoutCLI.run(command + ["--plugin", try FaultyFixture.copy("abort", "entry")])
            #expect(r.status == 1 && r.stderr.contains("libfaulty-abort-entry.so") && r.stderr.contains("SIGABRT")
                    && r.stderr.contains("flipout_plugin_entry_v1"), "\(command): \(r.stderr)")
        }
        let path = try FlipoutCLI.run(["plugins", "inspect", try FaultyFixture.copy("trap", "entry")])
        #expect(path.status == 1 && path.stderr.contains("SIGILL"), "\(path.stderr)")
    }

    @Test func pluginsCheckReportsAnExitAndASandboxRefusalAsFailures() throws {
        let exit0 = try FlipoutCLI.run(["plugins", "check", try FaultyFixture.copy("exit0", "log_prob"), "--timeout", "20"])
        #expect(exit0.status == 1 && exit0.stdout.contains("exited with status 0 during the check"), "\(exit0.stdout)\(exit0.stderr)")
        let write = try FlipoutCLI.run(["plugins", "check", try FaultyFixture.copy("write", "sample"), "--timeout", "20"])
        #expect(write.status == 1 && write.stdout.contains("SIGSYS: the plugin sandbox refused"), "\(write.stdout)\(write.stderr)")
        let clean = try FlipoutCLI.run(["plugins", "check", try FaultyFixture.built.get().path, "--timeout", "60"])
        #expect(clean.status == 0, "the fault-free fixture passes under the sandbox: \(clean.stdout)\(clean.stderr)")
    }

    @Test func isolationSettingsComeFromOptionsThenTheEnvironment() throws {
        #expect(try IsolationSettings.resolve(policy: nil, timeout: nil, environment: [:]) == .default)
        let env = [PluginIsolation.environmentVariable: "all", IsolationSettings.timeoutVariable: "2.5"]
        #expect(try IsolationSettings.resolve(policy: nil, timeout: nil, environment: env) == IsolationSettings(policy: .all, callTimeout: 2.5))
        #expect(try IsolationSettings.resolve(policy: PluginIsolation.none, timeout: 7, environment: env) == IsolationSettings(policy: .none, callTimeout: 7))
        #expect(throws: PluginLoadError.self) { try IsolationSettings.resolve(policy: nil, timeout: nil, environment: [PluginIsolation.environmentVariable: "some"]) }
        #expect(throws: PluginLoadError.self) { try IsolationSettings.resolve(policy: nil, timeout: nil, environment: [IsolationSettings.timeoutVariable: "-1"]) }
        #expect(PluginIsolation.thirdParty.isolates(bundled: false) && !PluginIsolation.thirdParty.isolates(bundled: true))
        #expect(PluginIsolation.all.isolates(bundled: true) && !PluginIsolation.none.isolates(bundled: false))
        let bad = try FlipoutCLI.run(["plugins", "list", "--isolate-plugins", "sometimes"])
        #expect(bad.status == 64, "\(bad.stderr)")
        let timeout = try FlipoutCLI.run(["plugins", "list", "--plugin-timeout", "0"])
        #expect(timeout.status == 64 && timeout.stderr.contains("--plugin-timeout"), "\(timeout.stderr)")
        var environment = FlipoutCLI.hermeticEnvironment
        environment[PluginIsolation.environmentVariable] = "sometimes"
        let envBad = try Subprocess.run(BuildProducts.flipout, ["plugins", "list"], environment: environment)
        #expect(envBad.status == 64 && envBad.stderr.contains(PluginIsolation.environmentVariable), "\(envBad.stderr)")
    }

    @Test func theChildStartsWithNoInheritedDescriptorsAndAMinimalEnvironment() throws {
        // Read /proc of the live child. It is not dumpable (PR_SET_DUMPABLE 0), so only root
        // may read its fd table and environment; as another user only the seccomp state is checked.
        let lib = try PluginLibrary.loadIsolated(try FaultyFixture.copy("none", "nothing"), timeout: 30)
        let pid = try #require(lib.isolated?.processID)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        #expect(status.contains("Seccomp:\t2"), "the child runs under a seccomp filter")
        guard getuid() == 0 else { return }
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap(Int.init).sorted()
        #expect(fds == [0, 1, 2, 3, 4], "\(fds)")
        let environ = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))
        #expect(String(decoding: environ, as: UTF8.self).split(separator: "\0").map(String.init) == PluginSandbox.childEnvironment + [PluginSandbox.childThreads])
        let cwd = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd")
        #expect(cwd == "/")
    }
}
