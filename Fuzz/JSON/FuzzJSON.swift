// libFuzzer harness: StrictJSON, the parser for checkpoint headers and metadata and dataset.json:
// it must never crash, and what it accepts Foundation's JSONSerialization accepts too.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let v = try? StrictJSON.parse(bytes) else { return 0 }
    // Strict is a subset of what Foundation reads (top-level fragments allowed).
    precondition((try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil,
                 "StrictJSON accepted what JSONSerialization refuses: \(v)")
    return 0
}
