// Tensor storage: alignment, shape checks, copies, ownership (pool, arena blocks, scoped access).
import Foundation
import Testing
import Flipout3D
import TestSupport

@Test func tensorIsAlignedAndZeroed() {
    let t = Tensor(shape: [2, 3, 4, 5, 6])
    #expect(t.count == 720)
    #expect(Int(bitPattern: t.data) % 64 == 0)
    #expect(t.array.allSatisfy { $0 == 0 })
}

@Test func tensorCopyIsIndependent() {
    let t = Tensor(shape: [3], values: [1, 2, 3])
    let c = t.copy()
    c[0] = 9
    #expect(t[0] == 1 && c[0] == 9)
    #expect(t.reshaped([1, 3]).shape == [1, 3])
}

@Test func uninitialisedTensorsAreAlignedAndRecycledStorageIsZeroedWhenAsked() {
    // Large enough to go through the storage recycler.
    let shape = [4, 16, 32, 32, 32]
    var first: Tensor? = Tensor(uninitializedShape: shape)
    #expect(first!.count == 4 * 16 * 32 * 32 * 32)
    #expect(Int(bitPattern: first!.data) % 64 == 0)
    first!.fill(7)
    first = nil
    let zeroed = Tensor(shape: shape)   // may reuse the storage just freed: must still be zeros
    #expect(Int(bitPattern: zeroed.data) % 64 == 0)
    #expect(zeroed.buffer.allSatisfy { $0 == 0 })
    let copy = Tensor(shape: [3], values: [1, 2, 3]).copy()
    #expect(copy.array == [1, 2, 3])
}

/// Activation-sized storage starts on a 2 MiB boundary so that transparent huge pages can back
/// it (LargeBlocks); smaller storage keeps the 64-byte alignment oneDNN needs.
@Test func largeStorageIsAlignedForHugePages() {
    guard ProcessInfo.processInfo.environment["FLIPOUT_HUGE_PAGES"] != "0" else { return }
    let huge = 2 << 20
    let big = Tensor(uninitializedShape: [3, huge / 4])     // 6 MiB
    #expect(Int(bitPattern: big.data) % huge == 0)
    big.fill(1)
    #expect(big[big.count - 1] == 1)
    let small = Tensor(uninitializedShape: [huge / 8])      // 1 MiB
    #expect(Int(bitPattern: small.data) % 64 == 0)
}

/// An optimizer and its arena are freed when their user lets go (no tensor -> arena -> tensor
/// cycle), and the parameters keep their values after it (they hold the storage block, not the arena).
@Test func parameterArenaAndOptimizerAreFreedAndParametersOutliveThem() throws {
    let norm = InstanceNorm(name: "n", channels: 3)
    weak var arena: ParameterArena?
    weak var optimizer: Adam?
    do {
        let adam = Adam(parameters: norm.trainable, learningRate: 0.1)
        norm.scaleGradient.fill(0.5); norm.shiftGradient.fill(-0.5)
        try adam.update()
        arena = adam.arena
        optimizer = adam
        #expect(arena != nil && optimizer != nil)
    }
    #expect(optimizer == nil, "Adam was not freed: something it owns holds it")
    #expect(arena == nil, "ParameterArena was not freed: its tensors hold it (a retain cycle)")
    // Adam's first step moves every value by lr against the gradient's sign; the values live on.
    func rounded(_ t: Tensor) -> [Float] { t.array.map { ($0 * 1000).rounded() / 1000 } }
    #expect(rounded(norm.scale) == [0.9, 0.9, 0.9] && rounded(norm.shift) == [0.1, 0.1, 0.1])
    // A second optimizer over the same parameters takes them over with their values.
    let again = Adam(parameters: norm.trainable, learningRate: 0.1)
    #expect(rounded(norm.scale) == [0.9, 0.9, 0.9] && again.arena.count >= 6)
}

/// The pool hands a block to a new tensor only after its owner died: live tensors never share
/// storage, however many are made and freed; scoped access sees the tensor's own values.
@Test func liveTensorsNeverShareStorage() {
    let shape = [1 << 18]   // pooled size
    var live: [Tensor] = []
    var seen = Set<UnsafeMutablePointer<Float>>()
    for round in 0..<6 {
        for k in 0..<4 { let t = Tensor(uninitializedShape: shape); t.fill(Float(round * 4 + k)); live.append(t) }
        live.removeFirst(2)   // frees two blocks for the next round
        seen = Set(live.map(\.data))
        #expect(seen.count == live.count, "round \(round): two live tensors share a block")
    }
    for (i, t) in live.enumerated() {
        let expected = t[0]
        #expect(t.withUnsafeValues { $0.allSatisfy { $0 == expected } }, "tensor \(i) was overwritten through another tensor")
    }
}

/// Raw `Tensor.data` uses in Sources do not grow: new code takes pointers inside
/// `withUnsafeValues` / `withUnsafeMutableValues`, where the tensor is alive for the whole closure
/// (a pointer kept after a tensor's last use points into a block the pool may give to another
/// tensor). The budget is today's count (a few non-pointer `.data` properties count too); lower it
/// when code moves to scoped access.
@Test func rawDataUsesInSourcesDoNotGrow() throws {
    let budget = 370
    let root = Fixtures.packageRoot.appendingPathComponent("Sources")
    let pattern = try NSRegularExpression(pattern: #"[A-Za-z0-9_)\]]\.data\b"#)
    var count = 0, perFile: [String: Int] = [:]
    for case let url as URL in FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)!
    where url.pathExtension == "swift" && !url.path.hasSuffix("Tensor/Tensor.swift") {
        let text = try String(contentsOf: url, encoding: .utf8)
        let n = pattern.numberOfMatches(in: text, range: NSRange(text.startIndex..., in: text))
        count += n; perFile[url.lastPathComponent] = n
    }
    #expect(count > 100, "the scan found \(count) uses: is it reading Sources?")
    #expect(count <= budget, "raw Tensor.data uses grew to \(count) (budget \(budget)); use withUnsafeValues/withUnsafeMutableValues. Most: \(perFile.sorted { $0.value > $1.value }.prefix(5))")
}
