// A dataset's fingerprint (nnU-Net's word): every case read and validated once, giving cases,
// channels, classes, spacing and size statistics, orientations and per-channel intensities.
import Foundation

public struct DatasetFingerprint: Sendable {
    public let name: String
    public let channelNames: [String]
    public let labels: [String: Int]
    public let classCount: Int
    /// Regions, regions_class_order and the ignore label of dataset.json (`LabelScheme`).
    public let labelScheme: LabelScheme
    public let caseIDs: [String]
    public let testCaseIDs: [String]
    /// Per training case, voxel sizes in mm in RAS tensor order (D, H, W) = along (S, A, R).
    public let spacings: [[Double]]
    /// Per training case, the shape after reorientation to RAS, before resampling: (D, H, W).
    public let shapes: [[Int]]
    /// Axis codes of the source files ("RAS", "LPS", ...) and how many cases have them.
    public let orientations: [String: Int]
    /// Per channel, over the training cases' source voxels.
    public let channelStatistics: [ChannelStatistics]
    /// Voxels of each label value 0..<classCount over the training cases (source grids).
    public let classVoxels: [Int]
    /// Voxels labelled with the ignore label over the training cases.
    public let ignoredVoxels: Int
    /// The test cases (imagesTs) as the training cases are described: id, RAS spacing and shape,
    /// source orientation, and whether a label (labelsTs) comes with it.
    public struct TestCase: Sendable {
        public let id: String
        public let spacing: [Double]
        public let shape: [Int]
        public let orientation: String
        public let labelled: Bool
    }
    public let testCases: [TestCase]
    /// Every case's source grid (training and test), with its first channel file, for `checkedPlan`.
    public let grids: [(path: String, grid: VoxelGrid)]
    /// Per training case, the fraction of its voxels inside its nonzero box (`NonzeroRegion`).
    public let croppedFractions: [Double]

    /// The per-axis median spacing (nnU-Net's default target spacing), (D, H, W) mm, rounded to
    /// 0.1 µm (headers store Float, so 1.175 mm reads as 1.17500001).
    public var medianSpacing: [Double] { (0..<3).map { a in (Self.median(spacings.map { $0[a] }) * 1e4).rounded() / 1e4 } }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        guard !s.isEmpty else { return 0 }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// (D, H, W) spacing and shape of a grid once reoriented to RAS (before resampling).
    static func rasSpacingAndShape(_ grid: VoxelGrid) -> ([Double], [Int]) {
        let g = grid.rasSourceGeometry
        return (g.spacing, g.shape)
    }

    /// Reads every case of `folder` (training and test), checks each against dataset.json and
    /// its own files, and gathers the statistics. `progress(done, total, id)` after each case.
    public init(folder: DatasetFolder, progress: ((Int, Int, String) -> Void)? = nil) throws {
        var spacings: [[Double]] = [], shapes: [[Int]] = [], orientations: [String: Int] = [:], grids: [(path: String, grid: VoxelGrid)] = []
        var stats = [ChannelStatistics](repeating: ChannelStatistics(), count: folder.channelNames.count)
        var classVoxels = [Int](repeating: 0, count: folder.classCount), ignored = 0
        var testCases: [TestCase] = []
        let ignoreValue = folder.labelScheme.ignoreLabel.map(Float.init) ?? -1
        var croppedFractions: [Double] = []
        let all = folder.training + folder.test
        for (n, c) in all.enumerated() {
            let (images, label) = try folder.read(c)
            let grid = VoxelGrid(shape: images[0].header.shape, affine: images[0].header.affine)
            guard grid.affine.isInvertible else { throw DatasetError.singularAffine(path: c.imagePaths[0], affine: grid.affine) }
            // The geometry checks preparation makes, here too, so `datasets check` passes only what training takes.
            do { try grid.checkGeometry(path: c.imagePaths[0], header: images[0].header) } catch let e as VolumeGeometryError {
                throw DatasetError.unreadable(path: e.path, reason: e.description)
            }
            grids.append((c.imagePaths[0], grid))
            var files = zip(c.imagePaths, images).map { ($0, $1.header) }
            if let label, let labelPath = c.labelPath { files.append((labelPath, label.header)) }
            for (path, header) in files.dropFirst() where !PreprocessingPlan.sameGrid(header, grid) {
                throw DatasetError.gridMismatch(path: path, reference: c.imagePaths[0], shape: header.shape, expectedShape: grid.shape,
                                                affine: header.affine, expectedAffine: grid.affine)
            }
            if let label, let labelPath = c.labelPath {
                try PreprocessingPlan.checkLabelValues(label.data, classCount: folder.classCount, labels: folder.labels, path: labelPath,
                                                       ignoreLabel: folder.labelScheme.ignoreLabel)
            }
            if n >= folder.training.count {
                let (s, m) = Self.rasSpacingAndShape(grid)
                testCases.append(TestCase(id: c.id, spacing: s, shape: m, orientation: AxisOrientation(grid.affine).description, labelled: label != nil))
            }
            if n < folder.training.count, let label {
                let p = label.data
                for i in 0..<label.data.count { if p[i] == ignoreValue { ignored += 1 } else { classVoxels[Int(p[i])] += 1 } }
                for ch in images.indices { stats[ch].add(image: images[ch].data, label: label.data) }
                let (s, m) = Self.rasSpacingAndShape(grid)
                spacings.append(s); shapes.append(m)
                croppedFractions.append(NonzeroRegion(channels: images.map(\.data)).boxFraction)
                orientations[AxisOrientation(grid.affine).description, default: 0] += 1
            }
            progress?(n + 1, all.count, c.id)
        }
        name = folder.name; channelNames = folder.channelNames; labels = folder.labels; classCount = folder.classCount
        labelScheme = folder.labelScheme; ignoredVoxels = ignored; self.testCases = testCases
        caseIDs = folder.training.map(\.id); testCaseIDs = folder.test.map(\.id)
        self.spacings = spacings; self.shapes = shapes; self.orientations = orientations
        channelStatistics = stats; self.classVoxels = classVoxels; self.grids = grids; self.croppedFractions = croppedFractions
    }

