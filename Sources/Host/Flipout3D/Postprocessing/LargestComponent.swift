// Post-processing decided on validation (nnU-Net's determine_postprocessing): keep only the largest connected component of a class where that raises the validation Dice.
import Foundation

/// Which classes keep only their largest connected component (face connectivity, scipy.ndimage.label's
/// default). Stored in the checkpoint as JSON and applied by predict to the label map.
public struct Postprocessing: Codable, Sendable, Equatable {
    /// Class indices (≥ 1) whose voxels outside their largest component become background.
    public var largestComponentClasses: [Int]

    public init(largestComponentClasses: [Int] = []) {
        precondition(largestComponentClasses.allSatisfy { $0 >= 1 }, "Postprocessing: background cannot be post-processed")
        self.largestComponentClasses = largestComponentClasses.sorted()
    }

    public static let none = Postprocessing()

    /// labels (D·H·W class indices on a (D, H, W) grid) with the post-processing applied.
    public func apply(_ labels: [Int], shape: [Int]) -> [Int] {
        var out = labels
        for k in largestComponentClasses {
            let keep = Self.largestComponent(labels.map { $0 == k }, shape: shape)
            for i in out.indices where out[i] == k && !keep[i] { out[i] = 0 }
        }
        return out
    }

    /// The largest 6-connected component of `mask` on a (D, H, W) grid (the first found on ties);
    /// all false when the mask is empty.
    public static func largestComponent(_ mask: [Bool], shape: [Int]) -> [Bool] {
        precondition(mask.count == shape.reduce(1, *), "largestComponent: \(mask.count) voxels for \(shape)")
        let (d, h, w) = (shape[0], shape[1], shape[2])
        var component = [Int32](repeating: 0, count: mask.count)
        var best: Int32 = 0, bestSize = 0, next: Int32 = 0
        var stack: [Int] = []
        for seed in mask.indices where mask[seed] && component[seed] == 0 {
            next += 1
            var size = 0
            component[seed] = next; stack.append(seed)
            while let i = stack.popLast() {
                size += 1
                let x = i % w, y = (i / w) % h, z = i / (w * h)
                for (ok, j) in [(x > 0, i - 1), (x < w - 1, i + 1), (y > 0, i - w), (y < h - 1, i + w), (z > 0, i - w * h), (z < d - 1, i + w * h)]
                where ok && mask[j] && component[j] == 0 {
                    component[j] = next; stack.append(j)
                }
            }
            if size > bestSize { bestSize = size; best = next }
        }
        return component.map { $0 != 0 && $0 == best }
    }

    /// Hard Dice of class k (1 when the class is absent from both, nnU-Net's convention for the
    /// decision, so removing false positives from an empty case counts as an improvement).
    static func dice(_ a: [Int], _ b: [Int], _ k: Int) -> Double {
        var inter = 0, na = 0, nb = 0
        for i in a.indices { let x = a[i] == k, y = b[i] == k; if x { na += 1 }; if y { nb += 1 }; if x && y { inter += 1 } }
        return na + nb == 0 ? 1 : 2 * Double(inter) / Double(na + nb)
    }

    /// The decision on validation cases: for each class 1..<K, keep its largest component only if
    /// that raises the mean Dice of the class over the cases (as nnU-Net decides per class on the
    /// validation folds). `cases`: (predicted labels, true labels, shape) per case.
    public static func decide(cases: [(prediction: [Int], truth: [Int], shape: [Int])], classCount: Int) -> (Postprocessing, [(before: Double, after: Double)]) {
        guard !cases.isEmpty else { return (.none, []) }
        var kept: [Int] = [], scores: [(Double, Double)] = []
        for k in 1..<classCount {
            let one = Postprocessing(largestComponentClasses: [k])
            let before = cases.map { dice($0.prediction, $0.truth, k) }.reduce(0, +) / Double(cases.count)
            let after = cases.map { dice(one.apply($0.prediction, shape: $0.shape), $0.truth, k) }.reduce(0, +) / Double(cases.count)
            scores.append((before, after))
            if after > before { kept.append(k) }
        }
        return (Postprocessing(largestComponentClasses: kept), scores)
    }

    /// The checkpoint metadata key holding the decision as JSON (absent: none).
    public static let checkpointKey = "flipout3d.postprocessing"

    /// The decision a checkpoint records; `.none` when it records none (or cannot be decoded).
    public init(checkpoint: Checkpoint) {
        self = checkpoint.metadata[Self.checkpointKey].flatMap { try? JSONDecoder().decode(Postprocessing.self, from: Data($0.utf8)) } ?? .none
    }

    /// `apply` for a label map of Int32 class indices.
    public func apply(_ labels: [Int32], shape: [Int]) -> [Int32] {
        largestComponentClasses.isEmpty ? labels : apply(labels.map(Int.init), shape: shape).map(Int32.init)
    }

    /// The decision for `model` on prepared validation cases: their tiled predictions (the
    /// posterior mean over `samples` draws) against their labels, on the prepared grid.
    public static func decide(model: UNet, validation: [PreparedCase], patchSize: [Int], samples: Int, seed: UInt64) throws
        -> (Postprocessing, [(before: Double, after: Double)]) {
        let cases = try validation.compactMap { c -> (prediction: [Int], truth: [Int], shape: [Int])? in
            guard let label = c.label else { return nil }
            let p = try TiledPrediction.probabilities(model, image: c.image, patchSize: patchSize, samples: samples, seed: seed)
            return (TiledPrediction.argmax(p), label.array.map { Int($0) }, Array(c.image.shape.dropFirst()))
        }
        return decide(cases: cases, classCount: model.shape.classCount)
    }
}
