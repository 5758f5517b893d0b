// The seccomp sandbox as a Swift call, for processes that run plugin code on the host's behalf.
import CPluginIsolation

/// Installs the sandbox of isolated plugins (docs/plugin-isolation.md) in the calling process:
/// `flipout-plugin-host` and the `plugins check` worker call it before loading any plugin.
/// Irreversible for the process and its threads.
public enum PluginSandbox {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func apply() throws {
        var message = [CChar](repeating: 0, count: 512)
        if flipout_sandbox_apply(&message, message.count) != 0 {
            throw Failure(description: "cannot install the plugin sandbox: \(String(cString: message))")
        }
    }

    /// The environment a sandboxed child starts with: nothing but what keeps the Swift runtime
    /// from starting its crash backtracer (a new process, which the sandbox refuses).
    public static let childEnvironment = ["SWIFT_BACKTRACE=enable=no"]

    /// What an isolated plugin's child adds to that: flipout's thread count, over which the
    /// child splits a plugin call as the host splits in-process calls.
    public static var childThreads: String { "OMP_NUM_THREADS=\(NativeConv3D.threads)" }
}
