// The C entry points of every SDK plugin: one funnel from Swift errors to ABI status codes.
import PluginABI
#if canImport(FlipoutABI)
import FlipoutABI
#endif
#if canImport(Glibc)
import Glibc
#endif

enum CFunctions {
    /// Run `body`, turning a thrown error into a status code and a message in the host's buffer.
    static func guarded(_ err: UnsafeMutablePointer<flipout_error>?, _ body: () throws -> Void) -> flipout_status {
        do {
            try body()
            return Status.ok.rawValue
        } catch let e as PluginError {
            switch e {
            case .invalidArgument(let m): write(err, m); return Status.invalidArgument.rawValue
            case .unsupported(let m): write(err, m); return Status.unsupported.rawValue
            case .domain(let m): write(err, m); return Status.domainError.rawValue
            case .internal(let m): write(err, m); return Status.internalError.rawValue
            }
        } catch {
            write(err, "\(error)")
            return Status.internalError.rawValue
        }
    }

    /// Copy `message` into the host-owned buffer, truncated to its capacity, NUL-terminated.
    static func write(_ err: UnsafeMutablePointer<flipout_error>?, _ message: String) {
        guard let err, let buffer = err.pointee.message, err.pointee.capacity > 0 else { return }
        let bytes = Array(message.utf8.prefix(Int(err.pointee.capacity) - 1))
        for (i, b) in bytes.enumerated() { buffer[i] = CChar(bitPattern: b) }
        buffer[bytes.count] = 0
    }

    static func instance(_ p: OpaquePointer?) -> AnyInstance {
        Unmanaged<AnyInstance>.fromOpaque(UnsafeRawPointer(p!)).takeUnretainedValue()
    }

    static let create: @convention(c) (UnsafePointer<flipout_distribution>?, UnsafePointer<Double>?, UnsafeMutablePointer<OpaquePointer?>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { desc, hypers, out, err in
        guarded(err) {
            guard let desc, let out else { throw PluginError.invalidArgument("create: NULL descriptor or output") }
            guard let factory = PluginExport.factories.first(where: { $0.descriptor == UnsafeRawPointer(desc) }) else {
                throw PluginError.invalidArgument("create: descriptor does not belong to this plugin")
            }
            let count = Int(desc.pointee.hyperparameter_count)
            let values = (0..<count).map { hypers![$0] }
            let made = try factory.make(values)
            out.pointee = OpaquePointer(Unmanaged.passRetained(made).toOpaque())
        }
    }

    static let destroy: @convention(c) (OpaquePointer?) -> Void = { p in
        guard let p else { return }
        Unmanaged<AnyInstance>.fromOpaque(UnsafeRawPointer(p)).release()
    }

    static let layout: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt32>?, UnsafeMutablePointer<UInt32>?, UnsafeMutablePointer<UInt32>?) -> Void = { p, slots, normals, uniforms in
        let i = instance(p)
        slots?.pointee = UInt32(i.slots)
        normals?.pointee = UInt32(i.normals)
        uniforms?.pointee = UInt32(i.uniforms)
    }

    static let logProb: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, x, out, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let x, let out else { throw PluginError.invalidArgument("log_prob: NULL buffer") }
            try instance(p).logProb(n, params, x, out)
        }
    }

    static let logProbVJP: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, UnsafePointer<flipout_out_array>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, x, g, gx, gp, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let x, let g else { throw PluginError.invalidArgument("log_prob_vjp: NULL buffer") }
            try instance(p).logProbVJP(n, params, x, g, gx, gp)
        }
    }

    static let sample: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, z, u, x, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let x else { throw PluginError.invalidArgument("sample: NULL buffer") }
            try instance(p).sample(n, params, z, u, x)
        }
    }

    static let sampleVJP: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<flipout_out_array>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, z, u, x, g, gp, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let x, let g else { throw PluginError.invalidArgument("sample_vjp: NULL buffer") }
            try instance(p).sampleVJP(n, params, z, u, x, g, gp)
        }
    }

    static let center: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, out, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let out else { throw PluginError.invalidArgument("center: NULL buffer") }
            try instance(p).center(n, params, out)
        }
    }

    static let centerVJP: @convention(c) (OpaquePointer?, Int, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafePointer<flipout_out_array>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, params, g, gp, err in
        guarded(err) {
            guard n > 0 else { return }
            guard let params, let g else { throw PluginError.invalidArgument("center_vjp: NULL buffer") }
            try instance(p).centerVJP(n, params, g, gp)
        }
    }

    static let kl: @convention(c) (OpaquePointer?, Int, UnsafePointer<CChar>?, UnsafePointer<flipout_in_array>?, UnsafePointer<flipout_in_array>?, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, family, q, pp, out, err in
        guarded(err) {
            guard let family else { throw PluginError.invalidArgument("kl: NULL family") }
            let name = String(cString: family)
            guard n > 0 else { return }
            guard let q, let pp, let out else { throw PluginError.invalidArgument("kl: NULL buffer") }
            try instance(p).kl(n, name, q, pp, out)
        }
    }

    static let klVJP: @convention(c) (OpaquePointer?, Int, UnsafePointer<CChar>?, UnsafePointer<flipout_in_array>?, UnsafePointer<flipout_in_array>?, UnsafePointer<Float>?, UnsafePointer<flipout_out_array>?, UnsafePointer<flipout_out_array>?, UnsafeMutablePointer<flipout_error>?) -> flipout_status = { p, n, family, q, pp, g, gq, gp, err in
        guarded(err) {
            guard let family else { throw PluginError.invalidArgument("kl_vjp: NULL family") }
            let name = String(cString: family)
            guard n > 0 else { return }
            guard let q, let pp, let g else { throw PluginError.invalidArgument("kl_vjp: NULL buffer") }
            try instance(p).klVJP(n, name, q, pp, g, gq, gp)
        }
    }
}
