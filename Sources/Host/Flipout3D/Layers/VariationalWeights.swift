// A posterior over E weights and its prior, both plugins: parameters, sampling, KL and their gradients.
import Dispatch

/// How a layer's KL(q || p) is computed.
public enum KLMode: Equatable, Sendable, CustomStringConvertible {
    /// The prior's analytic KL for the posterior's family (falls back to Monte Carlo if absent).
    case automatic(samples: Int)
    /// Always Monte Carlo: mean over K samples of log q(w) - log p(w).
    case monteCarlo(samples: Int)
    public var samples: Int { switch self { case .automatic(let k), .monteCarlo(let k): return k } }
    public var description: String {
        switch self {
        case .automatic(let k): return "analytic if available, else Monte Carlo (K=\(k))"
        case .monteCarlo(let k): return "Monte Carlo (K=\(k))"
        }
    }
}

/// The variational posterior q(w | theta) over `count` weights, and the prior p(w | phi) with
/// broadcast parameters. Parameters are stored unconstrained (what Adam updates); the plugins see
/// constrained values (`ParameterTransform`). Gradients ADD into `gradients` / `priorGradients`.
public final class VariationalWeights {
    public let name: String
    public let count: Int
    public let posterior: Distribution
    public let prior: Distribution
    /// Unconstrained posterior parameters, one tensor of `count` per slot.
    public let parameters: [Tensor]
    public let gradients: [Tensor]
    /// Unconstrained prior parameters, one scalar per prior slot (broadcast to all weights).
    public let priorParameters: Tensor
    public let priorGradients: Tensor
    public var learnPrior: Bool
    public let klMode: KLMode
    /// Counts `refresh()` calls: a draw or KL value computed at one generation is stale at the next.
    public private(set) var generation = 0
    /// Constrained views, refreshed by `refresh()`.
    private let constrained: [Tensor]
    private let priorConstrained: Tensor

    /// - Parameters:
    ///   - priorValues: constrained prior parameter values by slot name (defaults from the plugin).
    ///   - locationInitStd: if set, posterior parameters with the location role start
    ///     N(0, locationInitStd^2) instead of the plugin's jitter, e.g. He-normal sqrt(2 / fan_in)
    ///     so a Bayesian network starts with the activation scale of a deterministic one. A location
    ///     with several slots (mixture components) shares that draw and adds the plugin's
    ///     init_jitter per slot.
    public init(name: String, count: Int, posterior: Distribution, prior: Distribution,
                priorValues: [String: Float] = [:], learnPrior: Bool = false,
                klMode: KLMode = .automatic(samples: 1), locationInitStd: Float? = nil, initStream: inout RandomStream) throws {
        guard posterior.family.canSample else {
            throw LayerError.invalidConfiguration("\(name): \(posterior.family.id) cannot be a posterior: it does not declare the sample capability. Use it as a prior, or choose a posterior such as org.flipout3d.normal.")
        }
        self.name = name
        self.count = count
        self.posterior = posterior
        self.prior = prior
        self.learnPrior = learnPrior
        self.klMode = klMode
        parameters = posterior.slots.map { _ in Tensor(shape: [count]) }
        gradients = posterior.slots.map { _ in Tensor(shape: [count]) }
        constrained = posterior.slots.map { _ in Tensor(shape: [count]) }
        priorParameters = Tensor(shape: [prior.slots.count])
        priorGradients = Tensor(shape: [prior.slots.count])
        priorConstrained = Tensor(shape: [prior.slots.count])
        for key in priorValues.keys where !prior.slots.contains(where: { $0.name == key }) {
            throw LayerError.invalidConfiguration("\(name): the prior \(prior.family.id) has no parameter \"\(key)\"; it has \(prior.slots.map(\.name).joined(separator: ", ")).")
        }
        for (k, slot) in prior.slots.enumerated() {
            let v = priorValues[slot.name] ?? slot.parameter.priorValue
            guard slot.parameter.transform.accepts(v) else {
                throw LayerError.invalidConfiguration("\(name): prior parameter \(slot.name) = \(v) is outside its range (\(slot.parameter.transform) parameter).")
            }
            priorParameters[k] = slot.parameter.transform.inverse(v)
        }
        // Posterior init: unconstrained default plus N(0, jitter) noise, per slot. A location with
        // several slots (mixture components) shares ONE draw per weight (N(0, locationInitStd^2)),
        // and each component adds only its own N(0, initJitter^2) offset: independent draws would
        // start the components ~sqrt(2) locationInitStd apart, so every sampled network would be a
        // random mix of unrelated networks (docs/setups.md, "Gaussian mixture").
        var sharedLocation: [String: Tensor] = [:]
        for (k, slot) in posterior.slots.enumerated() {
            let base = slot.parameter.transform.inverse(slot.parameter.defaultValue)
            let p = parameters[k]
            guard let initStd = locationInitStd, Self.isLocation(slot.parameter) else {
                initStream.fillNormal(p.data, count: count)
                for i in 0..<count { p.data[i] = base + slot.parameter.initJitter * p.data[i] }
                continue
            }
            let components = posterior.slots.filter { $0.parameter.name == slot.parameter.name }.count
            if components == 1 {
                initStream.fillNormal(p.data, count: count)
                for i in 0..<count { p.data[i] = base + initStd * p.data[i] }
                continue
            }
            let shared: Tensor
            if let s = sharedLocation[slot.parameter.name] { shared = s } else {
                shared = Tensor(shape: [count])
                initStream.fillNormal(shared.data, count: count)
                sharedLocation[slot.parameter.name] = shared
            }
            initStream.fillNormal(p.data, count: count)
            for i in 0..<count { p.data[i] = base + initStd * shared[i] + slot.parameter.initJitter * p.data[i] }
        }
        refresh()
    }

