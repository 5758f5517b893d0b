// dataset.json's labels as nnU-Net v2 reads them: classes (name → value), regions (name → list of values, one sigmoid each, with regions_class_order) and the ignore label.
import Foundation

/// One region of a region-based dataset: the label values it unites (BraTS: whole tumour {1, 2, 3},
/// tumour core {2, 3}, enhancing tumour {3}). The network has one sigmoid output per region.
public struct LabelRegion: Codable, Sendable, Equatable {
    public var name: String
    public var values: [Int]

    public init(name: String, values: [Int]) { self.name = name; self.values = values }

    /// Whether label value `v` belongs to the region.
    public func contains(_ v: Int) -> Bool { values.contains(v) }
}

/// What dataset.json's `labels` (and `regions_class_order`) say, checked:
/// - classes: `{"background": 0, "tumour": 1, ...}`, values consecutive 0..<K (softmax over K);
/// - regions: a label whose value is a list of label values is a region, `regions_class_order`
///   (one label value per region) writes them back into a label map: region i's voxels (sigmoid
///   > 0.5) get `regions_class_order[i]`, later regions over earlier ones (nnU-Net's
///   `convert_probabilities_to_segmentation`). Background stays the integer 0;
/// - `ignore`: a label named "ignore", the highest value; its voxels are left out of the loss and
///   of the evaluation (nnU-Net's `ignore_label`).
public struct LabelScheme: Sendable, Equatable {
    /// Integer labels by name (background 0 included, ignore excluded).
    public var labels: [String: Int]
    /// Label values 0..<classCount a label map may hold (besides the ignore value).
    public var classCount: Int
    public var regions: [LabelRegion]?
    public var regionsClassOrder: [Int]?
    public var ignoreLabel: Int?

    /// The name dataset.json gives the ignore label (nnU-Net's convention).
    public static let ignoreName = "ignore"

    /// Parses `json["labels"]` and `json["regions_class_order"]`; `path` names dataset.json in errors.
    static func parse(_ json: [String: Any], path: String) throws -> LabelScheme {
        guard let raw = json["labels"] else { throw DatasetError.missingKey(path: path, key: "labels") }
        guard let dict = raw as? [String: Any], !dict.isEmpty else {
            throw DatasetError.badField(path: path, key: "labels", reason: "must be an object {\"background\": 0, \"tumour\": 1, ...}")
        }
        func bad(_ reason: String) -> DatasetError { DatasetError.badField(path: path, key: "labels", reason: reason) }
        // MSD: {"0": "background", "1": "tumour"}.
        let msd = dict.allSatisfy { Int($0.key) != nil && $0.value is String }
        var labels: [String: Int] = [:], regions: [LabelRegion] = [], ignore: Int?
        for (k, v) in dict.sorted(by: { $0.key < $1.key }) {
            if msd {
                let name = v as! String
                guard labels[name] == nil else { throw bad("names \"\(name)\" twice") }
                if name == ignoreName { ignore = Int(k)!; continue }
                labels[name] = Int(k)!
            } else if let list = v as? [Any], !(v is String) {
                let values = list.compactMap(DatasetFolder.integer)
                guard values.count == list.count, !values.isEmpty else {
                    throw bad("has \"\(k)\": \(v); a region lists the label values it unites, e.g. \"tumour core\": [2, 3]")
                }
                guard !values.contains(where: { $0 <= 0 }) else {
                    throw bad("region \"\(k)\" lists \(values); region values are label values >= 1 (background 0 is never part of a region)")
                }
                guard Set(values).count == values.count else { throw bad("region \"\(k)\" lists a value twice: \(values)") }
                if k == ignoreName { throw bad("\"ignore\" is a list; the ignore label is one integer, the highest label value") }
                regions.append(LabelRegion(name: k, values: values))
            } else if let index = DatasetFolder.integer(v) {
                if k == ignoreName { ignore = index; continue }
                labels[k] = index
            } else {
                throw bad("has \"\(k)\": \(v); each label needs an integer label value, or a list of values for a region")
            }
        }
        var scheme = LabelScheme(labels: labels, classCount: 0, regions: nil, regionsClassOrder: nil, ignoreLabel: ignore)
        guard labels["background"] == 0 || labels.values.contains(0) else {
            throw bad("has no background label with value 0; add \"background\": 0")
        }
        if regions.isEmpty {
            guard json["regions_class_order"] == nil else {
                throw DatasetError.badField(path: path, key: "regions_class_order", reason: "is given, but no label is a region (a list of values); remove it or give the regions")
            }
            let indices = labels.values.sorted()
            guard indices == Array(0..<indices.count) else {
                throw bad("has class indices \(indices); they must be consecutive 0, 1, ..., K-1 (0 = background), each once (besides \"ignore\", the highest value)")
            }
            scheme.classCount = indices.count
        } else {
            // nnU-Net reads regions in dataset.json's order; JSONSerialization loses it, so the
            // order is regions_class_order's: region i is the one whose values contain order[i] and
            // the fewest others (the innermost of nested regions holding the value).
            guard regions.count >= 2 else {
                throw bad("has one region (\(regions[0].name)); a single region is a class: give it as \"\(regions[0].name)\": 1 with its voxels labelled 1")
            }
            guard let rawOrder = json["regions_class_order"] else {
                throw DatasetError.missingKey(path: path, key: "regions_class_order")
            }
            guard let list = rawOrder as? [Any], list.count == regions.count else {
                throw DatasetError.badField(path: path, key: "regions_class_order", reason: "must list one label value per region (\(regions.count)), e.g. [1, 2, 3] for BraTS's whole tumour, tumour core, enhancing tumour")
            }
            let order = list.compactMap(DatasetFolder.integer)
            guard order.count == list.count else {
                throw DatasetError.badField(path: path, key: "regions_class_order", reason: "is \(rawOrder); every entry must be an integer label value")
            }
            var remaining = regions, ordered: [LabelRegion] = []
            for value in order {
                let holders = remaining.enumerated().filter { $0.element.contains(value) }
                guard let pick = holders.min(by: { ($0.element.values.count, $0.element.name) < ($1.element.values.count, $1.element.name) }) else {
                    throw DatasetError.badField(path: path, key: "regions_class_order", reason: "lists \(value), which no remaining region (\(remaining.map(\.name).joined(separator: ", "))) contains; entry i is the label value region i writes into the label map and must belong to it")
                }
                ordered.append(pick.element)
                remaining.remove(at: pick.offset)
            }
            let values = Set(regions.flatMap(\.values)).union(labels.values)
            scheme.classCount = (values.max() ?? 0) + 1
            for (name, v) in labels where v != 0 && !regions.contains(where: { $0.contains(v) }) {
                throw bad("has \"\(name)\": \(v), in no region; in a region-based dataset every label value >= 1 belongs to a region")
            }
            scheme.regions = ordered
            scheme.regionsClassOrder = order
            scheme.labels = labels.filter { $0.value == 0 }
        }
        if let ignore {
            let highest = max(scheme.classCount - 1, scheme.regions?.flatMap(\.values).max() ?? 0)
            guard ignore > highest else {
                throw bad("has \"ignore\": \(ignore); the ignore label must be the highest label value (above \(highest)), as nnU-Net requires")
            }
        }
        return scheme
    }
}

