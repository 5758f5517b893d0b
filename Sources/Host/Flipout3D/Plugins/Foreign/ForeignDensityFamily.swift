// A prior family made from a foreign C log density: a real flipout_distribution whose functions are libffi closures.
//
// `--foreign-prior PATH:SYMBOL(x:d,loc:d=0,scale:d=1)->d[@ID]` turns a plain exported function
// such as `double my_logpdf(double x, double loc, double scale)` into a distribution family
// without writing a plugin. The host synthesizes a `flipout_distribution` descriptor (allocated
// once, valid for the process) whose function pointers are libffi closures bound to this object:
// the descriptor's callbacks carry no context pointer that could lead back to Swift, so each one
// is a C function manufactured at run time. The rest of the host (DistributionFamily,
// Distribution, training) treats the result exactly like a plugin family.
//
//   - Capabilities: none. It is a prior only: create, destroy, layout, log_prob, log_prob_vjp.
//   - Parameters: every argument after x, default from the spec; identity transform, or softplus
//     for one declared `>0` (a value <= 0 is then FLIPOUT_STATUS_DOMAIN_ERROR, and a finite
//     difference step never crosses 0).
//   - log_prob calls the foreign function once per scalar (through `ffi_call`, cif prepared once),
//     in the argument and return types the spec declares.
//   - log_prob_vjp is an APPROXIMATION: central finite differences in Double on the foreign
//     function, d f/d v ~ (f(v + h) - f(v - h)) / (2h) with h = 1e-5 * max(1, |v|) for a double
//     argument of a double function. Where the argument or the result is a float, rounding to
//     float would swamp that step, so h = cbrt(float epsilon) * max(1, |v|) (about 4.9e-3) there;
//     either way the divisor is the step the function actually saw after rounding. Broadcast
//     (stride-0) gradient slots receive the sum over all scalars, accumulated in Double.
//   - A NaN or +infinity from the foreign function (or any non-finite value inside a finite
//     difference) is FLIPOUT_STATUS_DOMAIN_ERROR with a message naming the symbol and the
//     arguments. -infinity from log_prob is passed through: the ABI reads it as x outside the support.
import PluginABI
import FlipoutABI
import Foundation

public final class ForeignDensityFamily: @unchecked Sendable {
    public let function: ForeignFunction
    public var spec: ForeignPriorSpec { function.spec }
    /// The synthesized descriptor; never freed (families live for the process).
    let descriptor: UnsafePointer<flipout_distribution>
    /// The closures behind the descriptor's function pointers (kept alive with this object).
    private var closures: [FFIClosure] = []
    private let parameterCount: Int
    /// Finite-difference step factor per argument (x first).
    private let steps: [Double]

    static let doubleStep = 1e-5
    static let floatStep = Foundation.cbrt(Double(Float.ulpOfOne))

    // MARK: Loading (once per spec per process)

    private static let lock = NSLock()
    nonisolated(unsafe) private static var loaded: [String: (library: PluginLibrary, family: ForeignDensityFamily)] = [:]

    /// Parse `spec`, resolve and prepare the function, and wrap it in a library of one family
    /// (named "foreign: SYMBOL", the file being the .so, so sha256 is the file's). The same
    /// spec loads once per process; the library and family then live until exit.
    public static func load(_ specText: String) throws -> PluginLibrary {
        let spec = try ForeignPriorSpec(parsing: specText)
        let key = "\(DynamicLibrary.resolve(spec.path))\u{0}\(spec.signature)\u{0}\(spec.id)"
        lock.lock(); defer { lock.unlock() }
        if let hit = loaded[key] { return hit.library }
        let family = try ForeignDensityFamily(function: ForeignFunction(spec))
        let library = try PluginLibrary(foreignPath: family.function.library.path, name: "foreign: \(spec.symbol)",
                                        descriptors: [family.descriptor])
        loaded[key] = (library, family)
        return library
    }

    nonisolated(unsafe) private static var loadedIsolated: [String: PluginLibrary] = [:]

    /// As `load`, but the function runs in a sandboxed child process (docs/plugin-isolation.md):
    /// the spec is parsed here (a malformed one is a usage error), the child resolves the symbol,
    /// prepares libffi and answers every call.
    public static func loadIsolated(_ specText: String, timeout: Double) throws -> PluginLibrary {
        let spec = try ForeignPriorSpec(parsing: specText)
        let resolved = DynamicLibrary.resolve(spec.path)
        let key = "\(resolved)\u{0}\(spec.signature)\u{0}\(spec.id)"
        lock.lock(); defer { lock.unlock() }
        if let hit = loadedIsolated[key] { return hit }
        try ELFHeader.check(resolved)
        try PluginFileSecurity.check(resolved)
        let childSpec = "\(resolved):\(spec.signature)@\(spec.id)"
        let (plugin, description) = try IsolatedPlugin.start(file: resolved, foreignSpec: childSpec, timeout: timeout)
        let library = try PluginLibrary(isolated: plugin, description: description, path: resolved)
        loadedIsolated[key] = library
        return library
    }

