// One case predicted and written: read the channels, normalise, sliding-window Monte Carlo prediction, maps, preview, CASE.json.
//
// Outputs (all on the first channel's grid and header, so viewers overlay them on the input):
//   CASE.nii.gz                    label map (argmax of the predictive probabilities; uint8)
//   CASE_probabilities.nii.gz      4D float32, one volume per class (K)
//   CASE_entropy.nii.gz            predictive entropy H[E p] (nats)
//   CASE_mi.nii.gz                 mutual information H[E p] − E H[p] (epistemic)
//   CASE_expected_entropy.nii.gz   expected entropy E H[p] (aleatoric)
//   CASE_probabilities_untempered.nii.gz  the mean before temperature scaling (calibrated checkpoints only)
//   CASE_preview.png               orthogonal slices: input | labels | entropy | MI
//   CASE.json                      volumes per class (mm³, ml) and mean uncertainty in the predicted foreground
import Foundation

/// How a case's channel files become the network's input, and the outputs go back.
public enum CasePreprocessing: Sendable {
    /// As they are, on the source grid.
    case none
    /// Each channel z-scored over its nonzero voxels, on the source grid (the built-in binary models).
    case zScoreNonzero
    /// The dataset's plan (normalise, RAS, resample to its spacing). Each Monte Carlo sample's
    /// window-blended probabilities p_t are resampled back onto the source grid (trilinear, convex
    /// weights) and the maps are computed there: the probabilities written are the mean of the
    /// resampled samples (= the resampled mean, resampling being linear), the entropy is H of them,
    /// the expected entropy is the mean of H(resampled p_t), and MI their difference. Interpolation
    /// thus mixes neighbouring prepared voxels inside each sample: at a class boundary that raises
    /// H(p_t) of every sample alike (a partial-volume effect) and lands in the expected (aleatoric)
    /// entropy, never in MI, which stays ≥ 0 (Jensen over samples) and is 0 for a model without
    /// weight uncertainty. The label map is the argmax on the source grid (as nnU-Net).
    case plan(PreprocessingPlan)

    /// A copy z-scored over the nonzero voxels (all voxels if none is zero), as the built-in datasets are.
    public static func zScoreOverNonzero(_ v: Tensor) -> Tensor {
        let out = v.copy()
        var s = 0.0, s2 = 0.0, n = 0.0
        let anyZero = v.buffer.contains(0)
        for x in v.buffer where !anyZero || x != 0 { s += Double(x); s2 += Double(x) * Double(x); n += 1 }
        let mean = s / max(n, 1), std = max((s2 / max(n, 1) - mean * mean).squareRoot(), 1e-6)
        for i in 0..<out.count { out.data[i] = Float((Double(v.data[i]) - mean) / std) }
        return out
    }
}

public struct PredictionSettings: Sendable {
    public var window: SlidingWindowOptions
    public var preprocessing: CasePreprocessing = .zScoreNonzero
    /// Names of classes 0..<K (for CASE.json).
    public var classNames: [String]
    /// What produced the draws, for CASE.json (e.g. checkpoint paths).
    public var members: [String] = []
    /// What to do with NaN or infinite input voxels (refused by default; see `NonFinitePolicy`).
    public var nonFinite: NonFinitePolicy = .refuse
    /// Applied to the label map (the checkpoint's `Postprocessing`, decided on validation).
    public var postprocessing = Postprocessing.none
    /// A region-based plan's regions_class_order: the label map is nnU-Net's region rule on the
    /// per-region sigmoids (`PreprocessingPlan.regionLabelMap`), not the argmax; `classNames` then
    /// names the label values.
    public var regionsClassOrder: [Int]?
    /// Told once per channel file whose non-finite voxels were replaced.
    public var note: @Sendable (String) -> Void = { _ in }

    public init(window: SlidingWindowOptions, classNames: [String]) {
        self.window = window; self.classNames = classNames
    }
}

