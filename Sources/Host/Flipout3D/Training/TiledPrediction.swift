// Whole-case probabilities from a patch-trained U-Net, one patch-sized tile at a time, and per-class hard Dice (validation and the run's test report).
import Foundation

/// Validation during training needs whole-case predictions without holding a whole case's
/// activations: the case is cut into patch-sized tiles (non-overlapping; the last tile on an axis
/// ends at the border, so it overlaps its neighbour; a case smaller than the patch is zero-padded,
/// centred), each tile is run alone, and its probabilities are copied into the case's map.
/// Gaussian-weighted overlapping windows, as MONAI and nnU-Net predict, belong to `flipout predict`
/// (and the test report after training, which predicts as `flipout predict` does).
public enum TiledPrediction {
    /// Tile starts along an axis of `size` voxels for tiles of `patch`.
    static func starts(size: Int, patch: Int) -> [Int] {
        guard size > patch else { return [(size - patch) / 2] }
        var s = Array(stride(from: 0, to: size - patch, by: patch))
        s.append(size - patch)
        return s
    }

    /// image (C, D, H, W) -> the mean over `samples` Monte Carlo draws of the softmax, (K, D, H, W).
    /// Draw t uses `StepContext.prediction(seed, t)` for every tile (one weight sample per draw);
    /// a network without Flipout layers runs once with the posterior centres.
    /// `activation`: softmax over K classes, or one sigmoid per output (region-based plans).
    public static func probabilities(_ model: UNet, image: Tensor, patchSize: [Int], samples: Int, seed: UInt64,
                                     activation: OutputActivation = .softmax) throws -> Tensor {
        let shape = Array(image.shape.dropFirst()), c = image.shape[0], k = model.shape.classCount
        let out = Tensor(shape: [k] + shape) // (K, D, H, W)
        let bayesian = !model.flipoutLayers.isEmpty
        let draws = bayesian ? max(1, samples) : 1
        let pv = patchSize.reduce(1, *), v = shape.reduce(1, *)
        for z0 in starts(size: shape[0], patch: patchSize[0]) { for y0 in starts(size: shape[1], patch: patchSize[1]) { for x0 in starts(size: shape[2], patch: patchSize[2]) {
            let start = [z0, y0, x0]
            let x = Tensor(shape: [1, c] + patchSize) // (1, C, d, h, w)
            PatchSampler.crop(image, start: start, size: patchSize, into: x.data)
            let mean = Tensor(shape: [k] + patchSize)
            for t in 0..<draws {
                var ctx = StepContext.prediction(seed: seed, draw: t)
                if !bayesian { ctx.mode = .center }
                let p = try activation.probabilities(model, x, ctx)
                mean.withUnsafeMutableValues { m in p.withUnsafeValues { q in for i in m.indices { m[i] += q[i] / Float(draws) } } }
            }
            // Copy the tile's voxels that lie inside the case.
            for ch in 0..<k { for z in 0..<patchSize[0] {
                let sz = z0 + z
                guard sz >= 0 && sz < shape[0] else { continue }
                for yy in 0..<patchSize[1] {
                    let sy = y0 + yy
                    guard sy >= 0 && sy < shape[1] else { continue }
                    for xx in 0..<patchSize[2] {
                        let sx = x0 + xx
                        guard sx >= 0 && sx < shape[2] else { continue }
                        out.data[ch * v + (sz * shape[1] + sy) * shape[2] + sx] = mean.data[ch * pv + (z * patchSize[1] + yy) * patchSize[2] + xx]
                    }
                }
            } }
        } } }
        return out
    }

    /// The most probable class per voxel: probabilities (K, D, H, W) -> labels (D·H·W).
    public static func argmax(_ p: Tensor) -> [Int] {
        let k = p.shape[0], v = p.count / k
        return p.withUnsafeValues { q in
            (0..<v).map { i in
                var best = 0
                for c in 1..<k where q[c * v + i] > q[best * v + i] { best = c }
                return best
            }
        }
    }

    /// Hard Dice 2|A∩B| / (|A| + |B|) per class of a label map against the truth ((1, D, H, W) indices);
    /// NaN for a class absent from both (nnU-Net leaves such cases out of the mean).
    public static func dice(prediction: [Int], truth: Tensor, classCount k: Int) -> [Double] {
        precondition(prediction.count == truth.count, "dice: \(prediction.count) predictions for \(truth.count) voxels")
        var inter = [Int](repeating: 0, count: k), sumP = inter, sumT = inter
        let labels = truth.array
        for i in 0..<prediction.count {
            let p = prediction[i], t = Int(labels[i])
            sumP[p] += 1; sumT[t] += 1
            if p == t { inter[p] += 1 }
        }
        return (0..<k).map { sumP[$0] + sumT[$0] == 0 ? .nan : 2 * Double(inter[$0]) / Double(sumP[$0] + sumT[$0]) }
    }