    /// The plan for `spacing` ((D, H, W) mm; nil: the median spacing), after checking that every
    /// case (training and test) resampled to it stays within `GeometryLimits.gridVoxels`, so a
    /// dataset `datasets check` passes is one training can prepare. Throws `VolumeGeometryError` (.grid).
    public func checkedPlan(spacing: [Double]? = nil) throws -> PreprocessingPlan {
        let plan = PreprocessingPlan(fingerprint: self, spacing: spacing)
        for (path, grid) in grids {
            _ = try grid.checkedRASGrid(spacing: plan.spacing, path: path,
                                        option: spacing == nil ? "--spacing (the default is the dataset's median spacing)" : "--spacing")
        }
        return plan
    }

    /// The fingerprint and the plan it gives, as `flipout datasets check` prints them.
    public func report(plan: PreprocessingPlan) -> String {
        func f(_ v: Double) -> String { String(format: "%.4g", v) }
        func axes<T>(_ rows: [[T]], _ g: (T) -> Double) -> String {
            (0..<3).map { a in
                let v = rows.map { g($0[a]) }
                return "\(f(v.min() ?? 0))/\(f(Self.median(v)))/\(f(v.max() ?? 0))"
            }.joined(separator: "  ")
        }
        var lines = ["dataset      \(name)",
                     "cases        \(caseIDs.count) training, \(testCaseIDs.count) test (imagesTs)",
                     "channels     \(channelNames.enumerated().map { "\($0) \($1)" }.joined(separator: ", "))"]
        let total = max(1, classVoxels.reduce(0, +) + ignoredVoxels)
        func share(_ n: Int) -> String { String(format: "%.2f%%", 100 * Double(n) / Double(total)) }
        if let regions = plan.regions, let order = plan.regionsClassOrder {
            lines.append("labels       values " + (0..<classCount).map { "\($0) (\(share(classVoxels[$0])))" }.joined(separator: ", "))
            lines.append("regions      " + zip(regions, order).enumerated().map { i, ro in
                "\(i) \(ro.0.name) = \(ro.0.values) (\(share(ro.0.values.reduce(0) { $0 + ($1 < classVoxels.count ? classVoxels[$1] : 0) })), writes \(ro.1))" }.joined(separator: ", ")
                + "; one sigmoid per region (region-based training)")
        } else {
            lines.append("classes      " + plan.classNames.enumerated().map { k, n in "\(k) \(n) (\(share(classVoxels[k])))" }.joined(separator: ", "))
        }
        if let ignore = plan.ignoreLabel {
            lines.append("ignore       label \(ignore): \(share(ignoredVoxels)) of the training voxels, left out of the loss and the evaluation")
        }
        lines.append("orientation  " + orientations.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + " (reoriented to RAS)")
        lines.append("spacing mm   min/median/max per axis (D, H, W) = (S, A, R): " + axes(spacings) { $0 })
        lines.append("shape        min/median/max per axis (D, H, W), in RAS:        " + axes(shapes) { Double($0) })
        if plan.cropping == .nonzero, !croppedFractions.isEmpty {
            lines.append(String(format: "crop         to the nonzero region: median %.1f%% of the voxels kept (min %.1f%%, max %.1f%%)",
                                100 * Self.median(croppedFractions), 100 * croppedFractions.min()!, 100 * croppedFractions.max()!))
        }
        for (c, s) in channelStatistics.enumerated() {
            let r = ChannelStatistics.isCT(channelNames[c]) && s.labelled.count > 0 ? ("labelled voxels", s.labelled) : s.nonzero.count > 0 ? ("nonzero voxels", s.nonzero) : ("all voxels", s.all)
            lines.append("intensity    \(c) \(channelNames[c]) over \(r.0): mean \(f(r.1.mean)), std \(f(r.1.std)), p0.5 \(f(r.1.percentile(0.5))), p99.5 \(f(r.1.percentile(99.5))), min \(f(r.1.minimum)), max \(f(r.1.maximum))")
        }
        // The size each case gets on the plan's grid (VoxelGrid.reorientedToRAS's rule), as nnU-Net prints it.
        let prepared = zip(shapes, spacings).map { shape, sp in (0..<3).map { max(1, (Double(shape[$0]) * sp[$0] / plan.spacing[$0]).rounded()) } }
        lines.append("plan         RAS, spacing (D, H, W) \(plan.spacing.map(f).joined(separator: ", ")) mm; median shape then "
                     + (0..<3).map { a in f(Self.median(prepared.map { $0[a] })) }.joined(separator: " × "))
        for (c, n) in plan.channels.enumerated() { lines.append("             channel \(c) \(channelNames[c]): \(n.summary)") }
        lines += testReport()
        return lines.joined(separator: "\n")
    }

