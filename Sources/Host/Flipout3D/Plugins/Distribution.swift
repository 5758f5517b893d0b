// A created distribution instance: typed calls into the plugin over whole buffers of n scalars.
import PluginABI
import FlipoutABI

/// One parameter slot of an input: element i is data[i * stride]; stride 0 broadcasts data[0].
public struct InArray {
    public var data: UnsafePointer<Float>
    public var stride: Int
    public init(_ data: UnsafePointer<Float>, stride: Int = 1) { self.data = data; self.stride = stride }
}

/// One gradient slot: the plugin ADDS into data[i * stride]; stride 0 accumulates the sum; nil skips.
public struct OutArray {
    public var data: UnsafeMutablePointer<Float>?
    public var stride: Int
    public init(_ data: UnsafeMutablePointer<Float>?, stride: Int = 1) { self.data = data; self.stride = stride }
    public static let skip = OutArray(nil, stride: 0)
}

/// A parameter slot after expanding repeated parameters (mixture components): "loc[2]".
public struct ParameterSlot: Sendable {
    public let name: String
    public let parameter: ParameterInfo
}

/// An instance of a family with fixed hyperparameters. Compute calls are reentrant; the
/// instance is destroyed with this object.
public final class Distribution: @unchecked Sendable {
    public let family: DistributionFamily
    public let hyperparameters: [Double]
    public let slots: [ParameterSlot]
    public let normalsPerScalar: Int
    public let uniformsPerScalar: Int
    private let instance: OpaquePointer
    private var fns: flipout_distribution { family.table }

    init(family: DistributionFamily, hyperparameters: [Double]) throws {
        self.family = family
        self.hyperparameters = hyperparameters
        var made: OpaquePointer?
        try Distribution.call(family.id, "create") { err in
            hyperparameters.withUnsafeBufferPointer { family.table.create(family.descriptor, $0.baseAddress, &made, err) }
        }
        guard let made else {
            throw PluginCallError(family: family.id, function: "create", status: Status.internalError.rawValue, message: "returned OK but no instance")
        }
        instance = made
        var slotCount: UInt32 = 0, normals: UInt32 = 0, uniforms: UInt32 = 0
        family.table.layout(made, &slotCount, &normals, &uniforms)
        func refuse(_ why: String) -> PluginLoadError {
            family.table.destroy(made)
            return PluginLoadError(.invalidDescriptor, file: family.file, "\(family.id): \(why)")
        }
        guard normals <= UInt32(HostLimits.noisePerScalar), uniforms <= UInt32(HostLimits.noisePerScalar), slotCount <= UInt32(HostLimits.slots) else {
            throw refuse("layout() reports \(slotCount) parameter slots, \(normals) normals and \(uniforms) uniforms per scalar; this host accepts at most \(HostLimits.slots) slots and \(HostLimits.noisePerScalar) noise values of each kind.")
        }
        let caps = family.capabilities
        guard caps.contains(.uniformNoise) == (uniforms > 0) else {
            throw refuse(caps.contains(.uniformNoise)
                ? "declares FLIPOUT_CAP_UNIFORM_NOISE, but layout() reports 0 uniforms per scalar. Report the uniforms sample reads, or drop the capability."
                : "layout() reports \(uniforms) uniforms per scalar but the family does not declare FLIPOUT_CAP_UNIFORM_NOISE. Declare it, or report 0.")
        }
        guard caps.contains(.sample) || (normals == 0 && uniforms == 0) else {
            throw refuse("layout() reports noise (\(normals) normals, \(uniforms) uniforms per scalar) but the family does not declare FLIPOUT_CAP_SAMPLE.")
        }
        var expanded: [ParameterSlot] = []
        for p in family.parameters {
            if let c = p.countHyperparameter, let k = family.hyperparameters.firstIndex(where: { $0.name == c }) {
                for j in 0..<Int(hyperparameters[k]) { expanded.append(ParameterSlot(name: "\(p.name)[\(j)]", parameter: p)) }
            } else {
                expanded.append(ParameterSlot(name: p.name, parameter: p))
            }
        }
        slots = expanded
        normalsPerScalar = Int(normals)
        uniformsPerScalar = Int(uniforms)
        if Int(slotCount) != expanded.count {
            throw refuse("layout reports \(slotCount) parameter slots, but its parameters and hyperparameters declare \(expanded.count).")
        }
    }

    deinit { fns.destroy(instance) }

    // MARK: The one funnel from status codes to Swift errors.

    static func call(_ family: String, _ function: String, _ body: (UnsafeMutablePointer<flipout_error>) -> flipout_status) throws {
        var buffer = [CChar](repeating: 0, count: 1024)
        let status: flipout_status = buffer.withUnsafeMutableBufferPointer { b in
            var err = flipout_error(struct_size: UInt32(MemoryLayout<flipout_error>.size), capacity: UInt32(b.count), message: b.baseAddress)
            return body(&err)
        }
        if status != Status.ok.rawValue {
            buffer[buffer.count - 1] = 0
            let message = String(cString: buffer)
            throw PluginCallError(family: family, function: function, status: status, message: message.isEmpty ? "(no message)" : message)
        }
    }

