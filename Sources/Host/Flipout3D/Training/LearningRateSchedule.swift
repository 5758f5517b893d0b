// The learning rate per epoch: constant, or nnU-Net's polynomial decay lr · (1 − epoch/epochs)^0.9.
import Foundation

public enum LearningRateSchedule: String, Codable, Sendable, CaseIterable {
    /// The base rate every epoch (runs recorded before schedules existed).
    case constant
    /// nnU-Net's PolyLRScheduler: base · (1 − epoch / epochs)^0.9 for epoch 0..<epochs (0-based),
    /// so the first epoch trains at the base rate and the last at base · (1/epochs)^0.9.
    case polynomial

    public static let polynomialExponent = 0.9

    /// The rate of `epoch` (0-based) in a run of `epochs` epochs.
    public func rate(base: Float, epoch: Int, epochs: Int) -> Float {
        switch self {
        case .constant: return base
        case .polynomial:
            guard epochs > 0 else { return base }
            let progress = min(max(Double(epoch) / Double(epochs), 0), 1)
            return Float(Double(base) * pow(1 - progress, Self.polynomialExponent))
        }
    }
}