    /// Whether a posterior parameter is the weight's location (what He-normal initialisation sets):
    /// its declared role (ABI 1.1; a 1.0 plugin's identity-transformed "loc" reads as one).
    static func isLocation(_ p: ParameterInfo) -> Bool { p.role == .location }

    /// Recompute constrained values after the unconstrained parameters changed.
    /// Elementwise, split over the kernels' threads (the same bits for every thread count).
    public func refresh() {
        klPrefetched = false
        generation &+= 1
        for (k, slot) in posterior.slots.enumerated() {
            let t = slot.parameter.transform
            parameters[k].withUnsafeValues { uv in constrained[k].withUnsafeMutableValues { cv in
                let (u, c) = (uv.baseAddress!, cv.baseAddress!)
                Parallel.ranges(count) { begin, end in for i in begin..<end { c[i] = t.forward(u[i]) } }
            } }
        }
        for (k, slot) in prior.slots.enumerated() { priorConstrained[k] = slot.parameter.transform.forward(priorParameters[k]) }
    }

    public func zeroGradients() {
        for g in gradients { g.zero() }
        priorGradients.zero()
    }

    /// Constrained prior values by slot name (for reports).
    public var priorValues: [(String, Float)] { prior.slots.enumerated().map { ($0.element.name, priorConstrained[$0.offset]) } }

    var qIn: [InArray] { constrained.map { InArray($0.data, stride: 1) } }
    var pIn: [InArray] { (0..<prior.slots.count).map { InArray(priorConstrained.data + $0, stride: 0) } }
    /// Gradients with respect to CONSTRAINED values, accumulated here and chained by `finishBackward`.
    private lazy var constrainedGradients: [Tensor] = posterior.slots.map { _ in Tensor(shape: [count]) }
    private lazy var priorConstrainedGradients = Tensor(shape: [prior.slots.count])
    var qGrad: [OutArray] { constrainedGradients.map { OutArray($0.data, stride: 1) } }
    var pGrad: [OutArray] {
        (0..<prior.slots.count).map { learnPrior ? OutArray(priorConstrainedGradients.data + $0, stride: 0) : .skip }
    }

    // MARK: Posterior center and samples

    // MARK: Plugin calls split over threads

    /// Scalars per sub-range of a split plugin call: fixed, so a split call gives the same bits
    /// for every thread count (the ABI lets the host split n: [reentrant] functions).
    static let chunk = 4096

