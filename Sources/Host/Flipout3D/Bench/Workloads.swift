// The benchmark workloads W1-W4 of ../shared/notes/performance.md, timed in one process beside the raw kernels.
import Foundation

/// One benchmark result. `gflops` uses the peers' counting (two-convolution Flipout for W1-W3),
/// so figures compare directly with TFP's; `rawMs` is the same shapes' plain convolutions.
public struct BenchResult: Codable, Sendable {
    public var workload: String
    public var estimator: String
    public var medianMs: Double
    public var gflops: Double
    public var workloadGFLOP: Double
    /// The convolution kernels this step runs, timed alone in the same process (forward + backward).
    public var rawMs: Double
    public var ratioToRaw: Double
    public var repeats: Int
    /// Each convolution of the step: its plan and per-direction timings.
    public var layers: [LayerTiming]
    /// (N, D, H, W) of the step's input, and its median ms per input voxel (N * D * H * W).
    public var input: [Int]
    public var nsPerVoxel: Double { medianMs * 1e6 / Double(input.reduce(1, *)) }
    /// The process's peak resident set so far (MiB), read after this workload.
    public var peakRSSMiB: Double = BenchResult.peakRSSMiB()

    /// getrusage's ru_maxrss (KiB on Linux) in MiB.
    public static func peakRSSMiB() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_maxrss) / 1024
    }

    enum CodingKeys: String, CodingKey {
        case workload, estimator, gflops, repeats, layers, input
        case peakRSSMiB = "peak_rss_mib"
        case medianMs = "median_ms", workloadGFLOP = "workload_gflop", rawMs = "raw_ms", ratioToRaw = "ratio_to_raw"
    }
}

/// One convolution of a workload, timed alone per direction with the plan its layer gets.
public struct LayerTiming: Codable, Sendable {
    public var geometry: String
    /// The geometry itself (not in the JSON), for `Workloads.comparePlans`.
    public var convolution: Conv3DGeometry? = nil
    public var plan: String
    /// oneDNN implementation names or "native <level>", per direction.
    public var implementations: [String]
    public var forwardMs: Double, backwardDataMs: Double, backwardWeightsMs: Double
    /// GFLOP of one pass (2 * N * Cout * Cin/groups * k^3 * output voxels).
    public var passGFLOP: Double

    init(_ t: EngineStepTiming) {
        geometry = "\(t.geometry)"
        convolution = t.geometry
        plan = "\(t.plan)"
        implementations = t.implementations
        (forwardMs, backwardDataMs, backwardWeightsMs) = (t.forwardMs, t.backwardDataMs, t.backwardWeightsMs)
        passGFLOP = t.geometry.flops / 1e9
    }

    public var gflops: (forward: Double, backwardData: Double, backwardWeights: Double) {
        (passGFLOP / (forwardMs / 1e3), passGFLOP / (backwardDataMs / 1e3), passGFLOP / (backwardWeightsMs / 1e3))
    }

    enum CodingKeys: String, CodingKey {
        case geometry, plan, implementations
        case forwardMs = "forward_ms", backwardDataMs = "backward_data_ms", backwardWeightsMs = "backward_weights_ms"
        case passGFLOP = "pass_gflop"
    }
}

/// One oneDNN plan variant of one layer, timed alone (`flipout bench --compare-plans`).
public struct PlanComparison: Codable, Sendable {
    public var workload: String
    public var timing: LayerTiming
    public var stepMs: Double
    /// Whether `Conv3DPlan.choose` picks this variant.
    public var chosen: Bool
    enum CodingKeys: String, CodingKey { case workload, timing, chosen, stepMs = "step_ms" }
}

