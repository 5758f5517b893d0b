// Checkpoints in the safetensors layout: 8-byte little-endian header length, JSON header, raw F32 data.
import Foundation

/// A checkpoint file: named F32 tensors plus string metadata (safetensors' `__metadata__`), readable
/// by Python's `safetensors`. Written atomically (temporary file, fsync, rename).
public struct Checkpoint {
    public var tensors: [(name: String, tensor: Tensor)] = []
    public var metadata: [String: String] = [:]

    public init() {}

    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name }?.tensor }

    public func write(to path: String) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for (name, t) in tensors {
            header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.count]]
            offset += 4 * t.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces to a multiple of 8 bytes (as the reference writer does).
        while json.count % 8 != 0 { json.append(0x20) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: json)
        for (_, t) in tensors {
            for i in 0..<t.count { withUnsafeBytes(of: t.data[i].bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        }
        try FileIO.writeAtomically(bytes, to: path)
    }

    public static func read(_ path: String) throws -> Checkpoint {
        let bytes = try FileIO.read(path)
        func corrupt(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: "\(why). The file is damaged or not a Flipout3D checkpoint; use another checkpoint (each run folder keeps checkpoint.safetensors).") }
        guard bytes.count >= 8 else { throw corrupt("it is \(bytes.count) bytes, shorter than the 8-byte header length") }
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= UInt64(bytes.count - 8) else { throw corrupt("its header length \(headerLength) runs past the end of the file (\(bytes.count) bytes)") }
        let headerEnd = 8 + Int(headerLength)
        guard let header = try? JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd])) as? [String: Any] else {
            throw corrupt("its header is not valid JSON")
        }
        var c = Checkpoint()
        c.metadata = header["__metadata__"] as? [String: String] ?? [:]
        let dataCount = bytes.count - headerEnd
        var entries: [(String, [Int], Int, Int)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any], info["dtype"] as? String == "F32",
                  let shape = info["shape"] as? [Int], let offsets = info["data_offsets"] as? [Int], offsets.count == 2 else {
                throw corrupt("tensor \(name) is not an F32 tensor with shape and data_offsets")
            }
            guard offsets[0] >= 0, offsets[1] <= dataCount, offsets[1] - offsets[0] == 4 * shape.reduce(1, *) else {
                throw corrupt("tensor \(name) has offsets \(offsets) that do not fit its shape \(shape) or the file (\(dataCount) data bytes)")
            }
            entries.append((name, shape, offsets[0], offsets[1]))
        }
        for (name, shape, start, _) in entries.sorted(by: { $0.2 < $1.2 }) {
            let t = Tensor(shape: shape)
            for i in 0..<t.count {
                let b = headerEnd + start + 4 * i
                let bits = UInt32(bytes[b]) | UInt32(bytes[b + 1]) << 8 | UInt32(bytes[b + 2]) << 16 | UInt32(bytes[b + 3]) << 24
                t.data[i] = Float(bitPattern: bits)
            }
            c.tensors.append((name, t))
        }
        return c
    }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "checkpoint \(path): \(reason)" }
}
