// Patch sampling for training: a third of the patches centred on a random foreground voxel, the rest anywhere (nnU-Net's oversample_foreground_percent = 0.33), augmented on the fly, keyed by RNG streams.
import Foundation

/// Cuts training patches out of prepared cases. Which case, whether a patch is foreground-centred,
/// the class and voxel it is centred on, and its position are all drawn from
/// RandomStream(seed, layer: 0, step: step, purpose: .patchSampling), one stream per step, in a
/// fixed order: the same seed and step give the same patches on any machine and thread count.
///
/// A foreground patch picks a foreground class present in the case uniformly (as nnU-Net does, so
/// small structures are seen as often as large ones), then a voxel of that class uniformly, and
/// centres the patch on it (clamped so the patch stays inside the volume where it fits). Where the
/// volume is smaller than the patch, the patch is padded: image 0 (the normalised mean), label 0.
///
/// With `augmentation` (nnU-Net's default pipeline, `PatchAugmentation`), each patch is cut
/// rotated and scaled about its centre straight from the whole case (so the case's own voxels
/// fill it where nnU-Net samples a larger patch and crops), then its intensities are transformed
/// and it is mirrored; the parameters are keyed by (seed, step, example index in the batch).
public struct PatchSampler {
    /// Fraction of patches centred on foreground (nnU-Net's oversample_foreground_percent).
    public static let foregroundFraction = 0.33

    public let cases: [PreparedCase]
    /// (d, h, w) of every patch.
    public let patchSize: [Int]
    public let seed: UInt64
    public let augmentation: AugmentationSettings
    /// Per case, per class 1..<K: the flat voxel indices of that class (empty if absent).
    let foreground: [[[Int32]]]

    public init(cases: [PreparedCase], patchSize: [Int], classCount: Int, seed: UInt64, augmentation: AugmentationSettings = .none) {
        precondition(patchSize.count == 3 && patchSize.allSatisfy { $0 >= 1 }, "PatchSampler: patch size \(patchSize)")
        precondition(cases.allSatisfy { $0.label != nil }, "PatchSampler: every training case needs a label")
        self.cases = cases; self.patchSize = patchSize; self.seed = seed; self.augmentation = augmentation
        foreground = cases.map { c in
            var lists = [[Int32]](repeating: [], count: classCount)
            let values = c.label!.array
            // Label values 1..<K; the ignore label (a value >= K) is never a patch centre.
            for i in values.indices where values[i] > 0 && values[i] < Float(classCount) { lists[Int(values[i])].append(Int32(i)) }
            return Array(lists.dropFirst())
        }
    }

    /// Where one patch comes from.
    public struct Draw: Equatable, Sendable {
        public var caseIndex: Int
        public var foregroundCentred: Bool
        /// Voxel (z, y, x) of the case at the patch's voxel (0, 0, 0); may be negative (padding).
        public var start: [Int]
        /// The global step and the index in the step's (global) batch: the augmentation's keys.
        public var step = 0
        public var example = 0
    }

    /// The draws of a step's patches, for the given cases (indices into `cases`).
    public func draws(step: Int, caseIndices: [Int]) -> [Draw] {
        var rng = RandomStream(seed: seed, layer: 0, step: step, purpose: .patchSampling)
        return caseIndices.enumerated().map { example, ci in
            let shape = Array(cases[ci].image.shape.dropFirst())
            let wantsForeground = Double(uniform(&rng)) < Self.foregroundFraction
            let present = foreground[ci].indices.filter { !foreground[ci][$0].isEmpty }
            // Start ranges: [min(0, size − patch), max(0, size − patch)] per axis.
            let lo = (0..<3).map { min(0, shape[$0] - patchSize[$0]) }, hi = (0..<3).map { max(0, shape[$0] - patchSize[$0]) }
            var start = [0, 0, 0]
            if wantsForeground && !present.isEmpty {
                let voxels = foreground[ci][present[rng.uniformIndex(below: present.count)]]
                let flat = Int(voxels[randomInt(&rng, below: voxels.count)])
                let centre = [flat / (shape[1] * shape[2]), (flat / shape[2]) % shape[1], flat % shape[2]]
                for a in 0..<3 { start[a] = min(max(centre[a] - patchSize[a] / 2, lo[a]), hi[a]) }
            } else {
                for a in 0..<3 { start[a] = lo[a] + randomInt(&rng, below: hi[a] - lo[a] + 1) }
            }
            return Draw(caseIndex: ci, foregroundCentred: wantsForeground && !present.isEmpty, start: start, step: step, example: example)
        }
    }

    /// The patches of `draws`: x (B, C, d, h, w) and y (B, 1, d, h, w).
    public func batch(_ draws: [Draw]) -> (x: Tensor, y: Tensor) {
        let c = cases[draws[0].caseIndex].image.shape[0]
        let x = Tensor(shape: [draws.count, c] + patchSize), y = Tensor(shape: [draws.count, 1] + patchSize)
        let pv = patchSize.reduce(1, *)
        for d in draws {
            let pc = cases[d.caseIndex]
            precondition(pc.image.shape[0] == c, "PatchSampler: case \(pc.id) has \(pc.image.shape[0]) channels, expected \(c)")
        }
        guard augmentation.policy != .none else {
            for (b, d) in draws.enumerated() {
                Self.crop(cases[d.caseIndex].image, start: d.start, size: patchSize, into: x.data + b * c * pv)
                Self.crop(cases[d.caseIndex].label!, start: d.start, size: patchSize, into: y.data + b * pv)
            }
            return (x, y)
        }
        // Examples are independent (each writes its own slice), so they run side by side.
        let (xp, yp) = (x.data, y.data)
        DispatchQueue.concurrentPerform(iterations: draws.count) { b in
            let d = draws[b], pc = cases[d.caseIndex]
            let a = PatchAugmentation(settings: augmentation, channels: c, seed: seed, step: d.step, example: d.example)
            a.cut(image: pc.image, label: pc.label, start: d.start, size: patchSize, into: xp + b * c * pv,
                  labelInto: yp + b * pv, seed: seed, step: d.step, example: d.example)
        }
        return withExtendedLifetime((x, y)) { (x, y) }
    }

    /// Copies the box [start, start + size) of every channel of `volume` (C, D, H, W) into `out`
    /// (C, size...), leaving the parts outside the volume as they are (zero in a fresh tensor).
    public static func crop(_ volume: Tensor, start: [Int], size: [Int], into out: UnsafeMutablePointer<Float>) {
        let (c, d, h, w) = (volume.shape[0], volume.shape[1], volume.shape[2], volume.shape[3])
        let (pd, ph, pw) = (size[0], size[1], size[2])
        let x0 = max(0, -start[2]), x1 = min(pw, w - start[2])
        guard x1 > x0 else { return }
        for ch in 0..<c { for z in 0..<pd {
            let sz = start[0] + z
            guard sz >= 0 && sz < d else { continue }
            for yy in 0..<ph {
                let sy = start[1] + yy
                guard sy >= 0 && sy < h else { continue }
                let src = volume.data + ((ch * d + sz) * h + sy) * w + start[2]
                let dst = out + ((ch * pd + z) * ph + yy) * pw
                (dst + x0).update(from: src + x0, count: x1 - x0)
            }
        } }
    }

    private func uniform(_ rng: inout RandomStream) -> Float { var u: Float = 0; rng.fillUniform(&u, count: 1); return u }
    /// A uniform integer in 0..<n for any n below 2^32 (voxel lists can exceed `uniformIndex`'s 2^24 bound).
    private func randomInt(_ rng: inout RandomStream, below n: Int) -> Int { rng.nextInt(below: n) }
}
