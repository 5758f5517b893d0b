// Checkpoints in the safetensors layout: 8-byte little-endian header length, JSON header, raw F32 data,
// read by the format's rules exactly (as Python's safetensors) and verified against a SHA-256 digest of
// their whole content (metadata and tensors).
import Foundation

/// A checkpoint file: named F32 tensors plus string metadata (safetensors' `__metadata__`), readable
/// by Python's `safetensors`. Written atomically (temporary file, fsync, rename).
///
/// Integrity: the metadata holds, under `digestKey`, the SHA-256 of the file's whole content (every
/// other metadata entry and every tensor, `contentDigest`), and, under `checksumKey`, each tensor's
/// SHA-256 (which names the damaged tensor when the digest fails). `read` and `decode` refuse a
/// file without the digest or whose content does not match it.
public struct Checkpoint {
    public var tensors: [(name: String, tensor: Tensor)] = []
    public var metadata: [String: String] = [:]
    /// Whether this value was decoded from bytes whose content digest was present and matched.
    /// `UNetCheckpoint.load` builds a network only from such a checkpoint.
    public private(set) var digestVerified = false

    /// Metadata key holding the SHA-256 hex of the whole content (`contentDigest`).
    public static let digestKey = "flipout3d.digest"
    /// Metadata key holding a JSON object `{tensor name: SHA-256 hex of its little-endian bytes}`.
    public static let checksumKey = "flipout3d.sha256"
    /// The safetensors reference reader refuses headers above 100 MB; so do we.
    public static let maxHeaderBytes = 100_000_000
    /// Largest checkpoint file read (a Flipout3D checkpoint is megabytes; this bounds a hostile file).
    public static let maxFileBytes = 1 << 32

