// Per-channel intensity statistics over a dataset, and the normalisations (nnU-Net's
// ZScoreNormalization and CTNormalization).
//
// What each normalisation's statistics come from, stated once:
// - per-image z-score (`.zScorePerImage`, every channel not named CT in a plan from a
//   fingerprint): the image itself after cropping, inside its filled nonzero mask when the plan
//   says so (then voxels outside keep 0), else every voxel. Computed again for every case, at
//   training and at prediction: another scanner's head is normalised by its own statistics.
// - CT channels (name "CT", any case): dataset-wide, over the labelled voxels (label > 0) of the
//   training cases, as nnU-Net's fingerprint; stored in the plan and replayed unchanged.
// - `.zScore(mean, std)`: dataset-wide statistics over the channel's nonzero voxels (plans made
//   before per-image z-scores, and the built-in binary models' fixed (0, 1)).
import Foundation

/// Running statistics of one channel over one region: exact mean and variance (Chan et al.'s
/// pairwise combination of per-case two-pass moments, in Double), min, max, and a deterministic
/// subsample for percentiles (every voxel up to `sampleBudget` per case (nnU-Net keeps 10 000), else an even stride).
public struct IntensityStatistics: Sendable {
    public private(set) var count = 0
    public private(set) var mean = 0.0
    private var m2 = 0.0
    public private(set) var minimum = Double.infinity
    public private(set) var maximum = -Double.infinity
    private var sample: [Float] = []
    /// Voxels kept per case for percentiles.
    static let sampleBudget = 20_000

    public init() {}

    public var std: Double { count > 1 ? (m2 / Double(count)).squareRoot() : 0 }

    /// Adds the voxels of `values` where `include(i)` holds.
    mutating func add(_ values: Tensor, where include: (Int) -> Bool) {
        var n = 0, sum = 0.0, lo = Double.infinity, hi = -Double.infinity
        let p = values.data
        for i in 0..<values.count where include(i) && p[i].isFinite {
            let v = Double(p[i]); n += 1; sum += v; lo = min(lo, v); hi = max(hi, v)
        }
        guard n > 0 else { return }
        let caseMean = sum / Double(n)
        var caseM2 = 0.0
        for i in 0..<values.count where include(i) && p[i].isFinite { let d = Double(p[i]) - caseMean; caseM2 += d * d }
        let stride = max(1, n / Self.sampleBudget)
        var seen = 0
        for i in 0..<values.count where include(i) && p[i].isFinite {
            if seen % stride == 0 { sample.append(p[i]) }
            seen += 1
        }
        let total = count + n, delta = caseMean - mean
        m2 += caseM2 + delta * delta * Double(count) * Double(n) / Double(total)
        mean += delta * Double(n) / Double(total)
        count = total
        minimum = min(minimum, lo); maximum = max(maximum, hi)
    }

    /// The q-th percentile (0...100) of the subsample, linear between order statistics (numpy's default).
    public func percentile(_ q: Double) -> Double {
        guard !sample.isEmpty else { return 0 }
        let sorted = sample.sorted()
        let pos = q / 100 * Double(sorted.count - 1)
        let lo = Int(pos.rounded(.down)), hi = min(lo + 1, sorted.count - 1)
        return Double(sorted[lo]) + (Double(sorted[hi]) - Double(sorted[lo])) * (pos - Double(lo))
    }
}

/// The statistics of one channel that its normalisation may need: over the nonzero voxels, over
/// the labelled voxels, and over all voxels (the fallback when a channel has no zero voxels).
public struct ChannelStatistics: Sendable {
    public var nonzero = IntensityStatistics()
    public var labelled = IntensityStatistics()
    public var all = IntensityStatistics()

    public init() {}

    /// Adds one case: `image` (D, H, W) of this channel, `label` (D, H, W) on the same grid or nil.
    public mutating func add(image: Tensor, label: Tensor?) {
        let p = image.data
        nonzero.add(image) { p[$0] != 0 }
        all.add(image) { _ in true }
        if let label { let l = label.data; labelled.add(image) { l[$0] > 0 } }
    }

    /// Whether a channel with this name is normalised as CT (nnU-Net: channel name "CT").
    public static func isCT(_ channelName: String) -> Bool { channelName.lowercased() == "ct" }

    /// The normalisation of a channel called `name` (see the file comment for the foreground).
    public func normalization(channelName name: String) -> ChannelNormalization {
        if Self.isCT(name), labelled.count > 0 {
            return .ct(clipLow: labelled.percentile(0.5), clipHigh: labelled.percentile(99.5),
                       mean: labelled.mean, std: labelled.std)
        }
        let region = nonzero.count > 0 && !Self.isCT(name) ? nonzero : all
        return .zScore(mean: region.mean, std: region.std)
    }
}

extension ChannelNormalization {
    /// Largest |normalised value| kept: a voxel farther than this many standard deviations from
    /// the mean (an extreme but finite intensity) is clamped to it, so the network never sees a
    /// value that overflows Float on the way (x - mean can exceed Float's range).
    public static let zLimit = 1e6

    /// Normalises `values` in place: optional clip, then (x - mean) / max(std, 1e-8), in Double,
    /// clamped to ±`zLimit`. A per-image z-score takes mean and std from `values`, over
    /// `nonzeroMask` (1 = inside, one entry per voxel; nil: the voxels ≠ 0) when it uses the mask,
    /// and leaves voxels outside it.
    public func apply(to values: Tensor, nonzeroMask: [UInt8]? = nil) {
        let (lo, hi, mean, std): (Float, Float, Double, Double)
        switch self {
        case let .zScore(m, s): (lo, hi, mean, std) = (-.infinity, .infinity, m, s)
        case let .ct(l, h, m, s): (lo, hi, mean, std) = (Float(l), Float(h), m, s)
        case let .zScorePerImage(useMask):
            let p = values.data
            precondition(nonzeroMask == nil || nonzeroMask!.count == values.count, "ChannelNormalization: mask of \(nonzeroMask!.count) for \(values.count) voxels")
            let inside: (Int) -> Bool = !useMask ? { _ in true } : nonzeroMask.map { m in { m[$0] != 0 } } ?? { p[$0] != 0 }
            var n = 0.0, sum = 0.0
            for i in 0..<values.count where inside(i) { n += 1; sum += Double(p[i]) }
            let m = n > 0 ? sum / n : 0
            var ss = 0.0
            for i in 0..<values.count where inside(i) { let d = Double(p[i]) - m; ss += d * d }
            let scale = 1 / max(n > 0 ? (ss / n).squareRoot() : 0, 1e-8), limit = Self.zLimit
            for i in 0..<values.count where inside(i) { p[i] = Float(min(max((Double(p[i]) - m) * scale, -limit), limit)) }
            return
        }
        let scale = 1 / max(std, 1e-8), limit = Self.zLimit
        let p = values.data
        for i in 0..<values.count { p[i] = Float(min(max((Double(min(max(p[i], lo), hi)) - mean) * scale, -limit), limit)) }
    }

    /// One line for a fingerprint or a log: "z-score (mean 112.3, std 40.1)".
    public var summary: String {
        switch self {
        case let .zScore(m, s): return String(format: "z-score over nonzero voxels (mean %.4g, std %.4g)", m, s)
        case let .ct(l, h, m, s): return String(format: "CT: clip to [%.4g, %.4g], then z-score (mean %.4g, std %.4g)", l, h, m, s)
        case let .zScorePerImage(useMask):
            return "z-score per image, by its own statistics " + (useMask ? "inside its nonzero mask (cropping shrank the cases below 3/4)" : "over the cropped image")
        }
    }
}
