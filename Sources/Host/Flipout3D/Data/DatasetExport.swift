// Writing dataset folders (nnU-Net v2 layout): the embedded synthetic generator on varied grids,
// and Colin27 with the AAL atlas grouped into a few classes. A folder appears whole or not at all.
import Foundation

/// Builds a dataset folder in a hidden sibling folder and renames it into place at the end, so
/// an interrupted export leaves nothing at the destination.
struct DatasetFolderWriter {
    let destination: String
    let staging: String

    /// Refuses a destination that exists and is not an empty folder.
    init(destination path: String) throws {
        let dest = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dest, isDirectory: &isDir) {
            guard isDir.boolValue, (try? fm.contentsOfDirectory(atPath: dest))?.isEmpty == true else {
                throw DatasetError.badField(path: dest, key: "destination", reason: "exists and is not an empty folder; give a new folder (nothing was written)")
            }
        }
        let parent = Paths.parent(dest)
        var template = Array(((parent.isEmpty ? "." : parent) + "/." + Paths.lastComponent(dest) + ".partial-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw DatasetError.unreadable(path: dest, reason: "cannot create a folder beside it: \(String(cString: strerror(errno)))")
        }
        destination = dest
        staging = String(cString: made)
        chmod(staging, 0o755 & ~Self.umask) // mkdtemp makes 0700; a dataset folder is an ordinary folder
        for sub in ["imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesOod", "labelsOod"] {
            try fm.createDirectory(atPath: staging + "/" + sub, withIntermediateDirectories: false)
        }
    }

    static var umask: mode_t { let m = Glibc.umask(0); _ = Glibc.umask(m); return m }

    /// Writes a case's channels (float32) and label (uint8) under `split` ("Tr", "Ts" or "Ood").
    func write(id: String, image: Tensor, label: Tensor?, grid: VoxelGrid, split: String) throws {
        let header = NIfTIHeader(shape: grid.shape, affine: grid.affine)
        let plane = grid.shape.reduce(1, *)
        for c in 0..<image.shape[0] {
            let channel = Tensor(shape: grid.shape)
            channel.data.update(from: image.data + c * plane, count: plane)
            try NIfTI.write(channel, header: header, datatype: .float32,
                            to: "\(staging)/images\(split)/\(id)_\(String(format: "%04d", c)).nii.gz")
        }
        if let label {
            try NIfTI.write(label, header: header, datatype: .uint8, to: "\(staging)/labels\(split)/\(id).nii.gz")
        }
    }

    /// Writes dataset.json and moves the folder into place.
    /// `labels` replaces the class list (dataset.json's "labels": regions as lists, "ignore");
    /// `extra` adds keys (e.g. "regions_class_order").
    func finish(name: String, description: String, channelNames: [String], classNames: [String],
                numTraining: Int, numTest: Int, labels: [String: Any]? = nil, extra: [String: Any] = [:]) throws {
        var json: [String: Any] = [
            "name": name, "description": description,
            "channel_names": Dictionary(channelNames.enumerated().map { (String($0.offset), $0.element) }) { a, _ in a },
            "labels": labels ?? Dictionary(classNames.enumerated().map { ($0.element, $0.offset) }) { a, _ in a },
            "numTraining": numTraining, "numTest": numTest, "file_ending": ".nii.gz",
        ]
        json.merge(extra) { a, _ in a }
        let data = try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
        try FileIO.writeAtomically(Array(data) + [0x0a], to: staging + "/dataset.json")
        let fm = FileManager.default
        for sub in ["imagesTs", "labelsTs", "imagesOod", "labelsOod"] where (try? fm.contentsOfDirectory(atPath: staging + "/" + sub))?.isEmpty == true {
            try fm.removeItem(atPath: staging + "/" + sub)
        }
        if fm.fileExists(atPath: destination) { try fm.removeItem(atPath: destination) } // empty, checked in init
        guard rename(staging, destination) == 0 else {
            throw DatasetError.unreadable(path: destination, reason: "cannot move the finished folder into place: \(String(cString: strerror(errno)))")
        }
    }

    /// Removes the staging folder (after a failure).
    func abandon() { try? FileManager.default.removeItem(atPath: staging) }
}