    // MARK: The descriptor

    init(function: ForeignFunction) throws {
        self.function = function
        let spec = function.spec
        parameterCount = spec.parameters.count
        steps = spec.arguments.map { $0.type == .float || spec.returnType == .float ? Self.floatStep : Self.doubleStep }
        let file = function.library.path

        func cString(_ s: String) -> UnsafePointer<CChar> { UnsafePointer(strdup(s)!) }
        let params = UnsafeMutablePointer<flipout_parameter_desc>.allocate(capacity: parameterCount)
        for (k, a) in spec.parameters.enumerated() {
            (params + k).initialize(to: flipout_parameter_desc(
                struct_size: UInt32(MemoryLayout<flipout_parameter_desc>.size),
                name: cString(a.name),
                description: cString("Argument \(k + 2) of \(spec.symbol) (\(a.type)), passed as is" + (a.positive ? "; declared > 0." : ".")),
                transform: a.transform.rawValue,
                default_value: Float(a.defaultValue ?? 0),
                init_jitter: 0,
                count_hyperparameter: nil,
                prior_value: .nan))
        }
        var d = flipout_distribution()
        d.struct_size = UInt32(MemoryLayout<flipout_distribution>.size)
        d.id = cString(spec.id)
        d.name = cString(spec.symbol)
        d.version = cString("0.0.0")
        d.description = cString("The foreign log density \(spec.prototype) from \(file), called through libffi once per scalar. A prior only; its gradients (log_prob_vjp) are central finite differences, an approximation.")
        d.capabilities = 0
        d.parameter_count = UInt32(parameterCount)
        d.parameters = UnsafePointer(params)
        d.hyperparameter_count = 0
        d.hyperparameters = nil
        d.kl_families = nil
        d.build_toolchain = cString("foreign C function via libffi")
        d.build_stdlib = cString("none")
        let slot = UnsafeMutablePointer<flipout_distribution>.allocate(capacity: 1)
        descriptor = UnsafePointer(slot)

        // Each function pointer is a closure with the C signature the ABI declares for it.
        let ptr = FFIType.pointer, size = FFIType.size, status = FFIType.sint32
        do {
            d.create = try bind(FFICallInterface(returning: status, arguments: [ptr, ptr, ptr, ptr]), as: type(of: d.create)) { [unowned self] args, ret in
                // Stateless: the instance is a token (the descriptor itself), never dereferenced.
                args.load(2, as: UnsafeMutablePointer<OpaquePointer?>?.self)?.pointee = OpaquePointer(self.descriptor)
                ret.store(Status.ok.rawValue)
            }
            d.destroy = try bind(FFICallInterface(returning: .void, arguments: [ptr]), as: type(of: d.destroy)) { _, _ in }
            d.layout = try bind(FFICallInterface(returning: .void, arguments: [ptr, ptr, ptr, ptr]), as: type(of: d.layout)) { [unowned self] args, _ in
                args.load(1, as: UnsafeMutablePointer<UInt32>?.self)?.pointee = UInt32(self.parameterCount)
                args.load(2, as: UnsafeMutablePointer<UInt32>?.self)?.pointee = 0
                args.load(3, as: UnsafeMutablePointer<UInt32>?.self)?.pointee = 0
            }
            d.log_prob = try bind(FFICallInterface(returning: status, arguments: [ptr, size, ptr, ptr, ptr, ptr]), as: type(of: d.log_prob)) { [unowned self] args, ret in
                ret.store(self.logProb(n: Int(args.load(1, as: UInt.self)),
                                       params: args.load(2), x: args.load(3), out: args.load(4), err: args.load(5)))
            }
            d.log_prob_vjp = try bind(FFICallInterface(returning: status, arguments: [ptr, size, ptr, ptr, ptr, ptr, ptr, ptr]), as: type(of: d.log_prob_vjp)) { [unowned self] args, ret in
                ret.store(self.logProbVJP(n: Int(args.load(1, as: UInt.self)), params: args.load(2), x: args.load(3), g: args.load(4),
                                          gradX: args.load(5), gradParams: args.load(6), err: args.load(7)))
            }
        } catch let e as FFIError {
            throw PluginLoadError(.ffiFailed, file: file, "\(spec.id): cannot make the descriptor's callbacks: \(e).")
        }
        slot.initialize(to: d)
    }

    private func bind<F>(_ interface: FFICallInterface, as type: F.Type, _ handler: @escaping FFIClosure.Handler) throws -> F {
        let closure = try FFIClosure(interface, handler: handler)
        closures.append(closure)
        return closure.function(as: F.self)
    }

    // MARK: The functions behind the closures

    private func fail(_ err: UnsafeMutablePointer<flipout_error>?, _ message: String) -> Int32 {
        if let err, err.pointee.capacity > 0, let buffer = err.pointee.message {
            let bytes = Array(message.utf8.prefix(Int(err.pointee.capacity) - 1))
            for (i, b) in bytes.enumerated() { buffer[i] = CChar(bitPattern: b) }
            buffer[bytes.count] = 0
        }
        return Status.domainError.rawValue
    }