public enum Workloads {
    /// Every oneDNN layout x forward strategy that applies to each oneDNN layer of `result`, timed
    /// alone (step and per direction): the measurements behind `Conv3DPlan`'s oneDNN rules.
    public static func comparePlans(_ result: BenchResult, repeats: Int, warmup: Int) throws -> [PlanComparison] {
        var out: [PlanComparison] = []
        for layer in result.layers {
            guard let g = layer.convolution else { continue }
            let chosen = Conv3DPlan.choose(g)
            guard chosen.usesOneDNN else { continue }
            // Per group is channels-last itself for an ungrouped layer.
            for layout in Conv3DPlan.Layout.allCases where layout != .channelsLastPerGroup || g.groups > 1 {
                for strategy in Conv3DPlan.ForwardStrategy.allCases
                where (strategy == .direct || g.isTransposable) && layout.applies(to: g, strategy: strategy) {
                    let plan = Conv3DPlan.onednn(strategy, layout: layout, reason: "--compare-plans")
                    let t = try EngineBench.timeStep(geometry: g, plan: plan, repeats: repeats, warmup: warmup)
                    out.append(PlanComparison(workload: result.workload, timing: LayerTiming(t), stepMs: t.stepMs,
                                              chosen: chosen.layout == layout && chosen.forwardStrategy == strategy))
                }
            }
        }
        return out
    }

    static func filled(_ shape: [Int], seed: UInt64) -> Tensor {
        let t = Tensor(shape: shape)
        var s = RandomStream(seed: seed, layer: 0, step: 0, purpose: .test)
        s.fillNormal(t.data, count: t.count)
        return t
    }

    /// W1/W2: one Flipout layer forward + backward (grads for input, loc, scale) + KL, loss = <y, r> + KL.
    public static func layer(_ name: String, n: Int, cin: Int, cout: Int, estimator: Estimator, registry: PluginRegistry,
                             repeats: Int, warmup: Int) throws -> BenchResult {
        let normal = try registry.family("org.flipout3d.normal")
        let layer = try FlipoutConv3D(name: name, index: 0, inChannels: cin, outChannels: cout, estimator: estimator,
                                      posterior: try normal.instantiate(), prior: try normal.instantiate(), seed: 1)
        let x = filled([n, cin, 32, 32, 32], seed: 2)
        let r = filled([n, cout, 32, 32, 32], seed: 3)
        var step = 0
        let ms = try EngineBench.median(repeats: repeats, warmup: warmup) {
            step += 1
            let ctx = StepContext(seed: 1, step: step)
            layer.zeroGradients()
            let (y, saved) = try layer.forward(x, ctx)
            withExtendedLifetime(y) {}
            _ = try layer.backward(r, saved)
            _ = try layer.kl(gradientScale: 1, ctx)
            layer.finishBackward()
        }
        let g = Conv3DGeometry(batch: n, inChannels: cin, outChannels: cout, size: 32, k: 3)
        let rawGeometry = estimator == .reparam ? g : g.foldedOverBatch()
        let raw = try EngineBench.timeStep(geometry: rawGeometry, repeats: repeats, warmup: warmup)
        let gflop = 2 * 3 * g.flops / 1e9
        return BenchResult(workload: name, estimator: estimator.rawValue, medianMs: ms, gflops: gflop / (ms / 1e3), workloadGFLOP: gflop,
                           rawMs: raw.stepMs, ratioToRaw: ms / raw.stepMs, repeats: repeats, layers: [LayerTiming(raw)],
                           input: [n, 32, 32, 32])
    }

