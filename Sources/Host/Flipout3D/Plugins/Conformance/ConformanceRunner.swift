// The parent side of `flipout plugins check`: every check runs in a child process with a timeout,
// so a trap, a crash or a hang in a plugin becomes a line of the report, not a dead host.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The line protocol between the parent and a worker child, on the child's stdout. Lines without
/// the marker (a plugin's own output, the Swift runtime's "Fatal error: ...") are kept as context.
public enum ConformanceProtocol {
    public static let marker = "@@flipout-check "

    /// Writes one protocol line at once (write(2), unbuffered: it must survive a crash right after).
    public static func emit(_ kind: String, _ payload: String) {
        let line = marker + kind + " " + payload.replacingOccurrences(of: "\n", with: " ") + "\n"
        _ = line.withCString { Glibc.write(1, $0, strlen($0)) }
    }

    public static func json<T: Encodable>(_ value: T) -> String {
        String(decoding: (try? JSONEncoder().encode(value)) ?? Data(), as: UTF8.self)
    }
}

/// One family a worker found, and the checks that apply to it.
public struct ConformancePlan: Codable, Sendable {
    public var family: String
    public var checks: [String]
    public init(family: String, checks: [String]) { self.family = family; self.checks = checks }
}

public struct ConformanceRunner {
    /// The program and arguments that start a worker; the runner appends `--list` or
    /// `--family ID --from K`.
    public var worker: [String]
    /// Seconds one check may take before its child is killed.
    public var timeout: Double
    /// Called with a short progress line (a family started, a check failed).
    public var progress: (String) -> Void

    public init(worker: [String], timeout: Double, progress: @escaping (String) -> Void = { _ in }) {
        self.worker = worker; self.timeout = timeout; self.progress = progress
    }

    /// Every check of every family the worker finds.
    public func run(target: String) -> ConformanceReport {
        var results: [ConformanceResult] = []
        let listing = Child.run(worker + ["--list"], timeout: max(timeout, 30)) { _ in false }
        let plans = listing.lines.compactMap { line -> [ConformancePlan]? in
            guard line.kind == "plan" else { return nil }
            return try? JSONDecoder().decode([ConformancePlan].self, from: Data(line.payload.utf8))
        }.first
        guard let plans, !plans.isEmpty else {
            let why = listing.ending.map { "\($0) while loading the plugin" } ?? "the plugin did not load"
            let context = listing.context.last.map { ": \($0)" } ?? ""
            var report = ConformanceReport(target: target, results: [ConformanceResult(family: "-", check: "load", outcome: .fail, detail: why + context)])
            if listing.ending == "exited with status 64" { report.usageError = listing.context.last ?? "bad command-line input" }
            return report
        }
        for plan in plans {
            progress("checking \(plan.family): \(plan.checks.count) checks")
            var next = 0
            while next < plan.checks.count {
                var current: Int?
                var currentAt = ""
                var got: [ConformanceResult] = []
                let child = Child.run(worker + ["--family", plan.family, "--from", String(next)], timeout: timeout) { line in
                    switch line.kind {
                    case "begin": current = Int(line.payload.split(separator: " ").first ?? ""); currentAt = ""; return true
                    case "at": currentAt = line.payload; return false
                    case "result":
                        if let r = try? JSONDecoder().decode(ConformanceResult.self, from: Data(line.payload.utf8)) { got.append(r) }
                        current = nil
                        return true
                    default: return false
                    }
                }
                results += got
                for r in got where r.outcome == .fail { progress("  \(r.check): FAIL") }
                next += got.count
                // A worker that exits 0 inside a check (a plugin calling exit) did not finish it.
                guard let ending = child.ending ?? (current != nil ? "exited with status 0 during the check (a plugin must return, never call exit)" : nil) else {
                    if got.isEmpty { break }  // clean exit: the worker ran everything from `next`
                    continue
                }
                // The child died or hung in check `current`: record where, go on with the next.
                let index = current ?? next
                let name = index < plan.checks.count ? plan.checks[index] : "?"
                let place = currentAt.isEmpty ? "" : " in \(currentAt)"
                let context = child.context.last(where: { $0.contains("Fatal error") || $0.contains("error") }).map { " (\($0))" } ?? ""
                results.append(ConformanceResult(family: plan.family, check: name, outcome: .fail, detail: "\(ending)\(place)\(context)"))
                progress("  \(name): \(ending)\(place)")
                next = index + 1
            }
        }
        return ConformanceReport(target: target, results: results)
    }
}

/// A worker child: its protocol lines, the other lines it printed, and how it ended if not cleanly.
struct Child {
    struct Line { let kind: String; let payload: String }
    var lines: [Line] = []
    var context: [String] = []
    /// nil: exited 0. Else "crashed (SIGSEGV)", "hung (no answer within 10 s)", "exited with status 3".
    var ending: String?

