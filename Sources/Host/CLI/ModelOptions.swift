// The options that choose a model: prior, posterior, estimator, KL; shared by train and bench.
import ArgumentParser
import Flipout3D

struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Posterior family id (or short name) of every Bayesian layer.", valueName: "id"))
    var posterior = "org.flipout3d.normal"

    @Option(name: .customLong("posterior-hyper"), help: ArgumentHelp("Posterior hyperparameter (repeatable), e.g. components=3.", valueName: "name=value"))
    var posteriorHyper: [String] = []

    @Option(help: ArgumentHelp("Prior family id (or short name).", valueName: "id"))
    var prior = "org.flipout3d.normal"

    @Option(name: .customLong("prior-param"), help: ArgumentHelp("Prior parameter value (repeatable), constrained, e.g. scale=0.1.", valueName: "name=value"))
    var priorParam: [String] = []

    @Option(name: .customLong("prior-hyper"), help: ArgumentHelp("Prior hyperparameter (repeatable).", valueName: "name=value"))
    var priorHyper: [String] = []

    @Option(help: "Gradient estimator: flipout, reparam, per-example, or auto (flipout for symmetric posteriors, else per-example).")
    var estimator: Estimator = .auto

    @Option(name: .customLong("custom-layers"), help: "Layers that take --posterior/--prior: all, or first (the others Normal/Normal), e.g. a non-negative first-layer filter bank (default all; with a positive posterior such as Beta, first: the recipe of docs/positive-weights.md).")
    var customLayers: ModelConfig.CustomLayers?

    @Flag(name: .customLong("learn-prior"), help: "Learn the prior's parameters (empirical Bayes) through the KL's gradients.")
    var learnPrior = false

    @Option(name: .customLong("kl-samples"), help: "Samples for a Monte Carlo KL (used when the prior has no closed form for the posterior).")
    var klSamples = 1

    @Flag(name: .customLong("mc-kl"), help: "Use the Monte Carlo KL even when a closed form exists.")
    var monteCarloKL = false

    @Flag(help: "Train the same network with deterministic convolutions (the baseline).")
    var deterministic = false

    @Option(help: "Channels of the U-Net's first level (level l has width·2^l, capped at 128).")
    var width = 8

    @Option(help: "U-Net resolution levels; level l has width·2^l channels at 1/2^l of the patch size.")
    var levels = 3

    @Option(help: "U-Net normalisation after each convolution: instance (default) or none.")
    var norm: UNetConfig.Normalization = .instance

    @Option(name: .customLong("bayesian-layers"), help: ArgumentHelp("Which U-Net convolutions are Flipout layers: all, none, encoder, decoder, or last:N (the last N, head included); the others are deterministic.", valueName: "which"))
    var bayesianLayers: BayesianLayers = .all

    func config() throws -> ModelConfig {
        var c = ModelConfig()
        c.width = width
        c.bayesian = !deterministic
        c.estimator = estimator.rawValue
        c.posterior = posterior
        c.prior = prior
        c.posteriorHyperparameters = try KeyValue.dictionary(posteriorHyper, option: "--posterior-hyper")
        c.priorHyperparameters = try KeyValue.dictionary(priorHyper, option: "--prior-hyper")
        c.priorParameters = try KeyValue.dictionary(priorParam, option: "--prior-param").mapValues { Float($0) }
        c.learnPrior = learnPrior
        c.customLayers = customLayers ?? .all
        c.klSamples = klSamples
        c.forceMonteCarloKL = monteCarloKL
        return c
    }

    /// The U-Net's shape for C input channels and K classes (from the dataset's plan).
    func unet(inputChannels: Int, classCount: Int) -> UNetConfig {
        var u = UNetConfig()
        u.levels = levels; u.width = width; u.inputChannels = inputChannels; u.classCount = classCount
        u.normalization = norm; u.bayesianLayers = deterministic ? .none : bayesianLayers
        return u
    }

    func validate() throws {
        guard levels >= 1 && levels <= 6 else { throw ValidationError("--levels must be between 1 and 6.") }
        try validating { try config().validate() }
    }

    /// Every long option of this group (refused with --resume, which takes the model from the checkpoint).
    static let longNames = ["--posterior", "--posterior-hyper", "--prior", "--prior-param", "--prior-hyper", "--estimator",
                            "--custom-layers", "--learn-prior", "--kl-samples", "--mc-kl", "--deterministic", "--width",
                            "--levels", "--norm", "--bayesian-layers"]
}

extension Estimator: ExpressibleByArgument {}
extension ModelConfig.CustomLayers: ExpressibleByArgument {}
extension UNetConfig.Normalization: ExpressibleByArgument {}
extension BayesianLayers: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
    public static var defaultCompletionKind: CompletionKind { .list(["all", "none", "encoder", "decoder", "last:1", "last:2"]) }
}

/// Messages for the user, on stderr so stdout stays machine-readable.
func note(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

import Foundation
