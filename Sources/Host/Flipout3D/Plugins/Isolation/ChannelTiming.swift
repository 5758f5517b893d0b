// How long each side of an isolated call spins on the shared-memory channel before sleeping in the kernel.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Spin budgets of the channel, in nanoseconds. A plugin call over one layer's weights takes
/// tens of microseconds, and so does waking a sleeping process through the kernel: spinning
/// for about a call's length removes both wake-ups of most round trips. Past `pause` a spinner
/// yields its CPU between checks (sched_yield returns at once on an idle CPU), so it gives way
/// to runnable work: the host's OpenMP threads, the other side of the call, other programs.
/// The host waits for a reply up to `hostSpin`; the child waits for the next request up to
/// `childSpin` (short: between layers the host convolves on every core, which a spinning child
/// would slow down). FLIPOUT_ISOLATION_SPIN_US="HOST,CHILD" overrides both (0 = always sleep).
enum ChannelTiming {
    static let hostSpin: UInt64 = budgets.host
    static let childSpin: UInt64 = budgets.child
    static let pause: UInt64 = 5_000

    private static let budgets: (host: UInt64, child: UInt64) = {
        let defaults: (UInt64, UInt64) = (300_000, 100_000)
        guard let text = getenv("FLIPOUT_ISOLATION_SPIN_US").map({ String(cString: $0) }) else { return defaults }
        let parts = text.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, parts.allSatisfy({ $0 <= 1_000_000 }) else { return defaults }
        return (parts[0] * 1000, parts[1] * 1000)
    }()
}