    /// Runs the child; `onLine` returns true when the line restarts the timeout (a check began or ended).
    static func run(_ argv: [String], timeout: Double, onLine: (Line) -> Bool) -> Child {
        var child = Child()
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { child.ending = "could not create a pipe (errno \(errno))"; return child }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var pid: pid_t = 0
        let cargs = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        // The worker's environment, without the Swift crash backtracer (a new process the sandbox refuses).
        var env = ProcessInfo.processInfo.environment.filter { $0.key != "SWIFT_BACKTRACE" }.map { "\($0.key)=\($0.value)" } + PluginSandbox.childEnvironment
        let cenv = env.map { strdup($0) } + [nil]
        defer { for e in cenv { free(e) }; env.removeAll() }
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, cenv)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); child.ending = "could not start \(argv[0]) (errno \(rc))"; return child }

        var pending = [UInt8]()
        var deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 65536)
        var timedOut = false
        readLoop: while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { timedOut = true; break }
            var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(min(left, 1) * 1000) + 1)
            if ready < 0 { if errno == EINTR { continue }; break }
            if ready == 0 { continue }
            let got = read(fds[0], &buffer, buffer.count)
            if got <= 0 { break }
            pending += buffer[0..<got]
            while let nl = pending.firstIndex(of: 0x0a) {
                let text = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                if text.hasPrefix(ConformanceProtocol.marker) {
                    let body = text.dropFirst(ConformanceProtocol.marker.count)
                    let kind = body.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
                    let payload = body.count > kind.count ? String(body.dropFirst(kind.count + 1)) : ""
                    let line = Line(kind: kind, payload: payload)
                    child.lines.append(line)
                    if onLine(line) { deadline = Date().addingTimeInterval(timeout) }
                } else if !text.isEmpty {
                    child.context.append(PluginString.escaped(String(text.prefix(2000))))
                    if child.context.count > 20 { child.context.removeFirst() }
                }
            }
            continue readLoop
        }
        if timedOut { kill(pid, SIGKILL) }
        close(fds[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        if timedOut {
            child.ending = "hung (no answer within \(timeout < 10 ? String(format: "%.1f", timeout) : String(Int(timeout))) s; killed)"
        } else if signaled {
            child.ending = "crashed (\(signalName(status & 0x7f)))"
        } else if (status >> 8) & 0xff != 0 {
            child.ending = "exited with status \((status >> 8) & 0xff)"
        }
        return child
    }

    static func signalName(_ s: Int32) -> String {
        switch s {
        case SIGSEGV: return "SIGSEGV"
        case SIGILL: return "SIGILL"
        case SIGTRAP: return "SIGTRAP"
        case SIGABRT: return "SIGABRT"
        case SIGBUS: return "SIGBUS"
        case SIGFPE: return "SIGFPE"
        case SIGKILL: return "SIGKILL"
        case SIGSYS: return "SIGSYS: the plugin sandbox refused a file write, network access or a new process"
        default: return "signal \(s)"
        }
    }
}

/// The worker side: lists the plan, or runs checks from one index on, announcing each.
public enum ConformanceWorker {
    public static func plans(_ families: [DistributionFamily]) -> [ConformancePlan] {
        families.map { f in
            ConformancePlan(family: f.id, checks: ConformanceSuite.allChecks.filter { check in
                switch check {
                case "sample", "sample_vjp", "center", "center_vjp", "noise": return f.canSample
                case "symmetry": return f.isSymmetric
                case "kl", "kl_vjp": return !f.klFamilies.isEmpty
                default: return true
                }
            })
        }
    }

    public static func list(_ families: [DistributionFamily]) {
        ConformanceProtocol.emit("plan", ConformanceProtocol.json(plans(families)))
    }

    public static func run(_ family: DistributionFamily, from: Int, partner: @escaping (String) -> DistributionFamily?) {
        let checks = plans([family])[0].checks
        do {
            let suite = try ConformanceSuite(family: family, partner: partner) { ConformanceProtocol.emit("at", $0) }
            for (i, check) in checks.enumerated() where i >= from {
                ConformanceProtocol.emit("begin", "\(i) \(check)")
                ConformanceProtocol.emit("result", ConformanceProtocol.json(suite.run(check)))
            }
        } catch {
            for (i, check) in checks.enumerated() where i >= from {
                ConformanceProtocol.emit("begin", "\(i) \(check)")
                ConformanceProtocol.emit("result", ConformanceProtocol.json(ConformanceResult(family: family.id, check: check, outcome: .fail, detail: "cannot create an instance with default hyperparameters: \(error)")))
            }
        }
    }
}
