// The data a trainer reads: splits of (N, 1, D, H, W) volumes with binary labels.

public enum DataSplit: String, CaseIterable, Sendable {
    case train, validation, test, ood
}

public protocol VolumeDataset {
    var name: String { get }
    /// (D, H, W) of every volume.
    var volumeSize: [Int] { get }
    func count(_ split: DataSplit) -> Int
    /// x and y, each (N, 1, D, H, W).
    func batch(_ split: DataSplit, indices: [Int]) throws -> (x: Tensor, y: Tensor)
}

extension SyntheticVolumes: VolumeDataset {
    public var name: String { "synthetic" }
    public var volumeSize: [Int] { size }
    static func split(_ s: DataSplit) -> Split {
        switch s {
        case .train: return .train
        case .validation: return .validation
        case .test: return .test
        case .ood: return .outOfDistribution
        }
    }
    public func count(_ split: DataSplit) -> Int { count(Self.split(split)) }
    public func batch(_ split: DataSplit, indices: [Int]) throws -> (x: Tensor, y: Tensor) {
        batch(split: Self.split(split), indices: indices)
    }
}

extension TrainingConfig {
    /// The dataset this configuration names.
    public func makeDataset() throws -> VolumeDataset {
        switch dataset {
        case "synthetic":
            return SyntheticVolumes(seed: seed, size: [volumeSize, volumeSize, volumeSize],
                                    counts: [.train: trainVolumes, .validation: validationVolumes, .test: testVolumes, .outOfDistribution: oodVolumes])
        case "colin27":
            return try Colin27Dataset(seed: seed, patchSize: volumeSize, train: trainVolumes, validation: validationVolumes, test: testVolumes)
        default:
            throw LayerError.invalidConfiguration("unknown dataset \"\(dataset)\"; use synthetic or colin27.")
        }
    }
}
