// libFuzzer harness: the --foreign-prior spec parser PATH:SYMBOL(x:T,NAME:T=DEFAULT,...)->T[@ID].
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzForeignSpec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let spec = try? ForeignPriorSpec(parsing: text) else { return 0 }
    // An accepted spec keeps its promises: x first without default, every parameter with a finite default.
    precondition(spec.arguments.first?.name == "x" && spec.arguments.first?.defaultValue == nil)
    precondition(spec.parameters.count >= 1 && spec.parameters.allSatisfy { $0.defaultValue?.isFinite == true })
    precondition(!spec.path.isEmpty && !spec.symbol.isEmpty && !spec.id.isEmpty)
    _ = spec.signature; _ = spec.prototype
    return 0
}
