// Which axes test-time mirroring flips at prediction: by default the ones training mirrored, as the checkpoint records.
import Foundation

/// `predict --tta`: `trained` (the default: the axes the checkpoint's augmentation mirrored,
/// nnU-Net's rule), `none`, `all`, or explicit axes such as `D,W`.
public enum TestTimeMirroring: Equatable, Sendable, CustomStringConvertible {
    case trained
    case axes([Int])

    /// Parses `trained`, `none`, `all`, or a comma-separated subset of D, H, W (case-insensitive).
    public init?(_ text: String) {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        switch t {
        case "trained": self = .trained
        case "none", "off": self = .axes([])
        case "all", "on": self = .axes([0, 1, 2])
        default:
            var axes: [Int] = []
            for part in t.split(separator: ",", omittingEmptySubsequences: false) {
                guard let a = ["d": 0, "h": 1, "w": 2][part.trimmingCharacters(in: .whitespaces)], !axes.contains(a) else { return nil }
                axes.append(a)
            }
            guard !axes.isEmpty else { return nil }
            self = .axes(axes.sorted())
        }
    }

    public var description: String {
        switch self {
        case .trained: return "trained"
        case .axes(let a): return a.isEmpty ? "none" : Self.names(a)
        }
    }

    /// "D,H,W" for [0, 1, 2].
    public static func names(_ axes: [Int]) -> String { axes.map { ["D", "H", "W"][$0] }.joined(separator: ",") }

    /// The axes to flip for a checkpoint whose training mirrored `trainedAxes`.
    public func resolve(trainedAxes: [Int]) -> [Int] {
        switch self {
        case .trained: return trainedAxes
        case .axes(let a): return a
        }
    }

    /// The axes a checkpoint's training mirrored (its recorded augmentation; none for a run
    /// without augmentation, or one recorded before augmentation existed).
    public static func trainedAxes(_ c: Checkpoint) -> [Int] {
        guard let json = c.metadata[UNetCheckpointKey.patchTraining],
              let patch = try? JSONDecoder().decode(PatchTrainingConfig.self, from: Data(json.utf8)),
              let a = patch.augmentation else { return [] }
        return trainedAxes(a)
    }

    /// The axes a training with these augmentation settings mirrored (none without augmentation).
    public static func trainedAxes(_ a: AugmentationSettings) -> [Int] {
        a.policy == .none ? [] : Set(a.mirrorAxes).sorted()
    }
}