    /// Runs body(offset, n) over [0, count) in sub-ranges of `chunk` scalars, over the kernels'
    /// threads when every plugin involved runs in-process (an isolated plugin's child takes one
    /// call at a time: then one call over everything). The first failing sub-range's error (lowest
    /// offset) is thrown. Stride-0 gradient cells must be private per sub-range (`splitCells`).
    func split(_ plugins: [Distribution], _ body: (_ offset: Int, _ n: Int) throws -> Void) throws {
        let parts = (count + Self.chunk - 1) / Self.chunk
        guard parts > 1, plugins.allSatisfy({ $0.family.remote == nil }) else { return try body(0, count) }
        var errors = [Error?](repeating: nil, count: parts)
        errors.withUnsafeMutableBufferPointer { es in
            let e = es.baseAddress!
            Self.eachSubRange(parts) { p in
                let offset = p * Self.chunk
                let n = min(Self.chunk, count - offset)
                do { try body(offset, n) } catch var call as PluginCallError {
                    // The call saw a sub-range: say where it lies among the layer's weights.
                    call.point += call.point.isEmpty ? "" : ","
                    call.point += " in the sub-range of weights \(offset)..<\(offset + n) of \(count)"
                    e[p] = call
                } catch { e[p] = error }
            }
        }
        if let first = errors.compactMap({ $0 }).first { throw first }
    }

    /// Runs body(p) for the sub-ranges p in 0..<parts: on the calling thread with one kernel
    /// thread, else each sub-range handed out by GCD as threads come free. A plugin scalar costs
    /// tens of flops, so a sub-range is worth a fork; and one sub-range per hand-out keeps the
    /// wait for a thread the OS deschedules (a oneDNN OpenMP worker still spinning on the other
    /// core after a convolution, or another process) to one sub-range, not a quarter of the pass.
    static func eachSubRange(_ parts: Int, _ body: (Int) -> Void) {
        guard NativeConv3D.threads > 1, parts > 1 else { for p in 0..<parts { body(p) }; return }
        DispatchQueue.concurrentPerform(iterations: parts, execute: body)
    }

    static func offsetIn(_ a: [InArray], _ offset: Int) -> [InArray] { a.map { InArray($0.data + offset * $0.stride, stride: $0.stride) } }

    /// A VJP split like `split`: body(offset, n, outs) gets each gradient output group moved to its
    /// sub-range (stride-1 arrays offset; stride-0 cells, sums over all scalars, replaced by cells
    /// private to the sub-range, added into the real cells in sub-range order afterwards).
    func splitVJP(_ plugins: [Distribution], _ outs: [[OutArray]],
                  _ body: (_ offset: Int, _ n: Int, _ outs: [[OutArray]]) throws -> Void) throws {
        let parts = (count + Self.chunk - 1) / Self.chunk
        guard parts > 1, plugins.allSatisfy({ $0.family.remote == nil }) else { return try body(0, count, outs) }
        let slots = outs.reduce(0) { $0 + $1.count }
        var cells = [Float](repeating: 0, count: parts * slots)
        try cells.withUnsafeMutableBufferPointer { cb in
            let c = cb.baseAddress!
            try split(plugins) { offset, n in
                var k = 0
                let moved = outs.map { group in group.map { a -> OutArray in
                    defer { k += 1 }
                    guard let d = a.data else { return a }
                    return a.stride == 0 ? OutArray(c + (offset / Self.chunk) * slots + k, stride: 0) : OutArray(d + offset * a.stride, stride: a.stride)
                } }
                try body(offset, n, moved)
            }
        }
        for (k, a) in outs.flatMap({ $0 }).enumerated() where a.stride == 0 {
            guard let d = a.data else { continue }
            for p in 0..<parts { d[0] += cells[p * slots + k] }
        }
    }

    /// out = center(theta). (count)
    public func center(into out: UnsafeMutablePointer<Float>) throws {
        try inLayer { try split([posterior]) { o, n in try posterior.center(n: n, params: Self.offsetIn(qIn, o), out: out + o) } }
    }

    /// Noise per sample of all weights: (normals, uniforms) counts.
    public var noisePerSample: (normals: Int, uniforms: Int) { (posterior.normalsPerScalar * count, posterior.uniformsPerScalar * count) }

