// A created distribution instance: typed calls into the plugin over whole buffers of n scalars.
import PluginABI
import FlipoutABI
import CPluginIsolation

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
/// instance is destroyed with this object. The family's calls run in-process (through the
/// plugin's function table, under the crash guard) or in the family's child process
/// (`family.remote`, docs/plugin-isolation.md); either way the same checks apply to what comes back.
public final class Distribution: @unchecked Sendable {
    public let family: DistributionFamily
    public let hyperparameters: [Double]
    public let slots: [ParameterSlot]
    public let normalsPerScalar: Int
    public let uniformsPerScalar: Int
    /// In-process: the plugin's instance pointer. Isolated: the child's instance id.
    private let instance: OpaquePointer?
    private let remoteInstance: UInt64
    private var fns: flipout_distribution { family.table }
    private var remote: RemoteFamily? { family.remote }

    init(family: DistributionFamily, hyperparameters: [Double]) throws {
        self.family = family
        self.hyperparameters = hyperparameters
        var slotCount: UInt32 = 0, normals: UInt32 = 0, uniforms: UInt32 = 0
        let destroy: () -> Void
        if let remote = family.remote {
            let reply = try Distribution.remoteCall(family, .create, instance: 0, n: 0, point: { "" }) { w in
                w.u32(UInt32(hyperparameters.count)); for h in hyperparameters { w.f64(h) }
            }
            var r = reply.reader
            let id = (try? r.u64()) ?? 0
            guard id != 0 else {
                throw PluginCallError(family: family.id, function: "create", status: Status.internalError.rawValue, message: "returned OK but no instance", file: family.file)
            }
            instance = nil
            remoteInstance = id
            var l = try Distribution.remoteCall(family, .layout, instance: id, n: 0, point: { "" }).reader
            do { slotCount = try l.u32(); normals = try l.u32(); uniforms = try l.u32() } catch {
                throw PluginCallError(family: family.id, function: "layout", status: PluginCallError.processFailed, message: "a truncated reply", file: family.file)
            }
            destroy = { _ = try? remote.plugin.call(.destroy, family: remote.index, instance: id, n: 0) }
        } else {
            var made: OpaquePointer?
            try Distribution.call(family, "create") { err in
                hyperparameters.withUnsafeBufferPointer { family.table.create(family.descriptor, $0.baseAddress, &made, err) }
            }
            guard let made else {
                throw PluginCallError(family: family.id, function: "create", status: Status.internalError.rawValue, message: "returned OK but no instance", file: family.file)
            }
            instance = made
            remoteInstance = 0
            family.guarded("layout") { family.table.layout(made, &slotCount, &normals, &uniforms) }
            destroy = { family.guarded("destroy") { family.table.destroy(made) } }
        }
        func refuse(_ why: String) -> PluginLoadError {
            destroy()
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

    deinit {
        if let remote {
            _ = try? remote.plugin.call(.destroy, family: remote.index, instance: remoteInstance, n: 0)
        } else if let instance {
            family.guarded("destroy") { fns.destroy(instance) }
        }
    }

    // MARK: The one funnel from status codes to Swift errors.

    static func call(_ family: DistributionFamily, _ function: String, point: () -> String = { "" },
                     _ body: (UnsafeMutablePointer<flipout_error>) -> flipout_status) throws {
        var buffer = [CChar](repeating: 0, count: 1024)
        let status: flipout_status = buffer.withUnsafeMutableBufferPointer { b in
            var err = flipout_error(struct_size: UInt32(MemoryLayout<flipout_error>.size), capacity: UInt32(b.count), message: b.baseAddress)
            return family.guarded(function) { body(&err) }
        }
        if status != Status.ok.rawValue {
            buffer[buffer.count - 1] = 0
            let message = String(cString: buffer)
            throw PluginCallError(family: family.id, function: function, status: status, message: message.isEmpty ? "(no message)" : message,
                                  file: family.file, point: status == Status.unsupported.rawValue ? "" : point())
        }
    }

    /// One call in the family's child process: a plugin status becomes a PluginCallError as
    /// in-process; a dead, hung or sandbox-stopped child becomes one with status processFailed.
    static func remoteCall(_ family: DistributionFamily, _ op: WireOp, instance: UInt64, n: Int, frame: CallFrame = CallFrame(),
                           point: () -> String, arguments: (inout WireWriter) -> Void = { _ in }) throws -> IsolatedPlugin.Reply {
        let remote = family.remote!
        let reply: IsolatedPlugin.Reply
        do {
            if PostedPluginCalls.anyPending { try PostedPluginCalls.settle(frame.entries.map(\.hostRange), except: remote.plugin) }
            reply = try remote.plugin.call(op, family: remote.index, instance: instance, n: n, frame: frame, arguments: arguments)
        } catch let f as PluginProcessFailure {
            throw processFailure(family, op, f, point: point)
        }
        if reply.status != Status.ok.rawValue {
            throw PluginCallError(family: family.id, function: op.function, status: reply.status,
                                  message: reply.message.isEmpty ? "(no message)" : reply.message, file: family.file,
                                  point: reply.status == Status.unsupported.rawValue ? "" : point())
        }
        return reply
    }

    /// A dead, hung or sandbox-stopped child as the PluginCallError of the call that saw it.
    static func processFailure(_ family: DistributionFamily, _ op: WireOp, _ f: PluginProcessFailure, point: () -> String) -> PluginCallError {
        let plugin = family.remote!.plugin
        if case .earlier = f {
            return PluginCallError(family: family.id, function: op.function, status: PluginCallError.processFailed, message: "\(f)", file: family.file)
        }
        let at = point()
        plugin.noteFailure(function: op.function, family: family.id, point: at)
        return PluginCallError(family: family.id, function: op.function, status: PluginCallError.processFailed,
                               message: "\(f)\(plugin.failureContext())", file: family.file, point: at)
    }

    /// Posts a gradient call to the family's child (`PostedPluginCalls`): it runs, and its
    /// gradients are checked there as `checkGradients` checks them here, when collected.
    /// `groups` and `x` name the inputs of its parameter point.
    private func post(_ op: WireOp, n: Int, frame: CallFrame, groups: [(names: [String], arrays: [WireArray])], x: WireArray? = nil,
                      point: () -> String, arguments: (inout WireWriter) -> Void) throws {
        let remote = remote!
        do {
            if PostedPluginCalls.anyPending { try PostedPluginCalls.settle(frame.entries.map(\.hostRange), except: remote.plugin) }
            try remote.plugin.post(op, family: remote.index, instance: remoteInstance, n: n, frame: frame, context: { relocate in
                IsolatedPlugin.PostedContext(family: family.id, file: family.file, n: n,
                                             groups: groups.map { (names: $0.names, arrays: $0.arrays.map(relocate)) }, x: x.map(relocate))
            }, arguments: arguments)
        } catch let f as PluginProcessFailure {
            throw Self.processFailure(family, op, f, point: point)
        }
    }

    /// Before an in-process call: collects the posted calls of isolated plugins that add into
    /// the call's arrays (a no-op unless some are posted).
    private func settle(_ ins: [InArray], _ pointers: [UnsafePointer<Float>?], _ outs: [OutArray] = [], n: Int) throws {
        guard PostedPluginCalls.anyPending else { return }
        try PostedPluginCalls.settle(PostedPluginCalls.ranges(ins, pointers, outs, n: n))
    }

    private func call(_ function: String, point: () -> String, _ body: (UnsafeMutablePointer<flipout_error>) -> flipout_status) throws {
        try Distribution.call(family, function, point: point, body)
    }

    private func remoteCall(_ op: WireOp, n: Int, frame: CallFrame, point: () -> String, arguments: (inout WireWriter) -> Void) throws {
        _ = try Distribution.remoteCall(family, op, instance: remoteInstance, n: n, frame: frame, point: point, arguments: arguments)
    }

    // MARK: What went in, for messages

    /// "loc=0.1, scale=0.02 (scalar 17 of 1200)" for one scalar, or for a whole call the first
    /// scalar and each parameter's range.
    static func point(_ groups: [(names: [String], arrays: [InArray])], x: UnsafePointer<Float>?, n: Int, at index: Int?) -> String {
        func value(_ a: InArray, _ i: Int) -> Float { a.data[i * a.stride] }
        let i = index ?? 0
        guard n > 0 else { return "n = 0" }
        var parts: [String] = []
        if let x { parts.append("x=\(x[i])") }
        for g in groups { for (name, a) in zip(g.names, g.arrays) { parts.append("\(name)=\(value(a, i))") } }
        var text = "at \(parts.joined(separator: ", ")) (scalar \(i) of \(n)"
        if index == nil && n > 1 {
            var ranges: [String] = []
            for g in groups { for (name, a) in zip(g.names, g.arrays) where a.stride != 0 {
                var lo = Float.infinity, hi = -Float.infinity
                for k in 0..<n { let v = value(a, k); lo = min(lo, v); hi = max(hi, v) }
                ranges.append("\(name) in [\(lo), \(hi)]")
            } }
            if !ranges.isEmpty { text += "; over the call \(ranges.joined(separator: ", "))" }
        }
        return text + ")"
    }

    private var slotNames: [String] { slots.map(\.name) }

    private func point(_ params: [InArray], x: UnsafePointer<Float>? = nil, n: Int, at index: Int? = nil) -> String {
        Distribution.point([(slotNames, params)], x: x, n: n, at: index)
    }

    /// Reject NaN (and +Inf; -Inf only where allowed) in a plugin's output.
    private func checkFinite(_ function: String, _ out: UnsafePointer<Float>, _ n: Int, allowMinusInfinity: Bool = false,
                             point: (Int) -> String) throws {
        for i in 0..<n where !out[i].isFinite {
            if allowMinusInfinity && out[i] == -.infinity { continue }
            throw PluginCallError(family: family.id, function: function, status: PluginCallError.nonFinite,
                                  message: "returned \(out[i]) with status OK at index \(i) of \(n). Check the parameter values (a scale near 0?) or the plugin's math.",
                                  file: family.file, point: point(i))
        }
    }

    /// A VJP's gradients must be finite wherever its inputs were: a non-finite gradient from
    /// finite inputs is the plugin's (non-finite inputs are the host's own numerical failure).
    private func checkGradients(_ function: String, n: Int, inputs: [UnsafePointer<Float>], params: [InArray],
                                outputs: [(UnsafeMutablePointer<Float>?, Int)], point: (Int?) -> String) throws {
        for (data, stride) in outputs {
            guard let data else { continue }
            let count = stride == 0 ? (n > 0 ? 1 : 0) : n
            for j in 0..<count where !data[j * stride].isFinite {
                let scalars = stride == 0 ? 0..<n : j..<(j + 1)
                let inputsFinite = scalars.allSatisfy { i in inputs.allSatisfy { $0[i].isFinite } && params.allSatisfy { $0.data[i * $0.stride].isFinite } }
                guard inputsFinite else { continue }
                throw PluginCallError(family: family.id, function: function, status: PluginCallError.nonFinite,
                                      message: "returned status OK with a gradient of \(data[j * stride]) from finite inputs. Check the plugin's derivative.",
                                      file: family.file, point: point(stride == 0 ? nil : j))
            }
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

    private static func inputs(_ frame: inout CallFrame, _ a: [InArray], n: Int) -> [WireArray] {
        a.map { frame.input($0.data, stride: $0.stride, n: n) }
    }

    private static func updates(_ frame: inout CallFrame, _ a: [OutArray], n: Int) -> [WireArray] {
        a.map { frame.update($0.data, stride: $0.stride, n: n) }
    }

    // MARK: Compute

    public func logProb(n: Int, params: [InArray], x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        let where_ = { self.point(params, x: x, n: n) }
        if remote != nil {
            var f = CallFrame()
            let p = Self.inputs(&f, params, n: n), xa = f.input(x, n: n), o = f.output(out, n: n)
            try remoteCall(.logProb, n: n, frame: f, point: where_) { w in w.arrays(p); w.array(xa); w.array(o) }
        } else {
            try settle(params, [x, UnsafePointer(out)], n: n)
            try withIn(params) { p in try call("log_prob", point: where_) { fns.log_prob(instance, n, p, x, out, $0) } }
        }
        try checkFinite("log_prob", out, n, allowMinusInfinity: true) { self.point(params, x: x, n: n, at: $0) }
    }

    public func logProbVJP(n: Int, params: [InArray], x: UnsafePointer<Float>, g: UnsafePointer<Float>,
                           gradX: UnsafeMutablePointer<Float>?, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        let where_ = { self.point(params, x: x, n: n) }
        if remote != nil {
            var f = CallFrame()
            let p = Self.inputs(&f, params, n: n), xa = f.input(x, n: n), ga = f.input(g, n: n)
            let gx = f.update(gradX, stride: 1, n: n), gp = Self.updates(&f, gradParams, n: n)
            try remoteCall(.logProbVJP, n: n, frame: f, point: where_) { w in w.arrays(p); w.array(xa); w.array(ga); w.array(gx); w.arrays(gp) }
        } else {
            try settle(params, [x, g, gradX.map { UnsafePointer($0) }], gradParams, n: n)
            try withIn(params) { p in try withOut(gradParams) { gp in
                try call("log_prob_vjp", point: where_) { fns.log_prob_vjp(instance, n, p, x, g, gradX, gp, $0) }
            } }
        }
        try checkGradients("log_prob_vjp", n: n, inputs: [x, g], params: params,
                           outputs: [(gradX, 1)] + gradParams.map { ($0.data, $0.stride) }) { self.point(params, x: x, n: n, at: $0) }
    }

    public func sample(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                       out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        guard let f = fns.sample else { throw PluginCallError(family: family.id, function: "sample", status: Status.unsupported.rawValue, message: "this family cannot be sampled (no FLIPOUT_CAP_SAMPLE); use it as a prior", file: family.file) }
        let where_ = { self.point(params, n: n) }
        if remote != nil {
            var fr = CallFrame()
            let p = Self.inputs(&fr, params, n: n), nz = fr.input(normals, n: n * normalsPerScalar), u = fr.input(uniforms, n: n * uniformsPerScalar), o = fr.output(out, n: n)
            try remoteCall(.sample, n: n, frame: fr, point: where_) { w in w.arrays(p); w.array(nz); w.array(u); w.array(o) }
        } else {
            try settle(params, [UnsafePointer(out)], n: n)
            try withIn(params) { p in try call("sample", point: where_) { f(instance, n, p, normals, uniforms, out, $0) } }
        }
        try checkFinite("sample", out, n) { self.point(params, n: n, at: $0) }
    }

    /// `center` then `sample` over the same parameters (the bits of the two calls in turn): for
    /// an isolated plugin both travel in one round trip.
    public func centerAndSample(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                                center out: UnsafeMutablePointer<Float>, sample: UnsafeMutablePointer<Float>) throws {
        guard let remote, fns.center != nil, fns.sample != nil else {
            try center(n: n, params: params, out: out)
            return try self.sample(n: n, params: params, normals: normals, uniforms: uniforms, out: sample)
        }
        try postCenterAndSample(n: n, params: params, normals: normals, uniforms: uniforms, center: out, sample: sample)
        do { try remote.plugin.flushPosted() } catch let f as PluginProcessFailure { throw Self.processFailure(family, .sample, f, point: { self.point(params, n: n) }) }
        try checkCenterAndSample(n: n, params: params, center: out, sample: sample)
    }

    /// The family's child process when it is isolated (nil in-process).
    var isolatedPlugin: IsolatedPlugin? { remote?.plugin }

    /// Whether `postCenterAndSample` can post (an isolated family with center and sample).
    var canPostCenterAndSample: Bool { remote != nil && fns.center != nil && fns.sample != nil }

    /// Posts `center` then `sample` to the family's child without collecting them: they run, and
    /// `out`/`sample` are written, when the child's posted calls are next collected
    /// (`flushPosted`, e.g. all layers' draws of a training step in one round trip,
    /// `WeightPrefetch`). Check the results with `checkCenterAndSample` after that.
    func postCenterAndSample(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                             center out: UnsafeMutablePointer<Float>, sample: UnsafeMutablePointer<Float>) throws {
        precondition(canPostCenterAndSample, "\(family.id): center and sample can be posted only to an isolated family that has both")
        checkSlots(params)
        let where_ = { self.point(params, n: n) }
        var fc = CallFrame()
        let pc = Self.inputs(&fc, params, n: n), oc = fc.output(out, n: n)
        try post(.center, n: n, frame: fc, groups: [(slotNames, pc)], point: where_) { w in w.arrays(pc); w.array(oc) }
        var fs = CallFrame()
        let ps = Self.inputs(&fs, params, n: n), nz = fs.input(normals, n: n * normalsPerScalar), u = fs.input(uniforms, n: n * uniformsPerScalar)
        let os = fs.output(sample, n: n)
        try post(.sample, n: n, frame: fs, groups: [(slotNames, ps)], point: where_) { w in w.arrays(ps); w.array(nz); w.array(u); w.array(os) }
    }

    /// The checks `center` and `sample` make of their outputs, for posted ones once collected.
    func checkCenterAndSample(n: Int, params: [InArray], center out: UnsafePointer<Float>, sample: UnsafePointer<Float>) throws {
        try checkFinite("center", out, n) { self.point(params, n: n, at: $0) }
        try checkFinite("sample", sample, n) { self.point(params, n: n, at: $0) }
    }

    /// Posts this prior's analytic `kl` (out[i] = KL(q_i || self_i)) to its child without
    /// collecting it; check `out` with `checkKL` once collected.
    func postKL(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], out: UnsafeMutablePointer<Float>) throws {
        precondition(remote != nil && fns.kl != nil, "\(family.id): kl can be posted only to an isolated family that has it")
        checkSlots(params); q.checkSlots(qParams)
        let k = klCall(q, qParams, params, n: n, out: out), (qNames, pNames) = klNames(q)
        try post(.kl, n: n, frame: k.frame, groups: [(qNames, k.qp), (pNames, k.pp)],
                 point: { self.klPoint(q, qParams, params, n: n) }, arguments: k.arguments)
    }

    /// The check `kl` makes of its output, for a posted one once collected.
    func checkKL(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], out: UnsafePointer<Float>) throws {
        try checkFinite("kl", out, n) { self.klPoint(q, qParams, params, n: n, at: $0) }
    }

    public func sampleVJP(n: Int, params: [InArray], normals: UnsafePointer<Float>?, uniforms: UnsafePointer<Float>?,
                          x: UnsafePointer<Float>, g: UnsafePointer<Float>, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        guard let f = fns.sample_vjp else { throw PluginCallError(family: family.id, function: "sample_vjp", status: Status.unsupported.rawValue, message: "this family cannot be sampled", file: family.file) }
        let where_ = { self.point(params, x: x, n: n) }
        if remote != nil {
            var fr = CallFrame()
            let p = Self.inputs(&fr, params, n: n), nz = fr.input(normals, n: n * normalsPerScalar), u = fr.input(uniforms, n: n * uniformsPerScalar)
            let xa = fr.input(x, n: n), ga = fr.input(g, n: n), gp = Self.updates(&fr, gradParams, n: n)
            let arguments = { (w: inout WireWriter) in w.arrays(p); w.array(nz); w.array(u); w.array(xa); w.array(ga); w.arrays(gp) }
            if PostedPluginCalls.enabled {
                return try post(.sampleVJP, n: n, frame: fr, groups: [(slotNames, p)], x: xa, point: where_, arguments: arguments)
            }
            try remoteCall(.sampleVJP, n: n, frame: fr, point: where_, arguments: arguments)
        } else {
            try settle(params, [x, g], gradParams, n: n)
            try withIn(params) { p in try withOut(gradParams) { gp in
                try call("sample_vjp", point: where_) { f(instance, n, p, normals, uniforms, x, g, gp, $0) }
            } }
        }
        try checkGradients("sample_vjp", n: n, inputs: [x, g], params: params, outputs: gradParams.map { ($0.data, $0.stride) }) { self.point(params, x: x, n: n, at: $0) }
    }

    public func center(n: Int, params: [InArray], out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params)
        guard let f = fns.center else { throw PluginCallError(family: family.id, function: "center", status: Status.unsupported.rawValue, message: "this family has no center; it cannot be a posterior", file: family.file) }
        let where_ = { self.point(params, n: n) }
        if remote != nil {
            var fr = CallFrame()
            let p = Self.inputs(&fr, params, n: n), o = fr.output(out, n: n)
            try remoteCall(.center, n: n, frame: fr, point: where_) { w in w.arrays(p); w.array(o) }
        } else {
            try settle(params, [UnsafePointer(out)], n: n)
            try withIn(params) { p in try call("center", point: where_) { f(instance, n, p, out, $0) } }
        }
        try checkFinite("center", out, n) { self.point(params, n: n, at: $0) }
    }

    public func centerVJP(n: Int, params: [InArray], g: UnsafePointer<Float>, gradParams: [OutArray]) throws {
        checkSlots(params); precondition(gradParams.count == slots.count)
        guard let f = fns.center_vjp else { throw PluginCallError(family: family.id, function: "center_vjp", status: Status.unsupported.rawValue, message: "this family has no center", file: family.file) }
        let where_ = { self.point(params, n: n) }
        if remote != nil {
            var fr = CallFrame()
            let p = Self.inputs(&fr, params, n: n), ga = fr.input(g, n: n), gp = Self.updates(&fr, gradParams, n: n)
            let arguments = { (w: inout WireWriter) in w.arrays(p); w.array(ga); w.arrays(gp) }
            if PostedPluginCalls.enabled {
                return try post(.centerVJP, n: n, frame: fr, groups: [(slotNames, p)], point: where_, arguments: arguments)
            }
            try remoteCall(.centerVJP, n: n, frame: fr, point: where_, arguments: arguments)
        } else {
            try settle(params, [g], gradParams, n: n)
            try withIn(params) { p in try withOut(gradParams) { gp in
                try call("center_vjp", point: where_) { f(instance, n, p, g, gp, $0) }
            } }
        }
        try checkGradients("center_vjp", n: n, inputs: [g], params: params, outputs: gradParams.map { ($0.data, $0.stride) }) { self.point(params, n: n, at: $0) }
    }

    /// Whether this family, as the prior, has an analytic KL(q || self) for posterior family `q`.
    public func hasAnalyticKL(from q: DistributionFamily) -> Bool {
        fns.kl != nil && family.klFamilies.contains(q.id)
    }

    private func klPoint(_ q: Distribution, _ qParams: [InArray], _ params: [InArray], n: Int, at index: Int? = nil) -> String {
        let (qNames, pNames) = klNames(q)
        return Distribution.point([(qNames, qParams), (pNames, params)], x: nil, n: n, at: index)
    }

    /// The names of the KL functions' two parameter groups in messages: the posterior's as q.*, this prior's as p.*.
    private func klNames(_ q: Distribution) -> ([String], [String]) {
        (q.slots.map { "q.\($0.name)" }, slots.map { "p.\($0.name)" })
    }

    /// `kl`'s frame and arguments for the family's child, the same whether it is called or posted.
    private func klCall(_ q: Distribution, _ qParams: [InArray], _ params: [InArray], n: Int, out: UnsafeMutablePointer<Float>)
        -> (frame: CallFrame, qp: [WireArray], pp: [WireArray], arguments: (inout WireWriter) -> Void) {
        var fr = CallFrame()
        let qp = Self.inputs(&fr, qParams, n: n), pp = Self.inputs(&fr, params, n: n), o = fr.output(out, n: n)
        let family = q.family.id
        return (fr, qp, pp, { w in w.string(family); w.arrays(qp); w.arrays(pp); w.array(o) })
    }

    /// out[i] = KL(q_i || self_i) analytically. Throws `PluginCallError` with `isUnsupported` if there is none.
    public func kl(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], out: UnsafeMutablePointer<Float>) throws {
        checkSlots(params); q.checkSlots(qParams)
        guard let f = fns.kl else { throw PluginCallError(family: family.id, function: "kl", status: Status.unsupported.rawValue, message: "no analytic KL", file: family.file) }
        let where_ = { self.klPoint(q, qParams, params, n: n) }
        if remote != nil {
            let k = klCall(q, qParams, params, n: n, out: out)
            try remoteCall(.kl, n: n, frame: k.frame, point: where_, arguments: k.arguments)
        } else {
            try settle(qParams + params, [UnsafePointer(out)], n: n)
            try withIn(qParams) { qp in try withIn(params) { pp in
                try q.family.id.withCString { fam in try call("kl", point: where_) { f(instance, n, fam, qp, pp, out, $0) } }
            } }
        }
        try checkKL(n: n, posterior: q, qParams: qParams, params: params, out: out)
    }

