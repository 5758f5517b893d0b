// `flipout plugins sample ID`: N draws through the plugin with host noise; moments beside the center.
import ArgumentParser
import Foundation
import Flipout3D

struct PluginsSample: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Draw samples through a plugin and compare their moments with its center.",
        discussion: """
        The host draws the noise (standard normals, and uniforms where the
        family declares them) from a seeded generator; the plugin turns it
        into N samples with the given parameters broadcast to every draw.
        flipout prints the sample mean, variance and standard deviation beside
        the center the plugin declares (the location for symmetric families,
        else the mean), and how many standard errors the mean is off.

        Parameters not given take their declared defaults. Values are
        constrained (a scale must be > 0). The family needs the `sample`
        capability (see `flipout plugins list`).

        Example:
          flipout plugins sample org.flipout3d.normal \\
              --param loc=1 --param scale=2 -n 20000
        """
    )

    @Argument(help: ArgumentHelp("The family id (or short name), e.g. org.flipout3d.normal.", valueName: "id"))
    var id: String

    @Option(name: .customLong("param"), help: ArgumentHelp("A parameter value, NAME=VALUE (repeatable), e.g. --param scale=2.", valueName: "name=value"))
    var params: [String] = []

    @Option(name: .customLong("hyper"), help: ArgumentHelp("A hyperparameter value, NAME=VALUE (repeatable).", valueName: "name=value"))
    var hypers: [String] = []

    @Option(name: .short, help: ArgumentHelp("Number of draws.", valueName: "N"))
    var n: Int = 10_000

    @Option(help: "Seed of the host's noise generator.")
    var seed: UInt64 = 0

    @OptionGroup var plugins: PluginOptions

    func validate() throws {
        guard n > 0 else { throw ValidationError("-n must be at least 1 (got \(n)).") }
        guard n <= 100_000_000 else { throw ValidationError("-n must be at most 100000000 (got \(n)).") }
        _ = try KeyValue.parse(params, option: "--param")
        _ = try KeyValue.parse(hypers, option: "--hyper")
    }

    func run() throws {
        try reportingInputErrors(sample)
    }

    private func sample() throws {
        let family = try plugins.registry().family(id)
        guard family.canSample else {
            throw InputError("\(family.id) has no `sample` capability: it can only be a prior. Pick a family whose `flipout plugins list` row shows `sample`.")
        }
        var hyperValues: [String: Double] = [:]
        for kv in try KeyValue.parse(hypers, option: "--hyper") { hyperValues[kv.key] = kv.value }
        let dist = try family.instantiate(hyperValues)
        let values = try slotValues(dist)

        var rng = RandomStream(seed: seed, layer: 0, step: 0, purpose: .test)
        let normals = rng.normals(n * dist.normalsPerScalar)
        let uniforms = rng.uniforms(n * dist.uniformsPerScalar)
        var x = [Float](repeating: 0, count: n)
        var center: Float = 0
        try values.withUnsafeBufferPointer { v in
            let slots = (0..<values.count).map { InArray(v.baseAddress! + $0, stride: 0) }
            try normals.withUnsafeBufferPointer { z in
                try uniforms.withUnsafeBufferPointer { u in
                    try dist.sample(n: n, params: slots, normals: z.isEmpty ? nil : z.baseAddress,
                                    uniforms: u.isEmpty ? nil : u.baseAddress, out: &x)
                }
            }
            try dist.center(n: 1, params: slots, out: &center)
        }

        var mean = 0.0, m2 = 0.0  // Welford, in Double.
        for (i, xi) in x.enumerated() {
            let d = Double(xi) - mean
            mean += d / Double(i + 1)
            m2 += d * (Double(xi) - mean)
        }
        let variance = n > 1 ? m2 / Double(n - 1) : 0
        let std = variance.squareRoot()
        let standardError = std / Double(n).squareRoot()
        let setting = zip(dist.slots, values).map { "\($0.name)=\(format(Double($1)))" }.joined(separator: " ")
        let noise = "\(dist.normalsPerScalar) normal, \(dist.uniformsPerScalar) uniform per draw"
        print("family    \(family.id) (\(family.name) \(family.version))")
        print("params    \(setting)")
        print("draws     \(n) (seed \(seed); \(noise))")
        print("center    \(format(Double(center)))   (declared by the plugin)")
        print("mean      \(format(mean))   (sample; standard error \(format(standardError)))")
        print("variance  \(format(variance))   (sample)")
        print("std       \(format(std))   (sample)")
        if standardError > 0 {
            print("mean - center = \(format(mean - Double(center))) = \(String(format: "%.2f", (mean - Double(center)) / standardError)) standard errors")
        }
    }

    /// Constrained values for every parameter slot: declared defaults overridden by --param.
    /// A key names a slot ("loc[1]") or a parameter (all of its slots).
    private func slotValues(_ dist: Distribution) throws -> [Float] {
        var values = dist.slots.map { $0.parameter.defaultValue }
        for kv in try KeyValue.parse(params, option: "--param") {
            let matches = dist.slots.indices.filter { dist.slots[$0].name == kv.key || dist.slots[$0].parameter.name == kv.key }
            guard !matches.isEmpty else {
                let known = dist.slots.map(\.name).joined(separator: ", ")
                throw InputError("\(dist.family.id) has no parameter \"\(kv.key)\"; it has: \(known).")
            }
            for k in matches {
                let v = Float(kv.value)
                guard dist.slots[k].parameter.transform.accepts(v) else {
                    throw InputError("\(kv.key)=\(kv.text) is outside the parameter's range (transform \(dist.slots[k].parameter.transform): \(Self.rangeText(dist.slots[k].parameter.transform))).")
                }
                values[k] = v
            }
        }
        return values
    }

    static func rangeText(_ t: ParameterTransform) -> String {
        switch t {
        case .identity: return "any finite value"
        case .softplus, .exp: return "must be > 0"
        case .sigmoid: return "must be in (0, 1)"
        }
    }

    private func format(_ v: Double) -> String { String(format: "%.6g", v) }
}
