// MemoryTrace: resident and peak memory at named points of a U-Net step, printed when FLIPOUT_MEMORY_TRACE is set.
import Foundation

/// Where a step's memory peak is, by measurement: with `FLIPOUT_MEMORY_TRACE=1` in the
/// environment, the U-Net prints after each block of forward and backward a line
/// `memory: <point>: rss R MiB, peak P MiB, pool T MiB, arena A MiB, tensors L MiB` to stderr:
/// VmRSS and VmHWM of /proc/self/status, the idle bytes `TensorStorage` and `ScratchArena` hold
/// (resident, part of R) for reuse, and the bytes of large tensors alive (of 1 MiB or more).
/// The block after which the peak grows is the one that set it. Off by default (no cost but a
/// flag test).
public enum MemoryTrace {
    public static let enabled = ProcessInfo.processInfo.environment["FLIPOUT_MEMORY_TRACE"] != nil

    /// Prints the current and peak resident memory at `point` when tracing is on.
    public static func mark(_ point: @autoclosure () -> String) {
        guard enabled, let (rss, peak) = current() else { return }
        let idle = "pool \(TensorStorage.idleBytes >> 20) MiB, arena \(ScratchArena.shared.idleBytes >> 20) MiB, tensors \(TensorStorage.liveBytes >> 20) MiB"
        FileHandle.standardError.write(Data("memory: \(point()): rss \(rss >> 20) MiB, peak \(peak >> 20) MiB, \(idle)\n".utf8))
    }

    /// (VmRSS, VmHWM) in bytes from /proc/self/status; nil where there is none (not Linux).
    public static func current() -> (rss: Int, peak: Int)? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        func kib(_ key: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return nil }
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        guard let rss = kib("VmRSS"), let peak = kib("VmHWM") else { return nil }
        return (rss << 10, peak << 10)
    }
}
