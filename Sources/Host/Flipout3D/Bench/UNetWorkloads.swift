// The real job's workloads: a `train --data` U-Net step (U1-U3) through the trainer's own step, with a per-phase breakdown.
import Foundation

/// One U-Net training-step workload (../shared/notes/performance.md, "The real job"): the network
/// `train --data` builds for a 2-channel, 3-class dataset (instance norm, Flipout on every
/// convolution unless deterministic, Dice-CE, Adam), batch 2. The peers build the same network
/// in `../shared/bench/unet_step_peers.py` with the same names and sizes.
public struct UNetWorkload: Sendable, Equatable {
    public var name: String
    public var width: Int
    public var levels: Int
    /// Edge of the cubic patch.
    public var patch: Int
    public var batch = 2
    public var channels = 2
    public var classes = 3

    public static let u1 = UNetWorkload(name: "U1", width: 8, levels: 3, patch: 32)
    public static let u2 = UNetWorkload(name: "U2", width: 16, levels: 4, patch: 64)
    public static let u3 = UNetWorkload(name: "U3", width: 32, levels: 5, patch: 128)
    public static let all = [u1, u2, u3]

    public var shape: UNetConfig {
        var u = UNetConfig(); u.width = width; u.levels = levels; u.inputChannels = channels; u.classCount = classes
        return u
    }

    /// GFLOP of one step in one-convolution counting: every convolution's forward, backward-data
    /// (not for the first layer) and backward-weights, each 2 * N * Cout * Cin * k^3 * output voxels.
    public var stepGFLOP: Double {
        let s = shape
        var convs: [(cin: Int, cout: Int, k: Int, size: Int)] = []
        for l in 0..<levels {
            convs.append((l == 0 ? channels : s.channels(level: l - 1), s.channels(level: l), 3, patch >> l))
            convs.append((s.channels(level: l), s.channels(level: l), 3, patch >> l))
        }
        for l in stride(from: levels - 2, through: 0, by: -1) {
            convs.append((s.channels(level: l + 1), s.channels(level: l), 3, patch >> l))
            convs.append((2 * s.channels(level: l), s.channels(level: l), 3, patch >> l))
        }
        convs.append((s.channels(level: 0), classes, 1, patch))
        return convs.enumerated().reduce(0.0) { total, e in
            let c = e.element
            let pass = 2.0 * Double(batch * c.cout * c.cin * c.k * c.k * c.k) * pow(Double(c.size), 3)
            return total + pass * (e.offset == 0 ? 2 : 3)
        } / 1e9
    }
}

/// One timed U-Net workload: the median step, and where a profiled step's time goes.
public struct UNetBenchResult: Codable, Sendable {
    public struct Phase: Codable, Sendable {
        public var phase: String
        public var ms: Double
        public var share: Double
    }
    public var workload: String
    public var bayesian: Bool
    public var medianMs: Double
    public var stepGFLOP: Double
    /// Useful GFLOP/s in one-convolution counting (`UNetWorkload.stepGFLOP` / median step).
    public var gflops: Double
    public var repeats: Int
    /// Means over the profiled steps; "other" is the step's time outside every probe.
    public var breakdown: [Phase]
    public var peakRSSMiB: Double

    enum CodingKeys: String, CodingKey {
        case workload, bayesian, repeats, breakdown, gflops
        case medianMs = "median_ms", stepGFLOP = "step_gflop", peakRSSMiB = "peak_rss_mib"
    }
}

extension Workloads {
    /// Times `w`'s training step as `train --data` runs it: `PatchTrainer.step` on a batch the
    /// trainer's `PatchSampler` cuts from two synthetic prepared cases (1.5 patches per axis), with
    /// data preparation inside the timed step. Then `profiled` more steps under a `StepProfile`.
    public static func unetStep(_ w: UNetWorkload, bayesian: Bool, registry: PluginRegistry, repeats: Int, warmup: Int,
                                profiled: Int = 3) throws -> UNetBenchResult {
        var m = ModelConfig(); m.bayesian = bayesian
        let seed: UInt64 = 1
        let model = try UNet(m, shape: w.shape, registry: registry, seed: seed)
        var t = TrainingConfig(); t.seed = seed; t.batchSize = w.batch; t.learningRate = FolderTrainingDefaults.learningRate; t.epochs = 1
        var p = PatchTrainingConfig(); p.patchSize = [w.patch, w.patch, w.patch]; p.data = "(bench)"
        let cases = syntheticCases(w, count: 2, seed: seed)
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: (0..<w.channels).map { "channel\($0)" },
                                     channels: Array(repeating: .zScore(mean: 0, std: 1), count: w.channels),
                                     labels: Dictionary(uniqueKeysWithValues: (0..<w.classes).map { ("class\($0)", $0) }), classCount: w.classes)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("flipout-bench-\(getpid())-\(w.name)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trainer = try PatchTrainer(model: model, training: t, patch: p, plan: plan, train: cases, validation: [], runDirectory: dir)
        var step = 0
        func oneStep() throws {
            step += 1
            let (x, y) = StepProfile.measure(.data) {
                trainer.sampler.batch(trainer.sampler.draws(step: step, caseIndices: (0..<w.batch).map { $0 % cases.count }))
            }
            _ = try trainer.step(x: x, y: y, step: step, beta: 1)
        }
        let ms = try EngineBench.median(repeats: repeats, warmup: warmup) { try oneStep() }
        let profile = StepProfile()
        var wall = 0.0
        try StepProfile.$current.withValue(profile) {
            for _ in 0..<profiled {
                let start = StepProfile.now()
                try oneStep()
                wall += Double(StepProfile.now() - start) / 1e6
            }
        }
        let n = Double(max(profiled, 1)), stepWall = wall / n
        var phases = StepProfile.Phase.allCases.map { ph in
            UNetBenchResult.Phase(phase: ph.rawValue, ms: profile.milliseconds(ph) / n, share: profile.milliseconds(ph) / n / stepWall)
        }
        let other = max(0, stepWall - profile.totalMilliseconds / n)
        phases.append(.init(phase: "other", ms: other, share: other / stepWall))
        return UNetBenchResult(workload: bayesian ? w.name : w.name + "-deterministic", bayesian: bayesian, medianMs: ms,
                               stepGFLOP: w.stepGFLOP, gflops: w.stepGFLOP / (ms / 1e3), repeats: repeats, breakdown: phases,
                               peakRSSMiB: BenchResult.peakRSSMiB())
    }

    /// Prepared cases of (C, 1.5p, 1.5p, 1.5p) standard-normal voxels and K classes thresholded
    /// from a smoothed channel, so that every class is present and foreground sampling applies.
    static func syntheticCases(_ w: UNetWorkload, count: Int, seed: UInt64) -> [PreparedCase] {
        let edge = w.patch + w.patch / 2, shape = [edge, edge, edge], v = edge * edge * edge
        return (0..<count).map { i in
            let image = Tensor(shape: [w.channels] + shape)
            var s = RandomStream(seed: seed, layer: i, step: 0, purpose: .test)
            s.fillNormal(image.data, count: image.count)
            let label = Tensor(shape: [1] + shape)
            for j in 0..<v {
                let z = j / (edge * edge), r = Double(z) / Double(edge)   // classes in slabs along z
                label.data[j] = Float(min(w.classes - 1, Int(r * Double(w.classes))))
            }
            let a = Affine.identity
            return PreparedCase(id: "bench\(i)", image: image, label: label,
                                geometry: CaseGeometry(sourceShape: shape, sourceAffine: a, preparedShape: shape, preparedAffine: a))
        }
    }
}
