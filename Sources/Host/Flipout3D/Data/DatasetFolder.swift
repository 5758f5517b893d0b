// A dataset folder in the nnU-Net v2 / Medical Segmentation Decathlon layout: dataset.json,
// imagesTr/CASE_0000.nii.gz (one file per channel), labelsTr/CASE.nii.gz, optional imagesTs/.
// Opening a folder checks its listing (names, counts, duplicates); reading checks the volumes.
import Foundation

/// One case's files: channel files in channel order, and the label map (nil for test cases).
public struct DatasetCase: Sendable, Equatable {
    public let id: String
    public let imagePaths: [String]
    public let labelPath: String?
}

public struct DatasetFolder: Sendable {
    public let root: String
    public let name: String
    /// Channel names by index (channel_names, or MSD's modality).
    public let channelNames: [String]
    /// Label name -> class index (0 = background), consecutive 0..<K (region-based: background only).
    public let labels: [String: Int]
    /// Regions, regions_class_order and the ignore label (`LabelScheme`).
    public let labelScheme: LabelScheme
    public let fileEnding: String
    public let training: [DatasetCase]
    public let test: [DatasetCase]

    /// Label values 0..<classCount a label map holds (besides the ignore value).
    public var classCount: Int { labelScheme.classCount }

    /// Reads dataset.json and lists the cases; every file must exist. Throws `DatasetError`.
    public init(_ path: String) throws {
        var isDir: ObjCBool = false
        let root = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir), isDir.boolValue else {
            throw DatasetError.missingFolder(path: root)
        }
        self.root = root
        let jsonPath = root + "/dataset.json"
        guard FileManager.default.fileExists(atPath: jsonPath) else { throw DatasetError.missingDatasetJSON(path: jsonPath) }
        let json: [String: Any]
        do {
            let bytes = try FileIO.read(jsonPath, limit: 1 << 26)
            // Strict first: duplicate keys, a BOM, trailing bytes or bad UTF-8 (JSONSerialization accepts them).
            do { _ = try StrictJSON.parse(bytes) } catch let e as JSONSyntaxError { throw DatasetError.badJSON(path: jsonPath, reason: e.description) }
            guard let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                throw DatasetError.badJSON(path: jsonPath, reason: "the top level is not an object")
            }
            json = object
        } catch let e as DatasetError { throw e
        } catch let e as FileIOError { throw DatasetError.unreadable(path: jsonPath, reason: e.description)
        } catch { throw DatasetError.badJSON(path: jsonPath, reason: (error as NSError).userInfo["NSDebugDescription"] as? String ?? "\(error)") }

        name = json["name"] as? String ?? Paths.lastComponent(root)
        channelNames = try Self.channels(json, jsonPath)
        labelScheme = try LabelScheme.parse(json, path: jsonPath)
        labels = labelScheme.labels
        if let ending = json["file_ending"] {
            guard let e = ending as? String, e == ".nii.gz" || e == ".nii" else {
                throw DatasetError.badField(path: jsonPath, key: "file_ending", reason: "is \(ending); only \".nii.gz\" and \".nii\" (NIfTI-1) are supported, convert the files (e.g. with SimpleITK)")
            }
            fileEnding = e
        } else if json["training"] != nil {
            fileEnding = ".nii.gz" // MSD's dataset.json has no file_ending
        } else {
            throw DatasetError.missingKey(path: jsonPath, key: "file_ending")
        }

        if let list = json["training"] {
            training = try Self.listedCases(list, root: root, jsonPath: jsonPath, channels: channelNames, ending: fileEnding)
        } else {
            training = try Self.folderCases(root: root, channels: channelNames, ending: fileEnding)
        }
        guard !training.isEmpty else { throw DatasetError.noCases(path: root + "/labelsTr") }
        if let n = json["numTraining"] {
            guard let count = Self.integer(n) else {
                throw DatasetError.badField(path: jsonPath, key: "numTraining", reason: "is \(n), expected the number of training cases")
            }
            guard count == training.count else { throw DatasetError.countMismatch(path: jsonPath, numTraining: count, found: training.count) }
        } else {
            throw DatasetError.missingKey(path: jsonPath, key: "numTraining")
        }
        if json["training"] != nil, let list = json["test"] {
            test = try Self.listedTestCases(list, root: root, jsonPath: jsonPath, channels: channelNames, ending: fileEnding)
        } else {
            test = try Self.testCases(root: root, channels: channelNames, ending: fileEnding)
        }
    }

    // MARK: - dataset.json fields

    /// channel_names (nnU-Net v2) or modality (MSD): {"0": "T1", "1": "T2"}, keys 0..<C.
    static func channels(_ json: [String: Any], _ path: String) throws -> [String] {
        let key = json["channel_names"] != nil ? "channel_names" : "modality"
        guard let raw = json[key] else { throw DatasetError.missingKey(path: path, key: "channel_names") }
        guard let dict = raw as? [String: Any], !dict.isEmpty else {
            throw DatasetError.badField(path: path, key: key, reason: "must be an object {\"0\": \"T1\", \"1\": \"T2\", ...}")
        }
        var names = [String?](repeating: nil, count: dict.count)
        for (k, v) in dict {
            guard let i = Int(k), (0..<dict.count).contains(i), let s = v as? String else {
                throw DatasetError.badField(path: path, key: key, reason: "has entry \"\(k)\": \(v); keys must be \"0\" ..< \"\(dict.count)\" and values channel names")
            }
            guard names[i] == nil else { throw DatasetError.badField(path: path, key: key, reason: "names channel \(i) twice") }
            names[i] = s
        }
        return names.map { $0! }
    }

    /// A JSON number that is an integer (JSONSerialization hands numbers over as NSNumber).
    static func integer(_ v: Any) -> Int? {
        guard let n = v as? NSNumber, !(v is String) else { return nil }
        let d = n.doubleValue
        return d == d.rounded() && abs(d) < 1e9 ? Int(d) : nil
    }

    // MARK: - Case listing

    static func files(in dir: String, ending: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(ending) && !$0.hasPrefix(".") }.sorted()
    }

    /// "CASE_0001.nii.gz" -> ("CASE", 1); nil without a 4-digit channel suffix.
    static func splitChannel(_ file: String, ending: String) -> (id: String, channel: Int)? {
        let stem = String(file.dropLast(ending.count))
        guard stem.count > 5, stem.dropLast(4).last == "_", let c = Int(stem.suffix(4)), stem.suffix(4).allSatisfy(\.isNumber) else { return nil }
        return (String(stem.dropLast(5)), c)
    }

    /// nnU-Net v2: cases are the label maps in labelsTr/; imagesTr/ must hold CASE_XXXX for each
    /// channel, and nothing else with the file ending.
    static func folderCases(root: String, channels: [String], ending: String) throws -> [DatasetCase] {
        let labelDir = root + "/labelsTr", imageDir = root + "/imagesTr"
        guard FileManager.default.fileExists(atPath: labelDir) else { throw DatasetError.noCases(path: labelDir) }
        let ids = files(in: labelDir, ending: ending).map { String($0.dropLast(ending.count)) }
        var cases: [DatasetCase] = []
        for id in ids {
            let images = channels.indices.map { imageDir + "/" + id + String(format: "_%04d", $0) + ending }
            for (c, p) in images.enumerated() where !FileIO.exists(p) {
                throw DatasetError.missingChannelFile(path: p, caseID: id, channel: "\(c) (\(channels[c]))")
            }
            cases.append(DatasetCase(id: id, imagePaths: images, labelPath: labelDir + "/" + id + ending))
        }
        let known = Set(ids)
        for f in files(in: imageDir, ending: ending) {
            let p = imageDir + "/" + f
            guard let (id, c) = splitChannel(f, ending: ending) else {
                throw DatasetError.strayImage(path: p, reason: "not named CASE_XXXX\(ending) (a case id, \"_\", a 4-digit channel index); rename it, e.g. \(f.dropLast(ending.count))_0000\(ending)")
            }
            guard c < channels.count else {
                throw DatasetError.strayImage(path: p, reason: "channel \(c), but dataset.json's channel_names has \(channels.count) channel(s); add the channel to channel_names or remove the file")
            }
            guard known.contains(id) else { throw DatasetError.missingLabel(path: labelDir + "/" + id + ending, imagePath: p) }
        }
        return cases
    }

    /// MSD / nnU-Net v1: "training": [{"image": "./imagesTr/X.nii.gz" (or a list, one per
    /// channel), "label": "./labelsTr/X.nii.gz"}]. A single image path that does not exist is
    /// looked for as X_0000... (nnU-Net's converted layout).
    static func listedCases(_ list: Any, root: String, jsonPath: String, channels: [String], ending: String) throws -> [DatasetCase] {
        guard let entries = list as? [Any] else {
            throw DatasetError.badField(path: jsonPath, key: "training", reason: "must be a list of {\"image\": ..., \"label\": ...}")
        }
        var cases: [DatasetCase] = [], seen = Set<String>()
        for (n, e) in entries.enumerated() {
            guard let entry = e as? [String: Any], let label = entry["label"] as? String, let image = entry["image"] else {
                throw DatasetError.badField(path: jsonPath, key: "training", reason: "entry \(n) is not {\"image\": path, \"label\": path}")
            }
            let labelPath = resolve(label, root)
            let file = Paths.lastComponent(labelPath)
            let id = file.hasSuffix(ending) ? String(file.dropLast(ending.count)) : file
            guard seen.insert(id).inserted else { throw DatasetError.duplicateCase(path: jsonPath, caseID: id) }
            guard FileIO.exists(labelPath) else { throw DatasetError.missingLabel(path: labelPath, imagePath: "the training entry \(n)") }
            var images: [String]
            if let list = image as? [String] {
                images = list.map { resolve($0, root) }
            } else if let single = image as? String {
                let p = resolve(single, root)
                let dir = Paths.parent(p), stem = String(Paths.lastComponent(p).dropLast(ending.count))
                if FileIO.exists(p) && channels.count > 1 {
                    throw DatasetError.strayImage(path: p, reason: "one image file for \(channels.count) channels (an MSD 4D image?); split it into \(stem)_0000\(ending), \(stem)_0001\(ending), ... one 3D file per channel, as nnUNetv2_convert_MSD_dataset does")
                }
                images = FileIO.exists(p) ? [p] : channels.indices.map { dir + "/" + stem + String(format: "_%04d", $0) + ending }
            } else {
                throw DatasetError.badField(path: jsonPath, key: "training", reason: "entry \(n): \"image\" must be a path or a list of paths")
            }
            guard images.count == channels.count else {
                throw DatasetError.badField(path: jsonPath, key: "training", reason: "entry \(n) lists \(images.count) image(s) for \(channels.count) channel(s)")
            }
            for (c, p) in images.enumerated() where !FileIO.exists(p) {
                throw DatasetError.missingChannelFile(path: p, caseID: id, channel: "\(c) (\(channels[c]))")
            }
            cases.append(DatasetCase(id: id, imagePaths: images, labelPath: labelPath))
        }
        return cases
    }

    /// A path of an MSD list, relative to the dataset folder ("./imagesTr/x.nii.gz").
    static func resolve(_ p: String, _ root: String) -> String {
        p.hasPrefix("/") ? p : root + "/" + (p.hasPrefix("./") ? String(p.dropFirst(2)) : p)
    }

    /// MSD: "test": ["./imagesTs/x.nii.gz", ...], one path per case (single-channel datasets),
    /// or nnU-Net's CASE_XXXX files beside it for several channels.
    static func listedTestCases(_ list: Any, root: String, jsonPath: String, channels: [String], ending: String) throws -> [DatasetCase] {
        guard let entries = list as? [String] else {
            throw DatasetError.badField(path: jsonPath, key: "test", reason: "must be a list of image paths")
        }
        var seen = Set<String>()
        return try entries.map { entry in
            let p = resolve(entry, root)
            let file = Paths.lastComponent(p), dir = Paths.parent(p)
            let id = file.hasSuffix(ending) ? String(file.dropLast(ending.count)) : file
            guard seen.insert(id).inserted else { throw DatasetError.duplicateCase(path: jsonPath, caseID: id) }
            let paths = FileIO.exists(p) && channels.count == 1 ? [p]
                : channels.indices.map { dir + "/" + id + String(format: "_%04d", $0) + ending }
            for (c, q) in paths.enumerated() where !FileIO.exists(q) {
                throw DatasetError.missingChannelFile(path: q, caseID: id, channel: "\(c) (\(channels[c]))")
            }
            return DatasetCase(id: id, imagePaths: paths, labelPath: nil)
        }
    }

    /// imagesTs/: cases grouped by id; each needs every channel. A label in labelsTs/ (not part
    /// of the nnU-Net layout, but common, and what `export-synthetic` writes) is picked up for evaluation.
    static func testCases(root: String, channels: [String], ending: String) throws -> [DatasetCase] {
        let dir = root + "/imagesTs"
        var byID: [String: [Int: String]] = [:]
        for f in files(in: dir, ending: ending) {
            let p = dir + "/" + f
            guard let (id, c) = splitChannel(f, ending: ending), c < channels.count else {
                throw DatasetError.strayImage(path: p, reason: "not CASE_XXXX\(ending) with a channel index below \(channels.count); rename or remove it")
            }
            byID[id, default: [:]][c] = p
        }
        return try byID.keys.sorted().map { id in
            let paths = try channels.indices.map { c in
                guard let p = byID[id]?[c] else {
                    throw DatasetError.missingChannelFile(path: dir + "/" + id + String(format: "_%04d", c) + ending, caseID: id, channel: "\(c) (\(channels[c]))")
                }
                return p
            }
            let label = root + "/labelsTs/" + id + ending
            return DatasetCase(id: id, imagePaths: paths, labelPath: FileIO.exists(label) ? label : nil)
        }
    }

    // MARK: - Reading volumes

    /// Reads one file, turning reader errors into dataset errors (a 4D file says so).
    static func readVolume(_ path: String, isLabel: Bool) throws -> NIfTIVolume {
        do { return try NIfTI.read(path) } catch let NIfTIError.notThreeD(_, dims) {
            throw DatasetError.notThreeD(path: path, dims: dims, isLabel: isLabel)
        } catch let e as NIfTIError {
            throw DatasetError.unreadable(path: path, reason: e.description)
        }
    }

    /// The channel volumes and label of `c`, as read from disk (not yet prepared).
    public func read(_ c: DatasetCase) throws -> (images: [NIfTIVolume], label: NIfTIVolume?) {
        let images = try c.imagePaths.map { try Self.readVolume($0, isLabel: false) }
        let label = try c.labelPath.map { try Self.readVolume($0, isLabel: true) }
        return (images, label)
    }

    /// Reads and prepares `cases` with `plan`; `progress(done, total, id)` after each case.
    public func prepare(_ cases: [DatasetCase], plan: PreprocessingPlan,
                        progress: ((Int, Int, String) -> Void)? = nil) throws -> [PreparedCase] {
        try cases.enumerated().map { n, c in
            let (images, label) = try read(c)
            let prepared = try plan.prepare(id: c.id, images: images, label: label,
                                            paths: c.imagePaths + (c.labelPath.map { [$0] } ?? []))
            progress?(n + 1, cases.count, c.id)
            return prepared
        }
    }
}
