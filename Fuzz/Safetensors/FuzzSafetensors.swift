// libFuzzer harness: the safetensors checkpoint reader (strict JSON header, offsets, digest and checksums, finiteness).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The digest is optional here so that inputs reach the checks after it (a mutated file almost
    // never carries a matching digest); a digest that is present must still match.
    guard let c = try? Checkpoint.decode(bytes, path: "fuzz.safetensors", requireDigest: false) else { return 0 }
    // An accepted file round-trips: re-encoding (which adds the digest) and decoding gives the same tensors.
    let again = try! Checkpoint.decode(try! c.encoded(), path: "fuzz-again.safetensors")
    precondition(again.digestVerified, "a re-encoded checkpoint's digest was not verified")
    precondition(again.tensors.count == c.tensors.count, "tensor count changed on re-encoding")
    for ((n1, t1), (n2, t2)) in zip(c.tensors, again.tensors) {
        precondition(n1 == n2 && t1.shape == t2.shape && t1.array == t2.array, "tensor \(n1) changed on re-encoding")
    }
    return 0
}
