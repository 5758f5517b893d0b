// The documented range of every numeric (and path) option of train, predict, evaluate and datasets
// that the library's config validation does not already bound, checked in `validate()` (exit 64).
//
// Ranges bound the memory and time an option can ask for before anything is allocated; each
// bound says what it came from. The library's own limits (ConfigLimits: --epochs, --batch-size,
// --width, --samples, ...; GeometryLimits: voxel sizes) are reused, not restated.
import ArgumentParser
import Foundation
import Flipout3D

enum OptionRanges {
    /// Patch edge of `train --patch`, voxels: up to 512 (nnU-Net's largest 3D patches are 128–320).
    static let patchEdge = 1...512
    /// Window edge of `predict --window`, voxels (the network needs at least 4).
    static let windowEdge = 4...512
    /// Voxels of one patch or window: 2^24 = 256³. A U-Net of width 8 at 3 levels keeps about 100
    /// Float activations per voxel for a training step, so 256³ is already ~6 GiB; 4096³ asked for 1 TiB.
    static let patchVoxels = 1 << 24
    /// Target spacing of `--spacing`, mm: the voxel sizes a file may have (`GeometryLimits.voxelSize`).
    static let spacing = GeometryLimits.voxelSize
    /// `predict --overlap`: MONAI's [0, 1), capped at 0.9 (10 windows per window edge along each
    /// axis, 1000x the windows of no overlap; 0.99 would mean a million-fold).
    static let overlap = 0.0...0.9
    /// `predict --window-batch`: windows per network call.
    static let windowBatch = 1...64
    /// `train --folds`.
    static let folds = 2...100
    /// `train --steps-per-epoch` (0: one patch per training case).
    static let stepsPerEpoch = 0...1_000_000
    /// `train --memory-budget`, MiB: 16 MiB to 1 TiB.
    static let memoryBudgetMiB = 16...(1 << 20)
    /// `train --moped-delta`: posterior scale = delta * |weight|; MOPED uses 0.1, above 10 the mean is noise.
    static let mopedDelta = 1e-6...10.0
    /// `evaluate --classes`, background included (label maps are at most int16; 1000 classes is far beyond any dataset).
    static let classes = 2...1000
    /// `evaluate --roi-margin`, mm (1 m is beyond any field of view).
    static let roiMargin = 0.0...1000.0
    /// `datasets export-synthetic --cases` (at least 1) and `--test-cases`/`--ood-cases` (0 allowed); 10 000 cases is ~5 GB.
    static let exportCases = 0...10_000

    // MARK: - Per subcommand

    static func check(_ c: TrainCommand) throws {
        let f = c.folder
        if let p = f.patch { try size(p.values, option: "--patch", edge: patchEdge) }
        if let s = f.spacing { try spacing(s.values, option: "--spacing") }
        try range(f.folds, folds, "--folds")
        try range(f.stepsPerEpoch, stepsPerEpoch, "--steps-per-epoch")
        try range(f.memoryBudget, memoryBudgetMiB, "--memory-budget")
        try range(f.mopedDelta, mopedDelta, "--moped-delta")
        try folder(c.runFolder, option: "--run")
        if let r = c.resume { try path(r, option: "--resume") }
        if let d = f.data { try path(d, option: "--data") }
        if let i = f.initFrom { try path(i, option: "--init-from") }
    }

    static func check(_ c: PredictCommand) throws {
        if let w = c.window {
            let parts = w.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 3, parts.allSatisfy({ $0 != nil }) else {
                throw ValidationError("--window expects D,H,W, three integers from \(windowEdge.lowerBound) to \(windowEdge.upperBound), e.g. 32,32,32 (got \(w)).")
            }
            try size(parts.map { $0! }, option: "--window", edge: windowEdge)
        }
        try range(c.overlap, overlap, "--overlap")
        try range(c.windowBatch, windowBatch, "--window-batch")
        try folder(c.output, option: "--output")
        try path(c.input, option: "--input")
        for p in c.checkpoint { try path(p, option: "--checkpoint") }
    }

    static func check(_ c: EvaluateCommand) throws {
        if let k = c.classes { try range(k, classes, "--classes") }
        try range(c.roiMargin, roiMargin, "--roi-margin")
        if let o = c.output { try folder(o, option: "--output") }
        for (p, o) in [(c.predictions, "--predictions"), (c.labels, "--labels"), (c.oodPredictions, "--ood-predictions"), (c.checkpoint, "--checkpoint")] {
            if let p { try path(p, option: o) }
        }
    }

    static func check(_ c: DatasetsCheck) throws {
        if let s = c.spacing { try spacing(s.values, option: "--spacing") }
        try path(c.directory, option: "the dataset folder")
    }

    static func check(_ c: DatasetsExportSynthetic) throws {
        try range(c.cases, 1...exportCases.upperBound, "--cases")
        try range(c.testCases, exportCases, "--test-cases")
        try range(c.oodCases, exportCases, "--ood-cases")
        try folder(c.directory, option: "the folder to create")
    }

    // MARK: - Checks

    static func range(_ v: Int, _ r: ClosedRange<Int>, _ option: String) throws {
        guard r.contains(v) else { throw ValidationError("\(option) must be an integer from \(r.lowerBound) to \(r.upperBound) (got \(v)).") }
    }

    static func range(_ v: Double, _ r: ClosedRange<Double>, _ option: String) throws {
        guard v.isFinite, r.contains(v) else { throw ValidationError("\(option) must be a number from \(r.lowerBound) to \(r.upperBound) (got \(v)).") }
    }

    /// Three edges (D, H, W) within `edge` and at most `patchVoxels` voxels in all.
    static func size(_ v: [Int], option: String, edge: ClosedRange<Int>) throws {
        let shown = v.map(String.init).joined(separator: ",")
        guard v.count == 3, v.allSatisfy({ edge.contains($0) }) else {
            throw ValidationError("\(option) must be D,H,W with each from \(edge.lowerBound) to \(edge.upperBound) voxels (got \(shown)).")
        }
        guard v.reduce(1, *) <= patchVoxels else {
            throw ValidationError("\(option) \(shown) is \(v.reduce(1, *)) voxels; at most \(patchVoxels) (256x256x256) fit in memory; choose a smaller size.")
        }
    }

    /// Three spacings (D, H, W) in mm within `spacing`.
    static func spacing(_ v: [Double], option: String) throws {
        guard v.count == 3, v.allSatisfy({ spacing.contains($0) }) else {
            throw ValidationError("\(option) must be D,H,W in mm with each from \(spacing.lowerBound) to \(spacing.upperBound) (got \(v.map { String($0) }.joined(separator: ","))).")
        }
    }

    /// A path option: not empty, no NUL byte.
    static func path(_ p: String, option: String) throws {
        guard !p.isEmpty else { throw ValidationError("\(option) needs a path (got an empty string).") }
        guard !p.utf8.contains(0) else { throw ValidationError("\(option) \(p): a path cannot hold a NUL byte.") }
    }

    /// A folder the command creates or writes into: a path, and not an existing file or device.
    static func folder(_ p: String, option: String) throws {
        try path(p, option: option)
        var st = stat()
        if stat(p, &st) == 0 && (st.st_mode & S_IFMT) != S_IFDIR {
            throw ValidationError("\(option) \(p): exists and is not a folder; give a folder path (it is created if missing).")
        }
    }
}