    /// How far a test case's spacing may lie outside the training cases' range, per axis, before
    /// `datasets check` warns (a ratio: 1.25 = 25 % finer than the finest or coarser than the
    /// coarsest training case). Resampling to the plan's spacing makes any spacing usable, but
    /// a test case much coarser than every training case has lost detail the network never saw.
    public static let testSpacingWarningRatio = 1.25

    /// The test cases (imagesTs) as the training cases are reported: orientations, spacing and
    /// shape statistics, labels present, then one warning per case that differs from training.
    func testReport() -> [String] {
        guard !testCases.isEmpty else { return ["test         no test cases (imagesTs/)"] }
        func f(_ v: Double) -> String { String(format: "%.4g", v) }
        func axes(_ rows: [[Double]]) -> String {
            (0..<3).map { a in let v = rows.map { $0[a] }; return "\(f(v.min()!))/\(f(Self.median(v)))/\(f(v.max()!))" }.joined(separator: "  ")
        }
        var counts: [String: Int] = [:]
        for t in testCases { counts[t.orientation, default: 0] += 1 }
        let labelled = testCases.filter(\.labelled).count
        var lines = ["test         \(testCases.count) case(s) in imagesTs/, \(labelled) with a label in labelsTs/" + (labelled < testCases.count ? " (the others can be predicted, not scored)" : ""),
                     "test orient. " + counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + " (reoriented to RAS)",
                     "test spacing min/median/max per axis (D, H, W) = (S, A, R): " + axes(testCases.map(\.spacing)),
                     "test shape   min/median/max per axis (D, H, W), in RAS:        " + axes(testCases.map { $0.shape.map(Double.init) })]
        let r = Self.testSpacingWarningRatio
        for t in testCases {
            let outside = (0..<3).filter { a in
                let v = spacings.map { $0[a] }
                return t.spacing[a] < v.min()! / r || t.spacing[a] > v.max()! * r
            }
            if !outside.isEmpty {
                lines.append("warning: test case \(t.id) has spacing \(t.spacing.map(f).joined(separator: "x")) mm, outside the training cases' range along \(outside.map { ["D", "H", "W"][$0] }.joined(separator: ", ")) by more than \(Int((r - 1) * 100 + 0.5))%; it is resampled to the plan's spacing, but its detail differs from what the network trained on")
            }
        }
        let unseen = testCases.filter { !orientations.keys.contains($0.orientation) }
        if !unseen.isEmpty {
            lines.append("note: \(unseen.count) test case(s) are stored in an orientation no training case has (\(unseen.prefix(5).map { "\($0.id) \($0.orientation)" }.joined(separator: ", "))\(unseen.count > 5 ? ", …" : "")); every case is reoriented to RAS")
        }
        return lines
    }
}
