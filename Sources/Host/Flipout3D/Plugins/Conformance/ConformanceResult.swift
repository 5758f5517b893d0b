// What `flipout plugins check` reports: one line per (family, check), as a table or JSON.

/// The outcome of one check of one family.
public struct ConformanceResult: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable { case pass, fail, skip }
    public var family: String
    public var check: String
    public var outcome: Outcome
    /// What was checked (pass), why not (skip), or the first thing that was wrong (fail).
    public var detail: String
    public init(family: String, check: String, outcome: Outcome, detail: String) {
        self.family = family; self.check = check; self.outcome = outcome; self.detail = detail
    }
}

/// Every result for one target (a plugin file or a family id).
public struct ConformanceReport: Codable, Sendable {
    public var target: String
    public var results: [ConformanceResult]
    /// Set when the target itself was bad command-line input (an unknown id): the worker's message.
    public var usageError: String?
    public var failures: Int { results.filter { $0.outcome == .fail }.count }
    public var passed: Bool { failures == 0 && !results.isEmpty }

    public init(target: String, results: [ConformanceResult]) { self.target = target; self.results = results }

    /// The readable table, details wrapped to `width` columns, then a summary line.
    public func table(width: Int = 100) -> String {
        let fw = max(6, results.map(\.family.count).max() ?? 6), cw = max(5, results.map(\.check.count).max() ?? 5)
        func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
        var out = "\(pad("FAMILY", fw))  \(pad("CHECK", cw))  RESULT  DETAIL\n"
        let indent = fw + cw + 12
        for r in results {
            let tag = r.outcome == .fail ? "FAIL" : r.outcome.rawValue
            let lines = wrap(r.detail, max(30, width - indent))
            out += "\(pad(r.family, fw))  \(pad(r.check, cw))  \(pad(tag, 6))  \(lines.first ?? "")\n"
            for l in lines.dropFirst() { out += String(repeating: " ", count: indent) + l + "\n" }
        }
        let skipped = results.filter { $0.outcome == .skip }.count
        out += "\n\(target): \(results.count - skipped - failures) passed, \(failures) failed" + (skipped > 0 ? ", \(skipped) not applicable" : "") + "\n"
        return out
    }

    private func wrap(_ s: String, _ width: Int) -> [String] {
        var lines: [String] = [], line = ""
        for word in s.split(separator: " ", omittingEmptySubsequences: false) {
            if !line.isEmpty && line.count + 1 + word.count > width { lines.append(line); line = String(word) }
            else { line += (line.isEmpty ? "" : " ") + word }
        }
        if !line.isEmpty || lines.isEmpty { lines.append(line) }
        return lines
    }
}
