// libFuzzer harness: the safetensors checkpoint reader (strict JSON header, offsets, checksums, finiteness).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let c = try? Checkpoint.decode(bytes, path: "fuzz.safetensors") else { return 0 }
    // An accepted file round-trips: re-encoding and decoding gives the same tensors.
    let again = try! Checkpoint.decode(try! c.encoded(), path: "fuzz-again.safetensors")
    precondition(again.tensors.count == c.tensors.count, "tensor count changed on re-encoding")
    for ((n1, t1), (n2, t2)) in zip(c.tensors, again.tensors) {
        precondition(n1 == n2 && t1.shape == t2.shape && t1.array == t2.array, "tensor \(n1) changed on re-encoding")
    }
    return 0
}
