// MOPED (Krishnan et al. 2020; bayesian-torch's dnn_to_bnn(moped_enable=True)): posterior means from a trained deterministic network, scales delta·|mean|.
import Foundation

/// Starts a Bayesian U-Net from a trained deterministic one of the same shape:
///
///     posterior location = w,   posterior scale = max(delta · |w|, minimumScale)
///
/// for every Flipout convolution (w the deterministic kernel of the same name), and copies biases,
/// deterministic convolutions and instance-norm parameters unchanged. bayesian-torch writes the
/// same scale as rho = log(expm1(delta·|w|) + 1e-20); we floor the scale at `minimumScale` instead,
/// so a zero weight keeps a finite unconstrained value. The posterior must have exactly one
/// parameter with the location role and one with the scale role (ABI 1.1 `parameter_roles`;
/// a 1.0 plugin's "loc" with identity transform counts as a location), e.g. Normal or Laplace.
/// Other posteriors are refused.
public enum MOPED {
    /// bayesian-torch's default `moped_delta` in dnn_to_bnn's examples is 0.5; its paper's
    /// experiments and our default use 0.1 (a tighter start around the deterministic solution).
    public static let defaultDelta = 0.1
    public static let minimumScale: Float = 1e-6

    public static func initialize(_ target: UNet, from source: UNet, delta: Double) throws {
        guard delta > 0 && delta.isFinite else { throw LayerError.invalidConfiguration("--moped-delta must be a positive number; got \(delta).") }
        guard target.layers.count == source.layers.count, target.shape.classCount == source.shape.classCount,
              target.shape.inputChannels == source.shape.inputChannels, target.shape.levels == source.shape.levels,
              target.shape.width == source.shape.width, target.shape.normalization == source.shape.normalization else {
            throw LayerError.invalidConfiguration("--init-from: the checkpoint's U-Net (\(source.shape.levels) levels, width \(source.shape.width), \(source.shape.inputChannels) channels, \(source.shape.classCount) classes, norm \(source.shape.normalization.rawValue)) differs from this one (\(target.shape.levels), \(target.shape.width), \(target.shape.inputChannels), \(target.shape.classCount), \(target.shape.normalization.rawValue)); pass the same --levels, --width and --norm.")
        }
        for (t, s) in zip(target.layers, source.layers) {
            guard let d = s as? DeterministicConv3D else {
                throw LayerError.invalidConfiguration("--init-from: layer \(s.name) of the checkpoint is Bayesian; MOPED starts from a deterministic network (train it with --deterministic).")
            }
            switch t {
            case let f as FlipoutConv3D:
                try setPosterior(f, mean: d.weight, delta: Float(delta))
                f.bias.data.update(from: d.bias.data, count: d.bias.count)
            case let e as DeterministicConv3D:
                e.weight.data.update(from: d.weight.data, count: d.weight.count)
                e.bias.data.update(from: d.bias.data, count: d.bias.count)
            default:
                preconditionFailure("MOPED: layer \(t.name) is neither a Flipout nor a deterministic convolution")
            }
        }
        for (t, s) in zip(target.norms, source.norms) {
            guard let t, let s else { continue }
            t.scale.data.update(from: s.scale.data, count: s.scale.count)
            t.shift.data.update(from: s.shift.data, count: s.shift.count)
        }
        target.parametersChanged()
    }

    static func setPosterior(_ layer: FlipoutConv3D, mean w: Tensor, delta: Float) throws {
        let weights = layer.weights, slots = weights.posterior.slots
        precondition(w.count == weights.count, "MOPED: \(layer.name) has \(weights.count) weights, the source \(w.count)")
        guard slots.count == 2,
              let loc = slots.firstIndex(where: { $0.parameter.role == .location }),
              let scale = slots.firstIndex(where: { $0.parameter.role == .scale }) else {
            throw LayerError.invalidConfiguration("--init-from: MOPED sets a posterior's location and scale, but \(weights.posterior.family.id) has parameters \(slots.map { "\($0.name) (\($0.parameter.role))" }.joined(separator: ", ")); use a location-scale posterior such as org.flipout3d.normal or org.flipout3d.laplace.")
        }
        let transform = slots[scale].parameter.transform
        let locations = weights.parameters[loc].data, scales = weights.parameters[scale].data
        for i in 0..<w.count {
            locations[i] = w.data[i]
            scales[i] = transform.inverse(max(delta * abs(w.data[i]), minimumScale))
        }
    }
}