    /// `symbol(x=..., loc=...)` as the function saw the arguments in `frame`.
    private func callText(_ frame: ForeignFunction.Frame) -> String {
        let args = spec.arguments.enumerated().map { i, a in "\(a.name)=\(frame.get(i))" }
        return "\(spec.symbol)(\(args.joined(separator: ", ")))"
    }

    /// Loads scalar i's arguments; the message if a parameter declared >0 is not (or is not finite).
    private func load(_ frame: ForeignFunction.Frame, _ i: Int, _ params: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>) -> String? {
        frame.set(0, Double(x[i]))
        for k in 0..<parameterCount {
            let v = Double(params[k].data[i * params[k].stride])
            let a = spec.arguments[k + 1]
            guard v.isFinite, !a.positive || v > 0 else {
                return "\(spec.id): parameter \(a.name) = \(v) at scalar \(i) is outside its range (\(a.transform.range))"
            }
            frame.set(k + 1, v)
        }
        return nil
    }

    func logProb(n: Int, params: UnsafePointer<flipout_in_array>?, x: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>?,
                 err: UnsafeMutablePointer<flipout_error>?) -> Int32 {
        guard n > 0 else { return Status.ok.rawValue }
        guard let params, let x, let out else { return fail(err, "\(spec.id) log_prob: NULL buffer") }
        return function.withFrame { f in
            for i in 0..<n {
                if let bad = load(f, i, params, x) { return fail(err, bad) }
                let v = f.call()
                if v.isNaN || v == .infinity {
                    return fail(err, "\(callText(f)) returned \(v) (scalar \(i) of \(n)); a log density must be finite or -inf. Check the parameter values.")
                }
                out[i] = Float(v)
            }
            return Status.ok.rawValue
        }
    }

    func logProbVJP(n: Int, params: UnsafePointer<flipout_in_array>?, x: UnsafePointer<Float>?, g: UnsafePointer<Float>?,
                    gradX: UnsafeMutablePointer<Float>?, gradParams: UnsafePointer<flipout_out_array>?,
                    err: UnsafeMutablePointer<flipout_error>?) -> Int32 {
        guard n > 0 else { return Status.ok.rawValue }
        guard let params, let x, let g, let gradParams else { return fail(err, "\(spec.id) log_prob_vjp: NULL buffer") }
        let arity = function.arity
        // wanted[j]: argument j's gradient is asked for. Stride-0 parameter slots sum in Double.
        let wanted = (0..<arity).map { j in j == 0 ? gradX != nil : gradParams[j - 1].data != nil }
        var sums = [Double](repeating: 0, count: arity)
        let status: Int32 = function.withFrame { f in
            for i in 0..<n {
                if let bad = load(f, i, params, x) { return fail(err, bad) }
                let gi = Double(g[i])
                for j in 0..<arity where wanted[j] {
                    let v = f.get(j)
                    let step = steps[j] * max(1, abs(v))
                    let h = j > 0 && spec.arguments[j].positive ? min(step, v / 2) : step
                    f.set(j, v + h); let up = f.get(j); let fUp = f.call()
                    f.set(j, v - h); let down = f.get(j); let fDown = f.call()
                    guard fUp.isFinite && fDown.isFinite else {
                        let bad = fUp.isFinite ? fDown : fUp
                        f.set(j, fUp.isFinite ? down : up)
                        return fail(err, "\(callText(f)) returned \(bad) (scalar \(i) of \(n), finite difference in \(spec.arguments[j].name)); the gradient needs finite values around the point. Check the parameter values.")
                    }
                    f.set(j, v)
                    let contribution = gi * (fUp - fDown) / (up - down)
                    guard Float(contribution).isFinite else { return fail(err, "\(callText(f)): g * d/d\(spec.arguments[j].name) is \(contribution) with g = \(gi) (scalar \(i) of \(n)): a result that would not be finite is a domain error.") }
                    if j == 0 {
                        gradX![i] += Float(contribution)
                    } else {
                        let slot = gradParams[j - 1]
                        if slot.stride == 0 { sums[j] += contribution } else { slot.data![i * slot.stride] += Float(contribution) }
                    }
                }
            }
            return Status.ok.rawValue
        }
        guard status == Status.ok.rawValue else { return status }
        if let j = (1..<arity).first(where: { wanted[$0] && gradParams[$0 - 1].stride == 0 && !Float(sums[$0]).isFinite }) { return fail(err, "\(spec.id) log_prob_vjp: the sum over \(n) scalars of g * d/d\(spec.arguments[j].name) is \(sums[j]), not a finite float.") }
        for j in 1..<arity where wanted[j] && gradParams[j - 1].stride == 0 { gradParams[j - 1].data![0] += Float(sums[j]) }
        return status
    }
}
