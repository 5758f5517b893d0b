// Everything a training run needs besides the model: data, optimizer, ELBO weighting, seed.

public struct TrainingConfig: Codable, Equatable, Sendable {
    public var seed: UInt64 = 1
    public var epochs: Int = 30
    public var batchSize: Int = 4
    public var learningRate: Float = 3e-3
    /// Weight of the KL term; annealed linearly from 0 over `betaAnnealEpochs` epochs (0: no annealing).
    public var beta: Double = 1
    public var betaAnnealEpochs: Int = 0
    /// Monte Carlo forward passes per volume when evaluating.
    public var evaluationSamples: Int = 8
    /// Synthetic data: volume side and volumes per split.
    public var volumeSize: Int = 32
    public var trainVolumes: Int = 48
    public var validationVolumes: Int = 8
    public var testVolumes: Int = 12
    public var oodVolumes: Int = 12
    /// "synthetic" (the embedded default) or "colin27" (Colin27 T1 brain extraction, 2 mm).
    public var dataset: String = "synthetic"

    public init() {}

    /// beta for an epoch (0-based) under linear annealing.
    public func beta(epoch: Int) -> Double {
        betaAnnealEpochs > 0 ? beta * min(1, Double(epoch + 1) / Double(betaAnnealEpochs)) : beta
    }
}
