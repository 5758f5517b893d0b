// Which cases a prediction input holds: a dataset folder (imagesTs, else imagesTr), a folder of loose files, or one file.
//
// Channel files follow nnU-Net's naming, CASE_0000.nii.gz, CASE_0001.nii.gz, … (one file per input
// channel, numbered from 0000 without gaps); a file without the suffix is a one-channel case.
import Foundation

/// An input that cannot be predicted, saying what is wrong and what to do.
public struct CaseInputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// One case to predict: its id and its channel files in channel order.
public struct CaseInput: Sendable, Equatable {
    public var id: String
    public var channels: [String]
    public init(id: String, channels: [String]) { self.id = id; self.channels = channels }
}

public enum CaseInputs {
    /// The cases at `path`, and a phrase saying where they were found.
    public static func discover(_ path: String) throws -> (cases: [CaseInput], source: String) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            // A missing input is a file error (exit 66), not a command-line one; see CLI/Errors.swift.
            throw FileIOError(kind: .missing, path: path, reason: "give a dataset folder, a folder of .nii.gz files, or one file")
        }
        if !isDir.boolValue {
            let folder = Paths.parent(path), name = Paths.lastComponent(path)
            guard let (id, channel) = split(name) else {
                throw CaseInputError("\(path): not a NIfTI file (.nii or .nii.gz)")
            }
            guard channel != nil else { return ([CaseInput(id: id, channels: [path])], "one file") }
            let all = try cases(in: folder.isEmpty ? "." : folder).filter { $0.id == id }
            return (all, "one case")
        }
        if FileManager.default.fileExists(atPath: Paths.join(path, "dataset.json")) {
            for sub in ["imagesTs", "imagesTr"] {
                let d = Paths.join(path, sub)
                if let found = try? cases(in: d), !found.isEmpty { return (found, "dataset folder, \(sub)") }
            }
            throw CaseInputError("\(path): a dataset folder (dataset.json) without images in imagesTs or imagesTr")
        }
        let found = try cases(in: path)
        guard !found.isEmpty else { throw CaseInputError("\(path): no .nii or .nii.gz files in this folder") }
        return (found, "folder")
    }

    /// (case id, channel number or nil) of a NIfTI file name; nil if not NIfTI.
    static func split(_ name: String) -> (String, Int?)? {
        let stem: String
        if name.hasSuffix(".nii.gz") { stem = String(name.dropLast(7)) } else if name.hasSuffix(".nii") { stem = String(name.dropLast(4)) } else { return nil }
        guard !stem.isEmpty, !stem.hasPrefix(".") else { return nil }
        if stem.count > 5, let us = stem.lastIndex(of: "_"), stem.distance(from: us, to: stem.endIndex) == 5,
           let n = Int(stem[stem.index(after: us)...]), stem[stem.index(after: us)...].allSatisfy(\.isNumber) {
            return (String(stem[..<us]), n)
        }
        return (stem, nil)
    }

    static func cases(in folder: String) throws -> [CaseInput] {
        let names = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        var channels: [String: [Int: String]] = [:]
        var order: [String] = []
        for name in names {
            guard let (id, ch) = split(name) else { continue }
            let path = Paths.join(folder, name)
            if channels[id] == nil { order.append(id); channels[id] = [:] }
            let c = ch ?? 0
            if let other = channels[id]![c] {
                throw CaseInputError("\(folder): case \(id) has two files for channel \(c): \(other) and \(path); keep one")
            }
            channels[id]![c] = path
        }
        return try order.map { id in
            let byChannel = channels[id]!
            let n = byChannel.count
            guard (0..<n).allSatisfy({ byChannel[$0] != nil }) else {
                throw CaseInputError("\(folder): case \(id) has channels \(byChannel.keys.sorted()); channel files must be numbered _0000, _0001, … without gaps")
            }
            return CaseInput(id: id, channels: (0..<n).map { byChannel[$0]! })
        }
    }
}
