// Counters of isolated plugin calls (FLIPOUT_ISOLATION_STATS=1): round trips, bytes copied, time per stage.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Load-independent counts (calls, bytes) and wall times of the host's side of isolated calls,
/// printed to stderr when the process exits. Off unless FLIPOUT_ISOLATION_STATS is set.
enum IsolationStats {
    static let enabled: Bool = {
        guard getenv("FLIPOUT_ISOLATION_STATS") != nil else { return false }
        atexit { IsolationStats.report() }
        return true
    }()
    private static let lock = NSLock()
    /// Round trips by operation (a batch of posted calls is one), and calls posted by operation.
    private static var calls: [WireOp: Int] = [:]
    private static var posted: [WireOp: Int] = [:]
    private static var bytesIn = 0, bytesOut = 0
    private static var copyInNs: UInt64 = 0, waitNs: UInt64 = 0, copyOutNs: UInt64 = 0, computeNs: UInt64 = 0, servedNs: UInt64 = 0
    /// Requests that found the child asleep (a wake-up through the socket), and replies the host
    /// slept for (the child woke it): the round trips that paid a kernel wake-up.
    struct Wakeups { var rings = 0, lateRings = 0, sleeps = 0 }
    private static var wakeups = Wakeups()

    static func record(op: WireOp, copyIn: UInt64, wait: UInt64, copyOut: UInt64, compute: UInt64, served: UInt64, frame: CallFrame) {
        lock.withLock {
            calls[op, default: 0] += 1
            bytesIn += frame.bytes(.input); bytesOut += frame.bytes(.output)
            copyInNs += copyIn; waitNs += wait; copyOutNs += copyOut; computeNs += compute; servedNs += served
        }
    }

    /// A call posted without waiting (it runs in a later batch round trip).
    static func recordPosted(op: WireOp, copyIn: UInt64, bytes: Int) {
        lock.withLock { posted[op, default: 0] += 1; copyInNs += copyIn; bytesIn += bytes }
    }

    /// The gradients of a batch of posted calls, copied back.
    static func recordCollected(copyOut: UInt64, bytes: Int) {
        lock.withLock { copyOutNs += copyOut; bytesOut += bytes }
    }

    /// At each collect of posted calls (`PostedPluginCalls.collect`, once per training step, also
    /// in-process): round trips so far, and the CPU seconds so far of this process (every thread,
    /// getrusage) and of the plugins' child processes (their CPU clocks). Their differences are
    /// one training step's: CPU time, unlike wall time, hardly depends on the machine's load.
    private struct Mark { let trips: Int; let hostCPU: Double; let childCPU: Double }
    private static var stepMarks: [Mark] = []
    /// The child processes whose CPU time is counted.
    private static var children: [pid_t] = []

    static func childStarted(_ pid: pid_t) { lock.withLock { children.append(pid) } }

    static func markStep() {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let host = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        lock.withLock {
            var child = 0.0
            for pid in children {
                var clock = clockid_t()
                var t = timespec()
                if clock_getcpuclockid(pid, &clock) == 0 && clock_gettime(clock, &t) == 0 { child += Double(t.tv_sec) + Double(t.tv_nsec) / 1e9 }
            }
            stepMarks.append(Mark(trips: calls.values.reduce(0, +), hostCPU: host, childCPU: child))
        }
    }

    /// The median over the training steps after the first (which runs before posting starts) of
    /// a per-step difference, or nil with fewer than two collects.
    private static func perStep(_ value: (Mark) -> Double) -> Double? {
        let d = zip(stepMarks.dropFirst(), stepMarks).map { value($0) - value($1) }.sorted()
        guard !d.isEmpty else { return nil }
        return d.count % 2 == 1 ? d[d.count / 2] : (d[d.count / 2 - 1] + d[d.count / 2]) / 2
    }

    static var roundTripsPerStep: Double? { perStep { Double($0.trips) } }

    static func count(_ which: WritableKeyPath<Wakeups, Int>) { lock.withLock { wakeups[keyPath: which] += 1 } }

    static func report() {
        let total = calls.values.reduce(0, +)
        let ops = calls.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.function)=\($0.value)" }.joined(separator: " ")
        let postedOps = posted.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.function)=\($0.value)" }.joined(separator: " ")
        let postedText = posted.isEmpty ? "none" : "\(posted.values.reduce(0, +)) (\(postedOps))"
        let line = String(format: "flipout: isolation stats: %d round trips (%@), calls posted without waiting: %@; %d woke the child (%d rang again after the request), %d woke the host; copied in %.1f MB, out %.1f MB; ms: copy-in %.2f, wait %.2f (served %.2f, plugin %.2f), copy-out %.2f\n",
                          total, ops, postedText, wakeups.rings, wakeups.lateRings, wakeups.sleeps, Double(bytesIn) / 1e6, Double(bytesOut) / 1e6,
                          Double(copyInNs) / 1e6, Double(waitNs) / 1e6, Double(servedNs) / 1e6, Double(computeNs) / 1e6, Double(copyOutNs) / 1e6)
        fputs(line, stderr)
        if let trips = roundTripsPerStep, let host = perStep(\.hostCPU), let child = perStep(\.childCPU) {
            fputs(String(format: "flipout: isolation stats: %d training steps collected; a training step after the first took a median %.1f round trips\n",
                         stepMarks.count, trips), stderr)
            fputs(String(format: "flipout: isolation stats: CPU time per training step after the first (medians): this process %.2f ms, the plugins' processes %.2f ms\n",
                         host * 1e3, child * 1e3), stderr)
        }
    }
}
