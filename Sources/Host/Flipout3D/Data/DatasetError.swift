// What can be wrong with a dataset folder (or a case handed to a preprocessing plan): each error
// names the file and says what to do. The CLI maps every case to exit code 64 (bad input).
import Foundation

public enum DatasetError: Error, CustomStringConvertible, Equatable {
    case missingFolder(path: String)
    case missingDatasetJSON(path: String)
    case badJSON(path: String, reason: String)
    case missingKey(path: String, key: String)
    case badField(path: String, key: String, reason: String)
    case missingChannelFile(path: String, caseID: String, channel: String)
    case missingLabel(path: String, imagePath: String)
    case strayImage(path: String, reason: String)
    case duplicateCase(path: String, caseID: String)
    case countMismatch(path: String, numTraining: Int, found: Int)
    case noCases(path: String)
    case unreadable(path: String, reason: String)
    case notThreeD(path: String, dims: [Int], isLabel: Bool)
    case gridMismatch(path: String, reference: String, shape: [Int], expectedShape: [Int], affine: Affine, expectedAffine: Affine)
    case labelValues(path: String, values: [Float], labels: [String: Int])
    case channelCount(caseID: String, found: Int, expected: [String])
    case singularAffine(path: String, affine: Affine)
    case badSplits(path: String, reason: String)

    public var description: String {
        switch self {
        case let .missingFolder(path):
            return "\(path): no such dataset folder; give the folder that holds dataset.json, imagesTr/ and labelsTr/ (nnU-Net v2 / Medical Segmentation Decathlon layout)"
        case let .missingDatasetJSON(path):
            return "\(path): missing; a dataset folder needs dataset.json with channel_names, labels, numTraining and file_ending (see README, \"Your own data\")"
        case let .badJSON(path, reason):
            return "\(path): not valid JSON (\(reason)); fix the syntax (a JSON linter shows the line)"
        case let .missingKey(path, key):
            return "\(path): no \"\(key)\"; add it (nnU-Net v2 dataset.json: channel_names {\"0\": \"T1\"}, labels {\"background\": 0, ...}, numTraining, file_ending \".nii.gz\")"
        case let .badField(path, key, reason):
            return "\(path): \"\(key)\" \(reason)"
        case let .missingChannelFile(path, caseID, channel):
            return "\(path): missing: case \(caseID) has no file for channel \(channel); add it (every case needs one file per channel of dataset.json's channel_names), or remove the case"
        case let .missingLabel(path, imagePath):
            return "\(path): missing: \(imagePath) has no label map; add the label (same name without the _0000 channel suffix), or move the image to imagesTs/"
        case let .strayImage(path, reason):
            return "\(path): \(reason)"
        case let .duplicateCase(path, caseID):
            return "\(path): case \(caseID) is listed twice; list every case once"
        case let .countMismatch(path, numTraining, found):
            return "\(path): numTraining is \(numTraining) but labelsTr/ has \(found) cases; set numTraining to \(found), or add the missing cases"
        case let .noCases(path):
            return "\(path): no training cases (no label maps in labelsTr/ with the file_ending of dataset.json)"
        case let .unreadable(path, reason):
            return reason.hasPrefix(path) ? reason : "\(path): \(reason)"
        case let .notThreeD(path, dims, isLabel):
            return isLabel
                ? "\(path): the label map is not 3D (dims \(dims)); a label map is one 3D volume of class indices, write it as a 3D file"
                : "\(path): the image is not 3D (dims \(dims)); write one 3D file per channel (CASE_0000, CASE_0001, ...), as nnUNetv2_convert_MSD_dataset does"
        case let .gridMismatch(path, reference, shape, expectedShape, affine, expectedAffine):
            let what = shape != expectedShape ? "shape \(shape) (D, H, W) vs \(expectedShape)" : "affine [\(affine)] vs [\(expectedAffine)]"
            return "\(path): not on the grid of \(reference): \(what); every channel and the label of a case must share one voxel grid (resample them onto the first channel, e.g. with ANTs or SimpleITK)"
        case let .labelValues(path, values, labels):
            let allowed = labels.sorted { $0.value < $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")
            let shown = values.map { $0 == $0.rounded() ? String(Int($0)) : String($0) }.joined(separator: ", ")
            return "\(path): label values \(shown) are not in dataset.json's labels (\(allowed)); relabel the map, or add the classes to labels"
        case let .channelCount(caseID, found, expected):
            return "case \(caseID): \(found) image channel(s) given, the plan needs \(expected.count) (\(expected.joined(separator: ", "))), in that order"
        case let .singularAffine(path, affine):
            return "\(path): the voxel-to-world affine [\(affine)] is singular or not finite (sform/qform and pixdim); fix the header (e.g. fslorient, nibabel)"
        case let .badSplits(path, reason):
            return "\(path): \(reason); fix it or delete it to make a new split"
        }
    }
}
