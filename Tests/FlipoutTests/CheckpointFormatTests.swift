// The safetensors reader against the format's rules (as Python's safetensors), the content digest and
// tensor checksums, non-finite state; strict JSON. (U-Net metadata checks: UNetCheckpointTests.)
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A safetensors file from a header text and data bytes (no padding, no digest, no checksums).
func safetensors(_ header: String, _ data: [UInt8] = [], headerBytes: [UInt8]? = nil) -> [UInt8] {
    let h = headerBytes ?? Array(header.utf8)
    var out = [UInt8]()
    withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
    return out + h + data
}

func floats(_ v: [Float]) -> [UInt8] { v.flatMap { f in withUnsafeBytes(of: f.bitPattern.littleEndian) { Array($0) } } }

/// Why the reader refuses `bytes` (read as another writer's file: no digest needed), or "accepted".
func refusal(_ bytes: [UInt8], requireDigest: Bool = false) -> String {
    do { _ = try Checkpoint.decode(bytes, path: "x.safetensors", requireDigest: requireDigest); return "accepted" } catch { return "\(error)" }
}

@Suite struct CheckpointFormatTests {
    @Test func wellFormedFilesAreAccepted() throws {
        let ok = safetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},"__metadata__":{"k":"v"}}  "#, floats([1, 2]))
        let c = try Checkpoint.decode(ok, path: "ok", requireDigest: false)
        #expect(c.tensor("a")?.array == [1, 2] && c.tensor("b")?.shape == [0, 3] && c.metadata["k"] == "v" && !c.digestVerified)
        // A Flipout3D checkpoint needs the digest.
        #expect(refusal(ok, requireDigest: true).contains("no content digest"))
    }

    @Test func eachFormatRuleIsEnforced() throws {
        let t = #""dtype":"F32","shape":[2],"data_offsets""#
        let cases: [(String, [UInt8], String)] = [
            ("overlap", safetensors(#"{"a":{\#(t):[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, floats([1, 2, 3])), "overlaps"),
            ("gap", safetensors(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, floats([1, 2, 3])), "gap"),
            ("duplicate key", safetensors(#"{"a":{\#(t):[0,8]},"a":{\#(t):[0,8]}}"#, floats([1, 2])), "duplicate key \"a\""),
            ("duplicate nested key", safetensors(#"{"a":{\#(t):[0,8],"dtype":"F32"}}"#, floats([1, 2])), "duplicate key \"dtype\""),
            ("BOM", safetensors("", floats([1, 2]), headerBytes: [0xEF, 0xBB, 0xBF] + Array(#"{"a":{\#(t):[0,8]}}"#.utf8)), "does not start with '{'"),
            ("trailing bytes", safetensors(#"{"a":{\#(t):[0,8]}}"#, floats([1, 2, 3])), "trailing bytes"),
            ("trailing JSON", safetensors(#"{"a":{\#(t):[0,8]}} {}"#, floats([1, 2])), "trailing bytes after the JSON value"),
            ("negative shape", safetensors(#"{"a":{"dtype":"F32","shape":[-216],"data_offsets":[0,8]}}"#, floats([1, 2])), "shape entry -216"),
            ("fractional shape", safetensors(#"{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, floats([1, 2])), "not a non-negative integer"),
            ("byte count", safetensors(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, floats([1, 2])), "needs 12 bytes"),
            ("shape overflow", safetensors(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, floats([1, 2])), "overflows"),
            ("offsets past the end", safetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}}"#, floats([1, 2])), "outside the data section"),
            ("reversed offsets", safetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, floats([1, 2])), "outside the data section"),
            ("dtype", safetensors(#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, [0, 0, 0, 0]), "dtype F16"),
            ("unknown field", safetensors(#"{"a":{\#(t):[0,8],"extra":1}}"#, floats([1, 2])), "unknown field extra"),
            ("metadata not strings", safetensors(#"{"__metadata__":{"k":1}}"#), "metadata k is an integer"),
            ("not JSON", safetensors(#"{"a":"#), "not valid JSON"),
            ("NaN weight", safetensors(#"{"w":{\#(t):[0,8]}}"#, floats([1, .nan])), "tensor w holds nan at index 1"),
            ("inf weight", safetensors(#"{"adam.v.w":{\#(t):[0,8]}}"#, floats([.infinity, 1])), "tensor adam.v.w holds inf at index 0"),
        ]
        for (name, bytes, expected) in cases {
            let m = refusal(bytes)
            #expect(m.contains(expected) && m.contains("x.safetensors"), "\(name): \(m)")
        }
        // Header length beyond the file, and beyond the format's 100 MB bound.
        var long = safetensors(#"{}"#); long[0] = 0xFF; long[7] = 0x7F
        #expect(refusal(long).contains("runs past the end of the file"))
        var big = safetensors(#"{}"#, [UInt8](repeating: 0x20, count: 8))
        withUnsafeBytes(of: UInt64(Checkpoint.maxHeaderBytes + 1).littleEndian) { for i in 0..<8 { big[i] = $0[i] } }
        #expect(refusal(big).contains("runs past the end") || refusal(big).contains("limit"))
    }

    @Test func oneFlippedBitIsRefusedNamingTheTensor() throws {
        var c = Checkpoint()
        c.metadata = ["k": "v"]
        c.tensors = [("layer1.loc", Tensor(shape: [8], values: (0..<8).map { Float($0) / 8 })),
                     ("layer2.scale", Tensor(shape: [2, 2], values: [0.1, 0.2, 0.3, 0.4]))]
        let bytes = try c.encoded()
        #expect(try Checkpoint.decode(bytes, path: "ok").tensor("layer2.scale")?.array == [0.1, 0.2, 0.3, 0.4])
        // Flip each bit of the data section of layer2.scale (the last 16 bytes): every flip is caught
        // by the digest and named by the tensor's checksum.
        for byte in (bytes.count - 16)..<bytes.count {
            for bit in 0..<8 {
                var bad = bytes; bad[byte] ^= UInt8(1 << bit)
                let m = refusal(bad, requireDigest: true)
                #expect(m.contains("tensor layer2.scale does not match its SHA-256 checksum"), "byte \(byte) bit \(bit): \(m)")
            }
        }
        var first = bytes; first[bytes.count - 17] ^= 0x10
        #expect(refusal(first, requireDigest: true).contains("tensor layer1.loc does not match its SHA-256"))
        // A changed checksum entry (the metadata) with intact tensors: the digest names the metadata.
        let pattern = Array(#""k":"v""#.utf8)
        let at = try #require((0...(bytes.count - pattern.count)).first { Array(bytes[$0..<($0 + pattern.count)]) == pattern })
        var edited = bytes; edited[at + 5] = UInt8(ascii: "w")
        #expect(refusal(edited, requireDigest: true).contains("does not match its SHA-256 digest"))
    }

    @Test func aRunThatGoesNonFiniteKeepsThePreviousCheckpoint() throws {
        let t = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        _ = try t.trainEpoch()
        let before = try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath))
        let p = t.model.trainable[0]
        p.value.data[0] = .infinity
        t.model.parametersChanged()
        #expect(throws: (any Error).self) { _ = try t.trainEpoch() }
        #expect(try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: t.runDirectory).filter(RunFolder.isTemporary).isEmpty)
    }

    @Test func strictJSONRefusesWhatFoundationAccepts() throws {
        for (text, expected) in [(#"{"a":1,"a":2}"#, "duplicate key"), ("\u{FEFF}{}", "byte-order mark"), ("{} x", "trailing"),
                                 ("[01]", "leading zero"), ("[1e999]", "out of range"), (#"["\ud800"]"#, "surrogate"),
                                 (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), "nesting")] {
            #expect { _ = try StrictJSON.parse(Array(text.utf8)) } throws: { "\($0)".contains(expected) }
        }
        #expect(try StrictJSON.parse(Array(#" {"a":[1,-2.5,"\u00e9",true,null]} "#.utf8))["a"] ==
                .array([.integer(1), .number(-2.5), .string("é"), .bool(true), .null]))
        #expect { _ = try StrictJSON.parse([0x22, 0xC0, 0x80, 0x22]) } throws: { "\($0)".contains("UTF-8") }
    }
}