    private func call(_ function: String, _ body: (UnsafeMutablePointer<flipout_error>) -> flipout_status) throws {
        try Distribution.call(family.id, function, body)
    }

    /// Reject NaN (and +Inf; -Inf only where allowed) in a plugin's output.
    private func checkFinite(_ function: String, _ out: UnsafePointer<Float>, _ n: Int, allowMinusInfinity: Bool = false) throws {
        for i in 0..<n where !out[i].isFinite {
            if allowMinusInfinity && out[i] == -.infinity { continue }
            throw PluginCallError(family: family.id, function: function, status: -1,
                                  message: "returned \(out[i]) at index \(i) of \(n). Check the parameter values (a scale near 0?) or the plugin's math.")
        }
    }

    private func checkSlots(_ params: [InArray], _ what: String = "params") {
        precondition(params.count == slots.count, "\(family.id): \(params.count) \(what) slots given, \(slots.count) expected")
    }

    private func withIn<R>(_ a: [InArray], _ body: (UnsafePointer<flipout_in_array>) throws -> R) rethrows -> R {
        let c = a.map { flipout_in_array(data: $0.data, stride: $0.stride) }
        return try c.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    private func withOut<R>(_ a: [OutArray], _ body: (UnsafePointer<flipout_out_array>) throws -> R) rethrows -> R {
        let c = a.map { flipout_out_array(data: $0.data, stride: $0.stride) }
        return try c.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    // MARK: Compute

    public func logProb(n: Int, params: [InArray], x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        try withIn(params) { p in try call("log_prob") { fns.log_prob(instance, n, p, x, out, $0) } }
        try checkFinite("log_prob", out, n, allowMinusInfinity: true)
    }

    public func logProbVJP(n: Int, params: [InArray], x: UnsafePointer<Float>, g: UnsafePointer<Float>,
                           gradX: UnsafeMutablePointer<Float>?, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        try withIn(params) { p in try withOut(gradParams) { gp in
            try call("log_prob_vjp") { fns.log_prob_vjp(instance, n, p, x, g, gradX, gp, $0) }
        } }
    }

    public func sample(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                       out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        guard let f = fns.sample else { throw PluginCallError(family: family.id, function: "sample", status: Status.unsupported.rawValue, message: "this family cannot be sampled (no FLIPOUT_CAP_SAMPLE); use it as a prior") }
        try withIn(params) { p in try call("sample") { f(instance, n, p, normals, uniforms, out, $0) } }
        try checkFinite("sample", out, n)
    }

    public func sampleVJP(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                          x: UnsafePointer<Float>, g: UnsafePointer<Float>, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        guard let f = fns.sample_vjp else { throw PluginCallError(family: family.id, function: "sample_vjp", status: Status.unsupported.rawValue, message: "this family cannot be sampled") }
        try withIn(params) { p in try withOut(gradParams) { gp in
            try call("sample_vjp") { f(instance, n, p, normals, uniforms, x, g, gp, $0) }
        } }
    }

    public func center(n: Int, params: [InArray], out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        guard let f = fns.center else { throw PluginCallError(family: family.id, function: "center", status: Status.unsupported.rawValue, message: "this family has no center; it cannot be a posterior") }
        try withIn(params) { p in try call("center") { f(instance, n, p, out, $0) } }
        try checkFinite("center", out, n)
    }

    public func centerVJP(n: Int, params: [InArray], g: UnsafePointer<Float>, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        guard let f = fns.center_vjp else { throw PluginCallError(family: family.id, function: "center_vjp", status: Status.unsupported.rawValue, message: "this family has no center") }
        try withIn(params) { p in try withOut(gradParams) { gp in
            try call("center_vjp") { f(instance, n, p, g, gp, $0) }
        } }
    }

    /// Whether this family, as the prior, has an analytic KL(q || self) for posterior family `q`.
    public func hasAnalyticKL(from q: DistributionFamily) -> Bool {
        fns.kl != nil && family.klFamilies.contains(q.id)
    }

    /// out[i] = KL(q_i || self_i) analytically. Throws `PluginCallError` with `isUnsupported` if there is none.
    public func kl(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params); q.checkSlots(qParams)
        guard let f = fns.kl else { throw PluginCallError(family: family.id, function: "kl", status: Status.unsupported.rawValue, message: "no analytic KL") }
        try withIn(qParams) { qp in try withIn(params) { pp in
            try q.family.id.withCString { fam in try call("kl") { f(instance, n, fam, qp, pp, out, $0) } }
        } }
        try checkFinite("kl", out, n)
    }

    public func klVJP(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], g: UnsafePointer<Float>,
                      gradQ: [OutArray], gradParams: [OutArray]) throws {
        checkSlots(params); q.checkSlots(qParams)
        precondition(gradQ.count == q.slots.count && gradParams.count == slots.count)
        guard let f = fns.kl_vjp else { throw PluginCallError(family: family.id, function: "kl_vjp", status: Status.unsupported.rawValue, message: "no analytic KL") }
        try withIn(qParams) { qp in try withIn(params) { pp in try withOut(gradQ) { gq in try withOut(gradParams) { gp in
            try q.family.id.withCString { fam in try call("kl_vjp") { f(instance, n, fam, qp, pp, g, gq, gp, $0) } }
        } } } }
    }
}