    /// Draws the noise for one sample of all weights: the stream's normals, then its uniforms
    /// (each fill starting on a fresh block). Filled in `chunk`-scalar sub-ranges over the
    /// kernels' threads, with the bits of one sequential fill (`fillNoise`).
    public func drawNoise(_ stream: inout RandomStream) -> Noise {
        let noise = Noise(uninitializedNormals: noisePerSample.normals, uniforms: noisePerSample.uniforms)
        let start = stream, parts = (count + Self.chunk - 1) / Self.chunk
        // Box-Muller costs tens of flops per normal: sub-ranges as plugin calls.
        Self.eachSubRange(parts) { p in fillNoise(noise, from: start, offset: p * Self.chunk, n: min(Self.chunk, count - p * Self.chunk)) }
        stream.seek(toBlock: start.block &+ UInt64(noise.blocks))
        return noise
    }

    /// Writes the noise of scalars offset..<offset+n exactly as one sequential `drawNoise` from
    /// `start` writes it: Philox blocks are addressed by position and give 4 normals or 4
    /// uniforms each, so a sub-range starting on a multiple of 4 values starts on a block.
    func fillNoise(_ noise: Noise, from start: RandomStream, offset: Int, n: Int) {
        let (kn, ku) = (posterior.normalsPerScalar, posterior.uniformsPerScalar)
        precondition((offset * kn) % 4 == 0 && (offset * ku) % 4 == 0, "\(name): noise sub-range at \(offset) does not start on a random block")
        if kn > 0 {
            var s = start
            s.seek(toBlock: start.block &+ UInt64(offset * kn / 4))
            noise.normals.withUnsafeMutableValues { s.fillNormal($0.baseAddress! + offset * kn, count: n * kn) }
        }
        if ku > 0 {
            var s = start
            s.seek(toBlock: start.block &+ UInt64(Noise.blocks(noise.normals.count) + offset * ku / 4))
            noise.uniforms.withUnsafeMutableValues { s.fillUniform($0.baseAddress! + offset * ku, count: n * ku) }
        }
    }

    /// One sample of all weights and the posterior center, in ONE pass split like `split`: per
    /// sub-range its noise (as `drawNoise` from `stream`), the center, the sample, then
    /// `each(offset, n)` (e.g. Flipout's kernel assembly of those weights, still in cache). The
    /// same bits as drawNoise, center and sample called in turn, with one fork/join instead of
    /// four passes. Returns the noise (for `sampleBackward`); advances `stream` as drawNoise does.
    public func drawCenterAndSample(_ stream: inout RandomStream, center: UnsafeMutablePointer<Float>, sample: UnsafeMutablePointer<Float>,
                                    each: (_ offset: Int, _ n: Int) -> Void = { _, _ in }) throws -> Noise {
        let noise = Noise(uninitializedNormals: noisePerSample.normals, uniforms: noisePerSample.uniforms)
        let start = stream, q = qIn
        let (nz, u) = (noise.normalsPointer, noise.uniformsPointer), (kn, ku) = (posterior.normalsPerScalar, posterior.uniformsPerScalar)
        try inLayer { try split([posterior]) { o, n in
            fillNoise(noise, from: start, offset: o, n: n)
            try posterior.centerAndSample(n: n, params: Self.offsetIn(q, o), normals: nz.map { $0 + o * kn }, uniforms: u.map { $0 + o * ku }, center: center + o, sample: sample + o)
            each(o, n)
        } }
        stream.seek(toBlock: start.block &+ UInt64(noise.blocks))
        return noise
    }

    /// Whether the posterior's center and sample can be drawn ahead by `postDraw` (an isolated
    /// posterior, which takes one call over all weights).
    var canPostDraw: Bool { posterior.canPostCenterAndSample }

    /// `drawCenterAndSample` without waiting (`WeightPrefetch`): the noise is drawn now, center
    /// and sample are posted to the posterior's child and written when its posted calls are
    /// collected; then `checkDraw`. The same bits as `drawCenterAndSample` of an isolated
    /// posterior (one call over all weights), whose `each` would then run over all weights.
    func postDraw(_ stream: inout RandomStream, center: UnsafeMutablePointer<Float>, sample: UnsafeMutablePointer<Float>) throws -> Noise {
        let noise = drawNoise(&stream)
        try inLayer { try posterior.postCenterAndSample(n: count, params: qIn, normals: noise.normalsPointer, uniforms: noise.uniformsPointer, center: center, sample: sample) }
        return noise
    }

