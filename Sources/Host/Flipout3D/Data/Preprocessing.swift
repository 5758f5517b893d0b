// The preprocessing plan applied and undone: crop to the nonzero region, normalise, reorient to
// RAS and resample to the plan's spacing (prepare), and map prepared-grid outputs back onto the
// source grid and affine, pasting the crop back (restore).
import Foundation

/// Whether a case is cropped to its nonzero region before anything else (nnU-Net's
/// `crop_to_nonzero`, applied to every case it trains on or predicts).
public enum Cropping: String, Codable, Sendable {
    case none
    /// The bounding box of the voxels nonzero in any channel, holes filled (`NonzeroRegion`).
    case nonzero
}

extension NIfTIVolume {
    /// A volume held in memory (built cases, tests): `data` (D, H, W) on `header`'s grid.
    public init(header: NIfTIHeader, data: Tensor) {
        precondition(data.shape == header.shape, "NIfTIVolume: data \(data.shape) on a \(header.shape) grid")
        self.header = header; self.data = data
    }
}

extension PreprocessingPlan {
    /// nnU-Net's threshold: a per-image z-score uses only the nonzero mask when cropping shrank the
    /// training cases to less than this fraction of their voxels (median over cases)
    /// (`DefaultPreprocessor`/`ExperimentPlanner.determine_whether_to_use_mask_for_norm`).
    public static let maskForNormalizationBelowFraction = 0.75

    /// The plan a dataset's fingerprint gives, as nnU-Net plans it: every case cropped to its
    /// nonzero region; the median spacing (or `spacing`, (D, H, W) mm in RAS order); a channel
    /// named CT clipped and z-scored with the dataset's foreground statistics, every other channel
    /// z-scored per image (inside its nonzero mask when cropping shrank the cases); the classes of
    /// dataset.json.
    public init(fingerprint f: DatasetFingerprint, spacing: [Double]? = nil) {
        let useMask = DatasetFingerprint.median(f.croppedFractions) < Self.maskForNormalizationBelowFraction
        self.init(spacing: spacing ?? f.medianSpacing,
                  channelNames: f.channelNames,
                  channels: zip(f.channelNames, f.channelStatistics).map { name, stats in
                      ChannelStatistics.isCT(name) ? stats.normalization(channelName: name) : .zScorePerImage(useNonzeroMask: useMask)
                  },
                  labels: f.labels, classCount: f.classCount)
        cropping = .nonzero
        regions = f.labelScheme.regions; regionsClassOrder = f.labelScheme.regionsClassOrder; ignoreLabel = f.labelScheme.ignoreLabel
    }

    /// The prepared grid of a source grid: RAS axes, the plan's spacing, the same field of view.
    /// Traps if the grid exceeds `GeometryLimits.gridVoxels`: check user data with `checkedPreparedGrid`.
    public func preparedGrid(for source: VoxelGrid) -> VoxelGrid {
        source.reorientedToRAS(spacing: spacing)
    }

    /// `preparedGrid(for:)` after the checks every case gets before anything is allocated: the
    /// source geometry is plausible and the prepared grid within `GeometryLimits.gridVoxels`.
    public func checkedPreparedGrid(for source: VoxelGrid, path: String, header: NIfTIHeader? = nil) throws -> VoxelGrid {
        try source.checkGeometry(path: path, header: header)
        return try source.checkedRASGrid(spacing: spacing, path: path)
    }

