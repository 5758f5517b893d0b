// Prepared cases and the preprocessing plan (contract C2): what a case looks like after
// reorientation to RAS, resampling and normalisation, and the geometry that maps it back.
//
// Conventions, stated once:
// - Tensors of a volume are (D, H, W) = (nz, ny, nx) of the grid they sit on (NIfTI.swift):
//   flat index x + nx*(y + ny*z) is voxel (i=x, j=y, k=z).
// - An affine maps voxel indices (i, j, k, 1) to world millimetres in RAS+ (+x = Right,
//   +y = Anterior, +z = Superior), the NIfTI convention for sform and qform.
// - Spacings, shapes and patch sizes in the plan are in tensor order (D, H, W), i.e. along
//   (k, j, i); on a prepared (RAS) grid that is (S, A, R).
import Foundation

/// A 4×4 homogeneous affine, row-major: world = m · (i, j, k, 1). Double, so that composing and
/// inverting grids does not lose the sub-voxel precision resampling needs.
public struct Affine: Codable, Sendable, Equatable, CustomStringConvertible {
    public var m: [[Double]]

    public init(_ m: [[Double]]) {
        precondition(m.count == 4 && m.allSatisfy { $0.count == 4 }, "Affine: needs 4 rows of 4, got \(m)")
        self.m = m
    }

    public static let identity = Affine([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])

    public var description: String {
        m.prefix(3).map { row in row.map { String(format: "%.4g", $0) }.joined(separator: " ") }.joined(separator: " | ")
    }
}

/// How one input channel's intensities are normalised. Statistics are computed once over the
/// training set (`DatasetStatistics`) and replayed unchanged at prediction time.
public enum ChannelNormalization: Codable, Sendable, Equatable {
    /// (x - mean) / std, mean and std over the dataset's foreground voxels of this channel
    /// (foreground = the channel's nonzero voxels; `Normalization.swift` states it again).
    case zScore(mean: Double, std: Double)
    /// nnU-Net's CTNormalization: clip to [clipLow, clipHigh] (the 0.5 and 99.5 percentiles of the
    /// intensities inside labelled voxels, label > 0), then (x - mean) / std over those voxels.
    case ct(clipLow: Double, clipHigh: Double, mean: Double, std: Double)
    /// nnU-Net's ZScoreNormalization: each image by its own mean and std (after cropping), over
    /// its nonzero mask when `useNonzeroMask` (voxels outside keep 0), else over every voxel.
    case zScorePerImage(useNonzeroMask: Bool)
}

extension ChannelNormalization {
    /// Every statistic finite and every std positive (what a decoded plan must hold).
    var isFinite: Bool {
        switch self {
        case let .zScore(mean, std): return mean.isFinite && std.isFinite && std >= 0
        case let .ct(lo, hi, mean, std): return lo.isFinite && hi.isFinite && lo <= hi && mean.isFinite && std.isFinite && std >= 0
        case .zScorePerImage: return true
        }
    }
}

/// One case after preprocessing: reoriented to RAS, resampled to the plan's spacing, normalised.
public struct PreparedCase: Sendable {
    public let id: String
    /// (C, D, H, W) Float, normalised intensities on the prepared grid.
    public let image: Tensor
    /// (1, D, H, W) class indices 0..<K stored as Float; nil for test cases (imagesTs).
    public let label: Tensor?
    /// How to map back onto the source grid.
    public let geometry: CaseGeometry

    public init(id: String, image: Tensor, label: Tensor?, geometry: CaseGeometry) {
        precondition(image.rank == 4 && Array(image.shape.dropFirst()) == geometry.preparedShape,
                     "PreparedCase \(id): image \(image.shape) is not (C, \(geometry.preparedShape))")
        if let label {
            precondition(label.shape == [1] + geometry.preparedShape,
                         "PreparedCase \(id): label \(label.shape) is not (1, \(geometry.preparedShape))")
        }
        self.id = id; self.image = image; self.label = label; self.geometry = geometry
    }
}

