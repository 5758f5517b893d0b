// Cross-validation folds, a property of the dataset: its splits_final.json (nnU-Net's file) or a fixed partition of its case ids, the same for every seed and run.
import Foundation

/// One fold: the case ids to train on and to validate on.
public struct FoldSplit: Codable, Sendable, Equatable {
    public var train: [String]
    public var val: [String]

    public init(train: [String], val: [String]) { self.train = train; self.val = val }
}

/// Which fold a run trains: `--fold all` (every case, no validation) or `--fold k`, 0-based.
public enum FoldSelection: Equatable, Sendable, CustomStringConvertible {
    case all
    case fold(Int)

    /// "all" or a non-negative integer; nil otherwise.
    public init?(_ text: String) {
        if text == "all" { self = .all } else if let k = Int(text), k >= 0 { self = .fold(k) } else { return nil }
    }

    public var description: String {
        switch self { case .all: return "all"; case .fold(let k): return String(k) }
    }
}

public enum Splits {
    /// The copy a run folder keeps of the split it used.
    public static let fileName = "splits.json"
    /// nnU-Net's file of a dataset's folds, read from the dataset folder when present.
    public static let datasetFileName = "splits_final.json"
    /// The key of the partition's shuffle: fixed (nnU-Net's KFold random_state), never the run's seed,
    /// so fold k holds the same cases for every seed and run.
    public static let key: UInt64 = 12345

    /// `folds` folds over `caseIDs`: the sorted ids permuted by a Fisher–Yates shuffle keyed by
    /// (`key`, purpose .folds), then dealt round-robin, so fold k validates on every folds-th case
    /// of the permutation (sizes differ by at most one), as nnU-Net's KFold(shuffle=True).
    public static func make(caseIDs: [String], folds: Int) -> [FoldSplit] {
        precondition(folds >= 2 && folds <= caseIDs.count, "Splits.make: \(folds) folds for \(caseIDs.count) cases")
        var order = caseIDs.sorted()
        var rng = RandomStream(seed: key, layer: 0, step: 0, purpose: .folds)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.nextInt(below: i + 1)) }
        return (0..<folds).map { k in
            let val = order.enumerated().filter { $0.offset % folds == k }.map(\.element).sorted()
            let held = Set(val)
            return FoldSplit(train: caseIDs.sorted().filter { !held.contains($0) }, val: val)
        }
    }

    /// The folds of the dataset folder `root`: its splits_final.json when there is one (it must have
    /// `folds` folds over exactly `caseIDs`), else `make(caseIDs:folds:)`.
    public static func forDataset(root: String, caseIDs: [String], folds: Int) throws -> [FoldSplit] {
        let path = Paths.join(root, datasetFileName)
        if FileIO.exists(path) {
            let splits: [FoldSplit]
            do {
                splits = try JSONDecoder().decode([FoldSplit].self, from: Data(try FileIO.read(path)))
            } catch {
                throw DatasetError.badSplits(path: path, reason: "not a list of {\"train\": [...], \"val\": [...]} (\(error))")
            }
            try check(splits, path: path, caseIDs: caseIDs, folds: folds)
            return splits
        }
        guard folds >= 2 && folds <= caseIDs.count else {
            throw DatasetError.badSplits(path: path, reason: "\(folds) folds need at least \(max(folds, 2)) cases, the dataset has \(caseIDs.count)")
        }
        return make(caseIDs: caseIDs, folds: folds)
    }

    /// A split read from disk must partition exactly the dataset's cases in every fold.
    static func check(_ splits: [FoldSplit], path: String, caseIDs: [String], folds: Int) throws {
        guard splits.count == folds else {
            throw DatasetError.badSplits(path: path, reason: "has \(splits.count) folds, --folds asks for \(folds)")
        }
        let all = Set(caseIDs)
        for (k, s) in splits.enumerated() {
            let listed = s.train + s.val
            if let unknown = listed.first(where: { !all.contains($0) }) {
                throw DatasetError.badSplits(path: path, reason: "fold \(k) names case \(unknown), which the dataset does not have")
            }
            guard Set(listed) == all, listed.count == all.count else {
                throw DatasetError.badSplits(path: path, reason: "fold \(k) does not list every case of the dataset exactly once")
            }
        }
    }

    /// The training and validation ids of `selection` (`.all`: every case, no validation).
    public static func cases(_ selection: FoldSelection, caseIDs: [String], splits: [FoldSplit]) throws -> FoldSplit {
        switch selection {
        case .all:
            return FoldSplit(train: caseIDs.sorted(), val: [])
        case .fold(let k):
            guard k < splits.count else {
                throw DatasetError.badSplits(path: fileName, reason: "--fold \(k) does not exist: folds are 0..<\(splits.count)")
            }
            return splits[k]
        }
    }
}
