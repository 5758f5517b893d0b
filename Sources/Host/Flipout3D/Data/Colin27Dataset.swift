// The real-MRI task as a dataset: brain extraction on Colin27, train on one hemisphere, test on the other.

/// Train and validation are 32³ patches from the left hemisphere; test is patches from the right
/// hemisphere. There is no out-of-distribution split. Labels are the ch2bet brain mask.
public struct Colin27Dataset: VolumeDataset {
    public let colin: Colin27
    public let seed: UInt64
    public let patchSize: Int
    let counts: [DataSplit: Int]
    /// Every split's patches, cut once: (count, 1, S, S, S) images and labels.
    let patches: [DataSplit: (x: Tensor, y: Tensor)]
    public var name: String { "colin27" }
    public var volumeSize: [Int] { [patchSize, patchSize, patchSize] }

    public init(seed: UInt64, patchSize: Int = 32, train: Int = 48, validation: Int = 8, test: Int = 16) throws {
        colin = try Colin27()
        self.seed = seed
        self.patchSize = patchSize
        counts = [.train: train, .validation: validation, .test: test, .ood: 0]
        // Validation patches come from the training hemisphere with a different seed.
        var cut: [DataSplit: (x: Tensor, y: Tensor)] = [:]
        for (split, side, s, n) in [(DataSplit.train, Colin27.Hemisphere.left, seed, train), (.validation, .left, seed &+ 1000, validation),
                                    (.test, .right, seed, test)] where n > 0 {
            let p = colin.patches(side, count: n, size: patchSize, seed: s)
            cut[split] = (p.x, p.y)
        }
        patches = cut
    }

    public func count(_ split: DataSplit) -> Int { counts[split] ?? 0 }

    public func batch(_ split: DataSplit, indices: [Int]) throws -> (x: Tensor, y: Tensor) {
        guard let all = patches[split], let last = indices.max(), last < count(split) else {
            preconditionFailure("Colin27Dataset: indices \(indices) out of range for \(split) (\(count(split)) patches)")
        }
        let per = patchSize * patchSize * patchSize
        let x = Tensor(shape: [indices.count, 1] + volumeSize), y = Tensor(shape: [indices.count, 1] + volumeSize)
        for (n, i) in indices.enumerated() {
            (x.data + n * per).update(from: all.x.data + i * per, count: per)
            (y.data + n * per).update(from: all.y.data + i * per, count: per)
        }
        return (x, y)
    }
}