    /// The checks of a collected `postDraw`.
    func checkDraw(center: UnsafePointer<Float>, sample: UnsafePointer<Float>) throws {
        try inLayer { try posterior.checkCenterAndSample(n: count, params: qIn, center: center, sample: sample) }
    }

    /// Whether `postKL` can post: an isolated prior with an analytic KL for this posterior
    /// (which `klIsAnalytic` asks once, synchronously).
    var canPostKL: Bool {
        guard prior.isolatedPlugin != nil, count > 0 else { return false }
        return klIsAnalytic
    }

    /// Posts the analytic KL's per-weight values to the prior's child (`WeightPrefetch`: with the
    /// step's weight draws, one round trip): the next `kl` uses them instead of calling the
    /// prior's `kl` itself, unless the parameters change first (`refresh`). Call
    /// `markKLPrefetched` once the posted calls are collected.
    func postKL() throws {
        klPrefetched = false
        try inLayer { try prior.postKL(n: count, posterior: posterior, qParams: qIn, params: pIn, out: klValues.data) }
    }

    func markKLPrefetched() { klPrefetched = true }

    /// Whether `klValues` holds the KL of the current parameters, computed by a posted `kl`
    /// (`postKL`) and not yet checked; cleared by `refresh`.
    private var klPrefetched = false

