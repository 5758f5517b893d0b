// Assertions: elementwise closeness checks for Swift Testing that name the worst element and the case.
import Testing

/// Records an issue unless |a[i] - b[i]| <= atol + rtol * |b[i]| for every i (b is the reference).
/// The message gives the case, the worst index, both values, and how many elements failed.
public func assertClose(_ a: [Float], _ b: [Float], rtol: Float = 1e-4, atol: Float = 1e-5, _ context: String,
                        sourceLocation: SourceLocation = #_sourceLocation) {
    guard a.count == b.count else {
        Issue.record("\(context): \(a.count) values vs \(b.count) in the reference", sourceLocation: sourceLocation)
        return
    }
    var worst = -1
    var worstExcess: Float = 0
    var failures = 0
    for i in 0..<a.count {
        let diff = abs(a[i] - b[i])
        let allowed = atol + rtol * abs(b[i])
        // NaN fails too: `!(diff <= allowed)`.
        if !(diff <= allowed) {
            failures += 1
            let excess = diff.isNaN ? .infinity : diff / max(allowed, .leastNormalMagnitude)
            if worst < 0 || excess > worstExcess { worst = i; worstExcess = excess }
        }
    }
    if failures > 0 {
        Issue.record("""
            \(context): \(failures) of \(a.count) elements differ; worst at index \(worst): \
            got \(a[worst]), reference \(b[worst]) (|diff| \(abs(a[worst] - b[worst])), \
            allowed \(atol + rtol * abs(b[worst])))
            """, sourceLocation: sourceLocation)
    }
}

/// Deterministic values in [-1, 1) from a seed (a 64-bit LCG), for test tensors.
public func testValues(_ count: Int, seed: UInt64) -> [Float] {
    var state = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Double(state >> 40) / Double(1 << 24)) * 2 - 1
    }
}
