// Conv3DEngines: the Conv3D engines one layer owns, one per geometry (and memory choice) it has run.
import Foundation

/// A layer's own engines, built on first use per geometry (a layer sees a few: the training
/// batch, the evaluation batch, the per-example form folded over the batch). Owned per layer
/// rather than shared per process, so two layers never wait on one engine's lock, and one
/// layer's forward never touches buffers another layer's backward reads. Thread-safe.
public final class Conv3DEngines {
    /// How a network wants a convolution run, beside `Conv3DPlan.choose`'s speed rules.
    public enum Choice: Hashable, Sendable {
        /// `Conv3DPlan.choose`: the fastest measured plan.
        case planned
        /// The native kernels in every direction where they apply (else `planned`): no layout
        /// copies of x, y, dx or dy (oneDNN's, leased from `ScratchArena`, each as large as the
        /// tensor), and a saved x that can be the caller's own tensor (`Conv3D.InputSaving.adopt`).
        /// A network's memory plan asks for it by sizes alone (`MemoryPlan.native`), so the bits
        /// do not depend on anything else; `--conv-engine onednn` keeps oneDNN.
        case lowMemory
    }

    /// The choice for engines first built inside this scope (`Conv3DEngines.$choice.withValue(.lowMemory) { ... }`).
    @TaskLocal public static var choice: Choice = .planned

    private struct Key: Hashable { let geometry: Conv3DGeometry; let native: Bool }
    private var engines: [Key: Conv3D] = [:]
    private let lock = NSLock()

    public init() {}

    /// The engine for `geometry` under `Conv3DEngines.choice` (throws a `GeometryError` or `EngineError` if it cannot be built).
    public func engine(_ geometry: Conv3DGeometry) throws -> Conv3D {
        let native = Self.choice == .lowMemory && ConvEngineChoice.current != .onednn && NativeConv3D.supports(geometry)
        let key = Key(geometry: geometry, native: native)
        lock.lock()
        defer { lock.unlock() }
        if let e = engines[key] { return e }
        let e = try Conv3D(geometry, plan: native ? .native(.best, reason: "memory: no layout copies at this size (MemoryPlan.native)") : nil)
        engines[key] = e
        return e
    }
}
