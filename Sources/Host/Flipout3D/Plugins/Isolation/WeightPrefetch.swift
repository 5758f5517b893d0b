// A training step's weight draws and KL values from isolated plugins, for every layer in one round trip per child.

/// Before a training step's forward pass, every Bayesian layer's posterior center and sample
/// (and, for an isolated prior with an analytic KL, the per-weight KL values) are known: they
/// depend only on the parameters, the seed and the step. For isolated plugins this posts all of
/// them and collects them in ONE round trip per child, instead of one per layer for the draw and
/// one per layer for the KL (22 at the default `train --data` configuration). The layers' forward
/// passes then use the draws (`FlipoutConv3D.remember`), and `kl` the values, with the same bits
/// as drawing and computing them there. In-process plugins are untouched (a no-op).
///
/// A failure in a posted call (status, a dying, hanging or sandbox-stopped child) names plugin
/// file, family, function and parameter point, as the layer's own call would; a non-finite
/// center, sample or KL is caught by the same checks, naming the layer. Nothing is written
/// before the optimizer, so the run folder keeps its last checkpoint.
public enum WeightPrefetch {
    /// The training step's hook: draws ahead for the Flipout layers of `model` (a UNet).
    public static func draw(_ model: AnyObject, _ ctx: StepContext) throws {
        guard let unet = model as? UNet else { return }
        try draw(unet.layers.compactMap { $0 as? FlipoutConv3D }, ctx)
    }

    /// Posts every layer's draw (and KL values) for step `ctx`, collects them, and checks them.
    static func draw(_ layers: [FlipoutConv3D], _ ctx: StepContext) throws {
        guard layers.contains(where: { $0.weights.posterior.isolatedPlugin != nil || $0.weights.prior.isolatedPlugin != nil }) else { return }
        // Whether the KL can be posted is asked before anything is posted (its first answer is a call).
        let klPosted = layers.map { ctx.mode == .sample && $0.weights.canPostKL }
        var draws: [(FlipoutConv3D, FlipoutConv3D.PrefetchedDraw)] = []
        try StepProfile.measure(.flipoutSampling) {
            for (layer, kl) in zip(layers, klPosted) {
                if let d = try layer.postPrefetch(ctx) { draws.append((layer, d)) }
                if kl { try layer.weights.postKL() }
            }
            do { try PostedPluginCalls.flushAll() } catch let e as PluginCallError {
                throw LayerError.pluginFailed("\(e) (drawn with the other Bayesian layers' weights of the step, before its forward pass). "
                    + (e.isProcessFailure ? "The run folder keeps the checkpoint of the last finished epoch (--resume continues from it)."
                                          : "Check the layers' prior and posterior parameters, or lower the learning rate."))
            } catch let f as PluginProcessFailure {
                throw LayerError.pluginFailed("an isolated plugin failed while drawing the step's weights: \(f). The run folder keeps the checkpoint of the last finished epoch (--resume continues from it).")
            }
            for (layer, d) in draws {
                try layer.weights.checkDraw(center: d.center.data, sample: d.sample.data)
                layer.remember(d)
            }
        }
        for (layer, kl) in zip(layers, klPosted) where kl { layer.weights.markKLPrefetched() }
    }
}