/// Columns `columns` (voxel axis i, W) of `t` (C, D, H, W) on `grid`, and the crop's grid: the
/// same affine with its origin moved to voxel (columns.lowerBound, 0, 0).
func crop(_ t: Tensor, _ grid: VoxelGrid, columns: ClosedRange<Int>) -> (Tensor, VoxelGrid) {
    let (c, d, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
    let n = columns.count
    let out = Tensor(uninitializedShape: [c, d, h, n])
    for row in 0..<(c * d * h) {
        (out.data + row * n).update(from: t.data + row * w + columns.lowerBound, count: n)
    }
    var m = grid.affine.m
    let origin = grid.affine.apply([Double(columns.lowerBound), 0, 0])
    for r in 0..<3 { m[r][3] = origin[r] }
    return (out, VoxelGrid(shape: [d, h, n], affine: Affine(m)))
}

/// `flipout datasets export-synthetic`: the multi-class synthetic cases (SyntheticCases, 2
/// channels, 3 classes), each resampled from its RAS grid onto a random grid with a real affine:
/// a random axis order and flips (the orientation codes of the files vary: LPS, ASR, ...), one
/// thicker "slice" axis (1.3–2.0 mm, the others 0.9–1.3 mm) and the same field of view. Test cases
/// go to imagesTs/ with their labels in labelsTs/ (for `flipout evaluate`). Out-of-distribution
/// cases (`SyntheticCases.Look.outOfDistribution`: the same anatomy, inverted contrast, more noise,
/// finer texture) go to imagesOod/ and labelsOod/, outside what training and `datasets check` read,
/// for `flipout predict --input DIR/imagesOod` and `flipout evaluate --ood-predictions`.
///
/// `regions`: a BraTS-like region-based dataset (`BraTSLike`): label values 1 edema, 2 core,
/// 3 enhancing, and the nested regions whole tumour {1, 2, 3} ⊃ tumour core {2, 3} ⊃ enhancing
/// {3} with regions_class_order [1, 2, 3]. `ignore`: the training labels' top slab along the
/// generator's superior axis (`BraTSLike.ignoredFraction` of the slices) is labelled "ignore"
/// (the highest value), as sparsely annotated training data is; test labels stay complete.
public enum SyntheticExport {
    public static func write(to path: String, trainingCount: Int, testCount: Int, oodCount: Int = 0, seed: UInt64,
                             regions: Bool = false, ignore: Bool = false,
                             progress: ((Int, Int, String) -> Void)? = nil) throws {
        precondition(trainingCount >= 1 && testCount >= 0 && oodCount >= 0,
                     "SyntheticExport: \(trainingCount) training, \(testCount) test, \(oodCount) OOD cases")
        let writer = try DatasetFolderWriter(destination: path)
        do {
            let generator = SyntheticCases(seed: seed, count: trainingCount + testCount)
            let ood = SyntheticCases(seed: seed, count: oodCount, look: .outOfDistribution)
            let total = trainingCount + testCount + oodCount
            for index in 0..<total {
                let isOOD = index >= trainingCount + testCount
                var c = isOOD ? ood.case(index - trainingCount - testCount) : generator.case(index)
                if regions { c = BraTSLike.nested(c) }
                if ignore && index < trainingCount { c = BraTSLike.ignoringTopSlab(c, value: regions ? BraTSLike.ignoreValue : SyntheticCases.classCount) }
                let source = VoxelGrid(shape: Array(c.image.shape.dropFirst()), affine: Affine(c.affine))
                let target = randomGrid(like: source, seed: seed, index: index)
                let image = Resample.resample(c.image, from: source, to: target, interpolation: .linear)
                let label = Resample.resample(c.label.reshaped(source.shape), from: source, to: target, interpolation: .nearest)
                try writer.write(id: c.id, image: image, label: label, grid: target, split: isOOD ? "Ood" : index < trainingCount ? "Tr" : "Ts")
                progress?(index + 1, total, c.id)
            }
            var description = "Flipout3D's synthetic generator (seed \(seed)): 2 channels, "
            description += regions ? "BraTS-like nested regions (whole tumour, tumour core, enhancing tumour)" : "3 classes"
            description += ", varied spacing and orientation"
            if ignore { description += "; a quarter of every training label map is \"ignore\"" }
            if oodCount > 0 { description += "; imagesOod/ holds \(oodCount) out-of-distribution cases (inverted contrast, more noise, finer texture)" }
            try writer.finish(name: "SyntheticMultiClass", description: description,
                              channelNames: SyntheticCases.channelNames, classNames: SyntheticCases.classNames,
                              numTraining: trainingCount, numTest: testCount,
                              labels: regions ? BraTSLike.labels(ignore: ignore)
                                  : ignore ? Dictionary(uniqueKeysWithValues: SyntheticCases.classNames.enumerated().map { ($1, $0) } + [(LabelScheme.ignoreName, SyntheticCases.classCount)]) : nil,
                              extra: regions ? ["regions_class_order": BraTSLike.regionsClassOrder] : [:])
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// A grid over the field of view of `source` with a random voxel-axis order and flips and
    /// anisotropic spacing, keyed by (seed, index) on the .syntheticCases stream's layer 1.
    static func randomGrid(like source: VoxelGrid, seed: UInt64, index: Int) -> VoxelGrid {
        var rng = RandomStream(seed: seed, layer: 1, step: index, purpose: .syntheticCases)
        func uniform(_ r: ClosedRange<Double>) -> Double {
            var u: Float = 0; rng.fillUniform(&u, count: 1)
            return r.lowerBound + Double(u) * (r.upperBound - r.lowerBound)
        }
        var worldAxes = [0, 1, 2]
        for i in stride(from: 2, to: 0, by: -1) { worldAxes.swapAt(i, rng.nextInt(below: i + 1)) }
        let signs = (0..<3).map { _ in rng.nextInt(below: 2) == 0 ? -1.0 : 1.0 }
        let sliceAxis = rng.nextInt(below: 3)
        let spacing = (0..<3).map { a in ((a == sliceAxis ? uniform(1.3...2.0) : uniform(0.9...1.3)) * 100).rounded() / 100 }
        // Field of view along each world axis, and its centre.
        let oldSpacing = source.affine.spacing, n = source.sizeIJK
        let o = AxisOrientation(source.affine)
        var fov = [0.0, 0, 0]
        for a in 0..<3 { fov[o.worldAxis[a]] = Double(n[a]) * oldSpacing[a] }
        let centre = source.affine.apply(n.map { Double($0 - 1) / 2 })
        var m = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        m[3][3] = 1
        var size = [0, 0, 0]
        for a in 0..<3 {
            let w = worldAxes[a]
            size[a] = max(4, Int((fov[w] / spacing[a]).rounded()))
            m[w][a] = signs[a] * spacing[a]
        }
        for r in 0..<3 { m[r][3] = centre[r] - (0..<3).reduce(0) { $0 + m[r][$1] * Double(size[$1] - 1) / 2 } }
        return VoxelGrid(shape: [size[2], size[1], size[0]], affine: Affine(m))
    }
}

/// Colin27 (Debian mricron-data's ch2.nii.gz, 1 mm) with the AAL atlas on its grid, grouped into
/// four classes, as a dataset folder: a real multi-class MRI case. Whole (one training case), or
/// split into hemispheres: the left one (world x < 0) to train on, the right one (x > 0, with its
/// label in labelsTs/) held out; each half is a crop with its own affine, the mid-sagittal
/// plane x = 0 belongs to neither.
public enum Colin27Export {
    /// Class names, by index.
    public static let classNames = ["background", "cerebral_cortex", "deep_grey", "cerebellum"]

    /// AAL region index (aal.nii.txt: 1–116) -> class: 71–78 (caudate, putamen, pallidum,
    /// thalamus) deep grey; 91–116 (cerebellum, vermis) cerebellum; every other region cortex.
    public static func group(aal v: Int) -> Int {
        switch v {
        case 0: return 0
        case 71...78: return 2
        case 91...116: return 3
        default: return 1
        }
    }

    public static func write(to path: String, templates: String = Colin27.defaultDirectory, hemispheres: Bool = false) throws {
        let t1Path = templates + "/ch2.nii.gz", aalPath = templates + "/aal.nii.gz"
        let t1 = try DatasetFolder.readVolume(t1Path, isLabel: false)
        let aal = try DatasetFolder.readVolume(aalPath, isLabel: true)
        let grid = VoxelGrid(shape: t1.header.shape, affine: t1.header.affine)
        guard PreprocessingPlan.sameGrid(aal.header, grid) else {
            throw DatasetError.gridMismatch(path: aalPath, reference: t1Path, shape: aal.header.shape, expectedShape: grid.shape,
                                            affine: aal.header.affine, expectedAffine: grid.affine)
        }
        let regions = aal.data.array
        let label = Tensor(shape: grid.shape, values: regions.map { Float(group(aal: Int($0))) })
        let writer = try DatasetFolderWriter(destination: path)
        do {
            let image = t1.data.reshaped([1] + grid.shape)
            if hemispheres {
                // Columns i by the world x of their centre (the grid may store x either way round).
                let centre = [Double(grid.shape[1] - 1) / 2, Double(grid.shape[0] - 1) / 2]
                let xs = (0..<grid.shape[2]).map { grid.affine.apply([Double($0), centre[0], centre[1]])[0] }
                for (id, split, side) in [("colin27_left", "Tr", -1.0), ("colin27_right", "Ts", 1.0)] {
                    let columns = xs.indices.filter { xs[$0] * side > 0 }
                    let (img, g) = crop(image, grid, columns: columns.first!...columns.last!)
                    let (lab, _) = crop(label.reshaped([1] + grid.shape), grid, columns: columns.first!...columns.last!)
                    try writer.write(id: id, image: img, label: lab.reshaped(g.shape), grid: g, split: split)
                }
            } else {
                try writer.write(id: "colin27", image: image, label: label, grid: grid, split: "Tr")
            }
            try writer.finish(name: "Colin27AAL", description: "Colin27 T1 (ch2.nii.gz) with AAL regions grouped into cortex, deep grey nuclei and cerebellum"
                                + (hemispheres ? "; left hemisphere to train, right hemisphere held out" : ""),
                              channelNames: ["T1"], classNames: classNames, numTraining: 1, numTest: hemispheres ? 1 : 0)
        } catch {
            writer.abandon()
            throw error
        }
    }
}

/// The synthetic cases relabelled as a BraTS-like region-based task (nnU-Net's BraTS layout after
/// conversion): structure A is edema (1); structure B is the tumour core, its inner part
/// non-enhancing (2) and its outer shell, `shellVoxels` 6-neighbour erosions thick, enhancing (3),
/// brightened in channel 1 (T2 here) by `enhancement` texture sd so the shell can be seen.
public enum BraTSLike {
    public static let regionNames = ["whole tumour", "tumour core", "enhancing tumour"]
    public static let regionValues = [[1, 2, 3], [2, 3], [3]]
    public static let regionsClassOrder = [1, 2, 3]
    public static let ignoreValue = 4
    static let shellVoxels = 2
    static let enhancement: Float = 1.5
    /// Fraction of the slices (top of the superior axis) an `--ignore` export leaves unannotated.
    public static let ignoredFraction = 0.25

    /// dataset.json's labels: background, the three regions, and "ignore" when asked.
    static func labels(ignore: Bool) -> [String: Any] {
        var l: [String: Any] = ["background": 0]
        for (name, values) in zip(regionNames, regionValues) { l[name] = values }
        if ignore { l[LabelScheme.ignoreName] = ignoreValue }
        return l
    }

    /// `c` relabelled: 1 = structure A, 2 = structure B's interior, 3 = its shell (brighter in channel 1).
    static func nested(_ c: SyntheticCases.Case) -> SyntheticCases.Case {
        let shape = Array(c.label.shape.dropFirst()), (d, h, w) = (shape[0], shape[1], shape[2]), n = d * h * w
        let labels = c.label.array
        var core = labels.map { $0 == 2 }
        for _ in 0..<shellVoxels {
            let previous = core
            for z in 0..<d { for y in 0..<h { for x in 0..<w {
                let i = (z * h + y) * w + x
                guard previous[i] else { continue }
                let inside = z > 0 && z < d - 1 && y > 0 && y < h - 1 && x > 0 && x < w - 1
                    && previous[i - 1] && previous[i + 1] && previous[i - w] && previous[i + w] && previous[i - h * w] && previous[i + h * w]
                if !inside { core[i] = false }
            } } }
        }
        var label = labels, image = c.image.array
        for i in 0..<n where labels[i] == 2 && !core[i] {
            label[i] = 3
            image[n + i] += SyntheticCases.scale[1] * enhancement
        }
        return SyntheticCases.Case(id: c.id, image: Tensor(shape: c.image.shape, values: image), label: Tensor(shape: c.label.shape, values: label),
                                   spacing: c.spacing, affine: c.affine)
    }

    /// `c` with the top `ignoredFraction` of its slices along D (superior) labelled `value`.
    static func ignoringTopSlab(_ c: SyntheticCases.Case, value: Int) -> SyntheticCases.Case {
        let shape = Array(c.label.shape.dropFirst()), plane = shape[1] * shape[2]
        let first = shape[0] - Int((Double(shape[0]) * ignoredFraction).rounded())
        var label = c.label.array
        for i in (first * plane)..<(shape[0] * plane) { label[i] = Float(value) }
        return SyntheticCases.Case(id: c.id, image: c.image, label: Tensor(shape: c.label.shape, values: label), spacing: c.spacing, affine: c.affine)
    }
}
