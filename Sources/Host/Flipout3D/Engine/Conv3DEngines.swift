// Conv3DEngines: the Conv3D engines one layer owns, one per geometry it has run.
import Foundation

/// A layer's own engines, built on first use per geometry (a layer sees a few: the training
/// batch, the evaluation batch, the per-example form folded over the batch). Owned per layer
/// rather than shared per process, so two layers never wait on one engine's lock, and one
/// layer's forward never touches buffers another layer's backward reads. Thread-safe.
public final class Conv3DEngines {
    private var engines: [Conv3DGeometry: Conv3D] = [:]
    private let lock = NSLock()

    public init() {}

    /// The engine for `geometry` (throws a `GeometryError` or `EngineError` if it cannot be built).
    public func engine(_ geometry: Conv3DGeometry) throws -> Conv3D {
        lock.lock()
        defer { lock.unlock() }
        if let e = engines[geometry] { return e }
        let e = try Conv3D(geometry)
        engines[geometry] = e
        return e
    }
}
