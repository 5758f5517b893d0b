// Label maps of a region-based dataset scored per region (nnU-Net's evaluation with regions): each region's mask, Dice and HD95, ignore-label voxels left out.
import Foundation

/// One case's scores per region (dataset.json order of regions_class_order); nil where undefined:
/// Dice when the region is in neither map, HD95 when either mask is empty.
public struct RegionCaseScore: Codable, Sendable, Equatable {
    public var id: String
    public var dice: [Double?]
    public var hd95: [Double?]
}

/// What `flipout evaluate` writes to summary.json for a region-based dataset.
public struct RegionSummary: Codable, Sendable {
    public var regions: [String]
    /// The label values each region unites.
    public var regionValues: [[Int]]
    public var ignoreLabel: Int?
    public var cases: [RegionCaseScore]
    /// Per region, the mean over the cases where it is defined (nil: no case).
    public var meanDice: [Double?]
    public var meanHD95: [Double?]
    /// Labelled cases without a prediction and what was done with them (`MissingPredictions`).
    public var missing: [String]
    public var missingPolicy: MissingPredictions

    public init(scheme: LabelScheme, cases: [RegionCaseScore], missing: [String], missingPolicy: MissingPredictions) {
        let regions = scheme.regions ?? []
        self.regions = regions.map(\.name); regionValues = regions.map(\.values); ignoreLabel = scheme.ignoreLabel
        self.cases = cases; self.missing = missing; self.missingPolicy = missingPolicy
        func mean(_ v: [Double?]) -> Double? { let d = v.compactMap { $0 }; return d.isEmpty ? nil : d.reduce(0, +) / Double(d.count) }
        meanDice = regions.indices.map { r in mean(cases.map { $0.dice[r] }) }
        meanHD95 = regions.indices.map { r in mean(cases.map { $0.hd95[r] }) }
    }
}

public enum RegionEvaluation {
    /// The label scheme of a dataset.json in `folder` or its parent (a dataset folder's labelsTr or
    /// labelsTs), if it has one and it declares regions; nil otherwise. A dataset.json that
    /// cannot be read as a dataset's labels throws `DatasetError`.
    public static func scheme(near folder: String) throws -> LabelScheme? {
        for dir in [folder, Paths.parent(folder)] {
            let path = Paths.join(dir, "dataset.json")
            guard FileIO.exists(path) else { continue }
            let bytes = try FileIO.read(path, limit: 1 << 26)
            guard let json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                throw DatasetError.badJSON(path: path, reason: "not a JSON object")
            }
            let scheme = try LabelScheme.parse(json, path: path)
            return scheme.regions == nil ? nil : scheme
        }
        return nil
    }

    /// Per region r: the voxels whose value `regions[r]` holds, in the prediction and the truth,
    /// with truth voxels of `ignore` left out of both; Dice and HD95 (mm, `spacing` (D, H, W);
    /// ignored voxels take no part in the surfaces, SurfaceDistance's rule).
    public static func score(id: String, prediction: [Int32], truth: [Int32], shape: [Int], spacing: [Double],
                             regions: [LabelRegion], ignore: Int?) -> RegionCaseScore {
        precondition(prediction.count == truth.count && truth.count == shape.reduce(1, *),
                     "RegionEvaluation.score: \(prediction.count) predictions, \(truth.count) labels, shape \(shape)")
        var dice: [Double?] = [], hd: [Double?] = []
        let excluded = ignore.map { v in truth.map { $0 == Int32(v) } }
        for r in regions {
            let members = Set(r.values.map(Int32.init))
            let a = prediction.map { members.contains($0) }, b = truth.map { members.contains($0) }
            var tp = 0, fp = 0, fn = 0
            for i in 0..<truth.count where !(excluded?[i] ?? false) {
                if a[i] && b[i] { tp += 1 } else if a[i] { fp += 1 } else if b[i] { fn += 1 }
            }
            dice.append(tp + fp + fn == 0 ? nil : 2 * Double(tp) / Double(2 * tp + fp + fn))
            hd.append(SurfaceDistance.hd95(a, b, shape: shape, spacing: spacing, excluded: excluded))
        }
        return RegionCaseScore(id: id, dice: dice, hd95: hd)
    }

    /// Reads one prediction / label pair of `folder` (label maps on one grid) and scores it; a
    /// missing prediction (`prediction` nil) is scored as all background.
    public static func score(id: String, prediction: String?, label: String, scheme: LabelScheme) throws -> RegionCaseScore {
        let truth = try NIfTI.read(label)
        let shape = truth.header.shape
        var predicted = [Int32](repeating: 0, count: shape.reduce(1, *))
        if let prediction {
            let p = try NIfTI.read(prediction)
            guard CasePredictor.sameGrid(p.header, truth.header) else {
                throw CaseInputError(CasePredictor.gridMismatch(prediction, p.header, label, truth.header))
            }
            predicted = p.data.array.map { Int32($0.rounded()) }
        }
        return score(id: id, prediction: predicted, truth: truth.data.array.map { Int32($0.rounded()) }, shape: shape,
                     spacing: CasePredictor.voxelSpacing(truth.header), regions: scheme.regions ?? [], ignore: scheme.ignoreLabel)
    }
}
