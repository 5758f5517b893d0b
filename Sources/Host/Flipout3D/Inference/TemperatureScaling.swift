// Temperature scaling of each Monte Carlo sample: fitted on a validation fold, stored in the checkpoint, applied by predict.
//
// A sample's probabilities p = softmax(z) give its logits up to a constant, z = ln p + c, so the
// tempered sample is softmax(z / T) = p^(1/T) / Σ_k p_k^(1/T). Predict applies it to every sample
// p_t (each sample's windows blended first, on the network's grid) before the samples are
// summed, so the mean and the entropies are of tempered samples and MI stays a measure of the
// disagreement between samples (Guo et al. 2017's temperature, per sample as in Laves et al. 2019).
// The fit minimises the NLL of the predictive mean (1/S) Σ_t softmax(ln p_t / T) over validation
// voxels, by golden-section search over ln T in [ln 0.05, ln 20].
//
// Region-based models (one sigmoid per region) are tempered per output: p = σ(z) gives its logit
// z = ln p − ln(1 − p) exactly, and the tempered output is σ(z / T) = p^(1/T) / (p^(1/T) + (1 − p)^(1/T)),
// one temperature for every region (as one temperature serves every class of a softmax). The fit
// then minimises the regions' summed binary NLL of the predictive mean.
import Foundation

public enum TemperatureScaling {
    /// The checkpoint metadata key holding the fitted temperature (a decimal string; absent = 1).
    public static let metadataKey = "flipout3d.temperature"
    public static let range: ClosedRange<Double> = 0.05...20

    /// Tempers (K, ...) probabilities in place: p^(1/T) renormalised per voxel; with `sigmoidOutputs`
    /// each output on its own, σ(logit(p) / T).
    public static func apply(_ p: Tensor, temperature t: Double, sigmoidOutputs: Bool = false) {
        guard t != 1 else { return }
        if sigmoidOutputs {
            let inv = 1 / t
            p.withUnsafeMutableValues { d in
                for i in d.indices { d[i] = Float(temperedSigmoid(Double(d[i]), inverseTemperature: inv)) }
            }
            return
        }
        let k = p.shape[0], n = p.count / k, inv = Float(1 / t), d = p.data
        DispatchQueue.concurrentPerform(iterations: max(1, min(64, n / 4096))) { chunk in
            let c = max(1, min(64, n / 4096))
            for v in (n * chunk / c)..<(n * (chunk + 1) / c) {
                var top = -Float.infinity
                for j in 0..<k { top = max(top, logf(max(d[j * n + v], Float.leastNormalMagnitude)) * inv) }
                var z: Float = 0
                for j in 0..<k { let e = expf(logf(max(d[j * n + v], Float.leastNormalMagnitude)) * inv - top); d[j * n + v] = e; z += e }
                for j in 0..<k { d[j * n + v] /= z }
            }
        }
    }

    /// σ(logit(p) · inv), p clamped into (0, 1) at Double's smallest normal so that 0 and 1 stay finite logits.
    @inline(__always)
    static func temperedSigmoid(_ p: Double, inverseTemperature inv: Double) -> Double {
        let q = min(max(p, Double.leastNormalMagnitude), 1 - Double.ulpOfOne / 2)
        let z = (Foundation.log(q) - Foundation.log1p(-q)) * inv
        return z >= 0 ? 1 / (1 + Foundation.exp(-z)) : Foundation.exp(z) / (1 + Foundation.exp(z))
    }

    /// The temperature stored in a checkpoint, nil if none.
    public static func stored(in path: String) throws -> Double? {
        guard let text = try Checkpoint.read(path).metadata[metadataKey] else { return nil }
        guard let t = Double(text), range.contains(t) else {
            throw CheckpointError(path: path, reason: "metadata \(metadataKey) is \"\(text)\"; it must be a temperature in \(range.lowerBound)...\(range.upperBound) (run flipout calibrate again)")
        }
        return t
    }

    /// Writes `checkpoint` with the temperature in its metadata to `output` (atomically; may be the same path).
    public static func store(_ t: Double, checkpoint: String, output: String) throws {
        var c = try Checkpoint.read(checkpoint)
        c.metadata[metadataKey] = String(t)
        try c.write(to: output)
    }

    /// Validation voxels: every sample's probabilities and the truth.
    public struct Samples {
        /// Outputs per voxel: classes of a softmax, or regions with `sigmoidOutputs`.
        public let classes: Int
        public let draws: Int
        /// One sigmoid per output (a region-based model).
        public let sigmoidOutputs: Bool
        /// voxel-major: [v][t][k]
        public var probabilities: [Float] = []
        /// Per voxel the true class; with `sigmoidOutputs`, bit r set when the voxel is in region r.
        public var truth: [Int32] = []
        public init(classes: Int, draws: Int, sigmoidOutputs: Bool = false) {
            precondition(!sigmoidOutputs || classes <= 31, "TemperatureScaling.Samples: at most 31 regions fit the truth's bits, got \(classes)")
            self.classes = classes; self.draws = draws; self.sigmoidOutputs = sigmoidOutputs
        }
        public var voxels: Int { truth.count }

