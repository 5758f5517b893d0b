// Which plugins run out of process (--isolate-plugins, FLIPOUT_ISOLATE_PLUGINS) and the per-call watchdog.
import Foundation

/// Which plugin libraries run in a child process (docs/plugin-isolation.md).
public enum PluginIsolation: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Every plugin, the bundled ones too.
    case all
    /// Every plugin that is not bundled beside the flipout binary, and every --foreign-prior (the default).
    case thirdParty = "third-party"
    /// None: every plugin is loaded into the flipout process (a crash kills it; a crash handler names the plugin).
    case none

    public static let environmentVariable = "FLIPOUT_ISOLATE_PLUGINS"
    public static let `default` = PluginIsolation.thirdParty
    public var description: String { rawValue }

    /// Whether a library from `origin` runs in a child process under this policy.
    public func isolates(bundled: Bool) -> Bool {
        switch self {
        case .all: return true
        case .thirdParty: return !bundled
        case .none: return false
        }
    }
}

/// Isolation policy and watchdog, from the command line or the environment.
public struct IsolationSettings: Sendable, Equatable {
    public var policy: PluginIsolation
    /// Seconds one plugin call (or loading the library) may take before the child is killed.
    public var callTimeout: Double

    public static let timeoutVariable = "FLIPOUT_PLUGIN_TIMEOUT"
    public static let defaultTimeout: Double = 60
    public static let `default` = IsolationSettings(policy: .default, callTimeout: defaultTimeout)

    public init(policy: PluginIsolation, callTimeout: Double) {
        self.policy = policy
        self.callTimeout = callTimeout
    }

    /// The problem with a timeout value, or nil if it is usable.
    public static func timeoutProblem(_ seconds: Double) -> String? {
        seconds.isFinite && seconds > 0 && seconds <= 86_400 ? nil : "must be a number of seconds in (0, 86400] (got \(seconds))"
    }

    /// Command-line values win; otherwise FLIPOUT_ISOLATE_PLUGINS and FLIPOUT_PLUGIN_TIMEOUT;
    /// otherwise the defaults. Throws a usage error for a malformed environment value.
    public static func resolve(policy: PluginIsolation?, timeout: Double?,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> IsolationSettings {
        var s = IsolationSettings.default
        if let policy { s.policy = policy } else if let text = environment[PluginIsolation.environmentVariable], !text.isEmpty {
            guard let p = PluginIsolation(rawValue: text) else {
                throw PluginLoadError(.badIsolationSetting, file: "", "\(PluginIsolation.environmentVariable)=\(PluginString.escaped(String(text.prefix(64)))) is not one of \(PluginIsolation.allCases.map(\.rawValue).joined(separator: ", ")).")
            }
            s.policy = p
        }
        if let timeout { s.callTimeout = timeout } else if let text = environment[timeoutVariable], !text.isEmpty {
            guard let v = Double(text), timeoutProblem(v) == nil else {
                throw PluginLoadError(.badIsolationSetting, file: "", "\(timeoutVariable)=\(PluginString.escaped(String(text.prefix(64)))) \(timeoutProblem(Double(text) ?? .nan) ?? "is not a number").")
            }
            s.callTimeout = v
        }
        return s
    }
}
