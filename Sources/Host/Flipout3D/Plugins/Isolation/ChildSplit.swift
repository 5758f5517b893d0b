// The child's side of a split call: a [reentrant] plugin call over sub-ranges on the child's threads.
import PluginABI
import Foundation

/// Runs a plugin call over sub-ranges of `VariationalWeights.chunk` scalars on the child's
/// threads, as the host splits in-process calls (VariationalWeights.split): each scalar's output
/// depends only on its own inputs, so the bits are those of one call over everything. A call
/// whose outputs include a stride-0 cell (a sum over scalars) is not split here: it runs as one
/// call. The first failing sub-range's (lowest offset) status and message are the call's.
enum ChildSplit {
    static func run(n: Int, splittable: Bool, err: UnsafeMutablePointer<flipout_error>,
                    _ body: (_ offset: Int, _ count: Int, _ err: UnsafeMutablePointer<flipout_error>) -> Int32) -> Int32 {
        let chunk = VariationalWeights.chunk
        let parts = (n + chunk - 1) / chunk
        guard splittable, parts > 1 else { return body(0, n, err) }
        let capacity = Int(err.pointee.capacity)
        var statuses = [Int32](repeating: 0, count: parts)
        let messages = UnsafeMutablePointer<CChar>.allocate(capacity: parts * capacity)
        defer { messages.deallocate() }
        statuses.withUnsafeMutableBufferPointer { s in
            let s = s.baseAddress!
            // The same hand-out of sub-ranges over threads as the host's in-process split.
            VariationalWeights.eachSubRange(parts) { p in
                let m = messages + p * capacity
                m[0] = 0
                var e = flipout_error(struct_size: err.pointee.struct_size, capacity: err.pointee.capacity, message: m)
                let offset = p * chunk
                s[p] = body(offset, min(chunk, n - offset), &e)
            }
        }
        guard let failed = statuses.firstIndex(where: { $0 != 0 }) else { return 0 }
        if let out = err.pointee.message, capacity > 0 {
            strncpy(out, messages + failed * capacity, capacity - 1)
            out[capacity - 1] = 0
        }
        return statuses[failed]
    }

    static func offset(_ a: [flipout_in_array], _ o: Int) -> [flipout_in_array] {
        a.map { x in flipout_in_array(data: x.data.map { $0 + o * x.stride }, stride: x.stride) }
    }
    static func offset(_ a: [flipout_out_array], _ o: Int) -> [flipout_out_array] {
        a.map { x in flipout_out_array(data: x.data.map { $0 + o * x.stride }, stride: x.stride) }
    }
    /// Whether every output array is per scalar (none is a stride-0 sum cell).
    static func perScalar(_ a: [flipout_out_array]) -> Bool { a.allSatisfy { $0.data == nil || $0.stride != 0 } }
}