    /// The center's and the sample's VJPs in ONE pass split like `splitVJP`: per sub-range,
    /// `fold(offset, n, gCenter, gSample)` writes dL/d center and dL/d sample of those weights
    /// into sub-range scratch (e.g. Flipout's fold of the per-example kernel gradients), then
    /// both VJPs add into the gradients, center first: the same bits as centerBackward(gCenter)
    /// then sampleBackward(noise, x, gSample) over whole arrays, without the two whole-layer
    /// gradient buffers. x is the sample drawn with `noise`.
    public func centerAndSampleBackward(_ noise: Noise, x: UnsafePointer<Float>,
                                        fold: (_ offset: Int, _ n: Int, _ gCenter: UnsafeMutablePointer<Float>, _ gSample: UnsafeMutablePointer<Float>) -> Void) throws {
        let (nz, u) = (noise.normalsPointer, noise.uniformsPointer), (kn, ku) = (posterior.normalsPerScalar, posterior.uniformsPerScalar)
        let q = qIn
        try inLayer { try splitVJP([posterior], [qGrad]) { o, n, outs in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * max(n, 1))
            defer { scratch.deallocate() }
            let (gc, gs) = (scratch, scratch + n)
            fold(o, n, gc, gs)
            try posterior.centerVJP(n: n, params: Self.offsetIn(q, o), g: gc, gradParams: outs[0])
            try posterior.sampleVJP(n: n, params: Self.offsetIn(q, o), normals: nz.map { $0 + o * kn }, uniforms: u.map { $0 + o * ku },
                                    x: x + o, g: gs, gradParams: outs[0])
        } }
    }

    /// out = T(noise; theta). (count)
    public func sample(_ noise: Noise, into out: UnsafeMutablePointer<Float>) throws {
        let (nz, u) = (noise.normalsPointer, noise.uniformsPointer), (kn, ku) = (posterior.normalsPerScalar, posterior.uniformsPerScalar)
        try inLayer { try split([posterior]) { o, n in
            try posterior.sample(n: n, params: Self.offsetIn(qIn, o), normals: nz.map { $0 + o * kn }, uniforms: u.map { $0 + o * ku }, out: out + o)
        } }
    }

    /// Backward of `center`: g = dL/d center.
    public func centerBackward(_ g: UnsafePointer<Float>) throws {
        try inLayer { try splitVJP([posterior], [qGrad]) { o, n, outs in
            try posterior.centerVJP(n: n, params: Self.offsetIn(qIn, o), g: g + o, gradParams: outs[0])
        } }
    }

    /// Backward of `sample`: x is the sample drawn with `noise`, g = dL/dx.
    public func sampleBackward(_ noise: Noise, x: UnsafePointer<Float>, g: UnsafePointer<Float>) throws {
        let (nz, u) = (noise.normalsPointer, noise.uniformsPointer), (kn, ku) = (posterior.normalsPerScalar, posterior.uniformsPerScalar)
        try inLayer { try splitVJP([posterior], [qGrad]) { o, n, outs in
            try posterior.sampleVJP(n: n, params: Self.offsetIn(qIn, o), normals: nz.map { $0 + o * kn }, uniforms: u.map { $0 + o * ku },
                                    x: x + o, g: g + o, gradParams: outs[0])
        } }
    }

    /// Runs plugin calls, naming this layer in any plugin failure (a NaN from a density, a domain error).
    func inLayer<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as PluginCallError {
            throw LayerError.pluginFailed("layer \(name): \(e). " + (e.isProcessFailure ? "The run folder keeps the checkpoint of the last finished epoch (--resume continues from it)." : "Check this layer's prior and posterior parameters, or lower the learning rate."))
        }
    }

    // MARK: KL(q || p), summed over the weights

    /// Whether KL is analytic for this posterior/prior pair under `klMode`: the prior lists the
    /// posterior's family in kl_families and its `kl` does not answer UNSUPPORTED for this pair
    /// (asked once, on one weight). The header promises a Monte Carlo fallback otherwise.
    public private(set) lazy var klIsAnalytic: Bool = {
        guard case .automatic = klMode, prior.hasAnalyticKL(from: posterior.family), count > 0 else { return false }
        var out: Float = 0
        do { try prior.kl(n: 1, posterior: posterior, qParams: qIn, params: pIn, out: &out); return true }
        catch let e as PluginCallError where e.isUnsupported { return false }
        catch { return true }  // a real failure is reported by the first kl()
    }()

    /// The analytic KL's per-weight values and its VJP seed (every element the gradient scale),
    /// kept across steps: the seed is refilled only when the scale changes.
    private lazy var klValues = Tensor(uninitializedShape: [count])
    private lazy var klSeed = Tensor(shape: [count])

    /// KL(q || p) summed over all weights; with `scale` != 0 also adds scale * dKL into the gradients.
    /// Monte Carlo draws its K samples from `stream`.
    @discardableResult
    public func kl(gradientScale scale: Float, stream: inout RandomStream) throws -> Double {
        try inLayer { try klUnwrapped(gradientScale: scale, stream: &stream) }
    }

    private func klUnwrapped(gradientScale scale: Float, stream: inout RandomStream) throws -> Double {
        if klIsAnalytic {
            do {
                let out = klValues, (q, p) = (qIn, pIn)
                // Values already computed with the step's weight draws (`postKL`): checked as
                // the prior's own kl call checks them.
                let prefetched = klPrefetched
                if prefetched {
                    try prior.checkKL(n: count, posterior: posterior, qParams: q, params: p, out: out.data)
                }
                if scale == 0 {
                    if !prefetched {
                        try split([prior, posterior]) { o, n in
                            try prior.kl(n: n, posterior: posterior, qParams: Self.offsetIn(q, o), params: Self.offsetIn(p, o), out: out.data + o)
                        }
                    }
                } else {
                    // The values and the VJP of each sub-range in one pass (its parameters still in cache).
                    let g = klSeed
                    if g[0] != scale { g.fill(scale) }
                    try splitVJP([prior, posterior], [qGrad, pGrad]) { o, n, outs in
                        let (qo, po) = (Self.offsetIn(q, o), Self.offsetIn(p, o))
                        if !prefetched { try prior.kl(n: n, posterior: posterior, qParams: qo, params: po, out: out.data + o) }
                        try prior.klVJP(n: n, posterior: posterior, qParams: qo, params: po, g: g.data + o, gradQ: outs[0], gradParams: outs[1])
                    }
                }
                return out.buffer.reduce(0.0) { $0 + Double($1) }
            } catch let e as PluginCallError where e.isUnsupported {
                // UNSUPPORTED is not an error (flipout_plugin.h): fall back to Monte Carlo below.
            }
        }
        let k = max(1, klMode.samples)
        var total = 0.0
        let w = Tensor(shape: [count]), lq = Tensor(shape: [count]), lp = Tensor(shape: [count])
        let g = Tensor(shape: [count]), gx = Tensor(shape: [count])
        for _ in 0..<k {
            let noise = drawNoise(&stream)
            try sample(noise, into: w.data)
            try posterior.logProb(n: count, params: qIn, x: w.data, out: lq.data)
            try prior.logProb(n: count, params: pIn, x: w.data, out: lp.data)
            for i in 0..<count {
                let d = Double(lq[i]) - Double(lp[i])
                guard d.isFinite else {
                    throw LayerError.nonFinite("\(name): Monte Carlo KL is \(d) at weight \(i): the sample \(w[i]) has log q = \(lq[i]), log p = \(lp[i]) (outside the prior's support?). For positive posteriors use a positive prior such as org.flipout3d.gamma.")
                }
                total += d
            }
            if scale != 0 {
                // d/dtheta [log q(w(theta); theta) - log p(w(theta))]
                g.fill(scale / Float(k)); gx.zero()
                try posterior.logProbVJP(n: count, params: qIn, x: w.data, g: g.data, gradX: gx.data, gradParams: qGrad)
                g.fill(-scale / Float(k))
                try prior.logProbVJP(n: count, params: pIn, x: w.data, g: g.data, gradX: gx.data, gradParams: pGrad)
                try sampleBackward(noise, x: w.data, g: gx.data)
            }
        }
        return total / Double(k)
    }

    /// Chain the constrained-value gradients through the transforms into `gradients`.
    public func finishBackward() {
        for (k, slot) in posterior.slots.enumerated() {
            let t = slot.parameter.transform
            // Elementwise, split over the kernels' threads (the same bits for every thread count).
            parameters[k].withUnsafeValues { uv in constrainedGradients[k].withUnsafeMutableValues { gcv in gradients[k].withUnsafeMutableValues { guv in
                let (u, gc, gu) = (uv.baseAddress!, gcv.baseAddress!, guv.baseAddress!)
                Parallel.ranges(count) { begin, end in
                    for i in begin..<end { gu[i] += gc[i] * t.derivative(u[i]); gc[i] = 0 }
                }
            } } }
        }
        if learnPrior {
            for (k, slot) in prior.slots.enumerated() {
                priorGradients[k] += priorConstrainedGradients[k] * slot.parameter.transform.derivative(priorParameters[k])
            }
        }
        priorConstrainedGradients.zero()
    }
}

