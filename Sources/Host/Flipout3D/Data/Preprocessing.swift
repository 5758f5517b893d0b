// The preprocessing plan applied and undone: normalise, reorient to RAS and resample to the plan's
// spacing (prepare), and map prepared-grid outputs back onto the source grid and affine (restore).
import Foundation

extension PreprocessingPlan {
    /// The plan a dataset's fingerprint gives: the median spacing (or `spacing`, (D, H, W) mm in
    /// RAS order), each channel's normalisation from its statistics, the classes of dataset.json.
    public init(fingerprint f: DatasetFingerprint, spacing: [Double]? = nil) {
        self.init(spacing: spacing ?? f.medianSpacing,
                  channelNames: f.channelNames,
                  channels: zip(f.channelNames, f.channelStatistics).map { $1.normalization(channelName: $0) },
                  labels: f.labels, classCount: f.classCount)
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
    /// resampled trilinearly; the label map (class indices 0..<K) resampled by nearest voxel.
    /// Channels come in plan order and must share one grid; the label must be on that grid.
    /// `paths` name the files in errors (channel files, then the label file).
    public func prepare(id: String, images: [NIfTIVolume], label: NIfTIVolume?, paths: [String] = []) throws -> PreparedCase {
        func path(_ i: Int) -> String { i < paths.count ? paths[i] : "case \(id) file \(i)" }
        guard images.count == channels.count else {
            throw DatasetError.channelCount(caseID: id, found: images.count, expected: channelNames)
        }
        let source = VoxelGrid(shape: images[0].header.shape, affine: images[0].header.affine)
        guard source.affine.isInvertible else { throw DatasetError.singularAffine(path: path(0), affine: source.affine) }
        for (c, v) in images.enumerated().dropFirst() where !Self.sameGrid(v.header, source) {
            throw DatasetError.gridMismatch(path: path(c), reference: path(0), shape: v.header.shape, expectedShape: source.shape,
                                            affine: v.header.affine, expectedAffine: source.affine)
        }
        if let label, !Self.sameGrid(label.header, source) {
            throw DatasetError.gridMismatch(path: path(images.count), reference: path(0), shape: label.header.shape,
                                            expectedShape: source.shape, affine: label.header.affine, expectedAffine: source.affine)
        }
        let target = try checkedPreparedGrid(for: source, path: path(0), header: images[0].header)
        let stacked = Tensor(uninitializedShape: [images.count] + source.shape) // (C, D, H, W) source grid
        let plane = source.shape.reduce(1, *)
        for (c, v) in images.enumerated() {
            let channel = v.data.copy()
            channels[c].apply(to: channel)
            // Keep `channel` alive until the copy is done (`data` is a raw pointer into it).
            withExtendedLifetime(channel) { (stacked.data + c * plane).update(from: channel.data, count: plane) }
        }
        let image = Resample.resample(stacked, from: source, to: target, interpolation: .linear)
        var preparedLabel: Tensor?
        if let label {
            try Self.checkLabelValues(label.data, classCount: classCount, labels: labels, path: path(images.count))
            preparedLabel = Resample.resample(label.data, from: source, to: target, interpolation: .nearest).reshaped([1] + target.shape)
        }
        return PreparedCase(id: id, image: image, label: preparedLabel,
                            geometry: CaseGeometry(sourceShape: source.shape, sourceAffine: source.affine,
                                                   preparedShape: target.shape, preparedAffine: target.affine))
    }

    /// Maps `maps` (K or 1, D, H, W) on the prepared grid back onto the case's source grid:
    /// (K or 1, sD, sH, sW). Use `.linear` for probabilities (then argmax on the source grid, as
    /// nnU-Net), `.nearest` for a label map. Voxels beyond the prepared field of view take 0.
    public func restore(_ maps: Tensor, to geometry: CaseGeometry, interpolation: Interpolation) -> Tensor {
        Resample.resample(maps, from: VoxelGrid(shape: geometry.preparedShape, affine: geometry.preparedAffine),
                          to: VoxelGrid(shape: geometry.sourceShape, affine: geometry.sourceAffine),
                          interpolation: interpolation)
    }

    /// Same shape and affine within 1e-3 mm per entry (files written by different tools round the
    /// affine differently; nnU-Net checks the same thing with a tolerance).
    static func sameGrid(_ h: NIfTIHeader, _ grid: VoxelGrid) -> Bool {
        h.shape == grid.shape && h.affine.isClose(to: grid.affine)
    }

    /// Every label value must be an integer in 0..<K.
    static func checkLabelValues(_ label: Tensor, classCount: Int, labels: [String: Int], path: String) throws {
        var bad = Set<Float>()
        let p = label.data
        for i in 0..<label.count {
            let v = p[i]
            if !(v >= 0 && v < Float(classCount) && v == v.rounded()) { bad.insert(v); if bad.count >= 5 { break } }
        }
        if !bad.isEmpty { throw DatasetError.labelValues(path: path, values: bad.sorted(), labels: labels) }
    }
}
