// How long each side of an isolated call spins on the shared-memory channel before sleeping in the kernel.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Spin budgets of the channel, in nanoseconds: how long the host spins on the reply's sequence
/// word (`hostSpin`) and the child on the next request's (`childSpin`) before sleeping on the
/// socket; past `pause` a spinner yields its CPU between checks. Both are 0 by default: neither
/// side spins. Measured with `scripts/bench-isolation` (default `train --data`, 2 threads, Zen 4
/// KVM, 3 alternating rounds): always sleeping (0,0) ran 88.6-99.0 ms per step, 5 µs each 97-105,
/// 30 µs 92-103, 300/100 µs 97-104, against 84-98 in-process. A spinner, even yielding, takes a
/// core from the other process's threads (the child's split calls, the host's OpenMP team) on a
/// 2-core machine, and a kernel wake-up costs ~40 µs (stats: 1700 wake-ups added 60-80 ms over
/// 32 steps). FLIPOUT_ISOLATION_SPIN_US="HOST,CHILD" (µs) sets both, to measure on other machines.
enum ChannelTiming {
    static let hostSpin: UInt64 = budgets.host
    static let childSpin: UInt64 = budgets.child
    static let pause: UInt64 = 5_000

    private static let budgets: (host: UInt64, child: UInt64) = {
        let defaults: (UInt64, UInt64) = (0, 0)
        guard let text = getenv("FLIPOUT_ISOLATION_SPIN_US").map({ String(cString: $0) }) else { return defaults }
        let parts = text.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, parts.allSatisfy({ $0 <= 1_000_000 }) else { return defaults }
        return (parts[0] * 1000, parts[1] * 1000)
    }()
}