/// The source grid of a case and the prepared grid it was resampled onto. Both affines map voxel
/// (i, j, k) to RAS millimetres, so source voxel v sits at prepared voxel
/// preparedAffine⁻¹ · sourceAffine · v.
public struct CaseGeometry: Codable, Sendable, Equatable {
    /// (D, H, W) = (nz, ny, nx) of the source file.
    public var sourceShape: [Int]
    /// The source file's affine (sform if sform_code > 0, else qform, else pixdim scaling).
    public var sourceAffine: Affine
    /// (D, H, W) of the prepared grid.
    public var preparedShape: [Int]
    /// The prepared grid's affine: RAS-ordered axes (i → R, j → A, k → S, up to the source's
    /// obliquity), the plan's spacing, and the same field of view as the source.
    public var preparedAffine: Affine
    /// The nonzero box of the source grid the prepared grid covers (nil: the whole source grid).
    public var crop: VoxelBox?

    public init(sourceShape: [Int], sourceAffine: Affine, preparedShape: [Int], preparedAffine: Affine, crop: VoxelBox? = nil) {
        self.sourceShape = sourceShape; self.sourceAffine = sourceAffine
        self.preparedShape = preparedShape; self.preparedAffine = preparedAffine; self.crop = crop
    }
}

/// What preprocessing does, stated once; stored in the checkpoint (JSON metadata) and replayed
/// by predict.
public struct PreprocessingPlan: Codable, Sendable, Equatable {
    /// Always "RAS": every case is reoriented so that i, j, k run to Right, Anterior, Superior.
    public var orientation: String
    /// Target spacing in mm, in tensor order (D, H, W) = along (k, j, i) = (S, A, R).
    public var spacing: [Double]
    /// Channel names from dataset.json, in file order (_0000, _0001, ...).
    public var channelNames: [String]
    /// Per input channel, in the same order.
    public var channels: [ChannelNormalization]
    /// Label name -> class index, from dataset.json (background = 0 included).
    public var labels: [String: Int]
    /// K, the number of classes (background included): max label index + 1.
    public var classCount: Int
    /// Whether cases are cropped to their nonzero region first (`Preprocessing.swift`); nil (plans
    /// written before cropping existed) means `.none`.
    public var cropping: Cropping?
    /// Region-based training (dataset.json labels whose values are lists): the regions, one
    /// sigmoid output each, in `regionsClassOrder`'s order (`LabelScheme`); nil: K softmax classes.
    public var regions: [LabelRegion]?
    /// Per region, the label value its voxels get in a predicted label map.
    public var regionsClassOrder: [Int]?
    /// dataset.json's "ignore" label value: its voxels are left out of the loss and the evaluation.
    public var ignoreLabel: Int?

    public init(spacing: [Double], channelNames: [String], channels: [ChannelNormalization],
                labels: [String: Int], classCount: Int) {
        precondition(spacing.count == 3 && spacing.allSatisfy { $0 > 0 && $0.isFinite }, "PreprocessingPlan: spacing \(spacing)")
        precondition(channelNames.count == channels.count, "PreprocessingPlan: \(channelNames.count) names for \(channels.count) channels")
        self.orientation = "RAS"
        self.spacing = spacing; self.channelNames = channelNames; self.channels = channels
        self.labels = labels; self.classCount = classCount
    }

    /// Class names by index (index i -> the name dataset.json gives it, or "class i").
    public var classNames: [String] {
        (0..<classCount).map { k in labels.filter { $0.value == k }.map(\.key).sorted().first ?? "class \(k)" }
    }

    /// The plan as JSON (sorted keys), for a checkpoint's metadata.
    public func jsonString() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain structs of numbers and strings cannot fail.
        let data = try! encoder.encode(self)
        return String(decoding: data, as: UTF8.self)
    }

    /// The plan from `jsonString()`'s output; nil when it is not such a plan, or breaks the rules
    /// `init` traps on (decoding bypasses them): 3 spacings within `GeometryLimits.voxelSize`, one
    /// normalisation per channel, finite statistics, at least one class.
    public init?(jsonString: String) {
        guard let plan = try? JSONDecoder().decode(PreprocessingPlan.self, from: Data(jsonString.utf8)),
              plan.spacing.count == 3, plan.spacing.allSatisfy({ GeometryLimits.voxelSize.contains($0) }),
              plan.channelNames.count == plan.channels.count, !plan.channels.isEmpty,
              plan.channels.allSatisfy(\.isFinite), plan.classCount >= 1 else { return nil }
        self = plan
    }
}