    /// W3: Flipout(1->8) ReLU Flipout(8->8) ReLU Flipout(8->1), N=8, 32^3, sigmoid BCE + KL/1000, one Adam step;
    /// or the same network with deterministic convolutions. `size` and `batch` change the input
    /// (N, 1, size^3) to measure how the cost per voxel scales.
    public static func network(bayesian: Bool, estimator: Estimator, registry: PluginRegistry, repeats: Int, warmup: Int,
                               size: Int = 32, batch: Int = 8) throws -> BenchResult {
        var config = ModelConfig()
        config.bayesian = bayesian
        config.estimator = estimator.rawValue
        let net = try ConvStack(config, width: 8, registry: registry, seed: 1)
        let adam = Adam(parameters: net.trainable, learningRate: 1e-3)
        let parallel = DataParallel()
        let x = filled([batch, 1, size, size, size], seed: 4)
        let y = Tensor(shape: x.shape)
        for i in 0..<y.count { y.data[i] = x.data[i] > 1 ? 1 : 0 }
        var step = 0
        let ms = try EngineBench.median(repeats: repeats, warmup: warmup) {
            step += 1
            _ = try TrainingStep.run(net, optimizer: adam, parallel: parallel, x: x, ctx: StepContext(seed: 1, step: step), klScale: 1e-3) { logits in
                let grad = Tensor(shape: logits.shape)
                return (ELBO.bceWithLogits(logits, y, grad: grad), grad)
            }
        }
        // Raw kernels: the three convolutions' forward + backward (no input gradient for the first).
        // Workload GFLOP in the peers' counting: two-convolution Flipout, three passes per layer, the
        // first layer without backward-data (6.57, as in performance.md).
        var raw = 0.0, flops = 0.0, layers: [LayerTiming] = []
        for (cin, cout) in [(1, 8), (8, 8), (8, 1)] {
            let g = Conv3DGeometry(batch: batch, inChannels: cin, outChannels: cout, size: size, k: 3)
            let t = try EngineBench.timeStep(geometry: bayesian && estimator != .reparam ? g.foldedOverBatch() : g, repeats: repeats, warmup: warmup)
            raw += t.stepMs
            layers.append(LayerTiming(t))
            flops += 2 * (cin == 1 ? 2 : 3) * g.flops
        }
        let gflop = flops / 1e9
        return BenchResult(workload: bayesian ? "W3" : "W3-deterministic", estimator: bayesian ? estimator.rawValue : "none", medianMs: ms,
                           gflops: gflop / (ms / 1e3), workloadGFLOP: gflop, rawMs: raw, ratioToRaw: ms / raw, repeats: repeats, layers: layers,
                           input: [batch, size, size, size])
    }

    /// W4: deterministic Conv3D with W1's shapes, forward + backward.
    public static func w4(repeats: Int, warmup: Int) throws -> BenchResult {
        let t = try EngineBench.measureW4(repeats: repeats, warmup: warmup)
        return BenchResult(workload: "W4", estimator: "none", medianMs: t.stepMs, gflops: t.stepGFLOPS, workloadGFLOP: t.stepGFLOP,
                           rawMs: t.stepMs, ratioToRaw: 1, repeats: repeats, layers: [LayerTiming(t)], input: [4, 32, 32, 32])
    }
}

/// W3's network: conv(1->w) ReLU conv(w->w) ReLU conv(w->1), Flipout (Normal/Normal) or deterministic,
/// one sigmoid logit per voxel. A benchmark fixture, trained through `TrainingStep` like the U-Net.
final class ConvStack: TrainableNetwork {
    let layers: [ConvLayer]

    init(_ config: ModelConfig, width w: Int, registry: PluginRegistry, seed: UInt64) throws {
        let specs = [("conv0", 1, w), ("conv1", w, w), ("conv2", w, 1)]
        layers = try specs.enumerated().map { i, s -> ConvLayer in
            config.bayesian
                ? try UNet.flipoutLayer(config, registry: registry, name: s.0, index: i, inChannels: s.1, outChannels: s.2, kernel: 3, stride: 1,
                                        custom: true, seed: seed, log: { _ in })
                : DeterministicConv3D(name: s.0, index: i, inChannels: s.1, outChannels: s.2, kernel: 3, stride: 1, seed: seed)
        }
        layers[0].needsInputGradient = false
    }

    /// x (N, 1, D, H, W) -> logits (N, 1, D, H, W).
    func forward(_ x: Tensor, _ ctx: StepContext) throws -> (logits: Tensor, saved: ([ConvSaved], [ReLUSaved])) {
        var h = x, convs: [ConvSaved] = [], relus: [ReLUSaved] = []
        for (i, l) in layers.enumerated() {
            let (y, c) = try l.forward(h, ctx)
            convs.append(c)
            if i < layers.count - 1 { let (a, r) = ReLU.forward(y); relus.append(r); h = a } else { h = y }
        }
        return (h, (convs, relus))
    }