        /// The predictive mean of the tempered samples, (K, V).
        public func mean(temperature t: Double) -> Tensor {
            let k = classes, s = draws, n = voxels, inv = 1 / t
            let out = Tensor(shape: [k, n])
            if sigmoidOutputs {
                for v in 0..<n { for d in 0..<s { for j in 0..<k {
                    out.data[j * n + v] += Float(temperedSigmoid(Double(probabilities[(v * s + d) * k + j]), inverseTemperature: inv) / Double(s))
                } } }
                return out
            }
            var z = [Double](repeating: 0, count: k)
            for v in 0..<n {
                for d in 0..<s {
                    let base = (v * s + d) * k
                    var top = -Double.infinity
                    for j in 0..<k { z[j] = Foundation.log(max(Double(probabilities[base + j]), 1e-300)) * inv; top = max(top, z[j]) }
                    var sum = 0.0
                    for j in 0..<k { z[j] = Foundation.exp(z[j] - top); sum += z[j] }
                    for j in 0..<k { out.data[j * n + v] += Float(z[j] / sum / Double(s)) }
                }
            }
            return out
        }

        /// NLL of the tempered predictive mean, in Double throughout (with `sigmoidOutputs`, the sum
        /// over regions of each region's binary NLL, per voxel).
        public func nll(temperature t: Double) -> Double {
            let k = classes, s = draws, n = voxels, inv = 1 / t
            var total = 0.0
            if sigmoidOutputs {
                for v in 0..<n { for j in 0..<k {
                    var p = 0.0
                    for d in 0..<s { p += temperedSigmoid(Double(probabilities[(v * s + d) * k + j]), inverseTemperature: inv) }
                    p /= Double(s)
                    let inside = truth[v] & (1 << j) != 0
                    total -= Foundation.log(max(inside ? p : 1 - p, Metrics.probabilityEpsilon))
                } }
                return n == 0 ? 0 : total / Double(n)
            }
            var z = [Double](repeating: 0, count: k)
            for v in 0..<n {
                var py = 0.0
                let y = Int(truth[v])
                for d in 0..<s {
                    let base = (v * s + d) * k
                    var top = -Double.infinity
                    for j in 0..<k { z[j] = Foundation.log(max(Double(probabilities[base + j]), 1e-300)) * inv; top = max(top, z[j]) }
                    var sum = 0.0
                    for j in 0..<k { sum += Foundation.exp(z[j] - top) }
                    py += Foundation.exp(z[y] - top) / sum
                }
                total -= Foundation.log(max(py / Double(s), Metrics.probabilityEpsilon))
            }
            return n == 0 ? 0 : total / Double(n)
        }

        /// ECE (15 bins, top label) of the tempered predictive mean; with `sigmoidOutputs`, every
        /// (voxel, region) pair is one binary prediction (label = in the region or not).
        public func ece(temperature t: Double) -> Double {
            var bins = CalibrationBins(bins: 15)
            if sigmoidOutputs {
                let m = mean(temperature: t), n = voxels
                for j in 0..<classes {
                    let p = Tensor(shape: [2, n, 1, 1])
                    for v in 0..<n { p.data[n + v] = m.data[j * n + v]; p.data[v] = 1 - m.data[j * n + v] }
                    bins.add(probabilities: p, truth: truth.map { $0 & (1 << j) != 0 ? 1 : 0 }, include: nil)
                }
                return bins.ece ?? 0
            }
            bins.add(probabilities: mean(temperature: t).reshaped([classes, voxels, 1, 1]), truth: truth, include: nil)
            return bins.ece ?? 0
        }
    }

    /// The temperature minimising the NLL of `samples`' predictive mean.
    public static func fit(_ samples: Samples) -> Double {
        precondition(samples.voxels > 0, "TemperatureScaling.fit: no voxels")
        var a = Foundation.log(range.lowerBound), b = Foundation.log(range.upperBound)
        let g = (Foundation.sqrt(5.0) - 1) / 2
        var c = b - g * (b - a), d = a + g * (b - a)
        var fc = samples.nll(temperature: Foundation.exp(c)), fd = samples.nll(temperature: Foundation.exp(d))
        for _ in 0..<48 {
            if fc < fd { b = d; d = c; fd = fc; c = b - g * (b - a); fc = samples.nll(temperature: Foundation.exp(c)) } else { a = c; c = d; fc = fd; d = a + g * (b - a); fd = samples.nll(temperature: Foundation.exp(d)) }
        }
        return Foundation.exp((a + b) / 2)
    }
}