/// What CASE.json holds.
public struct CaseReport: Codable, Sendable {
    public struct ClassVolume: Codable, Sendable {
        public var index: Int
        public var name: String
        public var voxels: Int
        public var volumeMM3: Double
        public var volumeML: Double
    }
    public var id: String
    public var inputs: [String]
    /// (D, H, W) and voxel size in mm along (D, H, W).
    public var shape: [Int]
    public var spacing: [Double]
    public var classes: [ClassVolume]
    public var draws: Int
    public var windows: Int
    public var members: [String]
    public var testTimeMirroring: Bool
    /// The axes test-time mirroring flipped ("D", "H", "W"; each sample is the mean of the 2^n
    /// mirrorings); nil when off.
    public var mirrorAxes: [String]?
    /// Means over the predicted foreground (label != 0), nats; nil when nothing is foreground.
    /// The quality-control / active-learning score: high = the model doubts its segmentation.
    public var foregroundVoxels: Int
    public var meanEntropyForeground: Double?
    public var meanMutualInformationForeground: Double?
    public var meanExpectedEntropyForeground: Double?
    /// Per foreground class, the Dice between two Monte Carlo samples' (or ensemble members')
    /// label maps, pooled over all pairs (nil: one sample, or the class never predicted), and its
    /// mean over the classes that have one (1 when no sample predicts any foreground): a case-level
    /// quality-control score, low = the samples disagree.
    public var sampleDice: [Double?]?
    public var meanSampleDice: Double?
    /// The temperatures the samples were tempered with (TemperatureScaling), nil if none.
    public var temperatures: [Double]?
    public var seconds: Double
    public var files: [String]
}

public enum CasePredictor {
    /// Predicts `input` with `draws` Monte Carlo samples of `predictor` and writes every output into `folder`.
    public static func run(_ input: CaseInput, channels: Int, classes: Int, draws: Int, settings: PredictionSettings,
                           folder: String, progress: (SlidingWindowProgress) -> Void = { _ in },
                           predictor: WindowPredictor) throws -> CaseReport {
        try withoutActuallyEscaping(predictor) { p in
            try run(input, channels: channels, classes: classes, draws: draws, settings: settings, folder: folder, progress: progress,
                    predictor: PerDrawPredictor(draws: draws, p))
        }
    }

    /// Predicts `input` with draws 0..<`draws` of `predictor` and writes every output into `folder`.
    public static func run<P: MonteCarloWindowPredictor>(_ input: CaseInput, channels: Int, classes: Int, draws: Int, settings: PredictionSettings,
                                                         folder: String, progress: (SlidingWindowProgress) -> Void = { _ in },
                                                         predictor: P) throws -> CaseReport {
        let start = Date()
        let (maps, volumes) = try predictMaps(input, channels: channels, classes: classes, draws: draws, settings: settings,
                                              progress: progress, predictor: predictor)
        let header = volumes[0].header, shape = header.shape
        let n = shape.reduce(1, *)
        let labels = settings.postprocessing.apply(settings.regionsClassOrder.map { PreprocessingPlan.regionLabelMap(maps.probabilities, order: $0) } ?? maps.labels, shape: shape)
        let values = max(classes, settings.classNames.count)   // label values a map may hold
        let labelTensor = Tensor(shape: shape, values: labels.map(Float.init))
        let stem = Paths.join(folder, input.id)
        let files = [stem + ".nii.gz", stem + "_probabilities.nii.gz", stem + "_entropy.nii.gz", stem + "_mi.nii.gz",
                     stem + "_expected_entropy.nii.gz", stem + "_preview.png", stem + ".json"]
        try NIfTI.write(labelTensor, header: header, datatype: values <= 256 ? .uint8 : .int16, to: files[0])
        try NIfTI.write(maps.probabilities, header: header, datatype: .float32, to: files[1])
        try NIfTI.write(maps.predictiveEntropy, header: header, datatype: .float32, to: files[2])
        try NIfTI.write(maps.mutualInformation, header: header, datatype: .float32, to: files[3])
        try NIfTI.write(maps.expectedEntropy, header: header, datatype: .float32, to: files[4])
        var written = files
        if let raw = maps.untemperedProbabilities {
            let path = stem + "_probabilities_untempered.nii.gz"
            try NIfTI.write(raw, header: header, datatype: .float32, to: path)
            written.insert(path, at: 2)
        }
        let point = PNGPreview.centroid(of: labelTensor, threshold: 1) ?? PNGPreview.center(of: shape)
        let maxEntropy = Float(Foundation.log(Double(classes)))
        try PNGPreview.write([PNGPreview.Panel(volumes[0].data),
                              PNGPreview.Panel(labelTensor, range: 0...Float(values - 1)),
                              PNGPreview.Panel(maps.predictiveEntropy, colormap: .hot, range: 0...maxEntropy),
                              PNGPreview.Panel(maps.mutualInformation, colormap: .hot)],
                             to: files[5], at: point, scale: max(1, 160 / max(shape[1], shape[2])))

        // Volumes and the uncertainty score.
        let spacing = voxelSpacing(header)
        let voxelMM3 = spacing.reduce(1, *)
        var counts = [Int](repeating: 0, count: values)
        var fg = 0, pe = 0.0, mi = 0.0, eh = 0.0
        for v in 0..<n {
            counts[Int(labels[v])] += 1
            if labels[v] != 0 {
                fg += 1
                pe += Double(maps.predictiveEntropy.data[v]); mi += Double(maps.mutualInformation.data[v]); eh += Double(maps.expectedEntropy.data[v])
            }
        }
        let report = CaseReport(
            id: input.id, inputs: input.channels, shape: shape, spacing: spacing,
            classes: (0..<values).map { k in
                CaseReport.ClassVolume(index: k, name: k < settings.classNames.count ? settings.classNames[k] : "class \(k)", voxels: counts[k],
                                       volumeMM3: Double(counts[k]) * voxelMM3, volumeML: Double(counts[k]) * voxelMM3 / 1000)
            },
            draws: draws, windows: maps.windows, members: settings.members, testTimeMirroring: settings.window.mirror,
            mirrorAxes: settings.window.mirror ? settings.window.mirrorAxes.map { ["D", "H", "W"][$0] } : nil,
            foregroundVoxels: fg, meanEntropyForeground: fg > 0 ? pe / Double(fg) : nil,
            meanMutualInformationForeground: fg > 0 ? mi / Double(fg) : nil, meanExpectedEntropyForeground: fg > 0 ? eh / Double(fg) : nil,
            sampleDice: maps.draws > 1 ? maps.sampleDice : nil, meanSampleDice: Self.meanSampleDice(maps),
            temperatures: settings.window.temperatures.contains { $0 != 1 } ? Array(Set(settings.window.temperatures)).sorted() : nil,
            seconds: Date().timeIntervalSince(start), files: written.map { Paths.lastComponent($0) })
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileIO.writeAtomically(Array(try e.encode(report)), to: files[6])
        return report
    }