extension PreprocessingPlan {
    /// The network's outputs: one sigmoid per region in a region-based plan, else K softmax classes.
    public var outputCount: Int { regions?.count ?? classCount }

    /// Output names: the regions', or the classes'.
    public var outputNames: [String] { regions?.map(\.name) ?? classNames }

    /// Names of the label values a predicted label map holds: the classes', or for a region-based
    /// plan the name of the region writing each value ("background" for 0, "label v" otherwise).
    public var labelValueNames: [String] {
        guard let regions, let order = regionsClassOrder else { return classNames }
        let top = max(classCount, (order.max() ?? 0) + 1)
        return (0..<top).map { v in v == 0 ? classNames[0] : order.lastIndex(of: v).map { regions[$0].name } ?? "label \(v)" }
    }

    /// Whether voxel label `v` is left out of loss and evaluation.
    public func isIgnored(_ v: Int) -> Bool { ignoreLabel == v }

    /// The label map of region probabilities (R, D, H, W) by nnU-Net's rule: 0, then for each
    /// region i in order, voxels whose sigmoid exceeds 0.5 get `regionsClassOrder[i]`.
    public static func regionLabelMap(_ p: Tensor, order: [Int]) -> [Int32] {
        precondition(p.rank == 4 && p.shape[0] == order.count, "regionLabelMap: \(p.shape) for \(order.count) regions")
        let n = p.count / order.count
        var out = [Int32](repeating: 0, count: n)
        p.withUnsafeValues { q in
            for (r, value) in order.enumerated() {
                for v in 0..<n where q[r * n + v] > 0.5 { out[v] = Int32(value) }
            }
        }
        return out
    }

    /// Per output (region or class), whether label value `v` is inside it: the region's values,
    /// or the class itself.
    public func outputMembership(_ v: Int) -> [Bool] {
        if let regions { return regions.map { $0.contains(v) } }
        return (0..<classCount).map { $0 == v }
    }

    /// The plan's label rules (classes, regions, ignore) against each other: what `validate` adds
    /// for region-based and ignore-label plans.
    func validateLabelScheme() throws {
        if let regions {
            guard regions.count >= 2, let order = regionsClassOrder, order.count == regions.count else {
                throw ConfigError(field: "plan.regions", option: "(dataset.json)", value: "\(regions.count) regions, regions_class_order \(regionsClassOrder ?? [])",
                                  allowed: "at least 2 regions, one regions_class_order entry per region")
            }
            for (r, v) in zip(regions, order) where !(r.contains(v) && r.values.allSatisfy { (1..<classCount).contains($0) }) {
                throw ConfigError(field: "plan.regions", option: "(dataset.json)", value: "\(StrictJSON.printable(r.name)) \(r.values), order value \(v)",
                                  allowed: "label values from 1 to \(classCount - 1) holding its regions_class_order value")
            }
        } else if regionsClassOrder != nil {
            throw ConfigError(field: "plan.regionsClassOrder", option: "(dataset.json)", value: "\(regionsClassOrder!)", allowed: "none without regions")
        }
        if let ignoreLabel, ignoreLabel < classCount || ignoreLabel > 1_000_000 {
            throw ConfigError(field: "plan.ignoreLabel", option: "(dataset.json)", value: "\(ignoreLabel)", allowed: "a value above every class value (\(classCount - 1))")
        }
    }
}
