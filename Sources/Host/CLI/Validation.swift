// Option validation shared by every subcommand: bounded counts, the library's config rules as
// ValidationErrors (exit 64), unique NAME=VALUE keys, and which options were given explicitly.
import ArgumentParser
import Flipout3D

enum Bounds {
    /// Throws a ValidationError unless `value` is in `range`: "--samples must be an integer from 1 to 10000 (got 0)."
    static func check(_ value: Int, _ range: ClosedRange<Int>, option: String) throws {
        do { try Check.range(value, range, field: option, option: option) } catch let e as ConfigError { throw ValidationError(e.description) }
    }

    /// Monte Carlo samples of predict, evaluate and train.
    static let samples = ConfigLimits.samples
}

/// Runs library validation (`ModelConfig.validate`, `TrainingConfig.validate`), turning its
/// `ConfigError` into a `ValidationError`, so the message names the option and exits 64.
func validating(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ConfigError { throw ValidationError(e.description) }
}

extension KeyValue {
    /// `NAME=NUMBER` pairs as a dictionary; a name given twice is an error naming it (never a trap).
    static func dictionary(_ pairs: [String], option: String) throws -> [String: Double] {
        var out: [String: Double] = [:]
        for kv in try parse(pairs, option: option) {
            guard out[kv.key] == nil else {
                throw ValidationError("\(option) \(kv.key) is given twice (\(out[kv.key]!) and \(kv.text)); give each name once.")
            }
            guard kv.value.isFinite else { throw ValidationError("\(option) \(kv.key) must be a finite number (got \(kv.text)).") }
            out[kv.key] = kv.value
        }
        return out
    }
}

/// Which long options appear on this process's command line (for refusing options `--resume`
/// cannot honour: ArgumentParser does not tell a default from an explicit value).
enum GivenOptions {
    static func contains(_ option: String, in arguments: [String] = CommandLine.arguments) -> Bool {
        arguments.dropFirst().prefix { $0 != "--" }.contains { $0 == option || $0.hasPrefix(option + "=") }
    }

    /// The options of `options` that were given.
    static func given(_ options: [String], in arguments: [String] = CommandLine.arguments) -> [String] {
        options.filter { contains($0, in: arguments) }
    }
}
