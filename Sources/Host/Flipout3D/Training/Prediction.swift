// Monte Carlo prediction on one volume: probability, entropy, mutual information, label map, preview.
import Foundation

public struct PredictionFiles: Sendable {
    public var mean: String
    public var entropy: String
    public var mutualInformation: String
    public var labels: String
    public var preview: String
    public var all: [String] { [mean, entropy, mutualInformation, labels, preview] }
}

public enum Prediction {
    /// Z-scores a volume over its nonzero voxels (all voxels if none is zero), as training data are.
    public static func normalise(_ v: Tensor) -> Tensor {
        let out = v.copy()
        var s = 0.0, s2 = 0.0, n = 0.0
        let anyZero = v.buffer.contains(0)
        for x in v.buffer where !anyZero || x != 0 { s += Double(x); s2 += Double(x) * Double(x); n += 1 }
        let mean = s / max(n, 1), std = max((s2 / max(n, 1) - mean * mean).squareRoot(), 1e-6)
        for i in 0..<out.count { out.data[i] = Float((Double(v.data[i]) - mean) / std) }
        return out
    }

    /// Predicts on `image` (D, H, W) with T samples and writes the maps beside `header`'s geometry.
    /// - Parameter stem: output path prefix, e.g. "out/ch2" -> out/ch2_mean.nii.gz ...
    public static func run(model: SegmentationNet, image: Tensor, header: NIfTIHeader, samples: Int, seed: UInt64,
                           stem: String, normalise doNormalise: Bool) throws -> (maps: UncertaintyMaps, files: PredictionFiles) {
        precondition(image.rank == 3, "Prediction.run: image must be (D, H, W)")
        let shape = image.shape
        let m = model.config.sizeMultiple
        // Pad up to the model's size multiple; crop the outputs back.
        let padded = shape.map { max(4, ($0 + m - 1) / m * m) }
        let x = Tensor(shape: [1, 1] + padded)
        let src = doNormalise ? normalise(image) : image
        copyBox(from: src, shape, into: x, padded)
        let maps = try Evaluator.predict(model, x, samples: samples, seed: seed)
        func crop(_ t: Tensor) -> Tensor { let o = Tensor(shape: shape); copyBox(from: t, padded, into: o, shape); return o }
        let mean = crop(maps.mean), entropy = crop(maps.predictiveEntropy), mi = crop(maps.mutualInformation)
        let labels = Tensor(shape: shape)
        for i in 0..<mean.count { labels.data[i] = mean.data[i] >= 0.5 ? 1 : 0 }
        let files = PredictionFiles(mean: stem + "_mean.nii.gz", entropy: stem + "_entropy.nii.gz", mutualInformation: stem + "_mi.nii.gz",
                                    labels: stem + "_seg.nii.gz", preview: stem + "_preview.png")
        try NIfTI.write(mean, header: header, datatype: .float32, to: files.mean)
        try NIfTI.write(entropy, header: header, datatype: .float32, to: files.entropy)
        try NIfTI.write(mi, header: header, datatype: .float32, to: files.mutualInformation)
        try NIfTI.write(labels, header: header, datatype: .uint8, to: files.labels)
        let point = PNGPreview.centroid(of: labels) ?? PNGPreview.center(of: shape)
        _ = try PNGPreview.write([PNGPreview.Panel(image), PNGPreview.Panel(mean, range: 0...1), PNGPreview.Panel(mi, colormap: .hot)],
                                 to: files.preview, at: point, scale: 2)
        return (UncertaintyMaps(mean: mean, predictiveEntropy: entropy, expectedEntropy: crop(maps.expectedEntropy), mutualInformation: mi, samples: maps.samples), files)
    }

    /// Copies the overlapping box of two (…, D, H, W) tensors, zero elsewhere.
    static func copyBox(from a: Tensor, _ sa: [Int], into b: Tensor, _ sb: [Int]) {
        let d = min(sa[0], sb[0]), h = min(sa[1], sb[1]), w = min(sa[2], sb[2])
        for z in 0..<d { for y in 0..<h {
            (b.data + (z * sb[1] + y) * sb[2]).update(from: a.data + (z * sa[1] + y) * sa[2], count: w)
        } }
    }
}
