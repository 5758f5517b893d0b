// Opt-in block kernels: a family's scalar math run over a block of scalars in one specialised loop.

/// The parameters (or partial derivatives) of a block of scalars, in Double, scalar-major:
/// slot k of scalar j is `base[j * slots + k]`. The SDK fills it from the ABI's strided Float
/// arrays (parameters) or zeroes it (partials) before a block call.
public struct ScalarBlock {
    public let base: UnsafeMutablePointer<Double>
    public let slots: Int
    @inlinable public init(base: UnsafeMutablePointer<Double>, slots: Int) { self.base = base; self.slots = slots }
    /// Scalar j's parameters.
    @inlinable public func params(_ j: Int) -> Params { Params(base: base + j * slots, count: slots) }
    /// Scalar j's partial derivatives.
    @inlinable public func gradient(_ j: Int) -> ParamGradient { ParamGradient(base: base + j * slots, count: slots) }
}

/// A family whose per-scalar math the SDK may run a block of scalars at a time. Conforming is one
/// line (`extension MyFamily: BlockDistribution {}`): the default implementations loop over the
/// family's own scalar methods, and since they are inlinable the plugin's compiler specialises and
/// inlines them for the family, so a call costs the math, not a protocol call, a closure and a
/// scratch gather per scalar. Results are the scalar methods' to the bit: the SDK converts, checks
/// and scatters exactly as its per-scalar loop does, and a block that fails anywhere (a parameter
/// outside its space, a thrown error, a result that is not finite in Float) is rerun through the
/// per-scalar loop, which reports it. A family may override a block method with its own loop; it
/// must give the scalar methods' values bit for bit (the SDK's tests compare the two).
public protocol BlockDistribution: ScalarDistribution {
    /// Whether every scalar of the block passes `validate`.
    func validate(block p: ScalarBlock, _ n: Int) -> Bool
    /// out[j] = logProb(x[j], p_j). Returns false if a scalar's x is NaN.
    func logProb(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>) -> Bool
    /// dx[j] = logProbGradient(x[j], p_j, dp_j). Returns false if a scalar's x is NaN.
    func logProbGradient(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, _ dx: UnsafeMutablePointer<Double>, _ dp: ScalarBlock) -> Bool
    /// out[j] = sample(p_j, noise of scalar j); scalar j's noise starts at normals + j * normalsPerScalar
    /// (and likewise uniforms).
    func sample(block p: ScalarBlock, _ n: Int, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Double>)
    func sampleGradient(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ScalarBlock)
    func center(block p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>)
    func centerGradient(block p: ScalarBlock, _ n: Int, _ dp: ScalarBlock)
    /// out[j] = kl(qFamily, q_j, p_j). Returns false if a scalar's kl throws.
    func kl(block qFamily: String, q: ScalarBlock, p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>) -> Bool
    /// Returns false if a scalar's klGradient throws.
    func klGradient(block qFamily: String, q: ScalarBlock, p: ScalarBlock, _ n: Int, dq: ScalarBlock, dp: ScalarBlock) -> Bool
}

extension BlockDistribution {
    @inlinable public func validate(block p: ScalarBlock, _ n: Int) -> Bool {
        for j in 0..<n { do { try validate(p.params(j)) } catch { return false } }
        return true
    }
    @inlinable public func logProb(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>) -> Bool {
        for j in 0..<n {
            let xj = Double(x[j])
            if xj.isNaN { return false }
            out[j] = logProb(xj, p.params(j))
        }
        return true
    }
    @inlinable public func logProbGradient(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, _ dx: UnsafeMutablePointer<Double>, _ dp: ScalarBlock) -> Bool {
        for j in 0..<n {
            let xj = Double(x[j])
            if xj.isNaN { return false }
            dx[j] = logProbGradient(xj, p.params(j), dp.gradient(j))
        }
        return true
    }
    @inlinable public func sample(block p: ScalarBlock, _ n: Int, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Double>) {
        let (nz, nu) = (normalsPerScalar, uniformsPerScalar)
        for j in 0..<n { out[j] = sample(p.params(j), normals: normals + j * nz, uniforms: uniforms + j * nu) }
    }
    @inlinable public func sampleGradient(block x: UnsafePointer<Float>, _ p: ScalarBlock, _ n: Int, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ScalarBlock) {
        let (nz, nu) = (normalsPerScalar, uniformsPerScalar)
        for j in 0..<n { sampleGradient(Double(x[j]), p.params(j), normals: normals + j * nz, uniforms: uniforms + j * nu, dp.gradient(j)) }
    }
    @inlinable public func center(block p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>) {
        for j in 0..<n { out[j] = center(p.params(j)) }
    }
    @inlinable public func centerGradient(block p: ScalarBlock, _ n: Int, _ dp: ScalarBlock) {
        for j in 0..<n { centerGradient(p.params(j), dp.gradient(j)) }
    }
    @inlinable public func kl(block qFamily: String, q: ScalarBlock, p: ScalarBlock, _ n: Int, _ out: UnsafeMutablePointer<Double>) -> Bool {
        do { for j in 0..<n { out[j] = try kl(qFamily: qFamily, q: q.params(j), p: p.params(j)) } } catch { return false }
        return true
    }
    @inlinable public func klGradient(block qFamily: String, q: ScalarBlock, p: ScalarBlock, _ n: Int, dq: ScalarBlock, dp: ScalarBlock) -> Bool {
        do { for j in 0..<n { try klGradient(qFamily: qFamily, q: q.params(j), p: p.params(j), dq: dq.gradient(j), dp: dp.gradient(j)) } } catch { return false }
        return true
    }
}