    /// The maps of `input` on its first channel's grid (no file written), and the channel volumes read.
    public static func predictMaps(_ input: CaseInput, channels: Int, classes: Int, draws: Int, settings: PredictionSettings,
                                   progress: (SlidingWindowProgress) -> Void = { _ in },
                                   sampleHook: ((Int, Tensor) -> Void)? = nil,
                                   predictor: WindowPredictor) throws -> (maps: PredictiveMaps, volumes: [NIfTIVolume]) {
        try withoutActuallyEscaping(predictor) { p in
            try predictMaps(input, channels: channels, classes: classes, draws: draws, settings: settings, progress: progress,
                            sampleHook: sampleHook, predictor: PerDrawPredictor(draws: draws, p))
        }
    }

    /// The maps of `input` from draws 0..<`draws` of `predictor` (see the closure form).
    public static func predictMaps<P: MonteCarloWindowPredictor>(_ input: CaseInput, channels: Int, classes: Int, draws: Int, settings: PredictionSettings,
                                                                 progress: (SlidingWindowProgress) -> Void = { _ in },
                                                                 sampleHook: ((Int, Tensor) -> Void)? = nil,
                                                                 predictor: P) throws -> (maps: PredictiveMaps, volumes: [NIfTIVolume]) {
        // A 4D file (the Medical Segmentation Decathlon keeps all channels in one) is refused with what to do.
        for path in input.channels {
            // The reader refuses a 4D header (NIfTIError.notThreeD, dims (nx, ny, nz, T, ...)); say what to do with it.
            guard case .notThreeD(_, let dims)? = (Result { try NIfTI.readHeader(path) }.failure as? NIfTIError), dims.count >= 4, dims[3] > 1 else { continue }
            let stem = Paths.lastComponent(path).replacingOccurrences(of: ".nii.gz", with: "").replacingOccurrences(of: ".nii", with: "")
            throw CaseInputError("\(path) is a 4D image with \(dims[3]) volumes (the Medical Segmentation Decathlon layout, one volume per channel); the model takes \(channels) channel(s) as separate 3D files. Split it into \(stem)_0000.nii.gz, \(stem)_0001.nii.gz\(dims[3] > 2 ? ", …" : "") (one 3D file per channel, in the order of dataset.json's channel_names; nnUNetv2_convert_MSD_dataset does this for a whole MSD task).")
        }
        guard input.channels.count == channels else {
            throw CaseInputError("case \(input.id) has \(input.channels.count) channel file(s) (\(input.channels.map { Paths.lastComponent($0) }.joined(separator: ", "))); the model takes \(channels): give one file per channel, CASE_0000.nii.gz … CASE_\(String(format: "%04d", channels - 1)).nii.gz")
        }
        let volumes = try input.channels.map { try NIfTI.read($0, nonFinite: settings.nonFinite) }
        for (v, path) in zip(volumes, input.channels) where v.nonFiniteReplaced > 0 {
            settings.note("note: \(path): replaced \(v.nonFiniteReplaced) NaN or infinite voxel\(v.nonFiniteReplaced == 1 ? "" : "s") (--nonfinite \(settings.nonFinite.rawValue))")
        }
        let header = volumes[0].header, shape = header.shape
        for (v, path) in zip(volumes, input.channels) where v.header.shape != shape || !sameGrid(v.header, header) {
            throw CaseInputError(gridMismatch(path, v.header, input.channels[0], header))
        }
        let n = shape.reduce(1, *)
        let maps: PredictiveMaps
        if case .plan(let plan) = settings.preprocessing {
            let prepared = try plan.prepare(id: input.id, images: volumes, label: nil, paths: input.channels)
            // Each sample's blended probabilities go back to the source grid before the entropies
            // are taken there (see `CasePreprocessing.plan`).
            maps = try SlidingWindow.predict(prepared.image, classes: classes, draws: draws, options: settings.window,
                                             output: (shape: shape, map: { plan.restoreProbabilities($0, to: prepared.geometry) }),
                                             progress: progress, sampleHook: sampleHook, predictor: predictor)
        } else {
            let image = Tensor(shape: [channels] + shape) // (C, D, H, W)
            for (c, v) in volumes.enumerated() {
                var src = v.data
                if case .zScoreNonzero = settings.preprocessing { src = CasePreprocessing.zScoreOverNonzero(v.data) }
                (image.data + c * n).update(from: src.data, count: n)
            }
            maps = try SlidingWindow.predict(image, classes: classes, draws: draws, options: settings.window,
                                             progress: progress, sampleHook: sampleHook, predictor: predictor)
        }
        return (maps, volumes)
    }