    public func klVJP(n: Int, posterior q: Distribution, qParams: [InArray], params: [InArray], g: UnsafePointer<Float>,
                      gradQ: [OutArray], gradParams: [OutArray]) throws {
        checkSlots(params); q.checkSlots(qParams)
        precondition(gradQ.count == q.slots.count && gradParams.count == slots.count)
        guard let f = fns.kl_vjp else { throw PluginCallError(family: family.id, function: "kl_vjp", status: Status.unsupported.rawValue, message: "no analytic KL", file: family.file) }
        let where_ = { self.klPoint(q, qParams, params, n: n) }
        if remote != nil {
            var fr = CallFrame()
            let qp = Self.inputs(&fr, qParams, n: n), pp = Self.inputs(&fr, params, n: n), ga = fr.input(g, n: n)
            let gq = Self.updates(&fr, gradQ, n: n), gp = Self.updates(&fr, gradParams, n: n)
            let arguments = { (w: inout WireWriter) in w.string(q.family.id); w.arrays(qp); w.arrays(pp); w.array(ga); w.arrays(gq); w.arrays(gp) }
            if PostedPluginCalls.enabled {
                let (qNames, pNames) = klNames(q)
                return try post(.klVJP, n: n, frame: fr, groups: [(qNames, qp), (pNames, pp)], point: where_, arguments: arguments)
            }
            try remoteCall(.klVJP, n: n, frame: fr, point: where_, arguments: arguments)
        } else {
            try settle(qParams + params, [g], gradQ + gradParams, n: n)
            try withIn(qParams) { qp in try withIn(params) { pp in try withOut(gradQ) { gq in try withOut(gradParams) { gp in
                try q.family.id.withCString { fam in try call("kl_vjp", point: where_) { f(instance, n, fam, qp, pp, g, gq, gp, $0) } }
            } } } }
        }
        try checkGradients("kl_vjp", n: n, inputs: [g], params: qParams + params,
                           outputs: (gradQ + gradParams).map { ($0.data, $0.stride) }) { self.klPoint(q, qParams, params, n: n, at: $0) }
    }
}
