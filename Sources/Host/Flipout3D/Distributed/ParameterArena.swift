// Every trainable parameter in one contiguous block and every gradient in another (llm.c's malloc_and_point_parameters).

/// The model's parameters moved into one block of memory, and their gradients into a second,
/// so that averaging gradients over ranks is ONE all-reduce and broadcasting the initial weights
/// is ONE broadcast, and the optimizer is one flat loop. The parameters' own `Tensor`s keep
/// working: their storage now points into the arena's blocks (`Tensor.moveStorage`), values unchanged.
///
/// Ownership: the two blocks are `ArenaBlock`s that the arena and every moved tensor hold; the
/// tensors never hold the arena, so an arena (and the optimizer holding it) is freed when its last
/// user lets go, while the model's tensors keep their values alive.
///
/// Layout: parameter k occupies `offsets[k] ..< offsets[k] + count_k` of both blocks; offsets are
/// rounded up to 16 floats so every tensor stays 64-byte aligned. The padding is zero and stays
/// zero (its gradient is zero, so Adam never moves it).
public final class ParameterArena {
    public let parameters: [NamedParameter]
    /// Start of each parameter in the blocks (floats).
    public let offsets: [Int]
    /// Floats in each block, padding included.
    public let count: Int
    /// (count) the values, and (count) the gradients.
    public var values: UnsafeMutablePointer<Float> { valueBlock.pointer }
    public var gradients: UnsafeMutablePointer<Float> { gradientBlock.pointer }
    private let valueBlock: ArenaBlock
    private let gradientBlock: ArenaBlock

    static let alignment = 16

    /// Moves `parameters` (values and gradients) into the arena. A tensor may appear only once.
    public init(_ parameters: [NamedParameter]) {
        var seen = Set<ObjectIdentifier>()
        for p in parameters {
            precondition(p.value.count == p.gradient.count, "ParameterArena: \(p.name) has \(p.value.count) values and \(p.gradient.count) gradients")
            precondition(seen.insert(ObjectIdentifier(p.value)).inserted && seen.insert(ObjectIdentifier(p.gradient)).inserted,
                         "ParameterArena: \(p.name) shares a tensor with another parameter")
        }
        var offsets: [Int] = [], end = 0
        for p in parameters {
            offsets.append(end)
            end += (p.value.count + Self.alignment - 1) / Self.alignment * Self.alignment
        }
        self.parameters = parameters
        self.offsets = offsets
        count = max(end, Self.alignment)
        valueBlock = ArenaBlock(count: count)
        gradientBlock = ArenaBlock(count: count)
        for (k, p) in parameters.enumerated() {
            p.value.moveStorage(to: valueBlock, offset: offsets[k])
            p.gradient.moveStorage(to: gradientBlock, offset: offsets[k])
        }
    }

    public var valueBuffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: values, count: count) }
    public var gradientBuffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: gradients, count: count) }

    /// A zero block of the arena's layout with one view per parameter (Adam's moments).
    public func makeState() -> (block: UnsafeMutablePointer<Float>, views: [Tensor], owner: ArenaBlock) {
        let block = ArenaBlock(count: count)
        let views = parameters.enumerated().map { Tensor(viewing: block, offset: offsets[$0.offset], shape: $0.element.value.shape) }
        return (block.pointer, views, block)
    }

    /// The parameter holding arena position `i` (for error messages), and the index within it.
    public func locate(_ i: Int) -> (name: String, index: Int) {
        var k = 0
        while k + 1 < offsets.count && offsets[k + 1] <= i { k += 1 }
        return parameters.isEmpty ? ("padding", i) : (parameters[k].name, i - offsets[k])
    }
}