    /// Per output (class, or region of a region-based plan), the mean over `cases` (those holding
    /// it in truth or prediction) of the hard Dice on the prepared grid; voxels of the ignore label
    /// are left out (`dice(prediction:truth:plan:)`).
    public static func meanDice(_ model: UNet, _ cases: [PreparedCase], plan: PreprocessingPlan, patchSize: [Int], samples: Int, seed: UInt64) throws -> [Double] {
        var perCase: [[Double]] = []
        for c in cases {
            guard let label = c.label else { continue }
            let p = try probabilities(model, image: c.image, patchSize: patchSize, samples: samples, seed: seed, activation: plan.activation)
            perCase.append(dice(prediction: plan.labelMap(p).map(Int.init), truth: label.array.map { Int($0) }, plan: plan))
        }
        return meanOverCases(perCase, outputs: plan.outputCount)
    }

    /// Per output, the mean of the non-NaN values over cases (NaN when no case has one).
    public static func meanOverCases(_ perCase: [[Double]], outputs: Int) -> [Double] {
        (0..<outputs).map { j in
            let v = perCase.map { $0[j] }.filter { !$0.isNaN }
            return v.isEmpty ? .nan : v.reduce(0, +) / Double(v.count)
        }
    }

    /// Hard Dice per output of a label map against the truth (label values): per class (K
    /// outputs, background included) or per region (the voxels whose value the region holds, as
    /// nnU-Net evaluates regions). Truth voxels of the ignore label are left out. NaN for an output
    /// absent from both.
    public static func dice(prediction: [Int], truth: [Int], plan: PreprocessingPlan) -> [Double] {
        precondition(prediction.count == truth.count, "dice: \(prediction.count) predictions for \(truth.count) voxels")
        let o = plan.outputCount, top = max(plan.classCount, (plan.regionsClassOrder ?? []).max().map { $0 + 1 } ?? 0)
        // Membership table by label value (values beyond it belong to no output).
        let member = (0..<top).map { plan.outputMembership($0) }
        var inter = [Int](repeating: 0, count: o), sumP = inter, sumT = inter
        for i in 0..<prediction.count where !plan.isIgnored(truth[i]) {
            let p = prediction[i] < top ? member[prediction[i]] : nil, t = truth[i] < top ? member[truth[i]] : nil
            for j in 0..<o {
                let a = p?[j] ?? false, b = t?[j] ?? false
                if a { sumP[j] += 1 }
                if b { sumT[j] += 1 }
                if a && b { inter[j] += 1 }
            }
        }
        return (0..<o).map { sumP[$0] + sumT[$0] == 0 ? .nan : 2 * Double(inter[$0]) / Double(sumP[$0] + sumT[$0]) }
    }

    /// "structureA 0.912  structureB 0.874" (foreground classes; every region of a region-based plan).
    public static func describe(_ dice: [Double], names: [String]) -> String {
        (1..<dice.count).map { String(format: "%@ %.3f", names[$0], dice[$0]) }.joined(separator: "  ")
    }

    /// `describe` for `plan`'s outputs.
    public static func describe(_ dice: [Double], plan: PreprocessingPlan) -> String {
        guard plan.regions != nil else { return describe(dice, names: plan.classNames) }
        return zip(plan.outputNames, dice).map { String(format: "%@ %.3f", $0, $1) }.joined(separator: "  ")
    }
}

/// How the network's logits become probabilities: softmax over the classes, or one sigmoid per
/// output (regions overlap, so each is its own binary problem).
public enum OutputActivation: Sendable {
    case softmax
    case sigmoid

    /// x (N, C, D, H, W) -> probabilities (N, K, D, H, W), one Monte Carlo draw (ctx keys it).
    public func probabilities(_ model: UNet, _ x: Tensor, _ ctx: StepContext) throws -> Tensor {
        switch self {
        case .softmax: return try model.probabilities(x, ctx)
        case .sigmoid:
            let z = try model.forward(x, ctx).logits
            z.withUnsafeMutableValues { v in for i in v.indices { v[i] = 1 / (1 + expf(-v[i])) } }
            return z
        }
    }
}

extension PreprocessingPlan {
    /// Sigmoid per region for a region-based plan, else softmax.
    public var activation: OutputActivation { regions == nil ? .softmax : .sigmoid }

    /// The label map (label values) of probabilities (K or R, D, H, W): argmax over classes, or
    /// nnU-Net's region rule (`regionLabelMap`).
    public func labelMap(_ p: Tensor) -> [Int32] {
        if let order = regionsClassOrder, regions != nil { return Self.regionLabelMap(p, order: order) }
        return TiledPrediction.argmax(p).map(Int32.init)
    }
}

extension StepContext {
    /// The context of Monte Carlo prediction draw t: negative steps, so they never coincide with training steps.
    public static func prediction(seed: UInt64, draw: Int) -> StepContext {
        StepContext(seed: seed, step: -(draw + 1), mode: .sample)
    }
}