    /// "PATH: its grid differs from REFERENCE's", naming what differs: the shapes, or (equal shapes) the affines.
    public static func gridMismatch(_ path: String, _ h: NIfTIHeader, _ reference: String, _ r: NIfTIHeader) -> String {
        func affine(_ x: NIfTIHeader) -> String {
            let m = x.sformCode > 0 ? x.sformMatrix : x.qformMatrix
            return "[" + m.map { row in row.map { String(format: "%.4g", $0) }.joined(separator: " ") }.joined(separator: "; ") + "]"
        }
        if h.shape != r.shape {
            return "\(path): its grid (shape \(h.shape)) differs from \(Paths.lastComponent(reference))'s (shape \(r.shape)); resample it onto that grid"
        }
        return "\(path): same shape \(h.shape) as \(Paths.lastComponent(reference)), but its voxel-to-world affine \(affine(h)) differs from \(affine(r)) (more than 1e-3 mm): the volumes are not aligned; resample it onto that grid (or fix its header if only the header is wrong)"
    }

    /// The mean over foreground classes of the pooled pairwise sample Dice; nil for one sample.
    static func meanSampleDice(_ m: PredictiveMaps) -> Double? {
        guard m.draws > 1 else { return nil }
        let d = m.sampleDice.compactMap { $0 }
        return d.isEmpty ? 1 : d.reduce(0, +) / Double(d.count)
    }

    /// Voxel size in mm along (D, H, W) = (pixdim[3], pixdim[2], pixdim[1]) (absolute values).
    public static func voxelSpacing(_ h: NIfTIHeader) -> [Double] {
        [Double(abs(h.pixdim[3])), Double(abs(h.pixdim[2])), Double(abs(h.pixdim[1]))].map { $0 > 0 && $0.isFinite ? $0 : 1 }
    }

    /// Whether two headers place voxels at the same world positions (within 1e-3 mm).
    public static func sameGrid(_ a: NIfTIHeader, _ b: NIfTIHeader) -> Bool {
        guard a.shape == b.shape else { return false }
        let ma = a.sformCode > 0 ? a.sformMatrix : a.qformMatrix, mb = b.sformCode > 0 ? b.sformMatrix : b.qformMatrix
        return zip(ma.joined(), mb.joined()).allSatisfy { abs($0 - $1) <= 1e-3 }
    }
}

extension Result {
    /// The error, or nil on success.
    var failure: Failure? { if case .failure(let e) = self { return e } else { return nil } }
}