/// Noise for one sample of a set of weights: standard normals and uniforms, scalar-major.
public struct Noise {
    public let normals: Tensor
    public let uniforms: Tensor
    public init(normals: Int, uniforms: Int) {
        self.normals = Tensor(shape: [normals])
        self.uniforms = Tensor(shape: [uniforms])
    }
    /// Noise whose values are written next (by `VariationalWeights.fillNoise`).
    init(uninitializedNormals normals: Int, uniforms: Int) {
        self.normals = Tensor(uninitializedShape: [normals])
        self.uniforms = Tensor(uninitializedShape: [uniforms])
    }
    /// Random blocks one sequential fill of `values` normals or uniforms takes (4 per block).
    static func blocks(_ values: Int) -> Int { (values + 3) / 4 }
    /// Random blocks a whole draw takes: its normals, then its uniforms.
    var blocks: Int { Self.blocks(normals.count) + Self.blocks(uniforms.count) }
    var normalsPointer: UnsafePointer<Float>? { normals.count > 0 ? UnsafePointer(normals.data) : nil }
    var uniformsPointer: UnsafePointer<Float>? { uniforms.count > 0 ? UnsafePointer(uniforms.data) : nil }
}

/// A layer was configured in a way that cannot work, or produced a non-finite value.
public enum LayerError: Error, CustomStringConvertible {
    case invalidConfiguration(String)
    case nonFinite(String)
    case pluginFailed(String)
    public var description: String {
        switch self {
        case .invalidConfiguration(let m), .nonFinite(let m), .pluginFailed(let m): return m
        }
    }
}
