// Isolated plugins' calls posted without waiting (gradient VJPs), and collecting them before the optimizer step.
import Foundation

/// The backward pass's plugin VJPs (center_vjp, sample_vjp, kl_vjp) only ADD into gradients that
/// nothing reads before the step ends (`VariationalWeights.finishBackward`, then the optimizer).
/// For an isolated plugin, `Distribution` posts them (`IsolatedPlugin.post`) instead of waiting
/// for each: they run in one batch round trip when collected, which saves a kernel wake-up of
/// each process per call (~40 µs each on Zen 4; 66 calls per default U-Net step).
///
/// A posted call is collected, in posting order, before anything could see its result: at
/// `collect()` (the training step, before `finishBackward`), before any plugin call, in-process
/// or in another child, that touches a gradient it adds into (`settle`), and before a call of its
/// own child that does. Its failures (status, non-finite gradient from finite inputs, a dying or
/// hanging child) are thrown there as the `PluginCallError` the call would have thrown itself,
/// naming plugin file, family, function and parameter point; the optimizer has not run.
///
/// Only a process that collects gets posted calls: posting starts at the first `collect()`, so
/// code that calls the VJPs and reads the gradients itself (a layer benchmark, a test) always
/// gets synchronous calls; the first training step runs synchronously, the later ones post.
public enum PostedPluginCalls {
    private static let lock = NSLock()
    private static var armed = false
    /// Plugins with posted calls, in the order they first posted.
    private static var pending: [IsolatedPlugin] = []

    /// Whether calls may be posted (a collector exists).
    static var enabled: Bool { lock.withLock { armed } }

    /// Whether any isolated plugin holds posted calls (cheap; asked before every in-process call).
    static var anyPending: Bool { lock.withLock { !pending.isEmpty } }

    static func register(_ plugin: IsolatedPlugin) {
        lock.withLock { if !pending.contains(where: { $0 === plugin }) { pending.append(plugin) } }
    }

    static func unregister(_ plugin: IsolatedPlugin) {
        lock.withLock { pending.removeAll { $0 === plugin } }
    }

    /// Runs every posted call of every isolated plugin and copies their gradients back; throws
    /// the first failure. A no-op when nothing was posted (in-process plugins never post). The
    /// training step calls this after the KL and before `finishBackward`.
    public static func collect() throws {
        let plugins = lock.withLock { armed = true; return pending }
        for p in plugins { try p.flushPosted() }
        if IsolationStats.enabled { IsolationStats.markStep() }
    }

    /// Runs every posted call of every isolated plugin (one round trip per plugin holding some)
    /// without marking a training step: `WeightPrefetch` collects the step's weight draws so.
    static func flushAll() throws {
        let plugins = lock.withLock { pending }
        for p in plugins { try p.flushPosted() }
    }

    /// The error of a posted call that failed. Not a PluginCallError: the layer whose call
    /// collected the batch (whose `inLayer` would name it) need not be the layer that posted it.
    static func failure(_ e: PluginCallError) -> LayerError {
        LayerError.pluginFailed("\(e) (a gradient call posted during the backward pass, collected before the optimizer step). "
            + (e.isProcessFailure ? "The run folder keeps the checkpoint of the last finished epoch (--resume continues from it)."
                                  : "Check the layers' prior and posterior parameters, or lower the learning rate."))
    }

    /// Collects the posted calls of every plugin other than `except` that add into memory in
    /// `ranges`, before a call that reads or writes it.
    static func settle(_ ranges: [Range<UInt>], except: IsolatedPlugin? = nil) throws {
        let plugins = lock.withLock { pending.filter { $0 !== except } }
        for p in plugins where p.postedWrites(ranges) { try p.flushPosted() }
    }

    /// The host memory of a call's arrays of n scalars (stride 0: one value).
    static func ranges(_ ins: [InArray], _ pointers: [UnsafePointer<Float>?], _ outs: [OutArray], n: Int) -> [Range<UInt>] {
        func range(_ p: UnsafeRawPointer, stride: Int) -> Range<UInt> {
            let start = UInt(bitPattern: p)
            return start..<(start + UInt((max(n - 1, 0) * stride + 1) * MemoryLayout<Float>.size))
        }
        return ins.map { range($0.data, stride: $0.stride) }
            + pointers.compactMap { $0.map { range($0, stride: 1) } }
            + outs.compactMap { o in o.data.map { range($0, stride: o.stride) } }
    }
}
