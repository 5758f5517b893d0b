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
    private static var calls: [WireOp: Int] = [:]
    private static var bytesIn = 0, bytesOut = 0
    private static var copyInNs: UInt64 = 0, waitNs: UInt64 = 0, copyOutNs: UInt64 = 0

    static func record(op: WireOp, copyIn: UInt64, wait: UInt64, copyOut: UInt64, frame: CallFrame) {
        lock.withLock {
            calls[op, default: 0] += 1
            bytesIn += frame.bytes(.input); bytesOut += frame.bytes(.output)
            copyInNs += copyIn; waitNs += wait; copyOutNs += copyOut
        }
    }

    static func report() {
        let total = calls.values.reduce(0, +)
        let ops = calls.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.function)=\($0.value)" }.joined(separator: " ")
        let line = String(format: "flipout: isolation stats: %d round trips (%@), copied in %.1f MB, out %.1f MB; host ms: copy-in %.2f, wait %.2f, copy-out %.2f\n",
                          total, ops, Double(bytesIn) / 1e6, Double(bytesOut) / 1e6, Double(copyInNs) / 1e6, Double(waitNs) / 1e6, Double(copyOutNs) / 1e6)
        fputs(line, stderr)
    }
}