    /// One case, prepared: every channel normalised (on the source grid, as nnU-Net) and
    /// resampled trilinearly; the label map (class indices 0..<K) resampled as nnU-Net resamples
    /// segmentations, each class's one-hot trilinearly, then the largest share (`LabelResampling`).
    /// Channels come in plan order and must share one grid; the label must be on that grid.
    /// `paths` name the files in errors (channel files, then the label file).
    public func prepare(id: String, images: [NIfTIVolume], label: NIfTIVolume?, paths: [String] = []) throws -> PreparedCase {
        func path(_ i: Int) -> String { i < paths.count ? paths[i] : "case \(id) file \(i)" }
        guard images.count == channels.count else {
            throw DatasetError.channelCount(caseID: id, found: images.count, expected: channelNames)
        }
        let full = VoxelGrid(shape: images[0].header.shape, affine: images[0].header.affine)
        guard full.affine.isInvertible else { throw DatasetError.singularAffine(path: path(0), affine: full.affine) }
        for (c, v) in images.enumerated().dropFirst() where !Self.sameGrid(v.header, full) {
            throw DatasetError.gridMismatch(path: path(c), reference: path(0), shape: v.header.shape, expectedShape: full.shape,
                                            affine: v.header.affine, expectedAffine: full.affine)
        }
        if let label, !Self.sameGrid(label.header, full) {
            throw DatasetError.gridMismatch(path: path(images.count), reference: path(0), shape: label.header.shape,
                                            expectedShape: full.shape, affine: label.header.affine, expectedAffine: full.affine)
        }
        // Crop first (nnU-Net: crop, normalise, resample); `mask` is the filled nonzero mask on the box.
        var box: VoxelBox?, mask: [UInt8]?
        if cropping == .nonzero {
            let region = NonzeroRegion(channels: images.map(\.data))
            box = region.box
            mask = NonzeroRegion.crop(Tensor(shape: region.shape, values: region.mask.map(Float.init)), to: region.box).array.map { $0 != 0 ? 1 : 0 }
        }
        let source = box.map { $0.grid(in: full) } ?? full
        let target = try checkedPreparedGrid(for: source, path: path(0), header: images[0].header)
        let stacked = Tensor(uninitializedShape: [images.count] + source.shape) // (C, D, H, W) source grid (cropped)
        let plane = source.shape.reduce(1, *)
        for (c, v) in images.enumerated() {
            let channel = box.map { NonzeroRegion.crop(v.data, to: $0) } ?? v.data.copy()
            channels[c].apply(to: channel, nonzeroMask: mask)
            // Keep `channel` alive until the copy is done (`data` is a raw pointer into it).
            withExtendedLifetime(channel) { (stacked.data + c * plane).update(from: channel.data, count: plane) }
        }
        let image = Resample.resample(stacked, from: source, to: target, interpolation: .linear)
        var preparedLabel: Tensor?
        if let label {
            try Self.checkLabelValues(label.data, classCount: classCount, labels: labels, path: path(images.count), ignoreLabel: ignoreLabel)
            let labelOnSource = box.map { NonzeroRegion.crop(label.data, to: $0) } ?? label.data
            preparedLabel = LabelResampling.resample(labelOnSource, from: source, to: target).reshaped([1] + target.shape)
        }
        return PreparedCase(id: id, image: image, label: preparedLabel,
                            geometry: CaseGeometry(sourceShape: full.shape, sourceAffine: full.affine,
                                                   preparedShape: target.shape, preparedAffine: target.affine, crop: box))
    }

    /// Maps `maps` (K or 1, D, H, W) on the prepared grid back onto the case's source grid:
    /// (K or 1, sD, sH, sW). Use `.linear` for probabilities (then argmax on the source grid, as
    /// nnU-Net), `.nearest` for a label map. Voxels beyond the prepared field of view take 0, and
    /// so do those outside the crop, unless `outside` gives a value per channel there (the
    /// cropped-away region holds no subject: `restoreProbabilities` gives it background).
    public func restore(_ maps: Tensor, to geometry: CaseGeometry, interpolation: Interpolation, outside: [Float]? = nil) -> Tensor {
        let prepared = VoxelGrid(shape: geometry.preparedShape, affine: geometry.preparedAffine)
        let full = VoxelGrid(shape: geometry.sourceShape, affine: geometry.sourceAffine)
        guard let box = geometry.crop else { return Resample.resample(maps, from: prepared, to: full, interpolation: interpolation) }
        let onBox = Resample.resample(maps, from: prepared, to: box.grid(in: full), interpolation: interpolation)
        let c = maps.rank == 4 ? maps.shape[0] : 1
        let pasted = NonzeroRegion.paste(onBox.rank == 4 ? onBox : onBox.reshaped([1] + onBox.shape), from: box, into: full.shape,
                                         outside: outside ?? [Float](repeating: 0, count: c))
        return maps.rank == 4 ? pasted : pasted.reshaped(full.shape)
    }

    /// Class probabilities (K, D, H, W) on the prepared grid back onto the source grid; the region
    /// cropped away is background with probability 1 (nnU-Net's `bbox` paste-back).
    public func restoreProbabilities(_ p: Tensor, to geometry: CaseGeometry) -> Tensor {
        restore(p, to: geometry, interpolation: .linear, outside: [1] + [Float](repeating: 0, count: p.shape[0] - 1))
    }

    /// Same shape and affine within 1e-3 mm per entry (files written by different tools round the
    /// affine differently; nnU-Net checks the same thing with a tolerance).
    static func sameGrid(_ h: NIfTIHeader, _ grid: VoxelGrid) -> Bool {
        h.shape == grid.shape && h.affine.isClose(to: grid.affine)
    }

    /// Every label value must be an integer in 0..<K, or the ignore label.
    static func checkLabelValues(_ label: Tensor, classCount: Int, labels: [String: Int], path: String, ignoreLabel: Int? = nil) throws {
        var bad = Set<Float>()
        let p = label.data
        let ignored = ignoreLabel.map(Float.init) ?? -1
        for i in 0..<label.count {
            let v = p[i]
            if !(v >= 0 && v < Float(classCount) && v == v.rounded()) && v != ignored { bad.insert(v); if bad.count >= 5 { break } }
        }
        if !bad.isEmpty { throw DatasetError.labelValues(path: path, values: bad.sorted(), labels: labels) }
    }
}
