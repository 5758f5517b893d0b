// A progress line for long work: done/total, rate, ETA, and the latest figures, redrawn in place.
import Foundation

public final class ProgressLine {
    let total: Int
    let label: String
    let start = Date()
    let interactive: Bool
    var lastDraw = Date.distantPast
    public var enabled = true

    public init(total: Int, label: String) {
        self.total = total
        self.label = label
        interactive = isatty(STDERR_FILENO) != 0
    }

    /// Redraws at most 4 times a second on a terminal, every 10% otherwise.
    public func update(done: Int, _ detail: String) {
        guard enabled else { return }
        let now = Date()
        let elapsed = now.timeIntervalSince(start)
        let rate = Double(done) / max(elapsed, 1e-9)
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let line = String(format: "%@ %d/%d  %.2f/s  ETA %@  %@", label, done, total, rate, Self.clock(eta), detail)
        if interactive {
            guard now.timeIntervalSince(lastDraw) > 0.25 || done == total else { return }
            fputs("\r\u{1B}[K" + line + (done == total ? "\n" : ""), stderr)
        } else {
            let step = max(1, total / 10)
            guard done % step == 0 || done == total else { return }
            fputs(line + "\n", stderr)
        }
        lastDraw = now
    }

    static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}
