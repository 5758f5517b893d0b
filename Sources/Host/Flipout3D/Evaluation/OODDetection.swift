// Case-level out-of-distribution detection from two prediction folders: every case's mean mutual
// information and mean predictive entropy over its whole volume, and the AUROC with which each
// score ranks the out-of-distribution cases (positives) above the in-distribution ones.
//
// The whole volume, not the predicted foreground (CASE.json's QC score): on an unfamiliar image a
// model may predict no foreground at all, and that case must still get a score.
import Foundation

/// One case's uncertainty scores.
public struct CaseUncertainty: Codable, Sendable, Equatable {
    public var id: String
    /// Mean over all voxels of the mutual information H[E p] − E H[p] (nats).
    public var meanMutualInformation: Double
    /// Mean over all voxels of the predictive entropy H[E p] (nats).
    public var meanEntropy: Double

    public init(id: String, meanMutualInformation: Double, meanEntropy: Double) {
        self.id = id; self.meanMutualInformation = meanMutualInformation; self.meanEntropy = meanEntropy
    }
}

/// What `flipout evaluate --ood-predictions` adds to summary.json.
public struct OODDetection: Codable, Sendable {
    public var inDistributionCases: Int
    public var outOfDistributionCases: Int
    /// Area under the ROC curve of "is out of distribution" ranked by each case's mean MI / entropy
    /// (ties count one half: the Mann–Whitney U statistic over (OOD, in-distribution) pairs).
    public var aurocMutualInformation: Double
    public var aurocEntropy: Double
    public var inDistribution: [CaseUncertainty]
    public var outOfDistribution: [CaseUncertainty]

    public init(inDistribution: [CaseUncertainty], outOfDistribution: [CaseUncertainty]) {
        precondition(!inDistribution.isEmpty && !outOfDistribution.isEmpty, "OODDetection needs cases on both sides")
        self.inDistribution = inDistribution; self.outOfDistribution = outOfDistribution
        inDistributionCases = inDistribution.count; outOfDistributionCases = outOfDistribution.count
        let positives = inDistribution.map { _ in false } + outOfDistribution.map { _ in true }
        func auroc(_ score: (CaseUncertainty) -> Double) -> Double {
            Metrics.auroc(scores: (inDistribution + outOfDistribution).map { Float(score($0)) }, positives: positives)
        }
        aurocMutualInformation = auroc(\.meanMutualInformation)
        aurocEntropy = auroc(\.meanEntropy)
    }

    /// A case's scores from its maps; `entropy` nil is computed from `probabilities` (K, D, H, W).
    public static func uncertainty(id: String, mutualInformation: Tensor, entropy: Tensor?, probabilities: Tensor?) -> CaseUncertainty {
        precondition(entropy != nil || probabilities != nil, "OODDetection.uncertainty: \(id) has neither entropy nor probabilities")
        let h = entropy ?? CaseEvaluation.predictiveEntropy(probabilities!)
        precondition(h.count == mutualInformation.count, "OODDetection.uncertainty: \(id) entropy \(h.shape), MI \(mutualInformation.shape)")
        func mean(_ t: Tensor) -> Double { t.buffer.reduce(0.0) { $0 + Double($1) } / Double(max(t.count, 1)) }
        return CaseUncertainty(id: id, meanMutualInformation: mean(mutualInformation), meanEntropy: mean(h))
    }

    /// The scores of the cases `ids` (every prediction in `folder` when nil) from their
    /// CASE_mi and CASE_entropy (or CASE_probabilities) maps. A missing folder is a FileIOError
    /// (.missing); a folder without predictions or a case without an MI map is a CaseInputError.
    public static func read(folder: String, ids: [String]? = nil) throws -> [CaseUncertainty] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw FileIOError(kind: .missing, path: folder, reason: "no such folder")
        }
        let files = try PredictionFolder.niftiStems(folder)
        let cases = ids ?? PredictionFolder.predictionIDs(files)
        guard !cases.isEmpty else {
            throw CaseInputError("\(folder): no predictions (CASE.nii.gz with CASE_mi.nii.gz) to score for out-of-distribution detection; run flipout predict --input DIR --output \(folder) first")
        }
        return try cases.map { id in
            guard let mi = files[id + "_mi"] else {
                throw CaseInputError("\(folder): case \(id) has no \(id)_mi.nii.gz; OOD detection ranks cases by mutual information, which needs a Monte Carlo prediction (flipout predict writes it)")
            }
            let miMap = try NIfTI.read(mi).data
            let entropy = try files[id + "_entropy"].map { try NIfTI.read($0).data }
            let probabilities = entropy == nil ? try files[id + "_probabilities"].map { try NIfTI.read4D($0).data } : nil
            guard entropy != nil || probabilities != nil else {
                throw CaseInputError("\(folder): case \(id) has neither \(id)_entropy.nii.gz nor \(id)_probabilities.nii.gz")
            }
            if let h = entropy, h.count != miMap.count {
                throw CaseInputError("\(folder)/\(id)_entropy: shape \(h.shape) does not match its MI map \(miMap.shape)")
            }
            if let p = probabilities, p.count != miMap.count * p.shape[0] {
                throw CaseInputError("\(folder)/\(id)_probabilities: shape \(p.shape) does not match its MI map \(miMap.shape)")
            }
            return uncertainty(id: id, mutualInformation: miMap, entropy: entropy, probabilities: probabilities)
        }
    }
}