    public init() {}

    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name }?.tensor }

    /// The file's bytes: header (with the tensor checksums and the content digest added to the
    /// metadata) and data.
    public func encoded() throws -> [UInt8] {
        var data = [UInt8]()
        data.reserveCapacity(tensors.reduce(0) { $0 + 4 * $1.tensor.count })
        var entries: [String: Any] = [:]
        var sums: [String: String] = [:]
        var ranges: [String: Range<Int>] = [:]
        for (name, t) in tensors {
            precondition(entries[name] == nil && name != "__metadata__", "Checkpoint: tensor name \(name) used twice")
            let start = data.count
            t.withUnsafeValues { v in for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { data.append(contentsOf: $0) } } }
            entries[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [start, data.count]]
            sums[name] = SHA256.hex(Data(data[start...]))
            ranges[name] = start..<data.count
        }
        var meta = metadata
        meta[Self.digestKey] = nil
        meta[Self.checksumKey] = String(decoding: try JSONSerialization.data(withJSONObject: sums, options: [.sortedKeys]), as: UTF8.self)
        meta[Self.digestKey] = Self.contentDigest(metadata: meta, tensors: tensors.map { ($0.name, $0.tensor.shape, data[ranges[$0.name]!]) })
        entries["__metadata__"] = meta
        var json = try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys])
        // Pad the header with spaces to a multiple of 8 bytes (as the reference writer does).
        while json.count % 8 != 0 { json.append(0x20) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(8 + json.count + data.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: json)
        bytes.append(contentsOf: data)
        return bytes
    }

    /// The content digest (`digestKey`): SHA-256, as lower-case hex, of this byte string, where
    /// `u64` is an unsigned 64-bit little-endian integer, strings are UTF-8, and keys and names are
    /// sorted by their UTF-8 bytes:
    ///
    ///     "flipout3d-digest-1\n"
    ///     u64(metadata entries other than digestKey)
    ///       for each: u64(key bytes) key u64(value bytes) value
    ///     u64(tensors)
    ///       for each: u64(name bytes) name u64(rank) u64(dim)... u64(data bytes) data (F32 little-endian)
    ///
    /// It covers what the file means, not how its JSON header is spelled, so any safetensors writer
    /// (e.g. Python's, see scripts/read-checkpoint.py) can produce or check it.
    public static func contentDigest<Bytes: Collection>(metadata: [String: String], tensors: [(name: String, shape: [Int], data: Bytes)]) -> String
    where Bytes.Element == UInt8 {
        var h = SHA256.Hasher()
        func u64(_ v: Int) { withUnsafeBytes(of: UInt64(v).littleEndian) { h.update($0) } }
        func string(_ s: String) { u64(s.utf8.count); h.update(Array(s.utf8)) }
        func byBytes(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }
        h.update(Array("flipout3d-digest-1\n".utf8))
        let keys = metadata.keys.filter { $0 != digestKey }.sorted(by: byBytes)
        u64(keys.count)
        for k in keys { string(k); string(metadata[k]!) }
        u64(tensors.count)
        for t in tensors.sorted(by: { byBytes($0.name, $1.name) }) {
            string(t.name)
            u64(t.shape.count)
            for d in t.shape { u64(d) }
            u64(t.data.count)
            h.update(t.data)
        }
        return SHA256.hex(h.finalize())
    }

    /// Writes the checkpoint atomically; the bytes are decoded and verified before they replace
    /// `path`, so a good checkpoint is never replaced by one that would not load.
    public func write(to path: String) throws {
        let bytes = try encoded()
        _ = try Checkpoint.decode(bytes, path: path)
        try FileIO.writeAtomically(bytes, to: path)
    }

    /// Reads and decodes `path` (`decode`): the digest is required.
    public static func read(_ path: String) throws -> Checkpoint {
        let bytes: [UInt8]
        do { bytes = try FileIO.read(path, limit: maxFileBytes) } catch let e as FileIOError { throw CheckpointError(path: path, file: e) }
        return try decode(bytes, path: path)
    }

    /// Decodes a safetensors file by the format's rules: header length within the file and at most
    /// 100 MB; a strict-JSON object header (no byte-order mark, no duplicate keys); `__metadata__`
    /// mapping strings to strings; every tensor exactly {dtype, shape, data_offsets}, dtype F32,
    /// shape of non-negative integers, byte count = elements × 4 (checked arithmetic); tensors
    /// tile the data section from 0 to its end with no gap and no overlap; no trailing bytes.
    /// Then the content digest is checked (required unless `requireDigest` is false, for reading
    /// safetensors files of other writers), naming the damaged tensor when its own checksum fails
    /// or else the metadata; then every value must be finite. Every refusal names the field or tensor.
    public static func decode(_ bytes: [UInt8], path: String, requireDigest: Bool = true) throws -> Checkpoint {
        func corrupt(_ why: String) -> CheckpointError {
            CheckpointError(path: path, reason: "\(why). The file is damaged or not a Flipout3D checkpoint; use another checkpoint (each run folder keeps checkpoint.safetensors).")
        }
        guard bytes.count >= 8 else { throw corrupt("it is \(bytes.count) bytes, shorter than the 8-byte header length") }
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= UInt64(bytes.count - 8) else { throw corrupt("its header length \(headerLength) runs past the end of the file (\(bytes.count) bytes)") }
        guard headerLength <= UInt64(maxHeaderBytes) else { throw corrupt("its header length \(headerLength) is above the format's limit of \(maxHeaderBytes) bytes") }
        let headerEnd = 8 + Int(headerLength)
        guard headerLength >= 2, bytes[8] == UInt8(ascii: "{") else { throw corrupt("its header does not start with '{'") }
        let header: JSONValue
        do { header = try StrictJSON.parse(Array(bytes[8..<headerEnd])) } catch let e as JSONSyntaxError {
            throw corrupt("its header is not valid JSON: \(e)")
        }
        guard let members = header.objectValue else { throw corrupt("its header is not a JSON object") }

        var c = Checkpoint()
        let dataCount = bytes.count - headerEnd
        var entries: [(name: String, shape: [Int], start: Int, end: Int)] = []
        for (name, value) in members {
            let shown = StrictJSON.printable(name)
            if name == "__metadata__" {
                guard let meta = value.objectValue else { throw corrupt("__metadata__ is \(value.kindName), not an object of strings") }
                for (k, v) in meta {
                    guard let s = v.stringValue else { throw corrupt("metadata \(StrictJSON.printable(k)) is \(v.kindName), not a string") }
                    c.metadata[k] = s
                }
                continue
            }
            guard let info = value.objectValue else { throw corrupt("tensor \(shown) is \(value.kindName), not an object") }
            for (k, _) in info where !["dtype", "shape", "data_offsets"].contains(k) {
                throw corrupt("tensor \(shown) has an unknown field \(StrictJSON.printable(k))")
            }
            guard let dtype = value["dtype"]?.stringValue else { throw corrupt("tensor \(shown) has no dtype string") }
            guard dtype == "F32" else { throw corrupt("tensor \(shown) has dtype \(StrictJSON.printable(dtype)); Flipout3D checkpoints hold F32 only") }
            guard let shapeItems = value["shape"]?.arrayValue else { throw corrupt("tensor \(shown) has no shape array") }
            var shape: [Int] = []
            var elements = 1
            for s in shapeItems {
                guard let d = s.integerValue, d >= 0, d <= Int64(Int.max) else {
                    throw corrupt("tensor \(shown) has shape entry \(s) that is not a non-negative integer")
                }
                shape.append(Int(d))
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
                guard !overflow else { throw corrupt("tensor \(shown) has shape \(shapeItems) whose element count overflows") }
                elements = product
            }
            guard let offsets = value["data_offsets"]?.arrayValue, offsets.count == 2,
                  let start = offsets[0].integerValue, let end = offsets[1].integerValue else {
                throw corrupt("tensor \(shown) has no data_offsets [BEGIN, END] of integers")
            }
            guard start >= 0, end >= start, end <= Int64(dataCount) else {
                throw corrupt("tensor \(shown) has data_offsets [\(start), \(end)] outside the data section (\(dataCount) bytes)")
            }
            let (byteCount, overflow) = elements.multipliedReportingOverflow(by: 4)
            guard !overflow, Int64(byteCount) == end - start else {
                throw corrupt("tensor \(shown) has data_offsets [\(start), \(end)] (\(end - start) bytes), but shape \(shape) of F32 needs \(overflow ? "more than Int.max" : String(byteCount)) bytes")
            }
            entries.append((name, shape, Int(start), Int(end)))
        }
        // The tensors tile the data section: sorted by offset, each begins where the previous ends.
        entries.sort { ($0.start, $0.end) < ($1.start, $1.end) }
        var position = 0
        for e in entries {
            guard e.start == position else {
                throw corrupt(e.start < position
                    ? "tensor \(StrictJSON.printable(e.name)) at data_offsets [\(e.start), \(e.end)] overlaps the tensor before it (which ends at \(position))"
                    : "tensor \(StrictJSON.printable(e.name)) starts at \(e.start), leaving a gap after byte \(position)")
            }
            position = e.end
        }
        guard position == dataCount else {
            throw corrupt("the tensors cover \(position) data bytes but the file holds \(dataCount) (trailing bytes)")
        }

        var sums: [String: String]?
        if let text = c.metadata[checksumKey] {
            guard let o = (try? StrictJSON.parse(Array(text.utf8)))?.objectValue else { throw corrupt("metadata \(checksumKey) is not a JSON object") }
            var s: [String: String] = [:]
            for (k, v) in o {
                guard let hex = v.stringValue else { throw corrupt("metadata \(checksumKey) has a non-string checksum for \(StrictJSON.printable(k))") }
                s[k] = hex
            }
            guard Set(s.keys) == Set(entries.map(\.name)) else {
                throw corrupt("metadata \(checksumKey) lists other tensors than the file holds")
            }
            sums = s
        }
        func data(_ e: (name: String, shape: [Int], start: Int, end: Int)) -> ArraySlice<UInt8> { bytes[(headerEnd + e.start)..<(headerEnd + e.end)] }
        if let stored = c.metadata[digestKey] {
            let actual = contentDigest(metadata: c.metadata, tensors: entries.map { ($0.name, $0.shape, data($0)) })
            if actual != stored {
                // Name what changed: a tensor whose own checksum fails, else the metadata.
                for e in entries.sorted(by: { $0.start < $1.start }) where sums.map({ SHA256.hex(Data(data(e))) != $0[e.name] }) ?? false {
                    throw corrupt("tensor \(StrictJSON.printable(e.name)) does not match its SHA-256 checksum: its data were changed or damaged")
                }
                throw corrupt("its content does not match its SHA-256 digest (metadata \(digestKey)): its metadata (configuration, plan or plugin pins) or tensors were changed or damaged")
            }
            c.digestVerified = true
        } else if requireDigest {
            throw corrupt("it has no content digest (metadata \(digestKey)), so a changed configuration or damaged weights could not be detected. Checkpoints of `flipout train` always have one")
        } else if let sums {
            for e in entries.sorted(by: { $0.start < $1.start }) where SHA256.hex(Data(data(e))) != sums[e.name] {
                throw corrupt("tensor \(StrictJSON.printable(e.name)) does not match its SHA-256 checksum: its data were changed or damaged")
            }
        }
        for (name, shape, start, _) in entries.sorted(by: { $0.start < $1.start }) {
            let shown = StrictJSON.printable(name)
            let t = Tensor(uninitializedShape: shape)
            try t.withUnsafeMutableValues { out in
                for i in 0..<out.count {
                    let b = headerEnd + start + 4 * i
                    let bits = UInt32(bytes[b]) | UInt32(bytes[b + 1]) << 8 | UInt32(bytes[b + 2]) << 16 | UInt32(bytes[b + 3]) << 24
                    let v = Float(bitPattern: bits)
                    guard v.isFinite else { throw corrupt("tensor \(shown) holds \(v) at index \(i); weights and optimizer state must be finite") }
                    out[i] = v
                }
            }
            c.tensors.append((name, t))
        }
        return c
    }

    /// Whether the metadata carried tensor checksums (every checkpoint `flipout train` writes does).
    public var hasChecksums: Bool { metadata[Self.checksumKey] != nil }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    /// Set when the file itself could not be read or written (missing, permission, disk full).
    public let file: FileIOError?

    public init(path: String, reason: String) { self.path = path; self.reason = reason; self.file = nil }
    init(path: String, file: FileIOError) { self.path = path; self.reason = file.description; self.file = file }

    public var description: String { file.map { "checkpoint \($0.description)" } ?? "checkpoint \(path): \(reason)" }
}
