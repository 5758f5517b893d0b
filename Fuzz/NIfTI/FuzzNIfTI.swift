// libFuzzer harness: the NIfTI-1 reader (header checks, gzip inflation, voxel decoding, non-finite policy).
// Any throw is a correct refusal; a crash, a sanitizer report or a hang is a bug.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNIfTI(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var policies: [NonFinitePolicy] = [.refuse]
    do { check(try NIfTI.decode(bytes, path: "fuzz.nii")) } catch NIfTIError.nonFinite { policies = [.zero, .clip] } catch { return 0 }
    for policy in policies.dropFirst(policies.count == 1 ? 1 : 0) {
        check(try! NIfTI.decode(bytes, path: "fuzz.nii", nonFinite: policy))
    }
    // The 4D path (T, D, H, W): the same checks with dim[4] frames.
    if let v = try? NIfTI.decode(bytes, path: "fuzz.nii", allowFourD: true, nonFinite: .zero) {
        precondition(v.data.shape == [Int(v.header.dim[4])] + v.header.shape, "4D shape \(v.data.shape) != header")
        precondition(v.data.buffer.allSatisfy(\.isFinite), "non-finite voxel returned")
    }
    return 0
}

/// What the reader returns keeps its promises: the header's shape, and only finite voxels.
func check(_ v: NIfTIVolume) {
    precondition(v.data.shape == v.header.shape, "shape \(v.data.shape) != header \(v.header.shape)")
    precondition(v.data.buffer.allSatisfy(\.isFinite), "non-finite voxel returned")
}