    func backward(_ dLogits: consuming Tensor, _ saved: ([ConvSaved], [ReLUSaved])) throws {
        var g = dLogits
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            if i < saved.1.count { g = ReLU.backward(g, saved.1[i]) }
            g = try layers[i].backward(g, saved.0[i])
        }
    }

    func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double {
        try layers.reduce(0.0) { $0 + (try $1.kl(gradientScale: gradientScale, ctx)) }
    }
    func finishBackward() { layers.forEach { $0.finishBackward() } }
    func zeroGradients() { layers.forEach { $0.zeroGradients() } }
    func parametersChanged() { layers.compactMap { $0 as? FlipoutConv3D }.forEach { $0.weights.refresh() } }
    var trainable: [NamedParameter] { layers.flatMap(\.trainable) }
}

/// One convolution of a U-Net workload under one plan, timed alone (`flipout bench --workloads U1
/// --compare-plans`): where the step's convolution time goes, layer by layer, and which engine wins.
public struct UNetLayerComparison: Sendable {
    public var layer: String
    public var bayesian: Bool
    public var timing: EngineStepTiming
    public var chosen: Bool
}

extension Workloads {
    /// The convolutions of `w`'s U-Net (forward order, as `UNet` builds them), each in the
    /// geometry the layer runs: Flipout folded over the batch (groups = batch), deterministic
    /// plain. Every candidate plan that applies is timed: the chosen one, all-oneDNN, all-native,
    /// native forward and backward-data with oneDNN backward-weights.
    public static func unetLayers(_ w: UNetWorkload, repeats: Int, warmup: Int,
                                  report: (UNetLayerComparison) -> Void) throws {
        let s = w.shape
        var specs: [(String, Int, Int, Int, Int, Int, Int)] = []   // name, in, out, k, stride, input edge, upsample
        for l in 0..<w.levels {
            let cin = l == 0 ? w.channels : s.channels(level: l - 1), c = s.channels(level: l)
            specs.append(("enc\(l)a", cin, c, 3, l == 0 ? 1 : 2, w.patch >> max(l - 1, 0), 1))
            specs.append(("enc\(l)b", c, c, 3, 1, w.patch >> l, 1))
        }
        for l in stride(from: w.levels - 2, through: 0, by: -1) {
            let c = s.channels(level: l)
            specs.append(("up\(l)", s.channels(level: l + 1), c, 3, 1, w.patch >> (l + 1), 2))
            specs.append(("dec\(l)", 2 * c, c, 3, 1, w.patch >> l, 1))
        }
        specs.append(("head", s.channels(level: 0), w.classes, 1, 1, w.patch, 1))
        for spec in specs {
            var plain = Conv3DGeometry(batch: w.batch, inChannels: spec.1, outChannels: spec.2, size: spec.5, k: spec.3, stride: spec.4)
            plain.upsample = spec.6
            for bayesian in [true, false] {
                let g = bayesian && !(spec.0 == "head") ? plain.foldedOverBatch() : plain
                if !bayesian && spec.0 == "head" { continue }
                let chosen = Conv3DPlan.choose(g)
                var plans = [chosen]
                let level = NativeLevel.best
                var candidates = [Conv3DPlan.onednn(reason: "all oneDNN, blocked, direct")]
                if Conv3DPlan.nativeSupports(g) {
                    candidates.append(.native(level, reason: "all native"))
                    candidates.append(Conv3DPlan(forward: .native(level), backwardData: .native(level), backwardWeights: .onednn,
                                                 reason: "mixed"))
                }
                if Conv3DPlan.nativeSupportsBackwardWeights(g) {
                    candidates.append(Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .native(level),
                                                 reason: "oneDNN, native backward-weights"))
                    candidates.append(Conv3DPlan(forward: .native(level), backwardData: .onednn, backwardWeights: .native(level),
                                                 reason: "native forward and backward-weights, oneDNN backward-data"))
                }
                for c in candidates where !plans.contains(where: { $0.forward == c.forward && $0.backwardData == c.backwardData
                        && $0.backwardWeights == c.backwardWeights && $0.layout == c.layout && $0.forwardStrategy == c.forwardStrategy }) {
                    plans.append(c)
                }
                for (i, p) in plans.enumerated() {
                    let t = try EngineBench.timeStep(geometry: g, plan: p, repeats: repeats, warmup: warmup)
                    report(UNetLayerComparison(layer: spec.0, bayesian: bayesian, timing: t, chosen: i == 0))
                }
            }
        }
    }
}
